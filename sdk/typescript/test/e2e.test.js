// End to end against a real agentlog: `agentlog dev` on the embedded log in a temporary
// directory, with an AgentApp of this SDK served on 127.0.0.1 as its `http` agent types.
//
// Needs AGENTLOG_BIN (the agentlog binary). Without it these tests skip, except under
// CI=true, where a skip would hide that nothing was tested: there they fail.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";

import { AgentError, AgentlogClient, BadRequest, Conflict, NotFound, createAgentServer } from "../dist/index.js";
import { freePort, serve, sleep } from "./helpers.js";

const BIN = process.env.AGENTLOG_BIN ?? "";
if (!BIN && process.env.CI === "true") {
  throw new Error("CI=true but AGENTLOG_BIN does not name the agentlog binary: the SDK's end-to-end tests cannot run");
}
const skip = BIN ? false : "AGENTLOG_BIN is not set (the agentlog binary the end-to-end tests run)";

/** How long agentlog may take to be ready, and the most any one test waits for a task. */
const READY_MS = 60_000;
const TASK_MS = 30_000;
const TOKENS = 20;

const attempts = new Map();
/** Per task id, what each attempt of `resumable` received: [attempt, lastCheckpoint, lastCheckpointAttempt]. */
const received = new Map();
const app = createAgentServer()
  // A fake LLM: streams `count` tokens with small sleeps, then the whole text.
  .agent("llm", async (ctx) => {
    const count = ctx.input.count ?? TOKENS;
    const pauseMs = ctx.input.pause_ms ?? 20;
    await ctx.progress({ percent: 0, message: "calling the model" });
    const tokens = Array.from({ length: count }, (_, i) => `tok${i} `);
    for (const token of tokens) {
      await sleep(pauseMs);
      if (ctx.cancelled) return null;
      await ctx.emit(token);
    }
    await ctx.progress({ percent: 100, message: "done" });
    return { text: tokens.join(""), tokens: count };
  })
  // Fails its first attempt asking for a pause (a rate limit), succeeds on the next.
  .agent("flaky", async (ctx) => {
    if (!attempts.has(ctx.taskId)) attempts.set(ctx.taskId, []);
    attempts.get(ctx.taskId).push([ctx.attempt, performance.now()]);
    if (ctx.attempt === 1) {
      await ctx.emit("rate limited");
      throw new AgentError({ kind: "transient", message: "the model is rate limited", retryable: true, retryAfterMs: ctx.input.retry_after_ms });
    }
    return { attempt: ctx.attempt };
  })
  // Saves a checkpoint, then fails retryably on its first attempt; the next attempt resumes
  // from the checkpoint it receives.
  .agent("resumable", async (ctx) => {
    if (!received.has(ctx.taskId)) received.set(ctx.taskId, []);
    received.get(ctx.taskId).push([ctx.attempt, ctx.lastCheckpoint, ctx.lastCheckpointAttempt]);
    if (ctx.attempt === 1) {
      await ctx.checkpoint({ step: 1 });
      throw new AgentError({ kind: "transient", message: "the model went away after step 1", retryable: true });
    }
    return { resumed_from: ctx.lastCheckpoint?.step ?? null };
  })
  .agent("rejecting", async () => {
    throw new AgentError({ kind: "bad_input", message: "no text given", retryable: false });
  });

function config(root, apiPort, registryPort, agentUrl) {
  return `
[log]
backend = "embedded"

[log.embedded]
data_dir = "${path.join(root, "log")}"

[supervisor]
state_dir = "${path.join(root, "supervisor")}"
heartbeat_interval_ms = 200

[projection]
dir = "${path.join(root, "projection")}"

[api]
listen = "127.0.0.1:${apiPort}"
max_wait_ms = 10000

[registry]
listen = "127.0.0.1:${registryPort}"
url = "http://127.0.0.1:${registryPort}"

[agents.echo]
runtime = { kind = "builtin", name = "echo" }

[agents.sleep]
runtime = { kind = "builtin", name = "sleep" }

[agents.llm]
runtime = { kind = "http", url = "${agentUrl}/llm" }
timeout_ms = 20000

[agents.flaky]
runtime = { kind = "http", url = "${agentUrl}/flaky" }
[agents.flaky.retry]
max_attempts = 3
initial_backoff_ms = 10
max_backoff_ms = 50
jitter = 0.0

[agents.resumable]
runtime = { kind = "http", url = "${agentUrl}/resumable" }
[agents.resumable.retry]
max_attempts = 3
initial_backoff_ms = 50
max_backoff_ms = 100

[agents.rejecting]
runtime = { kind = "http", url = "${agentUrl}/rejecting" }
[agents.rejecting.retry]
max_attempts = 3
initial_backoff_ms = 10
`;
}

