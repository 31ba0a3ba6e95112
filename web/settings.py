"""Settings: the effective configuration, read-only, secrets masked."""

from __future__ import annotations

from flask import Blueprint, Flask, render_template
from sqlalchemy.engine import make_url

from screener.config import masked
from web import db

bp = Blueprint("settings", __name__, url_prefix="/settings")


def effective_settings() -> list[tuple[str, object]]:
    """config.masked(), plus the database URL's password hidden (the config does not mark it secret)."""
    out = []
    for key, value in masked(db.config()):
        if key == "database.url" and isinstance(value, str):
            try:
                value = make_url(value).render_as_string(hide_password=True)
            except Exception:  # an unparsable URL is shown as nothing rather than risk showing a password
                value = "********"
        out.append((key, value))
    return out


@bp.get("")
def index() -> str:
    """The settings page."""
    cfg = db.config()
    return render_template("settings.html", settings=effective_settings(), path=cfg.path,
                           data_dir=str(db.data_path()))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
