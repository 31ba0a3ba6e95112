"""List import and export as CSV, the way people have their lists: any delimiter, with or without a header,
UTF-8 (with or without BOM), Latin-1 or Excel's "Unicode text" (UTF-16). Parsing is pure; a bad row is reported
with its line and never stops the good ones; a workbook or other binary file is refused in one line.
import_rows() writes parsed rows in short transactions, for the dashboard and the CLI alike.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import phonenumbers

from screener.numbers import national_format, parse_caller
from screener.rules import Window, format_days, normalize_pattern, wide_prefix
from screener.text import strip_bidi

NUMBER_COLUMNS = ("number", "phone", "pattern", "numero", "telefono", "phone number", "phonenumber",
                  "numero di telefono", "tel", "nummer", "rufnummer", "numéro", "caller", "callerid")
LABEL_COLUMNS = ("label", "description", "name", "descrizione", "nome", "etichetta", "comment", "note",
                 "beschreibung", "name/description")
EXPORT_COLUMNS = ("list", "pattern", "label", "days", "from", "to", "source", "hits", "last_hit")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A piece of a cell (the whole cell, or what follows a ";" that a semicolon-splitting spreadsheet, such as
# Excel in Italy, would cut it at) that would run as a formula: it starts with a formula character and is
# not a plain signed number like +390212345678, which no spreadsheet runs and a person must read as it is.
_FORMULA_PIECE = re.compile(r"(^|;)(?=[=+\-@\t\r])(?![+-]\d+(?:[.,]\d+)?(?:;|$))")
_NEUTRALISED_PIECE = re.compile(r"(^|;)'(?=[=+\-@\t\r])")


class ListEntryLike(Protocol):
    list: str
    pattern: str
    label: str
    source: str
    time_from: str | None
    time_to: str | None
    hit_count: int
    last_hit_at: datetime | None

    @property
    def window(self) -> Window | None: ...


IMPORT_BATCH = 200  # rows per transaction: ~5 ms of write lock on SQLite (p99 ~12 ms), see import_rows()


class StoreLike(Protocol):
    def write(self) -> AbstractContextManager[Any]: ...


@dataclass(frozen=True)
class ImportResult:
    """What went in: `imported` of `total` rows, in `batches` committed transactions; `error` says why the
    rest did not when it is not empty (the rows before it stay imported)."""

    imported: int
    total: int
    batches: int
    max_lock_s: float  # the longest a batch held the write transaction
    error: str = ""
    skipped: tuple[str, ...] = ()  # patterns left on the allow list (an import never moves those)


def import_rows(store: StoreLike, list_: str, rows: Sequence[tuple[str, str]], *, source: str,
                batch: int | None = None, clock: Callable[[], float] = time.perf_counter,
                sleep: Callable[[float], None] = time.sleep) -> ImportResult:
    """Put parsed (pattern, label) rows on `list_`, `batch` rows per committed transaction.

    The SIP service writes a row for every call into the same database: on SQLite no transaction may hold
    the write lock for long. After each batch the importer pauses as long as the batch took, so a writer
    queued behind it (SQLite's busy handler polls) finds the lock free instead of losing it to the next batch.
    A database error stops the import; the result says how many rows went in before it.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from screener.store import bulk_put

    batch = batch or IMPORT_BATCH
    done = put = batches = 0
    longest = 0.0
    skipped: list[str] = []
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        began = clock()
        left_out: list[str] = []
        try:
            with store.write() as s:
                n = bulk_put(s, list_, chunk, source=source, skipped=left_out)
        except SQLAlchemyError as e:
            orig = getattr(e, "orig", None)  # the driver's own message, where SQLAlchemy wrapped one
            reason = (str(orig if orig is not None else e).splitlines() or [type(e).__name__])[0]
            return ImportResult(put, len(rows), batches, longest, reason[:300], tuple(skipped))
        held = clock() - began
        longest = max(longest, held)
        done += len(chunk)
        put += n
        skipped += left_out
        batches += 1
        if done < len(rows):
            sleep(min(held, 0.1))
    return ImportResult(put, len(rows), batches, longest, skipped=tuple(skipped))


@dataclass(frozen=True)
class ZeroNote:
    """A number imported with a remark: a spreadsheet probably dropped its leading 0 (`212345678`).

    `kind` "added": imported as `number` (the 0 put back: only that reading is a valid number); "unsure":
    imported as written (`number`), which is not a valid number, with or without the 0.
    """

    kind: str
    written: str
    number: str

    def __str__(self) -> str:
        if self.kind == "added":
            return (f"{self.written} read as {national_format(self.number)}: a spreadsheet had dropped its leading 0"
                    " (format the column as text)")
        return (f"{self.written} is not a valid number, with or without a leading 0: imported as written; "
                "if a spreadsheet dropped its leading 0, write it with the 0 and import it again")


@dataclass(frozen=True)
class ImportReport:
    rows: list[tuple[str, str]]  # (canonical pattern, label), duplicates folded (the last one wins)
    errors: list[tuple[int, str]]  # (line number in the file, reason): rows not imported
    notes: list[tuple[int, ZeroNote]] = field(default_factory=list)  # rows imported with a remark
    lines: dict[str, int] = field(default_factory=dict, compare=False)  # pattern -> its line in the file


class UnreadableFile(ValueError):
    """A file that is no CSV at all: `kind` is "xlsx", "xls", "pdf" or "binary"."""

    MESSAGES = {
        "xlsx": "an Excel workbook (.xlsx) or another zip file, not CSV: save it from the spreadsheet as "
                "\"CSV UTF-8\" or \"Unicode text\" and import that",
        "xls": "an Excel 97-2003 workbook (.xls), not CSV: save it from the spreadsheet as \"CSV UTF-8\" or "
               "\"Unicode text\" and import that",
        "pdf": "a PDF document, not CSV: import a list saved as CSV",
        "binary": "not a text file: import a list saved as CSV",
    }

    def __init__(self, kind: str) -> None:
        super().__init__(self.MESSAGES[kind])
        self.kind = kind


_MAGIC = ((b"PK\x03\x04", "xlsx"), (b"PK\x05\x06", "xlsx"), (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "xls"),
          (b"%PDF", "pdf"))


def decode(data: bytes) -> str:
    """Text of an uploaded file: UTF-16 with a BOM (Excel's "Unicode text") or without one, UTF-8 (BOM
    stripped), else Latin-1, which spreadsheets on Windows write. Raises UnreadableFile for a workbook,
    a PDF or other binary data."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    kind = next((k for magic, k in _MAGIC if data.startswith(magic)), None)
    if kind is not None:
        raise UnreadableFile(kind)
    head = data[:4096]
    if b"\x00" in head:
        # UTF-16 without a BOM: ASCII text has every other byte NUL
        for enc, zeros in (("utf-16-le", head[1::2]), ("utf-16-be", head[0::2])):
            if zeros.count(0) >= len(zeros) * 0.9:
                return data.decode(enc, errors="replace")
        raise UnreadableFile("binary")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _dropped_zero(cell: str, region: str) -> str | ZeroNote | None:
    """For a number written without its leading 0 in a country whose numbers keep it (Italy: 212345678 for
    02 1234 5678): the ZeroNote to import it with, an error when it is ambiguous, None when it is fine."""
    compact = re.sub(r"[\s\-.()/]", "", cell)
    if not compact.isdigit() or compact.startswith("0"):
        return None
    written = parse_caller(compact, region)
    if written.valid:
        return None
    zero = parse_caller("0" + compact, region)
    cc = phonenumbers.country_code_for_region(region)
    if zero.e164 != f"+{cc}0{compact}":
        return None  # this country drops its trunk 0 (France: 612345678 is 0612345678 already)
    if not zero.valid:
        return ZeroNote("unsure", cell, written.e164 or "")
    abroad = parse_caller("+" + compact, region)
    if abroad.valid:
        return (f"{cell} is not a valid number: a spreadsheet dropped its leading 0 ({national_format(zero.e164)})"
                f" or its + ({abroad.e164})? Write it in full and import it again")
    return ZeroNote("added", cell, zero.e164)


def _dialect(sample: str) -> type[csv.Dialect] | csv.Dialect:
    try:
        # blank and comment lines hold no delimiter and make the sniffer give up (then "," is assumed)
        return csv.Sniffer().sniff("\n".join(x for x in sample.splitlines() if x.strip()[:1] not in ("", "#")), ",;\t|")
    except csv.Error:
        return csv.excel


def _header_columns(row: list[str]) -> tuple[int, int | None] | None:
    names = [c.strip().strip("'\"").lower() for c in row]
    num = next((i for i, n in enumerate(names) if n in NUMBER_COLUMNS), None)
    if num is None:
        return None
    label = next((i for i, n in enumerate(names) if n in LABEL_COLUMNS and i != num), None)
    return num, label


def parse_csv(text: str | bytes, region: str) -> ImportReport:
    """Rows of a list file -> canonical (pattern, label) pairs and (line, reason) for each bad row."""
    if isinstance(text, bytes):
        text = decode(text)
    text = text.removeprefix("\ufeff")
    # only " quotes, doubled to escape, as spreadsheets write: the sniffer takes our export's leading ' for a quote
    reader = csv.reader(io.StringIO(text, newline=""), _dialect(text[:4096]), quotechar='"', doublequote=True)
    found: dict[str, str] = {}
    lines: dict[str, int] = {}
    errors: list[tuple[int, str]] = []
    notes: dict[str, tuple[int, ZeroNote]] = {}
    num_col, label_col = 0, 1
    first = True
    try:
        for row in reader:
            line = reader.line_num
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if first:
                first = False
                header = _header_columns(cells)
                if header is not None:
                    num_col, label_col = header  # type: ignore[assignment]
                    continue
            if num_col >= len(cells) or not cells[num_col]:
                errors.append((line, "no number in this row"))
                continue
            raw = cells[num_col].removeprefix("'")  # our own export neutralises cells with a leading '
            label = unneutralise(cells[label_col]) if label_col is not None and label_col < len(cells) else ""
            zero = _dropped_zero(raw, region)
            if isinstance(zero, str):
                errors.append((line, zero))
                continue
            try:
                pattern = normalize_pattern(zero.number if zero and zero.kind == "added" else raw, region)
            except ValueError as e:
                errors.append((line, str(e)))
                continue
            wide = wide_prefix(pattern)
            if wide is not None:
                errors.append((line, f"{pattern} covers {wide}: add it by hand if you mean it"))
                continue
            found.pop(pattern, None)
            found[pattern] = label[:200]
            lines[pattern] = line
            notes.pop(pattern, None)
            if zero is not None:
                notes[pattern] = (line, zero)
    except csv.Error as e:
        errors.append((reader.line_num, f"unreadable CSV: {e}"))
    return ImportReport(list(found.items()), errors, sorted(notes.values(), key=lambda n: n[0]), lines)


def neutralise(cell: object) -> str:
    """A cell as an export writes it: without bidirectional overrides, and with an apostrophe before every
    piece a spreadsheet would run as a formula, at its start and after each ";" (plain numbers stay)."""
    text = "" if cell is None else strip_bidi(str(cell))
    if not text.startswith(_FORMULA_START) and ";" not in text:
        return text
    return _FORMULA_PIECE.sub(r"\1'", text)


def unneutralise(cell: str) -> str:
    """The text neutralise() was given, as far as an import needs it back (labels round-trip)."""
    return _NEUTRALISED_PIECE.sub(r"\1", cell)


def writer(out: io.StringIO) -> Any:
    """A CSV writer that quotes every cell: no spreadsheet guesses a type or a delimiter inside one."""
    return csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_ALL)


def export_csv(rows: Iterable[Iterable[object]]) -> str:
    """CSV text with a header of EXPORT_COLUMNS; every cell quoted and neutralised against formula injection."""
    out = io.StringIO()
    w = writer(out)
    w.writerow(EXPORT_COLUMNS)
    for row in rows:
        w.writerow([neutralise(c) for c in row])
    return out.getvalue()


def entry_row(entry: ListEntryLike) -> tuple[object, ...]:
    """A list entry as one export row, in EXPORT_COLUMNS order."""
    w = entry.window
    last = entry.last_hit_at.isoformat() if entry.last_hit_at else ""
    return (entry.list, entry.pattern, entry.label, format_days(w.days) if w else "",
            entry.time_from or "", entry.time_to or "", entry.source, entry.hit_count, last)
