"""End to end against a real agentlog: `agentlog dev` with an `AgentApp` served by uvicorn as
its `http` agent types, on each backend: the embedded log in a temporary directory, and
Kafka (topics of a prefix unique to the run) when AGENTLOG_TEST_KAFKA names a broker. Every
test runs once per backend (`test_x[embedded]`, `test_x[kafka]`), one agentlog per backend.

Needs AGENTLOG_BIN (the agentlog binary). Without it these tests skip, except under CI=true,
where a skip would hide that nothing was tested: there they fail. Likewise the Kafka variant
without AGENTLOG_TEST_KAFKA: skipped, and under CI=true failed (tests/agentlog_dev.py).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from agentlog_sdk import (
    AgentApp,
    AgentError,
    AsyncClient,
    BadRequest,
    Chunk,
    Client,
    Conflict,
    Context,
    DelegationFailed,
    Lagged,
    NotFound,
    NotWaiting,
    Outcome,
    Progress,
    Signal,
    UnexpectedSignal,
    task_spec,
)
from agentlog_dev import BACKENDS, Agentlog, agentlog_bin, agentlog_dev
from servers import Served

BIN = agentlog_bin()

#: The most any one test waits for a task.
TASK_S = 30.0
TOKENS = 20

app = AgentApp()
attempts: dict[str, list[tuple[int, float]]] = {}
lock = threading.Lock()


@app.agent("llm")
async def llm(ctx: Context) -> Any:
    """A fake LLM: streams `count` tokens with small sleeps, then the whole text."""
    count = int(ctx.input.get("count", TOKENS))
    pause = float(ctx.input.get("pause_s", 0.02))
    await ctx.progress(0, "calling the model")
    tokens = [f"tok{i} " for i in range(count)]
    for token in tokens:
        await asyncio.sleep(pause)
        await ctx.emit(token)
    await ctx.progress(100, "done")
    return {"text": "".join(tokens), "tokens": count}


@app.agent("billed")
async def billed(ctx: Context) -> Any:
    """A fake LLM agent reporting usage after each of its two model calls."""
    ctx.usage(100, 20, model="gpt-test", cost_micros=180, currency="USD", counters={"cached_input_tokens": 64})
    ctx.usage(input_tokens=30, output_tokens=5, model="gpt-test", cost_micros=45, currency="USD")
    return {"calls": 2}


@app.agent("flaky")
async def flaky(ctx: Context) -> Any:
    """Fails its first attempt asking for a pause (a rate limit), succeeds on the next."""
    with lock:
        attempts.setdefault(ctx.task_id, []).append((ctx.attempt, time.monotonic()))
    if ctx.attempt == 1:
        await ctx.emit("rate limited")
        raise AgentError("transient", "the model is rate limited", retryable=True, retry_after_ms=ctx.input["retry_after_ms"])
    return {"attempt": ctx.attempt}


@app.agent("rejecting")
async def rejecting(ctx: Context) -> Any:
    raise AgentError("bad_input", "no text given", retryable=False)


#: What each attempt of a `resumable` task received: (attempt, last_checkpoint, last_checkpoint_attempt).
resumed: dict[str, list[tuple[int, Any, Any]]] = {}


@app.agent("resumable")
async def resumable(ctx: Context) -> Any:
    """Saves step 1, then fails its first attempt (transient); the next resumes from it."""
    with lock:
        resumed.setdefault(ctx.task_id, []).append((ctx.attempt, ctx.last_checkpoint, ctx.last_checkpoint_attempt))
    if ctx.attempt == 1:
        await ctx.checkpoint({"step": 1})
        raise AgentError("transient", "lost the model's connection after step 1", retryable=True)
    step = ctx.last_checkpoint["step"] if isinstance(ctx.last_checkpoint, dict) else None
    return {"resumed_from": step}


#: What each attempt of an `approval` task received: (attempt, signal, last_checkpoint).
approvals: dict[str, list[tuple[int, Any, Any]]] = {}


@app.agent("approval")
async def approval(ctx: Context) -> Any:
    """Drafts and checkpoints the draft, then waits for the signal "approval" (60 s unless the
    input says otherwise); resumed by it, returns the decision with the checkpointed draft
    (resumed by the wait's timeout, `approval_resume`, not approved)."""
    with lock:
        approvals.setdefault(ctx.task_id, []).append((ctx.attempt, ctx.signal, ctx.last_checkpoint))
    if ctx.last_checkpoint is None:
        await ctx.progress(50, "drafted")
        await ctx.checkpoint({"step": "drafted", "draft": f"draft of {ctx.input['doc']}"})
    decision = await ctx.wait_for_signal("approval", float(ctx.input.get("timeout_s", 60)))
    if decision.timed_out:  # only with on_signal_timeout = "resume"
        return {"approved": False, "timed_out": True, "draft": ctx.last_checkpoint["draft"]}
    return {"approved": decision.payload["approved"], "draft": ctx.last_checkpoint["draft"]}


#: The children `doubler` ran: task id -> (labels, input).
doubled: dict[str, tuple[dict[str, str], Any]] = {}


@app.agent("doubler")
async def doubler(ctx: Context) -> Any:
    with lock:
        doubled[ctx.task_id] = (ctx.labels, ctx.input)
    return {"n": ctx.input["n"] * 2}


@app.agent("delegator")
async def delegator(ctx: Context) -> Any:
    """Delegates to `doubler` and returns its output; with `{"fail": true}` delegates to
    `rejecting` instead and returns the failure it raised."""
    if ctx.input.get("fail"):
        try:
            await ctx.delegate("rejecting", {})
        except DelegationFailed as e:
            return {"task_id": e.task_id, "status": e.status, "error_kind": e.error_kind, "message": e.message}
        return {"unexpected": "the child completed"}
    child = await ctx.delegate("doubler", {"n": ctx.input["n"]}, labels={"via": "delegator"})
    return {"child": child, "callback": ctx.callback_url is not None}


AGENTS = """
[agents.echo]
runtime = { kind = "builtin", name = "echo" }

[agents.sleep]
runtime = { kind = "builtin", name = "sleep" }

[agents.llm]
runtime = { kind = "http", url = "{agent}/llm" }
timeout_ms = 20000

[agents.flaky]
runtime = { kind = "http", url = "{agent}/flaky" }
[agents.flaky.retry]
max_attempts = 3
initial_backoff_ms = 10
max_backoff_ms = 50
jitter = 0.0

[agents.rejecting]
runtime = { kind = "http", url = "{agent}/rejecting" }
[agents.rejecting.retry]
max_attempts = 3
initial_backoff_ms = 10

[agents.resumable]
runtime = { kind = "http", url = "{agent}/resumable" }
[agents.resumable.retry]
max_attempts = 3
initial_backoff_ms = 50
max_backoff_ms = 100

[agents.approval]
runtime = { kind = "http", url = "{agent}/approval" }
timeout_ms = 20000

[agents.approval_resume]
runtime = { kind = "http", url = "{agent}/approval" }
timeout_ms = 20000
on_signal_timeout = "resume"

[agents.delegator]
runtime = { kind = "http", url = "{agent}/delegator" }
delegates = true
timeout_ms = 20000

[agents.doubler]
runtime = { kind = "http", url = "{agent}/doubler" }

[agents.billed]
runtime = { kind = "http", url = "{agent}/billed" }
"""


@pytest.fixture(scope="module")
def agent() -> Iterator[Served]:
    served = Served(app).start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def agentlog(request: pytest.FixtureRequest, agent: Served) -> Iterator[Agentlog]:
    """One `agentlog dev` per backend, serving every test of this module on it."""
    with agentlog_dev(BIN, request.param, AGENTS.replace("{agent}", agent.url), name="sdk-e2e") as running:
        yield running


@pytest.fixture
def client(agentlog: Agentlog) -> Iterator[Client]:
    with Client(agentlog.url, timeout=10) as c:
        yield c


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def read_stream(client: Client, task_id: str, last_event_id: str | None = None, stop_after: int | None = None) -> list[Any]:
    """The stream's events, bounded in time; with `stop_after`, the connection is closed after
    that many events (the rest is read by a later call)."""
    events: list[Any] = []
    deadline = time.monotonic() + TASK_S
    stream = client.stream(task_id, last_event_id=last_event_id, read_timeout=TASK_S)
    try:
        for event in no_route_is_missing_server_side(stream):
            events.append(event)
            assert time.monotonic() < deadline, f"the stream of {task_id} did not end within {TASK_S} s"
            if stop_after is not None and len(events) >= stop_after:
                break
    finally:
        stream.close()  # type: ignore[attr-defined]
    return events


def no_route_is_missing_server_side(stream: Iterator[Any]) -> Iterator[Any]:
    """A 404 `no_route` means this agentlog predates the task stream: say so plainly."""
    try:
        yield from stream
    except NotFound as e:
        if e.code == "no_route":
            pytest.fail(f"this agentlog has no GET /v1/tasks/{{id}}/stream (agent protocol v1 server side missing): {e}")
        raise


def check_llm_stream(events: list[Any], count: int) -> None:
    chunks = [e for e in events if isinstance(e, Chunk)]
    assert [c.text for c in chunks] == [f"tok{i} " for i in range(count)], "every chunk once, in order"
    assert [c.seq for c in chunks] == list(range(count))
    assert all(c.attempt == 1 for c in chunks)
    ids = [e.id for e in events if not isinstance(e, Outcome)]
    assert all(ids), "progress and chunk events carry their log position"
    positions = [tuple(int(p) for p in id.split(":")) for id in ids]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.message for p in progress] == ["calling the model", "done"]
    assert isinstance(events[-1], Outcome)
    outcome = events[-1]
    assert outcome.status == "completed"
    assert outcome.output == {"text": "".join(f"tok{i} " for i in range(count)), "tokens": count}


