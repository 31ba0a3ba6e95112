"""The database: typed SQLAlchemy 2 models, one session factory, and the small query helpers the service,
the CLI and the dashboard share. Timestamps are stored in UTC and come back timezone-aware.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    case,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker, validates
from sqlalchemy.types import TypeDecorator

from screener.numbers import Caller
from screener.rules import CLASSES, Rule, RuleSet, Window, candidate_patterns, window_from_mask
from screener.text import clean

OUTCOMES = ("blocked", "answered_elsewhere", "missed", "passed", "connected", "blocked_by_household",
            "failed_challenge", "caller_hung_up",
            "over_capacity", "interrupted", "error")


# the number, each of its prefixes and every class; parse_caller gives invalid numbers up to 20 digits
# (a 3-digit country code and a 17-digit national number), not only E.164's 15
_MAX_CANDIDATES = 1 + 20 + len(CLASSES)
_RULES_SQL = ("SELECT id, list, pattern, label, days, time_from, time_to, source FROM list_entries"
              " WHERE pattern IN ({marks}) AND enabled = {true}")  # only placeholders and a literal go in


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Naive UTC in the database (SQLite has no zones), aware UTC in Python."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime()}


def _fit(obj: Base, key: str, value: str | None) -> str | None:
    """Text as every database takes it: cut to the column's length (SQLite would keep the excess, PostgreSQL
    refuse the row), made safe by text.clean (no driver encodes a lone surrogate; PostgreSQL refuses NUL)."""
    if value is None:
        return None
    limit = getattr(obj.__table__.c[key].type, "length", None)
    return clean(value)[:limit]


def fit_text(model: type[Base], values: dict[str, Any]) -> dict[str, Any]:
    """`values` for a Core insert or update of `model`'s table, text fitted as the ORM's validators do."""
    return {k: _fit(model, k, v) if isinstance(v, str) else v for k, v in values.items()}  # type: ignore[arg-type]


class ListEntry(Base):
    """A pattern on the allow, block or screen list; a pattern lives on one list at a time."""

    __tablename__ = "list_entries"
    __table_args__ = (Index("ix_list_entries_list_pattern", "list", "pattern"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    list: Mapped[str] = mapped_column(String(8))
    pattern: Mapped[str] = mapped_column(String(40), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    source: Mapped[str] = mapped_column(String(40), default="user")
    days: Mapped[int | None] = mapped_column(Integer)  # bitmask, bit 0 = Monday; None = always
    time_from: Mapped[str | None] = mapped_column(String(5))
    time_to: Mapped[str | None] = mapped_column(String(5))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    hit_count: Mapped[int] = mapped_column(Integer, default=0)
    last_hit_at: Mapped[datetime | None]
    # switched off: kept with its label, window and hits, but no call is decided by it
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())

    _fit_text = validates("label", "source")(_fit)

    @property
    def window(self) -> Window | None:
        return window_from_mask(self.days, self.time_from, self.time_to)

    def to_rule(self) -> Rule:
        return Rule(self.list, self.pattern, self.label, self.window, self.id, self.source)  # type: ignore[arg-type]


class Call(Base):
    """One incoming call: written when the INVITE arrives, completed when the call ends."""

    __tablename__ = "calls"
    __table_args__ = (
        Index("ix_calls_started", "started_at", "id"),
        Index("ix_calls_e164_started", "e164", "started_at"),
        Index("ix_calls_outcome_started", "outcome", "started_at"),
        # partial on both databases (migration 0002); the PostgreSQL clause is left to the migration because
        # naming it here loads SQLAlchemy's whole PostgreSQL dialect (2 MiB) into every process
        Index("ix_calls_voicemail", "started_at", "id", sqlite_where=text("voicemail_path IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    call_id: Mapped[str] = mapped_column(String(255), default="")
    source: Mapped[str] = mapped_column(String(64), default="")  # signalling address the INVITE came from
    from_raw: Mapped[str] = mapped_column(Text, default="")
    pai_raw: Mapped[str | None] = mapped_column(Text)
    called_line: Mapped[str] = mapped_column(String(255), default="")
    name: Mapped[str] = mapped_column(String(128), default="")
    caller_raw: Mapped[str] = mapped_column(String(128), default="")
    e164: Mapped[str | None] = mapped_column(String(20))
    number_type: Mapped[str] = mapped_column(String(24), default="unknown")
    country: Mapped[str | None] = mapped_column(String(3))
    withheld: Mapped[bool] = mapped_column(Boolean, default=False)
    decision: Mapped[str] = mapped_column(String(8))
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("list_entries.id", ondelete="SET NULL"))
    rule: Mapped[str] = mapped_column(String(200), default="")
    reason: Mapped[str] = mapped_column(String(300), default="")
    outcome: Mapped[str | None] = mapped_column(String(24))  # None while the call is in progress
    digits: Mapped[str] = mapped_column(String(32), default="")
    duration_s: Mapped[float | None] = mapped_column(Float)
    voicemail_path: Mapped[str | None] = mapped_column(String(500))
    voicemail_heard: Mapped[bool] = mapped_column(Boolean, default=False)
    talk_s: Mapped[float | None] = mapped_column(Float)  # a call put through: from the bridge to its end
    name_path: Mapped[str | None] = mapped_column(String(500))  # the name a screened caller said, a WAV

    _fit_text = validates("call_id", "source", "from_raw", "pai_raw", "called_line", "name", "caller_raw", "country",
                          "rule", "reason", "digits", "voicemail_path", "name_path")(_fit)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    login: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SipStatus(Base):
    """The registration state, one row, written by the service and read by `status` and the dashboard."""

    __tablename__ = "sip_status"

    id: Mapped[int] = mapped_column(primary_key=True, default=1)
    state: Mapped[str] = mapped_column(String(16), default="stopped")
    since: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str] = mapped_column(String(300), default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # the running service's heartbeat (screener.health): older than health.STALE_AFTER means not running
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    pid: Mapped[int | None] = mapped_column(default=None)
    # SIP dropped from untrusted addresses since the service started (SipAgent.untrusted_summary)
    untrusted_count: Mapped[int] = mapped_column(default=0, server_default="0")
    untrusted_sources: Mapped[int] = mapped_column(default=0, server_default="0")
    untrusted_last_source: Mapped[str] = mapped_column(String(64), default="", server_default="")
    untrusted_last_at: Mapped[datetime | None] = mapped_column(default=None)

    _fit_text = validates("last_error", "untrusted_last_source")(_fit)


class NumberNote(Base):
    __tablename__ = "number_notes"

    e164: Mapped[str] = mapped_column(String(20), primary_key=True)
    note: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AppliedPreset(Base):
    """A preset applied once (screener.presets): `init` never applies it again, whatever the user removed."""

    __tablename__ = "applied_presets"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    applied_at: Mapped[datetime] = mapped_column(default=utcnow)


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's BEGIN below own transactions instead of the driver's implicit ones.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A writer that starts deferred and reads first can fail with "database is locked" at once, without
        # waiting busy_timeout, when another writer commits in between; BEGIN IMMEDIATE takes the write lock
        # up front so writers queue instead. Readers stay deferred and never block in WAL mode.
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Store:
    """The engine and its session factories: `read()` for lookups, `write()` for units of work that write."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            db_path = url.split("///", 1)[-1]
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            _sqlite_setup(self.engine)
        marks = ", ".join(["?" if self.engine.dialect.paramstyle == "qmark" else "%s"] * _MAX_CANDIDATES)
        self._rules_sql = _RULES_SQL.format(marks=marks, true="1" if self.is_sqlite else "true")
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(sqlite_immediate=True), expire_on_commit=False)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading (commits nothing it did not write)."""
        with self._read() as s, s.begin():
            yield s

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session for one unit of work that writes: committed on success, rolled back on error."""
        with self._write() as s, s.begin():
            yield s

    def ruleset(self, caller: Caller, *, region: str, tz: Any, default: str) -> RuleSet:
        """The rules that could match `caller`: its number, its prefixes and the classes, in one indexed query.

        This runs on every incoming call, so it skips the ORM: a pooled driver connection and a statement
        rendered once with a fixed number of parameters (padded with empty strings) cost ~15 us against ~200 us.
        """
        patterns = candidate_patterns(caller)
        patterns += [""] * (_MAX_CANDIDATES - len(patterns))
        dbc = self.engine.raw_connection()
        try:
            cur = dbc.cursor()
            cur.execute(self._rules_sql, patterns)
            rows = cur.fetchall()
            cur.close()
        finally:
            dbc.close()
        rules = tuple(Rule(lst, pat, label, window_from_mask(days, t_from, t_to), id_, source)
                      for id_, lst, pat, label, days, t_from, t_to, source in rows)
        return RuleSet(rules, region, tz, default)  # type: ignore[arg-type]

    def session_factory(self, *, writing: bool) -> sessionmaker[Session]:
        return self._write if writing else self._read

    def dispose(self) -> None:
        self.engine.dispose()


