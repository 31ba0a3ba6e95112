"""The allow, block and screen lists: browse, add, edit, delete, switch off and on, presets, CSV import and
export, range suggestions, and the one-click block/allow (with undo) the log and number pages use.

Nothing changes behind the user's back: adding a pattern that already has an entry keeps its label and time
window unless the user confirms replacing them, and a prefix for a whole country or network needs a
confirmation (the same rules as `screener list add --replace/--force`, through store.add_entry)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Flask, Response, abort, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from sqlalchemy import ColumnElement, and_, distinct, func, or_, select
from sqlalchemy.orm import Session

from screener import csvio, presets
from screener.presets import PRESETS
from screener.rules import (
    ACTIONS,
    CLASSES,
    WidePrefix,
    format_days,
    make_window,
    normalize_pattern,
    wide_prefix,
    window_from_mask,
)
from screener.store import Added, Before, Call, EntryConflict, ListEntry, add_entry, put_entry, remove_entry, utcnow
from web import db
from web.auth import _safe_next
from web.calls import text_arg
from web.format import keep_form

bp = Blueprint("lists", __name__, url_prefix="/lists")
PAGE_SIZE = 100
MAX_REPORTED_ERRORS = 500


def snapshot(entry: ListEntry | None) -> dict[str, Any] | None:
    """What undo needs to put an entry back as it was (JSON-able, it lives in the session cookie)."""
    if entry is None:
        return None
    return {"list": entry.list, "label": entry.label, "source": entry.source, "days": entry.days,
            "time_from": entry.time_from, "time_to": entry.time_to, "hit_count": entry.hit_count,
            "last_hit_at": entry.last_hit_at.isoformat() if entry.last_hit_at else None, "enabled": entry.enabled}


def restore(s: Session, pattern: str, snap: dict[str, Any] | None) -> None:
    """Put `pattern` back as `snap` described it (None: it was on no list)."""
    if snap is None:
        remove_entry(s, pattern)
        return
    window = window_from_mask(snap["days"], snap["time_from"], snap["time_to"])
    entry = put_entry(s, snap["list"], pattern, label=snap["label"][:200], source=snap["source"][:40],
                      window=window)
    entry.hit_count = int(snap["hit_count"])
    entry.enabled = bool(snap.get("enabled", True))
    entry.last_hit_at = datetime.fromisoformat(snap["last_hit_at"]) if snap["last_hit_at"] else None


def _entry(s: Session, pattern: str) -> ListEntry | None:
    return s.scalar(select(ListEntry).where(ListEntry.pattern == pattern))


def _back(default: str = "lists.index") -> Response:
    return redirect(_safe_next(request.form.get("next")) or url_for(default))


def _remember_undo(pattern: str, before: dict[str, Any] | None) -> None:
    session["undo"] = {"pattern": pattern, "before": before}


def range_suggestions(s: Session, since: datetime, *, drop: int = 3, min_calls: int = 3,
                      limit: int = 10) -> list[tuple[str, int, int]]:
    """Ranges (number minus its last `drop` digits) with at least `min_calls` calls from two or more numbers
    since `since`, not already allowed or blocked as a whole: (pattern, calls, numbers), busiest first."""
    rows = db.cached(("busy_ranges", since, drop, min_calls, limit), 60.0,
                     lambda: _busy_ranges(s, since, drop, min_calls, limit * 3))
    candidates = {p: [p[:i] + "*" for i in range(len(p), 2, -1)] for p, _n, _k in rows if p and len(p) > 4}
    wanted = {c for cs in candidates.values() for c in cs}
    covered = set(s.scalars(select(ListEntry.pattern).where(ListEntry.pattern.in_(wanted),
                                                            ListEntry.list.in_(("allow", "block"))))) \
        if wanted else set()
    out = [(p + "*", n, k) for p, n, k in rows if p in candidates and not covered & set(candidates[p])]
    return out[:limit]


def _busy_ranges(s: Session, since: datetime, drop: int, min_calls: int, limit: int) -> list[tuple[str, int, int]]:
    prefix = func.substr(Call.e164, 1, func.length(Call.e164) - drop)
    rows = s.execute(
        select(prefix.label("p"), func.count().label("n"), func.count(distinct(Call.e164)).label("k"))
        .where(Call.started_at >= since, Call.e164.is_not(None), Call.decision != "allow")
        .group_by(prefix)
        .having(func.count(distinct(Call.e164)) >= 2, func.count() >= min_calls)
        .order_by(func.count().desc())
        .limit(limit)
    ).all()
    return [(p, n, k) for p, n, k in rows]


@bp.get("")
def index() -> str:
    """The lists, filtered by list and text, paged by pattern."""
    s = db.session()
    which = request.args.get("list", "")
    q = text_arg("q")
    after = text_arg("after", 40)  # a pattern: 40 characters at most
    stmt = select(ListEntry)
    if which in ACTIONS:
        stmt = stmt.where(ListEntry.list == which)
    by_number = False
    if q:
        cond, by_number = _search(q, db.config().screening.region)
        stmt = stmt.where(cond)
    if after:
        stmt = stmt.where(ListEntry.pattern > after)
    # With a text filter, sorting the few matches beats walking the whole pattern index in order and
    # fetching every row to test it (5x faster at 100,000 entries); `|| ''` keeps the planner off the index.
    order = (ListEntry.pattern + "") if q and not by_number else ListEntry.pattern
    entries = list(s.scalars(stmt.order_by(order).limit(PAGE_SIZE + 1)))
    more = entries[PAGE_SIZE - 1].pattern if len(entries) > PAGE_SIZE else None
    counts = db.cached("list_counts", 30.0, lambda: dict(
        s.execute(select(ListEntry.list, func.count()).group_by(ListEntry.list)).all()))
    return render_template(
        "lists.html", entries=entries[:PAGE_SIZE], more=more, which=which, q=q, after=after, counts=counts,
        presets=PRESETS, classes=CLASSES, actions=ACTIONS,
        suggestions=range_suggestions(s, _last_month()),
        report=None,
    )


def _search(q: str, region: str) -> tuple[ColumnElement[bool], bool]:
    """(condition, whether it is an index range on pattern): a number or its beginning searches patterns on
    the index; other text searches patterns and labels."""
    compact = re.sub(r"[\s\-.()/*]", "", q)
    if re.fullmatch(r"\+?\d{2,16}", compact):
        try:
            prefix = normalize_pattern(compact + "*", region)[:-1]
        except ValueError:
            prefix = ""
        if len(prefix) > 1:
            return and_(ListEntry.pattern >= prefix, ListEntry.pattern < prefix + ":"), True
    return or_(ListEntry.pattern.icontains(q, autoescape=True), ListEntry.label.icontains(q, autoescape=True)), False


def _last_month() -> datetime:
    # Rounded to the minute, so that the busy-range aggregate below can be cached for that long.
    return (utcnow() - timedelta(days=30)).replace(second=0, microsecond=0)


def _form_entry(region: str) -> tuple[str, str, str, Any]:
    """(list, pattern, label, window) from the add/edit form; raises ValueError with the user's message."""
    which = request.form.get("list", "")
    if which not in ACTIONS:
        raise ValueError(_("Choose the allow, block or screen list."))
    pattern = normalize_pattern(request.form.get("pattern", ""), region)
    label = " ".join(request.form.get("label", "").split())[:200]
    window = make_window(request.form.get("days", "").strip() or None, request.form.get("time_from", "").strip(),
                         request.form.get("time_to", "").strip())
    return which, pattern, label, window


