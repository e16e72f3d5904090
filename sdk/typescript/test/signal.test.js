// Signals (protocol §5): the client's signal() against a fake API, and ctx.waitForSignal /
// ctx.resumeSignal in the agent server, both on real 127.0.0.1 ports.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  AgentlogClient,
  BadRequest,
  Conflict,
  MAX_SIGNAL_TIMEOUT_MS,
  NotFound,
  NotWaiting,
  PayloadTooLarge,
  Suspension,
  UnexpectedSignal,
  createAgentServer,
} from "../dist/index.js";
import { suspendFrame } from "../dist/frames.js";
import { fakeServer, serve } from "./helpers.js";

const error = (status, code, message, extra = {}) => ({ status, body: { error: { code, message, field: null, ...extra } } });

describe("client.signal", () => {
  let api;
  let client;
  /** What the fake API answers next, by the request. */
  let answer;
  before(async () => {
    api = await fakeServer((request) => answer(request));
    client = new AgentlogClient({ baseUrl: api.url, apiKey: "k" });
  });
  after(() => api.close());

  test("posts the signal's id and payload and reads an accepted signal", async () => {
    answer = (r) => ({ status: 202, body: { task_id: "t-1", signal: "approval", signal_id: r.body.signal_id, status: "accepted" } });
    const sent = await client.signal("t-1", "approval", { approved: true, by: "ann" }, { signalId: "sig-1" });
    assert.deepEqual({ ...sent, raw: undefined }, { taskId: "t-1", signal: "approval", signalId: "sig-1", duplicate: false, raw: undefined });
    assert.equal(sent.raw.status, "accepted");
    const request = api.requests.at(-1);
    assert.equal(request.method, "POST");
    assert.equal(request.path, "/v1/tasks/t-1/signals/approval");
    assert.deepEqual(request.query, {});
    assert.equal(request.headers["content-type"], "application/json");
    assert.equal(request.headers.authorization, "Bearer k");
    assert.deepEqual(request.body, { signal_id: "sig-1", payload: { approved: true, by: "ann" } });
  });

  test("without a signal id or payload, neither is sent; a null payload is", async () => {
    answer = () => ({ status: 202, body: { task_id: "t-1", signal: "go", signal_id: "generated-7", status: "accepted" } });
    const sent = await client.signal("t-1", "go");
    assert.equal(sent.signalId, "generated-7");
    assert.equal(sent.duplicate, false);
    assert.deepEqual(api.requests.at(-1).body, {});
    await client.signal("t-1", "go", null);
    assert.deepEqual(api.requests.at(-1).body, { payload: null });
  });

  test("a signal id the task already received is a duplicate", async () => {
    answer = () => ({ status: 200, body: { task_id: "t-1", signal: "approval", signal_id: "sig-1", status: "duplicate" } });
    const sent = await client.signal("t-1", "approval", { approved: true }, { signalId: "sig-1" });
    assert.deepEqual([sent.duplicate, sent.signalId, sent.signal], [true, "sig-1", "approval"]);
  });

  test("task ids and names are escaped in the path", async () => {
    answer = () => ({ status: 202, body: { task_id: "a/b", signal: "x", signal_id: null, status: "accepted" } });
    const sent = await client.signal("a/b c", "x?y");
    assert.equal(api.requests.at(-1).path, "/v1/tasks/a%2Fb%20c/signals/x%3Fy");
    assert.equal(sent.signalId, null);
  });

  test("409 not_waiting names the task's status", async () => {
    const messages = [
      ["task `t-1` is completed, not waiting for a signal", "completed"],
      ["task `t-1` is not waiting: it is `running`", "running"],
      ["task t-1 is dead_lettered; it waits for no signal", "dead_lettered"],
    ];
    for (const [message, status] of messages) {
      answer = () => error(409, "not_waiting", message);
      await assert.rejects(client.signal("t-1", "approval", { approved: true }), (e) => {
        assert.ok(e instanceof NotWaiting && e instanceof Conflict, e.name);
        assert.deepEqual([e.status, e.code, e.message, e.taskStatus], [409, "not_waiting", message, status]);
        return true;
      });
    }
    // agentlog's own answer: the status in error.detail, which wins over the message.
    answer = () => error(409, "not_waiting", "task `t-1` is running, not waiting for a signal", { detail: { status: "queued" } });
    await assert.rejects(client.signal("t-1", "approval"), (e) => e instanceof NotWaiting && e.taskStatus === "queued" && /running/.test(e.message));
    answer = () => error(409, "not_waiting", "the task is not waiting");
    await assert.rejects(client.signal("t-1", "approval"), (e) => e instanceof NotWaiting && e.taskStatus === null);
  });

  test("409 unexpected_signal names the signal the task waits for", async () => {
    const messages = [
      "task `t-1` waits for signal `approval`, not `rejection`",
      "task `t-1` waits for the signal `approval`, not `rejection`",
      "signal `rejection` is not the one task `t-1` waits for (`approval`)",
      "task t-1 is waiting for approval, not rejection",
    ];
    for (const message of messages) {
      answer = () => error(409, "unexpected_signal", message);
      await assert.rejects(client.signal("t-1", "rejection"), (e) => {
        assert.ok(e instanceof UnexpectedSignal && e instanceof Conflict, e.name);
        assert.deepEqual([e.status, e.code, e.message, e.waitingFor], [409, "unexpected_signal", message, "approval"], message);
        return true;
      });
    }
    // agentlog's own answer: the awaited signal in error.detail, which wins over the message.
    answer = () => error(409, "unexpected_signal", "task `t-1` waits for signal `approval`, not `rejection`", { detail: { status: "waiting", waiting_for: "review" } });
    await assert.rejects(client.signal("t-1", "rejection"), (e) => e instanceof UnexpectedSignal && e.waitingFor === "review" && e.body.error.detail.status === "waiting");
    answer = () => error(409, "unexpected_signal", "another signal", { detail: { waiting_for: { signal: "review", timeout_at_us: 1 } } });
    await assert.rejects(client.signal("t-1", "rejection"), (e) => e instanceof UnexpectedSignal && e.waitingFor === "review");
    // Another 409 stays a plain Conflict.
    answer = () => error(409, "task_finished", "task `t-1` already ended completed");
    await assert.rejects(client.signal("t-1", "approval"), (e) => e instanceof Conflict && !(e instanceof NotWaiting) && !(e instanceof UnexpectedSignal));
  });

  test("404, 400 and 413 are typed", async () => {
    answer = () => error(404, "no_task", "no task `t-9`");
    await assert.rejects(client.signal("t-9", "approval"), (e) => e instanceof NotFound && e.code === "no_task");
    answer = () => error(400, "invalid_field", "signal name `Bad Name` must match [a-z0-9_.-]{1,64}", { field: "signal" });
    await assert.rejects(client.signal("t-1", "Bad Name"), (e) => e instanceof BadRequest && e.field === "signal");
    answer = () => error(413, "payload_too_large", "the payload is over 262144 bytes");
    await assert.rejects(client.signal("t-1", "approval", "x".repeat(300 * 1024)), (e) => e instanceof PayloadTooLarge && e.status === 413 && /262144/.test(e.message));
  });
});

