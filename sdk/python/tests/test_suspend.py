"""Waiting for a signal (agent protocol v1, §5) in a handler: `Context.signal`,
`wait_for_signal` returning the signal that resumed the attempt, or ending the attempt with
a ``suspend`` frame (through httpx's ASGI transport)."""

from __future__ import annotations

import gc
import json
import logging
from datetime import timedelta
from typing import Any

import httpx
import pytest

from agentlog_sdk import MAX_SIGNAL_TIMEOUT_MS, AgentApp, AgentError, Context, Signal
from agentlog_sdk.frames import suspend_frame, timeout_ms_of

app = AgentApp()
seen: dict[str, Any] = {}


@app.agent("approval")
async def approval(ctx: Context) -> Any:
    """Drafts (once: the draft is checkpointed), waits for "approval", returns the decision."""
    seen["signal"] = ctx.signal
    draft = ctx.last_checkpoint["draft"] if ctx.last_checkpoint else None
    if draft is None:
        await ctx.progress(10, "drafting")
        await ctx.emit("draft ")
        draft = f"draft of {ctx.input['doc']}"
        await ctx.checkpoint({"step": "drafted", "draft": draft})
    decision = await ctx.wait_for_signal("approval", ctx.input.get("timeout", 60))
    if decision.timed_out:
        return {"approved": None, "timed_out": True, "draft": draft}
    return {"approved": decision.payload["approved"], "by": decision.id, "draft": draft}


@app.agent("careless")
async def careless(ctx: Context) -> Any:
    """Wraps the wait in `except Exception`: the suspension still goes through."""
    try:
        await ctx.wait_for_signal("go", timedelta(days=1))
    except Exception as e:  # noqa: BLE001 — what a careless handler does
        return f"swallowed {e!r}"
    return "resumed"


@app.agent("reminder")
async def reminder(ctx: Context) -> Any:
    """Reminds and waits again while the wait times out (on_signal_timeout = "resume")."""
    while (decision := await ctx.wait_for_signal("approval", 3600)).timed_out:
        await ctx.emit("reminder sent")
    return decision.payload


@app.agent("stubborn")
async def stubborn(ctx: Context) -> Any:
    """Catches even the suspension, then goes on: the attempt suspends all the same."""
    await ctx.emit("before")
    try:
        await ctx.wait_for_signal("go", 5)
    except BaseException:  # noqa: BLE001 — what a handler must not do
        await ctx.emit("after")
        await ctx.checkpoint({"lost": True})
        try:
            await ctx.wait_for_signal("other", 9)
        except BaseException:  # noqa: BLE001
            pass
        return "finished anyway"


@app.agent("checks")
async def checks(ctx: Context) -> Any:
    """Calls wait_for_signal with each (name, timeout) of its input; reports what raised."""
    raised = []
    for name, timeout in ctx.input:
        if isinstance(timeout, dict):
            timeout = timedelta(**timeout)
        try:
            await ctx.wait_for_signal(name, timeout)
        except (ValueError, TypeError) as e:
            raised.append(type(e).__name__)
    return raised


@app.agent("sync_wait")
def sync_wait(ctx: Context) -> Any:
    ctx.emit_sync("before")
    signal = ctx.wait_for_signal_sync("review", 0.5)
    return signal.payload


def attempt(agent_type: str, input: Any = None, **fields: Any) -> dict[str, Any]:
    body = {
        "protocol": 1,
        "task_id": "t-1",
        "agent_type": agent_type,
        "attempt": 1,
        "idempotency_key": "t-1",
        "content_type": "application/json",
        "input": input,
        "input_encoding": "json",
        "labels": {},
        "checkpoint": None,
        "checkpoint_attempt": None,
        "signal": None,
        "callback_url": None,
    }
    body.update(fields)
    return body


