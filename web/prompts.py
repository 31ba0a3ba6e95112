"""Prompts: listen to the shipped and custom recordings, upload a custom one (checked and converted to
8 kHz 16-bit mono), restore the default. Custom prompts live in data_dir/prompts/NAME_LANG.wav, next to the
shipped screener/prompts/NAME_LANG.wav they replace."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flask import Blueprint, Flask, Response, abort, flash, redirect, render_template, request, send_file, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from screener import audio as line_audio
from web import db
from web.labels import label

bp = Blueprint("prompts", __name__, url_prefix="/prompts")
NAMES = line_audio.PROMPT_NAMES
LANGS = ("en", "it")
SHIPPED = line_audio.SHIPPED
DESCRIPTIONS = {
    "challenge": _l("asks an unknown caller to press a key"), "passed": _l("played before ringing the house"),
    "failed": _l("played when the caller did not press the key"), "blocked": _l("played to blocked callers"),
    "voicemail": _l("invites the caller to leave a message"),
}


@dataclass(frozen=True)
class Prompt:
    name: str
    lang: str
    shipped: Path | None
    custom: Path | None
    configured: str  # screening.prompts.NAME from the config: it wins over both


def custom_dir() -> Path:
    return db.data_path() / "prompts"


def prompt(name: str, lang: str) -> Prompt:
    if name not in NAMES or lang not in LANGS:
        abort(404)
    shipped = SHIPPED / f"{name}_{lang}.wav"
    custom = custom_dir() / f"{name}_{lang}.wav"
    configured = getattr(db.config().screening.prompts, name)
    return Prompt(name, lang, shipped if shipped.is_file() else None, custom if custom.is_file() else None,
                  configured)


@bp.get("")
def index() -> str:
    """Every prompt in every language, with players."""
    return render_template("prompts.html", prompts=[prompt(n, lang) for n in NAMES for lang in LANGS],
                           descriptions=DESCRIPTIONS)


@bp.get("/<name>/<lang>/<which>.wav")
def audio(name: str, lang: str, which: str) -> Response:
    """The shipped or custom recording of a prompt."""
    p = prompt(name, lang)
    path = {"shipped": p.shipped, "custom": p.custom}.get(which)
    if path is None:
        abort(404)
    return send_file(path, mimetype="audio/wav", conditional=True, max_age=0)


@bp.post("/<name>/<lang>/upload")
def upload(name: str, lang: str) -> Response:
    """Replace a prompt with an uploaded WAV, converted for the telephone line."""
    p = prompt(name, lang)
    f = request.files.get("file")
    if f is None or not f.filename:
        flash(_("Choose a WAV file."), "error")
        return redirect(url_for("prompts.index"))
    try:
        pcm = line_audio.to_line_pcm(f.read())
    except ValueError as e:
        flash(_("%(f)s was not used: %(e)s", f=f.filename, e=str(e)), "error")
        return redirect(url_for("prompts.index"))
    if not pcm:
        flash(_("%(f)s was not used: %(e)s", f=f.filename, e="no audio"), "error")
        return redirect(url_for("prompts.index"))
    line_audio.write_wav(custom_dir() / f"{p.name}_{p.lang}.wav", pcm)  # atomic: the line never plays half a file
    flash(_("The %(n)s prompt (%(l)s) now uses your recording.", n=label("prompt", p.name),
            l=label("language", p.lang)), "info")
    return redirect(url_for("prompts.index"))


@bp.post("/<name>/<lang>/restore")
def restore(name: str, lang: str) -> Response:
    """Delete the custom recording: the shipped one plays again."""
    p = prompt(name, lang)
    if p.custom is not None:
        p.custom.unlink(missing_ok=True)
    flash(_("The %(n)s prompt (%(l)s) is back to the default.", n=label("prompt", p.name),
            l=label("language", p.lang)), "info")
    return redirect(url_for("prompts.index"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
