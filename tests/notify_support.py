"""A real notification endpoint for the tests: an HTTP server on 127.0.0.1 that apprise's json:// URL posts to
(no tests here). Modes: "ok" (200), "fail" (500), "hang" (holds each request until released)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Endpoint:
    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.received: list[tuple[float, dict[str, Any]]] = []  # (monotonic arrival, JSON body)
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.hanging = threading.Event()  # a request is being held
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.received.append((time.monotonic(), json.loads(body or b"{}")))
                outer.arrived.set()
                if outer.mode == "hang":
                    outer.hanging.set()
                    outer.release.wait(30)
                code = 500 if outer.mode == "fail" else 200
                try:
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"json://127.0.0.1:{self.port}/notify"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait(self, count: int, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > end:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """A json:// URL to a loopback port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"json://127.0.0.1:{port}/notify"
