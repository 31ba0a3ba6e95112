"""The Italian catalog covers every message in web/, and the committed .mo matches the .po."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

import web

WEB = Path(web.__file__).parent
PO = WEB / "translations/it/LC_MESSAGES/messages.po"
MO = WEB / "translations/it/LC_MESSAGES/messages.mo"
METHODS = [("**.py", "python"), ("templates/**.html", "jinja2")]
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "_l": None, "lazy_gettext": None}


def _key(msgid: str | tuple[str, ...]) -> str:
    return msgid if isinstance(msgid, str) else msgid[0]


def _text(msgstr: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return (msgstr,) if isinstance(msgstr, str) else tuple(msgstr)


def test_every_message_has_an_italian_translation() -> None:
    with PO.open("rb") as f:
        catalog = read_po(f)
    translated = {_key(m.id) for m in catalog if m.id and m.string and all(m.string) and not m.fuzzy}
    used = {_key(msg) for _file, _line, msg, _comments, _ctx in
            extract_from_dir(WEB, METHODS, keywords=KEYWORDS)}
    assert used - translated == set()


def test_compiled_catalog_is_current() -> None:
    with PO.open("rb") as f:
        po = {(_key(m.id), _text(m.string)) for m in read_po(f) if m.id}
    with MO.open("rb") as f:
        mo = {(_key(m.id), _text(m.string)) for m in read_mo(f) if m.id}
    assert po == mo
