// The agent server: frames, encodings, errors, the chunk and checkpoint limits, checkpoints,
// dispatch and bad requests, flushing of each frame, and hang-ups, against the app served on a real 127.0.0.1 port.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { AgentApp, AgentError, CheckpointTooLarge, ChunkTooLarge, MAX_CHECKPOINT_LINE_BYTES, MAX_LINE_BYTES, createAgentServer, result } from "../dist/index.js";
import { checkpointFrame, chunkFrame, encodeLine } from "../dist/frames.js";
import { serve, until } from "./helpers.js";

const seen = {};
let gateOpen = false;
const app = createAgentServer()
  .agent("metered", async (ctx) => {
    ctx.usage({ inputTokens: 10, outputTokens: 2, model: "m-1", costMicros: 7, currency: "EUR", counters: { cached_input_tokens: 4 } });
    ctx.usage({ inputTokens: 5, outputTokens: 1, counters: { cached_input_tokens: 1, reasoning_tokens: 3 } });
    const refused = [];
    for (const bad of [
      { inputTokens: -1 },
      { outputTokens: 1.5 },
      { inputTokens: "3" },
      { model: "m".repeat(129) },
      { model: "m-2" },
      { costMicros: 5 },
      { costMicros: 5, currency: "usd" },
      { costMicros: 5, currency: "USD" },
      { counters: { "Bad Name": 1 } },
      { counters: Object.fromEntries(Array.from({ length: 32 }, (_, i) => [`c${i}`, 1])) },
    ]) {
      try {
        ctx.usage(bad);
      } catch (e) {
        if (!(e instanceof RangeError)) throw e;
        refused.push(e.message.split(" ")[0]);
      }
    }
    return { refused };
  })
  .agent("metered_failing", async (ctx) => {
    ctx.usage({ inputTokens: 3, outputTokens: 4 });
    throw new AgentError({ kind: "bad_input", message: "no text", retryable: false });
  })
  .agent("llm", async (ctx) => {
    await ctx.progress({ percent: 0, message: "calling the model" });
    for (const word of ctx.input.words) await ctx.emit(word);
    await ctx.emit({ tokens: ctx.input.words.length });
    await ctx.progress({ percent: 100 });
    return { summary: ctx.input.words.join("") };
  })
  .agent("echo", (ctx) => {
    seen.echo = ctx;
    return ctx.input;
  })
  .agent("text", async () => "héllo")
  .agent("bytes", async () => Buffer.from([0x00, 0xff, 0x70, 0x6e, 0x67]))
  .agent("nothing", async () => undefined)
  .agent("typed", async (ctx) => {
    if (ctx.input.kind === "html") return result("<p>hi</p>", { contentType: "text/html" });
    if (ctx.input.kind === "png") return result(new Uint8Array([0x89, 0x50, 0x4e, 0x47]), { contentType: "image/png" });
    return result({ a: 1 }, { contentType: "application/vnd.x+json" });
  })
  .agent("limited", async (ctx) => {
    await ctx.emit("x");
    throw new AgentError({ kind: "rate_limited", message: "the model said slow down", retryable: true, retryAfterMs: 1500 });
  })
  .agent("buggy", async () => {
    const empty = undefined;
    return empty.missing;
  })
  .agent("nan", async () => ({ score: NaN }))
  .agent("big", async (ctx) => {
    const text = "y".repeat(MAX_LINE_BYTES * 2);
    try {
      await ctx.emit(text);
    } catch (e) {
      seen.tooLarge = e;
      for (let i = 0; i < text.length; i += 30_000) await ctx.emit(text.slice(i, i + 30_000));
    }
    return text.length;
  })
  .agent("careless", async (ctx) => {
    await ctx.emit({ blob: "z".repeat(MAX_LINE_BYTES) });
  })
  .agent("bad_percent", async (ctx) => {
    await ctx.progress({ percent: 150 });
  })
  // A multi-step agent: resumes after the step its last checkpoint names.
  .agent("steps", async (ctx) => {
    seen.steps = ctx;
    const done = ctx.lastCheckpoint?.step ?? 0;
    for (let step = done + 1; step <= 3; step++) {
      await ctx.progress({ percent: step * 30 });
      await ctx.emit(`step ${step}`);
      await ctx.checkpoint({ step });
    }
    return { resumed_after: done };
  })
  .agent("hoarder", async (ctx) => {
    await ctx.checkpoint({ step: 1 });
    try {
      await ctx.checkpoint({ blob: "z".repeat(MAX_CHECKPOINT_LINE_BYTES) });
    } catch (e) {
      seen.checkpointTooLarge = e;
    }
    // A checkpoint may be larger than a chunk.
    await ctx.checkpoint({ blob: "c".repeat(MAX_LINE_BYTES * 2) });
    for (const bad of [{ score: NaN }, { n: 1n }, undefined]) {
      try {
        await ctx.checkpoint(bad);
      } catch (e) {
        (seen.badStates ??= []).push(e);
      }
    }
    const cycle = {};
    cycle.self = cycle;
    await ctx.checkpoint(cycle); // not caught: the attempt fails like an emit of it would
  })
  .agent("careless_checkpoint", async (ctx) => {
    await ctx.emit("before");
    await ctx.checkpoint({ blob: "z".repeat(MAX_CHECKPOINT_LINE_BYTES) });
  })
  .agent("gated", async (ctx) => {
    await ctx.emit("first");
    // The test opens the gate only once it has read the first chunk: it arrives before the
    // handler finishes, or this waits until the test's timeout.
    await until(() => gateOpen, 10_000, "the gate opening");
    await ctx.emit("second");
    return "done";
  })
  .agent("endless", async (ctx) => {
    await ctx.emit("started");
    seen.endless = ctx;
    await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
    seen.abortedAt = Date.now();
    await ctx.emit("after the hang-up"); // dropped, not an error
    return "never read";
  });

