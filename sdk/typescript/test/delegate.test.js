// Delegation (protocol §6): ctx.delegate, ctx.submitChild and ctx.childOutcome against a fake
// callback (the worker's `callback_url`), with the agent server on a real 127.0.0.1 port.
import assert from "node:assert/strict";
import { after, before, beforeEach, test } from "node:test";

import { CHILD_WAIT_MS, DelegationFailed, DelegationUnavailable, NotFound, PayloadTooLarge, WaitTimeout, createAgentServer } from "../dist/index.js";
import { fakeServer, serve, until } from "./helpers.js";

const TOKEN_PATH = "/callback/tok-1";

/** Per child number, the outcome answers still to give (the last one repeats). */
let outcomes;
/** Children submitted, by number. */
let submitted;
/** Set to hold outcome requests unanswered (a child that never ends). */
let hold = false;
const callback = await fakeServer(async (r) => {
  if (!r.path.startsWith(TOKEN_PATH)) return { status: 404, body: { error: { code: "no_attempt", message: "no running attempt has this callback" } } };
  const tail = r.path.slice(TOKEN_PATH.length);
  if (r.method === "POST" && tail === "/children") {
    if (r.body.agent_type === "huge") return { status: 413, body: { error: { code: "payload_too_large", message: "the input is over the log's record limit" } } };
    submitted.set(r.body.n, r.body);
    return { status: 202, body: { task_id: `t-1.${r.body.n}` } };
  }
  const match = /^\/children\/(\d+)\/outcome$/.exec(tail);
  if (r.method === "GET" && match) {
    if (hold) await new Promise(() => {}); // answered never: closed by the test
    const n = Number(match[1]);
    const script = outcomes.get(n) ?? [{ status: 200, body: { task_id: `t-1.${n}`, status: "completed", output: { n }, content_type: "application/json" } }];
    return script.length > 1 ? script.shift() : script[0];
  }
  return { status: 400, body: { error: { code: "bad_request", message: `no ${r.method} ${tail}` } } };
});

const pending = (n) => ({ status: 202, body: { task_id: `t-1.${n}`, status: "pending" } });
const seen = {};
const app = createAgentServer()
  .agent("parent", async (ctx) => {
    const summary = await ctx.delegate("summarize", { text: ctx.input.text }, { contentType: "application/json", labels: { team: "a" } });
    return { child: summary };
  })
  .agent("careful", async (ctx) => {
    try {
      return await ctx.delegate("summarize", { text: "x" });
    } catch (e) {
      seen.failure = e;
      return { handled: e.errorKind };
    }
  })
  .agent("careless", async (ctx) => ctx.delegate("summarize", { text: "x" }))
  .agent("counting", async (ctx) => {
    const ids = [await ctx.submitChild("a", 1), await ctx.submitChild("b", 2, { n: 5 }), await ctx.submitChild("c", 3), await ctx.submitChild("d", 4, { n: 1 })];
    const outcomes = [];
    for (const n of [0, 5, 6]) outcomes.push(await ctx.childOutcome(n));
    outcomes.push(await ctx.childOutcome(ids[3])); // by its task id
    return { ids, outcomes };
  })
  // Calls made together are numbered in the order of the calls.
  .agent("together", async (ctx) => Promise.all([ctx.delegate("a", "first"), ctx.delegate("b", "second"), ctx.delegate("c", "third")]))
  .agent("impatient", async (ctx) => {
    await ctx.submitChild("slow", {});
    try {
      await ctx.childOutcome(0, { timeoutMs: 300 });
    } catch (e) {
      seen.impatient = e;
    }
    return "gave up";
  })
  .agent("unavailable", async (ctx) => ctx.delegate("summarize", {}))
  .agent("lonely", async (ctx) => {
    seen.lonely = ctx;
    try {
      await ctx.delegate("summarize", {});
    } catch (e) {
      seen.noCallback = e;
    }
    return "ok";
  })
  .agent("bad_calls", async (ctx) => {
    seen.badCalls = [];
    const calls = [
      () => ctx.delegate("huge", {}),
      () => ctx.submitChild("", {}),
      () => ctx.submitChild("x", undefined),
      () => ctx.submitChild("x", 1, { n: -1 }),
      () => ctx.childOutcome(1.5),
      () => ctx.childOutcome("t-1.99"),
    ];
    for (const call of calls) {
      try {
        await call();
      } catch (e) {
        seen.badCalls.push(e);
      }
    }
    return "ok";
  })
  .agent("waiting", async (ctx) => {
    try {
      await ctx.delegate("slow", {});
    } catch (e) {
      seen.hungUp = e;
    }
    return "gone";
  });

