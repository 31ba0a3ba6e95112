"""Ring-through through the SIP agent on loopback: a call's handler dials the household (a fake phone socket)."""

from __future__ import annotations

import audioop
import socket
import struct
import threading
import time

import pytest
from test_sip_support import (
    Peer,
    agent_addr,
    cancel,
    in_dialog,
    invite,
    method,
    running_agent,
    sdp,
    status,
)

from screener.sip import Call, Leg
from screener.sip.message import Message, parse, parse_sdp


@pytest.fixture
def provider():
    p = Peer()
    yield p
    p.close()


@pytest.fixture
def house():
    p = Peer()
    yield p
    p.close()


def reply(peer: Peer, req: Message, to: tuple[str, int], code: int, reason: str, body: str = "",
          tag: str = "hh") -> None:
    lines = [f"SIP/2.0 {code} {reason}"] + [f"Via: {v}" for v in req.get_all("via")]
    to_hdr = req.get("to") or ""
    if code > 100 and "tag=" not in to_hdr:
        to_hdr += f";tag={tag}"
    lines += [f"From: {req.get('from')}", f"To: {to_hdr}", f"Call-ID: {req.call_id}", f"CSeq: {req.get('cseq')}",
              f"Contact: <sip:house@{peer.host}:{peer.port}>"]
    lines += ["Content-Type: application/sdp"] if body else []
    peer.send("\r\n".join(lines) + f"\r\nContent-Length: {len(body)}\r\n\r\n{body}", to)


def house_request(peer: Peer, name: str, inv: Message, to: tuple[str, int], cseq: int) -> None:
    peer.send(f"{name} {parse_contact(inv)} SIP/2.0\r\nVia: SIP/2.0/UDP {peer.host}:{peer.port};branch=z9hG4bKhb{cseq}"
              f"\r\nMax-Forwards: 70\r\nFrom: {inv.get('to')};tag=hh\r\nTo: {inv.get('from')}\r\n"
              f"Call-ID: {inv.call_id}\r\nCSeq: {cseq} {name}\r\nContent-Length: 0\r\n\r\n", to)


def parse_contact(inv: Message) -> str:
    return (inv.get("contact") or "").strip("<>")


class Scenario:
    """A handler that answers, dials the household, and (when answered) bridges; what it saw is kept."""

    def __init__(self, house: Peer, *, answer: bool = True, ring_timeout: float = 3.0, bridge: bool = True,
                 target: str | None = None) -> None:
        self.target = target or f"sip:house@{house.host}:{house.port}"
        self.answer, self.ring_timeout, self.do_bridge = answer, ring_timeout, bridge
        self.result: str | None = None
        self.who: str | None = None
        self.leg: Leg | None = None
        self.done = threading.Event()

    def __call__(self, call: Call) -> None:
        try:
            if self.answer:
                assert call.answer()
            leg = self.leg = call.dial(self.target, from_user="0212345678", display="Mario (screened)")
            assert leg is not None
            self.result = leg.wait_answered(self.ring_timeout)
            if self.result == "answered" and self.do_bridge:
                self.who = call.bridge(leg, 10.0)
        finally:
            self.done.set()


def run_call(provider: Peer, agent_port: int, call_id: str, rtp_port: int = 40000) -> str:
    text = invite(agent_port, provider, call_id, body=sdp(rtp_port, "8 101"))
    provider.send(text, ("127.0.0.1", agent_port))
    return text


def test_the_household_answers_and_the_bridge_carries_audio_until_it_hangs_up(provider, house):
    caller_rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    house_rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller_rtp.bind(("127.0.0.1", 0))
    house_rtp.bind(("127.0.0.1", 0))
    scenario = Scenario(house)
    try:
        with running_agent(provider, scenario) as agent:
            to_agent = agent_addr(agent)
            text = run_call(provider, agent.local_port, "rt1", caller_rtp.getsockname()[1])
            ok = provider.expect(status(200))
            provider.send(in_dialog("ACK", parse(text.encode()), ok, provider, 1), to_agent)
            inv = house.expect(method("INVITE"))
            assert '"Mario (screened)" <sip:0212345678@127.0.0.1' in (inv.get("from") or "")
            assert inv.get("x-screener-loop") and parse_sdp(inv.body).payloads == (0, 8, 101)
            reply(house, inv, to_agent, 180, "Ringing")
            reply(house, inv, to_agent, 200, "OK", sdp(house_rtp.getsockname()[1], "0 101"))
            ack = house.expect(method("ACK"))
            assert ack.uri == f"sip:house@{house.host}:{house.port}"
            # the caller speaks PCMA, the household hears PCMU
            screener_caller_port = parse_sdp(ok.body).port
            speech = audioop.lin2alaw(b"".join(struct.pack("<h", (i * 400) % 8000 - 4000) for i in range(160)), 2)
            deadline = time.monotonic() + 3.0
            heard = False
            expected = audioop.lin2ulaw(audioop.alaw2lin(speech, 2), 2)
            house_rtp.settimeout(0.02)
            seq = 0
            while not heard and time.monotonic() < deadline:
                seq += 1
                caller_rtp.sendto(struct.pack("!BBHII", 0x80, 8, seq, seq * 160, 1234) + speech,
                                  ("127.0.0.1", screener_caller_port))
                try:
                    data, _ = house_rtp.recvfrom(2048)  # the household leg sends every 20 ms (silence too)
                except TimeoutError:
                    continue
                heard = data[1] & 0x7F == 0 and data[12:] == expected
            assert heard, "the caller's audio never reached the household (transcoded to PCMU)"
            assert scenario.result == "answered"
            house_request(house, "BYE", inv, to_agent, 2)
            assert house.expect(status(200)).cseq == (2, "BYE")
            bye = provider.expect(method("BYE"))
            assert bye.call_id == "rt1"
            assert scenario.done.wait(3.0) and scenario.who == "household"
    finally:
        caller_rtp.close()
        house_rtp.close()


