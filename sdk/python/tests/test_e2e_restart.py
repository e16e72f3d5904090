"""End to end across a restart of agentlog: `agentlog dev` is one process holding the worker,
so a `kill -9` of it is a `kill -9` of the worker. Each test runs its own agentlog (not the
one of tests/test_e2e.py) on each backend (the embedded log; Kafka when AGENTLOG_TEST_KAFKA
names a broker, failing instead of skipping under CI=true, as tests/agentlog_dev.py rules),
kills it with SIGKILL mid-task and starts it again with the same config file, so the same
data (embedded: the log's data_dir, the projection and the supervisor's state_dir; Kafka:
the same topic_prefix). The `AgentApp` (uvicorn, in this process) stays up throughout.

- an approval that arrives after the worker restart (agent protocol §5: the wait is on the
  log, so it survives the restart of every agentlog process);
- a checkpoint that survives a kill -9 of the worker (§2: the attempt, whose offset was
  never committed, is delivered again and gets the checkpoint its first run saved).

Needs AGENTLOG_BIN, like tests/test_e2e.py.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agentlog_sdk import AgentApp, Client, Context
from agentlog_dev import BACKENDS, Agentlog, agentlog_bin, config, kafka_bootstrap, wait_ready
from servers import Served, free_port

BIN = agentlog_bin()

#: The most any one step waits (a task's status, its outcome). On Kafka a restarted agentlog
#: may wait for the dead consumer's session to expire before its partitions come back.
STEP_S = 90.0
#: The longest a blocked first run blocks when agentlog never hangs up (it does when killed).
BLOCK_S = 120.0

app = AgentApp()
lock = threading.Lock()

#: What each run of an `approval_restart` task received: (attempt, signal, last_checkpoint).
approvals: dict[str, list[tuple[int, Any, Any]]] = {}


@app.agent("approval_restart")
async def approval_restart(ctx: Context) -> Any:
    """Drafts and checkpoints the draft, then waits for the signal "approval"; resumed by it,
    returns the checkpointed draft with the decision."""
    with lock:
        approvals.setdefault(ctx.task_id, []).append((ctx.attempt, ctx.signal, ctx.last_checkpoint))
    if ctx.last_checkpoint is None:
        await ctx.checkpoint({"draft": f"draft of {ctx.input['doc']}"})
    signal = await ctx.wait_for_signal("approval", 60)
    return {"draft": ctx.last_checkpoint["draft"], "approved": signal.payload["approved"]}


#: What each run of a `blocking` task received: (attempt, last_checkpoint, last_checkpoint_attempt).
blocking_runs: dict[str, list[tuple[int, Any, Any]]] = {}
#: Task id -> when (monotonic) its first run had sent its checkpoint and blocked.
blocked_at: dict[str, float] = {}
#: Task id -> how the blocked run ended: "hung up" (agentlog went away), "cancelled", "gave up".
unblocked: dict[str, str] = {}


@app.agent("blocking")
async def blocking(ctx: Context) -> Any:
    """On a run with the checkpoint {"step": 1}, returns {"resumed_from": 1}; otherwise saves
    that checkpoint and blocks until agentlog hangs up (at most BLOCK_S)."""
    with lock:
        blocking_runs.setdefault(ctx.task_id, []).append((ctx.attempt, ctx.last_checkpoint, ctx.last_checkpoint_attempt))
    if ctx.last_checkpoint == {"step": 1}:
        return {"resumed_from": 1}
    await ctx.checkpoint({"step": 1})
    with lock:
        blocked_at[ctx.task_id] = time.monotonic()
    deadline = time.monotonic() + BLOCK_S
    try:
        while not ctx.cancelled and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    except asyncio.CancelledError:  # the SDK cancels an async handler once agentlog hangs up
        with lock:
            unblocked[ctx.task_id] = "cancelled"
        raise
    with lock:
        unblocked[ctx.task_id] = "hung up" if ctx.cancelled else "gave up"
    return {"resumed_from": None, "blocked_until_deadline": True}


AGENTS = """
[agents.approval_restart]
runtime = { kind = "http", url = "{agent}/approval_restart" }
timeout_ms = 30000

