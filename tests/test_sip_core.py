"""The sans-I/O SIP core: datagrams and times in, datagrams and events out. No sockets, no sleeps."""

from __future__ import annotations

import logging

import pytest
from sip_core_support import (
    PROVIDER,
    STRANGER,
    US,
    ack,
    cancel,
    in_dialog,
    invite,
    make_core,
    reply,
    run_until_idle,
    sent,
)

from screener.sip.core import UNTRUSTED_LOG_INTERVAL, CallEnded, CallReleased, Digit, MediaStop, NewCall, Rejected
from screener.sip.message import parse, parse_sdp
from screener.sip.registration import ResolveProvider, StatusChange
from screener.sip.transactions import Timing


def test_invite_gets_100_and_a_new_call_then_the_decline_until_its_ack():
    core = make_core()
    core.receive_datagram(invite(), PROVIDER, 0.0)
    [(trying, to)] = sent(core)
    assert trying.status == 100 and to == PROVIDER
    [ev] = core.events()
    assert isinstance(ev, NewCall) and ev.info.call_id == "c1" and ev.info.from_provider
    assert core.decline("c1", 607, 0.01)
    [(final, _)] = sent(core)
    assert (final.status, final.reason) == (607, "Unwanted") and "tag=" in final.get("to")
    assert [type(e) for e in core.events()] == [CallEnded]
    assert core.next_timer() == pytest.approx(0.51)  # Timer G
    core.handle_timer(0.51)
    assert [m.status for m, _ in sent(core)] == [607]
    core.receive_datagram(ack("c1", final), PROVIDER, 0.6)
    assert core.tracked_calls == 0 and core.tombstones == 1
    assert isinstance(core.events()[-1], CallReleased)
    core.receive_datagram(invite(), PROVIDER, 0.7)  # a late retransmission: the same final response
    assert [m.get("to") for m, _ in sent(core)] == [final.get("to")]
    core.receive_datagram(invite(branch="z9hG4bKother"), PROVIDER, 0.8)
    assert [m.status for m, _ in sent(core)] == [482]
    assert run_until_idle(core, 0.8) == pytest.approx(0.6 + Timing().t4)  # Timer I ends the tombstone
    assert core.tombstones == 0 and core.next_timer() is None


def test_unacked_decline_is_forgotten_at_timer_h_without_waiting():
    # the socket test of this needs 64*T1 of wall clock; here it is a time value
    core = make_core()
    core.receive_datagram(invite("noack"), PROVIDER, 0.0)
    core.decline("noack", 603, 0.0)
    sent(core)
    times = []
    while (when := core.next_timer()) is not None:
        core.handle_timer(when)
        times += [when] * len(core.datagrams_to_send())
    assert times[:4] == [0.5, 1.5, 3.5, 7.5] and all(b - a <= 4.0 for a, b in zip(times, times[1:], strict=False))
    assert core.tracked_calls == 0 and core.tombstones == 0  # forgotten at Timer H, no tombstone


def test_cancel_gets_200_and_487_and_the_call_cannot_be_answered():
    core = make_core()
    core.receive_datagram(invite(), PROVIDER, 0.0)
    core.ring("c1", 0.1)
    sent(core), core.events()
    core.receive_datagram(cancel(), PROVIDER, 0.2)
    assert sorted((m.status, m.cseq[1]) for m, _ in sent(core)) == [(200, "CANCEL"), (487, "INVITE")]
    [ended] = core.events()
    assert isinstance(ended, CallEnded) and ended.reason == "cancelled" and "cause=200" in ended.cancel_reason
    assert core.answer_plan("c1", 0.3) is None
    assert not core.ring("c1", 0.3) and not core.decline("c1", 603, 0.3)


