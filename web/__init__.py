"""The dashboard: the Flask app factory, and the waitress server that runs it in production.

`create_app(cfg)` builds the app; `make_server(cfg)` binds a waitress server (cfg.web.host:port, 127.0.0.1
unless configured) without running it; `serve(cfg, stop=event)` runs it until the event is set.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any

from flask import Flask, render_template
from flask_wtf.csrf import CSRFError, CSRFProtect

from screener.config import Config
from screener.store import Store
from web import db as db_mod

csrf = CSRFProtect()
log = logging.getLogger(__name__)


def create_app(cfg: Config | None = None, *, store: Store | None = None, testing: bool = False) -> Flask:
    """Build the dashboard for `cfg` (defaults if None) on `store` (opened from cfg.database.url if None)."""
    from web import (
        auth,
        calls,
        evidence,
        format,
        housekeeping,
        i18n,
        labels,
        lists,
        numbers,
        overview,
        prompts,
        security,
        settings,
        setup,
        users,
        voicemail,
    )

    cfg = cfg or Config()
    if store is None:
        store = Store(cfg.database_url)
    app = Flask(__name__)
    app.config.update(DEBUG=False, TESTING=testing, WTF_CSRF_TIME_LIMIT=None, JSON_SORT_KEYS=False)
    app.secret_key = security.load_secret(cfg, cfg.data_path)
    security.init_app(app)
    app.wsgi_app = security.ProxyHeaders(app.wsgi_app, cfg.web.trusted_proxies)  # type: ignore[method-assign]
    csrf.init_app(app)
    db_mod.init_app(app, cfg, store)
    i18n.init_app(app)
    format.init_app(app)
    labels.init_app(app)
    auth.init_app(app)
    for module in (overview, calls, evidence, numbers, lists, voicemail, prompts, settings, setup, users, housekeeping):
        module.init_app(app)
    _errors(app)
    return app


def _errors(app: Flask) -> None:
    from web.labels import http_error

    def page(code: int, title: str, message: str) -> tuple[str, int]:
        return render_template("error.html", code=code, title=title, message=message), code

    @app.errorhandler(CSRFError)
    def csrf_error(e: CSRFError) -> tuple[str, int]:
        from flask_babel import gettext as _

        code, title, _default = http_error(e)
        return page(code, title, _("The form expired or did not come from this site. Reload the page and try again."))

    for code in (400, 401, 403, 404, 405, 413):
        app.register_error_handler(code, lambda e: page(*http_error(e)))


SERVE_THREADS = 2  # a household's dashboard: one page and its assets at a time; each idle thread costs RSS


def make_server(cfg: Config, *, store: Store | None = None, app: Flask | None = None, threads: int = 8) -> Any:
    """A bound, not yet running waitress server for the dashboard; `.effective_port` is the real port."""
    from waitress import create_server

    app = app or create_app(cfg, store=store)
    # behind a trusted proxy its headers must reach security.ProxyHeaders, which removes everyone else's
    return create_server(app, host=cfg.web.host, port=cfg.web.port, threads=threads, ident="screener",
                         clear_untrusted_proxy_headers=not cfg.web.trusted_proxies)


def serve(cfg: Config, *, store: Store | None = None, stop: threading.Event | None = None) -> None:
    """Run the dashboard under waitress until `stop` is set (or for ever); blocks the calling thread."""
    run_server(make_server(cfg, store=store, threads=SERVE_THREADS), stop=stop)


def url(host: str, port: int) -> str:
    """The address to open in a browser for a server bound to host:port."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"http://{host}:{port}/"
    if ip.is_unspecified:
        return f"http://127.0.0.1:{port}/ (and this machine's other addresses)"
    return f"http://[{ip}]:{port}/" if ip.version == 6 else f"http://{ip}:{port}/"


def run_server(server: Any, *, stop: threading.Event | None = None) -> None:
    """Run a server from make_server() until `stop` is set (or for ever); blocks the calling thread."""
    if hasattr(server, "effective_port"):  # a host name with several addresses gets a multi-socket server
        log.info("dashboard on %s", url(server.effective_host, server.effective_port))
    if stop is not None:
        threading.Thread(target=_stop_when_set, args=(server, stop), name="web-stop", daemon=True).start()
    try:
        server.run()
    finally:
        server.task_dispatcher.shutdown()


def _stop_when_set(server: Any, stop: threading.Event) -> None:
    stop.wait()
    stop_server(server)


def stop_server(server: Any, timeout: float = 5.0) -> None:
    """Make a running waitress server's loop return: finish or cancel requests, then close every socket.

    The sockets are closed from inside the server's own loop (through its trigger), so this is safe to call
    from any thread; a server whose loop is not running is closed directly.
    """
    from waitress import wasyncore

    server.task_dispatcher.shutdown(timeout=timeout)
    closed = threading.Event()

    def close() -> None:
        wasyncore.close_all(server._map)
        closed.set()

    try:
        server.trigger.pull_trigger(close)
    except OSError:  # the trigger is already closed
        return
    if not closed.wait(timeout):
        close()
