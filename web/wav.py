"""Convert an uploaded WAV to what the SIP side plays: 8 kHz, 16-bit, mono PCM. Pure, stdlib only."""

from __future__ import annotations

import io
import sys
import wave
from array import array
from itertools import accumulate

RATE = 8000
MAX_SECONDS = 300


def to_telephone_wav(data: bytes, *, max_seconds: int = MAX_SECONDS) -> bytes:
    """A PCM WAV file (8/16/24/32-bit, any rate, any channels) -> a WAV file of 8 kHz 16-bit mono.

    Raises ValueError with a message for the user when `data` is not a PCM WAV or is too long.
    """
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            if not 1 <= width <= 4 or rate <= 0 or channels <= 0:
                raise ValueError("unsupported WAV sample format")
            if frames / rate > max_seconds:
                raise ValueError(f"the recording is longer than {max_seconds} seconds")
            raw = w.readframes(frames)
    except (wave.Error, EOFError) as e:
        raise ValueError(f"not a PCM WAV file ({e})") from None
    samples = _mono(_decode(raw, width), channels)
    if not samples:
        raise ValueError("the WAV file contains no audio")
    out = array("h", _resample(samples, rate, RATE))
    if sys.byteorder == "big":
        out.byteswap()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(out.tobytes())
    return buf.getvalue()


def _decode(raw: bytes, width: int) -> list[int]:
    """Little-endian PCM bytes -> samples scaled to the 16-bit range."""
    usable = len(raw) - len(raw) % width
    if width == 1:  # 8-bit WAV is unsigned
        return [(b - 128) << 8 for b in raw[:usable]]
    if width == 2:
        a = array("h")
        a.frombytes(raw[:usable])
        if sys.byteorder == "big":
            a.byteswap()
        return a.tolist()
    if width == 3:
        return [int.from_bytes(raw[i:i + 3], "little", signed=True) >> 8 for i in range(0, usable, 3)]
    a = array("i")
    a.frombytes(raw[:usable])
    if sys.byteorder == "big":
        a.byteswap()
    return [s >> 16 for s in a]


def _mono(samples: list[int], channels: int) -> list[int]:
    if channels == 1:
        return samples
    n = len(samples) // channels
    return [sum(samples[i * channels:(i + 1) * channels]) // channels for i in range(n)]


def _resample(samples: list[int], src: int, dst: int) -> list[int]:
    """Average the source samples under each output sample (a box low-pass, enough for speech), or repeat
    the nearest one when upsampling."""
    if src == dst:
        return samples
    n_out = len(samples) * dst // src
    if src < dst:
        return [samples[min(i * src // dst, len(samples) - 1)] for i in range(n_out)]
    cum = [0, *accumulate(samples)]
    out = []
    for i in range(n_out):
        a, b = i * src // dst, max((i + 1) * src // dst, i * src // dst + 1)
        out.append(max(-32768, min(32767, (cum[b] - cum[a]) // (b - a))))
    return out
