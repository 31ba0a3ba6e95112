"""SIP benchmarks against real peers: the kamailio+sipp floor, then screener's own figures; prints a table.

Run with `make bench` (or `python tests/bench/bench_sip.py [--only NAME ...]`). Not collected by pytest.
Every figure is measured on loopback with the ports of tests/e2e/peers.py; each section starts and stops its
own processes by PID.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from peers import (  # noqa: E402
    HOST,
    PASSWORD,
    CallSpec,
    Kamailio,
    Phone,
    Ports,
    PyUac,
    RtpCapture,
    Screener,
    caller,
    percentile,
    screener_config,
)


@dataclass
class Row:
    """One line of the result table."""

    section: str
    figure: str
    value: str
    note: str = ""


def _ms(values: list[float], p: float) -> str:
    return f"{percentile(values, p):.2f} ms" if values else "n/a"


@contextmanager
def provider(work: Path, ports: Ports, **kw: int) -> Iterator[Kamailio]:
    k = Kamailio(work / "kamailio", ports.kamailio, PASSWORD, **kw)
    k.start()
    try:
        yield k
    finally:
        k.stop()


@contextmanager
def phones(work: Path, k: Kamailio, ports: Ports, *, decline: int | None = None,
           ring_ms: int = 60000) -> Iterator[Phone]:
    """The household phone (rings ring_ms), plus a sipp device declining with `decline` if given."""
    started: list[Phone] = []
    try:
        home = Phone(work, k, ports.household, ports.household_media, ring_ms=ring_ms,
                     register_port=ports.registrar_client)
        started.append(home)
        home.start()
        if decline:
            d = Phone(work, k, ports.decliner, ports.decliner_media, name="decliner", decline=decline,
                      register_port=ports.registrar_client)
            started.append(d)
            d.start()
        yield home
    finally:
        for p in started:
            p.stop()


class Peak:
    """Samples a screener's thread count and RSS every 0.1 s while in use (a context manager)."""

    def __init__(self, s: Screener) -> None:
        self.s, self.threads, self.rss_kb = s, s.threads(), s.rss_kb()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.wait(0.1):
            if self.s.alive():
                self.threads = max(self.threads, self.s.threads())
                self.rss_kb = max(self.rss_kb, self.s.rss_kb())

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def bench_baseline(work: Path, ports: Ports, calls: int = 200, rate: float = 20) -> list[Row]:
    """The floor: a sipp device on the AOR declines with 603 at once; kamailio cancels the household phone."""
    rows = []
    with provider(work, ports) as k, phones(work, k, ports, decline=603) as home:
        sipp = caller(work, ports, CallSpec(expect=603), calls=calls, rate=rate, limit=calls, rtt=True,
                      timeout=calls / rate + 30)
        rc = sipp.run(calls / rate + 40)
        rtts = sipp.rtts("decline")
        rows.append(Row("baseline sipp", f"{calls} calls at {rate:g}/s", f"exit {rc}",
                        f"{len(rtts)} timed; sipp rtd resolution is 1 ms"))
        rows.append(Row("baseline sipp", "INVITE->603 p50 / p99", f"{_ms(rtts, 50)} / {_ms(rtts, 99)}"))
        with PyUac((HOST, ports.kamailio), (HOST, ports.caller)) as uac:
            res = uac.run([f"+3902{9000000 + i}" for i in range(calls)], rate)
        lat = [r.latency_ms for r in res if r.final_code == 603 and r.latency_ms is not None]
        rows.append(Row("baseline py", f"{calls} calls at {rate:g}/s", f"{len(lat)} x 603",
                        f"{sum(r.final_code is None for r in res)} without final response"))
        rows.append(Row("baseline py", "INVITE->603 p50 / p99 / max",
                        f"{_ms(lat, 50)} / {_ms(lat, 99)} / {_ms(lat, 100)}"))
        time.sleep(0.5)
        rows.append(Row("baseline", "household phone cancelled", f"{len(home.events('CANCELLED'))}",
                        f"of {len(home.events('INVITE'))} INVITEs"))
    return rows


