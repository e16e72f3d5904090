"""An agent server: a plain ASGI app that runs agentlog attempts (agent protocol v1).

agentlog's ``http`` runtime POSTs each attempt as JSON to the agent type's URL; this app
decodes it, calls the handler registered for the agent type, and answers a framed
(``application/x-ndjson``) stream: whatever ``progress``, ``chunk`` and ``checkpoint`` frames
the handler sends, each as it is produced, then one ``result``, ``error`` or ``suspend`` frame
(the handler waits for a signal: `Context.wait_for_signal`). It is a bare ASGI callable, so it
runs under any ASGI server (uvicorn, hypercorn, ...) without a web framework.

An attempt of an agent type declared with ``delegates = true`` carries a ``callback_url``:
`Context.delegate` submits sub-tasks through it and awaits them, with one httpx client per
app (closed at the ASGI lifespan's shutdown, or by `AgentApp.aclose`).

Dispatch: a request to ``/<agent_type>`` runs that type's handler; a request to ``/`` runs
the handler named by the body's ``agent_type``. So one app serves several agent types, each
declared in agentlog with ``url = "http://host:port/<agent_type>"`` (or all at ``/``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar, Union
from urllib.parse import unquote

import httpx

from .delegation import CALL_TIMEOUT_S, Callback, ChildOutcome
from .errors import CheckpointTooLarge, DelegationUnavailable
from .frames import (
    MAX_CHECKPOINT_LINE_BYTES,
    MAX_LINE_BYTES,
    NDJSON,
    PROTOCOL_VERSION,
    Signal,
    Usage,
    check_signal_name,
    checkpoint_frame,
    chunk_frame,
    decode_input,
    encode_line,
    error_frame,
    error_frame_of,
    progress_frame,
    result_frame,
    suspend_frame,
    timeout_ms_of,
)

__all__ = ["AgentApp", "Context", "Handler"]

# The ASGI types, spelled as servers and httpx's ASGITransport spell them.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

Handler = Callable[["Context"], Union[Awaitable[Any], Any]]
H = TypeVar("H", bound=Handler)
T = TypeVar("T")

#: Largest attempt body read. agentlog's records are at most ~1 MB; the margin is for base64.
MAX_REQUEST_BYTES = 32 * 1024 * 1024


class _BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Suspend(BaseException):
    """Raised by `Context.wait_for_signal` to end the attempt with a ``suspend`` frame.

    A `BaseException` (as ``asyncio.CancelledError`` is), so a handler's ``except Exception``
    lets it through to the `AgentApp`, which answers the frame. The context keeps it too: a
    handler that catches it anyway still ends with the ``suspend`` frame."""

    def __init__(self, signal: str, timeout_ms: int) -> None:
        super().__init__(f"suspended: waiting for signal `{signal}` up to {timeout_ms} ms")
        self.signal = signal
        self.timeout_ms = timeout_ms


@dataclass
class Context:
    """One attempt of a task, as the handler sees it.

    ``input`` is decoded per ``input_encoding`` (JSON value, ``str`` or ``bytes``);
    ``content_type`` is the input's. ``cancelled`` turns true once agentlog hung up (the
    task was cancelled or the attempt timed out): an async handler is also cancelled then,
    a sync one should look at the flag between steps.

    ``last_checkpoint`` is the task's latest checkpoint as this attempt received it (the
    decoded JSON ``state`` an earlier attempt saved with `checkpoint`), ``None`` when there is
    none; ``last_checkpoint_attempt`` the attempt that saved it (``None`` likewise). Both stay
    as received: saving a checkpoint during this attempt does not change them.

    ``signal`` is the `Signal` that resumed the task after an earlier attempt suspended
    (`wait_for_signal`), ``None`` otherwise. ``callback_url`` is where this attempt submits
    sub-tasks (`delegate`), ``None`` unless its agent type is declared ``delegates = true``.
    """

    task_id: str
    agent_type: str
    attempt: int
    idempotency_key: str
    input: Any
    content_type: str
    labels: dict[str, str]
    input_encoding: str
    _send_line: Callable[[bytes], Awaitable[None]] = field(repr=False)
    _loop: asyncio.AbstractEventLoop = field(repr=False)
    _disconnected: threading.Event = field(default_factory=threading.Event, repr=False)
    last_checkpoint: Any = None
    last_checkpoint_attempt: int | None = None
    signal: Signal | None = None
    callback_url: str | None = None
    _http: Callable[[], httpx.AsyncClient] | None = field(default=None, repr=False)
    _signal_taken: bool = field(default=False, repr=False)
    _suspension: _Suspend | None = field(default=None, repr=False)
    _next_child: int = field(default=0, repr=False)
    _child_numbers: dict[str, int] = field(default_factory=dict, repr=False)
    _usage: Usage | None = field(default=None, repr=False)

    @property
    def cancelled(self) -> bool:
        return self._disconnected.is_set()

    async def progress(self, percent: float | None = None, message: str | None = None) -> None:
        """Reports how far the attempt is (``percent`` 0–100, ``message``); shown as the
        task's ``progress`` and streamed to clients. `ChunkTooLarge` past 64 KiB."""
        await self._send(encode_line(progress_frame(percent, message), limit=MAX_LINE_BYTES))

    async def emit(self, value: Any) -> None:
        """Streams one chunk of output: a ``str`` as a text chunk, anything else as a JSON
        chunk. Raises `ChunkTooLarge` (nothing sent) when the frame's line would exceed
        64 KiB: split it and emit the parts."""
        await self._send(encode_line(chunk_frame(value), limit=MAX_LINE_BYTES))

    async def checkpoint(self, state: Any) -> None:
        """Saves ``state`` (any JSON value) as the task's checkpoint: the task's next attempt
        (a retry, or a re-run after the worker running this one died) receives the latest
        one in `last_checkpoint`. ``state`` is encoded now, so changing it afterwards changes
        nothing saved. Raises `CheckpointTooLarge` (nothing sent) when the frame's line would
        exceed 256 KiB, and ``TypeError``/``ValueError`` when ``state`` is not JSON (NaN,
        Infinity, bytes, other objects).

        A checkpoint means "at least this far": a later attempt may repeat the steps after
        it, so keep them idempotent (pass on `idempotency_key`)."""
        await self._send(encode_line(checkpoint_frame(state), limit=MAX_CHECKPOINT_LINE_BYTES, too_large=CheckpointTooLarge))

    def usage(
        self,
        input_tokens: int = 0,
        output_tokens: int = 0,
        *,
        model: str | None = None,
        cost_micros: int | None = None,
        currency: str | None = None,
        counters: Mapping[str, int] | None = None,
    ) -> None:
        """Reports what this attempt consumed, typically after each model call: tokens and
        counters add up over the calls, ``cost_micros`` (millionths of ``currency``'s unit,
        e.g. 1500 for 0.0015 USD) too. One model and one currency per attempt. Sent with the
        handler's result (the ``result`` frame's ``usage``), so a failed or suspended attempt
        reports none. Raises ``ValueError`` naming the field for a report agentlog would
        refuse (negative or non-integer counts, a model over 128 characters, a currency that
        is not three upper-case letters, a cost without a currency, more than 32 counters).
        Works in async and sync handlers alike (it sends nothing)."""
        report = self._usage or Usage()
        report.add(input_tokens, output_tokens, model, cost_micros, currency, counters)
        self._usage = report

    async def _send(self, line: bytes) -> None:
        # Once the attempt suspended, its last frame is the `suspend`: nothing goes after it.
        if self._suspension is None:
            await self._send_line(line)

    async def wait_for_signal(self, name: str, timeout: float | timedelta) -> Signal:
        """Waits for the signal ``name`` (a client's ``signal(task_id, name, payload)``) up to
        ``timeout`` (seconds, or a `datetime.timedelta`; 1 ms to 6 days).

        When this attempt was resumed by that signal (`signal` has this ``name``), returns it
        at once; also when it is the timeout marker (``timed_out`` true: no signal came in
        time and the agent type's ``on_signal_timeout = "resume"`` ran this attempt anyway),
        so check ``.timed_out``. Otherwise it ends the attempt: it raises an exception (a
        `BaseException`, not to be caught) that the `AgentApp` answers with the final frame
        ``{"type": "suspend", "signal": name, "timeout_ms": ...}``, whatever the handler does
        afterwards (a handler that catches it still suspends, and what it sends or returns then
        is dropped). What the handler sent before (progress, chunks, checkpoints) stays sent;
        nothing else is saved. The task
        then waits for the signal without holding a worker, and on ``timeout`` fails with
        kind ``signal_timeout`` (``on_signal_timeout = "fail"``, the default).

        The signal answers the *first* wait for its name in the attempt; a later wait
        suspends again. So a handler can remind someone and wait once more::

            while (decision := await ctx.wait_for_signal("approval", 3600)).timed_out:
                await send_reminder(ctx.input)       # on_signal_timeout = "resume"

        **When the signal comes, the handler runs again from the top**, as a new attempt
        whose `signal` is that signal and whose `last_checkpoint` is the latest checkpoint:
        checkpoint what was done before the wait, and use `last_checkpoint` to skip it::

            draft = (ctx.last_checkpoint or {}).get("draft")
            if draft is None:
                draft = await write_draft(ctx.input)
                await ctx.checkpoint({"draft": draft})
            decision = await ctx.wait_for_signal("approval", timedelta(days=1))
            if decision.timed_out:
                raise AgentError("no_decision", "nobody approved within a day")
            return {"draft": draft, "approved": decision.payload["approved"]}

        Only the signal that resumed this attempt is known: a handler that waits more than
        once records each decision in a checkpoint and skips the waits already passed.

        ``ValueError`` (nothing sent) for a name outside ``[a-z0-9_.-]{1,64}`` or a timeout
        outside 1 ms to 6 days (``TypeError`` for a timeout neither a number nor a
        ``timedelta``), checked on every attempt, also one resumed by the signal."""
        return self.wait_for_signal_sync(name, timeout)

    def wait_for_signal_sync(self, name: str, timeout: float | timedelta) -> Signal:
        """`wait_for_signal` for a sync handler (it sends nothing itself: the app does)."""
        check_signal_name(name)
        timeout_ms = timeout_ms_of(timeout)
        if self._suspension is not None:  # suspended already (and caught): still suspended
            raise self._suspension
        if self.signal is not None and self.signal.name == name and not self._signal_taken:
            self._signal_taken = True
            return self.signal
        self._suspension = _Suspend(name, timeout_ms)
        raise self._suspension

    async def submit_child(
        self,
        agent_type: str,
        input: Any,
        *,
        content_type: str = "application/json",
        labels: Mapping[str, str] | None = None,
        n: int | None = None,
    ) -> str:
        """Submits a sub-task of ``agent_type`` (``POST <callback_url>/children``) and returns
        its task id, ``<task_id>.<n>``. ``input`` is the child's input: any JSON value with a
        JSON ``content_type``, else a string.

        ``n`` numbers the attempt's sub-tasks: left out, the context takes the next number,
        counting each call from 0 (so a re-run of the attempt making the same calls in the same
        order gets the same numbers); given, that one (and the next left out is above it).
        Submitting an ``n`` again finds the same child: one already ended is not run again.
        `DelegationUnavailable` without a ``callback_url``; `BadRequest`, `NotFound` (the
        attempt no longer runs) or `PayloadTooLarge` when the worker refuses the call."""
        _, task_id = await self._submit(agent_type, input, content_type, labels, n)
        return task_id

    async def child_outcome(self, child: int | str, *, timeout: float | None = None) -> ChildOutcome:
        """The outcome of a sub-task, by its number ``n`` or its task id (as `submit_child`
        returned it), waiting until it has one (``GET <callback_url>/children/<n>/outcome``,
        asked again every 30 s). The attempt's own timeout bounds the wait; ``timeout``
        (seconds) gives up earlier with `WaitTimeout`."""
        callback = self._callback()
        if isinstance(child, str):
            if child not in self._child_numbers:
                raise ValueError(f"no sub-task `{child}` was submitted by this attempt; pass its number n")
            child = self._child_numbers[child]
        elif isinstance(child, bool) or not isinstance(child, int) or child < 0:
            raise ValueError(f"a sub-task is its number n (an integer of at least 0) or its task id, not {child!r}")
        return await callback.outcome(child, timeout=timeout)

    async def delegate(
        self,
        agent_type: str,
        input: Any,
        *,
        content_type: str = "application/json",
        labels: Mapping[str, str] | None = None,
        n: int | None = None,
    ) -> Any:
        """Runs a sub-task of ``agent_type`` and returns its output: `submit_child`, then
        `child_outcome`. The output is the JSON value when the child's output is JSON, else
        its text. A child that ended otherwise (failed, dead-lettered, cancelled, expired)
        raises `DelegationFailed` with its status, ``error_kind`` and ``message``; not caught,
        it fails this attempt with kind ``delegation_failed``, not retryable.

        The agent type must be declared ``delegates = true`` (else `DelegationUnavailable`).
        Children run on their own types' workers while this attempt keeps its slot; run
        several at once with ``asyncio.gather(ctx.delegate(...), ctx.delegate(...))``: their
        numbers follow the order of the calls. A re-run of the attempt (a retry, a crash)
        finds the children it submitted before instead of running them again."""
        number, _ = await self._submit(agent_type, input, content_type, labels, n)
        outcome = await self.child_outcome(number)
        return outcome.result()

    def delegate_sync(
        self,
        agent_type: str,
        input: Any,
        *,
        content_type: str = "application/json",
        labels: Mapping[str, str] | None = None,
        n: int | None = None,
    ) -> Any:
        """`delegate` for a sync handler (it runs in a worker thread)."""
        return self._call_sync(self.delegate(agent_type, input, content_type=content_type, labels=labels, n=n))

    async def _submit(self, agent_type: str, input: Any, content_type: str, labels: Mapping[str, str] | None, n: int | None) -> tuple[int, str]:
        # The number is taken before the first await: concurrent calls are numbered in order.
        callback = self._callback()
        number = self._child_number(n)
        task_id = await callback.submit(number, agent_type, input, content_type=content_type, labels=labels)
        self._child_numbers[task_id] = number
        return number, task_id

    def _callback(self) -> Callback:
        if self.callback_url is None or self._http is None:
            raise DelegationUnavailable(
                f"attempt {self.attempt} of task `{self.task_id}` has no callback_url: declare its agent type "
                f"`{self.agent_type}` with `delegates = true` in agentlog's config to submit sub-tasks"
            )
        return Callback(self.callback_url, self._http())

    def _child_number(self, n: int | None) -> int:
        """The number of the next sub-task: ``n`` when given (the count goes on above it)."""
        if n is None:
            n = self._next_child
        elif isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"a sub-task's number n must be an integer of at least 0, not {n!r}")
        self._next_child = max(self._next_child, n + 1)
        return n

    def progress_sync(self, percent: float | None = None, message: str | None = None) -> None:
        """`progress` for a sync handler (it runs in a worker thread)."""
        self._call_sync(self.progress(percent, message))

    def emit_sync(self, value: Any) -> None:
        """`emit` for a sync handler (it runs in a worker thread)."""
        self._call_sync(self.emit(value))

    def checkpoint_sync(self, state: Any) -> None:
        """`checkpoint` for a sync handler (it runs in a worker thread)."""
        self._call_sync(self.checkpoint(state))

    def _call_sync(self, coroutine: Awaitable[T]) -> T:
        if _running_loop() is self._loop:
            coroutine.close()  # type: ignore[attr-defined]
            raise RuntimeError("use `await ctx.emit(...)` / `await ctx.progress(...)` / `await ctx.checkpoint(...)` / `await ctx.delegate(...)` in an async handler")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()  # type: ignore[arg-type]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class AgentApp:
    """The ASGI app. Register handlers with `agent`, serve with any ASGI server::

        app = AgentApp()

        @app.agent("summarize")
        async def summarize(ctx):
            await ctx.progress(0, "calling the model")
            async for token in model(ctx.input["text"]):
                await ctx.emit(token)
            return {"summary": ...}

        # uvicorn module:app --port 9000

    Delegating handlers (`Context.delegate`) share one ``httpx.AsyncClient`` of the app, made
    at the first delegation and closed at the ASGI lifespan's shutdown; a server without
    lifespan events should ``await app.aclose()`` when it stops.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._http: httpx.AsyncClient | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None

    @property
    def agent_types(self) -> list[str]:
        return sorted(self._handlers)

    async def aclose(self) -> None:
        """Closes the client of the delegations' callbacks (if one was made)."""
        http, self._http, self._http_loop = self._http, None, None
        if http is not None:
            await http.aclose()

    def _callback_http(self) -> httpx.AsyncClient:
        """The client of the callbacks, made on first use. Its connections belong to the event
        loop that made it, so another loop (a test's, say) gets a client of its own."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._http_loop is not loop:
            # trust_env=False: the callback is the worker's own URL with the attempt's token in
            # it; no proxy of the environment should see it (or stand in between).
            self._http = httpx.AsyncClient(timeout=CALL_TIMEOUT_S, trust_env=False, headers={"User-Agent": "agentlog-sdk-python/0.1.0"})
            self._http_loop = loop
        return self._http

    def agent(self, agent_type: str) -> Callable[[H], H]:
        """Registers the decorated function as the handler of ``agent_type``. An ``async``
        function runs on the server's event loop; a plain one in a worker thread."""
        if not agent_type or "/" in agent_type:
            raise ValueError(f"agent type {agent_type!r} must be non-empty and contain no '/'")

        def register(handler: H) -> H:
            if agent_type in self._handlers:
                raise ValueError(f"agent type {agent_type!r} already has a handler")
            self._handlers[agent_type] = handler
            return handler

        return register

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, self.aclose)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"AgentApp serves http, not {scope['type']}")
        try:
            if scope["method"] != "POST":
                raise _BadRequest(405, "method_not_allowed", "agentlog attempts are POSTed")
            body = await _read_body(receive)
            handler, attempt = self._attempt(scope, body)
        except _BadRequest as e:
            await _json_answer(send, e.status, {"error": {"code": e.code, "message": e.message}}, allow=e.status == 405)
            return
        await self._run(handler, attempt, receive, send)

    def _attempt(self, scope: Scope, body: bytes) -> tuple[Handler, dict[str, Any]]:
        """The handler and the checked attempt of a request, or `_BadRequest`."""
        try:
            attempt = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise _BadRequest(400, "bad_request", f"the body is not JSON: {e}") from None
        if not isinstance(attempt, dict):
            raise _BadRequest(400, "bad_request", "the body must be a JSON object")
        protocol = attempt.get("protocol", PROTOCOL_VERSION)
        if protocol != PROTOCOL_VERSION or isinstance(protocol, bool):
            raise _BadRequest(400, "unsupported_protocol", f"protocol {protocol!r} is not supported; this agent speaks protocol {PROTOCOL_VERSION}")
        _check_attempt(attempt)
        path = unquote(_path_of(scope)).strip("/")
        agent_type = path or attempt["agent_type"]
        handler = self._handlers.get(agent_type)
        if handler is None:
            known = ", ".join(self.agent_types) or "none"
            raise _BadRequest(404, "unknown_agent_type", f"no handler for agent type {agent_type!r}; this app serves: {known}")
        return handler, {**attempt, "agent_type": agent_type}

    async def _run(self, handler: Handler, attempt: dict[str, Any], receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        disconnected = threading.Event()

        async def send_line(line: bytes) -> None:
            if disconnected.is_set():
                return
            try:
                await send({"type": "http.response.body", "body": line, "more_body": True})
            except OSError:  # ASGI 2.4 servers raise once the client is gone
                disconnected.set()

        try:
            value = decode_input(attempt["input"], attempt.get("input_encoding", "json"))
        except ValueError as e:
            await _json_answer(send, 400, {"error": {"code": "bad_request", "message": str(e)}})
            return
        callback_url = attempt.get("callback_url")
        ctx = Context(
            task_id=attempt["task_id"],
            agent_type=attempt["agent_type"],
            attempt=attempt.get("attempt", 1),
            idempotency_key=attempt.get("idempotency_key") or attempt["task_id"],
            input=value,
            content_type=attempt.get("content_type", "application/json"),
            labels=dict(attempt.get("labels") or {}),
            input_encoding=attempt.get("input_encoding", "json"),
            _send_line=send_line,
            _loop=loop,
            _disconnected=disconnected,
            last_checkpoint=attempt.get("checkpoint"),
            last_checkpoint_attempt=attempt.get("checkpoint_attempt"),
            signal=Signal.of(attempt.get("signal")),
            callback_url=callback_url,
            _http=self._callback_http if callback_url is not None else None,
        )
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", NDJSON.encode()), (b"cache-control", b"no-store")]})
        work = asyncio.ensure_future(_call(handler, ctx))
        watch = asyncio.ensure_future(_watch_disconnect(receive, disconnected))
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                # agentlog hung up (cancel or timeout): nobody reads the answer any more.
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                return
            line = _final_line(work, ctx._suspension, ctx._usage)
            await send_line(line)
            if not disconnected.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watch.cancel()


def _final_line(work: "asyncio.Future[Any]", suspension: _Suspend | None, usage: Usage | None = None) -> bytes:
    """The ``result``, ``error`` or ``suspend`` line of a finished handler: ``suspend`` when it
    waited for a signal, whatever it did after (caught the suspension, returned, raised)."""
    error = None if work.cancelled() else work.exception()  # retrieved: asyncio does not log it
    if suspension is not None:
        return encode_line(suspend_frame(suspension.signal, suspension.timeout_ms))
    if work.cancelled():  # the handler raised CancelledError itself
        return encode_line(error_frame("exception", "CancelledError: the handler was cancelled", True))
    if error is not None:
        return encode_line(error_frame_of(error))
    try:
        frame = result_frame(work.result())
        if usage is not None:
            frame["usage"] = usage.frame_field()
        return encode_line(frame)
    except (TypeError, ValueError) as e:
        # A deterministic bug (NaN, an object JSON cannot hold): another attempt would fail alike.
        return encode_line(error_frame("invalid_output", f"the handler's return value does not encode: {type(e).__name__}: {e}", False))


async def _call(handler: Handler, ctx: Context) -> Any:
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(getattr(handler, "__call__", None)):
        return await handler(ctx)
    result = await asyncio.get_running_loop().run_in_executor(None, functools.partial(handler, ctx))
    if inspect.isawaitable(result):
        return await result
    return result


def _check_attempt(attempt: dict[str, Any]) -> None:
    """The fields the handler relies on, with their types (a 400 names the first wrong one)."""
    def wrong(name: str, what: str) -> _BadRequest:
        return _BadRequest(400, "bad_request", f"`{name}` must be {what}")

    for name in ("task_id", "agent_type"):
        if not isinstance(attempt.get(name), str) or not attempt[name]:
            raise wrong(name, "a non-empty string")
    if "input" not in attempt:
        raise wrong("input", "present")
    if "attempt" in attempt and (not isinstance(attempt["attempt"], int) or isinstance(attempt["attempt"], bool) or attempt["attempt"] < 1):
        raise wrong("attempt", "an integer of at least 1")
    for name in ("idempotency_key", "content_type"):
        if name in attempt and not isinstance(attempt[name], str):
            raise wrong(name, "a string")
    checkpoint_attempt = attempt.get("checkpoint_attempt")
    if checkpoint_attempt is not None and (not isinstance(checkpoint_attempt, int) or isinstance(checkpoint_attempt, bool) or checkpoint_attempt < 1):
        raise wrong("checkpoint_attempt", "an integer of at least 1, or null")
    if attempt.get("input_encoding", "json") not in ("json", "utf8", "base64"):
        raise wrong("input_encoding", "json, utf8 or base64")
    labels = attempt.get("labels", {})
    if labels is not None and (not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values())):
        raise wrong("labels", "an object of strings")
    try:
        Signal.of(attempt.get("signal"))
    except ValueError as e:
        raise _BadRequest(400, "bad_request", str(e)) from None
    callback_url = attempt.get("callback_url")
    if callback_url is not None and (not isinstance(callback_url, str) or not callback_url.startswith(("http://", "https://"))):
        raise wrong("callback_url", "an http(s) URL, or null")


def _path_of(scope: Scope) -> str:
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _BadRequest(400, "bad_request", "the client left before sending the body")
        part = message.get("body", b"")
        size += len(part)
        if size > MAX_REQUEST_BYTES:
            raise _BadRequest(413, "payload_too_large", f"the body is over {MAX_REQUEST_BYTES} bytes")
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _watch_disconnect(receive: Receive, disconnected: threading.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnected.set()
            return


async def _json_answer(send: Send, status: int, body: Any, allow: bool = False) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if allow:
        headers.append((b"allow", b"POST"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def _lifespan(receive: Receive, send: Send, shutdown: Callable[[], Awaitable[None]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await shutdown()
            finally:
                await send({"type": "lifespan.shutdown.complete"})
            return
