"""Helpers for the SIP tests: a fake provider socket on loopback and hand-built datagrams (no tests here)."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from screener.config import SipConfig
from screener.sip import Call, SipAgent, Timing
from screener.sip.message import Message, parse

FAST = Timing(t1=0.05, t2=0.4, t4=0.1, register_timeout=0.6, options_timeout=0.4, backoff_min=0.1, backoff_max=0.8,
              stop_timeout=0.5)


class Peer:
    """A UDP socket that plays the provider (or a stranger): sends raw datagrams, receives parsed ones."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.addr: tuple[str, int] = self.sock.getsockname()
        self.host, self.port = self.addr

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes | str, to: tuple[str, int]) -> None:
        if isinstance(data, str):
            data = data.replace("\r\n", "\n").replace("\n", "\r\n").encode()
        self.sock.sendto(data, to)

    def recv_raw(self, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]] | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recvfrom(65535)
        except TimeoutError:
            return None

    def recv(self, timeout: float = 2.0) -> Message | None:
        got = self.recv_raw(timeout)
        return parse(got[0]) if got else None

    def expect(self, pred: Callable[[Message], bool], timeout: float = 2.0) -> Message:
        """The first message matching `pred` (others are skipped); AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        seen = []
        while (left := deadline - time.monotonic()) > 0:
            m = self.recv(left)
            if m is None:
                break
            if pred(m):
                return m
            seen.append(m.method or m.status)
        raise AssertionError(f"expected message not received; saw {seen}")

    def ack(self, resp: Message, to: tuple[str, int]) -> None:
        """ACK a final non-2xx response to an INVITE, as the caller's transaction would."""
        self.send(
            f"ACK sip:screener@{to[0]}:{to[1]} SIP/2.0\r\nVia: {resp.top_via}\r\nMax-Forwards: 70\r\n"
            f"From: {resp.get('from')}\r\nTo: {resp.get('to')}\r\nCall-ID: {resp.call_id}\r\n"
            f"CSeq: {resp.cseq[0]} ACK\r\nContent-Length: 0\r\n\r\n", to)

    def silent(self, timeout: float = 0.3) -> bool:
        return self.recv_raw(timeout) is None


def status(code: int) -> Callable[[Message], bool]:
    return lambda m: m.status == code


def method(name: str) -> Callable[[Message], bool]:
    return lambda m: m.method == name


def sdp(port: int, payloads: str = "8 0 101", host: str = "127.0.0.1", extra: str = "") -> str:
    maps = {"0": "a=rtpmap:0 PCMU/8000", "8": "a=rtpmap:8 PCMA/8000", "101": "a=rtpmap:101 telephone-event/8000"}
    lines = ["v=0", f"o=- 1 1 IN IP4 {host}", "s=-", f"c=IN IP4 {host}", "t=0 0",
             f"m=audio {port} RTP/AVP {payloads}"]
    lines += [maps[p] for p in payloads.split() if p in maps]
    if extra:
        lines.append(extra)
    return "\r\n".join(lines) + "\r\n"


def invite(agent_port: int, peer: Peer, call_id: str | None = None, *, from_: str | None = None,
           body: str | None = None, extra: str = "", branch: str | None = None, cseq: int = 1) -> str:
    call_id = call_id or secrets.token_hex(8)
    from_ = from_ or '"Mario Rossi" <sip:0212345678@provider.example>;tag=ft' + call_id[:6]
    body = sdp(40000) if body is None else body
    head = (
        f"INVITE sip:screener@127.0.0.1:{agent_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {peer.host}:{peer.port};branch={branch or 'z9hG4bK' + call_id}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: {from_}\r\n"
        f"To: <sip:screener@provider.example>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} INVITE\r\n"
        f"Contact: <sip:caller@{peer.host}:{peer.port}>\r\n"
        f"{extra}"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body.encode())}\r\n\r\n{body}"
    )
    return head


def in_dialog(method_: str, inv: Message, resp: Message, peer: Peer, cseq: int, *, extra: str = "",
              branch: str | None = None, body: str = "") -> str:
    """A request of the caller's side within the dialog of `inv` (ACK, BYE, INFO...)."""
    return (
        f"{method_} sip:screener@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {peer.host}:{peer.port};branch={branch or 'z9hG4bK' + secrets.token_hex(6)}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: {inv.get('from')}\r\n"
        f"To: {resp.get('to')}\r\n"
        f"Call-ID: {inv.call_id}\r\n"
        f"CSeq: {cseq} {method_}\r\n{extra}"
        f"Content-Length: {len(body.encode())}\r\n\r\n{body}"
    )


def cancel(inv_text: str) -> str:
    inv = parse(inv_text.encode())
    return (
        f"CANCEL {inv.uri} SIP/2.0\r\n"
        f"Via: {inv.top_via}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: {inv.get('from')}\r\n"
        f"To: {inv.get('to')}\r\n"
        f"Call-ID: {inv.call_id}\r\n"
        f"CSeq: {inv.cseq[0]} CANCEL\r\n"
        'Reason: SIP;cause=200;text="Call completed elsewhere"\r\n'
        f"Content-Length: 0\r\n\r\n"
    )


def options(peer: Peer, call_id: str = "opt1") -> str:
    return (
        "OPTIONS sip:screener@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {peer.host}:{peer.port};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:ping@provider.example>;tag=1\r\nTo: <sip:screener@provider.example>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )


def sip_config(provider: Peer, **kw: object) -> SipConfig:
    base: dict[str, object] = dict(server=provider.host, port=provider.port, username="screener", password="secret",
                                   local_address="127.0.0.1", sip_port=0, rtp_port_low=42000,
                                   rtp_port_high=42199, keepalive_interval=0)
    base.update(kw)
    return SipConfig(**base)  # type: ignore[arg-type]


class Recorder:
    """A call handler that records the calls and runs an optional action on each."""

    def __init__(self, action: Callable[[Call], None] | None = None) -> None:
        self.calls: list[Call] = []
        self.action = action
        self.arrived = threading.Event()
        self.times: list[float] = []

    def __call__(self, call: Call) -> None:
        self.times.append(time.perf_counter())
        self.calls.append(call)
        self.arrived.set()
        if self.action:
            self.action(call)
        else:
            call.wait_ended(30.0)  # leave the call to the test: a handler that returns ends it with 480


@contextmanager
def running_agent(provider: Peer, handler: Callable[[Call], None], *, register: bool = False,
                  on_status: Callable[..., None] | None = None, timing: Timing = FAST,
                  **cfg: object) -> Iterator[SipAgent]:
    agent = SipAgent(sip_config(provider, **cfg), handler, on_status, timing=timing, register=register)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


def agent_addr(agent: SipAgent) -> tuple[str, int]:
    return ("127.0.0.1", agent.local_port)
