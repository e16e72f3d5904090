// Test helpers: servers on free 127.0.0.1 ports, closed by the tests that start them.
import { once } from "node:events";
import * as http from "node:http";
import * as net from "node:net";

/** Serves an AgentApp on a free 127.0.0.1 port. */
export async function serve(app) {
  const server = app.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  return {
    server,
    url: `http://127.0.0.1:${port}`,
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** A port free right now on 127.0.0.1 (for a process that binds it itself). */
export async function freePort() {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it is true, at most `ms`. */
export async function until(check, ms, what) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${ms} ms`);
    await sleep(20);
  }
}

/**
 * A scripted HTTP server on a free 127.0.0.1 port: `answer(request)` gets each request
 * (`method`, `path`, `query`, `headers`, `body` parsed as JSON when there is one) and returns
 * `{status, body}` (JSON), or a Promise of it. Every request is kept in `requests`.
 */
export async function fakeServer(answer) {
  const requests = [];
  const server = http.createServer(async (req, res) => {
    const parts = [];
    for await (const part of req) parts.push(part);
    const text = Buffer.concat(parts).toString("utf8");
    const url = new URL(req.url, "http://fake");
    const request = { method: req.method, path: url.pathname, query: Object.fromEntries(url.searchParams), headers: req.headers, text, body: text ? JSON.parse(text) : undefined };
    requests.push(request);
    let reply;
    try {
      reply = await answer(request);
    } catch (e) {
      reply = { status: 500, body: { error: { code: "fake", message: String(e) } } };
    }
    const data = Buffer.from(JSON.stringify(reply.body ?? null));
    res.writeHead(reply.status, { "content-type": "application/json", "content-length": data.length });
    res.end(data);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
