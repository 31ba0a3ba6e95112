"""PyPhone: a small scriptable SIP phone for the end-to-end tests (stdlib only, no pytest import).

sipp can neither check the audio it receives nor press a key in reaction to it; the ring-through tests need a
household phone (and a caller) that can. A PyPhone registers at kamailio with digest auth, answers, declines
or ignores incoming calls per a `Plan`, places calls through kamailio, and per call sends 20 ms RTP packets
(audio, silence, RFC 2833 digits) while capturing everything it receives with perf_counter arrival times.

Threads: one SIP receive thread, one scheduler (timed answers, retransmissions), one media thread per call.
All are daemons and joined by `close()`. Errors raised in them are kept in `PyPhone.errors`.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
import re
import select
import socket
import struct
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from peers import (
    _REASONS,
    ALAW,
    CODECS,
    HOST,
    PASSWORD,
    ULAW,
    PeerError,
    RtpCapture,
    RtpPacket,
    _headers,
    best_tone_window,
    encode_g711,
    tone,
)

T = TypeVar("T")
REASONS = {100: "Trying", 180: "Ringing", 200: "OK", 404: "Not Found", 481: "Call/Transaction Does Not Exist",
           482: "Loop Detected", 487: "Request Terminated", 488: "Not Acceptable Here", **_REASONS}
CODEC_NAMES = {pt: name for name, pt in CODECS.items()}
EVENTS = "0123456789*#ABCD"
FRAME = 160  # samples per 20 ms packet at 8 kHz
T1, T2 = 0.5, 4.0  # RFC 3261 retransmission timers
RETRANSMITS = 7
SILENCE = {pt: encode_g711([0] * FRAME, pt) for pt in CODEC_NAMES}


def _tag() -> str:
    return os.urandom(4).hex()


def _branch() -> str:
    return "z9hG4bK" + os.urandom(6).hex()


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value (Via, Record-Route), ignoring commas inside <> and quotes."""
    out, depth, quoted, cur = [], 0, False, ""
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        elif ch == "," and not quoted and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def uri_of(value: str) -> str:
    """The URI of a name-addr or addr-spec header value (Contact, Record-Route, From)."""
    m = re.search(r"<([^>]*)>", value)
    return m.group(1) if m else value.split(";", 1)[0].strip()


def address_of(uri: str) -> tuple[str, int]:
    """(host, port) a SIP URI points at (port 5060 when absent)."""
    m = re.match(r"sips?:(?:[^@]*@)?(\[[^\]]+\]|[^:;>?]+)(?::(\d+))?", uri_of(uri))
    if not m:
        raise ValueError(f"not a SIP URI: {uri!r}")
    return m.group(1), int(m.group(2) or 5060)


def display_name_of(value: str) -> str | None:
    """The display name of a name-addr (quoted or not), None when there is none."""
    m = re.match(r'\s*"((?:[^"\\]|\\.)*)"\s*<', value)
    if m:
        return re.sub(r"\\(.)", r"\1", m.group(1))
    m = re.match(r"\s*([^<\"]*?)\s*<", value)
    return m.group(1) if m and m.group(1) else None


def tag_of(value: str) -> str | None:
    m = re.search(r";\s*tag=([^;>\s]+)", value.rsplit(">", 1)[-1] if ">" in value else value)
    return m.group(1) if m else None


def digest_authorization(challenge: str, method: str, uri: str, user: str, password: str,
                         cnonce: str | None = None) -> str:
    """The Authorization value answering a WWW-/Proxy-Authenticate Digest challenge (MD5, qop auth or none)."""
    params = {k.lower(): a or b for k, a, b in re.findall(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))', challenge)}
    realm, nonce = params.get("realm", ""), params.get("nonce", "")

    def md5(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()  # SIP digest: MD5 by definition, not a choice

    ha1, ha2 = md5(f"{user}:{realm}:{password}"), md5(f"{method}:{uri}")
    out = f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", algorithm=MD5'
    if "auth" in [q.strip() for q in params.get("qop", "").split(",")]:
        cnonce, nc = cnonce or os.urandom(8).hex(), "00000001"
        response = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        out += f', response="{response}", qop=auth, nc={nc}, cnonce="{cnonce}"'
    else:
        response = md5(f"{ha1}:{nonce}:{ha2}")
        out += f', response="{response}"'
    if "opaque" in params:
        out += f', opaque="{params["opaque"]}"'
    return out


# ------------------------------------------------------------------------------------------------ messages


@dataclass
class Message:
    """A SIP message as received: perf_counter arrival time, first line, headers (lower-case names), body."""

    t: float
    first_line: str
    headers: dict[str, list[str]]
    body: str
    source: tuple[str, int]

    def header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive; compact forms are expanded), or None."""
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def call_id(self) -> str:
        return self.header("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        num, _, method = (self.header("cseq") or "0 ?").partition(" ")
        return int(num), method.strip().upper()

    @property
    def vias(self) -> list[str]:
        return [v for value in self.headers.get("via", []) for v in split_list(value)]

    @property
    def branch(self) -> str:
        m = re.search(r";\s*branch=([^;,\s]+)", self.vias[0] if self.vias else "")
        return m.group(1) if m else ""

    @property
    def from_header(self) -> str:
        return self.header("from") or ""

    @property
    def display_name(self) -> str | None:
        """The From header's display name."""
        return display_name_of(self.from_header)

    @property
    def from_user(self) -> str | None:
        """The user part of the From URI (the caller's number as presented)."""
        m = re.match(r"sips?:([^@;>]+)@", uri_of(self.from_header))
        return m.group(1) if m else None

    @property
    def record_routes(self) -> list[str]:
        return [r for value in self.headers.get("record-route", []) for r in split_list(value)]