def wide_words(wide: WidePrefix) -> str:
    if not wide.country_code:
        return _("numbers of several countries")
    if not wide.national:
        return _("every number of +%(cc)s", cc=wide.country_code)
    return _("every number of +%(cc)s starting with %(d)s", cc=wide.country_code, d=wide.national)


def _confirm(pattern: str, *, wide: WidePrefix | None = None, before: Before | None = None,
             action: str | None = None) -> str:
    """Ask before a wide prefix goes on a list or an entry's label and window are replaced: the form is
    posted again with the answer (`force`, `existing`) and every field the user typed."""
    fields = {k: v for k, v in request.form.items() if k not in ("csrf_token", "force", "existing")}
    return render_template("list_confirm.html", pattern=pattern, wide=wide_words(wide) if wide else None,
                           before=before, fields=fields, force=request.form.get("force") == "1",
                           action=action or request.path)


def _said(added: Added, which: str) -> None:
    """Flash what adding did, saying what the entry was before (undoable)."""
    p = added.entry.pattern
    if added.moved_from:
        flash(_("%(p)s moved from the %(a)s to the %(b)s.", p=p, a=_list_name(added.moved_from),
                b=_list_name(which)), "undo")
    else:
        flash(_("%(p)s is on the %(l)s.", p=p, l=_list_name(which)), "undo")
    if added.before is not None and added.kept and request.form.get("existing") != "replace":
        flash(_("It keeps its label and time window."), "info")
    if added.before is not None and not added.before.enabled:
        flash(_("It was switched off; it is on again."), "info")


