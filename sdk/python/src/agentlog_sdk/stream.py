"""A task's stream (``GET /v1/tasks/{id}/stream``): typed events, resumed after a drop.

The server sends Server-Sent Events: ``progress`` and ``chunk`` events whose ``id`` is a log
position (``<partition>:<offset>``), then one ``outcome`` event, then it ends. A connection
may drop at any time (a proxy's idle timeout, an API replica restarting); the iterators here
reconnect with ``Last-Event-ID`` set to the last position received, which the server
continues strictly after, so the caller sees every event once, in order. As a second line
of defence an event at or before the last position of its partition is skipped, so even a
server that replayed too much could not make the caller see a chunk twice.

The resume logic is one small state machine (`_Resume`) shared by the sync and the async
iterator, which only differ in how they do I/O.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import anyio
import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

from .errors import StreamError, error_from_response

__all__ = [
    "Progress",
    "Chunk",
    "Outcome",
    "Lagged",
    "Event",
    "OutcomeEvent",
    "OutcomeStream",
    "AsyncOutcomeStream",
    "iter_events",
    "aiter_events",
    "parse_position",
]


@dataclass(frozen=True)
class Progress:
    """A ``progress`` frame of attempt ``attempt``: ``percent`` (0–100) and/or ``message``."""

    id: str | None
    attempt: int
    percent: float | None
    message: str | None
    at_ms: int | None


@dataclass(frozen=True)
class Chunk:
    """A ``chunk`` of attempt ``attempt``: ``text`` or ``json`` (see `value`). ``seq`` counts
    from 0 per attempt; when it goes back to 0 a new attempt (or a re-run) started over, and a
    client assembling text should start over too."""

    id: str | None
    attempt: int
    seq: int
    text: str | None = None
    json: Any = None
    at_ms: int | None = None

    @property
    def value(self) -> Any:
        """The text of a text chunk, else the JSON value."""
        return self.text if self.text is not None else self.json


@dataclass(frozen=True)
class Outcome:
    """The task once it reached its terminal outcome, as ``GET /v1/tasks/{id}`` answers it."""

    id: str | None
    task: dict[str, Any] = field(repr=False)

    @property
    def task_id(self) -> str:
        return str(self.task.get("task_id", ""))

    @property
    def status(self) -> str:
        """completed, failed, dead_lettered, cancelled or expired."""
        outcome = self.task.get("outcome") or {}
        return str(outcome.get("status") or self.task.get("status", ""))

    @property
    def output(self) -> Any:
        return (self.task.get("outcome") or {}).get("output")

    @property
    def error_kind(self) -> str | None:
        return (self.task.get("outcome") or {}).get("error_kind")

    @property
    def message(self) -> str | None:
        return (self.task.get("outcome") or {}).get("message")

    @property
    def attempt(self) -> int | None:
        return (self.task.get("outcome") or {}).get("attempt")

    @property
    def usage(self) -> dict[str, Any] | None:
        """What the completed attempt consumed as its agent reported it (``input_tokens``,
        ``output_tokens``, ``model``, ``cost_micros``, ``currency``, ``counters``), or None."""
        return (self.task.get("outcome") or {}).get("usage")


@dataclass(frozen=True)
class Lagged:
    """An outcome stream (``GET /v1/stream/outcomes``) fell behind: the server dropped
    ``missed`` outcomes for this connection rather than buffer them without bound. They are
    not sent again; ``list()`` (``GET /v1/tasks``) shows what finished meanwhile."""

    missed: int


Event = Union[Progress, Chunk, Outcome]

#: What an outcome stream yields.
OutcomeEvent = Union[Outcome, Lagged]


def parse_position(text: str) -> tuple[int, int] | None:
    """``"<partition>:<offset>"`` as numbers, or None when it is not one."""
    partition, sep, offset = text.partition(":")
    if not sep:
        return None
    try:
        return int(partition), int(offset)
    except ValueError:
        return None


def _event_of(sse: ServerSentEvent, id: str | None) -> Event | None:
    """The typed event of one SSE message; None for event types this SDK does not know (a
    newer server may add some: they are skipped, not fatal)."""
    if sse.event not in ("progress", "chunk", "outcome"):
        return None
    try:
        data = json.loads(sse.data)
    except ValueError as e:
        raise StreamError(0, "bad_event", f"the data of a `{sse.event}` event is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise StreamError(0, "bad_event", f"the data of a `{sse.event}` event is not an object")
    if sse.event == "progress":
        return Progress(id=id, attempt=int(data.get("attempt", 0)), percent=data.get("percent"), message=data.get("message"), at_ms=data.get("at_ms"))
    if sse.event == "chunk":
        return Chunk(id=id, attempt=int(data.get("attempt", 0)), seq=int(data.get("seq", 0)), text=data.get("text"), json=data.get("json"), at_ms=data.get("at_ms"))
    return Outcome(id=id, task=data)


class _Retry(Exception):
    """The connection ended without the outcome: connect again."""


#: Statuses worth another connection: the API replica or the log is passing through trouble.
_RETRY_STATUSES = frozenset({502, 503, 504})


def _check_event_stream(response: httpx.Response) -> None:
    """Raises the API's error for an error answer, `StreamError` for an answer not SSE."""
    if response.status_code >= 400:
        raise error_from_response(response)
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise StreamError(response.status_code, "not_an_event_stream", f"the answer is {content_type or 'untyped'}, not text/event-stream")


