"""Store benchmark: list lookups with 1,000,000 entries in SQLite, and a 100,000-row CSV import.

Lookups go through the service's own path: parse_caller -> Store.ruleset -> decide.
Goals (issue 2): median exact-number lookup <= 50 us, longest-prefix lookup <= 100 us, import <= 5 s.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import insert

from screener import csvio, store
from screener.numbers import parse_caller
from screener.rules import decide

N_ENTRIES = 1_000_000
N_PREFIXES = 50_000
N_LOOKUPS = 5_000
N_IMPORT = 100_000
ROME = ZoneInfo("Europe/Rome")


def _seed(st: store.Store, rng: random.Random) -> list[str]:
    numbers = [f"+3902{n:08d}" for n in rng.sample(range(100_000_000), N_ENTRIES - N_PREFIXES)]
    prefixes = [f"+393{n:05d}*" for n in rng.sample(range(100_000), N_PREFIXES)]
    now = datetime.now(UTC)
    rows = [{"list": "block", "pattern": p, "label": "", "source": "bench", "created_at": now, "hit_count": 0}
            for p in numbers + prefixes]
    with st.write() as s:
        for i in range(0, len(rows), 20_000):
            s.execute(insert(store.ListEntry), rows[i:i + 20_000])
    return numbers + prefixes


def _lookup_times(st: store.Store, inputs: list[str]) -> tuple[list[float], list[float], int]:
    """(lookup times: Store.ruleset + decide, whole-path times: parse_caller too, blocked count)."""
    lookups, whole, blocked = [], [], 0
    now = datetime.now(UTC)
    for raw in inputs:
        t0 = time.perf_counter()
        caller = parse_caller(raw, "IT")
        t1 = time.perf_counter()
        d = decide(caller, st.ruleset(caller, region="IT", tz=ROME, default="screen"), now)
        t2 = time.perf_counter()
        lookups.append(t2 - t1)
        whole.append(t2 - t0)
        blocked += d.action == "block"
    return lookups, whole, blocked


def _stats(name: str, times: list[float]) -> str:
    us = sorted(t * 1e6 for t in times)
    return (f"{name:38} median {statistics.median(us):7.1f} us   p95 {us[int(len(us) * .95)]:7.1f} us"
            f"   p99 {us[int(len(us) * .99)]:7.1f} us")


def main() -> int:
    rng = random.Random(4475)
    with tempfile.TemporaryDirectory() as tmp:
        st = store.Store(f"sqlite:///{Path(tmp) / 'bench.db'}")
        store.upgrade(st)
        t0 = time.perf_counter()
        patterns = _seed(st, rng)
        print(f"seeded {len(patterns):,} list entries in {time.perf_counter() - t0:.1f} s")

        exact = [p.replace("+39", "", 1) for p in rng.sample(patterns[:-N_PREFIXES], N_LOOKUPS)]
        prefixed = [p[:-1].replace("+39", "", 1) + f"{rng.randrange(10_000):04d}"
                    for p in rng.sample(patterns[-N_PREFIXES:], N_LOOKUPS)]
        _lookup_times(st, exact[:200])  # warm the page cache and the connection pool
        t_exact, w_exact, b1 = _lookup_times(st, exact)
        t_prefix, w_prefix, b2 = _lookup_times(st, prefixed)
        assert b1 == b2 == N_LOOKUPS, f"every benchmark number must hit its entry: {b1}, {b2}"
        print(_stats("exact-number lookup (1M entries)", t_exact))
        print(_stats("longest-prefix lookup (1M entries)", t_prefix))
        print(_stats("  with parse_caller, exact", w_exact))
        print(_stats("  with parse_caller, prefix", w_prefix))

        csv_path = Path(tmp) / "import.csv"
        lines = ["numero;descrizione"] + [f"+39 06 {n:08d};call centre {n % 97}"
                                          for n in rng.sample(range(100_000_000), N_IMPORT)]
        csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        t0 = time.perf_counter()
        report = csvio.parse_csv(csv_path.read_bytes(), "IT")
        with st.write() as s:
            n = store.bulk_put(s, "block", report.rows, source="import")
        elapsed = time.perf_counter() - t0
        assert n == N_IMPORT and not report.errors
        print(f"{'list import of 100,000 CSV rows':38} {elapsed:7.2f} s (into a table of 1M entries)")
        st.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