@dataclass
class Request(Message):
    method: str = ""
    uri: str = ""


@dataclass
class Response(Message):
    code: int = 0
    reason: str = ""


def parse_message(data: bytes, source: tuple[str, int]) -> Request | Response | None:
    """A datagram as a Request or Response; None for keep-alives and junk."""
    text = data.decode("utf-8", errors="replace")
    if not text.strip():
        return None
    first, headers = _headers(text)
    body = text.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in text else ""
    t = time.perf_counter()
    parts = first.split(" ", 2)
    if first.startswith("SIP/2.0 ") and len(parts) >= 2 and parts[1].isdigit():
        return Response(t, first, headers, body, source, code=int(parts[1]), reason=parts[2] if len(parts) > 2 else "")
    if len(parts) == 3 and parts[2].startswith("SIP/2.0"):
        return Request(t, first, headers, body, source, method=parts[0].upper(), uri=parts[1])
    return None


def build_sdp(host: str, port: int, pts: Sequence[int], te_pt: int | None) -> str:
    fmts = " ".join(str(p) for p in [*pts, *([te_pt] if te_pt is not None else [])])
    lines = ["v=0", f"o=pyphone {int(time.time())} 1 IN IP4 {host}", "s=-", f"c=IN IP4 {host}", "t=0 0",
             f"m=audio {port} RTP/AVP {fmts}"]
    lines += [f"a=rtpmap:{p} {CODEC_NAMES[p]}/8000" for p in pts]
    if te_pt is not None:
        lines += [f"a=rtpmap:{te_pt} telephone-event/8000", f"a=fmtp:{te_pt} 0-15"]
    lines += ["a=ptime:20", "a=sendrecv"]
    return "\r\n".join(lines) + "\r\n"


@dataclass
class Sdp:
    """The parts of an SDP body a phone needs: media address, payload types in order, telephone-event pt."""

    address: tuple[str, int] | None
    pts: list[int]
    te_pt: int | None

    @classmethod
    def parse(cls, body: str) -> Sdp:
        host, port, pts, te = None, None, [], None
        for line in body.splitlines():
            if line.startswith("c=IN IP4 "):
                host = line.split()[2]
            elif line.startswith("m=audio "):
                f = line.split()
                port, pts = int(f[1]), [int(p) for p in f[3:] if p.isdigit()]
            elif m := re.match(r"a=rtpmap:(\d+)\s+telephone-event/8000", line, re.I):
                te = int(m.group(1))
        return cls((host, port) if host and port else None, pts, te)

    @property
    def audio_pts(self) -> list[int]:
        return [p for p in self.pts if p in CODEC_NAMES]


# --------------------------------------------------------------------------------------------------- media


