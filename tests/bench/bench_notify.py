"""Notifications never delay a call: the call handler's time from the INVITE handed to it to its first SIP action,
without notifications and with a json:// endpoint on 127.0.0.1 that answers, refuses connections or hangs; and
how long a voicemail's notification takes to arrive at the endpoint that answers.

Each call is an unknown caller who passes the challenge and leaves a 2 s message (so each posts a notification),
driven through screener.service.CallHandler with a scripted call (no sockets: the figure is the handler's own).
Run with `make bench` or `python -m tests.bench notify [--calls N]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from notify_support import Endpoint, closed_port_url  # noqa: E402
from test_service import PROMPTS, FakeCall, Info  # noqa: E402

from screener import config, store  # noqa: E402
from screener.notify import Notifier  # noqa: E402
from screener.service import CallHandler  # noqa: E402


class TimedCall(FakeCall):
    first_action: float | None = None

    def _first_action(self) -> None:
        if self.first_action is None:
            self.first_action = time.perf_counter()


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))] if v else float("nan")


def run_case(work: Path, name: str, url: str | None, calls: int) -> tuple[list[float], Notifier | None]:
    folder = work / name
    folder.mkdir()
    body = f'data_dir = "{folder / "data"}"\n[database]\nurl = "sqlite:///{folder / "s.db"}"\n'
    if url:
        body += f'[notify]\nurls = ["{url}"]\n'
    (folder / "config.toml").write_text(body, encoding="utf-8")
    cfg = config.load(folder / "config.toml")
    db = store.Store(cfg.database_url)
    store.upgrade(db)
    notifier = Notifier(cfg).start() if url else None
    handler = CallHandler(cfg, db, PROMPTS)
    if notifier is not None:
        handler.on_closed = notifier.call_closed
    times: list[float] = []
    closed: list[float] = []
    try:
        for i in range(calls):
            call = TimedCall(Info(call_id=f"{name}-{i}", from_raw=f"<sip:021{i:07d}@fritz.box>"), keys=["5"],
                             voice_seconds=2.0)
            t0 = time.perf_counter()
            handler(call)
            closed.append(time.monotonic())
            assert call.first_action is not None
            times.append((call.first_action - t0) * 1000)
            time.sleep(0.01)
    finally:
        handler.close()
        db.dispose()
    run_case.closed = closed  # type: ignore[attr-defined]
    return times, notifier


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args(argv)
    ok, hang = Endpoint("ok"), Endpoint("hang")
    rows = []
    delivery = ""
    try:
        with tempfile.TemporaryDirectory(prefix="screener-bench-notify-") as tmp:
            work = Path(tmp)
            for name, url in (("no notifications", None), ("endpoint answers", ok.url),
                              ("endpoint refuses connections", closed_port_url()), ("endpoint hangs", hang.url)):
                times, notifier = run_case(work, name.replace(" ", "-"), url, args.calls)
                extra = ""
                if name == "endpoint answers":
                    ok.wait(args.calls, 30)
                    closed = run_case.closed  # type: ignore[attr-defined]
                    lat = [(at - c) * 1000 for (at, _b), c in zip(ok.received, closed, strict=False)]
                    delivery = (f"voicemail row closed -> notification at the endpoint: {len(ok.received)}/"
                                f"{args.calls} delivered, p50 {percentile(lat, 50):.0f} ms, p99 "
                                f"{percentile(lat, 99):.0f} ms, max {max(lat):.0f} ms")
                if notifier is not None:
                    extra = f"sent {notifier.sent}, failed attempts {notifier.failed}"
                    notifier.stop(0.5)
                rows.append((name, percentile(times, 50), percentile(times, 99), max(times), extra))
    finally:
        ok.close()
        hang.close()
    print(f"call handler, INVITE handed over -> first SIP action (ring), {args.calls} screened calls with a voicemail")
    for name, p50, p99, mx, extra in rows:
        print(f"  {name:30} p50 {p50:.3f} ms  p99 {p99:.3f} ms  max {mx:.3f} ms  {extra}")
    print(f"  {delivery}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
