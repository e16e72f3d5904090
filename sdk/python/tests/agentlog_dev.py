"""`agentlog dev` for the end-to-end tests, on each backend the issue asks for: the embedded
log in a temporary directory, and Kafka when AGENTLOG_TEST_KAFKA names a broker (`make test`
starts one and sets it; `scripts/kafka-local.sh start` for a run by hand), with topics of a
prefix unique to the run (`agentlog dev` creates them, as `agentlog topics apply` does).

The rule of the suites: a test that could not run shows as skipped, never as passed, and
under CI=true nothing may skip: the Kafka variant without a broker fails.
Used by tests/test_e2e.py and by sdk/interop (which puts this directory on sys.path).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from servers import free_port

#: Every backend the end-to-end suites run on (one agentlog process each, module-scoped).
BACKENDS = ("embedded", "kafka")

#: How long agentlog may take to be ready (on Kafka: topics, the consumer groups' joins).
READY_S = 90.0


def agentlog_bin() -> str:
    """The agentlog binary the end-to-end tests run: AGENTLOG_BIN. Without it the calling test
    module skips, except under CI=true, where it fails (a skip would hide that nothing ran)."""
    binary = os.environ.get("AGENTLOG_BIN", "")
    if not binary:
        if os.environ.get("CI") == "true":
            raise RuntimeError("CI=true but AGENTLOG_BIN does not name the agentlog binary: the SDK's end-to-end tests cannot run")
        pytest.skip("AGENTLOG_BIN is not set (the agentlog binary the end-to-end tests run)", allow_module_level=True)
    return binary


def kafka_bootstrap() -> str:
    """The broker of the Kafka variant: AGENTLOG_TEST_KAFKA. Without it the variant skips,
    except under CI=true, where it fails."""
    servers = os.environ.get("AGENTLOG_TEST_KAFKA", "").strip()
    if servers:
        return servers
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but AGENTLOG_TEST_KAFKA does not name a Kafka broker: the Kafka variant of the end-to-end tests cannot run", pytrace=False)
    pytest.skip("AGENTLOG_TEST_KAFKA is not set (a Kafka broker, e.g. 127.0.0.1:19092 after scripts/kafka-local.sh start)")


def log_section(backend: str, root: pathlib.Path, prefix: str) -> str:
    """The config's `[log]` part for `backend`."""
    if backend == "embedded":
        return f'[log]\nbackend = "embedded"\n\n[log.embedded]\ndata_dir = "{root / "log"}"\n'
    if backend == "kafka":
        # The broker's JVM, agentlog and the tests share 2 cores: give admin and metadata
        # calls more room than the 5 s default (as the Rust suites do).
        return f'[log]\nbackend = "kafka"\ntopic_prefix = "{prefix}"\n\n[log.kafka]\nbootstrap_servers = "{kafka_bootstrap()}"\nrequest_timeout_ms = 15000\n'
    raise ValueError(f"unknown backend {backend!r}")


def config(backend: str, root: pathlib.Path, prefix: str, api_port: int, registry_port: int, agents: str, *, max_wait_ms: int = 10_000) -> str:
    """A whole config: the backend's log, local state under `root`, the API and registry on
    the given ports, then `agents` (the `[agents.*]` tables)."""
    return f"""{log_section(backend, root, prefix)}
[supervisor]
state_dir = "{root / 'supervisor'}"
heartbeat_interval_ms = 200

[projection]
dir = "{root / 'projection'}"

[api]
listen = "127.0.0.1:{api_port}"
max_wait_ms = {max_wait_ms}

[registry]
listen = "127.0.0.1:{registry_port}"
url = "http://127.0.0.1:{registry_port}"

{agents}"""


class Agentlog:
    """A running `agentlog dev`: its API `url`, its `backend`, the `topic_prefix` of its
    topics (Kafka), and its output (`output()`: the last 4,000 characters)."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: pathlib.Path, backend: str, prefix: str) -> None:
        self.url, self.process, self.log, self.backend, self.prefix = url, process, log, backend, prefix

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextmanager
def agentlog_dev(bin: str, backend: str, agents: str, *, name: str = "sdk-e2e", max_wait_ms: int = 10_000) -> Iterator[Agentlog]:
    """Runs `agentlog --config <file> dev` on `backend` with the agent types `agents` until
    the block ends (SIGTERM to the process started here, SIGKILL after 20 s). Skips (or, under
    CI=true, fails) the Kafka variant without AGENTLOG_TEST_KAFKA."""
    if backend == "kafka":
        kafka_bootstrap()  # skips or fails here, before anything starts
    prefix = f"{name.replace('-', '')}{uuid.uuid4().hex[:10]}."
    with tempfile.TemporaryDirectory(prefix=f"agentlog-{name}-{backend}-") as tmp:
        root = pathlib.Path(tmp)
        api_port, registry_port = free_port(), free_port()
        (root / "agentlog.toml").write_text(config(backend, root, prefix, api_port, registry_port, agents, max_wait_ms=max_wait_ms))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTLOG__") and k != "AGENTLOG_CONFIG"}
        log_path = root / "agentlog.out"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([bin, "--config", str(root / "agentlog.toml"), "dev"], cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        running = Agentlog(f"http://127.0.0.1:{api_port}", process, log_path, backend, prefix)
        try:
            wait_ready(running)
            yield running
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def wait_ready(running: Agentlog) -> None:
    deadline = time.monotonic() + READY_S
    while True:
        if running.process.poll() is not None:
            raise RuntimeError(f"agentlog dev ({running.backend}) exited with {running.process.returncode}:\n{running.output()}")
        try:
            if httpx.get(f"{running.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"agentlog dev ({running.backend}) was not ready within {READY_S} s:\n{running.output()}")
        time.sleep(0.1)