function attempt(agentType, input = null, fields = {}) {
  return {
    protocol: 1,
    task_id: "t-1",
    agent_type: agentType,
    attempt: 2,
    idempotency_key: "t-1",
    content_type: "application/json",
    input,
    input_encoding: "json",
    labels: { team: "a" },
    ...fields,
  };
}

let served;
before(async () => {
  served = await serve(app);
});
after(async () => {
  gateOpen = true;
  await served.close();
});

async function post(body, { path = "/", raw, method = "POST" } = {}) {
  const init = { method, headers: { "content-type": "application/json" }, signal: AbortSignal.timeout(10_000) };
  if (method !== "GET") init.body = raw ?? JSON.stringify(body);
  const response = await fetch(served.url + path, init);
  return { status: response.status, headers: response.headers, text: await response.text() };
}

function frames(response) {
  assert.equal(response.status, 200, response.text);
  assert.equal(response.headers.get("content-type"), "application/x-ndjson");
  assert.ok(response.text.endsWith("\n"));
  return response.text.trimEnd().split("\n").map((line) => JSON.parse(line));
}

describe("frames", () => {
  test("progress, chunks and the result stream in order", async () => {
    const got = frames(await post(attempt("llm", { words: ["The ", "answer"] })));
    assert.deepEqual(got, [
      { type: "progress", percent: 0, message: "calling the model" },
      { type: "chunk", text: "The " },
      { type: "chunk", text: "answer" },
      { type: "chunk", json: { tokens: 2 } },
      { type: "progress", percent: 100 },
      { type: "result", output: { summary: "The answer" } },
    ]);
  });

  test("usage adds up over reports and travels with the result", async () => {
    const last = frames(await post(attempt("metered"))).at(-1);
    assert.equal(last.type, "result");
    assert.deepEqual(last.usage, {
      input_tokens: 15,
      output_tokens: 3,
      model: "m-1",
      cost_micros: 7,
      currency: "EUR",
      counters: { cached_input_tokens: 5, reasoning_tokens: 3 },
    });
    // Each bad report threw where it was made, naming its field, and changed nothing.
    assert.deepEqual(last.output.refused, [
      "usage.input_tokens",
      "usage.output_tokens",
      "usage.input_tokens",
      "usage.model",
      "usage.model:",
      "usage.costMicros",
      "usage.currency",
      "usage.currency:",
      "usage.counters:",
      "usage.counters:",
    ]);
    // A failed attempt reports nothing; a handler that reports nothing sends no usage.
    assert.equal(frames(await post(attempt("metered_failing"))).at(-1).usage, undefined);
    assert.equal(frames(await post(attempt("echo", { k: 1 }))).at(-1).usage, undefined);
  });

  test("the context carries the attempt", async () => {
    assert.deepEqual(frames(await post(attempt("echo", { k: [1, 2] }))), [{ type: "result", output: { k: [1, 2] } }]);
    const ctx = seen.echo;
    assert.deepEqual([ctx.taskId, ctx.agentType, ctx.attempt, ctx.idempotencyKey], ["t-1", "echo", 2, "t-1"]);
    assert.deepEqual([ctx.contentType, ctx.labels, ctx.cancelled, ctx.inputEncoding], ["application/json", { team: "a" }, false, "json"]);
  });

  test("inputs are decoded per their encoding", async () => {
    frames(await post(attempt("echo", "plain text", { input_encoding: "utf8", content_type: "text/plain" })));
    assert.equal(seen.echo.input, "plain text");
    frames(await post(attempt("echo", Buffer.from([0, 1, 0xfe]).toString("base64"), { input_encoding: "base64", content_type: "application/octet-stream" })));
    assert.ok(Buffer.isBuffer(seen.echo.input));
    assert.deepEqual([...seen.echo.input], [0, 1, 0xfe]);
  });

  test("results are encoded by their type", async () => {
    const last = async (...args) => frames(await post(attempt(...args))).at(-1);
    assert.deepEqual(await last("text"), { type: "result", output: "héllo", output_encoding: "utf8", content_type: "text/plain; charset=utf-8" });
    assert.deepEqual(await last("bytes"), { type: "result", output: Buffer.from([0x00, 0xff, 0x70, 0x6e, 0x67]).toString("base64"), output_encoding: "base64" });
    assert.deepEqual(await last("nothing"), { type: "result", output: null });
    assert.deepEqual(await last("typed", { kind: "html" }), { type: "result", output: "<p>hi</p>", output_encoding: "utf8", content_type: "text/html" });
    assert.deepEqual(await last("typed", { kind: "png" }), { type: "result", output: Buffer.from([0x89, 0x50, 0x4e, 0x47]).toString("base64"), output_encoding: "base64", content_type: "image/png" });
    assert.deepEqual(await last("typed", { kind: "json" }), { type: "result", output: { a: 1 }, content_type: "application/vnd.x+json" });
  });
});

