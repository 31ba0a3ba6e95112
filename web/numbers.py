"""One number: its calls, the list entries that match it, what phonenumbers knows of it, a note and a link
to the national public lookup. Geocoder and carrier data are imported here, lazily, never on the call path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, abort, flash, redirect, render_template, request, url_for
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import select

from screener.numbers import parse_caller
from screener.rules import candidate_patterns
from screener.store import Call, ListEntry, NumberNote, utcnow
from screener.text import clean
from web import db
from web.calls import cursor_arg, page

bp = Blueprint("numbers", __name__, url_prefix="/numbers")
MAX_NOTE = 4000


@dataclass(frozen=True)
class Lookup:
    title: Any  # lazy strings: translated when rendered
    url: str
    note: Any


# Public lookups per region; the AGCOM page searches the numbers call centres declared to the ROC.
LOOKUPS: dict[str, Lookup] = {
    "IT": Lookup(_l("AGCOM: call-centre numbers declared to the ROC"), "https://www.agcom.it/numerazionicallcenter",
                 _l("Enter the number in national format; no result means it was not declared.")),
}


def number_info(e164: str, lang: str) -> dict[str, str]:
    """Area and original carrier from phonenumbers' geocoder and carrier data (loaded on first use)."""
    import phonenumbers
    from phonenumbers import carrier, geocoder

    try:
        num = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return {}
    return {"area": geocoder.description_for_number(num, lang), "carrier": carrier.name_for_number(num, lang)}


def _valid_e164(e164: str) -> str:
    if not (e164.startswith("+") and e164[1:].isdigit() and 4 <= len(e164) <= 17):
        abort(404)
    return e164


@bp.get("/<e164>")
def show(e164: str) -> str:
    """The number page."""
    e164 = _valid_e164(e164)
    cfg = db.config()
    s = db.session()
    caller = parse_caller(e164, cfg.screening.region)
    rows, older, newer = page(s, select(Call).where(Call.e164 == e164),
                              before=cursor_arg("before"), after=cursor_arg("after"))
    entries = [e for e in s.scalars(select(ListEntry).where(ListEntry.pattern.in_(candidate_patterns(caller))))
               if e.to_rule().matches(caller, cfg.screening.region)]
    entries.sort(key=lambda e: e.to_rule().specificity(), reverse=True)
    note = s.get(NumberNote, e164)
    lang = str(get_locale() or "en")
    lookup = LOOKUPS.get(caller.country or "") if caller.country == cfg.screening.region else None
    exact = next((e for e in entries if e.pattern == e164), None)
    return render_template("number.html", e164=e164, caller=caller, calls=rows, older=older, newer=newer,
                           entries=entries, note=note, info=number_info(e164, lang), lookup=lookup,
                           current=exact.list if exact else None, exact=exact)


@bp.post("/<e164>/note")
def save_note(e164: str) -> Response:
    """Save (or clear) the note on a number."""
    e164 = _valid_e164(e164)
    s = db.session()
    text = clean(request.form.get("note", "").replace("\r\n", "\n").strip()[:MAX_NOTE])
    note = s.get(NumberNote, e164)
    if not text:
        if note is not None:
            s.delete(note)
    elif note is None:
        s.add(NumberNote(e164=e164, note=text, updated_at=utcnow()))
    else:
        note.note, note.updated_at = text, utcnow()
    flash(_("Note saved."), "info")
    return redirect(url_for("numbers.show", e164=e164))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
