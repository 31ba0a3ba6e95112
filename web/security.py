"""Secure defaults for the dashboard: the secret key, cookie flags, response headers, the login rate limit."""

from __future__ import annotations

import ipaddress
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# every header a proxy may use to tell about the client: none of them reaches the app from an untrusted peer
FORWARDED_KEYS = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
                  "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_PREFIX", "HTTP_X_FORWARDED_BY", "HTTP_X_REAL_IP")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def _trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, proxies: Iterable[Network]) -> bool:
    return ip is not None and any(ip.version == net.version and ip in net for net in proxies)


def forwarded(peer: str, forwarded_for: str, forwarded_proto: str,
              proxies: Sequence[Network]) -> tuple[str, str | None]:
    """The client's address and scheme (None: as the connection's) for a request from `peer`.

    Only a trusted proxy's headers count. X-Forwarded-For is read from the right, where each proxy appends
    the address it saw, past the trusted proxies: the first address left of them is the client. Anything
    further left came from the client itself and proves nothing. X-Forwarded-Proto is the value the nearest
    proxy set (the last one).
    """
    if not _trusted(_ip(peer), proxies):
        return peer, None
    client = peer
    for item in reversed([x for x in forwarded_for.split(",") if x.strip()]):
        ip = _ip(item)
        if ip is None:
            break  # a broken chain: the last hop walked is as far as the proxies vouch for
        client = str(ip)
        if not _trusted(ip, proxies):
            break
    proto = forwarded_proto.split(",")[-1].strip().lower()
    return client, proto if proto in ("http", "https") else None


class ProxyHeaders:
    """WSGI middleware: the client address and scheme from a trusted reverse proxy's X-Forwarded-For and
    X-Forwarded-Proto ([web] trusted_proxies), so the login limit counts the real client and the Secure cookie
    flag follows the browser's HTTPS. From any other peer the proxy headers are removed unread."""

    def __init__(self, app: Callable[..., Any], trusted_proxies: Iterable[str]) -> None:
        self.app = app
        self.proxies = [ipaddress.ip_network(n, strict=False) for n in trusted_proxies]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        headers = {k: environ.pop(k) for k in FORWARDED_KEYS if k in environ}
        client, scheme = forwarded(environ.get("REMOTE_ADDR", ""), headers.get("HTTP_X_FORWARDED_FOR", ""),
                                   headers.get("HTTP_X_FORWARDED_PROTO", ""), self.proxies)
        environ["REMOTE_ADDR"] = client
        if scheme:
            environ["wsgi.url_scheme"] = scheme
        return self.app(environ, start_response)


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