describe("errors", () => {
  test("errors end the answer with an error frame", async () => {
    assert.deepEqual(frames(await post(attempt("limited"))), [
      { type: "chunk", text: "x" },
      { type: "error", kind: "rate_limited", message: "the model said slow down", retryable: true, retry_after_ms: 1500 },
    ]);
    const [buggy] = frames(await post(attempt("buggy")));
    assert.equal(buggy.kind, "exception");
    assert.equal(buggy.retryable, true);
    assert.match(buggy.message, /^TypeError: /);
    const nan = frames(await post(attempt("nan"))).at(-1);
    assert.deepEqual([nan.type, nan.kind, nan.retryable], ["error", "invalid_output", false]);
    const percent = frames(await post(attempt("bad_percent"))).at(-1);
    assert.equal(percent.kind, "exception");
    assert.match(percent.message, /^RangeError: percent/);
  });

  test("agent errors check their kind and retry-after", () => {
    assert.throws(() => new AgentError({ kind: "Not A Kind", message: "x" }), RangeError);
    assert.throws(() => new AgentError({ kind: "ok", message: "x", retryAfterMs: -1 }), RangeError);
    const e = new AgentError({ kind: "ok", message: "x" });
    assert.deepEqual([e.retryable, e.retryAfterMs, e.message], [false, null, "x"]);
  });
});

