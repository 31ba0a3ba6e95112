"""First run in the browser: no user = only the setup page; the setup code; the line's profiles; the check in
words; settings edited in the browser (secrets write-only); users managed in the browser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from screener import config, store, users
from screener.store import ListEntry, User, utcnow
from web import create_app
from web.setup import verdict

_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def _token(client: FlaskClient, url: str) -> str:
    m = _TOKEN.search(client.get(url).get_data(as_text=True))
    assert m, url
    return m[1]


@pytest.fixture
def empty_store(web_cfg: config.Config) -> Iterator[store.Store]:
    st = store.Store(web_cfg.database.url)
    store.upgrade(st)
    yield st
    st.dispose()


@pytest.fixture
def fresh(web_cfg: config.Config, empty_store: store.Store) -> FlaskClient:
    """A dashboard with no user yet, and its setup code issued."""
    users.issue_code(web_cfg.data_path)
    return create_app(web_cfg, store=empty_store, testing=True).test_client()


def _code(cfg: config.Config) -> str:
    return (cfg.data_path / users.CODE_FILE).read_text().strip()


def _first_user(client: FlaskClient, code: str, login: str = "anna", password: str = "correct horse",
                again: str | None = None) -> object:
    return client.post("/setup/first-user", data={
        "csrf_token": _token(client, "/setup/first-user"), "code": code, "login": login, "password": password,
        "again": password if again is None else again})


@pytest.mark.parametrize("url", ["/", "/calls", "/login", "/settings", "/setup", "/settings/users"])
def test_without_a_user_every_page_leads_to_the_setup_page(fresh: FlaskClient, url: str) -> None:
    r = fresh.get(url)
    assert r.status_code == 303 and r.headers["Location"].endswith("/setup/first-user")


def test_the_first_user_needs_the_code_which_then_expires(fresh: FlaskClient, web_cfg: config.Config,
                                                         empty_store: store.Store) -> None:
    page = fresh.get("/setup/first-user").get_data(as_text=True)
    assert "Setup code" in page and "printed on the console" in page
    code = _code(web_cfg)
    wrong = "00000000" if code != "00000000" else "11111111"
    r = _first_user(fresh, wrong)
    assert r.status_code == 400 and "Wrong setup code" in r.get_data(as_text=True)
    r = _first_user(fresh, f"{code[:4]}-{code[4:]}", again="something else")
    assert r.status_code == 400 and "The two passwords differ." in r.get_data(as_text=True)
    r = _first_user(fresh, code)
    assert r.status_code == 302 and r.headers["Location"] == "/setup"
    assert not (web_cfg.data_path / users.CODE_FILE).exists()
    with empty_store.read() as s:
        assert s.scalars(select(User.login)).all() == ["anna"]
    assert fresh.get("/setup").status_code == 200  # logged in
    assert fresh.get("/").status_code == 200
    # used: the page is gone, the code opens nothing
    other = create_app(web_cfg, store=empty_store, testing=True).test_client()
    assert other.get("/setup/first-user").headers["Location"] == "/login"
    assert other.get("/calls").headers["Location"].startswith("/login")


def test_setup_codes_are_limited_like_logins(fresh: FlaskClient, web_cfg: config.Config) -> None:
    for _ in range(5):
        assert _first_user(fresh, "99999999").status_code == 400
    r = _first_user(fresh, _code(web_cfg))  # the right one, too late
    assert r.status_code == 429 and "Too many wrong setup codes" in r.get_data(as_text=True)
    assert r.headers["Retry-After"]


def test_no_code_file_opens_nothing(fresh: FlaskClient, web_cfg: config.Config) -> None:
    users.clear_code(web_cfg.data_path)
    assert _first_user(fresh, "").status_code == 400


@pytest.fixture
def owner(fresh: FlaskClient, web_cfg: config.Config) -> FlaskClient:
    assert _first_user(fresh, _code(web_cfg)).status_code == 302
    return fresh


def _post(client: FlaskClient, url: str, data: dict[str, str]) -> object:
    return client.post(url, data={"csrf_token": _token(client, "/settings"), **data})


def test_the_fritzbox_profile_writes_the_file_fills_the_preset_and_checks(owner: FlaskClient,
                                                                         web_cfg: config.Config,
                                                                         empty_store: store.Store) -> None:
    page = owner.get("/setup").get_data(as_text=True)
    for title in ("FRITZ!Box in Italy", "Straight to the provider", "Another router"):
        assert title in page
    form = owner.get("/setup/line/fritzbox_it").get_data(as_text=True)
    assert 'value="fritz.box"' in form and "Dispositivi di telefonia" in form
    r = _post(owner, "/setup/line/fritzbox_it", {"sip.server": "fritz.box", "sip.username": "screener",
                                                 "sip.password": "pw-123456"})
    assert r.status_code == 302 and r.headers["Location"].startswith("/setup/check?t=")
    cfg = config.load(web_cfg.path)
    assert (cfg.sip.server, cfg.sip.username, cfg.sip.password) == ("fritz.box", "screener", "pw-123456")
    assert (cfg.screening.block_action, cfg.screening.language, cfg.screening.presets) == ("hangup", "it", ("it",))
    with empty_store.read() as s:
        assert "+390844*" in s.scalars(select(ListEntry.pattern)).all()
    # the dashboard speaks Italian now; no service runs here, which the check says at once
    page = owner.get(r.headers["Location"]).get_data(as_text=True)
    assert 'lang="it"' in page and "result failed" in page and "make run" in page


def test_a_bad_answer_is_named_and_nothing_is_written(owner: FlaskClient, web_cfg: config.Config) -> None:
    before = Path(web_cfg.path).read_bytes()
    r = _post(owner, "/setup/line/other_router", {"sip.server": "192.168.1.1:99999", "sip.username": "screener",
                                                  "sip.password": "pw-123456"})
    body = r.get_data(as_text=True)
    assert r.status_code == 400 and "sip.port must be an integer 1-65535, got 99999" in body
    assert 'value="192.168.1.1:99999"' in body and "pw-123456" not in body  # typed kept, password not echoed
    r = _post(owner, "/setup/line/other_router", {"sip.server": "192.168.1.1", "sip.username": "screener",
                                                  "sip.password": ""})
    assert r.status_code == 400 and "The password is needed." in r.get_data(as_text=True)
    assert Path(web_cfg.path).read_bytes() == before


@pytest.mark.parametrize(("state", "error", "css", "words"), [
    ("registered", "", "registered", "Registered: screener is now a phone on your line."),
    ("registering", "", "pending", "Checking the registration"),
    ("failed", "no answer from 192.168.178.1:5060", "failed", "The registrar was not reached"),
    ("failed", "cannot resolve fritz.box: NXDOMAIN", "failed", "The registrar was not reached"),
    ("failed", "403 Forbidden: wrong password?", "failed", "refused the user name or password (403 Forbidden"),
    ("failed", "401 Unauthorized: wrong user name or password?", "failed", "refused the user name or password"),
    ("failed", "404 Not Found: unknown user name?", "failed", "does not know this user name"),
    ("failed", "500 Server Error", "failed", "Registration failed: 500 Server Error"),
    ("not_configured", "sip.password is empty", "pending", "no account yet"),
])
def test_the_registration_result_in_words(app: Flask, state: str, error: str, css: str, words: str) -> None:
    with app.test_request_context("/"):
        got_css, got_words = verdict(state, error, True)
        assert got_css == css and words in got_words
        assert verdict(state, error, False)[1].startswith("The SIP service is not running")


def test_the_check_page_shows_a_status_newer_than_the_save(auth, web_store: store.Store) -> None:
    saved = utcnow()
    with web_store.write() as s:
        store.write_heartbeat(s, "failed", "403 Forbidden: wrong password?", saved + timedelta(seconds=1), 1,
                              now=utcnow())
    page = auth.get(f"/setup/check?t={saved.timestamp():.3f}").get_data(as_text=True)
    assert "refused the user name or password" in page and "http-equiv" not in page
    with web_store.write() as s:
        store.write_heartbeat(s, "registered", "", saved + timedelta(seconds=2), 1, now=utcnow())
    page = auth.get(f"/setup/check?t={saved.timestamp():.3f}").get_data(as_text=True)
    assert "Registered" in page and "Make a test call" in page
    # a status older than the save is the old settings': wait
    later = (saved + timedelta(seconds=10)).timestamp()
    page = auth.get(f"/setup/check?t={later:.3f}").get_data(as_text=True)
    assert "Checking the registration" in page and 'http-equiv="refresh"' in page


def test_settings_are_edited_in_the_browser_and_secrets_never_shown(auth, web_cfg: config.Config) -> None:
    page = auth.get("/settings").get_data(as_text=True)
    assert 'name="screening.block_action" value="decline"' in page
    r = auth.post("/settings", {"screening.block_action": "hangup", "screening.screen_delay": "3",
                                "sip.password": "hidden-pw-1"})
    assert r.status_code == 302 and r.headers["Location"].startswith("/setup/check")
    cfg = config.load(web_cfg.path)
    assert (cfg.screening.block_action, cfg.screening.screen_delay, cfg.sip.password) == ("hangup", 3.0, "hidden-pw-1")
    page = auth.get("/settings").get_data(as_text=True)
    assert "hidden-pw-1" not in page and 'name="screening.block_action" value="hangup"' in page
    # empty secret: unchanged; a screening change alone applies from the next call
    r = auth.post("/settings", {"screening.screen_delay": "4", "sip.password": ""})
    assert r.status_code == 302 and r.headers["Location"] == "/settings"
    assert "It applies from the next call." in auth.get("/settings").get_data(as_text=True)
    assert config.load(web_cfg.path).sip.password == "hidden-pw-1"
    before = Path(web_cfg.path).read_bytes()
    r = auth.post("/settings", {"screening.decline_code": "486", "screening.screen_delay": "9"})
    body = r.get_data(as_text=True)
    assert r.status_code == 400 and "screening.decline_code must be one of 603, 607, got 486" in body
    assert 'value="486"' in body and 'aria-invalid="true"' in body
    assert Path(web_cfg.path).read_bytes() == before


def test_users_are_managed_in_the_browser(auth, web_store: store.Store) -> None:
    r = auth.post("/settings/users", {"login": "bruno", "password": "long enough", "again": "long enough"})
    assert r.status_code == 302
    r = auth.post("/settings/users", {"login": "carla", "password": "short", "again": "short"})
    assert r.status_code == 400 and "at least 8 characters" in r.get_data(as_text=True)
    page = auth.get("/settings/users").get_data(as_text=True)
    assert "bruno" in page and "admin" in page
    r = auth.post("/settings/users", {"login": "bruno", "password": "another one", "again": "another one"})
    assert r.status_code == 302 and "Password of bruno changed." in auth.get("/settings/users").get_data(as_text=True)
    assert auth.post("/settings/users/remove", {"login": "bruno"}).status_code == 302
    with web_store.read() as s:
        assert s.scalars(select(User.login)).all() == ["admin"]
    r = auth.post("/settings/users/remove", {"login": "admin"})
    assert r.status_code == 400 and "The last user cannot be removed" in r.get_data(as_text=True)


def test_the_overview_shows_not_configured(auth, web_store: store.Store) -> None:
    with web_store.write() as s:
        store.write_heartbeat(s, "not_configured", "sip.password is empty", utcnow(), 1, now=utcnow())
    page = auth.get("/").get_data(as_text=True)
    assert "not configured" in page and 'href="/setup"' in page