# The client against the API (plain answers: any agentlog with the API serves these).


def test_submit_get_wait_list_with_a_builtin_agent(client: Client) -> None:
    task_id = new_id("echo")
    submitted = client.submit("echo", {"text": "hello"}, task_id=task_id, labels={"suite": "sdk"})
    assert submitted.task_id == task_id and submitted.position
    task = client.get(task_id, after=submitted.position)
    assert task["task_id"] == task_id and task["labels"] == {"suite": "sdk"}
    outcome = client.wait(task_id, timeout=TASK_S)
    assert outcome["status"] == "completed" and outcome["output"] == {"text": "hello"}
    page = client.list(agent_type="echo", limit=50)
    assert task_id in [t["task_id"] for t in page.tasks]


def test_an_agent_reports_usage_the_task_and_the_stats_show_it(client: Client) -> None:
    ids = [client.submit("billed", {"n": n}).task_id for n in range(2)]
    for task_id in ids:
        outcome = client.wait(task_id, timeout=TASK_S)
        assert outcome["status"] == "completed", outcome
        assert outcome["usage"] == {
            "input_tokens": 130,
            "output_tokens": 25,
            "model": "gpt-test",
            "cost_micros": 225,
            "currency": "USD",
            "counters": {"cached_input_tokens": 64},
        }
        assert client.get(task_id)["outcome"]["usage"]["input_tokens"] == 130
    events = read_stream(client, ids[0])
    assert isinstance(events[-1], Outcome) and events[-1].usage is not None and events[-1].usage["output_tokens"] == 25
    # The projection counts a moment after the outcome; one `agentlog dev` serves the module,
    # so look at this agent type only, and at least what this test's tasks reported.
    deadline = time.monotonic() + TASK_S
    while True:
        usage = client.stats()["usage"]
        mine = [m for m in usage["by_model"] if m["agent_type"] == "billed"]
        if mine and mine[0]["tasks"] >= 2:
            break
        assert time.monotonic() < deadline, usage
        time.sleep(0.05)
    assert mine[0]["model"] == "gpt-test"
    assert mine[0]["input_tokens"] == 130 * mine[0]["tasks"] and mine[0]["cost_micros"] == {"USD": 225 * mine[0]["tasks"]}
    assert mine[0]["counters"] == {"cached_input_tokens": 64 * mine[0]["tasks"]}
    assert usage["cost_micros"]["USD"] >= 450 and usage["tasks"] >= 2


