#!/usr/bin/env python3
"""What open event streams cost the API: RSS of an `agentlog dev` process (embedded log, two
echo agent types) with N clients on GET /v1/stream/outcomes, of which some never read a byte,
while tasks with large inputs (echoed back as large outputs) finish.

The silent clients subscribe to the `echo` type, which gets `--tasks` tasks of
`--input-bytes` each: what they do not read is what the server could be made to keep. The
reading clients subscribe to the `small` type, which gets `--small-tasks` tiny tasks, and
must each get every one of those outcomes (streaming every large outcome to 900 readers would
measure the machine's copying speed, not what a stream holds).

Usage: scripts/bench-sse.py --bin target/release/agentlog --work DIR
       [--clients 1000] [--silent 100] [--tasks 5000] [--input-bytes 100000] [--small-tasks 100]

Prints RSS idle (after start), with the streams open, its peak, and the outcome events the
readers got; the target (issue 14) is at most 200 MB above idle. Standard library only;
everything binds to 127.0.0.1 and the server is stopped by its pid.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def terminal(port, task_id):
    """Whether the task has its outcome (200 from /outcome; 404 until then)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/tasks/{task_id}/outcome", headers={"x-tenant": "bench"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()
            return answer.status == 200
    except Exception:
        return False


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


lagged = {}


async def open_stream(port, tenant, agent_type, read, counts, index):
    """One SSE client: sends its request and, if `read`, counts `outcome` events; if not,
    never reads (its socket buffers fill and the server must not keep the rest)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    # A small receive buffer so a silent client's kernel buffer fills early.
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(f"GET /v1/stream/outcomes?agent_type={agent_type} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nx-tenant: {tenant}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    if not read:
        return writer
    lagged[index] = 0
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"stream {index}: {head[:200]!r}")

    async def consume():
        # Line by line: counting in arbitrary reads missed an event whose `event:` line was
        # split between two of them. (The chunked encoding's size lines are lines of their own.)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                if line.startswith(b"event: outcome"):
                    counts[index] += 1
                elif line.startswith(b"event: lagged"):
                    lagged[index] += 1
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return

    asyncio.get_running_loop().create_task(consume())
    return writer


async def submit_all(port, tenant, agent_type, tasks, input_bytes, concurrency=16):
    text = "x" * input_bytes
    queue = asyncio.Queue()
    for i in range(tasks):
        queue.put_nowait(i)

    async def submitter():
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        while not queue.empty():
            i = queue.get_nowait()
            body = json.dumps({"agent_type": agent_type, "task_id": f"{agent_type}-{i}", "input": {"text": text}}).encode()
            writer.write(
                f"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nx-tenant: {tenant}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if b" 202 " not in head.split(b"\r\n", 1)[0] and b" 200 " not in head.split(b"\r\n", 1)[0]:
                raise RuntimeError(f"submit {i}: {head[:200]!r}")
        writer.close()

    await asyncio.gather(*(submitter() for _ in range(concurrency)))


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--silent", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--input-bytes", type=int, default=100_000)
    parser.add_argument("--small-tasks", type=int, default=100)
    args = parser.parse_args()

    os.makedirs(args.work, exist_ok=True)
    api_port, registry_port = free_port(), free_port()
    config = os.path.join(args.work, "sse.toml")
    with open(config, "w") as f:
        f.write(
            f"""[log]
backend = "embedded"
[log.embedded]
data_dir = "{args.work}/log"
[registry]
listen = "127.0.0.1:{registry_port}"
url = "http://127.0.0.1:{registry_port}"
[api]
listen = "127.0.0.1:{api_port}"
max_streams_per_tenant = {max(args.clients, 1)}
rate_per_s = 0
[projection]
dir = "{args.work}/projection"
[agents.echo]
runtime = {{ kind = "builtin", name = "echo" }}
concurrency = 32
[agents.small]
runtime = {{ kind = "builtin", name = "echo" }}
concurrency = 8
"""
        )
    log = open(os.path.join(args.work, "dev.log"), "w")
    server = subprocess.Popen([args.bin, "--config", config, "dev"], stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "warn"})
    writers = []
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{api_port}/readyz", timeout=1)
                break
            except Exception:
                time.sleep(0.2)
        else:
            raise RuntimeError("the API did not become ready")
        idle = rss_mb(server.pid)
        args.silent = min(args.silent, args.clients)
        counts = [0] * args.clients
        for i in range(args.clients):
            silent = i < args.silent
            writers.append(await open_stream(api_port, "bench", "echo" if silent else "small", not silent, counts, i))
        await asyncio.sleep(1)
        streams_open = rss_mb(server.pid)
        started = time.monotonic()
        sampling = True

        async def sample():
            nonlocal peak
            while sampling:
                peak = max(peak, rss_mb(server.pid))
                await asyncio.sleep(0.2)

        peak = streams_open
        sampler = asyncio.get_running_loop().create_task(sample())
        await submit_all(api_port, "bench", "echo", args.tasks, args.input_bytes)
        # A control run (--clients 0) has no silent and no reading client.
        readers = max(0, args.clients - args.silent)
        deadline = time.monotonic() + 600
        # Blocking HTTP runs in a thread: on the event loop it stopped every reading stream
        # while it waited (up to 10 s a call), and their counts with them.
        while time.monotonic() < deadline and not await asyncio.to_thread(terminal, api_port, f"echo-{args.tasks - 1}"):
            await asyncio.sleep(0.5)
        # Then the readers' own tasks: every reading stream must still deliver every outcome
        # (while the flood passed, a stream that fell 4,096 notices behind got `lagged`).
        flood_s = time.monotonic() - started
        await submit_all(api_port, "bench", "small", args.small_tasks, 10, concurrency=1)
        # Their own wait: the flood's time must not eat into it.
        small_deadline = time.monotonic() + 180
        while time.monotonic() < small_deadline and sum(counts[args.silent:]) < readers * args.small_tasks:
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
        open_tasks = 0
        for i in range(args.tasks):
            open_tasks += 0 if await asyncio.to_thread(terminal, api_port, f"echo-{i}") else 1
        sampling = False
        await sampler
        end = rss_mb(server.pid)
        got = sum(counts[args.silent:])
        per_reader = counts[args.silent:] or [0]
        complete = sum(1 for c in per_reader if c >= args.small_tasks)
        print(
            f"clients={args.clients} silent={args.silent} tasks={args.tasks} input_bytes={args.input_bytes} small_tasks={args.small_tasks} "
            f"| rss_idle_mb={idle:.0f} rss_streams_open_mb={streams_open:.0f} rss_peak_mb={peak:.0f} rss_end_mb={end:.0f} "
            f"peak_above_idle_mb={peak - idle:.0f} | reader_outcome_events={got}/{readers * args.small_tasks} lagged_events={sum(lagged.values())} "
            f"(per reader min={min(per_reader)} max={max(per_reader)}, {complete} of {readers} got all) "
            f"open_echo_tasks={open_tasks} flood={flood_s:.1f}s in {elapsed:.1f}s"
        )
        if got != readers * args.small_tasks or open_tasks:
            print("not every task finished, or not every reading client got every outcome", file=sys.stderr)
            sys.exit(1)
    finally:
        for w in writers:
            w.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    asyncio.run(main())
