"""The SIP agent's I/O shell: the one socket, the threads, the clock, DNS and the RTP sockets around `SipCore`.

One thread ("sip-loop") owns the socket and feeds the core datagrams and timer events; one ("sip-aux") makes
the status callbacks and the DNS look-ups the core asks for; each call's handler runs on a parked worker
thread and acts through `Call` methods (and the `Leg`s of the outgoing calls it places), which send commands to
the core through `CallControl` / `LegControl`. Replaces
pyVoIP's SIPClient / VoIPPhone / VoIPCall (B1-B5, B9, B12, B14, B15, B17, B18).
"""

from __future__ import annotations

import audioop
import ipaddress
import itertools
import logging
import random
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import dns.exception
import dns.resolver

from screener.config import SipConfig
from screener.sip.core import (
    CallEnded,
    CallReleased,
    Credentials,
    Digit,
    Event,
    LegAnswered,
    LegDigit,
    LegEnded,
    LegEvent,
    LegMedia,
    LegProgress,
    LegReleased,
    MediaStop,
    MediaUpdate,
    NewCall,
    Rejected,
    SipCore,
)
from screener.sip.dialogs import IncomingCall
from screener.sip.media import FRAME_SECONDS, PortPool, RtpSession
from screener.sip.message import ParseError, parse_uri
from screener.sip.registration import (
    Contact,
    ResolveProvider,
    StatusChange,
    backoff_delay,
    split_hostport,
)
from screener.sip.resolve import ResolveError, resolve, trusted_addresses
from screener.sip.transactions import REFRESH_MAX, Timing

log = logging.getLogger("screener.sip")

DNS_LIFETIME = 3.0  # s per RFC 3263 query (the aux thread waits; a dead DNS server must not stall registration)
PARKED_WORKERS = 2  # call-handler threads kept waiting for the next call (see _Workers)

__all__ = ["PARKED_WORKERS", "REFRESH_MAX", "Call", "CallControl", "Credentials", "IncomingCall", "Leg", "LegControl",
           "RegStatus", "SipAgent", "Timing", "UntrustedSummary", "backoff_delay"]


@dataclass(frozen=True)
class UntrustedSummary:
    """SIP dropped because it came from outside the provider, since the agent started."""

    count: int  # datagrams dropped
    sources: int  # distinct addresses among the last UNTRUSTED_SOURCES_MAX
    last_source: str = ""  # "ip:port" of the latest
    last_at: float | None = None  # time.time() of the latest


@dataclass(frozen=True)
class RegStatus:
    state: str  # "registering", "registered", "failed", "unregistered"
    last_error: str | None
    since: float  # time.time() of the change
    expires: int | None = None  # granted expiry while registered


class Endable(Protocol):
    """What Call.bridge needs of the other side: a `Leg`, or a fake in tests."""

    @property
    def ended(self) -> bool: ...
    def hangup(self) -> None: ...


class LegControl(Protocol):
    """What a `Leg` may ask of the agent, by the leg's key."""

    def end_leg(self, key: str) -> None: ...


class CallControl(Protocol):
    """What a `Call` may ask of the agent, by the call's key."""

    def ring(self, key: str) -> bool: ...
    def decline(self, key: str, code: int) -> bool: ...
    def answer(self, key: str) -> bool: ...
    def hangup(self, key: str) -> None: ...
    def dial(self, target: str, *, from_user: str, display: str, credentials: tuple[str, str] | None = None,
             parent: Call | None = None) -> Leg: ...


