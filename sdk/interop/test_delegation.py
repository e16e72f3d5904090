"""Delegation across languages, end to end against a real agentlog (agent protocol §6).

A Python agent type `py_boss` (this SDK's `AgentApp`, served by uvicorn in this process)
delegates to the TypeScript agent type `ts_middle` (the TypeScript SDK's `AgentApp`, in the
Node process `ts_agent.mjs`), which delegates to the Python agent type `py_leaf`; the
result comes back up through both callbacks. Each backend gets its own `agentlog dev`: the
embedded log, and Kafka when AGENTLOG_TEST_KAFKA names a broker (sdk/python/tests/agentlog_dev.py).

Needs AGENTLOG_BIN (the agentlog binary), `node`, and the TypeScript SDK built
(sdk/typescript/dist: `scripts/sdk-interop-test.sh` builds it). Without them these tests skip,
except under CI=true, where they fail; so does the Kafka variant without AGENTLOG_TEST_KAFKA.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agentlog_dev import BACKENDS, Agentlog, agentlog_dev
from agentlog_sdk import AgentApp, AgentError, Client, Context, DelegationFailed
from servers import Served

HERE = pathlib.Path(__file__).resolve().parent
TS_AGENT = HERE / "ts_agent.mjs"
TS_DIST = HERE.parent / "typescript" / "dist" / "index.js"
BIN = os.environ.get("AGENTLOG_BIN", "")
NODE = shutil.which("node")


def _missing() -> str | None:
    if not BIN:
        return "AGENTLOG_BIN is not set (the agentlog binary the end-to-end tests run)"
    if not NODE:
        return "node is not installed (the TypeScript agent runs on it)"
    if not TS_DIST.is_file():
        return f"the TypeScript SDK is not built ({TS_DIST} is missing: cd sdk/typescript && npm ci && npm run build)"
    return None


if (_why := _missing()) is not None:
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI=true but {_why}: the cross-language tests cannot run")
    pytest.skip(_why, allow_module_level=True)

#: The most one test waits for a task (three tasks, two of them waiting for a child).
TASK_S = 45.0

app = AgentApp()
lock = threading.Lock()
#: What this process ran: task id -> (agent type, attempt, had a callback URL).
ran: dict[str, tuple[str, int, bool]] = {}


def record(ctx: Context) -> None:
    with lock:
        ran[ctx.task_id] = (ctx.agent_type, ctx.attempt, ctx.callback_url is not None)


@app.agent("py_boss")
async def py_boss(ctx: Context) -> Any:
    """Delegates `{"text", "leaf"}` to `ts_middle` and answers with its output, or with its
    failure (`DelegationFailed`)."""
    record(ctx)
    try:
        middle = await ctx.delegate("ts_middle", {"text": ctx.input["text"], "leaf": ctx.input.get("leaf", "py_leaf")}, labels={"via": "py_boss"})
    except DelegationFailed as e:
        return {"runtime": "python", "pid": os.getpid(), "failed": {"task_id": e.task_id, "status": e.status, "error_kind": e.error_kind, "message": e.message}}
    return {"runtime": "python", "pid": os.getpid(), "middle": middle}


@app.agent("py_leaf")
async def py_leaf(ctx: Context) -> Any:
    record(ctx)
    return {"runtime": "python", "pid": os.getpid(), "text": ctx.input["text"].upper()}


@app.agent("py_refusing")
async def py_refusing(ctx: Context) -> Any:
    record(ctx)
    raise AgentError("bad_input", f"py_refusing will not take {ctx.input['text']!r}", retryable=False)


AGENTS = """
[agents.py_boss]
runtime = {{ kind = "http", url = "{py}/py_boss" }}
delegates = true
timeout_ms = 60000

[agents.ts_middle]
runtime = {{ kind = "http", url = "{ts}/ts_middle" }}
delegates = true
timeout_ms = 60000

[agents.py_leaf]
runtime = {{ kind = "http", url = "{py}/py_leaf" }}

