"""Settings: the effective configuration, read-only, secrets masked."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from flask import Blueprint, Flask, render_template

from screener.config import masked
from web import db

bp = Blueprint("settings", __name__, url_prefix="/settings")
MASK = "********"
# query parameters that carry a credential in the URLs people write (libpq, notification services, webhooks)
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|auth|credential|signature|sig$", re.IGNORECASE)


def mask_url(value: str) -> str:
    """`value` with the password of its userinfo and every credential-like query parameter masked; text that
    is no URL comes back unchanged, a URL that cannot be parsed comes back as MASK (never risk showing it)."""
    if "://" not in value:
        return value
    try:
        parts = urlsplit(value)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _at, host = netloc.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{host}" if colon else netloc
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, MASK if _SECRET_PARAM.search(k) else v) for k, v in pairs],
                              quote_via=quote, safe="*")
        if (netloc, query) == (parts.netloc, parts.query):
            return value  # nothing to hide: as written (urlunsplit would turn sqlite:/// into sqlite:/)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return MASK


def _mask(value: object) -> object:
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def effective_settings() -> list[tuple[str, object]]:
    """config.masked(), plus passwords in any URL hidden (in its userinfo and its query parameters)."""
    return [(key, _mask(value)) for key, value in masked(db.config())]


@bp.get("")
def index() -> str:
    """The settings page."""
    cfg = db.config()
    return render_template("settings.html", settings=effective_settings(), path=cfg.path,
                           data_dir=str(db.data_path()))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
