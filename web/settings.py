"""Settings: the effective configuration, secrets masked; [sip], [screening] and [ring_through] editable.

Edits go through screener.config_edit (comments kept, checked before writing, secrets write-only: an empty
field leaves them as they are). The running service reads the file again within a second: [screening] and
[ring_through] apply from the next call, a [sip] change registers again.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from flask import Blueprint, Flask, Response, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from screener import config_edit
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


EDITABLE = tuple(k for k in config_edit.SETTINGS if k.split(".")[0] in ("sip", "screening", "ring_through")
                 and not k.startswith("screening.prompts."))  # prompts have their own page


def as_text(value: Any) -> str:
    """A setting's value as the form shows and config_edit.coerce reads it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ", ".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _current(key: str) -> Any:
    value: Any = db.config()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _page(error: str = "", field: str = "", typed: dict[str, str] | None = None) -> str:
    cfg = db.config()
    values = {k: "" if config_edit.SETTINGS[k].secret else as_text(_current(k)) for k in EDITABLE}
    values.update(typed or {})
    return render_template("settings.html", settings=effective_settings(), path=cfg.path,
                           data_dir=str(db.data_path()), editable=EDITABLE, values=values,
                           secrets={k for k in EDITABLE if config_edit.SETTINGS[k].secret},
                           booleans={k for k in EDITABLE if config_edit.SETTINGS[k].type is bool},
                           error=error, field=field)


@bp.get("")
def index() -> str:
    """The settings page."""
    return _page()


@bp.post("")
def save() -> Response | tuple[str, int]:
    """Save what changed; a bad value is named and nothing is written."""
    cfg = db.config()
    typed = {k: request.form[k] for k in EDITABLE if k in request.form}
    if not cfg.path:
        return _page(_("screener runs without a config file: there is nothing to write to."), "", typed), 400
    changes: dict[str, Any] = {}
    try:
        for key, text in typed.items():
            if config_edit.SETTINGS[key].secret:
                if text:
                    changes[key] = text
                continue
            value = config_edit.coerce(key, text)
            current = _current(key)
            if value != (list(current) if isinstance(current, tuple) else current):
                changes[key] = value
        if not changes:
            flash(_("Nothing changed."), "info")
            return redirect(url_for("settings.index"))
        new = config_edit.edit(cfg.path, changes, template=config_edit.EXAMPLE)
        saved = time.time()
    except config_edit.EditError as e:
        typed = {k: v for k, v in typed.items() if not config_edit.SETTINGS[k].secret}
        return _page(str(e), e.key, typed), 400
    current_app.extensions["screener.config"] = new
    keys = ", ".join(sorted(changes))
    if any(k.startswith("sip.") for k in changes):
        flash(_("Saved (%(keys)s). screener registers again with the new [sip] settings.", keys=keys), "info")
        return redirect(url_for("setup.check", t=f"{saved:.3f}"))
    flash(_("Saved (%(keys)s). It applies from the next call.", keys=keys), "info")
    return redirect(url_for("settings.index"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
