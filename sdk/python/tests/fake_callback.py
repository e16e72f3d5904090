"""A fake worker callback (agent protocol v1, §6) for `Context.delegate`: an ASGI app, served
by uvicorn on a real port (servers.Served), holding one attempt's token.

- ``POST /cb/<token>/children`` records the body and answers ``202 {"task_id":
  "<parent>.<n>"}`` (or ``submit_error``, a scripted error answer).
- ``GET /cb/<token>/children/<n>/outcome?wait_ms=`` records ``(n, wait_ms)`` and answers the
  next of ``outcomes[n]`` (a list of ``(status, body)``; the last one repeats); without a
  script, the child completes with ``{"echo": <its input>}``.
- Any other token, path or an unknown child is a 404, as the worker answers a callback that
  is not (or no longer) a running attempt.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

PENDING = "pending"


@dataclass
class FakeCallback:
    token: str = "tok-1"
    parent: str = "t-1"
    #: n -> the answers of its outcome polls, in order (the last one repeats).
    outcomes: dict[int, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    #: When set, what every submit answers: (status, body).
    submit_error: tuple[int, dict[str, Any]] | None = None
    submits: list[dict[str, Any]] = field(default_factory=list)
    polls: list[tuple[int, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def url(self, base: str) -> str:
        return f"{base}/cb/{self.token}"

    def child_id(self, n: int) -> str:
        return f"{self.parent}.{n}"

    @staticmethod
    def pending(task_id: str) -> tuple[int, dict[str, Any]]:
        return 202, {"task_id": task_id, "status": PENDING}

    @staticmethod
    def completed(task_id: str, output: Any, content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
        return 200, {"task_id": task_id, "status": "completed", "output": output, "content_type": content_type}

    @staticmethod
    def failed(task_id: str, status: str = "failed", kind: str = "rejected", message: str = "no") -> tuple[int, dict[str, Any]]:
        return 200, {"task_id": task_id, "status": status, "error_kind": kind, "message": message}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, answer = self.answer(scope["method"], scope["path"], parse_qs(scope.get("query_string", b"").decode()), body)
        data = json.dumps(answer).encode()
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})

    def answer(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> tuple[int, dict[str, Any]]:
        gone = 404, {"error": {"code": "no_attempt", "message": "no running attempt has this callback"}}
        parts = path.strip("/").split("/")
        if parts[:2] != ["cb", self.token] or len(parts) < 3 or parts[2] != "children":
            return gone
        with self.lock:
            if method == "POST" and len(parts) == 3:
                request = json.loads(body)
                self.submits.append(request)
                if self.submit_error is not None:
                    return self.submit_error
                return 202, {"task_id": self.child_id(request["n"])}
            if method == "GET" and len(parts) == 5 and parts[4] == "outcome":
                n = int(parts[3])
                self.polls.append((n, int(query["wait_ms"][0])))
                submitted = [s for s in self.submits if s["n"] == n]
                if not submitted:
                    return 404, {"error": {"code": "no_child", "message": f"no child {n}"}}
                script = self.outcomes.get(n)
                if not script:
                    return self.completed(self.child_id(n), {"echo": submitted[0]["input"]})
                return script.pop(0) if len(script) > 1 else script[0]
        return gone