# --- rules ----------------------------------------------------------------------------------------------


def put_entry(session: Session, list_: str, pattern: str, *, label: str = "", source: str = "user",
              window: Window | None = None) -> ListEntry:
    """Put `pattern` on `list_` with exactly this label and window (moving it from another list if it was there).

    For restoring and editing; a user's "add" goes through add_entry(), which keeps what it would overwrite.
    """
    entry = session.scalar(select(ListEntry).where(ListEntry.pattern == pattern))
    if entry is None:
        entry = ListEntry(pattern=pattern)
        session.add(entry)
    entry.list, entry.label, entry.source = list_, label[:200], source
    entry.days = window.days_mask if window else None
    entry.time_from = f"{window.start:%H:%M}" if window else None
    entry.time_to = f"{window.end:%H:%M}" if window else None
    session.flush()
    return entry


@dataclass(frozen=True)
class Before:
    """An entry as it was before add_entry() changed it."""

    list: str
    label: str
    window: Window | None
    enabled: bool


class EntryConflict(Exception):
    """Adding would overwrite the label or time window `pattern` already has (on `before.list`)."""

    def __init__(self, pattern: str, before: Before) -> None:
        what = f' as "{before.label}"' if before.label else ""
        when = f", {before.window}" if before.window else ""
        super().__init__(f"{pattern} is already on the {before.list} list{what}{when}")
        self.pattern, self.before = pattern, before