def test_idempotency_batches_and_errors(client: Client) -> None:
    key = new_id("key")
    first = client.submit("echo", {"n": 1}, idempotency_key=key)
    client.wait(first.task_id, timeout=TASK_S)
    again = client.submit("echo", {"n": 2}, idempotency_key=key)
    assert again.duplicate and again.task_id == first.task_id
    batch = client.submit_batch([{"agent_type": "echo", "input": {"i": i}} for i in range(3)])
    assert len(batch) == 3 and len({b.task_id for b in batch}) == 3
    for b in batch:
        assert client.wait(b.task_id, timeout=TASK_S)["status"] == "completed"
    with pytest.raises(BadRequest) as bad:
        client.submit("no-such-type", {})
    assert bad.value.field == "agent_type"
    with pytest.raises(NotFound) as missing:
        client.get(new_id("missing"))
    assert missing.value.code == "no_task"
    with pytest.raises(Conflict):
        client.cancel(first.task_id, reason="too late")


def test_cancel_a_running_task(client: Client) -> None:
    submitted = client.submit("sleep", {"ms": 20_000})
    client.get(submitted.task_id, after=submitted.position)
    answer = client.cancel(submitted.task_id, reason="changed my mind")
    assert answer["cancel_requested"] is True
    assert client.wait(submitted.task_id, timeout=TASK_S)["status"] == "cancelled"


