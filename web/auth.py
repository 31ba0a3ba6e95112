"""Login and logout for the users `screener user add` creates; every other page requires a login.

Sessions are signed cookies that name a server-side token, so logging out (or changing the password) really
ends a session: a copied cookie is worthless once its token is gone. Tokens live in memory; a restart logs
everyone out, which is the safe direction.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, abort, current_app, flash, redirect, render_template, request, session
from flask_babel import gettext as _
from flask_login import LoginManager, current_user, login_user, logout_user
from sqlalchemy import select
from werkzeug.security import check_password_hash, generate_password_hash

from screener.store import User
from web import db
from web.security import RateLimiter

bp = Blueprint("auth", __name__)
login_manager = LoginManager()
PUBLIC_ENDPOINTS = frozenset({"auth.login", "static", "i18n.set_language"})
TOKEN_LIFETIME = 7 * 24 * 3600.0


@dataclass
class _Token:
    user_id: int
    pw_digest: str  # changes when the password does, which ends the user's sessions
    expires: float


class SessionRegistry:
    """The live login tokens of this process."""

    def __init__(self) -> None:
        self._tokens: dict[str, _Token] = {}
        self._lock = threading.Lock()

    def create(self, user: User) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            now = time.monotonic()
            self._tokens = {k: t for k, t in self._tokens.items() if t.expires > now}
            self._tokens[token] = _Token(user.id, _digest(user.password_hash), now + TOKEN_LIFETIME)
        return token

    def check(self, token: str, user: User) -> bool:
        with self._lock:
            t = self._tokens.get(token)
        return (t is not None and t.user_id == user.id and t.expires > time.monotonic()
                and secrets.compare_digest(t.pw_digest, _digest(user.password_hash)))

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)


def _digest(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()


class LoginUser:
    """The logged-in user as Flask-Login sees it: its id carries the session token."""

    is_authenticated = True
    is_active = True
    is_anonymous = False

    def __init__(self, user_id: int, login: str, token: str) -> None:
        self.id, self.login, self.token = user_id, login, token

    def get_id(self) -> str:
        return f"{self.id}:{self.token}"


def _registry() -> SessionRegistry:
    return current_app.extensions["screener.sessions"]  # type: ignore[no-any-return]


def _limiter() -> RateLimiter:
    return current_app.extensions["screener.login_limiter"]  # type: ignore[no-any-return]


@login_manager.user_loader
def _load_user(user_id: str) -> LoginUser | None:
    uid, _sep, token = user_id.partition(":")
    if not uid.isdigit() or not token:
        return None
    user = db.session().get(User, int(uid))
    if user is None or not _registry().check(token, user):
        return None
    return LoginUser(user.id, user.login, token)


@cache
def _dummy_hash() -> str:
    return generate_password_hash(secrets.token_hex(8), method="scrypt")


def _verify(login: str, password: str) -> User | None:
    user = db.session().scalar(select(User).where(User.login == login))
    if user is None:
        check_password_hash(_dummy_hash(), password)  # same cost as a real check: no user enumeration by timing
        return None
    return user if check_password_hash(user.password_hash, password) else None


def _safe_next(target: str | None) -> str | None:
    """Only a local path may be a redirect target after login."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith(("//", "/\\")):
        return None
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> str | Response | tuple[str, int, dict[str, str]]:
    """The login form; at most 5 failed attempts per minute per address, then 429."""
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect("/")
        return render_template("login.html", next=_safe_next(request.args.get("next")))
    key = request.remote_addr or "?"
    wait = _limiter().blocked(key)
    if wait:
        body = render_template("login.html", next=None, error=_("Too many failed logins. Try again in a minute."))
        return body, 429, {"Retry-After": str(int(wait) + 1)}
    user = _verify(request.form.get("login", "").strip(), request.form.get("password", ""))
    if user is None:
        _limiter().hit(key)
        return render_template("login.html", next=_safe_next(request.form.get("next")),
                               error=_("Wrong user name or password.")), 401, {}
    lang = session.get("lang")
    session.clear()  # a fresh session on login: nothing planted before it survives
    if lang:
        session["lang"] = lang
    login_user(LoginUser(user.id, user.login, _registry().create(user)))
    return redirect(_safe_next(request.form.get("next")) or "/")


@bp.post("/logout")
def logout() -> Response:
    """End the session: revoke its token and clear the cookie."""
    if current_user.is_authenticated:
        _registry().revoke(current_user.token)
    lang = session.get("lang")
    logout_user()
    session.clear()
    if lang:
        session["lang"] = lang
    flash(_("You are logged out."), "info")
    return redirect("/login")


def _require_login() -> Response | None:
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return None
    if not current_user.is_authenticated:
        if request.method != "GET":
            abort(401)
        return redirect("/login?next=" + _quote_path())
    return None


def _quote_path() -> str:
    from urllib.parse import quote

    return quote(request.full_path.rstrip("?"), safe="")


def init_app(app: Flask) -> None:
    """Flask-Login, the token registry, the login rate limiter and the login requirement for every page."""
    login_manager.init_app(app)
    login_manager.session_protection = "basic"
    app.extensions["screener.sessions"] = SessionRegistry()
    app.extensions["screener.login_limiter"] = RateLimiter(limit=5, window=60.0)
    app.before_request(_require_login)
    app.register_blueprint(bp)
