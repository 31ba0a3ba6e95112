"""List entries, patterns, time windows and `decide()`: the screening decision, pure.

Precedence: a router's internal call is always allowed; otherwise the most specific matching rule wins
(exact number > longer prefix > shorter prefix > number class), and for equal specificity allow > block > screen.
No match gives the configured default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Literal
from zoneinfo import ZoneInfo

import phonenumbers

from screener.numbers import Caller, is_foreign, parse_caller, prefixes

Action = Literal["allow", "block", "screen"]
ACTIONS: tuple[Action, ...] = ("allow", "block", "screen")
CLASSES = ("withheld", "invalid", "foreign", "premium_rate", "toll_free", "shared_cost", "mobile",
           "fixed_line", "voip", "personal_number")
_LIST_RANK = {"allow": 2, "block": 1, "screen": 0}
_WEEK = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = {name: i for names in (_WEEK, ("lun", "mar", "mer", "gio", "ven", "sab", "dom"),
                                    ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
                                    ("lunedì", "martedì", "mercoledì", "giovedì", "venerdì", "sabato", "domenica"),
                                    ("lunedi", "martedi", "mercoledi", "giovedi", "venerdi"))
              for i, name in enumerate(names)}
_TIME = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


@dataclass(frozen=True)
class Window:
    """A weekly window: on `days` (0 = Monday) from `start` to `end` local time; crosses midnight if end <= start.

    A window that crosses midnight belongs to the day it starts on: "fri 22:00-06:00" covers Saturday 03:00.
    """

    days: frozenset[int] = frozenset(range(7))
    start: time = time(0, 0)
    end: time = time(0, 0)

    def contains(self, local: datetime) -> bool:
        """Whether the local wall-clock time `local` lies inside the window."""
        t, day = local.time().replace(tzinfo=None), local.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= t < self.end
        # end <= start: from start until midnight, and from midnight until end on the next day
        return (day in self.days and t >= self.start) or ((day - 1) % 7 in self.days and t < self.end)

    @property
    def days_mask(self) -> int:
        return sum(1 << d for d in self.days)

    def __str__(self) -> str:
        return f"{format_days(self.days)} {self.start:%H:%M}-{self.end:%H:%M}"


def parse_days(text: str) -> frozenset[int]:
    """`mon-fri`, `sat,sun`, `mon,wed-fri`, `daily`; Italian abbreviations too. Raises ValueError."""
    text = text.strip().lower()
    if text in ("daily", "all", "*", ""):
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        lo, dash, hi = (p.strip() for p in part.partition("-"))
        if dash and not hi:
            hi = "?"  # "mon-" is a range with no end
        try:
            a, b = _DAY_NAMES[lo], _DAY_NAMES[hi or lo]
        except KeyError:
            raise ValueError(f"days must look like mon-fri or sat,sun, got {text!r}") from None
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def format_days(days: Iterable[int]) -> str:
    """The inverse of parse_days, compact: `mon-fri`, `sat,sun`, `daily`."""
    ds = sorted(set(days))
    if len(ds) == 7:
        return "daily"
    names = _WEEK
    runs: list[str] = []
    i = 0
    while i < len(ds):
        j = i
        while j + 1 < len(ds) and ds[j + 1] == ds[j] + 1:
            j += 1
        runs.append(names[ds[i]] if i == j else f"{names[ds[i]]}{'-' if j > i + 1 else ','}{names[ds[j]]}")
        i = j + 1
    return ",".join(runs)


def parse_time(text: str) -> time:
    """HH:MM, 24-hour. Raises ValueError."""
    m = _TIME.fullmatch(text.strip())
    if not m:
        raise ValueError(f"time must be HH:MM (24-hour), got {text!r}")
    return time(int(m[1]), int(m[2]))


def make_window(days: str | None, start: str | None, end: str | None) -> Window | None:
    """A Window from the user's words, or None when none of them is given. Raises ValueError."""
    if not days and not start and not end:
        return None
    if bool(start) != bool(end):
        raise ValueError("a time window needs both from and to")
    return Window(parse_days(days or "daily"),
                  parse_time(start) if start else time(0, 0), parse_time(end) if end else time(0, 0))


def window_from_mask(mask: int | None, start: str | None, end: str | None) -> Window | None:
    """The Window stored as a day bitmask and HH:MM strings (as the store keeps it)."""
    if mask is None:
        return None
    return Window(frozenset(d for d in range(7) if mask >> d & 1),
                  parse_time(start or "00:00"), parse_time(end or "00:00"))


def normalize_pattern(text: str, region: str) -> str:
    """A user's pattern -> canonical form: `+390212345678`, `+390844*` (prefix) or `class:foreign`.

    Raises ValueError with a message fit for the user.
    """
    s = text.strip()
    low = s.lower().removeprefix("class:")
    if low in CLASSES:
        return "class:" + low
    if s.endswith("*"):
        digits = re.sub(r"[\s\-.()/]", "", s[:-1])
        if not re.fullmatch(r"\+?\d{1,15}", digits):
            raise ValueError(f"a prefix must be digits followed by *, got {text!r}")
        return _prefix_to_e164(digits, region) + "*"
    caller = parse_caller(s, region)
    if caller.e164 is None:
        raise ValueError(f"not a phone number, prefix (digits then *) or class ({', '.join(CLASSES)}): {text!r}")
    return caller.e164