# The agent protocol end to end: framed answers and the task stream.


def test_chunks_stream_live_in_order_and_the_outcome_is_the_handlers_result(client: Client) -> None:
    task_id = client.submit("llm", {"count": TOKENS}).task_id
    started = time.monotonic()
    events = read_stream(client, task_id)
    check_llm_stream(events, TOKENS)
    first_chunk = next(i for i, e in enumerate(events) if isinstance(e, Chunk))
    assert first_chunk < len(events) - 1
    assert time.monotonic() - started < TASK_S


def test_chunks_arrive_while_the_agent_is_still_generating(client: Client) -> None:
    # 20 tokens 0.25 s apart: a live stream hands over the first long before the last exists.
    task_id = client.submit("llm", {"count": TOKENS, "pause_s": 0.25}).task_id
    stream = client.stream(task_id, read_timeout=TASK_S)
    try:
        first = next(e for e in no_route_is_missing_server_side(stream) if isinstance(e, Chunk))
        seen_at = time.monotonic()
        task = client.get(task_id)
    finally:
        stream.close()  # type: ignore[attr-defined]
    assert first.text == "tok0 "
    assert task["outcome"] is None, "the first chunk came only after the task had ended"
    assert client.wait(task_id, timeout=TASK_S)["status"] == "completed"
    assert time.monotonic() - seen_at > 1


def test_a_dropped_stream_resumes_from_the_last_event_without_gaps_or_repeats(client: Client) -> None:
    task_id = client.submit("llm", {"count": TOKENS, "pause_s": 0.05}).task_id
    first = read_stream(client, task_id, stop_after=7)
    assert len(first) == 7 and not isinstance(first[-1], Outcome)
    rest = read_stream(client, task_id, last_event_id=first[-1].id)
    check_llm_stream(first + rest, TOKENS)
    # And once more from the middle, after the task ended: a replay of what follows.
    middle = read_stream(client, task_id, last_event_id=first[3].id)
    assert [e.id for e in middle[:-1]] == [e.id for e in (first + rest)[4:-1]]


@pytest.mark.anyio
async def test_the_async_client_streams_too(agentlog: Agentlog) -> None:
    async with AsyncClient(agentlog.url, timeout=10) as client:
        task_id = (await client.submit("llm", {"count": 5})).task_id
        events: list[Any] = []
        with anyio.fail_after(TASK_S):
            async for event in client.stream(task_id, read_timeout=TASK_S):
                events.append(event)
        check_llm_stream(events, 5)


