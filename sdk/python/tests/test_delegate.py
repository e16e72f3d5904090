"""Delegation from a handler (agent protocol v1, §6): `Context.delegate`, `submit_child` and
`child_outcome` against a fake worker callback served by uvicorn (tests/fake_callback.py),
the attempts posted through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agentlog_sdk import AgentApp, BadRequest, ChildOutcome, Context, DelegationFailed, DelegationUnavailable, WaitTimeout
from agentlog_sdk import delegation
from agentlog_sdk.delegation import Callback
from fake_callback import FakeCallback
from servers import Served

app = AgentApp()
seen: dict[str, Any] = {}


@app.agent("parent")
async def parent(ctx: Context) -> Any:
    """Delegates once and returns the child's output."""
    seen["callback_url"] = ctx.callback_url
    return {"child": await ctx.delegate("summarize", ctx.input, labels={"team": "a"})}


@app.agent("numbers")
async def numbers(ctx: Context) -> Any:
    """Numbers its children: implicitly, explicitly, after an explicit one, and concurrently."""
    first = await ctx.submit_child("echo", "a", content_type="text/plain")
    explicit = await ctx.delegate("echo", {"i": 5}, n=5)
    after = await ctx.submit_child("echo", {"i": "after"})
    both = await asyncio.gather(ctx.delegate("echo", {"i": "x"}), ctx.delegate("echo", {"i": "y"}))
    again = await ctx.delegate("echo", {"i": "ignored"}, n=0)  # the same child 0: found again
    by_id = await ctx.child_outcome(after)
    by_n = await ctx.child_outcome(0)
    return {
        "ids": [first, after],
        "explicit": explicit,
        "both": list(both),
        "again": again,
        "by_id": [by_id.n, by_id.task_id, by_id.output],
        "by_n": [by_n.n, by_n.output, by_n.content_type],
    }


@app.agent("failing")
async def failing(ctx: Context) -> Any:
    try:
        await ctx.delegate("rejecting", {})
    except DelegationFailed as e:
        seen["failed"] = e
    await ctx.delegate("rejecting", {})  # not caught this time


@app.agent("alone")
async def alone(ctx: Context) -> Any:
    try:
        await ctx.delegate("echo", 1)
    except DelegationUnavailable as e:
        seen["unavailable"] = e
    await ctx.submit_child("echo", 1)


@app.agent("refused")
async def refused(ctx: Context) -> Any:
    try:
        await ctx.delegate("echo", ctx.input)
    except BadRequest as e:
        seen["refused"] = e
        return "refused"
    return "accepted"


@app.agent("wrong_inputs")
async def wrong_inputs(ctx: Context) -> Any:
    errors = []
    for call in (
        lambda: ctx.delegate("echo", b"raw bytes"),
        lambda: ctx.delegate("echo", 1, n=-1),
        lambda: ctx.delegate("echo", 1, labels={"a": 1}),  # type: ignore[dict-item]
        lambda: ctx.delegate("", 1),
        lambda: ctx.child_outcome("not-a-child-of-mine"),
        lambda: ctx.child_outcome(-1),
    ):
        try:
            await call()
        except (TypeError, ValueError) as e:
            errors.append(type(e).__name__)
    return errors


@app.agent("impatient")
async def impatient(ctx: Context) -> Any:
    child = await ctx.submit_child("slow", {})
    try:
        await ctx.child_outcome(child, timeout=0.3)
    except WaitTimeout:
        return "gave up"
    return "got it"


@app.agent("sync_parent")
def sync_parent(ctx: Context) -> Any:
    return ctx.delegate_sync("echo", {"from": "a thread"})


@pytest.fixture
def callback() -> Iterator[tuple[FakeCallback, str]]:
    fake = FakeCallback()
    server = Served(fake).start()
    try:
        yield fake, fake.url(server.url)
    finally:
        server.stop()


def attempt(agent_type: str, input: Any = None, **fields: Any) -> dict[str, Any]:
    body = {
        "protocol": 1,
        "task_id": "t-1",
        "agent_type": agent_type,
        "attempt": 1,
        "idempotency_key": "t-1",
        "content_type": "application/json",
        "input": input,
        "input_encoding": "json",
        "labels": {},
        "checkpoint": None,
        "checkpoint_attempt": None,
        "signal": None,
    }
    body.update(fields)
    return body


