"""The SIP agent against a fake provider socket on loopback: calls, threads and the pyVoIP bugs it fixes.

What takes protocol time (retransmissions until the ACK, Timer H, tombstones until Timer I, untrusted-source
logging) is fed to the sans-I/O core in test_sip_core.py instead, without waiting for it.
"""

from __future__ import annotations

import threading
import time

import pytest
from test_sip_support import (
    Peer,
    Recorder,
    agent_addr,
    cancel,
    in_dialog,
    invite,
    method,
    options,
    running_agent,
    sdp,
    status,
)

from screener.sip import Call
from screener.sip.agent import PARKED_WORKERS, UntrustedSummary
from screener.sip.message import parse, parse_sdp


@pytest.fixture
def provider():
    p = Peer()
    yield p
    p.close()


def ack_for(inv_text: str, resp, peer: Peer) -> str:
    inv = parse(inv_text.encode())
    if resp.status >= 300:  # the ACK of a non-2xx belongs to the INVITE's transaction
        return in_dialog("ACK", inv, resp, peer, inv.cseq[0], branch=inv.branch)
    return in_dialog("ACK", inv, resp, peer, inv.cseq[0])


def test_decline_goes_out_within_milliseconds(provider):
    # B2: the handler runs as soon as the INVITE arrives (pyVoIP waits 1 s)
    with running_agent(provider, Recorder(lambda c: c.decline(603))) as agent:
        worst = 0.0
        for i in range(20):
            t0 = time.perf_counter()
            provider.send(invite(agent.local_port, provider, f"fast{i}"), agent_addr(agent))
            provider.expect(status(603))
            worst = max(worst, time.perf_counter() - t0)
        assert worst < 0.1, f"INVITE -> 603 took {worst * 1000:.1f} ms"


def test_declined_calls_are_released(provider):
    # B1: pyVoIP's deny() raised after its 486 and never ended or released the call
    before = threading.active_count()
    with running_agent(provider, Recorder(lambda c: c.decline(603))) as agent:
        for i in range(30):
            provider.send(invite(agent.local_port, provider, f"rel{i}"), agent_addr(agent))
            provider.ack(provider.expect(lambda m, i=i: m.status == 603 and m.call_id == f"rel{i}"), agent_addr(agent))
        assert agent.active_calls == 0
        deadline = time.monotonic() + 64 * 0.05 + 2  # records stay 64*T1 for retransmissions, then go
        while agent.tracked_calls and time.monotonic() < deadline:
            time.sleep(0.05)
        assert agent.tracked_calls == 0
        # the agent's own threads only: socket loop, status worker, parked call workers
        assert threading.active_count() <= before + 2 + PARKED_WORKERS


def test_parked_workers_take_calls_and_a_burst_leaves_no_threads(provider):
    # handlers run on parked threads (no thread start per INVITE); a burst starts more, which end with their call
    seen: list[int] = []
    release = threading.Event()

    def handler(call: Call) -> None:
        seen.append(threading.get_ident())
        if call.call_id.startswith("burst"):
            release.wait(3)  # all burst calls are in their handlers at the same time
        call.decline(603)

    deadline = time.monotonic() + 2
    base = threading.active_count()
    while time.monotonic() < deadline:  # threads of the tests before may still be ending
        time.sleep(0.05)
        if threading.active_count() == base:
            break
        base = threading.active_count()
    with running_agent(provider, Recorder(handler)) as agent:
        deadline = time.monotonic() + 2
        while threading.active_count() != base + 2 + PARKED_WORKERS and time.monotonic() < deadline:
            time.sleep(0.01)
        assert threading.active_count() == base + 2 + PARKED_WORKERS
        for i in range(5):
            provider.send(invite(agent.local_port, provider, f"seq{i}"), agent_addr(agent))
            provider.expect(status(603))
        assert len(set(seen)) <= PARKED_WORKERS
        for i in range(12):
            provider.send(invite(agent.local_port, provider, f"burst{i}"), agent_addr(agent))
        deadline = time.monotonic() + 2
        while len(seen) < 17 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(set(seen[5:])) == 12, "every burst call needs a thread of its own"
        release.set()
        for _ in range(12):
            provider.expect(status(603))
        deadline = time.monotonic() + 2
        while threading.active_count() > base + 2 + PARKED_WORKERS and time.monotonic() < deadline:
            time.sleep(0.01)
        assert threading.active_count() == base + 2 + PARKED_WORKERS
    deadline = time.monotonic() + 2
    while threading.active_count() > base and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == base  # stop() ends the parked workers too


