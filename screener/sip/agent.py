"""The SIP agent's public names, kept for the modules and tests that import them from here (see shell.py)."""

from screener.sip.core import MAX_DIALOGS, UNTRUSTED_LOG_INTERVAL, UNTRUSTED_SOURCES_MAX
from screener.sip.dialogs import IncomingCall
from screener.sip.registration import REBIND_MIN_INTERVAL, backoff_delay, format_host
from screener.sip.shell import (
    PARKED_WORKERS,
    Call,
    CallControl,
    CallHandler,
    Leg,
    RegStatus,
    SipAgent,
    StatusHandler,
    UntrustedSummary,
)
from screener.sip.transactions import PROBE_INTERVAL, REFRESH_MAX, Timing

__all__ = ["MAX_DIALOGS", "PARKED_WORKERS", "PROBE_INTERVAL", "REBIND_MIN_INTERVAL", "REFRESH_MAX",
           "UNTRUSTED_LOG_INTERVAL", "UNTRUSTED_SOURCES_MAX", "Call", "CallControl", "CallHandler", "IncomingCall",
           "Leg", "RegStatus", "SipAgent", "StatusHandler", "Timing", "UntrustedSummary", "backoff_delay",
           "format_host"]