async def run(body: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent", timeout=30) as client:
            response = await client.post("/", json=body)
    finally:
        await app.aclose()
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


@pytest.mark.anyio
async def test_delegate_submits_the_child_asks_again_while_pending_and_returns_its_output(callback: tuple[FakeCallback, str]) -> None:
    fake, url = callback
    child = fake.child_id(0)
    fake.outcomes[0] = [fake.pending(child), fake.pending(child), fake.completed(child, {"summary": "short"})]
    got = await run(attempt("parent", {"text": "long"}, callback_url=url))
    assert got == [{"type": "result", "output": {"child": {"summary": "short"}}}]
    assert seen["callback_url"] == url
    assert fake.submits == [{"n": 0, "agent_type": "summarize", "input": {"text": "long"}, "content_type": "application/json", "labels": {"team": "a"}}]
    assert fake.polls == [(0, 30_000)] * 3


@pytest.mark.anyio
async def test_children_are_numbered_per_attempt_from_0_and_explicit_numbers_are_kept(callback: tuple[FakeCallback, str]) -> None:
    fake, url = callback
    got = await run(attempt("numbers", callback_url=url))
    assert [s["n"] for s in fake.submits] == [0, 5, 6, 7, 8, 0]
    assert fake.submits[0] == {"n": 0, "agent_type": "echo", "input": "a", "content_type": "text/plain"}, "labels left out when None"
    output = got[-1]["output"]
    assert output["ids"] == ["t-1.0", "t-1.6"]
    assert output["explicit"] == {"echo": {"i": 5}}
    assert output["both"] == [{"echo": {"i": "x"}}, {"echo": {"i": "y"}}], "concurrent children numbered in call order"
    assert output["again"] == {"echo": "a"}, "the same n is the same child, whatever was sent the second time"
    assert output["by_id"] == [6, "t-1.6", {"echo": {"i": "after"}}]
    assert output["by_n"] == [0, {"echo": "a"}, "application/json"]


@pytest.mark.anyio
async def test_a_failed_child_raises_delegation_failed_and_uncaught_fails_the_attempt_not_retryable(callback: tuple[FakeCallback, str]) -> None:
    fake, url = callback
    fake.outcomes[0] = [fake.pending(fake.child_id(0)), fake.failed(fake.child_id(0), "dead_lettered", "bad_input", "no text given")]
    fake.outcomes[1] = [fake.failed(fake.child_id(1), "cancelled", "cancelled", "the task was cancelled")]
    got = await run(attempt("failing", callback_url=url))
    error = seen["failed"]
    assert (error.task_id, error.status, error.error_kind, error.message, error.n) == ("t-1.0", "dead_lettered", "bad_input", "no text given", 0)
    assert "t-1.0" in str(error) and "dead_lettered" in str(error)
    [last] = got
    assert (last["type"], last["kind"], last["retryable"]) == ("error", "delegation_failed", False)
    assert "t-1.1" in last["message"] and "cancelled" in last["message"]


@pytest.mark.anyio
async def test_without_a_callback_url_delegation_says_the_type_must_declare_delegates(callback: tuple[FakeCallback, str]) -> None:
    for body in (attempt("alone"), attempt("alone", callback_url=None)):
        got = await run(body)
        assert "delegates = true" in str(seen.pop("unavailable"))
        [last] = got
        assert (last["type"], last["kind"], last["retryable"]) == ("error", "delegation_unavailable", False)
        assert "`alone`" in last["message"] and "delegates = true" in last["message"]
    assert callback[0].submits == []


@pytest.mark.anyio
async def test_error_answers_of_the_callback_are_typed(callback: tuple[FakeCallback, str]) -> None:
    fake, url = callback
    fake.submit_error = (400, {"error": {"code": "invalid_field", "message": "agent_type `Bad` is not a name", "field": "agent_type"}})
    got = await run(attempt("refused", {"x": 1}, callback_url=url))
    assert got[-1]["output"] == "refused"
    assert seen["refused"].field == "agent_type"
    # A callback no longer valid (the attempt ended): NotFound, through the handler as any error.
    fake.submit_error = None
    got = await run(attempt("parent", {}, callback_url=url + "-expired"))
    assert (got[-1]["type"], got[-1]["kind"]) == ("error", "exception")
    assert got[-1]["message"].startswith("NotFound: 404 no_attempt")


@pytest.mark.anyio
async def test_what_cannot_be_sent_is_refused_before_sending(callback: tuple[FakeCallback, str]) -> None:
    fake, url = callback
    got = await run(attempt("wrong_inputs", callback_url=url))
    assert got[-1]["output"] == ["TypeError", "ValueError", "TypeError", "ValueError", "ValueError", "ValueError"]
    assert fake.submits == [] and fake.polls == []


@pytest.mark.anyio
async def test_child_outcome_gives_up_at_its_timeout(callback: tuple[FakeCallback, str]) -> None:
    fake, url = callback
    fake.outcomes[0] = [fake.pending(fake.child_id(0))]
    got = await run(attempt("impatient", callback_url=url))
    assert got[-1]["output"] == "gave up"
    assert fake.polls and all(0 < wait_ms <= 300 for _, wait_ms in fake.polls)


@pytest.mark.anyio
async def test_sync_handlers_delegate_too(callback: tuple[FakeCallback, str]) -> None:
    fake, url = callback
    got = await run(attempt("sync_parent", callback_url=url))
    assert got == [{"type": "result", "output": {"echo": {"from": "a thread"}}}]


@pytest.mark.anyio
@pytest.mark.parametrize("callback_url", [5, "", "ftp://worker/cb", ["http://x"]])
async def test_a_bad_callback_url_is_a_400(callback_url: Any) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent") as client:
        response = await client.post("/", json=attempt("parent", {}, callback_url=callback_url))
    assert response.status_code == 400, response.text
    assert "callback_url" in response.json()["error"]["message"]


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delegation, "RETRY_PAUSES_S", (0.01, 0.01, 0.01))


