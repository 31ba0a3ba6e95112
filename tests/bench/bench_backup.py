"""`screener backup` of a 1,000,000-row calls database while blocked callers keep arriving.

Prints the backup's time and size, and INVITE->603 as the caller sees it (PyUac through kamailio) before and
during the backup, with whether every call's row arrived. Run with `make bench` or
`python -m tests.bench backup [--rows N] [--rate R]`. Exit 1 when a call got no final response or a row is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from bench_faults import (  # noqa: E402
    GOAL_DELTA_MS,
    Env,
    Outcome,
    _check_rows,
    _db,
    _log_lines,
    _place_calls,
    print_table,
    running_screener,
)
from peers import HOST, PASSWORD, Kamailio, Phone, Ports, PyUac, screener_command  # noqa: E402


def seed_calls(db: Path, rows: int) -> float:
    """`rows` old call rows, 50,000 per transaction (the running service writes between them); seconds taken."""
    t0 = time.monotonic()
    start = datetime.now(UTC) - timedelta(days=400)
    outcomes = ("blocked", "missed", "answered_elsewhere", "passed", "failed_challenge")
    with closing(sqlite3.connect(db, timeout=30)) as con:
        for first in range(0, rows, 50_000):
            batch = []
            for i in range(first, min(rows, first + 50_000)):
                at = (start + timedelta(seconds=30 * i)).replace(tzinfo=None).isoformat(" ")
                n = f"+39021{i % 900_000:07d}"
                batch.append((at, at, f"seed-{i}@bench", "127.0.0.1:5060", f"<sip:{n}@bench>", "", "", n[3:], n,
                              "fixed_line", "IT", 0, "block" if i % 5 == 0 else "screen", "", "no rule matched",
                              outcomes[i % 5], "", 4.0, 0))
            con.execute("BEGIN IMMEDIATE")
            con.executemany(
                "INSERT INTO calls (started_at, ended_at, call_id, source, from_raw, called_line, name, caller_raw,"
                " e164, number_type, country, withheld, decision, rule, reason, outcome, digits, duration_s,"
                " voicemail_heard) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", batch)
            con.execute("COMMIT")
            time.sleep(0.05)
    return time.monotonic() - t0


def _without_seed(out: Outcome, before: int) -> None:
    """The rows check of bench_faults counts the whole table: leave out the rows there before these calls."""
    out.rows_in_table -= before
    out.problems = [p for p in out.problems if not (p.startswith("0 call rows missing") and out.rows_ok)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="call rows in the database (default 1,000,000)")
    ap.add_argument("--calls", type=int, default=200, help="blocked calls of the baseline (default 200)")
    ap.add_argument("--rate", type=float, default=20.0, help="calls per second (default 20)")
    args = ap.parse_args(argv)
    missing = [t for t in ("kamailio", "sipp") if shutil.which(t) is None]
    if missing:
        print(f"bench_backup: {' and '.join(missing)} not found on PATH; install kamailio and sip-tester "
              "(`make system-deps`). Nothing measured.", file=sys.stderr)
        return 1
    ports = Ports.for_worker()
    base, during = Outcome("baseline"), Outcome("during backup")
    info: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="screener-bench-backup-") as tmp:
        work = Path(tmp)
        k = Kamailio(work / "kamailio", ports.kamailio, PASSWORD)
        k.start()
        home = Phone(work, k, ports.household, ports.household_media, ring_ms=60000,
                     register_port=ports.registrar_client)
        try:
            home.start()
            env = Env(work, ports, k, args.calls, args.rate)
            with running_screener(env, "backup") as s:
                db = _db(s)
                seeded = seed_calls(db, args.rows)
                info["seed"] = f"{args.rows:,} call rows seeded in {seeded:.0f} s; database {db.stat().st_size / 1e6:.0f} MB"
                _place_calls(env, base, s)
                _without_seed(base, args.rows)
                result: dict[str, object] = {}

                def backup() -> None:
                    t0 = time.monotonic()
                    res = subprocess.run([*screener_command(), "--config", str(s.config_path), "backup",
                                          str(work / "backup.db")], capture_output=True, text=True, timeout=900,
                                         stdin=subprocess.DEVNULL)
                    result.update(seconds=time.monotonic() - t0, code=res.returncode,
                                  out=(res.stdout + res.stderr).strip())

                t = threading.Thread(target=backup)
                started = time.perf_counter()
                t.start()
                first = args.calls
                with PyUac((HOST, env.ports.kamailio), (HOST, env.ports.caller)) as uac:
                    while t.is_alive():  # one second of calls at a time, for as long as the backup runs
                        chunk = env.numbers(first, max(1, int(args.rate)))
                        first += len(chunk)
                        during.results += uac.run(chunk, args.rate, timeout=5)
                t.join()
                ended = time.perf_counter()
                _check_rows(during, s)
                _without_seed(during, args.rows + len(base.results))
                overlapped = sum(started <= r.sent <= ended for r in during.results)
                slow = sorted(((r.latency_ms or float("inf"), r.sent - started) for r in during.results), reverse=True)
                info["slowest"] = "slowest during: " + ", ".join(f"{ms:.1f} ms at {at:+.2f} s" for ms, at in slow[:5])
                during.load = (f"`screener backup` exit {result.get('code')} in {result.get('seconds', 0):.1f} s "
                               f"(wall, process start included); {overlapped} calls sent while it ran; "
                               f"it printed: {result.get('out')}")
                if result.get("code") != 0:
                    during.problems.append("the backup failed")
                else:
                    with closing(sqlite3.connect(f"file:{work / 'backup.db'}?mode=ro", uri=True)) as con:
                        n = con.execute("SELECT count(*) FROM calls").fetchone()[0]
                    info["copy"] = f"backup holds {n:,} call rows, {(work / 'backup.db').stat().st_size / 1e6:.0f} MB"
                base.log_lines = during.log_lines = _log_lines(s)
        finally:
            home.stop()
            k.stop()
    b99 = base.p(99)
    ok = during.p(99) <= b99 + GOAL_DELTA_MS and len(during.declined) == len(during.results)
    during.goal = f"{'PASS' if ok else 'FAIL'} (p99 <= base +{GOAL_DELTA_MS:g} ms)"
    print(f"blocked callers through kamailio at {args.rate:g}/s; `screener run` on SQLite WAL; {os.cpu_count()} cores")
    for v in info.values():
        print(f"  {v}")
    print_table([base, during], b99)
    lost = any(o.unanswered or not o.rows_ok for o in (base, during))
    return 1 if lost or during.problems else 0


if __name__ == "__main__":
    sys.exit(main())
