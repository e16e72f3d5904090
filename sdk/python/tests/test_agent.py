"""The agent app: frames, encodings, errors, the chunk and checkpoint limits, checkpoints
received, dispatch and bad requests
(through httpx's ASGI transport), and flushing and disconnects (served by uvicorn)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agentlog_sdk import MAX_CHECKPOINT_LINE_BYTES, MAX_LINE_BYTES, AgentApp, AgentError, CheckpointTooLarge, ChunkTooLarge, Context, Result
from servers import Served

app = AgentApp()
seen: dict[str, Any] = {}


@app.agent("llm")
async def llm(ctx: Context) -> Any:
    await ctx.progress(0, "calling the model")
    for word in ctx.input["words"]:
        await ctx.emit(word)
    await ctx.emit({"tokens": len(ctx.input["words"])})
    await ctx.progress(100)
    return {"summary": "".join(ctx.input["words"])}


@app.agent("echo")
async def echo(ctx: Context) -> Any:
    seen["echo"] = ctx
    return ctx.input


@app.agent("text")
async def text(ctx: Context) -> Any:
    return "héllo"


@app.agent("bytes")
async def raw(ctx: Context) -> Any:
    return b"\x00\xffpng"


@app.agent("typed")
async def typed(ctx: Context) -> Any:
    kind = ctx.input["kind"]
    if kind == "html":
        return Result("<p>hi</p>", content_type="text/html")
    if kind == "png":
        return Result(b"\x89PNG", content_type="image/png")
    return Result({"a": 1}, content_type="application/vnd.x+json")


@app.agent("limited")
async def limited(ctx: Context) -> Any:
    await ctx.emit("x")
    raise AgentError("rate_limited", "the model said slow down", retryable=True, retry_after_ms=1500)


@app.agent("buggy")
async def buggy(ctx: Context) -> Any:
    empty: dict[str, int] = {}
    return empty["missing"]


@app.agent("nan")
async def nan(ctx: Context) -> Any:
    return float("nan")


@app.agent("big")
async def big(ctx: Context) -> Any:
    text = "y" * (MAX_LINE_BYTES * 2)
    try:
        await ctx.emit(text)
    except ChunkTooLarge as e:
        seen["too_large"] = e
        parts = [text[i : i + 30_000] for i in range(0, len(text), 30_000)]
        for part in parts:
            await ctx.emit(part)
    return len(text)


@app.agent("careless")
async def careless(ctx: Context) -> Any:
    await ctx.emit({"blob": "z" * MAX_LINE_BYTES})


@app.agent("sync")
def sync(ctx: Context) -> Any:
    seen["sync_thread"] = threading.current_thread().name
    ctx.progress_sync(50, "halfway")
    ctx.emit_sync("from a thread")
    return {"input": ctx.input.decode() if isinstance(ctx.input, bytes) else ctx.input}


@app.agent("bad_percent")
async def bad_percent(ctx: Context) -> Any:
    await ctx.progress(150)


@app.agent("steps")
async def steps(ctx: Context) -> Any:
    """Checkpoints between its other frames, starting after the step it received."""
    start = ctx.last_checkpoint["step"] if ctx.last_checkpoint else 0
    for step in range(start + 1, 4):
        await ctx.progress(step * 25, f"step {step}")
        await ctx.emit(f"did {step}")
        await ctx.checkpoint({"step": step, "notes": ["é", None]})
    return {"from": start}


#: The size of a checkpoint line whose state is a string of n ASCII characters.
CHECKPOINT_OVERHEAD = len(b'{"type":"checkpoint","state":""}')


@app.agent("big_checkpoint")
async def big_checkpoint(ctx: Context) -> Any:
    """Saves a checkpoint of exactly `size` bytes, or on CheckpointTooLarge a smaller one."""
    state = "s" * (ctx.input["size"] - CHECKPOINT_OVERHEAD)
    try:
        await ctx.checkpoint(state)
    except CheckpointTooLarge as e:
        seen["checkpoint_too_large"] = e
        await ctx.checkpoint({"ref": "elsewhere"})
    return "saved"


@app.agent("careless_checkpoint")
async def careless_checkpoint(ctx: Context) -> Any:
    await ctx.emit("before")
    await ctx.checkpoint({"blob": "z" * MAX_CHECKPOINT_LINE_BYTES})


@app.agent("bad_checkpoint")
async def bad_checkpoint(ctx: Context) -> Any:
    try:
        await ctx.checkpoint({"loss": float(ctx.input["loss"])})
    except (TypeError, ValueError) as e:
        seen["bad_checkpoint"] = e
        await ctx.checkpoint({"loss": None})
    try:
        await ctx.checkpoint({"when": object()})
    except TypeError as e:
        seen["bad_checkpoint_type"] = e
    return "ok"


@app.agent("sync_steps")
def sync_steps(ctx: Context) -> Any:
    ctx.emit_sync("one")
    ctx.checkpoint_sync({"step": 1})
    ctx.progress_sync(50)
    try:
        ctx.checkpoint_sync("c" * MAX_CHECKPOINT_LINE_BYTES)
    except CheckpointTooLarge:
        seen["sync_checkpoint_too_large"] = True
    return {"received": ctx.last_checkpoint, "by": ctx.last_checkpoint_attempt}


@app.agent("metered")
async def metered(ctx: Context) -> Any:
    ctx.usage(10, 2, model="m-1", cost_micros=7, currency="EUR", counters={"cached_input_tokens": 4})
    ctx.usage(5, 1, counters={"cached_input_tokens": 1, "reasoning_tokens": 3})
    refused = []
    for bad in (
        {"input_tokens": -1},
        {"output_tokens": 1.5},
        {"input_tokens": True},
        {"model": "m" * 129},
        {"model": "m-2"},
        {"cost_micros": 5},
        {"cost_micros": 5, "currency": "usd"},
        {"cost_micros": 5, "currency": "USD"},
        {"counters": {"Bad Name": 1}},
        {"counters": {f"c{i}": 1 for i in range(32)}},
    ):
        try:
            ctx.usage(**bad)
        except ValueError as e:
            refused.append(str(e).split(" ")[0])
    return {"refused": refused}


@app.agent("metered_sync")
def metered_sync(ctx: Context) -> Any:
    ctx.usage(3, 4)
    return "ok"


@app.agent("metered_failing")
async def metered_failing(ctx: Context) -> Any:
    ctx.usage(3, 4)
    raise AgentError("bad_input", "no text", retryable=False)


def attempt(agent_type: str, input: Any = None, **fields: Any) -> dict[str, Any]:
    body = {
        "protocol": 1,
        "task_id": "t-1",
        "agent_type": agent_type,
        "attempt": 2,
        "idempotency_key": "t-1",
        "content_type": "application/json",
        "input": input,
        "input_encoding": "json",
        "labels": {"team": "a"},
    }
    body.update(fields)
    return body


async def post(body: Any, path: str = "/", raw: bytes | None = None, method: str = "POST") -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent") as client:
        if raw is not None:
            return await client.request(method, path, content=raw, headers={"content-type": "application/json"})
        return await client.request(method, path, json=body)


def frames(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.text.endswith("\n")
    return [json.loads(line) for line in response.text.splitlines()]


@pytest.mark.anyio
async def test_frames_stream_progress_chunks_and_the_result() -> None:
    got = frames(await post(attempt("llm", {"words": ["The ", "answer"]})))
    assert got == [
        {"type": "progress", "percent": 0, "message": "calling the model"},
        {"type": "chunk", "text": "The "},
        {"type": "chunk", "text": "answer"},
        {"type": "chunk", "json": {"tokens": 2}},
        {"type": "progress", "percent": 100},
        {"type": "result", "output": {"summary": "The answer"}},
    ]


@pytest.mark.anyio
async def test_the_context_carries_the_attempt() -> None:
    got = frames(await post(attempt("echo", {"k": [1, 2]})))
    assert got == [{"type": "result", "output": {"k": [1, 2]}}]
    ctx = seen["echo"]
    assert (ctx.task_id, ctx.agent_type, ctx.attempt, ctx.idempotency_key) == ("t-1", "echo", 2, "t-1")
    assert (ctx.content_type, ctx.labels, ctx.cancelled) == ("application/json", {"team": "a"}, False)


@pytest.mark.anyio
async def test_inputs_are_decoded_per_their_encoding() -> None:
    frames(await post(attempt("echo", "plain text", input_encoding="utf8", content_type="text/plain")))
    assert seen["echo"].input == "plain text"
    frames(await post(attempt("echo", base64.b64encode(b"\x00\x01\xfe").decode(), input_encoding="base64", content_type="application/octet-stream")))
    assert seen["echo"].input == b"\x00\x01\xfe"


@pytest.mark.anyio
async def test_results_are_encoded_by_their_type() -> None:
    assert frames(await post(attempt("text")))[-1] == {"type": "result", "output": "héllo", "output_encoding": "utf8", "content_type": "text/plain; charset=utf-8"}
    assert frames(await post(attempt("bytes")))[-1] == {"type": "result", "output": base64.b64encode(b"\x00\xffpng").decode(), "output_encoding": "base64"}
    assert frames(await post(attempt("typed", {"kind": "html"})))[-1] == {"type": "result", "output": "<p>hi</p>", "output_encoding": "utf8", "content_type": "text/html"}
    assert frames(await post(attempt("typed", {"kind": "png"})))[-1] == {"type": "result", "output": base64.b64encode(b"\x89PNG").decode(), "output_encoding": "base64", "content_type": "image/png"}
    assert frames(await post(attempt("typed", {"kind": "json"})))[-1] == {"type": "result", "output": {"a": 1}, "content_type": "application/vnd.x+json"}


@pytest.mark.anyio
async def test_errors_end_the_answer_with_an_error_frame() -> None:
    assert frames(await post(attempt("limited"))) == [
        {"type": "chunk", "text": "x"},
        {"type": "error", "kind": "rate_limited", "message": "the model said slow down", "retryable": True, "retry_after_ms": 1500},
    ]
    assert frames(await post(attempt("buggy"))) == [{"type": "error", "kind": "exception", "message": "KeyError: 'missing'", "retryable": True}]
    last = frames(await post(attempt("nan")))[-1]
    assert (last["type"], last["kind"], last["retryable"]) == ("error", "invalid_output", False)
    last = frames(await post(attempt("bad_percent")))[-1]
    assert last["kind"] == "exception" and last["message"].startswith("ValueError: percent")


@pytest.mark.anyio
async def test_usage_adds_up_over_reports_and_travels_with_the_result() -> None:
    last = frames(await post(attempt("metered")))[-1]
    assert last["type"] == "result"
    assert last["usage"] == {
        "input_tokens": 15,
        "output_tokens": 3,
        "model": "m-1",
        "cost_micros": 7,
        "currency": "EUR",
        "counters": {"cached_input_tokens": 5, "reasoning_tokens": 3},
    }
    # Each bad report raised where it was made, naming its field, and changed nothing.
    assert last["output"]["refused"] == [
        "usage.input_tokens",
        "usage.output_tokens",
        "usage.input_tokens",
        "usage.model",
        "usage.model:",
        "usage.cost_micros",
        "usage.currency",
        "usage.currency:",
        "usage.counters:",
        "usage.counters:",
    ]
    assert frames(await post(attempt("metered_sync")))[-1]["usage"] == {"input_tokens": 3, "output_tokens": 4}
    # A failed attempt reports nothing; a handler that reports nothing sends no usage.
    assert "usage" not in frames(await post(attempt("metered_failing")))[-1]
    assert "usage" not in frames(await post(attempt("echo", {"k": 1})))[-1]


def test_agent_errors_check_their_kind() -> None:
    with pytest.raises(ValueError):
        AgentError("Not A Kind", "x")
    with pytest.raises(ValueError):
        AgentError("ok", "x", retry_after_ms=-1)


@pytest.mark.anyio
async def test_a_chunk_over_64_kib_is_refused_before_it_is_sent() -> None:
    response = await post(attempt("big"))
    got = frames(response)
    assert seen["too_large"].limit == MAX_LINE_BYTES and seen["too_large"].size > MAX_LINE_BYTES
    assert all(len(line.encode()) <= MAX_LINE_BYTES for line in response.text.splitlines())
    assert "".join(f["text"] for f in got if f["type"] == "chunk") == "y" * (MAX_LINE_BYTES * 2)
    assert got[-1] == {"type": "result", "output": MAX_LINE_BYTES * 2}
    # Not caught by the handler: the attempt fails as agentlog itself would fail it.
    [only] = frames(await post(attempt("careless")))
    assert (only["type"], only["kind"], only["retryable"]) == ("error", "chunk_too_large", False)


@pytest.mark.anyio
async def test_sync_handlers_run_in_a_thread_and_emit_too() -> None:
    got = frames(await post(attempt("sync", "aGk=", input_encoding="base64")))
    assert got == [
        {"type": "progress", "percent": 50, "message": "halfway"},
        {"type": "chunk", "text": "from a thread"},
        {"type": "result", "output": {"input": "hi"}},
    ]
    assert seen["sync_thread"] != threading.main_thread().name


@pytest.mark.anyio
async def test_the_path_names_the_agent_type_when_given() -> None:
    got = frames(await post(attempt("whatever-agentlog-calls-it", "x"), path="/echo"))
    assert got == [{"type": "result", "output": "x", "output_encoding": "utf8", "content_type": "text/plain; charset=utf-8"}]
    assert seen["echo"].agent_type == "echo"


@pytest.mark.anyio
async def test_an_unknown_agent_type_is_a_404() -> None:
    for response in (await post(attempt("nope")), await post(attempt("echo"), path="/nope")):
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["code"] == "unknown_agent_type"
        assert "echo" in response.json()["error"]["message"]


@pytest.mark.anyio
async def test_the_protocol_version_is_checked_and_may_be_absent() -> None:
    response = await post(attempt("echo", 1, protocol=2))
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_protocol"
    body = attempt("echo", 1)
    del body["protocol"]
    assert frames(await post(body)) == [{"type": "result", "output": 1}]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        json.dumps({"agent_type": "echo", "input": 1}).encode(),
        json.dumps({"task_id": "t", "agent_type": "echo"}).encode(),
        json.dumps({"task_id": "t", "agent_type": "echo", "input": 1, "attempt": "one"}).encode(),
        json.dumps({"task_id": "t", "agent_type": "echo", "input": 1, "input_encoding": "rot13"}).encode(),
        json.dumps({"task_id": "t", "agent_type": "echo", "input": "!!!", "input_encoding": "base64"}).encode(),
        json.dumps({"task_id": "t", "agent_type": "echo", "input": 5, "input_encoding": "utf8"}).encode(),
        json.dumps({"task_id": "t", "agent_type": "echo", "input": 1, "labels": {"a": 1}}).encode(),
    ],
)
async def test_a_malformed_attempt_is_a_400(raw: bytes) -> None:
    response = await post(None, raw=raw)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_request"


@pytest.mark.anyio
async def test_only_post_is_served() -> None:
    response = await post(None, raw=b"", method="GET")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


# Served by uvicorn: what only a real connection shows.

live = AgentApp()
gate = threading.Event()
cancelled: dict[str, Any] = {}


@live.agent("gated")
async def gated(ctx: Context) -> Any:
    await ctx.emit("first")
    # The test opens the gate only once it has read the first chunk: it arrives before the
    # handler finishes, or this waits until the test's timeout.
    while not gate.is_set():
        await asyncio.sleep(0.01)
    await ctx.emit("second")
    return "done"


@live.agent("endless")
async def endless(ctx: Context) -> Any:
    await ctx.emit("started")
    cancelled["ctx"] = ctx
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        cancelled["at"] = time.monotonic()
        raise


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    server = Served(live).start()
    try:
        yield server
    finally:
        gate.set()
        server.stop()


def test_each_frame_is_flushed_as_it_is_produced(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as client:
        with client.stream("POST", "/gated", json=attempt("gated")) as response:
            lines = response.iter_lines()
            assert json.loads(next(lines)) == {"type": "chunk", "text": "first"}
            gate.set()
            rest = [json.loads(line) for line in lines if line]
    assert rest == [{"type": "chunk", "text": "second"}, {"type": "result", "output": "done", "output_encoding": "utf8", "content_type": "text/plain; charset=utf-8"}]


def test_a_client_that_hangs_up_cancels_the_handler(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as client:
        with client.stream("POST", "/endless", json=attempt("endless")) as response:
            assert json.loads(next(response.iter_lines())) == {"type": "chunk", "text": "started"}
            hung_up = time.monotonic()
    deadline = time.monotonic() + 10
    while "at" not in cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "at" in cancelled, "the handler was not cancelled within 10 s of the hang-up"
    assert cancelled["at"] - hung_up < 5
    assert cancelled["ctx"].cancelled


def test_the_line_limit_is_exact_and_counts_bytes_not_characters() -> None:
    from agentlog_sdk.frames import chunk_frame, encode_line

    overhead = len(b'{"type":"chunk","text":""}')
    at_limit = encode_line(chunk_frame("a" * (MAX_LINE_BYTES - overhead)), limit=MAX_LINE_BYTES)
    assert len(at_limit) == MAX_LINE_BYTES + 1 and at_limit.endswith(b"\n")
    with pytest.raises(ChunkTooLarge) as caught:
        encode_line(chunk_frame("a" * (MAX_LINE_BYTES - overhead + 1)), limit=MAX_LINE_BYTES)
    assert caught.value.size == MAX_LINE_BYTES + 1
    with pytest.raises(ChunkTooLarge):  # 2 bytes each in UTF-8
        encode_line(chunk_frame("é" * (MAX_LINE_BYTES // 2)), limit=MAX_LINE_BYTES)
    with pytest.raises(TypeError):
        chunk_frame(None)


# Checkpoints.


@pytest.mark.anyio
async def test_checkpoints_are_sent_in_order_with_the_other_frames() -> None:
    got = frames(await post(attempt("steps", None)))
    state = lambda step: {"type": "checkpoint", "state": {"step": step, "notes": ["é", None]}}  # noqa: E731
    assert got == [
        {"type": "progress", "percent": 25, "message": "step 1"},
        {"type": "chunk", "text": "did 1"},
        state(1),
        {"type": "progress", "percent": 50, "message": "step 2"},
        {"type": "chunk", "text": "did 2"},
        state(2),
        {"type": "progress", "percent": 75, "message": "step 3"},
        {"type": "chunk", "text": "did 3"},
        state(3),
        {"type": "result", "output": {"from": 0}},
    ]


@pytest.mark.anyio
async def test_the_received_checkpoint_is_decoded_json_or_none() -> None:
    got = frames(await post(attempt("steps", None, checkpoint={"step": 2, "notes": []}, checkpoint_attempt=1)))
    assert [f["state"]["step"] for f in got if f["type"] == "checkpoint"] == [3]
    assert got[-1] == {"type": "result", "output": {"from": 2}}
    for state in ({"step": 2, "nested": [1, {"a": None}]}, [1, 2], "text", 7, True):
        frames(await post(attempt("echo", 1, checkpoint=state, checkpoint_attempt=3)))
        assert (seen["echo"].last_checkpoint, seen["echo"].last_checkpoint_attempt) == (state, 3)
    frames(await post(attempt("echo", 1, checkpoint=None, checkpoint_attempt=None)))
    assert (seen["echo"].last_checkpoint, seen["echo"].last_checkpoint_attempt) == (None, None)
    frames(await post(attempt("echo", 1)))  # an agentlog without checkpoints sends neither field
    assert (seen["echo"].last_checkpoint, seen["echo"].last_checkpoint_attempt) == (None, None)


@pytest.mark.anyio
@pytest.mark.parametrize("checkpoint_attempt", [0, -1, "1", True, 1.5])
async def test_a_bad_checkpoint_attempt_is_a_400(checkpoint_attempt: Any) -> None:
    response = await post(attempt("echo", 1, checkpoint={"step": 1}, checkpoint_attempt=checkpoint_attempt))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_request"
    assert "checkpoint_attempt" in response.json()["error"]["message"]


@pytest.mark.anyio
async def test_a_checkpoint_at_the_limit_is_sent_one_byte_over_is_refused_before_sending() -> None:
    seen.pop("checkpoint_too_large", None)
    response = await post(attempt("big_checkpoint", {"size": MAX_CHECKPOINT_LINE_BYTES}))
    got = frames(response)
    assert "checkpoint_too_large" not in seen
    first = response.text.splitlines()[0]
    assert len(first.encode()) == MAX_CHECKPOINT_LINE_BYTES
    assert got == [{"type": "checkpoint", "state": "s" * (MAX_CHECKPOINT_LINE_BYTES - CHECKPOINT_OVERHEAD)}, got[-1]]
    assert got[-1]["output"] == "saved"

    got = frames(await post(attempt("big_checkpoint", {"size": MAX_CHECKPOINT_LINE_BYTES + 1})))
    error = seen["checkpoint_too_large"]
    assert (error.size, error.limit) == (MAX_CHECKPOINT_LINE_BYTES + 1, MAX_CHECKPOINT_LINE_BYTES)
    assert got[:-1] == [{"type": "checkpoint", "state": {"ref": "elsewhere"}}], "nothing of the refused one was sent"


def test_the_checkpoint_limit_counts_bytes_and_is_not_the_chunk_limit() -> None:
    from agentlog_sdk.frames import checkpoint_frame, encode_line

    assert MAX_CHECKPOINT_LINE_BYTES == 256 * 1024
    limit = {"limit": MAX_CHECKPOINT_LINE_BYTES, "too_large": CheckpointTooLarge}
    at_limit = encode_line(checkpoint_frame("a" * (MAX_CHECKPOINT_LINE_BYTES - CHECKPOINT_OVERHEAD)), **limit)
    assert len(at_limit) == MAX_CHECKPOINT_LINE_BYTES + 1 and at_limit.endswith(b"\n")
    with pytest.raises(CheckpointTooLarge) as caught:  # 2 bytes each in UTF-8
        encode_line(checkpoint_frame("é" * (MAX_CHECKPOINT_LINE_BYTES // 2)), **limit)
    assert caught.value.size > MAX_CHECKPOINT_LINE_BYTES
    assert not isinstance(caught.value, ChunkTooLarge), "a handler splitting chunks must not catch it"
    with pytest.raises(TypeError):
        checkpoint_frame(b"raw")


@pytest.mark.anyio
async def test_an_uncaught_checkpoint_too_large_fails_the_attempt_not_retryable() -> None:
    got = frames(await post(attempt("careless_checkpoint")))
    assert got[0] == {"type": "chunk", "text": "before"}
    assert len(got) == 2
    assert (got[1]["type"], got[1]["kind"], got[1]["retryable"]) == ("error", "checkpoint_too_large", False)
    assert str(MAX_CHECKPOINT_LINE_BYTES) in got[1]["message"]


@pytest.mark.anyio
async def test_a_state_json_cannot_hold_raises_like_emit() -> None:
    got = frames(await post(attempt("bad_checkpoint", {"loss": "nan"})))
    assert isinstance(seen["bad_checkpoint"], ValueError)
    assert isinstance(seen["bad_checkpoint_type"], TypeError)
    assert got == [{"type": "checkpoint", "state": {"loss": None}}, got[-1]]
    assert got[-1]["type"] == "result"


@pytest.mark.anyio
async def test_sync_handlers_checkpoint_too() -> None:
    seen.pop("sync_checkpoint_too_large", None)
    got = frames(await post(attempt("sync_steps", None, checkpoint={"step": 0}, checkpoint_attempt=1)))
    assert got == [
        {"type": "chunk", "text": "one"},
        {"type": "checkpoint", "state": {"step": 1}},
        {"type": "progress", "percent": 50},
        {"type": "result", "output": {"received": {"step": 0}, "by": 1}},
    ]
    assert seen["sync_checkpoint_too_large"] is True
