"""agentlog's Python SDK: a client of the HTTP API and an agent server (agent protocol v1).

Client side::

    from agentlog_sdk import Client, Chunk, Outcome

    with Client("http://127.0.0.1:8080") as client:
        task = client.submit("summarize", {"text": "..."})
        for event in client.stream(task.task_id):
            if isinstance(event, Chunk):
                print(event.text, end="")
            elif isinstance(event, Outcome):
                print(event.status, event.output)

Agent side::

    from agentlog_sdk import AgentApp

    app = AgentApp()

    @app.agent("summarize")
    async def summarize(ctx):
        await ctx.emit("partial text")
        await ctx.checkpoint({"step": 1})   # the next attempt gets it in ctx.last_checkpoint
        return {"summary": "..."}

    @app.agent("publish")
    async def publish(ctx):
        decision = await ctx.wait_for_signal("approval", 3600)   # suspends; runs again on the signal
        parts = await ctx.delegate("summarize", ctx.input)        # a sub-task (delegates = true)
        return {"approved": decision.payload, "summary": parts}
"""

from .agent import AgentApp, Context
from .client import AsyncClient, Client, SignalResult, Submitted, TaskPage, task_spec
from .delegation import ChildOutcome
from .errors import (
    AgentError,
    AgentlogError,
    BadRequest,
    CheckpointTooLarge,
    ChunkTooLarge,
    Conflict,
    DelegationFailed,
    DelegationUnavailable,
    Forbidden,
    NotFound,
    NotWaiting,
    PayloadTooLarge,
    ServerError,
    StreamError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnexpectedSignal,
    WaitTimeout,
)
from .frames import MAX_CHECKPOINT_LINE_BYTES, MAX_LINE_BYTES, MAX_SIGNAL_TIMEOUT_MS, PROTOCOL_VERSION, Result, Signal
from .stream import AsyncOutcomeStream, Chunk, Event, Lagged, Outcome, OutcomeEvent, OutcomeStream, Progress

__version__ = "0.1.0"

__all__ = [
    "AgentApp",
    "AgentError",
    "AgentlogError",
    "AsyncClient",
    "AsyncOutcomeStream",
    "BadRequest",
    "CheckpointTooLarge",
    "ChildOutcome",
    "Chunk",
    "ChunkTooLarge",
    "Client",
    "Conflict",
    "Context",
    "DelegationFailed",
    "DelegationUnavailable",
    "Event",
    "Forbidden",
    "Lagged",
    "MAX_CHECKPOINT_LINE_BYTES",
    "MAX_LINE_BYTES",
    "MAX_SIGNAL_TIMEOUT_MS",
    "NotFound",
    "NotWaiting",
    "Outcome",
    "OutcomeEvent",
    "OutcomeStream",
    "PROTOCOL_VERSION",
    "PayloadTooLarge",
    "Progress",
    "Result",
    "ServerError",
    "Signal",
    "SignalResult",
    "StreamError",
    "Submitted",
    "TaskPage",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "UnexpectedSignal",
    "WaitTimeout",
    "task_spec",
]
