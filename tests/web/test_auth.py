"""Login, logout, the login requirement, CSRF, the rate limit, cookies, headers and the secret key."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from flask.testing import FlaskClient

from screener import config, store
from web import create_app
from web.security import RateLimiter, load_secret

Session = Any


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