def _screener(work: Path, ports: Ports, **sections: dict) -> Screener:
    return Screener(work / "screener", screener_config(work, ports, PASSWORD, **sections))


def _seed_blocklist(s: Screener, n: int) -> float:
    """Insert n block entries through the store; returns seconds taken."""
    from screener import config as config_mod
    from screener import store

    s.cli("init")
    cfg = config_mod.load(s.config_path)
    st = store.Store(cfg.database_url)
    t0 = time.perf_counter()
    with st.write() as session:
        store.bulk_put(session, "block", ((f"+3906{i:08d}", "bench") for i in range(n)), source="bench")
    st.dispose()
    return time.perf_counter() - t0


def _started(s: Screener) -> Screener:
    s.start()
    s.wait_registered(timeout=30)
    return s


def _stop(s: Screener, rows: list[Row], section: str) -> None:
    rc, took = s.stop(timeout=5.0)
    rows.append(Row(section, "SIGTERM -> exit", f"{took:.2f} s", f"exit code {rc}"))


def bench_screener_blocked(work: Path, ports: Ports, calls: int = 200, rate: float = 20,
                           entries: int = 1_000_000) -> list[Row]:
    """Blocked callers against a blocklist of `entries` numbers: INVITE->603 as the caller sees it."""
    rows: list[Row] = []
    s = _screener(work, ports)
    took = _seed_blocklist(s, entries)
    rows.append(Row("screener blocked", f"seed {entries:,} block entries", f"{took:.1f} s"))
    with provider(work, ports) as k, phones(work, k, ports) as home:
        _started(s)
        try:
            with PyUac((HOST, ports.kamailio), (HOST, ports.caller)) as uac:
                res = uac.run([f"+3906{(i * 4999) % entries:08d}" for i in range(calls)], rate, timeout=15)
            codes = [r.final_code for r in res]
            lat = [r.latency_ms for r in res if r.final_code in (603, 607) and r.latency_ms is not None]
            rows.append(Row("screener blocked", f"{calls} calls at {rate:g}/s",
                            f"{len(lat)} declined", f"final codes: {_count(codes)}"))
            rows.append(Row("screener blocked", "INVITE->603 p50 / p99 / max",
                            f"{_ms(lat, 50)} / {_ms(lat, 99)} / {_ms(lat, 100)}"))
            time.sleep(0.5)
            rows.append(Row("screener blocked", "household phone cancelled", f"{len(home.events('CANCELLED'))}",
                            f"of {len(home.events('INVITE'))} INVITEs"))
        finally:
            _stop(s, rows, "screener blocked")
    return rows


