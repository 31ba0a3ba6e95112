"""Behind a reverse proxy: the client address and the scheme come from a trusted proxy's headers, and only from it."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace

import pytest
from flask import Flask
from flask.testing import FlaskClient

from screener import config, store
from web import create_app
from web.auth import LOGIN_LIMIT
from web.security import forwarded

PASSWORD = "correct horse battery"  # the admin's, from conftest.py
PROXIES = [ipaddress.ip_network(n) for n in ("192.168.1.2/32", "10.8.0.0/16", "fd00::/8")]


@pytest.mark.parametrize(("peer", "xff", "xfp", "client", "scheme"), [
    # a trusted proxy: the address it saw, its scheme
    ("192.168.1.2", "203.0.113.5", "https", "203.0.113.5", "https"),
    ("192.168.1.2", "203.0.113.5", "http", "203.0.113.5", "http"),
    ("192.168.1.2", " 203.0.113.5 ", "HTTPS", "203.0.113.5", "https"),
    ("192.168.1.2", "", "", "192.168.1.2", None),
    ("192.168.1.2", "203.0.113.5", "gopher", "203.0.113.5", None),
    ("::ffff:192.168.1.2", "203.0.113.5", "https", "203.0.113.5", "https"),  # a dual-stack socket's peer
    ("fd00::1", "2001:db8::7", "https", "2001:db8::7", "https"),
    ("192.168.1.2", "203.0.113.5:51234", "", "203.0.113.5", None),
    ("192.168.1.2", "[2001:db8::7]:443", "", "2001:db8::7", None),
    # what the client wrote itself is left of the address the proxy appended: ignored
    ("192.168.1.2", "1.2.3.4, 203.0.113.5", "https", "203.0.113.5", "https"),
    ("192.168.1.2", "127.0.0.1, 203.0.113.5", "https", "203.0.113.5", "https"),
    # a chain of trusted proxies is walked to the first address that is not one
    ("192.168.1.2", "1.2.3.4, 203.0.113.5, 10.8.3.3", "http, https", "203.0.113.5", "https"),
    ("192.168.1.2", "10.8.3.3, 10.8.4.4", "", "10.8.3.3", None),
    ("192.168.1.2", "1.2.3.4, garbage, 10.8.3.3", "", "10.8.3.3", None),
    ("192.168.1.2", "garbage", "", "192.168.1.2", None),
    # any other peer: its headers are not read
    ("203.0.113.9", "1.2.3.4", "https", "203.0.113.9", None),
    ("192.168.1.3", "1.2.3.4", "https", "192.168.1.3", None),
    ("10.9.0.1", "1.2.3.4", "https", "10.9.0.1", None),
    ("", "1.2.3.4", "https", "", None),
])
def test_forwarded(peer: str, xff: str, xfp: str, client: str, scheme: str | None) -> None:
    assert forwarded(peer, xff, xfp, PROXIES) == (client, scheme)


def test_no_trusted_proxy_reads_nothing() -> None:
    assert forwarded("127.0.0.1", "1.2.3.4", "https", []) == ("127.0.0.1", None)


def test_trusted_proxies_setting(write_config) -> None:
    cfg = config.load(write_config('[web]\ntrusted_proxies = ["127.0.0.1", "192.168.1.0/24", "fd00::/8"]\n'))
    assert cfg.web.trusted_proxies == ("127.0.0.1", "192.168.1.0/24", "fd00::/8")


PROXY = "192.168.1.2"


@pytest.fixture
def proxied(web_cfg: config.Config, web_store: store.Store) -> Flask:
    """The dashboard with [web] trusted_proxies = [PROXY]."""
    cfg = replace(web_cfg, web=replace(web_cfg.web, trusted_proxies=(PROXY,)))
    return create_app(cfg, store=web_store, testing=True)


def _token(client: FlaskClient, environ: dict[str, str]) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login", environ_base=environ).get_data(True))
    assert m
    return m[1]


def _attempt(app: Flask, peer: str, forwarded_for: str, login: str = "admin", password: str = "wrong",
             proto: str = "") -> tuple[int, list[str]]:
    """One login from a fresh browser through `peer`: (status, Set-Cookie headers)."""
    client = app.test_client()
    environ = {"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": forwarded_for}
    if proto:
        environ["HTTP_X_FORWARDED_PROTO"] = proto
    headers = {"Referer": "https://localhost/login"} if proto == "https" else {}  # as a browser sends over HTTPS
    r = client.post("/login", data={"login": login, "password": password, "csrf_token": _token(client, environ)},
                    environ_base=environ, headers=headers)
    return r.status_code, r.headers.getlist("Set-Cookie")


def test_the_login_limit_counts_the_forwarded_address_behind_a_trusted_proxy(proxied: Flask) -> None:
    for i in range(LOGIN_LIMIT):
        assert _attempt(proxied, PROXY, "203.0.113.5", login=f"nobody{i}")[0] == 401
    assert _attempt(proxied, PROXY, "203.0.113.5", login="someone")[0] == 429
    # a spoofed address left of the one the proxy appended changes nothing
    assert _attempt(proxied, PROXY, "198.51.100.1, 203.0.113.5", login="someone")[0] == 429
    # another client through the same proxy is not locked out with it
    assert _attempt(proxied, PROXY, "203.0.113.6", login="someone")[0] == 401
    assert _attempt(proxied, PROXY, "203.0.113.7", password=PASSWORD)[0] == 302


@pytest.mark.parametrize("trusted", [True, False])
def test_a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(app: Flask, proxied: Flask, trusted: bool) -> None:
    dashboard = proxied if trusted else app  # the peer below is not the trusted proxy, or there is none
    for i in range(LOGIN_LIMIT):
        assert _attempt(dashboard, "10.9.9.9", f"198.51.100.{i + 1}", login=f"nobody{i}")[0] == 401
    # every attempt was counted on the peer's own address, whatever it claimed
    assert _attempt(dashboard, "10.9.9.9", "198.51.100.99", login="someone")[0] == 429
    assert _attempt(dashboard, "10.9.9.10", "", login="someone")[0] == 401


@pytest.mark.parametrize(("peer", "proto", "secure"), [
    (PROXY, "https", True),
    (PROXY, "http", False),
    (PROXY, "", False),
    ("10.9.9.9", "https", False),  # not the proxy: its X-Forwarded-Proto means nothing
])
def test_secure_cookies_follow_x_forwarded_proto_only_from_a_trusted_proxy(proxied: Flask, peer: str, proto: str,
                                                                            secure: bool) -> None:
    status, cookies = _attempt(proxied, peer, "203.0.113.5", password=PASSWORD, proto=proto)
    assert status == 302
    names = sorted(c.partition("=")[0] for c in cookies)
    assert names == ["screener_device", "screener_session"]
    assert all(("; Secure" in c) == secure for c in cookies), cookies
