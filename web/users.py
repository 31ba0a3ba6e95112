"""Dashboard users: list, add, change a password, remove (never the last one)."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from sqlalchemy import select

from screener import users
from screener.store import User
from web import db

bp = Blueprint("users", __name__, url_prefix="/settings/users")


def _page(error: str = "", login: str = "") -> str:
    rows = list(db.session().scalars(select(User).order_by(User.login)))
    return render_template("users.html", users=rows, error=error, login=login)


def _refusal(login: str, password: str, again: str) -> str:
    """Why the form is refused, in the user's language ("" = fine)."""
    if not login or len(login) > 64 or any(c.isspace() for c in login):
        return _("The user name must have 1-64 characters and no spaces.")
    if len(password) < users.MIN_PASSWORD:
        return _("The password must have at least %(n)d characters.", n=users.MIN_PASSWORD)
    if password != again:
        return _("The two passwords differ.")
    return ""


@bp.get("")
def index() -> str:
    return _page()


@bp.post("")
def save() -> Response | tuple[str, int]:
    """Add a user, or set the password of an existing one (its sessions end)."""
    login = request.form.get("login", "").strip()
    password, again = request.form.get("password", ""), request.form.get("again", "")
    why = _refusal(login, password, again)
    if why:
        return _page(why, login), 400
    s = db.session()
    existed = s.scalar(select(User.id).where(User.login == login)) is not None
    users.save_user(s, login, password)
    flash(_("Password of %(u)s changed.", u=login) if existed else _("User %(u)s added.", u=login), "info")
    return redirect(url_for("users.index"))


@bp.post("/remove")
def remove() -> Response | tuple[str, int]:
    login = request.form.get("login", "")
    try:
        users.remove_user(db.session(), login)
    except users.UserError as e:
        last = "last" in str(e)
        return _page(_("The last user cannot be removed: nobody could log in any more.") if last
                     else _("There is no such user.")), 400
    flash(_("User %(u)s removed.", u=login), "info")
    return redirect(url_for("users.index"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
