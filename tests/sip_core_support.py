"""Helpers for the sans-I/O core's tests: a SipCore on made-up addresses and hand-built datagrams (no tests here)."""

from __future__ import annotations

import random

from screener.config import SipConfig
from screener.sip.core import SipCore
from screener.sip.message import Message, parse
from screener.sip.registration import Contact
from screener.sip.transactions import Timing

PROVIDER = ("192.0.2.10", 5060)
US = ("192.0.2.1", 5062)
STRANGER = ("198.51.100.7", 5060)


def make_core(*, seed: int = 1, register: bool = False, timing: Timing | None = None, **kw: object) -> SipCore:
    cfg = SipConfig(server=PROVIDER[0], port=PROVIDER[1], username="screener", password="secret",
                    local_address=US[0], sip_port=US[1], keepalive_interval=0, register_expires=300)
    core = SipCore(cfg, Contact(US[0], US[1], "screener"), timing=timing or Timing(), rng=random.Random(seed),
                   register=register, **kw)  # type: ignore[arg-type]
    core.add_provider_ips({PROVIDER[0]})
    return core


def sdp(port: int = 40000, payloads: str = "8 0 101") -> str:
    return ("v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {payloads}\r\na=rtpmap:101 telephone-event/8000\r\n")


def invite(call_id: str = "c1", *, branch: str | None = None, body: str | None = None, extra: str = "") -> bytes:
    body = sdp() if body is None else body
    return (f"INVITE sip:screener@{US[0]}:{US[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {PROVIDER[0]}:{PROVIDER[1]};branch={branch or 'z9hG4bK' + call_id}\r\n"
            "Max-Forwards: 70\r\n"
            f'From: "Mario" <sip:0212345678@provider.example>;tag=f{call_id}\r\n'
            "To: <sip:screener@provider.example>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:caller@{PROVIDER[0]}:{PROVIDER[1]}>\r\n{extra}"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


def cancel(call_id: str = "c1") -> bytes:
    inv = parse(invite(call_id))
    return (f"CANCEL {inv.uri} SIP/2.0\r\nVia: {inv.top_via}\r\nMax-Forwards: 70\r\nFrom: {inv.get('from')}\r\n"
            f"To: {inv.get('to')}\r\nCall-ID: {call_id}\r\nCSeq: 1 CANCEL\r\n"
            'Reason: SIP;cause=200;text="Call completed elsewhere"\r\nContent-Length: 0\r\n\r\n').encode()


def in_dialog(method: str, call_id: str, to: str, cseq: int, branch: str, body: str = "", extra: str = "") -> bytes:
    inv = parse(invite(call_id))
    return (f"{method} sip:screener@{US[0]}:{US[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {PROVIDER[0]}:{PROVIDER[1]};branch={branch}\r\nMax-Forwards: 70\r\n"
            f"From: {inv.get('from')}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode("utf-8", "surrogateescape")


def ack(call_id: str, final: Message) -> bytes:
    """The caller's ACK of our final response (in the INVITE's transaction for a non-2xx)."""
    branch = f"z9hG4bK{call_id}" if final.status >= 300 else f"z9hG4bKack{call_id}"
    return in_dialog("ACK", call_id, final.get("to") or "", 1, branch)


def reply(req: Message, code: int, reason: str, *extra: str) -> bytes:
    """The peer's response to `req`; bytes of `req` that are not UTF-8 (the parser keeps them as surrogates) go
    back as they came."""
    lines = [f"SIP/2.0 {code} {reason}"] + [f"Via: {v}" for v in req.get_all("via")]
    to = req.get("to") or ""
    if code >= 200 and "tag=" not in to:
        to += ";tag=reg1"
    lines += [f"From: {req.get('from')}", f"To: {to}", f"Call-ID: {req.call_id}", f"CSeq: {req.get('cseq')}"]
    return ("\r\n".join(lines + list(extra)) + "\r\nContent-Length: 0\r\n\r\n").encode("utf-8", "surrogateescape")


def sent(core: SipCore) -> list[tuple[Message, tuple[str, int]]]:
    return [(parse(d), a) for d, a in core.datagrams_to_send()]


def run_until_idle(core: SipCore, now: float, limit: float = 3600.0) -> float:
    """Fire every timer (ignoring what is sent) until none is left or `limit` s passed; the time reached."""
    end = now + limit
    while (when := core.next_timer()) is not None and when <= end:
        now = max(now, when)
        core.handle_timer(now)
        core.datagrams_to_send()
    return now
