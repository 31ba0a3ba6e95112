"""Every page rendered in Italian: each message it asks Flask-Babel for has an Italian translation, and none of
the English the core wrote into the rows shows through."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import flask_babel
import pytest
from babel.messages.pofile import read_po
from flask import Flask
from sqlalchemy import select

from screener import audio, rules, store
from screener.store import ListEntry, put_entry
from tests.web.test_i18n import PO

REASONS = {
    "no rule matched: default screen; silent message": "messaggio muto",
    "prefix +390844* on the block list (0844: market research, advertising and sales calls)": "ricerche di mercato",
    "class:foreign on the screen list, during mon-fri 09:00-18:00": "numeri esteri nella lista da filtrare",
    "no rule matched: default screen; nobody answered within 60 s: ended with 480": "nessuno ha risposto",
}
# GET pages that serve files, not HTML
NOT_PAGES = {"static", "evidence.csv", "evidence.print_css", "lists.export", "prompts.audio", "voicemail.audio"}


@pytest.fixture
def used_msgids(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every msgid rendering asks for (templates, lazy strings and gettext calls all go through the Domain)."""
    seen: set[str] = set()
    gettext, ngettext = flask_babel.Domain.gettext, flask_babel.Domain.ngettext

    def recording_gettext(self: Any, string: str, **variables: Any) -> str:
        seen.add(string)
        return gettext(self, string, **variables)

    def recording_ngettext(self: Any, singular: str, plural: str, num: int, **variables: Any) -> str:
        seen.add(singular)
        return ngettext(self, singular, plural, num, **variables)

    monkeypatch.setattr(flask_babel.Domain, "gettext", recording_gettext)
    monkeypatch.setattr(flask_babel.Domain, "ngettext", recording_ngettext)
    get_translations = flask_babel.get_translations

    class Recording:
        """The request's translations, noting what templates ask for (Jinja's _ calls ugettext directly)."""

        def __init__(self, t: Any) -> None:
            self.t = t

        def ugettext(self, string: str) -> str:
            seen.add(string)
            return str(self.t.ugettext(string))

        def ungettext(self, singular: str, plural: str, num: int) -> str:
            seen.add(singular)
            return str(self.t.ungettext(singular, plural, num))

        def __getattr__(self, name: str) -> Any:
            return getattr(self.t, name)

    monkeypatch.setattr(flask_babel, "get_translations", lambda: Recording(get_translations()))
    return seen


@pytest.fixture
def italian_pages(auth: Any, app: Flask, add_call: Callable[..., int], web_store: store.Store) -> Iterator[Any]:
    for i, (reason, _it) in enumerate(REASONS.items()):
        add_call(ago=timedelta(minutes=i + 1), reason=reason, rule="block +390844*", outcome="passed")
    add_call("+33162000000", ago=timedelta(minutes=9), country="FR", voicemail_path="voicemail/x.wav",
             rule="screen class:foreign (mon-fri 09:00-18:00)", reason=list(REASONS)[2])
    with web_store.write() as s:
        put_entry(s, "block", "+390844*", label="0844: market research, advertising and sales calls",
                  source="preset it")
        put_entry(s, "screen", "class:foreign", source="verified", window=rules.make_window("mon-fri", "09:00", "18:00"))
        put_entry(s, "block", "+390212345678", source="dashboard")
    auth.post("/language", data={"lang": "it"})
    yield auth


def _catalog() -> dict[str, bool]:
    with PO.open("rb") as f:
        return {(m.id if isinstance(m.id, str) else m.id[0]): bool(m.string) and all(m.string)
                for m in read_po(f) if m.id}


