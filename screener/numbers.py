"""Caller-ID parsing and normalisation, pure: a From / P-Asserted-Identity value or a typed number -> Caller.

Runs on every incoming call, so it uses only phonenumbers' core (parse, type, format) and never its geocoder
or carrier modules, which cost ~100 MB and ~200 ms to load.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote

import phonenumbers
from phonenumbers import (
    CountryCodeSource,
    NumberParseException,
    PhoneNumber,
    PhoneNumberFormat,
    PhoneNumberType,
)


@dataclass(frozen=True)
class Caller:
    """What screener knows of a caller; every rule decides from this alone."""

    raw: str  # the value as it arrived (header value or typed text)
    user: str  # the extracted user part / number text, e.g. "0212345678" or "+390212345678"
    e164: str | None  # "+390212345678"; also for numbers phonenumbers calls invalid (+390844...)
    withheld: bool
    internal: bool  # a home router's internal call (**9, **622, *...)
    valid: bool
    type: str  # fixed_line, mobile, fixed_line_or_mobile, toll_free, premium_rate, shared_cost, voip,
    #            personal_number, unknown (also for withheld/internal)
    country: str | None  # ISO region, "IT"; None when unknown
    country_source: str  # how the country was decided: "plus", "00", "national", "ambiguous", "none"
    name: str = ""  # display name, sanitised (control characters removed, at most 128 characters)


MAX_NAME = 128

_WITHHELD_USERS = frozenset({"", "anonymous", "restricted", "unknown", "unavailable", "private"})
_WITHHELD_HOST = "anonymous.invalid"
_SEPARATORS = str.maketrans("", "", " \t-.()/\u00a0")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_HOST_END = re.compile(r"[;?:>\s]")
_TYPES = {
    PhoneNumberType.FIXED_LINE: "fixed_line",
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile",
    PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.PREMIUM_RATE: "premium_rate",
    PhoneNumberType.SHARED_COST: "shared_cost",
    PhoneNumberType.VOIP: "voip",
    PhoneNumberType.PERSONAL_NUMBER: "personal_number",
}
# Numbers phonenumbers calls invalid still get an E.164 form (Italy's 0844/0843 telemarketing ranges are
# "invalid" to it) when their national part has a plausible length; 17 is phonenumbers' own maximum.
_MIN_NSN, _MAX_NSN = 4, 17


def sanitize_name(text: str | None) -> str:
    """Drop control characters (Unicode C*), collapse whitespace, cut to 128 characters; no HTML escaping."""
    if not text:
        return ""
    if not text.isprintable():
        # Whitespace controls (\t \r \n ...) separate words, so they become a space rather than vanish.
        text = "".join(
            " " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch)[0] != "C"
        )
    return " ".join(text.split())[:MAX_NAME].rstrip()


def _split_header(value: str) -> tuple[str | None, str]:
    """Split a name-addr / addr-spec / typed number into (display name or None, URI or number text)."""
    s = value.strip()
    if s.startswith('"'):
        m = _QUOTED.match(s)
        if m is not None:
            rest = s[m.end() :].strip()
            if rest.startswith("<"):
                rest = rest[1:].partition(">")[0]
            return _QUOTED_PAIR.sub(r"\1", m.group(1)), rest
        s = s[1:]  # unterminated quote (sloppy peers): read the rest as a token-form name-addr
    if "<" in s:
        before, _, after = s.partition("<")
        return before.strip() or None, after.partition(">")[0]
    return None, s


def _split_uri(uri: str) -> tuple[str, str]:
    """Return (user part without parameters or password, still percent-escaped; lower-case host or "")."""
    uri = uri.strip()
    head = uri[:5].lower()
    if head.startswith("tel:"):
        return uri[4:].partition(";")[0], ""
    if head.startswith("sip:"):
        rest = uri[4:]
    elif head == "sips:":
        rest = uri[5:]
    elif "@" in uri:
        rest = uri
    else:
        return uri.partition(";")[0], ""
    userinfo, at, hostport = rest.partition("@")
    if not at:  # "sip:fritz.box": a host, no user
        return "", userinfo.lower()
    # The user part of a telephone-subscriber may carry parameters: +390212345678;verstat=...;isub=...
    user = userinfo.partition(";")[0].partition(":")[0]
    return user, _HOST_END.split(hostport, maxsplit=1)[0].lower()


def _privacy_id(privacy: str | None) -> bool:
    """True when a Privacy header value asks for the identity to be withheld (RFC 3323 "id")."""
    if not privacy:
        return False
    return "id" in (token.strip().lower() for token in privacy.replace(",", ";").split(";"))


def _parse_number(number: str, region: str) -> tuple[PhoneNumber | None, int, str]:
    """Parse "+digits" or "digits" to (number or None, phonenumbers type, country_source)."""
    try:
        # keep_raw_input is what makes phonenumbers record country_code_source (+, IDD, bare code, national).
        num = phonenumbers.parse(number, region, keep_raw_input=True)
    except NumberParseException:
        return None, PhoneNumberType.UNKNOWN, "none"
    ntype = phonenumbers.number_type(num)
    source = num.country_code_source
    if source == CountryCodeSource.FROM_NUMBER_WITH_PLUS_SIGN:
        return num, ntype, "plus"
    if source == CountryCodeSource.FROM_NUMBER_WITH_IDD:
        return num, ntype, "00"
    if not number.startswith(str(phonenumbers.country_code_for_region(region))):
        return num, ntype, "national"
    # Home country code without "+" (390212345678; but 3912345678 is an Italian mobile). phonenumbers already
    # reads it as international when the national reading does not fit; when it kept the national reading
    # but that is invalid while the international one is valid, prefer the international one.
    if source == CountryCodeSource.FROM_DEFAULT_COUNTRY and ntype == PhoneNumberType.UNKNOWN:
        try:
            intl = phonenumbers.parse("+" + number, None)
        except NumberParseException:
            return num, ntype, "ambiguous"
        intl_type = phonenumbers.number_type(intl)
        if intl_type != PhoneNumberType.UNKNOWN:
            return intl, intl_type, "ambiguous"
    return num, ntype, "ambiguous"


def _country(num: PhoneNumber, valid: bool) -> str | None:
    """Region of the number; for invalid numbers the main region of its country code (+39 0844 -> IT)."""
    country = phonenumbers.region_code_for_number(num)
    if country is None and not valid and num.country_code is not None:
        country = phonenumbers.region_code_for_country_code(num.country_code)
    return None if country in (None, phonenumbers.UNKNOWN_REGION) else country


def parse_caller(
    value: str,
    region: str = "IT",
    *,
    privacy: str | None = None,
    display_name: str | None = None,
) -> Caller:
    """Parse a From / P-Asserted-Identity value or a typed number into a Caller (never raises on bad input).

    Withheld: user part anonymous / restricted / unknown / unavailable / private / empty (any case), host
    anonymous.invalid, or a Privacy value with "id". Internal: user part starting with "*" (FRITZ!Box **9,
    **622). Both get no e164, type "unknown", country None, country_source "none".

    Digits starting with `region`'s country code but without "+" or "00" (390212345678) are ambiguous: the
    national reading is kept when it is a valid number (3912345678 is an Italian mobile), otherwise the
    international one (+390212345678); either way country_source is "ambiguous".

    Invalid but well-formed numbers (+390844123456) still get e164 and a country (the main region of their
    country code), with valid False and type "unknown". Anything with letters, or a national part shorter
    than 4 digits, is garbage: e164 None, country_source "none".
    """
    region = region.upper()
    header_name, uri = _split_header(value)
    encoded_user, host = _split_uri(uri)
    user = unquote(encoded_user).strip() if "%" in encoded_user else encoded_user.strip()
    name = sanitize_name(display_name if display_name is not None else header_name)
    compact = user.translate(_SEPARATORS)
    digits = compact[1:] if compact.startswith("+") else compact
    is_number = digits.isascii() and digits.isdigit()
    shown_user = compact if is_number else sanitize_name(user)

    def nothing(withheld: bool = False, internal: bool = False) -> Caller:
        return Caller(value, shown_user, None, withheld, internal, False, "unknown", None, "none", name)

    if user.lower() in _WITHHELD_USERS or host == _WITHHELD_HOST or _privacy_id(privacy):
        return nothing(withheld=True)
    if user.startswith("*"):
        return nothing(internal=True)
    if not is_number:
        return nothing()
    num, ntype, source = _parse_number(compact, region)
    if num is None:
        return nothing()
    # number_type is UNKNOWN exactly when is_valid_number is False; asking both would cost another ~9 us.
    valid = ntype != PhoneNumberType.UNKNOWN
    if not valid and not _MIN_NSN <= len(phonenumbers.national_significant_number(num)) <= _MAX_NSN:
        return nothing()
    e164 = phonenumbers.format_number(num, PhoneNumberFormat.E164)
    ptype = _TYPES.get(ntype, "unknown")
    return Caller(value, compact, e164, False, False, valid, ptype, _country(num, valid), source, name)


def national_format(e164: str) -> str:
    """Format an E.164 number the way its own country writes it ("+390212345678" -> "02 1234 5678")."""
    try:
        num = phonenumbers.parse(e164, None)
    except NumberParseException as exc:
        raise ValueError(f"not an E.164 number: {e164!r}") from exc
    return phonenumbers.format_number(num, PhoneNumberFormat.NATIONAL)


def is_foreign(caller: Caller, region: str) -> bool:
    """True when the caller's country is known and is not `region`; internal and withheld calls never are."""
    if caller.withheld or caller.internal or caller.country is None:
        return False
    return caller.country != region.upper()


def prefixes(e164: str) -> list[str]:
    """Proper prefixes of an E.164 number, longest first, down to "+" and a digit ("+3902" -> +390 +39 +3)."""
    return [e164[:end] for end in range(len(e164) - 1, 1, -1)]