@bp.post("/add")
def add() -> str | Response:
    """Add a number, prefix or class to a list (or move it there), asking first when that would cover a whole
    country or network, or replace the label and time window the pattern already has."""
    s = db.session()
    try:
        which, pattern, label, window = _form_entry(db.config().screening.region)
    except ValueError as e:
        keep_form()
        flash(str(e), "error")
        return _back()
    wide = wide_prefix(pattern)
    if wide is not None and request.form.get("force") != "1":
        return _confirm(pattern, wide=wide)
    existing = request.form.get("existing", "")
    if existing == "keep":
        label, window = "", None
    before = snapshot(_entry(s, pattern))
    try:
        added = add_entry(s, which, pattern, label=label, window=window, source="dashboard",
                          replace=existing == "replace")
    except EntryConflict as e:
        return _confirm(pattern, before=e.before)
    _remember_undo(pattern, before)
    _said(added, which)
    return _back()


@bp.route("/<int:entry_id>/edit", methods=["GET", "POST"])
def edit(entry_id: int) -> str | Response:
    """Change an entry's list, pattern, label or time window."""
    s = db.session()
    entry = s.get(ListEntry, entry_id) or abort(404)
    if request.method == "GET":
        w = entry.window
        return render_template("list_edit.html", e=entry, actions=ACTIONS, days=format_days(w.days) if w else "")
    try:
        which, pattern, label, window = _form_entry(db.config().screening.region)
    except ValueError as e:
        keep_form()
        flash(str(e), "error")
        return redirect(url_for("lists.edit", entry_id=entry_id))
    if pattern != entry.pattern and _entry(s, pattern) is not None:
        flash(_("%(p)s already has an entry; edit that one instead.", p=pattern), "error")
        return redirect(url_for("lists.edit", entry_id=entry_id))
    wide = wide_prefix(pattern)
    if wide is not None and pattern != entry.pattern and request.form.get("force") != "1":
        return _confirm(pattern, wide=wide)
    entry.pattern = pattern
    put_entry(s, which, pattern, label=label, source=entry.source, window=window)
    flash(_("Saved %(p)s.", p=pattern), "info")
    return redirect(url_for("lists.index", list=which))


@bp.post("/<int:entry_id>/switch")
def switch(entry_id: int) -> Response:
    """Switch an entry off (it stays, with its label, window and hits, but decides no call) or on again."""
    s = db.session()
    entry = s.get(ListEntry, entry_id) or abort(404)
    _remember_undo(entry.pattern, snapshot(entry))
    entry.enabled = not entry.enabled
    if entry.enabled:
        flash(_("Switched on: %(p)s.", p=entry.pattern), "undo")
    else:
        flash(_("Switched off: %(p)s. It stays on the list and decides no call.", p=entry.pattern), "undo")
    return _back()


@bp.post("/<int:entry_id>/delete")
def delete(entry_id: int) -> Response:
    """Delete an entry (undoable)."""
    s = db.session()
    entry = s.get(ListEntry, entry_id) or abort(404)
    pattern = entry.pattern
    _remember_undo(pattern, snapshot(entry))
    s.delete(entry)
    flash(_("Removed %(p)s.", p=pattern), "undo")
    return _back()


@bp.post("/quick")
def quick() -> Response:
    """One click from the log or a number page: put a number or range on the allow or block list.

    The form's button carries `op` = "block +390212345678" or "allow ...", so one form serves a whole row."""
    s = db.session()
    which, _sep, text = request.form.get("op", "").partition(" ")
    if which not in ("allow", "block"):
        abort(400)
    try:
        pattern = normalize_pattern(text, db.config().screening.region)
    except ValueError as e:
        flash(str(e), "error")
        return _back("calls.index")
    wide = wide_prefix(pattern)
    if wide is not None:
        flash(_("%(p)s covers %(w)s: add it on the Lists page if you mean it.", p=pattern, w=wide_words(wide)),
              "error")
        return _back("calls.index")
    before = snapshot(_entry(s, pattern))
    added = add_entry(s, which, pattern, source="dashboard")  # keeps the label and window it has
    _remember_undo(pattern, before)
    _said(added, which)
    return _back("calls.index")


