"""The call log: filters, keyset pages, escaping of hostile names, harmless search, one-click block/allow."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from screener import store
from screener.store import ListEntry, utcnow

HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "x" * 6000,
    "bell\x07 nul\x00 esc\x1b[31m",
    "'; DROP TABLE calls; --",
]


def rows(body: str) -> int:
    return body.count('<td class="when">')


@pytest.mark.parametrize("name", HOSTILE)
def test_names_are_always_escaped(auth: Any, add_call: Callable[..., int], name: str) -> None:
    add_call(name=name, rule=name, reason=name, caller_raw=name)
    for url in ["/calls", "/numbers/+390212345678", "/"]:
        body = auth.get(url).get_data(as_text=True)
        assert "<script>alert" not in body and "<img src=x" not in body
        assert "\x00" not in body
    body = auth.get("/calls").get_data(as_text=True)
    if name.startswith("<script>"):
        assert html.escape(name, quote=False) in body
    if name.startswith("x"):
        assert len(body) < 60_000  # cut, not the whole 6 KB in every cell


@pytest.mark.parametrize("q", ["%", "_", "' OR 1=1 --", '"; DELETE FROM calls; --', "\\", "0212%", "+39*",
                               "%' UNION SELECT password_hash FROM users --"])
def test_search_metacharacters_are_harmless(auth: Any, add_call: Callable[..., int], q: str,
                                            web_store: store.Store) -> None:
    add_call(name="Mario Rossi")
    r = auth.get("/calls", query_string={"q": q})
    assert r.status_code == 200
    assert rows(r.get_data(as_text=True)) == 0
    assert "scrypt" not in r.get_data(as_text=True)
    assert rows(auth.get("/calls").get_data(as_text=True)) == 1


def test_filters(auth: Any, add_call: Callable[..., int]) -> None:
    add_call("+390212345678", name="Mario Rossi", outcome="blocked", decision="block")
    add_call("+393471234567", name="Anna", outcome="passed", decision="screen")
    add_call("+33162000000", name="Vendeur", outcome="missed", decision="screen", ago=timedelta(days=40))

    def count(**args: str) -> int:
        return rows(auth.get("/calls", query_string=args).get_data(as_text=True))

    assert count() == 3
    assert count(outcome="blocked") == 1
    assert count(decision="screen") == 2
    assert count(q="rossi") == 1
    assert count(q="02 1234 5678") == 1  # national format finds the E.164 number
    assert count(q="+39 347") == 1  # a number's beginning is a prefix search
    assert count(q="0033 162") == 1
    today = utcnow().date()
    assert count(**{"from": (today - timedelta(days=2)).isoformat()}) == 2
    assert count(to=(today - timedelta(days=30)).isoformat()) == 1
    assert count(outcome="nonsense") == 3  # unknown values are ignored, not an error
    r = auth.get("/calls", query_string={"from": "31/01/2025"})
    assert "Dates must lie between" in r.get_data(as_text=True)


def test_keyset_pages_cover_every_row_once(auth: Any, add_call: Callable[..., int]) -> None:
    base = utcnow() - timedelta(hours=1)
    ids = []
    for i in range(120):
        # Pairs of calls with the same start: the cursor must break ties on id.
        ids.append(add_call(f"+3902123{i:05d}", at=base - timedelta(seconds=i // 2)))
    seen: list[str] = []
    url = "/calls"
    pages = 0
    while url:
        body = auth.get(url).get_data(as_text=True)
        seen += re.findall(r'<small class="e164">(\+\d+)</small>', body)
        m = re.search(r'href="([^"]+before=[^"]+)" class="button">Older', body)
        url = html.unescape(m[1]) if m else ""
        pages += 1
    assert pages == 3
    # Newest first; within equal times the higher id (inserted later) first.
    assert seen == [f"+3902123{i:05d}" for i in sorted(range(120), key=lambda i: (i // 2, -i))]
    # And back: the newer page from page 3 is page 2.
    body = auth.get("/calls").get_data(as_text=True)
    older = html.unescape(re.search(r'href="([^"]+before=[^"]+)" class="button">Older', body)[1])
    body2 = auth.get(older).get_data(as_text=True)
    newer = html.unescape(re.search(r'href="([^"]+after=[^"]+)" class="button">', body2)[1])
    body1 = auth.get(newer).get_data(as_text=True)
    assert re.findall(r'class="e164">(\+\d+)<', body1) == seen[:50]


def test_bad_cursor_is_a_readable_400(auth: Any, add_call: Callable[..., int]) -> None:
    add_call()
    for cursor in ["x", "2025-13-45T99:99:99_1", "'; --", "9" * 40]:
        r = auth.get("/calls", query_string={"before": cursor})
        assert r.status_code == 400 and "This page link is not valid" in r.get_data(as_text=True)
    assert rows(auth.get("/calls", query_string={"before": ""}).get_data(as_text=True)) == 1


def test_block_from_the_log_then_undo(auth: Any, add_call: Callable[..., int], web_store: store.Store) -> None:
    add_call("+390212345678")
    r = auth.post("/lists/quick", {"op": "block +390212345678", "next": "/calls"})
    assert r.status_code == 302 and r.headers["Location"] == "/calls"
    body = auth.get("/calls").get_data(as_text=True)
    assert "+390212345678 is on the block list." in body
    assert 'action="/lists/undo"' in body
    assert '<span class="badge block">block list</span>' in body
    with web_store.read() as s:
        assert s.scalar(select(ListEntry.list).where(ListEntry.pattern == "+390212345678")) == "block"
    auth.post("/lists/undo", {"next": "/calls"})
    with web_store.read() as s:
        assert s.scalar(select(ListEntry).where(ListEntry.pattern == "+390212345678")) is None


def test_allow_moves_a_blocked_number_and_undo_restores_it(auth: Any, add_call: Callable[..., int],
                                                          web_store: store.Store) -> None:
    add_call("+390212345678")
    with web_store.write() as s:
        store.put_entry(s, "block", "+390212345678", label="pest", source="user")
    auth.post("/lists/quick", {"op": "allow +390212345678"})
    with web_store.read() as s:
        e = s.scalar(select(ListEntry).where(ListEntry.pattern == "+390212345678"))
        assert (e.list, e.label) == ("allow", "pest")
    auth.post("/lists/undo")
    with web_store.read() as s:
        e = s.scalar(select(ListEntry).where(ListEntry.pattern == "+390212345678"))
        assert (e.list, e.label, e.source) == ("block", "pest", "user")


def test_block_the_range(auth: Any, add_call: Callable[..., int], web_store: store.Store) -> None:
    add_call("+390212345678")
    body = auth.get("/calls").get_data(as_text=True)
    assert 'value="block +3902123456*"' in body and 'value="block +390212345*"' in body
    auth.post("/lists/quick", {"op": "block +3902123456*"})
    with web_store.read() as s:
        assert s.scalar(select(ListEntry.list).where(ListEntry.pattern == "+3902123456*")) == "block"


@pytest.mark.parametrize("op", ["delete +390212345678", "block", "block not-a-number", "screen +39021"])
def test_quick_rejects_bad_input(auth: Any, op: str, web_store: store.Store) -> None:
    r = auth.post("/lists/quick", {"op": op})
    assert r.status_code in (302, 400)
    with web_store.read() as s:
        assert store.count_entries(s) == 0


def test_state_changes_only_by_post(auth: Any) -> None:
    for url in ["/lists/quick", "/lists/undo", "/lists/add", "/logout", "/lists/1/delete"]:
        assert auth.get(url).status_code == 405


def test_name_search_goes_back_one_window_at_a_time(auth: Any, add_call: Callable[..., int]) -> None:
    add_call("+33162000000", name="Vendeur", ago=timedelta(days=45))
    add_call("+390212345678", name="Mario", ago=timedelta(days=1))
    body = auth.get("/calls", query_string={"q": "vendeur"}).get_data(as_text=True)
    assert rows(body) == 0 and "Names searched from" in body
    older = html.unescape(re.search(r'href="([^"]+before=[^"]+)" class="button">Older', body)[1])
    body = auth.get(older).get_data(as_text=True)
    assert rows(body) == 1 and "Vendeur" in body
    assert "class=\"button\">Older" not in body  # nothing older exists: no endless paging
    newer = html.unescape(re.search(r'href="([^"]+after=[^"]+)" class="button">', body)[1])
    assert rows(auth.get(newer).get_data(as_text=True)) == 0
    # A From date is a floor for the search, not a reason to scan more than one window per page.
    since = (utcnow() - timedelta(days=60)).date().isoformat()
    body = auth.get("/calls", query_string={"q": "vendeur", "from": since}).get_data(as_text=True)
    assert rows(body) == 0
