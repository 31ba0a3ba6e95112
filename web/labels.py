"""Human, translated names for the codes the store keeps (outcomes, decisions, lists, number types)."""

from __future__ import annotations

from flask import Flask, g
from flask_babel import lazy_gettext as _l

LABELS = {
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
    "state": {"registered": _l("registered"), "registering": _l("registering"), "failed": _l("failed"),
              "stopped": _l("stopped"), "unregistered": _l("not registered")},
}


def label(kind: str, value: object) -> str:
    """The translated name of `value`, or the value itself when it has none (memoised per request)."""
    memo: dict[tuple[str, object], str] = g.setdefault("labels", {})
    key = (kind, value)
    if key not in memo:
        text = LABELS.get(kind, {}).get(value)  # type: ignore[call-overload]
        memo[key] = str(text) if text is not None else ("" if value is None else str(value))
    return memo[key]


def init_app(app: Flask) -> None:
    app.add_template_global(label)
