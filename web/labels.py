"""Human, translated names for the codes the store keeps (outcomes, decisions, lists, number types, sources,
prompts), and the English texts the core writes into rows and errors (a call's rule and reason, an import
report line, a pattern refused) translated for display: rows keep the English the service wrote."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Flask, g
from flask_babel import gettext
from flask_babel import lazy_gettext as _l
from flask_babel.speaklater import LazyString
from werkzeug.exceptions import HTTPException

from screener.audio import SILENT_MESSAGE

LABELS: dict[str, dict[object, LazyString]] = {
    "outcome": {
        "blocked": _l("blocked"), "answered_elsewhere": _l("answered elsewhere"), "missed": _l("missed"),
        "passed": _l("passed the check"), "connected": _l("put through"),
        "blocked_by_household": _l("blocked by the household"), "failed_challenge": _l("failed the check"),
        "caller_hung_up": _l("caller hung up"), "over_capacity": _l("over capacity"),
        "interrupted": _l("interrupted"), "error": _l("handler error"), None: _l("in progress"),
    },
    "decision": {"allow": _l("allow"), "block": _l("block"), "screen": _l("screen")},
    "list": {"allow": _l("allow list"), "block": _l("block list"), "screen": _l("screen list")},
    "type": {
        "fixed_line": _l("landline"), "mobile": _l("mobile"), "fixed_line_or_mobile": _l("landline or mobile"),
        "toll_free": _l("toll-free"), "premium_rate": _l("premium rate"), "shared_cost": _l("shared cost"),
        "voip": _l("VoIP"), "personal_number": _l("personal number"), "unknown": _l("unknown"),
    },
    # the number classes of screener.rules.CLASSES, as a rule names them
    "class": {
        "withheld": _l("withheld numbers"), "invalid": _l("invalid numbers"), "foreign": _l("foreign numbers"),
        "premium_rate": _l("premium-rate numbers"), "toll_free": _l("toll-free numbers"),
        "shared_cost": _l("shared-cost numbers"), "mobile": _l("mobile numbers"),
        "fixed_line": _l("landline numbers"), "voip": _l("VoIP numbers"), "personal_number": _l("personal numbers"),
    },
    "state": {"registered": _l("registered"), "registering": _l("registering"), "failed": _l("failed"),
              "stopped": _l("stopped"), "unregistered": _l("not registered"),
              "not_configured": _l("not configured")},
    # where a list entry came from (store.ListEntry.source)
    "source": {
        "user": _l("added by hand"), "dashboard": _l("dashboard"), "cli": _l("command line"),
        "import": _l("CSV import"), "csv import": _l("CSV import"), "verified": _l("verified caller"),
        "household": _l("blocked by the household"),
    },
    "prompt": {"challenge": _l("key check"), "passed": _l("check passed"), "failed": _l("check failed"),
               "blocked": _l("blocked caller"), "voicemail": _l("voicemail invitation"),
               "hold": _l("hold, before the house rings")},
    "language": {"en": _l("English"), "it": _l("Italian")},
    "preset": {
        "it": _l("Italy: telemarketing prefixes, anomalous caller numbers, foreign and withheld callers screened"),
        "fr": _l("France: the telemarketing ranges reserved by ARCEP"),
    },
    # the labels the presets give their entries
    "preset_label": {
        "0844: market research, advertising and sales calls": _l("0844: market research, advertising and sales calls"),
        "0843: statistical surveys": _l("0843: statistical surveys"),
        "premium-rate number as caller": _l("premium-rate number as caller"),
        "shared-cost number as caller": _l("shared-cost number as caller"),
        "toll-free number as caller": _l("toll-free number as caller"),
        "foreign caller (carriers block spoofed Italian numbers since 2025, call centres moved abroad)":
            _l("foreign caller (carriers block spoofed Italian numbers since 2025, call centres moved abroad)"),
        "withheld number": _l("withheld number"),
    },
}
_DAYS = {"mon": _l("mon"), "tue": _l("tue"), "wed": _l("wed"), "thu": _l("thu"), "fri": _l("fri"),
         "sat": _l("sat"), "sun": _l("sun"), "daily": _l("daily")}
_DAY_WORD = re.compile(r"\b(mon|tue|wed|thu|fri|sat|sun|daily)\b")


def label(kind: str, value: object) -> str:
    """The translated name of `value`, or the value itself when it has none (memoised per request)."""
    memo: dict[tuple[str, object], str] = g.setdefault("labels", {})
    key = (kind, value)
    if key not in memo:
        text = LABELS.get(kind, {}).get(value)
        memo[key] = str(text) if text is not None else ("" if value is None else str(value))
    return memo[key]


def source_text(source: str) -> str:
    """A list entry's source: "preset it" / "preset:it" -> "preset it" translated; unknown ones as they are."""
    name = re.fullmatch(r"preset[ :](\w+)", source or "")
    if name:
        return gettext("preset %(name)s", name=name[1])
    return label("source", source)


