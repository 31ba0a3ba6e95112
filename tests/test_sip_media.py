"""RTP: G.711 encoding, robustness of the receiver, bounded buffers, port accounting (B6, B7, B13, B21, B22)."""

from __future__ import annotations

import audioop
import math
import socket
import struct
import threading
import time

import pytest
from test_sip_support import Peer, Recorder, agent_addr, in_dialog, invite, running_agent, sdp, status

from screener.sip import Call
from screener.sip.media import INPUT_FRAMES, PortPool, RtpSession
from screener.sip.message import parse, parse_sdp


def tone(freq: float = 440.0, seconds: float = 0.4, amp: int = 8000) -> bytes:
    n = int(8000 * seconds)
    return struct.pack(f"<{n}h", *(int(amp * math.sin(2 * math.pi * freq * i / 8000)) for i in range(n)))


def rtp(pt: int, seq: int, ts: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, ts, 0x1234) + payload


def dtmf(event: int, ts: int, end: bool = False, pt: int = 101) -> bytes:
    return rtp(pt, ts & 0xFFFF, ts, bytes([event, 0x8A if end else 0x0A]) + struct.pack("!H", 800), not end)


@pytest.fixture
def pool():
    return PortPool("127.0.0.1", 43000, 43099)


@pytest.fixture
def far():
    p = Peer()
    yield p
    p.close()


def session(pool: PortPool, far: Peer, codec: str = "PCMA", pt: int = 8, **kw) -> RtpSession:
    s = RtpSession(pool, pool.bind(), codec, pt, 101, far.addr, **kw)
    s.start()
    return s


def collect(far: Peer, n: int, pt: int) -> list[bytes]:
    payloads: list[bytes] = []
    deadline = time.monotonic() + 3
    while len(payloads) < n and time.monotonic() < deadline:
        got = far.recv_raw(1)
        if got and got[0][1] & 0x7F == pt:
            payloads.append(got[0][12:])
    return payloads


def correlation(a: bytes, b: bytes) -> float:
    n = min(len(a), len(b)) // 2 * 2
    a, b = a[:n], b[:n]
    return audioop.findfactor(a, b) if audioop.rms(b, 2) else 0.0


@pytest.mark.parametrize("codec,pt,decode", [("PCMA", 8, audioop.alaw2lin), ("PCMU", 0, audioop.ulaw2lin)])
def test_the_prompt_is_encoded_in_the_negotiated_law(pool, far, codec, pt, decode):
    # B6: pyVoIP encodes PCMA with the u-law table: PCMA callers hear noise
    s = session(pool, far, codec, pt)
    try:
        sound = tone(seconds=0.2)
        s.play(sound)
        frames: list[bytes] = []
        deadline = time.monotonic() + 3
        while len(frames) < len(sound) // 320 and time.monotonic() < deadline:
            [payload] = collect(far, 1, pt)
            frame = decode(payload, 2)
            if frames or audioop.rms(frame, 2) >= 50:  # not the silence sent before the prompt was queued
                frames.append(frame)
        received = b"".join(frames)[: len(sound)]
        assert len(received) == len(sound)
        # the decoded signal matches the prompt closely (G.711 costs about 1 % of the amplitude)
        expected = sound[: len(received)]
        err = audioop.rms(audioop.add(received, audioop.mul(expected, 2, -1), 2), 2)
        assert err < audioop.rms(expected, 2) * 0.05
    finally:
        s.stop(wait=1)


def test_short_packets_and_unknown_events_do_not_stop_digits(pool, far):
    # B7: a short packet or an event >= 16 killed pyVoIP's receive thread; digits were never seen again
    digits: list[str] = []
    s = session(pool, far, on_digit=digits.append)
    try:
        to = ("127.0.0.1", s.port)
        far.send(b"\x80\x08", to)
        far.send(b"", to)
        far.send(dtmf(16, 1000), to)  # flash: not a key
        far.send(rtp(101, 1, 1100, b"\x05"), to)  # truncated event
        for _ in range(3):  # one event is repeated in several packets: reported once
            far.send(dtmf(5, 2000), to)
        far.send(dtmf(5, 2000, end=True), to)
        far.send(dtmf(11, 3000), to)
        deadline = time.monotonic() + 2
        while len(digits) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert digits == ["5", "#"]
    finally:
        s.stop(wait=1)


