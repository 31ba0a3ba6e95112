"""Property-based tests of the SIP core: any order, duplicate, loss or garbage of INVITE exchanges ends cleanly.

Hypothesis draws scripts of datagrams (INVITE, its retransmissions, CANCEL, ACK, BYE, garbage), handler
commands and clock jumps for up to three calls; then every handler returns and time runs on. Whatever the
script: no exception escapes, every datagram sent parses, every INVITE got a final response, and once every
transaction is over nothing is left: no dialog, no tombstone, no transaction, no timer.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sip_core_support import PROVIDER, ack, cancel, in_dialog, invite, make_core, reply, run_until_idle

from screener.sip.core import LegEnded, LegReleased, NewCall
from screener.sip.message import Message, parse
from screener.sip.registration import RegState, ResolveProvider, StatusChange

CALLS = ("c1", "c2", "c3")
EXAMPLES = int(os.environ.get("SCREENER_HYPOTHESIS_EXAMPLES", "400"))  # more for a long soak

step = st.one_of(
    st.tuples(st.just("invite"), st.sampled_from(CALLS)),
    st.tuples(st.just("invite-other-branch"), st.sampled_from(CALLS)),
    st.tuples(st.just("late-offer"), st.sampled_from(CALLS)),
    st.tuples(st.just("cancel"), st.sampled_from(CALLS)),
    st.tuples(st.just("ack"), st.sampled_from(CALLS)),
    st.tuples(st.just("bye"), st.sampled_from(CALLS)),
    st.tuples(st.just("reply-to-bye"), st.sampled_from(CALLS)),
    st.tuples(st.just("ring"), st.sampled_from(CALLS)),
    st.tuples(st.just("decline"), st.sampled_from(CALLS)),
    st.tuples(st.just("answer"), st.sampled_from(CALLS)),
    st.tuples(st.just("hangup"), st.sampled_from(CALLS)),
    st.tuples(st.just("handler-returns"), st.sampled_from(CALLS)),
    st.tuples(st.just("wait"), st.floats(min_value=0.0, max_value=40.0)),
    st.tuples(st.just("garbage"), st.binary(max_size=200)),
    st.tuples(st.just("mangled"), st.sampled_from(CALLS), st.integers(0, 400), st.binary(min_size=1, max_size=8)),
)


class Script:
    """Plays one script against a core and keeps what the checks need."""

    def __init__(self) -> None:
        self.core = make_core(ring_limit=90.0)
        self.now = 0.0
        self.finals: dict[str, Message] = {}  # our last final response to each INVITE
        self.byes: dict[str, Message] = {}  # our BYE of each call
        self.calls: set[str] = set()  # INVITEs that reached the handler

    def feed(self, data: bytes) -> None:
        self.core.receive_datagram(data, PROVIDER, self.now)
        self.collect()

    def collect(self) -> None:
        for data, _ in self.core.datagrams_to_send():
            msg = parse(data)  # every datagram we send is valid SIP
            try:
                cseq = msg.cseq
            except ValueError:
                continue  # a 400 echoing the broken CSeq of a mangled request
            if msg.status >= 200 and cseq == (1, "INVITE"):
                self.finals[msg.call_id] = msg
            elif msg.method == "BYE":
                self.byes[msg.call_id] = msg
        for ev in self.core.events():
            if isinstance(ev, NewCall):
                self.calls.add(ev.key)

    def play(self, action: tuple) -> None:
        kind, arg = action[0], action[1]
        core = self.core
        if kind == "invite":
            self.feed(invite(arg))
        elif kind == "invite-other-branch":
            self.feed(invite(arg, branch="z9hG4bKx" + arg))
        elif kind == "late-offer":
            self.feed(invite(arg, body=""))
        elif kind == "cancel":
            self.feed(cancel(arg))
        elif kind == "ack" and arg in self.finals:
            self.feed(ack(arg, self.finals[arg]))
        elif kind == "bye" and arg in self.finals:
            self.feed(in_dialog("BYE", arg, self.finals[arg].get("to") or "", 5, "z9hG4bKbye" + arg))
        elif kind == "reply-to-bye" and arg in self.byes:
            self.feed(reply(self.byes[arg], 200, "OK"))
        elif kind == "ring":
            core.ring(arg, self.now)
        elif kind == "decline":
            core.decline(arg, 603, self.now)
        elif kind == "answer":
            plan = core.answer_plan(arg, self.now)
            if plan is not None:
                core.answer(arg, plan, 41000, self.now)
        elif kind == "hangup":
            core.hangup(arg, self.now)
        elif kind == "handler-returns":
            core.handler_done(arg, self.now)
        elif kind == "wait":
            self.now += arg
            core.handle_timer(self.now)
        elif kind == "garbage":
            self.feed(arg)
        elif kind == "mangled":
            data = invite(arg)
            pos = action[2] % len(data)
            self.feed(data[:pos] + action[3] + data[pos + len(action[3]):])
        self.collect()


def test_any_invite_exchange_ends_with_nothing_left(record_property):
    examples = 0

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(step, max_size=40))
    # a caller's From with a byte that is not UTF-8 comes back in our BYE's To, and in the answer to that BYE
    @example([("mangled", "c1", 126, b"\x00\x80"), ("answer", "c1"), ("wait", 32.0), ("reply-to-bye", "c1")])
    def run(script: list[tuple]) -> None:
        nonlocal examples
        examples += 1
        s = Script()
        for action in script:
            s.play(action)
        for key in s.calls:  # every handler returns at last
            s.core.handler_done(key, s.now)
            s.collect()
        s.now = run_until_idle(s.core, s.now)
        s.collect()
        for key in sorted(s.calls):
            assert key in s.finals, f"{key}: the INVITE never got a final response"
        core = s.core
        assert core.tracked_calls == 0 and core.active_calls == 0
        assert core.tombstones == 0 and core.pending_transactions == 0
        assert core.next_timer() is None

    run()
    record_property("hypothesis_examples", examples)
    print(f"\nSIP core property test: {examples} examples run")
    assert examples >= EXAMPLES // 2


# -- outgoing calls (ring-through) ------------------------------------------------------------------------------

LEGS = ("l1", "l2")
ANSWER = ("v=0\r\no=- 5 5 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n"
          "m=audio 42000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n")

leg_step = st.one_of(
    st.tuples(st.just("respond"), st.sampled_from(LEGS),
              st.sampled_from([100, 180, 183, 200, 200, 401, 407, 486, 487, 503, 603])),
    st.tuples(st.just("respond-to-retry"), st.sampled_from(LEGS), st.sampled_from([180, 200, 407, 486])),
    st.tuples(st.just("forked-200"), st.sampled_from(LEGS)),
    st.tuples(st.just("answer-cancel"), st.sampled_from(LEGS), st.sampled_from([200, 481])),
    st.tuples(st.just("answer-bye"), st.sampled_from(LEGS), st.sampled_from([200, 401, 481])),
    st.tuples(st.just("their-request"), st.sampled_from(LEGS), st.sampled_from(["BYE", "INFO", "INVITE", "UPDATE",
                                                                               "ACK", "OPTIONS"])),
    st.tuples(st.just("loop"), st.sampled_from(LEGS)),
    st.tuples(st.just("cancel"), st.sampled_from(LEGS)),
    st.tuples(st.just("stop"), st.none()),
    st.tuples(st.just("wait"), st.floats(min_value=0.0, max_value=40.0)),
)


def _leg_response(req: Message, code: int, tag: str = "h1", contact: str = "sip:house@192.0.2.20:5070") -> bytes:
    lines = [f"SIP/2.0 {code} X"] + [f"Via: {v}" for v in req.get_all("via")]
    to = req.get("to") or ""
    if code > 100 and "tag=" not in to:
        to += f";tag={tag}"
    lines += [f"From: {req.get('from')}", f"To: {to}", f"Call-ID: {req.call_id}", f"CSeq: {req.get('cseq')}"]
    body = ANSWER if code == 200 and req.method == "INVITE" else ""
    if code == 200:
        lines += [f"Contact: <{contact}>", "Record-Route: <sip:192.0.2.10;lr>"]
    if code in (401, 407):
        lines.append(f"{'WWW' if code == 401 else 'Proxy'}-Authenticate: Digest realm=\"r\", nonce=\"n\"")
    lines += ["Content-Type: application/sdp"] if body else []
    return ("\r\n".join(lines) + f"\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()


def test_any_outgoing_call_reaches_a_final_state_and_leaves_nothing(record_property):
    examples = 0
    reasons: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(leg_step, max_size=40))
    def run(script: list[tuple]) -> None:
        nonlocal examples
        examples += 1
        core = make_core()
        now = 0.0
        invites: dict[str, list[Message]] = {}  # our INVITEs of each leg (the first, the authorized retry)
        last: dict[tuple[str, str], Message] = {}  # our latest CANCEL / BYE of each leg
        ended: dict[str, str] = {}
        released: set[str] = set()
        cseq = 10

        def collect() -> None:
            for data, _ in core.datagrams_to_send():
                msg = parse(data)
                if msg.is_request and msg.method in ("INVITE", "CANCEL", "BYE"):
                    key = call_ids.get(msg.call_id)
                    if key is not None and msg.method == "INVITE":
                        invites[key].append(msg)
                    elif key is not None:
                        last[(key, msg.method)] = msg
            for ev in core.events():
                if isinstance(ev, LegEnded):
                    assert ev.key not in ended, "a leg ended twice"
                    ended[ev.key] = ev.reason
                elif isinstance(ev, LegReleased):
                    released.add(ev.key)
                elif isinstance(ev, NewCall):
                    raise AssertionError("our own call came back to the handler")

        call_ids: dict[str, str] = {}
        for key in LEGS:
            invites[key] = []
            core.place_call(key, "sip:house@provider.example", "0212345678", "Mario (screened)", 41000, now,
                            dest=PROVIDER)
            leg = core.leg(key)
            assert leg is not None
            call_ids[leg.call_id] = key
            collect()
        for action in script:
            kind, key = action[0], action[1]
            if kind == "respond" and invites.get(key):
                core.receive_datagram(_leg_response(invites[key][0], action[2]), PROVIDER, now)
            elif kind == "respond-to-retry" and invites.get(key):
                core.receive_datagram(_leg_response(invites[key][-1], action[2]), PROVIDER, now)
            elif kind == "forked-200" and invites.get(key):
                core.receive_datagram(_leg_response(invites[key][-1], 200, "h2", "sip:b@192.0.2.30"), PROVIDER, now)
            elif kind == "answer-cancel" and (key, "CANCEL") in last:
                core.receive_datagram(_leg_response(last[(key, "CANCEL")], action[2]), PROVIDER, now)
            elif kind == "answer-bye" and (key, "BYE") in last:
                core.receive_datagram(_leg_response(last[(key, "BYE")], action[2]), PROVIDER, now)
            elif kind == "their-request" and invites.get(key):
                inv, cseq = invites[key][0], cseq + 1
                method = action[2]
                body = ANSWER if method in ("INVITE", "UPDATE") else ""
                data = (f"{method} sip:screener@192.0.2.1:5062 SIP/2.0\r\n"
                        f"Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKh{cseq}\r\nMax-Forwards: 70\r\n"
                        f"From: <sip:house@provider.example>;tag=h1\r\nTo: {inv.get('from')}\r\n"
                        f"Call-ID: {inv.call_id}\r\nCSeq: {cseq} {method}\r\n"
                        + ("Content-Type: application/sdp\r\n" if body else "")
                        + f"Content-Length: {len(body)}\r\n\r\n{body}")
                core.receive_datagram(data.encode(), PROVIDER, now)
            elif kind == "loop" and invites.get(key) and core.leg(key) is not None:
                inv = invites[key][0]
                data = (f"INVITE sip:screener@192.0.2.1:5062 SIP/2.0\r\n"
                        f"Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKloop{key}\r\nMax-Forwards: 69\r\n"
                        f"From: {inv.get('from')}\r\nTo: <sip:screener@provider.example>\r\n"
                        f"Call-ID: {inv.call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
                core.receive_datagram(data.encode(), PROVIDER, now)
            elif kind == "cancel" and key in invites:
                core.cancel_call(key, now)
            elif kind == "stop":
                core.stop_calls(now)
            elif kind == "wait":
                now += key
                core.handle_timer(now)
            collect()
        for key in invites:  # every handler gives up at last
            core.cancel_call(key, now)
        collect()
        while (when := core.next_timer()) is not None:
            now = max(now, when)
            core.handle_timer(now)
            collect()
        reasons.update(ended.values())
        assert set(ended) == set(invites) == released, "a leg never reached its end"
        assert core.tracked_legs == 0 and core.active_legs == 0 and core.pending_transactions == 0
        assert core.tracked_calls == 0 and core.next_timer() is None

    run()
    record_property("hypothesis_examples", examples)
    print(f"\nSIP outgoing call property test: {examples} examples run; legs ended: {dict(reasons)}")
    assert examples >= EXAMPLES // 2


# -- registration -------------------------------------------------------------------------------------------

reg_step = st.one_of(
    st.tuples(st.just("answer"), st.sampled_from([100, 200, 401, 403, 407, 423, 480, 500, 503])),
    st.tuples(st.just("wait"), st.floats(min_value=0.0, max_value=70.0)),
    st.tuples(st.just("rebind"), st.none()),
    st.tuples(st.just("dns-fails"), st.booleans()),
    st.tuples(st.just("garbage"), st.binary(max_size=100)),
)

CHALLENGE = {401: 'WWW-Authenticate: Digest realm="r", nonce="n", qop="auth"',
             407: 'Proxy-Authenticate: Digest realm="r", nonce="p"', 423: "Min-Expires: 600",
             503: "Retry-After: 2", 200: "Expires: 3600"}


def test_registration_never_gives_up_and_stops_cleanly(record_property):
    examples = 0

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(reg_step, max_size=40))
    def run(script: list[tuple]) -> None:
        nonlocal examples
        examples += 1
        core = make_core(register=True)
        now, dns_fails, last = 0.0, False, None
        statuses: list[StatusChange] = []

        def pump() -> None:
            nonlocal last
            for _ in range(10):  # DNS answers come back at once, and may lead to more requests
                for data, _ in core.datagrams_to_send():
                    last = parse(data)
                events = core.events()
                statuses.extend(e for e in events if isinstance(e, StatusChange))
                asks = [e for e in events if isinstance(e, ResolveProvider)]
                if not asks:
                    return
                if dns_fails:
                    core.resolve_failed("no such host", set(), now)
                else:
                    core.resolved(PROVIDER, None, {PROVIDER[0]}, now)

        core.start_registration(now)
        pump()
        for kind, arg in script:
            if kind == "answer" and last is not None:
                core.receive_datagram(reply(last, arg, "X", *([CHALLENGE[arg]] if arg in CHALLENGE else [])),
                                      PROVIDER, now)
            elif kind == "wait":
                now += arg
                core.handle_timer(now)
            elif kind == "rebind":
                core.request_rebind("test", now)
            elif kind == "dns-fails":
                dns_fails = arg
            elif kind == "garbage":
                core.receive_datagram(arg, PROVIDER, now)
            pump()
            assert core.registration is not None and core.registration.state is not RegState.STOPPED
            assert core.next_timer() is not None, "registration gave up: nothing scheduled"
            if statuses and statuses[-1].state == "registered" and core.registration.state is RegState.REGISTERED:
                assert core.registration.timer_at is not None and core.registration.timer_at <= now + 20.0
        core.stop_registration(now)
        pump()
        now = run_until_idle(core, now)
        pump()
        assert core.registration_over and statuses[-1] == StatusChange("unregistered")
        assert core.next_timer() is None and core.pending_transactions == 0

    run()
    record_property("hypothesis_examples", examples)
    print(f"\nSIP registration property test: {examples} examples run")
    assert examples >= EXAMPLES // 2