describe("the chunk limit", () => {
  test("a chunk over 64 KiB is refused before it is sent", async () => {
    const response = await post(attempt("big"));
    const got = frames(response);
    assert.ok(seen.tooLarge instanceof ChunkTooLarge);
    assert.equal(seen.tooLarge.limit, MAX_LINE_BYTES);
    assert.ok(seen.tooLarge.size > MAX_LINE_BYTES);
    for (const line of response.text.trimEnd().split("\n")) assert.ok(Buffer.byteLength(line) <= MAX_LINE_BYTES);
    assert.equal(got.filter((f) => f.type === "chunk").map((f) => f.text).join(""), "y".repeat(MAX_LINE_BYTES * 2));
    assert.deepEqual(got.at(-1), { type: "result", output: MAX_LINE_BYTES * 2 });
    // Not caught by the handler: the attempt fails as agentlog itself would fail it.
    const [only, ...rest] = frames(await post(attempt("careless")));
    assert.deepEqual(rest, []);
    assert.deepEqual([only.type, only.kind, only.retryable], ["error", "chunk_too_large", false]);
  });

  test("the limit is exact and counts bytes, not characters", () => {
    const overhead = Buffer.byteLength('{"type":"chunk","text":""}');
    const atLimit = encodeLine(chunkFrame("a".repeat(MAX_LINE_BYTES - overhead)), MAX_LINE_BYTES);
    assert.equal(atLimit.length, MAX_LINE_BYTES + 1);
    assert.equal(atLimit.at(-1), 0x0a);
    assert.throws(() => encodeLine(chunkFrame("a".repeat(MAX_LINE_BYTES - overhead + 1)), MAX_LINE_BYTES), (e) => e instanceof ChunkTooLarge && e.size === MAX_LINE_BYTES + 1);
    assert.throws(() => encodeLine(chunkFrame("é".repeat(MAX_LINE_BYTES / 2)), MAX_LINE_BYTES), ChunkTooLarge); // 2 bytes each
    assert.throws(() => chunkFrame(null), TypeError);
    assert.throws(() => chunkFrame(Buffer.from("x")), TypeError);
  });
});