def test_sequence_and_timestamp_wrap(pool, far):
    # B21: at the wrap pyVoIP sent one packet without its sequence / timestamp field
    s = RtpSession(pool, pool.bind(), "PCMU", 0, None, far.addr)
    s.outSequence, s.outTimestamp = 0xFFFF, 0xFFFFFFFF - 100
    s.start()
    try:
        pkts = []
        while len(pkts) < 3:
            got = far.recv_raw(1)
            assert got is not None
            pkts.append(got[0])
        assert all(len(p) == 12 + 160 for p in pkts)
        seqs = [struct.unpack("!H", p[2:4])[0] for p in pkts]
        stamps = [struct.unpack("!I", p[4:8])[0] for p in pkts]
        assert seqs == [0xFFFF, 0, 1]
        assert stamps == [0xFFFFFFFF - 100, 59, 219]
    finally:
        s.stop(wait=1)


def test_received_audio_is_bounded(pool, far):
    # B22: pyVoIP kept every received packet for the whole call
    s = session(pool, far, "PCMU", 0)
    try:
        to = ("127.0.0.1", s.port)
        for i in range(INPUT_FRAMES * 4):
            far.send(rtp(0, i, i * 160, b"\xff" * 160), to)
        time.sleep(0.3)
        frames = 0
        while s.read_frame(0.05) is not None:
            frames += 1
        assert 0 < frames <= INPUT_FRAMES
    finally:
        s.stop(wait=1)


def test_ports_are_tracked_and_released(far):
    # B13: every answered call got a new socket on a possibly busy port, failed sockets leaked
    pool = PortPool("127.0.0.1", 43200, 43203)  # two even ports
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 43200))
    try:
        a = pool.bind()
        assert a.getsockname()[1] == 43202  # the busy one is skipped (and its socket closed)
        with pytest.raises(OSError, match="no free RTP port"):
            pool.bind()
        s = RtpSession(pool, a, "PCMU", 0, None, far.addr)
        s.start()
        s.stop(wait=1)
        assert pool.in_use == frozenset()
        blocker.close()
        socks = [pool.bind() for _ in range(2)]
        assert {x.getsockname()[1] for x in socks} == {43200, 43202}
        for x in socks:
            x.close()
    finally:
        blocker.close()


def test_calls_release_their_ports_and_run_on_a_tiny_range():
    provider = Peer()

    def handler(call: Call) -> None:
        call.answer()
        call.hangup()

    try:
        with running_agent(provider, Recorder(handler), rtp_port_low=43300, rtp_port_high=43301) as agent:
            for i in range(5):
                text = invite(agent.local_port, provider, f"port{i}")
                provider.send(text, agent_addr(agent))
                ok = provider.expect(status(200))
                provider.send(in_dialog("ACK", parse(text.encode()), ok, provider, 1), agent_addr(agent))
                provider.expect(lambda m: m.method == "BYE")
                assert parse_sdp(ok.body).port == 43300
                deadline = time.monotonic() + 1
                while agent.pool.in_use and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert agent.pool.in_use == frozenset()
    finally:
        provider.close()


def test_digits_and_recording_through_a_call(far):
    provider = Peer()
    result: dict[str, object] = {}
    answered = threading.Event()

    def handler(call: Call) -> None:
        call.answer()
        answered.set()
        result["digit"] = call.wait_digit(3)
        result["audio"] = call.record(max_seconds=0.4, silence_seconds=0.5)
        call.hangup()

    try:
        with running_agent(provider, Recorder(handler)) as agent:
            text = invite(agent.local_port, provider, "rec", body=sdp(far.port, "0 101"))
            provider.send(text, agent_addr(agent))
            ok = provider.expect(status(200))
            provider.send(in_dialog("ACK", parse(text.encode()), ok, provider, 1), agent_addr(agent))
            assert answered.wait(2)
            to = ("127.0.0.1", parse_sdp(ok.body).port)
            far.send(dtmf(5, 5000), to)
            time.sleep(0.1)
            voice = audioop.lin2ulaw(tone(seconds=0.02, amp=6000), 2)
            bye = None
            for i in range(150):  # speech (20 ms a packet) until the recording stops at max_seconds and the BYE comes
                far.send(rtp(0, i, 8000 + i * 160, voice), to)
                if (got := provider.recv(0.02)) is not None and got.method == "BYE":
                    bye = got
                    break
            assert bye is not None
        assert result["digit"] == "5"
        assert 0.8 * 0.4 * 16000 <= len(result["audio"]) <= 0.4 * 16000  # type: ignore[arg-type]
    finally:
        provider.close()


