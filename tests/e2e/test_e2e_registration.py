"""Registration at the provider: digest auth, a wrong password, a provider that restarts."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from peers import HOST, CallSpec, Kamailio, Phone, Screener, Sipp, wait_until

pytestmark = pytest.mark.e2e

BLOCKED = "+390212345678"


def test_registers_with_digest_auth(screener: Screener, kamailio: Kamailio) -> None:
    rc, text = screener.status()
    assert rc == 0 and text.lower().startswith("registered"), text
    bindings = kamailio.registrations_from(screener.sip_port)
    assert bindings, kamailio.log_lines("REGISTERED")
    # The Contact must be the real address and port screener listens on (not 0.0.0.0: PYVOIP.md).
    assert f"@{HOST}:{screener.sip_port}" in bindings[-1], bindings[-1]
    # kamailio challenged first, so the binding was made with credentials.
    assert any(ln.rstrip().endswith(f":{screener.sip_port}") for ln in kamailio.log_lines("AUTHFAIL"))


def test_wrong_password_is_shown_by_status(make_screener: Callable[..., Screener], kamailio: Kamailio) -> None:
    screener = make_screener(password="not-the-password", start=False)
    screener.start()
    # Its REGISTER with credentials was refused (a second challenge) before status is asked.
    wait_until(lambda: len([ln for ln in kamailio.log_lines("AUTHFAIL")
                            if ln.rstrip().endswith(f":{screener.sip_port}")]) >= 2, 10, what="the refused REGISTER")
    last = ""

    def says_wrong_password() -> bool:
        nonlocal last
        rc, last = screener.status()
        return rc != 0 and "password" in last.lower()

    wait_until(says_wrong_password, 15, interval=0.3, what="`screener status` to report the rejected password")
    assert "registered since" not in last.lower(), last
    assert not kamailio.registrations_from(screener.sip_port)
    assert screener.alive(), screener.log_tail()


def test_registers_again_after_the_provider_restarts(make_screener: Callable[..., Screener], kamailio: Kamailio,
                                                     make_phone: Callable[..., Phone],
                                                     call: Callable[..., Sipp]) -> None:
    """The provider is down for longer than a keepalive interval, then back with no bindings."""
    screener = make_screener(sip={"keepalive_interval": 1})
    household = make_phone(ring_ms=5000)
    screener.cli("list", "add", "block", BLOCKED)
    before = len(kamailio.registrations_from(screener.sip_port))
    kamailio.restart(down_for=2.0)
    household.register()
    wait_until(lambda: len(kamailio.registrations_from(screener.sip_port)) > before, 30, interval=0.2,
               what="screener to register at the restarted provider")
    sipp = call(CallSpec(number=BLOCKED, expect=603), timeout=10)
    assert sipp.proc.popen.returncode == 0, sipp.report()
    rows = screener.wait_call(lambda r: r.get("e164") == BLOCKED)
    assert rows[0]["outcome"] == "blocked", rows[0]


def test_status_while_the_service_starts_on_a_fresh_database(make_screener: Callable[..., Screener],
                                                            kamailio: Kamailio) -> None:
    """A user (or a monitoring script) asking `screener status` as `screener run` starts must not kill it."""
    import subprocess

    from peers import screener_command

    screener = make_screener(start=False)
    screener.start()
    probes = [subprocess.Popen([*screener_command(), "--config", str(screener.config_path), "status"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = []
    for p in probes:
        out, _ = p.communicate(timeout=30)
        outputs.append(out.strip())
    screener.wait_registered(timeout=10, registrar=kamailio)
    assert screener.alive(), screener.log_tail()
    assert not [o for o in outputs if "database error" in o], outputs


@pytest.mark.parametrize("kamailio", [{"max_expires": 4, "min_expires": 2}], indirect=True)
def test_refreshes_within_the_expiry_the_provider_grants(screener: Screener, kamailio: Kamailio,
                                                         call: Callable[..., Sipp]) -> None:
    """screener asks for 60 s, kamailio grants 4 s: the binding must be refreshed in time (PYVOIP.md)."""
    t0 = time.monotonic()
    screener.cli("list", "add", "block", BLOCKED)
    first = len(kamailio.registrations_from(screener.sip_port))
    wait_until(lambda: len(kamailio.registrations_from(screener.sip_port)) > first, 4, interval=0.1,
               what="a refresh of a 4 s binding within 4 s")
    time.sleep(max(0.0, t0 + 4.5 - time.monotonic()))  # past the first binding's end
    sipp = call(CallSpec(number=BLOCKED, expect=603), timeout=10)
    assert sipp.proc.popen.returncode == 0, sipp.report()
