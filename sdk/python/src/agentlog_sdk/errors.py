"""Errors of the SDK.

Two families, kept apart because they travel in opposite directions:

* `AgentlogError` and its subclasses are what the *client* raises when the agentlog API
  answers an error. The API's errors are JSON, ``{"error": {"code", "message", "field"}}``;
  the subclass is chosen by HTTP status so callers can ``except NotFound`` without looking
  at numbers, and ``code`` stays available for finer decisions (``no_task`` vs
  ``no_outcome``).
  A 409 of a signal is finer still: `NotWaiting` (the task waits for no signal) and
  `UnexpectedSignal` (it waits for another one), both `Conflict`.
* `AgentError`, `ChunkTooLarge` and `CheckpointTooLarge` are raised *by or to agent code*
  inside an `AgentApp` handler: `AgentError` becomes an ``error`` frame of the agent
  protocol, `ChunkTooLarge` tells the handler that a chunk it tried to emit would break the
  64 KiB line limit, `CheckpointTooLarge` that a checkpoint would break the 256 KiB one.
  `DelegationFailed` tells it that a sub-task it delegated ended without output, and
  `DelegationUnavailable` that its agent type may not delegate at all.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

__all__ = [
    "AgentlogError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "NotWaiting",
    "UnexpectedSignal",
    "PayloadTooLarge",
    "TooManyRequests",
    "ServerError",
    "Unavailable",
    "StreamError",
    "WaitTimeout",
    "AgentError",
    "ChunkTooLarge",
    "CheckpointTooLarge",
    "DelegationFailed",
    "DelegationUnavailable",
    "error_from_response",
]


class AgentlogError(Exception):
    """An error answer of the agentlog API (or a broken exchange with it).

    ``status`` is the HTTP status (0 when no answer arrived), ``code`` the API's machine
    code (``invalid_field``, ``no_task``, ...), ``message`` its words and ``field`` the
    request field at fault, when the API names one.
    """

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None, body: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.body = body


class BadRequest(AgentlogError):
    """400: a field of the request is wrong (``field`` names it)."""


class Unauthorized(AgentlogError):
    """401: no API key, or an unknown one."""


class Forbidden(AgentlogError):
    """403: the key's tenant may not do this."""


class NotFound(AgentlogError):
    """404: no such task for this tenant, or no outcome yet (``code`` says which)."""


class Conflict(AgentlogError):
    """409: e.g. cancelling a task that already ended (``task_finished``), or a signal the
    task does not wait for (`NotWaiting`, `UnexpectedSignal`)."""


class NotWaiting(Conflict):
    """409 ``not_waiting``: a signal for a task that is not waiting for one (it is still
    running, or already ended). ``task_status`` is the task's status (``running``,
    ``completed``, ...) as the answer's ``error.detail.status`` gives it (else as its message
    names it; ``None`` when neither does); ``message`` keeps the API's own words."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None, body: Any = None, task_status: str | None = None) -> None:
        super().__init__(status, code, message, field=field, body=body)
        self.task_status = task_status


class UnexpectedSignal(Conflict):
    """409 ``unexpected_signal``: the task waits for another signal. ``waiting_for`` is the
    name of the one it waits for, from the answer's ``error.detail.waiting_for`` (else as its
    message names it; ``None`` when neither does); ``message`` keeps the API's own words."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None, body: Any = None, waiting_for: str | None = None) -> None:
        super().__init__(status, code, message, field=field, body=body)
        self.waiting_for = waiting_for


class PayloadTooLarge(AgentlogError):
    """413: the input is too large for the log."""