@pytest.mark.parametrize("packet", [
    b"", b"\x80", b"\x80\x00\x00", rtp(101, 1, 1, b"\x05"), dtmf(16, 5), dtmf(255, 6),
    b"\x90\x00" + b"\x00" * 10 + b"\x00\x01",  # header extension longer than the packet
    b"\xa0\x00" + b"\x00" * 10 + b"\xff",  # padding longer than the packet
    b"\x8f\x00" + b"\x00" * 10,  # 15 CSRCs announced, none there
])
def test_parse_packet_never_raises(pool, far, packet):
    # B7: pyVoIP's parser raised on these, and the exception ended its receive thread
    digits: list[str] = []
    s = RtpSession(pool, pool.bind(), "PCMU", 0, 101, far.addr, on_digit=digits.append)
    try:
        s.parse_packet(packet)
        assert digits == []
    finally:
        s.stop()


# RTP source check: only the caller's SDP address is heard (a spoofed DTMF must not pass the challenge)


def wait_for(pred, timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.01)
    return pred()


@pytest.fixture
def stranger():
    p = Peer("127.0.0.2")  # another host (Linux answers for all of 127.0.0.0/8)
    yield p
    p.close()


def test_dtmf_and_audio_from_another_host_are_dropped(pool, far, stranger):
    digits: list[str] = []
    s = session(pool, far, "PCMU", 0, on_digit=digits.append)
    try:
        to = ("127.0.0.1", s.port)
        stranger.send(dtmf(5, 1000), to)  # first: before the caller sent anything
        stranger.send(rtp(0, 1, 1160, b"\x00" * 160), to)
        time.sleep(0.1)
        assert digits == [] and s.read_frame(0.05) is None
        far.send(dtmf(1, 2000), to)
        assert wait_for(lambda: digits == ["1"])
        stranger.send(dtmf(9, 3000), to)
        stranger.send(rtp(0, 2, 3160, b"\x00" * 160), to)
        time.sleep(0.1)
        assert digits == ["1"] and s.read_frame(0.05) is None
    finally:
        s.stop(wait=1)


def test_nat_latches_on_the_first_source_of_the_sdp_address(pool, far):
    # the SDP names port 9 of the caller's address; NAT changed the port: the first sender from that
    # address is latched on, another port of the same address is then dropped
    other = Peer()
    digits: list[str] = []
    s = RtpSession(pool, pool.bind(), "PCMU", 0, 101, ("127.0.0.1", 9), on_digit=digits.append)
    s.start()
    try:
        to = ("127.0.0.1", s.port)
        far.send(dtmf(1, 1000), to)
        assert wait_for(lambda: digits == ["1"])
        other.send(dtmf(2, 2000), to)
        far.send(dtmf(3, 3000), to)
        assert wait_for(lambda: len(digits) == 2)
        assert digits == ["1", "3"]
    finally:
        s.stop(wait=1)
        other.close()


def test_a_trusted_provider_relay_may_send_from_its_own_address(pool, far, stranger):
    digits: list[str] = []
    s = RtpSession(pool, pool.bind(), "PCMU", 0, 101, ("192.0.2.10", 4000), on_digit=digits.append,
                   trusted=lambda ip: ip == "127.0.0.2")
    s.start()
    try:
        to = ("127.0.0.1", s.port)
        far.send(dtmf(1, 1000), to)  # neither the SDP's address nor trusted
        stranger.send(dtmf(2, 2000), to)  # the provider's relay
        assert wait_for(lambda: digits == ["2"])
        far.send(dtmf(3, 3000), to)
        time.sleep(0.1)
        assert digits == ["2"]
    finally:
        s.stop(wait=1)


def test_a_new_sdp_moves_the_accepted_source(pool, far, stranger):
    digits: list[str] = []
    s = session(pool, far, "PCMU", 0, on_digit=digits.append)
    try:
        to = ("127.0.0.1", s.port)
        far.send(dtmf(1, 1000), to)
        assert wait_for(lambda: digits == ["1"])
        s.set_remote(stranger.addr)  # a re-INVITE moved the media
        far.send(dtmf(2, 2000), to)
        stranger.send(dtmf(3, 3000), to)
        assert wait_for(lambda: len(digits) == 2)
        assert digits == ["1", "3"]
    finally:
        s.stop(wait=1)


