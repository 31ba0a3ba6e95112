"""The SIP user agent's protocol core, sans I/O: datagrams, timer events and commands in; datagrams and events out.

`SipCore` owns the transactions, the incoming calls' dialogs, the registration, the provider-only filter and
their timers. It never reads a clock (every input carries `now`), opens no socket, starts no thread, resolves
no name (it asks with a `ResolveProvider` event) and draws randomness from the source it is given, so tests
drive it with plain values. `screener.sip.shell` is the I/O around it.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass

from screener.config import SipConfig
from screener.sip.dialogs import (
    REASONS,
    SUPPORTED,
    AnswerPlan,
    DEvent,
    Dialog,
    DState,
    IncomingCall,
    Tombstone,
    answer_media,
    answer_plan,
    authorized_retry,
    build_response,
    bye_destination,
    bye_request,
    dtmf_relay_keys,
    in_dialog_request,
    incoming_info,
    local_sdp,
    request_destination,
    servable,
    session_timer,
)
from screener.sip.message import (
    Message,
    ParseError,
    VersionError,
    check_request,
    name_addr,
    parse,
    parse_sdp,
    parse_uri,
    sdp_body,
    via_sent_by,
)
from screener.sip.outgoing import (
    OFFER_PLAN,
    Credentials,
    LEvent,
    LState,
    OutgoingLeg,
    cancel_request,
    invite_request,
    leg_request,
    loop_marks,
    non2xx_ack,
    offer_sdp,
    take_2xx,
)
from screener.sip.registration import (
    ALLOW,
    Contact,
    Registration,
    RegState,
    ResolveProvider,
    SendRequest,
    StatusChange,
    format_host,
    new_branch,
    split_hostport,
    token,
)
from screener.sip.transactions import (
    CIState,
    ClientInviteTransaction,
    ClientTransaction,
    NCState,
    ServerInviteTransaction,
    ServerTransaction,
    SIState,
    Timing,
)

log = logging.getLogger("screener.sip")

MAX_DIALOGS = 256  # beyond this new INVITEs get 503: only this branch ends, the house keeps ringing
UNTRUSTED_LOG_INTERVAL = 60.0
UNTRUSTED_SOURCES_MAX = 4096  # untrusted addresses counted (least recently seen forgotten first)

Addr = tuple[str, int]


# -- events for the shell ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewCall:
    """An INVITE to hand to the call handler."""

    key: str  # the Call-ID as received: the handle of every command about this call
    info: IncomingCall
    requires_100rel: bool


@dataclass(frozen=True)
class CallEnded:
    """The call is over for the handler (its ACK and BYE may still be to come)."""

    key: str
    reason: str
    cancel_reason: str | None


@dataclass(frozen=True)
class CallReleased:
    """Nothing of the call is left but, maybe, a tombstone: the shell may forget it."""

    key: str


@dataclass(frozen=True)
class MediaUpdate:
    """Where the call's RTP goes now (a re-INVITE), and its codec when the ACK brought a late answer."""

    key: str
    remote: Addr  # port 0: send nothing (a hold, or no answer yet)
    codec: tuple[str, int, int | None] | None = None  # (name, payload, event payload)
    ptime: int | None = None  # ms per packet we send


@dataclass(frozen=True)
class MediaStop:
    key: str


@dataclass(frozen=True)
class Digit:
    key: str
    digit: str


@dataclass(frozen=True)
class Rejected:
    """An INVITE refused before a handler ran (for its row)."""

    info: IncomingCall
    code: int
    why: str


@dataclass(frozen=True)
class LegProgress:
    """A provisional response to our INVITE (100, 180, 183...)."""

    key: str
    code: int


@dataclass(frozen=True)
class LegAnswered:
    """The 2xx to our INVITE came (and was ACKed): the media goes to `remote` in `codec`."""

    key: str
    remote: Addr
    codec: tuple[str, int, int | None]  # (name, payload, event payload)


@dataclass(frozen=True)
class LegEnded:
    """The outgoing leg is over for the handler: failed (with the final code; 408 for no response at all),
    cancelled, hangup (ours), bye (theirs) or stopped."""

    key: str
    reason: str
    code: int | None


@dataclass(frozen=True)
class LegDigit:
    key: str
    digit: str


@dataclass(frozen=True)
class LegMedia:
    """Where the leg's RTP goes now (the household's re-INVITE or UPDATE)."""

    key: str
    remote: Addr
    codec: tuple[str, int, int | None]
    ptime: int | None = None


@dataclass(frozen=True)
class LegReleased:
    """Nothing of the leg is left: the shell may forget it."""

    key: str


LegEvent = LegProgress | LegAnswered | LegEnded | LegDigit | LegMedia | LegReleased
Event = (NewCall | CallEnded | CallReleased | MediaUpdate | MediaStop | Digit | Rejected | StatusChange
         | ResolveProvider | LegEvent)


