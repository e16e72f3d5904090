"""The client's requests and its reading of answers, against a scripted transport."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from agentlog_sdk import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    NotFound,
    NotWaiting,
    PayloadTooLarge,
    ServerError,
    SignalResult,
    TooManyRequests,
    Unavailable,
    UnexpectedSignal,
    WaitTimeout,
    task_spec,
)


def error(status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, "field": field}}, headers=headers)


def client_of(handler: Callable[[httpx.Request], httpx.Response], **kwargs: object) -> tuple[Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return Client("http://api.test/", transport=httpx.MockTransport(record), **kwargs), seen  # type: ignore[arg-type]


def test_submit_sends_only_the_fields_given_and_reads_the_answer() -> None:
    client, seen = client_of(lambda r: httpx.Response(202, json={"task_id": "t-1", "position": "agentlog.tasks.echo.normal:0:7", "topic": "x", "partition": 0, "offset": 7, "delayed": False}))
    submitted = client.submit("echo", {"text": "hi"}, idempotency_key="k-1", labels={"team": "a"}, lane="high")
    assert submitted.task_id == "t-1" and not submitted.duplicate and submitted.position == "agentlog.tasks.echo.normal:0:7"
    request = seen[0]
    assert request.method == "POST" and request.url.path == "/v1/tasks" and not request.url.query
    assert json.loads(request.content) == {"agent_type": "echo", "input": {"text": "hi"}, "idempotency_key": "k-1", "labels": {"team": "a"}, "lane": "high"}
    assert "authorization" not in request.headers


def test_the_api_key_is_a_bearer_token() -> None:
    client, seen = client_of(lambda r: httpx.Response(200, json={"tasks": [], "next_cursor": None}), api_key="secret")
    page = client.list(status="completed", limit=5)
    assert page.tasks == [] and page.next_cursor is None
    assert seen[0].headers["authorization"] == "Bearer secret"
    assert dict(seen[0].url.params) == {"status": "completed", "limit": "5"}


def test_a_batch_is_one_request_with_every_task() -> None:
    answer = {"tasks": [{"task_id": "a", "position": "p:0:1"}, {"task_id": "b", "duplicate": True}]}
    client, seen = client_of(lambda r: httpx.Response(202, json=answer))
    replies = client.submit_batch([task_spec("echo", 1, task_id="a"), task_spec("echo", 2, idempotency_key="k")])
    assert [(r.task_id, r.duplicate) for r in replies] == [("a", False), ("b", True)]
    assert json.loads(seen[0].content) == {"tasks": [{"agent_type": "echo", "input": 1, "task_id": "a"}, {"agent_type": "echo", "input": 2, "idempotency_key": "k"}]}


def test_errors_are_typed_with_the_apis_code_message_and_field() -> None:
    answers = {
        "/v1/tasks": error(400, "invalid_field", "lane `x` is not a lane", "lane"),
        "/v1/tasks/gone": error(404, "no_task", "no task `gone`"),
        "/v1/tasks/done/cancel": error(409, "task_finished", "task `done` already ended completed"),
        "/v1/tasks/busy": error(429, "quota_exceeded", "too many", headers={"Retry-After": "3"}),
        "/v1/tasks/down": error(503, "unavailable", "the log is down"),
        "/v1/tasks/boom": httpx.Response(500, text="plain failure"),
    }
    client, _ = client_of(lambda r: answers[r.url.path])
    with pytest.raises(BadRequest) as bad:
        client.submit("echo", {}, lane="x")
    assert (bad.value.status, bad.value.code, bad.value.field) == (400, "invalid_field", "lane")
    assert "not a lane" in bad.value.message
    with pytest.raises(NotFound) as missing:
        client.get("gone")
    assert missing.value.code == "no_task"
    with pytest.raises(Conflict):
        client.cancel("done", reason="late")
    with pytest.raises(TooManyRequests) as busy:
        client.get("busy")
    assert busy.value.retry_after == 3.0 and busy.value.code == "quota_exceeded"
    with pytest.raises(Unavailable):
        client.get("down")
    with pytest.raises(ServerError) as boom:
        client.get("boom")
    assert boom.value.status == 500 and boom.value.message == "plain failure"


def test_cancel_sends_its_reason() -> None:
    client, seen = client_of(lambda r: httpx.Response(202, json={"task_id": "t", "cancel_requested": True}))
    assert client.cancel("t", reason="changed my mind") == {"task_id": "t", "cancel_requested": True}
    assert json.loads(seen[0].content) == {"reason": "changed my mind"}
    client.cancel("t")
    assert json.loads(seen[1].content) == {}


def test_wait_asks_again_while_the_server_answers_no_outcome_yet() -> None:
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(int(request.url.params["wait_ms"]))
        if len(calls) < 3:
            return error(404, "no_outcome", "no outcome for task `t` (yet)")
        return httpx.Response(200, json={"task_id": "t", "status": "completed", "output": 42})

    client, _ = client_of(answer)
    assert client.wait("t", timeout=20)["output"] == 42
    assert len(calls) == 3 and all(0 < ms <= 20_000 for ms in calls)


def test_wait_gives_up_at_its_timeout() -> None:
    client, _ = client_of(lambda r: error(404, "no_outcome", "not yet"))
    with pytest.raises(WaitTimeout) as caught:
        client.wait("t", timeout=0.2)
    assert isinstance(caught.value, TimeoutError)


@pytest.mark.anyio
async def test_the_async_client_speaks_the_same_api() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/outcome"):
            return httpx.Response(200, json={"task_id": "t 1", "status": "failed", "error_kind": "rejected"})
        if request.url.path == "/v1/tasks":
            return httpx.Response(202, json={"task_id": "t 1"})
        return error(404, "no_task", "no task")

    async with AsyncClient("http://api.test", transport=httpx.MockTransport(answer)) as client:
        submitted = await client.submit("echo", "text", task_id="t 1", max_attempts=2)
        assert submitted.task_id == "t 1"
        assert (await client.wait("t 1", timeout=5))["error_kind"] == "rejected"
        with pytest.raises(NotFound):
            await client.get("t 1")
    assert json.loads(seen[0].content) == {"agent_type": "echo", "input": "text", "task_id": "t 1", "max_attempts": 2}
    assert seen[1].url.raw_path.startswith(b"/v1/tasks/t%201/outcome")


# Signals (POST /v1/tasks/{id}/signals/{name}).


def accepted(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    name = request.url.path.rsplit("/", 1)[1]
    # As the API does, a signal sent without an id gets one.
    return httpx.Response(202, json={"task_id": "t 1", "signal": name, "signal_id": body.get("signal_id") or "sig-given", "status": "accepted"})


def test_a_signal_posts_its_payload_and_id_and_reads_accepted() -> None:
    client, seen = client_of(accepted)
    result = client.signal("t 1", "approval", {"approved": True}, signal_id="s-1")
    assert result == SignalResult(task_id="t 1", signal="approval", signal_id="s-1", duplicate=False)
    assert result.raw["status"] == "accepted"
    request = seen[0]
    assert request.method == "POST" and request.url.raw_path == b"/v1/tasks/t%201/signals/approval"
    assert json.loads(request.content) == {"payload": {"approved": True}, "signal_id": "s-1"}
    assert request.headers["content-type"] == "application/json"


def test_a_signal_without_id_or_payload_sends_null_and_no_id() -> None:
    client, seen = client_of(accepted)
    result = client.signal("t 1", "go")
    assert (result.signal, result.signal_id, result.duplicate) == ("go", "sig-given", False)
    assert json.loads(seen[0].content) == {"payload": None}
    with pytest.raises(TypeError):
        client.signal("t", "go", b"bytes")
    assert len(seen) == 1, "nothing sent"


def test_a_signal_id_received_before_is_a_duplicate() -> None:
    client, _ = client_of(lambda r: httpx.Response(200, json={"task_id": "t", "signal": "approval", "signal_id": "s-1", "status": "duplicate"}))
    result = client.signal("t", "approval", {"approved": True}, signal_id="s-1")
    assert result.duplicate and result.signal_id == "s-1"


@pytest.mark.parametrize(
    ("message", "details", "status"),
    [
        ("task `t` is completed, not waiting for a signal", {"detail": {"status": "completed"}}, "completed"),
        ("task `t` is running, not waiting for a signal", {}, "running"),  # no detail: the words
        ("task `failed-job` is dead_lettered, not waiting for a signal", {}, "dead_lettered"),
        ("the task is not waiting", {"detail": None}, None),
    ],
)
def test_a_task_not_waiting_is_a_typed_conflict_with_its_status(message: str, details: dict[str, object], status: str | None) -> None:
    answer = httpx.Response(409, json={"error": {"code": "not_waiting", "message": message, "field": None, **details}})
    client, _ = client_of(lambda r: answer)
    with pytest.raises(NotWaiting) as caught:
        client.signal("failed-job", "approval", signal_id="s-1")
    error = caught.value
    assert isinstance(error, Conflict)
    assert (error.status, error.code, error.message, error.task_status) == (409, "not_waiting", message, status)


@pytest.mark.parametrize(
    ("message", "details", "awaited"),
    [
        ("task `t` waits for signal `approval`, not `reject`", {"detail": {"status": "waiting", "waiting_for": "approval"}}, "approval"),
        ("task `t` waits for signal `approval`, not `reject`", {}, "approval"),  # no detail: the words
        ("signal `reject` is unexpected: task `t` is waiting for `approval`", {}, "approval"),
        ("a signal the task does not wait for", {}, None),
    ],
)
def test_an_unexpected_signal_is_a_typed_conflict_naming_the_awaited_one(message: str, details: dict[str, object], awaited: str | None) -> None:
    answer = httpx.Response(409, json={"error": {"code": "unexpected_signal", "message": message, "field": None, **details}})
    client, _ = client_of(lambda r: answer)
    with pytest.raises(UnexpectedSignal) as caught:
        client.signal("t", "reject")
    error = caught.value
    assert isinstance(error, Conflict) and not isinstance(error, NotWaiting)
    assert (error.code, error.message, error.waiting_for) == ("unexpected_signal", message, awaited)


def test_other_signal_errors_are_the_usual_typed_ones() -> None:
    answers = {
        "/v1/tasks/gone/signals/approval": error(404, "no_task", "no task `gone`"),
        "/v1/tasks/t/signals/Bad": error(400, "invalid_field", "signal name `Bad` is not 1 to 64 of a-z, 0-9, `_`, `.`, `-`", "signal"),
        "/v1/tasks/t/signals/big": error(413, "payload_too_large", "the payload is 300002 bytes as JSON; the limit is 262144", "payload"),
        "/v1/tasks/done/signals/approval": error(409, "task_finished", "task `done` already ended completed"),
    }
    client, _ = client_of(lambda r: answers[r.url.path])
    with pytest.raises(NotFound) as missing:
        client.signal("gone", "approval")
    assert missing.value.code == "no_task"
    with pytest.raises(BadRequest) as bad:
        client.signal("t", "Bad")
    assert bad.value.field == "signal"
    with pytest.raises(PayloadTooLarge) as large:
        client.signal("t", "big", "x" * 300_000)
    assert (large.value.status, large.value.field) == (413, "payload") and "262144" in large.value.message
    with pytest.raises(Conflict) as conflict:  # another 409 code: a plain Conflict
        client.signal("done", "approval")
    assert type(conflict.value) is Conflict


def test_a_name_cannot_bend_the_path() -> None:
    client, seen = client_of(lambda r: error(400, "invalid_field", "bad name", "signal"))
    with pytest.raises(BadRequest):
        client.signal("t", "../cancel")
    assert seen[0].url.raw_path == b"/v1/tasks/t/signals/..%2Fcancel"


@pytest.mark.anyio
async def test_the_async_client_signals_too() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return accepted(request)
        if len(seen) == 2:
            return httpx.Response(200, json={"task_id": "t 1", "signal": "approval", "signal_id": "s-1", "status": "duplicate"})
        return httpx.Response(409, json={"error": {"code": "unexpected_signal", "message": "task `t 1` waits for signal `approval`, not `other`", "detail": {"status": "waiting", "waiting_for": "approval"}}})

    async with AsyncClient("http://api.test", transport=httpx.MockTransport(answer)) as client:
        first = await client.signal("t 1", "approval", {"approved": False}, signal_id="s-1")
        again = await client.signal("t 1", "approval", {"approved": False}, signal_id="s-1")
        with pytest.raises(UnexpectedSignal) as caught:
            await client.signal("t 1", "other")
    assert (first.duplicate, again.duplicate) == (False, True)
    assert caught.value.waiting_for == "approval"
    assert seen[0].url.raw_path == b"/v1/tasks/t%201/signals/approval"
    assert json.loads(seen[0].content) == {"payload": {"approved": False}, "signal_id": "s-1"}