let agent;
let root;
let child;
let logPath;
let client;
let apiUrl;

function output() {
  try {
    return fs.readFileSync(logPath, "utf8").slice(-4000);
  } catch {
    return "";
  }
}

async function waitReady() {
  const deadline = Date.now() + READY_MS;
  while (true) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`agentlog dev exited (${child.exitCode ?? child.signalCode}):\n${output()}`);
    try {
      const response = await fetch(`${apiUrl}/readyz`, { signal: AbortSignal.timeout(2000) });
      await response.body?.cancel();
      if (response.status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`agentlog dev was not ready within ${READY_MS} ms:\n${output()}`);
    await sleep(100);
  }
}

/** Stops the process we started, by its pid: SIGTERM, then SIGKILL after 20 s. */
async function stop(proc) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((resolve) => proc.once("exit", resolve));
  proc.kill("SIGTERM");
  const timer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
  await exited;
  clearTimeout(timer);
}

const newId = (prefix) => `${prefix}-${randomUUID().replaceAll("-", "").slice(0, 12)}`;

/** The stream's events, bounded in time; with `stopAfter`, the connection is closed after
 * that many events (the rest is read by a later call). */
async function readStream(c, taskId, { lastEventId, stopAfter } = {}) {
  const events = [];
  const signal = AbortSignal.timeout(TASK_MS);
  try {
    for await (const event of c.stream(taskId, { lastEventId, readTimeoutMs: TASK_MS, signal })) {
      events.push(event);
      if (stopAfter !== undefined && events.length >= stopAfter) break;
    }
  } catch (e) {
    if (e instanceof NotFound && e.code === "no_route") assert.fail(`this agentlog has no GET /v1/tasks/{id}/stream (agent protocol v1 server side missing): ${e.message}`);
    if (signal.aborted) assert.fail(`the stream of ${taskId} did not end within ${TASK_MS} ms (${events.length} events)`);
    throw e;
  }
  return events;
}

function checkLlmStream(events, count) {
  const chunks = events.filter((e) => e.type === "chunk");
  assert.deepEqual(chunks.map((c) => c.text), Array.from({ length: count }, (_, i) => `tok${i} `), "every chunk once, in order");
  assert.deepEqual(chunks.map((c) => c.seq), [...Array(count).keys()]);
  assert.ok(chunks.every((c) => c.attempt === 1));
  const ids = events.filter((e) => e.type !== "outcome").map((e) => e.id);
  assert.ok(ids.every(Boolean), "progress and chunk events carry their log position");
  const positions = ids.map((id) => id.split(":").map(Number));
  const sorted = [...positions].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  assert.deepEqual(positions, sorted);
  assert.equal(new Set(ids).size, ids.length);
  assert.deepEqual(events.filter((e) => e.type === "progress").map((p) => p.message), ["calling the model", "done"]);
  const outcome = events.at(-1);
  assert.equal(outcome.type, "outcome");
  assert.equal(outcome.status, "completed");
  assert.deepEqual(outcome.output, { text: Array.from({ length: count }, (_, i) => `tok${i} `).join(""), tokens: count });
}

/** A TCP proxy to agentlog that cuts its first connection once `cutAfter` SSE ids went
 * through: the stream breaks mid-way as when a load balancer or a replica dies. It rewrites
 * the Host header to agentlog's own (which answers only its own host without api keys). */
