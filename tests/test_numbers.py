"""Tables of caller-ID forms as they arrive, and what screener.numbers makes of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from screener.numbers import Caller, is_foreign, national_format, parse_caller, prefixes, sanitize_name

ROOT = Path(__file__).resolve().parents[1]

MILAN = "+390212345678"
ROME = "+390612345678"
MOBILE = "+393471234567"

FIXED, MOB, FL_OR_MOB, UNKNOWN = "fixed_line", "mobile", "fixed_line_or_mobile", "unknown"
NAT, PLUS, IDD, AMB = "national", "plus", "00", "ambiguous"

# value, region, e164, valid, type, country, country_source
NUMBERS = [
    # Milan landline in every form it arrives in
    ("0212345678", "IT", MILAN, True, FIXED, "IT", NAT),
    ("+390212345678", "IT", MILAN, True, FIXED, "IT", PLUS),
    ("00390212345678", "IT", MILAN, True, FIXED, "IT", IDD),
    ("390212345678", "IT", MILAN, True, FIXED, "IT", AMB),
    ("+39 02 1234 5678", "IT", MILAN, True, FIXED, "IT", PLUS),
    ("0039 02-12345678", "IT", MILAN, True, FIXED, "IT", IDD),
    ("(02) 1234 5678", "IT", MILAN, True, FIXED, "IT", NAT),
    ("02.1234.5678", "IT", MILAN, True, FIXED, "IT", NAT),
    ("sip:0212345678@provider.it;user=phone", "IT", MILAN, True, FIXED, "IT", NAT),
    ("<sip:+390212345678@1.2.3.4>;tag=abc", "IT", MILAN, True, FIXED, "IT", PLUS),
    ('"Mario Rossi" <sip:0212345678@fritz.box;user=phone>;tag=x', "IT", MILAN, True, FIXED, "IT", NAT),
    ("Mario Rossi <sip:0212345678@fritz.box>", "IT", MILAN, True, FIXED, "IT", NAT),
    ("sips:+390212345678@voip.example.it", "IT", MILAN, True, FIXED, "IT", PLUS),
    ("<sips:0212345678@voip.example.it:5061;transport=tls>", "IT", MILAN, True, FIXED, "IT", NAT),
    ("sip:%2B390212345678@provider.it", "IT", MILAN, True, FIXED, "IT", PLUS),
    ("<sip:%2b39%2002%201234%205678@provider.it>", "IT", MILAN, True, FIXED, "IT", PLUS),
    ("SIP:0212345678@Provider.IT", "IT", MILAN, True, FIXED, "IT", NAT),
    ("sip:0039021234567%38@provider.it", "IT", MILAN, True, FIXED, "IT", IDD),
    ("sip:+390212345678;verstat=TN-Validation-Passed@a.it;user=phone", "IT", MILAN, True, FIXED, "IT", PLUS),
    ("sip:+390212345678:secret@provider.it", "IT", MILAN, True, FIXED, "IT", PLUS),
    # Rome landline
    ("0612345678", "IT", ROME, True, FIXED, "IT", NAT),
    ("tel:+39-06-1234-5678", "IT", ROME, True, FIXED, "IT", PLUS),
    ("<tel:+390612345678;verstat=No-TN-Validation>", "IT", ROME, True, FIXED, "IT", PLUS),
    ("'Rome' <sip:390612345678@provider.it>", "IT", ROME, True, FIXED, "IT", AMB),
    # mobiles; 39x mobiles keep their national reading
    ("3471234567", "IT", MOBILE, True, MOB, "IT", NAT),
    ("+39 347 123 4567", "IT", MOBILE, True, MOB, "IT", PLUS),
    ("393471234567", "IT", MOBILE, True, MOB, "IT", AMB),
    ("<sip:3471234567@fritz.box>", "IT", MOBILE, True, MOB, "IT", NAT),
    ("3921234567", "IT", "+393921234567", True, MOB, "IT", AMB),
    ("393921234567", "IT", "+393921234567", True, MOB, "IT", AMB),
    # special Italian ranges
    ("899123456", "IT", "+39899123456", True, "premium_rate", "IT", NAT),
    ("<sip:892123@provider.it>", "IT", "+39892123", True, "premium_rate", "IT", NAT),
    ("800123456", "IT", "+39800123456", True, "toll_free", "IT", NAT),
    ("tel:+39803123", "IT", "+39803123", True, "toll_free", "IT", PLUS),
    ("848 123 456", "IT", "+39848123456", True, "shared_cost", "IT", NAT),
    ("199123456", "IT", "+39199123456", True, "personal_number", "IT", NAT),
    # Law 5/2018 telemarketing / survey prefixes: invalid to phonenumbers, the leading 0 must stay
    ("0844 123456", "IT", "+390844123456", False, UNKNOWN, "IT", NAT),
    ("sip:0844123456@fritz.box", "IT", "+390844123456", False, UNKNOWN, "IT", NAT),
    ("+390844123456", "IT", "+390844123456", False, UNKNOWN, "IT", PLUS),
    ("390844123456", "IT", "+390844123456", False, UNKNOWN, "IT", AMB),
    ("0843123456", "IT", "+390843123456", False, UNKNOWN, "IT", NAT),
    ("<tel:+39-0843-123456>", "IT", "+390843123456", False, UNKNOWN, "IT", PLUS),
    # foreign numbers seen from Italy
    ("+33123456789", "IT", "+33123456789", True, FIXED, "FR", PLUS),
    ("0033612345678", "IT", "+33612345678", True, MOB, "FR", IDD),
    ("<sip:+4930123456@sipgate.de>", "IT", "+4930123456", True, FIXED, "DE", PLUS),
    ("+49 151 23456789", "IT", "+4915123456789", True, MOB, "DE", PLUS),
    ("+44 20 7946 0000", "IT", "+442079460000", True, FIXED, "GB", PLUS),
    ("0044 7400 123456", "IT", "+447400123456", True, MOB, "GB", IDD),
    ("+1 (201) 555-0123", "IT", "+12015550123", True, FL_OR_MOB, "US", PLUS),
    ("tel:+1-613-555-0123", "IT", "+16135550123", True, FL_OR_MOB, "CA", PLUS),
    ("+447700900123", "IT", "+447700900123", False, UNKNOWN, "GB", PLUS),
    # the rest of the type mapping: pager and UAN are valid but not a class rules use
    ("+44 56 1234 5678", "IT", "+445612345678", True, "voip", "GB", PLUS),
    ("+44 70 1234 5678", "IT", "+447012345678", True, "personal_number", "GB", PLUS),
    ("+44 76 4012 3456", "IT", "+447640123456", True, UNKNOWN, "GB", PLUS),
    ("+44 55 1234 5678", "IT", "+445512345678", True, UNKNOWN, "GB", PLUS),
    # the same numbers with their own region
    ("01 23 45 67 89", "FR", "+33123456789", True, FIXED, "FR", NAT),
    ("33612345678", "FR", "+33612345678", True, MOB, "FR", AMB),
    ("030 123456", "DE", "+4930123456", True, FIXED, "DE", NAT),
    ("0151/23456789", "DE", "+4915123456789", True, MOB, "DE", NAT),
    ("020 7946 0000", "GB", "+442079460000", True, FIXED, "GB", NAT),
    ("<sip:07400123456@gw.example.co.uk>", "GB", "+447400123456", True, MOB, "GB", NAT),
    ("(201) 555-0123", "US", "+12015550123", True, FL_OR_MOB, "US", NAT),
    ("011 39 02 1234 5678", "US", MILAN, True, FIXED, "IT", IDD),
    ("0212345678", "FR", "+33212345678", True, FIXED, "FR", NAT),
    ("+390212345678", "US", MILAN, True, FIXED, "IT", PLUS),
]


@pytest.mark.parametrize(("value", "region", "e164", "valid", "type_", "country", "source"), NUMBERS)
def test_parse_number(
    value: str, region: str, e164: str, valid: bool, type_: str, country: str, source: str
) -> None:
    caller = parse_caller(value, region)
    assert caller.raw == value
    assert caller.e164 == e164
    assert not caller.withheld
    assert not caller.internal
    assert caller.valid is valid
    assert caller.type == type_
    assert caller.country == country
    assert caller.country_source == source


@pytest.mark.parametrize(
    ("value", "user"),
    [
        ("+39 02 1234 5678", "+390212345678"),
        ("0039 02-12345678", "00390212345678"),
        ("sip:%2B390212345678@provider.it", "+390212345678"),
        ("sip:+390212345678;verstat=TN-Validation-Passed@ims.example.it;user=phone", "+390212345678"),
        ("<tel:+39-06-1234-5678;verstat=No-TN-Validation>", "+390612345678"),
        ('"Kitchen" <sip:**622@fritz.box>', "**622"),
        ("sip:mario@example.com", "mario"),
        ("sip:%00evil%0d%0aname@example.com", "evil name"),
    ],
)
def test_user_part(value: str, user: str) -> None:
    assert parse_caller(value).user == user


WITHHELD = [
    ("anonymous", None),
    ("Anonymous", None),
    ("Restricted", None),
    ("unknown", None),
    ("UNAVAILABLE", None),
    ("private", None),
    ("", None),
    ("   ", None),
    ('"Anonymous" <sip:anonymous@anonymous.invalid>;tag=1928301774', None),
    ("sip:anonymous@anonymous.invalid", None),
    ("<sip:0212345678@Anonymous.Invalid>", None),
    ("<sip:Restricted@provider.it>", None),
    ("<sip:unknown@192.168.178.1>", None),
    ("<sip:@provider.it>", None),
    ("<sip:provider.it>", None),
    ("tel:anonymous", None),
    ("<sip:+390212345678@provider.it>", "id"),
    ("0212345678", "id;user"),
    ("0212345678", "header;id"),
    ("0212345678", "header; ID"),
    ("0212345678", "user, id"),
]


@pytest.mark.parametrize(("value", "privacy"), WITHHELD)
def test_withheld(value: str, privacy: str | None) -> None:
    caller = parse_caller(value, privacy=privacy)
    assert caller.withheld
    assert not caller.internal
    assert caller.e164 is None
    assert not caller.valid
    assert caller.type == "unknown"
    assert caller.country is None
    assert caller.country_source == "none"
    assert not is_foreign(caller, "IT")


@pytest.mark.parametrize("privacy", [None, "", "none", "header", "user", "session", "critical", "ids"])
def test_privacy_without_id_is_not_withheld(privacy: str | None) -> None:
    caller = parse_caller("<sip:+390212345678@provider.it>", privacy=privacy)
    assert not caller.withheld
    assert caller.e164 == MILAN


@pytest.mark.parametrize(
    "value",
    [
        "**9",
        '"Kitchen" <sip:**622@fritz.box>',
        "sip:**610@fritz.box;user=phone",
        "<sip:%2A%2A9@192.168.178.1>",
        "*21#",
        "sip:*21%23@fritz.box",
    ],
)
def test_internal(value: str) -> None:
    caller = parse_caller(value)
    assert caller.internal
    assert not caller.withheld
    assert caller.e164 is None
    assert not caller.valid
    assert caller.type == "unknown"
    assert caller.country is None
    assert caller.country_source == "none"
    assert not is_foreign(caller, "IT")


@pytest.mark.parametrize(
    "value",
    [
        "hello",
        "sip:mario@example.com",
        '"Mario" <sip:mario.rossi@example.com>',
        "+39 02 CALL ME",
        "tel:+1-800-FLOWERS",
        "12",
        "123",
        "+3912",
        "003912",
        "+999123456",
        "+",
        "00",
        "+39021234567890123456",
        "0212345678x",
        "０２１２３４５６７８",  # full-width digits are not what a SIP peer sends
        "sip:1.2.3.4",
    ],
)
def test_garbage(value: str) -> None:
    caller = parse_caller(value)
    assert caller.e164 is None
    assert not caller.valid
    assert caller.type == "unknown"
    assert caller.country is None
    assert caller.country_source == "none"
    assert not caller.internal
    assert not is_foreign(caller, "IT")


@pytest.mark.parametrize(
    ("value", "display_name", "name"),
    [
        ('"Mario Rossi" <sip:0212345678@fritz.box>', None, "Mario Rossi"),
        ("Mario Rossi <sip:0212345678@fritz.box>", None, "Mario Rossi"),
        ('"Mario \\"Super\\" Rossi \\\\ 2" <sip:0212345678@x>', None, 'Mario "Super" Rossi \\ 2'),
        ('"<sip:evil@x>" <sip:0212345678@fritz.box>', None, "<sip:evil@x>"),
        ('"  SPAM   Call\tCenter " <sip:0212345678@fritz.box>', None, "SPAM Call Center"),
        ('"\u202eevil\r\nname\x00" <sip:0212345678@x>', None, "evil name"),
        ('"<script>alert(1)</script>" <sip:0212345678@x>', None, "<script>alert(1)</script>"),
        ('"Mario" <sip:0212345678@x>', "Luigi", "Luigi"),
        ('"Mario" <sip:0212345678@x>', "", ""),
        ("<sip:0212345678@x>", None, ""),
        ("0212345678", "Luigi\n", "Luigi"),
        ('"unterminated <sip:0212345678@x>', None, "unterminated"),
        ('"Anonymous" <sip:anonymous@anonymous.invalid>', None, "Anonymous"),
    ],
)
def test_display_name(value: str, display_name: str | None, name: str) -> None:
    caller = parse_caller(value, display_name=display_name)
    assert caller.name == name
    if "unterminated" in value:
        assert caller.e164 == MILAN


def test_display_name_with_number_inside_quotes_is_not_the_number() -> None:
    caller = parse_caller('"sip:+33123456789@x" <sip:0212345678@fritz.box>')
    assert caller.e164 == MILAN
    assert caller.name == "sip:+33123456789@x"


def test_caller_is_frozen() -> None:
    caller = parse_caller("0212345678")
    assert isinstance(caller, Caller)
    with pytest.raises(AttributeError):
        caller.e164 = "+390000000000"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, ""),
        ("", ""),
        ("Mario Rossi", "Mario Rossi"),
        ("  Mario   Rossi  ", "Mario Rossi"),
        ("Mario\x00Rossi", "MarioRossi"),
        ("Mario\r\nRossi", "Mario Rossi"),
        ("Mario\tRossi", "Mario Rossi"),
        ("\x1b[31mred\x1b[0m", "[31mred[0m"),
        ("abc\u202edcba", "abcdcba"),
        ("\u2066x\u2069\u200b\ufeffy", "xy"),
        ("a\u00a0\u2003b\u2028c", "a b c"),
        ("Caffè Müller 😀", "Caffè Müller 😀"),
        ("<b>&amp;</b>", "<b>&amp;</b>"),
        ("\udcff broken", "broken"),
        ("\x7f\x85\x9f", ""),
    ],
)
def test_sanitize_name(text: str | None, expected: str) -> None:
    assert sanitize_name(text) == expected


def test_sanitize_name_cuts_long_names() -> None:
    assert sanitize_name("x" * 6144) == "x" * 128
    assert sanitize_name(("\u202e\x00 " * 2048) + "ok") == "ok"
    words = sanitize_name("ab " * 2048)
    assert len(words) <= 128
    assert words == words.strip()
    assert sanitize_name("\x00" + "é" * 6000) == "é" * 128


def test_parse_caller_with_huge_name() -> None:
    caller = parse_caller('"' + "A\u202e" * 3072 + '" <sip:0212345678@fritz.box>')
    assert caller.name == "A" * 128
    assert caller.e164 == MILAN


@pytest.mark.parametrize(
    ("e164", "expected"),
    [
        ("+3902", ["+390", "+39", "+3"]),
        ("+390212345678", ["+390212345678"[:n] for n in range(12, 1, -1)]),
        ("+39", ["+3"]),
        ("+3", []),
        ("+", []),
        ("", []),
    ],
)
def test_prefixes(e164: str, expected: list[str]) -> None:
    assert prefixes(e164) == expected


def test_prefixes_are_proper_and_longest_first() -> None:
    result = prefixes(MILAN)
    assert result[0] == "+39021234567"
    assert result[-1] == "+3"
    assert MILAN not in result
    assert [len(p) for p in result] == sorted((len(p) for p in result), reverse=True)


@pytest.mark.parametrize(
    ("e164", "expected"),
    [
        (MILAN, "02 1234 5678"),
        (MOBILE, "347 123 4567"),
        ("+390844123456", "0844123456"),
        ("+33123456789", "01 23 45 67 89"),
        ("+12015550123", "(201) 555-0123"),
    ],
)
def test_national_format(e164: str, expected: str) -> None:
    assert national_format(e164) == expected


@pytest.mark.parametrize("bad", ["", "hello", "0212345678x", "+999123"])
def test_national_format_rejects_non_e164(bad: str) -> None:
    with pytest.raises(ValueError, match="not an E.164 number"):
        national_format(bad)


@pytest.mark.parametrize(
    ("value", "region", "foreign"),
    [
        ("0212345678", "IT", False),
        ("+390844123456", "IT", False),
        ("+33123456789", "IT", True),
        ("+447700900123", "IT", True),  # invalid but still British: spoofers must not dodge "foreign"
        ("+80012345678", "IT", True),
        ("+33123456789", "FR", False),
        ("+33123456789", "fr", False),
        ("+12015550123", "US", False),
        ("+16135550123", "US", True),
        ("hello", "IT", False),
    ],
)
def test_is_foreign(value: str, region: str, foreign: bool) -> None:
    assert is_foreign(parse_caller(value, "IT"), region) is foreign


def test_geocoder_and_carrier_are_never_loaded() -> None:
    code = (
        "import sys\n"
        "from screener.numbers import is_foreign, national_format, parse_caller\n"
        "for v in ['0212345678', '+33123456789', '<sip:+4930123456@x>', '390844123456', '**9', '']:\n"
        "    is_foreign(parse_caller(v), 'IT')\n"
        "national_format('+390212345678')\n"
        "heavy = ('phonenumbers.geocoder', 'phonenumbers.carrier', 'phonenumbers.geodata',\n"
        "         'phonenumbers.carrierdata', 'phonenumbers.timezone', 'phonenumbers.tzdata')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