def test_decline_607_and_100_trying_first(provider):
    with running_agent(provider, Recorder(lambda c: c.decline(607))) as agent:
        provider.send(invite(agent.local_port, provider), agent_addr(agent))
        assert provider.recv().status == 100
        final = provider.expect(status(607))
        assert final.reason == "Unwanted"
        assert "tag=" in final.get("to")



def test_retransmitted_invite_gets_the_last_response_and_one_handler_call(provider):
    rec = Recorder(lambda c: c.decline(603))
    with running_agent(provider, rec) as agent:
        text = invite(agent.local_port, provider, "dup")
        provider.send(text, agent_addr(agent))
        provider.expect(status(603))
        provider.send(text, agent_addr(agent))
        provider.expect(status(603))
        assert len(rec.calls) == 1




def test_cancel_gets_200_and_487_and_the_call_is_never_answered(provider):
    # B3: after CANCEL the INVITE is answered 487, and answer() refuses
    go, done = threading.Event(), threading.Event()
    answered: list[bool] = []

    def handler(call: Call) -> None:
        call.ring()
        go.wait(2)
        answered.append(call.answer())
        done.set()

    rec = Recorder(handler)
    with running_agent(provider, rec) as agent:
        text = invite(agent.local_port, provider, "cxl")
        provider.send(text, agent_addr(agent))
        provider.expect(status(180))
        provider.send(cancel(text), agent_addr(agent))
        got = {provider.recv().status, provider.recv().status}
        assert got == {200, 487}
        go.set()
        assert done.wait(2)
        assert answered == [False]
        call = rec.calls[0]
        assert call.end_reason == "cancelled" and call.answered_elsewhere


def test_cancel_crossing_our_200_ends_the_call_for_the_handler(provider):
    # the CANCEL was sent before our 200 reached the caller: nothing may be played into that dialog
    answered = threading.Event()
    seen: list[tuple[bool, bool]] = []

    done = threading.Event()

    def handler(call: Call) -> None:
        call.answer()
        answered.set()
        seen.append((call.wait_ended(5.0), call.play(b"\0" * 16000)))
        done.set()

    rec = Recorder(handler)
    with running_agent(provider, rec) as agent:
        text = invite(agent.local_port, provider, "cross")
        provider.send(text, agent_addr(agent))
        ok = provider.expect(status(200))
        assert answered.wait(2)
        provider.send(cancel(text), agent_addr(agent))  # Reason: SIP;cause=200
        provider.expect(lambda m: m.status == 200 and m.cseq[1] == "CANCEL")
        inv = parse(text.encode())
        provider.send(in_dialog("ACK", inv, ok, provider, 1), agent_addr(agent))
        assert provider.expect(lambda m: m.method == "BYE").method == "BYE"
        assert done.wait(2)
        call = rec.calls[0]
        assert seen == [(True, False)]
        assert call.end_reason == "cancelled" and call.answered_elsewhere


def test_a_handler_that_returns_while_ringing_still_answers_the_invite(provider):
    with running_agent(provider, Recorder(lambda call: call.ring())) as agent:
        provider.send(invite(agent.local_port, provider), agent_addr(agent))
        assert provider.expect(status(480)).status == 480


def test_unknown_cancel_and_bye_get_481(provider):
    # B15: BYE/CANCEL for calls we do not know are 481, not 200
    with running_agent(provider, Recorder()) as agent:
        text = invite(agent.local_port, provider, "ghost")
        provider.send(cancel(text), agent_addr(agent))
        assert provider.recv().status == 481
        inv = parse(text.encode())
        fake = parse(b"SIP/2.0 200 OK\r\nTo: <sip:screener@provider.example>;tag=nope\r\n\r\n")
        provider.send(in_dialog("BYE", inv, fake, provider, 2), agent_addr(agent))
        assert provider.recv().status == 481


