"""Dashboard benchmark: 1,000,000 calls and 100,000 list entries in SQLite, the production server (waitress)
in its own process, and a few concurrent keep-alive clients on loopback.

Prints p50/p95 per page next to a static file from the same server (the floor). Goal: p95 <= 100 ms.
Run: `python tests/bench/bench_web.py` (or through `make bench`).
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

from werkzeug.security import generate_password_hash

from screener import config, store
from screener.store import OUTCOMES

N_CALLS = 1_000_000
N_ENTRIES = 100_000
N_NUMBERS = 200_000
DAYS = 1000
CLIENTS = (1, 4)  # one user, then a few concurrent clients
REQUESTS = 200  # per page, spread over the clients
GOAL_P95_MS = 100.0
PASSWORD = "bench password"
_WEIGHTS = (30, 30, 20, 10, 5, 4, 0.5, 0.5)  # OUTCOMES order: blocked, answered_elsewhere, missed, ...


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(db_file: Path, rng: random.Random) -> dict[str, str]:
    """Fill the database fast (driver executemany); returns the values the pages are asked about."""
    st = store.Store(f"sqlite:///{db_file}")
    store.upgrade(st)
    st.dispose()
    numbers = [f"+39{rng.choice('03')}{n:09d}" for n in rng.sample(range(1_000_000_000), N_NUMBERS)]
    hot = numbers[0]
    now = datetime.now(UTC).replace(tzinfo=None)
    start = now - timedelta(days=DAYS)
    step = (now - start) / N_CALLS
    names = ["", "", "", "Mario Rossi", "Energia Srl", "Pizzeria", "SPAM", "Studio Bianchi", "Anna"]

    def rows():  # type: ignore[no-untyped-def]
        for i in range(N_CALLS):
            e164 = hot if i % 2000 == 0 else numbers[int(rng.paretovariate(1.2) * 10) % N_NUMBERS]
            outcome = rng.choices(OUTCOMES, _WEIGHTS)[0]
            decision = "block" if outcome == "blocked" else rng.choice(("screen", "allow"))
            vm = f"voicemail/{i}.wav" if outcome == "missed" and i % 50 == 0 else None
            yield ((start + step * i).strftime("%Y-%m-%d %H:%M:%S.%f"), f"c{i}@bench", "192.0.2.1", f"<sip:{e164}@x>", "",
                   rng.choice(names), e164, e164, "fixed_line", "IT", 0, decision, "", "", outcome, "",
                   rng.random() * 60, vm, 0)

    con = sqlite3.connect(db_file)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    with con:
        con.executemany(
            "INSERT INTO calls (started_at, call_id, source, from_raw, called_line, name, caller_raw, e164,"
            " number_type, country, withheld, decision, rule, reason, outcome, digits, duration_s,"
            " voicemail_path, voicemail_heard) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows())
        stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")
        con.executemany(
            "INSERT INTO list_entries (list, pattern, label, source, created_at, hit_count) VALUES (?,?,?,?,?,0)",
            ((("block", "allow", "screen")[i % 3], f"+393{n:09d}", f"bench {i}", "bench", stamp)
             for i, n in enumerate(rng.sample(range(1_000_000_000), N_ENTRIES))))
        con.execute("INSERT INTO users (login, password_hash, created_at) VALUES (?,?,?)",
                    ("bench", generate_password_hash(PASSWORD, method="scrypt"), stamp))
    con.close()
    return {"hot": hot, "hot_national": hot[3:] if hot.startswith("+39") else hot,
            "from": (now - timedelta(days=90)).date().isoformat()}


class Client:
    """One keep-alive HTTP/1.1 connection with the session cookie of a logged-in user."""

    def __init__(self, port: int, cookie: str = "") -> None:
        self.port, self.cookie = port, cookie
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, bytes, http.client.HTTPResponse]:
        headers = {"Cookie": self.cookie} if self.cookie else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=headers)
        r = self.conn.getresponse()
        return r.status, r.read(), r

    def login(self) -> None:
        _, page, r = self.request("GET", "/login")
        self.cookie = (r.getheader("Set-Cookie") or "").split(";")[0]
        token = re.search(rb'name="csrf_token" value="([^"]+)"', page)[1].decode()  # type: ignore[index]
        status, _, r = self.request("POST", "/login", urlencode({"login": "bench", "password": PASSWORD,
                                                                  "csrf_token": token}))
        if status != 302:
            raise RuntimeError(f"login failed: {status}")
        self.cookie = (r.getheader("Set-Cookie") or "").split(";")[0]


def measure(port: int, cookie: str, path: str, clients: int) -> list[float]:
    """REQUESTS requests for `path` from `clients` threads at once; latencies in milliseconds."""
    times: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def worker(n: int) -> None:
        c = Client(port, cookie)
        for _ in range(3):  # warm-up: connection, caches, lazy imports
            c.request("GET", path)
        mine = []
        for _ in range(n):
            t0 = time.perf_counter()
            status, _body, _r = c.request("GET", path)
            mine.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                errors.append(f"{path}: HTTP {status}")
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=worker, args=(REQUESTS // clients,)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(errors[0])
    return times


def _pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--serve"]:
        import web

        web.serve(config.load(argv[1]))
        return 0
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="screener-bench-web-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        info = seed(root / "bench.db", rng)
        print(f"seeded {N_CALLS:,} calls and {N_ENTRIES:,} list entries in {time.perf_counter() - t0:.1f} s")
        port = _free_port()
        cfg_file = root / "config.toml"
        cfg_file.write_text(f'data_dir = "{root / "data"}"\n[database]\nurl = "sqlite:///{root / "bench.db"}"\n'
                            f'[web]\nport = {port}\nsecret = "bench-secret"\n', encoding="utf-8")
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(cfg_file)])
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the dashboard did not start") from None
                    time.sleep(0.05)
            c = Client(port)
            c.login()
            hot = info["hot"]
            pages = [
                ("static file (floor)", "/static/style.css"),
                ("call log, first page", "/calls"),
                ("call log, filtered", "/calls?" + urlencode({"outcome": "missed", "decision": "screen",
                                                             "from": info["from"]})),
                ("number search", "/calls?" + urlencode({"q": info["hot_national"]})),
                ("number page", f"/numbers/{hot}"),
                ("name search", "/calls?" + urlencode({"q": "bianchi"})),
                ("name search, no match", "/calls?" + urlencode({"q": "nobody at all"})),
                ("overview", "/"),
                ("lists", "/lists"),
                ("lists, search", "/lists?" + urlencode({"q": "bench 4242"})),
                ("voicemail", "/voicemail"),
            ]
            print(f"{REQUESTS} requests per page and load; waitress with 8 threads; server and clients share 2 cores")
            head = "".join(f"{f'{n} client' + ('s' if n > 1 else ''):>20}" for n in CLIENTS)
            print(f"{'':<24}{head}")
            print(f"{'page':<24}" + f"{'p50 ms':>10}{'p95 ms':>10}" * len(CLIENTS) + f"  goal p95 <= {GOAL_P95_MS:.0f} ms")
            worst = 0.0
            for name, path in pages:
                cells, verdict = "", "ok"
                for n in CLIENTS:
                    times = measure(port, c.cookie, path, n)
                    p50, p95 = _pct(times, 50), _pct(times, 95)
                    cells += f"{p50:10.1f}{p95:10.1f}"
                    if not path.startswith("/static"):
                        worst = max(worst, p95)
                    if p95 > GOAL_P95_MS:
                        verdict = "SLOW"
                print(f"{name:<24}{cells}  {verdict}")
            print(f"worst page p95: {worst:.1f} ms")
        finally:
            server.terminate()
            server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
