"""screener on PostgreSQL, and PostgreSQL stopped for 20 s while a call a second arrives.

Blocked callers must still be declined (the rules last read are kept in memory), both a number that called
before the outage and one blocked but never seen; every call's row must be in the database once PostgreSQL is
back (spooled meanwhile).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from peers import HOST, Kamailio, PyUac, Screener, percentile, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

DB = "screener"
B_OLD = "+390212345678"  # blocked, and calls before the outage
B_NEW = "+390212340000"  # blocked before the outage, first call during it
OUTAGE_CALLS = 20  # one a second
ROWS_WITHIN_S = 15.0


def test_postgres_down_20s_blocked_callers_still_declined_and_rows_written_after(
        pg_cluster: Any, make_screener: Callable[..., Screener], kamailio: Kamailio) -> None:
    url = pg_cluster.create_database(DB)
    screener = make_screener(database={"url": url})
    screener.cli("list", "add", "block", B_OLD)
    screener.cli("list", "add", "block", B_NEW)
    with PyUac((HOST, screener.sip_port)) as uac:
        before = uac.run([B_OLD, "+390655500000"], rate=2, hold_s=0.5, timeout=3)
        assert [r.final_code for r in before] == [603, 200], before
        time.sleep(2.0)

        t_down = time.monotonic()
        pg_cluster.stop("fast")
        numbers = [(B_OLD, B_NEW)[i % 2] if i % 3 else f"+39065551{i:04d}" for i in range(OUTAGE_CALLS)]
        res = uac.run(numbers, rate=1, hold_s=1.0, timeout=2)
        down_s = time.monotonic() - t_down
        pg_cluster.start()
        t_up = time.monotonic()
        alive = screener.alive()
        ids = {r.call_id for r in before + res}
        present: dict[str, tuple[Any, Any]] = {}

        def all_rows() -> bool:
            try:
                rows = pg_cluster.query(DB, "SELECT call_id, outcome, decision FROM calls")
            except Exception:  # noqa: BLE001 - still starting
                return False
            present.update({cid: (o, d) for cid, o, d in rows if cid in ids})
            return len(present) == len(ids)

        try:
            wait_until(all_rows, ROWS_WITHIN_S, interval=0.25, what="every call's row in PostgreSQL")
        except TimeoutError:
            pass
        rows_s = time.monotonic() - t_up

    blocked = [r for r in res if r.number in (B_OLD, B_NEW)]
    unknown = [r for r in res if r.number not in (B_OLD, B_NEW)]
    declined = {n: sum(r.final_code == 603 for r in blocked if r.number == n) for n in (B_OLD, B_NEW)}
    totals = {n: sum(r.number == n for r in blocked) for n in (B_OLD, B_NEW)}
    lat = [r.latency_ms for r in blocked if r.final_code == 603]
    missing = sorted(ids - set(present))
    print(f"\nPostgreSQL down {down_s:.1f} s, {len(res)} calls at 1/s; screener alive: {alive}")
    print(f"  blocked, called before: {declined[B_OLD]}/{totals[B_OLD]} declined; blocked, never called before: "
          f"{declined[B_NEW]}/{totals[B_NEW]} declined; INVITE->603 p50 {percentile(lat, 50):.1f} ms, "
          f"max {max(lat, default=float('nan')):.1f} ms")
    print(f"  unknown: final responses {dict(Counter(r.final_code for r in unknown))}")
    print(f"  rows after PostgreSQL came back ({rows_s:.1f} s): {len(present)} of {len(ids)}, "
          f"outcomes {dict(Counter(o for o, _ in present.values()))}")
    assert alive, screener.log_tail()
    assert [r.final_code for r in blocked] == [603] * len(blocked), [(r.number, r.final_code) for r in blocked]
    assert missing == [], f"{len(missing)} of {len(ids)} rows missing {ROWS_WITHIN_S:g} s after the restart"
    assert all(present[r.call_id] == ("blocked", "block") for r in blocked), present
