"""A local HTTP receiver for alert webhooks on 127.0.0.1: records every POST, answers with scripted statuses."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self


@dataclass(frozen=True)
class Received:
    """One POST as the receiver saw it."""

    path: str
    headers: dict[str, str]
    raw: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


class WebhookReceiver:
    """An HTTP server in a thread. `script` lists (status, delay seconds) answers, then `default_status`."""

    def __init__(self, default_status: int = 200) -> None:
        self.default_status = default_status
        self.token = f"T0KEN-{secrets.token_hex(8)}"
        self.received: list[Received] = []
        self._script: list[tuple[int, float]] = []
        self._lock = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )

    @property
    def url(self) -> str:
        """The webhook URL; its path carries a token, the way Slack-style webhooks do."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/hooks/{self.token}"

    def script(self, *answers: int | tuple[int, float]) -> None:
        """Answer the next POSTs with these statuses (optionally after a delay), then with default_status."""
        with self._lock:
            self._script.extend(a if isinstance(a, tuple) else (a, 0.0) for a in answers)

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float) -> Received | None:
        """The first received POST matching the predicate, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for request in self.received:
                    if predicate(request):
                        return request
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._lock.wait(remaining)

    def _next_answer(self) -> tuple[int, float]:
        with self._lock:
            return self._script.pop(0) if self._script else (self.default_status, 0.0)

    def _record(self, request: Received) -> None:
        with self._lock:
            self.received.append(request)
            self._lock.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, delay = receiver._next_answer()
                receiver._record(Received(self.path, dict(self.headers.items()), body, status))
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"ok": true}' if status < 300 else b'{"ok": false}')
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
