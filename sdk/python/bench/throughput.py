#!/usr/bin/env python3
"""End-to-end throughput of a Python client: submit over HTTP, await the outcomes.

Against a running agentlog (``--url``), it opens the outcome stream of one agent type
(``GET /v1/stream/outcomes?agent_type=``) first, then submits ``--tasks`` tasks with
``submit_batch`` in batches of ``--batch``, ``--concurrency`` batches in flight, and reads the
stream until every one of its own tasks has its outcome (or ``--timeout``). Task ids share a
prefix unique to the run; only outcomes of those ids count, each once, and a run that misses
any (or gets a `lagged` event, or an outcome other than ``completed``) fails (exit 1) saying
how many and which.

``--window`` (default 3,000) bounds the tasks submitted whose outcome has not been read yet: the
server keeps at most 4,096 outcome notices per stream for a reader that is behind and drops the
rest (a `lagged` event), so an unbounded burst loses outcomes as soon as the server finishes
tasks faster than it writes the stream (measured: 20,000 tasks at once lost ~2,400 even with
``curl`` reading). ``--window 0`` removes the bound.

It prints one line of JSON on stdout and a line for humans on stderr:

- ``submit_per_s``: tasks / (first submit sent → last submit answered);
- ``e2e_per_s``: tasks / (first submit sent → last outcome received);
- ``latency_ms`` p50/p99/max: a batch's send time → each of its outcomes received;
- ``client_cpu_s`` (this process, user+sys) and, with ``--server-pid``, ``server_cpu_s``,
  over the same span, to tell which side ran out of CPU.

Example, against ``agentlog dev`` with an ``echo`` builtin agent type::

    python sdk/python/bench/throughput.py --url http://127.0.0.1:8080 --tasks 200000 \\
        --batch 500 --concurrency 8

``--profile FILE`` runs the client under cProfile, writes the stats to FILE and prints the
top functions (cumulative and own time) on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
import uuid
from typing import Any

from agentlog_sdk import AsyncClient, Lagged, Outcome, task_spec


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """user+sys CPU seconds of another process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n, size = args.tasks, args.batch
    prefix = f"tp-{uuid.uuid4().hex[:12]}-"
    plen = len(prefix)
    batches = (n + size - 1) // size
    sent_at = [0.0] * batches
    seen = bytearray(n)
    latencies: list[float] = []
    counts = {"received": 0, "foreign": 0, "repeated": 0, "not_completed": 0, "lagged_missed": 0}
    not_completed: list[str] = []
    all_in = asyncio.Event()
    # The window: at most `window` tasks submitted and not yet seen on the stream (0: no limit).
    window = args.window
    gate = asyncio.Event()
    wake = [n + 1]  # received count at which to open the gate
    perf = time.perf_counter

    async with AsyncClient(args.url, api_key=args.api_key, timeout=args.request_timeout) as client:
        # The stream is open (the server answered, so it is subscribed) before the first submit.
        async with client.outcomes(args.agent_type, read_timeout=args.timeout + 60) as events:

            async def read() -> None:
                received = 0
                async for event in events:
                    if type(event) is Lagged:
                        counts["lagged_missed"] += event.missed
                        continue
                    assert type(event) is Outcome
                    task_id = event.task_id
                    if not task_id.startswith(prefix):
                        counts["foreign"] += 1
                        continue
                    i = int(task_id[plen:])
                    if seen[i]:
                        counts["repeated"] += 1
                        continue
                    seen[i] = 1
                    latencies.append(perf() - sent_at[i // size])
                    if event.status != "completed":
                        counts["not_completed"] += 1
                        if len(not_completed) < 5:
                            not_completed.append(f"{task_id}: {event.status} {event.error_kind} {event.message}")
                    received += 1
                    counts["received"] = received
                    if received >= wake[0]:
                        gate.set()
                    if received == n:
                        all_in.set()
                        return

            reader = asyncio.create_task(read())
            next_batch = 0
            admitted = 0  # tasks whose batch was let through the window

            async def submit() -> None:
                nonlocal next_batch, admitted
                while next_batch < batches:
                    b = next_batch
                    next_batch += 1
                    first, last = b * size, min(n, (b + 1) * size)
                    while window and admitted + (last - first) - counts["received"] > window:
                        gate.clear()
                        wake[0] = admitted + (last - first) - window
                        await gate.wait()
                    admitted += last - first
                    specs = [task_spec(args.agent_type, {"i": i}, task_id=f"{prefix}{i}") for i in range(first, last)]
                    sent_at[b] = perf()
                    answers = await client.submit_batch(specs)
                    if len(answers) != last - first or any(a.duplicate for a in answers):
                        raise RuntimeError(f"batch {b}: {len(answers)} answers for {last - first} tasks, {sum(a.duplicate for a in answers)} duplicates")

            cpu0 = cpu_seconds()
            server_cpu0 = process_cpu_seconds(args.server_pid) if args.server_pid else 0.0
            t0 = perf()
            submitters = [asyncio.create_task(submit()) for _ in range(args.concurrency)]
            try:
                await asyncio.gather(*submitters)
            except BaseException:
                reader.cancel()
                raise
            submitted_at = perf()
            try:
                await asyncio.wait_for(asyncio.shield(all_in.wait()), timeout=max(0.0, args.timeout - (submitted_at - t0)))
            except asyncio.TimeoutError:
                pass
            done_at = perf()
            cpu = cpu_seconds() - cpu0
            server_cpu = process_cpu_seconds(args.server_pid) - server_cpu0 if args.server_pid else None
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                pass

    received = counts["received"]
    latencies.sort()
    missing = [f"{prefix}{i}" for i in range(n) if not seen[i]]
    span = done_at - t0
    result: dict[str, Any] = {
        "tasks": n,
        "batch": size,
        "concurrency": args.concurrency,
        "window": window,
        "received": received,
        "missing": len(missing),
        "submit_s": round(submitted_at - t0, 3),
        "e2e_s": round(span, 3),
        "submit_per_s": round(n / (submitted_at - t0)),
        "e2e_per_s": round(received / span) if received == n else None,
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50) * 1000, 1),
            "p99": round(percentile(latencies, 0.99) * 1000, 1),
            "max": round(latencies[-1] * 1000, 1) if latencies else None,
        },
        "client_cpu_s": round(cpu, 2),
        "server_cpu_s": round(server_cpu, 2) if server_cpu is not None else None,
        **{k: counts[k] for k in ("foreign", "repeated", "not_completed", "lagged_missed")},
    }
    if missing:
        result["missing_sample"] = missing[:5]
    if not_completed:
        result["not_completed_sample"] = not_completed
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--agent-type", default="echo")
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500, help="tasks per submit_batch (the API's api.max_batch is 500 by default)")
    parser.add_argument("--concurrency", type=int, default=8, help="batches in flight")
    parser.add_argument(
        "--window",
        type=int,
        default=3000,
        help="most tasks submitted and not yet seen on the stream (0: no limit); keep it under the "
        "server's 4,096 outcome notices per stream, past which it drops them (a `lagged` event)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds from the first submit to give up waiting for outcomes")
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--server-pid", type=int, default=None, help="also report this process's CPU seconds over the run (Linux)")
    parser.add_argument("--profile", metavar="FILE", default=None, help="run under cProfile; stats to FILE, top functions to stderr")
    args = parser.parse_args()
    if args.window and args.window < args.batch:
        parser.error("--window must be 0 (no limit) or at least --batch")

    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        result = profiler.runcall(asyncio.run, run(args))
        profiler.dump_stats(args.profile)
        stats = pstats.Stats(profiler, stream=sys.stderr).strip_dirs()
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(25)
    else:
        result = asyncio.run(run(args))

    print(json.dumps(result), flush=True)
    latency = result["latency_ms"]
    ok = result["missing"] == 0 and result["not_completed"] == 0 and result["lagged_missed"] == 0 and result["repeated"] == 0
    print(
        f"{result['received']:,}/{result['tasks']:,} outcomes in {result['e2e_s']} s: "
        f"{result['e2e_per_s'] or 0:,} tasks/s end to end, submit {result['submit_per_s']:,}/s "
        f"(batch {result['batch']}, {result['concurrency']} in flight, window {result['window'] or 'none'}), latency p50 {latency['p50']} ms "
        f"p99 {latency['p99']} ms; client CPU {result['client_cpu_s']} s"
        + (f", server CPU {result['server_cpu_s']} s" if result["server_cpu_s"] is not None else "")
        + ("" if ok else f" — FAILED: {result['missing']} missing, {result['not_completed']} not completed, {result['lagged_missed']} lagged, {result['repeated']} repeated"),
        file=sys.stderr,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
