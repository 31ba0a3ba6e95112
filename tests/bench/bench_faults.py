"""Blocked callers while the rest of the system is busy: a CSV import, the dashboard in use, SQLite's write lock
held by another process, a burst of wrong-password logins. Prints one line per scenario: INVITE->603 as the
caller sees it (PyUac through kamailio), next to an unloaded baseline, and whether every call's row arrived.

Run with `make bench` or `python -m tests.bench faults [--only NAME ...] [--calls N] [--rows N]`. Each scenario
has its own `screener run` (SIP service and dashboard) on a fresh SQLite database holding 1,000 block entries;
kamailio and the household phone are shared. Exit 1 when a call got no final response or a row is missing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from peers import (  # noqa: E402
    HOST,
    PASSWORD,
    CallResult,
    Kamailio,
    Phone,
    Ports,
    Proc,
    PyUac,
    Screener,
    percentile,
    screener_command,
    screener_config,
    wait_until,
)

SEED_ENTRIES = 1_000
GOAL_DELTA_MS = 5.0  # blocked callers: p99 at most 5 ms over the unloaded baseline
ROWS_WAIT_S = 10.0
MAX_LOAD_S = 600.0  # calls stop coming after this long even if a load is still running
LOCK_S = 15.0
LOGINS, LOGIN_ADDRESSES = 300, 60  # 5 per address: the limiter's allowance, so every one costs a password check
USER, USER_PASSWORD = "bench", "bench password"

HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
print("released", flush=True)
"""


@dataclass
class Outcome:
    """One scenario's line of the table, and what went wrong in it."""

    name: str
    results: list[CallResult] = field(default_factory=list)
    rows_present: int = 0  # rows of this scenario's calls, closed (with an outcome)
    rows_total: int = 0  # calls made
    rows_in_table: int = 0  # every row of the calls table: equal to rows_total when nothing is missing or doubled
    load: str = ""
    goal: str = ""
    problems: list[str] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)

    @property
    def declined(self) -> list[float]:
        return [r.latency_ms for r in self.results if r.final_code in (603, 607) and r.latency_ms is not None]

    @property
    def unanswered(self) -> int:
        return sum(r.final_code is None for r in self.results)

    @property
    def rows_ok(self) -> bool:
        return self.rows_present == self.rows_total == self.rows_in_table

    def p(self, q: float) -> float:
        return percentile(self.declined, q)


@dataclass
class Env:
    """What every scenario shares: the work folder, the ports, kamailio, the CSV files, the options."""

    work: Path
    ports: Ports
    kamailio: Kamailio
    calls: int
    rate: float
    csv: dict[int, Path] = field(default_factory=dict)

    def csv_file(self, rows: int) -> Path:
        """A CSV of `rows` new block numbers (none of them among the seeded ones), written once."""
        if rows not in self.csv:
            path = self.work / f"block-{rows}.csv"
            with path.open("w", encoding="utf-8") as f:
                f.write("number;label\n")
                f.writelines(f"+3902{i:08d};bench import {i}\n" for i in range(rows))
            self.csv[rows] = path
        return self.csv[rows]

    def numbers(self, first: int = 0, n: int | None = None) -> list[str]:
        """Blocked numbers (seeded ones) for calls first..first+n (n: env.calls)."""
        return [f"+3906{(i * 7) % SEED_ENTRIES:08d}" for i in range(first, first + (self.calls if n is None else n))]


# ------------------------------------------------------------------------------------------------- screener


@contextmanager
def running_screener(env: Env, name: str) -> Iterator[Screener]:
    """A registered `screener run` on a fresh database with SEED_ENTRIES block entries and a dashboard user."""
    from screener import config as config_mod
    from screener import store

    s = Screener(env.work / name, screener_config(env.work / name, env.ports, PASSWORD))
    s.cli("init")
    st = store.Store(config_mod.load(s.config_path).database_url)
    with st.write() as session:
        store.bulk_put(session, "block", ((f"+3906{i:08d}", "bench") for i in range(SEED_ENTRIES)), source="bench")
    st.dispose()
    res = subprocess.run([*screener_command(), "--config", str(s.config_path), "user", "add", USER,
                          "--password-stdin"], input=USER_PASSWORD + "\n", capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"`screener user add` exited {res.returncode}: {res.stderr[-500:]}")
    s.start()
    try:
        s.wait_registered(timeout=30, registrar=env.kamailio)
        wait_until(lambda: _port_open(env.ports.web), 15, what="the dashboard to listen")
        yield s
    finally:
        s.stop(timeout=5.0)


