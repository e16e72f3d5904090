// End to end against a real agentlog: `agentlog dev`, with an AgentApp of this SDK served on
// 127.0.0.1 as its `http` agent types: streams, retries and checkpoints, a task waiting for a
// signal (protocol §5) and an agent delegating to another (§6). Every test runs once per
// backend, one agentlog each: the embedded log in a temporary directory, and Kafka (topics of
// a prefix unique to the run) when AGENTLOG_TEST_KAFKA names a broker.
//
// Needs AGENTLOG_BIN (the agentlog binary). Without it these tests skip, except under
// CI=true, where a skip would hide that nothing was tested: there they fail. Likewise the
// Kafka variant without AGENTLOG_TEST_KAFKA: skipped, and under CI=true failed
// (test/agentlog-dev.js).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import * as net from "node:net";
import { after, before, describe, test as nodeTest } from "node:test";

import { AgentError, AgentlogClient, BadRequest, Conflict, DelegationFailed, NotFound, NotWaiting, UnexpectedSignal, createAgentServer } from "../dist/index.js";
import { BACKENDS, backendSkip, startAgentlog } from "./agentlog-dev.js";
import { serve, sleep } from "./helpers.js";

const BIN = process.env.AGENTLOG_BIN ?? "";
if (!BIN && process.env.CI === "true") {
  throw new Error("CI=true but AGENTLOG_BIN does not name the agentlog binary: the SDK's end-to-end tests cannot run");
}
const skip = BIN ? false : "AGENTLOG_BIN is not set (the agentlog binary the end-to-end tests run)";

/** The most any one test waits for a task. */
const TASK_MS = 30_000;
const TOKENS = 20;

const attempts = new Map();
/** Per task id, what each attempt of `resumable` received: [attempt, lastCheckpoint, lastCheckpointAttempt]. */
const received = new Map();
/** Per task id, what each attempt of `approval` received: [attempt, resumeSignal, lastCheckpoint]. */
const approvals = new Map();
/** Per task id, the callback URL each attempt of `delegator` received. */
const callbacks = new Map();
const record = (map, taskId, entry) => {
  if (!map.has(taskId)) map.set(taskId, []);
  map.get(taskId).push(entry);
};
const app = createAgentServer()
  // A fake LLM agent reporting usage after each of its two model calls.
  .agent("billed", async (ctx) => {
    ctx.usage({ inputTokens: 100, outputTokens: 20, model: "gpt-test", costMicros: 180, currency: "USD", counters: { cached_input_tokens: 64 } });
    ctx.usage({ inputTokens: 30, outputTokens: 5, model: "gpt-test", costMicros: 45, currency: "USD" });
    return { calls: 2 };
  })
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
  })
  // Drafts once (checkpointed), then waits for a person's approval; resumed by the signal it
  // runs again from the top, skips the draft, and answers with the signal's payload.
  .agent("approval", async (ctx) => {
    record(approvals, ctx.taskId, [ctx.attempt, ctx.resumeSignal, ctx.lastCheckpoint]);
    let draft = ctx.lastCheckpoint?.draft;
    if (draft === undefined) {
      await ctx.progress({ percent: 50, message: "drafted" });
      draft = `draft: ${ctx.input.text}`;
      await ctx.checkpoint({ step: "drafted", draft });
    }
    const signal = await ctx.waitForSignal("approval", 60_000);
    return { approved: signal.payload?.approved ?? null, draft };
  })
  // Waits 300 ms for a signal that never comes: `impatient` resumes with the timeout marker
  // (on_signal_timeout = "resume"), `strict` fails (the default).
  .agent("impatient", waitBriefly)
  .agent("strict", waitBriefly)
  // A child for `delegator`.
  .agent("shout", async (ctx) => ({ text: ctx.input.text.toUpperCase() }))
  // Delegates to `shout` (and, asked to, to `rejecting`, whose failure it reports).
  .agent("delegator", async (ctx) => {
    record(callbacks, ctx.taskId, ctx.callbackUrl);
    const child = await ctx.delegate("shout", { text: ctx.input.text }, { labels: { from: "delegator" } });
    let failure = null;
    if (ctx.input.fail) {
      try {
        await ctx.delegate("rejecting", {});
      } catch (e) {
        if (!(e instanceof DelegationFailed)) throw e;
        failure = { taskId: e.taskId, status: e.status, errorKind: e.errorKind, message: e.childMessage };
      }
    }
    return { child, failure };
  });

