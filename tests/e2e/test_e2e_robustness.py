"""Traffic screener must not act on: INVITEs from outside the provider, and the RFC 4475 torture messages."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from peers import HOST, CallSpec, Kamailio, Screener, Sipp, send_udp, sip_invite

pytestmark = pytest.mark.e2e

TORTURE = Path(__file__).resolve().parents[1] / "data" / "rfc4475"
BLOCKED = "+390212345678"


def test_invite_from_a_non_provider_address_gets_no_reply_and_no_row(screener: Screener,
                                                                     kamailio: Kamailio) -> None:
    call_id = f"stranger-{os.urandom(4).hex()}"
    replies = send_udp(sip_invite(call_id, "+390611111111", ("127.0.0.2", 25999), (HOST, screener.sip_port)),
                       (HOST, screener.sip_port), source=("127.0.0.2", 25999), wait=1.0)
    assert replies == [], replies[0][:300]
    # nor a reply sent to the registrar instead of the source (pyVoIP's habit, PYVOIP.md)
    assert not [ln for ln in kamailio.log_lines("STRAY") if call_id in ln]
    assert [r for r in screener.calls() if r.get("e164") == "+390611111111"] == []
    assert screener.alive()


def _torture_messages() -> list[Path]:
    files = sorted(TORTURE.glob("*.dat"))
    assert len(files) == 49, f"expected the 49 RFC 4475 messages in {TORTURE}, found {len(files)}"
    return files


def test_torture_messages_leave_screener_alive_and_answering(screener: Screener, call: Callable[..., Sipp]) -> None:
    """Every RFC 4475 message from the provider's address, then a valid call: screener must handle it.

    The documentation addresses 192.0.2.x become 127.0.0.x (same length, so every Content-Length stays as the
    RFC wrote it): whatever screener does with the SDP or Via, nothing leaves loopback.
    """
    screener.cli("list", "add", "block", BLOCKED)
    for path in _torture_messages():
        data = path.read_bytes().replace(b"192.0.2.", b"127.0.0.")
        send_udp(data, (HOST, screener.sip_port), source=(HOST, 0))
        time.sleep(0.02)
        assert screener.alive(), f"screener died after {path.name}:\n{screener.log_tail()}"
    time.sleep(0.5)
    assert screener.alive(), screener.log_tail()
    sipp = call(CallSpec(number=BLOCKED, expect=603), timeout=10)
    assert sipp.proc.popen.returncode == 0, sipp.report()
    rows = screener.wait_call(lambda r: r.get("e164") == BLOCKED)
    assert rows[0]["outcome"] == "blocked", rows[0]
    rc, text = screener.status()
    assert rc == 0, text