class RtpStream(RtpCapture):
    """One call's media socket: sends a 20 ms packet on every tick (queued audio, a digit, or silence) and
    records every packet received (RtpPacket.t is perf_counter here), decoding RFC 2833 digits as they come.
    """

    def __init__(self, port: int, host: str, pt: int, te_pt: int | None, comfort: bool,
                 on_digit: Callable[[float, str], None]) -> None:
        super().__init__(port, host)
        self.sock.setblocking(False)
        self._thread.name = f"pyphone-rtp-{port}"
        self.pt = pt
        self.te_pt = te_pt
        self.comfort = comfort
        self.remote: tuple[str, int] | None = None
        self.ssrc = int.from_bytes(os.urandom(4), "big")
        self.sent: list[RtpPacket] = []  # what left, with perf_counter times (for delay measurements)
        self.digits: list[tuple[float, str]] = []  # (perf_counter of the event's first packet, digit)
        self._on_digit = on_digit
        self._seq = int.from_bytes(os.urandom(2), "big")
        self._ts = int.from_bytes(os.urandom(4), "big")
        self._frames: deque[list[int]] = deque()  # encoded when sent: the codec may change on the 200 or a re-INVITE
        self._pending_digits: deque[tuple[str, int]] = deque()
        self._event: list[int] | None = None  # [code, start ts, ticks, ticks sent]
        self._first_audio = True
        self._seen_events: set[int] = set()
        self._lock = threading.Lock()

    def set_remote(self, address: tuple[str, int] | None) -> None:
        self.remote = address

    def play(self, samples: Sequence[int]) -> None:
        """Queue 8 kHz 16-bit samples, sent in the negotiated codec as 20 ms packets (the last one padded)."""
        frames = [list(samples[i:i + FRAME]) for i in range(0, len(samples), FRAME)]
        if frames and len(frames[-1]) < FRAME:
            frames[-1] += [0] * (FRAME - len(frames[-1]))
        with self._lock:
            self._frames.extend(frames)

    def send_digit(self, digit: str, ms: int = 100) -> None:
        """Queue an RFC 2833 event: progress packets every 20 ms for `ms`, then three end packets."""
        if digit.upper() not in EVENTS:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        with self._lock:
            self._pending_digits.append((digit.upper(), max(1, ms // 20)))

    def idle(self) -> bool:
        """True when every queued frame and digit has been sent."""
        with self._lock:
            return not self._frames and not self._pending_digits and self._event is None

    def halt(self) -> None:
        """Stop sending and receiving without waiting (safe under the phone's lock); `stop()` joins."""
        self._stop.set()

    def _run(self) -> None:
        next_tick: float | None = None
        try:
            while not self._stop.is_set():
                now = time.perf_counter()
                if next_tick is None and self.remote is not None:
                    next_tick = now
                wait = 0.05 if next_tick is None else min(0.05, max(0.0, next_tick - now))
                if select.select([self.sock], [], [], wait)[0]:
                    self._drain()
                now = time.perf_counter()
                if next_tick is not None and now >= next_tick:
                    self._tick()
                    next_tick += FRAME / 8000
                    if now - next_tick > 0.1:  # fell far behind (a stalled machine): no burst to catch up
                        next_tick = now
        finally:
            self.sock.close()

    def _drain(self) -> None:
        while True:
            try:
                data, src = self.sock.recvfrom(2048)
            except (BlockingIOError, OSError):
                return
            t = time.perf_counter()
            if len(data) < 12 or data[0] >> 6 != 2:
                continue
            off = 12 + 4 * (data[0] & 0x0F)
            if data[0] & 0x10 and len(data) >= off + 4:
                off += 4 + 4 * struct.unpack("!H", data[off + 2:off + 4])[0]
            seq, ts, ssrc = struct.unpack("!HII", data[2:12])
            pkt = RtpPacket(t, data[1] & 0x7F, seq, ts, ssrc, bool(data[1] & 0x80), data[off:], src)
            self.packets.append(pkt)
            if pkt.pt == (self.te_pt or 101) and len(pkt.payload) >= 4 and pkt.ts not in self._seen_events:
                self._seen_events.add(pkt.ts)
                if pkt.payload[0] < len(EVENTS):
                    self.digits.append((t, EVENTS[pkt.payload[0]]))
                    self._on_digit(t, EVENTS[pkt.payload[0]])

    def _tick(self) -> None:
        with self._lock:
            ts, marker, pt, payload = self._ts, False, self.pt, None
            if self._event is None and self._pending_digits:
                digit, ticks = self._pending_digits.popleft()
                self._event = [EVENTS.index(digit), ts, ticks, 0]
            if self._event is not None:
                code, start, ticks, sent = self._event
                end = sent + 1 >= ticks
                duration = min(sent + 1, ticks) * FRAME
                pt, ts, marker = self.te_pt or 101, start, sent == 0
                payload = struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration)
                self._event[3] += 1
                if self._event[3] >= ticks + 2:  # the end packet goes out three times (RFC 4733 2.5.1.4)
                    self._event = None
            elif self._frames:
                payload = encode_g711(self._frames.popleft(), pt)
                marker, self._first_audio = self._first_audio, False
            elif self.comfort:
                payload = SILENCE[pt]
            self._ts = (self._ts + FRAME) & 0xFFFFFFFF
            if payload is None or self.remote is None:
                return
            self._seq = (self._seq + 1) & 0xFFFF
            packet = struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), self._seq, ts, self.ssrc) + payload
            seq, remote = self._seq, self.remote
        try:
            self.sock.sendto(packet, remote)
        except OSError:
            return
        self.sent.append(RtpPacket(time.perf_counter(), pt, seq, ts, self.ssrc, marker, payload, remote))

    def audio(self, since: float | None = None) -> list[int]:
        """Decoded 16-bit samples of every PCMU/PCMA packet received (after `since`), in arrival order."""
        return [(ULAW if p.pt == 0 else ALAW)[b] for p in list(self.packets)
                if p.pt in (0, 8) and (since is None or p.t >= since) for b in p.payload]


# --------------------------------------------------------------------------------------------------- calls


@dataclass(frozen=True)
class Plan:
    """What a PyPhone does with an incoming INVITE: 100 and 180 at once (ring=False: no 180), then after
    `after` seconds answer with `codec` (from the offer; None: the offer's first PCMU/PCMA; 488 when the
    offer lacks it), or decline with `decline` (486, 603, ...). after=None: ring until CANCEL or a command.
    """

    after: float | None = 0.0
    codec: str | None = None
    decline: int | None = None
    ring: bool = True


@dataclass(frozen=True)
class Event:
    """Something that happened: kind is request, response, state, digit or incoming; data the method, the
    status code, the new state, the digit."""

    t: float
    kind: str
    call_id: str
    data: Any


FINAL_STATES = ("ended", "cancelled", "declined", "failed")