def test_options_and_other_methods_are_answered(provider):
    # B15: OPTIONS 200 (providers drop silent devices), NOTIFY 200, unsupported methods 405
    with running_agent(provider, Recorder()) as agent:
        provider.send(options(provider), agent_addr(agent))
        ok = provider.recv()
        assert ok.status == 200 and "INVITE" in ok.get("allow")
        for m, code in (("MESSAGE", 405), ("NOTIFY", 200), ("REFER", 405), ("SUBSCRIBE", 405)):
            provider.send(options(provider).replace("OPTIONS", m), agent_addr(agent))
            assert provider.recv().status == code, m



def answer_and_hold(call: Call) -> None:
    call.answer()
    call.wait_ended(5)



def test_ringing_carries_our_contact(provider):
    # B18: 180 carries screener's Contact, not the caller's
    with running_agent(provider, Recorder(lambda c: c.ring())) as agent:
        provider.send(invite(agent.local_port, provider), agent_addr(agent))
        r = provider.expect(status(180))
        assert r.get("contact") == f"<sip:screener@127.0.0.1:{agent.local_port}>"


def test_compact_lower_case_and_empty_headers(provider):
    # B8: compact names, odd case, no space after ':' and an empty header must not drop the INVITE
    rec = Recorder(lambda c: c.decline(603))
    with running_agent(provider, rec) as agent:
        body = sdp(40000)
        text = (
            f"INVITE sip:screener@127.0.0.1 SIP/2.0\r\n"
            f"v:SIP/2.0/UDP {provider.host}:{provider.port};branch=z9hG4bKcompact\r\n"
            f"f:<sip:0612345678@provider.example>;tag=x1\r\n"
            f"t:   <sip:screener@provider.example>\r\n"
            f"i:compact-1\r\ncseq:   1 INVITE\r\nsubject:\r\nm:<sip:a@{provider.host}>\r\n"
            f"p-asserted-identity: <tel:+390612345678>\r\nc:application/sdp\r\nl:{len(body)}\r\n\r\n{body}"
        )
        provider.send(text, agent_addr(agent))
        provider.expect(status(603))
        info = rec.calls[0].info
        assert info.call_id == "compact-1" and info.pai_raw == "<tel:+390612345678>"
        assert info.from_raw == "<sip:0612345678@provider.example>;tag=x1"


@pytest.mark.parametrize("from_", ["<tel:+390212345678>;tag=t1", "<sips:0212345678@provider.example>;tag=t1",
                                   "sip:0212345678@provider.example;tag=t1"])
def test_tel_and_sips_from(provider, from_):
    # B10: tel: and sips: From headers are calls like any other
    rec = Recorder(lambda c: c.decline(603))
    with running_agent(provider, rec) as agent:
        provider.send(invite(agent.local_port, provider, from_=from_), agent_addr(agent))
        provider.expect(status(603))
        assert rec.calls[0].info.from_raw == from_


def test_rtpmap_for_a_payload_not_offered(provider):
    # B11: an rtpmap line for a payload missing from m= is ignored
    rec = Recorder(lambda c: c.decline(603))
    with running_agent(provider, rec) as agent:
        body = sdp(40000, "0 101", extra="a=rtpmap:97 iLBC/8000")
        provider.send(invite(agent.local_port, provider, body=body), agent_addr(agent))
        provider.expect(status(603))


@pytest.mark.parametrize("body,headers,why", [
    (sdp(40000, "18"), "", "no G.711 in the offer (RTP/AVP 18)"),
    (sdp(40000, "0 8").replace("RTP/AVP", "RTP/SAVP"), "", "no G.711 in the offer (RTP/SAVP PCMA PCMU)"),
    (sdp(40000, "0 8"), "Require: 100rel, foo\r\n", "requires foo"),
])
def test_calls_we_cannot_serve_reach_the_handler_and_are_never_answered(provider, body, headers, why):
    # a blocked caller must be declined whatever its INVITE requires or offers: the rules come first
    rec = Recorder(lambda call: call.decline(603) if not call.answer() else None)
    with running_agent(provider, rec) as agent:
        provider.send(invite(agent.local_port, provider, body=body, extra=headers), agent_addr(agent))
        assert provider.expect(status(603)).status == 603
        assert rec.calls[0].info.cannot_serve == why