describe("waiting for a signal in a handler", () => {
  const seen = {};
  const app = createAgentServer()
    // The approval flow of the README: draft once, wait, then use the signal.
    .agent("approve", async (ctx) => {
      seen.approve = ctx;
      let draft = ctx.lastCheckpoint?.draft;
      if (draft === undefined) {
        await ctx.progress({ percent: 10, message: "drafting" });
        draft = `draft of ${ctx.input.text}`;
        await ctx.emit(draft);
        await ctx.checkpoint({ step: "drafted", draft });
      }
      const signal = await ctx.waitForSignal("approval", 86_400_000);
      if (signal.timedOut) return { approved: false, draft, reason: "timed out" };
      return { approved: signal.payload.approved, draft };
    })
    // Waits again after a timeout (a reminder loop): the second wait suspends.
    .agent("remind", async (ctx) => {
      let signal = await ctx.waitForSignal("approval", 1000);
      while (signal.timedOut) {
        await ctx.emit("reminder sent");
        signal = await ctx.waitForSignal("approval", 2000);
      }
      return signal.payload;
    })
    // Swallows the suspension and goes on: the attempt suspends all the same.
    .agent("swallow", async (ctx) => {
      try {
        await ctx.waitForSignal("go", 5000);
      } catch (e) {
        seen.swallowed = e;
        try {
          await ctx.emit("after the wait");
        } catch (again) {
          seen.refused = again;
        }
      }
      return "not the answer";
    })
    .agent("bad_wait", async (ctx) => {
      seen.badWaits = [];
      for (const [name, timeout] of ctx.input) {
        try {
          await ctx.waitForSignal(name, timeout);
        } catch (e) {
          seen.badWaits.push(e);
        }
      }
      return "checked";
    });

  let served;
  before(async () => {
    served = await serve(app);
  });
  after(() => served.close());

  function attempt(agentType, input = null, fields = {}) {
    return { protocol: 1, task_id: "t-1", agent_type: agentType, attempt: 1, idempotency_key: "t-1", content_type: "application/json", input, input_encoding: "json", labels: {}, ...fields };
  }

  async function frames(body) {
    const response = await fetch(served.url, { method: "POST", body: JSON.stringify(body), signal: AbortSignal.timeout(10_000) });
    const text = await response.text();
    assert.equal(response.status, 200, text);
    assert.equal(response.headers.get("content-type"), "application/x-ndjson");
    assert.ok(text.endsWith("\n"));
    return text.trimEnd().split("\n").map((line) => JSON.parse(line));
  }

  test("without the signal the attempt suspends; frames sent before stay sent", async () => {
    const got = await frames(attempt("approve", { text: "the memo" }));
    assert.deepEqual(got, [
      { type: "progress", percent: 10, message: "drafting" },
      { type: "chunk", text: "draft of the memo" },
      { type: "checkpoint", state: { step: "drafted", draft: "draft of the memo" } },
      { type: "suspend", signal: "approval", timeout_ms: 86_400_000 },
    ]);
    assert.equal(seen.approve.resumeSignal, null);
  });

  test("resumed by the signal, the handler gets it and skips what its checkpoint says is done", async () => {
    const signal = { name: "approval", id: "sig-1", payload: { approved: true }, timed_out: false };
    const got = await frames(attempt("approve", { text: "the memo" }, { attempt: 2, checkpoint: { step: "drafted", draft: "draft 1" }, checkpoint_attempt: 1, signal }));
    assert.deepEqual(got, [{ type: "result", output: { approved: true, draft: "draft 1" } }]);
    assert.deepEqual(seen.approve.resumeSignal, { name: "approval", id: "sig-1", payload: { approved: true }, timedOut: false });
    assert.ok(Object.isFrozen(seen.approve.resumeSignal));
  });

  test("a timed-out signal is returned too: the handler decides", async () => {
    const signal = { name: "approval", id: null, payload: null, timed_out: true };
    const got = await frames(attempt("approve", { text: "m" }, { attempt: 2, checkpoint: { step: "drafted", draft: "d" }, checkpoint_attempt: 1, signal }));
    assert.deepEqual(got, [{ type: "result", output: { approved: false, draft: "d", reason: "timed out" } }]);
    assert.deepEqual(seen.approve.resumeSignal, { name: "approval", id: null, payload: null, timedOut: true });
  });

  test("a signal of another name does not satisfy the wait", async () => {
    const signal = { name: "review", id: "r-1", payload: "ok", timed_out: false };
    const got = await frames(attempt("approve", { text: "m" }, { attempt: 3, checkpoint: { step: "drafted", draft: "d" }, checkpoint_attempt: 1, signal }));
    assert.deepEqual(got, [{ type: "suspend", signal: "approval", timeout_ms: 86_400_000 }]);
    assert.equal(seen.approve.resumeSignal.name, "review");
  });

  test("the signal answers the first wait of its name only: waiting again suspends", async () => {
    const timedOut = { name: "approval", id: null, payload: null, timed_out: true };
    assert.deepEqual(await frames(attempt("remind", null, { attempt: 2, signal: timedOut })), [
      { type: "chunk", text: "reminder sent" },
      { type: "suspend", signal: "approval", timeout_ms: 2000 },
    ]);
    const approved = { name: "approval", id: "s", payload: { ok: 1 }, timed_out: false };
    assert.deepEqual(await frames(attempt("remind", null, { attempt: 3, signal: approved })), [{ type: "result", output: { ok: 1 } }]);
  });

  test("a handler that catches the suspension still suspends, and sends nothing more", async () => {
    assert.deepEqual(await frames(attempt("swallow")), [{ type: "suspend", signal: "go", timeout_ms: 5000 }]);
    assert.ok(seen.swallowed instanceof Suspension);
    assert.deepEqual([seen.swallowed.signal, seen.swallowed.timeoutMs], ["go", 5000]);
    assert.equal(seen.refused, seen.swallowed);
  });

  test("a bad name or timeout is refused before anything is sent", async () => {
    const waits = [
      ["Approval", 1000],
      ["", 1000],
      ["x".repeat(65), 1000],
      ["a/b", 1000],
      ["ok", 0],
      ["ok", MAX_SIGNAL_TIMEOUT_MS + 1],
      ["ok", 1.5],
      ["ok", -5],
      [42, 1000],
      ["ok", "1000"],
      ["ok", null],
    ];
    assert.deepEqual(await frames(attempt("bad_wait", waits)), [{ type: "result", output: "checked", output_encoding: "utf8", content_type: "text/plain; charset=utf-8" }]);
    assert.deepEqual(
      seen.badWaits.map((e) => e.constructor),
      [RangeError, RangeError, RangeError, RangeError, RangeError, RangeError, RangeError, RangeError, TypeError, TypeError, TypeError],
    );
  });

  test("the suspend frame's limits are exact", () => {
    assert.equal(MAX_SIGNAL_TIMEOUT_MS, 518_400_000);
    assert.deepEqual(suspendFrame("a", 1), { type: "suspend", signal: "a", timeout_ms: 1 });
    assert.deepEqual(suspendFrame("x".repeat(64), MAX_SIGNAL_TIMEOUT_MS), { type: "suspend", signal: "x".repeat(64), timeout_ms: MAX_SIGNAL_TIMEOUT_MS });
    assert.deepEqual(suspendFrame("a.b_c-9", 60_000).signal, "a.b_c-9");
    for (const timeout of [Number.NaN, Infinity, -Infinity]) assert.throws(() => suspendFrame("a", timeout), RangeError);
    assert.throws(() => suspendFrame("a", undefined), TypeError);
  });

  test("a malformed signal in the attempt is a 400", async () => {
    for (const signal of [{ id: "x" }, "approval", { name: "a", id: 5 }, { name: "a", timed_out: "no" }]) {
      const response = await fetch(served.url, { method: "POST", body: JSON.stringify(attempt("approve", { text: "m" }, { signal })) });
      assert.equal(response.status, 400, JSON.stringify(signal));
      assert.match((await response.json()).error.message, /signal/);
    }
  });
});
