"""The SIP service: config + store + rules + sip. Each call is logged when its INVITE arrives, decided, acted
on through screener.sip, and completed with its outcome. `run_service()` is what `screener run` calls.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import re
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import event, func, select, text

from screener import audio, health, store
from screener.calllog import CallLog, Row
from screener.config import Config
from screener.numbers import Caller, parse_caller
from screener.rules import Decision, Rule, RuleSet, candidate_patterns, decide

if TYPE_CHECKING:
    from screener import notify

log = logging.getLogger("screener.service")

VOICEMAIL_SILENCE_S = 5.0  # a recording ends after this long without speech
MIN_VOICEMAIL_S = 1.0  # shorter recordings are not kept
JOURNAL_NAME = "calls.journal"  # in the data folder (see screener.calllog)
SNAPSHOT_MAX = 20_000  # list entries kept in memory for deciding while the database is away
RECENT_MAX = 1024
NAME_MAX_S, NAME_SILENCE_S = 4.0, 1.5  # the caller's name for the announcement
ANNOUNCE_WAIT_S, KEY_POLL_S = 8.0, 0.5  # the household's time to press a key after each announcement
ANNOUNCE_BUDGET_S = 40.0  # ringback queued beyond the ringing: the announcement, twice, and its waits
RING_LIMIT_MARGIN_S = 30.0  # the SIP side ends a ringing call itself this long after max_ring_time (a stuck handler)
SIP_CHANGE_WAIT_S = 60.0  # a [sip] change waits this long at most for the calls in progress to end


class CallInfo(Protocol):
    """What the handler reads of an INVITE (screener.sip.IncomingCall, read-only)."""

    @property
    def call_id(self) -> str: ...
    @property
    def source(self) -> tuple[str, int]: ...
    @property
    def from_raw(self) -> str: ...
    @property
    def pai_raw(self) -> str | None: ...
    @property
    def privacy(self) -> str | None: ...
    @property
    def called(self) -> str: ...
    @property
    def display_name(self) -> str: ...
    @property
    def from_provider(self) -> bool: ...
    @property
    def cannot_serve(self) -> str:
        """Why the SIP side could ring but not answer this call ("" = it can)."""
        ...


class HouseLeg(Protocol):
    """The call screener places to the household (ring-through): screener.sip.Leg, or a fake in tests."""

    final_code: int | None

    @property
    def ended(self) -> bool: ...
    def wait_answered(self, timeout: float) -> str:
        """"answered", "busy", "declined", "failed", "caller_gone", or "no_answer" (then it is cancelled)."""
        ...
    def cancel(self) -> None: ...
    def hangup(self) -> None: ...
    def play(self, pcm: bytes, *, until_digit: bool = False) -> bool: ...
    def wait_digit(self, timeout: float) -> str | None: ...


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
    def play_background(self, pcm: bytes) -> None:
        """Queue audio and return at once (the ringback while the house rings)."""
        ...
    def stop_playback(self) -> None: ...
    def dial(self, target: str, *, from_user: str, display: str,
             credentials: tuple[str, str] | None = None) -> HouseLeg | None:
        """Ring `target` on behalf of this caller; None when this call is over or no media port is free."""
        ...
    def bridge(self, leg: HouseLeg, max_seconds: float) -> str:
        """Relay audio both ways until one side ends, then end the other: "caller", "household", "stopped" or
        "timeout"."""
        ...


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


class RulesSnapshot:
    """The rules as last read, to decide from while the database cannot be read (PostgreSQL restarting).

    Lists up to SNAPSHOT_MAX entries are kept whole (a household's lists and presets: well under 1 MiB) and
    read again whenever their fingerprint changes (checked every second; one aggregate query). The rules
    each caller's own lookup returned are kept too, for the last RECENT_MAX callers: the fresher of the two
    answers, and the only one for lists too large to keep whole.
    """

    def __init__(self) -> None:
        self._all: dict[str, Rule] | None = None
        self._all_at = -1.0
        self._fingerprint: tuple[Any, ...] | None = None
        self._recent: OrderedDict[str, tuple[float, tuple[Rule, ...]]] = OrderedDict()
        self._lock = threading.Lock()

    def refresh(self, db: store.Store, now: float) -> None:
        """Read the lists again when they changed; raises when the database cannot be read."""
        entries = store.ListEntry.__table__
        with db.read() as s:
            count = s.execute(select(func.count()).select_from(
                select(entries.c.id).limit(SNAPSHOT_MAX + 1).subquery())).scalar_one()
            if count > SNAPSHOT_MAX:
                self._all, self._fingerprint = None, None
                return
            fingerprint = tuple(s.execute(_FINGERPRINT).one())
            if fingerprint == self._fingerprint:
                return
            got = {r.pattern: r.to_rule() for r in s.scalars(select(store.ListEntry).where(store.ListEntry.enabled))}
        with self._lock:
            self._all, self._all_at, self._fingerprint = got, now, fingerprint

    def remember(self, caller: Caller, rules: tuple[Rule, ...], now: float) -> None:
        if not caller.e164:
            return
        with self._lock:
            self._recent[caller.e164] = (now, rules)
            self._recent.move_to_end(caller.e164)
            if len(self._recent) > RECENT_MAX:
                self._recent.popitem(last=False)

    def rules_for(self, caller: Caller) -> tuple[Rule, ...] | None:
        """The rules that matched `caller` when last read; None when they are not known."""
        with self._lock:
            at, rules = self._recent.get(caller.e164 or "", (-1.0, None))
            if self._all is not None and self._all_at >= at:
                return tuple(r for p in candidate_patterns(caller) if (r := self._all.get(p)) is not None)
            return rules


# Changes whenever an entry is added, removed, moved to another list, given another time window or switched
# on or off.
_FINGERPRINT = text(
    "SELECT count(*), coalesce(max(id), 0),"
    " coalesce(sum(CASE WHEN enabled THEN id ELSE 0 END), 0),"
    " coalesce(sum(id * CASE list WHEN 'block' THEN 2 WHEN 'allow' THEN 3 ELSE 5 END), 0),"
    " coalesce(sum(id * coalesce(days, 255)), 0),"
    " coalesce(sum(id * CAST(replace(coalesce(time_from, '0') || coalesce(time_to, '0'), ':', '') AS BIGINT)), 0)"
    " FROM list_entries")


@dataclass
class CallRecord:
    """What the handler learned about one call, written to its row at the end."""

    outcome: str = "missed"
    reason: str = ""  # the decision's, as written when the call came in
    digits: str = ""
    voicemail: Path | None = None
    answered_at: datetime | None = None
    extra_reason: str = ""
    talk_s: float | None = None
    house_missed: str = ""  # why the house did not answer a ring-through (for the notification)
    name: Path | None = None  # the name the caller said for the household (ask_name)

    def note(self, text: str) -> None:
        self.extra_reason = f"{self.extra_reason}; {text}" if self.extra_reason else text


class CallHandler:
    """Decides and carries out one call (runs on the call's own thread). No sockets: testable with fakes.

    The decision only reads the database; the row goes through the CallLog's journal, so nothing here waits
    for a write. Whatever fails, the call gets a final response and its row an outcome.
    """

    on_closed: Callable[[dict[str, Any]], None] | None = None  # a closed row's values (notifications; never waits)

    def __init__(self, cfg: Config, db: store.Store, prompts: audio.Prompts, *,
                 now: Callable[[], datetime] = store.utcnow, calllog: CallLog | None = None) -> None:
        self.db = db
        self.now = now
        self.configure(cfg, prompts)
        self.log = calllog or CallLog(db, cfg.data_path / JOURNAL_NAME)
        if calllog is None:
            self.log.start()
        self.snapshot = RulesSnapshot()
        self._screening = threading.BoundedSemaphore(self.sc.max_screened_calls)
        self._bridged = threading.BoundedSemaphore(cfg.ring_through.max_bridged_calls)
        self._active = 0
        self._idle = threading.Condition()

    def configure(self, cfg: Config, prompts: audio.Prompts) -> None:
        """Take new [screening] settings and prompts: the next call uses them (SIGHUP)."""
        self.cfg, self.sc, self.rt, self.prompts = cfg, cfg.screening, cfg.ring_through, prompts
        self.gatekeeper = cfg.sip.mode == "gatekeeper"
        self.tz = ZoneInfo(self.sc.timezone)
        self.voicemail_dir = cfg.data_path / "voicemail"

    def __call__(self, call: LineCall) -> None:
        with self._idle:
            self._active += 1
        try:
            self._handle(call)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def refresh_rules(self) -> None:
        """Read the lists again if they changed (never on a call's path: the service's main loop does it)."""
        try:
            self.snapshot.refresh(self.db, time.monotonic())
        except Exception as e:
            log.debug("rules snapshot not refreshed: %s", e)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is being handled; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until every row written so far is in the database; False on timeout (it stays journalled)."""
        return self.log.flush(timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Write what the database takes within `timeout` and stop the writer (after wait_idle)."""
        self.log.stop(timeout)

    def rejected(self, info: CallInfo, code: int, why: str) -> None:
        """A call the SIP side refused before any handler ran (too many calls): its row, all the same."""
        try:
            now = self.now()
            caller = caller_of(info, self.sc.region)
            row = self.log.open(self._row_values(info, caller, None, now))
            self.log.close(row, dict(ended_at=now, outcome="over_capacity", duration_s=0.0,
                                     reason=f"refused with {code}: {why}"))
        except Exception:
            log.exception("screener: cannot log refused call %s", info.call_id)

    def _handle(self, call: LineCall) -> None:
        info = call.info
        started = self.now()
        rec = CallRecord()
        decision: Decision | None = None
        row: Row | None = None
        caller: Caller | None = None
        try:
            caller = caller_of(info, self.sc.region)
            decision = self._decide(info, caller, started)
            rec.reason = decision.reason
            row = self.log.open(self._row_values(info, caller, decision, started))
            cannot = info.cannot_serve
            if decision.action == "block":
                self._block(call, rec, can_answer=not cannot)
            elif decision.action == "screen" and cannot:
                rec.extra_reason = f"cannot screen: {cannot}; left ringing"
                self._let_ring(call, rec)
            elif decision.action == "screen":
                self._screen_if_room(call, caller, rec)
            elif self.gatekeeper and not cannot:
                self._put_through(call, caller, rec)
            else:
                self._let_ring(call, rec)
        except Exception as e:
            log.exception("screener: call %s failed", info.call_id)
            rec.outcome = "error"
            rec.extra_reason = f"internal error: {type(e).__name__}: {e}"[:200]
            self._end_failed(call)
        if call.end_reason == "stopped" and rec.outcome != "blocked" and rec.voicemail is None:
            rec.outcome = "interrupted"  # the service stopped during the call
        try:
            if row is None:
                row = self.log.open(self._row_values(info, caller, decision, started))
            rule = decision.rule if decision is not None else None
            self._close_row(row, rec, started, rule.id if rule is not None else None)
        except Exception:
            log.exception("screener: cannot log call %s", info.call_id)

    @staticmethod
    def _end_failed(call: LineCall) -> None:
        """After an internal error: the caller still gets a final response (480 lets the house go on ringing)."""
        try:
            if not call.ended and not call.decline(480):
                call.hangup()
        except Exception:
            log.exception("screener: cannot end failed call %s", call.info.call_id)

    # -- the decision: reads only --

    def _decide(self, info: CallInfo, caller: Caller, now: datetime) -> Decision:
        decision = decide(caller, self._rules(caller), now)
        if self.sc.trust_phonebook_names:
            decision = phonebook_decision(caller, decision, self.sc.spam_name_prefixes)
        if caller.withheld and decision.action != "block" and info.from_provider and info.pai_raw:
            # `Privacy: id` hides the number from the household, not from the line's own rules
            asserted = parse_caller(info.pai_raw, self.sc.region)
            if asserted.e164:
                d = decide(asserted, self._rules(asserted), now)
                if d.action == "block" and d.rule is not None:
                    return Decision("block", d.rule, f"withheld, but the asserted number is blocked: {d.reason}")
        return decision

    def _rules(self, caller: Caller) -> RuleSet:
        try:
            rules = self.db.ruleset(caller, region=self.sc.region, tz=self.tz, default=self.sc.default_action)
        except Exception as e:
            known = self.snapshot.rules_for(caller)
            fallback = self.sc.default_action if known is not None else self.sc.on_database_error
            log.error("screener: cannot read the rules (%s): deciding from %s", _first_line(e),
                      "the last rules read" if known is not None else f"on_database_error = {fallback!r}")
            return RuleSet(known or (), self.sc.region, self.tz, fallback)  # type: ignore[arg-type]
        self.snapshot.remember(caller, rules.rules, time.monotonic())
        return rules

    # -- the row --

    def _row_values(self, info: CallInfo, caller: Caller | None, decision: Decision | None,
                    when: datetime) -> dict[str, Any]:
        rule: Rule | None = decision.rule if decision else None
        values: dict[str, Any] = dict(
            started_at=when, call_id=info.call_id, source=f"{info.source[0]}:{info.source[1]}",
            from_raw=info.from_raw, pai_raw=info.pai_raw, called_line=info.called,
            decision=decision.action if decision else "", rule_id=rule.id if rule else None,
            rule=str(rule) if rule else "", reason=decision.reason if decision else "", outcome=None)
        if caller is not None:
            values.update(name=caller.name, caller_raw=caller.user, e164=caller.e164, number_type=caller.type,
                          country=caller.country, withheld=caller.withheld)
        return values

    def _close_row(self, row: Row, rec: CallRecord, started: datetime, rule_id: int | None) -> None:
        ended = self.now()
        values: dict[str, Any] = dict(ended_at=ended, outcome=rec.outcome, digits=rec.digits,
                                      duration_s=round((ended - started).total_seconds(), 3))
        if rec.voicemail is not None:
            values["voicemail_path"] = str(rec.voicemail.relative_to(self.cfg.data_path))
        if rec.name is not None:
            values["name_path"] = str(rec.name.relative_to(self.cfg.data_path))
        if rec.talk_s is not None:
            values["talk_s"] = round(rec.talk_s, 1)
        if rec.extra_reason:
            values["reason"] = f"{rec.reason}; {rec.extra_reason}" if rec.reason else rec.extra_reason
        self.log.close(row, values, (rule_id, started) if rule_id is not None else None)
        if self.on_closed is not None:
            self.on_closed({**row.values, **values, "ring_through": rec.house_missed})

    # -- actions --

    @staticmethod
    def _ended_outcome(call: LineCall) -> str:
        """How a call that was never answered by screener ended."""
        if call.end_reason == "stopped":
            return "interrupted"
        return "answered_elsewhere" if call.answered_elsewhere else "missed"

    @staticmethod
    def _hung_up_outcome(call: LineCall) -> str:
        """How a call screener answered ended when the other side ended it."""
        if call.end_reason == "stopped":
            return "interrupted"
        if call.end_reason == "cancelled":  # the CANCEL crossed our 200: the caller had already given up here
            return "answered_elsewhere" if call.answered_elsewhere else "caller_hung_up"
        return "caller_hung_up"

    def _let_ring(self, call: LineCall, rec: CallRecord) -> None:
        """Ring with the house, never answer; the CANCEL tells how it ended, max_ring_time ends it anyway."""
        call.ring()
        if not call.wait_ended(self.sc.max_ring_time) and call.decline(480):
            rec.outcome = "missed" if rec.outcome != "over_capacity" else rec.outcome
            note = f"nobody answered within {self.sc.max_ring_time:g} s: ended with 480"
            rec.extra_reason = f"{rec.extra_reason}; {note}" if rec.extra_reason else note
            return
        rec.outcome = self._ended_outcome(call)

    def _block(self, call: LineCall, rec: CallRecord, can_answer: bool = True) -> None:
        if self.sc.block_action == "decline" or not can_answer:
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
            if self.gatekeeper:  # nothing else rings the house: put it through unscreened
                rec.note("too many calls screened at once: put through unscreened")
                self._put_through(call, caller, rec)
                return
            rec.extra_reason = "too many calls screened at once: left ringing"
            self._let_ring(call, rec)
            if rec.outcome != "interrupted":
                rec.extra_reason += f" ({rec.outcome.replace('_', ' ')})"
                rec.outcome = "over_capacity"
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
            rec.outcome = self._hung_up_outcome(call)
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
        call.play(self.prompts.passed)
        if self.rt.target and not call.ended:
            self._ring_through(call, caller, rec)
        if rec.outcome == "passed":
            self._voicemail(call, rec)
        if self.sc.remember_verified and caller.e164 and rec.outcome != "blocked_by_household":
            self.log.allow(caller.e164, f"verified {caller.name}".strip()[:200])
        if not call.ended:
            call.hangup()

    def _voicemail(self, call: LineCall, rec: CallRecord) -> None:
        if self.sc.voicemail and not call.ended:
            call.play(self.prompts.voicemail)
            call.play(audio.beep())
            pcm = call.record(self.sc.voicemail_max_seconds, VOICEMAIL_SILENCE_S)
            if audio.is_silent(pcm):
                rec.note(audio.SILENT_MESSAGE)
            elif len(pcm) >= MIN_VOICEMAIL_S * audio.RATE * 2:
                rec.voicemail = self._save_voicemail(call.info.call_id, pcm)

    # -- ring-through: a caller who passed reaches the house, which hears who it is and decides --

    def _ring_through(self, call: LineCall, caller: Caller, rec: CallRecord) -> None:
        """Leaves rec.outcome "passed" (with the reason in the row) when the caller should leave a message."""
        if not self._bridged.acquire(blocking=False):
            rec.note("too many calls put through at once: voicemail")
            return
        try:
            name = self._caller_name(call, rec) if self.rt.ask_name else b""
            if call.ended:
                rec.outcome = self._hung_up_outcome(call)
                return
            call.play(self.prompts.hold)
            call.play_background(audio.ringback(cycles=int(self.rt.timeout + ANNOUNCE_BUDGET_S) // 5 + 1))
            leg, _ = self._ring_house(call, caller, rec, self.rt.timeout)
            if leg is None:
                call.stop_playback()
                return
            choice = self._ask_household(call, leg, caller, name) if self.rt.announce else "talk"
            if choice == "talk" and not call.ended:
                self._talk(call, leg, rec)
                return
            call.stop_playback()
            if not leg.ended:
                leg.play(self.prompts.announcer.done)
                leg.hangup()
            if call.ended:
                rec.outcome = self._hung_up_outcome(call)
                rec.note("the caller hung up while the household was deciding")
            elif choice == "block":
                self._blocked_by_household(call, caller, rec)
            else:
                rec.note("the household sent it to voicemail" if choice == "voicemail"
                         else "the household answered but did not choose")
        finally:
            self._bridged.release()

    def _caller_name(self, call: LineCall, rec: CallRecord) -> bytes:
        """Ask the caller's name for the announcement, keep it with the call like a voicemail."""
        call.play(self.prompts.announcer.ask_name)
        call.play(audio.beep())
        pcm = call.record(NAME_MAX_S, NAME_SILENCE_S)
        if audio.is_silent(pcm):
            return b""  # the number is read out instead
        rec.name = self._save_voicemail(call.info.call_id, pcm, suffix="_name")
        return pcm

    def _ring_house(self, call: LineCall, caller: Caller, rec: CallRecord,
                    timeout: float) -> tuple[HouseLeg | None, int]:
        """Dial the household for this caller: the leg once it answered, else None with the reason noted and
        the code to give the caller (the house's busy or decline, else 480)."""
        rt = self.rt
        label = caller.name or caller.user or "anonymous"
        display = f"{label} ({rt.marker})" if rt.marker else label
        credentials = (rt.username or self.cfg.sip.auth_user, rt.password or self.cfg.sip.password) \
            if rt.username or rt.password else None
        leg = call.dial(rt.target, from_user=_dialable(caller.user) or "anonymous", display=display[:60],
                        credentials=credentials)
        if leg is None:
            if call.ended:  # the caller hung up before the house was rung
                rec.outcome = self._hung_up_outcome(call) if rec.answered_at else self._ended_outcome(call)
            else:
                rec.note("the house could not be rung: no free media port")
            return None, 480
        result = leg.wait_answered(timeout)
        if result == "answered":
            return leg, 200
        leg.cancel()
        if call.ended:
            rec.outcome = self._hung_up_outcome(call) if rec.answered_at else self._ended_outcome(call)
            rec.note("the caller hung up while the house rang")
            return None, 480
        code = leg.final_code or 0
        rec.house_missed = _HOUSE_RESULTS.get(result, _HOUSE_RESULTS["failed"]).format(timeout=timeout, code=code)
        rec.note(rec.house_missed)
        return None, code if result in ("busy", "declined") and 400 <= code < 700 else 480

    def _ask_household(self, call: LineCall, leg: HouseLeg, caller: Caller, name: bytes) -> str:
        """Tell the household who calls; its key: "talk", "voicemail", "block", or "" (none, or a side hung up)."""
        rt, announcer = self.rt, self.prompts.announcer
        choices = {rt.talk_key: "talk", rt.voicemail_key: "voicemail", rt.block_key: "block"}
        text = announcer.announcement(name or announcer.number(_dialable(caller.user)))
        for _ in range(2):
            leg.play(text, until_digit=True)
            for _ in range(int(ANNOUNCE_WAIT_S / KEY_POLL_S)):  # the caller may hang up meanwhile
                if leg.ended or call.ended:
                    break
                key = leg.wait_digit(KEY_POLL_S)
                if key in choices:
                    return choices[key]
            if leg.ended or call.ended:
                return ""
        return ""

    def _talk(self, call: LineCall, leg: HouseLeg, rec: CallRecord) -> None:
        call.stop_playback()
        started = time.monotonic()
        ended_by = call.bridge(leg, self.rt.max_talk_minutes * 60.0)
        rec.talk_s = time.monotonic() - started
        rec.outcome = "connected"
        rec.note(_BRIDGE_ENDS.get(ended_by, ended_by))

    def _blocked_by_household(self, call: LineCall, caller: Caller, rec: CallRecord) -> None:
        rec.outcome = "blocked_by_household"
        if caller.e164:
            self.log.put_entry("block", caller.e164, f"blocked when it rang {caller.name}".strip()[:200],
                               "household")
        else:
            rec.note("withheld number: nothing to put on the block list")
        call.play(self.prompts.blocked)
        call.hangup()

    def _put_through(self, call: LineCall, caller: Caller, rec: CallRecord) -> None:
        """Gatekeeper mode: ring the house for this caller, who is answered only once the house answers (an
        unanswered call costs the caller nothing); no announcement."""
        call.ring()
        if not self._bridged.acquire(blocking=False):
            rec.note("too many calls put through at once: voicemail")
            if call.answer():
                rec.answered_at = self.now()
                self._voicemail(call, rec)
                call.hangup()
                rec.outcome = "passed"
            else:
                rec.outcome = self._ended_outcome(call)
            return
        try:
            leg, code = self._ring_house(call, caller, rec, self.sc.max_ring_time)
            if leg is None:
                if not call.ended and call.decline(code):
                    rec.outcome = "missed"
                return
            if not call.answer():  # the caller gave up as the house answered
                leg.hangup()
                rec.outcome = self._ended_outcome(call)
                return
            rec.answered_at = self.now()
            self._talk(call, leg, rec)
        finally:
            self._bridged.release()

    def _save_voicemail(self, call_id: str, pcm: bytes, suffix: str = "") -> Path | None:
        stamp = self.now().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        safe = re.sub(r"[^A-Za-z0-9]", "", call_id)[:16] or "call"
        path = self.voicemail_dir / f"{stamp}_{safe}{suffix}.wav"
        try:
            audio.write_wav(path, pcm)
        except OSError as e:
            log.error("screener: cannot save voicemail %s: %s", path, e)
            return None
        return path


_HOUSE_RESULTS = {
    "no_answer": "the house did not answer within {timeout:g} s",
    "busy": "the house was busy ({code})",
    "declined": "the house declined ({code})",
    "failed": "the house could not be rung ({code})",
}
_BRIDGE_ENDS = {"caller": "the caller hung up", "household": "the household hung up",
                "timeout": "ended after the longest talk time", "stopped": "ended by a stop"}


def _dialable(user: str) -> str:
    """The caller's number as the line presented it, as a SIP user part and as digits to read out."""
    return "".join(c for c in user.replace("+", "00") if c in "0123456789*#")


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


SQLITE_CACHE_KIB = 512


def _small_page_cache(dbapi_conn: Any, _record: Any) -> None:
    # The SIP side touches few pages per call: the right edge of the calls table and its indexes, the path to
    # a rule in the list index (~50 interior pages with 1M entries). SQLite's default cache of 2 MB per
    # connection keeps every page written until it is full: RSS rose ~0.45 MiB per 1000 calls, bench run
    # after bench run, until 2 MB per pooled connection.
    dbapi_conn.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")


def load_prompts(cfg: Config) -> audio.Prompts:
    """The prompts of the configured language: configured files, the dashboard's, else the shipped ones."""
    p, rt = cfg.screening.prompts, cfg.ring_through
    configured = {name: (cfg.resolve(getattr(p, name)) if getattr(p, name) else None) for name in audio.PROMPT_NAMES}
    return audio.load_prompts(cfg.screening.language, cfg.screening.challenge_digit, configured,
                              cfg.data_path / "prompts", (rt.talk_key, rt.voicemail_key, rt.block_key))


class Service:
    """The running screener: start() binds and registers, stop() unregisters and closes; run() does both.

    Without a SIP account ([sip] server, username or password empty) it runs all the same, registered nowhere,
    in the state "not_configured", until the config file gives it one: the file is watched every second, and a
    [sip] change stops the agent and starts a new one (no restart).
    """

    def __init__(self, cfg: Config, *, db: store.Store | None = None,
                 agent_factory: Callable[..., Any] | None = None) -> None:
        self.cfg = cfg
        self._db = db
        self._agent_factory = agent_factory
        self.agent: Any = None
        self.handler: CallHandler | None = None
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._heartbeat: health.Heartbeat | None = None
        self._config_stamp: tuple[Any, ...] | None = None
        self._sip_pending_since: float | None = None  # a [sip] change waiting for the calls in progress
        self._agent_error = ""  # why the last agent could not start (its SIP port taken)
        self._waiting_since = store.utcnow()
        self.notifier: notify.Notifier | None = None
        self._retention: threading.Thread | None = None
        self._retention_due = 0.0  # monotonic; retention runs at the first loop and then daily

    def start(self) -> None:
        """Open the database, recover what the last run left, load prompts, bind the SIP port, register.

        Raises ValueError for a prompt that cannot be used and OSError when the SIP port is taken.
        """
        cfg = self.cfg
        if self._db is None:
            self._db = store.Store(cfg.database_url)  # the schema is brought up to date by `screener run`
        db = self._db
        if db.is_sqlite:
            event.listen(db.engine, "connect", _small_page_cache)
        prompts = load_prompts(cfg)
        calllog = CallLog(db, cfg.data_path / JOURNAL_NAME)
        calllog.start()
        # the journal of the last run and its open rows first (a database that is away: later, by the writer)
        if not calllog.flush(5.0):
            log.warning("screener: the database does not answer yet: call rows are journalled until it does")
        self.handler = CallHandler(cfg, db, prompts, calllog=calllog)
        self._start_notifier(calllog.recovered[1] if calllog.recovered else 0)
        self.handler.refresh_rules()
        self._config_stamp = self._stamp()
        self._start_agent()
        self._heartbeat = health.Heartbeat(db, self._snapshot, file=cfg.data_path / health.BEAT_FILE).start()

    def _start_agent(self) -> None:
        """Register with cfg.sip, or wait as "not_configured" when it names no account; OSError: port taken."""
        from screener.sip import SipAgent

        sip = self.cfg.sip
        self._agent_error = ""
        if sip.missing:
            log.warning("screener: no SIP account yet (sip.%s is empty): waiting for one in %s (the dashboard's "
                        "setup page writes it)", sip.missing, self.cfg.path or "the config file")
            self._waiting_since = store.utcnow()
            self._on_status_value(health.NOT_CONFIGURED, f"sip.{sip.missing} is empty", self._waiting_since)
            return
        assert self.handler is not None
        factory = self._agent_factory or SipAgent
        agent = factory(sip, self.handler, self._on_status, on_reject=self.handler.rejected,
                        ring_limit=self.cfg.screening.max_ring_time + RING_LIMIT_MARGIN_S)
        self.agent = agent
        agent.start()

    def _snapshot(self) -> health.Snapshot:
        agent = self.agent
        if agent is not None:
            return health.agent_snapshot(agent)()
        if self._agent_error:
            return health.Snapshot("failed", self._agent_error, self._waiting_since)
        if self.cfg.sip.missing:
            return health.Snapshot(health.NOT_CONFIGURED, f"sip.{self.cfg.sip.missing} is empty",
                                   self._waiting_since)
        return health.Snapshot("registering", "", self._waiting_since)

    def _start_notifier(self, interrupted: int) -> None:
        """Notifications: after a crash (the last beat was not "stopped"), then for closed calls and SIP states."""
        assert self._db is not None and self.handler is not None
        if not self.cfg.notify.urls:
            return  # nothing to send to: apprise and the sender thread are never loaded
        from screener import housekeeping
        from screener.notify import Notifier

        db, last = self._db, health.read_beat_file(self.cfg.data_path / health.BEAT_FILE)
        self.notifier = Notifier(self.cfg, counts=lambda a, b: housekeeping.call_counts(db, a, b)).start()
        self.handler.on_closed = self.notifier.call_closed
        self.notifier.started(last.state if last else None, last.heartbeat_at if last else None, interrupted)

    def _housekeeping(self) -> None:
        """Retention at the first loop and then daily, on a thread of its own: a first run may delete many rows."""
        now = time.monotonic()
        if self._db is None or now < self._retention_due or (self._retention and self._retention.is_alive()):
            return
        if not (self.cfg.retention.calls_days or self.cfg.retention.voicemail_days):
            return  # keep for ever (the default): nothing to load, nothing to run
        from screener import housekeeping

        self._retention_due = now + 86400.0
        self._retention = threading.Thread(target=housekeeping.run_retention, args=(self._db, self.cfg, self._stop),
                                           name="retention", daemon=True)
        self._retention.start()

    def _on_status(self, st: Any) -> None:
        if self.notifier is not None:
            self.notifier.status(st.state, st.last_error or "")
        self._on_status_value(st.state, st.last_error or "", datetime.fromtimestamp(st.since, UTC))

    def _on_status_value(self, state: str, error: str, when: datetime | None = None) -> None:
        assert self._db is not None
        try:
            with self._db.write() as s:
                store.set_sip_status(s, state, error[:300], now=when)
        except Exception as e:
            log.error("screener: cannot store the SIP status %r: %s", state, _first_line(e))

    def stop(self) -> None:
        """Unregister, end the calls (outcome interrupted) and write their rows (about 3 s at most)."""
        self._stop.set()
        agent, self.agent = self.agent, None
        if agent is not None:
            agent.stop()
        if agent is not None or self._heartbeat is not None:
            if self.handler is not None:
                self.handler.wait_idle(1.0)
                self.handler.close(1.5)  # what the database does not take now stays in the journal
            if self._heartbeat is not None:
                self._heartbeat.stop("stopped")
                self._heartbeat = None
            self._on_status_value("stopped", "")
        if self.notifier is not None:
            self.notifier.stop()
        if self._retention is not None:
            self._retention.join(2.0)
        if self._db is not None:
            self._db.dispose()

    def reload(self) -> bool:
        """Read the config file again: [screening] applies to the next calls, a [sip] change re-registers
        (once the calls in progress ended: see _apply_sip_change); False when the file is bad."""
        from screener import config as config_mod

        if self.handler is None or not self.cfg.path:
            return False
        try:
            cfg = config_mod.load(Path(self.cfg.path))
            prompts = load_prompts(cfg)
        except (ValueError, OSError) as e:
            log.error("screener: configuration not reloaded, the running one stays: %s", e)
            return False
        if cfg.database != self.cfg.database or cfg.data_dir != self.cfg.data_dir or cfg.notify != self.cfg.notify:
            log.warning("screener: [database], [notify] and data_dir changes take effect at the next restart")
        sip_changed = cfg.sip != self.cfg.sip
        cfg = replace(self.cfg, screening=cfg.screening, web=cfg.web, sip=cfg.sip, ring_through=cfg.ring_through,
                      retention=cfg.retention)
        self.handler.configure(cfg, prompts)
        self.cfg = cfg
        log.info("screener: configuration reloaded from %s", cfg.path)
        if sip_changed:
            log.info("screener: [sip] changed: registering again%s",
                     "" if self.handler.wait_idle(0) else " once the calls in progress end")
            self._sip_pending_since = self._sip_pending_since or time.monotonic()
        return True

    def _apply_sip_change(self, now: float | None = None) -> bool:
        """Re-register with the new [sip] once no call is in progress (or after SIP_CHANGE_WAIT_S: they end as
        on a stop); True when it did."""
        if self._sip_pending_since is None or self.handler is None:
            return False
        now = time.monotonic() if now is None else now
        if not self.handler.wait_idle(0) and now - self._sip_pending_since < SIP_CHANGE_WAIT_S:
            return False
        self._sip_pending_since = None
        old, self.agent = self.agent, None
        if old is not None:
            old.stop()  # unregisters the old binding; frees the SIP port for the new agent
        self._waiting_since = store.utcnow()
        if not self.cfg.sip.missing:
            self._on_status_value("registering", "", self._waiting_since)
        try:
            self._start_agent()
        except OSError as e:
            self.agent = None
            self._agent_error = f"cannot bind UDP port {self.cfg.sip.sip_port}: {e.strerror or e}"
            log.error("screener: %s", self._agent_error)
            self._on_status_value("failed", self._agent_error, self._waiting_since)
        return True

    def _stamp(self) -> tuple[Any, ...] | None:
        """What tells the config file (and the password file it names) changed."""
        if not self.cfg.path:
            return None
        stamps: list[Any] = []
        for p in (Path(self.cfg.path), self.cfg.resolve(self.cfg.sip.password_file) if self.cfg.sip.password_file
                  else None):
            try:
                st = os.stat(p) if p is not None else None
            except OSError:
                st = None
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino) if st is not None else None)
        return tuple(stamps)

    def config_changed(self) -> bool:
        """Whether the config file changed since it was last read (checked every second by run())."""
        stamp = self._stamp()
        if stamp == self._config_stamp:
            return False
        self._config_stamp = stamp
        return True

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()  # the run loop applies it within a second, off the signal handler

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stop is requested (signal or request_stop()); False on timeout."""
        return self._stop.wait(timeout)

    def run(self, on_started: Callable[[], None] | None = None) -> int:
        """start(), wait for SIGINT/SIGTERM (SIGHUP or a changed config file reloads), stop(); 0 on a clean
        stop, 1 when it could not start."""
        with capture_signals(self.request_stop, self.request_reload):
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
                    if self.config_changed() or self._reload.is_set():
                        self._reload.clear()
                        self.reload()
                    self._apply_sip_change()
                    if self.handler is not None:
                        self.handler.refresh_rules()  # a list changed in the dashboard is known within a second
                    self._housekeeping()
            finally:
                self.stop()
        return 0


@contextmanager
def capture_signals(on_stop: Callable[[], None], on_reload: Callable[[], None] | None = None) -> Iterator[None]:
    """Route SIGINT/SIGTERM to `on_stop` and SIGHUP to `on_reload` (else to `on_stop`) inside the block, and
    restore the previous handlers after it. A closed terminal's SIGHUP must never end it like a crash."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def handle(signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP and on_reload is not None:
            log.info("screener: SIGHUP received, reloading the configuration")
            on_reload()
            return
        log.info("screener: %s received, stopping", signal.Signals(signum).name)
        on_stop()

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_service(cfg: Config, on_started: Callable[[Service], None] | None = None) -> int:
    """`screener run`: the SIP service until SIGINT/SIGTERM; `on_started` (the CLI starts the dashboard
    there) runs once it is up."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    service = Service(cfg)

    def started() -> None:
        if on_started is not None:
            on_started(service)
        freeze_startup_objects()

    limit_malloc_arenas()
    return service.run(on_started=started)


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
    try:
        ctypes.CDLL(None).malloc_trim(0)  # what start-up built and freed goes back to the system (~3 MiB)
    except (OSError, AttributeError):
        pass  # not glibc
