"""The outgoing call (ring-through UAC) in the sans-I/O core: datagrams and times in, datagrams and events out."""

from __future__ import annotations

import pytest
from sip_core_support import PROVIDER, STRANGER, US, invite, make_core, run_until_idle, sent

from screener.sip import auth
from screener.sip.core import (
    LegAnswered,
    LegDigit,
    LegEnded,
    LegMedia,
    LegProgress,
    LegReleased,
    NewCall,
    SipCore,
)
from screener.sip.message import Message, name_addr, parse_sdp
from screener.sip.outgoing import Credentials
from screener.sip.transactions import Timing

TARGET = "sip:house@provider.example"
HOUSE = ("192.0.2.20", 5070)  # the household phone's own address (its Contact)
ANSWER_SDP = ("v=0\r\no=- 5 5 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n"
              "m=audio 42000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n")


def place(core: SipCore, key: str = "leg1", now: float = 0.0, **kw: object) -> Message:
    assert core.place_call(key, TARGET, "0212345678", "Mario (screened)", 41000, now, dest=PROVIDER,
                           **kw)  # type: ignore[arg-type]
    [(inv, dest)] = sent(core)
    assert dest == PROVIDER
    return inv


def response(req: Message, code: int, reason: str = "X", *extra: str, tag: str = "house1", body: str = "") -> bytes:
    lines = [f"SIP/2.0 {code} {reason}"] + [f"Via: {v}" for v in req.get_all("via")]
    to = req.get("to") or ""
    if code > 100 and "tag=" not in to:
        to += f";tag={tag}"
    lines += [f"From: {req.get('from')}", f"To: {to}", f"Call-ID: {req.call_id}", f"CSeq: {req.get('cseq')}"]
    lines += list(extra) + (["Content-Type: application/sdp"] if body else [])
    return ("\r\n".join(lines) + f"\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()


def ok_with_answer(inv: Message, *extra: str) -> bytes:
    return response(inv, 200, "OK", f"Contact: <sip:house@{HOUSE[0]}:{HOUSE[1]}>", *extra, body=ANSWER_SDP)


def request(method: str, inv: Message, cseq: int, branch: str, body: str = "", extra: str = "",
            to_tag: str = "house1") -> bytes:
    """A request of the household in the leg's dialog (From/To swapped)."""
    ours = inv.get("from") or ""
    return (f"{method} sip:screener@{US[0]}:{US[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {PROVIDER[0]}:{PROVIDER[1]};branch={branch}\r\nMax-Forwards: 70\r\n"
            f"From: <{TARGET}>;tag={to_tag}\r\nTo: {ours}\r\nCall-ID: {inv.call_id}\r\nCSeq: {cseq} {method}\r\n"
            + extra + ("Content-Type: application/sdp\r\n" if body and method != "INFO" else "")
            + f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


def leg_events(core: SipCore) -> list[object]:
    return [e for e in core.events() if type(e).__name__.startswith("Leg")]


def assert_nothing_left(core: SipCore, now: float) -> None:
    run_until_idle(core, now)
    assert core.next_timer() is None and core.tracked_legs == 0 and core.pending_transactions == 0


def answered(core: SipCore) -> tuple[Message, Message]:
    """A leg rung and answered; (its INVITE, our ACK)."""
    inv = place(core)
    core.receive_datagram(response(inv, 180, "Ringing"), PROVIDER, 0.1)
    core.receive_datagram(ok_with_answer(inv, "Record-Route: <sip:192.0.2.10;lr>"), PROVIDER, 1.0)
    [(ack, dest)] = sent(core)
    assert ack.method == "ACK" and dest == PROVIDER
    return inv, ack


def test_the_invite_carries_who_calls_our_contact_the_loop_marker_and_an_offer_of_pcmu_pcma_and_events():
    core = make_core()
    inv = place(core, extra_headers=(("Alert-Info", "<http://x/>;info=alert-external"),))
    assert inv.method == "INVITE" and inv.uri == TARGET
    frm = name_addr(inv.get("from") or "")
    assert frm.display == "Mario (screened)" and frm.uri == "sip:0212345678@192.0.2.10" and frm.tag
    assert inv.get("to") == f"<{TARGET}>" and inv.cseq == (1, "INVITE")
    assert inv.get("contact") == f"<sip:screener@{US[0]}:{US[1]}>"
    assert inv.branch.startswith("z9hG4bK") and len(inv.get("x-screener-loop") or "") == 16
    assert inv.get("alert-info") == "<http://x/>;info=alert-external" and "route" not in inv
    sdp = parse_sdp(inv.body)
    assert sdp.port == 41000 and sdp.payloads == (0, 8, 101) and sdp.address == US[0]
    assert sdp.codec(0) == "PCMU" and sdp.codec(8) == "PCMA" and sdp.event_payload() == 101
    assert not core.place_call("leg1", TARGET, "x", "y", 41002, 0.0, dest=PROVIDER)  # the key is taken


def test_the_outbound_proxy_gets_a_route_header():
    core = make_core()
    core.cfg = type(core.cfg)(**{**core.cfg.__dict__, "outbound_proxy": "192.0.2.11:5080"})
    inv = place(core)
    assert inv.get("route") == "<sip:192.0.2.11:5080;lr>"


def test_no_response_retransmits_with_timer_a_and_fails_408_at_timer_b():
    core = make_core()
    place(core)
    times = []
    while (when := core.next_timer()) is not None:
        core.handle_timer(when)
        times += [when] * len(core.datagrams_to_send())
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # Timer A doubles without the T2 cap
    assert leg_events(core) == [LegEnded("leg1", "failed", 408), LegReleased("leg1")]
    assert core.tracked_legs == core.pending_transactions == 0


def test_ringing_then_200_is_acked_along_the_route_set_and_every_retransmitted_200_acked_again():
    core = make_core()
    inv = place(core)
    core.receive_datagram(response(inv, 100, "Trying"), PROVIDER, 0.05)
    core.receive_datagram(response(inv, 180, "Ringing"), PROVIDER, 0.1)
    assert leg_events(core) == [LegProgress("leg1", 100), LegProgress("leg1", 180)]
    assert core.next_timer() is None  # Proceeding: no retransmission, no Timer B
    ok = ok_with_answer(inv, "Record-Route: <sip:192.0.2.10;lr;ftag=x>", "Record-Route: <sip:192.0.2.99;lr>")
    core.receive_datagram(ok, PROVIDER, 1.0)
    [(ack, dest)] = sent(core)
    # RFC 3261 12.1.2: the UAC's route set is the Record-Route reversed; the ACK goes to its first hop
    assert ack.method == "ACK" and ack.uri == f"sip:house@{HOUSE[0]}:{HOUSE[1]}" and ack.cseq == (1, "ACK")
    assert ack.get_all("route") == ["<sip:192.0.2.99;lr>", "<sip:192.0.2.10;lr;ftag=x>"] and dest == ("192.0.2.99", 5060)
    assert name_addr(ack.get("to") or "").tag == "house1" and ack.branch != inv.branch
    assert leg_events(core) == [LegAnswered("leg1", ("192.0.2.20", 42000), ("PCMA", 8, 101))]
    core.receive_datagram(ok, PROVIDER, 1.5)  # the ACK was lost: the 200 again, our same ACK again
    assert [(m.method, m.branch) for m, _ in sent(core)] == [("ACK", ack.branch)]
    assert leg_events(core) == []
    assert run_until_idle(core, 1.5) == pytest.approx(1.5 + 64 * Timing().t1)  # Timer M ends the transaction
    assert core.tracked_legs == 1 and core.pending_transactions == 0  # the call goes on


def test_hangup_sends_bye_in_the_dialog_and_the_leg_goes():
    core = make_core()
    inv, ack = answered(core)
    core.events()
    core.hangup_call("leg1", 2.0)
    [(bye, dest)] = sent(core)
    assert bye.method == "BYE" and bye.cseq == (2, "BYE") and bye.call_id == inv.call_id and dest == PROVIDER
    assert bye.get("to") == ack.get("to") and bye.get("from") == inv.get("from")
    assert bye.get_all("route") == ["<sip:192.0.2.10;lr>"] and bye.uri == ack.uri
    assert leg_events(core) == [LegEnded("leg1", "hangup", None)]
    core.receive_datagram(response(bye, 200, "OK"), PROVIDER, 2.1)
    assert_nothing_left(core, 2.1)


def test_a_challenged_bye_goes_again_with_the_legs_credentials():
    core = make_core()
    place_kw = {"credentials": Credentials("ringer", "pw")}
    inv = place(core, **place_kw)
    core.receive_datagram(ok_with_answer(inv), PROVIDER, 1.0)
    sent(core)
    core.hangup_call("leg1", 2.0)
    [(bye, _)] = sent(core)
    core.receive_datagram(response(bye, 401, "Unauthorized", 'WWW-Authenticate: Digest realm="r", nonce="n"'),
                          PROVIDER, 2.1)
    [(again, _)] = sent(core)
    assert again.method == "BYE" and again.cseq == (3, "BYE") and 'username="ringer"' in again.get("authorization")


@pytest.mark.parametrize("header", ["Proxy-Authenticate", "WWW-Authenticate"])
def test_a_challenge_is_answered_once_with_a_new_cseq_on_the_same_call_id(header):
    core = make_core()
    inv = place(core, credentials=("ringer", "pw"))  # a plain (user, password) tuple
    challenge = f'{header}: Digest realm="fritz.box", nonce="abc", qop="auth"'
    code = 407 if header.startswith("Proxy") else 401
    core.receive_datagram(response(inv, code, "Auth", challenge), PROVIDER, 0.1)
    [(ack, _), (retry, _)] = sent(core)
    assert ack.method == "ACK" and ack.branch == inv.branch and ack.cseq == (1, "ACK")
    assert retry.method == "INVITE" and retry.call_id == inv.call_id and retry.cseq == (2, "INVITE")
    assert retry.branch != inv.branch and retry.get("from") == inv.get("from") and retry.body == inv.body
    value = retry.get("proxy-authorization" if code == 407 else "authorization") or ""
    fields = auth._parse(value)
    assert fields["username"] == "ringer" and fields["uri"] == TARGET and fields["realm"] == "fritz.box"
    core.receive_datagram(response(inv, code, "Auth", challenge), PROVIDER, 0.2)  # the first one again
    assert [m.method for m, _ in sent(core)] == ["ACK"] and leg_events(core) == []
    core.receive_datagram(response(retry, code, "Auth", challenge), PROVIDER, 0.3)  # wrong credentials
    assert [m.method for m, _ in sent(core)] == ["ACK"]
    assert leg_events(core) == [LegEnded("leg1", "failed", code)]
    assert_nothing_left(core, 0.3)


def test_without_credentials_the_accounts_answer_the_challenge():
    core = make_core()
    inv = place(core)
    core.receive_datagram(response(inv, 401, "Auth", 'WWW-Authenticate: Digest realm="r", nonce="n"'), PROVIDER, 0.1)
    [_, (retry, _)] = sent(core)
    assert 'username="screener"' in (retry.get("authorization") or "")


@pytest.mark.parametrize("code", [486, 603, 404, 480, 503, 302])
def test_a_final_error_is_acked_in_its_transaction_and_fails_the_leg_with_its_code(code):
    core = make_core()
    inv = place(core)
    core.receive_datagram(response(inv, 180, "Ringing"), PROVIDER, 0.1)
    core.receive_datagram(response(inv, code, "No"), PROVIDER, 3.0)
    [(ack, dest)] = sent(core)
    assert ack.method == "ACK" and ack.branch == inv.branch and dest == PROVIDER and "tag=house1" in ack.get("to")
    assert leg_events(core)[-1] == LegEnded("leg1", "failed", code)
    core.receive_datagram(response(inv, code, "No"), PROVIDER, 4.0)  # retransmitted: ACKed again, nothing else
    assert [m.method for m, _ in sent(core)] == ["ACK"] and leg_events(core) == []
    assert run_until_idle(core, 4.0) == pytest.approx(35.0)  # Timer D: 32 s after the first
    assert core.tracked_legs == 0


def test_cancel_waits_for_a_provisional_response_then_the_487_is_acked():
    core = make_core()
    inv = place(core)
    core.cancel_call("leg1", 0.2)
    assert sent(core) == [] and leg_events(core) == [LegEnded("leg1", "cancelled", None)]
    core.receive_datagram(response(inv, 100, "Trying"), PROVIDER, 0.3)  # RFC 3261 9.1: now it may go
    [(cancel, dest)] = sent(core)
    assert cancel.method == "CANCEL" and cancel.branch == inv.branch and cancel.cseq == (1, "CANCEL")
    assert cancel.uri == inv.uri and cancel.get("to") == inv.get("to") and dest == PROVIDER
    assert leg_events(core) == []  # over for the handler already
    core.receive_datagram(response(cancel, 200, "OK"), PROVIDER, 0.35)
    core.receive_datagram(response(inv, 487, "Request Terminated"), PROVIDER, 0.4)
    [(ack, _)] = sent(core)
    assert ack.method == "ACK" and ack.branch == inv.branch
    assert leg_events(core) == []
    assert core.leg("leg1").final_code == 487  # type: ignore[union-attr]
    assert_nothing_left(core, 0.4)


def test_a_ringing_leg_is_cancelled_at_once_and_given_up_64_t1_later_without_a_final_response():
    core = make_core()
    inv = place(core)
    core.receive_datagram(response(inv, 180, "Ringing"), PROVIDER, 0.1)
    core.events()
    core.cancel_call("leg1", 5.0)
    assert [m.method for m, _ in sent(core)] == ["CANCEL"]
    assert leg_events(core) == [LegEnded("leg1", "cancelled", None)]
    assert_nothing_left(core, 5.0)  # the CANCEL's Timer F, then the leg's 64*T1


def test_a_200_crossing_the_cancel_is_acked_and_then_byed():
    core = make_core()
    inv = place(core)
    core.receive_datagram(response(inv, 180, "Ringing"), PROVIDER, 0.1)
    core.cancel_call("leg1", 1.0)
    [(cancel, _)] = sent(core)
    core.events()
    core.receive_datagram(response(cancel, 200, "OK"), PROVIDER, 1.01)
    core.receive_datagram(ok_with_answer(inv), PROVIDER, 1.05)
    out = sent(core)
    assert [m.method for m, _ in out] == ["ACK", "BYE"]
    assert [d for _, d in out] == [HOUSE, HOUSE]  # no route set: straight to the remote target (Contact)
    assert leg_events(core) == []  # the handler never sees it answered
    core.receive_datagram(response(out[1][0], 200, "OK"), PROVIDER, 1.1)
    assert_nothing_left(core, 1.1)


def test_household_bye_info_and_reinvite_in_the_legs_dialog():
    core = make_core()
    inv, _ = answered(core)
    core.events()
    core.receive_datagram(request("INFO", inv, 1, "z9hG4bKi1", "Signal=1\r\nDuration=160\r\n",
                                  "Content-Type: application/dtmf-relay\r\n"), PROVIDER, 2.0)
    assert [(m.status, m.cseq[1]) for m, _ in sent(core)] == [(200, "INFO")]
    assert leg_events(core) == [LegDigit("leg1", "1")]
    offer = ANSWER_SDP.replace("42000", "42010").replace("8 101", "0 101")
    core.receive_datagram(request("INVITE", inv, 2, "z9hG4bKr1", offer), PROVIDER, 3.0)
    [(ok, _)] = sent(core)
    assert ok.status == 200 and b"m=audio 41000 RTP/AVP 0 101" in ok.body and "tag=" in ok.get("to")
    assert name_addr(ok.get("to") or "").tag == name_addr(inv.get("from") or "").tag
    assert leg_events(core) == [LegMedia("leg1", ("192.0.2.20", 42010), ("PCMU", 0, 101), 20)]
    core.handle_timer(3.5)
    assert [m.status for m, _ in sent(core)] == [200]  # retransmitted until the ACK
    core.receive_datagram(request("ACK", inv, 2, "z9hG4bKa1"), PROVIDER, 3.6)
    core.handle_timer(10.0)
    assert sent(core) == []
    core.receive_datagram(request("BYE", inv, 1, "z9hG4bKb0"), PROVIDER, 4.0)  # old CSeq
    assert [m.status for m, _ in sent(core)] == [500]
    core.receive_datagram(request("BYE", inv, 3, "z9hG4bKb1"), PROVIDER, 4.0)
    assert [(m.status, m.cseq[1]) for m, _ in sent(core)] == [(200, "BYE")]
    assert leg_events(core) == [LegEnded("leg1", "bye", None)]
    core.receive_datagram(request("BYE", inv, 3, "z9hG4bKb1"), PROVIDER, 4.1)  # retransmitted: the same 200
    assert [m.status for m, _ in sent(core)] == [200]
    assert_nothing_left(core, 4.1)


def test_household_requests_from_their_own_address_are_heard_and_strangers_are_not():
    core = make_core()
    inv = place(core)
    core.receive_datagram(ok_with_answer(inv), PROVIDER, 1.0)  # no Record-Route: requests come from the phone
    sent(core), core.events()
    core.receive_datagram(request("OPTIONS", inv, 2, "z9hG4bKo"), HOUSE, 2.0)
    assert [(m.status, m.cseq[1]) for m, _ in sent(core)] == [(200, "OPTIONS")]
    core.receive_datagram(request("BYE", inv, 3, "z9hG4bKx"), STRANGER, 2.0)
    assert [(m.status, m.cseq[1]) for m, _ in sent(core)] == [(200, "BYE")]
    assert leg_events(core) == [LegEnded("leg1", "bye", None)]
    core.receive_datagram(request("BYE", inv, 4, "z9hG4bKy", to_tag="other"), PROVIDER, 2.0)
    assert [m.status for m, _ in sent(core)] == [481]


def test_a_second_200_of_a_forking_proxy_is_acked_and_byed():
    core = make_core()
    inv, ack = answered(core)
    core.events()
    core.receive_datagram(response(inv, 200, "OK", "Contact: <sip:other@192.0.2.30>", tag="branch2",
                                   body=ANSWER_SDP), PROVIDER, 1.1)
    out = sent(core)
    assert [m.method for m, _ in out] == ["ACK", "BYE"] and all("tag=branch2" in m.get("to") for m, _ in out)
    assert [d for _, d in out] == [("192.0.2.30", 5060)] * 2
    assert leg_events(core) == [] and core.leg("leg1").remote_tag == "house1"  # type: ignore[union-attr]


def test_an_answer_without_g711_is_acked_and_hung_up():
    core = make_core()
    inv = place(core)
    core.receive_datagram(response(inv, 200, "OK", body=ANSWER_SDP.replace("8 101", "9").replace("PCMA", "G722")),
                          PROVIDER, 1.0)
    assert [m.method for m, _ in sent(core)] == ["ACK", "BYE"]
    assert leg_events(core) == [LegEnded("leg1", "failed", 488)]


# -- loops: our own ring-through coming back (a FRITZ!Box **9 rings every IP phone) --


def _looped(inv: Message, call_id: str, loop: str | None, from_: str) -> bytes:
    extra = f"X-Screener-Loop: {loop}\r\n" if loop else ""
    data = invite(call_id, extra=extra).decode()
    data = data.replace('"Mario" <sip:0212345678@provider.example>;tag=f' + call_id, from_)
    return data.encode()


@pytest.mark.parametrize("mark", ["call-id", "token", "from"])
def test_our_own_invite_coming_back_gets_486_and_never_reaches_the_handler(mark):
    core = make_core()
    inv = place(core)
    token = inv.get("x-screener-loop")
    stranger_from = '"Someone" <sip:0399999@provider.example>;tag=zz'
    if mark == "call-id":
        data = _looped(inv, inv.call_id, None, stranger_from)
    elif mark == "token":
        data = _looped(inv, "b2bua-1", token, stranger_from)
    else:  # a B2BUA keeps neither Call-ID nor our header: the From user and display name give it away
        data = _looped(inv, "b2bua-2", None, '"Mario (screened)" <sip:0212345678@fritz.box>;tag=b2')
    core.receive_datagram(data, PROVIDER, 0.1)
    [(busy, dest)] = sent(core)
    assert (busy.status, dest) == (486, PROVIDER) and "tag=" in busy.get("to")
    assert not [e for e in core.events() if isinstance(e, NewCall)] and core.loops_refused == 1
    assert core.tracked_calls == 0
    # the same user with another name, or another user with the name, is a real call
    core.receive_datagram(_looped(inv, "real", None, '"Mario" <sip:0212345678@provider.example>;tag=r'),
                          PROVIDER, 0.2)
    core.receive_datagram(_looped(inv, "real2", None, '"Mario (screened)" <sip:0311111@provider.example>;tag=q'),
                          PROVIDER, 0.2)
    assert [e.key for e in core.events() if isinstance(e, NewCall)] == ["real", "real2"]


def test_once_the_leg_is_gone_the_marks_mean_nothing():
    core = make_core()
    inv = place(core)
    core.receive_datagram(response(inv, 486, "Busy"), PROVIDER, 0.1)
    run_until_idle(core, 0.1)
    core.events()
    core.receive_datagram(_looped(inv, "later", inv.get("x-screener-loop"), '"A" <sip:1@x>;tag=1'), PROVIDER, 60.0)
    assert [type(e) for e in core.events()] == [NewCall]


# -- stop --


def test_stop_ends_every_leg_with_cancel_or_bye_and_nothing_is_left():
    core = make_core()
    calling = place(core, "a")
    ringing = place(core, "b")
    answered_inv = place(core, "c")
    core.receive_datagram(response(ringing, 180, "Ringing"), PROVIDER, 0.1)
    core.receive_datagram(ok_with_answer(answered_inv), PROVIDER, 0.2)
    sent(core), core.events()
    core.stop_calls(1.0)
    out = sent(core)
    assert sorted((m.method, m.call_id) for m, _ in out) == sorted(
        [("CANCEL", ringing.call_id), ("BYE", answered_inv.call_id)])
    ended = sorted((e.key, e.reason) for e in leg_events(core) if isinstance(e, LegEnded))
    assert ended == [("a", "stopped"), ("b", "stopped"), ("c", "stopped")]
    assert core.active_legs == 0
    core.receive_datagram(response(calling, 100, "Trying"), PROVIDER, 1.1)  # the late one: CANCELled too
    assert [m.method for m, _ in sent(core)] == ["CANCEL"]
    assert_nothing_left(core, 1.1)
