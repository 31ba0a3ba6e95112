"""Store round trips; every test runs on SQLite and again on PostgreSQL (the `db_url` fixture)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import inspect, select, text

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
    assert {"list_entries", "calls", "users", "sip_status", "number_notes", "applied_presets",
            "alembic_version"} <= names


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


def test_bulk_put_upserts_and_moves_but_never_an_allowed_number(st: store.Store) -> None:
    with st.write() as s:
        store.put_entry(s, "allow", "+390211111111", label="friend")
        store.put_entry(s, "screen", "+390222222222", label="maybe", window=make_window("mon-fri", "9:00", "18:00"))
        store.put_entry(s, "screen", "+390233333333")
        skipped: list[str] = []
        n = store.bulk_put(s, "block", [("+390211111111", "now blocked"), ("+390844*", "tm"),
                                        ("+390222222222", "spam"), ("+390233333333", "spam")], source="import",
                           skipped=skipped)
    assert (n, skipped) == (3, ["+390211111111"])
    with st.read() as s:
        rows = {e.pattern: (e.list, e.label, e.source, e.time_from) for e in s.scalars(select(store.ListEntry))}
    assert rows == {"+390211111111": ("allow", "friend", "user", None), "+390844*": ("block", "tm", "import", None),
                    # the label and window it had are kept, an empty label is filled in
                    "+390222222222": ("block", "maybe", "import", "09:00"),
                    "+390233333333": ("block", "spam", "import", None)}


def test_bulk_put_into_the_allow_list_moves(st: store.Store) -> None:
    with st.write() as s:
        store.put_entry(s, "block", "+390211111111")
        skipped: list[str] = []
        assert store.bulk_put(s, "allow", [("+390211111111", "friend")], source="import", skipped=skipped) == 1
    assert skipped == []
    with st.read() as s:
        assert s.scalar(select(store.ListEntry.list)) == "allow"


def _state(st: store.Store, pattern: str) -> tuple[str, str, str | None, str | None, bool, str]:
    with st.read() as s:
        e = s.scalar(select(store.ListEntry).where(store.ListEntry.pattern == pattern))
        return (e.list, e.label, e.days and str(e.window), e.time_from, e.enabled, e.source)


MUM = make_window("mon-fri", "09:00", "18:00")
EVE = make_window("sat,sun", "20:00", "22:00")

# what is there (list, label, window), what is added (list, label, window, replace),
# the result (list, label, window shown) or the conflict
ADDS = [
    pytest.param(("allow", "mum", MUM), ("block", "", None, False), ("block", "mum", "mon-fri 09:00-18:00"),
                 id="move-keeps-label-and-window"),
    pytest.param(("allow", "mum", MUM), ("block", "mum", MUM, False), ("block", "mum", "mon-fri 09:00-18:00"),
                 id="same-label-and-window-is-no-conflict"),
    pytest.param(("allow", "", None), ("block", "pest", EVE, False), ("block", "pest", "sat,sun 20:00-22:00"),
                 id="missing-label-and-window-are-filled-in"),
    pytest.param(("allow", "mum", MUM), ("block", "pest", None, False), "conflict", id="other-label"),
    pytest.param(("allow", "mum", MUM), ("block", "", EVE, False), "conflict", id="other-window"),
    pytest.param(("block", "mum", MUM), ("block", "pest", None, False), "conflict", id="other-label-same-list"),
    pytest.param(("allow", "mum", MUM), ("block", "pest", None, True), ("block", "pest", None), id="replace"),
    pytest.param(("allow", "mum", MUM), ("block", "", None, True), ("block", "", None), id="replace-with-nothing"),
]


@pytest.mark.parametrize(("there", "add", "result"), ADDS)
def test_add_entry_keeps_what_it_would_overwrite(st: store.Store, there: tuple, add: tuple, result: object) -> None:
    with st.write() as s:
        store.put_entry(s, there[0], "+390212345678", label=there[1], window=there[2], source="preset:it")
        store.set_enabled(s, "+390212345678", False)
    list_, label, window, replace = add
    if result == "conflict":
        with pytest.raises(store.EntryConflict) as e, st.write() as s:
            store.add_entry(s, list_, "+390212345678", label=label, window=window, replace=replace)
        assert e.value.before == store.Before(there[0], there[1], there[2], False)
        assert _state(st, "+390212345678")[:2] == there[:2]  # nothing changed
        return
    with st.write() as s:
        added = store.add_entry(s, list_, "+390212345678", label=label, window=window, replace=replace)
        assert added.before == store.Before(there[0], there[1], there[2], False)
        assert added.moved_from == (there[0] if there[0] != list_ else None)
    state = _state(st, "+390212345678")
    assert (state[0], state[1], state[2]) == result
    assert state[4:] == (True, "user")  # switched on again; the user's entry now


def test_add_entry_of_a_new_pattern(st: store.Store) -> None:
    with st.write() as s:
        added = store.add_entry(s, "block", "+39021*", label="Milan", window=MUM)
        assert (added.before, added.moved_from, added.kept) == (None, None, False)
    assert _state(st, "+39021*") == ("block", "Milan", "mon-fri 09:00-18:00", "09:00", True, "user")


def test_a_switched_off_entry_decides_nothing(st: store.Store) -> None:
    with st.write() as s:
        store.put_entry(s, "block", "+390212345678", label="pest")
        store.put_entry(s, "allow", "+3902*")
        assert store.set_enabled(s, "+390212345678", False) is not None
        assert store.set_enabled(s, "+390299999999", False) is None
    caller, rules = _rules(st, "0212345678")
    assert [r.pattern for r in rules.rules] == ["+3902*"]
    assert decide(caller, rules, datetime(2026, 1, 1, tzinfo=UTC)).action == "allow"
    assert _state(st, "+390212345678") == ("block", "pest", None, None, False, "user")  # kept as it was
    with st.write() as s:
        store.set_enabled(s, "+390212345678", True)
    caller, rules = _rules(st, "0212345678")
    assert decide(caller, rules, datetime(2026, 1, 1, tzinfo=UTC)).action == "block"


def test_migration_0004_keeps_entries_on_and_records_applied_presets(st: store.Store) -> None:
    from alembic import command

    cfg = store._alembic_config(st.url)
    with st.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    with st.engine.begin() as conn:
        for pattern, source in (("+390844*", "preset it"), ("+33162*", "preset:fr"), ("+390212345678", "user")):
            conn.execute(text("INSERT INTO list_entries (list, pattern, label, source, created_at, hit_count)"
                              " VALUES ('block', :p, '', :s, CURRENT_TIMESTAMP, 0)"), {"p": pattern, "s": source})
    store.upgrade(st)
    with st.read() as s:
        assert {(e.pattern, e.source, e.enabled) for e in s.scalars(select(store.ListEntry))} == {
            ("+390844*", "preset:it", True), ("+33162*", "preset:fr", True), ("+390212345678", "user", True)}
        assert set(s.scalars(select(store.AppliedPreset.name))) == {"it", "fr"}


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