def entry_label(text: str) -> str:
    """A list entry's label: a preset's own label translated, anything the user wrote as it is."""
    premium = re.fullmatch(r"premium rate (\d+)", text or "")
    if premium:
        return gettext("premium rate %(prefix)s", prefix=premium[1])
    ranges = re.fullmatch(r"telemarketing range (0\d+)", text or "")
    if ranges:
        return gettext("telemarketing range %(prefix)s", prefix=ranges[1])
    return label("preset_label", text)


def window_text(window: str) -> str:
    """"mon-fri 09:00-18:00" with the day names translated."""
    return _DAY_WORD.sub(lambda m: str(_DAYS[m[1]]), window)


def pattern_text(pattern: str) -> str:
    """A rule's pattern: "class:foreign" -> "foreign numbers"; numbers and prefixes as they are."""
    if pattern.startswith("class:"):
        return label("class", pattern[6:])
    return pattern


def rule_text(rule: str, action: bool = True) -> str:
    """A call's rule as the service wrote it (str(rules.Rule): "block +390844* (mon-fri 09:00-18:00)"); without
    its action when the page shows that beside it."""
    m = re.fullmatch(r"(allow|block|screen) (\S+)(?: \((.+)\))?", rule or "")
    if not m:
        return rule or ""
    text = f"{label('decision', m[1])} {pattern_text(m[2])}" if action else pattern_text(m[2])
    return f"{text} ({window_text(m[3])})" if m[3] else text


def _what(text: str) -> str:
    kind, _sp, pattern = text.partition(" ")
    if kind == "number":
        return gettext("number %(n)s", n=pattern)
    if kind == "prefix":
        return gettext("prefix %(p)s", p=pattern)
    return pattern_text(text)


def _outcome_words(text: str) -> str:
    return label("outcome", text.replace(" ", "_"))


