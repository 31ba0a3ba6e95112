"""Tables for screener.rules: precedence, number classes, time windows, patterns and day names."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from screener.numbers import parse_caller
from screener.rules import (
    CLASSES,
    Rule,
    RuleSet,
    Window,
    candidate_patterns,
    decide,
    format_days,
    make_window,
    normalize_pattern,
    parse_days,
    parse_time,
    window_from_mask,
)

ROME = ZoneInfo("Europe/Rome")
WEDNESDAY_NOON = datetime(2026, 3, 4, 12, 0, tzinfo=ROME)

MILAN = "0212345678"  # +390212345678, fixed line
MOBILE = "3471234567"  # +393471234567, Italian mobile
FR_MOBILE = "+33612345678"
FR_FIXED = "+33142685300"
DE_FIXED = "+4930123456"
PREMIUM = "899123456"
TOLL_FREE = "800123456"
SHARED_COST = "848123456"
TELEMARKETING = "0844123456"  # phonenumbers calls it invalid
WITHHELD = "anonymous"
GARBAGE = "abc"

NOT_A_NUMBER = ("not a phone number, prefix (digits then *) or class (withheld, invalid, foreign, premium_rate, "
                "toll_free, shared_cost, mobile, fixed_line, voip, personal_number): {!r}")


def _decide(number: str, rules: list[Rule], default: str = "screen", now: datetime = WEDNESDAY_NOON):
    return decide(parse_caller(number, "IT"), RuleSet(tuple(rules), "IT", ROME, default), now)


# --- precedence -----------------------------------------------------------------------------------------

# caller, rules, default, expected action, index of the winning rule (None: no rule), reason
PRECEDENCE = [
    pytest.param(
        "**9", [Rule("block", "class:invalid"), Rule("block", "class:withheld")], "block",
        "allow", None, "internal call of the home router", id="internal-broadcast-beats-block-class-and-default"),
    pytest.param(
        '"Kitchen" <sip:**622@fritz.box>', [Rule("block", "class:invalid"), Rule("screen", "class:invalid")],
        "block", "allow", None, "internal call of the home router", id="internal-handset"),
    pytest.param(
        "sip:**9@fritz.box", [Rule("block", "class:invalid"), Rule("block", "+39*")], "block",
        "allow", None, "internal call of the home router", id="internal-with-prefix-rule"),
    pytest.param(
        FR_MOBILE, [Rule("block", "class:foreign"), Rule("allow", "class:mobile")], "screen",
        "allow", 1, "class:mobile on the allow list", id="allow-beats-block-class"),
    pytest.param(
        FR_MOBILE, [Rule("allow", "class:mobile"), Rule("block", "class:foreign")], "screen",
        "allow", 0, "class:mobile on the allow list", id="allow-beats-block-class-order-independent"),
    pytest.param(
        MILAN, [Rule("block", "+3902*"), Rule("allow", "+3902*")], "screen",
        "allow", 1, "prefix +3902* on the allow list", id="allow-beats-block-same-prefix"),
    pytest.param(
        FR_MOBILE, [Rule("screen", "class:foreign"), Rule("block", "class:mobile")], "allow",
        "block", 1, "class:mobile on the block list", id="block-beats-screen-class"),
    pytest.param(
        MILAN, [Rule("block", "+390212*"), Rule("screen", "+390212*")], "allow",
        "block", 0, "prefix +390212* on the block list", id="block-beats-screen-same-prefix"),
    pytest.param(
        MILAN, [Rule("screen", "+390212345678"), Rule("allow", "+390212345678")], "block",
        "allow", 1, "number +390212345678 on the allow list", id="allow-beats-screen-same-number"),
    pytest.param(
        MILAN, [Rule("block", "+3902*"), Rule("allow", "+390212345678", "Rossi")], "screen",
        "allow", 1, "number +390212345678 on the allow list (Rossi)", id="number-beats-prefix"),
    pytest.param(
        MILAN, [Rule("allow", "+3902*"), Rule("block", "+390212345678")], "screen",
        "block", 1, "number +390212345678 on the block list", id="number-beats-prefix-even-against-allow"),
    pytest.param(
        MILAN, [Rule("block", "+39*"), Rule("allow", "+3902*")], "screen",
        "allow", 1, "prefix +3902* on the allow list", id="longer-prefix-beats-shorter"),
    pytest.param(
        MILAN, [Rule("allow", "+39*"), Rule("block", "+39021234*", "call centre")], "screen",
        "block", 1, "prefix +39021234* on the block list (call centre)", id="longer-prefix-beats-shorter-allow"),
    pytest.param(
        MILAN, [Rule("block", "+390212345678*"), Rule("allow", "+3902123456*")], "screen",
        "block", 0, "prefix +390212345678* on the block list", id="prefix-as-long-as-the-number"),
    pytest.param(
        FR_MOBILE, [Rule("allow", "class:foreign"), Rule("screen", "+33612345678")], "block",
        "screen", 1, "number +33612345678 on the screen list", id="number-beats-class"),
    pytest.param(
        FR_MOBILE, [Rule("allow", "class:mobile"), Rule("block", "+33*")], "screen",
        "block", 1, "prefix +33* on the block list", id="short-prefix-beats-class"),
    pytest.param(
        MOBILE, [Rule("block", "class:foreign"), Rule("block", "+33*"), Rule("allow", "+390212345678")], "allow",
        "allow", None, "no rule matched: default allow", id="no-match-default-allow"),
    pytest.param(
        MOBILE, [], "block", "block", None, "no rule matched: default block", id="no-rules-default-block"),
    pytest.param(
        MOBILE, [], "screen", "screen", None, "no rule matched: default screen", id="no-rules-default-screen"),
    pytest.param(
        WITHHELD, [Rule("block", "+39*"), Rule("allow", "class:mobile")], "screen",
        "screen", None, "no rule matched: default screen", id="withheld-matches-no-prefix"),
]


@pytest.mark.parametrize(("number", "rules", "default", "action", "winner", "reason"), PRECEDENCE)
def test_precedence(number: str, rules: list[Rule], default: str, action: str, winner: int | None,
                    reason: str) -> None:
    d = _decide(number, rules, default)
    assert d.action == action
    if winner is None:
        assert d.rule is None
    else:
        assert d.rule is rules[winner]
    assert d.reason == reason


def test_reason_names_label_and_window() -> None:
    rule = Rule("block", "+390844*", "telemarketing", make_window("mon-fri", "09:00", "18:00"))
    d = _decide(TELEMARKETING, [rule])
    assert (d.action, d.rule, d.reason) == (
        "block", rule, "prefix +390844* on the block list (telemarketing), during mon-fri 09:00-18:00")


# --- classes --------------------------------------------------------------------------------------------

# class, caller, whether the class rule matches
CLASS_MATCHES = [
    ("withheld", WITHHELD, True),
    ("withheld", "<sip:anonymous@anonymous.invalid>", True),
    ("withheld", "Restricted", True),
    ("withheld", MILAN, False),
    ("withheld", GARBAGE, False),
    ("invalid", TELEMARKETING, True),
    ("invalid", GARBAGE, True),
    ("invalid", "12", True),
    ("invalid", WITHHELD, False),
    ("invalid", MILAN, False),
    ("invalid", FR_MOBILE, False),
    ("foreign", FR_MOBILE, True),
    ("foreign", FR_FIXED, True),
    ("foreign", DE_FIXED, True),
    ("foreign", "0033142685300", True),
    ("foreign", MILAN, False),
    ("foreign", "+390212345678", False),
    ("foreign", MOBILE, False),
    ("foreign", TELEMARKETING, False),
    ("foreign", WITHHELD, False),
    ("foreign", GARBAGE, False),
    ("premium_rate", PREMIUM, True),
    ("premium_rate", "+39892123", True),
    ("premium_rate", TOLL_FREE, False),
    ("premium_rate", MILAN, False),
    ("toll_free", TOLL_FREE, True),
    ("toll_free", "+39800123456", True),
    ("toll_free", PREMIUM, False),
    ("shared_cost", SHARED_COST, True),
    ("shared_cost", TOLL_FREE, False),
    ("mobile", MOBILE, True),
    ("mobile", "+393471234567", True),
    ("mobile", FR_MOBILE, True),
    ("mobile", MILAN, False),
    ("mobile", WITHHELD, False),
    ("fixed_line", MILAN, True),
    ("fixed_line", MOBILE, False),
]


@pytest.mark.parametrize(("cls", "number", "matches"), CLASS_MATCHES)
def test_class_rule_matches(cls: str, number: str, matches: bool) -> None:
    rule = Rule("block", f"class:{cls}")
    assert rule.matches(parse_caller(number, "IT"), "IT") is matches
    d = _decide(number, [rule], default="allow")
    assert (d.action, d.rule) == (("block", rule) if matches else ("allow", None))


def test_foreign_is_relative_to_the_region() -> None:
    rule = Rule("screen", "class:foreign")
    caller = parse_caller(FR_MOBILE, "IT")
    assert rule.matches(caller, "IT") is True
    assert rule.matches(caller, "FR") is False
    assert rule.matches(parse_caller("+390212345678", "FR"), "FR") is True


@pytest.mark.parametrize(("pattern", "kind", "specificity"), [
    ("+390212345678", "number", (3, 13)),
    ("+390844*", "prefix", (2, 8)),
    ("+39*", "prefix", (2, 4)),
    ("class:foreign", "class", (1, 0)),
])
def test_rule_kind_and_specificity(pattern: str, kind: str, specificity: tuple[int, int]) -> None:
    rule = Rule("block", pattern)
    assert (rule.kind, rule.specificity()) == (kind, specificity)


def test_candidate_patterns_cover_every_matching_rule() -> None:
    caller = parse_caller(MILAN, "IT")
    got = candidate_patterns(caller)
    assert got[:len(CLASSES)] == [f"class:{c}" for c in CLASSES]
    assert got[len(CLASSES)] == "+390212345678"
    prefixes = got[len(CLASSES) + 1:]
    # the number itself as a prefix ("0212345678*" covers 0212345678 too), down to "+3*", longest first
    assert prefixes[0] == "+390212345678*" and prefixes[-1] == "+3*"
    assert prefixes == sorted(prefixes, key=len, reverse=True) and len(prefixes) == 12
    for pattern in got:
        rule = Rule("block", pattern)
        if rule.kind != "class":
            assert rule.matches(caller, "IT"), pattern


def test_candidate_patterns_of_a_withheld_caller_are_the_classes() -> None:
    assert candidate_patterns(parse_caller(WITHHELD, "IT")) == [f"class:{c}" for c in CLASSES]


# --- windows --------------------------------------------------------------------------------------------

OFFICE = make_window("mon-fri", "09:00", "18:00")
FRIDAY_NIGHT = make_window("fri", "22:00", "06:00")
SUNDAY_SMALL_HOURS = make_window("sun", "01:00", "03:00")


def _rome(*args: int) -> datetime:
    return datetime(*args, tzinfo=ROME)


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# window, aware now, whether the windowed block rule applies
WINDOWS = [
    pytest.param(OFFICE, _rome(2026, 3, 4, 12, 0), True, id="office-wednesday-noon"),
    pytest.param(OFFICE, _rome(2026, 3, 4, 9, 0), True, id="office-start-inclusive"),
    pytest.param(OFFICE, _rome(2026, 3, 4, 17, 59), True, id="office-last-minute"),
    pytest.param(OFFICE, _rome(2026, 3, 4, 18, 0), False, id="office-end-exclusive"),
    pytest.param(OFFICE, _rome(2026, 3, 4, 8, 59), False, id="office-before-start"),
    pytest.param(OFFICE, _rome(2026, 3, 7, 12, 0), False, id="office-saturday"),
    pytest.param(OFFICE, _rome(2026, 3, 8, 12, 0), False, id="office-sunday"),
    pytest.param(OFFICE, _utc(2026, 3, 4, 8, 30), True, id="office-utc-0830-is-0930-local"),
    pytest.param(OFFICE, _utc(2026, 3, 4, 17, 30), False, id="office-utc-1730-is-1830-local"),
    pytest.param(OFFICE, _utc(2026, 7, 1, 7, 30), True, id="office-summer-utc-0730-is-0930-local"),
    pytest.param(OFFICE, _utc(2026, 7, 1, 16, 30), False, id="office-summer-utc-1630-is-1830-local"),
    pytest.param(FRIDAY_NIGHT, _rome(2026, 3, 6, 23, 0), True, id="midnight-friday-2300"),
    pytest.param(FRIDAY_NIGHT, _rome(2026, 3, 6, 22, 0), True, id="midnight-friday-start"),
    pytest.param(FRIDAY_NIGHT, _rome(2026, 3, 7, 3, 0), True, id="midnight-saturday-0300"),
    pytest.param(FRIDAY_NIGHT, _rome(2026, 3, 7, 6, 0), False, id="midnight-saturday-end-exclusive"),
    pytest.param(FRIDAY_NIGHT, _rome(2026, 3, 6, 3, 0), False, id="midnight-friday-0300"),
    pytest.param(FRIDAY_NIGHT, _rome(2026, 3, 7, 23, 0), False, id="midnight-saturday-2300"),
    pytest.param(FRIDAY_NIGHT, _rome(2026, 3, 6, 21, 59), False, id="midnight-friday-before-start"),
    # spring forward, Sunday 29 March 2026: 02:00 CET -> 03:00 CEST
    pytest.param(SUNDAY_SMALL_HOURS, _utc(2026, 3, 29, 0, 30), True, id="dst-spring-0030Z-is-0130-local"),
    pytest.param(SUNDAY_SMALL_HOURS, _utc(2026, 3, 29, 1, 30), False, id="dst-spring-0130Z-is-0330-local"),
    pytest.param(SUNDAY_SMALL_HOURS, _utc(2026, 3, 28, 23, 59), False, id="dst-spring-2359Z-is-0059-local"),
    # fall back, Sunday 25 October 2026: 03:00 CEST -> 02:00 CET, so 02:30 comes twice
    pytest.param(SUNDAY_SMALL_HOURS, _utc(2026, 10, 25, 0, 30), True, id="dst-autumn-0030Z-is-0230-CEST"),
    pytest.param(SUNDAY_SMALL_HOURS, _utc(2026, 10, 25, 1, 30), True, id="dst-autumn-0130Z-is-0230-CET"),
    pytest.param(SUNDAY_SMALL_HOURS, _utc(2026, 10, 25, 2, 30), False, id="dst-autumn-0230Z-is-0330-CET"),
    pytest.param(SUNDAY_SMALL_HOURS, _utc(2026, 10, 24, 22, 30), False, id="dst-autumn-2230Z-is-0030-CEST"),
]


@pytest.mark.parametrize(("window", "now", "inside"), WINDOWS)
def test_window_decides_on_local_wall_clock(window: Window, now: datetime, inside: bool) -> None:
    rule = Rule("block", "+390212345678", window=window)
    d = _decide(MILAN, [rule], default="allow", now=now)
    assert (d.action, d.rule) == (("block", rule) if inside else ("allow", None))
    assert window.contains(now.astimezone(ROME)) is inside


def test_rule_outside_its_window_lets_a_less_specific_rule_win() -> None:
    rules = [Rule("allow", "+390212345678", window=OFFICE), Rule("block", "+3902*")]
    assert _decide(MILAN, rules, now=_rome(2026, 3, 4, 12, 0)).rule is rules[0]
    assert _decide(MILAN, rules, now=_rome(2026, 3, 4, 20, 0)).rule is rules[1]


def test_window_in_another_zone() -> None:
    rules = RuleSet((Rule("block", "+390212345678", window=OFFICE),), "IT", ZoneInfo("America/New_York"), "allow")
    # 14:30 UTC is 09:30 in New York (EST), 15:30 in Rome
    caller = parse_caller(MILAN, "IT")
    assert decide(caller, rules, _utc(2026, 3, 4, 14, 30)).action == "block"
    assert decide(caller, rules, _utc(2026, 3, 4, 13, 30)).action == "allow"


@pytest.mark.parametrize(("window", "text"), [
    (OFFICE, "mon-fri 09:00-18:00"),
    (FRIDAY_NIGHT, "fri 22:00-06:00"),
    (make_window("sat,sun", None, None), "sat,sun 00:00-00:00"),
    (make_window(None, "07:30", "08:00"), "daily 07:30-08:00"),
])
def test_window_str(window: Window, text: str) -> None:
    assert str(window) == text


@pytest.mark.parametrize(("now", "inside"), [
    (_rome(2026, 3, 7, 0, 0), True),
    (_rome(2026, 3, 8, 23, 59), True),
    (_rome(2026, 3, 6, 23, 59), False),
    (_rome(2026, 3, 9, 0, 0), False),
])
def test_whole_day_window(now: datetime, inside: bool) -> None:
    assert make_window("sat,sun", None, None).contains(now) is inside


@pytest.mark.parametrize(("mask", "start", "end", "window"), [
    (None, None, None, None),
    (0b11111, "09:00", "18:00", OFFICE),
    (0b10000, "22:00", "06:00", FRIDAY_NIGHT),
    (0b1100000, None, None, Window(frozenset({5, 6}), time(0, 0), time(0, 0))),
])
def test_window_from_mask(mask: int | None, start: str | None, end: str | None, window: Window | None) -> None:
    assert window_from_mask(mask, start, end) == window
    if window is not None:
        assert window.days_mask == mask


# --- patterns -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "region", "pattern"), [
    ("+39 02 1234 5678", "IT", "+390212345678"),
    ("0212345678", "IT", "+390212345678"),
    ("02-1234 5678", "IT", "+390212345678"),
    ("00390212345678", "IT", "+390212345678"),
    ("  +390212345678  ", "IT", "+390212345678"),
    ("347 123 4567", "IT", "+393471234567"),
    ("+33 6 12 34 56 78", "IT", "+33612345678"),
    ("0844*", "IT", "+390844*"),
    ("+39 0844*", "IT", "+390844*"),
    ("00390844*", "IT", "+390844*"),
    ("+390844*", "IT", "+390844*"),
    ("(0844) 12*", "IT", "+39084412*"),
    ("3*", "IT", "+393*"),
    ("0162*", "FR", "+33162*"),
    ("+33 1 62*", "IT", "+33162*"),
    ("030*", "DE", "+4930*"),
    ("class:foreign", "IT", "class:foreign"),
    ("FOREIGN", "IT", "class:foreign"),
    ("withheld", "IT", "class:withheld"),
    ("Class:Premium_Rate", "IT", "class:premium_rate"),
    (" toll_free ", "IT", "class:toll_free"),
])
def test_normalize_pattern(text: str, region: str, pattern: str) -> None:
    assert normalize_pattern(text, region) == pattern
    assert normalize_pattern(pattern, region) == pattern


@pytest.mark.parametrize(("text", "message"), [
    ("abc", NOT_A_NUMBER.format("abc")),
    ("", NOT_A_NUMBER.format("")),
    ("class:nope", NOT_A_NUMBER.format("class:nope")),
    ("12", NOT_A_NUMBER.format("12")),
    ("anonymous", NOT_A_NUMBER.format("anonymous")),
    ("**9", NOT_A_NUMBER.format("**9")),
    ("12a*", "a prefix must be digits followed by *, got '12a*'"),
    ("*", "a prefix must be digits followed by *, got '*'"),
    ("+*", "a prefix must be digits followed by *, got '+*'"),
    ("08*44*", "a prefix must be digits followed by *, got '08*44*'"),
    ("1234567890123456*", "a prefix must be digits followed by *, got '1234567890123456*'"),
])
def test_normalize_pattern_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        normalize_pattern(text, "IT")
    assert str(exc.value) == message


# --- days and times -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "days", "canonical"), [
    ("mon-fri", {0, 1, 2, 3, 4}, "mon-fri"),
    ("sat,sun", {5, 6}, "sat,sun"),
    ("daily", {0, 1, 2, 3, 4, 5, 6}, "daily"),
    ("lun-ven", {0, 1, 2, 3, 4}, "mon-fri"),
    ("sab,dom", {5, 6}, "sat,sun"),
    ("mar", {1}, "tue"),
    ("Mon-Fri", {0, 1, 2, 3, 4}, "mon-fri"),
    ("mon, wed-fri", {0, 2, 3, 4}, "mon,wed-fri"),
    ("mon-wed", {0, 1, 2}, "mon-wed"),
    ("fri-mon", {4, 5, 6, 0}, "mon,fri-sun"),
    ("mon-sun", {0, 1, 2, 3, 4, 5, 6}, "daily"),
    ("all", {0, 1, 2, 3, 4, 5, 6}, "daily"),
    ("*", {0, 1, 2, 3, 4, 5, 6}, "daily"),
    ("", {0, 1, 2, 3, 4, 5, 6}, "daily"),
])
def test_parse_and_format_days(text: str, days: set[int], canonical: str) -> None:
    assert parse_days(text) == frozenset(days)
    assert format_days(parse_days(text)) == canonical
    assert parse_days(canonical) == frozenset(days)


@pytest.mark.parametrize("days", [{0}, {0, 2, 4}, {0, 1, 3, 4, 5}, {5, 6}, {6}, {0, 6}, set(range(6))])
def test_format_days_round_trips(days: set[int]) -> None:
    assert parse_days(format_days(days)) == frozenset(days)


@pytest.mark.parametrize("text", ["xyz", "mon-xyz", "mon,,fri", "weekdays", "1-5"])
def test_parse_days_errors(text: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_days(text)
    assert str(exc.value) == f"days must look like mon-fri or sat,sun, got {text!r}"


@pytest.mark.parametrize(("text", "value"), [("09:00", time(9)), ("9:05", time(9, 5)), ("23:59", time(23, 59)),
                                             (" 00:00 ", time(0))])
def test_parse_time(text: str, value: time) -> None:
    assert parse_time(text) == value


@pytest.mark.parametrize(("days", "start", "end", "message"), [
    (None, "09:00", None, "a time window needs both from and to"),
    ("mon-fri", "09:00", None, "a time window needs both from and to"),
    (None, None, "18:00", "a time window needs both from and to"),
    ("mon", "25:00", "26:00", "time must be HH:MM (24-hour), got '25:00'"),
    ("mon", "09:00", "24:00", "time must be HH:MM (24-hour), got '24:00'"),
    ("mon", "09:60", "10:00", "time must be HH:MM (24-hour), got '09:60'"),
    ("mon", "0900", "1000", "time must be HH:MM (24-hour), got '0900'"),
    ("someday", "09:00", "10:00", "days must look like mon-fri or sat,sun, got 'someday'"),
])
def test_make_window_errors(days: str | None, start: str | None, end: str | None, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        make_window(days, start, end)
    assert str(exc.value) == message


@pytest.mark.parametrize(("days", "start", "end", "window"), [
    (None, None, None, None),
    ("", "", "", None),
    ("mon-fri", "09:00", "18:00", Window(frozenset(range(5)), time(9), time(18))),
    (None, "09:00", "18:00", Window(frozenset(range(7)), time(9), time(18))),
    ("sat,sun", None, None, Window(frozenset({5, 6}), time(0), time(0))),
])
def test_make_window(days: str | None, start: str | None, end: str | None, window: Window | None) -> None:
    assert make_window(days, start, end) == window


@pytest.mark.parametrize(("pattern", "covers"), [
    ("+39*", "every number of +39"), ("+390*", "every number of +39 starting with 0"),
    ("+393*", "every number of +39 starting with 3"), ("+3934*", "every number of +39 starting with 34"),
    ("+1*", "every number of +1"), ("+880*", "every number of +880"), ("+4*", "numbers of several countries"),
    ("+39347*", None), ("+390844*", None), ("+1212*", None), ("+88012*", "every number of +880 starting with 12"),
    ("+880123*", None), ("+390212345678", None), ("class:foreign", None),
])
def test_wide_prefix(pattern: str, covers: str | None) -> None:
    from screener.rules import wide_prefix

    wide = wide_prefix(pattern)
    assert (str(wide) if wide else None) == covers
