"""Evidence export: code-of-conduct hours (edges, Sundays, holidays, the DST nights), rows, CSV neutralisation,
the summary, and the `screener evidence` command."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from screener import cli, store
from screener.evidence import (
    FIELDS,
    called_line,
    easter,
    evidence_csv,
    evidence_rows,
    italian_holidays,
    outside_code_hours,
    summarize,
)

ROME = ZoneInfo("Europe/Rome")


@dataclass
class FakeCall:
    started_at: datetime
    call_id: str = "a84b4c76e66710@pc33.example"
    from_raw: str = "<sip:0212345678@fritz.box>"
    pai_raw: str | None = None
    called_line: str = "<sip:0298765432@fritz.box>"
    name: str = ""
    caller_raw: str = "0212345678"
    e164: str | None = "+390212345678"
    withheld: bool = False
    decision: str = "screen"
    rule: str = ""
    reason: str = "no rule matched"
    outcome: str | None = "failed_challenge"
    digits: str = ""
    duration_s: float | None = 8.04
    talk_s: float | None = None
    voicemail_path: str | None = None


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- hours ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("local", "outside"), [
    ("2026-03-02T08:59:59", True),  # Monday
    ("2026-03-02T09:00:00", False),
    ("2026-03-02T13:00:00", False),
    ("2026-03-02T20:00:00", False),
    ("2026-03-02T20:00:59", False),  # printed as 20:00: not flagged
    ("2026-03-02T20:01:00", True),
    ("2026-03-06T21:30:00", True),  # Friday evening
    ("2026-03-07T09:59:00", True),  # Saturday
    ("2026-03-07T10:00:00", False),
    ("2026-03-07T19:00:00", False),
    ("2026-03-07T19:00:59", False),
    ("2026-03-07T19:01:00", True),
    ("2026-03-07T19:30:00", True),
    ("2026-03-08T12:00:00", True),  # Sunday
    ("2026-04-05T12:00:00", True),  # Easter Sunday 2026
    ("2026-04-06T11:00:00", True),  # Easter Monday 2026
    ("2026-04-07T11:00:00", False),
    ("2025-04-21T11:00:00", True),  # Easter Monday 2025
    ("2026-01-01T11:00:00", True),
    ("2026-01-06T11:00:00", True),  # Epiphany, a Tuesday
    ("2026-04-25T11:00:00", True),  # Liberation Day, a Saturday
    ("2026-05-01T11:00:00", True),
    ("2026-06-02T11:00:00", True),
    ("2026-08-14T11:00:00", False),
    ("2026-08-15T11:00:00", True),
    ("2026-11-02T11:00:00", False),
    ("2026-12-08T11:00:00", True),
    ("2026-12-24T11:00:00", False),  # Christmas Eve is a working day
    ("2025-12-26T11:00:00", True),  # St Stephen's, a Friday
])
def test_outside_code_hours(local: str, outside: bool) -> None:
    assert outside_code_hours(datetime.fromisoformat(local).replace(tzinfo=ROME)) is outside


@pytest.mark.parametrize(("year", "sunday"), [
    (1818, date(1818, 3, 22)), (1943, date(1943, 4, 25)), (2000, date(2000, 4, 23)), (2024, date(2024, 3, 31)),
    (2025, date(2025, 4, 20)), (2026, date(2026, 4, 5)), (2027, date(2027, 3, 28)), (2038, date(2038, 4, 25)),
    (2285, date(2285, 3, 22)),
])
def test_easter(year: int, sunday: date) -> None:
    assert easter(year) == sunday
    assert easter(year).weekday() == 6


def test_italian_holidays_2026() -> None:
    assert sorted(italian_holidays(2026)) == [
        date(2026, 1, 1), date(2026, 1, 6), date(2026, 4, 6), date(2026, 4, 25), date(2026, 5, 1), date(2026, 6, 2),
        date(2026, 8, 15), date(2026, 11, 1), date(2026, 12, 8), date(2026, 12, 25), date(2026, 12, 26)]


# --- rows -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("started", "local", "outside"), [
    # the spring-forward night: 02:00 CET becomes 03:00 CEST on Sunday 29 March 2026
    ("2026-03-28T18:30:00", "2026-03-28T19:30:00+01:00", True),  # Saturday after 19:00
    ("2026-03-29T00:30:00", "2026-03-29T01:30:00+01:00", True),
    ("2026-03-29T01:30:00", "2026-03-29T03:30:00+02:00", True),
    ("2026-03-30T07:30:00", "2026-03-30T09:30:00+02:00", False),  # 08:30 if the offset were still +01:00
    # the fall-back night: 02:30 happens twice on Sunday 25 October 2026, told apart by the offset
    ("2026-10-25T00:30:00", "2026-10-25T02:30:00+02:00", True),
    ("2026-10-25T01:30:00", "2026-10-25T02:30:00+01:00", True),
    ("2026-10-26T07:30:00", "2026-10-26T08:30:00+01:00", True),  # 09:30 if the offset were still +02:00
    ("2026-10-26T08:00:00", "2026-10-26T09:00:00+01:00", False),
])
def test_rows_use_the_local_offset_of_each_call(started: str, local: str, outside: bool) -> None:
    [row] = evidence_rows([FakeCall(utc(started))], ROME, None)
    assert row["local_time"] == local
    assert row["utc_time"] == started + "Z"
    assert row["outside_code_hours"] is outside


def test_row_fields() -> None:
    call = FakeCall(utc("2026-03-04T11:00:00.250"), name="Energia Srl", pai_raw="<sip:+390212345678@carrier>",
                    digits="5", voicemail_path="voicemail/1.wav", rule="screen foreign")
    [row] = evidence_rows([call], ROME, "ignored")
    assert tuple(row) == FIELDS
    assert row == {
        "local_time": "2026-03-04T12:00:00+01:00", "utc_time": "2026-03-04T11:00:00Z", "line": "0298765432",
        "caller_raw": "0212345678", "e164": "+390212345678", "withheld": False, "name": "Energia Srl",
        "call_id": "a84b4c76e66710@pc33.example", "from_raw": "<sip:0212345678@fritz.box>",
        "pai_raw": "<sip:+390212345678@carrier>", "decision": "screen", "outcome": "failed_challenge",
        "rule": "screen foreign", "reason": "no rule matched", "duration_s": 8.0, "talk_s": None,
        "digits": "5", "voicemail": True,
        "silent_message": False, "outside_code_hours": False}


def test_silent_message_is_flagged() -> None:
    call = FakeCall(utc("2026-03-04T11:00:00"), outcome="passed", reason="no rule matched: default screen; silent message")
    [row] = evidence_rows([call], ROME, None)
    assert (row["silent_message"], row["voicemail"]) == (True, False)


def test_withheld_call() -> None:
    call = FakeCall(utc("2026-03-04T11:00:00"), from_raw='"Anonymous" <sip:anonymous@anonymous.invalid>',
                    caller_raw="anonymous", e164=None, withheld=True, outcome=None, duration_s=None)
    [row] = evidence_rows([call], ROME, None)
    assert (row["withheld"], row["e164"], row["caller_raw"], row["outcome"], row["duration_s"]) == (
        True, "", "anonymous", "", None)
    [header, cells] = list(csv.reader(io.StringIO(evidence_csv([row]))))
    got = dict(zip(header, cells, strict=True))
    assert (got["withheld"], got["e164"], got["outcome"], got["duration_s"], got["voicemail"]) == (
        "yes", "", "", "", "no")


@pytest.mark.parametrize(("recorded", "given", "line"), [
    ("<sip:0298765432@fritz.box>", None, "0298765432"),
    ("<sip:0298765432@fritz.box>", "0211111111", "0298765432"),  # what the call recorded wins
    ("sip:+390298765432@provider.it;user=phone", None, "+390298765432"),
    ("tel:+39 02 9876 5432", None, "+390298765432"),
    ("<sip:screener@fritz.box>", "02 9876 5432", "02 9876 5432"),  # an IP phone's user name is no line
    ("<sip:screener@fritz.box>", None, "<sip:screener@fritz.box>"),
    ("", "02 9876 5432", "02 9876 5432"),
    ("", None, ""),
])
def test_called_line(recorded: str, given: str | None, line: str) -> None:
    assert called_line(recorded, given) == line


@pytest.mark.parametrize("hostile", [
    "=HYPERLINK(\"http://evil.example\",\"x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A2)", "\tleading tab",
    "\rleading CR",
])
def test_csv_neutralises_formulas(hostile: str) -> None:
    call = FakeCall(utc("2026-03-04T11:00:00"), name=hostile, caller_raw=hostile, from_raw=hostile, reason=hostile,
                    digits=hostile, call_id=hostile)
    [header, cells] = list(csv.reader(io.StringIO(evidence_csv(evidence_rows([call], ROME, None))), strict=True))
    assert tuple(header) == FIELDS
    got = dict(zip(header, cells, strict=True))
    for key in ("name", "caller_raw", "from_raw", "reason", "digits", "call_id"):
        assert got[key] == "'" + hostile
    assert got["e164"] == "+390212345678"  # a plain number runs nothing: kept readable
    assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells if c != "+390212345678")


def test_csv_of_nothing_is_the_header() -> None:
    assert evidence_csv([]) == ",".join(f'"{f}"' for f in FIELDS) + "\r\n"


def test_summary() -> None:
    calls = [
        FakeCall(utc("2026-03-08T11:00:00")),  # Sunday
        FakeCall(utc("2026-03-04T11:00:00"), e164="+390844123456", caller_raw="0844123456", called_line=""),
        FakeCall(utc("2026-03-05T11:00:00")),
        FakeCall(utc("2026-03-05T20:30:00"), e164=None, caller_raw="anonymous", withheld=True),
        FakeCall(utc("2026-03-06T11:00:00"), e164=None, caller_raw="Unknown caller"),
    ]
    s = summarize(evidence_rows(calls, ROME, "0211111111"))
    assert (s.count, s.first, s.last) == (5, "2026-03-04T12:00:00+01:00", "2026-03-08T12:00:00+01:00")
    assert (s.outside_code_hours, s.withheld) == (2, 1)
    assert s.lines == ("0211111111", "0298765432")
    assert s.numbers == (("+390212345678", 2), ("+390844123456", 1), ("Unknown caller", 1))


def test_summary_of_nothing() -> None:
    s = summarize([])
    assert (s.count, s.first, s.last, s.outside_code_hours, s.withheld, s.lines, s.numbers) == (
        0, "", "", 0, 0, (), ())


# --- the command ----------------------------------------------------------------------------------------


@pytest.fixture
def conf(write_config: Callable[[str], Path]) -> Path:
    return write_config('[screening]\ntimezone = "Europe/Rome"\n')


@pytest.fixture
def run(conf: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    def run_(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = cli.main(["--config", str(conf), "evidence", *argv])
        out, err = capsys.readouterr()
        return status, out, err

    return run_


def _seed(db: store.Store) -> None:
    base: dict[str, Any] = {"decision": "screen", "outcome": "failed_challenge", "number_type": "fixed_line",
                            "country": "IT", "called_line": "<sip:0298765432@fritz.box>", "duration_s": 6.0}
    with db.write() as s:
        s.add_all([
            store.Call(started_at=utc("2026-03-02T10:00:00"), caller_raw="0212345678", e164="+390212345678",
                       name="=cmd|' /C calc'!A0", call_id="one@x", **base),
            store.Call(started_at=utc("2026-03-07T18:30:00"), caller_raw="0212345678", e164="+390212345678",
                       call_id="two@x", **base),  # Saturday 19:30 local
            store.Call(started_at=utc("2026-03-03T10:00:00"), caller_raw="0844123456", e164="+390844123456",
                       call_id="three@x", **base),
            store.Call(started_at=utc("2026-03-31T22:30:00"), caller_raw="0212345678", e164="+390212345678",
                       call_id="four@x", **{**base, "called_line": ""}),  # 1 April local
        ])


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_cli_writes_csv_to_stdout_oldest_first(run: Callable[..., tuple[int, str, str]], db: store.Store) -> None:
    _seed(db)
    status, out, err = run("-")
    assert (status, err) == (0, "")
    rows = _csv(out)
    assert [r["call_id"] for r in rows] == ["one@x", "three@x", "two@x", "four@x"]
    assert rows[0]["name"] == "'=cmd|' /C calc'!A0"
    assert rows[0]["local_time"] == "2026-03-02T11:00:00+01:00"
    assert [r["outside_code_hours"] for r in rows] == ["no", "no", "yes", "yes"]  # Saturday 19:30, 00:30
    assert rows[3]["local_time"] == "2026-04-01T00:30:00+02:00" and rows[3]["line"] == ""


def test_cli_filters_by_number_and_local_days(run: Callable[..., tuple[int, str, str]], db: store.Store) -> None:
    _seed(db)
    status, out, _ = run("--number", "02 1234 5678", "--from", "2026-03-03", "--to", "2026-04-01", "-")
    assert status == 0
    assert [r["call_id"] for r in _csv(out)] == ["two@x", "four@x"]
    # --to takes the whole local day; 2026-03-31 ends before the call at 00:30 local on 1 April
    status, out, _ = run("--to", "2026-03-31", "--line", "02 9876 5432", "-")
    assert [r["call_id"] for r in _csv(out)] == ["one@x", "three@x", "two@x"]


def test_cli_json_to_a_file(run: Callable[..., tuple[int, str, str]], db: store.Store, tmp_path: Path) -> None:
    _seed(db)
    target = tmp_path / "evidence.json"
    status, out, err = run("--json", "--number", "+390212345678", "--line", "0298765432", str(target))
    assert (status, err) == (0, "")
    assert out == f"3 calls written to {target}, 2 outside the code-of-conduct hours\n"
    rows = json.loads(target.read_text(encoding="utf-8"))
    assert [tuple(r) for r in rows] == [FIELDS] * 3
    assert [(r["call_id"], r["line"], r["withheld"], r["outside_code_hours"]) for r in rows] == [
        ("one@x", "0298765432", False, False), ("two@x", "0298765432", False, True),
        ("four@x", "0298765432", False, True)]
    assert rows[0]["name"] == "=cmd|' /C calc'!A0"  # JSON keeps the value as it is


def test_cli_empty_log(run: Callable[..., tuple[int, str, str]], db: store.Store) -> None:
    assert run("-") == (0, ",".join(f'"{f}"' for f in FIELDS) + "\r\n", "")
    assert run("--json", "-") == (0, "[]\n", "")


@pytest.mark.parametrize(("argv", "message"), [
    (["--from", "31/03/2026", "-"], "--from must be a date like 2026-01-31, got '31/03/2026'"),
    (["--to", "yesterday", "-"], "--to must be a date like 2026-01-31, got 'yesterday'"),
    (["--from", "2026-04-02", "--to", "2026-04-01", "-"], "--from 2026-04-02 is after --to 2026-04-01"),
    (["--number", "not a number", "-"], "--number must be a phone number, got 'not a number'"),
])
def test_cli_bad_arguments(run: Callable[..., tuple[int, str, str]], db: store.Store, argv: list[str],
                           message: str) -> None:
    assert run(*argv) == (2, "", f"screener: {message}\n")


def test_cli_unwritable_file(run: Callable[..., tuple[int, str, str]], db: store.Store, tmp_path: Path) -> None:
    status, out, err = run(str(tmp_path / "missing" / "evidence.csv"))
    assert (status, out) == (1, "")
    assert err.startswith(f"screener: {tmp_path / 'missing' / 'evidence.csv'}: ")


def test_dates_in_the_past_year_still_get_their_holidays() -> None:
    # the holiday set is computed per year: a report spanning New Year flags both 1 January and 6 January
    days = [datetime(2025, 12, 31, 11, tzinfo=ROME) + timedelta(days=n) for n in range(7)]
    assert [outside_code_hours(d) for d in days] == [False, True, False, False, True, False, True]


def test_csv_quotes_every_cell_strips_bidi_and_splits_safely_on_semicolons() -> None:
    call = FakeCall(utc("2026-03-04T11:00:00"), name="\u202eRossi;=cmd|' /C calc'!A0\u2069",
                    from_raw="<sip:\u2066+390212345678@x>", reason="a;@SUM(A1)")
    text = evidence_csv(evidence_rows([call], ROME, None))
    assert all(line.startswith('"') and line.endswith('"') for line in text.splitlines())
    got = dict(zip(*csv.reader(io.StringIO(text)), strict=True))
    assert got["name"] == "Rossi;'=cmd|' /C calc'!A0"
    assert got["from_raw"] == "<sip:+390212345678@x>"
    assert got["reason"] == "a;'@SUM(A1)"
