"""Secure defaults for the dashboard: the secret key, cookie flags, response headers, the login rate limit."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from flask import Flask, Response, request
from flask.sessions import SecureCookieSessionInterface

from screener.config import Config

CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self'; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'; form-action 'self'")
SECRET_FILE = "web_secret"


def load_secret(cfg: Config, data_dir: Path) -> str:
    """cfg.web.secret, else the contents of cfg.web.secret_file, else data_dir/web_secret (created once, 0600)."""
    if cfg.web.secret:
        return cfg.web.secret
    if cfg.web.secret_file:
        return cfg.resolve(cfg.web.secret_file).read_text(encoding="utf-8").strip()
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_urlsafe(48))
    return path.read_text(encoding="utf-8").strip()


class SessionInterface(SecureCookieSessionInterface):
    """Signed cookie sessions whose Secure flag follows the request: set when served over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(request) and request.is_secure


def _headers(response: Response) -> Response:
    h = response.headers
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "static":
        # Pages show personal data: keep them out of shared and back/forward caches.
        h.setdefault("Cache-Control", "no-store")
    return response


class RateLimiter:
    """At most `limit` events per `window` seconds per key (a sliding window kept in memory)."""

    def __init__(self, limit: int = 5, window: float = 60.0, clock: object = time.monotonic) -> None:
        self.limit, self.window = limit, window
        self._clock = clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._events.setdefault(key, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def blocked(self, key: str) -> float:
        """Seconds until `key` may try again; 0 when it may now."""
        with self._lock:
            now = self._clock()  # type: ignore[operator]
            q = self._recent(key, now)
            if len(q) < self.limit:
                if not q:
                    self._events.pop(key, None)
                return 0.0
            return max(q[0] + self.window - now, 0.0)

    def hit(self, key: str) -> None:
        with self._lock:
            now = self._clock()  # type: ignore[operator]
            self._recent(key, now).append(now)
            self._prune(now)

    def try_hit(self, keys: Sequence[str]) -> tuple[float, float]:
        """Count one attempt against every key at once if all of them are under the limit: (0, stamp).
        Otherwise count nothing: (seconds until the last of them may try again, 0).

        Check and count happen under one lock, so N concurrent attempts never get more than `limit` through
        (checking blocked() and calling hit() afterwards let every request that checked first pass)."""
        with self._lock:
            now = self._clock()  # type: ignore[operator]
            wait = 0.0
            for key in keys:
                q = self._recent(key, now)
                if len(q) >= self.limit:
                    wait = max(wait, q[0] + self.window - now, 1e-3)
            if wait:
                return wait, 0.0
            for key in keys:
                self._events[key].append(now)
            self._prune(now)
            return 0.0, now

    def forgive(self, keys: Sequence[str], stamp: float) -> None:
        """Take back an attempt try_hit() counted (it succeeded, or it never ran)."""
        with self._lock:
            for key in keys:
                q = self._events.get(key)
                if q is None:
                    continue
                try:
                    q.remove(stamp)
                except ValueError:
                    pass
                if not q:
                    del self._events[key]

    def _prune(self, now: float) -> None:
        if len(self._events) > 10_000:  # a flood of addresses must not grow memory without bound
            for k in [k for k, q in self._events.items() if not q or q[-1] <= now - self.window]:
                del self._events[k]

    def reset(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)


def init_app(app: Flask) -> None:
    """Cookie flags, the session interface and the security headers on every response."""
    app.session_interface = SessionInterface()
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_NAME="screener_session",
        PERMANENT_SESSION_LIFETIME=7 * 24 * 3600,
        MAX_CONTENT_LENGTH=16 * 1024 * 1024,
    )
    app.after_request(_headers)
