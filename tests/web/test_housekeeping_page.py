"""The settings page's notifications and housekeeping section, and the test-notification button against a real
endpoint on 127.0.0.1 (apprise's json://), in the test client and in chromium."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from notify_support import Endpoint, closed_port_url
from test_browser import PASSWORD, page, shot  # noqa: F401  (page: the chromium fixture)

from screener import config, housekeeping, store
from web import create_app, make_server, stop_server


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    ep = Endpoint()
    yield ep
    ep.close()


def _app(web_cfg: config.Config, web_store: store.Store, **notify: Any) -> Flask:
    cfg = replace(web_cfg, notify=replace(web_cfg.notify, **notify),
                  retention=config.RetentionConfig(calls_days=365, voicemail_days=0))
    return create_app(cfg, store=web_store)


def _post_test(app: Flask, login: Callable[..., Any], csrf_token: Any) -> str:
    c = app.test_client()
    login(c)
    r = c.post("/settings/notify-test", data={"csrf_token": csrf_token(c, "/settings")})
    assert r.status_code == 302 and r.headers["Location"].endswith("/settings#notifications")
    return c.get("/settings").get_data(as_text=True)


def test_section_shows_urls_by_scheme_only_and_the_retention(web_cfg, web_store, login, csrf_token):
    app = _app(web_cfg, web_store, urls=("tgram://123456:SECRETTOKEN/987",), events=("voicemail", "summary"))
    c = app.test_client()
    login(c)
    body = c.get("/settings").get_data(as_text=True)
    assert "SECRETTOKEN" not in body and "tgram://…" in body
    assert "a voicemail left, a daily summary" in body
    assert "365 days" in body and "for ever" in body and "not run yet" in body
    housekeeping.run_retention(web_store, db_cfg := replace(web_cfg, retention=config.RetentionConfig(calls_days=1)))
    assert db_cfg.data_path.exists()
    assert "0 calls and 0 voicemails deleted" in c.get("/settings").get_data(as_text=True)


def test_button_sends_to_the_endpoint_and_reports(web_cfg, web_store, login, csrf_token, endpoint):
    body = _post_test(_app(web_cfg, web_store, urls=(endpoint.url, closed_port_url())), login, csrf_token)
    assert "Test notification sent to json://…." in body
    assert "Test notification to json://… failed:" in body
    assert endpoint.received[0][1]["title"] == "screener test notification"


def test_button_without_urls_says_what_to_do(web_cfg, web_store, login, csrf_token):
    body = _post_test(_app(web_cfg, web_store), login, csrf_token)
    assert "No notification service is set: add its URL to [notify] urls" in body


def test_button_needs_login_and_csrf(web_cfg, web_store, endpoint):
    c = _app(web_cfg, web_store, urls=(endpoint.url,)).test_client()
    assert c.post("/settings/notify-test").status_code in (302, 400, 401)
    assert endpoint.received == []


@pytest.mark.browser
def test_button_in_chromium(web_cfg, web_store, endpoint, page) -> None:  # noqa: F811
    from playwright.sync_api import expect

    cfg = replace(web_cfg, web=replace(web_cfg.web, port=0), notify=replace(web_cfg.notify, urls=(endpoint.url,)))
    server = make_server(cfg, app=create_app(cfg, store=web_store), threads=2)
    t = threading.Thread(target=server.run, name="test-web", daemon=True)
    t.start()
    url = f"http://127.0.0.1:{server.effective_port}"
    try:
        page.goto(url + "/settings")
        page.fill("input[name=login]", "admin")
        page.fill("input[name=password]", PASSWORD)
        page.click("button.primary")
        page.get_by_role("button", name="Send a test notification").click()
        expect(page.locator(".flash.info")).to_contain_text("Test notification sent to json://…")
        assert endpoint.received[0][1]["title"] == "screener test notification"
        page.locator("#notifications").scroll_into_view_if_needed()
        shot(page, "settings_notify_en")
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        shot(page, "settings_notify_390")
    finally:
        stop_server(server)
        t.join(10)