def bench_gatekeeper(work: Path, ports: Ports, calls: int = 200, rate: float = 10,
                     entries: int = 1_000_000) -> list[Row]:
    """Gatekeeper mode, allowed callers against a list of `entries` numbers: the caller's INVITE leaving ->
    screener's INVITE arriving at the household phone (both through kamailio), then the house's 486 back."""
    from pyphone import Plan, PyPhone

    rows: list[Row] = []
    s = _screener(work, ports, sip={"mode": "gatekeeper"},
                  ring_through={"target": f"sip:household@{HOST}:{ports.kamailio}", "max_bridged_calls": 32})
    took = _seed_blocklist(s, entries)
    numbers = [f"+3902{7000000 + i}" for i in range(calls)]
    s.cli("list", "add", "allow", "+39027*", "--force")  # every caller of the run is allowed
    rows.append(Row("gatekeeper", f"seed {entries:,} block entries + an allow prefix", f"{took:.1f} s"))
    with provider(work, ports) as k:
        house = PyPhone(ports.pyphone(0), "household", (k.host, k.port), plan=Plan(after=0.0, decline=486))
        try:
            house.register()
            _started(s)
            try:
                with PyUac((HOST, ports.kamailio), (HOST, ports.caller)) as uac, Peak(s) as peak:
                    res = uac.run(numbers, rate, timeout=15)
                arrived = {e.call_id: e.t for e in house.events if e.kind == "incoming"}
                rung = {c.invite.from_user: arrived[c.call_id] for c in house.calls
                        if c.invite is not None and c.call_id in arrived}
                lat = [(rung[key] - r.sent) * 1000 for r in res if (key := "00" + r.number[1:]) in rung]
                rows.append(Row("gatekeeper", f"{calls} allowed calls at {rate:g}/s", f"{len(lat)} rang the house",
                                f"caller's final codes: {_count([r.final_code for r in res])}"))
                rows.append(Row("gatekeeper", "INVITE sent -> INVITE at the household p50 / p99 / max",
                                f"{_ms(lat, 50)} / {_ms(lat, 99)} / {_ms(lat, 100)}", "two kamailio hops included"))
                rows.append(Row("gatekeeper", "peak threads / RSS", f"{peak.threads} / {peak.rss_kb / 1024:.1f} MiB"))
            finally:
                _stop(s, rows, "gatekeeper")
        finally:
            house.close()
    return rows


def bench_notify_hanging(work: Path, ports: Ports, calls: int = 200, rate: float = 20) -> list[Row]:
    """Blocked callers' INVITE -> 603 while a voicemail's notification hangs at the endpoint (json:// to a
    local HTTP server that never answers), beside the same with an endpoint that answers at once."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from notify_support import Endpoint
    from pyphone import PyPhone

    rows: list[Row] = []
    for mode in ("ok", "hang"):
        endpoint = Endpoint(mode)
        section = f"notify {'hanging' if mode == 'hang' else 'answering'}"
        s = _screener(work / mode, ports, notify={"urls": [endpoint.url], "events": ["voicemail"]},
                      screening={"voicemail_max_seconds": 5})
        s.cli("list", "add", "block", "+39025*", "--force")
        try:
            with provider(work / mode, ports) as k:
                _started(s)
                caller = PyPhone(ports.pyphone(0), "caller", (k.host, k.port))
                try:  # a voicemail: its notification is what hangs
                    c = caller.call(f"sip:home@{HOST}:{ports.kamailio}", codecs=("PCMU",), from_user="0287654321")
                    c.wait("confirmed", timeout=10)
                    time.sleep(1.3)
                    c.send_digit("5")
                    time.sleep(1.5)
                    c.play_tone(800.0, 2.0)
                    c.wait_sent()
                    c.bye()
                    if not endpoint.arrived.wait(10):
                        raise RuntimeError("the voicemail's notification never reached the endpoint")
                finally:
                    caller.close()
                try:
                    with PyUac((HOST, ports.kamailio), (HOST, ports.caller)) as uac:
                        res = uac.run([f"+3902{5000000 + i}" for i in range(calls)], rate, timeout=15)
                    lat = [r.latency_ms for r in res if r.final_code == 603 and r.latency_ms is not None]
                    rows.append(Row(section, f"{calls} blocked calls at {rate:g}/s", f"{len(lat)} x 603",
                                    "the notification still held" if endpoint.hanging.is_set()
                                    and not endpoint.release.is_set() else ""))
                    rows.append(Row(section, "INVITE->603 p50 / p99 / max",
                                    f"{_ms(lat, 50)} / {_ms(lat, 99)} / {_ms(lat, 100)}"))
                finally:
                    _stop(s, rows, section)
        finally:
            endpoint.close()
    return rows


def bench_screener_unknown(work: Path, ports: Ports, calls: int = 20, rate: float = 2) -> list[Row]:
    """Unknown callers with screen_delay 0: INVITE->200 (screener answers to play the challenge)."""
    rows: list[Row] = []
    s = _screener(work, ports, screening={"screen_delay": 0.0, "max_screened_calls": 8})
    with provider(work, ports) as k, phones(work, k, ports):
        _started(s)
        try:
            with PyUac((HOST, ports.kamailio), (HOST, ports.caller)) as uac:
                res = uac.run([f"+39333{1000000 + i}" for i in range(calls)], rate, hold_s=0.3, timeout=15)
            lat = [r.latency_ms for r in res if r.final_code == 200 and r.latency_ms is not None]
            rows.append(Row("screener unknown", f"{calls} calls at {rate:g}/s", f"{len(lat)} answered",
                            f"final codes: {_count([r.final_code for r in res])}"))
            rows.append(Row("screener unknown", "INVITE->200 p50 / p99 / max",
                            f"{_ms(lat, 50)} / {_ms(lat, 99)} / {_ms(lat, 100)}"))
        finally:
            _stop(s, rows, "screener unknown")
    return rows


def bench_screener_rtp(work: Path, ports: Ports, concurrent: int = 10, hold_s: float = 4.0) -> list[Row]:
    """`concurrent` screened calls at once: gaps between the prompt's RTP packets as each caller receives them."""
    rows: list[Row] = []
    s = _screener(work, ports, screening={"screen_delay": 0.0, "max_screened_calls": max(concurrent, 4),
                                          "challenge_timeout": 10.0})
    caps = [RtpCapture(ports.capture_low + i).start() for i in range(concurrent)]
    try:
        with provider(work, ports) as k, phones(work, k, ports):
            _started(s)
            try:
                with PyUac((HOST, ports.kamailio), (HOST, ports.caller)) as uac, Peak(s) as peak:
                    res = uac.run([f"+39347{2000000 + i}" for i in range(concurrent)], 50, hold_s=hold_s,
                                  sdp_port=lambda i: ports.capture_low + i, timeout=hold_s + 10)
                answered = sum(r.final_code == 200 for r in res)
                gaps = [g for c in caps for g in c.gaps_ms(pt=0)]
                got = sum(bool(c.packets) for c in caps)
                rows.append(Row("screener rtp", f"{concurrent} concurrent screened calls",
                                f"{answered} answered", f"{got} callers received RTP, {len(gaps) + got} packets"))
                rows.append(Row("screener rtp", "inter-packet gap p50 / p99 / max",
                                f"{_ms(gaps, 50)} / {_ms(gaps, 99)} / {_ms(gaps, 100)}", "ideal 20 ms"))
                rows.append(Row("screener rtp", "peak threads / RSS during calls",
                                f"{peak.threads} / {peak.rss_kb / 1024:.1f} MiB"))
            finally:
                _stop(s, rows, "screener rtp")
    finally:
        for c in caps:
            c.stop()
    return rows