def test_no_answer_cancels_the_household(provider, house):
    scenario = Scenario(house, ring_timeout=0.5)
    with running_agent(provider, scenario) as agent:
        to_agent = agent_addr(agent)
        run_call(provider, agent.local_port, "rt2")
        inv = house.expect(method("INVITE"))
        reply(house, inv, to_agent, 180, "Ringing")
        can = house.expect(method("CANCEL"), timeout=3.0)
        assert can.branch == inv.branch
        assert scenario.done.wait(2.0) and scenario.result == "no_answer"
        reply(house, can, to_agent, 200, "OK")
        reply(house, inv, to_agent, 487, "Request Terminated")
        assert house.expect(method("ACK")).branch == inv.branch


@pytest.mark.parametrize(("code", "outcome"), [(486, "busy"), (603, "declined"), (503, "failed"), (480, "no_answer")])
def test_a_refusal_is_acked_and_told(provider, house, code, outcome):
    scenario = Scenario(house)
    with running_agent(provider, scenario) as agent:
        to_agent = agent_addr(agent)
        run_call(provider, agent.local_port, f"rt{code}")
        inv = house.expect(method("INVITE"))
        reply(house, inv, to_agent, code, "No")
        assert house.expect(method("ACK")).branch == inv.branch
        assert scenario.done.wait(2.0) and scenario.result == outcome
        assert scenario.leg is not None and scenario.leg.final_code == code and scenario.leg.ended


def test_the_caller_hanging_up_while_the_house_rings_cancels_it(provider, house):
    scenario = Scenario(house, answer=False, ring_timeout=10.0)
    with running_agent(provider, scenario) as agent:
        to_agent = agent_addr(agent)
        text = run_call(provider, agent.local_port, "rt3")
        inv = house.expect(method("INVITE"))
        reply(house, inv, to_agent, 180, "Ringing")
        provider.send(cancel(text), to_agent)
        assert house.expect(method("CANCEL"), timeout=2.0).branch == inv.branch
        assert scenario.done.wait(2.0) and scenario.result == "caller_gone"


def test_an_unresolvable_target_fails_at_once(provider, house):
    scenario = Scenario(house, target="sip:house@no-such-host.invalid")
    with running_agent(provider, scenario) as agent:
        run_call(provider, agent.local_port, "rt4")
        assert scenario.done.wait(10.0) and scenario.result == "failed"


def test_our_call_forked_back_to_us_gets_486_and_no_handler(provider):
    handled: list[str] = []
    result: list[str] = []

    def handler(call: Call) -> None:
        handled.append(call.call_id)
        if call.call_id == "rt5":
            leg = call.dial(f"sip:**9@{provider.host}:{provider.port}", from_user="0212345678", display="Mario")
            assert leg is not None
            result.append(leg.wait_answered(3.0))

    with running_agent(provider, handler) as agent:
        to_agent = agent_addr(agent)
        run_call(provider, agent.local_port, "rt5")
        inv = provider.expect(method("INVITE"))
        # the FRITZ!Box rings every IP phone, screener too: as a B2BUA, with its own Call-ID, no marker
        looped = invite(agent.local_port, provider, "fritz-b2bua", from_='"Mario" <sip:0212345678@fritz.box>;tag=x')
        provider.send(looped, to_agent)
        assert provider.expect(status(486)).call_id == "fritz-b2bua"
        reply(provider, inv, to_agent, 486, "Busy Here")
        deadline = time.monotonic() + 2
        while not result and time.monotonic() < deadline:
            time.sleep(0.02)
        assert result == ["busy"] and handled == ["rt5"] and agent.core.loops_refused == 1


def test_stop_during_a_bridge_byes_both_legs(provider, house):
    scenario = Scenario(house)
    with running_agent(provider, scenario) as agent:
        to_agent = agent_addr(agent)
        text = run_call(provider, agent.local_port, "rt6")
        ok = provider.expect(status(200))
        provider.send(in_dialog("ACK", parse(text.encode()), ok, provider, 1), to_agent)
        inv = house.expect(method("INVITE"))
        reply(house, inv, to_agent, 200, "OK", sdp(40010, "0 101"))
        house.expect(method("ACK"))
        deadline = time.monotonic() + 2
        while scenario.result is None and time.monotonic() < deadline:
            time.sleep(0.02)
        t0 = time.monotonic()
        agent.stop()
        assert house.expect(method("BYE"), timeout=1.0).call_id == inv.call_id
        assert provider.expect(method("BYE"), timeout=1.0).call_id == "rt6"
        assert time.monotonic() - t0 < 2.0
        assert scenario.done.wait(2.0) and scenario.who == "stopped"


def test_background_audio_returns_at_once_and_can_be_dropped(provider):
    seen: list[tuple[float, int]] = []

    def handler(call: Call) -> None:
        assert call.answer()
        t0 = time.monotonic()
        call.play_background(b"\0\0" * 8000 * 5)  # 5 s of ringback
        took = time.monotonic() - t0
        assert call.media is not None
        queued = len(call.media._out)
        call.stop_playback()
        seen.append((took, queued - len(call.media._out)))

    with running_agent(provider, handler) as agent:
        run_call(provider, agent.local_port, "rt7")
        provider.expect(status(200))
        deadline = time.monotonic() + 2
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
    assert seen and seen[0][0] < 0.5 and seen[0][1] > 200  # about 250 frames queued, then dropped
