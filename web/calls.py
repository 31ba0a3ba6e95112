"""The call log: newest first, filtered by date, outcome, decision and number or name, keyset-paginated.

Pages are cut on (started_at, id), so a page deep in a million rows costs as much as the first one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask import Blueprint, Flask, abort, render_template, request
from flask_babel import gettext as _
from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.orm import Session

from screener.numbers import parse_caller
from screener.rules import normalize_pattern
from screener.store import OUTCOMES, Call, ListEntry, utcnow
from screener.text import clean
from web import db
from web.format import local_day_start, zone

bp = Blueprint("calls", __name__)
PAGE_SIZE = 50
NAME_SEARCH_WINDOW = timedelta(days=30)
DECISIONS = ("allow", "block", "screen")
_SEPARATORS = re.compile(r"[\s\-.()/]")
_CURSOR = re.compile(r"(\d{4}-\d\d-\d\dT[\d:.]+)_(\d{1,18})")
# Days and cursors far enough inside datetime's range that a day added, a search window subtracted or a time
# zone applied cannot overflow it (year 1 or 9999 would turn into a 500).
MIN_DAY, MAX_DAY = date(1970, 1, 1), date(9998, 12, 31)


@dataclass(frozen=True)
class Cursor:
    """A position in the log: the (started_at, id) of a row."""

    started_at: datetime
    id: int

    def __str__(self) -> str:
        return f"{self.started_at.astimezone(UTC).replace(tzinfo=None).isoformat()}_{self.id}"

    @classmethod
    def parse(cls, text: str | None) -> Cursor | None:
        """None for no cursor; raises ValueError for one that is not a cursor this app made."""
        if not text:
            return None
        m = _CURSOR.fullmatch(text)
        if not m:
            raise ValueError(f"not a cursor: {text[:40]!r}")
        at = datetime.fromisoformat(m[1]).replace(tzinfo=UTC)
        if not MIN_DAY <= at.date() <= MAX_DAY:
            raise ValueError(f"cursor out of range: {text[:40]!r}")
        return cls(at, int(m[2]))


def cursor_arg(name: str) -> Cursor | None:
    """The page cursor in query argument `name`; a broken or edited link is a 400 that says so."""
    try:
        return Cursor.parse(request.args.get(name))
    except ValueError:
        abort(400, description=_("This page link is not valid (it was cut or edited). Go back to the first page."))


def text_arg(name: str, size: int = 100) -> str:
    """A free-text query argument, trimmed and cut, with NUL and control characters made harmless (PostgreSQL
    refuses NUL in a parameter)."""
    return clean((request.args.get(name) or "").strip()[:size])


@dataclass(frozen=True)
class CallFilter:
    """The log's filters as the user gave them, already checked."""

    day_from: date | None = None
    day_to: date | None = None
    outcome: str = ""
    decision: str = ""
    q: str = ""
    errors: tuple[str, ...] = field(default=())

    @classmethod
    def from_args(cls, args: Any) -> CallFilter:
        errors: list[str] = []

        def day(name: str) -> date | None:
            text = (args.get(name) or "").strip()
            if not text:
                return None
            try:
                day = date.fromisoformat(text)
            except ValueError:
                day = None
            if day is None or not MIN_DAY <= day <= MAX_DAY:
                errors.append(_("Dates must lie between %(a)s and %(b)s, written like 2025-01-31.",
                                a=MIN_DAY.isoformat(), b=MAX_DAY.isoformat()))
                return None
            return day

        outcome = args.get("outcome", "")
        decision = args.get("decision", "")
        return cls(day("from"), day("to"), outcome if outcome in OUTCOMES else "",
                   decision if decision in DECISIONS else "", clean((args.get("q") or "").strip()[:100]),
                   tuple(errors))

    def _replace_q(self) -> CallFilter:
        """The same filter without its text: to ask whether any older calls exist at all, on the index."""
        return replace(self, q="")

    def args(self) -> dict[str, str]:
        """The filter as query arguments (for links that keep it)."""
        out = {"from": self.day_from.isoformat() if self.day_from else "",
               "to": self.day_to.isoformat() if self.day_to else "",
               "outcome": self.outcome, "decision": self.decision, "q": self.q}
        return {k: v for k, v in out.items() if v}


def text_condition(q: str, region: str) -> ColumnElement[bool] | None:
    """A number (whole or its start) matches E.164 numbers through the (e164, started_at) index; other text
    matches names and raw caller IDs as a substring, with LIKE wildcards taken literally."""
    if not q:
        return None
    compact = _SEPARATORS.sub("", q)
    if re.fullmatch(r"\+?\d{2,16}", compact):
        caller = parse_caller(compact, region)
        if caller.valid and caller.e164:
            return Call.e164 == caller.e164
        try:
            prefix = normalize_pattern(compact + "*", region)[:-1]
        except ValueError:
            prefix = ""
        if len(prefix) > 1:
            # ":" sorts right after "9": a half-open range over the index instead of LIKE, which SQLite
            # would not run on the index for a case-insensitive column.
            return and_(Call.e164 >= prefix, Call.e164 < prefix + ":")
    return or_(Call.name.icontains(q, autoescape=True), Call.caller_raw.icontains(q, autoescape=True))


