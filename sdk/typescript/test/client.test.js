// The client's requests and its reading of answers, against a scripted `fetch`.
import assert from "node:assert/strict";
import { test } from "node:test";

import { AgentlogClient, BadRequest, Conflict, NotFound, ServerError, TooManyRequests, Unavailable, WaitTimeout } from "../dist/index.js";

const json = (status, body, headers = {}) => new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
const error = (status, code, message, field = null, headers = {}) => json(status, { error: { code, message, field } }, headers);

function clientOf(answer, options = {}) {
  const seen = [];
  const fetch = async (url, init = {}) => {
    const request = { url: new URL(url), method: init.method ?? "GET", headers: init.headers ?? {}, body: init.body ? JSON.parse(init.body) : undefined };
    seen.push(request);
    return answer(request);
  };
  return [new AgentlogClient({ baseUrl: "http://api.test/", fetch, ...options }), seen];
}

test("submit sends only the fields given and reads the answer", async () => {
  const [client, seen] = clientOf(() => json(202, { task_id: "t-1", position: "agentlog.tasks.echo.normal:0:7", topic: "x", partition: 0, offset: 7, delayed: false }));
  const submitted = await client.submit("echo", { text: "hi" }, { idempotencyKey: "k-1", labels: { team: "a" }, lane: "high" });
  assert.deepEqual([submitted.taskId, submitted.duplicate, submitted.position], ["t-1", false, "agentlog.tasks.echo.normal:0:7"]);
  const [request] = seen;
  assert.equal(request.method, "POST");
  assert.equal(request.url.pathname, "/v1/tasks");
  assert.equal(request.url.search, "");
  assert.deepEqual(request.body, { agent_type: "echo", input: { text: "hi" }, idempotency_key: "k-1", labels: { team: "a" }, lane: "high" });
  assert.equal(request.headers.authorization, undefined);
});

test("the api key is a bearer token", async () => {
  const [client, seen] = clientOf(() => json(200, { tasks: [], next_cursor: null }), { apiKey: "secret" });
  const page = await client.list({ status: "completed", limit: 5 });
  assert.deepEqual(page, { tasks: [], nextCursor: null });
  assert.equal(seen[0].headers.authorization, "Bearer secret");
  assert.deepEqual(Object.fromEntries(seen[0].url.searchParams), { status: "completed", limit: "5" });
});

test("a batch is one request with every task", async () => {
  const [client, seen] = clientOf(() => json(202, { tasks: [{ task_id: "a", position: "p:0:1" }, { task_id: "b", duplicate: true }] }));
  const replies = await client.submitBatch([{ agentType: "echo", input: 1, taskId: "a" }, { agentType: "echo", input: 2, idempotencyKey: "k" }]);
  assert.deepEqual(replies.map((r) => [r.taskId, r.duplicate]), [["a", false], ["b", true]]);
  assert.deepEqual(seen[0].body, { tasks: [{ agent_type: "echo", input: 1, task_id: "a" }, { agent_type: "echo", input: 2, idempotency_key: "k" }] });
});

test("errors are typed with the api's code, message and field", async () => {
  const answers = {
    "/v1/tasks": () => error(400, "invalid_field", "lane `x` is not a lane", "lane"),
    "/v1/tasks/gone": () => error(404, "no_task", "no task `gone`"),
    "/v1/tasks/done/cancel": () => error(409, "task_finished", "task `done` already ended completed"),
    "/v1/tasks/busy": () => error(429, "quota_exceeded", "too many", null, { "retry-after": "3" }),
    "/v1/tasks/down": () => error(503, "unavailable", "the log is down"),
    "/v1/tasks/boom": () => new Response("plain failure", { status: 500 }),
  };
  const [client] = clientOf((r) => answers[r.url.pathname]());
  await assert.rejects(client.submit("echo", {}, { lane: "x" }), (e) => e instanceof BadRequest && e.status === 400 && e.code === "invalid_field" && e.field === "lane" && /not a lane/.test(e.message));
  await assert.rejects(client.get("gone"), (e) => e instanceof NotFound && e.code === "no_task");
  await assert.rejects(client.cancel("done", "late"), Conflict);
  await assert.rejects(client.get("busy"), (e) => e instanceof TooManyRequests && e.retryAfter === 3 && e.code === "quota_exceeded");
  await assert.rejects(client.get("down"), (e) => e instanceof Unavailable && e instanceof ServerError);
  await assert.rejects(client.get("boom"), (e) => e instanceof ServerError && e.status === 500 && e.message === "plain failure");
});

test("cancel sends its reason", async () => {
  const [client, seen] = clientOf(() => json(202, { task_id: "t", cancel_requested: true }));
  assert.deepEqual(await client.cancel("t", "changed my mind"), { task_id: "t", cancel_requested: true });
  assert.deepEqual(seen[0].body, { reason: "changed my mind" });
  await client.cancel("t");
  assert.deepEqual(seen[1].body, {});
});

test("wait asks again while the server answers no outcome yet", async () => {
  const calls = [];
  const [client] = clientOf((r) => {
    calls.push(Number(r.url.searchParams.get("wait_ms")));
    return calls.length < 3 ? error(404, "no_outcome", "no outcome for task `t` (yet)") : json(200, { task_id: "t", status: "completed", output: 42 });
  });
  assert.equal((await client.wait("t", { timeoutMs: 20_000 })).output, 42);
  assert.equal(calls.length, 3);
  assert.ok(calls.every((ms) => ms > 0 && ms <= 20_000));
});

test("wait gives up at its timeout; a missing task is not waited for", async () => {
  const [client] = clientOf((r) => (r.url.pathname.includes("gone") ? error(404, "no_task", "no task") : error(404, "no_outcome", "not yet")));
  await assert.rejects(client.wait("t", { timeoutMs: 200 }), (e) => e instanceof WaitTimeout && e.code === "wait_timeout");
  await assert.rejects(client.wait("gone", { timeoutMs: 5000 }), (e) => e instanceof NotFound && e.code === "no_task");
});

test("task ids are escaped; outcome is null while there is none", async () => {
  const [client, seen] = clientOf((r) => (r.url.pathname.endsWith("/outcome") ? error(404, "no_outcome", "not yet") : json(200, { task_id: "t 1/2" })));
  assert.equal((await client.get("t 1/2", { after: "p:0:1" })).task_id, "t 1/2");
  assert.equal(seen[0].url.pathname, "/v1/tasks/t%201%2F2");
  assert.equal(seen[0].url.searchParams.get("after"), "p:0:1");
  assert.equal(await client.outcome("t"), null);
});
