"""The wire format of agent protocol v1 (docs/agent-protocol.md): the attempt's input
encodings and the NDJSON frames an agent answers with, ``suspend`` (how an attempt that
waits for a signal ends) included.

Kept apart from the ASGI app so the encoding rules (which encoding a return value gets,
when a line is too long) live in one place and are tested on their own.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Union

from .errors import AgentError, CheckpointTooLarge, ChunkTooLarge, DelegationFailed, DelegationUnavailable

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_LINE_BYTES",
    "MAX_CHECKPOINT_LINE_BYTES",
    "MIN_SIGNAL_TIMEOUT_MS",
    "MAX_SIGNAL_TIMEOUT_MS",
    "NDJSON",
    "TEXT_PLAIN",
    "Result",
    "Signal",
    "decode_input",
    "encode_line",
    "progress_frame",
    "chunk_frame",
    "checkpoint_frame",
    "suspend_frame",
    "check_signal_name",
    "timeout_ms_of",
    "result_frame",
    "error_frame",
]

#: The protocol version this SDK speaks (the attempt's ``protocol`` field).
PROTOCOL_VERSION = 1

#: Longest ``progress`` or ``chunk`` line agentlog accepts, in bytes, newline excluded.
MAX_LINE_BYTES = 64 * 1024

#: Longest ``checkpoint`` line agentlog accepts, in bytes, newline excluded.
MAX_CHECKPOINT_LINE_BYTES = 256 * 1024

#: The shortest and the longest wait of a ``suspend`` frame, in milliseconds (1 ms, 6 days:
#: agentlog's ``timers`` topic keeps records 7 days).
MIN_SIGNAL_TIMEOUT_MS = 1
MAX_SIGNAL_TIMEOUT_MS = 6 * 24 * 3600 * 1000

#: A signal's name (also an error's kind).
SIGNAL_NAME = re.compile(r"^[a-z0-9_.-]{1,64}$")

NDJSON = "application/x-ndjson"
TEXT_PLAIN = "text/plain; charset=utf-8"

#: The longest message an error frame carries (a traceback-sized message is cut, not refused).
MAX_ERROR_MESSAGE_CHARS = 8 * 1024


@dataclass(frozen=True)
class Result:
    """A handler's return value with an explicit content type.

    ``Result(b"...", content_type="image/png")`` answers bytes as ``image/png`` instead of
    ``application/octet-stream``; ``Result("<p>hi</p>", content_type="text/html")`` text as
    HTML instead of ``text/plain; charset=utf-8``.
    """

    output: Any
    content_type: str | None = None


@dataclass(frozen=True)
class Signal:
    """The signal that resumed a task which had suspended (the attempt's ``signal``).

    ``name`` is the signal's name (what the previous attempt waited for), ``id`` the
    ``signal_id`` its sender gave (``None`` when it gave none, and on a timeout), ``payload``
    the JSON its sender sent (``None`` when none). ``timed_out`` is true when no signal came
    in time and the agent type's ``on_signal_timeout = "resume"`` ran this attempt anyway:
    then ``id`` and ``payload`` are ``None``.
    """

    name: str
    id: str | None = None
    payload: Any = None
    timed_out: bool = False

    @classmethod
    def of(cls, value: Any) -> Signal | None:
        """The attempt's ``signal`` field: ``None`` for null (or absent), else a `Signal`;
        ``ValueError`` naming what is wrong with a malformed one."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValueError("`signal` must be an object or null")
        name, id, timed_out = value.get("name"), value.get("id"), value.get("timed_out", False)
        if not isinstance(name, str) or not name:
            raise ValueError("`signal.name` must be a non-empty string")
        if id is not None and not isinstance(id, str):
            raise ValueError("`signal.id` must be a string or null")
        if not isinstance(timed_out, bool):
            raise ValueError("`signal.timed_out` must be a boolean")
        return cls(name=name, id=id, payload=value.get("payload"), timed_out=timed_out)


def _dumps(value: Any) -> str:
    # Compact, UTF-8 as is, and no NaN/Infinity: they are not JSON and agentlog would refuse them.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode_input(value: Any, encoding: str) -> Any:
    """The task's input as the handler sees it: ``json`` → the value itself, ``utf8`` → the
    string, ``base64`` → the decoded bytes. Raises ``ValueError`` on anything else."""
    if encoding == "json":
        return value
    if not isinstance(value, str):
        raise ValueError(f"input must be a string when input_encoding is {encoding!r}")
    if encoding == "utf8":
        return value
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"input is not standard base64: {e}") from None
    raise ValueError(f"input_encoding {encoding!r} is not json, utf8 or base64")


