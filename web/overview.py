"""The overview: registration status (not running without a fresh heartbeat), today's calls by outcome,
blocked this week, the latest calls and what was done with them, 30 days as a chart, the latest voicemails."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta

from flask import Blueprint, Flask, render_template
from flask_babel import gettext as _
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from screener.health import BEAT_FILE, freshest, judge, read_beat_file
from screener.store import OUTCOMES, Call, get_sip_status, utcnow
from web import db
from web.chart import stacked_bars
from web.format import local_day_start, zone
from web.labels import label

bp = Blueprint("overview", __name__)
PAST_DAYS_TTL = 300.0
LATEST_CALLS = 8


def outcome_counts(s: Session, since: datetime) -> dict[str, int]:
    """Calls since `since` by outcome; `outcome IN (...)` keeps SQLite on the (outcome, started_at) index."""
    rows = s.execute(select(Call.outcome, func.count()).where(Call.outcome.in_(OUTCOMES), Call.started_at >= since)
                     .group_by(Call.outcome)).all()
    return {o: n for o, n in rows}


def per_day(s: Session, first: date, days: int, *, since: datetime | None = None,
            until: datetime | None = None) -> dict[str, list[int]]:
    """Calls per local day by outcome for `days` days from `first` (optionally only those in [since, until)):
    counted per UTC hour in SQL, then placed on local days here, which stays right across DST changes."""
    tz = zone()
    since = since or local_day_start(first, tz)
    if s.get_bind().dialect.name == "postgresql":
        hour = func.to_char(Call.started_at, "YYYY-MM-DD HH24")
    else:
        hour = func.strftime("%Y-%m-%d %H", Call.started_at)
    stmt = select(hour, Call.outcome, func.count()).where(Call.outcome.in_(OUTCOMES), Call.started_at >= since)
    if until is not None:
        stmt = stmt.where(Call.started_at < until)
    out = {o: [0] * days for o in OUTCOMES}
    slot: dict[str, int] = {}  # hour -> day index; ~720 hours but ~8x as many rows
    for h, outcome, n in s.execute(stmt.group_by(hour, Call.outcome)).all():
        i = slot.get(h)
        if i is None:
            utc = datetime(int(h[:4]), int(h[5:7]), int(h[8:10]), int(h[11:13]), tzinfo=UTC)
            i = slot[h] = (utc.astimezone(tz).date() - first).days
        if 0 <= i < days:
            out[outcome][i] += n
    return out


def chart_counts(s: Session, first: date, today: date) -> dict[str, list[int]]:
    """per_day() up to today; the days before today change rarely, so they are cached for a few minutes."""
    days = (today - first).days + 1
    midnight = local_day_start(today, zone())
    past = db.cached(("per_day", first, today), PAST_DAYS_TTL, lambda: per_day(s, first, days, until=midnight))
    now = per_day(s, first, days, since=midnight)
    return {o: [a + b for a, b in zip(past[o], now[o], strict=True)] for o in OUTCOMES}


@bp.get("/")
def index() -> str:
    """The overview page."""
    s = db.session()
    tz = zone()
    today = utcnow().astimezone(tz).date()
    week_start = today - timedelta(days=today.weekday())
    today_counts = outcome_counts(s, local_day_start(today, tz))
    blocked_week = outcome_counts(s, local_day_start(week_start, tz)).get("blocked", 0)
    first = today - timedelta(days=29)
    counts = chart_counts(s, first, today)
    days = [first + timedelta(days=i) for i in range(30)]
    series = [(o, label("outcome", o), counts[o]) for o in OUTCOMES if any(counts[o])]
    chart = stacked_bars(days, series, title=_("Calls per day by outcome, last 30 days"))
    # Bounded to 90 days: there is no index on voicemail_path, and a scan of all history would not be.
    voicemails = list(s.scalars(select(Call).where(Call.voicemail_path.is_not(None),
                                                   Call.started_at >= utcnow() - timedelta(days=90))
                                .order_by(Call.started_at.desc(), Call.id.desc()).limit(5)))
    latest = list(s.scalars(select(Call).order_by(Call.started_at.desc(), Call.id.desc()).limit(LATEST_CALLS)))
    status = freshest(get_sip_status(s), read_beat_file(db.data_path() / BEAT_FILE))
    # a service killed with SIGKILL (or hung) leaves "registered" behind: only a fresh heartbeat counts
    health = judge(status.state if status else None, status.heartbeat_at if status else None, utcnow())
    return render_template("overview.html", status=status, health=health, today=Counter(today_counts),
                           today_total=sum(today_counts.values()), blocked_week=blocked_week, chart=chart,
                           series=series, voicemails=voicemails, latest=latest, today_date=today.isoformat(),
                           outcomes=OUTCOMES, total_30=sum(sum(c) for c in counts.values()))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