[agents.blocking]
runtime = { kind = "http", url = "{agent}/blocking" }
timeout_ms = 180000
"""


class Restartable:
    """`agentlog --config <file> dev` on `backend`, which can be killed with SIGKILL and started
    again on the same config file (so the same ports, data directories and topic_prefix)."""

    def __init__(self, bin: str, backend: str, agents: str, root: pathlib.Path) -> None:
        self.bin, self.backend, self.root = bin, backend, root
        self.prefix = f"sdkrestart{uuid.uuid4().hex[:10]}."
        api_port, registry_port = free_port(), free_port()
        self.config = root / "agentlog.toml"
        self.config.write_text(config(backend, root, self.prefix, api_port, registry_port, agents))
        self.url = f"http://127.0.0.1:{api_port}"
        self.log = root / "agentlog.out"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTLOG__") and k != "AGENTLOG_CONFIG"}
        self.running: Agentlog | None = None
        self.starts = 0

    def start(self) -> Agentlog:
        """Starts agentlog (its output appended to `log`) and waits until it is ready."""
        assert self.running is None or self.running.process.poll() is not None, "already running"
        self.starts += 1
        with open(self.log, "ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            log.flush()
            process = subprocess.Popen([self.bin, "--config", str(self.config), "dev"], cwd=self.root, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.running = Agentlog(self.url, process, self.log, self.backend, self.prefix)
        wait_ready(self.running)
        return self.running

    def kill9(self) -> None:
        """SIGKILL to the process started here (by its pid), and reaps it."""
        assert self.running is not None
        process = self.running.process
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        assert process.returncode == -signal.SIGKILL, process.returncode

    def stop(self) -> None:
        """SIGTERM to the process started here, SIGKILL after 20 s."""
        if self.running is None or self.running.process.poll() is not None:
            return
        process = self.running.process
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def agent() -> Iterator[Served]:
    served = Served(app).start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(params=BACKENDS)
def agentlog(request: pytest.FixtureRequest, agent: Served) -> Iterator[Restartable]:
    """An agentlog of this test's own on each backend, started and ready; stopped at the end."""
    if request.param == "kafka":
        kafka_bootstrap()  # skips, or fails under CI=true, before anything starts
    with tempfile.TemporaryDirectory(prefix=f"agentlog-sdk-restart-{request.param}-") as tmp:
        restartable = Restartable(BIN, request.param, AGENTS.replace("{agent}", agent.url), pathlib.Path(tmp))
        try:
            restartable.start()
            yield restartable
        finally:
            restartable.stop()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def wait_for_status(client: Client, task_id: str, status: str, agentlog: Restartable, position: str | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + STEP_S
    while True:
        task = client.get(task_id, after=position)
        if task["status"] == status:
            return task
        if task.get("outcome") is not None or time.monotonic() > deadline:
            pytest.fail(f"task {task_id} never showed status `{status}`: {task}\nagentlog's output:\n{agentlog.output()}")
        time.sleep(0.1)


def restart(agentlog: Restartable) -> None:
    """kill -9 of agentlog (so of its worker), then the same config started again, ready."""
    agentlog.kill9()
    agentlog.start()


def test_an_approval_arrives_after_the_worker_restart(agentlog: Restartable) -> None:
    task_id = new_id("approval-restart")
    with Client(agentlog.url, timeout=10) as client:
        submitted = client.submit("approval_restart", {"doc": "d-r"}, task_id=task_id)
        task = wait_for_status(client, task_id, "waiting", agentlog, submitted.position)
        assert task["waiting_for"]["signal"] == "approval", task

    restart(agentlog)

    with Client(agentlog.url, timeout=10) as client:
        # The wait is on the log: the restarted agentlog shows the task waiting still.
        task = wait_for_status(client, task_id, "waiting", agentlog)
        assert task["waiting_for"]["signal"] == "approval" and task["waiting_for"]["attempt"] == 2, task
        signal_id = new_id("decision")
        accepted = client.signal(task_id, "approval", {"approved": True}, signal_id=signal_id)
        assert (accepted.task_id, accepted.signal_id, accepted.duplicate) == (task_id, signal_id, False)
        outcome = client.wait(task_id, timeout=STEP_S)
    assert outcome["status"] == "completed", f"{outcome}\nagentlog's output:\n{agentlog.output()}"
    assert outcome["output"] == {"draft": "draft of d-r", "approved": True}
    assert outcome["attempt"] == 2
    with lock:
        runs = list(approvals[task_id])
    assert [(attempt, checkpoint) for attempt, _, checkpoint in runs] == [(1, None), (2, {"draft": "draft of d-r"})], runs
    assert runs[0][1] is None
    assert (runs[1][1].name, runs[1][1].id, runs[1][1].payload, runs[1][1].timed_out) == ("approval", signal_id, {"approved": True}, False)


def test_a_checkpoint_survives_a_kill_9_of_the_worker_restart(agentlog: Restartable) -> None:
    task_id = new_id("blocking")
    with Client(agentlog.url, timeout=10) as client:
        client.submit("blocking", {}, task_id=task_id)
        deadline = time.monotonic() + STEP_S
        while True:
            with lock:
                blocked = task_id in blocked_at
            if blocked:
                break
            assert time.monotonic() < deadline, f"the first run of {task_id} never blocked after its checkpoint:\n{agentlog.output()}"
            time.sleep(0.05)
    time.sleep(0.5)  # the checkpoint frame sent, and on the log

    restart(agentlog)

    with Client(agentlog.url, timeout=10) as client:
        outcome = client.wait(task_id, timeout=STEP_S)
    assert outcome["status"] == "completed", f"{outcome}\nagentlog's output:\n{agentlog.output()}"
    assert outcome["output"] == {"resumed_from": 1}
    with lock:
        runs = list(blocking_runs[task_id])
        how = unblocked.get(task_id)
    assert len(runs) == 2, runs
    assert runs[0] == (1, None, None), runs
    assert runs[1][1:] == ({"step": 1}, 1), runs
    assert outcome["attempt"] == runs[1][0]
    # The first run's request was cut when agentlog died, and the handler let go.
    deadline = time.monotonic() + 10
    while how is None and time.monotonic() < deadline:
        time.sleep(0.05)
        with lock:
            how = unblocked.get(task_id)
    assert how in ("cancelled", "hung up"), how