def test_cancel_crossing_our_200_ends_the_call_and_byes_after_the_ack():
    core = make_core()
    core.receive_datagram(invite(), PROVIDER, 0.0)
    plan = core.answer_plan("c1", 0.1)
    assert plan is not None and plan.codec == "PCMA" and plan.remote == ("192.0.2.10", 40000)
    assert core.answer("c1", plan, 41000, 0.1)
    ok = [m for m, _ in sent(core) if m.status == 200][0]
    assert b"m=audio 41000 RTP/AVP 8 101" in ok.body and ok.get("contact") == f"<sip:screener@{US[0]}:{US[1]}>"
    core.events()
    core.receive_datagram(cancel(), PROVIDER, 0.2)
    assert [(m.status, m.cseq[1]) for m, _ in sent(core)] == [(200, "CANCEL")]
    assert [type(e) for e in core.events()] == [CallEnded, MediaStop]
    core.receive_datagram(ack("c1", ok), PROVIDER, 0.3)
    [(bye, dest)] = sent(core)
    assert bye.method == "BYE" and dest == PROVIDER and bye.uri == f"sip:caller@{PROVIDER[0]}:{PROVIDER[1]}"
    core.receive_datagram(reply(bye, 200, "OK"), PROVIDER, 0.35)
    run_until_idle(core, 0.4)
    assert core.next_timer() is None and core.tracked_calls == core.tombstones == core.pending_transactions == 0


def test_a_handler_that_returns_while_ringing_gets_480_and_the_ring_limit_too():
    core = make_core(ring_limit=75.0)
    core.receive_datagram(invite("a"), PROVIDER, 0.0)
    core.receive_datagram(invite("b"), PROVIDER, 0.0)
    sent(core)
    core.handler_done("a", 1.0)
    assert [m.status for m, _ in sent(core)] == [480]
    assert core.next_timer() == pytest.approx(1.5)
    core.handle_timer(75.0)
    assert sorted(m.status for m, _ in sent(core) if m.call_id == "b") == [480]


def test_more_than_max_dialogs_get_503_and_on_reject():
    core = make_core(max_dialogs=2)
    for cid in ("a", "b", "c"):
        core.receive_datagram(invite(cid), PROVIDER, 0.0)
    over = [m for m, _ in sent(core) if m.call_id == "c"]
    assert [m.status for m in over] == [503] and over[0].get("retry-after") == "30" and "tag=" in over[0].get("to")
    rejected = [e for e in core.events() if isinstance(e, Rejected)]
    assert [(e.info.call_id, e.code, e.why) for e in rejected] == [("c", 503, "more than 2 calls at once")]


def test_untrusted_sources_are_dropped_and_counted():
    core = make_core()
    for i in range(3):
        core.receive_datagram(invite(f"evil{i}"), STRANGER, float(i))
    assert sent(core) == [] and core.events() == []
    assert core.untrusted_total == 3 and core.untrusted_counts() == {STRANGER[0]: 3}
    assert core.untrusted_last == (f"{STRANGER[0]}:{STRANGER[1]}", 2.0)


def test_bye_retransmission_gets_the_same_200_until_timer_j():
    core = make_core()
    core.receive_datagram(invite(), PROVIDER, 0.0)
    core.answer("c1", core.answer_plan("c1", 0.0), 41000, 0.0)
    ok = [m for m, _ in sent(core) if m.status == 200][0]
    core.receive_datagram(ack("c1", ok), PROVIDER, 0.1)
    bye = in_dialog("BYE", "c1", ok.get("to"), 2, "z9hG4bKbye1")
    core.receive_datagram(bye, PROVIDER, 1.0)
    core.receive_datagram(bye, PROVIDER, 1.5)
    assert [m.status for m, _ in sent(core)] == [200, 200]
    assert [type(e) for e in core.events()][-3:] == [CallEnded, MediaStop, CallReleased]
    run_until_idle(core, 2.0)
    core.receive_datagram(bye, PROVIDER, 100.0)
    assert [m.status for m, _ in sent(core)] == [481]


def test_sip_info_digit_and_reinvite_answer():
    core = make_core()
    core.receive_datagram(invite(), PROVIDER, 0.0)
    core.answer("c1", core.answer_plan("c1", 0.0), 41000, 0.0)
    ok = [m for m, _ in sent(core) if m.status == 200][0]
    core.events()
    info = in_dialog("INFO", "c1", ok.get("to"), 2, "z9hG4bKinfo", "Signal=5\r\nDuration=160\r\n",
                     "Content-Type: application/dtmf-relay\r\n")
    core.receive_datagram(info, PROVIDER, 0.2)
    assert core.events() == [Digit("c1", "5")]
    re_inv = in_dialog("INVITE", "c1", ok.get("to"), 3, "z9hG4bKre", "", "")
    core.receive_datagram(re_inv, PROVIDER, 0.3)
    again = [m for m, _ in sent(core) if m.cseq == (3, "INVITE")]
    assert again[0].status == 200 and again[0].body == ok.body