describe("checkpoints", () => {
  test("a checkpoint frame is sent in order with the others", async () => {
    assert.deepEqual(frames(await post(attempt("steps"))), [
      { type: "progress", percent: 30 },
      { type: "chunk", text: "step 1" },
      { type: "checkpoint", state: { step: 1 } },
      { type: "progress", percent: 60 },
      { type: "chunk", text: "step 2" },
      { type: "checkpoint", state: { step: 2 } },
      { type: "progress", percent: 90 },
      { type: "chunk", text: "step 3" },
      { type: "checkpoint", state: { step: 3 } },
      { type: "result", output: { resumed_after: 0 } },
    ]);
  });

  test("the last checkpoint comes from the attempt", async () => {
    const got = frames(await post(attempt("steps", null, { checkpoint: { step: 2 }, checkpoint_attempt: 1 })));
    assert.deepEqual(got, [
      { type: "progress", percent: 90 },
      { type: "chunk", text: "step 3" },
      { type: "checkpoint", state: { step: 3 } },
      { type: "result", output: { resumed_after: 2 } },
    ]);
    // What this attempt received, unchanged by the checkpoint it saved.
    assert.deepEqual([seen.steps.lastCheckpoint, seen.steps.lastCheckpointAttempt], [{ step: 2 }, 1]);
    for (const fields of [{ checkpoint: null, checkpoint_attempt: null }, {}]) {
      frames(await post(attempt("steps", null, fields)));
      assert.deepEqual([seen.steps.lastCheckpoint, seen.steps.lastCheckpointAttempt], [null, null], JSON.stringify(fields));
    }
    // Any JSON: a string, a number, an array.
    for (const state of ["half", 0, [1, 2]]) {
      frames(await post(attempt("echo", null, { checkpoint: state, checkpoint_attempt: 3 })));
      assert.deepEqual([seen.echo.lastCheckpoint, seen.echo.lastCheckpointAttempt], [state, 3]);
    }
    const response = await post(attempt("echo", null, { checkpoint: 1, checkpoint_attempt: "one" }));
    assert.equal(response.status, 400);
    assert.match(JSON.parse(response.text).error.message, /checkpoint_attempt/);
  });

  test("a checkpoint over 256 KiB or not JSON is refused before it is sent", async () => {
    const response = await post(attempt("hoarder"));
    const got = frames(response);
    assert.ok(seen.checkpointTooLarge instanceof CheckpointTooLarge);
    assert.ok(!(seen.checkpointTooLarge instanceof ChunkTooLarge));
    assert.equal(seen.checkpointTooLarge.limit, MAX_CHECKPOINT_LINE_BYTES);
    assert.ok(seen.checkpointTooLarge.size > MAX_CHECKPOINT_LINE_BYTES);
    for (const line of response.text.trimEnd().split("\n")) assert.ok(Buffer.byteLength(line) <= MAX_CHECKPOINT_LINE_BYTES);
    assert.deepEqual(seen.badStates.map((e) => e.constructor), [TypeError, TypeError, TypeError]);
    assert.deepEqual(got.slice(0, 2), [
      { type: "checkpoint", state: { step: 1 } },
      { type: "checkpoint", state: { blob: "c".repeat(MAX_LINE_BYTES * 2) } },
    ]);
    assert.equal(got.length, 3);
    assert.deepEqual([got[2].type, got[2].kind, got[2].retryable], ["error", "exception", true]);
    assert.match(got[2].message, /^TypeError: /);
    // Not caught by the handler: the attempt fails as agentlog itself would fail it.
    const careless = frames(await post(attempt("careless_checkpoint")));
    assert.equal(careless.length, 2);
    assert.deepEqual(careless[0], { type: "chunk", text: "before" });
    assert.deepEqual([careless[1].type, careless[1].kind, careless[1].retryable], ["error", "checkpoint_too_large", false]);
    assert.match(careless[1].message, /262144/);
  });

  test("the checkpoint limit is exact and counts bytes, not characters", () => {
    const overhead = Buffer.byteLength('{"type":"checkpoint","state":""}');
    const atLimit = encodeLine(checkpointFrame("a".repeat(MAX_CHECKPOINT_LINE_BYTES - overhead)), MAX_CHECKPOINT_LINE_BYTES);
    assert.equal(atLimit.length, MAX_CHECKPOINT_LINE_BYTES + 1);
    assert.equal(atLimit.at(-1), 0x0a);
    assert.throws(
      () => encodeLine(checkpointFrame("a".repeat(MAX_CHECKPOINT_LINE_BYTES - overhead + 1)), MAX_CHECKPOINT_LINE_BYTES),
      (e) => e instanceof CheckpointTooLarge && e.size === MAX_CHECKPOINT_LINE_BYTES + 1 && e.limit === MAX_CHECKPOINT_LINE_BYTES,
    );
    assert.throws(() => encodeLine(checkpointFrame("é".repeat(MAX_CHECKPOINT_LINE_BYTES / 2)), MAX_CHECKPOINT_LINE_BYTES), CheckpointTooLarge); // 2 bytes each
    assert.equal(MAX_CHECKPOINT_LINE_BYTES, 256 * 1024);
    assert.deepEqual(checkpointFrame(null), { type: "checkpoint", state: null });
    assert.throws(() => checkpointFrame(undefined), TypeError);
    assert.throws(() => checkpointFrame(() => 1), TypeError);
  });
});

