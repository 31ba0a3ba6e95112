"""The production server: waitress on loopback, stoppable from another thread."""

from __future__ import annotations

import http.client
import threading
from dataclasses import replace

from screener import config, store
from web import make_server, serve, stop_server


def test_make_server_runs_and_stops(web_cfg: config.Config, web_store: store.Store) -> None:
    cfg = replace(web_cfg, web=replace(web_cfg.web, port=0))
    server = make_server(cfg, store=web_store)
    assert server.effective_host == "127.0.0.1"
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=5)
        conn.request("GET", "/login")
        r = conn.getresponse()
        assert r.status == 200 and "default-src 'self'" in r.getheader("Content-Security-Policy")
        assert r.getheader("Server") == "screener"
        r.read()
        conn.close()
    finally:
        stop_server(server)
        t.join(5)
    assert not t.is_alive()


def test_serve_returns_when_the_stop_event_is_set(web_cfg: config.Config, web_store: store.Store) -> None:
    cfg = replace(web_cfg, web=replace(web_cfg.web, port=0))
    stop = threading.Event()
    t = threading.Thread(target=serve, args=(cfg,), kwargs={"store": web_store, "stop": stop}, daemon=True)
    t.start()
    t.join(0.5)
    assert t.is_alive()
    stop.set()
    t.join(5)
    assert not t.is_alive()


def _cookie_over_waitress(cfg: config.Config, web_store: store.Store) -> str:
    server = make_server(cfg, store=web_store)
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=5)
        conn.request("GET", "/login", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.5"})
        r = conn.getresponse()
        r.read()
        conn.close()
        return r.getheader("Set-Cookie") or ""
    finally:
        stop_server(server)
        t.join(5)


def test_waitress_passes_a_trusted_proxys_headers_and_only_those(web_cfg: config.Config,
                                                                 web_store: store.Store) -> None:
    """Caddy on this host in front of the dashboard: its X-Forwarded-Proto reaches the app (Secure cookie)."""
    for proxies, secure in ((("127.0.0.1",), True), (("10.0.0.0/8",), False), ((), False)):
        cfg = replace(web_cfg, web=replace(web_cfg.web, port=0, trusted_proxies=proxies))
        cookie = _cookie_over_waitress(cfg, web_store)
        assert cookie.startswith("screener_session=") and ("; Secure" in cookie) == secure, (proxies, cookie)
