"""Housekeeping: retention (rows and voicemail files together), backup while calls are written, restore and its
refusals, and the `screener backup / restore / notify-test` commands."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from notify_support import Endpoint
from sqlalchemy import select

from screener import cli, config, health, housekeeping, store

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

# (age in days, has voicemail)
ROWS = [(1, False), (5, True), (20, True), (40, False), (40, True), (400, True)]
RETENTION = [
    # name, calls_days, voicemail_days, rows kept (ages), voicemails kept (ages)
    ("keep everything", 0, 0, [1, 5, 20, 40, 40, 400], [5, 20, 40, 400]),
    ("calls 30 days: their voicemails go with them", 30, 0, [1, 5, 20], [5, 20]),
    ("voicemail 10 days: the rows stay", 0, 10, [1, 5, 20, 40, 40, 400], [5]),
    ("both", 30, 10, [1, 5, 20], [5]),
    ("voicemail longer than calls: the call's age wins", 30, 365, [1, 5, 20], [5, 20]),
]


def seed(db: store.Store, cfg: config.Config) -> None:
    vm = cfg.data_path / "voicemail"
    vm.mkdir(parents=True, exist_ok=True)
    with db.write() as s:
        for i, (age, has_vm) in enumerate(ROWS):
            at = NOW - timedelta(days=age)
            path = None
            if has_vm:
                path = f"voicemail/{i}.wav"
                f = cfg.data_path / path
                f.write_bytes(b"RIFF")
                os.utime(f, (at.timestamp() + 60, at.timestamp() + 60))
            s.add(store.Call(call_id=f"c{i}", started_at=at, decision="screen", outcome="passed",
                             voicemail_path=path))


@pytest.mark.parametrize("name,calls_days,vm_days,rows_kept,vm_kept", RETENTION, ids=[r[0] for r in RETENTION])
def test_retention(write_config, db_url, name, calls_days, vm_days, rows_kept, vm_kept):
    cfg = config.load(write_config(f"[database]\nurl = \"{db_url}\"\n[retention]\ncalls_days = {calls_days}\n"
                                   f"voicemail_days = {vm_days}\n"))
    db = store.Store(cfg.database_url)
    store.upgrade(db)
    try:
        seed(db, cfg)
        res = housekeeping.apply_retention(db, cfg, NOW)
        with db.read() as s:
            calls = list(s.scalars(select(store.Call).order_by(store.Call.id)))
        age = {c.call_id: ROWS[int(c.call_id[1:])][0] for c in calls}
        assert sorted(age.values()) == sorted(rows_kept)
        assert sorted(age[c.call_id] for c in calls if c.voicemail_path) == sorted(vm_kept)
        files = sorted(int(p.stem) for p in (cfg.data_path / "voicemail").glob("*.wav"))
        assert files == sorted(int(c.call_id[1:]) for c in calls if c.voicemail_path)  # files and rows agree
        assert res.calls == len(ROWS) - len(rows_kept)
        # idempotent
        again = housekeeping.apply_retention(db, cfg, NOW)
        assert (again.calls, again.voicemails, again.files) == (0, 0, 0)
    finally:
        db.dispose()


def test_retention_removes_files_left_by_an_interrupted_run_and_nothing_outside(write_config, tmp_path):
    cfg = config.load(write_config("[retention]\nvoicemail_days = 10\n"))
    db = store.Store(cfg.database_url)
    store.upgrade(db)
    vm = cfg.data_path / "voicemail"
    vm.mkdir(parents=True)
    old = (NOW - timedelta(days=30)).timestamp()
    orphan, fresh, outside = vm / "orphan.wav", vm / "fresh.wav", tmp_path / "outside.wav"
    for f in (orphan, fresh, outside):
        f.write_bytes(b"RIFF")
    os.utime(orphan, (old, old))
    os.utime(outside, (old, old))
    with db.write() as s:  # a row pointing outside the voicemail folder is cleared, its file never touched
        s.add(store.Call(call_id="x", started_at=NOW - timedelta(days=30), decision="screen", outcome="passed",
                         voicemail_path=str(outside)))
    res = housekeeping.apply_retention(db, cfg, NOW)
    assert not orphan.exists() and fresh.exists() and outside.exists()
    assert (res.voicemails, res.files) == (1, 1)
    db.dispose()


def test_run_retention_records_the_run_for_the_dashboard(write_config):
    cfg = config.load(write_config("[retention]\ncalls_days = 30\n"))
    db = store.Store(cfg.database_url)
    store.upgrade(db)
    with db.write() as s:
        s.add(store.Call(call_id="old", started_at=store.utcnow() - timedelta(days=31), decision="block",
                         outcome="blocked"))
    assert housekeeping.last_retention(cfg) is None
    housekeeping.run_retention(db, cfg)
    last = housekeeping.last_retention(cfg)
    assert last is not None and last.calls == 1 and not last.error
    db.dispose()


def test_call_counts(st):
    with st.write() as s:
        for outcome, decision, vm in [("blocked", "block", None), ("passed", "screen", "voicemail/a.wav"),
                                      ("failed_challenge", "screen", None), ("missed", "allow", None)]:
            s.add(store.Call(started_at=NOW - timedelta(hours=1), decision=decision, outcome=outcome,
                             voicemail_path=vm))
        s.add(store.Call(started_at=NOW - timedelta(days=2), decision="block", outcome="blocked"))
    counts = housekeeping.call_counts(st, NOW - timedelta(days=1), NOW)
    assert dict(counts) == {"calls": 4, "blocked": 1, "screened": 2, "messages": 1}


# -- backup and restore --


@pytest.fixture
def conf(write_config) -> Path:
    return write_config("")


@pytest.fixture
def db(conf) -> store.Store:
    st = store.Store(config.load(conf).database_url)
    store.upgrade(st)
    yield st
    st.dispose()


def run(conf: Path, capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = cli.main(["--config", str(conf), *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_backup_is_consistent_while_rows_are_written(conf, db, tmp_path, capsys):
    with db.write() as s:
        s.add_all(store.Call(call_id=f"seed{i}", decision="block", outcome="blocked") for i in range(2000))
    stop = threading.Event()
    written = [0]

    def writer() -> None:  # the service's call writer: one short transaction per row
        while not stop.is_set():
            with db.write() as s:
                s.add(store.Call(call_id=f"w{written[0]}", decision="block", outcome="blocked"))
            written[0] += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.2)
        status, out, err = run(conf, capsys, "backup", str(tmp_path / "b.db"))
    finally:
        stop.set()
        t.join()
    assert (status, err) == (0, ""), err
    assert "backup written" in out and "copy that folder too" in out
    assert housekeeping.check_database(tmp_path / "b.db") == ""
    con = sqlite3.connect(tmp_path / "b.db")
    n = con.execute("SELECT count(*) FROM calls").fetchone()[0]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()
    assert 2000 <= n <= 2000 + written[0] and written[0] > 0
    assert not (tmp_path / "b.db.part").exists()


def test_restore_puts_the_backup_in_place_and_keeps_the_current_one(conf, db, tmp_path, capsys):
    with db.write() as s:
        s.add(store.Call(call_id="before", decision="block", outcome="blocked"))
    assert run(conf, capsys, "backup", str(tmp_path / "b.db"))[0] == 0
    with db.write() as s:
        s.add(store.Call(call_id="after", decision="block", outcome="blocked"))
    status, out, err = run(conf, capsys, "restore", str(tmp_path / "b.db"))
    assert (status, err) == (0, ""), err
    assert "the previous database is kept in" in out
    with db.read() as s:
        assert [c.call_id for c in s.scalars(select(store.Call))] == ["before"]
    [kept] = list(tmp_path.glob("screener.db.before-restore-*"))
    con = sqlite3.connect(kept)
    assert {r[0] for r in con.execute("SELECT call_id FROM calls")} == {"before", "after"}
    con.close()


def _not_screener(tmp_path: Path) -> Path:
    p = tmp_path / "other.db"
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE t (x)")
    con.close()
    return p


def _newer(tmp_path: Path, conf: Path, capsys) -> Path:
    run(conf, capsys, "backup", str(tmp_path / "newer.db"))
    con = sqlite3.connect(tmp_path / "newer.db")
    con.execute("UPDATE alembic_version SET version_num = '9999'")
    con.commit()
    con.close()
    return tmp_path / "newer.db"


REFUSALS = [
    ("no such file", lambda tmp, conf, capsys: tmp / "missing.db", "no such file"),
    ("a text file", lambda tmp, conf, capsys: (tmp / "t.db", (tmp / "t.db").write_text("hello"))[0],
     "not an SQLite database"),
    ("another SQLite database", lambda tmp, conf, capsys: _not_screener(tmp), "not a screener database"),
    ("a newer schema", _newer, "made by a newer screener (schema 9999): update screener first"),
]


@pytest.mark.parametrize("name,make,message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_restore_refuses_what_is_not_a_screener_database(conf, db, tmp_path, capsys, name, make, message):
    with db.write() as s:
        s.add(store.Call(call_id="mine", decision="block", outcome="blocked"))
    src = make(tmp_path, conf, capsys)
    status, out, err = run(conf, capsys, "restore", str(src))
    assert status == 1 and message in err and err.count("\n") == 1
    with db.read() as s:
        assert [c.call_id for c in s.scalars(select(store.Call))] == ["mine"]  # nothing changed
    assert not list(tmp_path.glob("screener.db.before-restore-*"))


def test_restore_refuses_while_the_service_runs(conf, db, tmp_path, capsys):
    cfg = config.load(conf)
    assert run(conf, capsys, "backup", str(tmp_path / "b.db"))[0] == 0
    now = store.utcnow()
    health.write_beat_file(cfg.data_path / health.BEAT_FILE, health.Beat("registered", now, "", now, 4242))
    status, out, err = run(conf, capsys, "restore", str(tmp_path / "b.db"))
    assert status == 1 and "screener is running (pid 4242): stop it first" in err
    # a beat long gone (killed service) does not count as running
    old = now - timedelta(minutes=5)
    health.write_beat_file(cfg.data_path / health.BEAT_FILE, health.Beat("registered", old, "", old, 4242))
    assert run(conf, capsys, "restore", str(tmp_path / "b.db"))[0] == 0


def test_backup_errors_are_one_line(conf, db, tmp_path, capsys):
    cfg = config.load(conf)
    status, out, err = run(conf, capsys, "backup", cfg.database_url.split("///", 1)[1])
    assert status == 1 and "that is the database itself" in err
    status, out, err = run(conf, capsys, "backup", str(tmp_path))
    assert status == 1 and "is a folder" in err
    status, out, err = run(conf, capsys, "backup", str(tmp_path / "no" / "such" / "dir" / "b.db"))
    assert status == 1 and err.count("\n") == 1


def test_postgres_backup_and_restore_print_the_pg_lines(write_config, tmp_path, capsys):
    conf = write_config('[database]\nurl = "postgresql+psycopg://screener:s3cret@db.lan:5433/screener"\n')
    status, out, _err = run(conf, capsys, "backup", "screener.dump")
    assert status == 1
    assert ("pg_dump --format=custom --no-owner --file=screener.dump "
            "postgresql://screener@db.lan:5433/screener") in out and "s3cret" not in out
    status, out, _err = run(conf, capsys, "restore", "screener.dump")
    assert status == 1 and "pg_restore --clean --if-exists --no-owner" in out


def test_notify_test_command(write_config, capsys):
    ep = Endpoint()
    try:
        conf = write_config(f'[notify]\nurls = ["{ep.url}"]\n')
        status, out, err = run(conf, capsys, "notify-test")
        assert (status, out) == (0, "json://…: sent\n")
        assert ep.received[0][1]["title"] == "screener test notification"
        ep.mode = "fail"
        status, out, err = run(conf, capsys, "notify-test")
        assert status == 1 and out.startswith("json://…: failed: ")
    finally:
        ep.close()
    status, out, err = run(write_config(""), capsys, "notify-test")
    assert status == 1 and "notify.urls is empty" in err


def test_the_service_applies_retention_at_its_first_loop(write_config):
    from test_service import FakeAgent

    from screener.service import Service

    cfg = config.load(write_config("[retention]\ncalls_days = 30\n"))
    db = store.Store(cfg.database_url)
    store.upgrade(db)
    with db.write() as s:
        s.add(store.Call(call_id="old", started_at=store.utcnow() - timedelta(days=31), decision="block",
                         outcome="blocked"))
        s.add(store.Call(call_id="new", started_at=store.utcnow(), decision="block", outcome="blocked"))
    svc = Service(cfg, db=db, agent_factory=FakeAgent)
    svc.start()
    try:
        svc._housekeeping()
        first = svc._retention
        assert first is not None
        first.join(10)
        svc._housekeeping()
        assert svc._retention is first  # not again before a day has passed
        with db.read() as s:
            assert [c.call_id for c in s.scalars(select(store.Call))] == ["new"]
    finally:
        svc.stop()