@dataclass(eq=False)
class Call:
    """One call of a PyPhone, incoming ("in") or outgoing ("out").

    States: calling (out, INVITE sent), ringing (in: INVITE received; out: a 18x came), answered (in: 200
    sent, no ACK yet), confirmed, cancelling, ending (BYE sent), and the final ones: ended, cancelled,
    declined (in: we refused), failed (out: a final >= 300, or in: 488). `times` maps each state to the
    perf_counter when it was entered.
    """

    phone: PyPhone
    call_id: str
    direction: str
    local_party: str  # our From (out) or To (in) header value, with our tag
    remote_party: str  # theirs; gets the tag from their 18x/200 on outgoing calls
    request_uri: str = ""
    remote_target: str = ""
    route_set: list[str] = field(default_factory=list)
    state: str = ""
    times: dict[str, float] = field(default_factory=dict)
    invite: Request | None = None  # the INVITE received (incoming calls)
    offer_pts: list[int] = field(default_factory=list)
    codec: str | None = None  # negotiated: "PCMU" or "PCMA"
    final_code: int | None = None
    ended_by: str | None = None  # "local" or "remote"
    requests: list[Request] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    media: RtpStream | None = None
    cseq: int = 0
    invite_cseq: int = 1
    invite_branch: str = ""
    remote_sdp: Sdp | None = None
    _last_invite_response: bytes = b""
    _ack: bytes = b""
    _auth_sent: bool = False
    _extra: tuple[str, ...] = ()

    @property
    def local_tag(self) -> str:
        return tag_of(self.local_party) or ""

    @property
    def remote_tag(self) -> str | None:
        return tag_of(self.remote_party)

    def codes(self) -> list[int]:
        """Status codes received for this call's INVITE(s), in arrival order."""
        return [r.code for r in self.responses if r.cseq[1] == "INVITE"]

    # commands (thread-safe; they return at once, use wait() to follow what happens)

    def wait(self, *states: str, timeout: float = 5.0) -> str:
        """Wait until the call is in one of `states`; return the state. TimeoutError names the state it is in."""
        try:
            return self.phone.wait_for(lambda: self.state if self.state in states else None, timeout,
                                       what=f"call {self.call_id} to be {'/'.join(states)}")
        except TimeoutError as e:
            raise TimeoutError(f"{e} (it is {self.state}; codes {self.codes()})") from None

    def __repr__(self) -> str:
        return (f"<Call {self.direction} {self.call_id} {self.state} codec={self.codec} final={self.final_code} "
                f"at {self.phone.name}>")

    def answer(self, codec: str | None = None) -> bool:
        """Answer a ringing incoming call (200 with SDP); False when it is not ringing any more."""
        return self.phone._answer(self, codec)

    def decline(self, code: int = 486) -> bool:
        """Refuse a ringing incoming call with `code`; False when it is not ringing any more."""
        return self.phone._decline(self, code)

    def cancel(self) -> bool:
        """CANCEL an outgoing call that has no final response yet; False otherwise."""
        return self.phone._cancel(self)

    def bye(self) -> bool:
        """Hang up an established call; False when it is not established."""
        return self.phone._bye(self)

    def play(self, samples: Sequence[int]) -> None:
        """Queue 8 kHz 16-bit samples to send (20 ms packets in the negotiated codec)."""
        self._stream().play(samples)

    def play_tone(self, freq: float, seconds: float, amplitude: int = 8000) -> None:
        self.play(tone(freq, seconds, amplitude))

    def send_digit(self, digit: str, ms: int = 100) -> None:
        """Send one RFC 2833 digit (progress packets for `ms`, three end packets), after any queued audio."""
        self._stream().send_digit(digit, ms)

    def wait_sent(self, timeout: float = 10.0) -> None:
        """Wait until every queued frame and digit has left."""
        self.phone.wait_for(lambda: self._stream().idle(), timeout, what=f"call {self.call_id} to send its audio")

    # what was received

    def packets(self, since: float | None = None) -> list[RtpPacket]:
        return [p for p in (self.media.packets if self.media else []) if since is None or p.t >= since]

    def audio(self, since: float | None = None) -> list[int]:
        """Decoded samples received (PCMU and PCMA packets, each by its own payload type)."""
        return self.media.audio(since) if self.media else []

    def tone_ratio(self, freq: float, since: float | None = None, window_s: float = 0.5) -> float:
        """The best share of energy at freq over windows of window_s seconds of what was received (0-1)."""
        return best_tone_window(self.audio(since), freq, window_s)

    def has_tone(self, freq: float, since: float | None = None, window_s: float = 0.5,
                 threshold: float = 0.9) -> bool:
        """True when some window_s seconds of the received audio are a clean tone at freq."""
        return self.tone_ratio(freq, since, window_s) >= threshold

    def sent(self) -> list[RtpPacket]:
        """The RTP packets this side sent (RtpPacket.source is where they went), with perf_counter times."""
        return list(self.media.sent) if self.media else []

    def gaps_ms(self, pt: int | None = None) -> list[float]:
        """Inter-arrival gaps in ms between consecutive received packets (optionally of one payload type)."""
        return self.media.gaps_ms(pt) if self.media else []

    def payload_types(self) -> set[int]:
        return self.media.payload_types() if self.media else set()

    def digits(self) -> str:
        """The RFC 2833 digits received, in order."""
        return "".join(d for _, d in (self.media.digits if self.media else []))

    def _stream(self) -> RtpStream:
        if self.media is None:
            raise PeerError(f"call {self.call_id} has no media (state {self.state})")
        return self.media


# --------------------------------------------------------------------------------------------------- phone


@dataclass
class _ClientTx:
    method: str
    data: bytes
    dest: tuple[str, int]
    on_response: Callable[[Response], None] | None
    responses: list[Response] = field(default_factory=list)
    sent: int = 1

    @property
    def final(self) -> Response | None:
        return next((r for r in self.responses if r.code >= 200), None)


class _Scheduler:
    """One thread running callables at given delays (timed answers, retransmissions)."""

    def __init__(self, name: str, errors: list[str]) -> None:
        self._heap: list[tuple[float, int, Callable[[], object]]] = []
        self._count = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._errors = errors
        self._thread = threading.Thread(target=self._run, name=f"pyphone-{name}-timer", daemon=True)
        self._thread.start()

    def after(self, delay: float, fn: Callable[[], object]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._count), fn))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._closed:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:
                self._errors.append(traceback.format_exc())

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(2)