def test_requires_and_codecs_we_cannot_serve_reach_the_handler_and_are_not_answerable():
    core = make_core()
    core.receive_datagram(invite(extra="Require: 100rel, foo\r\n"), PROVIDER, 0.0)
    [ev] = core.events()
    assert ev.info.cannot_serve == "requires foo" and ev.requires_100rel
    assert core.answer_plan("c1", 0.0) is None


def test_same_seed_same_datagrams():
    def run(seed: int) -> list[bytes]:
        core = make_core(seed=seed)
        core.receive_datagram(invite(), PROVIDER, 0.0)
        core.answer("c1", core.answer_plan("c1", 0.0), 41000, 0.0)
        core.hangup("c1", 0.1, immediate=True)
        return [d for d, _ in core.datagrams_to_send()]

    assert run(7) == run(7)
    assert run(7) != run(8)  # tags and branches come from the injected source


# -- registration ---------------------------------------------------------------------------------------------


def registered_core(expires: int = 60, timing: Timing | None = None):
    core = make_core(register=True, timing=timing)
    core.start_registration(0.0)
    evs = core.events()
    assert StatusChange("registering") in evs and ResolveProvider(*PROVIDER, False) in evs
    core.resolved(PROVIDER, None, {PROVIDER[0]}, 0.1)
    [(req, dest)] = sent(core)
    assert req.method == "REGISTER" and dest == PROVIDER and "authorization" not in req
    chal = 'WWW-Authenticate: Digest realm="r", nonce="n1", qop="auth"'
    core.receive_datagram(reply(req, 401, "Unauthorized", chal), PROVIDER, 0.2)
    [(req2, _)] = sent(core)
    assert req2.get("authorization").startswith("Digest ") and req2.cseq[0] == req.cseq[0] + 1
    core.receive_datagram(reply(req2, 200, "OK", f"Expires: {expires}"), PROVIDER, 0.3)
    assert core.events() == [StatusChange("registered", None, expires)]
    return core, req2


def test_registration_refresh_at_most_every_20_s():
    core, first = registered_core(expires=3600)
    assert core.registration.timer_at == pytest.approx(0.3 + 20.0)
    core.handle_timer(20.29)
    assert core.events() == []
    core.handle_timer(20.3)
    assert core.events() == [ResolveProvider(*PROVIDER, False)]
    core.resolved(PROVIDER, None, set(), 20.4)
    [(again, _)] = sent(core)
    assert again.method == "REGISTER" and again.call_id == first.call_id and "authorization" in again


def test_silent_registrar_fails_backs_off_and_is_probed_every_5_s():
    core, _ = registered_core(expires=3600, timing=Timing(backoff_min=30.0, backoff_max=30.0))
    core.handle_timer(20.3)
    core.events()
    core.resolved(PROVIDER, None, set(), 20.3)
    t = 20.3
    while not (evs := core.events()):
        t = core.next_timer()
        core.handle_timer(t)
        core.datagrams_to_send()
    assert t == pytest.approx(20.3 + Timing().register_timeout)
    assert evs == [StatusChange("failed", f"no answer from {PROVIDER[0]}:{PROVIDER[1]}")]
    probe_at = core.registration.timer_at
    assert probe_at == pytest.approx(t + Timing().probe_interval)
    core.handle_timer(probe_at)
    [(probe, _)] = sent(core)
    assert probe.method == "OPTIONS"
    core.receive_datagram(reply(probe, 200, "OK"), PROVIDER, probe_at + 0.1)
    assert core.events() == [ResolveProvider(*PROVIDER, False)]  # the backoff ends: register at once
    assert probe_at + 0.1 < t + 30.0


def test_stop_unregisters_and_a_stray_response_does_not_count():
    core, _ = registered_core()
    core.receive_datagram(b"SIP/2.0 500 Stray\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKother\r\n\r\n", PROVIDER, 1.0)
    assert sent(core) == [] and core.events() == []
    core.stop_registration(2.0)
    [(unreg, _)] = sent(core)
    assert unreg.get("expires") == "0" and not core.registration_over
    core.receive_datagram(reply(unreg, 200, "OK"), PROVIDER, 2.1)
    assert core.events() == [StatusChange("unregistered")] and core.registration_over


