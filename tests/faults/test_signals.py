"""Signals to a busy `screener run`: SIGTERM stops it cleanly, SIGHUP reloads [screening] without a restart.

Five unknown callers are in the challenge (silent sipp callers through kamailio) when the signal arrives.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from peers import HOST, CallSpec, Kamailio, PyUac, Screener, Sipp, Wait, wait_until

pytestmark = pytest.mark.e2e

UNKNOWN = "+390287654321"
CALLS = 5
# 5 calls in the challenge at once; a long challenge timeout keeps them there until the signal.
SCREENING = {"max_screened_calls": 8, "challenge_timeout": 30.0}


def _five_in_the_challenge(screener: Screener, call: Callable[..., Sipp], kamailio: Kamailio) -> Sipp:
    sipp = call(CallSpec(number=UNKNOWN, media=[Wait(40000)]), timeout=60, start_only=True, calls=CALLS,
                rate=10, limit=CALLS)
    # kamailio relays screener's answers (onreply_route logs INVITE replies only): the row may not be written yet
    wait_until(lambda: len([ln for ln in kamailio.log_lines("REPLY")
                            if " 200 " in ln and ln.rstrip().endswith(f"from {HOST}:{screener.sip_port}")]) >= CALLS,
               10, what=f"{CALLS} calls answered by screener")
    time.sleep(1.0)  # the challenge playing
    return sipp


def test_sigterm_unregisters_interrupts_the_calls_and_exits_0(make_screener: Callable[..., Screener],
                                                                call: Callable[..., Sipp], kamailio: Kamailio,
                                                                db_rows: Any) -> None:
    screener = make_screener(screening=SCREENING)
    _five_in_the_challenge(screener, call, kamailio)
    assert screener.proc is not None
    rc, took = screener.stop(timeout=10.0)
    rows = db_rows(screener, "SELECT call_id, outcome FROM calls")
    unregisters = [ln for ln in kamailio.log_lines("REGISTERED")
                   if ln.rstrip().endswith(f":{screener.sip_port}") and "expires=0" in ln]
    print(f"\nSIGTERM with {CALLS} calls in the challenge: exit code {rc} after {took:.2f} s; "
          f"outcomes {sorted(o or 'NULL' for _, o in rows)}; unregisters seen by kamailio: {len(unregisters)}")
    assert rc == 0, f"exit code {rc} (None: killed after 10 s)\n{screener.log_tail()}"
    assert took < 3.5, f"took {took:.2f} s to stop"
    assert len(rows) == CALLS and all(o == "interrupted" for _, o in rows), rows
    assert unregisters, "kamailio saw no REGISTER with expires=0 from screener"


def test_sighup_reloads_screening_and_keeps_running(make_screener: Callable[..., Screener],
                                                     call: Callable[..., Sipp], kamailio: Kamailio,
                                                     db_rows: Any) -> None:
    screener = make_screener(screening=SCREENING)
    _five_in_the_challenge(screener, call, kamailio)
    assert screener.proc is not None
    registrations = len(kamailio.registrations_from(screener.sip_port))
    screener.config["screening"]["default_action"] = "block"
    screener.write_config()
    t0 = time.monotonic()
    os.kill(screener.proc.pid, signal.SIGHUP)
    time.sleep(3.0)
    alive = screener.alive()
    rc = None if alive else screener.proc.popen.returncode
    print(f"\nSIGHUP with {CALLS} calls in the challenge: alive after 3 s: {alive} (exit code {rc})")
    assert alive, f"screener died on SIGHUP (exit code {rc}):\n{screener.log_tail()}"
    code, status = screener.status()
    assert code == 0, status
    unregisters = [ln for ln in kamailio.log_lines("REGISTERED")
                   if ln.rstrip().endswith(f":{screener.sip_port}") and "expires=0" in ln]
    assert not unregisters, unregisters
    # An unknown caller after the reload: default_action is now "block", so a 603 at once.
    with PyUac((HOST, kamailio.port)) as uac:
        res = uac.run(["+390611223344"], rate=1, timeout=5)
    took = time.monotonic() - t0
    print(f"first call after the reload: {res[0].final_code} in {res[0].latency_ms or 0:.1f} ms "
          f"({took:.1f} s after SIGHUP); registrations before/after: {registrations}/"
          f"{len(kamailio.registrations_from(screener.sip_port))}")
    assert res[0].final_code == 603, f"{res[0]}\n{screener.log_tail()}"
    rows = db_rows(screener, "SELECT outcome, decision FROM calls WHERE call_id = ?", (res[0].call_id,))
    assert rows and rows[0][1] == "block", rows
    assert screener.alive()