class _Workers:
    """The threads that run call handlers: a parked one takes the next call, a new one starts only if none is.

    A thread started per INVITE made the socket thread wait in Thread.start() until the new thread ran, and the
    two then traded the GIL through the first part of the handler: 0.7 ms of 1.6 ms from INVITE to 603
    in-process. Handing a call to a parked thread costs a notify. Up to PARKED_WORKERS stay parked (started
    with the agent, so the first call of the day is as fast as the hundredth); the extra threads of a burst
    end with their call.
    """

    def __init__(self, name: str, parked: int) -> None:
        self._name = name
        self._parked_max = parked
        self._cv = threading.Condition(threading.Lock())
        self._jobs: deque[tuple[Callable[..., None], tuple[object, ...]]] = deque()
        self._idle = 0
        self._closed = False
        self._numbers = itertools.count(1)

    def start(self) -> None:
        for _ in range(self._parked_max):
            self._spawn()

    def submit(self, fn: Callable[..., None], *args: object) -> None:
        with self._cv:
            self._jobs.append((fn, args))
            if self._idle >= len(self._jobs):
                self._cv.notify()
                return
        self._spawn()

    def close(self) -> None:
        """Parked threads end; busy ones end with their call."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _spawn(self) -> None:
        threading.Thread(target=self._work, name=f"{self._name}-{next(self._numbers)}", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._cv:
                if not self._jobs:
                    if self._closed or self._idle >= self._parked_max:
                        return
                    self._idle += 1
                    self._cv.wait_for(lambda: self._jobs or self._closed)
                    self._idle -= 1
                    if not self._jobs:
                        return
                fn, args = self._jobs.popleft()
            fn(*args)



class _Party:
    """What an incoming call and an outgoing leg share: the media, the keys pressed, the end. Every method is safe
    from any thread; none raises once the party is over."""

    def __init__(self, cv: threading.Condition | None = None) -> None:
        # a call: declined, cancelled, bye, hangup, no_ack, stopped, error, timeout;
        # a leg: failed, cancelled, hangup (ours), bye (theirs), stopped
        self.end_reason: str | None = None
        self.codec: str | None = None
        self.media: RtpSession | None = None
        self._ended_media: RtpSession | None = None
        self._cv = cv or threading.Condition()  # a leg shares its call's: one wait sees either side end
        self._digits: deque[str] = deque(maxlen=32)

    @property
    def ended(self) -> bool:
        """Over for the handler: ended, or hung up / cancelled with only the dialog's ACK and BYE to come."""
        return self.end_reason is not None

    def play(self, pcm: bytes, *, until_digit: bool = False) -> bool:
        """Send 8 kHz 16-bit mono PCM and wait until it is out; False when the call ended (or a digit came)."""
        media = self.media
        if media is None or self.ended:
            return False
        mark = media.play(pcm)
        deadline = time.monotonic() + len(pcm) / 16000 + 2.0
        while not self.ended and time.monotonic() < deadline:
            if until_digit and self._digits:
                media.clear_playback()
                return False
            if media.wait_played(mark, 0.05):
                return True
        return False

    def play_background(self, pcm: bytes) -> None:
        """Queue 8 kHz 16-bit mono PCM and return at once (the ringback while the house rings)."""
        media = self.media
        if media is not None and not self.ended:
            media.play(pcm)

    def stop_playback(self) -> None:
        """Drop whatever audio is still queued."""
        media = self.media
        if media is not None:
            media.clear_playback()

    def wait_digit(self, timeout: float) -> str | None:
        """The next key pressed (RFC 2833 or SIP INFO), or None after `timeout` or at the end of the call."""
        with self._cv:
            self._cv.wait_for(lambda: self._digits or self.ended, timeout)
            return self._digits.popleft() if self._digits else None

    def record(self, max_seconds: float, silence_seconds: float = 5.0, silence_rms: int = 200) -> bytes:
        """Received audio as 8 kHz 16-bit PCM until the other side hangs up, goes silent, or `max_seconds`."""
        media = self.media
        if media is None:
            return b""
        media.flush_input()
        out = bytearray()
        limit = int(max_seconds * 16000)
        quiet_since = time.monotonic()
        deadline = quiet_since + max_seconds + 1.0
        while len(out) < limit and not self.ended and time.monotonic() < deadline:
            frame = media.read_frame(FRAME_SECONDS * 5)
            now = time.monotonic()
            if frame is not None:
                out += frame
                if audioop.rms(frame, 2) >= silence_rms:
                    quiet_since = now
            if now - quiet_since >= silence_seconds:
                break
        return bytes(out[:limit])

    def wait_ended(self, timeout: float | None = None) -> bool:
        """Wait for the end of the call (and for its media to be released)."""
        with self._cv:
            if not self._cv.wait_for(lambda: self.ended, timeout):
                return False
        if self._ended_media is not None:
            self._ended_media.stop(wait=1.0)
        return True

    # -- fed by the agent --

    def _digit(self, key: str) -> None:
        with self._cv:
            self._digits.append(key)
            self._cv.notify_all()

    def _stop_media(self) -> None:
        media, self.media = self.media, None  # over for the handler: no more audio either way
        if media is not None:
            self._ended_media = media
            media.stop()  # never waits here: the socket thread must not block


