"""Evidence for a complaint about unwanted calls, pure: call rows -> the fields a regulator's form asks for, as
dicts, CSV and a summary, each call flagged when it fell outside the hours of Italy's telemarketing code of
conduct (Garante, in force 28 Sep 2024: Mon-Fri 09:00-20:00, Sat 10:00-19:00, never Sundays or holidays).
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from typing import Any, Protocol

from screener.audio import SILENT_MESSAGE
from screener.csvio import neutralise, writer
from screener.numbers import parse_caller

FIELDS = ("local_time", "utc_time", "line", "caller_raw", "e164", "withheld", "name", "call_id", "from_raw",
          "pai_raw", "decision", "outcome", "rule", "reason", "duration_s", "talk_s", "digits", "voicemail",
          "silent_message", "outside_code_hours")
# (first, last) allowed minute per weekday, Monday = 0; Sunday has none
CODE_HOURS: dict[int, tuple[time, time]] = {
    **{d: (time(9, 0), time(20, 0)) for d in range(5)},
    5: (time(10, 0), time(19, 0)),
}
_FIXED_HOLIDAYS = ((1, 1), (1, 6), (4, 25), (5, 1), (6, 2), (8, 15), (11, 1), (12, 8), (12, 25), (12, 26))
_PHONE_LIKE = re.compile(r"\+?\d{3,}")


class CallLike(Protocol):
    started_at: datetime
    call_id: str
    from_raw: str
    pai_raw: str | None
    called_line: str
    name: str
    caller_raw: str
    e164: str | None
    withheld: bool
    decision: str
    rule: str
    reason: str
    outcome: str | None
    digits: str
    duration_s: float | None
    talk_s: float | None
    voicemail_path: str | None


@dataclass(frozen=True)
class Summary:
    """The report header: how many calls, over which span, how many outside the code's hours, from whom."""

    count: int
    first: str  # local ISO-8601 time of the oldest call, "" without calls
    last: str
    outside_code_hours: int
    withheld: int
    lines: tuple[str, ...]  # the lines that received the calls
    numbers: tuple[tuple[str, int], ...]  # (E.164 or number as shown, calls), busiest first


def easter(year: int) -> date:
    """Easter Sunday in the Gregorian calendar (the Meeus/Jones/Butcher computus)."""
    a = year % 19
    century, yy = divmod(year, 100)
    s, t = divmod(century, 4)
    g = (century - (century + 8) // 25 + 1) // 3
    h = (19 * a + century - s - g + 15) % 30
    u, v = divmod(yy, 4)
    wd = (32 + 2 * t + 2 * u - h - v) % 7
    m = (a + 11 * h + 22 * wd) // 451
    month, day = divmod(h + wd - 7 * m + 114, 31)
    return date(year, month, day + 1)


@lru_cache(maxsize=64)
def italian_holidays(year: int) -> frozenset[date]:
    """Italy's national public holidays in `year` (Easter Monday included; local patron saints are not)."""
    return frozenset({date(year, m, d) for m, d in _FIXED_HOLIDAYS} | {easter(year) + timedelta(days=1)})


def outside_code_hours(local: datetime) -> bool:
    """True when a call at wall-clock time `local` fell outside the code of conduct's calling hours.

    Judged to the minute, as the report prints the time: a call at 19:00:40 on a Saturday is inside, at
    19:01 outside, so every flagged call can be seen to be outside from its printed time.
    """
    if local.date() in italian_holidays(local.year):
        return True
    hours = CODE_HOURS.get(local.weekday())
    if hours is None:
        return True
    minute = local.time().replace(second=0, microsecond=0, tzinfo=None)
    return not hours[0] <= minute <= hours[1]


def called_line(recorded: str, fallback: str | None) -> str:
    """The line a call reached: the number in the recorded P-Called-Party-ID / To value; `fallback` when that
    holds no number (a FRITZ!Box addresses its IP phones by user name); else the recorded value as it is."""
    if recorded:
        user = parse_caller(recorded).user
        if _PHONE_LIKE.fullmatch(user):
            return user
    return fallback or recorded


def evidence_rows(calls: Iterable[CallLike], tz: tzinfo, line: str | None) -> list[dict[str, Any]]:
    """One dict per call with FIELDS as keys, in the order given; `line` stands in for a call's line when the
    call did not record one."""
    rows = []
    for c in calls:
        local = c.started_at.astimezone(tz)
        rows.append({
            "local_time": local.isoformat(timespec="seconds"),
            "utc_time": c.started_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "line": called_line(c.called_line, line),
            "caller_raw": c.caller_raw,
            "e164": c.e164 or "",
            "withheld": bool(c.withheld),
            "name": c.name,
            "call_id": c.call_id,
            "from_raw": c.from_raw,
            "pai_raw": c.pai_raw or "",
            "decision": c.decision,
            "outcome": c.outcome or "",
            "rule": c.rule,
            "reason": c.reason,
            "duration_s": round(c.duration_s, 1) if c.duration_s is not None else None,
            "talk_s": round(c.talk_s, 1) if c.talk_s is not None else None,
            "digits": c.digits,
            "voicemail": bool(c.voicemail_path),
            "silent_message": SILENT_MESSAGE in c.reason.split("; "),
            "outside_code_hours": outside_code_hours(local),
        })
    return rows


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return neutralise(value)


def evidence_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV text with a header of FIELDS; yes/no for flags, every cell quoted, without bidirectional overrides
    and neutralised against formula injection (csvio.neutralise)."""
    out = io.StringIO()
    w = writer(out)
    w.writerow(FIELDS)
    for row in rows:
        w.writerow([_cell(row[k]) for k in FIELDS])
    return out.getvalue()


def summarize(rows: Sequence[Mapping[str, Any]]) -> Summary:
    """The summary of rows in any order."""
    times = sorted((r["utc_time"], r["local_time"]) for r in rows)
    shown = (r["e164"] or r["caller_raw"] for r in rows if not r["withheld"])
    numbers = Counter(n for n in shown if n)
    return Summary(
        count=len(rows),
        first=times[0][1] if times else "",
        last=times[-1][1] if times else "",
        outside_code_hours=sum(1 for r in rows if r["outside_code_hours"]),
        withheld=sum(1 for r in rows if r["withheld"]),
        lines=tuple(sorted({r["line"] for r in rows if r["line"]})),
        numbers=tuple(sorted(numbers.items(), key=lambda kv: (-kv[1], kv[0]))),
    )