class _Resume:
    """Where a stream is, and whether and when to connect again.

    ``failures`` counts connections in a row that brought no event; past
    ``max_reconnects`` the stream gives up with `StreamError`. Waits double from ``backoff``
    up to 5 s, and start again from ``backoff`` once an event arrives.
    """

    def __init__(self, last_event_id: str | None, max_reconnects: int, backoff: float) -> None:
        self.last_id = last_event_id
        self.last_position = parse_position(last_event_id) if last_event_id else None
        self.max_reconnects = max_reconnects
        self.backoff = backoff
        self.failures = 0
        self.connection_id = ""

    def headers(self, base: Mapping[str, str]) -> dict[str, str]:
        headers = dict(base)
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        return headers

    def check(self, response: httpx.Response) -> None:
        """Raises the API's error for an error answer (`_Retry` for a passing one)."""
        if response.status_code in _RETRY_STATUSES:
            raise _Retry(f"HTTP {response.status_code}")
        _check_event_stream(response)

    def connected(self) -> None:
        """A new connection: its SSE decoder starts without a last id."""
        self.connection_id = ""

    def accept(self, sse: ServerSentEvent) -> Event | None:
        """The event to hand the caller, or None (unknown type, or already seen)."""
        # The SSE decoder repeats the last `id:` on later messages that carry none; an id is
        # this message's own only when it changed.
        explicit = sse.id != self.connection_id
        self.connection_id = sse.id
        id = sse.id if explicit and sse.id else None
        if id is not None:
            position = parse_position(id)
            last = self.last_position
            if id == self.last_id or (position is not None and last is not None and position[0] == last[0] and position[1] <= last[1]):
                return None  # at or before what was already handed over: a repeat
            self.last_id, self.last_position = id, position
        event = _event_of(sse, id)
        if event is not None:
            self.failures = 0
        return event

    def delay(self, why: str) -> float:
        """How long to wait before connecting again; `StreamError` when out of attempts."""
        self.failures += 1
        if self.failures > self.max_reconnects:
            raise StreamError(0, "stream_lost", f"the stream dropped {self.failures} times in a row without an event; last: {why}")
        return min(5.0, self.backoff * 2.0 ** (self.failures - 1))


def _timeout(timeout: httpx.Timeout | None) -> dict[str, Any]:
    # httpx reads timeout=None as "no timeout at all": pass it only when given.
    return {} if timeout is None else {"timeout": timeout}


def _read_error_body(response: httpx.Response) -> None:
    if response.status_code >= 400:
        response.read()


async def _aread_error_body(response: httpx.Response) -> None:
    if response.status_code >= 400:
        await response.aread()


def iter_events(
    http: httpx.Client,
    url: str,
    *,
    headers: Mapping[str, str],
    last_event_id: str | None = None,
    max_reconnects: int = 10,
    backoff: float = 0.1,
    timeout: httpx.Timeout | None = None,
) -> Iterator[Event]:
    """The events of one task's stream, resumed across drops, ending after the outcome."""
    state = _Resume(last_event_id, max_reconnects, backoff)
    while True:
        try:
            with connect_sse(http, "GET", url, headers=state.headers(headers), **_timeout(timeout)) as source:
                _read_error_body(source.response)
                state.check(source.response)
                state.connected()
                for sse in source.iter_sse():
                    event = state.accept(sse)
                    if event is not None:
                        yield event
                        if isinstance(event, Outcome):
                            return
            why = "the stream ended before the outcome"
        except _Retry as e:
            why = str(e)
        except httpx.TransportError as e:
            why = f"{type(e).__name__}: {e}"
        time.sleep(state.delay(why))


async def aiter_events(
    http: httpx.AsyncClient,
    url: str,
    *,
    headers: Mapping[str, str],
    last_event_id: str | None = None,
    max_reconnects: int = 10,
    backoff: float = 0.1,
    timeout: httpx.Timeout | None = None,
) -> AsyncIterator[Event]:
    """`iter_events` for an ``httpx.AsyncClient``."""
    state = _Resume(last_event_id, max_reconnects, backoff)
    while True:
        try:
            async with aconnect_sse(http, "GET", url, headers=state.headers(headers), **_timeout(timeout)) as source:
                await _aread_error_body(source.response)
                state.check(source.response)
                state.connected()
                async for sse in source.aiter_sse():
                    event = state.accept(sse)
                    if event is not None:
                        yield event
                        if isinstance(event, Outcome):
                            return
            why = "the stream ended before the outcome"
        except _Retry as e:
            why = str(e)
        except httpx.TransportError as e:
            why = f"{type(e).__name__}: {e}"
        await anyio.sleep(state.delay(why))




