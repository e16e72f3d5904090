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
    ServerError,
    TooManyRequests,
    Unavailable,
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
