"""Login, logout, the login requirement, CSRF, the rate limit, cookies, headers and the secret key."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from screener import config, store
from screener.store import User
from web import create_app
from web.auth import LOGIN_LIMIT, MAX_CHECKS
from web.security import RateLimiter, load_secret

Session = Any
PASSWORD = "correct horse battery"  # the admin's, from conftest.py


GET_ROUTES = ["/", "/calls", "/lists", "/lists/1/edit", "/lists/export.csv", "/numbers/+390212345678",
              "/voicemail", "/voicemail/1/audio", "/prompts", "/prompts/challenge/en/shipped.wav", "/settings"]
POST_ROUTES = ["/logout", "/lists/add", "/lists/1/edit", "/lists/1/delete", "/lists/quick", "/lists/undo",
               "/lists/preset", "/lists/import", "/numbers/+390212345678/note", "/voicemail/1/heard",
               "/voicemail/1/delete", "/prompts/challenge/en/upload", "/prompts/challenge/en/restore"]


@pytest.mark.parametrize("url", GET_ROUTES)
def test_every_page_requires_login(client: FlaskClient, url: str) -> None:
    r = client.get(url)
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/login?next=")


@pytest.mark.parametrize("url", [u for u in POST_ROUTES if u != "/logout"])
def test_post_without_login_is_refused(client: FlaskClient, csrf_token: Callable[..., str], url: str) -> None:
    assert client.post(url, data={"csrf_token": csrf_token(client)}).status_code == 401


@pytest.mark.parametrize("url", POST_ROUTES + ["/language", "/login"])
def test_every_post_needs_the_csrf_token(auth: Session, url: str) -> None:
    r = auth.client.post(url, data={"op": "block +390212345678", "login": "admin"})
    assert r.status_code == 400
    assert "form expired" in r.get_data(as_text=True)
    r = auth.client.post(url, data={"csrf_token": "forged"})
    assert r.status_code == 400


def test_login_page_and_static_are_public(client: FlaskClient) -> None:
    assert client.get("/login").status_code == 200
    for url in ("/static/style.css", "/static/app.js"):
        with client.get(url) as r:
            assert r.status_code == 200


def test_login_then_logout_really_ends_the_session(client: FlaskClient, login: Callable[..., Any],
                                                     csrf_token: Callable[..., str]) -> None:
    r = login(client)
    assert r.status_code == 302 and r.headers["Location"] == "/"
    assert client.get("/").status_code == 200
    stolen = client.get_cookie("screener_session").value
    token = csrf_token(client, "/settings")
    r = client.post("/logout", data={"csrf_token": token})
    assert r.status_code == 302 and r.headers["Location"] == "/login"
    assert client.get("/").status_code == 302
    # A copy of the cookie taken before logout is worthless afterwards.
    client.set_cookie("screener_session", stolen)
    assert client.get("/").status_code == 302


def test_wrong_password_and_unknown_user(client: FlaskClient, login: Callable[..., Any]) -> None:
    r = login(client, password="wrong")
    assert r.status_code == 401
    assert "Wrong user name or password" in r.get_data(as_text=True)
    assert login(client, user="nobody").status_code == 401
    assert client.get("/").status_code == 302


def test_sixth_failed_login_in_a_minute_gets_429(client: FlaskClient, login: Callable[..., Any],
                                                 csrf_token: Callable[..., str]) -> None:
    for _ in range(5):
        assert login(client, password="wrong").status_code == 401
    r = login(client)  # even the right password: the address is locked out for now
    assert r.status_code == 429
    assert 0 < int(r.headers["Retry-After"]) <= 61
    other = login(client, headers={"X-Forwarded-For": "10.9.9.9"})  # proxy headers are not trusted
    assert other.status_code == 429
    fresh = client.application.test_client()
    r = fresh.post("/login", data={"login": "admin", "password": "x", "csrf_token": csrf_token(fresh)},
                   environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert r.status_code == 429  # the account is limited too, from any address
    r = fresh.post("/login", data={"login": "other", "password": "x", "csrf_token": csrf_token(fresh)},
                   environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert r.status_code == 401


def test_rate_limiter_window_slides() -> None:
    now = [100.0]
    rl = RateLimiter(limit=2, window=60, clock=lambda: now[0])
    rl.hit("a")
    rl.hit("a")
    assert rl.blocked("a") == pytest.approx(60)
    assert rl.blocked("b") == 0
    now[0] += 59
    assert rl.blocked("a") == pytest.approx(1)
    now[0] += 1.5
    assert rl.blocked("a") == 0


@pytest.mark.parametrize("target, expected", [
    ("/calls?outcome=blocked", "/calls?outcome=blocked"),
    ("//evil.example/", "/"),
    ("https://evil.example/", "/"),
    ("/\\evil.example", "/"),
])
def test_login_redirects_only_to_local_paths(client: FlaskClient, csrf_token: Callable[..., str], target: str,
                                            expected: str) -> None:
    r = client.post("/login", data={"login": "admin", "password": "correct horse battery", "next": target,
                                    "csrf_token": csrf_token(client)})
    assert r.headers["Location"] == expected


def test_security_headers_and_cookie_flags(client: FlaskClient) -> None:
    r = client.get("/login")
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Cache-Control"] == "no-store"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    r = client.get("/login", base_url="https://localhost")
    assert "; Secure" in r.headers["Set-Cookie"]


def test_no_inline_script_in_pages(auth: Session) -> None:
    for url in ["/", "/calls", "/lists", "/settings", "/prompts", "/voicemail"]:
        html = auth.get(url).get_data(as_text=True)
        assert html.count("<script") == 1 and 'src="/static/app.js"' in html
        assert " style=" not in html and "onclick" not in html


def test_debug_is_off_and_default_bind_is_loopback(app: object, web_cfg: config.Config) -> None:
    assert app.debug is False  # type: ignore[attr-defined]
    assert web_cfg.web.host == "127.0.0.1"


def test_secret_generated_once_with_mode_0600(web_cfg: config.Config, tmp_path: object) -> None:
    data = web_cfg.resolve(web_cfg.data_dir)
    first = load_secret(web_cfg, data)
    path = data / "web_secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(first) >= 32 and load_secret(web_cfg, data) == first
    explicit = replace(web_cfg, web=replace(web_cfg.web, secret="from-config"))
    assert load_secret(explicit, data) == "from-config"
    (data / "other").write_text("from-file\n")
    from_file = replace(web_cfg, web=replace(web_cfg.web, secret_file=str(data / "other")))
    assert load_secret(from_file, data) == "from-file"


def test_a_restart_ends_sessions(web_cfg: config.Config, web_store: store.Store, login: Callable[..., Any]) -> None:
    # Tokens live in memory: a new process logs everyone out, the safe direction.
    a = create_app(web_cfg, store=web_store).test_client()
    login(a)
    cookie = a.get_cookie("screener_session").value
    b = create_app(web_cfg, store=web_store).test_client()
    b.set_cookie("screener_session", cookie)
    assert b.get("/").status_code == 302


def test_password_change_ends_sessions(auth: Session, web_store: store.Store,
                                       hash_password: Callable[[str], str]) -> None:
    from sqlalchemy import update

    from screener.store import User

    assert auth.get("/").status_code == 200
    with web_store.write() as s:
        s.execute(update(User).values(password_hash=hash_password("new password")))
    assert auth.get("/").status_code == 302


# --- the login limit under concurrency --------------------------------------------------------------------


class CountingCheck:
    """Stands in for werkzeug's check_password_hash: counts checks and how many ran at once."""

    def __init__(self, real: Callable[[str, str], bool], seconds: float = 0.05) -> None:
        self.real, self.seconds = real, seconds
        self.calls = self.running = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, pwhash: str, password: str) -> bool:
        with self.lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.seconds)  # scrypt's time, so that attempts really overlap
            return self.real(pwhash, password)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> CountingCheck:
    import web.auth

    counter = CountingCheck(web.auth.check_password_hash)
    monkeypatch.setattr(web.auth, "check_password_hash", counter)
    return counter