function attempt(agentType, input = null, fields = {}) {
  return {
    protocol: 1,
    task_id: "t-1",
    agent_type: agentType,
    attempt: 1,
    idempotency_key: "t-1",
    content_type: "application/json",
    input,
    input_encoding: "json",
    labels: {},
    callback_url: callback.url + TOKEN_PATH,
    ...fields,
  };
}

let served;
before(async () => {
  served = await serve(app);
});
beforeEach(() => {
  outcomes = new Map();
  submitted = new Map();
  callback.requests.length = 0;
  hold = false;
});
after(async () => {
  await served.close();
  await callback.close();
});

async function frames(body) {
  const response = await fetch(served.url, { method: "POST", body: JSON.stringify(body), signal: AbortSignal.timeout(10_000) });
  const text = await response.text();
  assert.equal(response.status, 200, text);
  return text.trimEnd().split("\n").map((line) => JSON.parse(line));
}

test("delegate submits the child, asks again while it is pending, and returns its output", async () => {
  outcomes.set(0, [pending(0), { status: 200, body: { task_id: "t-1.0", status: "completed", output: { summary: "short" }, content_type: "application/json" } }]);
  assert.deepEqual(await frames(attempt("parent", { text: "long text" })), [{ type: "result", output: { child: { summary: "short" } } }]);
  const [post, ...gets] = callback.requests;
  assert.deepEqual([post.method, post.path, post.headers["content-type"]], ["POST", `${TOKEN_PATH}/children`, "application/json"]);
  assert.deepEqual(post.body, { n: 0, agent_type: "summarize", input: { text: "long text" }, content_type: "application/json", labels: { team: "a" } });
  assert.equal(gets.length, 2);
  for (const get of gets) {
    assert.deepEqual([get.method, get.path, get.query], ["GET", `${TOKEN_PATH}/children/0/outcome`, { wait_ms: String(CHILD_WAIT_MS) }]);
  }
  assert.equal(CHILD_WAIT_MS, 30_000);
});

test("a child that did not complete throws DelegationFailed", async () => {
  const failed = { task_id: "t-1.0", status: "failed", error_kind: "bad_input", message: "no text given" };
  outcomes.set(0, [pending(0), { status: 200, body: failed }]);
  assert.deepEqual(await frames(attempt("careful")), [{ type: "result", output: { handled: "bad_input" } }]);
  const e = seen.failure;
  assert.ok(e instanceof DelegationFailed);
  assert.deepEqual([e.n, e.taskId, e.status, e.errorKind, e.childMessage], [0, "t-1.0", "failed", "bad_input", "no text given"]);
  assert.match(e.message, /t-1\.0.*failed.*bad_input.*no text given/);
  // Content type and labels are sent only when given.
  assert.deepEqual(callback.requests[0].body, { n: 0, agent_type: "summarize", input: { text: "x" } });
});

test("an uncaught DelegationFailed fails the attempt with kind delegation_failed, not retryable", async () => {
  outcomes.set(0, [{ status: 200, body: { task_id: "t-1.0", status: "cancelled", error_kind: null, message: "cancelled by ann" } }]);
  const [only, ...rest] = await frames(attempt("careless"));
  assert.deepEqual(rest, []);
  assert.deepEqual([only.type, only.kind, only.retryable], ["error", "delegation_failed", false]);
  assert.match(only.message, /t-1\.0.*cancelled.*cancelled by ann/);
});

test("children are numbered from 0 per attempt, after the highest number given", async () => {
  outcomes.set(5, [pending(5), pending(5), { status: 200, body: { task_id: "t-1.5", status: "dead_lettered", error_kind: "timeout", message: "3 attempts timed out" } }]);
  outcomes.set(6, [{ status: 200, body: { task_id: "t-1.6", status: "completed", output: "plain text", content_type: "text/plain; charset=utf-8" } }]);
  const [result] = await frames(attempt("counting"));
  assert.deepEqual([...submitted.keys()], [0, 5, 6, 1]);
  assert.deepEqual([...submitted.values()].map((b) => [b.agent_type, b.input]), [["a", 1], ["b", 2], ["c", 3], ["d", 4]]);
  assert.deepEqual(result.output.ids, ["t-1.0", "t-1.5", "t-1.6", "t-1.1"]);
  const [zero, five, six, one] = result.output.outcomes;
  assert.deepEqual(zero, { n: 0, taskId: "t-1.0", status: "completed", output: { n: 0 }, contentType: "application/json", errorKind: null, message: null, raw: { task_id: "t-1.0", status: "completed", output: { n: 0 }, content_type: "application/json" } });
  assert.deepEqual([five.status, five.output, five.errorKind, five.message], ["dead_lettered", null, "timeout", "3 attempts timed out"]);
  assert.deepEqual([six.output, six.contentType], ["plain text", "text/plain; charset=utf-8"]);
  assert.equal(one.taskId, "t-1.1");
  // Another attempt counts from 0 again: the same children.
  submitted.clear();
  await frames(attempt("counting", null, { attempt: 2 }));
  assert.deepEqual([...submitted.keys()], [0, 5, 6, 1]);
});

