"""List import and export as CSV, the way people have their lists: any delimiter, with or without a header,
UTF-8 (with or without BOM) or Latin-1. Parsing is pure; a bad row is reported with its line and never stops
the good ones. import_rows() writes parsed rows in short transactions, for the dashboard and the CLI alike.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from screener.rules import Window, format_days, normalize_pattern
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
    done = batches = 0
    longest = 0.0
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        began = clock()
        try:
            with store.write() as s:
                bulk_put(s, list_, chunk, source=source)
        except SQLAlchemyError as e:
            reason = str(e.orig if getattr(e, "orig", None) is not None else e).splitlines()[0]
            return ImportResult(done, len(rows), batches, longest, reason[:300])
        held = clock() - began
        longest = max(longest, held)
        done += len(chunk)
        batches += 1
        if done < len(rows):
            sleep(min(held, 0.1))
    return ImportResult(done, len(rows), batches, longest)


@dataclass(frozen=True)
class ImportReport:
    rows: list[tuple[str, str]]  # (canonical pattern, label), duplicates folded (the last one wins)
    errors: list[tuple[int, str]]  # (line number in the file, reason)


def decode(data: bytes) -> str:
    """Text of an uploaded file: UTF-8 (BOM stripped), else Latin-1, which spreadsheets on Windows write."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


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
    errors: list[tuple[int, str]] = []
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
            try:
                pattern = normalize_pattern(raw, region)
            except ValueError as e:
                errors.append((line, str(e)))
                continue
            found.pop(pattern, None)
            found[pattern] = label[:200]
    except csv.Error as e:
        errors.append((reader.line_num, f"unreadable CSV: {e}"))
    return ImportReport(list(found.items()), errors)


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
