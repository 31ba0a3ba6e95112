"""RFC gaps of issue 8, each fed to the sans-I/O core as datagrams and times (no sockets, no sleeps)."""

from __future__ import annotations

from sip_core_support import PROVIDER, ack, in_dialog, invite, make_core, sent

from screener.sip.core import CallEnded, Digit, MediaUpdate
from screener.sip.message import Message, parse_sdp

V4 = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n"
V6 = "v=0\r\no=- 1 1 IN IP6 2001:db8::10\r\ns=-\r\nc=IN IP6 {addr}\r\nt=0 0\r\n"
AUDIO = "m=audio {port} RTP/AVP {pts}\r\na=rtpmap:101 telephone-event/8000\r\n"


def offer(port: int = 40000, pts: str = "8 0 101", addr: str = "192.0.2.10", extra: str = "",
          head: str = V4, before: str = "", after: str = "") -> str:
    return head.format(addr=addr) + before + AUDIO.format(port=port, pts=pts) + extra + after


def answered(body: str, call_id: str = "c1"):
    """A core that answered an INVITE carrying `body`: (core, its 200 OK)."""
    core = make_core()
    core.receive_datagram(invite(call_id, body=body), PROVIDER, 0.0)
    plan = core.answer_plan(call_id, 0.0)
    assert plan is not None
    assert core.answer(call_id, plan, 41000, 0.0)
    ok = [m for m, _ in sent(core) if m.status == 200][0]
    core.events()
    return core, ok, plan


def confirmed(body: str | None = None):
    core, ok, plan = answered(offer() if body is None else body)
    core.receive_datagram(ack("c1", ok), PROVIDER, 0.1)
    sent(core), core.events()
    return core, ok


def m_lines(msg: Message) -> list[str]:
    return [ln for ln in msg.body.decode().splitlines() if ln.startswith("m=")]


# -- 1. the SDP answer ------------------------------------------------------------------------------------------


def test_every_offered_m_line_is_answered_unused_ones_with_port_0():
    video = "m=video 40002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    text = "m=text 40004 RTP/AVP 98\r\n"
    _, ok, _ = answered(offer(before=video, after=text))
    assert m_lines(ok) == ["m=video 0 RTP/AVP 96", "m=audio 41000 RTP/AVP 8 101", "m=text 0 RTP/AVP 98"]
    assert parse_sdp(ok.body).port == 41000


def test_offered_ptime_is_honoured_within_10_to_60_ms_else_20():
    for asked, used in ((30, 30), (10, 10), (60, 60), (80, 20), (5, 20)):
        _, ok, plan = answered(offer(extra=f"a=ptime:{asked}\r\n"))
        assert plan.ptime == used and f"a=ptime:{used}" in ok.body.decode()
    _, ok, plan = answered(offer())
    assert plan.ptime == 20 and "a=ptime:20" in ok.body.decode()


def test_ipv6_connection_lines_are_parsed():
    sdp = parse_sdp(offer(addr="2001:db8::10", head=V6).encode())
    assert sdp.address == "2001:db8::10" and sdp.port == 40000
    _, _, plan = answered(offer(addr="2001:db8::10", head=V6))
    assert plan.remote == ("2001:db8::10", 40000)


def test_hold_offers_get_the_matching_answer_and_no_rtp_goes_to_0_0_0_0():
    for extra, addr, direction, remote in (
        ("a=sendonly\r\n", "192.0.2.10", "recvonly", ("192.0.2.10", 0)),
        ("a=inactive\r\n", "192.0.2.10", "inactive", ("192.0.2.10", 0)),
        ("", "0.0.0.0", "recvonly", ("0.0.0.0", 0)),
        ("a=recvonly\r\n", "192.0.2.10", "sendonly", ("192.0.2.10", 40000)),
        ("", "192.0.2.10", "sendrecv", ("192.0.2.10", 40000)),
    ):
        _, ok, plan = answered(offer(extra=extra, addr=addr))
        assert plan.direction == direction and plan.remote == remote
        assert parse_sdp(ok.body).direction == direction
        assert plan.sends == (remote[1] != 0)


# -- 2. re-INVITE and UPDATE move the media ---------------------------------------------------------------------


