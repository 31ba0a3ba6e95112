"""List files as people have them: any delimiter, header or not, UTF-8 or Latin-1; and our own export."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from screener import store
from screener.csvio import (
    EXPORT_COLUMNS,
    IMPORT_BATCH,
    UnreadableFile,
    ZeroNote,
    decode,
    entry_row,
    export_csv,
    import_rows,
    neutralise,
    parse_csv,
)
from screener.rules import Window, make_window

MILAN, ROME_FIX, MOBILE, FR = "+390212345678", "+390612345678", "+393471234567", "+33142685300"


def _not_a_number(text: str) -> str:
    return ("not a phone number, prefix (digits then *) or class (withheld, invalid, foreign, premium_rate, "
            f"toll_free, shared_cost, mobile, fixed_line, voip, personal_number): {text!r}")


def _bad_prefix(text: str) -> str:
    return f"a prefix must be digits followed by *, got {text!r}"


# file content (str or bytes), rows, errors
PARSE = [
    # header: the number column by name, in any case, the label column anywhere
    pytest.param("number,label\n0212345678,Rossi\n", [(MILAN, "Rossi")], [], id="header-number-label"),
    pytest.param("Phone,Description\n0212345678,Rossi\n", [(MILAN, "Rossi")], [], id="header-phone-description"),
    pytest.param("PATTERN,NAME\n0844*,telemarketing\n", [("+390844*", "telemarketing")], [],
                 id="header-pattern-name-upper"),
    pytest.param("Numero;Nome\n0212345678;Rossi\n", [(MILAN, "Rossi")], [], id="header-numero-nome"),
    pytest.param("Nome;Telefono\nRossi;0212345678\n", [(MILAN, "Rossi")], [], id="header-label-first"),
    pytest.param("id,nome,note,TELEFONO\n1,Rossi,x,0212345678\n2,Bianchi,y,3471234567\n",
                 [(MILAN, "Rossi"), (MOBILE, "Bianchi")], [], id="header-number-last-label-middle"),
    pytest.param("telefono\n0212345678\n3471234567\n", [(MILAN, ""), (MOBILE, "")], [], id="header-number-only"),
    pytest.param("numero,città\n0212345678,Milano\n", [(MILAN, "")], [], id="header-unknown-label-column"),
    # no header: number first, label second
    pytest.param("0212345678,Rossi\n3471234567,Bianchi\n", [(MILAN, "Rossi"), (MOBILE, "Bianchi")], [],
                 id="no-header-comma"),
    pytest.param("0212345678;Rossi\n3471234567;Bianchi\n", [(MILAN, "Rossi"), (MOBILE, "Bianchi")], [],
                 id="no-header-semicolon"),
    pytest.param("0212345678\tRossi\n3471234567\tBianchi\n", [(MILAN, "Rossi"), (MOBILE, "Bianchi")], [],
                 id="no-header-tab"),
    pytest.param("number\tlabel\n+39 02 1234 5678\tRossi\n", [(MILAN, "Rossi")], [], id="header-tab"),
    pytest.param("0212345678|Rossi\n", [(MILAN, "Rossi")], [], id="no-header-pipe"),
    pytest.param("0212345678,Rossi,extra,cells\n", [(MILAN, "Rossi")], [], id="extra-columns"),
    # encodings and line ends
    pytest.param("\ufeffnumero;nome\n0212345678;Rossi\n", [(MILAN, "Rossi")], [], id="bom-str"),
    pytest.param("\ufeffnumero;nome\r\n0212345678;Università\r\n".encode(), [(MILAN, "Università")], [],
                 id="bom-utf8-bytes"),
    pytest.param("numero;nome\r\n0212345678;Caffè Perù\r\n3471234567;Società «Ok»\r\n".encode("cp1252"),
                 [(MILAN, "Caffè Perù"), (MOBILE, "Società «Ok»")], [], id="cp1252-bytes"),
    pytest.param("0212345678,Università\n".encode(), [(MILAN, "Università")], [], id="utf8-no-bom"),
    pytest.param("number,label\r\n0212345678,Rossi\r\n3471234567,Bianchi\r\n",
                 [(MILAN, "Rossi"), (MOBILE, "Bianchi")], [], id="crlf"),
    # blank lines and comments
    pytest.param("# my block list\n\nnumber,label\n\n0212345678,Rossi\n# Bianchi moved\n\n3471234567,Bianchi\n",
                 [(MILAN, "Rossi"), (MOBILE, "Bianchi")], [], id="comments-and-blank-lines-comma"),
    pytest.param("# lista\r\nnumero;nome\r\n0212345678;Rossi\r\n\r\n# commento\r\n3471234567;Bianchi\r\n",
                 [(MILAN, "Rossi"), (MOBILE, "Bianchi")], [], id="comments-and-blank-lines-semicolon"),
    pytest.param("# lista\n0212345678;Rossi\n3471234567;Bianchi\n",
                 [(MILAN, "Rossi"), (MOBILE, "Bianchi")], [], id="comment-then-semicolon-rows"),
    pytest.param("0212345678\t#1 client\n", [(MILAN, "#1 client")], [], id="hash-in-label-is-kept"),
    # quoting
    pytest.param('"0212345678","Rossi, Mario"\n"3471234567","Bianchi, Anna"\n',
                 [(MILAN, "Rossi, Mario"), (MOBILE, "Bianchi, Anna")], [], id="quoted-comma"),
    pytest.param('numero;nome\n0212345678;"Rossi; Mario"\n3471234567;"Verdi ""il Conte"""\n',
                 [(MILAN, "Rossi; Mario"), (MOBILE, 'Verdi "il Conte"')], [], id="quoted-semicolon-and-quotes"),
    pytest.param("".join(f"0212{i:06d},\"Rossi {i}\"\n" for i in range(300)) + '0612345678,"Verdi ""il Conte"""\n',
                 [(f"+390212{i:06d}", f"Rossi {i}") for i in range(300)] + [(ROME_FIX, 'Verdi "il Conte"')], [],
                 id="doubled-quote-beyond-the-sniffed-sample"),
    # bad rows: reported with the physical line, good rows kept
    pytest.param("0212345678,Rossi\nabc,bad\n3471234567,Bianchi\n12a*,bad prefix\n",
                 [(MILAN, "Rossi"), (MOBILE, "Bianchi")], [(2, _not_a_number("abc")), (4, _bad_prefix("12a*"))],
                 id="bad-rows-no-header"),
    pytest.param("\n\nnumber,label\n\nabc,x\n0212345678,y\n\n\n*,z\n",
                 [(MILAN, "y")], [(5, _not_a_number("abc")), (9, _bad_prefix("*"))],
                 id="bad-rows-after-blank-lines-and-header"),
    pytest.param("numero;nome\r\n\r\n0212345678;Rossi\r\n;senza numero\r\n3471234567;Bianchi\r\n",
                 [(MILAN, "Rossi"), (MOBILE, "Bianchi")], [(4, "no number in this row")], id="empty-number-cell"),
    pytest.param("nome,numero\nRossi,0212345678\nBianchi\n", [(MILAN, "Rossi")], [(3, "no number in this row")],
                 id="short-row"),
    pytest.param('number,label\n0212345678,"Rossi\nMario"\nxyz,after\n', [(MILAN, "Rossi\nMario")],
                 [(4, _not_a_number("xyz"))], id="multi-line-cell-counts-physical-lines"),
    # duplicates fold, the last one wins
    pytest.param("number,label\n0212345678,first\n3471234567,Bianchi\n+39 02 1234 5678,second\n",
                 [(MOBILE, "Bianchi"), (MILAN, "second")], [], id="duplicates-last-wins"),
    # our export neutralises cells with a leading apostrophe
    pytest.param("pattern,label\n'+390212345678,'=Rossi\n'@1*,x\n'-0844*,'-\n",
                 [(MILAN, "=Rossi"), ("+390844*", "-")], [(3, _bad_prefix("@1*"))], id="leading-apostrophe"),
    # a typical spreadsheet export, and a plain list
    pytest.param('"Numero";"Nome"\r\n"+39 02 1234567";"Rossi"\r\n', [("+39021234567", "Rossi")], [],
                 id="spreadsheet-export"),
    pytest.param("0212345678\n+39 06 1234 5678\n0033142685300\n0844*\n",
                 [(MILAN, ""), (ROME_FIX, ""), (FR, ""), ("+390844*", "")], [], id="plain-list"),
    pytest.param("0212345678\n", [(MILAN, "")], [], id="one-number"),
    pytest.param("class:foreign,foreigners\nWITHHELD,hidden\n", [("class:foreign", "foreigners"),
                                                                 ("class:withheld", "hidden")], [], id="classes"),
    pytest.param("", [], [], id="empty-file"),
    pytest.param("\n\n# nothing here\n", [], [], id="only-comments"),
]