# The outcome stream (`GET /v1/stream/outcomes`): one `outcome` event per task of the tenant
# (optionally of one agent type) that reaches its outcome, and `lagged` when this connection
# fell behind. Its events carry no log position (the SSE `id` is the task's id), so the server
# cannot continue it after a drop: these iterators do not reconnect. A dropped connection
# raises httpx's `TransportError`; a stream the server ends (it shuts down) just ends.


def _outcome_event_of(sse: ServerSentEvent) -> OutcomeEvent | None:
    """The typed event of one SSE message of the outcome stream; None for other types (a
    newer server may add some)."""
    if sse.event == "outcome":
        try:
            task = json.loads(sse.data)
        except ValueError as e:
            raise StreamError(0, "bad_event", f"the data of an `outcome` event is not JSON: {e}") from None
        if not isinstance(task, dict):
            raise StreamError(0, "bad_event", "the data of an `outcome` event is not an object")
        return Outcome(id=None, task=task)
    if sse.event == "lagged":
        try:
            return Lagged(missed=int(json.loads(sse.data)["missed"]))
        except (ValueError, TypeError, KeyError) as e:
            raise StreamError(0, "bad_event", f"the data of a `lagged` event is not {{\"missed\": n}}: {e!r}") from None
    return None


class OutcomeStream:
    """The outcomes of a tenant's tasks as they happen (``GET /v1/stream/outcomes``): an
    iterator of `Outcome` and `Lagged`, from `Client.outcomes`.

    It connects on first use, or on ``with`` — use ``with`` to be sure the stream is open
    before submitting the tasks whose outcomes you want: outcomes that happened before it
    connected are not sent. It is not resumed after a drop (see the module's note).
    """

    def __init__(self, http: httpx.Client, url: str, *, params: Mapping[str, str], timeout: httpx.Timeout | None = None) -> None:
        self._http, self._url, self._params, self._timeout = http, url, dict(params), timeout
        self._stack: contextlib.ExitStack | None = None
        self._messages: Iterator[ServerSentEvent] | None = None
        self._closed = False

    def open(self) -> OutcomeStream:
        """Connects (once): returns when the server answered, i.e. is sending outcomes."""
        if self._closed:
            raise RuntimeError("this outcome stream was closed: open a new one")
        if self._stack is None:
            stack = contextlib.ExitStack()
            try:
                source = stack.enter_context(connect_sse(self._http, "GET", self._url, params=self._params, headers={}, **_timeout(self._timeout)))
                _read_error_body(source.response)
                _check_event_stream(source.response)
            except BaseException:
                stack.close()
                raise
            self._stack = stack
            self._messages = source.iter_sse()
        return self

    def close(self) -> None:
        """Hangs up; iterating then ends."""
        self._closed = True
        if self._stack is not None:
            self._stack.close()

    def __enter__(self) -> OutcomeStream:
        return self.open()

    def __exit__(self, *_: object) -> None:
        self.close()

    def __iter__(self) -> OutcomeStream:
        return self

    def __next__(self) -> OutcomeEvent:
        if self._closed:
            raise StopIteration
        if self._messages is None:
            self.open()
        assert self._messages is not None
        while True:
            try:
                sse = next(self._messages)
            except StopIteration:
                self.close()
                raise
            event = _outcome_event_of(sse)
            if event is not None:
                return event


class AsyncOutcomeStream:
    """`OutcomeStream` for ``httpx.AsyncClient``: ``async with`` / ``async for``."""

    def __init__(self, http: httpx.AsyncClient, url: str, *, params: Mapping[str, str], timeout: httpx.Timeout | None = None) -> None:
        self._http, self._url, self._params, self._timeout = http, url, dict(params), timeout
        self._stack: contextlib.AsyncExitStack | None = None
        self._messages: AsyncIterator[ServerSentEvent] | None = None
        self._closed = False

    async def open(self) -> AsyncOutcomeStream:
        """Connects (once): returns when the server answered, i.e. is sending outcomes."""
        if self._closed:
            raise RuntimeError("this outcome stream was closed: open a new one")
        if self._stack is None:
            stack = contextlib.AsyncExitStack()
            try:
                source = await stack.enter_async_context(aconnect_sse(self._http, "GET", self._url, params=self._params, headers={}, **_timeout(self._timeout)))
                await _aread_error_body(source.response)
                _check_event_stream(source.response)
            except BaseException:
                await stack.aclose()
                raise
            self._stack = stack
            self._messages = source.aiter_sse()
        return self

    async def aclose(self) -> None:
        """Hangs up; iterating then ends."""
        self._closed = True
        if self._stack is not None:
            await self._stack.aclose()

    async def __aenter__(self) -> AsyncOutcomeStream:
        return await self.open()

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncOutcomeStream:
        return self

    async def __anext__(self) -> OutcomeEvent:
        if self._closed:
            raise StopAsyncIteration
        if self._messages is None:
            await self.open()
        assert self._messages is not None
        while True:
            try:
                sse = await self._messages.__anext__()
            except StopAsyncIteration:
                await self.aclose()
                raise
            event = _outcome_event_of(sse)
            if event is not None:
                return event
