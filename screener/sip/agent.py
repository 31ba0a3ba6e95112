"""The SIP user agent: one UDP socket, registration, incoming calls, the provider-only filter.

Replaces pyVoIP's SIPClient / VoIPPhone / VoIPCall (B1-B5, B9, B12, B14, B15, B17, B18). One thread owns the
socket and the protocol timers and never waits for anything but select(); registration runs on a thread of its
own because DNS and backoff sleep; each call's handler runs on its own thread and acts through `Call` methods.
"""

from __future__ import annotations

import audioop
import heapq
import ipaddress
import itertools
import logging
import random
import secrets
import select
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from screener import __version__
from screener.config import SipConfig
from screener.sip import auth
from screener.sip.media import FRAME_SECONDS, PortPool, RtpSession
from screener.sip.message import (
    Message,
    ParseError,
    Sdp,
    VersionError,
    check_request,
    name_addr,
    param,
    params,
    parse,
    parse_sdp,
    parse_uri,
    sdp_body,
    via_sent_by,
)
from screener.text import clean

log = logging.getLogger("screener.sip")

USER_AGENT = f"screener/{__version__}"
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, NOTIFY"
MAX_DIALOGS = 256  # beyond this new INVITEs get 503: only this branch ends, the house keeps ringing
SUPPORTED: frozenset[str] = frozenset()  # option tags we implement; another in Require: we ring, never answer
UNTRUSTED_LOG_INTERVAL = 60.0
UNTRUSTED_SOURCES_MAX = 4096  # untrusted addresses counted (least recently seen forgotten first)
# A registrar that restarts without keeping its bindings (kamailio without a database, many small PBXs)
# forgets us without a sign: OPTIONS keepalives are still answered, and calls ring only the household phone
# until our next REGISTER. So the binding is refreshed at least this often, whatever the granted expiry: a
# registrar back without our binding has it again within REFRESH_MAX (plus one REGISTER exchange). 20 s is
# under the 30 s that promise allows and about the rate phones behind NAT send REGISTERs as keepalives; with
# the default keepalive_interval (25 s) no OPTIONS go out between refreshes at all.
REFRESH_MAX = 20.0
# While the registrar does not answer, an OPTIONS probe goes out at least this often (more often when
# keepalive_interval is shorter): its return ends the backoff, however long the backoff has grown.
PROBE_INTERVAL = 5.0
REBIND_MIN_INTERVAL = 30.0  # at most one extra REGISTER per this many seconds for INVITEs not sent to our contact
PARKED_WORKERS = 2  # call-handler threads kept waiting for the next call (see _Workers)


@dataclass(frozen=True)
class Timing:
    """Protocol timers (RFC 3261 names); tests shrink them."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0  # Timer I: how long an ACKed non-2xx final response still absorbs retransmissions
    register_timeout: float = 8.0  # one REGISTER exchange, shorter than Timer F so losses show early
    options_timeout: float = 4.0
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    refresh: tuple[float, float] = (0.5, 0.8)  # refresh at this fraction of the granted expiry
    refresh_max: float = REFRESH_MAX  # ... but at least this often
    probe_interval: float = PROBE_INTERVAL  # OPTIONS to a registrar that stopped answering
    stop_timeout: float = 1.5  # the unregister's share of stop()


@dataclass(frozen=True)
class IncomingCall:
    """An INVITE as plain values: everything the rest of screener may know about it."""

    call_id: str
    source: tuple[str, int]
    from_raw: str  # the From header value as received
    pai_raw: str | None  # P-Asserted-Identity, when present
    privacy: str | None  # the Privacy header, e.g. "id"
    called: str  # P-Called-Party-ID, else the To header value: the line that was called
    display_name: str  # from P-Asserted-Identity when present and from the provider, else From
    from_provider: bool
    request_uri: str = ""
    cannot_serve: str = ""  # why screener could ring but not answer this call ("" = it can)


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


def backoff_delay(failures: int, t: Timing) -> float:
    """Seconds before registration attempt n+1: exponential with jitter, capped; retries go on for ever."""
    base = min(t.backoff_max, t.backoff_min * 2 ** min(failures - 1, 16))
    return max(t.backoff_min, random.uniform(base / 2, base))


def format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _split_hostport(value: str, default_port: int) -> tuple[str, int]:
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return host, int(port) if port else default_port


class _ClientTx:
    """A request we sent (REGISTER, OPTIONS, BYE): retransmitted until a final response or the deadline."""

    def __init__(self, data: bytes, dest: tuple[str, int], deadline: float, interval: float) -> None:
        self.data, self.dest, self.deadline, self.interval = data, dest, deadline, interval
        self.done = threading.Event()
        self.response: Message | None = None
        self.on_final: Callable[[Message | None], None] | None = None


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


@dataclass(frozen=True, slots=True)
class _Done:
    """What is left of an ended call (see SipAgent._retire)."""

    branch: str
    response: bytes


class Call:
    """One incoming call. Every method is safe from any thread; none raises once the call is over."""

    def __init__(self, agent: SipAgent, info: IncomingCall, invite: Message, addr: tuple[str, int]) -> None:
        self.info = info
        self._agent = agent
        self.invite = invite
        self.addr = addr
        self.to_tag = secrets.token_hex(6)
        self.state = "ringing"  # ringing -> answered (200 sent) -> confirmed (ACKed) -> ended
        self.final_code: int | None = None
        self.end_reason: str | None = None  # declined, cancelled, bye, hangup, no_ack, stopped, error
        self.cancel_reason: str | None = None
        self.codec: str | None = None
        self.media: RtpSession | None = None
        self._ended_media: RtpSession | None = None
        self.local_sdp: bytes = b""
        self.last_response: bytes = b""
        self.retx_interval = agent.timing.t1
        self.retx_deadline = 0.0
        self.bye_pending = False
        self.offer: Sdp | None = None
        self.local_cseq = random.randrange(1, 10000)
        self.route_set = invite.get_all("record-route")  # B5/B4: kept and used for in-dialog requests
        contacts = invite.get_all("contact")
        self.remote_target = name_addr(contacts[0]).uri if contacts else name_addr(invite.get("from") or "").uri
        self._cv = threading.Condition()
        self._digits: deque[str] = deque(maxlen=32)

    @property
    def call_id(self) -> str:
        return self.info.call_id

    @property
    def ended(self) -> bool:
        """Over for the handler: ended, or hung up / cancelled with only the dialog's ACK and BYE to come."""
        return self.state == "ended" or self.end_reason is not None

    @property
    def answered_elsewhere(self) -> bool:
        """A CANCEL saying another branch took the call (RFC 3326 Reason cause=200)."""
        r = (self.cancel_reason or "").replace(" ", "").lower()
        return "cause=200" in r

    # -- actions --

    def ring(self) -> bool:
        """Send 180 Ringing (nothing when the caller requires reliable provisionals); False when it is over."""
        if self.requires_100rel:
            return not self.ended  # an unreliable 180 would break 100rel: the caller's side rings by itself
        return self._agent._provisional(self, 180, "Ringing")

    @property
    def requires_100rel(self) -> bool:
        return any(t.strip().lower() == "100rel" for r in self.invite.get_all("require") for t in r.split(","))

    def decline(self, code: int = 603) -> bool:
        """Reject while ringing (603 Decline / 607 Unwanted end every branch of a forking proxy)."""
        reasons = {603: "Decline", 607: "Unwanted", 480: "Temporarily Unavailable", 486: "Busy Here",
                   488: "Not Acceptable Here"}
        return self._agent._reject(self, code, reasons.get(code, "Decline"), "declined")

    def answer(self) -> bool:
        """Send 200 OK with our SDP and start the media; False when cancelled or ended first (B3)."""
        return self._agent._answer(self)

    def hangup(self) -> None:
        """End the call: BYE when answered (after its ACK, B5), 480 while still ringing."""
        self._agent._hangup(self)

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

    def wait_digit(self, timeout: float) -> str | None:
        """The next key pressed (RFC 2833 or SIP INFO), or None after `timeout` or at the end of the call."""
        with self._cv:
            self._cv.wait_for(lambda: self._digits or self.ended, timeout)
            return self._digits.popleft() if self._digits else None

    def record(self, max_seconds: float, silence_seconds: float = 5.0, silence_rms: int = 200) -> bytes:
        """Received audio as 8 kHz 16-bit PCM until the caller hangs up, goes silent, or `max_seconds`."""
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

    def _notify(self) -> None:
        with self._cv:
            self._cv.notify_all()


