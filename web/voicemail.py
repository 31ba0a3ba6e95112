"""Voicemail: the list, an authenticated audio route, mark heard, delete (the file too)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, abort, flash, redirect, render_template, request, send_file, url_for
from flask_babel import gettext as _
from sqlalchemy import select

from screener.store import Call
from web import db
from web.auth import _safe_next
from web.calls import cursor_arg, page

bp = Blueprint("voicemail", __name__, url_prefix="/voicemail")


def voicemail_file(call: Call, stored: str | None = None) -> Path | None:
    """The recording's path (stored relative to the data directory: the message, or `stored`, the name the
    caller said for a ring-through), only if it lies inside the voicemail folder: a row pointing anywhere
    else, by `..`, an absolute path or a symlink, is never served or deleted."""
    stored = stored if stored is not None else call.voicemail_path
    if not stored:
        return None
    data = db.data_path().resolve()
    root = data / "voicemail"
    path = Path(stored)
    path = (path if path.is_absolute() else data / path).resolve()
    return path if path.is_relative_to(root) and path != root else None


@bp.get("")
def index() -> str:
    """Voicemails, newest first; unheard ones first is the user's choice via the filter."""
    s = db.session()
    stmt = select(Call).where(Call.voicemail_path.is_not(None))
    unheard = request.args.get("unheard") == "1"
    if unheard:
        stmt = stmt.where(Call.voicemail_heard.is_(False))
    rows, older, newer = page(s, stmt, before=cursor_arg("before"), after=cursor_arg("after"), size=25)
    return render_template("voicemail.html", calls=rows, older=older, newer=newer, unheard=unheard)


@bp.get("/<int:call_id>/audio")
def audio(call_id: int) -> Response:
    """The recording as WAV, with range support for seeking."""
    return _wav(call_id, name=False)


@bp.get("/<int:call_id>/name")
def name(call_id: int) -> Response:
    """The name the caller said for the household's announcement (ring-through with ask_name)."""
    return _wav(call_id, name=True)


def _wav(call_id: int, name: bool) -> Response:
    call = db.session().get(Call, call_id) or abort(404)
    path = voicemail_file(call, call.name_path or "") if name else voicemail_file(call)
    if path is None or not path.is_file():
        abort(404)
    response = send_file(path, mimetype="audio/wav", conditional=True, max_age=0)
    response.headers["Cache-Control"] = "no-store"  # a recording is personal: no disk cache keeps a copy
    return response


@bp.post("/<int:call_id>/heard")
def heard(call_id: int) -> Response:
    """Mark a voicemail heard (or unheard again)."""
    call = db.session().get(Call, call_id) or abort(404)
    call.voicemail_heard = request.form.get("heard", "1") == "1"
    return redirect(_safe_next(request.form.get("next")) or url_for("voicemail.index"))


@bp.post("/<int:call_id>/delete")
def delete(call_id: int) -> Response:
    """Delete the recording (the call stays in the log)."""
    call = db.session().get(Call, call_id) or abort(404)
    path = voicemail_file(call)
    if path is not None:
        path.unlink(missing_ok=True)
    call.voicemail_path = None
    call.voicemail_heard = True
    flash(_("Voicemail deleted."), "info")
    return redirect(_safe_next(request.form.get("next")) or url_for("voicemail.index"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