def test_every_page_in_italian_is_translated(italian_pages: Any, app: Flask, web_store: store.Store,
                                             used_msgids: set[str]) -> None:
    with web_store.read() as s:
        entry_id = s.scalar(select(ListEntry.id).where(ListEntry.pattern == "+390844*"))
    urls = [str(r) for r in app.url_map.iter_rules()
            if "GET" in r.methods and not r.arguments and r.endpoint not in NOT_PAGES]  # type: ignore[operator]
    urls += [f"/lists/{entry_id}/edit", "/numbers/+390212345678", "/numbers/+33162000000", "/calls?outcome=passed",
             "/no/such/page", "/numbers/not-a-number", "/calls?before=garbage"]
    bodies: dict[str, str] = {}
    for url in urls:
        r = italian_pages.get(url, follow_redirects=True)
        assert r.status_code in (200, 400, 404), url
        bodies[url] = r.get_data(as_text=True)
    # forms that fail: a flash, an import report, a login error
    bad = italian_pages.post("/lists/add", data={"list": "block", "pattern": "08x4*", "label": "x"},
                             follow_redirects=True)
    bodies["add"] = bad.get_data(as_text=True)
    assert "un prefisso deve essere fatto di cifre seguite da *" in bodies["add"]
    report = italian_pages.post("/lists/import", data={"list": "block", "file": (io.BytesIO(
        b"number,label\n,nothing\nnot a number,oops\n"), "x.csv")}, content_type="multipart/form-data")
    bodies["import"] = report.get_data(as_text=True)
    assert "nessun numero in questa riga" in bodies["import"] and "non è un numero di telefono" in bodies["import"]

    catalog = _catalog()
    assert {m for m in used_msgids if not catalog.get(m)} == set()
    assert len(used_msgids) > 150  # the recording saw the pages' messages
    log = bodies["/calls"]
    for english, italian in REASONS.items():
        assert english not in log and italian in log
    assert "+33 1 62 00 00 00" in log  # a foreign number in international format
    assert "Non trovata" in bodies["/no/such/page"]
    overview = bodies["/"]
    assert "Ultime chiamate" in overview and "messaggio muto" in overview


def test_a_failed_list_form_keeps_what_was_typed(auth: Any) -> None:
    typed = {"list": "screen", "pattern": "08x4*", "label": "call centre", "days": "mon-fri",
             "time_from": "09:00", "time_to": ""}
    body = auth.post("/lists/add", data=typed, follow_redirects=True).get_data(as_text=True)
    assert "a time window needs both from and to" in body or "a prefix must be" in body
    for name in ("pattern", "label", "days", "time_from"):
        assert f'name="{name}" value="{typed[name]}"' in body, name
    assert '<option value="screen" selected>' in body
    # only once: the next visit starts empty
    assert 'value="call centre"' not in auth.get("/lists").get_data(as_text=True)


def test_unblock_on_the_number_page(auth: Any, add_call: Callable[..., int], web_store: store.Store) -> None:
    add_call()
    with web_store.write() as s:
        put_entry(s, "block", "+390212345678", source="dashboard")
    page = auth.get("/numbers/+390212345678").get_data(as_text=True)
    assert "Unblock" in page
    with web_store.read() as s:
        entry_id = s.scalar(select(ListEntry.id))
    r = auth.post(f"/lists/{entry_id}/delete", data={"next": "/numbers/+390212345678"}, follow_redirects=True)
    assert "Unblock" not in r.get_data(as_text=True)
    with web_store.read() as s:
        assert s.scalar(select(ListEntry.id)) is None
    # blocked by a range: Unblock puts the number itself on the allow list
    with web_store.write() as s:
        put_entry(s, "block", "+3902*", source="dashboard")
    page = auth.get("/numbers/+390212345678").get_data(as_text=True)
    assert 'name="op" value="allow +390212345678" title="+3902* stays on the block list' in page


def test_silent_message_shown_in_the_log(auth: Any, add_call: Callable[..., int]) -> None:
    add_call(outcome="passed", reason=f"no rule matched: default screen; {audio.SILENT_MESSAGE}")
    body = auth.get("/calls").get_data(as_text=True)
    assert '<span class="badge silent">silent message</span>' in body
