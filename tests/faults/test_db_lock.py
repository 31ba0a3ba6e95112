"""Another process holds SQLite's write lock for 15 s while callers arrive.

The decision only reads (WAL readers never wait for a writer) and the rows are written off the reply path, so
blocked callers must still get their 603 at once and unknown callers their answer; once the lock is gone,
every call's row must be in the database.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from peers import HOST, Proc, PyUac, Screener, percentile, wait_until

pytestmark = pytest.mark.e2e

BLOCKED = "+390212345678"
LOCK_S = 15.0
RATE = 2.0  # calls/s while the lock is held
DECLINE_WITHIN_MS = 500.0

HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN IMMEDIATE")  # the write lock: every other writer waits or gets SQLITE_BUSY
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
print("released", flush=True)
"""


def _db_path(screener: Screener) -> Path:
    return Path(screener.config["database"]["url"].removeprefix("sqlite:///"))


def test_write_lock_held_by_another_process_delays_no_reply_and_loses_no_row(
        make_screener: Callable[..., Screener], tmp_path: Path, db_rows: Any) -> None:
    screener = make_screener(screening={"max_screened_calls": 8})
    screener.cli("list", "add", "block", BLOCKED)
    # 2 unknown callers in every 6, each hanging up 1 s after the answer
    numbers = [BLOCKED if i % 3 else f"+3906555{i:04d}" for i in range(int((LOCK_S - 3) * RATE))]
    locker = Proc([sys.executable, "-c", HOLD_LOCK, _db_path(screener), LOCK_S], tmp_path / "locker.log")
    locker.start()
    try:
        wait_until(lambda: "locked" in locker.output(), 10, what="the other process to hold the write lock")
        t_locked = time.perf_counter()
        time.sleep(0.5)
        with PyUac((HOST, screener.sip_port)) as uac:
            res = uac.run(numbers, rate=RATE, hold_s=1.0, timeout=3.0)
        locker.wait(LOCK_S + 5)
        t_released = time.perf_counter()
    finally:
        locker.stop()
    assert "released" in locker.output(), locker.output()

    blocked = [r for r in res if r.number == BLOCKED]
    unknown = [r for r in res if r.number != BLOCKED]
    lat = [r.latency_ms for r in blocked if r.final_code == 603 and r.latency_ms is not None]
    ids = {r.call_id for r in res}
    present: dict[str, tuple[str | None, str]] = {}

    def all_rows() -> bool:
        present.update({cid: (o, d) for cid, o, d, _ in db_rows(screener) if cid in ids and o is not None})
        return len(present) == len(ids)

    try:
        wait_until(all_rows, 10, interval=0.2, what="every call's row, closed")
    except TimeoutError:
        pass
    rows_after = time.perf_counter() - t_released
    last_invite = max(r.sent for r in res) - t_locked
    print(f"\nwrite lock held {LOCK_S:g} s by another process; {len(res)} calls, the last {last_invite:.1f} s "
          "after the lock was taken")
    print(f"  blocked: {len(blocked)} calls, {len(lat)} declined (603); INVITE->603 p50 {percentile(lat, 50):.1f} ms, "
          f"p99 {percentile(lat, 99):.1f} ms, max {max(lat, default=float('nan')):.1f} ms")
    print(f"  unknown: {len(unknown)} calls, final responses {[r.final_code for r in unknown]}")
    print(f"  rows closed {rows_after:.1f} s after the lock went: {len(present)} of {len(ids)}")
    assert last_invite < LOCK_S - 1, "the lock went before the last call: the test proved nothing"
    assert [r.final_code for r in blocked] == [603] * len(blocked), [(r.call_id, r.final_code) for r in blocked]
    assert max(lat) < DECLINE_WITHIN_MS, lat
    assert [r.final_code for r in unknown] == [200] * len(unknown)
    missing = sorted(ids - set(present))
    assert missing == [], f"{len(missing)} rows missing or open 10 s after the lock went: {missing}"
    assert all(present[r.call_id][0] == "blocked" for r in blocked), present
