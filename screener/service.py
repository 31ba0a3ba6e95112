"""The SIP service: config + store + rules + sip. Each call is logged when its INVITE arrives, decided, acted
on through screener.sip, and completed with its outcome. `run_service()` is what `screener run` calls.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import re
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, event, insert, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from screener import audio, store
from screener.config import Config
from screener.numbers import Caller, parse_caller
from screener.rules import Decision, Rule, decide

log = logging.getLogger("screener.service")

VOICEMAIL_SILENCE_S = 5.0  # a recording ends after this long without speech
MIN_VOICEMAIL_S = 1.0  # shorter recordings are not kept


class CallInfo(Protocol):
    call_id: str
    source: tuple[str, int]
    from_raw: str
    pai_raw: str | None
    privacy: str | None
    called: str
    display_name: str
    from_provider: bool


class LineCall(Protocol):
    """What the handler needs of a call: screener.sip.Call, or a fake in tests."""

    info: Any
    end_reason: str | None

    @property
    def ended(self) -> bool: ...
    @property
    def answered_elsewhere(self) -> bool: ...
    def ring(self) -> bool: ...
    def decline(self, code: int = 603) -> bool: ...
    def answer(self) -> bool: ...
    def hangup(self) -> None: ...
    def play(self, pcm: bytes, *, until_digit: bool = False) -> bool: ...
    def wait_digit(self, timeout: float) -> str | None: ...
    def record(self, max_seconds: float, silence_seconds: float = 5.0) -> bytes: ...
    def wait_ended(self, timeout: float | None = None) -> bool: ...


def caller_of(info: CallInfo, region: str) -> Caller:
    """The caller: P-Asserted-Identity when the provider sent it, else From; `Privacy: id` means withheld."""
    value = info.pai_raw if info.from_provider and info.pai_raw else info.from_raw
    return parse_caller(value, region, privacy=info.privacy, display_name=info.display_name or None)


def phonebook_decision(caller: Caller, decision: Decision, spam_prefixes: tuple[str, ...]) -> Decision:
    """A router phonebook name (non-numeric display name) means a known contact; a spam prefix the opposite.

    An explicit rule for the exact number still wins: the user said so about that number.
    """
    name = caller.name.strip()
    if not name or caller.internal or not re.search(r"[^\W\d_]", name):
        return decision
    if decision.rule is not None and decision.rule.kind == "number":
        return decision
    if any(name.lower().startswith(p.lower()) for p in spam_prefixes if p):
        return Decision("block", None, f"phonebook name marked as spam: {name}")
    return Decision("allow", None, f"known contact in the phonebook: {name}")


class CallLog:
    """The call rows: Core statements on one connection kept for them, one transaction per statement group.

    Each call's row is written before anything is sent to the caller, so this is on the path INVITE -> 603.
    Through the ORM (session, unit of work, flush, a pooled connection) that write took 0.26 ms alone and
    1.5 ms (p50) with the other threads of a call burst; a Core insert on a connection kept open takes 0.06 ms.
    One connection also means one SQLite page cache for the SIP side instead of one per pooled connection.
    """

    def __init__(self, db: store.Store) -> None:
        self._engine = db.engine.execution_options(sqlite_immediate=True)  # writers queue (see store)
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # one statement group at a time on the one connection
        calls, entries = store.Call.__table__, store.ListEntry.__table__
        # built once: SQLAlchemy then only looks their compiled form up in its cache
        self._insert = insert(calls)
        self._update = update(calls).where(calls.c.id == bindparam("row_id"))
        self._hit = (update(entries).where(entries.c.id == bindparam("entry_id"))
                     .values(hit_count=entries.c.hit_count + 1, last_hit_at=bindparam("when")))

    def _run(self, work: Callable[[Connection], Any]) -> Any:
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None:
                    self._conn = self._engine.connect()
                try:
                    with self._conn.begin():
                        return work(self._conn)
                except DBAPIError as e:
                    if attempt == 2 or not e.connection_invalidated:
                        raise
                    self._conn.close()  # the server dropped the connection (PostgreSQL): once more, on a new one
                    self._conn = None

    def open(self, values: dict[str, Any]) -> int:
        """Insert a call row; returns its id."""
        params = store.fit_text(store.Call, values)
        return int(self._run(lambda c: c.execute(self._insert, params).inserted_primary_key[0]))

    def close(self, row_id: int, values: dict[str, Any], hit: tuple[int, datetime] | None = None) -> None:
        """Complete a call row and, when a rule decided the call, count the hit on it."""
        params = {**store.fit_text(store.Call, values), "row_id": row_id}

        def work(c: Connection) -> None:
            c.execute(self._update, params)
            if hit is not None:
                c.execute(self._hit, {"entry_id": hit[0], "when": hit[1]})

        self._run(work)

    def dispose(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


@dataclass
class CallRecord:
    """What the handler learned about one call, written to its row at the end."""

    outcome: str = "missed"
    reason: str = ""  # the decision's, as written when the call came in
    digits: str = ""
    voicemail: Path | None = None
    answered_at: datetime | None = None
    extra_reason: str = ""
    events: list[str] = field(default_factory=list)


class CallHandler:
    """Decides and carries out one call (runs on the call's own thread). No sockets: testable with fakes."""

    def __init__(self, cfg: Config, db: store.Store, prompts: audio.Prompts, *,
                 now: Callable[[], datetime] = store.utcnow) -> None:
        self.cfg = cfg
        self.sc = cfg.screening
        self.db = db
        self.prompts = prompts
        self.now = now
        self.tz = ZoneInfo(self.sc.timezone)
        self.voicemail_dir = cfg.data_path / "voicemail"
        self.log = CallLog(db)
        self._screening = threading.BoundedSemaphore(self.sc.max_screened_calls)
        self._active = 0
        self._idle = threading.Condition()

    def __call__(self, call: LineCall) -> None:
        with self._idle:
            self._active += 1
        try:
            self._handle(call)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is being handled (their rows are complete); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def close(self) -> None:
        """Release the call log's connection (after wait_idle)."""
        self.log.dispose()

    def _handle(self, call: LineCall) -> None:
        info = call.info
        started = self.now()
        caller = caller_of(info, self.sc.region)
        rules = self.db.ruleset(caller, region=self.sc.region, tz=self.tz, default=self.sc.default_action)
        decision = decide(caller, rules, started)
        if self.sc.trust_phonebook_names:
            decision = phonebook_decision(caller, decision, self.sc.spam_name_prefixes)
        row_id = self._open_row(info, caller, decision, started)
        rec = CallRecord(reason=decision.reason)
        try:
            if decision.action == "block":
                self._block(call, rec)
            elif decision.action == "screen":
                self._screen_if_room(call, caller, rec)
            else:
                self._let_ring(call, rec)
        except Exception:
            log.exception("screener: call %s failed", info.call_id)
            rec.outcome = "interrupted"
            if not call.ended:
                call.hangup()
        else:
            if call.end_reason == "stopped" and rec.outcome not in ("blocked", "passed"):
                rec.outcome = "interrupted"  # the service stopped during the call
        finally:
            rule = decision.rule
            self._close_row(row_id, rec, started, rule.id if rule is not None else None)

    # -- the row --

    def _open_row(self, info: CallInfo, caller: Caller, decision: Decision, when: datetime) -> int:
        rule: Rule | None = decision.rule
        return self.log.open(dict(
            started_at=when, call_id=info.call_id, source=f"{info.source[0]}:{info.source[1]}",
            from_raw=info.from_raw, pai_raw=info.pai_raw, called_line=info.called, name=caller.name,
            caller_raw=caller.user, e164=caller.e164, number_type=caller.type, country=caller.country,
            withheld=caller.withheld, decision=decision.action, rule_id=rule.id if rule else None,
            rule=str(rule) if rule else "", reason=decision.reason, outcome=None))

    def _close_row(self, row_id: int, rec: CallRecord, started: datetime, rule_id: int | None) -> None:
        ended = self.now()
        values: dict[str, Any] = dict(ended_at=ended, outcome=rec.outcome, digits=rec.digits,
                                      duration_s=round((ended - started).total_seconds(), 3))
        if rec.voicemail is not None:
            values["voicemail_path"] = str(rec.voicemail.relative_to(self.cfg.data_path))
        if rec.extra_reason:
            values["reason"] = f"{rec.reason}; {rec.extra_reason}"
        try:
            # the rule's hit count waits until here: only the row itself must exist before the caller hears anything
            self.log.close(row_id, values, (rule_id, started) if rule_id is not None else None)
        except Exception:
            log.exception("screener: cannot complete the log of call %s", row_id)

    # -- actions --

    def _ended_outcome(self, call: LineCall) -> str:
        if call.end_reason == "stopped":
            return "interrupted"
        return "answered_elsewhere" if call.answered_elsewhere else "missed"

    def _let_ring(self, call: LineCall, rec: CallRecord) -> None:
        """Allowed: ring with the house, never answer; the CANCEL tells how it ended."""
        call.ring()
        call.wait_ended()
        rec.outcome = self._ended_outcome(call)

    def _block(self, call: LineCall, rec: CallRecord) -> None:
        if self.sc.block_action == "decline":
            # 603/607 ends every branch of a forking registrar; a 486 would block nothing
            if call.decline(self.sc.decline_code):
                rec.outcome = "blocked"
            else:
                rec.outcome = self._ended_outcome(call)
            return
        if not call.answer():
            rec.outcome = self._ended_outcome(call)
            return
        rec.answered_at = self.now()
        call.play(self.prompts.blocked)
        call.hangup()
        rec.outcome = "blocked"

    def _screen_if_room(self, call: LineCall, caller: Caller, rec: CallRecord) -> None:
        if not self._screening.acquire(blocking=False):
            self._let_ring(call, rec)
            how = rec.outcome.replace("_", " ")
            rec.extra_reason = f"too many calls screened at once: left ringing ({how})"
            rec.outcome = "over_capacity" if rec.outcome != "interrupted" else rec.outcome
            return
        try:
            self._screen(call, caller, rec)
        finally:
            self._screening.release()

    def _screen(self, call: LineCall, caller: Caller, rec: CallRecord) -> None:
        call.ring()
        if self.sc.screen_delay > 0 and call.wait_ended(self.sc.screen_delay):
            rec.outcome = self._ended_outcome(call)  # picked up or given up while the house rang
            return
        if not call.answer():  # cancelled in the meantime: never answer (B3)
            rec.outcome = self._ended_outcome(call)
            return
        rec.answered_at = self.now()
        if self._challenge(call, rec):
            self._passed(call, caller, rec)
        elif call.ended:
            rec.outcome = "caller_hung_up"
        else:
            call.play(self.prompts.failed)
            call.hangup()
            rec.outcome = "failed_challenge"

    def _challenge(self, call: LineCall, rec: CallRecord) -> bool:
        for _ in range(1 + self.sc.challenge_repeats):
            call.play(self.prompts.challenge, until_digit=True)
            if call.ended:
                return False
            key = call.wait_digit(self.sc.challenge_timeout)
            if key is not None:
                rec.digits += key
            if key == self.sc.challenge_digit:
                return True
            if call.ended:
                return False
        return False

    def _passed(self, call: LineCall, caller: Caller, rec: CallRecord) -> None:
        rec.outcome = "passed"
        if self.sc.remember_verified and caller.e164:
            with self.db.write() as s:
                store.put_entry(s, "allow", caller.e164, label=f"verified {caller.name}".strip()[:200],
                                source="verified")
        call.play(self.prompts.passed)
        if self.sc.voicemail and not call.ended:
            call.play(self.prompts.voicemail)
            call.play(audio.beep())
            pcm = call.record(self.sc.voicemail_max_seconds, VOICEMAIL_SILENCE_S)
            if len(pcm) >= MIN_VOICEMAIL_S * audio.RATE * 2:
                rec.voicemail = self._save_voicemail(call.info.call_id, pcm)
        if not call.ended:
            call.hangup()

    def _save_voicemail(self, call_id: str, pcm: bytes) -> Path | None:
        stamp = self.now().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        safe = re.sub(r"[^A-Za-z0-9]", "", call_id)[:16] or "call"
        path = self.voicemail_dir / f"{stamp}_{safe}.wav"
        try:
            audio.write_wav(path, pcm)
        except OSError as e:
            log.error("screener: cannot save voicemail %s: %s", path, e)
            return None
        return path


SQLITE_CACHE_KIB = 512


def _small_page_cache(dbapi_conn: Any, _record: Any) -> None:
    # The SIP side touches few pages per call: the right edge of the calls table and its indexes, the path to
    # a rule in the list index (~50 interior pages with 1M entries). SQLite's default cache of 2 MB per
    # connection keeps every page written until it is full: RSS rose ~0.45 MiB per 1000 calls, bench run
    # after bench run, until 2 MB per pooled connection.
    dbapi_conn.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")


def _configured_prompts(cfg: Config) -> dict[str, Path | None]:
    p = cfg.screening.prompts
    return {name: (cfg.resolve(getattr(p, name)) if getattr(p, name) else None) for name in audio.PROMPT_NAMES}


class Service:
    """The running screener: start() binds and registers, stop() unregisters and closes; run() does both."""

    def __init__(self, cfg: Config, *, db: store.Store | None = None,
                 agent_factory: Callable[..., Any] | None = None) -> None:
        self.cfg = cfg
        self._db = db
        self._agent_factory = agent_factory
        self.agent: Any = None
        self.handler: CallHandler | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Open the database, close rows left open, load prompts, bind the SIP port and start registering.

        Raises ValueError for a prompt that cannot be used and OSError when the SIP port is taken.
        """
        from screener.sip import SipAgent

        cfg = self.cfg
        if self._db is None:
            self._db = store.Store(cfg.database_url)  # the schema is brought up to date by `screener run`
        db = self._db
        if db.is_sqlite:
            event.listen(db.engine, "connect", _small_page_cache)
        with db.write() as s:
            n = store.close_interrupted(s, store.utcnow())
        if n:
            log.info("screener: %d call(s) left open by the last run marked interrupted", n)
        prompts = audio.load_prompts(cfg.screening.language, cfg.screening.challenge_digit,
                                     _configured_prompts(cfg), cfg.data_path / "prompts")
        self.handler = CallHandler(cfg, db, prompts)
        factory = self._agent_factory or SipAgent
        self.agent = factory(cfg.sip, self.handler, self._on_status)
        self.agent.start()

    def _on_status(self, st: Any) -> None:
        self._on_status_value(st.state, st.last_error or "", datetime.fromtimestamp(st.since, UTC))

    def _on_status_value(self, state: str, error: str, when: datetime | None = None) -> None:
        assert self._db is not None
        try:
            with self._db.write() as s:
                store.set_sip_status(s, state, error[:300], now=when)
        except Exception:
            log.exception("screener: cannot store the SIP status")

    def stop(self) -> None:
        """Unregister, end the calls and wait for their rows (about 2 s at most)."""
        self._stop.set()
        if self.agent is not None:
            self.agent.stop()
            self.agent = None
            if self.handler is not None:
                self.handler.wait_idle(1.0)
                self.handler.close()
            self._on_status_value("stopped", "")
        if self._db is not None:
            self._db.dispose()

    def request_stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stop is requested (signal or request_stop()); False on timeout."""
        return self._stop.wait(timeout)

    def run(self, on_started: Callable[[], None] | None = None) -> int:
        """start(), wait for SIGINT/SIGTERM, stop(); 0 on a clean stop, 1 when it could not start."""
        with capture_signals(self.request_stop):
            try:
                self.start()
            except (OSError, ValueError) as e:
                log.error("screener: cannot start the SIP service: %s", e)
                self.stop()
                return 1
            try:
                if on_started is not None:
                    on_started()
                while not self.wait(1.0):
                    pass
            finally:
                self.stop()
        return 0


@contextmanager
def capture_signals(on_signal: Callable[[], None]) -> Iterator[None]:
    """Route SIGINT/SIGTERM to `on_signal` inside the block, and restore the previous handlers after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handle(signum: int, frame: Any) -> None:
        log.info("screener: %s received, stopping", signal.Signals(signum).name)
        on_signal()

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_service(cfg: Config, with_web: bool = False) -> int:
    """`screener run`: the SIP service (and the dashboard on a thread when asked) until SIGINT/SIGTERM."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    service = Service(cfg)
    web_threads: list[threading.Thread] = []
    web_stop = threading.Event()

    def started() -> None:
        if with_web:
            # imported here only: screener's modules never depend on the dashboard (STYLE.md)
            import importlib

            web = importlib.import_module("web")
            t = threading.Thread(target=web.serve, args=(cfg,), kwargs={"stop": web_stop}, name="web",
                                 daemon=True)
            t.start()
            web_threads.append(t)
        freeze_startup_objects()

    limit_malloc_arenas()
    try:
        return service.run(on_started=started)
    finally:
        web_stop.set()
        for t in web_threads:
            t.join(6.0)


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Let glibc's malloc use at most `arenas` arenas (it allows 8 per core); False when that is not glibc.

    Every call has a handler thread and every answered call an RTP thread; glibc gives threads that meet in
    malloc arenas of their own, and memory freed into an arena mostly stays there. After 100 INVITE/s of
    unknown callers for 10 s (40 threads at once) RSS stayed 5.0 MiB over its start value with the default,
    3.2 MiB with 2 arenas (2.6 with 1). Python threads allocate under the GIL, so fewer arenas cost no
    measurable latency (bench_sip "load-unknown", same p99). Same as MALLOC_ARENA_MAX=2, which needs the
    environment; call it before the threads start.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_arena_max = -8  # <malloc.h>
    return bool(mallopt(m_arena_max, arenas))


def freeze_startup_objects() -> None:
    """Move everything built at start-up out of the garbage collector's sight (gc.freeze).

    Modules, SQLAlchemy's mappers, phonenumbers' metadata and the dashboard live as long as the process (about
    80k objects): each full collection walked them all, a 20-35 ms pause of whatever thread triggered it, which
    was the slowest INVITE -> 603 under load. Frozen, a full collection walks only what was made since (about
    5 ms). Objects frozen are never collected; being start-up state, they never would be anyway.
    """
    gc.collect()
    gc.freeze()