_AS_IS: Callable[[str], str] = str
_WINDOW = r"[a-z,\-]+ \d\d:\d\d-\d\d:\d\d"
# The texts screener.rules, screener.service, screener.csvio and the pattern and window parsers write, each
# with its translation and how to translate the pieces it quotes. Kept in step by tests/web/test_labels.py.
CORE_TEXTS: tuple[tuple[re.Pattern[str], LazyString, dict[str, Callable[[str], str]]], ...] = tuple(
    (re.compile(rx), msg, parts) for rx, msg, parts in (
        (r"internal call of the home router", _l("internal call of the home router"), {}),
        (r"no rule matched: default (?P<action>allow|block|screen)", _l("no rule matched: default %(action)s"),
         {"action": lambda a: label("decision", a)}),
        (r"no rule matched", _l("no rule matched"), {}),
        (r"(?P<what>class:\w+|number \+\d+|prefix \+\d+\*) on the (?P<list>allow|block|screen) list "
         rf"\((?P<label>.*)\), during (?P<window>{_WINDOW})",
         _l("%(what)s on the %(list)s (%(label)s), during %(window)s"),
         {"what": _what, "list": lambda w: label("list", w), "label": entry_label, "window": window_text}),
        (rf"(?P<what>class:\w+|number \+\d+|prefix \+\d+\*) on the (?P<list>allow|block|screen) list, during "
         rf"(?P<window>{_WINDOW})", _l("%(what)s on the %(list)s, during %(window)s"),
         {"what": _what, "list": lambda w: label("list", w), "window": window_text}),
        (r"(?P<what>class:\w+|number \+\d+|prefix \+\d+\*) on the (?P<list>allow|block|screen) list "
         r"\((?P<label>.*)\)", _l("%(what)s on the %(list)s (%(label)s)"),
         {"what": _what, "list": lambda w: label("list", w), "label": entry_label}),
        (r"(?P<what>class:\w+|number \+\d+|prefix \+\d+\*) on the (?P<list>allow|block|screen) list",
         _l("%(what)s on the %(list)s"), {"what": _what, "list": lambda w: label("list", w)}),
        (r"withheld, but the asserted number is blocked: (?P<reason>.+)",
         _l("withheld, but the asserted number is blocked: %(reason)s"), {"reason": lambda r: core_text(r)}),
        (r"phonebook name marked as spam: (?P<name>.+)", _l("phonebook name marked as spam: %(name)s"), {}),
        (r"known contact in the phonebook: (?P<name>.+)", _l("known contact in the phonebook: %(name)s"), {}),
        (r"refused with (?P<code>\d+): more than (?P<n>\d+) calls at once",
         _l("refused with %(code)s: more than %(n)s calls at once"), {}),
        (r"refused with (?P<code>\d+): (?P<why>.+)", _l("refused with %(code)s: %(why)s"), {}),
        (r"cannot screen: (?P<why>.+?); left ringing", _l("cannot screen: %(why)s; left ringing"), {}),
        (r"internal error: (?P<error>.+)", _l("internal error: %(error)s"), {}),
        (r"nobody answered within (?P<s>[\d.]+) s: ended with 480",
         _l("nobody answered within %(s)s s: ended with 480"), {}),
        (r"too many calls screened at once: left ringing \((?P<outcome>[a-z ]+)\)",
         _l("too many calls screened at once: left ringing (%(outcome)s)"), {"outcome": _outcome_words}),
        (r"too many calls screened at once: left ringing", _l("too many calls screened at once: left ringing"),
         {}),
        (re.escape(SILENT_MESSAGE), _l("silent message"), {}),
        # ring-through (screener.service)
        (r"the house did not answer within (?P<s>[\d.]+) s", _l("the house did not answer within %(s)s s"), {}),
        (r"the house was busy \((?P<code>\d*)\)", _l("the house was busy (%(code)s)"), {}),
        (r"the house declined \((?P<code>\d*)\)", _l("the house declined (%(code)s)"), {}),
        (r"the house could not be rung \((?P<code>\d*)\)", _l("the house could not be rung (%(code)s)"), {}),
        (r"the house could not be rung: no free media port", _l("the house could not be rung: no free media port"),
         {}),
        (r"the caller hung up while the house rang", _l("the caller hung up while the house rang"), {}),
        (r"the caller hung up while the household was deciding",
         _l("the caller hung up while the household was deciding"), {}),
        (r"the household sent it to voicemail", _l("the household sent it to voicemail"), {}),
        (r"the household answered but did not choose", _l("the household answered but did not choose"), {}),
        (r"withheld number: nothing to put on the block list",
         _l("withheld number: nothing to put on the block list"), {}),
        (r"too many calls put through at once: voicemail", _l("too many calls put through at once: voicemail"), {}),
        (r"too many calls screened at once: put through unscreened",
         _l("too many calls screened at once: put through unscreened"), {}),
        (r"the caller hung up", _l("the caller hung up"), {}),
        (r"the household hung up", _l("the household hung up"), {}),
        (r"ended after the longest talk time", _l("ended after the longest talk time"), {}),
        (r"ended by a stop", _l("ended by a stop"), {}),
        # import report lines and the pattern and time-window errors (screener.csvio, screener.rules)
        (r"no number in this row", _l("no number in this row"), {}),
        (r"unreadable CSV: (?P<error>.+)", _l("unreadable CSV: %(error)s"), {}),
        (r"a prefix must be digits followed by \*, got (?P<text>.+)",
         _l("a prefix must be digits followed by *, got %(text)s"), {}),
        (r"not a phone number, prefix \(digits then \*\) or class \((?P<classes>[a-z_, ]+)\): (?P<text>.+)",
         _l("not a phone number, prefix (digits then *) or class (%(classes)s): %(text)s"), {}),
        (r"days must look like mon-fri or sat,sun, got (?P<text>.+)",
         _l("days must look like mon-fri or sat,sun, got %(text)s"), {}),
        (r"time must be HH:MM \(24-hour\), got (?P<text>.+)", _l("time must be HH:MM (24-hour), got %(text)s"),
         {}),
        (r"a time window needs both from and to", _l("a time window needs both from and to"), {}),
    )
)


