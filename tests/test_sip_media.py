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