CallHandler = Callable[[Call], None]
StatusHandler = Callable[[RegStatus], None]


class SipAgent:
    """A SIP phone that registers at the provider and hands each incoming call to `on_call` on a new thread."""

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
        self.register_enabled = register and bool(cfg.server and cfg.username)
        self._register_wanted = register
        self.status = RegStatus("unregistered", None, time.time())
        self._lock = threading.RLock()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._calls: dict[str, Call] = {}
        self._done: dict[str, _Done] = {}  # call-id -> tombstone of an ended call (see _retire)
        self._client_tx: dict[str, _ClientTx] = {}
        self._untrusted_seen: OrderedDict[str, list[float]] = OrderedDict()  # ip -> [count, last logged]
        self._untrusted_total = 0
        self._untrusted_last: tuple[str, float] | None = None  # "ip:port", time.time()
        self._provider_ips: set[str] = set()
        self._trusted_nets = [ipaddress.ip_network(n, strict=False) for n in cfg.trusted_sources]
        self._stopping = threading.Event()  # registration: stop and unregister
        self._reg_wake = threading.Event()  # wakes the registration thread: stop, or register again now
        self._rebind_reason: str | None = None
        self._last_rebind = 0.0
        self._closing = threading.Event()  # socket thread: stop (after the unregister went out)
        self._threads: list[threading.Thread] = []
        self._status_q: deque[RegStatus] = deque()
        self._status_cv = threading.Condition()
        self._workers = _Workers("sip-call", PARKED_WORKERS)
        self.sock: socket.socket | None = None
        self.contact_host = ""
        self.pool: PortPool | None = None
        self._reg_callid = secrets.token_hex(10)
        self._reg_tag = secrets.token_hex(6)
        self._reg_cseq = random.randrange(1, 10000)
        self._challenge: dict[str, str] | None = None
        self._challenge_header = "Authorization"
        self._nc = 0
        self._expires = cfg.register_expires

    # -- life cycle --

    def start(self) -> None:
        """Resolve the provider, bind the SIP socket and start the threads. OSError when the port is taken."""
        cfg = self.cfg
        self._resolve_provider()
        family = socket.AF_INET
        if cfg.local_address != "auto":
            bind_host = cfg.local_address
            self.contact_host = cfg.local_address
            if ":" in bind_host:
                family = socket.AF_INET6
        else:
            self.contact_host = self._discover_local_address() or ""
            if ":" in self.contact_host:
                family = socket.AF_INET6
            bind_host = "::" if family == socket.AF_INET6 else "0.0.0.0"
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((bind_host, cfg.sip_port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.sock = sock
        rtp_host = cfg.local_address if cfg.local_address != "auto" else bind_host
        self.pool = PortPool(rtp_host, cfg.rtp_port_low, cfg.rtp_port_high, family)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._spawn(self._loop, "sip-loop")
        self._spawn(self._status_worker, "sip-status")
        self._workers.start()
        if self.register_enabled:
            self._spawn(self._register_loop, "sip-register")
        elif self._register_wanted:
            self._set_status("failed", "no SIP server or user name configured: not registering")

    def stop(self) -> None:
        """Unregister (best effort), end the calls, close everything; returns within about 2 s."""
        if self._stopping.is_set() or self.sock is None:
            return
        self._stopping.set()
        self._reg_wake.set()
        for t in self._threads:
            if t.name == "sip-register":
                t.join(self.timing.stop_timeout + 0.3)
        with self._lock:
            calls = list(self._calls.values())
        for call in calls:
            if not call.ended:
                with self._lock:
                    call.end_reason = call.end_reason or "stopped"  # what the handler reports: interrupted
                self._hangup(call, immediate=True)
                self._end(call, "stopped")
        self._closing.set()
        self._workers.close()
        self._wake()
        with self._status_cv:
            self._status_cv.notify_all()
        for t in self._threads:
            if t.name != "sip-register":
                t.join(1.0)
        self.sock.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1] if self.sock else self.cfg.sip_port

    @property
    def tracked_calls(self) -> int:
        """Call records held: ended ones only while their final response waits for its ACK (see _retire)."""
        with self._lock:
            return len(self._calls)

    @property
    def active_calls(self) -> int:
        with self._lock:
            return sum(1 for c in self._calls.values() if not c.ended)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    # -- the provider and who may talk to us --

    def _proxy(self) -> tuple[str, int]:
        """Where requests go: the outbound proxy when set, else the registrar."""
        if self.cfg.outbound_proxy:
            return _split_hostport(self.cfg.outbound_proxy, 5060)
        return self.cfg.server, self.cfg.port

    def _resolve_provider(self) -> None:
        """A/AAAA of registrar and outbound proxy: the addresses whose requests are answered."""
        ips: set[str] = set()
        hosts = [self.cfg.server] if self.cfg.server else []
        if self.cfg.outbound_proxy:
            hosts.append(_split_hostport(self.cfg.outbound_proxy, 5060)[0])
        for host in hosts:
            try:
                for info in socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM):
                    ips.add(str(info[4][0]).split("%")[0])
            except OSError as e:
                log.warning("screener: cannot resolve SIP provider %s: %s", host, e)
        if ips:
            with self._lock:
                self._provider_ips |= ips

    def is_trusted(self, ip: str) -> bool:
        """Only the provider (and configured ranges) may send us requests."""
        if ip.startswith("::ffff:"):
            ip = ip[7:]
        if ip in self._provider_ips:
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self._trusted_nets)

    def _log_untrusted(self, addr: tuple[str, int], data: bytes) -> None:
        now = time.monotonic()
        ip = addr[0]
        self._untrusted_total += 1
        self._untrusted_last = (f"{format_host(ip)}:{addr[1]}", time.time())
        entry = self._untrusted_seen.get(ip)
        if entry is None:
            entry = self._untrusted_seen[ip] = [0, -1.0]
            while len(self._untrusted_seen) > UNTRUSTED_SOURCES_MAX:
                self._untrusted_seen.popitem(last=False)
        else:
            self._untrusted_seen.move_to_end(ip)
        entry[0] += 1
        if entry[1] >= 0 and now - entry[1] < UNTRUSTED_LOG_INTERVAL:
            return
        entry[1] = now
        word = data[:16].split(b" ", 1)[0].decode("ascii", "replace")
        what = word if word.isalnum() and word.isupper() else "response" if word.startswith("SIP/") else "?"
        log.warning("screener: untrusted SIP from %s:%d dropped (%s)", ip, addr[1], what)

    def untrusted_summary(self) -> UntrustedSummary:
        """What was dropped from untrusted addresses so far (safe to call from any thread)."""
        last = self._untrusted_last
        return UntrustedSummary(self._untrusted_total, len(self._untrusted_seen), *(last or ("", None)))

    def untrusted_counts(self) -> dict[str, int]:
        """Datagrams dropped per untrusted address (the most recently seen UNTRUSTED_SOURCES_MAX)."""
        items = list(self._untrusted_seen.items())  # one C call: no switch to the socket thread inside it
        return {ip: int(entry[0]) for ip, entry in items}

    def _discover_local_address(self) -> str | None:
        """The address this host uses to reach the provider (never 0.0.0.0)."""
        host, port = self._proxy()
        if not host:
            return None
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            s = socket.socket(info[0], socket.SOCK_DGRAM)
            try:
                s.connect(info[4])
                local = s.getsockname()[0]
            finally:
                s.close()
        except OSError:
            return None
        if ipaddress.ip_address(local).is_unspecified:
            return None
        return local

    # -- the socket thread --

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _at(self, delay: float, fn: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))
        if threading.current_thread().name != "sip-loop":
            self._wake()

    def _loop(self) -> None:
        # a blocking select instead of pyVoIP's 10 ms polling
        assert self.sock is not None
        while not self._closing.is_set():
            with self._lock:
                timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else 1.0
            try:
                ready, _, _ = select.select([self.sock, self._wake_r], [], [], min(timeout, 1.0))
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
            if self.sock in ready:
                for _ in range(64):
                    try:
                        data, addr = self.sock.recvfrom(65535)
                    except BlockingIOError:
                        break
                    except OSError:  # B9: socket errors (ICMP refusals...) never end the thread
                        break
                    self._guarded(self._on_datagram, data, addr)
            self._run_timers()

    def _guarded(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("screener: internal error handling SIP input")

    def _run_timers(self) -> None:
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > now:
                    return
                _, _, fn = heapq.heappop(self._timers)
            self._guarded(fn)

    def _send(self, data: bytes, dest: tuple[str, int]) -> None:
        try:
            assert self.sock is not None
            self.sock.sendto(data, dest)
        except (OSError, AssertionError) as e:
            log.debug("send to %s failed: %s", dest, e)

    # -- incoming datagrams --

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        addr = (addr[0], addr[1])
        if not data.strip(b"\r\n\x00 "):
            return  # keepalive
        if data.startswith(b"SIP/2.0 "):
            self._on_response(data, addr)
            return
        if not self.is_trusted(addr[0]):
            self._log_untrusted(addr, data)
            return
        try:
            msg = parse(data)
            if not msg.is_request:
                return
            check_request(msg)
        except VersionError:
            self._reply_partial(data, addr, 505, "Version Not Supported")
            return
        except ParseError as e:
            self._reply_partial(data, addr, 400, f"Bad Request ({e})"[:80])
            return
        handler = {
            "INVITE": self._on_invite, "ACK": self._on_ack, "CANCEL": self._on_cancel, "BYE": self._on_bye,
            "OPTIONS": self._on_options, "INFO": self._on_info, "UPDATE": self._on_update,
            "NOTIFY": self._on_notify, "PRACK": self._on_in_dialog_only,
        }.get(msg.method.upper())
        if handler is None:
            # B15: every method gets an answer
            self._respond(msg, addr, 405, "Method Not Allowed", [("allow", ALLOW)])
            return
        handler(msg, addr)

    def _reply_partial(self, data: bytes, addr: tuple[str, int], code: int, reason: str) -> None:
        """Answer a malformed request when its headers allow a reply at all; else drop it."""
        try:
            msg = parse(data, check_length=False)
            if not msg.is_request or msg.method.upper() == "ACK":
                return
            via_sent_by(msg.top_via)  # no Via, no way to answer
        except ParseError:
            return
        reason = "".join(ch if ch.isprintable() else "?" for ch in reason)
        self._respond(msg, addr, code, reason)

    def _response(self, req: Message, addr: tuple[str, int], code: int, reason: str,
                  extra: list[tuple[str, str]] | None = None, body: bytes = b"", to_tag: str | None = None) -> bytes:
        headers: list[tuple[str, str]] = []
        first = True
        for v in req.get_all("via"):
            if first:
                first = False
                p = params(v.partition(";")[2])
                try:
                    host, _ = via_sent_by(v)
                except ParseError:
                    host = ""
                if "rport" in p and not p["rport"]:
                    v = v.replace(";rport", f";rport={addr[1]}", 1)
                if host != addr[0] and "received" not in p:
                    v += f";received={addr[0]}"
            headers.append(("via", v))
        to = req.get("to") or ""
        if to_tag and code > 100 and "tag" not in params(to.partition(">")[2] if ">" in to else to.partition(";")[2]):
            to += f";tag={to_tag}"
        headers += [("from", req.get("from") or ""), ("to", to), ("call-id", req.call_id),
                    ("cseq", req.get("cseq") or "")]
        headers += extra or []
        headers.append(("user-agent", USER_AGENT))
        return Message(status=code, reason=reason, headers=headers, body=body).to_bytes()

    def _respond(self, req: Message, addr: tuple[str, int], code: int, reason: str,
                 extra: list[tuple[str, str]] | None = None, body: bytes = b"", to_tag: str | None = None) -> bytes:
        # B4: replies go to the request's source address and port
        data = self._response(req, addr, code, reason, extra, body, to_tag)
        self._send(data, addr)
        return data

    def _contact(self) -> str:
        return f"<sip:{self.cfg.username or 'screener'}@{format_host(self.contact_host)}:{self.local_port}>"

    def _find(self, msg: Message) -> Call | None:
        with self._lock:
            return self._calls.get(msg.call_id)

    def _in_dialog(self, msg: Message) -> Call | None:
        call = self._find(msg)
        if call is None:
            return None
        to_tag = name_addr(msg.get("to") or "").tag
        return call if to_tag == call.to_tag else None

    def _on_invite(self, msg: Message, addr: tuple[str, int]) -> None:
        to_tag = name_addr(msg.get("to") or "").tag
        call = self._find(msg)
        if call is None and not to_tag and (done := self._done.get(msg.call_id)) is not None:
            if msg.branch == done.branch:
                self._send(done.response, addr)  # a late retransmission: the same final response again
            else:
                self._respond(msg, addr, 482, "Loop Detected")
            return
        if to_tag:
            if call is not None and to_tag == call.to_tag and call.state in ("answered", "confirmed"):
                self._reinvite(call, msg, addr)
            else:
                self._respond(msg, addr, 481, "Call/Transaction Does Not Exist")
            return
        if call is not None:
            if msg.branch == call.invite.branch:
                if call.last_response:  # a retransmitted INVITE gets our last response again
                    self._send(call.last_response, addr)
            else:
                self._respond(msg, addr, 482, "Loop Detected")
            return
        if self.active_calls >= MAX_DIALOGS:
            info = self._incoming(msg, addr)
            self._respond(msg, addr, 503, "Service Unavailable", [("retry-after", "30")],
                          to_tag=secrets.token_hex(6))
            if self.on_reject is not None:
                self._guarded(self.on_reject, info, 503, f"more than {MAX_DIALOGS} calls at once")
            return
        # Nothing is refused before the rules have spoken (a blocked caller must be declined whatever its
        # INVITE requires or offers); what we cannot serve only means we will not answer it.
        offer, cannot = self._servable(msg)
        if not self._is_our_contact(msg.uri):
            self.request_rebind(f"INVITE for {msg.uri[:80]}, not our contact")
        info = self._incoming(msg, addr, cannot)
        call = Call(self, info, msg, addr)
        call.offer = offer
        with self._lock:
            self._calls[msg.call_id] = call
        call.last_response = self._respond(msg, addr, 100, "Trying")
        # B2: the handler starts now, not 1 s later, and nothing is sent on its behalf but 100 Trying
        self._workers.submit(self._run_handler, call)
        if self.ring_limit:
            self._at(self.ring_limit, lambda: self._ring_expired(call))

    def _servable(self, msg: Message) -> tuple[Sdp | None, str]:
        """The INVITE's SDP offer, and why we could not answer it ("" when we can)."""
        unsupported = [t.strip() for r in msg.get_all("require") for t in r.split(",")
                       if t.strip() and t.strip().lower() not in SUPPORTED]
        if unsupported:
            return None, "requires " + ", ".join(unsupported)[:80]
        body = sdp_body(msg)
        if body is None:
            if msg.body:
                return None, f"body of type {(msg.get('content-type') or '?')[:40]}, not SDP"
            return None, ""  # a late offer: ours goes in the 200
        try:
            offer = parse_sdp(body)
        except ParseError as e:
            return None, f"unreadable SDP ({e})"[:80]
        if self._choose_codec(offer) is None:
            codecs = sorted({offer.codec(pt) or str(pt) for pt in offer.payloads} - {"telephone-event"})
            return offer, f"no G.711 in the offer ({offer.proto} {' '.join(codecs)})"[:80]
        return offer, ""

    def _ring_expired(self, call: Call) -> None:
        """Backstop for a handler that never ended its call: 480 well after max_ring_time."""
        if call.state == "ringing" and self._reject(call, 480, "Temporarily Unavailable", "timeout"):
            log.warning("screener: call %s was still ringing after %.0f s: ended with 480", call.call_id,
                        self.ring_limit or 0)

    def _is_our_contact(self, uri: str) -> bool:
        """Whether a Request-URI names the host and port we registered (the user part providers rewrite)."""
        if not self.contact_host:
            return True
        try:
            u = parse_uri(uri)
        except ParseError:
            return True
        return u.host.strip("[]").lower() == self.contact_host.lower() and (u.port or 5060) == self.local_port

    def request_rebind(self, reason: str) -> None:
        """Register again now (at most once per REBIND_MIN_INTERVAL): the registrar may have lost our binding."""
        # An INVITE addressed to something other than our Contact reached us by another route than our
        # binding (a registrar that lost it and routes to the AOR, a stale binding of an old address).
        now = time.monotonic()
        if not self.register_enabled or self.status.state != "registered":
            return
        if now - self._last_rebind < REBIND_MIN_INTERVAL:
            return
        self._last_rebind = now
        self._rebind_reason = reason
        self._reg_wake.set()

    def _incoming(self, msg: Message, addr: tuple[str, int], cannot_serve: str = "") -> IncomingCall:
        from_provider = addr[0] in self._provider_ips or self.is_trusted(addr[0])
        pai = msg.get("p-asserted-identity")
        display = ""
        for raw in ([pai] if pai and from_provider else []) + [msg.get("from") or ""]:
            try:
                display = name_addr(raw).display
            except ParseError:
                continue
            if display:
                break
        # text from the wire, made safe once here: undecodable bytes (Latin-1 phonebooks), NUL, bidi controls
        return IncomingCall(
            call_id=clean(msg.call_id), source=addr, from_raw=clean(msg.get("from") or ""),
            pai_raw=clean(pai) if pai is not None else None, privacy=clean(msg.get("privacy") or "") or None,
            called=clean(msg.get("p-called-party-id") or msg.get("to") or ""), display_name=clean(display),
            from_provider=from_provider, request_uri=clean(msg.uri), cannot_serve=cannot_serve)

    def _run_handler(self, call: Call) -> None:
        try:
            self.on_call(call)
        except Exception:
            log.exception("screener: call handler failed for %s", call.call_id)
        # whatever the handler did, the INVITE gets a final response and an answered call its BYE
        if call.state == "ringing":
            self._reject(call, 480, "Temporarily Unavailable", "error")
        elif call.state in ("answered", "confirmed") and call.end_reason is None:
            self._hangup(call)

    @staticmethod
    def _choose_codec(offer: Sdp) -> tuple[str, int] | None:
        if offer.proto.upper() not in ("RTP/AVP", "RTP/AVPF") or offer.port == 0:
            return None  # B12: SRTP-only offers and refused streams cannot be served
        for pt in offer.payloads:
            name = offer.codec(pt)
            if name in ("PCMU", "PCMA"):
                return name, pt
        return None

    def _on_ack(self, msg: Message, addr: tuple[str, int]) -> None:
        call = self._find(msg)
        if call is None:
            return
        with self._lock:
            if call.state == "answered":
                call.state = "confirmed"
                call.retx_deadline = 0.0  # stops the 200 OK retransmissions
                body = sdp_body(msg)
                if body and call.media is not None and call.offer is None:
                    self._late_answer(call, call.media, body)
                if call.bye_pending:
                    self._send_bye(call)
                    self._end(call, "hangup")
            elif call.state == "ended" and call.final_code and call.final_code >= 300:
                if call.retx_deadline:
                    call.retx_deadline = 0.0
                    self._retire(call, self.timing.t4)  # RFC 3261 17.2.1: Timer I after the ACK

    def _late_answer(self, call: Call, media: RtpSession, body: bytes) -> None:
        """A late offer's answer arrives in the ACK: take its codec and address."""
        try:
            sdp = parse_sdp(body)
        except ParseError:
            return
        choice = self._choose_codec(sdp)
        if choice is None:
            return
        call.codec = choice[0]
        media.set_codec(choice[0], choice[1], sdp.event_payload())
        media.set_remote((sdp.address, sdp.port))

    def _on_cancel(self, msg: Message, addr: tuple[str, int]) -> None:
        call = self._find(msg)
        if call is None or msg.cseq[0] != call.invite.cseq[0]:
            self._respond(msg, addr, 481, "Call/Transaction Does Not Exist")  # B15
            return
        with self._lock:
            # inside the lock: either the CANCEL wins (487) or our 200 to the INVITE left before its 200
            self._respond(msg, addr, 200, "OK", to_tag=call.to_tag)
            if call.state == "answered" and call.end_reason is None:
                # our 200 crossed the CANCEL: the caller gave up here (or took another branch) before it
                # arrived. The dialog still gets its ACK and a BYE, but nothing is played into it.
                call.cancel_reason = msg.get("reason")
                call.bye_pending = True
                self._end(call, "cancelled", keep=True)
                return
            if call.state != "ringing":
                return  # already rejected or confirmed: CANCEL has no effect
            call.cancel_reason = msg.get("reason")
            # B3: the INVITE gets its 487 and the call can never be answered afterwards
            self._final(call, 487, "Request Terminated")
            self._end(call, "cancelled")

    def _on_bye(self, msg: Message, addr: tuple[str, int]) -> None:
        call = self._in_dialog(msg)
        if call is None or call.state not in ("answered", "confirmed"):
            self._respond(msg, addr, 481, "Call/Transaction Does Not Exist")  # B15: unknown BYE is 481
            return
        self._respond(msg, addr, 200, "OK")
        self._end(call, "bye")

    def _on_options(self, msg: Message, addr: tuple[str, int]) -> None:
        # B15: providers and the FRITZ!Box ping with OPTIONS and drop devices that stay silent
        self._respond(msg, addr, 200, "OK", [("allow", ALLOW), ("accept", "application/sdp"),
                                              ("contact", self._contact())])

    def _on_info(self, msg: Message, addr: tuple[str, int]) -> None:
        call = self._in_dialog(msg)
        if call is None:
            self._respond(msg, addr, 481, "Call/Transaction Does Not Exist")
            return
        self._respond(msg, addr, 200, "OK")
        if (msg.get("content-type") or "").lower().startswith("application/dtmf-relay"):
            for line in msg.body.decode("ascii", "replace").splitlines():
                key, _, value = line.partition("=")
                if key.strip().lower() == "signal" and value.strip()[:1] in "0123456789*#ABCD":
                    call._digit(value.strip()[:1].upper())

    def _on_update(self, msg: Message, addr: tuple[str, int]) -> None:
        call = self._in_dialog(msg)
        if call is None:
            self._respond(msg, addr, 481, "Call/Transaction Does Not Exist")
            return
        body = call.local_sdp if sdp_body(msg) else b""
        extra = [("contact", self._contact())] + ([("content-type", "application/sdp")] if body else [])
        self._respond(msg, addr, 200, "OK", extra, body)

    def _on_notify(self, msg: Message, addr: tuple[str, int]) -> None:
        self._respond(msg, addr, 200, "OK")  # unsolicited NOTIFY (message waiting) from routers

    def _on_in_dialog_only(self, msg: Message, addr: tuple[str, int]) -> None:
        self._respond(msg, addr, 481, "Call/Transaction Does Not Exist")

    def _reinvite(self, call: Call, msg: Message, addr: tuple[str, int]) -> None:
        # B14: session refreshes are answered with the SDP we already use
        body = sdp_body(msg)
        if body and call.media is not None:
            try:
                sdp = parse_sdp(body)
                call.media.set_remote((sdp.address, sdp.port))
            except ParseError:
                pass
        self._respond(msg, addr, 200, "OK", [("contact", self._contact()), ("content-type", "application/sdp")],
                      call.local_sdp, to_tag=call.to_tag)

    def _on_response(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            msg = parse(data)
        except ParseError:
            return
        # B17: a response belongs to the request whose branch it carries; anything else is not its answer
        with self._lock:
            tx = self._client_tx.get(msg.branch)
        if tx is None:
            if not self.is_trusted(addr[0]):
                self._log_untrusted(addr, data)
            return
        if msg.status < 200:
            tx.interval = self.timing.t2  # RFC 3261 17.1.2.2: keep going, but at T2
            return
        with self._lock:
            self._client_tx.pop(msg.branch, None)
        tx.response = msg
        tx.done.set()
        if tx.on_final:
            self._guarded(tx.on_final, msg)

    # -- server transactions of the INVITE --

    def _provisional(self, call: Call, code: int, reason: str) -> bool:
        with self._lock:
            if call.state != "ringing":
                return False
            # B18: our own Contact, and the Record-Route the dialog needs
            extra = [("contact", self._contact())] + [("record-route", r) for r in call.route_set]
            call.last_response = self._respond(call.invite, call.addr, code, reason, extra, to_tag=call.to_tag)
            return True

    def _reject(self, call: Call, code: int, reason: str, why: str) -> bool:
        with self._lock:
            if call.state != "ringing":
                return False
            self._final(call, code, reason)
            self._end(call, why)
            return True

    def _final(self, call: Call, code: int, reason: str, extra: list[tuple[str, str]] | None = None,
               body: bytes = b"") -> None:
        """Send a final response to the INVITE and retransmit it until the ACK (B5)."""
        call.final_code = code
        if code < 300:
            extra = [("contact", self._contact())] + [("record-route", r) for r in call.route_set] + (extra or [])
        call.last_response = self._respond(call.invite, call.addr, code, reason, extra, body, to_tag=call.to_tag)
        call.retx_interval = self.timing.t1
        call.retx_deadline = time.monotonic() + 64 * self.timing.t1
        self._at(self.timing.t1, lambda: self._retransmit_final(call))

    def _retransmit_final(self, call: Call) -> None:
        with self._lock:
            if not call.retx_deadline:
                return
            if time.monotonic() >= call.retx_deadline:
                call.retx_deadline = 0.0
                if call.state == "answered":  # RFC 3261 13.3.1.4: no ACK for the 2xx -> end with BYE
                    log.info("screener: no ACK for the 200 OK of %s", call.call_id)
                    self._send_bye(call)
                    self._end(call, "no_ack")
                elif call.state == "ended":
                    self._forget(call)  # Timer H: no ACK for the non-2xx final response
                return
            self._send(call.last_response, call.addr)
            call.retx_interval = min(call.retx_interval * 2, self.timing.t2)
            self._at(call.retx_interval, lambda: self._retransmit_final(call))

    def _answer(self, call: Call) -> bool:
        assert self.pool is not None
        with self._lock:
            if call.state != "ringing" or call.info.cannot_serve:
                return False  # B3: a cancelled (or declined) call is never answered; nor one we cannot serve
            offer = call.offer
            if offer is not None:
                choice = self._choose_codec(offer)
                if choice is None:
                    self._reject(call, 488, "Not Acceptable Here", "error")
                    return False
                codec, pt = choice
                remote = (offer.address, offer.port)
                event_pt = offer.event_payload()
            else:
                codec, pt, remote, event_pt = "PCMU", 0, ("0.0.0.0", 0), 101  # late offer: ours in the 200
            try:
                sock = self.pool.bind()
            except OSError as e:
                log.warning("screener: cannot answer %s: %s", call.call_id, e)
                self._reject(call, 480, "Temporarily Unavailable", "error")
                return False
            media = RtpSession(self.pool, sock, codec, pt, event_pt, remote if remote[1] else ("0.0.0.0", 0),
                               on_digit=call._digit, trusted=self.is_trusted)
            if offer is None:
                media.outPort = 0  # nothing to send to until the ACK brings the answer
            call.media, call.codec = media, codec
            call.local_sdp = self._sdp(media.port, codec, pt, event_pt, late=offer is None)
            call.state = "answered"
            self._final(call, 200, "OK", [("content-type", "application/sdp")], call.local_sdp)
        media.start()
        return True

    def _sdp(self, port: int, codec: str, pt: int, event_pt: int | None, late: bool) -> bytes:
        ip = self.contact_host
        family = "IP6" if ":" in ip else "IP4"
        sess = random.randrange(1, 2**31)
        if late:
            fmts = [(0, "PCMU"), (8, "PCMA")]
        else:
            fmts = [(pt, codec)]
        lines = ["v=0", f"o=screener {sess} {sess} IN {family} {ip}", "s=screener", f"c=IN {family} {ip}",
                 "t=0 0"]
        pts = [str(p) for p, _ in fmts] + ([str(event_pt)] if event_pt is not None else [])
        lines.append(f"m=audio {port} RTP/AVP {' '.join(pts)}")
        lines += [f"a=rtpmap:{p} {name}/8000" for p, name in fmts]
        if event_pt is not None:
            lines += [f"a=rtpmap:{event_pt} telephone-event/8000", f"a=fmtp:{event_pt} 0-15"]
        lines += ["a=ptime:20", "a=sendrecv"]
        return ("\r\n".join(lines) + "\r\n").encode()

    def _hangup(self, call: Call, immediate: bool = False) -> None:
        with self._lock:
            if call.state == "ringing":
                self._final(call, 480, "Temporarily Unavailable")
                self._end(call, "hangup")
            elif call.state == "answered" and not immediate:
                call.bye_pending = True  # B5: the BYE waits for the ACK of our 200
                self._end(call, "hangup", keep=True)
            elif call.state in ("answered", "confirmed"):
                self._send_bye(call)
                self._end(call, "hangup")

    def _send_bye(self, call: Call) -> None:
        call.bye_pending = False
        call.local_cseq += 1
        inv = call.invite
        local = inv.get("to") or ""
        if "tag=" not in local.partition(">")[2]:
            local += f";tag={call.to_tag}"
        headers = [("via", f"SIP/2.0/UDP {format_host(self.contact_host)}:{self.local_port};branch={_branch()};rport"),
                   ("max-forwards", "70")]
        # B4: the BYE follows the dialog's route set and request target, not the INVITE's Via
        headers += [("route", r) for r in call.route_set]
        headers += [("from", local), ("to", inv.get("from") or ""), ("call-id", call.call_id),
                    ("cseq", f"{call.local_cseq} BYE"), ("user-agent", USER_AGENT)]
        data = Message(method="BYE", uri=call.remote_target, headers=headers).to_bytes()
        self._client_request(data, self._bye_destination(call), 64 * self.timing.t1)

    def _bye_destination(self, call: Call) -> tuple[str, int]:
        candidates = []
        if call.route_set:
            candidates.append(name_addr(call.route_set[0]).uri)
        elif self.cfg.outbound_proxy:
            return _split_hostport(self.cfg.outbound_proxy, 5060)
        candidates.append(call.remote_target)
        for raw in candidates:
            try:
                uri = parse_uri(raw)
            except ParseError:
                continue
            if uri.host.strip("[]") and _is_ip(uri.host.strip("[]")):
                return uri.host.strip("[]"), uri.port or 5060
        return call.addr  # a name we will not resolve on the socket thread: the hop that sent the INVITE

    def _end(self, call: Call, reason: str, keep: bool = False) -> None:
        """Mark the call over; its record stays 64*T1 to absorb retransmissions, then goes."""
        # B1: every way a call ends (decline included) releases its media and, later, its record
        with self._lock:
            if call.end_reason is None:
                call.end_reason = reason
            if keep:
                media, call.media = call.media, None  # over for the handler: no more audio either way
                if media is not None:
                    call._ended_media = media
                    media.stop()
                call._notify()
                return
            if call.state == "ended":
                return
            call.state = "ended"
            media, call.media = call.media, None
            call._ended_media = media
        if media is not None:
            media.stop()  # never waits here: the socket thread must not block
        call._notify()
        if not call.retx_deadline:
            # a final response still being retransmitted ends the record itself (at its ACK, or at Timer H);
            # otherwise the call is over: a tombstone absorbs retransmitted requests for 64*T1 (Timer J)
            with self._lock:
                self._retire(call, 64 * self.timing.t1)

    def _retire(self, call: Call, keep: float) -> None:
        """The call is over and nothing waits for its ACK: keep only what a retransmission needs, `keep` s."""
        # The full record (parsed INVITE, SDP, condition, queues, the stopped RTP session: 7 KB and more)
        # goes now; a ~0.6 KB tombstone answers a retransmitted INVITE with the same final response
        # (482 to a new branch) until `keep` is over. Keeping whole records for 64*T1 held 3200 of them at
        # 100 INVITE/s, and RSS never came back to its start value (bench_sip "load"). Lock held.
        if self._calls.get(call.call_id) is call:
            del self._calls[call.call_id]
        cid = call.call_id
        done = self._done[cid] = _Done(call.invite.branch, call.last_response)
        self._at(keep, lambda: self._done.pop(cid, None) if self._done.get(cid) is done else None)

    def _forget(self, call: Call) -> None:
        with self._lock:
            if self._calls.get(call.call_id) is call:
                del self._calls[call.call_id]

    # -- requests we send --

    def _client_request(self, data: bytes, dest: tuple[str, int], timeout: float) -> _ClientTx:
        branch = param(parse(data).top_via, "branch") or ""
        tx = _ClientTx(data, dest, time.monotonic() + timeout, self.timing.t1)
        with self._lock:
            self._client_tx[branch] = tx
        self._send(data, dest)
        self._at(tx.interval, lambda: self._retransmit_request(branch))
        return tx

    def _retransmit_request(self, branch: str) -> None:
        with self._lock:
            tx = self._client_tx.get(branch)
            if tx is None:
                return
            if time.monotonic() >= tx.deadline:
                del self._client_tx[branch]
                tx.done.set()
                if tx.on_final:
                    self._guarded(tx.on_final, None)
                return
            self._send(tx.data, tx.dest)
            tx.interval = min(tx.interval * 2, self.timing.t2)
            self._at(min(tx.interval, max(0.0, tx.deadline - time.monotonic())),
                     lambda: self._retransmit_request(branch))

    def _transact(self, data: bytes, dest: tuple[str, int], timeout: float) -> Message | None:
        """Send a request and wait for its final response (None on timeout or stop)."""
        tx = self._client_request(data, dest, timeout)
        deadline = time.monotonic() + timeout + 0.1
        while not tx.done.wait(0.05):
            if time.monotonic() > deadline:
                return None
        return tx.response

    # -- registration --

    def _set_status(self, state: str, error: str | None = None, expires: int | None = None) -> None:
        if state == self.status.state and error == self.status.last_error:
            if expires != self.status.expires:
                self.status = RegStatus(state, error, self.status.since, expires)
            return
        self.status = RegStatus(state, error, time.time(), expires)
        if state == "failed":
            log.warning("screener: SIP registration failed: %s", error)
        else:
            log.info("screener: SIP %s%s", state, f" (expires {expires} s)" if expires else "")
        with self._status_cv:
            self._status_q.append(self.status)
            self._status_cv.notify()

    def _status_worker(self) -> None:
        # the status callback writes to the database: keep it off the socket thread
        while True:
            with self._status_cv:
                self._status_cv.wait_for(lambda: self._status_q or self._stopping.is_set(), 1.0)
                if not self._status_q:
                    if self._stopping.is_set():
                        return
                    continue
                st = self._status_q.popleft()
            if self.on_status:
                try:
                    self.on_status(st)
                except Exception:
                    log.exception("screener: status callback failed")

    def _aor_domain(self) -> str:
        cfg = self.cfg
        if cfg.domain:
            return cfg.domain
        return cfg.server if cfg.port == 5060 else f"{cfg.server}:{cfg.port}"

    def _register_request(self, expires: int) -> bytes:
        cfg = self.cfg
        uri = f"sip:{self._aor_domain()}"
        aor = f"<sip:{cfg.username}@{cfg.sip_domain}>"
        self._reg_cseq += 1
        headers = [("via", f"SIP/2.0/UDP {format_host(self.contact_host)}:{self.local_port};branch={_branch()};rport"),
                   ("max-forwards", "70")]
        if cfg.outbound_proxy:
            host, port = _split_hostport(cfg.outbound_proxy, 5060)
            headers.append(("route", f"<sip:{format_host(host)}:{port};lr>"))
        headers += [("from", f"{aor};tag={self._reg_tag}"), ("to", aor), ("call-id", self._reg_callid),
                    ("cseq", f"{self._reg_cseq} REGISTER"), ("contact", self._contact()),
                    ("expires", str(expires)), ("allow", ALLOW), ("user-agent", USER_AGENT)]
        if self._challenge is not None:
            self._nc += 1
            try:
                value = auth.authorization(self._challenge, "REGISTER", uri, cfg.auth_user, cfg.password, self._nc)
                headers.append((self._challenge_header.lower(), value))
            except ValueError:
                self._challenge = None
        return Message(method="REGISTER", uri=uri, headers=headers).to_bytes()

    def _register_once(self, expires: int) -> tuple[bool, str | None, float | None, int | None]:
        """One REGISTER exchange incl. its digest round: (ok, error, retry_after, granted expiry)."""
        host, port = self._proxy()
        try:
            dest_ip = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0]
        except OSError as e:
            return False, f"cannot resolve {host}: {e}", None, None
        dest = (str(dest_ip), port)
        if self.cfg.local_address == "auto":
            local = self._discover_local_address()
            if local is None:
                return False, f"no local address to reach {host}", None, None
            self.contact_host = local
        tries_423 = auth_tries = 0
        while not self._stopping.is_set() or expires == 0:
            resp = self._transact(self._register_request(expires), dest,
                                  self.timing.register_timeout if expires else self.timing.stop_timeout)
            if resp is None:
                return False, f"no answer from {format_host(dest[0])}:{dest[1]}", None, None
            code = resp.status
            if 200 <= code < 300:
                return True, None, None, self._granted(resp, expires)
            if code in (401, 407) and auth_tries < 2:
                header = "www-authenticate" if code == 401 else "proxy-authenticate"
                try:
                    challenge = auth.best_challenge(resp.get_all(header))
                except ValueError as e:
                    return False, f"{code} {resp.reason}: {e}", None, None
                stale = challenge.get("stale", "").lower() == "true"
                if self._challenge is not None and not stale and auth_tries > 0:
                    return False, f"{code} {resp.reason}: wrong user name or password?", None, None
                auth_tries += 1
                self._challenge, self._nc = challenge, 0
                self._challenge_header = "Authorization" if code == 401 else "Proxy-Authorization"
                continue
            if code == 423 and tries_423 < 3:
                tries_423 += 1
                try:
                    expires = max(expires, int((resp.get("min-expires") or "").strip()))
                except ValueError:
                    return False, f"423 {resp.reason} without a usable Min-Expires", None, None
                self._expires = expires
                continue
            retry_after = None
            ra = (resp.get("retry-after") or "").partition(";")[0].partition("(")[0].strip()
            if ra.isdigit():
                retry_after = float(ra)
            hint = {401: "wrong user name or password?", 407: "wrong user name or password?",
                    403: "wrong password?", 404: "unknown user name?"}.get(code)
            err = f"{code} {resp.reason}" + (f": {hint}" if hint else "")
            if code in (401, 407):
                self._challenge = None
            return False, err, retry_after, None
        return False, "stopped", None, None

    def _granted(self, resp: Message, requested: int) -> int:
        """The expiry the registrar granted to our Contact (its expires param, else Expires)."""
        # B17: the refresh follows what the registrar granted, not a hard-coded 115 s
        ours = f"{format_host(self.contact_host)}:{self.local_port}"
        for c in resp.get_all("contact"):
            try:
                na = name_addr(c)
            except ParseError:
                continue
            if ours in na.uri and na.params.get("expires", "").isdigit():
                return int(na.params["expires"])
        exp = (resp.get("expires") or "").strip()
        return int(exp) if exp.isdigit() else requested

    def _register_loop(self) -> None:
        failures = 0
        self._set_status("registering")
        while not self._stopping.is_set():
            self._reg_wake.clear()
            if self._rebind_reason:
                log.info("screener: registering again: %s", self._rebind_reason)
                self._rebind_reason = None
            self._resolve_provider()
            ok, err, retry_after, granted = self._register_once(self._expires)
            if self._stopping.is_set():
                break
            if ok:
                failures = 0
                granted = granted or self._expires
                self._set_status("registered", None, granted)
                lo, hi = self.timing.refresh
                period = min(granted * random.uniform(lo, hi), self.timing.refresh_max)
                if not self._keepalive_until(time.monotonic() + max(1.0, period)):
                    failures = 1
                    self._backoff(backoff_delay(failures, self.timing), probe=True)
                continue
            failures += 1
            self._set_status("failed", err)
            delay = retry_after if retry_after is not None else backoff_delay(failures, self.timing)
            # only a registrar we could not reach is probed; one that refused us is not asked again early
            self._backoff(delay, probe=not (err and err[:3].isdigit()))
        if self.status.state == "registered":
            self._register_once(0)  # unregister, best effort, within stop_timeout
        self._set_status("unregistered", None)

    def _sleep(self, seconds: float) -> bool:
        """Wait on the registration thread; True when woken early (stop, or register again now)."""
        return self._reg_wake.wait(seconds)

    def _backoff(self, delay: float, probe: bool) -> None:
        """Wait before the next REGISTER; with `probe`, ping with OPTIONS and end the wait when one is answered.

        A registrar that was down answers again long before a backoff grown to backoff_max is over: a probe
        goes out every probe_interval (keepalive_interval when shorter) and the first one answered ends the
        wait, so the binding is back within about probe_interval + options_timeout of the registrar's return.
        """
        deadline = time.monotonic() + delay
        keepalive = self.cfg.keepalive_interval
        interval = min(keepalive, self.timing.probe_interval) if keepalive else self.timing.probe_interval
        while (left := deadline - time.monotonic()) > 0:
            if not probe or left <= interval:
                self._sleep(left)
                return
            if self._sleep(interval):
                return
            dest = self._ping_dest()
            if dest is None:
                return  # not resolvable now: the next REGISTER attempt resolves again and reports why
            if self._ping(dest) is not None:
                log.info("screener: the SIP registrar answers again: registering")
                return

    def _ping_dest(self) -> tuple[str, int] | None:
        """Where keepalive OPTIONS go: the registrar or outbound proxy, resolved; None when it does not resolve."""
        host, port = self._proxy()
        try:
            return str(socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0]), port
        except OSError:
            return None

    def _ping(self, dest: tuple[str, int]) -> Message | None:
        """One OPTIONS; its final response, None when none came."""
        return self._transact(self._options_request(), dest, self.timing.options_timeout)

    def _keepalive_until(self, deadline: float) -> bool:
        """Ping the registrar with OPTIONS every keepalive_interval until `deadline`; False when it went silent.

        Returns True early when the agent stops or a new REGISTER is due: asked for (request_rebind), or
        because a ping was answered only after retransmissions. A registrar that restarted between two pings
        is not noticed here (its replies carry no identity to compare: kamailio's stateless To-tag keeps its
        prefix across restarts, other servers draw a new tag per reply): refresh_max bounds that case.
        """
        interval = self.cfg.keepalive_interval
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= deadline:
                return True
            wait = deadline - now if not interval else min(interval, deadline - now)
            if self._sleep(wait):
                return True
            if not interval or time.monotonic() >= deadline:
                continue
            dest = self._ping_dest()
            if dest is None:
                continue
            sent = time.monotonic()
            if self._ping(dest) is None:
                if not self._stopping.is_set():
                    self._set_status("failed", f"no answer from {format_host(dest[0])}:{dest[1]}")
                    return False
            elif time.monotonic() - sent > self.timing.t1:
                # answered, but only a retransmission was: the registrar was away (restarting?) when the
                # first one came, and may have come back without our binding. One REGISTER settles it.
                self._rebind_reason = "a keepalive was answered only after retransmissions"
                return True
        return True

    def _options_request(self) -> bytes:
        cfg = self.cfg
        domain = self._aor_domain()
        headers = [("via", f"SIP/2.0/UDP {format_host(self.contact_host)}:{self.local_port};branch={_branch()};rport"),
                   ("max-forwards", "70"),
                   ("from", f"<sip:{cfg.username}@{domain}>;tag={secrets.token_hex(6)}"), ("to", f"<sip:{domain}>"),
                   ("call-id", secrets.token_hex(10)), ("cseq", "1 OPTIONS"), ("contact", self._contact()),
                   ("user-agent", USER_AGENT)]
        return Message(method="OPTIONS", uri=f"sip:{domain}", headers=headers).to_bytes()
