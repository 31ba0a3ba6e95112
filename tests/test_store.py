"""Store round trips; every test runs on SQLite and again on PostgreSQL (the `db_url` fixture)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import inspect, select

from screener import store
from screener.numbers import parse_caller
from screener.rules import decide, make_window

ROME = ZoneInfo("Europe/Rome")


def _rules(st: store.Store, number: str, default: str = "screen"):
    caller = parse_caller(number, "IT")
    return caller, st.ruleset(caller, region="IT", tz=ROME, default=default)


def test_upgrade_creates_every_table_and_is_idempotent(st: store.Store) -> None:
    store.upgrade(st)
    names = set(inspect(st.engine).get_table_names())
    assert {"list_entries", "calls", "users", "sip_status", "number_notes", "alembic_version"} <= names


def test_migrations_match_the_models(st: store.Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with st.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), store.Base.metadata) == []


def test_entry_round_trip_with_window(st: store.Store) -> None:
    window = make_window("mon-fri", "22:00", "06:00")
    with st.write() as s:
        store.put_entry(s, "block", "+390212345678", label="Ditta <x>", source="user", window=window)
    with st.read() as s:
        e = s.scalar(select(store.ListEntry))
        assert (e.list, e.pattern, e.label, e.days, e.time_from, e.time_to) == (
            "block", "+390212345678", "Ditta <x>", 0b11111, "22:00", "06:00")
        assert e.window == window
        assert e.created_at.tzinfo is not None and e.hit_count == 0


def test_put_entry_moves_a_pattern_between_lists(st: store.Store) -> None:
    with st.write() as s:
        store.put_entry(s, "allow", "+390212345678", label="first")
    with st.write() as s:
        store.put_entry(s, "block", "+390212345678", label="second")
    with st.read() as s:
        rows = s.scalars(select(store.ListEntry)).all()
        assert [(r.list, r.label) for r in rows] == [("block", "second")]


def test_ruleset_for_finds_number_prefixes_and_classes_only(st: store.Store) -> None:
    with st.write() as s:
        store.put_entry(s, "block", "+390212345678")
        store.put_entry(s, "block", "+39021234*")
        store.put_entry(s, "allow", "+3902*")
        store.put_entry(s, "screen", "class:withheld")
        store.put_entry(s, "block", "+390699999999")  # another number: must not be fetched
        store.put_entry(s, "block", "+3902123456789*")  # a prefix longer than the number itself
        store.put_entry(s, "allow", "+390212345678*")  # a prefix as long as the number matches it
    caller, rules = _rules(st, "0212345678")
    assert sorted(r.pattern for r in rules.rules) == sorted(
        ["+390212345678", "+390212345678*", "+39021234*", "+3902*", "class:withheld"])
    d = decide(caller, rules, datetime(2026, 11, 30, 10, tzinfo=UTC))
    assert (d.action, d.rule.pattern) == ("block", "+390212345678")


def test_bulk_put_upserts_and_moves(st: store.Store) -> None:
    with st.write() as s:
        store.put_entry(s, "allow", "+390211111111", label="friend")
        n = store.bulk_put(s, "block", [("+390211111111", "now blocked"), ("+390844*", "tm")], source="import")
    assert n == 2
    with st.read() as s:
        rows = {e.pattern: (e.list, e.label, e.source) for e in s.scalars(select(store.ListEntry))}
    assert rows == {"+390211111111": ("block", "now blocked", "import"), "+390844*": ("block", "tm", "import")}


def test_call_round_trip_keeps_utc_and_text(st: store.Store) -> None:
    started = datetime(2026, 3, 29, 0, 59, 59, tzinfo=UTC)
    name = "Mario \u202e<script>"
    with st.write() as s:
        entry_id = store.put_entry(s, "block", "+390212345678").id
        s.add(store.Call(started_at=started, call_id="abc@1.2.3.4", from_raw='"x" <sip:0212345678@fritz.box>',
                         caller_raw="0212345678", e164="+390212345678", name=name, decision="block",
                         rule_id=entry_id, rule="block +390212345678", reason="r"))
    with st.read() as s:
        c = s.scalar(select(store.Call))
        assert c.started_at == started and c.started_at.tzinfo is not None
        assert c.started_at.astimezone(ROME).hour == 1  # the night the clocks change
        # HTML is the page's to escape; a bidi override that would reverse what follows is gone
        assert (c.name, c.outcome, c.rule_id) == ("Mario <script>", None, entry_id)


def test_hostile_text_fits_every_database(st: store.Store) -> None:
    """A NUL in a SIP header or a 6 KB display name must not lose the call row (PostgreSQL refuses both)."""
    with st.write() as s:
        s.add(store.Call(decision="block", from_raw='"a\x00b" <sip:1@x>', name="n" * 6000, caller_raw="1" * 300))
    with st.read() as s:
        c = s.scalar(select(store.Call))
        assert (c.from_raw, len(c.name), len(c.caller_raw)) == ('"a\ufffdb" <sip:1@x>', 128, 128)


def test_deleting_an_entry_keeps_its_calls(st: store.Store) -> None:
    with st.write() as s:
        entry_id = store.put_entry(s, "block", "+390212345678").id
        s.add(store.Call(decision="block", rule_id=entry_id, outcome="blocked"))
    with st.write() as s:
        assert store.remove_entry(s, "+390212345678")
        assert not store.remove_entry(s, "+390212345678")
    with st.read() as s:
        c = s.scalar(select(store.Call))
        assert (c.rule_id, c.outcome) == (None, "blocked")


def test_close_interrupted_only_touches_open_calls(st: store.Store) -> None:
    now = datetime(2026, 11, 29, 21, tzinfo=UTC)
    with st.write() as s:
        s.add_all([store.Call(decision="screen"), store.Call(decision="allow", outcome="missed")])
    with st.write() as s:
        assert store.close_interrupted(s, now) == 1
    with st.read() as s:
        assert sorted(c.outcome for c in s.scalars(select(store.Call))) == ["interrupted", "missed"]


def test_recent_calls_newest_first(st: store.Store) -> None:
    t0 = datetime(2026, 11, 29, 9, tzinfo=UTC)
    with st.write() as s:
        s.add_all([store.Call(decision="allow", started_at=t0 + timedelta(minutes=i), caller_raw=str(i))
                   for i in range(5)])
    with st.read() as s:
        assert [c.caller_raw for c in store.recent_calls(s, 3)] == ["4", "3", "2"]


def test_sip_status_since_changes_with_state_only(st: store.Store) -> None:
    t0 = datetime(2026, 11, 29, 9, tzinfo=UTC)
    with st.write() as s:
        store.set_sip_status(s, "registering", now=t0)
    with st.write() as s:
        store.set_sip_status(s, "registering", "no answer", now=t0 + timedelta(seconds=5))
    with st.read() as s:
        row = store.get_sip_status(s)
        assert (row.state, row.since, row.last_error) == ("registering", t0, "no answer")
    with st.write() as s:
        store.set_sip_status(s, "registered", now=t0 + timedelta(seconds=9))
    with st.read() as s:
        row = store.get_sip_status(s)
        assert (row.state, row.since, row.last_error) == ("registered", t0 + timedelta(seconds=9), "")


def test_writers_never_see_database_is_locked_while_readers_read(st: store.Store) -> None:
    """The SIP service writes call rows while the dashboard reads: no writer may fail."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                with st.read() as s:
                    store.recent_calls(s, 50)
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    def writer(k: int) -> None:
        try:
            for i in range(40):
                with st.write() as s:
                    entry = store.put_entry(s, "block", f"+3902{k}{i:06d}")  # read, then write
                    s.add(store.Call(decision="block", rule_id=entry.id))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    with st.read() as s:
        assert len(store.recent_calls(s, 1000)) == 160


@pytest.mark.parametrize("action", ["allow", "block", "screen"])
def test_default_action_passes_through(st: store.Store, action: str) -> None:
    caller, rules = _rules(st, "0212345678", default=action)
    assert decide(caller, rules, datetime(2026, 1, 1, tzinfo=UTC)).action == action