class Call(_Party):
    """One incoming call."""

    def __init__(self, control: CallControl, info: IncomingCall, key: str, requires_100rel: bool = False) -> None:
        super().__init__()
        self.info = info
        self.key = key
        self.requires_100rel = requires_100rel  # the caller requires reliable provisional responses (RFC 3262)
        self._control = control
        self.cancel_reason: str | None = None
        self.legs: list[Leg] = []  # the outgoing calls it placed (ended with it at the latest)

    @property
    def call_id(self) -> str:
        return self.info.call_id

    @property
    def answered_elsewhere(self) -> bool:
        """A CANCEL saying another branch took the call (RFC 3326 Reason cause=200)."""
        r = (self.cancel_reason or "").replace(" ", "").lower()
        return "cause=200" in r

    # -- actions --

    def ring(self) -> bool:
        """Send 180 Ringing (reliably, RFC 3262, when the caller requires or supports 100rel); False when over."""
        return self._control.ring(self.key)

    def decline(self, code: int = 603) -> bool:
        """Reject while ringing (603 Decline / 607 Unwanted end every branch of a forking proxy)."""
        return self._control.decline(self.key, code)

    def answer(self) -> bool:
        """Send 200 OK with our SDP and start the media; False when cancelled or ended first (B3)."""
        return self._control.answer(self.key)

    def hangup(self) -> None:
        """End the call: BYE when answered (after its ACK, B5), 480 while still ringing."""
        self._control.hangup(self.key)

    def dial(self, target: str, *, from_user: str, display: str,
             credentials: tuple[str, str] | None = None) -> Leg | None:
        """Place an outgoing call to `target` (a SIP URI) for this caller (ring-through); None when this call is
        over or no RTP port is free. The leg ends with this call's handler at the latest."""
        if self.ended:
            return None
        try:
            leg = self._control.dial(target, from_user=from_user, display=display, credentials=credentials,
                                     parent=self)
        except OSError as e:
            log.warning("screener: cannot place the outgoing call for %s: %s", self.call_id, e)
            return None
        self.legs.append(leg)
        return leg

    def bridge(self, leg: Endable, max_seconds: float) -> str:
        """Relay the media of this call and `leg` (a `Leg` it dialled) both ways until one side ends (the other
        is then ended), `max_seconds` pass, or the agent stops; who ended it: "caller", "household", "timeout",
        "stopped"."""
        party = leg if isinstance(leg, _Party) else None
        a, b = self.media, party.media if party is not None else None
        if a is not None and b is not None and not self.ended and not leg.ended:
            a.relay_to(b)
            b.relay_to(a)
        deadline = time.monotonic() + max_seconds
        with self._cv:
            while not self.ended and not leg.ended and time.monotonic() < deadline:
                # a leg of this call shares its condition: either side's end wakes this at once
                shared = party is not None and party._cv is self._cv
                self._cv.wait(min(deadline - time.monotonic(), 1.0) if shared else 0.05)
        for media in (a, b):
            if media is not None:
                media.relay_to(None)
        if "stopped" in (self.end_reason, party.end_reason if party is not None else None):
            who = "stopped"
        elif self.ended:
            who = "caller"
        elif leg.ended:
            who = "household"
        else:
            who = "timeout"
        if who != "caller":
            self.hangup()
        if who != "household":
            leg.hangup()
        return who

    # -- fed by the agent --

    def _ended(self, reason: str, cancel_reason: str | None) -> None:
        with self._cv:
            self.cancel_reason = cancel_reason
            self.end_reason = reason
            self._cv.notify_all()


BUSY_CODES = frozenset({486, 600})
FAILED_CODES = frozenset({401, 407, 408, 488, 503})  # unreachable, or ours to fix: not the household's choice