class TooManyRequests(AgentlogError):
    """429: rate, quota or open-stream limit; wait ``retry_after`` seconds (when given)."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None, body: Any = None, retry_after: float | None = None) -> None:
        super().__init__(status, code, message, field=field, body=body)
        self.retry_after = retry_after


class ServerError(AgentlogError):
    """5xx other than 503."""


class Unavailable(ServerError):
    """503: the log is unavailable, the projection is behind, or too many keys are claimed:
    passing conditions, to retry."""


class WaitTimeout(AgentlogError, TimeoutError):
    """`Client.wait` ran out of time before the task reached its outcome."""


class StreamError(AgentlogError):
    """A task stream could not be resumed (the server kept dropping it, or spoke no SSE)."""


_BY_STATUS: dict[int, type[AgentlogError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: TooManyRequests,
    503: Unavailable,
}

#: The statuses of a task (``GET /v1/tasks/{id}``), to find the one a ``not_waiting`` names.
_TASK_STATUSES = ("pending", "queued", "scheduled", "running", "retrying", "waiting", "completed", "failed", "dead_lettered", "cancelled", "expired")
_STATUS_WORD = re.compile(r"\b(" + "|".join(_TASK_STATUSES) + r")\b")
_QUOTED = re.compile(r"`[^`]*`")
#: The awaited signal in an ``unexpected_signal``'s words: "waits for signal `approval`, not `x`".
_AWAITED = re.compile(r"\bfor\s+(?:signal\s+)?`([a-z0-9_.-]{1,64})`")


def _task_status_of(detail: dict[str, Any], message: str) -> str | None:
    """The task's status a ``not_waiting`` names: ``error.detail.status``, else the status
    word of its message outside backquotes (``waiting`` excepted: "not waiting")."""
    status = detail.get("status")
    if isinstance(status, str) and status:
        return status
    words = [w for w in _STATUS_WORD.findall(_QUOTED.sub(" ", message)) if w != "waiting"]
    return words[0] if words else None


def _awaited_signal_of(detail: dict[str, Any], message: str) -> str | None:
    """The signal an ``unexpected_signal`` names as awaited: ``error.detail.waiting_for``,
    else the backquoted name its message puts after "for"."""
    waiting_for = detail.get("waiting_for")
    if isinstance(waiting_for, str) and waiting_for:
        return waiting_for
    match = _AWAITED.search(message)
    return match.group(1) if match else None


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds; agentlog sends whole seconds (HTTP dates are not parsed)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> AgentlogError:
    """The typed error of an API answer with status >= 400 (its body must have been read).
    ``error.detail``, an object some errors carry (a 409's current state), is read into the
    fields of `NotWaiting` and `UnexpectedSignal`."""
    code, message, field, body = f"http_{response.status_code}", response.reason_phrase or "", None, None
    error: Any = None
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        if text:
            message = text[:1000]
    else:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = str(error.get("code") or code)
            message = str(error.get("message") or message)
            field = error.get("field") if isinstance(error.get("field"), str) else None
    status = response.status_code
    detail = error.get("detail") if isinstance(error, dict) else None
    detail = detail if isinstance(detail, dict) else {}
    if status == 409 and code == "not_waiting":
        return NotWaiting(status, code, message, field=field, body=body, task_status=_task_status_of(detail, message))
    if status == 409 and code == "unexpected_signal":
        return UnexpectedSignal(status, code, message, field=field, body=body, waiting_for=_awaited_signal_of(detail, message))
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else AgentlogError)
    if cls is TooManyRequests:
        return TooManyRequests(status, code, message, field=field, body=body, retry_after=_retry_after(response.headers.get("retry-after")))
    return cls(status, code, message, field=field, body=body)


_KIND = re.compile(r"^[a-z0-9_.-]{1,64}$")


class AgentError(Exception):
    """Raise in an agent handler to fail the attempt with a typed error.

    ``kind`` is what the agent type's retry policy matches (``retry.retry_on``; by default
    ``timeout`` and ``transient`` are retried), ``retryable`` the agent's own judgement
    reported with the failure, and ``retry_after_ms`` the least time agentlog waits before
    the next attempt (e.g. a rate limit of the model's API).
    """

    def __init__(self, kind: str, message: str, retryable: bool = False, retry_after_ms: int | None = None) -> None:
        if not _KIND.match(kind):
            raise ValueError(f"error kind {kind!r} must match [a-z0-9_.-]{{1,64}}")
        if retry_after_ms is not None and retry_after_ms < 0:
            raise ValueError("retry_after_ms must not be negative")
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms


class ChunkTooLarge(Exception):
    """A progress or chunk frame would be longer than the protocol's 64 KiB line limit.

    Raised by `Context.emit` / `Context.progress` *before* anything is sent, so the handler
    may split the chunk and go on; agentlog would otherwise fail the attempt with kind
    ``chunk_too_large``.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the frame is {size} bytes; the limit of one line is {limit}")
        self.size = size
        self.limit = limit


class CheckpointTooLarge(Exception):
    """A checkpoint frame would be longer than the protocol's 256 KiB line limit.

    Raised by `Context.checkpoint` *before* anything is sent, so the handler may save less
    state (or keep the bulk elsewhere and checkpoint a reference to it) and go on; agentlog
    would otherwise fail the attempt with kind ``checkpoint_too_large``. Not caught, it
    fails the attempt with that kind, not retryable.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the checkpoint frame is {size} bytes; the limit of one checkpoint line is {limit}")
        self.size = size
        self.limit = limit


class DelegationFailed(Exception):
    """A sub-task delegated with `Context.delegate` ended without output: ``status`` is its
    terminal status (``failed``, ``dead_lettered``, ``cancelled``, ``expired``), ``error_kind``
    and ``message`` its failure as agentlog recorded it, ``task_id`` the child's id
    (``<parent id>.<n>``) and ``n`` its number in the attempt.

    Not caught, it fails the attempt with kind ``delegation_failed``, not retryable: the child
    keeps its outcome, so a retry submitting the same ``n`` would find the same failure.
    """

    def __init__(self, task_id: str, status: str, error_kind: str | None, message: str | None, *, n: int | None = None) -> None:
        what = f"{error_kind}: {message}" if error_kind else (message or "no message")
        super().__init__(f"sub-task `{task_id}` ended {status}: {what}")
        self.task_id = task_id
        self.status = status
        self.error_kind = error_kind
        self.message = message
        self.n = n


class DelegationUnavailable(RuntimeError):
    """`Context.delegate` (or `submit_child`, `child_outcome`) in an attempt without a
    ``callback_url``: its agent type is not declared with ``delegates = true``.

    Not caught, it fails the attempt with kind ``delegation_unavailable``, not retryable:
    another attempt would have no callback either."""