@pytest.mark.anyio
async def test_the_outcome_stream_delivers_the_outcomes_of_tasks_submitted_after_it_opened(agentlog: Agentlog) -> None:
    prefix = new_id("outcomes") + "-"
    ids = {f"{prefix}{i}" for i in range(20)}
    seen: dict[str, Outcome] = {}
    async with AsyncClient(agentlog.url, timeout=10) as client, client.outcomes("echo", read_timeout=TASK_S) as events:
        await client.submit_batch([task_spec("echo", {"i": i}, task_id=f"{prefix}{i}") for i in range(20)])
        with anyio.fail_after(TASK_S):
            async for event in events:
                assert not isinstance(event, Lagged), f"the stream lagged: {event}"
                if isinstance(event, Outcome) and event.task_id in ids:
                    assert event.task_id not in seen, "each outcome once"
                    seen[event.task_id] = event
                    if len(seen) == len(ids):
                        break
    assert {t: e.status for t, e in seen.items()} == {t: "completed" for t in ids}
    assert seen[f"{prefix}3"].output == {"i": 3}


def test_an_agent_error_with_retry_after_is_retried_no_sooner(client: Client) -> None:
    task_id = new_id("flaky")
    client.submit("flaky", {"retry_after_ms": 1500}, task_id=task_id)
    outcome = client.wait(task_id, timeout=TASK_S)
    assert outcome["status"] == "completed", outcome
    assert outcome["output"] == {"attempt": 2}
    runs = attempts[task_id]
    assert [n for n, _ in runs] == [1, 2]
    # The retry policy's own backoff is 10 ms: the wait is the agent's retry_after_ms.
    assert runs[1][1] - runs[0][1] >= 1.4
    events = read_stream(client, task_id)
    chunks = [(e.attempt, e.text) for e in events if isinstance(e, Chunk)]
    assert chunks == [(1, "rate limited")]
    assert isinstance(events[-1], Outcome) and events[-1].attempt == 2


def test_a_non_retryable_agent_error_fails_the_task_with_its_kind(client: Client) -> None:
    task_id = new_id("rejecting")
    client.submit("rejecting", {}, task_id=task_id)
    outcome = client.wait(task_id, timeout=TASK_S)
    assert outcome["status"] in ("failed", "dead_lettered"), outcome
    assert outcome["error_kind"] == "bad_input"
    assert "no text given" in (outcome["message"] or "")


def test_a_retry_resumes_from_the_checkpoint_the_failed_attempt_saved(client: Client) -> None:
    task_id = new_id("resumable")
    client.submit("resumable", {"steps": 2}, task_id=task_id)
    outcome = client.wait(task_id, timeout=TASK_S)
    assert outcome["status"] == "completed", outcome
    assert outcome["output"] == {"resumed_from": 1}
    assert outcome["attempt"] == 2
    assert resumed[task_id] == [(1, None, None), (2, {"step": 1}, 1)]


# Waiting for a signal (§5) and delegation (§6).


def wait_until_waiting(client: Client, task_id: str, position: str | None) -> dict[str, Any]:
    """The task once GET shows it waiting; a failure naming what it did instead (an
    agentlog without suspend fails the attempt with kind `protocol`)."""
    deadline = time.monotonic() + TASK_S
    while True:
        task = client.get(task_id, after=position)
        if task["status"] == "waiting":
            return task
        if task.get("outcome") is not None or time.monotonic() > deadline:
            pytest.fail(f"task {task_id} never showed status `waiting` (agent protocol §5 server side missing?): {task}")
        time.sleep(0.1)


