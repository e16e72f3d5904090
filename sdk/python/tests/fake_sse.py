"""A fake ``GET /v1/tasks/{id}/stream`` that drops connections on purpose (and a fake
``GET /v1/stream/outcomes``, serving `FakeStream.outcomes`).

It serves a fixed list of events over raw HTTP/1.1 (chunked), continuing after the
``Last-Event-ID`` a client sends, and follows a script saying, per connection, how many
events to send before dropping it (abruptly: the chunked body is cut, as when a proxy or a
replica dies) or ending it cleanly without the outcome. It records every request's
``Last-Event-ID`` so a test can check what the client asked for.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Step:
    """What one connection does: send ``events`` events (None: all, and the outcome), then
    ``"drop"`` (cut the body) or ``"end"`` (finish it cleanly). ``status`` ≠ 200 answers
    that status with a JSON error instead. ``replay`` resends that many events before the
    asked position (a misbehaving server)."""

    events: int | None = None
    then: str = "drop"
    status: int = 200
    replay: int = 0


@dataclass
class FakeStream:
    task_id: str = "t-1"
    chunks: int = 20
    script: list[Step] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)
    #: What ``GET /v1/stream/outcomes`` sends: (id, event, data) as the server writes them.
    outcomes: list[tuple[str | None, str, dict[str, Any]]] = field(default_factory=list)

    def events(self) -> list[tuple[str | None, str, dict[str, Any]]]:
        out: list[tuple[str | None, str, dict[str, Any]]] = [("0:10", "progress", {"attempt": 1, "percent": 0.0, "message": "start", "at_ms": 1})]
        for i in range(self.chunks):
            out.append((f"0:{11 + i}", "chunk", {"attempt": 1, "seq": i, "text": f"tok{i} ", "at_ms": 2 + i}))
        task = {"task_id": self.task_id, "status": "completed", "outcome": {"status": "completed", "output": {"text": "done"}, "attempt": 1}}
        out.append((None, "outcome", task))
        return out


def _sse(id: str | None, event: str, data: dict[str, Any]) -> bytes:
    lines = [f"id: {id}"] if id else []
    lines += [f"event: {event}", f"data: {json.dumps(data)}", "", ""]
    return "\n".join(lines).encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        head = self.rfile.readline().decode("latin-1")
        headers: dict[str, str] = {}
        while True:
            line = self.rfile.readline().decode("latin-1").strip()
            if not line:
                break
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        fake = self.server.fake
        with self.server.lock:
            n = len(fake.requests)
            fake.requests.append({"path": head.split(" ")[1] if " " in head else "", **headers})
        step = fake.script[n] if n < len(fake.script) else Step()
        if step.status != 200:
            body = json.dumps({"error": {"code": "unavailable" if step.status == 503 else "no_task", "message": "scripted"}}).encode()
            self.wfile.write(f"HTTP/1.1 {step.status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            return
        if head.split(" ")[1].startswith("/v1/stream/outcomes"):
            self.serve_outcomes(step)
            return
        events = fake.events()
        start = 0
        last = headers.get("last-event-id")
        if last:
            start = next(i + 1 for i, (id, _, _) in enumerate(events) if id == last)
        start = max(0, start - step.replay)
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        self.wfile.write(_chunk(b": keep-alive\n\n"))
        todo = events[start:] if step.events is None else events[start : start + step.events]
        for id, event, data in todo:
            self.wfile.write(_chunk(_sse(id, event, data)))
            # An event type the SDK does not know: skipped by the client, not fatal.
            self.wfile.write(_chunk(_sse(None, "lagged", {"missed": 0})))
            self.wfile.flush()
        if step.events is not None and step.then == "drop":
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the body is cut mid-way
            return
        self.wfile.write(b"0\r\n\r\n")

    def serve_outcomes(self, step: Step) -> None:
        """The outcome stream: every event, each split over two chunks (a reader must join
        them), CRLF line ends on odd ones; then cut (``events`` given, ``then="drop"``) or end."""
        outcomes = self.server.fake.outcomes
        todo = outcomes if step.events is None else outcomes[: step.events]
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        self.wfile.write(_chunk(b": keep-alive\n\n"))
        for n, (id, event, data) in enumerate(todo):
            raw = _sse(id, event, data)
            if n % 2:
                raw = raw.replace(b"\n", b"\r\n")
            half = len(raw) // 2
            self.wfile.write(_chunk(raw[:half]))
            self.wfile.flush()
            self.wfile.write(_chunk(raw[half:]))
            self.wfile.flush()
        if step.events is not None and step.then == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(b"0\r\n\r\n")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: FakeStream) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake
        self.lock = threading.Lock()


class Running:
    def __init__(self, fake: FakeStream) -> None:
        self.fake = fake
        self.server = _Server(fake)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