async def post(body: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent") as client:
        return await client.post("/", json=body)


def frames(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.text.splitlines()]


DRAFTED = {"step": "drafted", "draft": "draft of d-1"}


@pytest.mark.anyio
async def test_without_the_signal_the_attempt_ends_with_suspend_after_what_it_sent() -> None:
    got = frames(await post(attempt("approval", {"doc": "d-1"})))
    assert got == [
        {"type": "progress", "percent": 10, "message": "drafting"},
        {"type": "chunk", "text": "draft "},
        {"type": "checkpoint", "state": DRAFTED},
        {"type": "suspend", "signal": "approval", "timeout_ms": 60_000},
    ]
    assert seen["signal"] is None


@pytest.mark.anyio
async def test_the_signal_that_resumed_the_attempt_is_returned_with_its_payload() -> None:
    signal = {"name": "approval", "id": "s-1", "payload": {"approved": True}, "timed_out": False}
    got = frames(await post(attempt("approval", {"doc": "d-1"}, attempt=2, checkpoint=DRAFTED, checkpoint_attempt=1, signal=signal)))
    assert got == [{"type": "result", "output": {"approved": True, "by": "s-1", "draft": "draft of d-1"}}], "nothing redone"
    assert seen["signal"] == Signal(name="approval", id="s-1", payload={"approved": True}, timed_out=False)


@pytest.mark.anyio
async def test_a_timed_out_signal_is_returned_too_for_the_handler_to_decide() -> None:
    signal = {"name": "approval", "id": None, "payload": None, "timed_out": True}
    got = frames(await post(attempt("approval", {"doc": "d-1"}, attempt=2, checkpoint=DRAFTED, checkpoint_attempt=1, signal=signal)))
    assert got == [{"type": "result", "output": {"approved": None, "timed_out": True, "draft": "draft of d-1"}}]
    assert seen["signal"].timed_out and seen["signal"].id is None


@pytest.mark.anyio
async def test_a_signal_of_another_name_suspends_again() -> None:
    signal = {"name": "review", "id": "s-2", "payload": "ok", "timed_out": False}
    got = frames(await post(attempt("approval", {"doc": "d-1", "timeout": timedelta(hours=2).total_seconds()}, attempt=2, checkpoint=DRAFTED, checkpoint_attempt=1, signal=signal)))
    assert got == [{"type": "suspend", "signal": "approval", "timeout_ms": 7_200_000}]


@pytest.mark.anyio
async def test_the_signal_answers_the_first_wait_so_a_handler_can_wait_again() -> None:
    assert frames(await post(attempt("reminder"))) == [{"type": "suspend", "signal": "approval", "timeout_ms": 3_600_000}]
    timed_out = {"name": "approval", "id": None, "payload": None, "timed_out": True}
    got = frames(await post(attempt("reminder", attempt=2, signal=timed_out)))
    assert got == [{"type": "chunk", "text": "reminder sent"}, {"type": "suspend", "signal": "approval", "timeout_ms": 3_600_000}]
    came = {"name": "approval", "id": "s-9", "payload": "yes", "timed_out": False}
    assert frames(await post(attempt("reminder", attempt=3, signal=came))) == [{"type": "result", "output": "yes", "output_encoding": "utf8", "content_type": "text/plain; charset=utf-8"}]


@pytest.mark.anyio
async def test_except_exception_does_not_swallow_the_suspension() -> None:
    got = frames(await post(attempt("careless")))
    assert got == [{"type": "suspend", "signal": "go", "timeout_ms": 86_400_000}]
    got = frames(await post(attempt("careless", signal={"name": "go", "id": None, "payload": None, "timed_out": False})))
    assert got[-1]["output"] == "resumed"


@pytest.mark.anyio
async def test_the_suspension_is_not_logged_as_an_exception_never_retrieved(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        frames(await post(attempt("careless")))
        gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


@pytest.mark.anyio
async def test_a_caught_suspension_still_suspends_and_nothing_is_sent_after_it() -> None:
    got = frames(await post(attempt("stubborn")))
    assert got == [{"type": "chunk", "text": "before"}, {"type": "suspend", "signal": "go", "timeout_ms": 5000}]


@pytest.mark.anyio
async def test_sync_handlers_suspend_too() -> None:
    got = frames(await post(attempt("sync_wait")))
    assert got == [{"type": "chunk", "text": "before"}, {"type": "suspend", "signal": "review", "timeout_ms": 500}]
    got = frames(await post(attempt("sync_wait", signal={"name": "review", "id": "r", "payload": [1, 2], "timed_out": False})))
    assert got == [{"type": "chunk", "text": "before"}, {"type": "result", "output": [1, 2]}], "from the top again"


@pytest.mark.anyio
async def test_a_bad_name_or_timeout_raises_before_anything_is_sent() -> None:
    bad = [
        ["Approval", 60],
        ["", 60],
        ["a" * 65, 60],
        ["a/b", 60],
        [5, 60],
        ["ok", 0],
        ["ok", 0.0004],
        ["ok", -1],
        ["ok", MAX_SIGNAL_TIMEOUT_MS / 1000 + 0.001],
        ["ok", {"days": 6, "milliseconds": 1}],
        ["ok", {"days": 7}],
        ["ok", "60"],
        ["ok", True],
        ["ok", None],
    ]
    got = frames(await post(attempt("checks", bad)))
    assert got == [{"type": "result", "output": ["ValueError"] * 11 + ["TypeError"] * 3}]
    # Checked on a resumed attempt too, before the signal is returned: a bug shows at once.
    resumed = {"name": "ok", "id": None, "payload": None, "timed_out": False}
    got = frames(await post(attempt("checks", [["ok", 0], ["ok", 60]], signal=resumed)))
    assert got == [{"type": "result", "output": ["ValueError"]}]


@pytest.mark.anyio
async def test_the_limits_themselves_are_accepted() -> None:
    for timeout, ms in ((0.001, 1), ({"milliseconds": 1}, 1), ({"days": 6}, MAX_SIGNAL_TIMEOUT_MS), (MAX_SIGNAL_TIMEOUT_MS / 1000, MAX_SIGNAL_TIMEOUT_MS)):
        got = frames(await post(attempt("checks", [["a.b-c_9", timeout]])))
        assert got == [{"type": "suspend", "signal": "a.b-c_9", "timeout_ms": ms}], timeout
    name = "x" * 64
    assert frames(await post(attempt("checks", [[name, 1]]))) == [{"type": "suspend", "signal": name, "timeout_ms": 1000}]


def test_timeouts_convert_to_whole_milliseconds() -> None:
    assert MAX_SIGNAL_TIMEOUT_MS == 518_400_000
    assert timeout_ms_of(1.5) == 1500
    assert timeout_ms_of(timedelta(minutes=1, microseconds=400)) == 60_000
    assert timeout_ms_of(0.0015) == 2
    for wrong in (float("nan"), float("inf"), -0.5):
        with pytest.raises(ValueError):
            timeout_ms_of(wrong)
    with pytest.raises(ValueError):
        suspend_frame("ok", 0)
    with pytest.raises(ValueError):
        suspend_frame("OK", 1)
    assert suspend_frame("ok", 1) == {"type": "suspend", "signal": "ok", "timeout_ms": 1}


@pytest.mark.anyio
async def test_the_signal_is_none_when_absent_or_null() -> None:
    body = attempt("careless")
    del body["signal"]
    frames(await post(body))
    got = frames(await post(attempt("approval", {"doc": "d"}, signal=None)))
    assert got[-1]["type"] == "suspend" and seen["signal"] is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    "signal",
    ["approval", 5, [], {"id": "s"}, {"name": ""}, {"name": 5}, {"name": "a", "id": 5}, {"name": "a", "timed_out": "no"}],
)
async def test_a_malformed_signal_is_a_400(signal: Any) -> None:
    response = await post(attempt("approval", {"doc": "d"}, signal=signal))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_request"
    assert "signal" in response.json()["error"]["message"]


def test_agent_errors_and_signal_names_share_their_pattern() -> None:
    # A signal name has the pattern of an error kind, and is refused with the same words.
    with pytest.raises(ValueError, match=r"\[a-z0-9_\.-\]\{1,64\}"):
        AgentError("Bad Kind", "x")
    with pytest.raises(ValueError, match=r"\[a-z0-9_\.-\]\{1,64\}"):
        suspend_frame("Bad Name", 1)