def test_a_spoofed_key_does_not_pass_the_challenge(far, stranger):
    # through the agent: the caller's SDP names `far`; another host sends the right key first
    provider = Peer()
    got: list[str | None] = []
    answered, waited = threading.Event(), threading.Event()

    def handler(call: Call) -> None:
        call.answer()
        answered.set()
        got.append(call.wait_digit(0.3))
        waited.set()
        got.append(call.wait_digit(2))  # a spoofed key let through would come out here, before the real one
        call.hangup()

    try:
        with running_agent(provider, Recorder(handler)) as agent:
            text = invite(agent.local_port, provider, "spoof", body=sdp(far.port, "0 101"))
            provider.send(text, agent_addr(agent))
            ok = provider.expect(status(200))
            provider.send(in_dialog("ACK", parse(text.encode()), ok, provider, 1), agent_addr(agent))
            assert answered.wait(2)
            to = ("127.0.0.1", parse_sdp(ok.body).port)
            for ts in range(1000, 6000, 1000):
                stranger.send(dtmf(5, ts), to)
            assert waited.wait(2)
            far.send(dtmf(1, 9000), to)
            provider.expect(lambda m: m.method == "BYE", 3)
        assert got == [None, "1"]
    finally:
        provider.close()


def test_packets_follow_the_offered_ptime_and_a_hold_sends_nothing(pool, far):
    s = RtpSession(pool, pool.bind(), "PCMU", 0, None, far.addr, ptime=40)
    s.start()
    try:
        pkts = [far.recv_raw(1) for _ in range(3)]
        assert all(p is not None and len(p[0]) == 12 + 320 for p in pkts)  # 40 ms of G.711 a packet
        stamps = [struct.unpack("!I", p[0][4:8])[0] for p in pkts if p is not None]
        assert [(b - a) & 0xFFFFFFFF for a, b in zip(stamps, stamps[1:], strict=False)] == [320, 320]
        s.set_ptime(10)
        s.set_remote(("0.0.0.0", 0))  # a hold (c=0.0.0.0): nothing goes out
        while far.recv_raw(0.05) is not None:  # what was on its way
            pass
        assert far.recv_raw(0.1) is None  # ten packet times
        s.set_remote(far.addr)
        got = far.recv_raw(1)
        assert got is not None and len(got[0]) == 12 + 80  # 10 ms now
    finally:
        s.stop(wait=1)


# the bridge (ring-through): two sessions relaying to each other


@pytest.fixture
def legs():
    """Two far ends and a factory of two sessions on them: leg A (caller) and leg B (household)."""
    pool = PortPool("127.0.0.1", 42000, 42099)
    far_a, far_b = Peer(), Peer()
    made: list[RtpSession] = []

    def make(codec_a: str = "PCMU", codec_b: str = "PCMA", event_b: int | None = 96, **kw):
        a = RtpSession(pool, pool.bind(), codec_a, CODEC_PT[codec_a], 101, far_a.addr, **kw)
        b = RtpSession(pool, pool.bind(), codec_b, CODEC_PT[codec_b], event_b, far_b.addr)
        made.extend((a, b))
        a.start()
        b.start()
        assert far_a.recv_raw(1) and far_b.recv_raw(1)  # both streams run on their own clock
        return a, b

    yield pool, far_a, far_b, make
    for s in made:
        s.stop(wait=1)
    far_a.close()
    far_b.close()
    assert pool.in_use == frozenset()


CODEC_PT = {"PCMU": 0, "PCMA": 8}
LAW = {"PCMU": (audioop.lin2ulaw, audioop.ulaw2lin), "PCMA": (audioop.lin2alaw, audioop.alaw2lin)}


def drain(*peers: Peer) -> list[bytes]:
    """Everything already sent to `peers`; the last packet each stream sent before the quiet."""
    got = []
    for p in peers:
        while (pkt := p.recv_raw(0.15)) is not None:
            got.append(pkt[0])
    return got


def header(pkt: bytes) -> tuple[bool, int, int, int, int]:
    """(marker, payload type, sequence, timestamp, SSRC)"""
    second, seq, ts, ssrc = struct.unpack_from("!xBHII", pkt)
    return bool(second & 0x80), second & 0x7F, seq, ts, ssrc


def bridge(a: RtpSession, b: RtpSession) -> None:
    a.relay_to(b)
    b.relay_to(a)


def bridge_after_own_frame(a: RtpSession, b: RtpSession, far_b: Peer) -> bytes:
    """Bridge a and b; the last frame b sent on its own clock before that."""
    got = far_b.recv_raw(1)
    assert got is not None
    bridge(a, b)
    return ([got[0], *drain(far_b)])[-1]


