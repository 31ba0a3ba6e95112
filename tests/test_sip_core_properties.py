"""Property-based tests of the SIP core: any order, duplicate, loss or garbage of INVITE exchanges ends cleanly.

Hypothesis draws scripts of datagrams (INVITE, its retransmissions, CANCEL, ACK, BYE, garbage), handler
commands and clock jumps for up to three calls; then every handler returns and time runs on. Whatever the
script: no exception escapes, every datagram sent parses, every INVITE got a final response, and once every
transaction is over nothing is left: no dialog, no tombstone, no transaction, no timer.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sip_core_clock import reply
from sip_core_support import PROVIDER, ack, cancel, in_dialog, invite, make_core, run_until_idle

from screener.sip.core import NewCall
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