def test_reinvite_moves_address_port_and_codec_and_its_200_is_retransmitted_until_the_ack():
    core, ok = confirmed()
    to = ok.get("to") or ""
    moved = offer(port=50000, pts="0 101", addr="198.51.100.20", extra="a=ptime:30\r\n")
    re_inv = in_dialog("INVITE", "c1", to, 2, "z9hG4bKre1", moved, "Content-Type: application/sdp\r\n")
    core.receive_datagram(re_inv, PROVIDER, 1.0)
    [(r200, dest)] = sent(core)
    assert r200.status == 200 and r200.cseq == (2, "INVITE") and dest == PROVIDER
    assert core.events() == [MediaUpdate("c1", ("198.51.100.20", 50000), ("PCMU", 0, 101), 30)]
    answer = parse_sdp(r200.body)
    assert answer.payloads == (0, 101) and answer.port == 41000 and answer.ptime == 30
    old_o = [ln for ln in ok.body.decode().splitlines() if ln.startswith("o=")][0].split()
    new_o = [ln for ln in r200.body.decode().splitlines() if ln.startswith("o=")][0].split()
    assert new_o[1] == old_o[1] and int(new_o[2]) == int(old_o[2]) + 1  # RFC 3264 8: the version moves on
    core.receive_datagram(re_inv, PROVIDER, 1.1)  # a retransmitted re-INVITE: the same 200
    assert [m.get("to") for m, _ in sent(core)] == [r200.get("to")]
    assert core.next_timer() == 1.5
    core.handle_timer(1.5)  # Timer G: no ACK yet, the 200 again
    assert [m.status for m, _ in sent(core)] == [200]
    core.receive_datagram(in_dialog("ACK", "c1", to, 2, "z9hG4bKackre1"), PROVIDER, 1.6)
    assert core.next_timer() is None and sent(core) == []


def test_reinvite_never_acked_ends_the_call_with_bye():
    core, ok = confirmed()
    to = ok.get("to") or ""
    core.receive_datagram(in_dialog("INVITE", "c1", to, 2, "z9hG4bKre2", offer(port=50002),
                                    "Content-Type: application/sdp\r\n"), PROVIDER, 1.0)
    sent(core), core.events()
    methods = []
    while (when := core.next_timer()) is not None and when < 100:
        core.handle_timer(when)
        methods += [m.method or m.status for m, _ in sent(core)]
    assert methods.count(200) >= 5 and "BYE" in methods


def test_update_moves_the_media_and_a_hold_stops_sending():
    core, ok = confirmed()
    to = ok.get("to") or ""
    upd = in_dialog("UPDATE", "c1", to, 2, "z9hG4bKupd", offer(port=50004, addr="0.0.0.0"),
                    "Content-Type: application/sdp\r\n")
    core.receive_datagram(upd, PROVIDER, 1.0)
    [(r200, _)] = sent(core)
    assert r200.status == 200 and parse_sdp(r200.body).direction == "recvonly"
    assert core.events() == [MediaUpdate("c1", ("0.0.0.0", 0), ("PCMA", 8, 101), 20)]
    resume = in_dialog("INVITE", "c1", to, 3, "z9hG4bKres", offer(port=50006),
                       "Content-Type: application/sdp\r\n")
    core.receive_datagram(resume, PROVIDER, 2.0)
    [(r200b, _)] = sent(core)
    assert parse_sdp(r200b.body).direction == "sendrecv"
    assert core.events() == [MediaUpdate("c1", ("192.0.2.10", 50006), ("PCMA", 8, 101), 20)]


def test_an_offer_we_cannot_take_gets_488_and_the_session_stays():
    core, ok = confirmed()
    to = ok.get("to") or ""
    bad = in_dialog("INVITE", "c1", to, 2, "z9hG4bKbad", offer(pts="9"), "Content-Type: application/sdp\r\n")
    core.receive_datagram(bad, PROVIDER, 1.0)
    [(r, _)] = sent(core)
    assert r.status == 488 and "tag=" in (r.get("to") or "") and core.events() == []
    assert core.dialog("c1").local_sdp == ok.body


def test_reinvite_without_offer_gets_ours_and_its_ack_brings_the_answer():
    core, ok = confirmed()
    to = ok.get("to") or ""
    core.receive_datagram(in_dialog("INVITE", "c1", to, 2, "z9hG4bKlate", ""), PROVIDER, 1.0)
    [(r200, _)] = sent(core)
    assert r200.body == ok.body
    ack_body = offer(port=50008, pts="8")
    core.receive_datagram(in_dialog("ACK", "c1", to, 2, "z9hG4bKacklate", ack_body,
                                    "Content-Type: application/sdp\r\n"), PROVIDER, 1.1)
    assert core.events() == [MediaUpdate("c1", ("192.0.2.10", 50008), ("PCMA", 8, None))]


# -- 3. DTMF by SIP INFO ----------------------------------------------------------------------------------------


