"""PyPhone itself: two of them registered at kamailio, calling each other through it."""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable

import pytest
from peers import CODECS, Kamailio, wait_until
from pyphone import Plan, PyPhone, digest_authorization, display_name_of, split_list

pytestmark = pytest.mark.e2e

MakePhone = Callable[..., PyPhone]


@pytest.mark.parametrize(("codec", "hangup"), [("PCMU", "caller"), ("PCMA", "callee")])
def test_answered_call_carries_audio_and_digits_both_ways(make_pyphone: MakePhone, kamailio: Kamailio, codec: str,
                                                          hangup: str) -> None:
    bob = make_pyphone("bob", plan=Plan(after=0.2, codec=codec))
    alice = make_pyphone("alice")
    wait_until(lambda: kamailio.registrations_from(bob.port) and kamailio.registrations_from(alice.port), 2,
               what="both bindings in kamailio's log")

    out = alice.call("bob", headers=["X-Screener-Test: 42"], display="Alice Example", from_user="+390212345678")
    out.wait("confirmed", timeout=3)
    inc = bob.incoming(timeout=1)
    inc.wait("confirmed", timeout=2)
    assert inc.invite is not None
    assert (inc.invite.call_id, inc.invite.display_name, inc.invite.from_user) == (
        out.call_id, "Alice Example", "+390212345678")
    assert inc.invite.header("X-Screener-Test") == "42"
    assert out.codes()[-1] == 200 and 180 in out.codes()
    assert out.codec == inc.codec == codec

    out.play_tone(440, 0.6)
    inc.play_tone(1000, 0.6)
    alice.wait_for(lambda: inc.has_tone(440) and out.has_tone(1000), 3, what="each tone at the other end")
    assert not inc.has_tone(1000, threshold=0.5) and not out.has_tone(440, threshold=0.5)
    assert inc.payload_types() == out.payload_types() == {CODECS[codec]}

    out.send_digit("5")
    inc.send_digit("#", ms=60)
    alice.wait_for(lambda: inc.digits() == "5" and out.digits() == "#", 2, what="the digits")
    out.wait_sent()
    alice.wait_for(lambda: len([p for p in inc.packets() if p.pt == 101]) >= 7, 1, what="the digit's end packets")
    event = [p for p in inc.packets() if p.pt == 101]
    assert len(event) == 5 + 2 and len({p.ts for p in event}) == 1 and event[0].marker
    assert [p.payload[1] >> 7 for p in event] == [0, 0, 0, 0, 1, 1, 1]
    assert statistics.median(inc.gaps_ms()) == pytest.approx(20, abs=5)
    sent = out.sent()
    assert len({p.ssrc for p in sent}) == 1
    assert all((b.seq - a.seq) % 65536 == 1 for a, b in zip(sent, sent[1:], strict=False))
    audio_ticks = [(p.ts - sent[0].ts) % 2**32 / 160 for p in sent if p.pt != 101]
    assert all(t.is_integer() for t in audio_ticks) and audio_ticks == sorted(set(audio_ticks))
    assert {(p.seq, p.ts) for p in inc.packets()} <= {(p.seq, p.ts) for p in sent}

    first, second = (out, inc) if hangup == "caller" else (inc, out)
    assert first.bye()
    second.wait("ended", timeout=2)
    first.wait("ended", timeout=2)
    assert (first.ended_by, second.ended_by) == ("local", "remote")
    assert [r.method for r in (bob if hangup == "caller" else alice).received("BYE")] == ["BYE"]


def test_cancel_before_answer(make_pyphone: MakePhone) -> None:
    bob = make_pyphone("bob", plan=Plan(after=None))
    alice = make_pyphone("alice")
    out = alice.call("bob")
    out.wait("ringing", timeout=3)
    inc = bob.incoming(timeout=1)
    assert out.cancel()
    out.wait("cancelled", timeout=2)
    inc.wait("cancelled", timeout=2)
    assert out.final_code == 487 and out.codes()[-1] == 487
    bob.wait_for(lambda: bob.received("ACK"), 2, what="kamailio's ACK of the 487")
    assert not inc.answer()


def test_busy_and_unacceptable_codec(make_pyphone: MakePhone) -> None:
    bob = make_pyphone("bob", plan=lambda invite: Plan(decline=486) if invite.from_user == "busy" else
                       Plan(codec="PCMA"))
    alice = make_pyphone("alice")
    busy = alice.call("bob", from_user="busy")
    busy.wait("failed", timeout=3)
    assert busy.final_code == 486 and bob.incoming(timeout=1).state == "declined"

    pcmu_only = alice.call("bob", codecs=("PCMU",))
    pcmu_only.wait("failed", timeout=3)
    assert pcmu_only.final_code == 488


def test_manual_answer_and_unregister_on_close(make_pyphone: MakePhone) -> None:
    bob = make_pyphone("bob", plan=Plan(after=None, ring=False))
    alice = make_pyphone("alice")
    out = alice.call("bob", codecs=("PCMU", "PCMA"))
    out.play_tone(700, 0.6)  # queued before the answer: sent in the codec the answer picks
    inc = bob.incoming(timeout=3)
    assert inc.answer("PCMA") and not inc.answer()
    out.wait("confirmed", timeout=2)
    assert out.codec == "PCMA" and 180 not in out.codes()
    bob.wait_for(lambda: inc.has_tone(700), 3, what="the tone queued before the answer")
    assert inc.payload_types() == {8}
    bob.close()  # hangs up, unregisters, joins its threads
    names = {"pyphone-bob-sip", "pyphone-bob-timer", *(f"pyphone-rtp-{p}" for p in bob.media_ports)}
    assert not [t for t in threading.enumerate() if t.name in names]
    assert bob.sock.fileno() == -1 and inc.media is not None and inc.media.sock.fileno() == -1
    out.wait("ended", timeout=2)
    assert out.ended_by == "remote"
    again = alice.call("bob")
    again.wait("failed", timeout=3)
    assert again.final_code == 404


def test_helpers() -> None:
    assert split_list('<sip:a;lr>, "x, y" <sip:b>,<sip:c>') == ["<sip:a;lr>", '"x, y" <sip:b>', "<sip:c>"]
    assert display_name_of('"Rossi \\"M\\" (screened)" <sip:+39@h>;tag=1') == 'Rossi "M" (screened)'
    assert display_name_of("Mario <sip:1@h>") == "Mario" and display_name_of("<sip:1@h>") is None
    # RFC 2617 3.5's example
    auth = digest_authorization('Digest realm="testrealm@host.com", qop="auth", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093"'
                                ', opaque="5ccc069c403ebaf9f0171e9517f40e41"', "GET", "/dir/index.html", "Mufasa",
                                "Circle Of Life", cnonce="0a4f113b")
    assert 'response="6629fae49393a05397450978507c4ef1"' in auth and 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in auth
    no_qop = digest_authorization('Digest realm="r", nonce="n"', "REGISTER", "sip:h", "u", "p")
    assert 'response="' in no_qop and "qop" not in no_qop
