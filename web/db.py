"""The dashboard's database access: one session per request, opened lazily on `g` and closed on teardown.

GET requests read in a deferred transaction; other methods get an immediate (write) session, committed after
the view returned a non-error response so that a failed commit still becomes a 500 the user sees. A view
marked @read_only gets a read session for every method: the login (whose password check takes a fifth of a
second the SIP service must not wait for) and the CSV import (which writes in its own short transactions).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, request
from flask.typing import RouteCallable
from sqlalchemy.orm import Session

from screener.config import Config
from screener.store import Store

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
T = TypeVar("T")


def init_app(app: Flask, cfg: Config, store: Store) -> None:
    """Attach the config and store to `app` and register the session lifecycle hooks."""
    app.extensions["screener.config"] = cfg
    app.extensions["screener.store"] = store
    app.extensions["screener.cache"] = TTLCache()
    app.after_request(_commit)
    app.teardown_appcontext(_close)


class TTLCache:
    """A few aggregates that are costly to compute and fine to show a little late (per process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._items: dict[Hashable, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def get(self, key: Hashable, ttl: float, compute: Callable[[], T]) -> T:
        now = self._clock()
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]  # type: ignore[no-any-return]
        value = compute()
        with self._lock:
            if len(self._items) > 256:
                self._items = {k: v for k, v in self._items.items() if v[0] > now}
            self._items[key] = (now + ttl, value)
        return value


def cached(key: Hashable, ttl: float, compute: Callable[[], T]) -> T:
    """`compute()`, remembered for `ttl` seconds under `key` in this app."""
    cache: TTLCache = current_app.extensions["screener.cache"]
    return cache.get(key, ttl, compute)


def clear_cache() -> None:
    """Forget cached aggregates: this process changed data outside the request's session."""
    current_app.extensions["screener.cache"].clear()


def config() -> Config:
    return current_app.extensions["screener.config"]  # type: ignore[no-any-return]


def store() -> Store:
    return current_app.extensions["screener.store"]  # type: ignore[no-any-return]


R = TypeVar("R", bound=RouteCallable)


def read_only(view: R) -> R:
    """Mark `view` as one whose requests of any method get a read session (never the write lock)."""
    view.screener_read_only = True  # type: ignore[attr-defined]
    return view


def _writing() -> bool:
    if request.method in _SAFE_METHODS:
        return False
    view = current_app.view_functions.get(request.endpoint or "")
    return not getattr(view, "screener_read_only", False)


def session() -> Session:
    """The request's session; write requests take the write lock up front (BEGIN IMMEDIATE on SQLite)."""
    s: Session | None = g.get("db_session")
    if s is None:
        g.db_writing = writing = _writing()
        s = store().session_factory(writing=writing)()
        s.begin()
        g.db_session = s
    return s


def _commit(response: Response) -> Response:
    s: Session | None = g.get("db_session")
    if s is not None and s.in_transaction() and response.status_code < 400 and g.get("db_writing"):
        s.commit()
        # This process changed data: cached aggregates may be stale now (other writers are covered by the TTL).
        current_app.extensions["screener.cache"].clear()
    return response


def _close(_exc: BaseException | None) -> None:
    s: Session | None = g.pop("db_session", None)
    if s is not None:
        s.close()  # rolls back whatever was not committed


def data_path() -> Path:
    """The data directory (voicemail, custom prompts, the generated secret)."""
    return config().data_path
