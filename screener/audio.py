"""Audio for the line: WAV files of any common format to 8 kHz 16-bit mono PCM, prompts, voicemail files.

Pure stdlib (a small RIFF reader, because `wave` on 3.11 refuses WAVE_FORMAT_EXTENSIBLE and float files).
All PCM here is 8 kHz, 16-bit signed little-endian, mono: what screener.sip plays and records.
"""

from __future__ import annotations

import audioop
import math
import struct
import wave
from dataclasses import dataclass
from pathlib import Path

RATE = 8000
PROMPT_NAMES = ("challenge", "passed", "failed", "blocked", "voicemail", "hold")
ANNOUNCE_PARTS = ("ask_name", "call_from", "press", "to_talk", "to_voicemail", "to_block", "done")
SHIPPED = Path(__file__).parent / "prompts"
KEY_FILES = {"*": "star", "#": "hash"}
MAX_PROMPT_SECONDS = 300

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


def read_wav(data: bytes) -> tuple[bytes, int, int, int, bool]:
    """Parse a RIFF/WAVE file: (samples, rate, channels, bytes per sample, is_float). ValueError if unusable."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file")
    pos, fmt, samples = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8:pos + 8 + size]
        if cid == b"fmt " and len(body) >= 16:
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
            if tag == _EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack_from("<H", body, 24)[0]  # the sub-format GUID starts with the real tag
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            samples = body
        pos += 8 + size + (size & 1)
    if fmt is None or samples is None:
        raise ValueError("WAV file without fmt or data chunk")
    tag, channels, rate, bits = fmt
    if tag not in (_PCM, _FLOAT) or bits not in (8, 16, 24, 32) or (tag == _FLOAT and bits != 32):
        raise ValueError(f"unsupported WAV encoding (format {tag}, {bits} bits)")
    if not 1 <= channels <= 8 or not 1000 <= rate <= 192000:
        raise ValueError("unsupported WAV channels or rate")
    width = bits // 8
    samples = samples[: len(samples) - len(samples) % (width * channels)]
    return samples, rate, channels, width, tag == _FLOAT


def to_line_pcm(data: bytes, max_seconds: float = MAX_PROMPT_SECONDS) -> bytes:
    """A WAV file (8/16/24/32-bit or float, any rate, mono or more channels) -> 8 kHz 16-bit mono PCM."""
    samples, rate, channels, width, is_float = read_wav(data)
    if len(samples) / (rate * channels * width) > max_seconds:
        raise ValueError(f"the recording is longer than {max_seconds:g} seconds")
    if is_float:
        n = len(samples) // 4
        floats = struct.unpack(f"<{n}f", samples)
        samples = struct.pack(f"<{n}h", *(int(max(-1.0, min(1.0, x)) * 32767) for x in floats))
        width = 2
    elif width == 1:
        samples = audioop.bias(samples, 1, -128)  # 8-bit WAV is unsigned
    pcm = audioop.lin2lin(samples, width, 2) if width != 2 else samples
    if channels > 1:
        pcm = _downmix(pcm, channels)
    if rate != RATE:
        pcm, _ = audioop.ratecv(pcm, 2, 1, rate, RATE, None)
    return pcm


def _downmix(pcm: bytes, channels: int) -> bytes:
    if channels == 2:
        return audioop.tomono(pcm, 2, 0.5, 0.5)
    n = len(pcm) // 2
    values = struct.unpack(f"<{n}h", pcm)
    mixed = [sum(values[i:i + channels]) // channels for i in range(0, n, channels)]
    return struct.pack(f"<{len(mixed)}h", *mixed)


def load_pcm(path: Path) -> bytes:
    """A WAV file on disk as line PCM; ValueError naming the file when it cannot be used."""
    try:
        return to_line_pcm(path.read_bytes())
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def write_wav(path: Path, pcm: bytes) -> None:
    """Write line PCM as an 8 kHz 16-bit mono WAV file (atomically: a partial file never has the name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    try:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(pcm)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a message behind
        raise


def beep(seconds: float = 0.35, freq: float = 1000.0, amp: int = 9000) -> bytes:
    """The tone before a voicemail recording."""
    n = int(RATE * seconds)
    return struct.pack(f"<{n}h", *(int(amp * math.sin(2 * math.pi * freq * i / RATE)) for i in range(n)))


def silence(seconds: float) -> bytes:
    return b"\0\0" * int(RATE * seconds)


SPEECH_RMS = 200  # the level shell.record also takes for speech; line noise and comfort noise stay below it
MIN_SPEECH_SECONDS = 0.3
SILENT_MESSAGE = "silent message"  # a voicemail of silence is not kept: the call's reason says this instead


def is_silent(pcm: bytes, rms: int = SPEECH_RMS, min_speech: float = MIN_SPEECH_SECONDS) -> bool:
    """Whether a recording holds less than `min_speech` seconds of 20 ms frames at speech level: a voicemail
    of breathing, line noise or a dialler's dead air (what a complaint calls a silent call)."""
    frame = RATE * 2 // 50
    need = int(min_speech * 50)
    loud = 0
    for i in range(0, len(pcm) - frame + 1, frame):
        if audioop.rms(pcm[i:i + frame], 2) >= rms:
            loud += 1
            if loud >= need:
                return False
    return True


def ringback(cycles: int = 1, freq: float = 425.0, on: float = 1.0, off: float = 4.0, amp: int = 6000) -> bytes:
    """The ringing tone a caller hears while the house rings: Italy's 425 Hz, 1 s on, 4 s off."""
    return (beep(on, freq, amp) + silence(off)) * cycles


@dataclass(frozen=True)
class Announcer:
    """What the household hears when it answers a ring-through, in the prompts' language."""

    ask_name: bytes
    call_from: bytes
    options: bytes  # "Press 1 to talk, press 2 to send it to voicemail, press 9 to block it."
    done: bytes
    keys: dict[str, bytes]

    def number(self, digits: str) -> bytes:
        """A number read digit by digit."""
        gap = silence(0.08)
        return gap.join(self.keys[d] for d in digits if d in self.keys)

    def announcement(self, who: bytes) -> bytes:
        return self.call_from + silence(0.15) + who + silence(0.4) + self.options


@dataclass(frozen=True)
class Prompts:
    """Every prompt of one language, as line PCM, loaded once at start."""

    challenge: bytes
    passed: bytes
    failed: bytes
    blocked: bytes
    voicemail: bytes
    hold: bytes
    announcer: Announcer


def load_announcer(language: str, talk: str, voicemail: str, block: str) -> Announcer:
    """The shipped announcement pieces, the options put together for the configured keys."""
    part = {name: load_pcm(SHIPPED / f"{name}_{language}.wav") for name in ANNOUNCE_PARTS}
    keys = {k: load_pcm(SHIPPED / f"key_{KEY_FILES.get(k, k)}_{language}.wav") for k in "0123456789*#"}
    gap, pause = silence(0.1), silence(0.35)
    options = pause.join(part["press"] + gap + keys[k] + gap + part[what]
                         for k, what in ((talk, "to_talk"), (voicemail, "to_voicemail"), (block, "to_block")))
    return Announcer(part["ask_name"], part["call_from"], options, part["done"], keys)


def load_prompts(language: str, digit: str, configured: dict[str, Path | None], custom_dir: Path | None,
                 ring_keys: tuple[str, str, str] = ("1", "2", "9")) -> Prompts:
    """Configured file > data_dir/prompts/NAME_LANG.wav > the shipped one; the shipped challenge gets the key.

    A configured file that cannot be used raises ValueError (the user asked for it); a broken custom file
    from the dashboard falls back to the shipped prompt.
    """
    out: dict[str, bytes] = {}
    for name in PROMPT_NAMES:
        path = configured.get(name)
        if path is not None:
            out[name] = load_pcm(path)
            continue
        custom = custom_dir / f"{name}_{language}.wav" if custom_dir else None
        if custom is not None and custom.is_file():
            try:
                out[name] = load_pcm(custom)
                continue
            except ValueError:
                pass
        out[name] = load_pcm(SHIPPED / f"{name}_{language}.wav")
        if name == "challenge":
            # the shipped challenge ends with "press the key": the configured key follows it
            key = KEY_FILES.get(digit, digit)
            out[name] += load_pcm(SHIPPED / f"key_{key}_{language}.wav")
    return Prompts(**out, announcer=load_announcer(language, *ring_keys))