@pytest.mark.parametrize(("text", "rows", "errors"), PARSE)
def test_parse_csv(text: str | bytes, rows: list[tuple[str, str]], errors: list[tuple[int, str]]) -> None:
    report = parse_csv(text, "IT")
    assert report.rows == rows
    assert report.errors == errors


def test_parse_csv_uses_the_region_for_national_numbers() -> None:
    assert parse_csv("0162*,ARCEP\n0142685300,Paris\n", "FR").rows == [("+33162*", "ARCEP"), (FR, "Paris")]


def test_long_labels_are_cut_to_the_column_size() -> None:
    assert parse_csv("0212345678," + "x" * 300 + "\n", "IT").rows == [(MILAN, "x" * 200)]


@pytest.mark.parametrize(("data", "text"), [
    (b"\xef\xbb\xbfnumero", "numero"),
    ("Università".encode(), "Università"),
    ("Università".encode("cp1252"), "Università"),
    (b"caff\xe8 \x80", "caffè €"),
    # Excel's "Unicode text": UTF-16 little-endian with a BOM; and the same without one, and big-endian
    ("numero\tnome\r\nCaffè\r\n".encode("utf-16"), "numero\tnome\r\nCaffè\r\n"),
    ("numero\tnome".encode("utf-16-le"), "numero\tnome"),
    ("numero\tnome".encode("utf-16-be"), "numero\tnome"),
    (b"\xfe\xff" + "€".encode("utf-16-be"), "€"),
])
def test_decode(data: bytes, text: str) -> None:
    assert decode(data) == text