def filtered(f: CallFilter, region: str) -> Select[tuple[Call]]:
    """The log query for `f`, without order or page."""
    stmt = select(Call)
    tz = zone()
    if f.day_from:
        stmt = stmt.where(Call.started_at >= local_day_start(f.day_from, tz))
    if f.day_to:
        stmt = stmt.where(Call.started_at < local_day_start(f.day_to + timedelta(days=1), tz))
    if f.outcome:
        stmt = stmt.where(Call.outcome == f.outcome)
    if f.decision:
        stmt = stmt.where(Call.decision == f.decision)
    cond = text_condition(f.q, region)
    if cond is not None:
        stmt = stmt.where(cond)
    return stmt


def page(s: Session, stmt: Select[tuple[Call]], *, before: Cursor | None = None, after: Cursor | None = None,
         size: int = PAGE_SIZE) -> tuple[list[Call], Cursor | None, Cursor | None]:
    """One page of `stmt`, newest first, and the cursors for the older and newer pages (None at an end)."""
    if after is not None:
        # Walk forward from the cursor, then flip: the newer page, still shown newest first.
        stmt = stmt.where(Call.started_at >= after.started_at,
                          or_(Call.started_at > after.started_at, Call.id > after.id))
        rows = list(s.scalars(stmt.order_by(Call.started_at, Call.id).limit(size + 1)))
        more_newer = len(rows) > size
        rows = rows[:size][::-1]
        newer = _cursor(rows[0]) if more_newer and rows else None
        older = _cursor(rows[-1]) if rows else None
        return rows, older, newer
    if before is not None:
        stmt = stmt.where(Call.started_at <= before.started_at,
                          or_(Call.started_at < before.started_at, Call.id < before.id))
    rows = list(s.scalars(stmt.order_by(Call.started_at.desc(), Call.id.desc()).limit(size + 1)))
    older = _cursor(rows[size - 1]) if len(rows) > size else None
    rows = rows[:size]
    newer = _cursor(rows[0]) if before is not None and rows else None
    return rows, older, newer


def _cursor(c: Call) -> Cursor:
    return Cursor(c.started_at, c.id)


def current_lists(s: Session, numbers: Sequence[str | None]) -> dict[str, str]:
    """Which list each of these numbers is on now (exact entries only), in one IN query."""
    wanted = sorted({n for n in numbers if n})
    if not wanted:
        return {}
    return dict(s.execute(select(ListEntry.pattern, ListEntry.list).where(ListEntry.pattern.in_(wanted))).all())


def is_number_query(q: str) -> bool:
    return bool(re.fullmatch(r"\+?\d{2,16}", _SEPARATORS.sub("", q)))


@bp.get("/calls")
def index() -> str:
    """The call log."""
    cfg = db.config()
    f = CallFilter.from_args(request.args)
    s = db.session()
    before, after = cursor_arg("before"), cursor_arg("after")
    stmt = filtered(f, cfg.screening.region)
    window: tuple[datetime, datetime] | None = None
    if f.q and not is_number_query(f.q):
        # No index serves a substring of a name: search one stretch of time per page, so that a rare name
        # costs what a common one does (a million-row scan would take half a second), and offer to go on.
        floor = local_day_start(f.day_from, zone()) if f.day_from else None
        if after is not None:
            lo, hi = after.started_at, after.started_at + NAME_SEARCH_WINDOW
            stmt = stmt.where(Call.started_at < hi)
        else:
            hi = before.started_at if before else utcnow()
            lo = hi - NAME_SEARCH_WINDOW
            if floor is not None:
                lo = max(lo, floor)
            stmt = stmt.where(Call.started_at >= lo)
        window = (lo, hi)
    rows, older, newer = page(s, stmt, before=before, after=after)
    if window is not None:
        lo, hi = window
        if older is None and after is None and s.scalar(
                filtered(f._replace_q(), cfg.screening.region).with_only_columns(Call.id)
                .where(Call.started_at < lo).limit(1)) is not None:
            older = Cursor(lo, 0)
        if newer is None and after is not None and hi < utcnow():
            newer = Cursor(hi, 0)
    return render_template("calls.html", calls=rows, f=f, older=older, newer=newer, outcomes=OUTCOMES,
                           decisions=DECISIONS, on_list=current_lists(s, [c.e164 for c in rows]), window=window)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
