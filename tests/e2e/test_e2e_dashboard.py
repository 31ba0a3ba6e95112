"""`screener run` serves the dashboard from a process of its own, and starts it again if it dies."""

from __future__ import annotations

import os
import signal
import urllib.request
from pathlib import Path

import pytest
from peers import HOST, Ports, Screener, wait_until

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def _login_page(ports: Ports) -> int:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{ports.web}/login", timeout=2) as r:
            return r.status
    except OSError:
        return 0


def test_dashboard_runs_beside_the_service_and_is_restarted(screener: Screener, ports: Ports):
    assert screener.proc is not None
    pid = screener.proc.pid
    wait_until(lambda: _login_page(ports) == 200, 15, interval=0.2, what="the dashboard")
    (web,) = _children(pid)
    assert "web" in Path(f"/proc/{web}/cmdline").read_text().split("\0")
    print(f"service threads: {_threads(pid)}")
    os.kill(web, signal.SIGKILL)
    wait_until(lambda: _children(pid) and _children(pid) != [web], 15, interval=0.2, what="a new dashboard")
    wait_until(lambda: _login_page(ports) == 200, 15, interval=0.2, what="the dashboard again")
    assert "the dashboard exited" in screener.log_tail()


def test_dashboard_ends_with_a_killed_service(screener: Screener, ports: Ports):
    # an orphaned dashboard would keep the port from the next `screener run`
    assert screener.proc is not None
    pid = screener.proc.pid
    wait_until(lambda: _login_page(ports) == 200, 15, interval=0.2, what="the dashboard")
    (web,) = _children(pid)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{web}").exists() or "Z" in _state(web), 10, interval=0.1,
               what="the dashboard to end with its service")


def _state(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return "gone"
    return next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))