def _port_open(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _db(s: Screener) -> Path:
    return Path(s.config["database"]["url"].removeprefix("sqlite:///"))


def _closed_rows(s: Screener, ids: set[str]) -> tuple[int, int]:
    """(rows of these calls with an outcome, rows in the calls table), read-only."""
    try:
        with closing(sqlite3.connect(f"file:{_db(s)}?mode=ro", uri=True, timeout=2)) as db:
            done = {cid for cid, in db.execute("SELECT call_id FROM calls WHERE outcome IS NOT NULL")}
            total = db.execute("SELECT count(*) FROM calls").fetchone()[0]
    except sqlite3.Error:
        return 0, 0
    return len(done & ids), total


def _entries(s: Screener) -> int:
    with closing(sqlite3.connect(f"file:{_db(s)}?mode=ro", uri=True, timeout=2)) as db:
        return int(db.execute("SELECT count(*) FROM list_entries").fetchone()[0])


def _place_calls(env: Env, out: Outcome, s: Screener, timeout: float = 15.0) -> None:
    """The scenario's blocked calls at env.rate through kamailio; then wait for every row (closed)."""
    with PyUac((HOST, env.ports.kamailio), (HOST, env.ports.caller)) as uac:
        out.results = uac.run(env.numbers(), env.rate, timeout=timeout)
    _check_rows(out, s)


def _check_rows(out: Outcome, s: Screener) -> None:
    ids = {r.call_id for r in out.results}
    seen: tuple[int, int] = (0, 0)

    def complete() -> bool:
        nonlocal seen
        seen = _closed_rows(s, ids)
        return seen == (len(ids), len(ids))

    try:
        wait_until(complete, ROWS_WAIT_S, interval=0.2)
    except TimeoutError:
        out.problems.append(f"{len(ids) - seen[0]} call rows missing or open {ROWS_WAIT_S:g} s after the last call "
                            f"({seen[1]} rows in the calls table for {len(ids)} calls)")
    out.rows_present, out.rows_in_table, out.rows_total = seen[0], seen[1], len(ids)
    if out.unanswered:
        out.problems.append(f"{out.unanswered} calls without a final response")
    others = sorted({str(r.final_code) for r in out.results if r.final_code not in (603, 607, None)})
    if others:
        out.problems.append(f"final responses other than 603: {', '.join(others)}")


def _log_lines(s: Screener, limit: int = 6) -> list[str]:
    """WARNING/ERROR lines from the screener log (the first few distinct ones)."""
    seen: list[str] = []
    for ln in s.log_tail(1 << 20).splitlines():
        if re.search(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b", ln):
            key = re.sub(r"\d+", "#", ln)[:120]
            if key not in {re.sub(r"\d+", "#", x)[:120] for x in seen}:
                seen.append(ln[:300])
        if len(seen) >= limit:
            break
    return seen


# ------------------------------------------------------------------------------------------------ dashboard


class Browser:
    """One keep-alive HTTP/1.1 connection to the dashboard, from a chosen loopback address, with its cookie."""

    def __init__(self, port: int, source: str = HOST) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=120, source_address=(source, 0))
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/x-www-form-urlencoded") -> tuple[int, bytes]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}
        if body is not None:
            headers["Content-Type"] = content_type
        self.conn.request(method, path, body=body, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        for cookie in r.headers.get_all("Set-Cookie") or ():
            name, _, value = cookie.split(";")[0].partition("=")
            self.cookies[name.strip()] = value
        return r.status, data

    def token(self, path: str) -> str:
        status, page = self.request("GET", path)
        m = re.search(rb'name="csrf_token" value="([^"]+)"', page)
        if status != 200 or not m:
            raise RuntimeError(f"GET {path}: HTTP {status}, no CSRF token")
        return m[1].decode()

    def login(self, password: str = USER_PASSWORD) -> int:
        token = self.token("/login")
        status, _ = self.request("POST", "/login", urlencode(
            {"login": USER, "password": password, "csrf_token": token}).encode())
        return status

    def import_csv(self, path: Path, which: str = "block") -> int:
        token = self.token("/lists")
        boundary = "bench" + os.urandom(8).hex()
        head = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                       for k, v in (("csrf_token", token), ("list", which)))
        body = (head + f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
                "Content-Type: text/csv\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        status, _ = self.request("POST", "/lists/import", body, f"multipart/form-data; boundary={boundary}")
        return status

    def close(self) -> None:
        self.conn.close()


def logged_in(port: int) -> Browser:
    """A Browser logged in as the dashboard user (before any load starts: later the account may be locked)."""
    b = Browser(port)
    if (status := b.login()) != 302:
        b.close()
        raise RuntimeError(f"dashboard login HTTP {status}")
    return b


# The dashboard's load runs in a child process (`--load KIND`): its client threads must not hold this process's
# GIL while PyUac's receiver timestamps a response. The child logs in, says "ready", starts on "go", and an
# endless load ends on "stop"; it prints its summary as one JSON line.


def _browse(port: int, _arg: str) -> Callable[[threading.Event], str]:
    """A logged-in user paging through /calls and / in a loop until stopped."""
    b = logged_in(port)

    def run(stop: threading.Event) -> str:
        times: list[float] = []
        errors: list[str] = []
        while not stop.is_set():
            for path in ("/calls", "/"):
                t0 = time.perf_counter()
                status, _ = b.request("GET", path)
                times.append((time.perf_counter() - t0) * 1000)
                if status != 200:
                    errors.append(f"GET {path}: HTTP {status}")
        b.close()
        return (f"{len(times)} pages p50 {percentile(times, 50):.0f} / p99 {percentile(times, 99):.0f} ms"
                + (f", {len(errors)} errors ({errors[0]})" if errors else ""))

    return run


def _import_web(port: int, csv_file: str) -> Callable[[threading.Event], str]:
    """The dashboard's import form, as a logged-in user."""
    b = logged_in(port)

    def run(_stop: threading.Event) -> str:
        t0 = time.perf_counter()
        status = b.import_csv(Path(csv_file))
        b.close()
        if status not in (200, 302, 303):
            raise RuntimeError(f"dashboard import HTTP {status}")
        return f"web import, upload to response {time.perf_counter() - t0:.1f} s"

    return run


def _import_cli(_port: int, arg: str) -> Callable[[threading.Event], str]:
    """`screener --config CONFIG list import block CSV` (arg: "CONFIG CSV")."""
    config_path, csv_file = arg.split(" ", 1)

    def run(_stop: threading.Event) -> str:
        res = subprocess.run([*screener_command(), "--config", config_path, "list", "import", "block", csv_file],
                             capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise RuntimeError(f"`screener list import` exited {res.returncode}: {res.stderr.strip()[-300:]}")
        return "CLI import"

    return run


def _wrong_logins(port: int, _arg: str) -> Callable[[threading.Event], str]:
    """LOGINS wrong-password logins, LOGINS/LOGIN_ADDRESSES from each of 127.0.0.2.., 8 clients at once.

    Each address guesses an account name of its own: the dashboard limits attempts per address and per account
    (5 a minute each), so every attempt gets its password check (scrypt): the most work LOGINS attempts can cost.
    """
    per = LOGINS // LOGIN_ADDRESSES
    addresses = [f"127.0.0.{2 + i}" for i in range(LOGIN_ADDRESSES)]

    def run(_stop: threading.Event) -> str:
        statuses: dict[int, int] = {}
        times: list[float] = []
        lock = threading.Lock()

        def worker(mine: list[str]) -> None:
            for ip in mine:
                b = Browser(port, source=ip)
                try:
                    token = b.token("/login")
                    for _ in range(per):
                        t0 = time.perf_counter()
                        status, _ = b.request("POST", "/login", urlencode(
                            {"login": f"guess-{ip}", "password": "not the password", "csrf_token": token}).encode())
                        with lock:
                            times.append((time.perf_counter() - t0) * 1000)
                            statuses[status] = statuses.get(status, 0) + 1
                finally:
                    b.close()

        threads = [threading.Thread(target=worker, args=(addresses[i::8],)) for i in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        codes = ", ".join(f"{n} x {c}" for c, n in sorted(statuses.items()))
        return f"logins {codes}, p50 {percentile(times, 50):.0f} / max {max(times):.0f} ms"

    return run


LOADS: dict[str, Callable[[int, str], Callable[[threading.Event], str]]] = {
    "browse": _browse, "import-web": _import_web, "import-cli": _import_cli, "logins": _wrong_logins}


def load_main(kind: str, port: int, arg: str) -> int:
    """The child's side of Load."""
    try:
        run = LOADS[kind](port, arg)
    except Exception as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    print("ready", flush=True)
    sys.stdin.readline()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    t0 = time.perf_counter()
    try:
        text = run(stop)
    except Exception as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    print(json.dumps({"text": text, "took": time.perf_counter() - t0}), flush=True)
    return 0


class Load:
    """A `--load KIND` child process, ready (logged in) once constructed; go() starts it, result() waits."""

    def __init__(self, work: Path, kind: str, port: int, arg: str = "", endless: bool = False) -> None:
        self.kind, self.endless, self.t_go, self.took = kind, endless, 0.0, 0.0
        self._lines: queue.Queue[str] = queue.Queue()
        with (work / f"load-{kind}.err").open("w") as err:
            self.proc = subprocess.Popen([sys.executable, __file__, "--load", kind, str(port), arg],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        self.err = work / f"load-{kind}.err"
        threading.Thread(target=self._read, daemon=True).start()
        line = self._line(60)
        if line != "ready":
            self.close()
            raise RuntimeError(f"{kind} load did not start: {self._error(line)}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put("")

    def _line(self, timeout: float) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return ""

    def _error(self, line: str) -> str:
        try:
            return str(json.loads(line)["error"])
        except (ValueError, KeyError, TypeError):
            return line or self.err.read_text(errors="replace").strip()[-300:] or "no output"

    def _send(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def done(self) -> bool:
        return self.proc.poll() is not None

    def go(self) -> None:
        self.t_go = time.perf_counter()
        self._send("go")

    def result(self, timeout: float = 600.0) -> str:
        """The child's summary (stopping an endless load first); raises with its error."""
        if self.endless:
            self._send("stop")
        line = self._line(timeout)
        try:
            data = json.loads(line)
        except ValueError:
            data = {"error": self._error(line)}
        if "error" in data:
            raise RuntimeError(f"{self.kind}: {data['error']}")
        self.took = float(data["took"])
        return str(data["text"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


@contextmanager
def loads(env: Env, *specs: tuple[str, str, bool]) -> Iterator[list[Load]]:
    """Start one Load per (kind, arg, endless) and close them all afterwards."""
    started: list[Load] = []
    try:
        for kind, arg, endless in specs:
            started.append(Load(env.work, kind, env.ports.web, arg, endless))
        yield started
    finally:
        for ld in started:
            ld.close()


def _calls_under(env: Env, out: Outcome, s: Screener, running: list[Load], rows: int) -> None:
    """The loads start 0.5 s after the first INVITE; calls keep coming (at least env.calls) until every load
    but the endless ones is done. Then every load's result, and the rows."""
    before = _entries(s)
    timer = threading.Timer(0.5, lambda: [ld.go() for ld in running])
    chunk = max(1, int(env.rate))  # a second of calls at a time
    with PyUac((HOST, env.ports.kamailio), (HOST, env.ports.caller)) as uac:
        timer.start()
        t0 = time.monotonic()
        while len(out.results) < env.calls or (
                not all(ld.done() for ld in running if not ld.endless) and time.monotonic() - t0 < MAX_LOAD_S):
            n = min(chunk, env.calls - len(out.results)) if len(out.results) < env.calls else chunk
            out.results += uac.run(env.numbers(len(out.results), n), env.rate, timeout=15)
        timer.join()
    texts = []
    for ld in sorted(running, key=lambda ld: ld.endless):  # the endless ones (browsing) run to the end
        try:
            text = ld.result()
        except Exception as e:
            out.problems.append(f"load failed: {e}")
            text = f"{ld.kind} FAILED"
        if not ld.endless:
            during = sum(ld.t_go <= r.sent <= ld.t_go + ld.took for r in out.results)
            text += f" in {ld.took:.1f} s ({during} calls during it)"
        texts.append(text)
    added = _entries(s) - before
    out.load = f"{'; '.join(texts)}; {added:,}/{rows:,} entries imported"
    if added != rows:
        out.problems.append(f"the import added {added:,} entries, not {rows:,}")
    _check_rows(out, s)


# ------------------------------------------------------------------------------------------------ scenarios


def scenario_baseline(env: Env) -> Outcome:
    """Blocked callers, nothing else going on."""
    out = Outcome("baseline")
    with running_screener(env, "baseline") as s:
        _place_calls(env, out, s)
        out.log_lines = _log_lines(s)
    return out


def scenario_import_cli(env: Env, rows: int) -> Outcome:
    """A CSV import through `screener list import` (its own process) while a user browses the dashboard."""
    out = Outcome("import-cli")
    csv_file = env.csv_file(rows)
    with running_screener(env, "import-cli") as s, \
            loads(env, ("browse", "", True), ("import-cli", f"{s.config_path} {csv_file}", False)) as running:
        _calls_under(env, out, s, running, rows)
        out.log_lines = _log_lines(s)
    return out


def scenario_import_web(env: Env, rows: int) -> Outcome:
    """The same import through the dashboard's form (inside the screener process) while a user browses."""
    out = Outcome("import-web")
    csv_file = env.csv_file(rows)
    with running_screener(env, "import-web") as s, \
            loads(env, ("browse", "", True), ("import-web", str(csv_file), False)) as running:
        _calls_under(env, out, s, running, rows)
        out.log_lines = _log_lines(s)
    return out


def scenario_lock(env: Env) -> Outcome:
    """Another process holds SQLite's write lock for 15 s while the calls arrive; every row must follow."""
    out = Outcome("lock")
    with running_screener(env, "lock") as s:
        locker = Proc([sys.executable, "-c", HOLD_LOCK, str(_db(s)), str(LOCK_S)], env.work / "locker.log")
        locker.start()
        try:
            wait_until(lambda: "locked" in locker.output(), 10, what="the other process to hold the write lock")
            t_locked = time.perf_counter()
            with PyUac((HOST, env.ports.kamailio), (HOST, env.ports.caller)) as uac:
                out.results = uac.run(env.numbers(), env.rate, timeout=15)
            locker.wait(LOCK_S + 10)
            t_released = time.perf_counter()
        finally:
            locker.stop()
        held = sum(r.sent < t_locked + LOCK_S for r in out.results)
        _check_rows(out, s)
        out.load = (f"lock held {LOCK_S:g} s, {held} calls under it; rows complete "
                    f"{time.perf_counter() - t_released:.1f} s after release")
        if "released" not in locker.output():
            out.problems.append("the lock holder did not finish")
        out.log_lines = _log_lines(s)
    return out


def scenario_logins(env: Env, rows: int) -> Outcome:
    """Wrong-password logins from 60 addresses and a dashboard import of `rows` rows while calls arrive."""
    out = Outcome("logins")
    csv_file = env.csv_file(rows)
    with running_screener(env, "logins") as s, \
            loads(env, ("logins", "", False), ("import-web", str(csv_file), False)) as running:
        _calls_under(env, out, s, running, rows)
        out.log_lines = _log_lines(s)
    return out


# -------------------------------------------------------------------------------------------------- driver


def _fmt(v: float) -> str:
    return "n/a" if v != v else f"{v:.2f}"


def print_slowest(outcomes: list[Outcome], n: int = 5) -> None:
    """The n slowest calls of each scenario: which call (by order) and when, from the first INVITE."""
    for o in outcomes:
        if not o.results:
            continue
        t0 = o.results[0].sent
        ranked = sorted(((r.latency_ms or float("inf"), i, r.sent - t0) for i, r in enumerate(o.results)), reverse=True)
        print(f"  {o.name} slowest: " + ", ".join(f"#{i} at {at:.2f} s {ms:.1f} ms" for ms, i, at in ranked[:n]))


def print_table(outcomes: list[Outcome], base_p99: float) -> None:
    head = ("scenario", "calls", "declined", "p50 ms", "p99 ms", "max ms", "p99 vs base", "rows ok", "goal")
    lines = [head]
    for o in outcomes:
        delta = o.p(99) - base_p99
        lines.append((o.name, str(len(o.results)), str(len(o.declined)), _fmt(o.p(50)), _fmt(o.p(99)),
                      _fmt(o.p(100)), "" if o.name == "baseline" else (f"{delta:+.2f} ms" if delta == delta else "n/a"),
                      f"{o.rows_present}/{o.rows_total}" + ("" if o.rows_ok else f" ({o.rows_in_table} in table)"),
                      o.goal))
    widths = [max(len(ln[i]) for ln in lines) for i in range(len(head))]
    for ln in lines:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(ln, widths, strict=True))))
    for o in outcomes:
        if o.load:
            print(f"  {o.name}: {o.load}")
    for o in outcomes:
        for p in o.problems:
            print(f"  {o.name}: PROBLEM: {p}")
        for ln in o.log_lines:
            print(f"  {o.name} log: {ln}")


SCENARIOS = ("import-cli", "import-web", "lock", "logins")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--load"]:
        return load_main(argv[1], int(argv[2]), argv[3] if len(argv) > 3 else "")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these (the baseline always runs)")
    ap.add_argument("--calls", type=int, default=200, help="blocked calls per scenario (default 200)")
    ap.add_argument("--rate", type=float, default=20.0, help="calls per second (default 20)")
    ap.add_argument("--rows", type=int, default=100_000,
                    help="CSV rows of the import scenarios; the logins scenario imports 3x (default 100,000)")
    ap.add_argument("--verbose", action="store_true", help="also print each scenario's slowest calls")
    args = ap.parse_args(argv)
    missing = [t for t in ("kamailio", "sipp") if shutil.which(t) is None]
    if missing:
        print(f"bench_faults: {' and '.join(missing)} not found on PATH; install the Debian packages kamailio and "
              "sip-tester (`make system-deps`). Nothing measured.", file=sys.stderr)
        return 1
    ports = Ports.for_worker()
    outcomes: list[Outcome] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="screener-bench-faults-") as tmp:
        work = Path(tmp)
        k = Kamailio(work / "kamailio", ports.kamailio, PASSWORD)
        k.start()
        home = Phone(work, k, ports.household, ports.household_media, ring_ms=60000,
                     register_port=ports.registrar_client)
        try:
            home.start()
            env = Env(work, ports, k, args.calls, args.rate)
            runs: list[tuple[str, Callable[[], Outcome]]] = [("baseline", lambda: scenario_baseline(env))]
            table = {"import-cli": lambda: scenario_import_cli(env, args.rows),
                     "import-web": lambda: scenario_import_web(env, args.rows),
                     "lock": lambda: scenario_lock(env),
                     "logins": lambda: scenario_logins(env, 3 * args.rows)}
            runs += [(n, table[n]) for n in (args.only or SCENARIOS)]
            for name, run in runs:
                t0 = time.monotonic()
                try:
                    outcomes.append(run())
                except Exception as e:  # one broken scenario must not hide the others' figures
                    failed = True
                    o = Outcome(name)
                    o.problems.append(f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
                    outcomes.append(o)
                print(f"[{name}: {time.monotonic() - t0:.1f} s]", file=sys.stderr, flush=True)
        finally:
            home.stop()
            k.stop()
    base = outcomes[0].p(99) if outcomes and outcomes[0].name == "baseline" else float("nan")
    for o in outcomes:
        if o.name == "logins" and o.declined:
            ok = o.p(99) <= base + GOAL_DELTA_MS and len(o.declined) == len(o.results)
            o.goal = f"{'PASS' if ok else 'FAIL'} (p99 <= base +{GOAL_DELTA_MS:g} ms)"
    print(f"blocked callers through kamailio at {args.rate:g}/s, {args.calls} per scenario (more while a load runs); "
          f"{SEED_ENTRIES:,} block entries; SQLite WAL; {os.cpu_count()} cores")
    print_table(outcomes, base)
    if args.verbose:
        print_slowest(outcomes)
    lost = any(o.unanswered or not o.rows_ok for o in outcomes)
    return 1 if failed or lost else 0


if __name__ == "__main__":
    sys.exit(main())
