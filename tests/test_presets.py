"""Presets are data: canonical patterns on real lists with a source, and the decisions the `it` preset makes;
applying one fills in only what is missing, and `init` applies a configured one once."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from screener import presets, store
from screener.numbers import parse_caller
from screener.presets import PRESETS
from screener.rules import ACTIONS, Rule, RuleSet, decide, normalize_pattern

ROME = ZoneInfo("Europe/Rome")
REGIONS = {"it": "IT", "fr": "FR"}
ENTRIES = [pytest.param(name, e, id=f"{name}-{e.pattern}") for name, p in PRESETS.items() for e in p.entries]


def test_every_preset_has_a_region_here() -> None:
    assert set(PRESETS) == set(REGIONS)


@pytest.mark.parametrize(("name", "entry"), ENTRIES)
def test_entry_is_canonical_and_sourced(name: str, entry) -> None:
    assert normalize_pattern(entry.pattern, REGIONS[name]) == entry.pattern
    assert entry.list in ACTIONS
    assert entry.label.strip() and entry.source.strip()
    assert len(entry.label) <= 200 and len(entry.pattern) <= 40  # the store's column sizes


@pytest.mark.parametrize("name", PRESETS)
def test_preset_has_a_title_and_no_duplicate_patterns(name: str) -> None:
    preset = PRESETS[name]
    patterns = [e.pattern for e in preset.entries]
    assert preset.title.strip() and patterns
    assert len(patterns) == len(set(patterns))


def _it_rules(default: str = "allow") -> RuleSet:
    entries = PRESETS["it"].entries
    rules = tuple(Rule(e.list, e.pattern, e.label, source="preset:it") for e in entries)  # type: ignore[arg-type]
    return RuleSet(rules, "IT", ROME, default)  # type: ignore[arg-type]


@pytest.mark.parametrize(("number", "action", "pattern"), [
    ("0844123456", "block", "+390844*"),
    ("+39 0844 987654", "block", "+390844*"),
    ("0843123456", "screen", "+390843*"),
    ("899123456", "block", "+39899*"),
    ("892123", "block", "+39892*"),
    ("1661234567", "block", "+39166*"),
    ("0878123456", "block", "+390878*"),
    ("800123456", "block", "class:toll_free"),
    ("848123456", "block", "class:shared_cost"),
    ("+33612345678", "screen", "class:foreign"),
    ("+4930123456", "screen", "class:foreign"),
    ("anonymous", "screen", "class:withheld"),
    ("3471234567", "allow", None),
    ("0212345678", "allow", None),
    ('"Kitchen" <sip:**622@fritz.box>', "allow", None),
])
def test_it_preset_decisions(number: str, action: str, pattern: str | None) -> None:
    d = decide(parse_caller(number, "IT"), _it_rules(), datetime(2026, 3, 4, 12, 0, tzinfo=ROME))
    assert d.action == action
    assert (d.rule.pattern if d.rule else None) == pattern


def test_it_preset_leaves_an_ordinary_mobile_to_the_default() -> None:
    d = decide(parse_caller("3471234567", "IT"), _it_rules("screen"), datetime(2026, 3, 4, 12, 0, tzinfo=ROME))
    assert (d.action, d.rule, d.reason) == ("screen", None, "no rule matched: default screen")


@pytest.mark.parametrize(("number", "action"), [("+33162123456", "block"), ("0162123456", "block"),
                                                ("+33947512345", "block"), ("0612345678", "allow")])
def test_fr_preset_decisions(number: str, action: str) -> None:
    rules = tuple(Rule(e.list, e.pattern, e.label) for e in PRESETS["fr"].entries)  # type: ignore[arg-type]
    d = decide(parse_caller(number, "FR"), RuleSet(rules, "FR", ZoneInfo("Europe/Paris"), "allow"),
               datetime(2026, 3, 4, 12, 0, tzinfo=ROME))
    assert d.action == action


# --- applying: one implementation for the CLI, `init` and the dashboard ----------------------------------

def _entries(st: store.Store) -> dict[str, tuple[str, str, str, bool]]:
    with st.read() as s:
        return {e.pattern: (e.list, e.label, e.source, e.enabled) for e in s.scalars(select(store.ListEntry))}


def test_apply_fills_in_only_what_is_missing(st: store.Store) -> None:
    with st.write() as s:
        store.put_entry(s, "allow", "+390844*", label="my market research")
        store.put_entry(s, "block", "class:foreign", label="nobody abroad")
        store.set_enabled(s, "class:foreign", False)
    with st.write() as s:
        got = presets.apply(s, "it")
    n = len(PRESETS["it"].entries)
    assert got == presets.Applied("it", n - 2, 2)
    entries = _entries(st)
    assert entries["+390844*"] == ("allow", "my market research", "user", True)
    assert entries["class:foreign"] == ("block", "nobody abroad", "user", False)  # still switched off
    assert entries["+390843*"] == ("screen", "0843: statistical surveys", "preset:it", True)
    with st.write() as s:
        assert presets.apply(s, "it") == presets.Applied("it", 0, n)


def test_apply_configured_applies_each_preset_once(st: store.Store) -> None:
    with st.write() as s:
        assert [a.name for a in presets.apply_configured(s, ["it"])] == ["it"]
    with st.write() as s:
        store.remove_entry(s, "+390844*")
    with st.write() as s:
        assert presets.apply_configured(s, ["it"]) == []
        assert [a.name for a in presets.apply_configured(s, ["it", "fr"])] == ["fr"]
    assert "+390844*" not in _entries(st)


def test_an_unknown_preset_is_a_key_error(st: store.Store) -> None:
    with pytest.raises(KeyError), st.write() as s:
        presets.apply(s, "es")