test("without a callback URL, delegating says to declare delegates = true", async () => {
  for (const fields of [{ callback_url: null }, { callback_url: undefined }]) {
    seen.noCallback = undefined;
    assert.deepEqual(await frames(attempt("lonely", null, fields)), [{ type: "result", output: "ok", output_encoding: "utf8", content_type: "text/plain; charset=utf-8" }]);
    assert.equal(seen.lonely.callbackUrl, null);
    assert.ok(seen.noCallback instanceof DelegationUnavailable, String(seen.noCallback));
    assert.match(seen.noCallback.message, /callback_url.*`lonely`.*delegates = true/);
  }
  // Not caught: the attempt fails for good (another attempt would have no callback either).
  const [only] = await frames(attempt("unavailable", null, { callback_url: null }));
  assert.deepEqual([only.type, only.kind, only.retryable], ["error", "delegation_unavailable", false]);
  assert.match(only.message, /delegates = true/);
  assert.equal(callback.requests.length, 0);
});

test("children delegated together are numbered in the order of the calls", async () => {
  for (const [n, text] of ["first", "second", "third"].entries()) {
    outcomes.set(n, [pending(n), { status: 200, body: { task_id: `t-1.${n}`, status: "completed", output: text.toUpperCase() } }]);
  }
  const [result] = await frames(attempt("together"));
  assert.deepEqual(result.output, ["FIRST", "SECOND", "THIRD"]);
  assert.deepEqual([...submitted.entries()].map(([n, b]) => [n, b.agent_type, b.input]).sort(), [[0, "a", "first"], [1, "b", "second"], [2, "c", "third"]]);
});

test("childOutcome gives up at its timeout", async () => {
  outcomes.set(0, [pending(0)]);
  const started = Date.now();
  await frames(attempt("impatient"));
  assert.ok(seen.impatient instanceof WaitTimeout && seen.impatient.code === "wait_timeout", String(seen.impatient));
  assert.ok(Date.now() - started < 5_000);
  // Each request asks the worker to hold it no longer than what is left.
  const waits = callback.requests.filter((r) => r.method === "GET").map((r) => Number(r.query.wait_ms));
  assert.ok(waits.length >= 1 && waits.every((ms) => ms >= 0 && ms <= 300), JSON.stringify(waits));
});

test("callback errors are typed; bad arguments are refused before anything is sent", async () => {
  await frames(attempt("bad_calls"));
  const [huge, ...bad] = seen.badCalls;
  assert.ok(huge instanceof PayloadTooLarge && huge.status === 413, String(huge));
  assert.deepEqual(bad.map((e) => e.constructor), [TypeError, TypeError, RangeError, RangeError, RangeError]);
  assert.equal(callback.requests.length, 1);
  // A callback that is no longer a running attempt: 404.
  await frames(attempt("careful", null, { callback_url: `${callback.url}/callback/old-token/` }));
  assert.ok(seen.failure instanceof NotFound && seen.failure.code === "no_attempt", String(seen.failure));
  assert.equal(callback.requests.at(-1).path, "/callback/old-token/children");
});

test("the callback URL keeps its query", async () => {
  await frames(attempt("parent", { text: "t" }, { callback_url: `${callback.url}${TOKEN_PATH}?token=abc` }));
  assert.deepEqual(callback.requests.map((r) => [r.path, r.query]), [
    [`${TOKEN_PATH}/children`, { token: "abc" }],
    [`${TOKEN_PATH}/children/0/outcome`, { token: "abc", wait_ms: String(CHILD_WAIT_MS) }],
  ]);
});

test("agentlog hanging up aborts the wait for a child", async () => {
  hold = true;
  seen.hungUp = undefined;
  const hangUp = new AbortController();
  const response = fetch(served.url, { method: "POST", body: JSON.stringify(attempt("waiting")), signal: hangUp.signal });
  await until(() => callback.requests.some((r) => r.method === "GET"), 10_000, "the outcome request");
  hangUp.abort();
  await assert.rejects(response.then((r) => r.text()));
  await until(() => seen.hungUp !== undefined, 5_000, "the handler's delegate rejecting");
  assert.match(String(seen.hungUp?.message ?? seen.hungUp), /agentlog closed the connection|abort/i);
});

test("a malformed callback_url in the attempt is a 400", async () => {
  const response = await fetch(served.url, { method: "POST", body: JSON.stringify(attempt("parent", {}, { callback_url: "not a url" })) });
  assert.equal(response.status, 400);
  assert.match((await response.json()).error.message, /callback_url/);
});