@pytest.mark.parametrize("codec_a,codec_b", [("PCMU", "PCMA"), ("PCMA", "PCMU"), ("PCMU", "PCMU"), ("PCMA", "PCMA")])
def test_the_bridge_carries_audio_both_ways_in_each_leg_s_law(legs, codec_a, codec_b):
    _, far_a, far_b, make = legs
    a, b = make(codec_a, codec_b)
    b.play(tone(seconds=2))  # a prompt still queued on the household's leg is dropped, not mixed in
    bridge(a, b)
    drain(far_a, far_b)
    assert far_a.recv_raw(0.2) is None and far_b.recv_raw(0.2) is None  # no stream of their own any more
    sound = tone(freq=700, seconds=0.1, amp=6000)
    for src, dst, law_in, law_out, s in ((far_a, far_b, codec_a, codec_b, a), (far_b, far_a, codec_b, codec_a, b)):
        encoded = LAW[law_in][0](sound, 2)
        to = ("127.0.0.1", s.port)
        for i in range(5):
            src.send(rtp(CODEC_PT[law_in], i, 800 + i * 160, encoded[i * 160:(i + 1) * 160]), to)
        payloads = collect(dst, 5, CODEC_PT[law_out])
        assert len(payloads) == 5
        received = b"".join(payloads)
        if law_in == law_out:
            assert received == encoded  # the same law: the bytes pass unchanged
        else:  # transcoded byte for byte as G.711 through linear PCM would
            assert received == LAW[law_out][0](LAW[law_in][1](encoded, 2), 2)
        decoded = LAW[law_out][1](received, 2)
        err = audioop.rms(audioop.add(decoded, audioop.mul(sound, 2, -1), 2), 2)
        assert err < audioop.rms(sound, 2) * 0.05
    assert a.read_frame(0.05) is None and b.read_frame(0.05) is None  # relayed audio is not buffered


def test_telephone_events_pass_with_the_other_leg_s_payload_type_and_are_still_reported(legs):
    _, far_a, far_b, make = legs
    digits: list[str] = []
    a, b = make(on_digit=digits.append)
    bridge(a, b)
    drain(far_a, far_b)
    to = ("127.0.0.1", a.port)
    far_a.send(rtp(0, 1, 4000, b"\xff" * 160), to)
    sent = [dtmf(5, 4160), dtmf(5, 4160), dtmf(5, 4160, end=True)]
    for pkt in sent:
        far_a.send(pkt, to)
    got = [far_b.recv_raw(1) for _ in range(4)]
    assert all(g is not None for g in got)
    heads = [header(g[0]) for g in got if g is not None]
    assert [h[1] for h in heads] == [8, 96, 96, 96]
    assert [g[0][12:] for g in got[1:] if g is not None] == [p[12:] for p in sent]  # the event itself unchanged
    assert [h[0] for h in heads[1:]] == [True, True, False]  # the event's marker as the sender set it
    assert heads[1][3] == heads[2][3] == heads[3][3] == (heads[0][3] + 160) & 0xFFFFFFFF  # one event, one time
    assert wait_for(lambda: digits == ["5"])


def test_events_are_not_relayed_to_a_leg_without_telephone_event(legs):
    _, far_a, far_b, make = legs
    digits: list[str] = []
    a, b = make(event_b=None, on_digit=digits.append)
    bridge(a, b)
    drain(far_a, far_b)
    far_a.send(dtmf(7, 100), ("127.0.0.1", a.port))
    assert wait_for(lambda: digits == ["7"])
    assert far_b.recv_raw(0.2) is None


