"""The settings page's notifications and housekeeping section, and its "send a test notification" button (the
same screener.notify.send_test as `screener notify-test`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, flash, redirect, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from screener import housekeeping, notify
from web import db

bp = Blueprint("housekeeping", __name__, url_prefix="/settings")


def _event_names() -> dict[str, str]:
    return {"voicemail": _("a voicemail left"), "ring_through": _("a call let through that nobody answered"),
            "registration": _("the phone line lost and back"), "restart": _("a restart after a crash"),
            "summary": _("a daily summary")}


def section() -> dict[str, Any]:
    """What the settings page shows of [notify] and [retention]: URLs by their scheme only (they hold tokens)."""
    cfg = db.config()
    n, r = cfg.notify, cfg.retention
    names = _event_names()
    last = housekeeping.last_retention(cfg)
    return {"urls": [notify.shown_url(u) for u in n.urls], "events": [names.get(e, e) for e in n.events],
            "summary_at": n.summary_at, "registration_minutes": n.registration_minutes,
            "calls_days": r.calls_days, "voicemail_days": r.voicemail_days,
            "last": last, "last_at": datetime.fromisoformat(last.at) if last else None}


@bp.post("/notify-test")
def notify_test() -> Response:
    """Send a test notification to every configured URL now and say how each went."""
    results = notify.send_test(db.config())
    if not results:
        flash(_("No notification service is set: add its URL to [notify] urls in the config file."), "error")
    for r in results:
        if r.error:
            flash(_("Test notification to %(url)s failed: %(error)s", url=r.url, error=r.error), "error")
        else:
            flash(_("Test notification sent to %(url)s.", url=r.url), "info")
    return redirect(url_for("settings.index") + "#notifications")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.jinja_env.globals["housekeeping_section"] = section