@pytest.mark.anyio
@pytest.mark.usefixtures("quick_retries")
async def test_the_callback_is_asked_again_after_a_connection_error() -> None:
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) in (1, 3):
            raise httpx.ConnectError("the worker restarted its listener")
        if request.method == "POST":
            return httpx.Response(202, json={"task_id": "t-1.0"})
        return httpx.Response(200, json={"task_id": "t-1.0", "status": "completed", "output": "text out", "content_type": "text/plain; charset=utf-8"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        callback = Callback("http://worker/cb/tok/", http)
        assert await callback.submit(0, "echo", "in", content_type="text/plain") == "t-1.0"
        outcome = await callback.outcome(0)
    assert calls == ["POST", "POST", "GET", "GET"]
    assert outcome == ChildOutcome(task_id="t-1.0", status="completed", output="text out", content_type="text/plain; charset=utf-8", n=0)
    assert outcome.result() == "text out"


@pytest.mark.anyio
@pytest.mark.usefixtures("quick_retries")
async def test_the_callback_gives_up_after_repeated_connection_errors() -> None:
    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("refused")

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        with pytest.raises(httpx.ConnectError):
            await Callback("http://worker/cb/tok", http).submit(0, "echo", 1)
    assert len(calls) == 4, "the first call and three more"


def test_the_apps_client_is_closed_at_shutdown(callback: tuple[FakeCallback, str]) -> None:
    fake, url = callback
    own = AgentApp()

    @own.agent("parent")
    async def parent(ctx: Context) -> Any:
        return await ctx.delegate("echo", ctx.input)

    server = Served(own).start()
    try:
        response = httpx.post(f"{server.url}/parent", json=attempt("parent", {"k": 1}, callback_url=url), timeout=30)
        assert json.loads(response.text.splitlines()[-1]) == {"type": "result", "output": {"echo": {"k": 1}}}
        http = own._http
        assert http is not None and not http.is_closed
    finally:
        server.stop()
    assert http.is_closed and own._http is None


def test_a_child_outcome_result_is_its_output_or_its_failure() -> None:
    done = ChildOutcome.of({"task_id": "p.0", "status": "completed", "output": [1], "content_type": "application/json"}, 0)
    assert done.completed and done.result() == [1]
    expired = ChildOutcome.of({"task_id": "p.1", "status": "expired", "error_kind": "deadline", "message": "too late"}, 1)
    with pytest.raises(DelegationFailed) as caught:
        expired.result()
    assert (caught.value.status, caught.value.error_kind, caught.value.n) == ("expired", "deadline", 1)
