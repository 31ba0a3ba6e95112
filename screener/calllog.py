"""The call rows, written off the SIP reply path: a journal file, one writer thread, the database when it can.

Every change to a call row is appended to a journal file by the call's own thread (a few microseconds: no
lock but the journal's, no database) and handed to one writer thread, which applies it with a short lock
wait. A database that cannot take it (another writer holding SQLite's lock, PostgreSQL down) puts the writer
in backlog mode: it keeps the journal and applies it, in order, once the database answers again. The journal
is emptied whenever everything in it is in the database. So a SIP reply never waits for a write, and a
process killed at any moment loses no row whose change reached the journal: the next run starts in backlog
mode, applies what the journal still holds (idempotently), then marks the rows the dead run left open
`interrupted`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, event, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from screener import store

log = logging.getLogger("screener.calllog")

LOCK_WAIT_S = 0.2  # how long one write may wait for SQLite's write lock before the writer backs off
RETRY_S = 1.0  # how often a backlog is tried again
BATCH = 200  # journal entries applied per transaction when catching up


@dataclass
class Row:
    """A call row as its call's thread knows it; `id` is set by the writer once the row is in the database."""

    match: dict[str, Any]  # call_id and started_at: what finds the row again after a restart
    id: int | None = None
    values: dict[str, Any] = field(default_factory=dict, repr=False)  # as opened (for the notifications)


@dataclass
class _Op:
    seq: int
    kind: str  # "open", "close", "allow" (a list entry: allow or block)
    row: Row | None
    values: dict[str, Any] = field(default_factory=dict)


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    raise TypeError(f"cannot journal {type(value).__name__}")


def _decode(obj: dict[str, Any]) -> Any:
    return datetime.fromisoformat(obj["$dt"]) if set(obj) == {"$dt"} else obj


