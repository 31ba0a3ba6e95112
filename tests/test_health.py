"""The heartbeat: beats with the agent's snapshot, a last "stopped", database errors logged once per outage."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from screener import health, store
from screener.health import Heartbeat, Snapshot, Untrusted


@pytest.fixture
def conf(write_config: Callable[[str], Path]) -> Path:
    return write_config("")


def _row(db: store.Store) -> tuple[object, ...] | None:
    with db.read() as s:
        r = store.get_sip_status(s)
        if r is None:
            return None
        return (r.state, r.last_error, r.pid, r.untrusted_count, r.untrusted_sources, r.untrusted_last_source,
                r.heartbeat_at is not None)


def test_heartbeat_writes_the_snapshot_and_a_last_stopped(db: store.Store) -> None:
    since = datetime(2026, 3, 4, 11, 0, tzinfo=UTC)
    snaps = [Snapshot("registering", "", since), Snapshot("registered", "", since + timedelta(seconds=1),
                                                                  Untrusted(5, 2, "198.51.100.7:5060", since))]
    beat = Heartbeat(db, lambda: snaps[0] if len(snaps) == 1 else snaps.pop(0), interval=0.05, pid=4242).start()
    deadline = time.monotonic() + 5
    while (_row(db) or ("",))[0] != "registered" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _row(db) == ("registered", "", 4242, 5, 2, "198.51.100.7:5060", True)
    with db.read() as s:
        assert store.get_sip_status(s).since == since + timedelta(seconds=1)
    beat.stop()
    # the untrusted summary stays for `screener status` to show after the stop
    assert _row(db) == ("stopped", "", 4242, 5, 2, "198.51.100.7:5060", True)


def test_a_failing_database_is_logged_once_per_outage(db: store.Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "screener.health")
    broken = [True]

    def snapshot() -> Snapshot:
        if broken[0]:
            raise OSError("disk full")
        return Snapshot("registered")

    beat = Heartbeat(db, snapshot, interval=1.0, pid=1)
    assert [beat.beat() for _ in range(3)] == [False, False, False]
    broken[0] = False
    assert beat.beat()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["screener: cannot write the heartbeat to the database (disk full): status will say not running",
                        "screener: heartbeat written again"]


NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("state", "age", "judged", "running", "code"), [
    (None, None, "never", False, 3),
    ("registered", 0.0, "registered", True, 0),
    ("registered", 15.0, "registered", True, 0),
    ("registered", 15.1, "stale", False, 3),
    ("registering", 3.0, "registering", True, 1),
    ("failed", 3.0, "failed", True, 1),
    ("failed", 100.0, "stale", False, 3),
    ("stopped", 1.0, "stopped", False, 3),
    ("registered", -30.0, "registered", True, 0),  # the writer's clock ahead of ours
    ("registered", None, "registered", True, 0),  # a row from a screener without a heartbeat
])
def test_judge(state: str | None, age: float | None, judged: str, running: bool, code: int) -> None:
    beat = NOW - timedelta(seconds=age) if age is not None else None
    h = health.judge(state, beat, NOW)
    assert (h.state, h.running, h.exit_code) == (judged, running, code)