def test_every_output_parses():
    core = make_core()
    core.receive_datagram(invite(), PROVIDER, 0.0)
    core.receive_datagram(b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKq\r\n\r\n",
                          PROVIDER, 0.0)
    out = core.datagrams_to_send()
    assert [parse(d).status for d, _ in out] == [100, 400]


@pytest.mark.parametrize("module", ["transactions", "dialogs", "registration", "core"])
def test_the_core_modules_do_no_io(module):
    # sans-I/O: no socket, thread, clock or OS randomness in the core; only the shell has them
    import ast
    from pathlib import Path

    import screener.sip

    path = Path(screener.sip.__file__).parent / f"{module}.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    banned = {"socket", "select", "selectors", "threading", "time", "asyncio", "secrets", "subprocess", "os",
              "screener.sip.shell", "screener.sip.agent", "screener.sip.media", "screener.sip.resolve"}
    assert not imported & banned


def test_stop_ends_calls_as_stopped_with_480_or_bye():
    core = make_core()
    core.receive_datagram(invite("ringing"), PROVIDER, 0.0)
    core.receive_datagram(invite("talking"), PROVIDER, 0.0)
    core.answer("talking", core.answer_plan("talking", 0.0), 41000, 0.0)
    ok = [m for m, _ in sent(core) if m.status == 200][0]
    core.receive_datagram(ack("talking", ok), PROVIDER, 0.1)
    core.events()
    core.stop_calls(1.0)
    out = sent(core)
    assert sorted((m.call_id, m.status or m.method) for m, _ in out) == [("ringing", 480), ("talking", "BYE")]
    ended = {e.key: e.reason for e in core.events() if isinstance(e, CallEnded)}
    assert ended == {"ringing": "stopped", "talking": "stopped"}


# -- what the socket tests of test_sip_agent used to wait for in wall-clock time --------------------------------


def sent_until(core, end: float) -> list[tuple[float, object]]:
    """Fire every timer due up to `end`; what went out, with the time it went out."""
    out = []
    while (when := core.next_timer()) is not None and when <= end:
        core.handle_timer(when)
        out += [(when, m) for m, _ in sent(core)]
    return out


def test_an_unacked_decline_is_retransmitted_and_kept_until_timer_h_then_forgotten():
    core = make_core()
    core.receive_datagram(invite("noack"), PROVIDER, 0.0)
    core.decline("noack", 603, 0.0)
    [final] = [m for m, _ in sent(core) if m.status == 603]
    resent, last = [], 0.0
    while (when := core.next_timer()) is not None:
        assert core.tracked_calls == 1 and core.tombstones == 0  # still waiting for the ACK
        core.handle_timer(when)
        last = when
        resent += [m for m, _ in sent(core)]
    assert last == pytest.approx(64 * Timing().t1)  # Timer H
    assert len(resent) >= 5 and all(m.status == 603 and m.get("to") == final.get("to") for m in resent)
    assert core.tracked_calls == 0 and core.tombstones == 0 and core.pending_transactions == 0
    assert [type(e) for e in core.events()] == [NewCall, CallEnded, CallReleased]


def test_the_final_response_is_retransmitted_until_its_ack_then_never_again():
    # B5: responses to the INVITE are retransmitted until the ACK, then stop
    core = make_core()
    core.receive_datagram(invite(), PROVIDER, 0.0)
    core.decline("c1", 603, 0.0)
    [final] = [m for m, _ in sent(core) if m.status == 603]
    resent = sent_until(core, 2.0)
    assert [(t, m.status) for t, m in resent] == [(0.5, 603), (1.5, 603)]  # Timer G: T1, then doubling
    core.receive_datagram(ack("c1", final), PROVIDER, 2.0)
    assert sent(core) == [] and sent_until(core, 3600.0) == []
    assert core.next_timer() is None


