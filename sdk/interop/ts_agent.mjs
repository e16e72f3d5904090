// A TypeScript agent server for the cross-language tests (test_delegation.py): serves agent
// types of the TypeScript SDK, built in ../typescript/dist (npm run build), with Node's own
// http on 127.0.0.1, on the port PORT names (default: one the system picks).
//
//   node sdk/interop/ts_agent.mjs      # prints {"port": <port>, "pid": <pid>} as its first stdout line
//
// Agent types:
// - `ts_middle` (declare it `delegates = true`): delegates `{"text"}` to the agent type its
//   input's `leaf` names (default `py_leaf`) with the label `via = ts_middle`, and answers
//   `{"runtime": "node", "pid", "node", "task_id", "leaf": <the child's output>}`. A failed
//   child is not caught: the attempt fails with kind `delegation_failed`.
// Besides the agent types, `GET /ran` answers what this process ran: one
// `{"agent_type", "task_id", "attempt", "callback"}` per attempt (`callback`: it had a
// callback URL).
//
// It stops on SIGTERM or SIGINT, and when its stdin closes (the test that started it is gone).
import * as http from "node:http";

const { createAgentServer } = await import(new URL("../typescript/dist/index.js", import.meta.url).href);

const ran = [];

const app = createAgentServer().agent("ts_middle", async (ctx) => {
  ran.push({ agent_type: ctx.agentType, task_id: ctx.taskId, attempt: ctx.attempt, callback: typeof ctx.callbackUrl === "string" });
  const leaf = await ctx.delegate(ctx.input.leaf ?? "py_leaf", { text: ctx.input.text }, { labels: { via: "ts_middle" } });
  return { runtime: "node", pid: process.pid, node: process.version, task_id: ctx.taskId, leaf };
});

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/ran") {
    const body = JSON.stringify(ran);
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
    return;
  }
  app.handler(req, res);
});

function stop() {
  server.closeAllConnections();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2_000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
process.stdin.on("end", stop);
process.stdin.on("error", stop);
process.stdin.resume();

server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port, pid: process.pid })}\n`);
});
