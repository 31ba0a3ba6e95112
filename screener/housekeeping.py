"""Housekeeping: retention (old call rows and voicemails deleted, files and rows together), backup and
restore of the SQLite database, and the daily figures for the summary notification.

The CLI and the service call these; nothing here prints.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.engine import URL, make_url

from screener import health, store
from screener.config import Config

log = logging.getLogger("screener.housekeeping")

BATCH = 500  # rows deleted per transaction: a few milliseconds of SQLite's write lock, then the calls' writer
PAUSE_S = 0.02  # between batches, so a call's row never waits behind a long run of deletes
STATE_FILE = "housekeeping.json"  # in the data folder: the last retention run, for the settings page
REQUIRED_TABLES = {"calls", "list_entries", "sip_status", "alembic_version"}


class HousekeepingError(Exception):
    """A user-facing refusal or failure, one line."""


# -- retention --


@dataclass(frozen=True)
class RetentionResult:
    at: str  # ISO time of the run
    calls: int = 0  # call rows deleted (with their voicemails)
    voicemails: int = 0  # voicemails deleted from rows that stay
    files: int = 0  # voicemail files removed, orphans included
    error: str = ""


def cutoffs(cfg: Config, now: datetime) -> tuple[datetime | None, datetime | None]:
    """(calls older than this go, voicemails older than this go); None = kept. A call's voicemail goes with it."""
    r = cfg.retention
    calls = now - timedelta(days=r.calls_days) if r.calls_days else None
    days = [d for d in (r.calls_days, r.voicemail_days) if d]
    return calls, (now - timedelta(days=min(days)) if days else None)


def _unlink_voicemail(vm_dir: Path, data: Path, rel: str | None) -> bool:
    """Remove a recording named by a row, only inside the voicemail folder (as the dashboard serves them)."""
    if not rel:
        return False
    p = Path(rel)
    p = (p if p.is_absolute() else data / p).resolve()
    if not p.is_relative_to(vm_dir.resolve()) or not p.is_file():
        return False
    p.unlink(missing_ok=True)
    return True


def apply_retention(db: store.Store, cfg: Config, now: datetime | None = None,
                    stop: threading.Event | None = None) -> RetentionResult:
    """Delete call rows older than retention.calls_days (their voicemails too) and voicemails older than
    retention.voicemail_days (the row stays, without it). Rows go first, then their files; files left over
    by an interrupted run are found by their age. Short transactions, never a long write lock."""
    now = now or store.utcnow()
    calls_cut, vm_cut = cutoffs(cfg, now)
    data = cfg.data_path
    vm_dir = data / "voicemail"
    Call = store.Call
    n_calls = n_vm = n_files = 0
    stopped = stop.is_set if stop is not None else (lambda: False)
    while calls_cut is not None and not stopped():
        with db.write() as s:
            rows = s.execute(select(Call.id, Call.voicemail_path).where(Call.started_at < calls_cut,
                             Call.outcome.is_not(None)).order_by(Call.started_at).limit(BATCH)).all()
            if rows:
                s.execute(delete(Call).where(Call.id.in_([r.id for r in rows])))
        n_calls += len(rows)
        n_files += sum(_unlink_voicemail(vm_dir, data, r.voicemail_path) for r in rows)
        if len(rows) < BATCH:
            break
        time.sleep(PAUSE_S)
    while vm_cut is not None and not stopped():
        with db.write() as s:
            rows = s.execute(select(Call.id, Call.voicemail_path).where(
                Call.voicemail_path.is_not(None), Call.started_at < vm_cut).order_by(Call.started_at)
                .limit(BATCH)).all()
            if rows:
                s.execute(update(Call).where(Call.id.in_([r.id for r in rows]))
                          .values(voicemail_path=None, voicemail_heard=True))
        n_vm += len(rows)
        n_files += sum(_unlink_voicemail(vm_dir, data, r.voicemail_path) for r in rows)
        if len(rows) < BATCH:
            break
        time.sleep(PAUSE_S)
    if vm_cut is not None and vm_dir.is_dir() and not stopped():
        # a recording is written when its call ends, after the call started: older than the cut, its row is too
        limit = vm_cut.timestamp()
        for f in vm_dir.glob("*.wav"):
            try:
                if f.is_file() and not f.is_symlink() and f.stat().st_mtime < limit:
                    f.unlink()
                    n_files += 1
            except OSError as e:
                log.warning("screener: retention cannot remove %s: %s", f, e)
    return RetentionResult(now.isoformat(), n_calls, n_vm, n_files)