def _storm(app: Flask, csrf_token: Callable[..., str], attempts: list[tuple[str, str, str]]) -> list[int]:
    """Post every (address, login, password) at once, one thread and client each; the status codes."""
    clients = [app.test_client() for _ in attempts]
    tokens = [csrf_token(c) for c in clients]
    start = threading.Barrier(len(attempts))

    def attempt(i: int) -> int:
        addr, name, password = attempts[i]
        start.wait()
        return clients[i].post("/login", data={"login": name, "password": password, "csrf_token": tokens[i]},
                               environ_base={"REMOTE_ADDR": addr}).status_code

    with ThreadPoolExecutor(len(attempts)) as pool:
        return list(pool.map(attempt, range(len(attempts))))


@pytest.mark.parametrize("spread", ["one address", "100 addresses", "100 addresses, unknown account"])
def test_100_concurrent_wrong_passwords_get_at_most_5_checks(app: Flask, csrf_token: Callable[..., str],
                                                             checks: CountingCheck, spread: str) -> None:
    name = "nobody" if "unknown" in spread else "admin"
    attempts = [("10.1.0.1" if spread == "one address" else f"10.1.{i // 250}.{i % 250 + 1}", name, f"wrong{i}")
                for i in range(100)]
    codes = _storm(app, csrf_token, attempts)
    assert checks.calls <= LOGIN_LIMIT and checks.most <= MAX_CHECKS
    assert codes.count(401) == checks.calls and codes.count(429) + codes.count(503) == 100 - checks.calls
    print(f"{spread}: {checks.calls} checks, at most {checks.most} at once, codes {sorted(set(codes))}")