RSS_BUDGET_KIB = 5 * 1024  # the issue: RSS within 5 MB of its start value after the load


def bench_screener_load(work: Path, ports: Ports, rate: float = 100, seconds: float = 10,
                        blocked: bool = True, rounds: int = 3) -> list[Row]:
    """100 INVITE/s for 10 s, `rounds` times in one screener process: every INVITE needs a final response.

    blocked: every caller matches a block prefix and the household phone rings for a minute, so any INVITE
    screener does not decline stays without a final response. Otherwise: unknown callers, 4 screened at once,
    the rest left ringing until the household phone answers after 200 ms.

    Memory protocol: the start value is the RSS 1 s after screener registered, before its first call (a cold
    start, no warm-up calls). RSS is read 3 s after each round. A leak grows round after round; a one-time
    cost (caches filling, allocator arenas) shows in the first round only. Requirement: every round's RSS
    within 5 MB of the start value.
    """
    section = "screener load " + ("blocked" if blocked else "unknown")
    rows: list[Row] = []
    n = int(rate * seconds)
    s = _screener(work, ports, screening={"screen_delay": 0.0, "max_screened_calls": 4})
    if blocked:
        s.cli("list", "add", "block", "+39328*")
    with provider(work, ports) as k, phones(work, k, ports, ring_ms=60000 if blocked else 200):
        _started(s)
        try:
            time.sleep(1.0)
            idle_rss, idle_threads = s.rss_kb(), s.threads()
            rows.append(Row(section, "start RSS / threads (cold, no call yet)",
                            f"{idle_rss / 1024:.1f} MiB / {idle_threads}"))
            worst = 0
            for r in range(1, rounds + 1):
                with PyUac((HOST, ports.kamailio), (HOST, ports.caller)) as uac, Peak(s) as peak:
                    res = uac.run([f"+39328{r}{3000000 + i}" for i in range(n)], rate, hold_s=0.5, timeout=20)
                lost = [x for x in res if x.final_code is None]
                lat = [x.latency_ms for x in res if x.latency_ms is not None]
                rows.append(Row(section, f"round {r}: {n} INVITEs at {rate:g}/s", f"{len(lost)} without final response",
                                f"final codes: {_count([x.final_code for x in res])}"))
                rows.append(Row(section, f"round {r}: INVITE->final p50 / p99 / max",
                                f"{_ms(lat, 50)} / {_ms(lat, 99)} / {_ms(lat, 100)}"))
                time.sleep(3.0)
                after = s.rss_kb()
                worst = max(worst, after - idle_rss)
                rows.append(Row(section, f"round {r}: peak RSS / RSS 3 s after / peak threads / threads after",
                                f"{peak.rss_kb / 1024:.1f} / {after / 1024:.1f} MiB / {peak.threads} / {s.threads()}",
                                f"{(after - idle_rss) / 1024:+.1f} MiB on start" + ("" if s.alive() else "; PROCESS DIED")))
            rows.append(Row(section, "RSS 3 s after every round within 5 MB of start",
                            "yes" if worst <= RSS_BUDGET_KIB else "NO", f"worst {worst / 1024:+.1f} MiB"))
            rows.append(Row(section, "rows in the call log", str(s.db_scalar("SELECT count(*) FROM calls")),
                            f"of {n * rounds} INVITEs"))
        finally:
            _stop(s, rows, section)
    return rows