class SipCore:
    """One SIP phone line's protocol state. Not thread-safe: the shell serialises the calls into it."""

    def __init__(self, cfg: SipConfig, contact: Contact, *, timing: Timing | None = None,
                 rng: random.Random | None = None, register: bool = True, ring_limit: float | None = None,
                 max_dialogs: int = MAX_DIALOGS) -> None:
        self.cfg = cfg
        self.timing = timing or Timing()
        self.rng = rng or random.Random()
        self.contact = contact
        self.ring_limit = ring_limit
        self.max_dialogs = max_dialogs
        self.register_enabled = register and bool(cfg.server and cfg.username)
        self.registration: Registration | None = (
            Registration(cfg, self.timing, contact, self.rng) if self.register_enabled else None)
        self._register_wanted = register
        self._dialogs: dict[str, Dialog] = {}
        self._done: dict[str, Tombstone] = {}  # call-id -> tombstone of an ended call (see _retire)
        self._client: dict[str, ClientTransaction] = {}  # branch -> a request we sent
        self._server: dict[str, ServerTransaction] = {}  # see _server_key -> a request we answered
        # branch -> (our BYE, where to, already retried, credentials: None = the account's)
        self._byes: dict[str, tuple[bytes, Addr, bool, Credentials | None]] = {}
        self._legs: dict[str, OutgoingLeg] = {}  # key -> a call we placed (ring-through)
        self._leg_ids: dict[str, str] = {}  # its Call-ID -> key
        self._invites: dict[str, tuple[ClientInviteTransaction, str, Message]] = {}  # branch -> (tx, leg key, INVITE)
        self._cancels: dict[str, str] = {}  # branch of our CANCEL -> leg key
        self.loops_refused = 0  # INVITEs that were our own outgoing calls coming back
        self._refreshes: dict[str, str] = {}  # branch of our session refresh (UPDATE) -> its call's key
        self._timers: list[tuple[float, int, str, str]] = []  # (when, seq, kind, key)
        self._seq = itertools.count()
        self._out: list[tuple[bytes, Addr]] = []
        self._events: list[Event] = []
        self.provider_ips: set[str] = set()
        self._trusted_nets = [ipaddress.ip_network(n, strict=False) for n in cfg.trusted_sources]
        self._untrusted_seen: OrderedDict[str, list[float]] = OrderedDict()  # ip -> [count, last logged]
        self.untrusted_total = 0
        self.untrusted_last: tuple[str, float] | None = None  # "ip:port", `now` of the latest

    # -- outputs --

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def next_timer(self) -> float | None:
        """When handle_timer() is next due (None: nothing pending)."""
        while self._timers:
            when, _, kind, key = self._timers[0]
            if self._timer_of(kind, key) == when:
                return when
            heapq.heappop(self._timers)  # a timer that moved or whose owner is gone
        return None

    # -- state --

    @property
    def tracked_calls(self) -> int:
        return len(self._dialogs)

    @property
    def active_calls(self) -> int:
        return sum(1 for d in self._dialogs.values() if not d.over)

    @property
    def tombstones(self) -> int:
        return len(self._done)

    @property
    def pending_transactions(self) -> int:
        return len(self._client) + len(self._server) + len(self._invites)

    @property
    def tracked_legs(self) -> int:
        """Outgoing legs held (ended ones while a transaction of theirs still runs)."""
        return len(self._legs)

    @property
    def active_legs(self) -> int:
        return sum(1 for leg in self._legs.values() if not leg.over)

    def leg(self, key: str) -> OutgoingLeg | None:
        return self._legs.get(key)

    def dialog(self, key: str) -> Dialog | None:
        return self._dialogs.get(key)

    @property
    def registration_over(self) -> bool:
        return self.registration is None or self.registration.state is RegState.STOPPED

    # -- the provider and who may talk to us --

    def add_provider_ips(self, ips: set[str]) -> None:
        self.provider_ips |= ips

    def is_trusted(self, ip: str) -> bool:
        """Only the provider (and configured ranges) may send us requests."""
        if ip.startswith("::ffff:"):
            ip = ip[7:]
        if ip in self.provider_ips:
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self._trusted_nets)

    def untrusted_counts(self) -> dict[str, int]:
        items = list(self._untrusted_seen.items())  # one C call: safe against the socket thread's updates
        return {ip: int(entry[0]) for ip, entry in items}

    @property
    def untrusted_sources(self) -> int:
        return len(self._untrusted_seen)

    def _untrusted(self, addr: Addr, data: bytes, now: float) -> None:
        ip = addr[0]
        self.untrusted_total += 1
        self.untrusted_last = (f"{format_host(ip)}:{addr[1]}", now)
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

    # -- registration commands --

    def start_registration(self, now: float) -> None:
        if self.registration is not None:
            self.registration.start(now)
            self._pump_registration(now)
        elif self._register_wanted:
            self._events.append(StatusChange("failed", "no SIP server or user name configured: not registering"))

    def stop_registration(self, now: float) -> None:
        if self.registration is not None:
            self.registration.stop(now)
            self._pump_registration(now)

    def resolved(self, dest: Addr, local: str | None, provider_ips: set[str], now: float,
                 alternatives: tuple[Addr, ...] = ()) -> None:
        """The shell's answer to ResolveProvider: the first target, and the ones to fail over to (RFC 3263)."""
        self.provider_ips |= provider_ips | {dest[0]} | {a[0] for a in alternatives}
        if self.registration is not None:
            self.registration.resolved(dest, local, now, alternatives)
            self._pump_registration(now)

    def resolve_failed(self, error: str, provider_ips: set[str], now: float) -> None:
        self.provider_ips |= provider_ips
        if self.registration is not None:
            self.registration.resolve_failed(error, now)
            self._pump_registration(now)

    def request_rebind(self, reason: str, now: float) -> None:
        """Register again now (at most once per REBIND_MIN_INTERVAL): the registrar may have lost our binding."""
        if self.registration is not None and self.registration.rebind(reason, now):
            self._pump_registration(now)

    def _pump_registration(self, now: float) -> None:
        reg = self.registration
        assert reg is not None
        items, reg.outbox = reg.outbox, []
        for item in items:
            if isinstance(item, SendRequest):
                tx = ClientTransaction(item.data, item.dest, item.branch, self.timing, item.timeout, now)
                self._client[item.branch] = tx
                self._send_all(tx.start(), item.dest)
                self._arm("client", item.branch, tx.timer_at)
            else:
                self._events.append(item)
        self._arm("reg", "", reg.timer_at)

    # -- timers --

    def _arm(self, kind: str, key: str, when: float | None) -> None:
        if when is not None:
            heapq.heappush(self._timers, (when, next(self._seq), kind, key))

    def _timer_of(self, kind: str, key: str) -> float | None:
        obj: Dialog | Tombstone | ClientTransaction | ServerTransaction | Registration | None
        if kind == "invite":
            d = self._dialogs.get(key)
            return d.tx.timer_at if d is not None else None
        if kind == "rel":
            d = self._dialogs.get(key)
            return d.rel_at if d is not None else None
        if kind == "session":
            d = self._dialogs.get(key)
            return d.session_at if d is not None else None
        if kind == "reinvite":
            d = self._dialogs.get(key)
            return d.reinvite.timer_at if d is not None and d.reinvite is not None else None
        if kind == "uac":
            entry = self._invites.get(key)
            return entry[0].timer_at if entry is not None else None
        if kind == "leg":
            leg = self._legs.get(key)
            return leg.timer_at if leg is not None else None
        if kind == "legreinv":
            leg = self._legs.get(key)
            return leg.reinvite.timer_at if leg is not None and leg.reinvite is not None else None
        if kind == "dialog":
            obj = self._dialogs.get(key)
        elif kind == "tomb":
            obj = self._done.get(key)
        elif kind == "client":
            obj = self._client.get(key)
        elif kind == "server":
            obj = self._server.get(key)
        else:
            obj = self.registration
        return obj.timer_at if obj is not None else None

    def handle_timer(self, now: float) -> None:
        """Run every timer due at `now`."""
        while self._timers and self._timers[0][0] <= now:
            when, _, kind, key = heapq.heappop(self._timers)
            if self._timer_of(kind, key) != when:
                continue
            if kind == "invite":
                self._invite_timer(self._dialogs[key], now)
            elif kind == "reinvite":
                self._reinvite_timer(self._dialogs[key], now)
            elif kind == "rel":
                self._reliable_timer(self._dialogs[key], now)
            elif kind == "session":
                self._session_timer(self._dialogs[key], now)
            elif kind == "dialog":
                self._ring_expired(self._dialogs[key], now)
            elif kind == "tomb":
                del self._done[key]
            elif kind == "uac":
                self._uac_timer(key, now)
            elif kind == "leg":
                self._cancel_expired(self._legs[key], now)
            elif kind == "legreinv":
                self._leg_reinvite_timer(self._legs[key], now)
            elif kind == "client":
                self._client_timer(self._client[key], now)
            elif kind == "server":
                self._server.pop(key).on_timer(now)
            elif self.registration is not None:
                self.registration.on_timer(now)
                self._pump_registration(now)

    def _invite_timer(self, d: Dialog, now: float) -> None:
        self._send_all(d.tx.on_timer(now), d.addr)
        self._arm("invite", d.key, d.tx.timer_at)
        if d.tx.state is not SIState.TERMINATED or not d.tx.timed_out:
            return
        if d.state is DState.ANSWERED:  # RFC 3261 13.3.1.4: no ACK for the 2xx -> end with BYE
            log.info("screener: no ACK for the 200 OK of %s", d.call_id)
            self._send_bye(d, now)
            self._end(d, "no_ack", DEvent.NO_ACK, now)
        elif d.state is DState.ENDED:
            self._forget(d)  # Timer H: no ACK for the non-2xx final response

    def _reinvite_timer(self, d: Dialog, now: float) -> None:
        tx = d.reinvite
        assert tx is not None
        self._send_all(tx.on_timer(now), d.addr)
        self._arm("reinvite", d.key, tx.timer_at)
        if tx.state is SIState.TERMINATED and tx.timed_out and d.state in (DState.ANSWERED, DState.CONFIRMED):
            log.info("screener: no ACK for the 200 OK to the re-INVITE of %s", d.call_id)  # RFC 3261 14.2
            self._send_bye(d, now)
            self._end(d, "no_ack", DEvent.BYE_OUT, now)

    def _reliable_timer(self, d: Dialog, now: float) -> None:
        """RFC 3262 3: the reliable provisional again (T1, doubling) until its PRACK; none in 64*T1: 500."""
        if d.reliable is None or d.state is not DState.RINGING:
            d.rel_at, d.reliable = None, None
            return
        if now >= d.rel_deadline:
            d.rel_at, d.reliable = None, None
            log.info("screener: no PRACK for the reliable 180 of %s", d.call_id)
            self._reject(d, 500, "error", now)
            return
        self._send_all([d.reliable], d.addr)
        d.rel_interval *= 2
        d.rel_at = min(now + d.rel_interval, d.rel_deadline)
        self._arm("rel", d.key, d.rel_at)

    # -- session timers (RFC 4028, as the UAS) --

    def _session_headers(self, d: Dialog, req: Message, now: float) -> list[tuple[str, str]]:
        """Take the session interval of `req` (the INVITE or a refresh), arm its timer; the 2xx's headers."""
        st = session_timer(req, d.refresher if d.session_expires else "uac")
        if st is None:  # a refresh without Session-Expires turns the timer off (RFC 4028 9)
            d.session_expires, d.session_at = 0, None
            return []
        d.session_expires, d.refresher = st
        n = d.session_expires
        # the refresher refreshes at half the interval; the other side ends the session shortly before it
        # expires (RFC 4028 10: the interval less min(32 s, a third of it))
        d.session_at = now + (n / 2 if d.refresher == "uas" else n - min(32, n / 3))
        self._arm("session", d.key, d.session_at)
        extra = [("session-expires", f"{n};refresher={d.refresher}")]
        return extra + ([("require", "timer")] if d.refresher == "uac" else [])

    def _session_timer(self, d: Dialog, now: float) -> None:
        d.session_at = None
        if d.state not in (DState.ANSWERED, DState.CONFIRMED) or d.end_reason is not None:
            return
        if d.refresher == "uac":
            log.info("screener: no session refresh for %s within %d s: ending it", d.call_id, d.session_expires)
            self._send_bye(d, now)
            self._end(d, "session_expired", DEvent.BYE_OUT, now)
            return
        branch = new_branch(self.rng)  # we are the refresher: an UPDATE without a body (RFC 4028 7.4)
        data = in_dialog_request(d, self.contact, branch, "UPDATE")
        proxy = split_hostport(self.cfg.outbound_proxy, 5060) if self.cfg.outbound_proxy else None
        dest = bye_destination(d, proxy)
        tx = ClientTransaction(data, dest, branch, self.timing, 64 * self.timing.t1, now)
        self._client[branch] = tx
        self._refreshes[branch] = d.key
        self._send_all(tx.start(), dest)
        self._arm("client", branch, tx.timer_at)
        d.session_at = now + d.session_expires / 2
        self._arm("session", d.key, d.session_at)

    def _refresh_result(self, key: str, resp: Message | None, now: float) -> None:
        d = self._dialogs.get(key)
        if d is None or d.state not in (DState.ANSWERED, DState.CONFIRMED) or d.end_reason is not None:
            return
        if resp is None or resp.status in (408, 481):  # RFC 5057: the dialog is gone -> end it
            self._send_bye(d, now)
            self._end(d, "session_expired", DEvent.BYE_OUT, now)

    def _ring_expired(self, d: Dialog, now: float) -> None:
        """Backstop for a handler that never ended its call: 480 well after max_ring_time."""
        if self._reject(d, 480, "timeout", now):
            log.warning("screener: call %s was still ringing after %.0f s: ended with 480", d.call_id,
                        self.ring_limit or 0)

    def _client_timer(self, tx: ClientTransaction, now: float) -> None:
        self._send_all(tx.on_timer(now), tx.dest)
        self._arm("client", tx.branch, tx.timer_at)
        if tx.state is NCState.TERMINATED:
            del self._client[tx.branch]
            if tx.timed_out:
                self._client_result(tx.branch, None, now)

    def _client_result(self, branch: str, resp: Message | None, now: float) -> None:
        refreshed = self._refreshes.pop(branch, None)
        if refreshed is not None:
            self._refresh_result(refreshed, resp, now)
            return
        bye = self._byes.pop(branch, None)
        if bye is not None:
            data, dest, retried, creds = bye
            if resp is not None and resp.status in (401, 407) and not retried:
                self._bye_with_credentials(data, dest, resp, creds, now)
            return
        if self._cancels.pop(branch, None) is not None:
            return  # the INVITE's final response (487, or a 2xx that crossed) settles the leg
        reg = self.registration
        if reg is not None and reg.owns(branch):
            reg.on_result(branch, resp, now)
            self._pump_registration(now)

    # -- incoming datagrams --

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        """One datagram from the socket."""
        addr = (addr[0], addr[1])
        if not data.strip(b"\r\n\x00 "):
            return  # keepalive
        if data.startswith(b"SIP/2.0 "):
            self._on_response(data, addr, now)
            return
        if not self.is_trusted(addr[0]) and not self._for_leg(data):
            self._untrusted(addr, data, now)
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
        method = msg.method.upper()
        if method not in ("INVITE", "ACK") and msg.branch.startswith("z9hG4bK"):
            tx = self._server.get(self._server_key(msg))
            if tx is not None:  # Timer J: a retransmitted request gets the same answer
                self._send_all([tx.retransmission()], addr)
                return
        leg_key = self._leg_ids.get(msg.call_id)
        if leg_key is not None and self._to_tag(msg) and self._on_leg_request(self._legs[leg_key], msg, addr, now):
            return
        handler = {
            "INVITE": self._on_invite, "ACK": self._on_ack, "CANCEL": self._on_cancel, "BYE": self._on_bye,
            "OPTIONS": self._on_options, "INFO": self._on_info, "UPDATE": self._on_update,
            "NOTIFY": self._on_notify, "PRACK": self._on_prack,
        }.get(method)
        if handler is None:
            # B15: every method gets an answer
            self._respond(msg, addr, 405, "Method Not Allowed", now, [("allow", ALLOW)])
            return
        handler(msg, addr, now)

    def _send_all(self, datagrams: list[bytes], addr: Addr) -> None:
        self._out.extend((d, addr) for d in datagrams if d)

    def _reply_partial(self, data: bytes, addr: Addr, code: int, reason: str) -> None:
        """Answer a malformed request when its headers allow a reply at all; else drop it."""
        try:
            msg = parse(data, check_length=False)
            if not msg.is_request or msg.method.upper() == "ACK":
                return
            via_sent_by(msg.top_via)  # no Via, no way to answer
        except ParseError:
            return
        reason = "".join(ch if ch.isprintable() else "?" for ch in reason)
        self._out.append((build_response(msg, addr, code, reason, to_tag=token(self.rng, 6)), addr))

    def _respond(self, req: Message, addr: Addr, code: int, reason: str, now: float,
                 extra: list[tuple[str, str]] | None = None, body: bytes = b"", to_tag: str | None = None) -> None:
        # B4: replies go to the request's source address and port; every final response carries a To tag
        # (RFC 3261 8.2.6.2): the dialog's own, else a fresh one (build_response keeps a tag already there)
        data = build_response(req, addr, code, reason, extra, body, to_tag or token(self.rng, 6))
        method = req.method.upper()
        if code >= 200 and method not in ("INVITE", "ACK") and req.branch.startswith("z9hG4bK"):
            tx = ServerTransaction(req.branch, method, self.timing)
            key = self._server_key(req)
            self._server[key] = tx
            self._send_all(tx.respond(data, now), addr)
            self._arm("server", key, tx.timer_at)
            return
        self._out.append((data, addr))

    @staticmethod
    def _server_key(req: Message) -> str:
        # RFC 3261 17.2.3 matches branch, sent-by and method; the Call-ID and CSeq are added because some
        # senders (and the RFC 4475 torture messages) reuse a branch for different requests
        return f"{req.branch} {req.method.upper()} {req.call_id} {req.get('cseq')}"

    def _in_order(self, d: Dialog, msg: Message, addr: Addr, now: float) -> bool:
        """RFC 3261 12.2.2: a request with a CSeq lower than the dialog's last one gets 500; else it becomes the
        last one."""
        if msg.cseq[0] < d.remote_cseq:
            self._respond(msg, addr, 500, "Server Internal Error (CSeq out of order)", now)
            return False
        d.remote_cseq = msg.cseq[0]
        return True

    def _in_dialog(self, msg: Message) -> Dialog | None:
        d = self._dialogs.get(msg.call_id)
        if d is None:
            return None
        return d if name_addr(msg.get("to") or "").tag == d.to_tag else None

    def _is_our_contact(self, uri: str) -> bool:
        """Whether a Request-URI names the host and port we registered (the user part providers rewrite)."""
        if not self.contact.host:
            return True
        try:
            u = parse_uri(uri)
        except ParseError:
            return True
        return u.host.strip("[]").lower() == self.contact.host.lower() and (u.port or 5060) == self.contact.port

    def _on_invite(self, msg: Message, addr: Addr, now: float) -> None:
        to_tag = name_addr(msg.get("to") or "").tag
        if not to_tag and self._legs and self._own_call(msg):
            # our ring-through coming back (a FRITZ!Box **9 rings every IP phone, us too): never answered,
            # screened or handed on. 486 ends only this branch; a 6xx would stop the household's phones too.
            self.loops_refused += 1
            log.debug("screener: INVITE %s is our own outgoing call: 486", msg.call_id)
            self._respond(msg, addr, 486, "Busy Here", now, to_tag=token(self.rng, 6))
            return
        d = self._dialogs.get(msg.call_id)
        if d is None and not to_tag and (done := self._done.get(msg.call_id)) is not None:
            if msg.branch == done.branch:
                self._out.append((done.response, addr))  # a late retransmission: the same final response again
            else:
                self._respond(msg, addr, 482, "Loop Detected", now)
            return
        if to_tag:
            if d is not None and to_tag == d.to_tag and d.state in (DState.ANSWERED, DState.CONFIRMED):
                self._reinvite(d, msg, addr, now)
            else:
                self._respond(msg, addr, 481, "Call/Transaction Does Not Exist", now)
            return
        if d is not None:
            if msg.branch == d.invite.branch:
                self._send_all([d.tx.last_response], addr)  # a retransmitted INVITE gets our last response
            else:
                self._respond(msg, addr, 482, "Loop Detected", now)
            return
        from_provider = self.is_trusted(addr[0])
        if self.active_calls >= self.max_dialogs:
            info = incoming_info(msg, addr, from_provider)
            self._respond(msg, addr, 503, "Service Unavailable", now, [("retry-after", "30")],
                          to_tag=token(self.rng, 6))
            self._events.append(Rejected(info, 503, f"more than {self.max_dialogs} calls at once"))
            return
        # Nothing is refused before the rules have spoken (a blocked caller must be declined whatever its
        # INVITE requires or offers); what we cannot serve only means we will not answer it.
        offer, cannot = servable(msg)
        if not self._is_our_contact(msg.uri):
            self.request_rebind(f"INVITE for {msg.uri[:80]}, not our contact", now)
        info = incoming_info(msg, addr, from_provider, cannot)
        tx = ServerInviteTransaction(msg.branch, self.timing)
        try:
            d = Dialog(info, msg, addr, token(self.rng, 6), self.rng.randrange(1, 10000), tx, offer)
        except ParseError as e:  # a Contact (or From) we could never send the BYE to
            self._respond(msg, addr, 400, f"Bad Request ({e})"[:80], now)
            return
        self._dialogs[d.key] = d
        self._send_all(tx.respond(100, build_response(msg, addr, 100, "Trying"), now), addr)
        # B2: the handler starts now, and nothing is sent on its behalf but 100 Trying
        self._events.append(NewCall(d.key, info, d.requires_100rel))
        if self.ring_limit:
            d.ring_deadline = now + self.ring_limit
            self._arm("dialog", d.key, d.ring_deadline)

    def _on_ack(self, msg: Message, addr: Addr, now: float) -> None:
        d = self._dialogs.get(msg.call_id)
        if d is None:
            return
        if d.state is DState.ANSWERED:
            d.tx.ack(now)
            d.go(DEvent.ACK)  # stops the 200 OK retransmissions
            body = sdp_body(msg)
            if body and d.has_media and d.offer is None:
                self._late_answer(d, body)
            if d.bye_pending:
                self._send_bye(d, now)
                self._end(d, "hangup", DEvent.BYE_OUT, now)
        elif d.state is DState.ENDED and d.tx.state is SIState.COMPLETED:
            d.tx.ack(now)
            self._retire(d, now + self.timing.t4)  # RFC 3261 17.2.1: Timer I after the ACK
        elif d.reinvite is not None and msg.cseq[0] == d.reinvite_cseq and d.reinvite.ack(now):
            body = sdp_body(msg)  # the ACK of our 200 to a re-INVITE: its retransmissions stop
            if body and d.has_media and d.reinvite_late:
                self._late_answer(d, body)

    def _late_answer(self, d: Dialog, body: bytes) -> None:
        """A late offer's answer arrives in the ACK: take its codec and address."""
        media = answer_media(body)
        if media is not None:
            self._events.append(MediaUpdate(d.key, *media))

    def _on_cancel(self, msg: Message, addr: Addr, now: float) -> None:
        d = self._dialogs.get(msg.call_id)
        if d is None or msg.cseq[0] != d.invite.cseq[0]:
            self._respond(msg, addr, 481, "Call/Transaction Does Not Exist", now)  # B15
            return
        self._respond(msg, addr, 200, "OK", now, to_tag=d.to_tag)
        if d.state is DState.ANSWERED and d.end_reason is None:
            # our 200 crossed the CANCEL: the caller gave up here (or took another branch) before it
            # arrived. The dialog still gets its ACK and a BYE, but nothing is played into it.
            d.cancel_reason = msg.get("reason")
            d.bye_pending = True
            self._end(d, "cancelled", None, now)
            return
        if d.state is not DState.RINGING:
            return  # already rejected or confirmed: CANCEL has no effect
        d.cancel_reason = msg.get("reason")
        # B3: the INVITE gets its 487 and the call can never be answered afterwards
        self._reject(d, 487, "cancelled", now)

    def _on_bye(self, msg: Message, addr: Addr, now: float) -> None:
        d = self._in_dialog(msg)
        if d is None or d.state not in (DState.ANSWERED, DState.CONFIRMED):
            self._respond(msg, addr, 481, "Call/Transaction Does Not Exist", now)  # B15: unknown BYE is 481
            return
        if not self._in_order(d, msg, addr, now):
            return
        self._respond(msg, addr, 200, "OK", now)
        self._end(d, "bye", DEvent.BYE_IN, now)

    def _on_options(self, msg: Message, addr: Addr, now: float) -> None:
        # B15: providers and the FRITZ!Box ping with OPTIONS and drop devices that stay silent
        self._respond(msg, addr, 200, "OK", now, [("allow", ALLOW), ("accept", "application/sdp"),
                                                   ("contact", self.contact.header())])

    def _on_info(self, msg: Message, addr: Addr, now: float) -> None:
        d = self._in_dialog(msg)
        if d is None:
            self._respond(msg, addr, 481, "Call/Transaction Does Not Exist", now)
            return
        if not self._in_order(d, msg, addr, now):
            return
        self._respond(msg, addr, 200, "OK", now)
        self._events.extend(Digit(d.key, key) for key in dtmf_relay_keys(msg))

    def _on_update(self, msg: Message, addr: Addr, now: float) -> None:
        d = self._in_dialog(msg)
        if d is None:
            self._respond(msg, addr, 481, "Call/Transaction Does Not Exist", now)
            return
        if not self._in_order(d, msg, addr, now):
            return
        offer = sdp_body(msg)
        body = b""
        if offer and d.local_sdp:
            answer = self._offer_answer(d, offer)
            if answer is None:  # RFC 3311 5.2: an offer we cannot accept leaves the session as it was
                self._respond(msg, addr, 488, "Not Acceptable Here", now)
                return
            body = answer
        extra = [("contact", self.contact.header())] + self._session_headers(d, msg, now)
        extra += [("content-type", "application/sdp")] if body else []
        self._respond(msg, addr, 200, "OK", now, extra, body)

    def _offer_answer(self, d: Dialog, offer: bytes) -> bytes | None:
        """A new offer in the dialog (re-INVITE, UPDATE): the media moves and our answer is returned; None when
        the offer cannot be accepted (the session stays as it was)."""
        try:
            sdp = parse_sdp(offer)
        except ParseError:
            return None
        plan = answer_plan(sdp)
        if plan is None:
            return None
        d.plan = plan
        if d.has_media:  # the RTP session sends and latches where this offer says (B14)
            self._events.append(MediaUpdate(d.key, plan.remote, (plan.codec, plan.payload, plan.event_payload),
                                            plan.ptime))
        body = local_sdp(self.contact.host, d.rtp_port, plan, d.sdp_session, d.sdp_version)
        if body != d.local_sdp:  # RFC 3264 8: a changed SDP gets the next version
            d.sdp_version += 1
            body = local_sdp(self.contact.host, d.rtp_port, plan, d.sdp_session, d.sdp_version)
            d.local_sdp = body
        return body

    def _on_notify(self, msg: Message, addr: Addr, now: float) -> None:
        self._respond(msg, addr, 200, "OK", now)  # unsolicited NOTIFY (message waiting) from routers

    def _on_prack(self, msg: Message, addr: Addr, now: float) -> None:
        d = self._in_dialog(msg)
        rack = (msg.get("rack") or "").split()
        try:
            acked = (int(rack[0]), int(rack[1]), rack[2].upper()) if len(rack) == 3 else None
        except ValueError:
            acked = None
        if d is None or acked != (d.rseq, d.invite.cseq[0], "INVITE") or d.rseq == 0:
            self._respond(msg, addr, 481, "Call/Transaction Does Not Exist", now)  # RFC 3262 7.2
            return
        if not self._in_order(d, msg, addr, now):
            return
        d.reliable, d.rel_at = None, None  # its retransmissions stop
        self._respond(msg, addr, 200, "OK", now)

    def _on_in_dialog_only(self, msg: Message, addr: Addr, now: float) -> None:
        self._respond(msg, addr, 481, "Call/Transaction Does Not Exist", now)

    def _reinvite(self, d: Dialog, msg: Message, addr: Addr, now: float) -> None:
        tx = d.reinvite
        if tx is not None and msg.cseq[0] == d.reinvite_cseq and msg.branch == tx.branch:
            self._send_all([tx.retransmission()], addr)  # a retransmitted re-INVITE: our last response again
            return
        if tx is not None and tx.state is SIState.ACCEPTED:
            # RFC 3261 14.2: a second re-INVITE while our 2xx to the first waits for its ACK
            self._respond(msg, addr, 500, "Server Internal Error", now,
                          [("retry-after", str(self.rng.randrange(0, 11)))])
            return
        if not self._in_order(d, msg, addr, now):
            return
        offer = sdp_body(msg)
        body = d.local_sdp  # B14: a session refresh without an offer gets ours (its ACK brings the answer)
        if offer:
            answer = self._offer_answer(d, offer)
            if answer is None:
                self._respond(msg, addr, 488, "Not Acceptable Here", now)  # the session stays as it was
                return
            body = answer
        tx = d.reinvite = ServerInviteTransaction(msg.branch, self.timing)
        d.reinvite_cseq, d.reinvite_late = msg.cseq[0], not offer
        extra = [("contact", self.contact.header())] + self._session_headers(d, msg, now)
        data = build_response(msg, addr, 200, "OK", extra + [("content-type", "application/sdp")] * bool(body),
                              body, to_tag=d.to_tag)
        self._send_all(tx.respond(200, data, now), addr)  # retransmitted until the ACK (RFC 3261 13.3.1.4)
        self._arm("reinvite", d.key, tx.timer_at)

    def _on_response(self, data: bytes, addr: Addr, now: float) -> None:
        try:
            msg = parse(data)
        except ParseError:
            return
        # B17: a response belongs to the request whose branch it carries; anything else is not its answer
        try:
            method = msg.cseq[1]
        except ValueError:
            return
        if method == "INVITE" and (entry := self._invites.get(msg.branch)) is not None:
            self._invite_response(*entry, msg, now)
            return
        tx = self._client.get(msg.branch)
        if tx is None:
            if not self.is_trusted(addr[0]):
                self._untrusted(addr, data, now)
            return
        final = tx.on_response(msg.status, now)
        self._arm("client", tx.branch, tx.timer_at)
        if final:
            self._client_result(tx.branch, msg, now)

    # -- commands of the call handler (through the shell) --

    def ring(self, key: str, now: float) -> bool:
        """180 Ringing; False when the call is no longer ringing."""
        d = self._dialogs.get(key)
        if d is None or d.state is not DState.RINGING:
            return False
        # B18: our own Contact, and the Record-Route the dialog needs
        extra = [("contact", self.contact.header())] + [("record-route", r) for r in d.route_set]
        if d.wants_100rel:
            if d.reliable is not None:
                return True  # RFC 3262 3: one unacknowledged reliable provisional at a time; it still rings
            d.rseq = d.rseq + 1 if d.rseq else self.rng.randrange(1, 2**31)
            extra += [("require", "100rel"), ("rseq", str(d.rseq))]
        data = build_response(d.invite, d.addr, 180, "Ringing", extra, to_tag=d.to_tag)
        self._send_all(d.tx.respond(180, data, now), d.addr)
        if d.wants_100rel:  # retransmitted (T1, doubling) until its PRACK (RFC 3262 3)
            d.reliable, d.rel_interval, d.rel_deadline = data, self.timing.t1, now + 64 * self.timing.t1
            d.rel_at = now + d.rel_interval
            self._arm("rel", d.key, d.rel_at)
        return True

    def decline(self, key: str, code: int, now: float, why: str = "declined") -> bool:
        """A final non-2xx while ringing; False when the call is no longer ringing."""
        d = self._dialogs.get(key)
        return d is not None and self._reject(d, code, why, now)

    def answer_plan(self, key: str, now: float) -> AnswerPlan | None:
        """What answering takes (the shell binds an RTP port for it); None when the call cannot be answered."""
        d = self._dialogs.get(key)
        if d is None or d.state is not DState.RINGING or d.info.cannot_serve:
            return None  # B3: a cancelled (or declined) call is never answered; nor one we cannot serve
        plan = answer_plan(d.offer)
        if plan is None:
            self._reject(d, 488, "error", now)
        return plan

    def answer(self, key: str, plan: AnswerPlan, rtp_port: int, now: float) -> bool:
        """Send 200 OK with our SDP (media on `rtp_port`); False when the call stopped ringing meanwhile."""
        d = self._dialogs.get(key)
        if d is None or d.state is not DState.RINGING:
            return False
        d.plan, d.rtp_port, d.sdp_session = plan, rtp_port, self.rng.randrange(1, 2**31)
        d.sdp_version = d.sdp_session
        d.local_sdp = local_sdp(self.contact.host, rtp_port, plan, d.sdp_session)
        d.has_media = True
        d.go(DEvent.ANSWER)
        extra = [("supported", ", ".join(sorted(SUPPORTED)))] + self._session_headers(d, d.invite, now)
        self._final(d, 200, extra + [("content-type", "application/sdp")], d.local_sdp, now)
        return True

    def hangup(self, key: str, now: float, immediate: bool = False) -> None:
        """End the call: BYE when answered (after its ACK, B5), 480 while still ringing."""
        d = self._dialogs.get(key)
        if d is None:
            return
        if d.state is DState.RINGING:
            self._reject(d, 480, "hangup", now)
        elif d.state is DState.ANSWERED and not immediate:
            d.bye_pending = True  # B5: the BYE waits for the ACK of our 200
            self._end(d, "hangup", None, now)
        elif d.state in (DState.ANSWERED, DState.CONFIRMED):
            self._send_bye(d, now)
            self._end(d, "hangup", DEvent.BYE_OUT, now)

    def handler_done(self, key: str, now: float) -> None:
        """The handler returned: whatever it did, the INVITE gets a final response and an answered call its BYE."""
        d = self._dialogs.get(key)
        if d is None:
            return
        if d.state is DState.RINGING:
            self._reject(d, 480, "error", now)
        elif d.state in (DState.ANSWERED, DState.CONFIRMED) and d.end_reason is None:
            self.hangup(key, now)

    def stop_calls(self, now: float) -> None:
        """The agent stops: every call ends at once (480 or BYE)."""
        for d in list(self._dialogs.values()):
            if not d.over:
                if d.end_reason is None:  # what the handler reports: interrupted
                    d.end("stopped")
                    self._events.append(CallEnded(d.key, "stopped", d.cancel_reason))
                self.hangup(d.key, now, immediate=True)
                self._end(d, "stopped", DEvent.STOP, now)
        for leg in list(self._legs.values()):
            self._abandon(leg, "stopped", now)

    # -- the INVITE's responses and the end of a call --

    def _reject(self, d: Dialog, code: int, why: str, now: float) -> bool:
        if d.state is not DState.RINGING:
            return False
        self._final(d, code, [], b"", now)
        self._end(d, why, DEvent.REJECT, now)
        return True

    def _final(self, d: Dialog, code: int, extra: list[tuple[str, str]], body: bytes, now: float) -> None:
        """A final response to the INVITE, retransmitted until the ACK (B5)."""
        if code < 300:
            extra = [("contact", self.contact.header())] + [("record-route", r) for r in d.route_set] + extra
        d.reliable, d.rel_at = None, None  # a final response ends the reliable provisional's retransmissions
        reason = "OK" if code == 200 else REASONS.get(code, "Decline")
        data = build_response(d.invite, d.addr, code, reason, extra, body, to_tag=d.to_tag)
        self._send_all(d.tx.respond(code, data, now), d.addr)
        self._arm("invite", d.key, d.tx.timer_at)

    def _send_bye(self, d: Dialog, now: float) -> None:
        d.bye_pending = False
        branch = new_branch(self.rng)
        data = bye_request(d, self.contact, branch)
        proxy = split_hostport(self.cfg.outbound_proxy, 5060) if self.cfg.outbound_proxy else None
        dest = bye_destination(d, proxy)
        self._start_bye(data, dest, branch, False, now)

    def _start_bye(self, data: bytes, dest: Addr, branch: str, retried: bool, now: float,
                   creds: Credentials | None = None) -> None:
        tx = ClientTransaction(data, dest, branch, self.timing, 64 * self.timing.t1, now)
        self._client[branch] = tx
        self._byes[branch] = (data, dest, retried, creds)
        self._send_all(tx.start(), dest)
        self._arm("client", branch, tx.timer_at)

    def _bye_with_credentials(self, data: bytes, dest: Addr, challenge: Message, creds: Credentials | None,
                              now: float) -> None:
        """A BYE challenged with 401/407 goes once more with credentials (RFC 3261 22.2): the call must end."""
        branch = new_branch(self.rng)
        creds = creds or self._account_credentials()
        retry = authorized_retry(data, challenge, self.contact, branch, creds.user, creds.password,
                                 token(self.rng, 8))
        if retry is None:
            log.warning("screener: BYE challenged with a digest screener cannot answer")
            return
        self._start_bye(retry, dest, branch, True, now, creds)

    def _account_credentials(self) -> Credentials:
        return Credentials(self.cfg.auth_user, self.cfg.password)

    def _end(self, d: Dialog, reason: str, event: DEvent | None, now: float) -> None:
        """Over for the handler; with `event` the dialog itself ends (else it waits for the ACK, then BYE)."""
        # B1: every way a call ends (decline included) releases its media and, later, its record
        if d.end_reason is None:
            d.end(reason)
            self._events.append(CallEnded(d.key, d.end_reason or reason, d.cancel_reason))
        if d.has_media:
            d.has_media = False
            self._events.append(MediaStop(d.key))
        if event is None or d.state is DState.ENDED:
            return
        d.go(event)
        if d.tx.state not in (SIState.COMPLETED, SIState.ACCEPTED):
            # a final response still being retransmitted ends the record itself (at its ACK, or at Timer H);
            # otherwise the call is over: a tombstone absorbs retransmitted requests for 64*T1 (Timer J)
            self._retire(d, now + 64 * self.timing.t1)

    def _retire(self, d: Dialog, until: float) -> None:
        """The call is over and nothing waits for its ACK: keep only what a retransmission needs until `until`."""
        # The full record (parsed INVITE, SDP, queues: 7 KB and more) goes now; a ~0.6 KB tombstone answers a
        # retransmitted INVITE with the same final response (482 to a new branch) until `until`. Keeping
        # whole records for 64*T1 held 3200 of them at 100 INVITE/s (bench_sip "load").
        self._forget(d)
        self._done[d.key] = Tombstone(d.invite.branch, d.tx.last_response, until)
        self._arm("tomb", d.key, until)

    def _forget(self, d: Dialog) -> None:
        if self._dialogs.get(d.key) is d:
            del self._dialogs[d.key]
            d.tx.terminate()
            self._events.append(CallReleased(d.key))

    # -- outgoing calls (ring-through, UAC) --

    def place_call(self, key: str, target_uri: str, from_user: str, display_name: str, rtp_port: int, now: float,
                   *, dest: Addr, credentials: tuple[str, str] | None = None,
                   extra_headers: tuple[tuple[str, str], ...] = ()) -> bool:
        """INVITE `target_uri` (sent to `dest`, the resolved outbound proxy or target) offering media on
        `rtp_port`, From `"display_name" <sip:from_user@our domain>`; False when `key` is in use."""
        if key in self._legs:
            return False
        host = format_host(self.contact.host) or "screener"
        creds = Credentials(*credentials) if credentials is not None else None
        leg = OutgoingLeg(key, f"{token(self.rng, 12)}@{host}", token(self.rng, 6), target_uri, from_user,
                          display_name, token(self.rng, 8), dest, creds, b"")
        leg.rtp_port, leg.sdp_session = rtp_port, self.rng.randrange(1, 2**31)
        leg.sdp_version = leg.sdp_session
        leg.local_sdp = offer_sdp(self.contact.host, rtp_port, leg.sdp_session)
        leg.extra_headers = extra_headers
        self._legs[key], self._leg_ids[leg.call_id] = leg, key
        branch = new_branch(self.rng)
        data = invite_request(leg, self.contact, self._domain(), branch, self._outbound_proxy(), extra_headers)
        self._start_invite(leg, data, branch, now)
        return True

    def cancel_call(self, key: str, now: float) -> None:
        """Give up on the leg: CANCEL while it rings (once a provisional response came, RFC 3261 9.1), BYE once
        answered."""
        leg = self._legs.get(key)
        if leg is not None:
            self._abandon(leg, "hangup" if leg.state is LState.ANSWERED else "cancelled", now)

    def hangup_call(self, key: str, now: float) -> None:
        """End the leg, whatever its state (the same as cancel_call)."""
        self.cancel_call(key, now)

    def _domain(self) -> str:
        return format_host(self.cfg.sip_domain or self.contact.host)

    def _outbound_proxy(self) -> Addr | None:
        return split_hostport(self.cfg.outbound_proxy, 5060) if self.cfg.outbound_proxy else None

    def _leg_dest(self, leg: OutgoingLeg) -> Addr:
        return request_destination(leg.route_set, leg.remote_target, self._outbound_proxy(), leg.dest)

    def _start_invite(self, leg: OutgoingLeg, data: bytes, branch: str, now: float) -> None:
        leg.invite = parse(data)
        tx = leg.tx = ClientInviteTransaction(data, leg.dest, branch, self.timing, now)
        leg.branches.add(branch)
        self._invites[branch] = (tx, leg.key, leg.invite)
        self._send_all(tx.start(), leg.dest)
        self._arm("uac", branch, tx.timer_at)

    def _abandon(self, leg: OutgoingLeg, reason: str, now: float) -> None:
        if leg.state is LState.ENDED:
            return
        if leg.end(reason):
            self._events.append(LegEnded(leg.key, reason, leg.final_code))
        if leg.state is LState.ANSWERED:
            self._send_leg_bye(leg, now)
            leg.go(LEvent.BYE)
            self._release_leg(leg)
            return
        leg.cancel_wanted = True
        if leg.state is LState.RINGING and not leg.cancel_sent:
            self._send_cancel(leg, now)

    def _send_cancel(self, leg: OutgoingLeg, now: float) -> None:
        leg.cancel_sent = True
        branch = leg.invite.branch
        tx = ClientTransaction(cancel_request(leg.invite), leg.dest, branch, self.timing, 64 * self.timing.t1, now)
        self._client[branch], self._cancels[branch] = tx, leg.key
        self._send_all(tx.start(), leg.dest)
        self._arm("client", branch, tx.timer_at)
        # RFC 3261 9.1: no final response 64*T1 after the CANCEL: the INVITE is taken as cancelled
        leg.cancel_deadline = now + 64 * self.timing.t1
        self._arm("leg", leg.key, leg.cancel_deadline)

    def _cancel_expired(self, leg: OutgoingLeg, now: float) -> None:
        leg.cancel_deadline = None
        if leg.tx is not None:
            leg.tx.terminate()
            self._invites.pop(leg.tx.branch, None)
            leg.branches.discard(leg.tx.branch)
        self._leg_failed(leg, 487)

    def _send_leg_bye(self, leg: OutgoingLeg, now: float) -> None:
        branch = new_branch(self.rng)
        data = leg_request(leg, self.contact, self._domain(), branch, "BYE")
        self._start_bye(data, self._leg_dest(leg), branch, False, now, leg.credentials)

    def _leg_failed(self, leg: OutgoingLeg, code: int) -> None:
        """A final non-2xx (or none at all): the leg is over, for the handler too."""
        leg.final_code = leg.final_code or code
        if leg.state in (LState.CALLING, LState.RINGING):
            leg.go(LEvent.FAILED)
        if leg.end("failed", code):
            self._events.append(LegEnded(leg.key, "failed", code))
        self._release_leg(leg)

    def _release_leg(self, leg: OutgoingLeg) -> None:
        """Forget an ended leg once none of its INVITE transactions (nor a re-INVITE of theirs) needs it."""
        reinvite_done = leg.reinvite is None or leg.reinvite.state is SIState.TERMINATED
        if leg.state is LState.ENDED and not leg.branches and reinvite_done and self._legs.get(leg.key) is leg:
            del self._legs[leg.key]
            self._leg_ids.pop(leg.call_id, None)
            self._events.append(LegReleased(leg.key))

    def _uac_timer(self, branch: str, now: float) -> None:
        tx, key, _ = self._invites[branch]
        self._send_all(tx.on_timer(now), tx.dest)
        self._arm("uac", branch, tx.timer_at)
        if tx.state is not CIState.TERMINATED:
            return
        del self._invites[branch]
        leg = self._legs.get(key)
        if leg is None:
            return
        leg.branches.discard(branch)
        if tx.timed_out and tx is leg.tx and leg.state is LState.CALLING:
            self._leg_failed(leg, 408)  # Timer B: nothing answered the INVITE
        self._release_leg(leg)

    def _invite_response(self, tx: ClientInviteTransaction, key: str, invite: Message, msg: Message,
                         now: float) -> None:
        code = msg.status
        out, fresh = tx.on_response(code, non2xx_ack(invite, msg) if code >= 300 else b"", now)
        self._send_all(out, tx.dest)
        self._arm("uac", tx.branch, tx.timer_at)
        leg = self._legs.get(key)
        if leg is None or not fresh or (tx is not leg.tx and code < 300):
            return
        if code < 200:
            if leg.state is LState.CALLING:
                leg.go(LEvent.PROVISIONAL)
            if leg.state is LState.RINGING:
                if leg.cancel_wanted and not leg.cancel_sent:
                    self._send_cancel(leg, now)
                elif not leg.over:
                    self._events.append(LegProgress(key, code))
        elif code < 300:
            self._leg_2xx(leg, msg, now)
        elif tx is leg.tx:
            self._leg_rejected(leg, msg, now)

    def _leg_rejected(self, leg: OutgoingLeg, msg: Message, now: float) -> None:
        creds = leg.credentials or (self._account_credentials() if self.cfg.password else None)
        if msg.status in (401, 407) and not leg.auth_tried and not leg.over and creds is not None:
            leg.auth_tried = True  # once: a second challenge means the credentials are wrong
            branch = new_branch(self.rng)
            retry = authorized_retry(leg.invite.to_bytes(), msg, self.contact, branch, creds.user, creds.password,
                                     token(self.rng, 8))
            if retry is not None:
                leg.local_cseq += 1
                leg.go(LEvent.RETRY)
                self._start_invite(leg, retry, branch, now)
                return
            log.warning("screener: the outgoing call's INVITE was challenged with a digest screener cannot answer")
        if msg.status >= 300:
            self._leg_failed(leg, msg.status)

    def _leg_2xx(self, leg: OutgoingLeg, msg: Message, now: float) -> None:
        tag = name_addr(msg.get("to") or "").tag or ""
        if leg.ack:
            if tag == leg.remote_tag:
                self._send_all([leg.ack], self._leg_dest(leg))  # a retransmitted 2xx: our ACK again (13.2.2.4)
            else:
                self._ack_and_bye(leg, msg, now)  # a second branch of a forking proxy answered too
            return
        take_2xx(leg, msg)
        leg.ack = leg_request(leg, self.contact, self._domain(), new_branch(self.rng), "ACK", leg.invite.cseq[0])
        self._send_all([leg.ack], self._leg_dest(leg))
        leg.go(LEvent.ANSWERED)
        leg.cancel_deadline = None
        media = answer_media(sdp_body(msg) or b"")
        if leg.over:  # our CANCEL (or the stop) crossed the 2xx: ACK, then BYE
            self._send_leg_bye(leg, now)
            leg.go(LEvent.BYE)
            self._release_leg(leg)
        elif media is None:
            log.warning("screener: the outgoing call was answered without G.711 in its SDP: hanging up")
            leg.final_code = 488
            self._abandon(leg, "failed", now)
        else:
            self._events.append(LegAnswered(leg.key, *media))

    def _ack_and_bye(self, leg: OutgoingLeg, msg: Message, now: float) -> None:
        other = OutgoingLeg(leg.key, leg.call_id, leg.local_tag, leg.target_uri, leg.from_user, leg.display,
                            leg.loop_token, leg.dest, leg.credentials, b"")
        take_2xx(other, msg)
        other.local_cseq = leg.invite.cseq[0]
        domain = self._domain()
        self._send_all([leg_request(other, self.contact, domain, new_branch(self.rng), "ACK", other.local_cseq)],
                       self._leg_dest(other))
        branch = new_branch(self.rng)
        self._start_bye(leg_request(other, self.contact, domain, branch, "BYE"), self._leg_dest(other), branch,
                        False, now, leg.credentials)

    def _own_call(self, msg: Message) -> bool:
        """Whether an INVITE is one of our outgoing calls come back: its Call-ID, our loop token, or the From
        user and display name we sent (a B2BUA such as the FRITZ!Box keeps neither Call-ID nor our header)."""
        loop_token, user, display = loop_marks(msg)
        return any(msg.call_id == leg.call_id or (loop_token and loop_token == leg.loop_token)
                   or (user == leg.from_user and display == leg.display) for leg in self._legs.values())

    def _for_leg(self, data: bytes) -> bool:
        """A request in the dialog of one of our legs, from wherever its remote target is."""
        if not any(call_id.encode() in data for call_id in self._leg_ids):
            return False  # the common case, without parsing: an untrusted flood costs a substring search
        try:
            msg = parse(data)
        except ParseError:
            return False
        return msg.is_request and msg.call_id in self._leg_ids and bool(self._to_tag(msg))

    @staticmethod
    def _to_tag(msg: Message) -> str:
        try:
            return name_addr(msg.get("to") or "").tag or ""
        except ParseError:
            return ""

    def _on_leg_request(self, leg: OutgoingLeg, msg: Message, addr: Addr, now: float) -> bool:
        """A request of the household in our leg's dialog; False for methods the general handlers answer."""
        method = msg.method.upper()
        if method not in ("ACK", "BYE", "INFO", "INVITE", "UPDATE"):
            return False
        if method == "ACK":
            tx = leg.reinvite
            if tx is not None and msg.cseq[0] == leg.reinvite_cseq and tx.ack(now):
                body = sdp_body(msg)
                media = answer_media(body) if body and leg.reinvite_late else None
                if media is not None and not leg.over:
                    self._events.append(LegMedia(leg.key, *media))
                self._release_leg(leg)
            return True
        if self._to_tag(msg) != leg.local_tag or leg.state is not LState.ANSWERED:
            self._respond(msg, addr, 481, "Call/Transaction Does Not Exist", now)
            return True
        tx = leg.reinvite
        if method == "INVITE" and tx is not None and msg.cseq[0] == leg.reinvite_cseq and msg.branch == tx.branch:
            self._send_all([tx.retransmission()], addr)
            return True
        if msg.cseq[0] < leg.remote_cseq:
            self._respond(msg, addr, 500, "Server Internal Error (CSeq out of order)", now)
            return True
        leg.remote_cseq = msg.cseq[0]
        if method == "BYE":
            self._respond(msg, addr, 200, "OK", now, to_tag=leg.local_tag)
            leg.go(LEvent.BYE)
            if leg.end("bye"):
                self._events.append(LegEnded(leg.key, "bye", leg.final_code))
            self._release_leg(leg)
        elif method == "INFO":
            self._respond(msg, addr, 200, "OK", now, to_tag=leg.local_tag)
            if not leg.over:
                self._events.extend(LegDigit(leg.key, key) for key in dtmf_relay_keys(msg))
        else:
            self._leg_offer(leg, msg, addr, method, now)
        return True

    def _leg_offer(self, leg: OutgoingLeg, msg: Message, addr: Addr, method: str, now: float) -> None:
        """A re-INVITE or UPDATE of the household: our answer to its offer (our offer again when it has none)."""
        offer = sdp_body(msg)
        plan = None
        if offer:
            try:
                plan = answer_plan(parse_sdp(offer))
            except ParseError:
                plan = None
            if plan is None:  # RFC 3311 5.2 / 3261 14.2: the session stays as it was
                self._respond(msg, addr, 488, "Not Acceptable Here", now, to_tag=leg.local_tag)
                return
            if not leg.over:
                self._events.append(LegMedia(leg.key, plan.remote, (plan.codec, plan.payload, plan.event_payload),
                                             plan.ptime))
        leg.sdp_version += 1
        body = local_sdp(self.contact.host, leg.rtp_port, plan or OFFER_PLAN, leg.sdp_session,
                         leg.sdp_version) if offer or method == "INVITE" else b""
        extra = [("contact", self.contact.header())] + [("content-type", "application/sdp")] * bool(body)
        if method == "UPDATE":
            self._respond(msg, addr, 200, "OK", now, extra, body, to_tag=leg.local_tag)
            return
        tx = leg.reinvite = ServerInviteTransaction(msg.branch, self.timing)
        leg.reinvite_cseq, leg.reinvite_late, leg.reinvite_addr = msg.cseq[0], not offer, addr
        data = build_response(msg, addr, 200, "OK", extra, body, to_tag=leg.local_tag)
        self._send_all(tx.respond(200, data, now), addr)
        self._arm("legreinv", leg.key, tx.timer_at)

    def _leg_reinvite_timer(self, leg: OutgoingLeg, now: float) -> None:
        tx = leg.reinvite
        assert tx is not None
        self._send_all(tx.on_timer(now), leg.reinvite_addr)  # responses go where the request came from
        self._arm("legreinv", leg.key, tx.timer_at)
        if tx.state is SIState.TERMINATED:
            self._release_leg(leg)


__all__ = ["MAX_DIALOGS", "AnswerPlan", "CallEnded", "CallReleased", "Credentials", "Digit", "Event", "LegAnswered",
           "LegDigit", "LegEnded", "LegEvent", "LegMedia", "LegProgress", "LegReleased", "MediaStop", "MediaUpdate",
           "NewCall", "Rejected", "ResolveProvider", "SipCore", "StatusChange"]
