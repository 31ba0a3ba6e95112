"""The `screener` command: the only place that prints for humans and calls sys.exit.

Exit status: 0 done, 1 done in part or failed at run time (e.g. bad CSV rows), 2 bad usage or bad config.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import getpass
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.exc import OperationalError

from screener import config as config_mod
from screener.config import Config, ConfigError


class CliError(Exception):
    """A user-facing failure with its exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "config.example.toml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="screener", description="Self-hosted call screener for a home VoIP line.")
    p.add_argument("--config", metavar="PATH", help="config file (default: $SCREENER_CONFIG or ./config.toml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("init", help="create config.toml from the example if missing, and the database")
    db = sub.add_parser("db", help="database maintenance").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply database migrations")

    lk = sub.add_parser("lookup", help="what screener would do if NUMBER called now (or --at then)")
    lk.add_argument("number")
    lk.add_argument("--at", metavar="ISO-8601", help="the moment to judge, e.g. 2026-03-29T02:30 (local time)")
    lk.add_argument("--json", action="store_true")

    ls = sub.add_parser("list", help="manage the allow, block and screen lists").add_subparsers(
        dest="list_command", required=True)
    add = ls.add_parser("add", help="put a number, prefix (digits then *) or class on a list")
    add.add_argument("list", choices=("allow", "block", "screen"))
    add.add_argument("pattern")
    add.add_argument("--label", default="")
    add.add_argument("--days", help="e.g. mon-fri, sat,sun")
    add.add_argument("--from", dest="time_from", metavar="HH:MM")
    add.add_argument("--to", dest="time_to", metavar="HH:MM")
    add.add_argument("--replace", action="store_true",
                     help="replace the label and time window of an entry the pattern already has")
    add.add_argument("--force", action="store_true",
                     help="add a prefix that covers a whole country or network (fewer than 3 national digits)")
    rm = ls.add_parser("remove", help="remove a pattern from its list")
    rm.add_argument("pattern")
    for name, what in (("disable", "switch an entry off without deleting it"), ("enable", "switch an entry on")):
        ls.add_parser(name, help=what).add_argument("pattern")
    show = ls.add_parser("show", help="print the lists")
    show.add_argument("--json", action="store_true")
    imp = ls.add_parser("import", help="import a CSV file into a list")
    imp.add_argument("list", choices=("allow", "block", "screen"))
    imp.add_argument("file")
    exp = ls.add_parser("export", help="export every list to a CSV file ('-' for standard output)")
    exp.add_argument("file")
    pre = ls.add_parser("preset", help="apply a preset of rules")
    pre.add_argument("name")

    calls = sub.add_parser("calls", help="the call log, newest first")
    calls.add_argument("--limit", type=int, default=50)
    calls.add_argument("--json", action="store_true")

    ev = sub.add_parser("evidence", help="export calls as evidence for a complaint: CSV, or JSON with --json")
    ev.add_argument("file", help="the file to write ('-' for standard output)")
    ev.add_argument("--number", help="only calls from this number")
    ev.add_argument("--from", dest="day_from", metavar="DATE", help="first day (local), e.g. 2026-01-31")
    ev.add_argument("--to", dest="day_to", metavar="DATE", help="last day (local), included")
    ev.add_argument("--line", default="", help="the line that received the calls, for calls that did not record it")
    ev.add_argument("--json", action="store_true")

    cs = sub.add_parser("config", help="change the config file (its comments stay)").add_subparsers(
        dest="config_command", required=True)
    cset = cs.add_parser("set", help="set settings, e.g. sip.server=fritz.box screening.presets=it")
    cset.add_argument("assignments", nargs="+", metavar="KEY=VALUE")

    user = sub.add_parser("user", help="dashboard users").add_subparsers(dest="user_command", required=True)
    ua = user.add_parser("add", help="add a user or set a user's password")
    ua.add_argument("name")
    pw = ua.add_mutually_exclusive_group()
    pw.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    pw.add_argument("--password-file", metavar="FILE", help="read the password from the first line of FILE")

    sub.add_parser("status", help="the SIP registration state")
    sub.add_parser("notify-test", help="send a test notification to every [notify] URL now")
    bk = sub.add_parser("backup", help="a consistent copy of the database, also while screener runs")
    bk.add_argument("file")
    rs = sub.add_parser("restore", help="put a backup in place of the database (screener must be stopped)")
    rs.add_argument("file")
    sub.add_parser("run", help="run the SIP service and the dashboard")
    web = sub.add_parser("web", help="run the dashboard alone")
    web.add_argument("--nice", type=int, default=0, metavar="N",
                     help="lower its CPU priority by N (screener run starts it with 10: the line comes first)")
    web.add_argument("--parent", type=int, default=0, metavar="PID", help=argparse.SUPPRESS)
    web.add_argument("--report-fd", type=int, default=0, metavar="FD", help=argparse.SUPPRESS)
    return p


def _load(args: argparse.Namespace) -> Config:
    path = Path(args.config) if args.config else config_mod.default_path()
    return config_mod.load(path)


def _store(cfg: Config) -> Any:
    from screener import store

    st = store.Store(cfg.database_url)
    store.upgrade(st)
    return st


def _parse_at(text: str | None, tz: ZoneInfo) -> datetime:
    if not text:
        return datetime.now(tz)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--at must be an ISO-8601 date and time, got {text!r}") from None
    if at.tzinfo is None:
        # through UTC and back, so a wall-clock time that a daylight-saving jump skips is shown as it is judged
        at = at.replace(tzinfo=tz).astimezone(UTC).astimezone(tz)
    return at


def _write_out(file: str, text: str) -> bool:
    """Write `text` to `file`, or to standard output for "-"; True when a file was written."""
    if file == "-":
        sys.stdout.write(text)
        return False
    try:
        Path(file).write_text(text, encoding="utf-8", newline="")
    except OSError as e:
        raise CliError(f"{file}: {e.strerror}", 1) from None
    return True


# --- commands -------------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from screener import presets

    path = Path(args.config) if args.config else config_mod.default_path()
    if not path.exists():
        if not EXAMPLE_CONFIG.exists():
            raise CliError(f"{EXAMPLE_CONFIG}: the example config is missing", 1)
        shutil.copyfile(EXAMPLE_CONFIG, path)
        print(f"created {path} from the example: edit [sip] before `screener run`")
    cfg = config_mod.load(path)
    cfg.data_path.mkdir(parents=True, exist_ok=True)
    st = _store(cfg)
    with st.write() as s:
        applied = presets.apply_configured(s, cfg.screening.presets)
    for a in applied:
        print(_preset_line(a))
    print(f"database ready: {_safe_url(cfg.database_url)}")
    return 0


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_db(args: argparse.Namespace) -> int:
    cfg = _load(args)
    _store(cfg)
    print(f"database at the latest schema: {_safe_url(cfg.database_url)}")
    return 0


def lookup(cfg: Config, st: Any, number: str, at: datetime) -> dict[str, Any]:
    """The decision for `number` at `at`, through the same code the service uses, as a JSON-able dict."""
    from screener.numbers import parse_caller
    from screener.rules import decide

    sc = cfg.screening
    caller = parse_caller(number, sc.region)
    if caller.e164 is None and not caller.withheld and not caller.internal:
        raise CliError(f"not a phone number: {number!r} (e.g. 0212345678, +390212345678, anonymous for a "
                       "withheld caller, **9 for an internal call)")
    rules = st.ruleset(caller, region=sc.region, tz=ZoneInfo(sc.timezone), default=sc.default_action)
    d = decide(caller, rules, at)
    return {"input": number, "e164": caller.e164, "withheld": caller.withheld, "internal": caller.internal,
            "valid": caller.valid, "type": caller.type, "country": caller.country,
            "country_source": caller.country_source, "at": at.isoformat(), "decision": d.action,
            "rule": d.rule.pattern if d.rule else None, "rule_label": d.rule.label if d.rule else None,
            "reason": d.reason}


def cmd_lookup(args: argparse.Namespace) -> int:
    cfg = _load(args)
    at = _parse_at(args.at, ZoneInfo(cfg.screening.timezone))
    res = lookup(cfg, _store(cfg), args.number, at)
    if args.json:
        print(json.dumps(res, ensure_ascii=False))
    else:
        print(f"{res['input']}: {res['decision'].upper()} — {res['reason']}")
        print(f"  number {res['e164'] or '-'}  type {res['type']}  country {res['country'] or '-'}"
              f"  valid {'yes' if res['valid'] else 'no'}{'  withheld' if res['withheld'] else ''}")
    return 0


def _preset_line(a: Any) -> str:
    return f"preset {a.name}: {a.added} entries added" + (
        f", {a.kept} already had an entry and stay as they are" if a.kept else "")


def _entry_text(pattern: str, before: Any) -> str:
    """"+390212345678 on the allow list as "mum", mon-fri 09:00-18:00" (switched off)"."""
    return (f"{pattern} on the {before.list} list" + (f' as "{before.label}"' if before.label else "")
            + (f", {before.window}" if before.window else "") + ("" if before.enabled else " (switched off)"))


def _list_add(st: Any, args: argparse.Namespace, region: str) -> int:
    from screener import store
    from screener.rules import make_window, normalize_pattern, wide_prefix

    try:
        pattern = normalize_pattern(args.pattern, region)
        window = make_window(args.days, args.time_from, args.time_to)
    except ValueError as e:
        raise CliError(str(e)) from None
    wide = wide_prefix(pattern)
    if wide is not None and not args.force:
        raise CliError(f"{pattern} covers {wide}: add --force if you mean it", 1)
    try:
        with st.write() as s:
            added = store.add_entry(s, args.list, pattern, label=args.label, window=window, replace=args.replace)
            entry_window, before = added.entry.window, added.before
    except store.EntryConflict as e:
        raise CliError(f"{_entry_text(pattern, e.before)}: nothing changed; add --replace to replace its label "
                       "and time window, or leave out --label/--days/--from/--to to keep them", 1) from None
    if before is not None:
        kept = " (kept its label and time window)" if added.kept and not args.replace else ""
        print(f"was: {_entry_text(pattern, before)}" + kept)
    print(f"{pattern} is on the {args.list} list" + (f" ({entry_window})" if entry_window else ""))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from screener import csvio, presets, store
    from screener.rules import normalize_pattern

    cfg = _load(args)
    st = _store(cfg)
    region = cfg.screening.region
    sub = args.list_command
    if sub == "add":
        return _list_add(st, args, region)
    if sub in ("enable", "disable"):
        try:
            pattern = normalize_pattern(args.pattern, region)
        except ValueError as e:
            raise CliError(str(e)) from None
        with st.write() as s:
            entry = store.set_enabled(s, pattern, sub == "enable")
            if entry is None:
                raise CliError(f"{pattern} is on no list", 1)
            which = entry.list
        print(f"{pattern} on the {which} list is switched {'on' if sub == 'enable' else 'off'}")
        return 0
    if sub == "remove":
        try:
            pattern = normalize_pattern(args.pattern, region)
        except ValueError as e:
            raise CliError(str(e)) from None
        with st.write() as s:
            if not store.remove_entry(s, pattern):
                raise CliError(f"{pattern} is on no list", 1)
        print(f"{pattern} removed")
        return 0
    if sub == "show":
        with st.read() as s:
            entries = list(s.scalars(select(store.ListEntry).order_by(store.ListEntry.list, store.ListEntry.pattern)))
        if args.json:
            keys = csvio.EXPORT_COLUMNS
            print(json.dumps([dict(zip(keys, csvio.entry_row(e), strict=True)) for e in entries], ensure_ascii=False))
        elif not entries:
            print("the lists are empty: add a number with `screener list add block NUMBER`, or a preset with "
                  "`screener list preset it`")
        else:
            for entry in entries:
                w = entry.window
                print(f"{entry.list:6} {entry.pattern:20} {entry.label}" + (f"  [{w}]" if w else "")
                      + f"  ({entry.source}, {entry.hit_count} hits)" + ("" if entry.enabled else "  OFF"))
        return 0
    if sub == "import":
        try:
            data = Path(args.file).read_bytes()
        except OSError as e:
            raise CliError(f"{args.file}: {e.strerror}", 1) from None
        # parsing 100,000 numbers is seconds of CPU: a running service's calls come first
        with _lower_priority(IMPORT_NICE):
            try:
                report = csvio.parse_csv(data, region)
            except csvio.UnreadableFile as e:
                raise CliError(f"{args.file}: {e}", 1) from None
            # the same batched import as the dashboard: a running service's call rows never wait for it long
            res = csvio.import_rows(st, args.list, report.rows, source="import")
        lines = sorted([*report.errors, *((report.lines[p], f"{p} is on the allow list: left there (an import "
                                           "never moves an allowed number)") for p in res.skipped),
                        *((line, str(note)) for line, note in report.notes)])
        for line, reason in lines:
            print(f"{args.file}:{line}: {reason}", file=sys.stderr)
        if res.error:
            print(f"{args.file}: the import stopped after {res.imported} of {res.total} entries: {res.error}",
                  file=sys.stderr)
        print(f"imported {res.imported} entries into the {args.list} list"
              + (f"; {len(report.errors)} bad rows skipped" if report.errors else "")
              + (f"; {len(res.skipped)} allowed numbers left on the allow list" if res.skipped else "")
              + (f"; {len(report.notes)} rows to check" if report.notes else ""))
        return 1 if report.errors or res.error or res.skipped else 0
    if sub == "export":
        with st.read() as s:
            entries = s.scalars(select(store.ListEntry).order_by(store.ListEntry.list, store.ListEntry.pattern))
            text = csvio.export_csv(csvio.entry_row(e) for e in entries)
        _write_out(args.file, text)
        return 0
    if sub == "preset":
        if args.name not in presets.PRESETS:
            raise CliError(f"no preset {args.name!r}; known: {', '.join(sorted(presets.PRESETS))}")
        with st.write() as s:
            print(_preset_line(presets.apply(s, args.name)))
        return 0
    raise AssertionError(sub)


def call_dict(c: Any, tz: ZoneInfo) -> dict[str, Any]:
    """A call row as the JSON the CLI prints."""
    return {"id": c.id, "started_at": c.started_at.astimezone(tz).isoformat(),
            "ended_at": c.ended_at.astimezone(tz).isoformat() if c.ended_at else None,
            "call_id": c.call_id, "caller_raw": c.caller_raw, "e164": c.e164, "name": c.name,
            "withheld": c.withheld, "type": c.number_type, "called_line": c.called_line,
            "decision": c.decision, "outcome": c.outcome, "rule": c.rule, "reason": c.reason,
            "digits": c.digits, "duration_s": c.duration_s, "talk_s": c.talk_s, "voicemail": c.voicemail_path}


def cmd_calls(args: argparse.Namespace) -> int:
    from screener import store

    cfg = _load(args)
    tz = ZoneInfo(cfg.screening.timezone)
    with _store(cfg).read() as s:
        rows = [call_dict(c, tz) for c in store.recent_calls(s, max(1, args.limit))]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    if not rows:
        print("no calls logged yet")
    for r in rows:
        who = r["e164"] or ("withheld" if r["withheld"] else r["caller_raw"] or "?")
        dur = f"{r['duration_s']:.0f}s" if r["duration_s"] is not None else "-"
        if r["talk_s"] is not None:
            dur += f" (talk {r['talk_s']:.0f}s)"
        print(f"{r['started_at'][:19]}  {who:16} {r['name'][:20]:20} {r['decision']:6} "
              f"{r['outcome'] or 'in progress':18} {dur:>5}  {r['reason']}")
    return 0


def _parse_day(text: str | None, option: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CliError(f"{option} must be a date like 2026-01-31, got {text!r}") from None


def cmd_evidence(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from screener import evidence, store
    from screener.numbers import parse_caller

    cfg = _load(args)
    tz = ZoneInfo(cfg.screening.timezone)
    day_from, day_to = _parse_day(args.day_from, "--from"), _parse_day(args.day_to, "--to")
    if day_from and day_to and day_from > day_to:
        raise CliError(f"--from {day_from} is after --to {day_to}")
    stmt = select(store.Call).order_by(store.Call.started_at, store.Call.id)
    if args.number is not None:
        e164 = parse_caller(args.number, cfg.screening.region).e164
        if e164 is None:
            raise CliError(f"--number must be a phone number, got {args.number!r}")
        stmt = stmt.where(store.Call.e164 == e164)
    if day_from:
        stmt = stmt.where(store.Call.started_at >= datetime.combine(day_from, time(0), tz))
    if day_to:
        stmt = stmt.where(store.Call.started_at < datetime.combine(day_to + timedelta(days=1), time(0), tz))
    with _store(cfg).read() as s:
        rows = evidence.evidence_rows(s.scalars(stmt), tz, args.line.strip())
    text = json.dumps(rows, ensure_ascii=False) + "\n" if args.json else evidence.evidence_csv(rows)
    if not _write_out(args.file, text):
        return 0
    summary = evidence.summarize(rows)
    print(f"{summary.count} calls written to {args.file}, {summary.outside_code_hours} outside the code-of-conduct"
          " hours")
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    from screener import users

    cfg = _load(args)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"{args.password_file}: {e.strerror if isinstance(e, OSError) else 'not UTF-8'}"
                           ) from None
    else:
        password = _ask_password(args.name)
    try:
        with _store(cfg).write() as s:
            users.save_user(s, args.name, password)
    except users.UserError as e:
        raise CliError(str(e), 1) from None
    users.clear_code(cfg.data_path)
    print(f"user {args.name} saved")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from screener import config_edit

    path = Path(args.config) if args.config else config_mod.default_path()
    changes = {}
    try:
        for item in args.assignments:
            key, eq, text = item.partition("=")
            if not eq:
                raise CliError(f"{item!r}: write KEY=VALUE, e.g. sip.server=fritz.box")
            changes[key.strip()] = config_edit.coerce(key.strip(), text)
        config_edit.edit(path, changes, template=EXAMPLE_CONFIG)
    except config_edit.EditError as e:
        raise CliError(f"{path}: {e}") from None
    print(f"{path}: {', '.join(changes)} saved (a running screener applies it within a second)")
    return 0


def _dashboard_notice(cfg: Config) -> None:
    """What `run` and `web` print at start besides the dashboard's address (printed once it is bound): a
    missing SIP account, the setup code."""
    from screener import users

    host = cfg.web.host if cfg.web.host not in ("0.0.0.0", "::", "") else "THIS-MACHINE"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{cfg.web.port}/"
    if cfg.sip.missing:
        print(f"SIP: not configured yet (sip.{cfg.sip.missing} is empty): the service waits; set up the line on "
              f"{url}setup", flush=True)
    with _store(cfg).read() as s:
        need_user = not users.has_users(s)
    if need_user:
        code = users.issue_code(cfg.data_path)
        print(f"no dashboard user yet: open {url} and enter the setup code {users.show_code(code)}", flush=True)
    else:
        users.clear_code(cfg.data_path)


NO_TERMINAL = ("no terminal to ask for the password: give it with --password-file FILE, or on standard input "
               "with --password-stdin")


def _ask_password(name: str) -> str:
    """The password typed twice at the terminal; a CliError saying how else to give it when there is none."""
    if not sys.stdin.isatty():
        # getpass would fall back to reading standard input with a warning, or fail at its end
        raise CliError(NO_TERMINAL)
    try:
        password = getpass.getpass(f"password for {name}: ")
        again = getpass.getpass("again: ")
    except EOFError:
        raise CliError(NO_TERMINAL) from None
    if password != again:
        raise CliError("the passwords differ", 1)
    return password


def _status_lines(st: Any, h: Any, tz: ZoneInfo) -> list[str]:
    """`screener status` output for a sip_status row `st` judged as `h` (screener.health.Health)."""

    def at(t: datetime) -> str:
        return f"{t.astimezone(tz):%Y-%m-%d %H:%M:%S %Z}"

    if h.state == "never":
        return ["not running: the SIP service has not run yet"]
    if h.running and st.state == "not_configured":
        return [f"running, not configured since {at(st.since)}: {st.last_error or '[sip] is incomplete'}; set up "
                "the line on the dashboard's setup page (/setup) or in the config file"]
    if h.state == "stopped":
        lines = [f"not running: stopped since {at(st.since)}"]
    elif h.state == "stale":
        lines = [f"not running: no heartbeat since {at(st.heartbeat_at)} ({h.age:.0f} s ago, pid {st.pid})"]
    else:
        line = f"{st.state} since {at(st.since)}"
        if h.age is not None:
            line += f" (pid {st.pid}, heartbeat {max(0.0, h.age):.0f} s ago)"
        if st.last_error:
            line += f" — last error: {st.last_error}"
        lines = [line]
    if st.untrusted_count:
        last = f", the last from {st.untrusted_last_source}" if st.untrusted_last_source else ""
        when = f" at {at(st.untrusted_last_at)}" if st.untrusted_last_at else ""
        lines.append(f"warning: {st.untrusted_count} SIP message(s) from {st.untrusted_sources} untrusted "
                     f"address(es) dropped{last}{when}")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    """Is the service running and registered? For people and for monitoring, by the exit status:

    0 running and registered; 1 running, not registered (registering, or failing: see the last error);
    3 not running (stopped, never started, or no heartbeat for 15 s: killed or hung); 4 unknown (the
    database cannot be read).
    """
    from sqlalchemy.exc import SQLAlchemyError

    from screener import health, store

    cfg = _load(args)
    tz = ZoneInfo(cfg.screening.timezone)
    beat = health.read_beat_file(cfg.data_path / health.BEAT_FILE)
    try:
        with _store(cfg).read() as s:
            st = health.freshest(store.get_sip_status(s), beat)
    except SQLAlchemyError as e:
        if beat is None:
            print(f"unknown: cannot read the database: {getattr(e, 'orig', None) or e}")
            return health.EXIT_UNKNOWN
        st = beat  # the service's own beat file still tells
    h = health.judge(st.state if st else None, st.heartbeat_at if st else None, store.utcnow())
    print("\n".join(_status_lines(st, h, tz)))
    return h.exit_code


def cmd_notify_test(args: argparse.Namespace) -> int:
    from screener import notify

    cfg = _load(args)
    if not cfg.notify.urls:
        raise CliError(f"{cfg.path}: notify.urls is empty: add a notification URL (see config.example.toml)", 1)
    results = notify.send_test(cfg)
    for r in results:
        print(f"{r.url}: {'sent' if not r.error else 'failed: ' + r.error}")
    return 0 if all(not r.error for r in results) else 1


def cmd_backup(args: argparse.Namespace) -> int:
    from screener import housekeeping

    cfg = _load(args)
    try:
        if housekeeping.sqlite_file(cfg) is None:
            print("PostgreSQL: back it up with pg_dump (screener does not run it for you):")
            print("  " + housekeeping.pg_commands(cfg, args.file)[0])
            return 1
        # the service's calls come first: the copy runs only on CPU time nothing else wants
        res = _on_idle_thread(lambda: housekeeping.backup(cfg, Path(args.file)))
    except housekeeping.HousekeepingError as e:
        raise CliError(str(e), 1) from None
    print(f"backup written: {res.path} ({res.size / 1e6:.1f} MB, {res.calls} calls) in {res.seconds:.1f} s; "
          f"voicemails are files in {cfg.data_path / 'voicemail'}: copy that folder too")
    return 0


def _on_idle_thread(work: Any) -> Any:
    """work() on a thread that gets the CPU only when nothing else wants it (Linux SCHED_IDLE, else nice 19;
    both apply to the calling thread only, so the caller's priority is untouched)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, 0, 19)
        try:
            box["value"] = work()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, name="backup")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def cmd_restore(args: argparse.Namespace) -> int:
    from screener import housekeeping

    cfg = _load(args)
    try:
        if housekeeping.sqlite_file(cfg) is None:
            print("PostgreSQL: restore a pg_dump file with pg_restore (screener stopped):")
            print("  " + housekeeping.pg_commands(cfg, args.file)[1])
            return 1
        kept = housekeeping.restore(cfg, Path(args.file))
    except housekeeping.HousekeepingError as e:
        raise CliError(str(e), 1) from None
    _store(cfg).dispose()  # an older backup is brought to the current schema
    print(f"restored {args.file}" + (f"; the previous database is kept in {kept}" if kept else ""))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from screener.service import run_service

    cfg = _load(args)
    status = _in_child(lambda: _prepare_run(cfg))
    if status:
        return status
    # the composition root: the service never imports the dashboard; the CLI starts both
    dashboard = WebProcess(cfg)
    try:
        status = run_service(cfg, on_started=lambda service: dashboard.start(on_fatal=service.request_stop))
    finally:
        dashboard.stop()
    if dashboard.error:
        raise CliError(dashboard.error)  # `run` does not go on without its dashboard
    return status


def _prepare_run(cfg: Config) -> int:
    _store(cfg).dispose()
    return 0


def _in_child(fn: Callable[[], int]) -> int:
    """Run `fn` in a forked child; its exit status (its message printed by it).

    `run` brings the schema up to date this way: alembic and the migration scripts (6 MiB) then never enter
    the long-running service's memory.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _reporting(fn)
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@contextmanager
def _lower_priority(by: int) -> Iterator[None]:
    """Run the block at a lower CPU priority (restored after it where the user may raise it again)."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, min(19, before + by))
    try:
        yield
    finally:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, before)
        except PermissionError:
            pass  # only root may raise it again; the command ends soon anyway


def _end_with_parent(pid: int) -> bool:
    """Have the kernel send SIGTERM when `screener run` (pid) dies, even by SIGKILL; False if it already has.

    An orphaned dashboard would keep its port, and the next `screener run` could not serve its own.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the dashboard then outlives a killed service, as any child would
    return os.getppid() == pid


PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
WEB_NICE = 10  # the dashboard's CPU priority under `screener run`, below the SIP service's
IMPORT_NICE = 10  # `list import` yields the CPU to a running service's calls


class WebProcess:
    """The dashboard in a process of its own, started by `screener run` and restarted if it dies.

    In the service's process its requests held the interpreter lock the SIP side needs: a 100,000-row import
    parsing (30 s of Python) or a page being rendered added ~110 ms to a blocked caller's 603 (p99). Its own
    process also keeps Flask, Jinja and the dashboard's memory out of the service.

    A child that cannot serve (its port in use, its config broken) exits 2 and writes its one-line error to a
    pipe: on the first start that stops `screener run` with that line (`error`); later, while the line is
    being screened, it is logged and the child started again.
    """

    RESTART_DELAY_S = 5.0

    def __init__(self, cfg: Config) -> None:
        # on 2 cores a dashboard import at full speed delayed the 603s by the scheduler alone: it yields
        self.argv = [sys.executable, "-m", "screener", "--config", str(cfg.path), "web", "--nice", str(WEB_NICE),
                     "--parent", str(os.getpid())]
        self.error = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._on_fatal: Callable[[], None] | None = None

    def start(self, on_fatal: Callable[[], None] | None = None) -> None:
        self._on_fatal = on_fatal
        self._thread = threading.Thread(target=self._supervise, name="web-supervisor", daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        log = logging.getLogger("screener")
        first = True
        while not self._stopping.is_set():
            with self._lock:  # stop() either sees this process or keeps it from starting
                if self._stopping.is_set():
                    return
                report_r, report_w = os.pipe()
                try:
                    self._proc = subprocess.Popen([*self.argv, "--report-fd", str(report_w)], pass_fds=(report_w,),
                                                  stdin=subprocess.DEVNULL)
                except OSError as e:
                    os.close(report_r)
                    log.error("screener: cannot start the dashboard: %s", e)
                    return
                finally:
                    os.close(report_w)
            code = self._proc.wait()
            report = _read_report(report_r)
            if self._stopping.wait(0):
                return
            if first and code == EXIT_USAGE:
                self.error = report or "the dashboard could not start"
                log.info("screener: the dashboard could not start: stopping")
                if self._on_fatal is not None:
                    self._on_fatal()
                return
            first = False
            log.error("screener: the dashboard exited with %s%s: restarting in %.0f s", code,
                      f" ({report})" if report else "", self.RESTART_DELAY_S)
            self._stopping.wait(self.RESTART_DELAY_S)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(1.0)


def _read_report(fd: int) -> str:
    """What a dashboard child wrote to its report pipe (its one-line error), closing the pipe."""
    try:
        os.set_blocking(fd, False)  # the child has exited; nothing else holds the pipe's other end
        return os.read(fd, 4096).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)


EXIT_USAGE = 2


def bind_error(cfg: Config, e: OSError) -> CliError:
    """Why the dashboard cannot listen on [web] host:port, naming the key to change."""
    where, host, port = cfg.path, cfg.web.host, cfg.web.port
    if e.errno == errno.EADDRINUSE:
        return CliError(f"{where}: web.port {port} is in use on {host} (another screener, or another program): "
                        "stop it, or choose another [web] port")
    if e.errno == errno.EADDRNOTAVAIL:
        return CliError(f"{where}: web.host {host} is not an address of this machine: use 127.0.0.1, or 0.0.0.0 "
                        "for every address")
    if e.errno == errno.EACCES:
        return CliError(f"{where}: web.port {port} is below 1024, which only root may use: choose another, "
                        "e.g. 8080")
    if isinstance(e, socket.gaierror):
        return CliError(f"{where}: web.host {host} is not a known host name or address: use 127.0.0.1, or "
                        "0.0.0.0 for every address")
    return CliError(f"{where}: cannot listen on {host}:{port} ([web] host, port): {e.strerror or e}")


def cmd_web(args: argparse.Namespace) -> int:
    try:
        return _web(args)
    except (ConfigError, CliError) as e:
        if not args.report_fd:
            raise
        # under `screener run`: the parent prints the line and stops
        os.write(args.report_fd, str(e).encode("utf-8", "replace"))
        return EXIT_USAGE


def _web(args: argparse.Namespace) -> int:
    import web

    cfg = _load(args)
    _store(cfg).dispose()
    if args.parent and not _end_with_parent(args.parent):
        return 0
    if args.nice:
        os.nice(args.nice)
    try:
        server = web.make_server(cfg, threads=web.SERVE_THREADS)
    except OSError as e:
        raise bind_error(cfg, e) from None
    if args.report_fd:
        os.close(args.report_fd)  # it serves: what happens later is not a start-up failure
        args.report_fd = 0
    print(f"dashboard: {web.url(cfg.web.host, cfg.web.port)}", flush=True)
    _dashboard_notice(cfg)  # the setup code; without a SIP account the service waits as "not configured"
    web.run_server(server)
    return 0


COMMANDS = {"init": cmd_init, "db": cmd_db, "lookup": cmd_lookup, "list": cmd_list, "calls": cmd_calls,
            "evidence": cmd_evidence, "user": cmd_user, "status": cmd_status, "run": cmd_run, "web": cmd_web,
            "config": cmd_config,
            "notify-test": cmd_notify_test, "backup": cmd_backup, "restore": cmd_restore}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return _reporting(lambda: COMMANDS[args.command](args))


def _reporting(fn: Callable[[], int]) -> int:
    """Run a command; a user's mistake or a database that cannot be reached is one line and an exit status."""
    try:
        return fn()
    except (ConfigError, CliError) as e:
        print(f"screener: {e}", file=sys.stderr)
        return e.status if isinstance(e, CliError) else 2
    except OperationalError as e:
        print(f"screener: database error: {e.orig or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
