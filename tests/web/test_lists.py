"""The Lists page: add, edit, delete with undo, presets, CSV import with a per-row report, export, suggestions."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from screener import store
from screener.presets import PRESETS
from screener.rules import make_window
from screener.store import ListEntry


def entry(st: store.Store, pattern: str) -> ListEntry | None:
    with st.read() as s:
        return s.scalar(select(ListEntry).where(ListEntry.pattern == pattern))


def test_add_with_window_edit_delete_undo(auth: Any, web_store: store.Store) -> None:
    r = auth.post("/lists/add", {"list": "block", "pattern": "0844 123*", "label": "sales", "days": "mon-fri",
                                 "time_from": "09:00", "time_to": "20:00"})
    assert r.status_code == 302
    e = entry(web_store, "+390844123*")
    assert e is not None and (e.list, e.label, e.days, e.time_from, e.time_to, e.source) == \
        ("block", "sales", 0b11111, "09:00", "20:00", "dashboard")
    body = auth.get("/lists").get_data(as_text=True)
    assert "+390844123*" in body and "mon-fri 09:00-20:00" in body
    edit = auth.get(f"/lists/{e.id}/edit").get_data(as_text=True)
    assert 'value="mon-fri"' in edit and 'value="sales"' in edit
    auth.post(f"/lists/{e.id}/edit", {"list": "screen", "pattern": "0844 123*", "label": "maybe", "days": "",
                                       "time_from": "", "time_to": ""})
    e = entry(web_store, "+390844123*")
    assert (e.list, e.label, e.days) == ("screen", "maybe", None)
    auth.post(f"/lists/{e.id}/delete")
    assert entry(web_store, "+390844123*") is None
    auth.post("/lists/undo")
    e = entry(web_store, "+390844123*")
    assert e is not None and (e.list, e.label) == ("screen", "maybe")


@pytest.mark.parametrize("form, message", [
    ({"list": "block", "pattern": "hello"}, "not a phone number"),
    ({"list": "block", "pattern": "02*x"}, "not a phone number"),
    ({"list": "nope", "pattern": "0212345678"}, "Choose the allow, block or screen list."),
    ({"list": "block", "pattern": "0212345678", "time_from": "9"}, "needs both from and to"),
    ({"list": "block", "pattern": "0212345678", "time_from": "25:00", "time_to": "26:00"}, "HH:MM"),
])
def test_add_reports_bad_input(auth: Any, web_store: store.Store, form: dict[str, str], message: str) -> None:
    r = auth.post("/lists/add", form, follow_redirects=True)
    assert message in r.get_data(as_text=True)
    with web_store.read() as s:
        assert store.count_entries(s) == 0


def test_edit_to_an_existing_pattern_is_refused(auth: Any, web_store: store.Store) -> None:
    with web_store.write() as s:
        a = store.put_entry(s, "block", "+390212345678")
        store.put_entry(s, "allow", "+390212345679")
        a_id = a.id
    r = auth.post(f"/lists/{a_id}/edit", {"list": "block", "pattern": "+390212345679"}, follow_redirects=True)
    assert "already has an entry" in r.get_data(as_text=True)
    assert entry(web_store, "+390212345679").list == "allow"


@pytest.mark.parametrize("label", ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'])
def test_labels_are_escaped(auth: Any, web_store: store.Store, label: str) -> None:
    auth.post("/lists/add", {"list": "block", "pattern": "0212345678", "label": label})
    body = auth.get("/lists").get_data(as_text=True)
    assert "<script>alert" not in body and "<img src=x" not in body
    assert "&lt;" in body


def test_apply_preset_keeps_user_choices(auth: Any, web_store: store.Store) -> None:
    with web_store.write() as s:
        store.put_entry(s, "allow", "+390844*", label="mine")
    r = auth.post("/lists/preset", {"preset": "it"}, follow_redirects=True)
    n = len(PRESETS["it"].entries)
    assert f"{n - 1} added, 1 already had an entry" in r.get_data(as_text=True)
    assert entry(web_store, "+390844*").list == "allow"
    assert entry(web_store, "class:foreign").source == "preset:it"
    assert auth.post("/lists/preset", {"preset": "nope"}).status_code == 400


def test_csv_import_reports_bad_rows_and_imports_good_ones(auth: Any, web_store: store.Store) -> None:
    data = "numero;descrizione\n02 1234 5678;pizzeria\nnot a number;x\n0844*;sales\n\n+39 347 123 4567;<b>b</b>\n"
    r = auth.post("/lists/import", {"list": "block", "file": (io.BytesIO(data.encode()), "list.csv")},
                  content_type="multipart/form-data")
    body = r.get_data(as_text=True)
    assert r.status_code == 200
    assert "3 entries imported into the block list from list.csv" in body
    assert "1 row was not imported" in body
    assert '<td class="num">3</td>' in body and "not a phone number" in body
    assert entry(web_store, "+390212345678").label == "pizzeria"
    assert entry(web_store, "+393471234567").label == "<b>b</b>"
    assert entry(web_store, "+390844*").source == "csv import"


def _import(auth: Any, data: str) -> Any:
    return auth.post("/lists/import", {"list": "block", "file": (io.BytesIO(data.encode()), "list.csv")},
                     content_type="multipart/form-data")


def test_csv_import_writes_in_short_transactions_after_parsing(auth: Any, web_store: store.Store,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from screener import csvio

    monkeypatch.setattr(csvio, "IMPORT_BATCH", 2)
    begins: list[str] = []
    if web_store.is_sqlite:  # which BEGINs the request sends: IMMEDIATE ones hold the write lock
        event.listen(web_store.engine, "before_cursor_execute",
                     lambda conn, cur, stmt, *a: begins.append(stmt) if stmt.startswith("BEGIN") else None)
    commits: list[int] = []
    event.listen(web_store.engine, "commit", lambda conn: commits.append(1))
    data = "number,label\n" + "".join(f"02 1234 56{i:02d},n{i}\n" for i in range(7)) + "bad,x\n"
    body = _import(auth, data).get_data(as_text=True)
    assert "7 entries imported" in body and "1 row was not imported" in body
    assert len(commits) == 4  # 2 + 2 + 2 + 1 rows, each batch committed on its own
    if web_store.is_sqlite:
        assert begins.count("BEGIN IMMEDIATE") == 4  # the request itself never took the write lock


def test_csv_import_says_how_many_rows_went_in_when_it_stops(auth: Any, web_store: store.Store,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    from screener import csvio

    monkeypatch.setattr(csvio, "IMPORT_BATCH", 2)
    real, calls = store.bulk_put, []

    def failing(*args: Any, **kw: Any) -> int:
        calls.append(1)
        if len(calls) == 2:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real(*args, **kw)

    monkeypatch.setattr(store, "bulk_put", failing)
    body = _import(auth, "number\n" + "".join(f"02 1234 56{i:02d}\n" for i in range(5))).get_data(as_text=True)
    assert "2 entries imported" in body
    assert "The import stopped after 2 of 5 entries: database is locked." in body
    with web_store.read() as s:
        assert len(list(s.scalars(select(ListEntry)))) == 2


def test_csv_import_needs_a_file(auth: Any) -> None:
    r = auth.post("/lists/import", {"list": "block"}, content_type="multipart/form-data", follow_redirects=True)
    assert "Choose a list and a CSV file." in r.get_data(as_text=True)


def test_csv_export_neutralises_formulas(auth: Any, web_store: store.Store) -> None:
    with web_store.write() as s:
        store.put_entry(s, "block", "+390212345678", label="=HYPERLINK(\"http://x\")")
        store.put_entry(s, "allow", "class:withheld", label="@SUM(A1)")
    r = auth.get("/lists/export.csv")
    assert r.mimetype == "text/csv"
    assert "attachment" in r.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(r.get_data(as_text=True))))
    assert rows[0][:3] == ["list", "pattern", "label"]
    cells = [c for row in rows[1:] for c in row]
    assert all(not c.startswith(("=", "+", "-", "@")) for c in cells if c != "+390212345678")
    assert "'=HYPERLINK(\"http://x\")" in cells and "+390212345678" in cells  # a plain number stays readable
    assert r.get_data(as_text=True).startswith('"list","pattern","label"')  # every cell quoted


def test_suggestions_offer_busy_ranges(auth: Any, add_call: Callable[..., int], web_store: store.Store) -> None:
    for i in range(4):
        add_call(f"+39021234{i:04d}", ago=timedelta(days=i))
    add_call("+390299999999", ago=timedelta(days=40))
    body = auth.get("/lists").get_data(as_text=True)
    assert "4 calls from 4 numbers in +390212340* in 30 days" in body
    auth.post("/lists/quick", {"op": "block +390212340*"})
    assert "in +390212340* in 30 days" not in auth.get("/lists").get_data(as_text=True)


def test_list_filter_search_and_pages(auth: Any, web_store: store.Store) -> None:
    with web_store.write() as s:
        store.bulk_put(s, "block", [(f"+3902{i:08d}", f"label {i}") for i in range(150)], source="t")
        store.put_entry(s, "allow", "+393471234567", label="mum")
    body = auth.get("/lists").get_data(as_text=True)
    assert body.count('<td class="pattern">') == 100 and "Next" in body
    body = auth.get("/lists", query_string={"list": "allow"}).get_data(as_text=True)
    assert body.count('<td class="pattern">') == 1 and "mum" in body
    body = auth.get("/lists", query_string={"q": "label 14"}).get_data(as_text=True)
    assert body.count('<td class="pattern">') == 11  # 14, 140-149
    body = auth.get("/lists", query_string={"after": "+390200000099", "list": "block"}).get_data(as_text=True)
    assert body.count('<td class="pattern">') == 50
    assert auth.get("/lists", query_string={"q": "%_'\\"}).status_code == 200
    body = auth.get("/lists", query_string={"q": "02 0000 0012"}).get_data(as_text=True)
    assert body.count('<td class="pattern">') == 1 and "+390200000012" in body  # a number searches patterns
    body = auth.get("/lists", query_string={"q": "02 0000 001"}).get_data(as_text=True)
    assert body.count('<td class="pattern">') == 10


def test_edit_missing_entry_is_404(auth: Any) -> None:
    assert auth.get("/lists/999/edit").status_code == 404
    assert auth.post("/lists/999/delete").status_code == 404


# --- lists never surprise ---------------------------------------------------------------------------------

def _state(st: store.Store, pattern: str) -> tuple[str, str, str | None, bool] | None:
    e = entry(st, pattern)
    return None if e is None else (e.list, e.label, e.time_from, e.enabled)


def test_add_over_another_label_asks_and_keeps_until_confirmed(auth: Any, web_store: store.Store) -> None:
    with web_store.write() as s:
        store.put_entry(s, "allow", "+393471234567", label="mum", window=make_window("mon-fri", "09:00", "18:00"))
    form = {"list": "block", "pattern": "347 123 4567", "label": "pest", "next": "/lists?list=block"}
    r = auth.post("/lists/add", form)
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and "is already on the allow list as “mum”, mon-fri 09:00-18:00." in body
    # the page posts the form again with the user's answer and everything typed
    assert 'name="existing" value="replace"' in body and 'name="existing" value="keep"' in body
    assert 'name="label" value="pest"' in body and 'name="next" value="/lists?list=block"' in body
    assert _state(web_store, "+393471234567") == ("allow", "mum", "09:00", True)  # nothing changed yet

    r = auth.post("/lists/add", {**form, "existing": "keep"}, follow_redirects=True)
    body = r.get_data(as_text=True)
    assert "+393471234567 moved from the allow list to the block list." in body
    assert "It keeps its label and time window." in body
    assert _state(web_store, "+393471234567") == ("block", "mum", "09:00", True)

    auth.post("/lists/undo")
    assert _state(web_store, "+393471234567") == ("allow", "mum", "09:00", True)
    r = auth.post("/lists/add", {**form, "existing": "replace"}, follow_redirects=True)
    assert "It keeps its label" not in r.get_data(as_text=True)
    assert _state(web_store, "+393471234567") == ("block", "pest", None, True)


def test_add_of_a_pattern_elsewhere_says_so_and_keeps_label(auth: Any, web_store: store.Store) -> None:
    with web_store.write() as s:
        store.put_entry(s, "screen", "+390212345678", label="plumber")
    r = auth.post("/lists/add", {"list": "block", "pattern": "02 1234 5678"}, follow_redirects=True)
    body = r.get_data(as_text=True)
    assert "+390212345678 moved from the screen list to the block list." in body
    assert _state(web_store, "+390212345678") == ("block", "plumber", None, True)


def test_quick_block_keeps_label_and_window(auth: Any, web_store: store.Store) -> None:
    with web_store.write() as s:
        store.put_entry(s, "allow", "+390212345678", label="school", window=make_window("mon-fri", "8:00", "9:00"))
    r = auth.post("/lists/quick", {"op": "block +390212345678"}, follow_redirects=True)
    assert "moved from the allow list to the block list" in r.get_data(as_text=True)
    assert _state(web_store, "+390212345678") == ("block", "school", "08:00", True)


@pytest.mark.parametrize(("pattern", "canonical", "covers"), [
    ("+39*", "+39*", "every number of +39"),
    ("0*", "+390*", "every number of +39 starting with 0"),
    ("+393*", "+393*", "every number of +39 starting with 3"),
])
def test_a_wide_prefix_needs_a_confirmation(auth: Any, web_store: store.Store, pattern: str, canonical: str,
                                            covers: str) -> None:
    form = {"list": "block", "pattern": pattern}
    body = auth.post("/lists/add", form).get_data(as_text=True)
    assert f"{canonical} covers {covers}." in body and 'name="force" value="1"' in body
    assert entry(web_store, canonical) is None
    auth.post("/lists/add", {**form, "force": "1"})
    assert _state(web_store, canonical) == ("block", "", None, True)


def test_a_narrow_prefix_needs_no_confirmation(auth: Any, web_store: store.Store) -> None:
    assert auth.post("/lists/add", {"list": "block", "pattern": "347*"}).status_code == 302
    assert entry(web_store, "+39347*") is not None


def test_editing_to_a_wide_prefix_needs_a_confirmation(auth: Any, web_store: store.Store) -> None:
    with web_store.write() as s:
        entry_id = store.put_entry(s, "block", "+39347*").id
    form = {"list": "block", "pattern": "+393*"}
    body = auth.post(f"/lists/{entry_id}/edit", form).get_data(as_text=True)
    assert "+393* covers every number of +39 starting with 3." in body
    assert f'action="/lists/{entry_id}/edit"' in body
    assert entry(web_store, "+393*") is None
    auth.post(f"/lists/{entry_id}/edit", {**form, "force": "1"})
    assert entry(web_store, "+393*") is not None


def test_quick_refuses_a_wide_prefix(auth: Any, web_store: store.Store) -> None:
    r = auth.post("/lists/quick", {"op": "block +39*"}, follow_redirects=True)
    assert "+39* covers every number of +39: add it on the Lists page if you mean it." in r.get_data(as_text=True)
    assert entry(web_store, "+39*") is None


def test_switch_off_and_on_with_undo(auth: Any, web_store: store.Store) -> None:
    with web_store.write() as s:
        entry_id = store.put_entry(s, "block", "+390212345678", label="pest").id
    r = auth.post(f"/lists/{entry_id}/switch", follow_redirects=True)
    body = r.get_data(as_text=True)
    assert "Switched off: +390212345678. It stays on the list and decides no call." in body
    assert '<tr class="off">' in body and ">Switch on<" in body
    assert _state(web_store, "+390212345678") == ("block", "pest", None, False)
    with web_store.read() as s:
        assert store.count_entries(s) == 1
    auth.post("/lists/undo")
    assert _state(web_store, "+390212345678") == ("block", "pest", None, True)
    auth.post(f"/lists/{entry_id}/switch")
    r = auth.post(f"/lists/{entry_id}/switch", follow_redirects=True)
    assert "Switched on: +390212345678." in r.get_data(as_text=True)
    assert auth.post("/lists/999/switch").status_code == 404


def test_adding_a_switched_off_entry_switches_it_on(auth: Any, web_store: store.Store) -> None:
    with web_store.write() as s:
        store.put_entry(s, "block", "+390212345678", label="pest")
        store.set_enabled(s, "+390212345678", False)
    r = auth.post("/lists/add", {"list": "block", "pattern": "0212345678"}, follow_redirects=True)
    assert "It was switched off; it is on again." in r.get_data(as_text=True)
    assert _state(web_store, "+390212345678") == ("block", "pest", None, True)


def test_import_never_moves_an_allowed_number(auth: Any, web_store: store.Store) -> None:
    with web_store.write() as s:
        store.put_entry(s, "allow", "+393471234567", label="mum")
    body = _import(auth, "number,label\n0212345678,spam\n347 123 4567,spam\nnonsense,x\n").get_data(as_text=True)
    assert "1 entries imported into the block list" in body
    assert "1 number is on the allow list and stays there" in body
    assert '<td class="num">3</td><td>+393471234567</td>' in body
    assert "1 row was not imported" in body and '<td class="num">4</td>' in body
    assert _state(web_store, "+393471234567") == ("allow", "mum", None, True)


def test_import_flags_a_dropped_leading_zero(auth: Any, web_store: store.Store) -> None:
    body = _import(auth, "212345678;Milano\n4930123456;?\n").get_data(as_text=True)
    assert "1 row was imported; check it:" in body
    assert "212345678 was read as 02 1234 5678: a spreadsheet had dropped its leading 0" in body
    assert "1 row was not imported" in body and "or its + (+4930123456)?" in body
    assert entry(web_store, "+390212345678") is not None and entry(web_store, "+39212345678") is None


def test_import_of_excel_unicode_text(auth: Any, web_store: store.Store) -> None:
    data = "Numero\tNome\r\n02 1234 5678\tCaffè\r\n".encode("utf-16")
    r = auth.post("/lists/import", {"list": "block", "file": (io.BytesIO(data), "lista.txt")},
                  content_type="multipart/form-data")
    assert "1 entries imported" in r.get_data(as_text=True)
    assert _state(web_store, "+390212345678") == ("block", "Caffè", None, True)


def test_import_of_a_workbook_is_one_clear_line(auth: Any, web_store: store.Store) -> None:
    data = b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256))
    r = auth.post("/lists/import", {"list": "block", "file": (io.BytesIO(data), "lista.xlsx")},
                  content_type="multipart/form-data", follow_redirects=True)
    body = r.get_data(as_text=True)
    assert "lista.xlsx: this is an Excel workbook (.xlsx), not a CSV file." in body
    # none of the file's bytes shown (a random CSRF token may well contain "PK": look for the file's own runs)
    assert "\\x" not in body and "PK\x03" not in body and "PK\\x03" not in body and "\x14\x00" not in body
    with web_store.read() as s:
        assert store.count_entries(s) == 0


def test_preset_from_the_dashboard_uses_the_shared_implementation(auth: Any, web_store: store.Store) -> None:
    auth.post("/lists/preset", {"preset": "it"})
    with web_store.write() as s:
        store.remove_entry(s, "+390844*")
    r = auth.post("/lists/preset", {"preset": "it"}, follow_redirects=True)
    n = len(PRESETS["it"].entries)
    # applying again on purpose fills in what is missing, and nothing else
    assert f"1 added, {n - 1} already had an entry" in r.get_data(as_text=True)
    with web_store.read() as s:
        assert s.scalar(select(store.AppliedPreset.name)) == "it"
