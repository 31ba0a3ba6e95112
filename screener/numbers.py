"""Caller-ID parsing and normalisation, pure: a From / P-Asserted-Identity value or a typed number -> Caller."""

from __future__ import annotations

from dataclasses import dataclass


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