async function waitBriefly(ctx) {
  const signal = await ctx.waitForSignal("answer", 300);
  return { timedOut: signal.timedOut, attempt: ctx.attempt, payload: signal.payload };
}

function agents(agentUrl) {
  return `
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

[agents.approval]
runtime = { kind = "http", url = "${agentUrl}/approval" }
timeout_ms = 20000

[agents.impatient]
runtime = { kind = "http", url = "${agentUrl}/impatient" }
on_signal_timeout = "resume"

[agents.strict]
runtime = { kind = "http", url = "${agentUrl}/strict" }

[agents.shout]
runtime = { kind = "http", url = "${agentUrl}/shout" }

[agents.billed]
runtime = { kind = "http", url = "${agentUrl}/billed" }

[agents.delegator]
runtime = { kind = "http", url = "${agentUrl}/delegator" }
delegates = true
timeout_ms = 30000
`;
}

/** The agent server and the client of the suite running now (one backend at a time). */
let agent;
let running;
let client;
let apiUrl;

const newId = (prefix) => `${prefix}-${randomUUID().replaceAll("-", "").slice(0, 12)}`;

/** The task once it has `status`, polled; fails when it ended or took past TASK_MS. */
async function untilStatus(taskId, status, after) {
  const deadline = Date.now() + TASK_MS;
  let task = await client.get(taskId, { after });
  while (task.status !== status) {
    if (task.outcome) assert.fail(`task ${taskId} ended ${task.outcome.status} instead of reaching ${status}: ${JSON.stringify(task)}`);
    if (Date.now() > deadline) assert.fail(`task ${taskId} is ${task.status}, not ${status}, after ${TASK_MS} ms: ${JSON.stringify(task)}`);
    await sleep(50);
    task = await client.get(taskId);
  }
  return task;
}

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