WIDE_NATIONAL_DIGITS = 3  # a prefix with fewer national digits covers a country or a whole network


@dataclass(frozen=True)
class WidePrefix:
    """What a too-wide prefix covers: the country code ("" when it is shorter than one) and the digits after."""

    country_code: str
    national: str

    def __str__(self) -> str:
        if not self.country_code:
            return "numbers of several countries"
        return f"every number of +{self.country_code}" + (f" starting with {self.national}" if self.national else "")


def wide_prefix(pattern: str) -> WidePrefix | None:
    """For a canonical prefix that covers a whole country or network (`+39*`, `+390*`, `+393*`: fewer than 3
    digits after the country code), what it covers; None for a narrower pattern."""
    if not pattern.endswith("*") or not pattern.startswith("+"):
        return None
    digits = pattern[1:-1]
    cc = next((digits[:n] for n in (1, 2, 3) if len(digits) >= n
               and phonenumbers.region_code_for_country_code(int(digits[:n])) != phonenumbers.UNKNOWN_REGION), None)
    if cc is None:
        return WidePrefix("", digits) if len(digits) <= 3 else None
    national = digits[len(cc):]
    return WidePrefix(cc, national) if len(national) < WIDE_NATIONAL_DIGITS else None


def _prefix_to_e164(digits: str, region: str) -> str:
    if digits.startswith("+"):
        return digits
    if digits.startswith("00"):
        return "+" + digits[2:]
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    cc = phonenumbers.country_code_for_region(region)
    national_prefix = meta.national_prefix if meta else None
    # Italy keeps its leading 0 inside the number; France, Germany, the UK drop their trunk prefix 0.
    if national_prefix and digits.startswith(national_prefix):
        digits = digits[len(national_prefix):]
    return f"+{cc}{digits}"


@dataclass(frozen=True)
class Rule:
    """One list entry as the decision sees it."""

    list: Action
    pattern: str  # canonical, see normalize_pattern
    label: str = ""
    window: Window | None = None
    id: int | None = None
    source: str = "user"

    @property
    def kind(self) -> Literal["number", "prefix", "class"]:
        if self.pattern.startswith("class:"):
            return "class"
        return "prefix" if self.pattern.endswith("*") else "number"

    def specificity(self) -> tuple[int, int]:
        kind = self.kind
        if kind == "number":
            return (3, len(self.pattern))
        if kind == "prefix":
            return (2, len(self.pattern))
        return (1, 0)

    def matches(self, caller: Caller, region: str) -> bool:
        kind = self.kind
        if kind == "number":
            return caller.e164 == self.pattern
        if kind == "prefix":
            return caller.e164 is not None and caller.e164.startswith(self.pattern[:-1])
        cls = self.pattern[6:]
        if cls == "withheld":
            return caller.withheld
        if cls == "invalid":
            return not (caller.withheld or caller.valid)
        if cls == "foreign":
            return is_foreign(caller, region)
        return caller.type == cls

    def __str__(self) -> str:
        return f"{self.list} {self.pattern}" + (f" ({self.window})" if self.window else "")


@dataclass(frozen=True)
class RuleSet:
    """The rules that may apply to a call, plus the settings decide() needs."""

    rules: tuple[Rule, ...] = ()
    region: str = "IT"
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("Europe/Rome"))
    default: Action = "screen"


@dataclass(frozen=True)
class Decision:
    """What to do with a call, the rule that said so (None for defaults) and why, in words."""

    action: Action
    rule: Rule | None
    reason: str


def candidate_patterns(caller: Caller) -> list[str]:
    """Every canonical pattern that could match this caller: its number, its prefixes, every class."""
    out = [f"class:{c}" for c in CLASSES]
    if caller.e164:
        out.append(caller.e164)
        out.extend(p + "*" for p in [caller.e164, *prefixes(caller.e164)])
    return out


def decide(caller: Caller, rules: RuleSet, now: datetime) -> Decision:
    """The action for `caller` at the aware time `now` under `rules`."""
    if caller.internal:
        return Decision("allow", None, "internal call of the home router")
    local = now.astimezone(rules.tz)
    best: Rule | None = None
    best_key: tuple[int, int, int] = (-1, -1, -1)
    for rule in rules.rules:
        if rule.window is not None and not rule.window.contains(local):
            continue
        if not rule.matches(caller, rules.region):
            continue
        key = (*rule.specificity(), _LIST_RANK[rule.list])
        if key > best_key:
            best, best_key = rule, key
    if best is None:
        return Decision(rules.default, None, f"no rule matched: default {rules.default}")
    return Decision(best.list, best, _reason(best))


def _reason(rule: Rule) -> str:
    what = rule.pattern if rule.kind == "class" else f"{rule.kind} {rule.pattern}"
    text = f"{what} on the {rule.list} list"
    if rule.label:
        text += f" ({rule.label})"
    if rule.window:
        text += f", during {rule.window}"
    return text

