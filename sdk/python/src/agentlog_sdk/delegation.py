"""Delegation (agent protocol v1, §6): an attempt submits sub-tasks through its
``callback_url`` and awaits their outcomes.

An agent type declared with ``delegates = true`` gets, in each attempt, a URL of the worker
running it, holding a token of that attempt and valid while the attempt runs:

* ``POST <callback_url>/children`` ``{"n", "agent_type", "input", "content_type", "labels"}``
  submits child number ``n`` of the attempt (``202 {"task_id": "<parent id>.<n>"}``). The
  same ``n`` submitted again (a retry, a re-run after a crash) finds the same child.
* ``GET <callback_url>/children/<n>/outcome?wait_ms=`` answers the child's outcome (200) once
  it has one, or ``202 {"status": "pending"}`` when ``wait_ms`` passed first: ask again.

`Callback` makes both calls (`Context.submit_child`, `Context.child_outcome` and
`Context.delegate` use it); `ChildOutcome` is the typed outcome.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from .errors import DelegationFailed, WaitTimeout, error_from_response

__all__ = ["ChildOutcome", "Callback", "CHILD_WAIT_MS"]

#: How long one ``GET .../outcome`` asks the worker to hold the request (its longest is 60 s).
CHILD_WAIT_MS = 30_000

#: Pauses before the calls repeated after a connection error (the worker is local and both
#: calls are idempotent: the same ``n`` is the same child).
RETRY_PAUSES_S = (0.2, 0.5, 1.0)

#: Bounds each call besides the wait the worker is asked to hold it for.
CALL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ChildOutcome:
    """A sub-task's outcome. ``status`` is ``completed`` (``output`` holds its output: the
    JSON value when its content type is JSON, else its text; ``content_type`` says which) or
    ``failed``, ``dead_lettered``, ``cancelled``, ``expired`` (``error_kind`` and ``message``
    say why). ``n`` is its number in the attempt, ``task_id`` its id (``<parent id>.<n>``)."""

    task_id: str
    status: str
    output: Any = None
    content_type: str | None = None
    error_kind: str | None = None
    message: str | None = None
    n: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def result(self) -> Any:
        """``output`` when the child completed, else `DelegationFailed` with its failure."""
        if not self.completed:
            raise DelegationFailed(self.task_id, self.status, self.error_kind, self.message, n=self.n)
        return self.output

    @classmethod
    def of(cls, body: Mapping[str, Any], n: int | None = None) -> ChildOutcome:
        def text(key: str) -> str | None:
            value = body.get(key)
            return value if isinstance(value, str) else None

        return cls(
            task_id=str(body.get("task_id", "")),
            status=str(body.get("status", "")),
            output=body.get("output"),
            content_type=text("content_type"),
            error_kind=text("error_kind"),
            message=text("message"),
            n=n,
            raw=dict(body),
        )


def child_body(n: int, agent_type: str, input: Any, content_type: str, labels: Mapping[str, str] | None) -> dict[str, Any]:
    """The JSON of ``POST <callback_url>/children``, checked before anything is sent:
    ``ValueError``/``TypeError`` naming what is wrong."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"a sub-task's number n must be an integer of at least 0, not {n!r}")
    if not isinstance(agent_type, str) or not agent_type:
        raise ValueError("agent_type must be a non-empty string")
    if not isinstance(content_type, str) or not content_type:
        raise ValueError("content_type must be a non-empty string")
    if isinstance(input, (bytes, bytearray, memoryview)):
        raise TypeError("a sub-task's input is JSON or text: decode bytes (or base64-encode them) first")
    body: dict[str, Any] = {"n": n, "agent_type": agent_type, "input": input, "content_type": content_type}
    if labels is not None:
        if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise TypeError("labels must map strings to strings")
        body["labels"] = dict(labels)
    return body


class Callback:
    """The calls of one attempt to its ``callback_url``, through ``http`` (the `AgentApp`'s
    client). Error answers raise the SDK's typed errors (`BadRequest` 400, `NotFound` 404:
    the attempt is no longer running, `PayloadTooLarge` 413, ...); connection errors are
    retried a few times, then raised (``httpx.TransportError``)."""

    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self.url = url.rstrip("/")
        self._http = http

    async def submit(self, n: int, agent_type: str, input: Any, *, content_type: str = "application/json", labels: Mapping[str, str] | None = None) -> str:
        """Submits child ``n`` (or finds it, when submitted before) and returns its task id."""
        body = child_body(n, agent_type, input, content_type, labels)
        response = await self._call("POST", f"{self.url}/children", json=body)
        answer = response.json()
        if not isinstance(answer, dict) or not isinstance(answer.get("task_id"), str):
            raise ValueError(f"the callback answered {response.status_code} without a task_id: {response.text[:200]}")
        return answer["task_id"]

    async def outcome(self, n: int, *, timeout: float | None = None, wait_ms: int = CHILD_WAIT_MS) -> ChildOutcome:
        """Child ``n``'s outcome, asking again while the worker answers pending; with
        ``timeout`` (seconds) `WaitTimeout` when it has none by then."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ask = wait_ms
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(0, "wait_timeout", f"sub-task {n} has no outcome after {timeout} s")
                ask = max(1, min(wait_ms, int(remaining * 1000)))
            response = await self._call(
                "GET",
                f"{self.url}/children/{n}/outcome",
                params={"wait_ms": ask},
                timeout=httpx.Timeout(CALL_TIMEOUT_S, read=ask / 1000 + CALL_TIMEOUT_S),
            )
            body = response.json()
            if response.status_code == 202 or (isinstance(body, dict) and body.get("status") == "pending"):
                continue  # the wait passed first: ask again
            if not isinstance(body, dict):
                raise ValueError(f"the callback answered {response.status_code} with no outcome object: {response.text[:200]}")
            return ChildOutcome.of(body, n)

    async def _call(self, method: str, url: str, **options: Any) -> httpx.Response:
        for pause in (*RETRY_PAUSES_S, None):
            try:
                response = await self._http.request(method, url, **options)
            except httpx.TransportError:
                if pause is None:
                    raise
                await anyio.sleep(pause)
                continue
            if response.status_code >= 400:
                raise error_from_response(response)
            return response
        raise AssertionError("unreachable")