def test_an_acked_decline_leaves_a_tombstone_answering_retransmissions_until_timer_i():
    # Memory: a declined call's full record goes at its ACK (it used to stay 64*T1: 3200 records at 100/s);
    # a retransmitted INVITE still gets the same 603 and no second handler call until Timer I (T4) is over.
    core = make_core()
    core.receive_datagram(invite("tomb"), PROVIDER, 0.0)
    core.decline("tomb", 603, 0.0)
    [final] = [m for m, _ in sent(core) if m.status == 603]
    core.receive_datagram(ack("tomb", final), PROVIDER, 0.1)
    assert core.tracked_calls == 0 and core.tombstones == 1
    core.receive_datagram(invite("tomb"), PROVIDER, 0.2)
    [(again, _)] = sent(core)
    assert (again.status, again.get("to")) == (603, final.get("to"))
    core.receive_datagram(invite("tomb", branch="z9hG4bKother"), PROVIDER, 0.3)
    assert [m.status for m, _ in sent(core)] == [482]
    assert [type(e) for e in core.events()] == [NewCall, CallEnded, CallReleased]  # one handler call
    t_i = 0.1 + Timing().t4
    core.handle_timer(t_i - 0.01)
    assert core.tombstones == 1
    core.handle_timer(t_i)
    assert core.tombstones == 0 and core.next_timer() is None


def test_replies_go_to_the_source_not_the_via():
    # B4: a reply follows the packet's source (the Via here names a port nobody listens on)
    source = (PROVIDER[0], 6000)
    data = invite("src").replace(f"{PROVIDER[0]}:{PROVIDER[1]};branch".encode(), b"192.0.2.99:9;branch")
    core = make_core()
    core.receive_datagram(data, source, 0.0)
    core.decline("src", 603, 0.0)
    assert [(m.status, to) for m, to in sent(core)] == [(100, source), (603, source)]


def test_untrusted_sources_get_nothing_and_are_logged_once_a_minute(caplog):
    # only the provider talks to screener: no reply, no handler call, one grep-able line per source and minute
    caplog.set_level(logging.WARNING, "screener.sip")
    other = ("198.51.100.8", 5070)
    core = make_core()
    for i in range(3):
        core.receive_datagram(invite(f"evil{i}"), STRANGER, float(i))
    core.receive_datagram(reply(parse(invite()), 200, "OK"), STRANGER, 3.0)
    core.receive_datagram(invite("evil9").replace(b"INVITE", b"OPTIONS", 1), other, 4.0)
    core.receive_datagram(invite("evil4"), STRANGER, 3.0 + UNTRUSTED_LOG_INTERVAL)
    assert sent(core) == [] and core.events() == []
    lines = [r.getMessage() for r in caplog.records if "untrusted" in r.getMessage()]
    assert lines == [f"screener: untrusted SIP from {STRANGER[0]}:{STRANGER[1]} dropped (INVITE)",
                     f"screener: untrusted SIP from {other[0]}:{other[1]} dropped (OPTIONS)",
                     f"screener: untrusted SIP from {STRANGER[0]}:{STRANGER[1]} dropped (INVITE)"]
    assert core.untrusted_counts() == {STRANGER[0]: 5, other[0]: 1}


def test_the_200_has_record_route_and_our_contact_and_the_bye_waits_for_the_ack_then_follows_the_route():
    # B5: 200 OK copies Record-Route; B18: Contact is ours; B4: BYE follows the route set; B5: BYE after ACK
    proxy = ("192.0.2.30", 5070)
    core = make_core()
    core.receive_datagram(invite("rr", extra=f"Record-Route: <sip:{proxy[0]}:{proxy[1]};lr>\r\n"), PROVIDER, 0.0)
    assert core.answer("rr", core.answer_plan("rr", 0.0), 41000, 0.0)
    [ok] = [m for m, _ in sent(core) if m.status == 200]
    assert ok.get("record-route") == f"<sip:{proxy[0]}:{proxy[1]};lr>"
    assert ok.get("contact") == f"<sip:screener@{US[0]}:{US[1]}>" and parse_sdp(ok.body).address == US[0]
    core.hangup("rr", 0.1)
    assert [m.status for _, m in sent_until(core, 2.0)] == [200, 200]  # no BYE before the ACK, the 200 again
    core.receive_datagram(ack("rr", ok), PROVIDER, 2.0)
    [(bye, dest)] = sent(core)
    assert bye.method == "BYE" and dest == proxy
    assert bye.uri == f"sip:caller@{PROVIDER[0]}:{PROVIDER[1]}" and bye.get("route") == ok.get("record-route")
    assert bye.call_id == "rr" and "tag=" in bye.get("from") and bye.get("to").endswith("tag=frr")