def test_a_required_100rel_gets_a_reliable_180(provider):
    rec = Recorder(lambda call: (call.ring(), call.decline(603)))
    with running_agent(provider, rec) as agent:
        provider.send(invite(agent.local_port, provider, extra="Require: 100rel\r\n"), agent_addr(agent))
        got = [provider.expect(lambda m: m.status in (100, 180, 603)) for _ in range(3)]
        assert [m.status for m in got] == [100, 180, 603]
        assert got[1].get("require") == "100rel" and (got[1].get("rseq") or "").isdigit()


def test_invite_without_sdp_is_answered_with_an_offer(provider):
    # B12: a late-offer INVITE gets our offer in the 200 and the caller's answer in the ACK
    rtp = Peer()
    done = threading.Event()

    def handler(call: Call) -> None:
        call.answer()
        done.wait(3)
        call.play(b"\x10\x00" * 800)
        call.hangup()

    try:
        with running_agent(provider, Recorder(handler)) as agent:
            text = invite(agent.local_port, provider, "late", body="")
            provider.send(text, agent_addr(agent))
            ok = provider.expect(status(200))
            offer = parse_sdp(ok.body)
            assert set(offer.payloads) >= {0, 8}
            answer = sdp(rtp.port, "8 101")
            provider.send(ack_for(text, ok, provider).replace("Content-Length: 0\r\n\r\n",
                                                              "Content-Type: application/sdp\r\n"
                                                              f"Content-Length: {len(answer)}\r\n\r\n{answer}"),
                          agent_addr(agent))
            done.set()
            pkt = rtp.recv_raw(2)
            assert pkt is not None and pkt[0][1] & 0x7F == 8
    finally:
        rtp.close()


def test_reinvite_is_answered(provider):
    # B14: a session refresh (re-INVITE) gets 200 with the same SDP
    with running_agent(provider, Recorder(answer_and_hold)) as agent:
        text = invite(agent.local_port, provider, "reinv")
        provider.send(text, agent_addr(agent))
        ok = provider.expect(status(200))
        provider.send(ack_for(text, ok, provider), agent_addr(agent))
        inv = parse(text.encode())
        body = sdp(40002)
        re_inv = in_dialog("INVITE", inv, ok, provider, 2, body=body,
                           extra="Content-Type: application/sdp\r\n")
        provider.send(re_inv, agent_addr(agent))
        again = provider.expect(lambda m: m.status == 200 and m.cseq == (2, "INVITE"))
        assert again.body == ok.body
        provider.send(in_dialog("BYE", inv, ok, provider, 3), agent_addr(agent))
        provider.expect(lambda m: m.status == 200 and m.cseq[1] == "BYE")


def test_large_non_utf8_datagram_with_trailing_bytes(provider):
    # B19: 20 KB datagram, Latin-1 display name, SDP values with '=', bytes after Content-Length ignored
    rec = Recorder(lambda c: c.decline(603))
    with running_agent(provider, rec) as agent:
        body = sdp(40000, extra="a=fmtp:101 0-15;x=y")
        text = invite(agent.local_port, provider, "big", body=body,
                      extra="X-Padding: " + "a" * 20000 + "\r\n").encode() + b"GARBAGE"
        text = text.replace(b'"Mario Rossi"', b'"Nicol\xf2 \xe8"')
        provider.send(text, agent_addr(agent))
        provider.expect(status(603))
        assert rec.calls[0].info.display_name.startswith("Nicol")


def test_handler_exception_does_not_kill_the_agent(provider, caplog):
    def boom(call: Call) -> None:
        raise RuntimeError("handler bug")

    with running_agent(provider, boom) as agent:
        provider.send(invite(agent.local_port, provider), agent_addr(agent))
        provider.expect(status(100))
        provider.expect(status(480))  # the handler failed: the INVITE still gets its final response
        provider.send(options(provider), agent_addr(agent))
        assert provider.expect(status(200))
    assert "handler bug" in caplog.text