@pytest.mark.parametrize(("data", "kind"), [
    (b"PK\x03\x04\x14\x00\x06\x00\x08\x00[Content_Types].xml", "xlsx"),
    (b"PK\x05\x06" + b"\x00" * 18, "xlsx"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, "xls"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3", "pdf"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00", "binary"),
])
def test_a_file_that_is_no_csv_is_one_line(data: bytes, kind: str) -> None:
    with pytest.raises(UnreadableFile) as e:
        parse_csv(data, "IT")
    assert e.value.kind == kind and "\n" not in str(e.value) and "\\x" not in str(e.value)


def test_excel_unicode_text_is_read() -> None:
    data = "Numero\tNome\r\n02 1234 5678\tCaffè Rossi\r\n347 123 4567\tBianchi\r\n".encode("utf-16")
    report = parse_csv(data, "IT")
    assert (report.rows, report.errors) == ([(MILAN, "Caffè Rossi"), (MOBILE, "Bianchi")], [])
    assert report.lines == {MILAN: 2, MOBILE: 3}


# a cell, the region, the row imported (None: not imported), the note or error
ZEROS = [
    pytest.param("212345678", "IT", MILAN, ZeroNote("added", "212345678", MILAN), id="milan-without-0"),
    pytest.param("6 1234 5678", "IT", ROME_FIX, ZeroNote("added", "6 1234 5678", ROME_FIX), id="rome-spaced"),
    pytest.param("4930123456", "IT", None, "4930123456 is not a valid number: a spreadsheet dropped its leading 0 "
                 "(049 3012 3456) or its + (+4930123456)? Write it in full and import it again",
                 id="padova-or-berlin"),
    pytest.param("844123456", "IT", "+39844123456", ZeroNote("unsure", "844123456", "+39844123456"),
                 id="invalid-either-way"),
    pytest.param("3471234567", "IT", MOBILE, None, id="mobile-is-fine"),
    pytest.param("0212345678", "IT", MILAN, None, id="with-0-is-fine"),
    pytest.param("390212345678", "IT", MILAN, None, id="country-code-without-plus"),
    pytest.param("+39212345678", "IT", "+39212345678", None, id="written-with-plus-is-as-written"),
    pytest.param("612345678", "FR", "+33612345678", None, id="france-drops-its-0-anyway"),
]


@pytest.mark.parametrize(("cell", "region", "row", "remark"), ZEROS)
def test_a_dropped_leading_zero_is_flagged(cell: str, region: str, row: str | None, remark: object) -> None:
    report = parse_csv(f"number,label\n{cell},x\n", region)
    assert report.rows == ([(row, "x")] if row else [])
    if isinstance(remark, str):
        assert (report.errors, report.notes) == ([(2, remark)], [])
    else:
        assert (report.errors, report.notes) == ([], [(2, remark)] if remark else [])


