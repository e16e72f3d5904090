"""An agent server: a plain ASGI app that runs agentlog attempts (agent protocol v1).

agentlog's ``http`` runtime POSTs each attempt as JSON to the agent type's URL; this app
decodes it, calls the handler registered for the agent type, and answers a framed
(``application/x-ndjson``) stream: whatever ``progress``, ``chunk`` and ``checkpoint`` frames
the handler sends, each as it is produced, then one ``result`` or ``error`` frame. It is a bare
ASGI callable, so it runs under any ASGI server (uvicorn, hypercorn, ...) without a web
framework.

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
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union
from urllib.parse import unquote

from .errors import CheckpointTooLarge
from .frames import (
    MAX_CHECKPOINT_LINE_BYTES,
    MAX_LINE_BYTES,
    NDJSON,
    PROTOCOL_VERSION,
    checkpoint_frame,
    chunk_frame,
    decode_input,
    encode_line,
    error_frame,
    error_frame_of,
    progress_frame,
    result_frame,
)

__all__ = ["AgentApp", "Context", "Handler"]

# The ASGI types, spelled as servers and httpx's ASGITransport spell them.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

Handler = Callable[["Context"], Union[Awaitable[Any], Any]]
H = TypeVar("H", bound=Handler)

#: Largest attempt body read. agentlog's records are at most ~1 MB; the margin is for base64.
MAX_REQUEST_BYTES = 32 * 1024 * 1024


class _BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


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

    @property
    def cancelled(self) -> bool:
        return self._disconnected.is_set()

    async def progress(self, percent: float | None = None, message: str | None = None) -> None:
        """Reports how far the attempt is (``percent`` 0–100, ``message``); shown as the
        task's ``progress`` and streamed to clients. `ChunkTooLarge` past 64 KiB."""
        await self._send_line(encode_line(progress_frame(percent, message), limit=MAX_LINE_BYTES))

    async def emit(self, value: Any) -> None:
        """Streams one chunk of output: a ``str`` as a text chunk, anything else as a JSON
        chunk. Raises `ChunkTooLarge` (nothing sent) when the frame's line would exceed
        64 KiB: split it and emit the parts."""
        await self._send_line(encode_line(chunk_frame(value), limit=MAX_LINE_BYTES))

    async def checkpoint(self, state: Any) -> None:
        """Saves ``state`` (any JSON value) as the task's checkpoint: the task's next attempt
        (a retry, or a re-run after the worker running this one died) receives the latest
        one in `last_checkpoint`. ``state`` is encoded now, so changing it afterwards changes
        nothing saved. Raises `CheckpointTooLarge` (nothing sent) when the frame's line would
        exceed 256 KiB, and ``TypeError``/``ValueError`` when ``state`` is not JSON (NaN,
        Infinity, bytes, other objects).

        A checkpoint means "at least this far": a later attempt may repeat the steps after
        it, so keep them idempotent (pass on `idempotency_key`)."""
        await self._send_line(encode_line(checkpoint_frame(state), limit=MAX_CHECKPOINT_LINE_BYTES, too_large=CheckpointTooLarge))

    def progress_sync(self, percent: float | None = None, message: str | None = None) -> None:
        """`progress` for a sync handler (it runs in a worker thread)."""
        self._call_sync(self.progress(percent, message))

    def emit_sync(self, value: Any) -> None:
        """`emit` for a sync handler (it runs in a worker thread)."""
        self._call_sync(self.emit(value))

    def checkpoint_sync(self, state: Any) -> None:
        """`checkpoint` for a sync handler (it runs in a worker thread)."""
        self._call_sync(self.checkpoint(state))

    def _call_sync(self, coroutine: Awaitable[None]) -> None:
        if _running_loop() is self._loop:
            coroutine.close()  # type: ignore[attr-defined]
            raise RuntimeError("use `await ctx.emit(...)` / `await ctx.progress(...)` / `await ctx.checkpoint(...)` in an async handler")
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()  # type: ignore[arg-type]


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
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    @property
    def agent_types(self) -> list[str]:
        return sorted(self._handlers)

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
            await _lifespan(receive, send)
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
            line = _final_line(work)
            await send_line(line)
            if not disconnected.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watch.cancel()


def _final_line(work: "asyncio.Future[Any]") -> bytes:
    """The ``result`` or ``error`` line of a finished handler."""
    if work.cancelled():  # the handler raised CancelledError itself
        return encode_line(error_frame("exception", "CancelledError: the handler was cancelled", True))
    error = work.exception()
    if error is not None:
        return encode_line(error_frame_of(error))
    try:
        return encode_line(result_frame(work.result()))
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


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
