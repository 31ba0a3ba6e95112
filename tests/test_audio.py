"""WAV conversion to line PCM and the prompt set (no sox or espeak needed: test files are built here)."""

from __future__ import annotations

import audioop
import math
import struct
import wave
from pathlib import Path

import pytest

from screener import audio

FREQ = 440.0


def wav_bytes(rate: int, channels: int, bits: int, *, seconds: float = 0.5, extensible: bool = False,
              float_: bool = False) -> bytes:
    """A sine in the given format, as a WAV file built by hand (8-bit unsigned, 24-bit, float, extensible)."""
    n = int(rate * seconds)
    frames = bytearray()
    for i in range(n):
        x = 0.5 * math.sin(2 * math.pi * FREQ * i / rate)
        for _ in range(channels):
            if float_:
                frames += struct.pack("<f", x)
            elif bits == 8:
                frames.append(int(128 + x * 127))
            else:
                v = int(x * (2 ** (bits - 1) - 1))
                frames += v.to_bytes(bits // 8, "little", signed=True)
    width = bits // 8
    tag = 3 if float_ else 1
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate, rate * channels * width,
                      channels * width, bits)
    if extensible:
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", 4) + b"INFO"
    chunks += b"data" + struct.pack("<I", len(frames)) + bytes(frames)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def expected(seconds: float = 0.5) -> bytes:
    n = int(8000 * seconds)
    return struct.pack(f"<{n}h", *(int(0.5 * 32767 * math.sin(2 * math.pi * FREQ * i / 8000)) for i in range(n)))


@pytest.mark.parametrize("rate,channels,bits,kw", [
    (8000, 1, 16, {}),
    (22050, 1, 8, {}),
    (44100, 2, 16, {}),
    (48000, 2, 24, {"extensible": True}),
    (16000, 1, 24, {}),
    (11025, 1, 32, {}),
    (48000, 1, 32, {"float_": True}),
    (32000, 6, 16, {"extensible": True}),
])
def test_any_common_wav_becomes_8k_16bit_mono(rate, channels, bits, kw):
    pcm = audio.to_line_pcm(wav_bytes(rate, channels, bits, **kw))
    assert abs(len(pcm) - 8000) <= 4  # 0.5 s at 8 kHz, 2 bytes a sample
    want = expected()
    # compare the middle (resampling shifts the edges a little): level and shape match
    mid_got, mid_want = pcm[2000:6000], want[2000:6000]
    assert abs(audioop.rms(mid_got, 2) - audioop.rms(mid_want, 2)) < audioop.rms(mid_want, 2) * 0.05
    assert audioop.findfactor(mid_got, mid_want) > 0.9 or bits == 8 or rate != 8000


@pytest.mark.parametrize("data,message", [
    (b"not a wav", "not a WAV file"),
    (b"RIFF\x04\x00\x00\x00WAVE", "without fmt or data"),
    (wav_bytes(8000, 1, 16).replace(b"\x01\x00\x01\x00", b"\x02\x00\x01\x00", 1), "unsupported WAV encoding"),
])
def test_unusable_files_are_refused_with_a_reason(data, message):
    with pytest.raises(ValueError, match=message):
        audio.to_line_pcm(data)


def test_too_long_is_refused():
    with pytest.raises(ValueError, match="longer than 0.2 seconds"):
        audio.to_line_pcm(wav_bytes(8000, 1, 16), max_seconds=0.2)


@pytest.mark.parametrize("language", ["en", "it"])
def test_shipped_prompts_are_small_telephone_wavs(language):
    for name in audio.PROMPT_NAMES:
        path = audio.SHIPPED / f"{name}_{language}.wav"
        assert path.stat().st_size < 110_000
        with wave.open(str(path)) as w:
            assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1)


def test_prompt_set_precedence(tmp_path: Path):
    custom = tmp_path / "prompts"
    custom.mkdir()
    (custom / "blocked_it.wav").write_bytes(wav_bytes(16000, 1, 16, seconds=0.25))
    (custom / "failed_it.wav").write_bytes(b"broken")  # falls back to the shipped one
    configured = tmp_path / "mine.wav"
    configured.write_bytes(wav_bytes(44100, 2, 16, seconds=0.1))
    p = audio.load_prompts("it", "#", {"passed": configured}, custom)
    assert abs(len(p.passed) - 1600) <= 4
    assert abs(len(p.blocked) - 4000) <= 4
    shipped_failed = audio.load_pcm(audio.SHIPPED / "failed_it.wav")
    assert p.failed == shipped_failed
    # the shipped challenge is followed by the configured key's name
    base = audio.load_pcm(audio.SHIPPED / "challenge_it.wav")
    assert p.challenge == base + audio.load_pcm(audio.SHIPPED / "key_hash_it.wav")


def test_configured_prompt_that_cannot_be_read_names_the_file(tmp_path: Path):
    with pytest.raises(ValueError, match="missing.wav"):
        audio.load_prompts("en", "5", {"challenge": tmp_path / "missing.wav"}, None)


def test_write_wav_round_trip(tmp_path: Path):
    pcm = expected(0.1)
    path = tmp_path / "vm" / "a.wav"
    audio.write_wav(path, pcm)
    assert audio.load_pcm(path) == pcm
    assert not list(path.parent.glob("*.part"))


def _noise(seconds: float, amp: int) -> bytes:
    """Deterministic low-level hiss: a pseudo-random walk of +-amp."""
    n = int(audio.RATE * seconds)
    return struct.pack(f"<{n}h", *((amp if (i * 7919) % 13 < 6 else -amp) for i in range(n)))


def _tone(seconds: float, amp: int = 6000) -> bytes:
    return audio.beep(seconds, 440.0, amp) if seconds else b""


@pytest.mark.parametrize("pcm,silent", [
    (b"", True),
    (audio.silence(10), True),
    (_noise(10, 60), True),  # line noise, comfort noise
    (audio.silence(4) + _tone(0.1) + audio.silence(4), True),  # a click or the far end's beep echo
    (audio.silence(4) + _tone(0.5) + audio.silence(4), False),  # a word
    (_tone(3), False),
    (_noise(2, 60) + _tone(0.4, 1500), False),  # quiet speech still counts
])
def test_is_silent(pcm: bytes, silent: bool):
    assert audio.is_silent(pcm) is silent
