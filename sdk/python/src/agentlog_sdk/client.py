"""Clients of the agentlog HTTP API (``/v1``): `Client` (blocking) and `AsyncClient`.

Both build the same requests and read the same answers through the helpers at the top of
this module; they differ only in the httpx client doing the I/O. Answers are the API's JSON
(dicts) except where a small type helps: `Submitted`, `TaskPage`, `SignalResult`, and the
typed stream events. Error answers raise the `AgentlogError` subclass of their status.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from .errors import NotFound, WaitTimeout, error_from_response
from .stream import AsyncOutcomeStream, Event, OutcomeStream, aiter_events, iter_events

__all__ = ["Client", "AsyncClient", "Submitted", "TaskPage", "SignalResult", "task_spec"]

#: How long a stream may stay silent before it is taken for dropped and resumed. The server
#: sends a keep-alive comment every 15 s, so a minute of silence means a dead connection.
STREAM_READ_TIMEOUT = 60.0


@dataclass(frozen=True)
class Submitted:
    """A submit's answer. ``duplicate``: the idempotency key named an earlier task and
    nothing was written. ``position`` (``topic:partition:offset``) is where the task was
    written, for ``get(task_id, after=position)`` (read your writes). With ``wait_ms``,
    ``task`` and ``outcome`` when it finished in time."""

    task_id: str
    duplicate: bool = False
    position: str | None = None
    delayed: bool | None = None
    task: dict[str, Any] | None = None
    outcome: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Submitted:
        return cls(
            task_id=body["task_id"],
            duplicate=bool(body.get("duplicate", False)),
            position=body.get("position"),
            delayed=body.get("delayed"),
            task=body.get("task"),
            outcome=body.get("outcome"),
            raw=dict(body),
        )


@dataclass(frozen=True)
class TaskPage:
    """One page of `Client.list`, newest first; pass ``next_cursor`` for the next page."""

    tasks: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True)
class SignalResult:
    """A signal's answer. ``duplicate`` false (202, ``accepted``): the signal is on the log and
    resumes the task unless something else resumed it first (a timeout, another signal: the
    first in log order wins). ``duplicate`` true (200): the task already received a signal of
    this ``signal_id``, and nothing was written. ``signal`` is its name, ``signal_id`` the id
    sent, or the one the API gave a signal sent without (``None`` if it gave none)."""

    task_id: str
    signal: str
    signal_id: str | None
    duplicate: bool
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, response: httpx.Response, task_id: str, name: str, signal_id: str | None) -> SignalResult:
        body = _answer(response)
        body = body if isinstance(body, dict) else {}
        sent_id = body.get("signal_id", signal_id)
        return cls(
            task_id=str(body.get("task_id", task_id)),
            signal=str(body.get("signal", name)),
            signal_id=sent_id if isinstance(sent_id, str) else None,
            duplicate=body.get("status") == "duplicate",
            raw=dict(body),
        )


def signal_body(payload: Any, signal_id: str | None) -> dict[str, Any]:
    """The JSON of ``POST /v1/tasks/{id}/signals/{name}``: ``payload`` (``null`` when None),
    and ``signal_id`` when given."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError("a signal's payload is JSON; decode or base64-encode bytes first")
    if signal_id is not None and not isinstance(signal_id, str):
        raise TypeError("signal_id must be a string")
    body: dict[str, Any] = {"payload": payload}
    if signal_id is not None:
        body["signal_id"] = signal_id
    return body


