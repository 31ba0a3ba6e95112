"""Template filters: local times, phone numbers, durations. Pure apart from reading the configured zone."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import phonenumbers
from flask import Flask, request, session, url_for
from flask_babel import gettext
from flask_wtf.csrf import generate_csrf
from markupsafe import Markup

from screener.numbers import national_format
from screener.text import strip_bidi
from web import db


def zone() -> ZoneInfo:
    return _zone(db.config().screening.timezone)


@lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def localtime(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """An aware UTC datetime shown in the configured zone."""
    if value is None:
        return ""
    return value.astimezone(zone()).strftime(fmt)


def national(e164: str | None) -> str:
    """A number as the household writes it: "+390212345678" -> "02 1234 5678" for the configured region's
    country, "+33 1 62 00 00 00" for a foreign one; anything unparsable comes back unchanged."""
    if not e164:
        return ""
    return _shown(e164, db.config().screening.region)


@lru_cache(maxsize=4096)
def _shown(e164: str, region: str) -> str:
    try:
        num = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return e164
    if num.country_code == phonenumbers.country_code_for_region(region.upper()):
        return national_format(e164)
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(round(seconds))
    return f"{s // 60}:{s % 60:02d}"


def local_day_start(day: date, tz: ZoneInfo) -> datetime:
    """The UTC-aware instant at which local `day` starts."""
    return datetime.combine(day, time(0, 0), tz)


def range_prefixes(e164: str) -> list[str]:
    """The range patterns worth offering for a number: without its last 2 and last 3 digits."""
    digits = len(e164) - 1
    return [e164[:-n] + "*" for n in (2, 3) if digits - n >= 5]


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def printable(value: object) -> object:
    """Jinja's finalize: drop control characters and bidirectional overrides from every string a template
    prints (caller names come from the network, and rows stored before text.clean existed still hold them).
    Markup keeps its markup: neither kind of character is HTML syntax, so removing them from it is safe."""
    if isinstance(value, str) and not value.isprintable():
        out = strip_bidi(_CONTROL.sub("", value))
        return Markup(out) if isinstance(value, Markup) else out
    return value


def actions_text() -> dict[str, str]:
    """What every row's block/allow form needs, computed once per page (translations, token, return path)."""
    return {"action": url_for("lists.quick"), "token": generate_csrf(), "next": request.full_path.rstrip("?"),
            "block": gettext("Block"), "allow": gettext("Allow"), "range": gettext("Range")}


KEPT = "kept_form"
_NOT_KEPT = re.compile(r"csrf_token|next|op|.*(password|secret|token).*")


def keep_form() -> None:
    """After a post that failed: what the user typed fills the form again on the page it is sent back to
    (`kept` in templates; never passwords or tokens, and only once)."""
    session[KEPT] = {k: v[:400] for k, v in request.form.items() if not _NOT_KEPT.fullmatch(k)}


def _kept() -> dict[str, dict[str, str]]:
    return {"kept": session.pop(KEPT) if KEPT in session else {}}


def init_app(app: Flask) -> None:
    app.context_processor(_kept)
    app.jinja_env.finalize = printable
    app.add_template_filter(strip_bidi)
    app.add_template_global(actions_text)
    app.add_template_filter(localtime)
    app.add_template_filter(national)
    app.add_template_filter(duration)
    app.add_template_global(range_prefixes)
    app.add_template_global(timedelta)
