"""The harness itself, with sipp peers only: forking, cancelling, digest auth, and the audio helpers."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from peers import (
    ALAW,
    SIPP_SHARE,
    ULAW,
    CallSpec,
    Kamailio,
    PeerError,
    Phone,
    Ports,
    Sipp,
    Wait,
    encode_g711,
    read_wav,
    render,
    send_udp,
    tone,
    tone_power_ratio,
    wait_until,
    write_rtp_pcap,
)

pytestmark = pytest.mark.e2e


def test_household_answers_a_call_through_the_registrar(make_phone: Callable[..., Phone],
                                                        call: Callable[..., Sipp]) -> None:
    phone = make_phone(ring_ms=100)
    sipp = call(CallSpec(media=[Wait(100)]), timeout=10)
    assert sipp.proc.popen.returncode == 0, sipp.report()
    assert phone.events("ANSWERED") == phone.events("INVITE") != []


def test_603_from_one_contact_cancels_the_other(make_phone: Callable[..., Phone], call: Callable[..., Sipp],
                                                 kamailio: Kamailio) -> None:
    household = make_phone(ring_ms=5000)
    make_phone("decliner", decline=603)
    sipp = call(CallSpec(expect=603, number="+390212345678"), timeout=10)
    assert sipp.proc.popen.returncode == 0, sipp.report()
    # the household rang and was cancelled (it answers 200 + 487 and logs it once the ACK arrives)
    assert _wait_events(household, "CANCELLED", 1) == household.events("INVITE")
    assert kamailio.log_lines("REPLY") and any(" 487 " in ln for ln in kamailio.log_lines("REPLY"))


def test_486_from_one_contact_does_not_stop_the_other(make_phone: Callable[..., Phone],
                                                       call: Callable[..., Sipp]) -> None:
    """Why screener must block with a 6xx in parallel mode (PYVOIP.md): a 486 only ends its own branch."""
    household = make_phone(ring_ms=300)
    make_phone("busy", decline=486)
    sipp = call(CallSpec(media=[Wait(50)]), timeout=10)
    assert sipp.proc.popen.returncode == 0, sipp.report()
    assert household.events("ANSWERED")


def test_registrar_rejects_a_wrong_password(tmp_path: Path, kamailio: Kamailio, ports: Ports) -> None:
    phone = Phone(tmp_path, kamailio, ports.household, ports.household_media, name="intruder",
                  register_port=ports.registrar_client, password="not-the-password")
    try:
        with pytest.raises(PeerError, match="could not register"):
            phone.start()
    finally:
        phone.stop()
    assert len(kamailio.log_lines("AUTHFAIL")) >= 2 and not kamailio.log_lines("REGISTERED")


def test_render_refuses_a_missing_value() -> None:
    assert render("a {{X}} b", {"X": 1}) == "a 1 b"
    with pytest.raises(KeyError, match="Y"):
        render("{{X}} {{Y}}", {"X": 1})


def test_g711_tables_round_trip_a_tone() -> None:
    samples = tone(440, 0.5, amplitude=16000)
    for pt, table in ((0, ULAW), (8, ALAW)):
        decoded = [table[b] for b in encode_g711(samples, pt)]
        assert tone_power_ratio(decoded, 440) > 0.99
        assert max(abs(a - b) for a, b in zip(samples, decoded, strict=True)) < 600


def test_mis_decoded_g711_fails_the_tone_check() -> None:
    """The PCMA check must catch u-law bytes sent as PCMA (PYVOIP.md B6): decoded as A-law they are distorted."""
    samples = tone(440, 0.5, amplitude=16000)
    assert tone_power_ratio([ALAW[b] for b in encode_g711(samples, 0)], 440) < 0.95
    assert tone_power_ratio([ULAW[b] for b in encode_g711(samples, 8)], 440) < 0.95


def test_written_pcap_holds_the_rtp(tmp_path: Path) -> None:
    payload = encode_g711(tone(440, 0.2), 8)
    data = write_rtp_pcap(tmp_path / "t.pcap", payload, 8).read_bytes()
    off, got = 24, b""
    while off < len(data):
        incl = struct.unpack("<I", data[off + 8:off + 12])[0]
        rtp = data[off + 16 + 42:off + 16 + incl]
        assert rtp[1] & 0x7F == 8
        got += rtp[12:]
        off += 16 + incl
    assert got == payload


def test_sipp_share_has_the_dtmf_and_audio_captures() -> None:
    for name in [f"dtmf_2833_{d}.pcap" for d in range(10)] + ["g711a.pcap"]:
        assert (SIPP_SHARE / name).exists(), f"sip-tester package incomplete: {name}"


def test_read_wav_handles_8_and_16_bit(tmp_path: Path) -> None:
    import wave

    for width, frames in ((1, bytes([128, 255, 0])), (2, struct.pack("<3h", 0, 32767, -32768))):
        p = tmp_path / f"w{width}.wav"
        with wave.open(str(p), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(width)
            w.setframerate(8000)
            w.writeframes(frames)
        rate, samples = read_wav(p)
        assert rate == 8000 and samples[0] == 0 and samples[1] > 32000 and samples[2] == -32768


def _wait_events(phone: Phone, kind: str, n: int, timeout: float = 3.0) -> list[str]:
    return wait_until(lambda: len(phone.events(kind)) >= n and phone.events(kind), timeout,
                      what=f"{n} {kind} event(s) at {phone.name}")


def test_stray_replies_are_logged_and_dropped(kamailio: Kamailio) -> None:
    """A reply outside any transaction is logged as STRAY and never forwarded (its Via may be off loopback)."""
    reply = ("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:25060;branch=z9hG4bKnone\r\n"
             "Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKfar\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\n"
             "To: <sip:b@127.0.0.1>;tag=2\r\nCall-ID: stray-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    send_udp(reply.encode(), (kamailio.host, kamailio.port))
    wait_until(lambda: [ln for ln in kamailio.log_lines("STRAY") if "stray-1" in ln], 2, what="the STRAY log line")
