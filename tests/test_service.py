"""The call handler with fake calls (no sockets): caller -> decision -> what was done -> the row written."""

from __future__ import annotations

import os
import signal
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select

from screener import audio, config, store
from screener.numbers import parse_caller
from screener.rules import Decision
from screener.service import CallHandler, CallLog, Service, capture_signals, phonebook_decision


@dataclass
class Info:
    call_id: str = "call-1"
    source: tuple[str, int] = ("192.0.2.1", 5060)
    from_raw: str = "<sip:0212345678@fritz.box>;tag=1"
    pai_raw: str | None = None
    privacy: str | None = None
    called: str = "<sip:0611111111@fritz.box>"
    display_name: str = ""
    from_provider: bool = True
    cannot_serve: str = ""


@dataclass
class FakeCall:
    """A scripted call: what the caller does, and a log of what the handler did."""

    info: Info = field(default_factory=Info)
    keys: list[str | None] = field(default_factory=list)  # successive wait_digit results
    cancelled_while_ringing: bool = False  # CANCEL arrives before anything is answered
    elsewhere: bool = False  # the CANCEL says another phone answered
    hang_up_after_plays: int | None = None  # the caller hangs up after this many prompts
    voice_seconds: float = 0.0  # what record() returns
    stopped: bool = False
    log: list[str] = field(default_factory=list)
    end_reason: str | None = None
    rows_at_first_action: list[tuple[str | None, str]] = field(default_factory=list)
    db: store.Store | None = None
    house: FakeLeg | None = None  # what dial() returns
    hang_up_in_bridge: str = "caller"  # who ends a bridged call
    _ended: bool = False
    _answered: bool = False
    _plays: int = 0

    def _first_action(self) -> None:
        if self.db is not None and not self.rows_at_first_action:
            with self.db.read() as s:
                self.rows_at_first_action = [(r.outcome, r.decision) for r in s.scalars(select(store.Call))]

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def answered_elsewhere(self) -> bool:
        return self.elsewhere

    def _end(self, reason: str) -> None:
        self._ended = True
        self.end_reason = self.end_reason or ("stopped" if self.stopped else reason)

    def ring(self) -> bool:
        self._first_action()
        self.log.append("ring")
        return not self._ended

    def decline(self, code: int = 603) -> bool:
        self._first_action()
        if self._answered or self._ended:
            return False
        if self.cancelled_while_ringing:
            self._end("cancelled")
            return False
        self.log.append(f"decline {code}")
        self._end("declined")
        return True

    def answer(self) -> bool:
        self._first_action()
        if self.cancelled_while_ringing:
            self._end("cancelled")
            return False
        self.log.append("answer")
        self._answered = True
        return True

    def hangup(self) -> None:
        self.log.append("hangup")
        self._end("hangup")

    def play(self, pcm: bytes, *, until_digit: bool = False) -> bool:
        if self._ended:
            return False
        self._plays += 1
        self.log.append(f"play {len(pcm)}")
        if self.hang_up_after_plays is not None and self._plays >= self.hang_up_after_plays:
            self._end("bye")
        return not self._ended

    def wait_digit(self, timeout: float) -> str | None:
        if self._ended:
            return None
        key = self.keys.pop(0) if self.keys else None
        self.log.append(f"digit {key}")
        return key

    def record(self, max_seconds: float, silence_seconds: float = 5.0) -> bytes:
        self.log.append(f"record {max_seconds:g}")
        n = int(min(self.voice_seconds, max_seconds) * 8000)
        return struct.pack(f"<{n}h", *([3000, -3000] * (n // 2) + [0] * (n % 2)))

    def wait_ended(self, timeout: float | None = None) -> bool:
        # an unbounded wait would ring for ever on a real line: the handler must always give a limit
        assert timeout is not None, "the handler waited without a time limit"
        self.log.append(f"wait {timeout:g}")
        if self.cancelled_while_ringing or self.stopped:
            self._end("stopped" if self.stopped else "cancelled")
            return True
        if self.elsewhere and not self._ended:
            self._end("cancelled")
            return True
        return self._ended  # nobody cancels: the time runs out at once instead of really waiting

    def play_background(self, pcm: bytes) -> None:
        self.log.append("ringback")

    def stop_playback(self) -> None:
        pass

    def dial(self, target: str, *, from_user: str, display: str,
             credentials: tuple[str, str] | None = None) -> FakeLeg | None:
        self.log.append(f"dial {target} from {from_user} {display!r}" + (f" as {credentials[0]}" if credentials else ""))
        if self.house is not None:
            self.house.caller = self
        return self.house

    def bridge(self, leg: FakeLeg, max_seconds: float) -> str:
        assert max_seconds > 0
        self.log.append("bridge")
        leg.log.append("bridge")
        if self.hang_up_in_bridge == "caller":
            self._end("bye")
        leg._ended = True
        return self.hang_up_in_bridge


@dataclass
class FakeLeg:
    """The household's phone, scripted: how it answers the ring-through and which key it presses."""

    result: str = "answered"
    final_code: int | None = None
    keys: list[str | None] = field(default_factory=list)
    caller_hangs_up: bool = False  # the caller hangs up while the house rings
    log: list[str] = field(default_factory=list)
    caller: FakeCall | None = None
    _ended: bool = False

    @property
    def ended(self) -> bool:
        return self._ended

    def wait_answered(self, timeout: float) -> str:
        self.log.append(f"ringing {timeout:g}")
        if self.caller_hangs_up and self.caller is not None:
            self.caller._end("bye")
            return "caller_gone"
        return self.result

    def cancel(self) -> None:
        if not self._ended:
            self.log.append("cancel")
        self._ended = True

    def hangup(self) -> None:
        self.log.append("hangup")
        self._ended = True

    def play(self, pcm: bytes, *, until_digit: bool = False) -> bool:
        self.log.append(f"play {len(pcm)}")
        return not self._ended

    def wait_digit(self, timeout: float) -> str | None:
        if self._ended:
            return None
        key = self.keys.pop(0) if self.keys else None
        if key is None and not self.keys:
            self._ended = True  # nothing more scripted: the household hangs up
        return key



class FlushingHandler(CallHandler):
    """The handler, and its rows in the database when it returns (the writer thread does them otherwise)."""

    def __call__(self, call) -> None:
        super().__call__(call)
        assert self.flush(5.0)


ANNOUNCER = audio.Announcer(ask_name=b"n" * 400, call_from=b"f" * 200, options=b"o" * 600, done=b"d" * 100,
                            keys={k: b"k" * 20 for k in "0123456789*#"})
PROMPTS = audio.Prompts(challenge=b"c" * 8000, passed=b"p" * 800, failed=b"f" * 1600, blocked=b"b" * 2400,
                        voicemail=b"v" * 3200, hold=b"h" * 1000, announcer=ANNOUNCER)


@pytest.fixture
def make(write_config):
    """make(toml) -> (handler, db, cfg) on a fresh SQLite database."""
    made: list[tuple[CallHandler, store.Store]] = []

    def _make(body: str = "") -> tuple[CallHandler, store.Store, config.Config]:
        cfg = config.load(write_config(body))
        db = store.Store(cfg.database_url)
        store.upgrade(db)
        handler = FlushingHandler(cfg, db, PROMPTS)
        made.append((handler, db))
        return handler, db, cfg

    yield _make
    for handler, db in made:
        handler.close()
        db.dispose()


def add(db: store.Store, list_: str, pattern: str) -> None:
    with db.write() as s:
        store.put_entry(s, list_, pattern)


def rows(db: store.Store) -> list[store.Call]:
    with db.read() as s:
        return list(s.scalars(select(store.Call).order_by(store.Call.id)))


PLAY_C = f"play {len(PROMPTS.challenge)}"
PLAY_F = f"play {len(PROMPTS.failed)}"
PLAY_B = f"play {len(PROMPTS.blocked)}"

# (name, config, list entries, call, expected actions, expected outcome, decision)
CASES = [
    ("unknown caller passes", "", [], dict(keys=["5"], voice_seconds=2.0),
     ["ring", "answer", PLAY_C, "digit 5", f"play {len(PROMPTS.passed)}", f"play {len(PROMPTS.voicemail)}",
      "play 5600", "record 120", "hangup"], "passed", "screen"),
    ("wrong key then right key on the repeat", "", [], dict(keys=["1", "5"]),
     ["ring", "answer", PLAY_C, "digit 1", PLAY_C, "digit 5"], "passed", "screen"),
    ("no key at all", "", [], dict(keys=[]),
     ["ring", "answer", PLAY_C, "digit None", PLAY_C, "digit None", PLAY_F, "hangup"], "failed_challenge", "screen"),
    ("wrong keys", "[screening]\nchallenge_repeats = 0\n", [], dict(keys=["9"]),
     ["ring", "answer", PLAY_C, "digit 9", PLAY_F, "hangup"], "failed_challenge", "screen"),
    ("caller hangs up during the challenge", "", [], dict(hang_up_after_plays=1),
     ["ring", "answer", PLAY_C], "caller_hung_up", "screen"),
    ("blocked number declined 603", "", [("block", "+390212345678")], {}, ["decline 603"], "blocked", "block"),
    ("blocked prefix declined 607", "[screening]\ndecline_code = 607\n", [("block", "+39021*")], {},
     ["decline 607"], "blocked", "block"),
    ("blocked, answer and hang up", '[screening]\nblock_action = "hangup"\n', [("block", "+390212345678")], {},
     ["answer", PLAY_B, "hangup"], "blocked", "block"),
    ("allowed, answered elsewhere", "", [("allow", "+390212345678")], dict(elsewhere=True),
     ["ring"], "answered_elsewhere", "allow"),
    ("allowed, nobody answers: 480 after max_ring_time", "[screening]\nmax_ring_time = 30\n",
     [("allow", "+390212345678")], {}, ["ring", "wait 30", "decline 480"], "missed", "allow"),
    ("internal call of the router", "", [], dict(info=Info(from_raw='"Kitchen" <sip:**622@fritz.box>;tag=2')),
     ["ring"], "missed", "allow"),
    ("withheld blocked by class", "", [("block", "class:withheld")],
     dict(info=Info(from_raw="<sip:anonymous@anonymous.invalid>;tag=3")), ["decline 603"], "blocked", "block"),
    ("Privacy: id means withheld", "", [("block", "class:withheld")], dict(info=Info(privacy="id")),
     ["decline 603"], "blocked", "block"),
    ("P-Asserted-Identity from the provider wins", "", [("block", "+393331234567")],
     dict(info=Info(pai_raw="<tel:+393331234567>")), ["decline 603"], "blocked", "block"),
    ("withheld, but the asserted number is blocked", "", [("block", "+393331234567")],
     dict(info=Info(privacy="id", pai_raw="<tel:+393331234567>")), ["decline 603"], "blocked", "block"),
    ("withheld, asserted number not blocked", "", [("block", "+393339999999")],
     dict(info=Info(privacy="id", pai_raw="<tel:+393331234567>"), keys=["5"]), ["ring", "answer"], "passed",
     "screen"),
    ("cannot serve: blocked still declined", '[screening]\nblock_action = "hangup"\n', [("block", "+390212345678")],
     dict(info=Info(cannot_serve="requires 100rel")), ["decline 603"], "blocked", "block"),
    ("cannot serve: unknown caller left ringing", "", [],
     dict(info=Info(cannot_serve="no G.711 in the offer")), ["ring", "wait 180", "decline 480"], "missed", "screen"),
    ("P-Asserted-Identity not from the provider is ignored", "", [("block", "+393331234567")],
     dict(info=Info(pai_raw="<tel:+393331234567>", from_provider=False), keys=["5"]),
     ["ring", "answer", PLAY_C, "digit 5"], "passed", "screen"),
    ("cancelled during the screen delay", "[screening]\nscreen_delay = 3.0\n", [],
     dict(cancelled_while_ringing=True, elsewhere=True), ["ring"], "answered_elsewhere", "screen"),
    ("cancelled before it was answered", "", [], dict(cancelled_while_ringing=True), ["ring"], "missed", "screen"),
    ("blocked but the CANCEL came first", "", [("block", "+390212345678")], dict(cancelled_while_ringing=True),
     [], "missed", "block"),
    ("service stopping while it rang", "", [("allow", "+390212345678")], dict(stopped=True),
     ["ring"], "interrupted", "allow"),
    ("service stopping during the challenge", "", [], dict(stopped=True, hang_up_after_plays=1),
     ["ring", "answer", PLAY_C], "interrupted", "screen"),
    ("default allow", '[screening]\ndefault_action = "allow"\n', [], {}, ["ring"], "missed", "allow"),
    ("phonebook name allowed", "[screening]\ntrust_phonebook_names = true\n", [],
     dict(info=Info(display_name="Zia Carla")), ["ring"], "missed", "allow"),
    ("phonebook spam prefix blocked", "[screening]\ntrust_phonebook_names = true\n", [],
     dict(info=Info(display_name="SPAM energy")), ["decline 603"], "blocked", "block"),
    ("numeric display name is no contact", "[screening]\ntrust_phonebook_names = true\n", [],
     dict(info=Info(display_name="0212345678"), keys=["5"]), ["ring", "answer", PLAY_C, "digit 5"], "passed",
     "screen"),
]


@pytest.mark.parametrize("name,body,entries,script,actions,outcome,decision", CASES, ids=[c[0] for c in CASES])
def test_call_table(make, name, body, entries, script, actions, outcome, decision):
    handler, db, _ = make(body)
    for list_, pattern in entries:
        add(db, list_, pattern)
    call = FakeCall(db=db, **script)
    handler(call)
    assert call.log[: len(actions)] == actions
    (row,) = rows(db)
    assert (row.outcome, row.decision) == (outcome, decision)
    assert row.ended_at is not None and row.duration_s is not None
    if call.rows_at_first_action:
        # the row exists, still open, before the handler does anything to the call
        assert call.rows_at_first_action == [(None, decision)]


RT = '[ring_through]\ntarget = "sip:**9@fritz.box"\n'
GATE = '[sip]\nmode = "gatekeeper"\n' + RT
DIAL = "dial sip:**9@fritz.box from 0212345678 '0212345678 (screened)'"
PASSED = ["ring", "answer", PLAY_C, "digit 5", f"play {len(PROMPTS.passed)}"]
VOICEMAIL = [f"play {len(PROMPTS.voicemail)}", "play 5600", "record 120"]
ANNOUNCE = len(ANNOUNCER.announcement(ANNOUNCER.number("0212345678")))

# (name, config, list entries, caller script, house script, caller's actions, house's actions, outcome, reason part)
RING_THROUGH = [
    ("house takes it", RT, [], dict(keys=["5"]), dict(keys=["1"]),
     [*PASSED, "play 1000", "ringback", DIAL, "bridge"], ["ringing 25", f"play {ANNOUNCE}", "bridge"],
     "connected", "the caller hung up"),
    ("house hangs up first", RT, [], dict(keys=["5"], hang_up_in_bridge="household"), dict(keys=["1"]),
     [*PASSED, "play 1000", "ringback", DIAL, "bridge", "hangup"], ["ringing 25", f"play {ANNOUNCE}", "bridge"],
     "connected", "the household hung up"),
    ("no announcement: bridged at once", RT + "announce = false\n", [], dict(keys=["5"]), {},
     [*PASSED, "play 1000", "ringback", DIAL, "bridge"], ["ringing 25", "bridge"], "connected", ""),
    ("house sends it to voicemail", RT, [], dict(keys=["5"], voice_seconds=2.0), dict(keys=[None, "2"]),
     [*PASSED, "play 1000", "ringback", DIAL, *VOICEMAIL, "hangup"],
     ["ringing 25", f"play {ANNOUNCE}", "play 100", "hangup"], "passed", "the household sent it to voicemail"),
    ("house blocks it", RT, [], dict(keys=["5"]), dict(keys=["9"]),
     [*PASSED, "play 1000", "ringback", DIAL, PLAY_B, "hangup"], ["ringing 25", f"play {ANNOUNCE}", "play 100",
                                                                  "hangup"],
     "blocked_by_household", ""),
    ("house answers and says nothing", RT, [], dict(keys=["5"]), dict(keys=[]),
     [*PASSED, "play 1000", "ringback", DIAL, *VOICEMAIL], ["ringing 25", f"play {ANNOUNCE}"],
     "passed", "the household answered but did not choose"),
    ("house does not answer", RT + "timeout = 20\n", [], dict(keys=["5"]), dict(result="no_answer"),
     [*PASSED, "play 1000", "ringback", DIAL, *VOICEMAIL], ["ringing 20", "cancel"],
     "passed", "the house did not answer within 20 s"),
    ("house busy", RT, [], dict(keys=["5"]), dict(result="busy", final_code=486),
     [*PASSED, "play 1000", "ringback", DIAL, *VOICEMAIL], ["ringing 25", "cancel"],
     "passed", "the house was busy (486)"),
    ("caller hangs up while the house rings", RT, [], dict(keys=["5"]), dict(caller_hangs_up=True),
     [*PASSED, "play 1000", "ringback", DIAL], ["ringing 25", "cancel"],
     "caller_hung_up", "the caller hung up while the house rang"),
    ("own credentials for the target", RT + 'username = "house"\npassword = "pw"\n', [], dict(keys=["5"]),
     dict(keys=["1"]), [*PASSED, "play 1000", "ringback", DIAL + " as house"], [], "connected", ""),
    ("gatekeeper: allowed caller put through", GATE, [("allow", "+390212345678")], {}, {},
     ["ring", DIAL, "answer", "bridge"], ["ringing 180", "bridge"], "connected", ""),
    ("gatekeeper: house busy gives the caller 486", GATE, [("allow", "+390212345678")], {},
     dict(result="busy", final_code=486), ["ring", DIAL, "decline 486"], ["ringing 180", "cancel"], "missed",
     "the house was busy (486)"),
    ("gatekeeper: nobody answers, 480, nothing answered", GATE, [("allow", "+390212345678")], {},
     dict(result="no_answer"), ["ring", DIAL, "decline 480"], ["ringing 180", "cancel"], "missed",
     "the house did not answer within 180 s"),
    ("gatekeeper: blocked caller never rings the house", GATE, [("block", "+390212345678")], {}, {},
     ["decline 603"], [], "blocked", ""),
    ("gatekeeper: unknown caller screened first", GATE, [], dict(keys=["5"]), dict(keys=["1"]),
     [*PASSED, "play 1000", "ringback", DIAL, "bridge"], ["ringing 25", f"play {ANNOUNCE}", "bridge"],
     "connected", ""),
]


@pytest.mark.parametrize("name,body,entries,script,house,actions,house_actions,outcome,reason", RING_THROUGH,
                         ids=[c[0] for c in RING_THROUGH])
def test_ring_through_table(make, name, body, entries, script, house, actions, house_actions, outcome, reason):
    handler, db, _ = make(body)
    for list_, pattern in entries:
        add(db, list_, pattern)
    leg = FakeLeg(**house)
    call = FakeCall(db=db, house=leg, **script)
    handler(call)
    assert call.log[: len(actions)] == actions
    assert leg.log[: len(house_actions)] == house_actions
    (row,) = rows(db)
    assert row.outcome == outcome
    assert reason in row.reason
    assert (row.talk_s is not None) == (outcome == "connected")
    with db.read() as s:
        entry = s.scalar(select(store.ListEntry).where(store.ListEntry.pattern == "+390212345678"))
    if outcome == "blocked_by_household":
        assert (entry.list, entry.source) == ("block", "household")
    elif outcome in ("connected", "passed") and not entries:
        assert (entry.list, entry.source) == ("allow", "verified")


def test_caller_gone_before_the_house_is_rung(make):
    handler, db, _ = make(RT)
    call = FakeCall(db=db, house=None, keys=["5"], hang_up_after_plays=3)  # challenge, passed, hold: gone
    handler(call)
    (row,) = rows(db)
    assert row.outcome == "caller_hung_up" and "could not be rung" not in row.reason


def test_ring_through_asks_the_name_and_announces_it(make):
    handler, db, cfg = make(RT + "ask_name = true\n")
    leg = FakeLeg(keys=["1"])
    call = FakeCall(db=db, house=leg, keys=["5"], voice_seconds=2.0)
    handler(call)
    assert call.log[5:9] == [f"play {len(ANNOUNCER.ask_name)}", "play 5600", "record 4", "play 1000"]
    name_pcm = 2 * int(2.0 * 8000)
    assert leg.log[1] == f"play {len(ANNOUNCER.announcement(b'x' * name_pcm))}"
    (row,) = rows(db)
    assert row.outcome == "connected" and row.name_path and (cfg.data_path / row.name_path).is_file()


def test_ring_through_beyond_max_bridged_calls_goes_to_voicemail(make):
    handler, db, _ = make(RT + "max_bridged_calls = 1\n")
    assert handler._bridged.acquire(blocking=False)  # one call already put through
    call = FakeCall(db=db, house=FakeLeg(keys=["1"]), keys=["5"], voice_seconds=2.0)
    handler(call)
    assert not any(a.startswith("dial") for a in call.log)
    (row,) = rows(db)
    assert row.outcome == "passed" and "too many calls put through at once" in row.reason and row.voicemail_path


def test_row_fields_and_hit_count(make):
    handler, db, _ = make()
    add(db, "block", "+390212345678")
    info = Info(call_id="abc@1", from_raw='"Ditta \x07X" <sip:0212345678@fritz.box>;tag=9', display_name="Ditta \x07X",
                called="<sip:0611111111@fritz.box>")
    handler(FakeCall(info=info))
    (row,) = rows(db)
    assert (row.call_id, row.source, row.e164, row.name, row.called_line) == (
        "abc@1", "192.0.2.1:5060", "+390212345678", "Ditta X", "<sip:0611111111@fritz.box>")
    assert row.rule == "block +390212345678" and row.rule_id is not None
    with db.read() as s:
        entry = s.get(store.ListEntry, row.rule_id)
        assert entry.hit_count == 1 and entry.last_hit_at is not None


def test_row_text_is_fitted_like_the_orm_does(make):
    # the row is written with a Core insert (fast path before the 603): same fitting as store's validators
    handler, db, _ = make()
    info = Info(call_id="c" * 300, from_raw="<sip:0212345678@fritz.box>;tag=\x00x", called="<sip:x@y>" + "z" * 300)
    handler(FakeCall(info=info))
    (row,) = rows(db)
    assert row.call_id == "c" * 255 and len(row.called_line) == 255
    assert "\x00" not in row.from_raw and row.from_raw.endswith("tag=\ufffdx")


def test_call_log_on_every_database(st, tmp_path):
    # the Core path of the call rows, on SQLite and PostgreSQL (which refuses NUL and over-long text)
    with st.write() as s:
        entry_id = store.put_entry(s, "block", "+390212345678").id
    log = CallLog(st, tmp_path / "calls.journal")
    log.start()
    try:
        when = store.utcnow()
        row = log.open(dict(started_at=when, call_id="x" * 300, source="192.0.2.1:5060",
                            from_raw="<sip:0212345678@h>;tag=\x00\udce9", called_line="", decision="block",
                            rule_id=entry_id, reason="on the block list", outcome=None))
        second = log.open(dict(started_at=when, call_id="second", decision="allow"))
        log.close(row, dict(ended_at=when, outcome="blocked", duration_s=0.01, digits="1" * 40),
                  (entry_id, when))
        assert log.flush(5.0)
        assert second.id == row.id + 1
    finally:
        log.stop()
    assert (tmp_path / "calls.journal").read_text() == ""  # all of it in the database
    with st.read() as s:
        got = s.get(store.Call, row.id)
        assert (got.outcome, got.digits, len(got.call_id)) == ("blocked", "1" * 32, 255)
        assert got.from_raw.endswith("tag=\ufffd\u00e9") and got.started_at == when
        entry = s.get(store.ListEntry, entry_id)
        assert (entry.hit_count, entry.last_hit_at) == (1, when)


def test_process_tuning_helpers():
    import gc

    from screener.service import freeze_startup_objects, limit_malloc_arenas

    assert limit_malloc_arenas(8) is True  # glibc (Debian); 8 per core is its default anyway
    freeze_startup_objects()
    try:
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_passed_caller_is_remembered_and_voicemail_saved(make):
    handler, db, cfg = make()
    handler(FakeCall(keys=["5"], voice_seconds=3.0))
    (row,) = rows(db)
    assert row.digits == "5"
    path = cfg.data_path / row.voicemail_path
    assert path.is_file() and row.voicemail_path.startswith("voicemail/")
    assert len(audio.load_pcm(path)) == 3 * 16000
    with db.read() as s:
        entry = s.scalar(select(store.ListEntry).where(store.ListEntry.pattern == "+390212345678"))
        assert (entry.list, entry.source) == ("allow", "verified")
    # and the next call from the same number rings through
    handler(FakeCall(info=Info(call_id="call-2")))
    assert rows(db)[1].decision == "allow"


def test_short_or_no_voicemail_is_not_kept(make):
    handler, db, _ = make("[screening]\nremember_verified = false\n")
    handler(FakeCall(keys=["5"], voice_seconds=0.3))
    (row,) = rows(db)
    assert row.outcome == "passed" and row.voicemail_path is None
    with db.read() as s:
        assert s.scalar(select(store.ListEntry)) is None


class SilentCall(FakeCall):
    """A caller who passes the check and then leaves only dead air."""

    def record(self, max_seconds: float, silence_seconds: float = 5.0) -> bytes:
        self.log.append(f"record {max_seconds:g}")
        return audio.silence(6.0)


def test_silent_voicemail_is_not_kept_and_the_call_says_so(make):
    handler, db, cfg = make("[screening]\nremember_verified = false\n")
    handler(SilentCall(keys=["5"]))
    (row,) = rows(db)
    assert (row.outcome, row.voicemail_path) == ("passed", None)
    assert row.reason.endswith("; silent message")
    assert not (cfg.data_path / "voicemail").exists() or not any((cfg.data_path / "voicemail").iterdir())


def test_voicemail_disabled(make):
    handler, db, _ = make("[screening]\nvoicemail = false\n")
    call = FakeCall(keys=["5"], voice_seconds=3.0)
    handler(call)
    assert not any(a.startswith("record") for a in call.log)


class HoldingCall(FakeCall):
    """A screened call that stays in its challenge until released."""

    def __init__(self, release: threading.Event, **kw) -> None:
        super().__init__(**kw)
        self.release = release

    def wait_digit(self, timeout: float) -> str | None:
        self.release.wait(5)
        return "5"


def test_beyond_max_screened_calls_the_call_rings_through(make):
    handler, db, _ = make("[screening]\nmax_screened_calls = 1\nvoicemail = false\nremember_verified = false\n")
    release = threading.Event()
    first = HoldingCall(release, info=Info(call_id="first"))
    t = threading.Thread(target=handler, args=(first,))
    t.start()
    deadline = time.monotonic() + 2
    while "answer" not in first.log and time.monotonic() < deadline:
        time.sleep(0.01)
    second = FakeCall(info=Info(call_id="second"))
    handler(second)
    release.set()
    t.join(5)
    assert "answer" not in second.log
    by_id = {r.call_id: r for r in rows(db)}
    assert by_id["second"].outcome == "over_capacity"
    assert by_id["first"].outcome == "passed"


def test_handler_error_marks_the_row_and_hangs_up(make):
    handler, db, _ = make()

    class Broken(FakeCall):
        def wait_digit(self, timeout: float) -> str | None:
            raise RuntimeError("boom")

    call = Broken()
    handler(call)
    assert call.log[-1] == "hangup"  # answered already: a BYE, not a 480
    (row,) = rows(db)
    assert row.outcome == "error" and "RuntimeError: boom" in row.reason


def test_handler_error_while_ringing_declines_480(make):
    handler, db, _ = make('[screening]\ndefault_action = "allow"\n')

    class Broken(FakeCall):
        def ring(self) -> bool:
            raise RuntimeError("boom")

    call = Broken()
    handler(call)
    assert call.log == ["decline 480"]
    (row,) = rows(db)
    assert (row.outcome, row.decision) == ("error", "allow") and "RuntimeError: boom" in row.reason


class RaisingStore(store.Store):
    def ruleset(self, *args, **kwargs):
        raise OSError("database is away")


@pytest.mark.parametrize("setting,expected", [("allow", ["ring", "wait 180", "decline 480"]),
                                              ("screen", ["ring", "answer"])])
def test_unreadable_database_fails_open(write_config, setting, expected):
    cfg = config.load(write_config(f'[screening]\non_database_error = "{setting}"\n'))
    db = RaisingStore(cfg.database_url)
    store.upgrade(db)
    handler = FlushingHandler(cfg, db, PROMPTS)
    try:
        call = FakeCall(keys=["5"])
        handler(call)
        assert call.log[: len(expected)] == expected
        (row,) = rows(db)
        assert row.decision == setting
    finally:
        handler.close()
        db.dispose()


def test_rules_snapshot_follows_list_changes(st):
    from screener.service import RulesSnapshot

    snap = RulesSnapshot()
    caller = parse_caller("<sip:0212345678@fritz.box>", "IT")
    snap.refresh(st, 1.0)
    assert snap.rules_for(caller) == ()
    with st.write() as s:
        store.put_entry(s, "block", "+39021*")
    snap.refresh(st, 2.0)
    assert [r.list for r in snap.rules_for(caller)] == ["block"]
    with st.write() as s:
        store.put_entry(s, "allow", "+39021*")  # moved to another list: same count, same ids
    snap.refresh(st, 3.0)
    assert [r.list for r in snap.rules_for(caller)] == ["allow"]
    # switched off and on again: same count, ids, lists and windows
    with st.write() as s:
        store.set_enabled(s, "+39021*", False)
    snap.refresh(st, 3.5)
    assert snap.rules_for(caller) == ()
    with st.write() as s:
        store.set_enabled(s, "+39021*", True)
    snap.refresh(st, 3.7)
    assert [r.list for r in snap.rules_for(caller)] == ["allow"]
    # a caller's own lookup after the last refresh is the fresher answer
    snap.remember(caller, (), 4.0)
    assert snap.rules_for(caller) == ()


def test_unreadable_database_uses_the_last_rules_read(write_config):
    cfg = config.load(write_config(""))
    db = RaisingStore(cfg.database_url)
    store.upgrade(db)
    add(db, "block", "+390212345678")
    handler = FlushingHandler(cfg, db, PROMPTS)
    try:
        handler.snapshot.refresh(db, 0.0)  # what Service.start and every call's end do
        call = FakeCall()
        handler(call)
        assert call.log == ["decline 603"]
        assert rows(db)[0].outcome == "blocked"
    finally:
        handler.close()
        db.dispose()


@pytest.mark.parametrize("name,prefixes,expected", [
    ("Mario", ("SPAM",), "allow"), ("spam caller", ("SPAM",), "block"), ("+39 02 1234", ("SPAM",), "screen"),
    ("", ("SPAM",), "screen"), ("Werbung GmbH", ("SPAM", "Werbung"), "block"),
])
def test_phonebook_decision(name, prefixes, expected):
    caller = parse_caller("<sip:0212345678@fritz.box>", "IT", display_name=name)
    assert phonebook_decision(caller, Decision("screen", None, "default"), prefixes).action == expected


class FakeAgent:
    instances: list[FakeAgent] = []

    def __init__(self, sip_cfg, on_call, on_status, **kwargs) -> None:
        self.on_call, self.on_status = on_call, on_status
        self.started = self.stopped = False
        FakeAgent.instances.append(self)

    def start(self) -> None:
        self.started = True
        self.on_status(type("S", (), {"state": "registered", "last_error": None, "since": time.time()})())

    def stop(self) -> None:
        self.stopped = True


ACCOUNT = '[sip]\nserver = "127.0.0.1"\nusername = "home"\npassword = "secret"\n'


def test_service_start_closes_interrupted_rows_and_stores_status(write_config):
    cfg = config.load(write_config(ACCOUNT))
    db = store.Store(cfg.database_url)
    store.upgrade(db)
    with db.write() as s:
        s.add(store.Call(call_id="left-open", decision="screen"))
    svc = Service(cfg, db=db, agent_factory=FakeAgent)
    svc.start()
    try:
        with db.read() as s:
            assert s.scalar(select(store.Call)).outcome == "interrupted"
            assert store.get_sip_status(s).state == "registered"
        assert FakeAgent.instances[-1].on_call is svc.handler
    finally:
        svc.stop()
    db2 = store.Store(cfg.database_url)
    with db2.read() as s:
        assert store.get_sip_status(s).state == "stopped"
    db2.dispose()


def test_service_refuses_a_broken_configured_prompt(write_config, tmp_path: Path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"nope")
    cfg = config.load(write_config(f'[screening.prompts]\nchallenge = "{bad}"\n'))
    migrated(cfg)
    svc = Service(cfg, agent_factory=FakeAgent)
    assert svc.run() == 1


def migrated(cfg: config.Config) -> None:
    db = store.Store(cfg.database_url)
    store.upgrade(db)  # `screener run` does this before the service starts
    db.dispose()


def test_run_stops_on_sigterm_and_restores_handlers(write_config):
    cfg = config.load(write_config(ACCOUNT))
    migrated(cfg)
    def ignore(signum, frame) -> None:  # a stray SIGTERM must never end the test run itself
        pass

    original = signal.signal(signal.SIGTERM, ignore)
    try:
        svc = Service(cfg, agent_factory=FakeAgent)
        threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGTERM)).start()
        t0 = time.monotonic()
        assert svc.run() == 0
        assert time.monotonic() - t0 < 3
        assert FakeAgent.instances[-1].stopped
        assert signal.getsignal(signal.SIGTERM) is ignore
    finally:
        signal.signal(signal.SIGTERM, original)


def test_capture_signals_restores_previous_handlers():
    seen: list[str] = []
    old_int = signal.getsignal(signal.SIGINT)
    with capture_signals(lambda: seen.append("stop")):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    assert seen == ["stop"]
    assert signal.getsignal(signal.SIGINT) is old_int
