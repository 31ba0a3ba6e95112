"""Ring-through as a household lives it, with `screener run` between two Python phones on one kamailio.

The caller (a PyPhone, PCMU) calls the line's AOR ("home", where screener is registered); the household (a
PyPhone on its own AOR, PCMA) is screener's [ring_through] target. Audio is checked by what it carries (the
tone each side sends, found in what the other side decodes), keys are RFC 2833 events sent by the phones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from peers import AOR_USER, CHALLENGE_SECONDS, HOST, Kamailio, Ports, Screener, wait_until
from pyphone import Call, Plan, PyPhone

pytestmark = pytest.mark.e2e

NUMBER = "0212345678"
CALLER_HZ, HOUSE_HZ = 1000.0, 700.0
VOICEMAIL_HZ = 1500.0  # the test prompts are tones (peers._PROMPT_TONES)


def _line(ports: Ports) -> str:
    return f"sip:{AOR_USER}@{HOST}:{ports.kamailio}"


def _screener(make_screener: Callable[..., Screener], ports: Ports, **ring_through: Any) -> Screener:
    sip = {"mode": ring_through.pop("mode", "parallel")}
    return make_screener(sip=sip, ring_through={"target": f"sip:household@{HOST}:{ports.kamailio}",
                                                "timeout": 5.0, **ring_through})


def _passes_challenge(caller: PyPhone, ports: Ports, number: str = NUMBER) -> Call:
    """Call the line, hear the challenge, press 5."""
    c = caller.call(_line(ports), codecs=("PCMU",), from_user=number)
    c.wait("confirmed", timeout=10)
    time.sleep(CHALLENGE_SECONDS + 0.3)
    c.send_digit("5")
    return c


def _talk_both_ways(caller_call: Call, house_call: Call) -> None:
    since = time.perf_counter()
    caller_call.play_tone(CALLER_HZ, 2.0)
    house_call.play_tone(HOUSE_HZ, 2.0)
    wait_until(lambda: house_call.has_tone(CALLER_HZ, since=since) and caller_call.has_tone(HOUSE_HZ, since=since),
               6, what="each side to hear the other's tone through the bridge")
    assert not house_call.has_tone(HOUSE_HZ, since=since), "the household hears itself"
    assert not caller_call.has_tone(CALLER_HZ, since=since), "the caller hears itself"


def test_household_presses_1_and_talks_pcmu_to_pcma(make_screener: Callable[..., Screener],
                                                    make_pyphone: Callable[..., PyPhone], ports: Ports) -> None:
    screener = _screener(make_screener, ports)
    house = make_pyphone("household", plan=Plan(after=0.5, codec="PCMA"))
    caller = make_pyphone("caller", register=False)
    c = _passes_challenge(caller, ports)
    h = house.incoming(timeout=15)
    assert (h.invite.from_user, h.invite.display_name) == (NUMBER, f"{NUMBER} (screened)")
    h.wait("confirmed", timeout=5)
    h.send_digit("1")  # during the announcement: it stops, the call is put through
    _talk_both_ways(c, h)
    assert (c.codec, h.codec) == ("PCMU", "PCMA")
    c.bye()
    h.wait("ended", timeout=3)
    assert h.ended_by == "remote"  # screener's BYE followed the caller's
    [row] = screener.wait_call(lambda r: r["outcome"] == "connected", timeout=10)
    assert 0.2 < row["talk_s"] < 15.0 and row["duration_s"] > row["talk_s"] + 1.0, row


def test_household_hangs_up_first_and_the_caller_gets_a_bye(make_screener: Callable[..., Screener],
                                                            make_pyphone: Callable[..., PyPhone], ports: Ports) -> None:
    screener = _screener(make_screener, ports, announce=False)
    house = make_pyphone("household", plan=Plan(after=0.3))
    caller = make_pyphone("caller", register=False)
    c = _passes_challenge(caller, ports)
    h = house.incoming(timeout=15)
    h.wait("confirmed", timeout=5)
    _talk_both_ways(c, h)
    h.bye()
    c.wait("ended", timeout=3)
    [row] = screener.wait_call(lambda r: r["outcome"] == "connected", timeout=10)
    assert "the household hung up" in row["reason"]


@pytest.mark.parametrize(("plan", "key", "reason"), [
    (Plan(after=0.3), "2", "the household sent it to voicemail"),
    (Plan(after=None), None, "the house did not answer within 5 s"),
    (Plan(after=0.5, decline=486), None, "the house was busy (486)"),
], ids=["presses 2", "never answers", "busy"])
def test_the_house_does_not_take_it_and_the_caller_leaves_a_message(
        make_screener: Callable[..., Screener], make_pyphone: Callable[..., PyPhone], ports: Ports,
        plan: Plan, key: str | None, reason: str) -> None:
    screener = _screener(make_screener, ports)
    house = make_pyphone("household", plan=plan)
    caller = make_pyphone("caller", register=False)
    c = _passes_challenge(caller, ports)
    h = house.incoming(timeout=15)
    if key is not None:
        h.wait("confirmed", timeout=5)
        h.send_digit(key)
        h.wait("ended", timeout=5)
    wait_until(lambda: c.has_tone(VOICEMAIL_HZ, window_s=0.2), 15, what="the voicemail prompt at the caller")
    c.play_tone(CALLER_HZ, 2.0)  # the message
    c.wait_sent()
    c.bye()
    [row] = screener.wait_call(lambda r: r["outcome"] == "passed", timeout=15)
    assert reason in row["reason"] and row["voicemail"], row
    assert h.state in ("ended", "cancelled", "declined"), h.state
    if plan.after is None:
        assert h.state == "cancelled"  # screener CANCELled its INVITE: the household stopped ringing


def test_household_presses_9_and_the_next_call_is_blocked(make_screener: Callable[..., Screener],
                                                         make_pyphone: Callable[..., PyPhone], ports: Ports) -> None:
    screener = _screener(make_screener, ports)
    house = make_pyphone("household", plan=Plan(after=0.3))
    caller = make_pyphone("caller", register=False)
    c = _passes_challenge(caller, ports)
    h = house.incoming(timeout=15)
    h.wait("confirmed", timeout=5)
    h.send_digit("9")
    c.wait("ended", timeout=10)  # the caller heard the blocked prompt and got screener's BYE
    [row] = screener.wait_call(lambda r: r["outcome"] == "blocked_by_household", timeout=10)
    assert row["e164"] == "+390212345678"
    again = caller.call(_line(ports), codecs=("PCMU",), from_user=NUMBER)
    again.wait("failed", timeout=10)
    assert again.final_code == 603
    assert len(house.received("INVITE")) == 1  # the blocked call never rang the house


def test_caller_hangs_up_while_the_house_rings(make_screener: Callable[..., Screener],
                                               make_pyphone: Callable[..., PyPhone], ports: Ports) -> None:
    screener = _screener(make_screener, ports, timeout=20.0)
    house = make_pyphone("household", plan=Plan(after=None))
    caller = make_pyphone("caller", register=False)
    c = _passes_challenge(caller, ports)
    h = house.incoming(timeout=15)
    time.sleep(0.5)
    c.bye()
    assert h.wait("cancelled", timeout=3) == "cancelled"
    [row] = screener.wait_call(lambda r: r["outcome"] == "caller_hung_up", timeout=10)
    assert "while the house rang" in row["reason"]


def test_gatekeeper_puts_an_allowed_caller_through_answering_only_when_the_house_does(
        make_screener: Callable[..., Screener], make_pyphone: Callable[..., PyPhone], ports: Ports) -> None:
    screener = _screener(make_screener, ports, mode="gatekeeper")
    screener.cli("list", "add", "allow", NUMBER)
    house = make_pyphone("household", plan=Plan(after=1.5, codec="PCMA"))
    caller = make_pyphone("caller", register=False)
    c = caller.call(_line(ports), codecs=("PCMU",), from_user=NUMBER)
    c.wait("ringing", timeout=5)
    h = house.incoming(timeout=5)
    assert h.invite.from_user == NUMBER
    c.wait("confirmed", timeout=10)
    h.wait("confirmed", timeout=5)
    # 180 passed back at once; the caller's 200 only after the house answered (no charge before)
    assert c.times["ringing"] < h.times["answered"] <= c.times["confirmed"], (c.times, h.times)
    _talk_both_ways(c, h)
    c.bye()
    h.wait("ended", timeout=3)
    [row] = screener.wait_call(lambda r: r["outcome"] == "connected", timeout=10)
    assert row["decision"] == "allow"


def test_gatekeeper_blocked_caller_never_rings_the_house_and_unknown_is_screened_first(
        make_screener: Callable[..., Screener], make_pyphone: Callable[..., PyPhone], ports: Ports,
        kamailio: Kamailio) -> None:
    screener = _screener(make_screener, ports, mode="gatekeeper", announce=False)
    screener.cli("list", "add", "block", "0299999999")
    house = make_pyphone("household", plan=Plan(after=0.3))
    caller = make_pyphone("caller", register=False)
    blocked = caller.call(_line(ports), codecs=("PCMU",), from_user="0299999999")
    blocked.wait("failed", timeout=10)
    assert blocked.final_code == 603
    time.sleep(0.5)
    assert house.received("INVITE") == []
    unknown = caller.call(_line(ports), codecs=("PCMU",), from_user=NUMBER)
    unknown.wait("confirmed", timeout=10)  # answered by screener: the challenge
    time.sleep(CHALLENGE_SECONDS + 0.3)
    assert house.received("INVITE") == []  # nobody rings before the caller proved to be human
    unknown.send_digit("5")
    h = house.incoming(timeout=15)
    h.wait("confirmed", timeout=5)
    _talk_both_ways(unknown, h)
    unknown.bye()
    rows = screener.wait_call(lambda r: r["outcome"] in ("blocked", "connected"), timeout=10, count=2)
    assert sorted(r["outcome"] for r in rows) == ["blocked", "connected"]