@dataclass(frozen=True)
class Added:
    entry: ListEntry
    before: Before | None  # None: the pattern was on no list

    @property
    def moved_from(self) -> str | None:
        return self.before.list if self.before and self.before.list != self.entry.list else None

    @property
    def kept(self) -> bool:
        """Whether a label or time window the entry had was kept."""
        return self.before is not None and bool(self.before.label or self.before.window)


def add_entry(session: Session, list_: str, pattern: str, *, label: str = "", window: Window | None = None,
              source: str = "user", replace: bool = False) -> Added:
    """A user adds `pattern` to `list_` (switched on). An entry already there keeps its label and time window
    unless `replace`; a new label or window that would overwrite a different one raises EntryConflict."""
    entry = session.scalar(select(ListEntry).where(ListEntry.pattern == pattern))
    if entry is None:
        return Added(put_entry(session, list_, pattern, label=label, source=source, window=window), None)
    before = Before(entry.list, entry.label, entry.window, entry.enabled)
    if not replace:
        if (label and before.label and label != before.label) or \
                (window is not None and before.window is not None and window != before.window):
            raise EntryConflict(pattern, before)
        label, window = before.label or label, before.window or window
    put_entry(session, list_, pattern, label=label, source=source, window=window)
    entry.enabled = True
    session.flush()
    return Added(entry, before)


def set_enabled(session: Session, pattern: str, enabled: bool) -> ListEntry | None:
    """Switch the entry for `pattern` on or off (it keeps everything else); None if there is none."""
    entry = session.scalar(select(ListEntry).where(ListEntry.pattern == pattern))
    if entry is not None:
        entry.enabled = enabled
        session.flush()
    return entry


def remove_entry(session: Session, pattern: str) -> bool:
    """Remove the entry for `pattern`; False if there was none."""
    res: CursorResult[Any] = session.execute(delete(ListEntry).where(ListEntry.pattern == pattern))  # type: ignore[assignment]
    return bool(res.rowcount)