class CallLog:
    """Journal + writer thread for the call rows (and the verified callers' allow entries)."""

    def __init__(self, db: store.Store, journal: Path, *, started: datetime | None = None) -> None:
        self.journal_path = journal
        self.started = started or store.utcnow()
        self.recovered: tuple[int, int] | None = None  # (journal entries, rows interrupted) once recovered
        # an engine of its own: its connection waits LOCK_WAIT_S for SQLite's lock, not the store's 10 s
        self._store = store.Store(db.url)
        if self._store.is_sqlite:
            event.listen(self._store.engine, "connect", _short_lock_wait)
        self._engine = self._store.engine.execution_options(sqlite_immediate=True)  # writers queue (see store)
        self._conn: Connection | None = None
        self._q: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._jlock = threading.Lock()  # journal appends and truncation; also orders queue puts
        self._journal: Any = None
        self._last_seq = max((op.seq for op in read_journal(journal)), default=0)
        self._backlog = True  # the first catch-up recovers what an earlier run left
        self._caught_up_to = 0  # seq of the last journal entry applied by a catch-up
        self._pending = 0  # ops put and not yet done with
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        calls, entries = cast(Table, store.Call.__table__), cast(Table, store.ListEntry.__table__)
        # built once: SQLAlchemy then only looks their compiled form up in its cache
        self._insert = insert(calls)
        self._update = update(calls).where(calls.c.id == bindparam("row_id"))
        self._update_match = update(calls).where(and_(calls.c.call_id == bindparam("m_call_id"),
                                                      calls.c.started_at == bindparam("m_started_at")))
        self._find = select(calls.c.id).where(and_(calls.c.call_id == bindparam("m_call_id"),
                                                   calls.c.started_at == bindparam("m_started_at")))
        self._hit = (update(entries).where(entries.c.id == bindparam("entry_id"))
                     .values(hit_count=entries.c.hit_count + 1, last_hit_at=bindparam("when")))

    # -- the calls' side: never blocks on the database --

    def open(self, values: dict[str, Any]) -> Row:
        """Journal a new row (values of store.Call); returns its handle for close()."""
        row = Row({"m_call_id": values.get("call_id", ""), "m_started_at": values["started_at"]}, values=values)
        self._put(_Op(0, "open", row, values))
        return row

    def close(self, row: Row, values: dict[str, Any], hit: tuple[int, datetime] | None = None) -> None:
        """Journal the completion of a row and, when a rule decided the call, the hit on that rule."""
        extra = {"$hit": [hit[0], hit[1]]} if hit is not None else {}
        self._put(_Op(0, "close", row, {**values, **extra}))

    def allow(self, e164: str, label: str) -> None:
        """Journal a verified caller for the allow list (written by the writer like the rows)."""
        self.put_entry("allow", e164, label, "verified")

    def put_entry(self, list_: str, e164: str, label: str, source: str) -> None:
        """Journal a number for a list, moving it from another (a caller verified, one the household blocked)."""
        self._put(_Op(0, "allow", None, {"e164": e164, "label": label, "list": list_, "source": source}))

    def _put(self, op: _Op) -> None:
        line = self._line(op)
        with self._jlock:
            self._last_seq += 1
            op.seq = self._last_seq
            try:
                if self._journal is None:
                    self.journal_path.parent.mkdir(parents=True, exist_ok=True)
                    self._journal = open(self.journal_path, "a", encoding="utf-8")  # noqa: SIM115
                self._journal.write(f"{op.seq}\t{line}\n")
                self._journal.flush()  # in the kernel: survives a kill -9 of this process
            except OSError as e:
                log.error("screener: cannot write the call journal %s: %s", self.journal_path, e)
            with self._idle:
                self._pending += 1
            self._q.put(op)

    @staticmethod
    def _line(op: _Op) -> str:
        row = op.row
        doc = {"kind": op.kind, "values": store.fit_text(store.Call, op.values) if row else op.values}
        if row is not None:
            doc["match"] = row.match
        return json.dumps(doc, default=_encode, ensure_ascii=True)

    # -- the writer --

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="call-writer", daemon=True)
        self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Wait until every journalled change is in the database; False on timeout (it stays journalled)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0 and not self._backlog, timeout)

    def stop(self, timeout: float = 2.0) -> bool:
        """Write what the database takes within `timeout`, then stop; what it did not take stays journalled."""
        done = self.flush(timeout)
        self._q.put(None)
        if self._thread is not None:
            self._thread.join(max(0.5, timeout / 2))
        with self._jlock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._store.dispose()
        return done

    @property
    def backlog(self) -> bool:
        return self._backlog

    def _run(self) -> None:
        last_try = -RETRY_S
        while True:
            if self._backlog and time.monotonic() - last_try >= RETRY_S:
                last_try = time.monotonic()
                self._catch_up()
                self._maybe_truncate()
            try:
                op = self._q.get(timeout=RETRY_S if self._backlog else None)
            except queue.Empty:
                continue
            if op is None:
                return
            if not self._backlog and op.seq > self._caught_up_to:
                try:
                    self._with_conn(lambda c, op=op: self._apply(c, op, replay=False))
                except Exception as e:  # the database refused or is away: catch up from the journal later
                    self._backlog = True
                    last_try = time.monotonic()
                    log.warning("screener: call rows wait in the journal (database: %s)", _short(e))
            self._done()
            self._maybe_truncate()

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def _with_conn(self, work: Any) -> Any:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self._engine.connect()
            try:
                with self._conn.begin():
                    return work(self._conn)
            except Exception:
                invalid = self._conn.invalidated or getattr(self._conn, "closed", False)
                try:
                    self._conn.close()
                except Exception:
                    pass
                self._conn = None
                if attempt == 2 or not invalid:
                    raise
        return None

    def _apply(self, c: Connection, op: _Op, replay: bool) -> None:
        values = dict(op.values)
        hit = values.pop("$hit", None)
        if op.kind == "allow":
            with Session(bind=c) as s:
                list_, source = values.get("list", "allow"), values.get("source", "verified")
                try:  # an entry the user made keeps its label and time window
                    store.add_entry(s, list_, values["e164"], label=values["label"], source=source)
                except store.EntryConflict:
                    store.add_entry(s, list_, values["e164"], source=source)
            return
        row = op.row
        assert row is not None
        params = store.fit_text(store.Call, values)
        if op.kind == "open":
            found = c.execute(self._find, row.match).scalar() if replay else None
            if found is None:
                pk = c.execute(self._insert, params).inserted_primary_key
                found = pk[0] if pk is not None else None
            row.id = found
            return
        if row.id is not None:
            c.execute(self._update, {**params, "row_id": row.id})
        else:
            c.execute(self._update_match, {**params, **row.match})
        if hit is not None:
            c.execute(self._hit, {"entry_id": hit[0], "when": hit[1]})

    def _apply_all(self, c: Connection, ops: list[_Op]) -> None:
        for op in ops:
            self._apply(c, op, replay=True)

    def _interrupt_left_open(self, c: Connection) -> int:
        with Session(bind=c) as s:
            return store.close_interrupted(s, self.started, before=self.started)

    def _catch_up(self) -> None:
        """Apply the journal in order; leave backlog mode when all of it is in the database."""
        with self._jlock:
            upto = self._last_seq  # later entries are not in the journal yet
        try:
            ops = [op for op in read_journal(self.journal_path) if op.seq > self._caught_up_to and op.seq <= upto]
            for i in range(0, len(ops), BATCH):
                batch = ops[i:i + BATCH]
                self._with_conn(lambda c, batch=batch: self._apply_all(c, batch))
                self._caught_up_to = batch[-1].seq
            if self.recovered is None:
                n = self._with_conn(self._interrupt_left_open)
                self.recovered = (len(ops), n or 0)
                if ops or n:
                    log.info("screener: %d journalled change(s) of the last run written, %d call(s) it left open "
                             "marked interrupted", len(ops), n or 0)
            elif ops:
                log.info("screener: the database answers again: %d journalled change(s) written", len(ops))
        except Exception as e:
            log.debug("call journal catch-up failed: %s", e)
            return
        self._caught_up_to = upto  # ops still queued with seq <= upto were applied from the journal
        with self._idle:
            self._backlog = False
            self._idle.notify_all()
        with self._idle:
            self._idle.notify_all()

    def _maybe_truncate(self) -> None:
        if self._backlog:
            return
        with self._jlock, self._idle:
            if self._pending == 0 and self._journal is not None:
                self._journal.truncate(0)
                self._journal.seek(0)


def read_journal(path: Path) -> list[_Op]:
    """The journal's entries, in order; a torn last line (a kill mid-write) is skipped."""
    ops: list[_Op] = []
    rows: dict[tuple[str, str], Row] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ops
    for line in text.splitlines():
        seq, _, body = line.partition("\t")
        try:
            doc = json.loads(body, object_hook=_decode)
            n = int(seq)
        except ValueError:
            continue
        row = None
        if "match" in doc:
            m = doc["match"]
            key = (m["m_call_id"], str(m["m_started_at"]))
            row = rows.setdefault(key, Row(m))
        ops.append(_Op(n, doc["kind"], row, doc["values"]))
    return ops


def _short(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def _short_lock_wait(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT_S * 1000)}")
