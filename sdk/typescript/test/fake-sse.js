// A fake `GET /v1/tasks/{id}/stream` that drops connections on purpose.
//
// It serves a fixed list of events over raw HTTP/1.1 (chunked), continuing after the
// `Last-Event-ID` a client sends, and follows a script saying, per connection, how many
// events to send before dropping it (abruptly: the socket is destroyed mid-body, as when a
// proxy or a replica dies) or ending it cleanly without the outcome. It records every
// request's path and headers so a test can check what the client asked for.
import { once } from "node:events";
import * as net from "node:net";

/** What one connection does: send `events` events (undefined: all, and the outcome), then
 * "drop" (cut the body) or "end" (finish it cleanly). `status` ≠ 200 answers that status with
 * a JSON error instead. `replay` resends that many events before the asked position. */
export function step({ events, then = "drop", status = 200, replay = 0 } = {}) {
  return { events, then, status, replay };
}

export class FakeStream {
  constructor({ taskId = "t-1", chunks = 20, script = [] } = {}) {
    this.taskId = taskId;
    this.chunks = chunks;
    this.script = script;
    this.requests = [];
    this.sockets = new Set();
  }

  events() {
    const out = [["0:10", "progress", { attempt: 1, percent: 0.0, message: "start", at_ms: 1 }]];
    for (let i = 0; i < this.chunks; i++) out.push([`0:${11 + i}`, "chunk", { attempt: 1, seq: i, text: `tok${i} `, at_ms: 2 + i }]);
    out.push([null, "outcome", { task_id: this.taskId, status: "completed", outcome: { status: "completed", output: { text: "done" }, attempt: 1 } }]);
    return out;
  }

  ids() {
    return this.events().map(([id]) => id);
  }

  async start() {
    this.server = net.createServer((socket) => this.#handle(socket));
    this.server.listen(0, "127.0.0.1");
    await once(this.server, "listening");
    this.url = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  async close() {
    for (const socket of this.sockets) socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }

  #handle(socket) {
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
    socket.on("error", () => {});
    let head = "";
    const onData = (data) => {
      head += data.toString("latin1");
      if (!head.includes("\r\n\r\n")) return;
      socket.off("data", onData);
      this.#answer(socket, head.slice(0, head.indexOf("\r\n\r\n")));
    };
    socket.on("data", onData);
  }

  #answer(socket, head) {
    const [requestLine, ...lines] = head.split("\r\n");
    const headers = { path: requestLine.split(" ")[1] ?? "" };
    for (const line of lines) {
      const i = line.indexOf(":");
      headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
    }
    const n = this.requests.length;
    this.requests.push(headers);
    const s = this.script[n] ?? step();
    if (s.status !== 200) {
      const body = JSON.stringify({ error: { code: s.status === 503 ? "unavailable" : "no_task", message: "scripted" } });
      socket.end(`HTTP/1.1 ${s.status} X\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
      return;
    }
    const events = this.events();
    let start = 0;
    const last = headers["last-event-id"];
    if (last) start = events.findIndex(([id]) => id === last) + 1;
    start = Math.max(0, start - s.replay);
    const chunk = (text) => `${Buffer.byteLength(text).toString(16)}\r\n${text}\r\n`;
    const sse = (id, event, data) => `${id ? `id: ${id}\n` : ""}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
    socket.write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    socket.write(chunk(": keep-alive\n\n"));
    const todo = s.events === undefined ? events.slice(start) : events.slice(start, start + s.events);
    for (const [id, event, data] of todo) {
      socket.write(chunk(sse(id, event, data)));
      // An event type the SDK does not know: skipped by the client, not fatal.
      socket.write(chunk(sse(null, "lagged", { missed: 0 })));
    }
    if (s.events !== undefined && s.then === "hang") return; // headers and a few events, then silence
    if (s.events !== undefined && s.then === "drop") {
      // Half an event, then the body is cut mid-way: the half must not be handed over.
      socket.write(chunk("id: 0:999\nevent: chunk\ndata: {\"attempt\":1,"));
      socket.end(() => socket.destroy());
      return;
    }
    socket.end("0\r\n\r\n");
  }
}
