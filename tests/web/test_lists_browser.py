"""The list rules of issue 10 ("lists never surprise") in a real browser: Debian's chromium driven by
Playwright against the dashboard on loopback. Screenshots go to test-artifacts/lists_*.png.

The store's rules run on PostgreSQL in tests/test_store.py; the browser needs them once, on SQLite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from screener import store
from screener.presets import PRESETS
from screener.rules import make_window
from tests.web.test_browser import PASSWORD, live_url, shot  # noqa: F401  (live_url: a fixture)
from tests.web.test_browser import page as chromium_page  # noqa: F401  (a fixture)

pytestmark = pytest.mark.browser


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'screener.db'}"


@pytest.fixture
def lists(live_url: str, chromium_page: Any) -> Any:  # noqa: F811  (fixtures)
    """The Lists page, logged in."""
    from playwright.sync_api import expect

    page = chromium_page
    page.goto(live_url + "/lists")
    page.fill("input[name=login]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button.primary")
    expect(page.locator("h1")).to_have_text("Lists")
    return page


def _state(st: store.Store, pattern: str) -> tuple[str, str, str | None, bool] | None:
    from sqlalchemy import select

    with st.read() as s:
        e = s.scalar(select(store.ListEntry).where(store.ListEntry.pattern == pattern))
        return None if e is None else (e.list, e.label, e.time_from, e.enabled)


def _add(page: Any, which: str, pattern: str, label: str = "") -> None:
    form = page.locator("form[action='/lists/add']")
    form.locator("select[name=list]").select_option(which)
    form.locator("input[name=pattern]").fill(pattern)
    form.locator("input[name=label]").fill(label)
    form.locator("button.primary").click()


def _row(page: Any, pattern: str) -> Any:
    return page.locator("table.entries tbody tr", has_text=pattern)


def test_adding_over_another_list_asks_and_keeps(lists: Any, web_store: store.Store) -> None:
    from playwright.sync_api import expect

    page = lists
    with web_store.write() as s:
        store.put_entry(s, "allow", "+393471234567", label="mum", window=make_window("mon-fri", "09:00", "18:00"))
    _add(page, "block", "347 123 4567", "pest")
    expect(page.locator("p.warning")).to_contain_text(
        "+393471234567 is already on the allow list as “mum”, mon-fri 09:00-18:00.")
    shot(page, "lists_confirm_replace_en")
    assert _state(web_store, "+393471234567") == ("allow", "mum", "09:00", True)
    page.get_by_role("button", name="Keep its label and time window").click()
    expect(page.locator(".flash").first).to_contain_text(
        "+393471234567 moved from the allow list to the block list.")
    expect(page.locator(".flash", has_text="It keeps its label and time window.")).to_have_count(1)
    expect(_row(page, "+393471234567").locator("td.label")).to_have_text("mum")
    assert _state(web_store, "+393471234567") == ("block", "mum", "09:00", True)

    _add(page, "block", "347 123 4567", "pest")
    page.get_by_role("button", name="Replace its label and time window").click()
    expect(_row(page, "+393471234567").locator("td.label")).to_have_text("pest")
    assert _state(web_store, "+393471234567") == ("block", "pest", None, True)
    assert page.errors == []


def test_a_whole_country_prefix_needs_a_confirmation(lists: Any, web_store: store.Store) -> None:
    from playwright.sync_api import expect

    page = lists
    _add(page, "block", "+39*")
    expect(page.locator("p.warning")).to_contain_text("+39* covers every number of +39.")
    shot(page, "lists_confirm_wide_en")
    page.get_by_role("link", name="Cancel").click()
    expect(page.locator("h1")).to_have_text("Lists")
    assert _state(web_store, "+39*") is None
    _add(page, "screen", "3*")
    expect(page.locator("p.warning")).to_contain_text("+393* covers every number of +39 starting with 3.")
    page.get_by_role("button", name="Add it anyway").click()
    expect(_row(page, "+393*").locator(".badge.screen")).to_be_visible()
    assert _state(web_store, "+393*") == ("screen", "", None, True)
    _add(page, "block", "347*")  # three national digits: no question
    expect(_row(page, "+39347*")).to_have_count(1)
    assert page.errors == []


def test_an_entry_is_switched_off_and_on(lists: Any, web_store: store.Store) -> None:
    from playwright.sync_api import expect

    page = lists
    _add(page, "block", "0212345678", "pest")
    row = _row(page, "+390212345678")
    row.get_by_role("button", name="Switch off").click()
    expect(page.locator(".flash").first).to_contain_text("Switched off: +390212345678.")
    row = _row(page, "+390212345678")
    expect(row).to_have_class("off")
    expect(row.locator(".badge.off")).to_have_text("off")
    shot(page, "lists_switched_off_en")
    assert _state(web_store, "+390212345678") == ("block", "pest", None, False)
    row.get_by_role("button", name="Switch on").click()
    expect(_row(page, "+390212345678")).not_to_have_class("off")
    assert _state(web_store, "+390212345678") == ("block", "pest", None, True)
    assert page.errors == []


def _import(page: Any, which: str, name: str, data: bytes) -> None:
    form = page.locator("form[action='/lists/import']")
    form.locator("select[name=list]").select_option(which)
    form.locator("input[type=file]").set_input_files(files=[{"name": name, "mimeType": "text/csv", "buffer": data}])
    form.locator("button").click()


def test_the_import_report_names_allowed_numbers_bad_rows_and_dropped_zeros(lists: Any,
                                                                            web_store: store.Store) -> None:
    from playwright.sync_api import expect

    page = lists
    with web_store.write() as s:
        store.put_entry(s, "allow", "+393471234567", label="mum")
    _import(page, "block", "spam.csv",
            b"number,label\n0844 111 222,sales\n347 123 4567,spam\nnot a number,x\n212345678,milano\n")
    expect(page.locator("h1")).to_have_text("Import report")
    expect(page.locator("p.ok")).to_contain_text("2 entries imported into the block list from spam.csv")
    skipped = page.locator("table.skipped tbody tr")
    expect(skipped).to_have_count(1)
    expect(skipped.locator("td")).to_have_text(["3", "+393471234567"])
    notes = page.locator("table.notes tbody tr")
    expect(notes.locator("td")).to_have_text(
        ["5", "212345678 was read as 02 1234 5678: a spreadsheet had dropped its leading 0 (format the column as "
              "text)."])
    expect(page.locator("table.errors tbody tr td").first).to_have_text("4")
    shot(page, "lists_import_report_en")
    assert _state(web_store, "+393471234567") == ("allow", "mum", None, True)
    assert _state(web_store, "+390212345678") == ("block", "milano", None, True)
    assert page.errors == []


def test_excel_unicode_text_is_read_and_a_workbook_is_one_line(lists: Any, web_store: store.Store) -> None:
    from playwright.sync_api import expect

    page = lists
    _import(page, "block", "lista.txt", "Numero\tNome\r\n02 1234 5678\tCaffè Rossi\r\n".encode("utf-16"))
    expect(page.locator("p.ok")).to_contain_text("1 entries imported into the block list from lista.txt")
    assert _state(web_store, "+390212345678") == ("block", "Caffè Rossi", None, True)
    page.get_by_role("link", name="Back to the lists").click()
    _import(page, "block", "lista.xlsx", b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)) * 8)
    flash = page.locator(".flash.error")
    expect(flash).to_have_text("lista.xlsx: this is an Excel workbook (.xlsx), not a CSV file. In the spreadsheet, "
                               "save it as “CSV UTF-8” or “Unicode text” and import that file.")
    shot(page, "lists_import_xlsx_en")
    assert page.errors == []


def test_a_preset_fills_in_only_what_is_missing(lists: Any, web_store: store.Store) -> None:
    from playwright.sync_api import expect

    page = lists
    _add(page, "allow", "0844*", "my market research")
    page.locator("form[action='/lists/preset'] select").select_option("it")
    page.get_by_role("button", name="Apply preset").click()
    n = len(PRESETS["it"].entries)
    expect(page.locator(".flash").first).to_have_text(f"Preset applied: {n - 1} added, 1 already had an entry.")
    expect(_row(page, "+390844*").locator("td.label")).to_have_text("my market research")
    assert _state(web_store, "+390844*") == ("allow", "my market research", None, True)
    shot(page, "lists_preset_en")
    assert page.errors == []


def test_the_questions_in_italian(lists: Any, web_store: store.Store) -> None:
    from playwright.sync_api import expect

    page = lists
    page.click("button[lang=it]")
    expect(page.locator("h1")).to_have_text("Liste")
    _add(page, "block", "0*")
    expect(page.locator("p.warning")).to_contain_text("+390* comprende tutti i numeri del +39 che iniziano con 0.")
    shot(page, "lists_confirm_wide_it")
    page.get_by_role("button", name="Aggiungi comunque").click()
    _row(page, "+390*").get_by_role("button", name="Disattiva").click()
    expect(_row(page, "+390*").locator(".badge.off")).to_have_text("disattivato")
    shot(page, "lists_switched_off_it")
    assert page.errors == []