// Skipped tests are skipped one by one (not their suite), so the run's count of skipped tests
// shows them.
for (const backend of BACKENDS) describe(`end to end against agentlog (${backend})`, () => {
  const why = skip || backendSkip(backend);
  const test = (name, fn) => nodeTest(name, { skip: why }, fn);

  before(async () => {
    if (why) return;
    agent = await serve(app);
    running = await startAgentlog({ bin: BIN, backend, agents: agents(agent.url), name: "sdk-ts-e2e" });
    apiUrl = running.url;
    client = new AgentlogClient({ baseUrl: apiUrl, timeoutMs: 10_000 });
  });

  after(async () => {
    await running?.stop();
    running = undefined;
    await agent?.close();
    agent = undefined;
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

  test("an agent reports usage: the task, its stream and the stats show it", async () => {
    const ids = [];
    for (const n of [0, 1]) ids.push((await client.submit("billed", { n })).taskId);
    const expected = { input_tokens: 130, output_tokens: 25, model: "gpt-test", cost_micros: 225, currency: "USD", counters: { cached_input_tokens: 64 } };
    for (const taskId of ids) {
      const outcome = await client.wait(taskId, { timeoutMs: TASK_MS });
      assert.equal(outcome.status, "completed", JSON.stringify(outcome));
      assert.deepEqual(outcome.usage, expected);
      assert.deepEqual((await client.get(taskId)).outcome.usage, expected);
    }
    const events = await readStream(client, ids[0]);
    assert.deepEqual(events.at(-1).usage, expected);
    // One agentlog serves the suite: look at this agent type only, at least this test's tasks.
    const deadline = Date.now() + TASK_MS;
    let usage;
    let mine;
    for (;;) {
      usage = (await client.stats()).usage;
      mine = usage.by_model.find((m) => m.agent_type === "billed");
      if (mine && mine.tasks >= 2) break;
      if (Date.now() > deadline) assert.fail(`the stats never counted the usage: ${JSON.stringify(usage)}`);
      await sleep(50);
    }
    assert.equal(mine.model, "gpt-test");
    assert.equal(mine.input_tokens, 130 * mine.tasks);
    assert.deepEqual(mine.cost_micros, { USD: 225 * mine.tasks });
    assert.deepEqual(mine.counters, { cached_input_tokens: 64 * mine.tasks });
    assert.ok(usage.tasks >= 2 && usage.cost_micros.USD >= 450);
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

  // Waiting for a signal (protocol §5) and delegation (§6).

  test("a task waits for its approval signal and resumes with it", async () => {
    const taskId = newId("approval");
    const submitted = await client.submit("approval", { text: "the memo" }, { taskId });
    const waiting = await untilStatus(taskId, "waiting", submitted.position);
    assert.equal(waiting.waiting_for?.signal, "approval", JSON.stringify(waiting));
    // When the wait times out (agent protocol §5: `timeout_at_ms`), 60 s from the suspend.
    const { timeout_at_ms: atMs, attempt } = waiting.waiting_for;
    assert.ok(atMs > Date.now(), JSON.stringify(waiting.waiting_for));
    assert.equal(attempt, 2, "the attempt the signal starts");
    // The wrong name: refused, naming the signal awaited; nothing resumes.
    await assert.rejects(client.signal(taskId, "rejection", { approved: false }), (e) => {
      assert.ok(e instanceof UnexpectedSignal && e instanceof Conflict, String(e));
      assert.equal(e.waitingFor, "approval", e.message);
      return true;
    });
    const signalId = newId("sig");
    const sent = await client.signal(taskId, "approval", { approved: true }, { signalId });
    assert.deepEqual([sent.taskId, sent.signal, sent.signalId, sent.duplicate], [taskId, "approval", signalId, false]);
    const again = await client.signal(taskId, "approval", { approved: true }, { signalId });
    assert.deepEqual([again.signalId, again.duplicate], [signalId, true]);
    const outcome = await client.wait(taskId, { timeoutMs: TASK_MS });
    assert.equal(outcome.status, "completed", JSON.stringify(outcome));
    assert.deepEqual(outcome.output, { approved: true, draft: "draft: the memo" });
    // Two attempts: the first drafted and suspended, the second got the signal and the draft.
    assert.deepEqual(approvals.get(taskId), [
      [1, null, null],
      [2, { name: "approval", id: signalId, payload: { approved: true }, timedOut: false }, { step: "drafted", draft: "draft: the memo" }],
    ]);
    // Once it ended: the same signal id is still a duplicate, a new signal is refused.
    assert.equal((await client.signal(taskId, "approval", { approved: false }, { signalId })).duplicate, true);
    await assert.rejects(client.signal(taskId, "approval", { approved: false }), (e) => e instanceof NotWaiting && e.taskStatus === "completed");
  });

  test("a wait that times out resumes or fails as the agent type says", async () => {
    const [resumed, failed] = [newId("impatient"), newId("strict")];
    await client.submit("impatient", {}, { taskId: resumed });
    await client.submit("strict", {}, { taskId: failed });
    const outcome = await client.wait(resumed, { timeoutMs: TASK_MS });
    assert.equal(outcome.status, "completed", JSON.stringify(outcome));
    assert.deepEqual(outcome.output, { timedOut: true, attempt: 2, payload: null });
    const failure = await client.wait(failed, { timeoutMs: TASK_MS });
    assert.ok(["failed", "dead_lettered"].includes(failure.status), JSON.stringify(failure));
    assert.equal(failure.error_kind, "signal_timeout");
  });

  test("a delegating agent awaits children of other agent types", async () => {
    const taskId = newId("delegator");
    await client.submit("delegator", { text: "hello", fail: true }, { taskId });
    const outcome = await client.wait(taskId, { timeoutMs: TASK_MS });
    assert.equal(outcome.status, "completed", JSON.stringify(outcome));
    assert.deepEqual(outcome.output.child, { text: "HELLO" });
    const { failure } = outcome.output;
    assert.equal(failure.taskId, `${taskId}.1`);
    assert.ok(["failed", "dead_lettered"].includes(failure.status), JSON.stringify(failure));
    assert.equal(failure.errorKind, "bad_input");
    assert.match(failure.message ?? "", /no text given/);
    assert.ok(callbacks.get(taskId).every((url) => typeof url === "string" && url.startsWith("http")), JSON.stringify(callbacks.get(taskId)));
    // The children are tasks of their own, with their parent named.
    const child = await untilStatus(`${taskId}.0`, "completed");
    assert.deepEqual([child.agent_type, child.parent_task_id], ["shout", taskId]);
    assert.deepEqual(child.labels, { from: "delegator" });
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