def encode_line(frame: dict[str, Any], *, limit: int | None = None, too_large: type[ChunkTooLarge] | type[CheckpointTooLarge] = ChunkTooLarge) -> bytes:
    """One NDJSON line; with ``limit``, ``too_large(size, limit)`` (`ChunkTooLarge` unless
    told otherwise) when the line (newline excluded, as agentlog counts it) is longer.
    ``TypeError``/``ValueError`` when the frame is not JSON (an object, NaN, Infinity)."""
    line = _dumps(frame).encode("utf-8")
    if limit is not None and len(line) > limit:
        raise too_large(len(line), limit)
    return line + b"\n"


def progress_frame(percent: float | None = None, message: str | None = None) -> dict[str, Any]:
    if percent is not None:
        if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
            raise ValueError(f"percent must be a number from 0 to 100, not {percent!r}")
    if message is not None and not isinstance(message, str):
        raise TypeError("message must be a string")
    frame: dict[str, Any] = {"type": "progress"}
    if percent is not None:
        frame["percent"] = percent
    if message is not None:
        frame["message"] = message
    return frame


def chunk_frame(value: Any) -> dict[str, Any]:
    """A string is a text chunk; anything else a JSON chunk."""
    if isinstance(value, str):
        return {"type": "chunk", "text": value}
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("a chunk is text or JSON; decode bytes first")
    if value is None:
        raise TypeError("a JSON chunk cannot be null: the protocol reads it as no chunk at all")
    return {"type": "chunk", "json": value}


def checkpoint_frame(state: Any) -> dict[str, Any]:
    """A ``checkpoint`` frame: ``state`` is any JSON value, the task's next attempt receives
    it. ``None`` is sent as JSON ``null``, which the next attempt cannot tell from no
    checkpoint at all (but for ``checkpoint_attempt``)."""
    if isinstance(state, (bytes, bytearray, memoryview)):
        raise TypeError("a checkpoint's state is JSON; decode or base64-encode bytes first")
    return {"type": "checkpoint", "state": state}


def check_signal_name(name: Any) -> str:
    """``name`` when it is a signal's name (``[a-z0-9_.-]{1,64}``), else ``ValueError``."""
    if not isinstance(name, str) or not SIGNAL_NAME.match(name):
        raise ValueError(f"signal name {name!r} must match [a-z0-9_.-]{{1,64}}")
    return name


