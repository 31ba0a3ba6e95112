"""Property-based tests of the SIP core: any order, duplicate, loss or garbage of INVITE exchanges ends cleanly.

Hypothesis draws scripts of datagrams (INVITE, its retransmissions, CANCEL, ACK, BYE, garbage), handler
commands and clock jumps for up to three calls; then every handler returns and time runs on. Whatever the
script: no exception escapes, every datagram sent parses, every INVITE got a final response, and once every
transaction is over nothing is left: no dialog, no tombstone, no transaction, no timer.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sip_core_support import PROVIDER, ack, cancel, in_dialog, invite, make_core, reply, run_until_idle

from screener.sip.core import NewCall
from screener.sip.message import Message, parse

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
