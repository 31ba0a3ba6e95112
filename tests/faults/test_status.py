"""`screener status` after `screener run` was killed with SIGKILL: no clean "stopped" was written, only the
heartbeat stops. Within STALE_AFTER (15 s) plus a beat, status must say not running and exit 3."""

from __future__ import annotations

import signal
import time

import pytest
from peers import Screener, wait_until

from screener.health import EXIT_NOT_RUNNING, INTERVAL, STALE_AFTER

pytestmark = pytest.mark.e2e


def test_status_says_not_running_after_sigkill(screener: Screener) -> None:
    rc, text = screener.status()
    assert rc == 0 and text.startswith("registered since"), text
    wait_until(lambda: screener.db_scalar("SELECT heartbeat_at FROM sip_status WHERE id = 1") is not None,
               2 * INTERVAL, interval=0.2, what="a heartbeat")
    assert screener.proc is not None and screener.proc.popen is not None
    screener.proc.popen.send_signal(signal.SIGKILL)
    screener.proc.popen.wait(5)
    killed = time.monotonic()
    last = ""

    def not_running() -> bool:
        nonlocal last
        rc, last = screener.status()
        return rc == EXIT_NOT_RUNNING

    wait_until(not_running, STALE_AFTER + 2 * INTERVAL, interval=0.5, what="`screener status` to say not running")
    took = time.monotonic() - killed
    print(f"`screener status` said not running {took:.1f} s after the SIGKILL")
    assert last.startswith("not running: no heartbeat since "), last
    assert "registered" not in last, last