async function cuttingProxy(target, cutAfter) {
  const { port: targetPort } = new URL(target);
  let connections = 0;
  let proxyHost = "";
  const heads = [];
  const sockets = new Set();
  const server = net.createServer((downstream) => {
    const first = ++connections === 1;
    const upstream = net.connect(Number(targetPort), "127.0.0.1");
    for (const s of [downstream, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    downstream.once("data", (data) => heads.push(data.toString("latin1")));
    downstream.on("data", (data) => upstream.write(Buffer.from(data.toString("latin1").replace(`Host: ${proxyHost}`, `Host: 127.0.0.1:${targetPort}`).replace(`host: ${proxyHost}`, `host: 127.0.0.1:${targetPort}`), "latin1")));
    downstream.on("end", () => upstream.end());
    let seen = 0;
    upstream.on("data", (data) => {
      if (downstream.destroyed) return;
      downstream.write(data);
      if (!first) return;
      seen += data.toString("utf8").split("\nid: ").length - 1 + (data.toString("utf8").startsWith("id: ") ? 1 : 0);
      if (seen >= cutAfter) {
        downstream.destroy();
        upstream.destroy();
      }
    });
    upstream.on("end", () => downstream.end());
    downstream.on("close", () => upstream.destroy());
    upstream.on("close", () => downstream.destroy());
  });
  server.listen(0, "127.0.0.1");
  await new Promise((resolve) => server.once("listening", resolve));
  proxyHost = `127.0.0.1:${server.address().port}`;
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    connections: () => connections,
    heads,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

describe("end to end against agentlog", { skip }, () => {
  before(async () => {
    agent = await serve(app);
    root = fs.mkdtempSync(path.join(os.tmpdir(), "agentlog-sdk-ts-e2e-"));
    const [apiPort, registryPort] = [await freePort(), await freePort()];
    fs.writeFileSync(path.join(root, "agentlog.toml"), config(root, apiPort, registryPort, agent.url));
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("AGENTLOG__") && k !== "AGENTLOG_CONFIG"));
    logPath = path.join(root, "agentlog.out");
    const log = fs.openSync(logPath, "w");
    child = spawn(BIN, ["--config", path.join(root, "agentlog.toml"), "dev"], { cwd: root, env, stdio: ["ignore", log, log] });
    fs.closeSync(log);
    apiUrl = `http://127.0.0.1:${apiPort}`;
    client = new AgentlogClient({ baseUrl: apiUrl, timeoutMs: 10_000 });
    await waitReady();
  });

  after(async () => {
    await stop(child);
    await agent?.close();
    if (root) fs.rmSync(root, { recursive: true, force: true });
  });

  // The client against the API (plain answers).

  test("submit, get, wait and list with a builtin agent", async () => {
    const taskId = newId("echo");
    const submitted = await client.submit("echo", { text: "hello" }, { taskId, labels: { suite: "sdk" } });
    assert.equal(submitted.taskId, taskId);
    assert.ok(submitted.position);
    const task = await client.get(taskId, { after: submitted.position });
    assert.equal(task.task_id, taskId);
    assert.deepEqual(task.labels, { suite: "sdk" });
    const outcome = await client.wait(taskId, { timeoutMs: TASK_MS });
    assert.equal(outcome.status, "completed");
    assert.deepEqual(outcome.output, { text: "hello" });
    const page = await client.list({ agentType: "echo", limit: 50 });
    assert.ok(page.tasks.some((t) => t.task_id === taskId));
  });

  test("idempotency, batches and errors", async () => {
    const key = newId("key");
    const first = await client.submit("echo", { n: 1 }, { idempotencyKey: key });
    await client.wait(first.taskId, { timeoutMs: TASK_MS });
    const again = await client.submit("echo", { n: 2 }, { idempotencyKey: key });
    assert.ok(again.duplicate);
    assert.equal(again.taskId, first.taskId);
    const batch = await client.submitBatch([0, 1, 2].map((i) => ({ agentType: "echo", input: { i } })));
    assert.equal(new Set(batch.map((b) => b.taskId)).size, 3);
    for (const b of batch) assert.equal((await client.wait(b.taskId, { timeoutMs: TASK_MS })).status, "completed");
    await assert.rejects(client.submit("no-such-type", {}), (e) => e instanceof BadRequest && e.field === "agent_type");
    await assert.rejects(client.get(newId("missing")), (e) => e instanceof NotFound && e.code === "no_task");
    await assert.rejects(client.cancel(first.taskId, "too late"), Conflict);
  });

  test("cancel a running task", async () => {
    const submitted = await client.submit("sleep", { ms: 20_000 });
    await client.get(submitted.taskId, { after: submitted.position });
    const answer = await client.cancel(submitted.taskId, "changed my mind");
    assert.equal(answer.cancel_requested, true);
    assert.equal((await client.wait(submitted.taskId, { timeoutMs: TASK_MS })).status, "cancelled");
  });

  // The agent protocol end to end: framed answers and the task stream.

  test("chunks stream live in order and the outcome is the handler's result", async () => {
    const { taskId } = await client.submit("llm", { count: TOKENS });
    const events = await readStream(client, taskId);
    checkLlmStream(events, TOKENS);
    assert.ok(events.findIndex((e) => e.type === "chunk") < events.length - 1);
  });

  test("chunks arrive while the agent is still generating", async () => {
    // 20 tokens 250 ms apart: a live stream hands over the first long before the last exists.
    const { taskId } = await client.submit("llm", { count: TOKENS, pause_ms: 250 });
    let first;
    for await (const event of client.stream(taskId, { signal: AbortSignal.timeout(TASK_MS) })) {
      if (event.type === "chunk") {
        first = event;
        break;
      }
    }
    const seenAt = Date.now();
    const task = await client.get(taskId);
    assert.equal(first.text, "tok0 ");
    assert.equal(task.outcome ?? null, null, "the first chunk came only after the task had ended");
    assert.equal((await client.wait(taskId, { timeoutMs: TASK_MS })).status, "completed");
    assert.ok(Date.now() - seenAt > 1000);
  });

  test("a stream read later resumes from a given event without gaps or repeats", async () => {
    const { taskId } = await client.submit("llm", { count: TOKENS, pause_ms: 50 });
    const first = await readStream(client, taskId, { stopAfter: 7 });
    assert.equal(first.length, 7);
    assert.notEqual(first.at(-1).type, "outcome");
    const rest = await readStream(client, taskId, { lastEventId: first.at(-1).id });
    checkLlmStream([...first, ...rest], TOKENS);
    // And once more from the middle, after the task ended: a replay of what follows.
    const middle = await readStream(client, taskId, { lastEventId: first[3].id });
    assert.deepEqual(middle.slice(0, -1).map((e) => e.id), [...first, ...rest].slice(4, -1).map((e) => e.id));
  });

  test("a connection cut mid-stream is resumed by the client itself", async () => {
    const proxy = await cuttingProxy(apiUrl, 6);
    try {
      const viaProxy = new AgentlogClient({ baseUrl: proxy.url, timeoutMs: 10_000 });
      const { taskId } = await client.submit("llm", { count: TOKENS, pause_ms: 50 });
      const events = await readStream(viaProxy, taskId);
      checkLlmStream(events, TOKENS);
      assert.ok(proxy.connections() >= 2, `the stream was cut and resumed (connections: ${proxy.connections()})`);
      // The reconnect asked for what follows an event already received, not from the start.
      const resumedAfter = /last-event-id: (\S+)/i.exec(proxy.heads[1] ?? "")?.[1];
      assert.ok(resumedAfter, "the second connection carried Last-Event-ID");
      assert.ok(events.some((e) => e.id === resumedAfter));
    } finally {
      await proxy.close();
    }
  });

  test("an agent error with retryAfterMs is retried no sooner", async () => {
    const taskId = newId("flaky");
    await client.submit("flaky", { retry_after_ms: 1500 }, { taskId });
    const outcome = await client.wait(taskId, { timeoutMs: TASK_MS });
    assert.equal(outcome.status, "completed", JSON.stringify(outcome));
    assert.deepEqual(outcome.output, { attempt: 2 });
    const runs = attempts.get(taskId);
    assert.deepEqual(runs.map(([n]) => n), [1, 2]);
    // The retry policy's own backoff is 10 ms: the wait is the agent's retryAfterMs.
    assert.ok(runs[1][1] - runs[0][1] >= 1400, `retried after ${runs[1][1] - runs[0][1]} ms`);
    const events = await readStream(client, taskId);
    assert.deepEqual(events.filter((e) => e.type === "chunk").map((e) => [e.attempt, e.text]), [[1, "rate limited"]]);
    assert.equal(events.at(-1).type, "outcome");
    assert.equal(events.at(-1).attempt, 2);
  });

  test("a retried attempt receives the checkpoint its predecessor saved", async () => {
    const taskId = newId("resumable");
    await client.submit("resumable", {}, { taskId });
    const outcome = await client.wait(taskId, { timeoutMs: TASK_MS });
    assert.equal(outcome.status, "completed", JSON.stringify(outcome));
    assert.deepEqual(outcome.output, { resumed_from: 1 });
    assert.deepEqual(received.get(taskId), [
      [1, null, null],
      [2, { step: 1 }, 1],
    ]);
  });

  test("a non-retryable agent error fails the task with its kind", async () => {
    const taskId = newId("rejecting");
    await client.submit("rejecting", {}, { taskId });
    const outcome = await client.wait(taskId, { timeoutMs: TASK_MS });
    assert.ok(["failed", "dead_lettered"].includes(outcome.status), JSON.stringify(outcome));
    assert.equal(outcome.error_kind, "bad_input");
    assert.match(outcome.message ?? "", /no text given/);
  });
});