def timeout_ms_of(timeout: Union[float, timedelta]) -> int:
    """A signal wait's timeout in whole milliseconds (rounded to the nearest): seconds as a
    number, or a `datetime.timedelta`. ``ValueError`` outside 1 ms to 6 days (NaN, infinite,
    negative included), ``TypeError`` for anything else."""
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise TypeError(f"a timeout is seconds (a number) or a datetime.timedelta, not {type(timeout).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"timeout {timeout!r} is not finite")
    ms = round(seconds * 1000)
    if not MIN_SIGNAL_TIMEOUT_MS <= ms <= MAX_SIGNAL_TIMEOUT_MS:
        raise ValueError(f"timeout {timeout!r} must be from 1 ms to 6 days ({MAX_SIGNAL_TIMEOUT_MS} ms)")
    return ms


def suspend_frame(signal: str, timeout_ms: int) -> dict[str, Any]:
    """A ``suspend`` frame: the attempt ends and the task waits up to ``timeout_ms`` for the
    signal ``signal``. Both are checked as agentlog checks them (``ValueError``)."""
    check_signal_name(signal)
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or not MIN_SIGNAL_TIMEOUT_MS <= timeout_ms <= MAX_SIGNAL_TIMEOUT_MS:
        raise ValueError(f"timeout_ms must be an integer from {MIN_SIGNAL_TIMEOUT_MS} to {MAX_SIGNAL_TIMEOUT_MS}, not {timeout_ms!r}")
    return {"type": "suspend", "signal": signal, "timeout_ms": timeout_ms}


def result_frame(value: Any) -> dict[str, Any]:
    """The ``result`` frame of a handler's return value: bytes → base64 (octet-stream unless
    a `Result` says otherwise), str → utf8 (text/plain; charset=utf-8 unless a `Result` says
    otherwise), anything else → JSON."""
    content_type = None
    if isinstance(value, Result):
        value, content_type = value.output, value.content_type
    if content_type is not None and not content_type:
        raise ValueError("content_type must not be empty")
    if isinstance(value, (bytes, bytearray, memoryview)):
        frame = {"type": "result", "output": base64.b64encode(bytes(value)).decode("ascii"), "output_encoding": "base64"}
        if content_type:
            frame["content_type"] = content_type
        return frame
    if isinstance(value, str):
        return {"type": "result", "output": value, "output_encoding": "utf8", "content_type": content_type or TEXT_PLAIN}
    frame = {"type": "result", "output": value}
    if content_type:
        frame["content_type"] = content_type
    return frame


MAX_MODEL_CHARS = 128
MAX_COUNTERS = 32
_COUNTER_NAME = re.compile(r"[a-z0-9_.-]{1,64}")
_CURRENCY = re.compile(r"[A-Z]{3}")


def _count(name: str, value: Any) -> int:
    # bool is an int in Python; a count is not a truth value.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 2**63 - 1:
        raise ValueError(f"usage.{name} must be an integer from 0 to 2**63-1, not {value!r}")
    return value


class Usage:
    """What an attempt consumed (agent protocol ``result.usage``), summed over the reports a
    handler makes with `Context.usage`. Checked as agentlog checks it, so a bad report raises
    ``ValueError`` naming the field where the handler made it, not a failed attempt later."""

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0
        self.model: str | None = None
        self.cost_micros: int | None = None
        self.currency: str | None = None
        self.counters: dict[str, int] = {}

    def add(
        self,
        input_tokens: int = 0,
        output_tokens: int = 0,
        model: str | None = None,
        cost_micros: int | None = None,
        currency: str | None = None,
        counters: Mapping[str, int] | None = None,
    ) -> None:
        input_tokens = _count("input_tokens", input_tokens)
        output_tokens = _count("output_tokens", output_tokens)
        if model is not None:
            if not isinstance(model, str) or not 1 <= len(model) <= MAX_MODEL_CHARS or any(unicodedata.category(c) == "Cc" for c in model):
                raise ValueError(f"usage.model must be 1 to {MAX_MODEL_CHARS} characters without control characters")
            if self.model is not None and self.model != model:
                raise ValueError(f"usage.model: an attempt reports one model, `{self.model}` already (report another model's calls from another task)")
        if (cost_micros is None) != (currency is None):
            raise ValueError("usage.cost_micros and usage.currency come together (an ISO 4217 code such as USD)")
        if cost_micros is not None:
            cost_micros = _count("cost_micros", cost_micros)
            if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
                raise ValueError(f"usage.currency must be an ISO 4217 code of three upper-case letters, not {currency!r}")
            if self.currency is not None and self.currency != currency:
                raise ValueError(f"usage.currency: an attempt reports one currency, {self.currency} already")
        merged = dict(self.counters)
        for name, value in (counters or {}).items():
            if not isinstance(name, str) or not _COUNTER_NAME.fullmatch(name):
                raise ValueError(f"usage.counters: a counter's name is 1 to 64 of a-z, 0-9, `_`, `.`, `-`, not {name!r}")
            merged[name] = merged.get(name, 0) + _count(f"counters.{name}", value)
        if len(merged) > MAX_COUNTERS:
            raise ValueError(f"usage.counters: at most {MAX_COUNTERS} counters")
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        if model is not None:
            self.model = model
        if cost_micros is not None:
            self.cost_micros = (self.cost_micros or 0) + cost_micros
            self.currency = currency
        self.counters = merged

    def frame_field(self) -> dict[str, Any]:
        """The ``usage`` object of the ``result`` frame."""
        out: dict[str, Any] = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        if self.model is not None:
            out["model"] = self.model
        if self.cost_micros is not None:
            out["cost_micros"] = self.cost_micros
            out["currency"] = self.currency
        if self.counters:
            out["counters"] = dict(self.counters)
        return out


def error_frame(kind: str, message: str, retryable: bool = False, retry_after_ms: int | None = None) -> dict[str, Any]:
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
    frame: dict[str, Any] = {"type": "error", "kind": kind, "message": message, "retryable": retryable}
    if retry_after_ms is not None:
        frame["retry_after_ms"] = int(retry_after_ms)
    return frame


def error_frame_of(error: BaseException) -> dict[str, Any]:
    """An `AgentError` as its own frame; an uncaught `ChunkTooLarge` as kind
    ``chunk_too_large``, an uncaught `CheckpointTooLarge` as kind ``checkpoint_too_large``, an
    uncaught `DelegationFailed` as kind ``delegation_failed`` and `DelegationUnavailable` as
    ``delegation_unavailable`` (all not retryable); any other exception as kind ``exception``,
    retryable, with the message ``ExcType: text`` (a bug or a passing failure: the agent
    type's retry policy decides whether kind ``exception`` is retried)."""
    if isinstance(error, AgentError):
        return error_frame(error.kind, error.message, error.retryable, error.retry_after_ms)
    if isinstance(error, ChunkTooLarge):  # not caught by the handler: what agentlog would say
        return error_frame("chunk_too_large", str(error), False)
    if isinstance(error, CheckpointTooLarge):
        return error_frame("checkpoint_too_large", str(error), False)
    if isinstance(error, DelegationFailed):  # the child keeps its outcome: a retry fails alike
        return error_frame("delegation_failed", str(error), False)
    if isinstance(error, DelegationUnavailable):
        return error_frame("delegation_unavailable", str(error), False)
    text = str(error)
    return error_frame("exception", f"{type(error).__name__}: {text}" if text else type(error).__name__, True)
