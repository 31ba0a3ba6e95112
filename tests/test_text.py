"""text.clean: wire text made safe for every database, page and spreadsheet."""

from __future__ import annotations

import pytest

from screener.text import clean, strip_bidi


@pytest.mark.parametrize("raw,expected", [
    ("Mario Rossi", "Mario Rossi"),
    ("Jos\udce9 Garc\udceda", "José García"),  # Latin-1 bytes kept by surrogateescape
    ("caf\udcc3\udca9", "café"),  # UTF-8 split oddly is still UTF-8
    ("\udc80uro", "€uro"),  # Windows-1252, where Latin-1 has a control character
    ("x\ud800y", "x\ufffdy"),  # a surrogate no decoder made
    ("a\x00b", "a\ufffdb"),
    ("bell\x07", "bell\ufffd"),
    ("c1\x85", "c1\ufffd"),
    ("tab\tand\nline", "tab\tand\nline"),
    ("\u202e1234", "1234"),
    ("a\u2066b\u2069c", "abc"),
    ("日本語 ✓", "日本語 ✓"),
])
def test_clean(raw, expected):
    got = clean(raw)
    assert got == expected
    got.encode("utf-8")  # what every driver does with it


def test_strip_bidi_keeps_the_rest():
    assert strip_bidi("\u202aa\x00b\u202c") == "a\x00b"
