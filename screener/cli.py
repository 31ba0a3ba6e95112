"""The `screener` command: the only place that prints for humans and calls sys.exit.

Exit status: 0 done, 1 done in part or failed at run time (e.g. bad CSV rows), 2 bad usage or bad config.
"""

from __future__ import annotations

import argparse
import ctypes
import getpass
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
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

    user = sub.add_parser("user", help="dashboard users").add_subparsers(dest="user_command", required=True)
    ua = user.add_parser("add", help="add a user or set a user's password")
    ua.add_argument("name")
    ua.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    sub.add_parser("status", help="the SIP registration state")
    sub.add_parser("run", help="run the SIP service and the dashboard")
    web = sub.add_parser("web", help="run the dashboard alone")
    web.add_argument("--nice", type=int, default=0, metavar="N",
                     help="lower its CPU priority by N (screener run starts it with 10: the line comes first)")
    web.add_argument("--parent", type=int, default=0, metavar="PID", help=argparse.SUPPRESS)
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
            "digits": c.digits, "duration_s": c.duration_s, "voicemail": c.voicemail_path}


def cmd_calls(args: argparse.Namespace) -> int:
    from screener import store

    cfg = _load(args)
    tz = ZoneInfo(cfg.screening.timezone)
    with _store(cfg).read() as s:
        rows = [call_dict(c, tz) for c in store.recent_calls(s, max(1, args.limit))]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    for r in rows:
        who = r["e164"] or ("withheld" if r["withheld"] else r["caller_raw"] or "?")
        dur = f"{r['duration_s']:.0f}s" if r["duration_s"] is not None else "-"
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
    from sqlalchemy import select
    from werkzeug.security import generate_password_hash

    from screener import store

    cfg = _load(args)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            raise CliError("the passwords differ", 1)
    if len(password) < 8:
        raise CliError("the password must have at least 8 characters", 1)
    with _store(cfg).write() as s:
        u = s.scalar(select(store.User).where(store.User.login == args.name))
        if u is None:
            u = store.User(login=args.name, password_hash="")
            s.add(u)
        u.password_hash = generate_password_hash(password, method="scrypt")
    print(f"user {args.name} saved")
    return 0


def _status_lines(st: Any, h: Any, tz: ZoneInfo) -> list[str]:
    """`screener status` output for a sip_status row `st` judged as `h` (screener.health.Health)."""

    def at(t: datetime) -> str:
        return f"{t.astimezone(tz):%Y-%m-%d %H:%M:%S %Z}"

    if h.state == "never":
        return ["not running: the SIP service has not run yet"]
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


def cmd_run(args: argparse.Namespace) -> int:
    from screener.service import run_service

    cfg = _load(args)
    if not (cfg.sip.server and cfg.sip.username and cfg.sip.password):
        missing = next(k for k, v in (("server", cfg.sip.server), ("username", cfg.sip.username),
                                      ("password", cfg.sip.password)) if not v)
        raise CliError(f"{cfg.path}: sip.{missing} is empty: fill in [sip] (see README, "
                       "\"Attaching screener to your line\") before `screener run`")
    _store(cfg).dispose()
    # the composition root: the service never imports the dashboard; the CLI starts both
    dashboard = WebProcess(cfg)
    try:
        return run_service(cfg, on_started=lambda _service: dashboard.start())
    finally:
        dashboard.stop()


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
    """

    RESTART_DELAY_S = 5.0

    def __init__(self, cfg: Config) -> None:
        # on 2 cores a dashboard import at full speed delayed the 603s by the scheduler alone: it yields
        self.argv = [sys.executable, "-m", "screener", "--config", str(cfg.path), "web", "--nice", str(WEB_NICE),
                     "--parent", str(os.getpid())]
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name="web-supervisor", daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            with self._lock:  # stop() either sees this process or keeps it from starting
                if self._stopping.is_set():
                    return
                try:
                    self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
                except OSError as e:
                    logging.getLogger("screener").error("screener: cannot start the dashboard: %s", e)
                    return
            code = self._proc.wait()
            if self._stopping.wait(0):
                return
            logging.getLogger("screener").error("screener: the dashboard exited with %s: restarting in %.0f s",
                                                code, self.RESTART_DELAY_S)
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


def cmd_web(args: argparse.Namespace) -> int:
    import web

    cfg = _load(args)
    _store(cfg).dispose()
    if args.parent and not _end_with_parent(args.parent):
        return 0
    if args.nice:
        os.nice(args.nice)
    web.serve(cfg)
    return 0


COMMANDS = {"init": cmd_init, "db": cmd_db, "lookup": cmd_lookup, "list": cmd_list, "calls": cmd_calls,
            "evidence": cmd_evidence, "user": cmd_user, "status": cmd_status, "run": cmd_run, "web": cmd_web}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
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