def _one(text: str) -> tuple[str, str]:
    """The translation of the longest known text at the start of `text`, and what follows it."""
    for rx, msg, parts in CORE_TEXTS:
        m = rx.match(text)
        if m is None:
            continue
        rest = text[m.end():]
        if rest and not rest.startswith("; "):
            continue
        values = {k: parts.get(k, _AS_IS)(v) for k, v in m.groupdict().items()}
        return (str(msg) % values if values else str(msg)), rest
    head, sep, rest = text.partition("; ")
    return head, sep and rest and "; " + rest


def core_text(text: str | None) -> str:
    """A text the core wrote in English (a call's reason: parts joined by "; "), translated part by part;
    what it does not know stays as it is."""
    if not text:
        return ""
    memo: dict[str, str] = g.setdefault("core_texts", {})
    if text not in memo:
        out: list[str] = []
        rest = text
        while rest:
            done, rest = _one(rest)
            out.append(done)
            rest = rest.removeprefix("; ")
        memo[text] = "; ".join(out)
    return memo[text]


# Werkzeug's own descriptions are English: the error page shows these instead (an app's abort(description=)
# is translated where it is raised).
HTTP_ERRORS: dict[int, tuple[LazyString, LazyString]] = {
    400: (_l("Bad request"), _l("The browser sent a request this page cannot use.")),
    401: (_l("Not logged in"), _l("Log in to see this page.")),
    403: (_l("Forbidden"), _l("You are not allowed to do this.")),
    404: (_l("Not found"), _l("There is no such page. The link may be old, or the entry was deleted.")),
    405: (_l("Not allowed"), _l("This page cannot be used this way.")),
    413: (_l("Too large"), _l("The file is too large.")),
    500: (_l("Server error"), _l("Something went wrong on the server. The log of screener web says what.")),
}


def http_error(e: HTTPException) -> tuple[int, str, str]:
    """(code, title, message) for an error page, in the user's language."""
    code = e.code or 500
    title, default = HTTP_ERRORS.get(code, HTTP_ERRORS[500])
    own = e.description and e.description != type(e).description
    return code, str(title), str(e.description) if own else str(default)


def silent_message(reason: str | None) -> bool:
    """Whether the service wrote that the caller left only silence (audio.is_silent)."""
    return bool(reason) and SILENT_MESSAGE in reason.split("; ")  # type: ignore[union-attr]


def init_app(app: Flask) -> None:
    for f in (label, silent_message, source_text, entry_label, rule_text, core_text, window_text, pattern_text):
        app.add_template_global(f)
