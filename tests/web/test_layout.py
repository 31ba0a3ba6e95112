"""The dashboard's layout in Chromium at a phone's width (390 px) and a laptop's (1280 px), in English and
Italian: no page scrolls sideways and no element sticks out of the viewport; the call log is a table whose
columns are never narrower than their words at 1280 px and stacked cards at 390 px. Every page is
screenshotted at both widths into test-artifacts/ (layout_<page>_<lang>_<width>.png)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from screener import audio, rules, store
from screener.store import Call, ListEntry, put_entry, utcnow
from tests.web.test_browser import ARTIFACTS, PASSWORD, live_url, page, shot  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser
WIDTHS = {"phone": {"width": 390, "height": 844}, "laptop": {"width": 1280, "height": 900}}
LONG_LABEL = "Energia Verde Servizi Commerciali S.r.l. — offerte luce e gas, richiamano ogni giorno"

# Elements wider than the viewport, or (with `cells`) words of the log broken across lines.
OVERFLOW_JS = """
() => {
  const vw = document.documentElement.clientWidth;
  const name = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (el.className && typeof el.className === 'string' ? '.' + el.className.trim().replace(/\\s+/g, '.') : '');
  const bad = [];
  if (document.documentElement.scrollWidth > vw) bad.push('page scrolls to ' + document.documentElement.scrollWidth);
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    if (r.right > vw + 0.5 || r.left < -0.5) bad.push(name(el) + ' ' + Math.round(r.left) + '..' + Math.round(r.right));
  }
  return bad.slice(0, 15);
}
"""
# Cells of the log narrower than their content's min-content width (its longest unbreakable word or badge).
NARROW_CELLS_JS = """
() => {
  const narrow = [];
  for (const cell of document.querySelectorAll('table.calls th, table.calls td')) {
    const probe = cell.cloneNode(true);
    probe.style.cssText = 'position:absolute;visibility:hidden;width:min-content;max-width:none;min-width:0;' +
      'overflow-wrap:normal;word-break:normal;white-space:' + getComputedStyle(cell).whiteSpace;
    cell.parentNode.appendChild(probe);
    const need = probe.getBoundingClientRect().width, have = cell.getBoundingClientRect().width;
    probe.remove();
    if (have + 0.5 < need) narrow.push(cell.textContent.trim().slice(0, 40) + ': ' + have + ' < ' + need);
  }
  return narrow.slice(0, 15);
}
"""


@pytest.fixture
def site(live_url: str, web_store: store.Store, page: Any) -> Iterator[tuple[str, Any]]:  # noqa: F811
    """The seeded dashboard (test_browser's calls plus long, foreign, silent and voicemail ones), logged in."""
    now = utcnow()
    window = rules.make_window("mon-fri", "09:00", "18:00")
    with web_store.write() as s:
        put_entry(s, "block", "+390844*", label="0844: market research, advertising and sales calls",
                  source="preset it")
        put_entry(s, "screen", "class:foreign", label=LONG_LABEL, source="verified", window=window)
        put_entry(s, "block", "+390612340003", label=LONG_LABEL, source="dashboard")
        base = dict(caller_raw="", number_type="fixed_line", duration_s=21.0)
        s.add(Call(started_at=now - timedelta(minutes=1), e164="+33162000000", country="FR", name=LONG_LABEL,
                   decision="screen", outcome="passed", rule="screen class:foreign (mon-fri 09:00-18:00)",
                   reason=f"class:foreign on the screen list ({LONG_LABEL}), during mon-fri 09:00-18:00",
                   voicemail_path="voicemail/x.wav", digits="5", **base))
        s.add(Call(started_at=now - timedelta(minutes=3), e164="+390844123456", country="IT", name="",
                   decision="block", outcome="blocked", rule="block +390844*",
                   reason="prefix +390844* on the block list (0844: market research, advertising and sales calls)",
                   **base))
        s.add(Call(started_at=now - timedelta(minutes=4), e164="+390212345679", country="IT", name="Ferramenta",
                   decision="screen", outcome="passed", rule="",
                   reason=f"no rule matched: default screen; {audio.SILENT_MESSAGE}", **base))
        s.add(Call(started_at=now - timedelta(minutes=5), e164=None, withheld=True, country=None, name="",
                   decision="screen", outcome="over_capacity", rule="",
                   reason="no rule matched: default screen; too many calls screened at once: left ringing "
                          "(answered elsewhere)", **base))
    page.goto(live_url + "/login")
    page.fill("input[name=login]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button.primary")
    page.wait_for_url(live_url + "/")
    yield live_url, page


def _pages(url: str, web_store: store.Store) -> dict[str, str]:
    with web_store.read() as s:
        entry = s.scalar(select(ListEntry.id).where(ListEntry.pattern == "+390844*"))
    return {"overview": "/", "calls": "/calls", "calls_filtered": "/calls?outcome=passed",
            "number": "/numbers/+390612340003", "number_foreign": "/numbers/+33162000000", "lists": "/lists",
            "list_edit": f"/lists/{entry}/edit", "voicemail": "/voicemail", "prompts": "/prompts",
            "settings": "/settings", "evidence": "/evidence", "not_found": "/no/such/page"}


def _set_language(tab: Any, lang: str) -> None:
    tab.click(f"button[lang={lang}]")
    tab.wait_for_selector(f"html[lang={lang}]")


@pytest.mark.parametrize("lang", ["en", "it"])
def test_every_page_fits_a_phone_and_a_laptop(site: tuple[str, Any], web_store: store.Store, lang: str) -> None:
    url, tab = site
    _set_language(tab, lang)
    problems: dict[str, list[str]] = {}
    for width, size in WIDTHS.items():
        tab.set_viewport_size(size)
        for name, path in _pages(url, web_store).items():
            tab.goto(url + path)
            bad = tab.evaluate(OVERFLOW_JS)
            if bad:
                problems[f"{name} {width}"] = bad
            shot(tab, f"layout_{name}_{lang}_{width}")
        # the import report, after a file with a bad row
        tab.goto(url + "/lists")
        tab.set_input_files("input[type=file][name=file]", files=[{
            "name": "numbers.csv", "mimeType": "text/csv",
            "buffer": b"number,label\n0844 111 222,sales\nnot a number,oops\n,nothing\n"}])
        tab.click("form[action='/lists/import'] button")
        tab.wait_for_selector("table.report")
        if bad := tab.evaluate(OVERFLOW_JS):
            problems[f"import {width}"] = bad
        shot(tab, f"layout_import_report_{lang}_{width}")
    assert problems == {}
    assert [e for e in tab.errors if "404" not in e] == []  # the not-found page is one on purpose


@pytest.mark.parametrize("lang", ["en", "it"])
def test_the_log_reads_well(site: tuple[str, Any], lang: str) -> None:
    from playwright.sync_api import expect

    url, tab = site
    _set_language(tab, lang)
    tab.set_viewport_size(WIDTHS["laptop"])
    tab.goto(url + "/calls")
    # a table: every column at least as wide as its longest word, nothing scrolls inside the log
    assert tab.locator("table.calls thead").is_visible()
    shot(tab, f"log_{lang}_1280")
    shot(tab, f"log_{lang}_1280")
    assert tab.evaluate(NARROW_CELLS_JS) == []
    assert tab.evaluate("() => { const w = document.querySelector('.table-wrap');"
                         " return w.scrollWidth <= w.clientWidth; }")
    foreign = tab.locator("table.calls tr", has_text="+33 1 62 00 00 00")
    expect(foreign).to_have_count(1)
    why = foreign.locator("td.why .reason")
    full = why.get_attribute("title") or ""
    assert LONG_LABEL in full and len(why.inner_text()) < len(full)  # shortened, whole on hover
    silent = "silent message" if lang == "en" else "messaggio muto"
    expect(tab.locator("tr", has_text="Ferramenta").locator(".badge.silent")).to_have_text(silent)
    if lang == "it":
        expect(foreign.locator("td.why .rule-name")).to_have_text("filtra numeri esteri (lun-ven 09:00-18:00)")
        assert "foreign" not in foreign.inner_text() and "during" not in full
    shot(tab, f"log_{lang}_1280")

    # a phone: stacked cards, every one within the screen, labelled
    tab.set_viewport_size(WIDTHS["phone"])
    tab.goto(url + "/calls")
    assert not tab.locator("table.calls thead").is_visible()
    assert tab.evaluate(OVERFLOW_JS) == []
    card = tab.locator("table.calls tr", has_text="+33 1 62 00 00 00")
    box = card.bounding_box()
    assert box is not None and box["width"] <= 390
    assert tab.evaluate("() => getComputedStyle(document.querySelector('table.calls tbody tr')).display") == "grid"
    shot(tab, f"log_{lang}_390")
    tab.screenshot(path=str(ARTIFACTS / f"log_{lang}_390_screen.png"))  # what a phone shows at first

    # the number page holds the whole reason and Unblock
    tab.goto(url + "/numbers/+390612340003")
    unblock = tab.locator("button.unblock")
    expect(unblock).to_have_text("Unblock" if lang == "en" else "Sblocca")
    unblock.click()
    expect(tab.locator("button.unblock")).to_have_count(0)
    assert tab.errors == []


def test_a_failed_form_keeps_what_was_typed(site: tuple[str, Any]) -> None:
    url, tab = site
    tab.set_viewport_size(WIDTHS["phone"])
    tab.goto(url + "/lists")
    tab.select_option("form[action='/lists/add'] select[name=list]", "screen")
    tab.fill("input[name=pattern]", "0844x*")
    tab.fill("input[name=label]", "call centre")
    tab.fill("input[name=days]", "mon-fri")
    tab.click("form[action='/lists/add'] button.primary")
    tab.wait_for_selector(".flash.error")
    assert tab.input_value("input[name=pattern]") == "0844x*"
    assert tab.input_value("input[name=label]") == "call centre"
    assert tab.input_value("input[name=days]") == "mon-fri"
    assert tab.input_value("form[action='/lists/add'] select[name=list]") == "screen"
    assert tab.evaluate(OVERFLOW_JS) == []
    shot(tab, "layout_failed_form_en_phone")