def test_the_relayed_stream_continues_the_leg_s_own_ssrc_sequence_and_timestamps(legs):
    _, far_a, far_b, make = legs
    a, b = make()
    _, _, seq, ts, ssrc = header(bridge_after_own_frame(a, b, far_b))
    to = ("127.0.0.1", a.port)
    for i in range(3):  # the caller's own numbering, far from b's
        far_a.send(rtp(0, 40000 + i, 123456 + i * 160, b"\x80" * 160), to)
    relayed = [header(g[0]) for g in (far_b.recv_raw(1) for _ in range(3)) if g is not None]
    assert [(m, s, t, c) for m, _, s, t, c in relayed] == [
        (i == 0, (seq + 1 + i) & 0xFFFF, (ts + 160 * (1 + i)) & 0xFFFFFFFF, ssrc) for i in range(3)]
    a.relay_to(None)  # b's own clock again, where the relayed audio ended
    own = far_b.recv_raw(1)
    assert own is not None
    assert header(own[0]) == (True, 8, (seq + 4) & 0xFFFF, (ts + 640) & 0xFFFFFFFF, ssrc)
    assert own[0][12:] == audioop.lin2alaw(b"\0" * 320, 2)  # silence, b's law
    far_a.send(rtp(0, 40003, 123456 + 480, b"\x80" * 160), to)
    assert a.read_frame(1) is not None  # a hears the caller again itself
    far_b.send(rtp(8, 1, 1, b"\xd5" * 160), ("127.0.0.1", b.port))
    back = far_a.recv_raw(1)  # b -> a still relays
    assert back is not None and header(back[0])[1] == 0 and back[0][12:] == b"\xff" * 160


def test_a_late_packet_does_not_move_the_timeline_back(legs):
    _, far_a, far_b, make = legs
    a, b = make()
    _, _, seq, ts, _ = header(bridge_after_own_frame(a, b, far_b))
    to = ("127.0.0.1", a.port)
    for i in (0, 2, 1):  # packet 1 overtaken by packet 2
        far_a.send(rtp(0, i, 1000 + i * 160, b"\x80" * 160), to)
    stamps = [header(g[0])[3] for g in (far_b.recv_raw(1) for _ in range(3)) if g is not None]
    assert stamps == [(ts + k) & 0xFFFFFFFF for k in (160, 480, 320)]
    a.relay_to(None)
    own = far_b.recv_raw(1)
    assert own is not None and header(own[0])[3] == (ts + 640) & 0xFFFFFFFF


def test_stopping_one_leg_ends_the_bridge_and_the_other_goes_on_alone(legs):
    pool, far_a, far_b, make = legs
    a, b = make()
    bridge(a, b)
    drain(far_a, far_b)
    port_b = b.port
    b.stop(wait=1)
    assert port_b not in pool.in_use
    own = far_a.recv_raw(1)  # a sends on its own clock again: the handler can play the caller a prompt
    assert own is not None and own[0][12:] == b"\xff" * 160
    far_a.send(rtp(0, 1, 1000, b"\x80" * 160), ("127.0.0.1", a.port))
    assert a.read_frame(1) is not None
    mark = a.play(tone(seconds=0.06))
    assert a.wait_played(mark, 2)
    a.relay_to(b)  # relaying to an ended session does nothing
    far_a.send(rtp(0, 2, 1160, b"\x80" * 160), ("127.0.0.1", a.port))
    assert a.read_frame(1) is not None
    a.stop(wait=1)
    assert pool.in_use == frozenset()


def test_playback_queued_while_relayed_is_dropped_at_once(legs):
    _, far_a, far_b, make = legs
    a, b = make()
    bridge(a, b)
    drain(far_b)
    mark = b.play(tone(seconds=3))
    assert b.wait_played(mark, 1)
    assert far_b.recv_raw(0.2) is None


def test_a_session_cannot_relay_to_itself(legs):
    _, _, _, make = legs
    a, _ = make()
    with pytest.raises(ValueError):
        a.relay_to(a)


@pytest.mark.parametrize("stopped", ["a", "b"])
def test_a_leg_stopped_while_audio_flows_both_ways_ends_the_bridge_cleanly(legs, stopped):
    pool, far_a, far_b, make = legs
    a, b = make()
    bridge(a, b)
    done = threading.Event()

    def talk(peer: Peer, to: tuple[str, int], pt: int) -> None:
        i = 0
        while not done.is_set():
            peer.send(rtp(pt, i & 0xFFFF, i * 160, b"\x80" * 160), to)
            i += 1
            time.sleep(0.001)

    talkers = [threading.Thread(target=talk, args=(far_a, ("127.0.0.1", a.port), 0)),
               threading.Thread(target=talk, args=(far_b, ("127.0.0.1", b.port), 8))]
    for t in talkers:
        t.start()
    try:
        assert far_b.recv_raw(1) and far_a.recv_raw(1)
        gone, left = (a, b) if stopped == "a" else (b, a)
        gone.stop(wait=1)
        assert gone.port not in pool.in_use
        assert wait_for(lambda: left.read_frame(0.05) is not None)  # the other leg hears its own caller again
    finally:
        done.set()
        for t in talkers:
            t.join()
