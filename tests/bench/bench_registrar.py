"""How long screener takes to be bound again after its registrar comes back with an empty location table.

Run with `python -m tests.bench registrar [--rounds N] [--long-rounds N] [--only instant,10s,3min]`. One
`screener run` with the shipped keepalive and expiry defaults against kamailio (no database: a restart forgets
every binding); each round waits a random part of the refresh period, stops kamailio, keeps it down, starts it
again and times its return -> screener's binding in kamailio's log. Prints p50 and p100 per case.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "e2e"))
sys.path.insert(0, str(HERE.parents[1] / "faults"))

from peers import PASSWORD, Kamailio, Ports, Screener, percentile, screener_config  # noqa: E402
from test_registrar import DEFAULTS, REQUIREMENT, rebind_seconds  # noqa: E402

from screener.sip.agent import REFRESH_MAX  # noqa: E402

CASES = {"instant": 0.0, "10s": 10.0, "3min": 180.0}


def run_case(work: Path, ports: Ports, name: str, down_for: float, rounds: int) -> list[float]:
    """`rounds` outages of `down_for` s against one screener; the seconds until bound again, per round."""
    k = Kamailio(work / name / "kamailio", ports.kamailio, PASSWORD)
    k.start()
    s = Screener(work / name / "screener", screener_config(work / name, ports, PASSWORD, sip=DEFAULTS))
    try:
        s.start()
        s.wait_registered(timeout=15, registrar=k)
        figures = []
        for i in range(rounds):
            # the outage falls anywhere in the refresh cycle, as a real one would
            time.sleep(random.uniform(0, REFRESH_MAX))
            took = rebind_seconds(k, s.sip_port, down_for, timeout=REQUIREMENT + 60)
            figures.append(took)
            print(f"  {name} round {i + 1}/{rounds}: {took:.2f} s", flush=True)
        return figures
    finally:
        s.stop(timeout=5.0)
        k.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="outages per case (default 10)")
    ap.add_argument("--long-rounds", type=int, default=None, help="outages for the 3-minute case (default --rounds)")
    ap.add_argument("--only", default=",".join(CASES), help="comma-separated cases: " + ", ".join(CASES))
    args = ap.parse_args()
    ports = Ports.for_worker()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-registrar-") as tmp:
        for name in args.only.split(","):
            rounds = args.long_rounds if name == "3min" and args.long_rounds is not None else args.rounds
            if rounds > 0:
                results[name] = run_case(Path(tmp), ports, name, CASES[name], rounds)
    print(f"\nregistered again after the registrar's return (kamailio's log), requirement <= {REQUIREMENT:g} s")
    print(f"{'registrar':<22} {'rounds':>6} {'p50':>8} {'p100':>8}")
    worst = 0.0
    for name, figures in results.items():
        worst = max(worst, max(figures))
        print(f"{'down ' + name:<22} {len(figures):>6} {percentile(figures, 50):>7.1f}s {max(figures):>7.1f}s")
    return 0 if worst <= REQUIREMENT else 1


if __name__ == "__main__":
    sys.exit(main())
