"""Fixtures for the real-peer tests: kamailio as the provider, sipp phones and callers, `screener run`.

Each test gets its own processes on fixed loopback ports (tests/e2e/peers.py, Ports) and stops them by PID in
teardown, whether the test passed or not. On failure the tails of every log under the test's tmp_path are
attached to the report.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import (  # noqa: E402
    PASSWORD,
    CallSpec,
    Kamailio,
    Phone,
    Ports,
    Screener,
    Sipp,
    caller,
    screener_config,
)
from pyphone import PyPhone  # noqa: E402


@pytest.fixture
def ports() -> Ports:
    return Ports.for_worker()


@pytest.fixture
def kamailio(request: pytest.FixtureRequest, tmp_path: Path, ports: Ports) -> Iterator[Kamailio]:
    """The provider: a forking registrar on 127.0.0.1, empty location table.

    Parametrize indirectly with a dict (max_expires=..., min_expires=...) to change the registrar.
    """
    k = Kamailio(tmp_path / "kamailio", ports.kamailio, PASSWORD, **getattr(request, "param", {}))
    k.start()
    try:
        yield k
    finally:
        k.stop()


@pytest.fixture
def make_phone(tmp_path: Path, kamailio: Kamailio, ports: Ports) -> Iterator[Callable[..., Phone]]:
    """Factory for sipp UASes registered on the AOR: make_phone(ring_ms=...) or make_phone(decline=603)."""
    started: list[Phone] = []

    def make(name: str = "household", **kw: Any) -> Phone:
        if kw.get("decline"):
            port, media = ports.decliner, ports.decliner_media
        else:
            port, media = ports.household, ports.household_media
        phone = Phone(tmp_path, kamailio, port, media, name=name, register_port=ports.registrar_client, **kw)
        started.append(phone)
        return phone.start()

    try:
        yield make
    finally:
        for phone in started:
            phone.stop()


@pytest.fixture
def household(make_phone: Callable[..., Phone]) -> Phone:
    """The household phone: rings 3 s, then answers; 200 + 487 when cancelled."""
    return make_phone(ring_ms=3000)


@pytest.fixture
def make_pyphone(kamailio: Kamailio, ports: Ports) -> Iterator[Callable[..., PyPhone]]:
    """Factory for PyPhones registered at kamailio: make_pyphone("house", plan=Plan(after=1.0, codec="PCMA")).

    register=False only binds the phone. Teardown closes every phone (BYE/CANCEL, unregister) and fails the
    test if one of its threads raised.
    """
    made: list[PyPhone] = []

    def make(user: str, register: bool = True, **kw: Any) -> PyPhone:
        phone = PyPhone(ports.pyphone(len(made)), user, (kamailio.host, kamailio.port), **kw)
        made.append(phone)
        if register:
            phone.register()
        return phone

    yield make
    for phone in made:
        phone.close()
    errors = [f"{p.name}: {e}" for p in made for e in p.errors]
    if errors:
        pytest.fail("PyPhone thread errors:\n" + "\n".join(errors))


@pytest.fixture
def call(tmp_path: Path, ports: Ports) -> Iterator[Callable[..., Sipp]]:
    """Place calls with sipp: call(CallSpec(...), timeout=...) returns the finished Sipp (check .proc exit)."""
    made: list[Sipp] = []

    def place(spec: CallSpec, *, timeout: float = 30.0, start_only: bool = False, **kw: Any) -> Sipp:
        sipp = caller(tmp_path, ports, spec, name=kw.pop("name", f"caller{len(made) + 1}"), timeout=timeout, **kw)
        made.append(sipp)
        sipp.start()
        if not start_only:
            sipp.wait(timeout + 5)
        return sipp

    try:
        yield place
    finally:
        for sipp in made:
            sipp.stop()


@pytest.fixture
def make_screener(tmp_path: Path, ports: Ports, kamailio: Kamailio) -> Iterator[Callable[..., Screener]]:
    """Factory: make_screener(sip={...}, screening={...}) writes the config, runs `screener run` and waits
    until `screener status` says registered (start=False: only writes the config).

    Teardown stops every started screener with SIGTERM and fails the test unless it exited within 5 s.
    """
    made: list[Screener] = []

    def make(password: str = PASSWORD, start: bool = True, **sections: dict[str, Any]) -> Screener:
        s = Screener(tmp_path / f"screener{len(made) or ''}", screener_config(tmp_path, ports, password, **sections))
        made.append(s)
        if start:
            s.start()
            s.wait_registered(timeout=15, registrar=kamailio)
        return s

    yield make
    slow = []
    for s in made:
        if s.proc is None or not s.proc.alive():
            continue
        rc, took = s.stop(timeout=5.0)
        if rc is None:
            slow.append(f"screener (pid {s.proc.pid}) ignored SIGTERM for 5 s and was killed")
    if slow:
        pytest.fail("; ".join(slow))


@pytest.fixture
def screener(make_screener: Callable[..., Screener]) -> Screener:
    """`screener run` with the default test config (unknown callers screened at once), registered."""
    return make_screener()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if not report.failed or tmp is None:
        return
    for log in sorted(Path(tmp).rglob("*.log")):
        text = log.read_text(errors="replace")
        if text.strip():
            report.sections.append((f"{log.relative_to(tmp)} (tail)", text[-2500:]))