def test_zero_notes_in_words() -> None:
    assert str(ZeroNote("added", "212345678", MILAN)) == (
        "212345678 read as 02 1234 5678: a spreadsheet had dropped its leading 0 (format the column as text)")
    assert str(ZeroNote("unsure", "844123456", "+39844123456")).startswith(
        "844123456 is not a valid number, with or without a leading 0: imported as written")


@pytest.mark.parametrize(("cell", "covers"), [("+39*", "every number of +39"), ("0*", "every number of +39 "
                                              "starting with 0"), ("+393*", "every number of +39 starting with 3")])
def test_a_prefix_for_a_whole_country_is_not_imported(cell: str, covers: str) -> None:
    report = parse_csv(f"{cell},all\n0844*,tm\n", "IT")
    pattern = cell if cell.startswith("+") else "+390*"
    assert report.rows == [("+390844*", "tm")]
    assert report.errors == [(1, f"{pattern} covers {covers}: add it by hand if you mean it")]


def test_lines_follow_the_last_duplicate() -> None:
    report = parse_csv("number\n0212345678\n3471234567\n02 1234 5678\n", "IT")
    assert report.lines == {MILAN: 4, MOBILE: 3}


# --- export ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("cell", "text"), [
    ("=SUM(A1)", "'=SUM(A1)"),
    ("+390212345678", "+390212345678"),  # a plain number runs nothing and must stay readable
    ("-1", "-1"),
    ("+39 02 1234", "'+39 02 1234"),
    ("+390844*", "'+390844*"),
    ("-2+3", "'-2+3"),
    ("Rossi;=cmd|' /C calc'!A0", "Rossi;'=cmd|' /C calc'!A0"),  # what a ";"-splitting spreadsheet would cut off
    ("a;+1+1;-x;@y;\tz", "a;'+1+1;'-x;'@y;'\tz"),
    ("=a;=b", "'=a;'=b"),
    ("a;+390212345678;b", "a;+390212345678;b"),
    ("a; =b", "a; =b"),
    ("Rossi; Mario", "Rossi; Mario"),
    ("\u202eRossi\u2066", "Rossi"),
    ("@cmd", "'@cmd"),
    ("\tx", "'\tx"),
    ("\rx", "'\rx"),
    ("class:foreign", "class:foreign"),
    ("Rossi", "Rossi"),
    ("a=b", "a=b"),
    (" =x", " =x"),
    ("'quoted", "'quoted"),
    ("", ""),
    (None, ""),
    (0, "0"),
    (12, "12"),
])
def test_neutralise(cell: object, text: str) -> None:
    assert neutralise(cell) == text


@dataclass
class FakeEntry:
    list: str
    pattern: str
    label: str = ""
    source: str = "user"
    window: Window | None = None
    hit_count: int = 0
    last_hit_at: datetime | None = None

    @property
    def time_from(self) -> str | None:
        return f"{self.window.start:%H:%M}" if self.window else None

    @property
    def time_to(self) -> str | None:
        return f"{self.window.end:%H:%M}" if self.window else None


ENTRIES = [
    FakeEntry("block", "+390212345678", "=HYPERLINK(\"http://x\")", window=make_window("mon-fri", "09:00", "18:00"),
              hit_count=3, last_hit_at=datetime(2026, 3, 4, 11, 0, tzinfo=UTC)),
    FakeEntry("allow", "+393471234567", "-Bianchi, Anna"),
    FakeEntry("screen", "class:foreign", "@foreign", source="preset:it"),
    FakeEntry("block", "+390844*", "l'amico \"caro\""),
    FakeEntry("block", "+39899*", "\tpremium"),
    FakeEntry("screen", "+33612*", "+France;=1+1"),
]


def test_entry_row() -> None:
    assert entry_row(ENTRIES[0]) == ("block", "+390212345678", "=HYPERLINK(\"http://x\")", "mon-fri", "09:00",
                                     "18:00", "user", 3, "2026-03-04T11:00:00+00:00")
    assert entry_row(ENTRIES[1]) == ("allow", "+393471234567", "-Bianchi, Anna", "", "", "", "user", 0, "")


