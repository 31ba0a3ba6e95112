"""Fixtures for the dashboard: a migrated SQLite store, the app with CSRF on, a logged-in client."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash
from werkzeug.test import TestResponse

from screener import config, store
from screener.store import Call, User, utcnow
from web import create_app

PASSWORD = "correct horse battery"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
_HASHES: dict[str, str] = {}


def password_hash(password: str) -> str:
    """scrypt as `screener user add` makes it; cached, because each costs tens of milliseconds."""
    if password not in _HASHES:
        _HASHES[password] = generate_password_hash(password, method="scrypt")
    return _HASHES[password]


@pytest.fixture
def web_cfg(tmp_path: Path, db_url: str) -> config.Config:
    """The dashboard's config; every web test runs on SQLite and again on PostgreSQL (`db_url`)."""
    p = tmp_path / "config.toml"
    p.write_text(f'data_dir = "{tmp_path / "data"}"\n[database]\nurl = "{db_url}"\n', encoding="utf-8")
    return config.load(p)


@pytest.fixture
def web_store(web_cfg: config.Config) -> Iterator[store.Store]:
    st = store.Store(web_cfg.database.url)
    store.upgrade(st)
    with st.write() as s:
        s.add(User(login="admin", password_hash=password_hash(PASSWORD)))
    yield st
    st.dispose()


@pytest.fixture
def app(web_cfg: config.Config, web_store: store.Store) -> Flask:
    return create_app(web_cfg, store=web_store, testing=True)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _csrf_token(client: FlaskClient, url: str = "/login") -> str:
    m = _TOKEN.search(client.get(url).get_data(as_text=True))
    assert m, f"no CSRF token on {url}"
    return m[1]


@pytest.fixture
def csrf_token() -> Callable[..., str]:
    """csrf_token(client, url="/login"): the token from a form on that page."""
    return _csrf_token


@dataclass
class Session:
    """A logged-in client whose posts carry the CSRF token, as a browser's forms do."""

    client: FlaskClient

    def get(self, url: str, **kw: Any) -> TestResponse:
        return self.client.get(url, **kw)

    def post(self, url: str, data: dict[str, Any] | None = None, **kw: Any) -> TestResponse:
        data = dict(data or {})
        data.setdefault("csrf_token", _csrf_token(self.client, "/settings"))
        return self.client.post(url, data=data, **kw)


def _login(client: FlaskClient, user: str = "admin", password: str = PASSWORD,
           headers: dict[str, str] | None = None) -> TestResponse:
    return client.post("/login", data={"login": user, "password": password, "csrf_token": _csrf_token(client)},
                       headers=headers or {})


@pytest.fixture
def login() -> Callable[..., TestResponse]:
    """login(client, user="admin", password=PASSWORD): post the login form."""
    return _login


@pytest.fixture
def hash_password() -> Callable[[str], str]:
    return password_hash


@pytest.fixture
def auth(client: FlaskClient) -> Session:
    r = _login(client)
    assert r.status_code == 302, r.get_data(as_text=True)
    return Session(client)


@pytest.fixture
def add_call(web_store: store.Store) -> Callable[..., int]:
    """Insert a call through the store; returns its id."""

    def add(e164: str | None = "+390212345678", *, ago: timedelta = timedelta(minutes=5),
            at: datetime | None = None, **kw: Any) -> int:
        values: dict[str, Any] = {"decision": "screen", "outcome": "missed", "name": "", "caller_raw": e164 or "",
                                  "e164": e164, "number_type": "fixed_line", "country": "IT", "duration_s": 7.0}
        values.update(kw)
        with web_store.write() as s:
            c = Call(started_at=at or utcnow() - ago, **values)
            s.add(c)
            s.flush()
            return c.id

    return add