def test_info_digits_in_both_common_forms():
    core, ok = confirmed()
    to = ok.get("to") or ""
    cases = [("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n", "5"),
             ("application/dtmf-relay", "Signal= #\r\nDuration=100\r\n", "#"),
             ("application/dtmf-relay", "Signal=10\r\n", "*"),
             ("application/dtmf", "7", "7"),
             ("application/dtmf", "*\r\n", "*"),
             ("application/dtmf", "11", "#"),
             ("application/dtmf", "x", None),
             ("text/plain", "5", None)]
    for i, (ctype, body, key) in enumerate(cases):
        info = in_dialog("INFO", "c1", to, 2 + i, f"z9hG4bKinfo{i}", body, f"Content-Type: {ctype}\r\n")
        core.receive_datagram(info, PROVIDER, 1.0 + i)
        assert [m.status for m, _ in sent(core)] == [200]
        assert core.events() == ([Digit("c1", key)] if key else []), ctype + body


# -- 4. To tags, IPv6 registrar ---------------------------------------------------------------------------------


def test_every_final_response_carries_a_to_tag():
    core = make_core()
    stray = in_dialog("BYE", "nobody", "<sip:screener@provider.example>", 2, "z9hG4bKs1")
    core.receive_datagram(stray, PROVIDER, 0.0)  # 481
    core.receive_datagram(in_dialog("SUBSCRIBE", "x", "<sip:a@b>", 1, "z9hG4bKs2"), PROVIDER, 0.0)  # 405
    core.receive_datagram(in_dialog("OPTIONS", "y", "<sip:a@b>", 1, "z9hG4bKs3"), PROVIDER, 0.0)  # 200
    core.receive_datagram(b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKq\r\n"
                          b"To: <sip:x@y>\r\nCall-ID: bad\r\n\r\n", PROVIDER, 0.0)  # 400
    core.receive_datagram(invite("c1"), PROVIDER, 0.0)
    core.receive_datagram(invite("c1", branch="z9hG4bKloop"), PROVIDER, 0.0)  # 482
    core.receive_datagram(invite("c2", extra="Require: foo\r\n"), PROVIDER, 0.0)
    core.decline("c2", 420, 0.0)
    core.decline("c1", 486, 0.0)
    finals = [m for m, _ in sent(core) if m.status >= 200]
    assert sorted(m.status for m in finals) == [200, 400, 405, 420, 481, 482, 486]
    for m in finals:
        assert "tag=" in (m.get("to") or ""), m.status


def test_an_ipv6_registrar_is_bracketed_in_uris():
    from screener.config import SipConfig
    from screener.sip.registration import split_hostport

    core = make_core(register=True)
    core.cfg = SipConfig(server="2001:db8::5", port=5070, username="screener", password="secret",
                         local_address="2001:db8::1", sip_port=5062, keepalive_interval=0)
    core.registration.cfg = core.cfg
    core.add_provider_ips({"2001:db8::5"})
    core.start_registration(0.0)
    core.events()
    core.resolved(("2001:db8::5", 5070), None, {"2001:db8::5"}, 0.1)
    [(req, dest)] = sent(core)
    assert req.uri == "sip:[2001:db8::5]:5070" and dest == ("2001:db8::5", 5070)
    assert req.get("to") == "<sip:screener@[2001:db8::5]>"
    assert split_hostport("[2001:db8::5]:5080", 5060) == ("2001:db8::5", 5080)
    assert split_hostport("[2001:db8::5]", 5060) == ("2001:db8::5", 5060)


# -- 5. CSeq order, challenged BYE ------------------------------------------------------------------------------


def test_an_in_dialog_request_with_a_lower_cseq_gets_500():
    core, ok = confirmed()
    to = ok.get("to") or ""
    info = "Content-Type: application/dtmf\r\n"
    core.receive_datagram(in_dialog("INFO", "c1", to, 5, "z9hG4bKi5", "1", info), PROVIDER, 1.0)
    core.receive_datagram(in_dialog("INFO", "c1", to, 4, "z9hG4bKi4", "2", info), PROVIDER, 1.1)
    core.receive_datagram(in_dialog("INFO", "c1", to, 5, "z9hG4bKi5b", "3", info), PROVIDER, 1.2)  # equal: fine
    core.receive_datagram(in_dialog("BYE", "c1", to, 3, "z9hG4bKb3"), PROVIDER, 1.3)
    assert [(m.status, m.cseq[0]) for m, _ in sent(core)] == [(200, 5), (500, 4), (200, 5), (500, 3)]
    assert core.events() == [Digit("c1", "1"), Digit("c1", "3")]
    assert core.active_calls == 1
    core.receive_datagram(in_dialog("BYE", "c1", to, 6, "z9hG4bKb6"), PROVIDER, 1.4)
    assert [m.status for m, _ in sent(core)] == [200] and core.active_calls == 0