def test_export_csv_neutralises_every_cell() -> None:
    text = export_csv(entry_row(e) for e in ENTRIES)
    assert text.startswith('"list","pattern","label","days","from","to","source","hits","last_hit"\r\n')
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    assert rows[1] == ["block", "+390212345678", "'=HYPERLINK(\"http://x\")", "mon-fri", "09:00", "18:00", "user",
                       "3", "2026-03-04T11:00:00+00:00"]
    assert rows[2][:3] == ["allow", "+393471234567", "'-Bianchi, Anna"]
    assert rows[3][:3] == ["screen", "class:foreign", "'@foreign"]
    assert rows[5][2] == "'\tpremium"
    assert rows[4][1] == "'+390844*" and rows[6][2] == "'+France;'=1+1"
    assert all(re.fullmatch(r"[+-]\d+", piece) or not piece.startswith(("=", "+", "-", "@", "\t", "\r"))
               for row in rows for cell in row for piece in cell.split(";"))
    assert all(line.startswith('"') and line.endswith('"') for line in text.splitlines())  # every cell quoted


def test_export_then_import_keeps_patterns_and_labels() -> None:
    text = export_csv(entry_row(e) for e in ENTRIES)
    report = parse_csv(text, "IT")
    assert report.errors == []
    assert report.rows == [(e.pattern, e.label) for e in ENTRIES]
    assert parse_csv(text.encode("utf-8"), "IT") == report


def test_export_of_nothing_is_the_header() -> None:
    assert export_csv([]) == ",".join(f'"{c}"' for c in EXPORT_COLUMNS) + "\r\n"
    assert parse_csv(export_csv([]), "IT").rows == []


# --- import in batches ----------------------------------------------------------------------------------


class FailingStore:
    """A store whose `fail_at`-th write transaction fails, as a full disk or a dropped connection would."""

    def __init__(self, real: store.Store, fail_at: int) -> None:
        self.real, self.fail_at, self.writes = real, fail_at, 0

    @contextmanager
    def write(self) -> Iterator[object]:
        self.writes += 1
        if self.writes == self.fail_at:
            raise OperationalError("INSERT", {}, Exception("database or disk is full"))
        with self.real.write() as s:
            yield s


def _rows(n: int) -> list[tuple[str, str]]:
    return [(f"+3902{i:08d}", f"label {i}") for i in range(n)]


@pytest.mark.parametrize(("n", "batch", "batches"), [(0, 3, 0), (1, 3, 1), (6, 3, 2), (7, 3, 3),
                                                     (IMPORT_BATCH + 1, None, 2)])
def test_import_rows_commits_each_batch_on_its_own(st: store.Store, n: int, batch: int | None,
                                                   batches: int) -> None:
    commits: list[int] = []
    event.listen(st.engine, "commit", lambda conn: commits.append(1))
    pauses: list[float] = []
    result = import_rows(st, "block", _rows(n), source="t", batch=batch, sleep=pauses.append)
    assert (result.imported, result.total, result.batches, result.error) == (n, n, batches, "")
    assert len(commits) == batches and len(pauses) == max(batches - 1, 0)
    assert all(0 <= p <= 0.1 for p in pauses) and result.max_lock_s >= max(pauses, default=0)
    with st.read() as s:
        assert s.scalar(select(func.count()).select_from(store.ListEntry)) == n


def test_import_rows_leaves_allowed_numbers_and_says_which(st: store.Store) -> None:
    with st.write() as s:
        store.put_entry(s, "allow", "+390200000003", label="mum")
        store.put_entry(s, "allow", "+390200000007")
    rows = [(f"+3902{i:08d}", "spam") for i in range(10)]
    result = import_rows(st, "block", rows, source="t", batch=4, sleep=lambda s: None)
    assert (result.imported, result.total, result.skipped) == (8, 10, ("+390200000003", "+390200000007"))
    with st.read() as s:
        lists = dict(s.execute(select(store.ListEntry.pattern, store.ListEntry.list)).all())
    assert lists["+390200000003"] == lists["+390200000007"] == "allow" and list(lists.values()).count("block") == 8


def test_import_rows_reports_how_far_it_got_when_the_database_fails(st: store.Store) -> None:
    result = import_rows(FailingStore(st, fail_at=3), "block", _rows(10), source="t", batch=4,
                         sleep=lambda s: None)
    assert (result.imported, result.total, result.batches) == (8, 10, 2)
    assert result.error == "database or disk is full"
    with st.read() as s:
        assert s.scalar(select(func.count()).select_from(store.ListEntry)) == 8
