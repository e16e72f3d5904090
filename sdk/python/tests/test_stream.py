"""The task stream's SSE parsing and its resume after drops, and the outcome stream, against
a fake server that drops connections on purpose (tests/fake_sse.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import httpx

from agentlog_sdk import AsyncClient, BadRequest, Chunk, Client, Event, Lagged, NotFound, Outcome, Progress, StreamError, Unavailable
from fake_sse import FakeStream, Running, Step


@pytest.fixture
def fake() -> Iterator[Running]:
    running = Running(FakeStream())
    try:
        yield running
    finally:
        running.close()


def expected_ids(fake: FakeStream) -> list[str | None]:
    return [id for id, _, _ in fake.events()]


def check_complete(events: list[Event], fake: FakeStream) -> None:
    """Every event once, in order, ending with the outcome."""
    assert [e.id for e in events] == expected_ids(fake)
    assert isinstance(events[0], Progress) and events[0].message == "start"
    chunks = [e for e in events if isinstance(e, Chunk)]
    assert [c.seq for c in chunks] == list(range(fake.chunks))
    assert "".join(c.text or "" for c in chunks) == "".join(f"tok{i} " for i in range(fake.chunks))
    assert isinstance(events[-1], Outcome)
    assert events[-1].status == "completed" and events[-1].output == {"text": "done"}


def test_a_whole_stream_is_read_in_one_connection(fake: Running) -> None:
    with Client(fake.url, timeout=5) as client:
        events = list(client.stream("t-1"))
    check_complete(events, fake.fake)
    assert len(fake.fake.requests) == 1
    assert fake.fake.requests[0]["path"] == "/v1/tasks/t-1/stream"
    assert "last-event-id" not in fake.fake.requests[0]


def test_dropped_connections_resume_after_the_last_event_without_gaps_or_repeats(fake: Running) -> None:
    fake.fake.script = [Step(events=3), Step(events=5), Step(events=0), Step(events=7, then="end")]
    with Client(fake.url, timeout=5) as client:
        events = list(client.stream("t-1"))
    check_complete(events, fake.fake)
    ids = expected_ids(fake.fake)
    asked = [r.get("last-event-id") for r in fake.fake.requests]
    # Each reconnect asks for what follows the last event received before the drop.
    assert asked == [None, ids[2], ids[7], ids[7], ids[14]]


def test_a_server_that_replays_too_much_still_yields_each_event_once(fake: Running) -> None:
    fake.fake.script = [Step(events=6), Step(replay=4)]
    with Client(fake.url, timeout=5) as client:
        events = list(client.stream("t-1"))
    check_complete(events, fake.fake)


def test_a_stream_continues_after_a_given_last_event_id(fake: Running) -> None:
    ids = expected_ids(fake.fake)
    with Client(fake.url, timeout=5) as client:
        events = list(client.stream("t-1", last_event_id=ids[9]))
    assert [e.id for e in events] == ids[10:]
    assert fake.fake.requests[0]["last-event-id"] == ids[9]


def test_passing_server_errors_are_retried_and_client_errors_raised(fake: Running) -> None:
    fake.fake.script = [Step(status=503), Step(events=4), Step(status=503)]
    with Client(fake.url, timeout=5) as client:
        check_complete(list(client.stream("t-1")), fake.fake)
    missing = Running(FakeStream(script=[Step(status=404)]))
    try:
        with Client(missing.url, timeout=5) as client, pytest.raises(NotFound) as caught:
            list(client.stream("nope"))
        assert caught.value.code == "no_task" and caught.value.status == 404
        assert len(missing.fake.requests) == 1
    finally:
        missing.close()


def test_a_stream_that_never_gets_anywhere_gives_up(fake: Running) -> None:
    fake.fake.script = [Step(events=0)] * 10
    with Client(fake.url, timeout=5) as client, pytest.raises(StreamError) as caught:
        list(client.stream("t-1", max_reconnects=3))
    assert caught.value.code == "stream_lost"
    assert len(fake.fake.requests) == 4


def test_task_ids_are_escaped_in_the_path(fake: Running) -> None:
    with Client(fake.url, timeout=5) as client:
        list(client.stream("a/b?c"))
    assert fake.fake.requests[0]["path"] == "/v1/tasks/a%2Fb%3Fc/stream"


@pytest.mark.anyio
async def test_the_async_stream_resumes_too(fake: Running) -> None:
    fake.fake.script = [Step(events=2), Step(events=10), Step(events=1, then="end")]
    async with AsyncClient(fake.url, timeout=5) as client:
        events = [e async for e in client.stream("t-1")]
    check_complete(events, fake.fake)
    ids = expected_ids(fake.fake)
    assert [r.get("last-event-id") for r in fake.fake.requests] == [None, ids[1], ids[11], ids[12]]


def task(task_id: str, status: str = "completed") -> dict[str, object]:
    return {"task_id": task_id, "agent_type": "echo", "status": status, "outcome": {"status": status, "output": {"n": task_id}, "attempt": 1, "error_kind": None}}


OUTCOMES = [
    ("a-1", "outcome", task("a-1")),
    (None, "lagged", {"missed": 7}),
    ("a-2", "outcome", task("a-2", "failed")),
    (None, "newer_event_type", {"x": 1}),  # unknown: skipped
    ("a-3", "outcome", task("a-3")),
]


def check_outcomes(events: list[object]) -> None:
    assert [type(e) for e in events] == [Outcome, Lagged, Outcome, Outcome]
    first, lagged, second, third = events
    assert isinstance(first, Outcome) and first.task_id == "a-1" and first.status == "completed" and first.output == {"n": "a-1"}
    assert first.task["agent_type"] == "echo" and first.id is None  # the SSE id is no position
    assert lagged == Lagged(missed=7)
    assert isinstance(second, Outcome) and second.task_id == "a-2" and second.status == "failed"
    assert isinstance(third, Outcome) and third.task_id == "a-3"


def test_the_outcome_stream_yields_outcomes_and_lagged_events(fake: Running) -> None:
    fake.fake.outcomes = OUTCOMES
    with Client(fake.url, timeout=5) as client, client.outcomes("echo") as events:
        # `with` connected already: the request is made before the first event is asked for.
        assert len(fake.fake.requests) == 1
        received = list(events)  # the fake ends the stream after its events: so does the iterator
    check_outcomes(received)
    request = fake.fake.requests[0]
    assert request["path"] == "/v1/stream/outcomes?agent_type=echo"
    assert request["accept"] == "text/event-stream"


def test_the_outcome_stream_of_every_type_sends_no_filter(fake: Running) -> None:
    fake.fake.outcomes = OUTCOMES[:1]
    with Client(fake.url, timeout=5) as client:
        events = list(client.outcomes())  # connects on first use
    assert [e.task_id for e in events if isinstance(e, Outcome)] == ["a-1"]
    assert fake.fake.requests[0]["path"] == "/v1/stream/outcomes"


@pytest.mark.anyio
async def test_the_async_outcome_stream(fake: Running) -> None:
    fake.fake.outcomes = OUTCOMES
    async with AsyncClient(fake.url, timeout=5) as client:
        async with client.outcomes("echo") as events:
            assert len(fake.fake.requests) == 1
            received = [e async for e in events]
        check_outcomes(received)
        # Closed: iterating ends at once, and it is not reopened.
        assert [e async for e in events] == []
        with pytest.raises(RuntimeError):
            await events.open()
    assert len(fake.fake.requests) == 1


def test_a_dropped_outcome_stream_is_not_resumed(fake: Running) -> None:
    fake.fake.outcomes = OUTCOMES
    fake.fake.script = [Step(events=2, then="drop")]
    received: list[object] = []
    with Client(fake.url, timeout=5) as client, pytest.raises(httpx.TransportError), client.outcomes("echo") as events:
        for event in events:
            received.append(event)
    assert [type(e) for e in received] == [Outcome, Lagged]
    assert len(fake.fake.requests) == 1  # no reconnect: the stream has no position to resume from


@pytest.mark.anyio
async def test_a_dropped_async_outcome_stream_is_not_resumed(fake: Running) -> None:
    fake.fake.outcomes = OUTCOMES
    fake.fake.script = [Step(events=1, then="drop")]
    received: list[object] = []
    async with AsyncClient(fake.url, timeout=5) as client:
        with pytest.raises(httpx.TransportError):
            async with client.outcomes() as events:
                async for event in events:
                    received.append(event)
    assert [type(e) for e in received] == [Outcome]
    assert len(fake.fake.requests) == 1


def test_outcome_stream_errors_are_raised_on_connect_and_not_retried(fake: Running) -> None:
    fake.fake.script = [Step(status=503), Step(status=404)]
    with Client(fake.url, timeout=5) as client:
        with pytest.raises(Unavailable):
            client.outcomes("echo").open()
        with pytest.raises(NotFound):
            list(client.outcomes("echo"))
    assert len(fake.fake.requests) == 2


def test_a_bad_agent_type_is_the_apis_400() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"code": "invalid_field", "message": "unknown agent type `nope`", "field": "agent_type"}})

    with Client("http://api.test", transport=httpx.MockTransport(answer)) as client, pytest.raises(BadRequest) as caught:
        client.outcomes("nope").open()
    assert caught.value.field == "agent_type"