def task_spec(
    agent_type: str,
    input: Any,
    *,
    task_id: str | None = None,
    lane: str | None = None,
    ordering_key: str | None = None,
    idempotency_key: str | None = None,
    delay_ms: int | None = None,
    deadline_ms: int | None = None,
    max_attempts: int | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The JSON of one task to submit (``POST /v1/tasks``, or an item of a batch). Fields
    left None are left out, so the API's defaults apply."""
    body: dict[str, Any] = {"agent_type": agent_type, "input": input}
    optional = {
        "task_id": task_id,
        "lane": lane,
        "ordering_key": ordering_key,
        "idempotency_key": idempotency_key,
        "delay_ms": delay_ms,
        "deadline_ms": deadline_ms,
        "max_attempts": max_attempts,
        "labels": dict(labels) if labels is not None else None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def _path(task_id: str, tail: str = "") -> str:
    # Task ids are the caller's (1 to 200 characters): '/', '?' or '#' must not bend the path.
    return f"/v1/tasks/{quote(task_id, safe='')}{tail}"


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _signal_path(task_id: str, name: str) -> str:
    return _path(task_id, f"/signals/{quote(name, safe='')}")


def _answer(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise error_from_response(response)
    return response.json()


class _Common:
    """What both clients share: the base URL, headers and timeouts."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Accept": "application/json", "User-Agent": "agentlog-sdk-python/0.1.0"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def _stream_timeout(self, read_timeout: float | None) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=read_timeout or STREAM_READ_TIMEOUT)

    def _submit_timeout(self, wait_ms: int | None) -> httpx.Timeout:
        return self._wait_timeout(wait_ms / 1000) if wait_ms else httpx.Timeout(self.timeout)

    def _wait_timeout(self, seconds: float) -> httpx.Timeout:
        # The server holds the request up to `seconds`: the read must outlast it.
        return httpx.Timeout(self.timeout, read=seconds + self.timeout)


class Client(_Common):
    """A blocking client of the agentlog API.

    ``api_key`` is sent as ``Authorization: Bearer <key>`` (not needed against a dev server
    without keys). ``timeout`` (seconds) bounds each request, except the waits that ask the
    server to hold them (`wait`, `submit(wait_ms=...)`) and streams, which get their own.
    ``transport`` is passed to httpx (tests, proxies, custom TLS).
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 10.0, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, timeout)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def submit(self, agent_type: str, input: Any, *, wait_ms: int | None = None, **options: Any) -> Submitted:
        """Submits one task (``POST /v1/tasks``). ``options`` are `task_spec`'s: task_id,
        lane, ordering_key, idempotency_key, delay_ms, deadline_ms, max_attempts, labels.
        ``wait_ms`` waits (at most the server's ``api.max_wait_ms``) for the outcome."""
        body = task_spec(agent_type, input, **options)
        response = self._http.post("/v1/tasks", json=body, params=_params(wait_ms=wait_ms), timeout=self._submit_timeout(wait_ms))
        return Submitted.of(_answer(response))

    def submit_batch(self, tasks: Sequence[Mapping[str, Any]]) -> list[Submitted]:
        """Submits tasks together (``POST /v1/tasks/batch``): all are checked before any is
        written. Each item is a `task_spec` (or the same keys as a dict)."""
        response = self._http.post("/v1/tasks/batch", json={"tasks": [dict(t) for t in tasks]})
        return [Submitted.of(item) for item in _answer(response)["tasks"]]

    def get(self, task_id: str, *, after: str | None = None, wait_ms: int | None = None) -> dict[str, Any]:
        """The task (``GET /v1/tasks/{id}``). With ``after`` (a submit's ``position``), once
        the API has read that far, so a task just submitted is found."""
        response = self._http.get(_path(task_id), params=_params(after=after, wait_ms=wait_ms))
        return _answer(response)  # type: ignore[no-any-return]

    def outcome(self, task_id: str) -> dict[str, Any] | None:
        """The task's outcome now, or None when it has none (yet)."""
        response = self._http.get(_path(task_id, "/outcome"))
        if response.status_code == 404:
            return None
        return _answer(response)  # type: ignore[no-any-return]

    def wait(self, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Waits up to ``timeout`` seconds for the task's outcome (``GET
        /v1/tasks/{id}/outcome?wait_ms=``, asked again when the server's longest wait is
        shorter) and returns it: ``{"task_id", "status", "output", "error_kind", ...}``.
        `WaitTimeout` when it did not come in time."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(0, "wait_timeout", f"task `{task_id}` has no outcome after {timeout} s")
            response = self._http.get(_path(task_id, "/outcome"), params={"wait_ms": max(1, int(remaining * 1000))}, timeout=self._wait_timeout(remaining))
            try:
                return _answer(response)  # type: ignore[no-any-return]
            except NotFound as e:
                if e.code != "no_outcome":
                    raise

    def list(
        self,
        *,
        status: str | None = None,
        agent_type: str | None = None,
        created_after_ms: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> TaskPage:
        """One page of tasks, newest first (``GET /v1/tasks``)."""
        params = _params(status=status, agent_type=agent_type, created_after_ms=created_after_ms, limit=limit, cursor=cursor)
        body = _answer(self._http.get("/v1/tasks", params=params))
        return TaskPage(tasks=body["tasks"], next_cursor=body.get("next_cursor"))

    def stats(self) -> dict[str, Any]:
        """Your tenant's stats (``GET /v1/stats``): per agent type outcomes and latencies, and
        ``usage``: the tokens and cost your completed tasks reported (``tasks``,
        ``input_tokens``, ``output_tokens``, ``cost_micros`` per currency, and ``by_model``
        per agent type and model)."""
        return _answer(self._http.get("/v1/stats"))  # type: ignore[no-any-return]

    def cancel(self, task_id: str, reason: str | None = None) -> dict[str, Any]:
        """Asks for the task to be cancelled (``POST /v1/tasks/{id}/cancel``); `Conflict`
        when it already ended."""
        response = self._http.post(_path(task_id, "/cancel"), json=_params(reason=reason))
        return _answer(response)  # type: ignore[no-any-return]

    def signal(self, task_id: str, name: str, payload: Any = None, *, signal_id: str | None = None) -> SignalResult:
        """Sends the signal ``name`` to a task waiting for it (``POST
        /v1/tasks/{id}/signals/{name}``, body ``{"signal_id", "payload"}``): the task resumes
        as a new attempt whose ``ctx.signal`` carries ``payload`` (any JSON) and ``signal_id``.

        With a ``signal_id`` a retried call is safe: the task takes one signal of each id, the
        next calls answer ``duplicate``. Without one each call is a new signal.

        Errors: `UnexpectedSignal` (409: the task waits for another signal, ``.waiting_for``),
        `NotWaiting` (409: it waits for none, ``.task_status``), `NotFound` (404),
        `BadRequest` (400: a name outside ``[a-z0-9_.-]{1,64}``), `PayloadTooLarge` (413: a
        payload over 256 KiB)."""
        response = self._http.post(_signal_path(task_id, name), json=signal_body(payload, signal_id))
        return SignalResult.of(response, task_id, name, signal_id)

    def stream(self, task_id: str, last_event_id: str | None = None, *, max_reconnects: int = 10, read_timeout: float | None = None) -> Iterator[Event]:
        """The task's `Progress` and `Chunk` events as they happen, then its `Outcome`,
        after which the iterator ends. A dropped connection is resumed after the last event
        received (``Last-Event-ID``): nothing missed, nothing repeated. Pass a former
        event's ``id`` as ``last_event_id`` to continue a stream read earlier."""
        return iter_events(
            self._http,
            _path(task_id, "/stream"),
            headers={},
            last_event_id=last_event_id,
            max_reconnects=max_reconnects,
            timeout=self._stream_timeout(read_timeout),
        )

    def outcomes(self, agent_type: str | None = None, *, read_timeout: float | None = None) -> OutcomeStream:
        """The outcomes of this tenant's tasks (of ``agent_type`` only, when given) as they
        happen (``GET /v1/stream/outcomes``): an iterator of `Outcome` (the task's JSON) and
        `Lagged` (this connection fell behind and ``missed`` outcomes were dropped). Use
        ``with client.outcomes(...) as events:`` to connect before submitting: outcomes from
        before the connection are not sent. Not resumed after a drop: the stream has no
        positions to resume from, so a drop raises ``httpx.TransportError``; reconcile with
        `list` or `wait` after reconnecting."""
        return OutcomeStream(self._http, "/v1/stream/outcomes", params=_params(agent_type=agent_type), timeout=self._stream_timeout(read_timeout))


class AsyncClient(_Common):
    """`Client` for asyncio (and trio): the same methods, awaited; `stream` is an async
    iterator."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, timeout)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(self, agent_type: str, input: Any, *, wait_ms: int | None = None, **options: Any) -> Submitted:
        """See `Client.submit`."""
        body = task_spec(agent_type, input, **options)
        response = await self._http.post("/v1/tasks", json=body, params=_params(wait_ms=wait_ms), timeout=self._submit_timeout(wait_ms))
        return Submitted.of(_answer(response))

    async def submit_batch(self, tasks: Sequence[Mapping[str, Any]]) -> list[Submitted]:
        """See `Client.submit_batch`."""
        response = await self._http.post("/v1/tasks/batch", json={"tasks": [dict(t) for t in tasks]})
        return [Submitted.of(item) for item in _answer(response)["tasks"]]

    async def get(self, task_id: str, *, after: str | None = None, wait_ms: int | None = None) -> dict[str, Any]:
        """See `Client.get`."""
        response = await self._http.get(_path(task_id), params=_params(after=after, wait_ms=wait_ms))
        return _answer(response)  # type: ignore[no-any-return]

    async def stats(self) -> dict[str, Any]:
        """See `Client.stats`."""
        return _answer(await self._http.get("/v1/stats"))  # type: ignore[no-any-return]

    async def outcome(self, task_id: str) -> dict[str, Any] | None:
        """See `Client.outcome`."""
        response = await self._http.get(_path(task_id, "/outcome"))
        if response.status_code == 404:
            return None
        return _answer(response)  # type: ignore[no-any-return]

    async def wait(self, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """See `Client.wait`."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(0, "wait_timeout", f"task `{task_id}` has no outcome after {timeout} s")
            response = await self._http.get(_path(task_id, "/outcome"), params={"wait_ms": max(1, int(remaining * 1000))}, timeout=self._wait_timeout(remaining))
            try:
                return _answer(response)  # type: ignore[no-any-return]
            except NotFound as e:
                if e.code != "no_outcome":
                    raise

    async def list(
        self,
        *,
        status: str | None = None,
        agent_type: str | None = None,
        created_after_ms: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> TaskPage:
        """See `Client.list`."""
        params = _params(status=status, agent_type=agent_type, created_after_ms=created_after_ms, limit=limit, cursor=cursor)
        body = _answer(await self._http.get("/v1/tasks", params=params))
        return TaskPage(tasks=body["tasks"], next_cursor=body.get("next_cursor"))

    async def cancel(self, task_id: str, reason: str | None = None) -> dict[str, Any]:
        """See `Client.cancel`."""
        response = await self._http.post(_path(task_id, "/cancel"), json=_params(reason=reason))
        return _answer(response)  # type: ignore[no-any-return]

    async def signal(self, task_id: str, name: str, payload: Any = None, *, signal_id: str | None = None) -> SignalResult:
        """See `Client.signal`."""
        response = await self._http.post(_signal_path(task_id, name), json=signal_body(payload, signal_id))
        return SignalResult.of(response, task_id, name, signal_id)

    def stream(self, task_id: str, last_event_id: str | None = None, *, max_reconnects: int = 10, read_timeout: float | None = None) -> AsyncIterator[Event]:
        """See `Client.stream`: ``async for event in client.stream(task_id): ...``."""
        return aiter_events(
            self._http,
            _path(task_id, "/stream"),
            headers={},
            last_event_id=last_event_id,
            max_reconnects=max_reconnects,
            timeout=self._stream_timeout(read_timeout),
        )

    def outcomes(self, agent_type: str | None = None, *, read_timeout: float | None = None) -> AsyncOutcomeStream:
        """See `Client.outcomes`: ``async with client.outcomes("echo") as events: async for
        event in events: ...``."""
        return AsyncOutcomeStream(self._http, "/v1/stream/outcomes", params=_params(agent_type=agent_type), timeout=self._stream_timeout(read_timeout))