class _FlakySocket:
    """Wraps the agent's socket and fails once on receive, as an ICMP error would."""

    def __init__(self, sock) -> None:
        self.sock, self.failed = sock, False

    def recvfrom(self, n: int):
        if not self.failed:
            self.failed = True
            raise ConnectionRefusedError("ICMP port unreachable")
        return self.sock.recvfrom(n)

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


def test_socket_error_does_not_end_the_receive_thread(provider):
    # B9: an OSError on the SIP socket must not kill the receive thread
    with running_agent(provider, Recorder()) as agent:
        flaky = _FlakySocket(agent.sock)
        agent.sock = flaky  # type: ignore[assignment]
        provider.send(options(provider, "o1"), agent_addr(agent))
        time.sleep(0.1)
        provider.send(options(provider, "o2"), agent_addr(agent))
        assert provider.expect(lambda m: m.status == 200 and m.call_id == "o2")
        assert flaky.failed
        agent.sock = flaky.sock



def test_trusted_sources_ranges_are_answered(provider):
    stranger = Peer("127.0.0.2")
    try:
        with running_agent(provider, Recorder(), trusted_sources=("127.0.0.0/30",)) as agent:
            stranger.send(options(stranger), agent_addr(agent))
            assert stranger.expect(status(200))
    finally:
        stranger.close()


def test_bye_from_caller_ends_the_call(provider):
    ended = threading.Event()

    def handler(call: Call) -> None:
        call.answer()
        call.wait_ended(5)
        ended.set()

    rec = Recorder(handler)
    with running_agent(provider, rec) as agent:
        text = invite(agent.local_port, provider, "byecall")
        provider.send(text, agent_addr(agent))
        ok = provider.expect(status(200))
        provider.send(ack_for(text, ok, provider), agent_addr(agent))
        provider.send(in_dialog("BYE", parse(text.encode()), ok, provider, 2), agent_addr(agent))
        provider.expect(lambda m: m.status == 200 and m.cseq[1] == "BYE")
        assert ended.wait(2)
        assert rec.calls[0].end_reason == "bye"
        assert agent.tracked_calls == 0  # only a tombstone is left (for retransmitted requests)
        assert agent.pool.in_use == frozenset()


def test_sip_info_digits(provider):
    got: list[str | None] = []

    def handler(call: Call) -> None:
        call.answer()
        got.append(call.wait_digit(3))
        call.hangup()

    with running_agent(provider, Recorder(handler)) as agent:
        text = invite(agent.local_port, provider, "info")
        provider.send(text, agent_addr(agent))
        ok = provider.expect(status(200))
        provider.send(ack_for(text, ok, provider), agent_addr(agent))
        provider.send(in_dialog("INFO", parse(text.encode()), ok, provider, 2, body="Signal=5\r\nDuration=160\r\n",
                                extra="Content-Type: application/dtmf-relay\r\n"), agent_addr(agent))
        provider.expect(method("BYE"))
        assert got == ["5"]


def test_stop_ends_ringing_calls_with_480(provider):
    rec = Recorder(lambda c: c.ring())
    with running_agent(provider, rec) as agent:
        provider.send(invite(agent.local_port, provider), agent_addr(agent))
        provider.expect(status(180))
    assert provider.expect(status(480))


def test_untrusted_sip_is_counted_per_source(provider):
    strangers = [Peer("127.0.0.2"), Peer("127.0.0.3")]
    try:
        with running_agent(provider, Recorder()) as agent:
            assert agent.untrusted_summary() == UntrustedSummary(0, 0)
            for i in range(3):
                strangers[0].send(invite(agent.local_port, strangers[0], f"evil{i}"), agent_addr(agent))
            strangers[1].send(options(strangers[1]), agent_addr(agent))
            before = time.time()
            deadline = time.monotonic() + 3
            while agent.untrusted_summary().count < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            summary = agent.untrusted_summary()
            assert (summary.count, summary.sources, summary.last_source) == (4, 2, f"127.0.0.3:{strangers[1].port}")
            assert summary.last_at is not None and summary.last_at >= before - 1
            assert agent.untrusted_counts() == {"127.0.0.2": 3, "127.0.0.3": 1}
    finally:
        for s in strangers:
            s.close()