class Leg(_Party):
    """One outgoing call (ring-through), placed by `Call.dial` or `SipAgent.dial`."""

    def __init__(self, control: LegControl, key: str, target: str, parent: Call | None = None) -> None:
        super().__init__(parent._cv if parent is not None else None)
        self.key = key
        self.target = target
        self.parent = parent
        self._control = control
        self.ringing = False  # a 180/183 came
        self.answered = False
        self.final_code: int | None = None  # the final response that ended it unanswered (None: no response)

    def wait_answered(self, timeout: float) -> str:
        """Wait for the household: "answered", "busy" (486/600), "declined" (603/607 and other 4xx-6xx, the code
        in `final_code`), "no_answer" (not within `timeout`, or 480: the leg is CANCELled), "failed" (408, 503,
        no response, 3xx, a digest we cannot pass), or "caller_gone" (the call it rings for ended first)."""
        parent = self.parent
        with self._cv:
            self._cv.wait_for(lambda: self.answered or self.ended or (parent is not None and parent.ended),
                              timeout)
        if self.answered:
            return "answered"
        if not self.ended:
            self.cancel()
            return "caller_gone" if parent is not None and parent.ended else "no_answer"
        return self.outcome

    @property
    def outcome(self) -> str:
        """What wait_answered says of a leg that ended unanswered."""
        code = self.final_code
        if self.end_reason in ("cancelled", "hangup"):
            return "caller_gone" if self.parent is not None and self.parent.ended else "no_answer"
        if code is None or self.end_reason == "stopped" or code in FAILED_CODES or code < 400:
            return "failed"
        if code in BUSY_CODES:
            return "busy"
        if code in (480, 487):  # nobody took it (a forking proxy's own timeout)
            return "no_answer"
        return "declined"

    def cancel(self) -> None:
        """Stop ringing the household (CANCEL), or hang up once answered (BYE)."""
        self._control.end_leg(self.key)

    def hangup(self) -> None:
        """End the leg: BYE once answered, CANCEL while it rings."""
        self._control.end_leg(self.key)

    # -- fed by the agent --

    def _progress(self, code: int) -> None:
        with self._cv:
            self.ringing = self.ringing or code > 100
            self._cv.notify_all()

    def _answered(self) -> None:
        with self._cv:
            self.answered = True
            self._cv.notify_all()

    def _ended(self, reason: str, code: int | None) -> None:
        with self._cv:
            self.final_code = code
            self.end_reason = reason
            self._cv.notify_all()


CallHandler = Callable[[Call], None]
StatusHandler = Callable[[RegStatus], None]