def bulk_put(session: Session, list_: str, rows: Iterable[tuple[str, str]], *, source: str,
             skipped: list[str] | None = None) -> int:
    """Insert or move many (pattern, label) rows at once, in the caller's transaction; returns how many.

    An import never moves an entry off the allow list (its patterns go to `skipped`), and an entry keeps
    the label it has (an empty one is filled in), its time window and whether it is switched on.
    """
    from sqlalchemy.dialects import postgresql, sqlite

    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    now = utcnow()
    batch: list[dict[str, Any]] = []
    total = 0
    table = ListEntry.__table__

    def flush() -> int:
        if list_ != "allow":
            allowed = set(session.scalars(select(ListEntry.pattern).where(
                ListEntry.pattern.in_([r["pattern"] for r in batch]), ListEntry.list == "allow")))
            if allowed:
                if skipped is not None:
                    skipped.extend(r["pattern"] for r in batch if r["pattern"] in allowed)
                batch[:] = [r for r in batch if r["pattern"] not in allowed]
        n = len(batch)
        if batch:
            stmt = insert(ListEntry)
            stmt = stmt.on_conflict_do_update(
                index_elements=["pattern"],
                set_={"list": stmt.excluded.list, "source": stmt.excluded.source,
                      "label": case((table.c.label == "", stmt.excluded.label), else_=table.c.label)},
                # the check above already took allow entries out; this keeps a concurrent one where it is
                where=(table.c.list != "allow") if list_ != "allow" else None,
            )
            session.execute(stmt, batch)
        batch.clear()
        return n

    for pattern, label in rows:
        batch.append({"list": list_, "pattern": pattern, "label": label, "source": source, "created_at": now,
                      "hit_count": 0})
        if len(batch) >= 5000:
            total += flush()
    if batch:
        total += flush()
    return total


# --- calls and status -----------------------------------------------------------------------------------


def close_interrupted(session: Session, now: datetime, before: datetime | None = None) -> int:
    """Mark calls left open by a crash or a stop (started before `before`) as `interrupted`; returns how many."""
    stmt = update(Call).where(Call.outcome.is_(None))
    if before is not None:
        stmt = stmt.where(Call.started_at < before)
    res: CursorResult[Any] = session.execute(stmt.values(outcome="interrupted", ended_at=now))  # type: ignore[assignment]
    return res.rowcount or 0


def recent_calls(session: Session, limit: int = 50) -> list[Call]:
    return list(session.scalars(select(Call).order_by(Call.started_at.desc(), Call.id.desc()).limit(limit)))


def set_sip_status(session: Session, state: str, last_error: str = "", now: datetime | None = None) -> None:
    """Record the registration state; `since` changes only when the state does."""
    now = now or utcnow()
    row = session.get(SipStatus, 1)
    if row is None:
        row = SipStatus(id=1, state=state, since=now)
        session.add(row)
    elif row.state != state:
        row.state, row.since = state, now
    row.last_error, row.updated_at = last_error, now


def get_sip_status(session: Session) -> SipStatus | None:
    return session.get(SipStatus, 1)


def write_heartbeat(session: Session, state: str, last_error: str, since: datetime | None, pid: int | None,
                    untrusted: tuple[int, int, str, datetime | None] = (0, 0, "", None),
                    now: datetime | None = None) -> None:
    """The service's beat: its state (`since` as the agent saw the change), pid and untrusted-SIP summary
    (count, distinct sources, last source, last time)."""
    now = now or utcnow()
    row = session.get(SipStatus, 1)
    if row is None:
        row = SipStatus(id=1, state=state, since=since or now)
        session.add(row)
    elif row.state != state:
        row.state, row.since = state, since or now
    row.last_error, row.updated_at, row.heartbeat_at, row.pid = last_error, now, now, pid
    (row.untrusted_count, row.untrusted_sources, row.untrusted_last_source, row.untrusted_last_at) = untrusted


def count_entries(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ListEntry)) or 0


# --- schema ---------------------------------------------------------------------------------------------


def _alembic_config(url: str) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(store: Store) -> None:
    """Bring the schema to the latest migration."""
    from alembic import command

    cfg = _alembic_config(store.url)
    # immediate: two commands starting at once (`run` and `status`) queue instead of failing "database is locked"
    with store.engine.execution_options(sqlite_immediate=True).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