def test_a_challenged_bye_is_sent_once_more_with_credentials():
    from sip_core_support import reply

    for code, asked, answered in ((401, "WWW-Authenticate", "authorization"),
                                  (407, "Proxy-Authenticate", "proxy-authorization")):
        core, _ = confirmed()
        core.hangup("c1", 2.0)
        [(bye, dest)] = sent(core)
        assert bye.method == "BYE" and answered not in bye
        chal = f'{asked}: Digest realm="r", nonce="n9", qop="auth", algorithm=SHA-256'
        core.receive_datagram(reply(bye, code, "Unauthorized", chal), PROVIDER, 2.1)
        [(bye2, dest2)] = sent(core)
        assert bye2.method == "BYE" and dest2 == dest and bye2.cseq == (bye.cseq[0] + 1, "BYE")
        assert bye2.branch != bye.branch and bye2.call_id == bye.call_id and bye2.get("to") == bye.get("to")
        value = bye2.get(answered) or ""
        assert value.startswith("Digest ") and 'username="screener"' in value and "algorithm=SHA-256" in value
        core.receive_datagram(reply(bye2, code, "Unauthorized", chal), PROVIDER, 2.2)  # only once
        assert sent(core) == []
        assert core.next_timer() is not None
        while (when := core.next_timer()) is not None:
            core.handle_timer(when)
        assert core.pending_transactions == 0 and not core._byes


# -- 6. RFC 3263 failover ---------------------------------------------------------------------------------------


def test_a_registrar_target_that_does_not_answer_fails_over_to_the_next():
    from screener.sip.registration import StatusChange

    core = make_core(register=True)
    core.start_registration(0.0)
    core.events()
    second, third = ("192.0.2.20", 5070), ("192.0.2.30", 5060)
    core.resolved(PROVIDER, None, {PROVIDER[0]}, 0.1, (second, third))
    assert core.is_trusted(second[0]) and core.is_trusted(third[0])
    dests = []
    t = 0.1
    for _ in range(200):
        dests += [d for _, d in sent(core)]
        if third in dests or (t := core.next_timer()) is None:
            break
        core.handle_timer(t)
    order = list(dict.fromkeys(dests))
    assert order == [PROVIDER, second, third]
    assert not any(isinstance(e, StatusChange) and e.state == "failed" for e in core.events())
    last = core.registration.dest
    assert last == third


# -- 7. 100rel (RFC 3262) ---------------------------------------------------------------------------------------


def prack(to: str, rseq: int, cseq: int = 2, branch: str = "z9hG4bKpr") -> bytes:
    return in_dialog("PRACK", "c1", to, cseq, branch, "", f"RAck: {rseq} 1 INVITE\r\n")


def test_a_180_goes_reliably_until_its_prack_then_the_call_is_answerable():
    for header in ("Require: 100rel\r\n", "Supported: timer, 100rel\r\n"):
        core = make_core()
        core.receive_datagram(invite(extra=header), PROVIDER, 0.0)
        sent(core)
        [ev] = core.events()
        assert ev.info.cannot_serve == ""  # 100rel no longer makes a call un-servable
        assert core.ring("c1", 0.1)
        [(r180, _)] = sent(core)
        rseq = int(r180.get("rseq") or 0)
        assert r180.status == 180 and r180.get("require") == "100rel" and rseq > 0
        assert core.ring("c1", 0.2) and sent(core) == []  # one unacknowledged at a time
        core.handle_timer(0.6)
        core.handle_timer(1.6)
        assert [m.get("rseq") for m, _ in sent(core)] == [str(rseq)] * 2  # T1, then 2*T1
        to = r180.get("to") or ""
        core.receive_datagram(prack(to, rseq + 1, branch="z9hG4bKwrong"), PROVIDER, 1.7)
        assert [m.status for m, _ in sent(core)] == [481]
        core.receive_datagram(prack(to, rseq), PROVIDER, 1.8)
        [(ok, _)] = sent(core)
        assert ok.status == 200 and ok.cseq == (2, "PRACK")
        core.handle_timer(10.0)
        assert sent(core) == []  # no more 180s
        plan = core.answer_plan("c1", 10.0)
        assert plan is not None and core.answer("c1", plan, 41000, 10.0)
        assert [m.status for m, _ in sent(core)] == [200]