def test_at_most_2_checks_at_once_across_addresses_and_accounts(app: Flask, csrf_token: Callable[..., str],
                                                                checks: CountingCheck) -> None:
    attempts = [(f"10.2.0.{i + 1}", f"user{i}", "wrong") for i in range(30)]
    codes = _storm(app, csrf_token, attempts)
    assert checks.most == MAX_CHECKS
    assert set(codes) <= {401, 503} and checks.calls == codes.count(401)


def test_a_busy_check_says_try_again_and_does_not_count(app: Flask, csrf_token: Callable[..., str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import web.auth

    monkeypatch.setattr(web.auth, "CHECK_WAIT", 0.01)
    slots = app.extensions["screener.login_checks"]
    for _ in range(MAX_CHECKS):
        slots.acquire()
    client = app.test_client()
    for _ in range(LOGIN_LIMIT + 2):
        r = client.post("/login", data={"login": "admin", "password": PASSWORD, "csrf_token": csrf_token(client)})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert "Try again in a moment" in r.get_data(as_text=True)
    for _ in range(MAX_CHECKS):
        slots.release()
    r = client.post("/login", data={"login": "admin", "password": PASSWORD, "csrf_token": csrf_token(client)})
    assert r.status_code == 302


def _post_login(client: FlaskClient, csrf_token: Callable[..., str], addr: str, password: str) -> int:
    return client.post("/login", data={"login": "admin", "password": password, "csrf_token": csrf_token(client)},
                       environ_base={"REMOTE_ADDR": addr}).status_code


def test_a_locked_account_still_lets_in_a_browser_that_logged_in_before(
        app: Flask, csrf_token: Callable[..., str], web_store: store.Store,
        hash_password: Callable[[str], str]) -> None:
    owner = app.test_client()
    assert _post_login(owner, csrf_token, "192.168.1.10", PASSWORD) == 302
    owner.post("/logout", data={"csrf_token": csrf_token(owner, "/settings")})
    attacker = app.test_client()
    for i in range(LOGIN_LIMIT):
        assert _post_login(attacker, csrf_token, f"203.0.113.{i + 1}", "guess") == 401
    assert _post_login(attacker, csrf_token, "203.0.113.99", PASSWORD) == 429  # the account is locked...
    new_browser = app.test_client()
    assert _post_login(new_browser, csrf_token, "192.168.1.11", PASSWORD) == 429
    assert _post_login(owner, csrf_token, "192.168.1.10", PASSWORD) == 302  # ...but not for the owner's browser
    forged = app.test_client()
    forged.set_cookie("screener_device", "1.forged.signature", path="/login")
    assert _post_login(forged, csrf_token, "192.168.1.12", PASSWORD) == 429
    # `screener user add admin` with a new password: the count belongs to the old one
    with web_store.write() as s:
        s.execute(update(User).values(password_hash=hash_password("a brand new password")))
    assert _post_login(new_browser, csrf_token, "192.168.1.11", "a brand new password") == 302


def test_a_login_never_waits_for_the_write_lock(app: Flask, csrf_token: Callable[..., str], client: FlaskClient,
                                                web_store: store.Store) -> None:
    token = csrf_token(client)
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with web_store.write() as s:  # BEGIN IMMEDIATE on SQLite: what the SIP service does for a call row
            s.execute(update(User).where(User.login == "nobody").values(login="nobody"))
            holding.set()
            release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert holding.wait(5)
        started = time.monotonic()
        r = client.post("/login", data={"login": "admin", "password": "wrong", "csrf_token": token})
        assert r.status_code == 401 and time.monotonic() - started < 2
        r = client.post("/login", data={"login": "admin", "password": PASSWORD, "csrf_token": token})
        assert r.status_code == 302 and time.monotonic() - started < 2
    finally:
        release.set()
        t.join()