def _count(codes: list[int | None]) -> str:
    out: dict[str, int] = {}
    for c in codes:
        out[str(c)] = out.get(str(c), 0) + 1
    return ", ".join(f"{k}: {v}" for k, v in sorted(out.items()))


BENCHES: dict[str, Callable[[Path, Ports], list[Row]]] = {
    "baseline": bench_baseline,
    "blocked": bench_screener_blocked,
    "unknown": bench_screener_unknown,
    "gatekeeper": bench_gatekeeper,
    "notify-hanging": bench_notify_hanging,
    "rtp": bench_screener_rtp,
    "load": bench_screener_load,
    "load-unknown": lambda work, ports: bench_screener_load(work, ports, blocked=False),
}


def print_table(rows: list[Row]) -> None:
    widths = [max(len(getattr(r, f)) for r in rows) for f in ("section", "figure", "value")]
    for r in rows:
        print(f"{r.section:{widths[0]}}  {r.figure:{widths[1]}}  {r.value:{widths[2]}}  {r.note}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="run only these sections")
    args = ap.parse_args(argv)
    ports = Ports.for_worker()
    rows: list[Row] = []
    failed = False
    for name in args.only or list(BENCHES):
        with tempfile.TemporaryDirectory(prefix=f"screener-bench-{name}-") as tmp:
            t0 = time.monotonic()
            try:
                rows += BENCHES[name](Path(tmp), ports)
            except Exception as e:  # one broken section must not hide the others' figures
                failed = True
                rows.append(Row(name, "FAILED", type(e).__name__, str(e).splitlines()[0][:160] if str(e) else ""))
            print(f"[{name}: {time.monotonic() - t0:.1f} s]", file=sys.stderr)
    print_table(rows)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"(children CPU: {ru.ru_utime + ru.ru_stime:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