def test_a_reliable_180_never_pracked_ends_in_500():
    core = make_core()
    core.receive_datagram(invite(extra="Require: 100rel\r\n"), PROVIDER, 0.0)
    core.ring("c1", 0.0)
    sent(core), core.events()
    statuses = []
    while (when := core.next_timer()) is not None and when <= 32.0:
        core.handle_timer(when)
        statuses += [m.status for m, _ in sent(core)]
    assert statuses.count(180) >= 6 and 500 in statuses
    assert statuses.index(500) > statuses.index(180)


def test_without_100rel_the_180_is_plain():
    core = make_core()
    core.receive_datagram(invite(), PROVIDER, 0.0)
    core.ring("c1", 0.0)
    [_, (r180, _)] = sent(core)
    assert "rseq" not in r180 and "require" not in r180
    assert core.next_timer() is None


# -- 7. session timers (RFC 4028, as the UAS) -------------------------------------------------------------------


def timed_call(headers: str):
    core = make_core()
    core.receive_datagram(invite(extra=headers), PROVIDER, 0.0)
    [ev] = core.events()
    assert ev.info.cannot_serve == ""  # Require: timer no longer makes a call un-servable
    assert core.answer("c1", core.answer_plan("c1", 0.0), 41000, 0.0)
    ok = [m for m, _ in sent(core) if m.status == 200][0]
    core.receive_datagram(ack("c1", ok), PROVIDER, 0.1)
    sent(core), core.events()
    return core, ok


def test_session_timer_honoured_refreshes_answered_and_a_missing_refresh_ends_the_call():
    core, ok = timed_call("Require: timer\r\nSupported: timer\r\nSession-Expires: 120\r\nMin-SE: 90\r\n")
    assert ok.get("session-expires") == "120;refresher=uac" and ok.get("require") == "timer"
    assert "timer" in (ok.get("supported") or "")
    assert core.next_timer() == 120 - 32
    to = ok.get("to") or ""
    refresh = in_dialog("INVITE", "c1", to, 2, "z9hG4bKref", offer(), "Content-Type: application/sdp\r\n"
                        "Session-Expires: 90;refresher=uac\r\nSupported: timer\r\n")
    core.receive_datagram(refresh, PROVIDER, 60.0)
    [(r200, _)] = sent(core)
    assert r200.status == 200 and r200.get("session-expires") == "90;refresher=uac"
    core.receive_datagram(in_dialog("ACK", "c1", to, 2, "z9hG4bKackref"), PROVIDER, 60.1)
    upd = in_dialog("UPDATE", "c1", to, 3, "z9hG4bKupd2", "", "Session-Expires: 90;refresher=uac\r\n")
    core.receive_datagram(upd, PROVIDER, 100.0)
    [(u200, _)] = sent(core)
    assert u200.status == 200 and u200.get("session-expires") == "90;refresher=uac"
    assert core.dialog("c1").session_at == 100.0 + 90 - 30
    core.handle_timer(159.9)
    assert sent(core) == []
    core.handle_timer(160.0)  # no refresh came: BYE, shortly before the session would expire
    [(bye, _)] = sent(core)
    assert bye.method == "BYE"
    ended = [e for e in core.events() if isinstance(e, CallEnded)]
    assert [e.reason for e in ended] == ["session_expired"]


def test_a_caller_without_timer_support_makes_us_the_refresher():
    from sip_core_support import reply

    core, ok = timed_call("Session-Expires: 1800\r\n")
    assert ok.get("session-expires") == "1800;refresher=uas" and ok.get("require") is None
    assert core.next_timer() == 900.0
    core.handle_timer(900.0)
    [(upd, _)] = sent(core)
    assert upd.method == "UPDATE" and upd.body == b"" and upd.get("contact")
    core.receive_datagram(reply(upd, 200, "OK"), PROVIDER, 900.1)
    assert core.active_calls == 1 and core.dialog("c1").session_at == 1800.0
    core.handle_timer(1800.0)
    [(upd2, _)] = [(m, d) for m, d in sent(core) if m.method == "UPDATE"]
    core.receive_datagram(reply(upd2, 481, "Call/Transaction Does Not Exist"), PROVIDER, 1800.1)
    assert [m.method for m, _ in sent(core)] == ["BYE"]


def test_no_session_expires_no_session_timer():
    core, ok = timed_call("Supported: timer\r\n")
    assert ok.get("session-expires") is None and core.next_timer() is None
    core, ok = timed_call("Supported: timer\r\nSession-Expires: 1;refresher=uac\r\n")  # under RFC 4028's 90 s
    assert ok.get("session-expires") is None and core.next_timer() is None