def run_retention(db: store.Store, cfg: Config, stop: threading.Event | None = None) -> RetentionResult:
    """apply_retention as the service runs it: never raises, logs what it did, records it for the dashboard."""
    if not (cfg.retention.calls_days or cfg.retention.voicemail_days):
        return RetentionResult(store.utcnow().isoformat())
    try:
        res = apply_retention(db, cfg, stop=stop)
    except Exception as e:
        res = RetentionResult(store.utcnow().isoformat(), error=str(e).splitlines()[0][:300] if str(e) else
                              type(e).__name__)
        log.error("screener: retention failed: %s", res.error)
    else:
        if res.calls or res.voicemails or res.files:
            log.info("screener: retention: %d old call(s) and %d old voicemail(s) deleted, %d file(s) removed",
                     res.calls, res.voicemails, res.files)
    try:
        cfg.data_path.mkdir(parents=True, exist_ok=True)
        (cfg.data_path / STATE_FILE).write_text(json.dumps({"retention": asdict(res)}), encoding="utf-8")
    except OSError as e:
        log.warning("screener: cannot record the retention run: %s", e)
    return res


def last_retention(cfg: Config) -> RetentionResult | None:
    try:
        doc = json.loads((cfg.data_path / STATE_FILE).read_text(encoding="utf-8"))
        return RetentionResult(**doc["retention"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- the daily summary's figures --


def call_counts(db: store.Store, since: datetime, until: datetime) -> Mapping[str, int]:
    Call = store.Call
    with db.read() as s:
        row = s.execute(select(
            func.count(),
            func.coalesce(func.sum(case((Call.outcome == "blocked", 1), else_=0)), 0),
            func.coalesce(func.sum(case((Call.decision == "screen", 1), else_=0)), 0),
            func.coalesce(func.sum(case((Call.voicemail_path.is_not(None), 1), else_=0)), 0),
        ).where(Call.started_at >= since, Call.started_at < until)).one()
    return {"calls": int(row[0]), "blocked": int(row[1]), "screened": int(row[2]), "messages": int(row[3])}


# -- backup and restore --


def sqlite_file(cfg: Config) -> Path | None:
    """The SQLite database file, or None when the database is not SQLite."""
    url = make_url(cfg.database_url)
    if not url.drivername.startswith("sqlite"):
        return None
    if not url.database or url.database == ":memory:":
        raise HousekeepingError("database.url is an in-memory SQLite database: nothing to back up")
    return Path(url.database)


def pg_commands(cfg: Config, file: str) -> tuple[str, str]:
    """The pg_dump and pg_restore lines for a PostgreSQL database (password left out: PGPASSWORD or ~/.pgpass)."""
    u = make_url(cfg.database_url)
    shown = URL.create("postgresql", u.username, None, u.host, u.port, u.database, u.query).render_as_string(
        hide_password=False)
    return (f"pg_dump --format=custom --no-owner --file={_sh(file)} {_sh(shown)}",
            f"pg_restore --clean --if-exists --no-owner --dbname={_sh(shown)} {_sh(file)}")


def _sh(s: str) -> str:
    import shlex

    return shlex.quote(s)


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    seconds: float
    calls: int


def _copy(src: sqlite3.Connection, dest_path: Path) -> None:
    """The whole database in one backup step: one read transaction, a consistent copy (WAL: writers go on)."""
    dst = sqlite3.connect(dest_path)
    try:
        src.backup(dst)  # pages=-1: one step; a stepwise copy would start over at every write of the service
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        dst.close()


def backup(cfg: Config, dest: Path) -> BackupResult:
    """A consistent copy of the SQLite database to `dest` while the service runs (SQLite's online backup)."""
    src_path = sqlite_file(cfg)
    assert src_path is not None
    if not src_path.is_file():
        raise HousekeepingError(f"{src_path}: no database to back up")
    if dest.exists() and dest.resolve() == src_path.resolve():
        raise HousekeepingError(f"{dest}: that is the database itself; choose another file")
    if dest.is_dir():
        raise HousekeepingError(f"{dest}: is a folder; give a file name")
    t0 = time.monotonic()
    tmp = dest.with_name(dest.name + ".part")
    try:
        src = sqlite3.connect(src_path, timeout=10)
        try:
            tmp.unlink(missing_ok=True)
            _copy(src, tmp)
        finally:
            src.close()
        problem = check_database(tmp)
        if problem:
            raise HousekeepingError(f"{dest}: the copy does not check out ({problem}); nothing written")
        calls = _count_calls(tmp)
        tmp.replace(dest)
    except sqlite3.Error as e:
        raise HousekeepingError(f"{dest}: backup failed: {e}") from None
    except OSError as e:
        raise HousekeepingError(f"{dest}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return BackupResult(dest, dest.stat().st_size, time.monotonic() - t0, calls)


def _count_calls(path: Path) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM calls").fetchone()[0])
    finally:
        con.close()


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(store._alembic_config("sqlite://"))
    return {s.revision for s in script.walk_revisions()}


def check_database(path: Path) -> str:
    """"" when `path` is a sound screener database this version can use, else what is wrong (one phrase)."""
    try:
        with path.open("rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                return "not an SQLite database"
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not REQUIRED_TABLES <= tables:
                return "not a screener database (no " + ", ".join(sorted(REQUIRED_TABLES - tables)) + " table)"
            revs = {r[0] for r in con.execute("SELECT version_num FROM alembic_version")}
            unknown = revs - _known_revisions()
            if unknown:
                return f"made by a newer screener (schema {', '.join(sorted(unknown))}): update screener first"
            ok = con.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                return f"damaged: {ok}"
        finally:
            con.close()
    except OSError as e:
        return str(e.strerror or e)
    except sqlite3.Error as e:
        return f"cannot be read: {e}"
    return ""


def running_service(cfg: Config) -> Any:
    """The last beat of a service that is running now (database row or beat file), else None."""
    beat = health.read_beat_file(cfg.data_path / health.BEAT_FILE)
    row = None
    try:
        db = store.Store(cfg.database_url)
        try:
            with db.read() as s:
                row = store.get_sip_status(s)
                if row is not None:
                    s.expunge(row)
        finally:
            db.dispose()
    except Exception:
        row = None  # a database that cannot be read: the beat file alone tells
    st = health.freshest(row, beat)
    if st is None:
        return None
    return st if health.judge(st.state, st.heartbeat_at, store.utcnow()).running else None


def restore(cfg: Config, src: Path, now: datetime | None = None) -> Path | None:
    """Put the database in `src` in place of the current one; returns where the current one was kept (None:
    there was none). Refuses while the service runs and for a file that is not a screener database."""
    live = sqlite_file(cfg)
    assert live is not None
    if not src.is_file():
        raise HousekeepingError(f"{src}: no such file")
    if live.exists() and src.resolve() == live.resolve():
        raise HousekeepingError(f"{src}: that is the database in use")
    problem = check_database(src)
    if problem:
        raise HousekeepingError(f"{src}: {problem}; nothing changed")
    beat = running_service(cfg)
    if beat is not None:
        raise HousekeepingError(f"screener is running (pid {beat.pid}): stop it first (systemctl stop screener, "
                                "or Ctrl-C in its terminal), then restore")
    stamp = (now or store.utcnow()).strftime("%Y%m%dT%H%M%SZ")
    kept: Path | None = None
    try:
        if live.exists():
            kept = live.with_name(f"{live.name}.before-restore-{stamp}")
            con = sqlite3.connect(live, timeout=10)
            try:
                _copy(con, kept)
            finally:
                con.close()
        else:
            live.parent.mkdir(parents=True, exist_ok=True)
        s = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        d = sqlite3.connect(live, timeout=10)
        try:
            s.backup(d)  # through SQLite: the live file's WAL and locks stay coherent
            d.execute("PRAGMA journal_mode=WAL")
        finally:
            d.close()
            s.close()
    except sqlite3.Error as e:
        where = f"; the previous database is kept in {kept}" if kept else ""
        raise HousekeepingError(f"{live}: restore failed: {e}{where}") from None
    return kept