class PyPhone:
    """A scriptable SIP phone on HOST:port, registering as `user` at `proxy` (kamailio), which is also its
    outbound proxy. Incoming calls follow `plan` (a Plan, or a function of the INVITE returning one); media
    ports are taken from `media_ports` (default port+2, port+4, ... port+18).
    """

    def __init__(self, port: int, user: str, proxy: tuple[str, int], *, password: str = PASSWORD,
                 plan: Plan | Callable[[Request], Plan] = Plan(), display: str | None = None, host: str = HOST,
                 media_ports: Sequence[int] | None = None, comfort: bool = True, name: str | None = None) -> None:
        self.port = port
        self.user = user
        self.proxy = proxy
        self.password = password
        self.plan = plan
        self.display = display
        self.host = host
        self.media_ports = list(media_ports) if media_ports is not None else list(range(port + 2, port + 20, 2))
        self.comfort = comfort
        self.name = name or user
        self.contact = f"<sip:{user}@{host}:{port}>"
        self.calls: list[Call] = []
        self.requests: list[Request] = []
        self.events: list[Event] = []
        self.errors: list[str] = []
        self.registered = False
        self._by_id: dict[str, Call] = {}
        self._txs: dict[tuple[str, str], _ClientTx] = {}
        self._claimed = 0
        self._reg_call_id = f"reg-{os.urandom(6).hex()}"
        self._reg_cseq = 0
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._closed = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            raise PeerError(f"PyPhone {self.name}: cannot bind UDP {host}:{port}: {e}") from None
        self.sock.settimeout(0.05)
        self._scheduler = _Scheduler(self.name, self.errors)
        self._rx = threading.Thread(target=self._receive, name=f"pyphone-{self.name}-sip", daemon=True)
        self._rx.start()

    def __enter__(self) -> PyPhone:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------- public API

    def register(self, expires: int = 300, timeout: float = 3.0) -> Response:
        """REGISTER the phone's contact for sip:user@proxy-host (answering the digest challenge); the 200.

        Raises PeerError on any other final response, TimeoutError when none comes.
        """
        resp = self._register(expires, timeout)
        if resp.code != 200:
            raise PeerError(f"PyPhone {self.name} could not register: {resp.first_line}")
        self.registered = expires > 0
        return resp

    def unregister(self, timeout: float = 2.0) -> Response:
        """REGISTER with Expires: 0; the final response."""
        resp = self._register(0, timeout)
        self.registered = False
        return resp

    def call(self, target: str, *, codecs: Sequence[str] = ("PCMU", "PCMA"), headers: Sequence[str] = (),
             from_user: str | None = None, display: str | None = None, dtmf: bool = True) -> Call:
        """INVITE `target` (a SIP URI, or a user at the proxy) through the proxy, offering `codecs` (and
        telephone-event 101 unless dtmf=False) with extra `headers` ("Name: value"); returns the Call at once.
        A 401/407 is answered once with the phone's credentials.
        """
        uri = target if target.startswith(("sip:", "sips:")) else f"sip:{target}@{self.proxy[0]}:{self.proxy[1]}"
        pts = [CODECS[c] for c in codecs]
        name = display if display is not None else self.display
        shown = f'"{name}" ' if name else ""
        with self._lock:
            call = Call(self, f"pyphone-{os.urandom(8).hex()}", "out",
                        f"{shown}<sip:{from_user or self.user}@{self.proxy[0]}>;tag={_tag()}", f"<{uri}>",
                        request_uri=uri, offer_pts=pts, cseq=0, _extra=tuple(headers))
            call.media = self._open_media(call, pts[0], 101 if dtmf else None)
            self.calls.append(call)
            self._by_id[call.call_id] = call
            self._set_state(call, "calling")
            self._send_invite(call)
        return call

    def incoming(self, timeout: float = 5.0) -> Call:
        """The next incoming call not yet returned by this method (waiting up to timeout seconds for it)."""
        def next_call() -> Call | None:
            calls = [c for c in self.calls if c.direction == "in"]
            return calls[self._claimed] if len(calls) > self._claimed else None

        call = self.wait_for(next_call, timeout, what=f"an incoming call at {self.name}")
        self._claimed += 1
        return call

    def wait_for(self, predicate: Callable[[], T | None], timeout: float, what: str = "") -> T:
        """Wait until predicate() is truthy (re-checked on every SIP event and every 20 ms); return its value."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()  # outside the lock: an audio check may take a while, SIP must go on meanwhile
            if result:
                return result
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: timed out after {timeout:g} s waiting for {what or predicate}")
            with self._changed:
                self._changed.wait(min(left, 0.02))

    def wait_event(self, kind: str, data: Any = None, call_id: str | None = None, timeout: float = 5.0) -> Event:
        """The first event of `kind` (with `data`, for `call_id`, when given), waiting for it."""
        def found() -> Event | None:
            return next((e for e in self.events if e.kind == kind and (data is None or e.data == data)
                         and (call_id is None or e.call_id == call_id)), None)

        return self.wait_for(found, timeout, what=f"event {kind} {data if data is not None else ''}")

    def received(self, method: str) -> list[Request]:
        """The requests of `method` received so far (retransmissions included)."""
        with self._lock:
            return [r for r in self.requests if r.method == method.upper()]

    def close(self) -> None:
        """Hang up or cancel what is still up, unregister, stop every thread and close every socket."""
        if self._closed:
            return
        try:
            with self._lock:
                live = list(self.calls)
            for call in live:
                if call.state in ("answered", "confirmed"):
                    call.bye()
                elif call.state in ("calling", "ringing") and call.direction == "out":
                    call.cancel()
                elif call.state == "ringing":
                    call.decline(480)
            if self.registered:
                try:
                    self.unregister(timeout=1.0)
                except (TimeoutError, PeerError):
                    pass
            try:
                self.wait_for(lambda: all(c.state in FINAL_STATES for c in self.calls), 1.0)
            except TimeoutError:
                pass
        finally:
            self._closed = True
            self._stop.set()
            self._rx.join(2)
            self._scheduler.close()
            for call in self.calls:
                if call.media is not None:
                    call.media.stop()
            self.sock.close()

    # ------------------------------------------------------------------------------------- internals

    def _emit(self, kind: str, call_id: str, data: Any) -> None:
        with self._changed:
            self.events.append(Event(time.perf_counter(), kind, call_id, data))
            self._changed.notify_all()

    def _set_state(self, call: Call, state: str) -> None:
        call.state = state
        call.times[state] = time.perf_counter()
        if state in FINAL_STATES and call.media is not None:
            call.media.halt()
        self._emit("state", call.call_id, state)

    def _send(self, data: bytes, dest: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, dest)
        except OSError:
            if not self._stop.is_set():
                raise

    def _open_media(self, call: Call, pt: int, te_pt: int | None) -> RtpStream:
        used = {c.media.port for c in self.calls if c.media is not None and c.media._thread.is_alive()}
        for port in self.media_ports:
            if port in used:
                continue
            try:
                stream = RtpStream(port, self.host, pt, te_pt, self.comfort,
                                   lambda t, digit: self._emit("digit", call.call_id, digit))
            except OSError:
                continue
            stream.start()
            return stream
        raise PeerError(f"PyPhone {self.name}: no free media port in {self.media_ports}")

    def _via(self, branch: str) -> str:
        return f"Via: SIP/2.0/UDP {self.host}:{self.port};branch={branch};rport"

    def _send_tx(self, branch: str, method: str, data: bytes, dest: tuple[str, int],
                 on_response: Callable[[Response], None] | None = None) -> _ClientTx:
        tx = _ClientTx(method, data, dest, on_response)
        with self._lock:
            self._txs[(branch, method)] = tx
        self._send(data, dest)
        self._scheduler.after(T1, lambda: self._retransmit(tx, T1))
        return tx

    def _retransmit(self, tx: _ClientTx, interval: float) -> None:
        # UDP on loopback rarely loses a datagram, but a busy peer may drop one: retransmit like RFC 3261.
        with self._lock:
            if self._stop.is_set() or tx.final or (tx.method == "INVITE" and tx.responses) or tx.sent > RETRANSMITS:
                return
            tx.sent += 1
            self._send(tx.data, tx.dest)
        nxt = interval * 2 if tx.method == "INVITE" else min(interval * 2, T2)
        self._scheduler.after(nxt, lambda: self._retransmit(tx, nxt))

    def _register(self, expires: int, timeout: float) -> Response:
        uri = f"sip:{self.proxy[0]}:{self.proxy[1]}"
        auth = ""
        for _ in range(2):
            with self._lock:
                self._reg_cseq += 1
                cseq = self._reg_cseq
            branch = _branch()
            msg = (f"REGISTER {uri} SIP/2.0\r\n{self._via(branch)}\r\n"
                   f"From: <sip:{self.user}@{self.proxy[0]}>;tag={self._reg_call_id[-8:]}\r\n"
                   f"To: <sip:{self.user}@{self.proxy[0]}>\r\nCall-ID: {self._reg_call_id}\r\n"
                   f"CSeq: {cseq} REGISTER\r\nContact: {self.contact}\r\nExpires: {expires}\r\n{auth}"
                   f"Max-Forwards: 70\r\nUser-Agent: pyphone\r\nContent-Length: 0\r\n\r\n")
            tx = self._send_tx(branch, "REGISTER", msg.encode(), self.proxy)
            resp = self._wait_final(tx, timeout)
            if resp.code not in (401, 407) or auth:
                return resp
            auth = self._authorization(resp, "REGISTER", uri)
        return resp

    def _wait_final(self, tx: _ClientTx, timeout: float) -> Response:
        return self.wait_for(lambda: tx.final, timeout, what=f"the {tx.method} response ({self.name})")

    def _authorization(self, challenge: Response, method: str, uri: str) -> str:
        """The (Proxy-)Authorization header line answering a 401/407."""
        www = challenge.code == 401
        value = challenge.header("www-authenticate" if www else "proxy-authenticate") or ""
        name = "Authorization" if www else "Proxy-Authorization"
        return f"{name}: {digest_authorization(value, method, uri, self.user, self.password)}\r\n"

    def _send_invite(self, call: Call, auth: str = "") -> None:
        call.cseq += 1
        call.invite_cseq = call.cseq
        call.invite_branch = _branch()
        assert call.media is not None
        sdp = build_sdp(self.host, call.media.port, call.offer_pts, call.media.te_pt)
        msg = (f"INVITE {call.request_uri} SIP/2.0\r\n{self._via(call.invite_branch)}\r\nMax-Forwards: 70\r\n"
               f"From: {call.local_party}\r\nTo: {call.remote_party}\r\nCall-ID: {call.call_id}\r\n"
               f"CSeq: {call.cseq} INVITE\r\nContact: {self.contact}\r\nUser-Agent: pyphone\r\n"
               + "".join(h + "\r\n" for h in call._extra) + auth
               + f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}")
        self._send_tx(call.invite_branch, "INVITE", msg.encode(), self.proxy,
                      lambda r: self._on_invite_response(call, r))

    def _dialog_request(self, call: Call, method: str, cseq: int | None = None, branch: str | None = None) -> bytes:
        if cseq is None:
            call.cseq += 1
            cseq = call.cseq
        return (f"{method} {call.remote_target} SIP/2.0\r\n{self._via(branch or _branch())}\r\nMax-Forwards: 70\r\n"
                + "".join(f"Route: {r}\r\n" for r in call.route_set)
                + f"From: {call.local_party}\r\nTo: {call.remote_party}\r\nCall-ID: {call.call_id}\r\n"
                f"CSeq: {cseq} {method}\r\nContact: {self.contact}\r\nContent-Length: 0\r\n\r\n").encode()

    def _dialog_dest(self, call: Call) -> tuple[str, int]:
        return address_of(call.route_set[0] if call.route_set else call.remote_target)

    def _on_invite_response(self, call: Call, resp: Response) -> None:
        call.responses.append(resp)
        if resp.code < 200:
            if resp.code > 100 and call.state == "calling":
                self._set_state(call, "ringing")
            return
        if resp.code < 300:
            if call.state in ("calling", "ringing", "cancelling"):
                cancelled = call.state == "cancelling"
                call.remote_party = resp.header("to") or call.remote_party
                call.remote_target = uri_of(resp.header("contact") or call.request_uri)
                call.route_set = list(reversed(resp.record_routes))
                call.final_code = resp.code
                sdp = call.remote_sdp = Sdp.parse(resp.body)
                agreed = [p for p in sdp.audio_pts if p in call.offer_pts]
                if call.media is not None and agreed:
                    call.codec = CODEC_NAMES[agreed[0]]
                    with call.media._lock:
                        call.media.pt = agreed[0]
                        call.media.te_pt = sdp.te_pt if call.media.te_pt is not None else None
                    call.media.set_remote(sdp.address)
                call._ack = self._dialog_request(call, "ACK", cseq=call.invite_cseq)
                self._send(call._ack, self._dialog_dest(call))
                self._set_state(call, "confirmed")
                if cancelled:  # the 200 crossed our CANCEL: the call is up, so it must be hung up
                    self._bye(call)
            elif call._ack:
                self._send(call._ack, self._dialog_dest(call))
            return
        # A failure's ACK belongs to the INVITE transaction: same branch and request URI (RFC 3261 17.1.1.3).
        self._send((f"ACK {call.request_uri} SIP/2.0\r\n{self._via(resp.branch)}\r\nMax-Forwards: 70\r\n"
                    f"From: {call.local_party}\r\nTo: {resp.header('to')}\r\nCall-ID: {call.call_id}\r\n"
                    f"CSeq: {resp.cseq[0]} ACK\r\nContent-Length: 0\r\n\r\n").encode(), self.proxy)
        if resp.branch != call.invite_branch or call.state in FINAL_STATES:
            return
        if resp.code in (401, 407) and not call._auth_sent and call.state in ("calling", "ringing"):
            call._auth_sent = True
            self._send_invite(call, self._authorization(resp, "INVITE", call.request_uri))
            return
        call.final_code = resp.code
        self._set_state(call, "cancelled" if call.state == "cancelling" and resp.code == 487 else "failed")

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, src = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            try:
                msg = parse_message(data, src)
                with self._lock:
                    if isinstance(msg, Response):
                        self._on_response(msg)
                    elif isinstance(msg, Request):
                        self._on_request(msg)
            except Exception:
                self.errors.append(traceback.format_exc())

    def _on_response(self, resp: Response) -> None:
        tx = self._txs.get((resp.branch, resp.cseq[1]))
        self._emit("response", resp.call_id, resp.code)
        if tx is None:
            call = self._by_id.get(resp.call_id)
            if call is not None and resp.cseq[1] == "INVITE":  # a 2xx retransmission after the transaction
                self._on_invite_response(call, resp)
            return
        tx.responses.append(resp)
        if tx.on_response is not None:
            tx.on_response(resp)
        call = self._by_id.get(resp.call_id)
        if call is not None and resp.cseq[1] == "BYE" and resp.code >= 200 and call.state == "ending":
            call.responses.append(resp)
            self._set_state(call, "ended")

    def _reply(self, req: Request, code: int, call: Call | None = None, *, body: str = "") -> bytes:
        to = req.header("to") or ""
        if code > 100 and tag_of(to) is None:
            to += f";tag={call.local_tag if call else _tag()}"
        lines = [f"SIP/2.0 {code} {REASONS.get(code, 'Reply')}", *(f"Via: {v}" for v in req.headers.get("via", []))]
        invite = req.method == "INVITE" and 100 < code < 300
        if invite:
            lines += [f"Record-Route: {r}" for r in req.headers.get("record-route", [])]
        lines += [f"From: {req.from_header}", f"To: {to}", f"Call-ID: {req.call_id}", f"CSeq: {req.header('cseq')}"]
        if invite:
            lines.append(f"Contact: {self.contact}")
        if body:
            lines.append("Content-Type: application/sdp")
        data = ("\r\n".join(lines) + f"\r\nUser-Agent: pyphone\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()
        self._send(data, req.source)
        if call is not None and req.method == "INVITE":
            call._last_invite_response = data
        return data

    def _on_request(self, req: Request) -> None:
        self.requests.append(req)
        call = self._by_id.get(req.call_id)
        if call is not None:
            call.requests.append(req)
        self._emit("request", req.call_id, req.method)
        in_dialog = tag_of(req.header("to") or "") is not None
        if req.method == "INVITE" and not in_dialog:
            self._on_invite(req, call)
        elif req.method == "CANCEL":
            self._reply(req, 200 if call else 481, call)
            if call is not None and call.state == "ringing" and call.invite is not None:
                self._reply(call.invite, 487, call)
                call.final_code = 487
                self._set_state(call, "cancelled")
        elif req.method == "ACK":
            if call is not None and call.state == "answered" and in_dialog:
                self._set_state(call, "confirmed")
        elif call is None and in_dialog:
            self._reply(req, 481)
        elif req.method == "BYE":
            self._reply(req, 200, call)
            if call is not None and call.state in ("answered", "confirmed", "ending"):
                call.ended_by = call.ended_by or "remote"
                self._set_state(call, "ended")
        elif req.method == "INVITE" and call is not None:
            self._on_reinvite(req, call)
        else:
            self._reply(req, 200, call)

    def _on_reinvite(self, req: Request, call: Call) -> None:
        """Same socket; the remote address, codec and telephone-event type follow the new offer."""
        sdp = Sdp.parse(req.body)
        media = call.media
        if media is None or not sdp.audio_pts:
            self._reply(req, 488 if req.body.strip() else 200, call)
            return
        pt = media.pt if media.pt in sdp.audio_pts else sdp.audio_pts[0]
        with media._lock:
            media.pt, media.te_pt = pt, sdp.te_pt
        call.codec, call.remote_sdp = CODEC_NAMES[pt], sdp
        media.set_remote(sdp.address)
        self._reply(req, 200, call, body=build_sdp(self.host, media.port, [pt], sdp.te_pt))

    def _on_invite(self, req: Request, call: Call | None) -> None:
        if call is not None:
            if call.invite is not None and req.branch == call.invite.branch and call._last_invite_response:
                self._send(call._last_invite_response, req.source)
            elif call.invite is not None and req.branch != call.invite.branch:
                self._reply(req, 482)
            return
        sdp = Sdp.parse(req.body)
        call = Call(self, req.call_id, "in", f"{req.header('to')};tag={_tag()}", req.from_header,
                    request_uri=req.uri, remote_target=uri_of(req.header("contact") or req.from_header),
                    route_set=req.record_routes, invite=req, offer_pts=sdp.audio_pts, remote_sdp=sdp,
                    requests=[req])
        self.calls.append(call)
        self._by_id[call.call_id] = call
        self._emit("incoming", call.call_id, req.from_header)
        self._reply(req, 100, call)
        self._set_state(call, "ringing")
        plan = self.plan(req) if callable(self.plan) else self.plan
        if plan.ring:
            self._reply(req, 180, call)
        if plan.after is not None:
            if plan.decline:
                self._scheduler.after(plan.after, lambda: self._decline(call, plan.decline or 486))
            else:
                self._scheduler.after(plan.after, lambda: self._answer(call, plan.codec))

    def _answer(self, call: Call, codec: str | None) -> bool:
        with self._lock:
            if call.state != "ringing" or call.invite is None or self._stop.is_set():
                return False
            sdp = call.remote_sdp or Sdp(None, [], None)
            choices = [CODECS[codec]] if codec else sdp.audio_pts
            pts = [p for p in choices if p in sdp.audio_pts]
            if not pts:
                self._reply(call.invite, 488, call)
                call.final_code = 488
                self._set_state(call, "failed")
                return False
            call.codec = CODEC_NAMES[pts[0]]
            call.media = self._open_media(call, pts[0], sdp.te_pt)
            call.media.set_remote(sdp.address)
            self._reply(call.invite, 200, call, body=build_sdp(self.host, call.media.port, pts[:1], sdp.te_pt))
            call.final_code = 200
            self._set_state(call, "answered")
            self._scheduler.after(T1, lambda: self._retransmit_200(call, T1, 1))
            return True

    def _retransmit_200(self, call: Call, interval: float, count: int) -> None:
        with self._lock:
            if call.state != "answered" or self._stop.is_set() or count > RETRANSMITS or call.invite is None:
                return
            self._send(call._last_invite_response, call.invite.source)
        nxt = min(interval * 2, T2)
        self._scheduler.after(nxt, lambda: self._retransmit_200(call, nxt, count + 1))

    def _decline(self, call: Call, code: int) -> bool:
        with self._lock:
            if call.state != "ringing" or call.invite is None or self._stop.is_set():
                return False
            self._reply(call.invite, code, call)
            call.final_code = code
            self._set_state(call, "declined")
            return True

    def _cancel(self, call: Call) -> bool:
        with self._lock:
            if call.direction != "out" or call.state not in ("calling", "ringing"):
                return False
            msg = (f"CANCEL {call.request_uri} SIP/2.0\r\n{self._via(call.invite_branch)}\r\nMax-Forwards: 70\r\n"
                   f"From: {call.local_party}\r\nTo: <{call.request_uri}>\r\nCall-ID: {call.call_id}\r\n"
                   f"CSeq: {call.invite_cseq} CANCEL\r\nContent-Length: 0\r\n\r\n")
            self._set_state(call, "cancelling")
            self._send_tx(call.invite_branch, "CANCEL", msg.encode(), self.proxy)
            return True

    def _bye(self, call: Call) -> bool:
        with self._lock:
            if call.state not in ("answered", "confirmed") or not call.remote_target:
                return False
            call.ended_by = "local"
            self._set_state(call, "ending")
            if call.media is not None:
                call.media.halt()
            branch = _branch()
            self._send_tx(branch, "BYE", self._dialog_request(call, "BYE", branch=branch), self._dialog_dest(call))
            return True
