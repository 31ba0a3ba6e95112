"""Login and logout for the users `screener user add` creates; every other page requires a login.

Sessions are signed cookies that name a server-side token, so logging out (or changing the password) really
ends a session: a copied cookie is worthless once its token is gone. Tokens live in memory; a restart logs
everyone out, which is the safe direction.

A login reads only (the SIP service shares an SQLite database and must never wait for a password check) and
is limited in memory: 5 attempts a minute per client address and per account, counted before the check so
that concurrent guesses cannot overtake the count, and at most 2 password checks (scrypt) at once. A browser
that has logged in to an account before carries a signed "device" cookie and is exempt from that account's
limit (never from its address's): someone guessing cannot lock the owner out. The account's limit is tied to
its password hash, so `screener user add NAME` (a new password) also lifts it.
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
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import select
from werkzeug.security import check_password_hash, generate_password_hash

from screener.store import User
from web import db
from web.security import RateLimiter

bp = Blueprint("auth", __name__)
login_manager = LoginManager()
PUBLIC_ENDPOINTS = frozenset({"auth.login", "static", "i18n.set_language", "setup.first_user"})
TOKEN_LIFETIME = 7 * 24 * 3600.0
LOGIN_LIMIT, LOGIN_WINDOW = 5, 60.0  # attempts per window, per address and per account
MAX_CHECKS = 2  # password checks running at once: scrypt takes ~0.2 s of CPU and 16 MB each
CHECK_WAIT = 2.0  # seconds an attempt waits for a free check before it is told to try again
DEVICE_COOKIE, DEVICE_LIFETIME = "screener_device", 365 * 24 * 3600


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


def _verify(user: User | None, password: str) -> bool:
    if user is None:
        check_password_hash(_dummy_hash(), password)  # same cost as a real check: no user enumeration by timing
        return False
    return check_password_hash(user.password_hash, password)


def _devices() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt="screener.device")  # type: ignore[arg-type]


def _proven_device(user: User | None) -> bool:
    """Whether this browser has logged in to `user` before (its signed device cookie names the user)."""
    cookie = request.cookies.get(DEVICE_COOKIE)
    if user is None or not cookie:
        return False
    try:
        return _devices().loads(cookie, max_age=DEVICE_LIFETIME) == user.id  # type: ignore[no-any-return]
    except BadSignature:
        return False


def _limit_keys(login: str, user: User | None, proven: bool) -> list[str]:
    keys = ["addr " + (request.remote_addr or "?")]
    if user is None:
        keys.append("account? " + login.lower()[:64])
    elif not proven:
        # a new password (screener user add) starts a new count: the owner's way back in from a new browser
        keys.append(f"account {user.id} {_digest(user.password_hash)[:16]}")
    return keys


def _check_slots() -> threading.BoundedSemaphore:
    return current_app.extensions["screener.login_checks"]  # type: ignore[no-any-return]


def _safe_next(target: str | None) -> str | None:
    """Only a local path may be a redirect target after login."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith(("//", "/\\")):
        return None
    return target


@bp.route("/login", methods=["GET", "POST"])
@db.read_only
def login() -> str | Response | tuple[str, int, dict[str, str]]:
    """The login form; 5 attempts a minute per address and per account (then 429), 2 password checks at once."""
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect("/")
        return render_template("login.html", next=_safe_next(request.args.get("next")))
    name = request.form.get("login", "").strip()
    user = db.session().scalar(select(User).where(User.login == name))
    proven = _proven_device(user)
    keys = _limit_keys(name, user, proven)
    wait, stamp = _limiter().try_hit(keys)
    if wait:
        body = render_template("login.html", next=None, error=_("Too many failed logins. Try again in a minute."))
        return body, 429, {"Retry-After": str(int(wait) + 1)}
    slots = _check_slots()
    if not slots.acquire(timeout=CHECK_WAIT):
        _limiter().forgive(keys, stamp)  # nothing was checked: the attempt does not count
        body = render_template("login.html", next=None, error=_("Too many logins at once. Try again in a moment."))
        return body, 503, {"Retry-After": "1"}
    try:
        ok = _verify(user, request.form.get("password", ""))
    finally:
        slots.release()
    if not ok or user is None:
        return render_template("login.html", next=_safe_next(request.form.get("next")),
                               error=_("Wrong user name or password.")), 401, {}
    _limiter().forgive(keys, stamp)  # only failures count
    lang = session.get("lang")
    session.clear()  # a fresh session on login: nothing planted before it survives
    if lang:
        session["lang"] = lang
    login_user(LoginUser(user.id, user.login, _registry().create(user)))
    response = redirect(_safe_next(request.form.get("next")) or "/")
    response.set_cookie(DEVICE_COOKIE, _devices().dumps(user.id), max_age=DEVICE_LIFETIME, path="/login",
                        secure=request.is_secure, httponly=True, samesite="Lax")
    return response


@bp.post("/logout")
@db.read_only
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
    app.extensions["screener.login_limiter"] = RateLimiter(limit=LOGIN_LIMIT, window=LOGIN_WINDOW)
    app.extensions["screener.login_checks"] = threading.BoundedSemaphore(MAX_CHECKS)
    app.before_request(_require_login)
    app.register_blueprint(bp)