def test_an_approval_waits_for_its_signal_and_resumes_from_its_checkpoint(client: Client) -> None:
    task_id = new_id("approval")
    submitted = client.submit("approval", {"doc": "d-1"}, task_id=task_id)
    task = wait_until_waiting(client, task_id, submitted.position)
    assert task["waiting_for"]["signal"] == "approval", task
    waiting_for = task["waiting_for"]
    assert waiting_for["attempt"] == 2, "the attempt the signal will start"
    # When the wait times out (agent protocol §5: `timeout_at_ms`), 60 s from the suspend.
    assert waiting_for["timeout_at_ms"] > time.time() * 1000, waiting_for
    assert task["outcome"] is None

    with pytest.raises(UnexpectedSignal) as wrong:
        client.signal(task_id, "reject", {"approved": False})
    assert wrong.value.waiting_for == "approval", wrong.value.message

    signal_id = new_id("decision")
    accepted = client.signal(task_id, "approval", {"approved": True}, signal_id=signal_id)
    assert (accepted.task_id, accepted.signal, accepted.signal_id, accepted.duplicate) == (task_id, "approval", signal_id, False)
    # A retry of the same signal: the API answers duplicate once its projection has the first
    # (it may lag the log by a few milliseconds; until then the retry is accepted again, and
    # the supervisor ignores it: the first signal resumed the task).
    deadline = time.monotonic() + 5
    while True:
        again = client.signal(task_id, "approval", {"approved": True}, signal_id=signal_id)
        assert again.signal_id == signal_id
        if again.duplicate or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert again.duplicate, "a retried signal_id never answered duplicate"

    outcome = client.wait(task_id, timeout=TASK_S)
    assert outcome["status"] == "completed", outcome
    assert outcome["output"] == {"approved": True, "draft": "draft of d-1"}
    assert outcome["attempt"] == 2
    drafted = {"step": "drafted", "draft": "draft of d-1"}
    assert approvals[task_id] == [(1, None, None), (2, Signal("approval", signal_id, {"approved": True}, False), drafted)]

    # Ended: a retried signal is still a duplicate; a new one finds the task not waiting.
    assert client.signal(task_id, "approval", {"approved": True}, signal_id=signal_id).duplicate
    with pytest.raises(NotWaiting) as late:
        client.signal(task_id, "approval", {"approved": True})
    assert late.value.task_status == "completed", late.value.message


def test_a_signal_that_never_comes_fails_the_task_with_signal_timeout(client: Client) -> None:
    task_id = new_id("approval")
    client.submit("approval", {"doc": "d-2", "timeout_s": 0.5}, task_id=task_id)
    outcome = client.wait(task_id, timeout=TASK_S)
    assert outcome["status"] in ("failed", "dead_lettered"), outcome
    assert outcome["error_kind"] == "signal_timeout"
    assert [n for n, _, _ in approvals[task_id]] == [1], "on_signal_timeout = fail: no attempt after the wait"


def test_with_on_signal_timeout_resume_the_handler_gets_a_timed_out_signal(client: Client) -> None:
    task_id = new_id("approval-resume")
    client.submit("approval_resume", {"doc": "d-3", "timeout_s": 0.5}, task_id=task_id)
    outcome = client.wait(task_id, timeout=TASK_S)
    assert outcome["status"] == "completed", outcome
    assert outcome["output"] == {"approved": False, "timed_out": True, "draft": "draft of d-3"}
    runs = approvals[task_id]
    assert [n for n, _, _ in runs] == [1, 2]
    assert runs[1][1] == Signal("approval", None, None, True)


def test_a_signal_for_a_task_that_does_not_exist_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound):
        client.signal(new_id("missing"), "approval")


def test_a_delegating_agent_returns_its_childs_output(client: Client) -> None:
    task_id = new_id("delegator")
    client.submit("delegator", {"n": 21}, task_id=task_id)
    outcome = client.wait(task_id, timeout=TASK_S)
    assert outcome["status"] == "completed", outcome
    assert outcome["output"] == {"child": {"n": 42}, "callback": True}
    child_id = f"{task_id}.0"
    labels, input = doubled[child_id]
    assert input == {"n": 21} and labels.get("via") == "delegator"
    assert client.wait(child_id, timeout=TASK_S)["status"] == "completed"
    assert client.get(child_id)["parent_task_id"] == task_id


def test_a_failed_child_raises_delegation_failed_in_the_parent(client: Client) -> None:
    task_id = new_id("delegator")
    client.submit("delegator", {"fail": True}, task_id=task_id)
    outcome = client.wait(task_id, timeout=TASK_S)
    assert outcome["status"] == "completed", outcome
    failure = outcome["output"]
    assert failure["task_id"] == f"{task_id}.0"
    assert failure["status"] in ("failed", "dead_lettered") and failure["error_kind"] == "bad_input"
    assert "no text given" in (failure["message"] or "")