[agents.py_refusing]
runtime = {{ kind = "http", url = "{py}/py_refusing" }}
"""


class NodeAgent:
    """`node ts_agent.mjs`, started by this test and stopped by its pid."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: pathlib.Path) -> None:
        self.process, self.pid, self.log = process, process.pid, log
        self.url = f"http://127.0.0.1:{port}"

    def ran(self) -> list[dict[str, Any]]:
        """What the Node process ran (its `GET /ran`)."""
        return httpx.get(f"{self.url}/ran", timeout=5).json()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def ts_agent() -> Iterator[NodeAgent]:
    with tempfile.TemporaryDirectory(prefix="agentlog-interop-node-") as tmp:
        log = pathlib.Path(tmp) / "node.err"
        with open(log, "wb") as err:
            process = subprocess.Popen([NODE, str(TS_AGENT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)  # type: ignore[list-item]
        try:
            # Its first stdout line: {"port", "pid"}; read in a thread, so a silent process
            # cannot hang the test.
            lines: queue.Queue[bytes] = queue.Queue()
            threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()  # type: ignore[union-attr]
            try:
                first = lines.get(timeout=30)
            except queue.Empty:
                first = b""
            if not first:
                raise RuntimeError(f"node {TS_AGENT.name} printed no port (exit code {process.poll()}):\n{log.read_text(errors='replace')}")
            hello = json.loads(first)
            assert hello["pid"] == process.pid, hello
            yield NodeAgent(process, int(hello["port"]), log)
        finally:
            process.terminate()  # SIGTERM to the pid started above
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()


@pytest.fixture(scope="module")
def py_agent() -> Iterator[Served]:
    served = Served(app).start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def agentlog(request: pytest.FixtureRequest, py_agent: Served, ts_agent: NodeAgent) -> Iterator[Agentlog]:
    with agentlog_dev(BIN, request.param, AGENTS.format(py=py_agent.url, ts=ts_agent.url), name="sdk-interop") as running:
        yield running


@pytest.fixture
def client(agentlog: Agentlog) -> Iterator[Client]:
    with Client(agentlog.url, timeout=10) as c:
        yield c


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def wait_outcome(client: Client, task_id: str, agentlog: Agentlog, ts_agent: NodeAgent) -> dict[str, Any]:
    """The task's outcome; past TASK_S a failure showing every task of the tree and both
    servers' output."""
    try:
        return client.wait(task_id, timeout=TASK_S)
    except TimeoutError:
        tree = {t: safe_get(client, t) for t in (task_id, f"{task_id}.0", f"{task_id}.0.0")}
        pytest.fail(f"no outcome for {task_id} within {TASK_S} s: {json.dumps(tree, indent=1)}\nagentlog:\n{agentlog.output()}\nnode:\n{ts_agent.output()}")


def safe_get(client: Client, task_id: str) -> Any:
    try:
        return client.get(task_id)
    except Exception as e:  # noqa: BLE001 - a report, not a check
        return repr(e)


def test_python_delegates_to_typescript_which_delegates_to_python(client: Client, agentlog: Agentlog, ts_agent: NodeAgent) -> None:
    task_id = new_id("boss")
    started = time.monotonic()
    submitted = client.submit("py_boss", {"text": "hello from python"}, task_id=task_id)
    assert submitted.task_id == task_id
    outcome = wait_outcome(client, task_id, agentlog, ts_agent)
    took = time.monotonic() - started
    middle_id, leaf_id = f"{task_id}.0", f"{task_id}.0.0"

    # The result came back up, each level's output naming the runtime (and process) it ran on.
    assert outcome["status"] == "completed", outcome
    output = outcome["output"]
    assert output["runtime"] == "python" and output["pid"] == os.getpid(), output
    middle = output["middle"]
    assert middle["runtime"] == "node" and middle["pid"] == ts_agent.pid and middle["node"].startswith("v"), middle
    assert middle["task_id"] == middle_id
    assert middle["leaf"] == {"runtime": "python", "pid": os.getpid(), "text": "HELLO FROM PYTHON"}

    # The task tree: the root has no parent, `<id>.0` is py_boss's child, `<id>.0.0` ts_middle's.
    root = client.get(task_id)
    assert root.get("parent_task_id") is None, root
    child = client.get(middle_id)
    assert (child["agent_type"], child["parent_task_id"], child["status"]) == ("ts_middle", task_id, "completed"), child
    assert child["labels"] == {"via": "py_boss"}, child
    grandchild = client.get(leaf_id)
    assert (grandchild["agent_type"], grandchild["parent_task_id"], grandchild["status"]) == ("py_leaf", middle_id, "completed"), grandchild
    assert grandchild["labels"] == {"via": "ts_middle"}, grandchild
    # Each child's own outcome is the output its parent received.
    assert client.wait(middle_id, timeout=TASK_S)["output"] == middle
    assert client.wait(leaf_id, timeout=TASK_S)["output"] == middle["leaf"]

    # Each ran where it should, once, with a callback exactly when its type delegates.
    with lock:
        here = {t: ran[t] for t in (task_id, middle_id, leaf_id) if t in ran}
    assert here == {task_id: ("py_boss", 1, True), leaf_id: ("py_leaf", 1, False)}, here
    there = [r for r in ts_agent.ran() if r["task_id"].startswith(task_id)]
    assert there == [{"agent_type": "ts_middle", "task_id": middle_id, "attempt": 1, "callback": True}], there
    print(f"[{agentlog.backend}] py_boss -> ts_middle -> py_leaf and back: {took:.2f} s")


def test_a_python_leafs_failure_comes_back_through_typescript(client: Client, agentlog: Agentlog, ts_agent: NodeAgent) -> None:
    """`py_refusing` fails (not retryable); `ts_middle` does not catch the `DelegationFailed`
    its SDK throws, so it fails with kind `delegation_failed`; `py_boss` catches that one."""
    task_id = new_id("boss")
    client.submit("py_boss", {"text": "no thanks", "leaf": "py_refusing"}, task_id=task_id)
    outcome = wait_outcome(client, task_id, agentlog, ts_agent)
    middle_id, leaf_id = f"{task_id}.0", f"{task_id}.0.0"

    assert outcome["status"] == "completed", outcome
    failed = outcome["output"]["failed"]
    assert failed["task_id"] == middle_id, failed
    assert failed["status"] in ("failed", "dead_lettered") and failed["error_kind"] == "delegation_failed", failed
    # The TypeScript SDK's message names the grandchild and its own failure.
    assert leaf_id in (failed["message"] or "") and "bad_input" in failed["message"], failed

    leaf = client.wait(leaf_id, timeout=TASK_S)
    assert leaf["status"] in ("failed", "dead_lettered") and leaf["error_kind"] == "bad_input", leaf
    assert "no thanks" in (leaf["message"] or ""), leaf
    assert client.get(leaf_id)["parent_task_id"] == middle_id
    assert client.get(middle_id)["parent_task_id"] == task_id
    with lock:
        assert ran.get(leaf_id) == ("py_refusing", 1, False)
    assert [r["task_id"] for r in ts_agent.ran() if r["task_id"].startswith(task_id)] == [middle_id]