class SipAgent:
    """A SIP phone that registers at the provider and hands each incoming call to `on_call` on a worker thread."""

    def __init__(self, cfg: SipConfig, on_call: CallHandler, on_status: StatusHandler | None = None, *,
                 timing: Timing | None = None, register: bool = True,
                 on_reject: Callable[[IncomingCall, int, str], None] | None = None,
                 ring_limit: float | None = None) -> None:
        self.cfg = cfg
        self.on_call = on_call
        self.on_status = on_status
        self.on_reject = on_reject  # told about INVITEs refused before a handler ran, for their rows
        self.ring_limit = ring_limit  # seconds after which a call still ringing is ended with 480
        self.timing = timing or Timing()
        self.contact = Contact("", cfg.sip_port, cfg.username or "screener")
        self.core = SipCore(cfg, self.contact, timing=self.timing, rng=random.SystemRandom(), register=register,
                            ring_limit=ring_limit)
        self.register_enabled = self.core.register_enabled
        self.status = RegStatus("unregistered", None, time.time())
        self._lock = threading.RLock()  # serialises everything that enters the core
        self._calls: dict[str, Call] = {}
        self._legs: dict[str, Leg] = {}
        self._leg_numbers = itertools.count(1)
        self._later: list[Callable[[], None]] = []  # what _flush found to do once the lock is released
        self._stopping = False
        self._closing = threading.Event()  # the threads: stop
        self._registration_over = threading.Event()
        self._threads: list[threading.Thread] = []
        self._aux_q: deque[Callable[[], None]] = deque()
        self._aux_cv = threading.Condition()
        self._workers = _Workers("sip-call", PARKED_WORKERS)
        self._loop_ident: int | None = None
        self._sleep_until = 0.0  # when the socket thread wakes by itself (read and written under _lock)
        self.sock: socket.socket | None = None
        self.pool: PortPool | None = None
        self._family = socket.AF_INET
        self._resolver: dns.resolver.Resolver | None = None

    # -- life cycle --

    def start(self) -> None:
        """Resolve the provider, bind the SIP socket and start the threads. OSError when the port is taken."""
        cfg = self.cfg
        self.core.add_provider_ips(self._provider_addresses())
        family = socket.AF_INET
        if cfg.local_address != "auto":
            bind_host = cfg.local_address
            self.contact.host = cfg.local_address
            if ":" in bind_host:
                family = socket.AF_INET6
        else:
            self.contact.host = self._discover_local_address() or ""
            if ":" in self.contact.host:
                family = socket.AF_INET6
            bind_host = "::" if family == socket.AF_INET6 else "0.0.0.0"
        self._family = family
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((bind_host, cfg.sip_port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.sock = sock
        self.contact.port = sock.getsockname()[1]
        rtp_host = cfg.local_address if cfg.local_address != "auto" else bind_host
        self.pool = PortPool(rtp_host, cfg.rtp_port_low, cfg.rtp_port_high, family)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._spawn(self._loop, "sip-loop")
        self._spawn(self._aux, "sip-aux")
        self._workers.start()
        self._command(lambda now: self.core.start_registration(now))

    def stop(self) -> None:
        """Unregister (best effort), end the calls, close everything; returns within about 2 s."""
        if self._stopping or self.sock is None:
            return
        self._stopping = True
        self._command(lambda now: self.core.stop_registration(now))
        self._registration_over.wait(self.timing.stop_timeout + 0.3)
        self._command(lambda now: self.core.stop_calls(now))
        self._closing.set()
        self._workers.close()
        self._wake()
        with self._aux_cv:
            self._aux_cv.notify_all()
        for t in self._threads:
            t.join(1.0)
        self.sock.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1]) if self.sock else self.cfg.sip_port

    @property
    def contact_host(self) -> str:
        return self.contact.host

    @property
    def tracked_calls(self) -> int:
        """Call records held: ended ones only while their final response waits for its ACK."""
        with self._lock:
            return self.core.tracked_calls

    @property
    def active_calls(self) -> int:
        with self._lock:
            return self.core.active_calls

    @property
    def tombstones(self) -> int:
        """Ended calls still remembered to answer retransmitted INVITEs."""
        with self._lock:
            return self.core.tombstones

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    # -- the provider and who may talk to us --

    def _proxy(self) -> tuple[str, int]:
        """Where requests go: the outbound proxy when set, else the registrar."""
        if self.cfg.outbound_proxy:
            return split_hostport(self.cfg.outbound_proxy, 5060)
        return self.cfg.server, self.cfg.port

    def _dns(self) -> dns.resolver.Resolver | None:
        """The resolver of RFC 3263 look-ups (None when the system has no DNS configuration)."""
        if self._resolver is None:
            try:
                self._resolver = dns.resolver.Resolver()
            except (dns.exception.DNSException, OSError) as e:
                log.warning("screener: no DNS resolver (%s): provider names resolved by the system only", e)
                return None
            self._resolver.lifetime = DNS_LIFETIME
        return self._resolver

    def _provider_addresses(self) -> set[str]:
        """Registrar and outbound proxy resolved every way (NAPTR, SRV, A/AAAA over any transport, and the system's
        resolver for /etc/hosts): the addresses whose requests are answered."""
        ips: set[str] = set()
        hosts = [self.cfg.server] if self.cfg.server else []
        if self.cfg.outbound_proxy:
            hosts.append(split_hostport(self.cfg.outbound_proxy, 5060)[0])
        for host in hosts:
            try:
                for info in socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM):
                    ips.add(str(info[4][0]).split("%")[0])
            except OSError as e:
                log.warning("screener: cannot resolve SIP provider %s: %s", host, e)  # SRV may still name it
            resolver = self._dns()
            if resolver is not None:
                try:
                    ips.update(trusted_addresses(host, resolver=resolver))
                except OSError as e:  # ResolveError: what getaddrinfo found above still counts
                    log.debug("screener: no SIP DNS records for %s: %s", host, e)
        return ips

    def _targets(self, host: str, port: int) -> list[tuple[str, int]]:
        """Where to send the provider's requests, in order (RFC 3263 4: NAPTR, SRV, then A/AAAA; the system's
        resolver as the last resort). The default port lets SRV choose the port. OSError when nothing resolves."""
        resolver = self._dns()
        targets: list[tuple[str, int]] = []
        if resolver is not None:
            try:
                found = resolve(host, None if port == 5060 else port, resolver=resolver)
                targets = [t.addr for t in found]
            except ResolveError as e:
                log.debug("screener: %s", e)
        if not targets:
            targets = [(str(info[4][0]).split("%")[0], port)
                       for info in socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)]
        usable = [t for t in targets if (":" in t[0]) == (self._family == socket.AF_INET6)]
        return list(dict.fromkeys(usable or targets))

    def _discover_local_address(self, dest: tuple[str, int] | None = None) -> str | None:
        """The address this host uses to reach the provider, or `dest` (never 0.0.0.0)."""
        host, port = dest or self._proxy()
        if not host:
            return None
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            s = socket.socket(info[0], socket.SOCK_DGRAM)
            try:
                s.connect(info[4])
                local = str(s.getsockname()[0])
            finally:
                s.close()
        except OSError:
            return None
        if ipaddress.ip_address(local).is_unspecified:
            return None
        return local

    def _resolve(self, req: ResolveProvider) -> None:
        """On the aux thread: the DNS look-ups a REGISTER attempt needs, fed back to the core."""
        ips = self._provider_addresses()
        try:
            targets = self._targets(req.host, req.port)
        except OSError as e:
            error = str(e)
            self._command(lambda now: self.core.resolve_failed(error, ips, now))
            return
        if not targets:
            self._command(lambda now: self.core.resolve_failed("no address", ips, now))
            return
        local = self._discover_local_address(targets[0]) if req.local_needed else None
        # every target is trusted as a source (core.resolved adds them), the first tried, the rest failed over to
        self._command(lambda now: self.core.resolved(targets[0], local, ips, now, tuple(targets[1:])))

    def is_trusted(self, ip: str) -> bool:
        """Only the provider (and configured ranges) may send us requests."""
        return self.core.is_trusted(ip)

    def untrusted_summary(self) -> UntrustedSummary:
        """What was dropped from untrusted addresses so far (safe to call from any thread)."""
        last = self.core.untrusted_last
        if last is None:
            return UntrustedSummary(self.core.untrusted_total, self.core.untrusted_sources)
        at = time.time() - (time.monotonic() - last[1])
        return UntrustedSummary(self.core.untrusted_total, self.core.untrusted_sources, last[0], at)

    def untrusted_counts(self) -> dict[str, int]:
        """Datagrams dropped per untrusted address (the most recently seen UNTRUSTED_SOURCES_MAX)."""
        return self.core.untrusted_counts()

    def request_rebind(self, reason: str) -> None:
        """Register again now (at most once per REBIND_MIN_INTERVAL): the registrar may have lost our binding."""
        self._command(lambda now: self.core.request_rebind(reason, now))

    # -- driving the core --

    def _command(self, fn: Callable[[float], object]) -> object:
        """Run one input of the core under the lock, carry out what it produced, wake the socket thread."""
        with self._lock:
            result = fn(time.monotonic())
            self._flush()
            later, self._later = self._later, []
            when = self.core.next_timer()
            # wake the socket thread only for a timer earlier than the one it sleeps towards
            wake = threading.get_ident() != self._loop_ident and when is not None and when < self._sleep_until
        for job in later:
            self._guarded(job)
        if wake:
            self._wake()
        return result

    def _flush(self) -> None:
        """Send the core's datagrams and act on its events (lock held; slow work goes to _later)."""
        for data, addr in self.core.datagrams_to_send():
            self._send(data, addr)
        for ev in self.core.events():
            self._event(ev)
        if self.core.registration_over and self._stopping:
            self._registration_over.set()

    def _event(self, ev: Event) -> None:
        if isinstance(ev, NewCall):
            call = self._calls[ev.key] = Call(self, ev.info, ev.key, ev.requires_100rel)
            # B2: the handler starts now, not 1 s later
            self._later.append(lambda: self._workers.submit(self._run_handler, call))
            return
        if isinstance(ev, StatusChange):
            self._set_status(ev.state, ev.error, ev.expires)
            return
        if isinstance(ev, ResolveProvider):
            self._to_aux(lambda: self._resolve(ev))
            return
        if isinstance(ev, Rejected):
            if self.on_reject is not None:
                on_reject = self.on_reject
                self._later.append(lambda: on_reject(ev.info, ev.code, ev.why))
            return
        if isinstance(ev, LegEvent):
            self._leg_event(ev)
            return
        found = self._calls.get(ev.key)
        if found is None:
            return
        if isinstance(ev, CallEnded):
            found._ended(ev.reason, ev.cancel_reason)
        elif isinstance(ev, MediaStop):
            found._stop_media()
        elif isinstance(ev, CallReleased):
            del self._calls[ev.key]
        elif isinstance(ev, Digit):
            found._digit(ev.digit)
        elif isinstance(ev, MediaUpdate) and found.media is not None:
            if ev.codec is not None:
                found.codec = ev.codec[0]
                found.media.set_codec(*ev.codec)
            if ev.ptime is not None:
                found.media.set_ptime(ev.ptime)
            found.media.set_remote(ev.remote)  # port 0 (a hold): nothing is sent

    def _leg_event(self, ev: LegEvent) -> None:
        leg = self._legs.get(ev.key)
        if leg is None:
            return
        media = leg.media
        if isinstance(ev, LegProgress):
            leg._progress(ev.code)
        elif isinstance(ev, LegAnswered):
            if media is not None:
                leg.codec = ev.codec[0]
                media.set_codec(*ev.codec)
                media.set_remote(ev.remote)
                self._later.append(lambda: None if leg.ended else media.start())
            leg._answered()
        elif isinstance(ev, LegEnded):
            leg._ended(ev.reason, ev.code)
            leg._stop_media()
        elif isinstance(ev, LegDigit):
            leg._digit(ev.digit)
        elif isinstance(ev, LegMedia) and media is not None:
            leg.codec = ev.codec[0]
            media.set_codec(*ev.codec)
            if ev.ptime is not None:
                media.set_ptime(ev.ptime)
            media.set_remote(ev.remote)
        elif isinstance(ev, LegReleased):
            del self._legs[ev.key]

    # -- outgoing calls (LegControl) --

    def dial(self, target: str, *, from_user: str, display: str, credentials: tuple[str, str] | None = None,
             parent: Call | None = None) -> Leg:
        """Place an outgoing call (INVITE) to the SIP URI `target`, From `"display" <sip:from_user@our domain>`.
        A target that cannot be resolved gives a leg that has failed already; OSError when no RTP port is free."""
        assert self.pool is not None
        leg = Leg(self, f"leg-{next(self._leg_numbers)}", target, parent)
        if self._stopping:
            leg._ended("stopped", None)
            return leg
        try:
            dest = self._dial_destination(target)
        except (OSError, ParseError) as e:
            log.warning("screener: cannot call %s: %s", target, e)
            leg._ended("failed", None)
            return leg
        sock = self.pool.bind()
        media = RtpSession(self.pool, sock, "PCMU", 0, 101, ("0.0.0.0", 0), on_digit=leg._digit,
                           trusted=self.is_trusted)
        media.outPort = 0  # nothing to send to until the answer says where
        leg.media = media

        def place(now: float) -> bool:
            self._legs[leg.key] = leg
            return self.core.place_call(leg.key, target, from_user, display, media.port, now, dest=dest,
                                        credentials=credentials)

        self._command(place)
        return leg

    def _dial_destination(self, target: str) -> tuple[str, int]:
        """Where the INVITE goes: the outbound proxy when set; the registrar for a target in its domain; else the
        target's host (RFC 3263). OSError when nothing resolves, ParseError for a target that is no SIP URI."""
        uri = parse_uri(target)
        if uri.scheme not in ("sip", "sips") or not uri.host:
            raise ParseError(f"not a SIP URI: {target[:60]!r}")
        cfg = self.cfg
        if cfg.outbound_proxy:
            return self._targets(*split_hostport(cfg.outbound_proxy, 5060))[0]
        reg = self.core.registration
        if uri.host.strip("[]") in {cfg.server.lower(), cfg.sip_domain.lower()} and uri.port in (None, cfg.port):
            if reg is not None and reg.dest is not None:
                return reg.dest
            return self._targets(cfg.server, cfg.port)[0]
        return self._targets(uri.host.strip("[]"), uri.port or 5060)[0]

    def end_leg(self, key: str) -> None:
        self._command(lambda now: self.core.cancel_call(key, now))

    # -- commands of the calls (CallControl) --

    def ring(self, key: str) -> bool:
        return bool(self._command(lambda now: self.core.ring(key, now)))

    def decline(self, key: str, code: int) -> bool:
        return bool(self._command(lambda now: self.core.decline(key, code, now)))

    def hangup(self, key: str) -> None:
        self._command(lambda now: self.core.hangup(key, now))

    def answer(self, key: str) -> bool:
        media = self._command(lambda now: self._answer(key, now))
        if not isinstance(media, RtpSession):
            return False
        media.start()
        return True

    def _answer(self, key: str, now: float) -> RtpSession | None:
        assert self.pool is not None
        plan = self.core.answer_plan(key, now)
        call = self._calls.get(key)
        if plan is None or call is None:
            return None
        try:
            sock = self.pool.bind()  # the RTP port the core asked for
        except OSError as e:
            log.warning("screener: cannot answer %s: %s", call.call_id, e)
            self.core.decline(key, 480, now, why="error")
            return None
        media = RtpSession(self.pool, sock, plan.codec, plan.payload, plan.event_payload, plan.remote,
                           on_digit=call._digit, trusted=self.is_trusted, ptime=plan.ptime)
        if plan.late:
            media.outPort = 0  # nothing to send to until the ACK brings the answer
        if not self.core.answer(key, plan, media.port, now):
            media.stop()
            return None
        call.media, call.codec = media, plan.codec
        return media

    def _run_handler(self, call: Call) -> None:
        try:
            self.on_call(call)
        except Exception:
            log.exception("screener: call handler failed for %s", call.call_id)
        # whatever the handler did, the INVITE gets a final response, an answered call its BYE, and the
        # outgoing calls it placed their CANCEL or BYE
        keys = [leg.key for leg in call.legs]

        def done(now: float) -> None:
            for key in keys:
                self.core.cancel_call(key, now)
            self.core.handler_done(call.key, now)

        self._command(done)

    # -- registration status --

    def _set_status(self, state: str, error: str | None = None, expires: int | None = None) -> None:
        if state == self.status.state and error == self.status.last_error:
            if expires != self.status.expires:
                self.status = RegStatus(state, error, self.status.since, expires)
            return
        self.status = st = RegStatus(state, error, time.time(), expires)
        if state == "failed":
            log.warning("screener: SIP registration failed: %s", error)
        else:
            log.info("screener: SIP %s%s", state, f" (expires {expires} s)" if expires else "")
        if self.on_status is not None:
            on_status = self.on_status
            self._to_aux(lambda: on_status(st))  # the status callback writes to the database: off the socket

    # -- the threads --

    def _to_aux(self, job: Callable[[], None]) -> None:
        with self._aux_cv:
            self._aux_q.append(job)
            self._aux_cv.notify()

    def _aux(self) -> None:
        while True:
            with self._aux_cv:
                self._aux_cv.wait_for(lambda: self._aux_q or self._closing.is_set(), 1.0)
                if not self._aux_q:
                    if self._closing.is_set():
                        return
                    continue
                job = self._aux_q.popleft()
            self._guarded(job)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (OSError, AttributeError):
            pass

    def _loop(self) -> None:
        # a blocking select instead of pyVoIP's 10 ms polling
        self._loop_ident = threading.get_ident()
        while not self._closing.is_set():
            with self._lock:
                when = self.core.next_timer()
                now = time.monotonic()
                timeout = 1.0 if when is None else min(1.0, max(0.0, when - now))
                self._sleep_until = now + timeout
            sock = self.sock
            assert sock is not None
            try:
                ready, _, _ = select.select([sock, self._wake_r], [], [], timeout)
            except (OSError, ValueError):
                if self._closing.is_set():
                    return
                time.sleep(0.05)
                continue
            if self._wake_r in ready:
                try:
                    self._wake_r.recv(4096)
                except OSError:
                    pass
            if sock in ready:
                for _ in range(64):
                    try:
                        data, addr = sock.recvfrom(65535)
                    except BlockingIOError:
                        break
                    except OSError:  # B9: socket errors (ICMP refusals...) never end the thread
                        break
                    self._guarded(self._command, lambda now, d=data, a=addr: self.core.receive_datagram(d, a, now))
            self._guarded(self._command, lambda now: self.core.handle_timer(now))

    def _guarded(self, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("screener: internal error handling SIP input")

    def _send(self, data: bytes, dest: tuple[str, int]) -> None:
        try:
            assert self.sock is not None
            self.sock.sendto(data, dest)
        except (OSError, AssertionError) as e:
            log.debug("send to %s failed: %s", dest, e)
