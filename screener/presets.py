"""Rule presets as data, each entry with the public source it comes from, and the one way to apply them
(the CLI, `init` and the dashboard all call apply()/apply_configured())."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@dataclass(frozen=True)
class PresetEntry:
    list: str
    pattern: str  # canonical pattern (see rules.normalize_pattern)
    label: str
    source: str  # where the rule comes from, for the user to check


@dataclass(frozen=True)
class Preset:
    title: str
    entries: tuple[PresetEntry, ...]


_AGCOM_0844 = "Law 5/2018, AGCOM 156/18/CIR"
_IT_ANOMALOUS = "DOMAIN.md: non-geographic numbers presented as the caller are anomalous"
_IT_PREMIUM = ("+39892*", "+39893*", "+39894*", "+39895*", "+39899*", "+39144*", "+39166*", "+390878*")
_ARCEP = "ARCEP 2022-1583, from 1 Jan 2023"
_FR_RANGES = ("162", "163", "270", "271", "377", "378", "424", "425", "568", "569", "948", "949",
              "9475", "9476", "9477", "9478", "9479")

PRESETS: dict[str, Preset] = {
    "it": Preset(
        "Italy: telemarketing prefixes, anomalous caller numbers, foreign and withheld callers screened",
        (
            PresetEntry("block", "+390844*", "0844: market research, advertising and sales calls", _AGCOM_0844),
            PresetEntry("screen", "+390843*", "0843: statistical surveys", _AGCOM_0844),
            *(PresetEntry("block", p, f"premium rate {p[3:-1]}", _IT_ANOMALOUS) for p in _IT_PREMIUM),
            PresetEntry("block", "class:premium_rate", "premium-rate number as caller", _IT_ANOMALOUS),
            PresetEntry("block", "class:shared_cost", "shared-cost number as caller", _IT_ANOMALOUS),
            PresetEntry("block", "class:toll_free", "toll-free number as caller", _IT_ANOMALOUS),
            PresetEntry("screen", "class:foreign", "foreign caller (carriers block spoofed Italian numbers "
                        "since 2025, call centres moved abroad)", "AGCOM 106/25/CONS, 271/25/CONS"),
            PresetEntry("screen", "class:withheld", "withheld number", "screener default"),
        ),
    ),
    "fr": Preset(
        "France: the telemarketing ranges reserved by ARCEP",
        tuple(PresetEntry("block", f"+33{r}*", f"telemarketing range 0{r}", _ARCEP) for r in _FR_RANGES),
    ),
}


@dataclass(frozen=True)
class Applied:
    name: str
    added: int  # entries put on a list
    kept: int  # patterns that already had an entry: left exactly as they were


def source_of(name: str) -> str:
    return f"preset:{name}"


def apply(session: Session, name: str) -> Applied:
    """Fill in the entries of preset `name` that are missing; an existing entry (the user's choice, or one
    switched off) stays as it is. Records the preset as applied. Raises KeyError for an unknown name."""
    from sqlalchemy import select

    from screener.store import AppliedPreset, ListEntry, put_entry, utcnow

    preset = PRESETS[name]
    patterns = [e.pattern for e in preset.entries]
    existing = set(session.scalars(select(ListEntry.pattern).where(ListEntry.pattern.in_(patterns))))
    for e in preset.entries:
        if e.pattern not in existing:
            put_entry(session, e.list, e.pattern, label=e.label, source=source_of(name))
    row = session.get(AppliedPreset, name)
    if row is None:
        session.add(AppliedPreset(name=name, applied_at=utcnow()))
    else:
        row.applied_at = utcnow()
    session.flush()
    return Applied(name, len(patterns) - len(existing), len(existing))


def apply_configured(session: Session, names: Iterable[str]) -> list[Applied]:
    """Apply the configured presets that were never applied to this database: a start (`init` runs before
    every `make run`) never puts back what the user removed or changed."""
    from sqlalchemy import select

    from screener.store import AppliedPreset

    done = set(session.scalars(select(AppliedPreset.name)))
    return [apply(session, n) for n in names if n not in done]
