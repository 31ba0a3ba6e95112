"""Text from the wire made safe to store, show and export.

SIP headers are decoded with surrogateescape (a Latin-1 display name must not drop the INVITE), so their
strings may hold lone surrogates that no database driver encodes; they may also carry NUL, control
characters, and bidirectional overrides that make a number read backwards on a page or in a spreadsheet.
"""

from __future__ import annotations

import re

# U+202A-202E (embeddings, overrides) and U+2066-2069 (isolates): they reorder what follows them
BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_UNSAFE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{BIDI_CONTROLS}]|[\ud800-\udfff]+")
_BIDI = re.compile(f"[{BIDI_CONTROLS}]")


def _undo_escapes(run: str) -> str:
    """Lone surrogates from surrogateescape are the raw bytes: UTF-8 if they form it, else Windows-1252."""
    raw = bytearray()
    for ch in run:
        code = ord(ch)
        if not 0xDC80 <= code <= 0xDCFF:
            return "\ufffd" * len(run)  # a surrogate that no decoder produced: nothing to recover
        raw.append(code - 0xDC00)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", "replace")  # Latin-1 but for 0x80-0x9f, which are letters there


def clean(value: str) -> str:
    """`value` as every database, page and spreadsheet takes it.

    Undecodable bytes become their Latin-1 / Windows-1252 characters (what old PBXs and phonebooks send), NUL
    and control characters become U+FFFD (tab and line feed stay), bidirectional controls are removed.
    """
    if value.isascii() and value.isprintable():
        return value  # the common case, without a regex pass

    def fix(m: re.Match[str]) -> str:
        s = m.group()
        if "\ud800" <= s[0] <= "\udfff":
            return clean(_undo_escapes(s))
        return "" if s in BIDI_CONTROLS else "\ufffd"

    return _UNSAFE.sub(fix, value)


def strip_bidi(value: str) -> str:
    """`value` without bidirectional controls (for what is shown but was stored before clean() existed)."""
    return _BIDI.sub("", value)