describe("dispatch and bad requests", () => {
  test("the path names the agent type when given", async () => {
    const got = frames(await post(attempt("whatever-agentlog-calls-it", "x"), { path: "/echo" }));
    assert.deepEqual(got, [{ type: "result", output: "x", output_encoding: "utf8", content_type: "text/plain; charset=utf-8" }]);
    assert.equal(seen.echo.agentType, "echo");
  });

  test("an unknown agent type is a 404", async () => {
    for (const response of [await post(attempt("nope")), await post(attempt("echo"), { path: "/nope" })]) {
      assert.equal(response.status, 404);
      assert.equal(response.headers.get("content-type"), "application/json");
      const error = JSON.parse(response.text).error;
      assert.equal(error.code, "unknown_agent_type");
      assert.match(error.message, /echo/);
    }
  });

  test("the protocol version is checked and may be absent", async () => {
    const response = await post(attempt("echo", 1, { protocol: 2 }));
    assert.equal(response.status, 400);
    assert.equal(JSON.parse(response.text).error.code, "unsupported_protocol");
    const body = attempt("echo", 1);
    delete body.protocol;
    assert.deepEqual(frames(await post(body)), [{ type: "result", output: 1 }]);
  });

  const malformed = [
    "not json",
    "[1, 2]",
    JSON.stringify({ agent_type: "echo", input: 1 }),
    JSON.stringify({ task_id: "t", agent_type: "echo" }),
    JSON.stringify({ task_id: "t", agent_type: "echo", input: 1, attempt: "one" }),
    JSON.stringify({ task_id: "t", agent_type: "echo", input: 1, input_encoding: "rot13" }),
    JSON.stringify({ task_id: "t", agent_type: "echo", input: "!!!", input_encoding: "base64" }),
    JSON.stringify({ task_id: "t", agent_type: "echo", input: 5, input_encoding: "utf8" }),
    JSON.stringify({ task_id: "t", agent_type: "echo", input: 1, labels: { a: 1 } }),
  ];
  for (const raw of malformed) {
    test(`a malformed attempt is a 400: ${raw}`, async () => {
      const response = await post(null, { raw });
      assert.equal(response.status, 400, response.text);
      assert.equal(JSON.parse(response.text).error.code, "bad_request");
    });
  }

  test("only POST is served", async () => {
    const response = await post(null, { method: "GET" });
    assert.equal(response.status, 405);
    assert.equal(response.headers.get("allow"), "POST");
  });

  test("agent types are checked when registered", () => {
    const a = new AgentApp().agent("x", () => 1);
    assert.throws(() => a.agent("x", () => 2), RangeError);
    assert.throws(() => a.agent("a/b", () => 2), RangeError);
    assert.deepEqual(a.agentTypes, ["x"]);
  });
});

describe("a live connection", () => {
  test("each frame is flushed as it is produced", async () => {
    const response = await fetch(served.url + "/gated", { method: "POST", body: JSON.stringify(attempt("gated")), signal: AbortSignal.timeout(10_000) });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let text = "";
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      assert.ok(!done, "the answer ended before its first frame");
      text += decoder.decode(value, { stream: true });
    }
    assert.deepEqual(JSON.parse(text.split("\n")[0]), { type: "chunk", text: "first" });
    gateOpen = true;
    for (let r = await reader.read(); !r.done; r = await reader.read()) text += decoder.decode(r.value, { stream: true });
    const rest = text.trimEnd().split("\n").slice(1).map((line) => JSON.parse(line));
    assert.deepEqual(rest, [{ type: "chunk", text: "second" }, { type: "result", output: "done", output_encoding: "utf8", content_type: "text/plain; charset=utf-8" }]);
  });

  test("a client that hangs up aborts the handler's signal", async () => {
    const hangUp = new AbortController();
    const response = await fetch(served.url + "/endless", { method: "POST", body: JSON.stringify(attempt("endless")), signal: hangUp.signal });
    const reader = response.body.getReader();
    const { value } = await reader.read();
    assert.deepEqual(JSON.parse(new TextDecoder().decode(value).split("\n")[0]), { type: "chunk", text: "started" });
    const hungUpAt = Date.now();
    hangUp.abort();
    await until(() => seen.abortedAt !== undefined, 10_000, "the handler's signal aborting");
    assert.ok(seen.abortedAt - hungUpAt < 5_000);
    assert.ok(seen.endless.cancelled);
  });
});
