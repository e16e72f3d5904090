// The task stream's SSE parsing and its resume after drops, against a fake server that
// drops connections on purpose (test/fake-sse.js).
import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";

import { AgentlogClient, NotFound, StreamError } from "../dist/index.js";
import { FakeStream, step } from "./fake-sse.js";

let fake;
beforeEach(async () => {
  fake = await new FakeStream().start();
});
afterEach(async () => {
  await fake.close();
});

async function collect(iterable) {
  const events = [];
  for await (const event of iterable) events.push(event);
  return events;
}

function client(url = fake.url) {
  return new AgentlogClient({ baseUrl: url, timeoutMs: 5000 });
}

/** Every event once, in order, ending with the outcome. */
function checkComplete(events, f = fake) {
  assert.deepEqual(events.map((e) => e.id), f.ids());
  assert.equal(events[0].type, "progress");
  assert.equal(events[0].message, "start");
  const chunks = events.filter((e) => e.type === "chunk");
  assert.deepEqual(chunks.map((c) => c.seq), [...Array(f.chunks).keys()]);
  assert.equal(chunks.map((c) => c.text).join(""), [...Array(f.chunks).keys()].map((i) => `tok${i} `).join(""));
  const last = events.at(-1);
  assert.equal(last.type, "outcome");
  assert.equal(last.status, "completed");
  assert.deepEqual(last.output, { text: "done" });
  assert.equal(last.task.task_id, f.taskId);
}

test("a whole stream is read in one connection", async () => {
  checkComplete(await collect(client().stream("t-1")));
  assert.equal(fake.requests.length, 1);
  assert.equal(fake.requests[0].path, "/v1/tasks/t-1/stream");
  assert.equal(fake.requests[0]["last-event-id"], undefined);
  assert.equal(fake.requests[0].accept, "text/event-stream");
});

test("dropped connections resume after the last event without gaps or repeats", async () => {
  fake.script = [step({ events: 3 }), step({ events: 5 }), step({ events: 0 }), step({ events: 7, then: "end" })];
  checkComplete(await collect(client().stream("t-1")));
  const ids = fake.ids();
  // Each reconnect asks for what follows the last event received before the drop.
  assert.deepEqual(fake.requests.map((r) => r["last-event-id"]), [undefined, ids[2], ids[7], ids[7], ids[14]]);
});

test("a server that replays too much still yields each event once", async () => {
  fake.script = [step({ events: 6 }), step({ replay: 4 })];
  checkComplete(await collect(client().stream("t-1")));
});

test("a stream continues after a given last event id", async () => {
  const ids = fake.ids();
  const events = await collect(client().stream("t-1", { lastEventId: ids[9] }));
  assert.deepEqual(events.map((e) => e.id), ids.slice(10));
  assert.equal(fake.requests[0]["last-event-id"], ids[9]);
});

test("passing server errors are retried and client errors thrown", async () => {
  fake.script = [step({ status: 503 }), step({ events: 4 }), step({ status: 503 })];
  checkComplete(await collect(client().stream("t-1")));
  const missing = await new FakeStream({ script: [step({ status: 404 })] }).start();
  try {
    await assert.rejects(collect(client(missing.url).stream("nope")), (e) => e instanceof NotFound && e.code === "no_task" && e.status === 404);
    assert.equal(missing.requests.length, 1);
  } finally {
    await missing.close();
  }
});

test("a stream that never gets anywhere gives up", async () => {
  fake.script = Array(10).fill(step({ events: 0 }));
  await assert.rejects(collect(client().stream("t-1", { maxReconnects: 3, backoffMs: 10 })), (e) => e instanceof StreamError && e.code === "stream_lost");
  assert.equal(fake.requests.length, 4);
});

test("a silent connection is taken for dead and resumed", async () => {
  // A server that answers headers and then says nothing: the read timeout resumes it.
  const quiet = await new FakeStream().start();
  quiet.script = [step({ events: 2, then: "hang" })];
  try {
    const events = await collect(client(quiet.url).stream("t-1", { readTimeoutMs: 300 }));
    checkComplete(events, quiet);
    assert.deepEqual(quiet.requests.map((r) => r["last-event-id"]), [undefined, quiet.ids()[1]]);
  } finally {
    await quiet.close();
  }
});

test("task ids are escaped in the path", async () => {
  await collect(client().stream("a/b?c"));
  assert.equal(fake.requests[0].path, "/v1/tasks/a%2Fb%3Fc/stream");
});

test("breaking out of the loop closes the connection; an abort signal ends the stream", async () => {
  const stream = client().stream("t-1");
  for await (const event of stream) if (event.type === "chunk") break;
  assert.equal(fake.requests.length, 1);
  const abort = new AbortController();
  const events = [];
  await assert.rejects(
    (async () => {
      for await (const event of client().stream("t-1", { signal: abort.signal })) {
        events.push(event);
        if (events.length === 3) abort.abort(new Error("enough"));
      }
    })(),
    /enough/,
  );
  assert.equal(events.length, 3);
});
