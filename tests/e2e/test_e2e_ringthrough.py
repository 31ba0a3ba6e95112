"""Ring-through's outgoing call against real peers: screener's SIP agent dials a sipp phone through kamailio.

The agent runs in-process (the call-handler flow that uses it lives in screener/service.py); the household is
a sipp UAS registered on its own AOR ("household") on the same kamailio as the line ("home").
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from peers import HOST, PASSWORD, CallSpec, Kamailio, Phone, Ports, Screener, Sipp, Wait, dtmf, wait_until

from screener.config import SipConfig
from screener.sip import Call, SipAgent

pytestmark = pytest.mark.e2e

CALLER = "0212345678"
DISPLAY = "Mario Rossi (screened)"


@pytest.fixture
def agent(kamailio: Kamailio, ports: Ports) -> Iterator[SipAgent]:
    """screener's SIP agent registered on the line's AOR; every incoming call is recorded, never answered."""
    cfg = SipConfig(server=HOST, port=ports.kamailio, username="home", password=PASSWORD, local_address=HOST,
                    sip_port=ports.screener_sip, rtp_port_low=ports.rtp_low, rtp_port_high=ports.rtp_high,
                    keepalive_interval=0)
    handled: list[Call] = []

    def on_call(call: Call) -> None:
        handled.append(call)
        call.decline(486)

    a = SipAgent(cfg, on_call)
    a.handled = handled  # type: ignore[attr-defined]
    a.start()
    try:
        wait_until(lambda: a.status.state == "registered", 10, what="screener to register")
        yield a
    finally:
        a.stop()


def _house(make_phone: Callable[..., Phone], **kw: object) -> Phone:
    return make_phone(user="household", **kw)


def _target(ports: Ports, user: str = "household") -> str:
    return f"sip:{user}@{HOST}:{ports.kamailio}"


def _invite_from(kamailio: Kamailio) -> list[str]:
    return [ln for ln in kamailio.log_lines("INVITEFROM") if re.search(r" to (household|home)$", ln.rstrip())]


def test_the_household_phone_rings_with_the_callers_number_answers_and_gets_our_bye(
        agent: SipAgent, make_phone: Callable[..., Phone], kamailio: Kamailio, ports: Ports) -> None:
    house = _house(make_phone, ring_ms=300)
    leg = agent.dial(_target(ports), from_user=CALLER, display=DISPLAY)
    assert leg.wait_answered(10.0) == "answered"
    assert leg.ringing and leg.codec == "PCMU" and leg.media is not None
    assert any(f' {CALLER} "{DISPLAY}" to household' in ln for ln in _invite_from(kamailio)), _invite_from(kamailio)
    wait_until(lambda: house.events("ANSWERED"), 3, what="the household's ACK")
    leg.hangup()
    wait_until(lambda: house.events("HUNGUP"), 3, what="our BYE at the household phone")
    assert leg.wait_ended(2.0) and leg.end_reason == "hangup"
    assert agent.core.active_legs == 0  # released after 64*T1 (tests/test_sip_core_properties.py checks that)


def test_cancel_while_the_household_rings(agent: SipAgent, make_phone: Callable[..., Phone], ports: Ports) -> None:
    house = _house(make_phone, ring_ms=20000)
    leg = agent.dial(_target(ports), from_user=CALLER, display=DISPLAY)
    wait_until(lambda: leg.ringing, 5, what="the household to ring")
    assert leg.wait_answered(0.3) == "no_answer"  # it CANCELs
    wait_until(lambda: house.events("CANCELLED"), 3, what="the household phone to be cancelled")
    assert leg.wait_ended(3.0)
    record = agent.core.leg(leg.key)  # kept until Timer D to ACK the 487 again if need be
    wait_until(lambda: record is not None and record.final_code == 487, 5, what="the 487 (ACKed)")


@pytest.mark.parametrize("kamailio", [{"invite_auth": True}], indirect=True)
def test_a_challenged_invite_is_answered_with_the_accounts_digest(
        agent: SipAgent, make_phone: Callable[..., Phone], kamailio: Kamailio, ports: Ports) -> None:
    house = _house(make_phone, ring_ms=200)
    leg = agent.dial(_target(ports), from_user=CALLER, display=DISPLAY)
    assert leg.wait_answered(10.0) == "answered"
    assert len(kamailio.log_lines("INVITECHALLENGE")) == 1
    wait_until(lambda: house.events("ANSWERED"), 3, what="the household's ACK")
    leg.hangup()
    wait_until(lambda: house.events("HUNGUP"), 3, what="our BYE at the household phone")


@pytest.mark.parametrize("kamailio", [{"invite_auth": True}], indirect=True)
def test_wrong_credentials_fail_after_one_retry(agent: SipAgent, make_phone: Callable[..., Phone],
                                                kamailio: Kamailio, ports: Ports) -> None:
    from screener.sip import Credentials

    _house(make_phone, ring_ms=200)
    leg = agent.dial(_target(ports), from_user=CALLER, display=DISPLAY, credentials=Credentials("home", "wrong"))
    assert leg.wait_answered(10.0) == "failed" and leg.final_code == 407
    assert len(kamailio.log_lines("INVITECHALLENGE")) == 2


def test_our_call_forked_back_to_us_is_refused_and_the_household_still_answers(
        agent: SipAgent, make_phone: Callable[..., Phone], kamailio: Kamailio, ports: Ports, tmp_path: Path) -> None:
    # "ring every phone on the line": kamailio forks our INVITE to every contact of "home", screener's own too
    house = make_phone(ring_ms=500)  # registered on "home" like screener
    leg = agent.dial(_target(ports, "home"), from_user=CALLER, display=DISPLAY)
    assert leg.wait_answered(10.0) == "answered"
    assert agent.core.loops_refused >= 1 and agent.handled == []  # type: ignore[attr-defined]
    wait_until(lambda: house.events("ANSWERED"), 3, what="the household's ACK")
    leg.hangup()
    wait_until(lambda: house.events("HUNGUP"), 3, what="our BYE at the household phone")


def test_screener_run_puts_a_caller_who_passes_through_to_the_household(
        make_screener: Callable[..., Screener], make_phone: Callable[..., Phone], call: Callable[..., Sipp],
        kamailio: Kamailio, ports: Ports) -> None:
    # the whole flow with `screener run` (announce off: bridged as soon as the house answers)
    screener = make_screener(ring_through={"target": _target(ports), "announce": False, "timeout": 10.0})
    house = _house(make_phone, ring_ms=500)
    media = [Wait(1400), *dtmf("5"), Wait(5000)]
    sipp = call(CallSpec(number="+390287654321", display="Dottor Bianchi", media=media), timeout=30)
    assert sipp.proc.popen is not None and sipp.proc.popen.returncode == 0, sipp.report()
    assert house.events("ANSWERED") and house.events("HUNGUP") == house.events("ANSWERED")
    # the household's display: the caller's number as dialable digits and name, with the marker
    assert any(' 00390287654321 "Dottor Bianchi (screened)" to household' in ln for ln in _invite_from(kamailio)), \
        _invite_from(kamailio)
    rows = screener.wait_call(lambda r: r.get("outcome") == "connected", timeout=10)
    assert rows and rows[0]["e164"] == "+390287654321", rows
    assert 0.3 < rows[0]["talk_s"] < 5.0, rows[0]  # from the house answering to the caller's BYE


def test_screener_run_ringing_its_own_line_refuses_its_own_invite_and_adds_no_row(
        make_screener: Callable[..., Screener], make_phone: Callable[..., Phone], call: Callable[..., Sipp],
        kamailio: Kamailio, ports: Ports) -> None:
    # the FRITZ!Box "**9" case: the target rings every device of the line, screener included
    screener = make_screener(ring_through={"target": _target(ports, "home"), "announce": False, "timeout": 10.0})
    house = make_phone(ring_ms=2500)  # on the line's AOR: the incoming call rings it too, screener answers first
    media = [Wait(1400), *dtmf("5"), Wait(6000)]
    sipp = call(CallSpec(number="+390287654321", display="Dottor Bianchi", media=media), timeout=30)
    assert sipp.proc.popen is not None and sipp.proc.popen.returncode == 0, sipp.report()
    ours = [ln for ln in _invite_from(kamailio) if "(screened)" in ln]
    assert len(ours) == 1, _invite_from(kamailio)
    call_id = ours[0].split("INVITEFROM ")[1].split()[0]
    assert any(f"REPLY 486 {call_id} from {HOST}:{ports.screener_sip}" in ln for ln in kamailio.log_lines("REPLY"))
    assert house.events("ANSWERED") == [call_id] and house.events("HUNGUP") == [call_id]
    rows = screener.wait_call(lambda r: r.get("outcome") == "connected", timeout=10)
    assert len(screener.calls()) == 1, screener.calls()
    assert rows[0]["e164"] == "+390287654321"


def test_stopping_screener_during_a_bridged_call_byes_both_sides_within_2_s(
        make_screener: Callable[..., Screener], make_phone: Callable[..., Phone], call: Callable[..., Sipp],
        ports: Ports) -> None:
    screener = make_screener(ring_through={"target": _target(ports), "announce": False, "timeout": 10.0})
    house = _house(make_phone, ring_ms=300)
    media = [Wait(1400), *dtmf("5")]
    sipp = call(CallSpec(number="+390287654321", media=media, hangup="callee", bye_timeout_ms=20000), timeout=30,
                start_only=True)
    wait_until(lambda: house.events("ANSWERED"), 15, what="the household to answer")
    time.sleep(0.5)  # bridged
    t0 = time.monotonic()
    rc, _ = screener.stop(timeout=5.0)
    wait_until(lambda: house.events("HUNGUP"), 2.0, what="screener's BYE at the household")
    took = time.monotonic() - t0  # SIGTERM -> the household's BYE logged (the stop waited for the exit too)
    assert sipp.wait(5) == 0, sipp.report()  # the caller got its BYE too
    assert took < 2.0 and rc == 0, (took, rc)
    print(f"\nstop during a bridged call: household BYE {took * 1000:.0f} ms after SIGTERM")