@bp.post("/undo")
def undo() -> Response:
    """Undo the last list change made from the dashboard."""
    last = session.pop("undo", None)
    if not last:
        flash(_("Nothing to undo."), "info")
        return _back()
    s = db.session()
    pattern = last["pattern"]
    restore(s, pattern, last["before"])
    flash(_("Undone: %(p)s is back as it was.", p=pattern), "info")
    return _back()


@bp.post("/preset")
def preset() -> Response:
    """Apply a preset; patterns that already have an entry keep the user's choice (screener.presets.apply)."""
    name = request.form.get("preset", "")
    if name not in PRESETS:
        abort(400)
    done = presets.apply(db.session(), name)
    flash(_("Preset applied: %(a)d added, %(k)d already had an entry.", a=done.added, k=done.kept), "info")
    return redirect(url_for("lists.index"))


@bp.post("/import")
@db.read_only
def import_csv() -> str | Response:
    """Import a CSV into a list: good rows are imported, bad rows reported with line and reason.

    The whole file is parsed and checked first, without touching the database; the rows then go in through
    csvio.import_rows, a few hundred per transaction, so the SIP service never waits long to log a call."""
    which = request.form.get("list", "")
    upload = request.files.get("file")
    if which not in ACTIONS or upload is None or not upload.filename:
        flash(_("Choose a list and a CSV file."), "error")
        return redirect(url_for("lists.index"))
    try:
        report = csvio.parse_csv(upload.read(), db.config().screening.region)
    except csvio.UnreadableFile as e:
        flash(_("%(f)s: %(why)s", f=upload.filename, why=_unreadable(e.kind)), "error")
        return redirect(url_for("lists.index"))
    result = csvio.import_rows(db.store(), which, report.rows, source="csv import")
    if result.imported:
        db.clear_cache()
    skipped = sorted((report.lines.get(p, 0), p) for p in result.skipped)
    notes = [(line, _zero_note(n)) for line, n in report.notes]
    return render_template("import_report.html", count=result.imported, total=result.total,
                           failure=result.error, which=which, filename=upload.filename,
                           errors=report.errors[:MAX_REPORTED_ERRORS], more_errors=len(report.errors),
                           skipped=skipped[:MAX_REPORTED_ERRORS], more_skipped=len(skipped),
                           notes=notes[:MAX_REPORTED_ERRORS], more_notes=len(notes))


def _unreadable(kind: str) -> str:
    return {
        "xlsx": _("this is an Excel workbook (.xlsx), not a CSV file. In the spreadsheet, save it as "
                  "\u201cCSV UTF-8\u201d or \u201cUnicode text\u201d and import that file."),
        "xls": _("this is an Excel 97-2003 workbook (.xls), not a CSV file. In the spreadsheet, save it as "
                 "\u201cCSV UTF-8\u201d or \u201cUnicode text\u201d and import that file."),
        "pdf": _("this is a PDF document, not a CSV file."),
    }.get(kind, _("this is not a text file. Import a list saved as CSV."))


def _zero_note(note: csvio.ZeroNote) -> str:
    from screener.numbers import national_format

    if note.kind == "added":
        return _("%(w)s was read as %(n)s: a spreadsheet had dropped its leading 0 (format the column as text).",
                 w=note.written, n=national_format(note.number))
    return _("%(w)s is not a valid number, with or without a leading 0: imported as written. If a spreadsheet "
             "dropped its leading 0, write it with the 0 and import it again.", w=note.written)


@bp.get("/export.csv")
def export() -> Response:
    """Every entry of every list as CSV, cells neutralised against spreadsheet formulas."""
    s = db.session()
    entries = s.scalars(select(ListEntry).order_by(ListEntry.list, ListEntry.pattern).execution_options(
        yield_per=2000))
    body = csvio.export_csv(csvio.entry_row(e) for e in entries)
    stamp = utcnow().strftime("%Y%m%d")
    return Response(body, mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="screener-lists-{stamp}.csv"'})


def _list_name(which: str) -> str:
    from web.labels import label

    return label("list", which)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
