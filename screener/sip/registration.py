"""Registration at the provider as a state machine, pure: REGISTER, digest, 423, backoff, refresh, keepalive, probe.

Fed with DNS results, final responses (or their absence) and timer events, all carrying `now`; what it wants
done comes out of `outbox`: requests to send, a resolution to make, status changes. B17 lives here.
"""

from __future__ import annotations

import enum
import logging
import random
from dataclasses import dataclass

from screener import __version__
from screener.config import SipConfig
from screener.sip import auth
from screener.sip.message import Message, ParseError, name_addr
from screener.sip.transactions import Timing

log = logging.getLogger("screener.sip")

USER_AGENT = f"screener/{__version__}"
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, NOTIFY, PRACK"
REBIND_MIN_INTERVAL = 30.0  # at most one extra REGISTER per this many seconds for INVITEs not sent to our contact


def format_host(host: str) -> str:
    """A host as it goes into a URI or Via: an IPv6 address in brackets (RFC 3261 25.1)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def split_hostport(value: str, default_port: int) -> tuple[str, int]:
    if value.startswith("["):  # "[2001:db8::1]:5060": an IPv6 address, bracketed (RFC 3261 25.1)
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
        return host, int(port) if port.isdigit() else default_port
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return host, int(port) if port else default_port


def backoff_delay(failures: int, t: Timing, rng: random.Random | None = None) -> float:
    """Seconds before registration attempt n+1: exponential with jitter, capped; retries go on for ever."""
    base = min(t.backoff_max, t.backoff_min * 2 ** min(failures - 1, 16))
    return max(t.backoff_min, (rng or random).uniform(base / 2, base))


def token(rng: random.Random, nbytes: int) -> str:
    """Hex of `nbytes` random bytes (tags, Call-IDs, branches) from the injected source."""
    return f"{rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"


def new_branch(rng: random.Random) -> str:
    return "z9hG4bK" + token(rng, 8)


@dataclass
class Contact:
    """Where we are reachable: the host put in Via, Contact and SDP, the SIP port, the user part."""

    host: str
    port: int
    user: str = "screener"

    def header(self) -> str:
        return f"<sip:{self.user or 'screener'}@{format_host(self.host)}:{self.port}>"

    def via(self, branch: str) -> str:
        return f"SIP/2.0/UDP {format_host(self.host)}:{self.port};branch={branch};rport"


# -- what the state machine asks for -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SendRequest:
    """Send a request in a client transaction (Timer F = `timeout`); its result goes to `on_result`."""

    data: bytes
    dest: tuple[str, int]
    branch: str
    timeout: float


@dataclass(frozen=True)
class ResolveProvider:
    """Resolve the registrar / outbound proxy (`host`, `port`); answer with resolved() or resolve_failed()."""

    host: str
    port: int
    local_needed: bool  # also find the local address that reaches it (local_address = "auto")


@dataclass(frozen=True)
class StatusChange:
    state: str  # "registering", "registered", "failed", "unregistered"
    error: str | None = None
    expires: int | None = None


class RegState(enum.Enum):
    IDLE = "idle"
    RESOLVING = "resolving"  # waiting for the shell's DNS answer before a REGISTER exchange
    REGISTERING = "registering"  # a REGISTER (or its digest / 423 retry) in flight
    REGISTERED = "registered"  # waiting for the refresh; keepalive OPTIONS on their interval
    PINGING = "pinging"  # a keepalive OPTIONS in flight while registered
    BACKOFF = "backoff"  # waiting after a failure; probing with OPTIONS when the registrar was silent
    PROBING = "probing"  # a probe OPTIONS in flight during the backoff
    UNREGISTERING = "unregistering"  # REGISTER with Expires: 0 in flight (stop)
    STOPPED = "stopped"


class RegEvent(enum.Enum):
    START = "start"
    RESOLVED = "resolved"
    RESOLVE_FAILED = "resolve failed"
    OK = "2xx"
    RETRY = "challenge or 423"  # the same exchange goes on with credentials or a longer expiry
    FAILED = "failed"  # error response or no answer
    TIMER = "timer"
    PING = "ping sent"
    PING_OK = "ping answered"
    PING_LOST = "ping unanswered"
    REFRESH = "refresh due"  # also: asked to register again now
    STOP = "stop"
    STOP_DONE = "unregistered"


_S, _E = RegState, RegEvent
TRANSITIONS: dict[tuple[RegState, RegEvent], RegState] = {
    (_S.IDLE, _E.START): _S.RESOLVING,
    (_S.RESOLVING, _E.RESOLVED): _S.REGISTERING,
    (_S.RESOLVING, _E.RESOLVE_FAILED): _S.BACKOFF,
    (_S.REGISTERING, _E.RETRY): _S.REGISTERING,
    (_S.REGISTERING, _E.OK): _S.REGISTERED,
    (_S.REGISTERING, _E.FAILED): _S.BACKOFF,
    (_S.REGISTERED, _E.PING): _S.PINGING,
    (_S.REGISTERED, _E.REFRESH): _S.RESOLVING,
    (_S.PINGING, _E.PING_OK): _S.REGISTERED,
    (_S.PINGING, _E.REFRESH): _S.RESOLVING,
    (_S.PINGING, _E.PING_LOST): _S.BACKOFF,
    (_S.BACKOFF, _E.PING): _S.PROBING,
    (_S.BACKOFF, _E.REFRESH): _S.RESOLVING,
    (_S.PROBING, _E.PING_OK): _S.RESOLVING,
    (_S.PROBING, _E.PING_LOST): _S.BACKOFF,
    (_S.PROBING, _E.REFRESH): _S.RESOLVING,
    (_S.REGISTERED, _E.STOP): _S.UNREGISTERING,
    (_S.PINGING, _E.STOP): _S.UNREGISTERING,
    (_S.REGISTERING, _E.STOP): _S.UNREGISTERING,  # a refresh in flight while registered
    (_S.RESOLVING, _E.STOP): _S.UNREGISTERING,
    (_S.UNREGISTERING, _E.RETRY): _S.UNREGISTERING,
    (_S.UNREGISTERING, _E.STOP_DONE): _S.STOPPED,
}
for _state in RegState:
    if _state not in (RegState.UNREGISTERING, RegState.STOPPED):
        TRANSITIONS.setdefault((_state, RegEvent.STOP), RegState.STOPPED)  # nothing to unregister
    TRANSITIONS.setdefault((_state, RegEvent.STOP_DONE), RegState.STOPPED)
TRANSITIONS[(RegState.UNREGISTERING, RegEvent.STOP)] = RegState.UNREGISTERING
TRANSITIONS[(RegState.STOPPED, RegEvent.STOP)] = RegState.STOPPED


class Registration:
    """One account's binding at the registrar. Never gives up: a failure only means a backoff."""

    def __init__(self, cfg: SipConfig, timing: Timing, contact: Contact, rng: random.Random) -> None:
        self.cfg, self.timing, self.contact, self.rng = cfg, timing, contact, rng
        self.state = RegState.IDLE
        self.status = "unregistered"  # the last status reported
        self.outbox: list[SendRequest | ResolveProvider | StatusChange] = []
        self.timer_at: float | None = None
        self.dest: tuple[str, int] | None = None
        self.alternatives: list[tuple[str, int]] = []  # the next targets of the resolution (RFC 3263 4.3)
        self.expires = cfg.register_expires
        self._callid = token(rng, 10)
        self._tag = token(rng, 6)
        self._cseq = rng.randrange(1, 10000)
        self._challenge: dict[str, str] | None = None
        self._challenge_header = "authorization"
        self._nc = 0
        self._failures = 0
        self._auth_tries = self._tries_423 = 0
        self._branch = ""  # of the request in flight
        self._ping_sent = 0.0
        self._until = 0.0  # refresh due (registered) / backoff over (backoff)
        self._probe = False
        self._wake = False  # asked to register again while a ping was in flight
        self._rebind_reason: str | None = None
        self._last_rebind = -REBIND_MIN_INTERVAL

    # -- inputs --

    def start(self, now: float) -> None:
        self._go(RegEvent.START)
        self._status("registering")
        self._resolve()

    def stop(self, now: float) -> None:
        """Unregister (when registered) and stop; STOPPED at once when there is nothing to unregister."""
        if self.state in (RegState.UNREGISTERING, RegState.STOPPED):
            return
        registered = self.status == "registered" and self.dest is not None
        self._branch = ""
        if registered:
            self._go(RegEvent.STOP)
            self.timer_at = None
            self._auth_tries = 0
            self._send_register(0, now)
        else:
            self._go(RegEvent.STOP)
            self._finish()

    def rebind(self, reason: str, now: float) -> bool:
        """Register again now (at most once per REBIND_MIN_INTERVAL, only while registered)."""
        if self.status != "registered" or now - self._last_rebind < REBIND_MIN_INTERVAL:
            return False
        if self.state not in (RegState.REGISTERED, RegState.PINGING):
            return False
        self._last_rebind = now
        self._rebind_reason = reason
        if self.state is RegState.PINGING:
            self._wake = True
        else:
            self._refresh(now)
        return True

    def resolved(self, dest: tuple[str, int], local: str | None, now: float,
                 alternatives: tuple[tuple[str, int], ...] = ()) -> None:
        """`dest` answers the ResolveProvider; `alternatives` are the targets to fail over to, in order."""
        if self.state is not RegState.RESOLVING:
            return
        host = self._target()[0]
        if self.cfg.local_address == "auto":
            if local is None:
                self._fail(f"no local address to reach {host}", None, False, now, RegEvent.RESOLVE_FAILED)
                return
            self.contact.host = local
        self.dest = dest
        self.alternatives = [a for a in alternatives if a != dest]
        self._go(RegEvent.RESOLVED)
        self._auth_tries = self._tries_423 = 0
        self._send_register(self.expires, now)

    def resolve_failed(self, error: str, now: float) -> None:
        if self.state is RegState.RESOLVING:
            self._fail(f"cannot resolve {self._target()[0]}: {error}", None, False, now, RegEvent.RESOLVE_FAILED)

    def owns(self, branch: str) -> bool:
        return bool(branch) and branch == self._branch

    def on_result(self, branch: str, resp: Message | None, now: float) -> None:
        """The final response of our request with `branch` (None: Timer F fired first)."""
        if not self.owns(branch):
            return
        self._branch = ""
        if self.state in (RegState.REGISTERING, RegState.UNREGISTERING):
            self._register_result(resp, now)
        elif self.state in (RegState.PINGING, RegState.PROBING):
            self._ping_result(resp, now)

    def on_timer(self, now: float) -> None:
        if self.timer_at is None or now < self.timer_at:
            return
        self.timer_at = None
        if self.state is RegState.REGISTERED:
            self._keepalive(now)
        elif self.state is RegState.BACKOFF:
            if now >= self._until:
                self._refresh(now)
            else:
                self._ping(now)

    # -- the REGISTER exchange --

    def _register_result(self, resp: Message | None, now: float) -> None:
        stopping = self.state is RegState.UNREGISTERING
        dest = self.dest or ("", 0)
        if resp is None:
            if self.alternatives and not stopping:  # RFC 3263 4.3: a target that does not answer -> the next
                self.dest = self.alternatives.pop(0)
                log.info("screener: no answer from %s:%d: trying %s:%d", format_host(dest[0]), dest[1],
                         format_host(self.dest[0]), self.dest[1])
                self._send_register(self.expires, now)
                return
            self._fail(f"no answer from {format_host(dest[0])}:{dest[1]}", None, True, now)
            return
        code = resp.status
        expires = 0 if stopping else self.expires
        if 200 <= code < 300:
            if stopping:
                self._finish()
                return
            self._failures = 0
            granted = self._granted(resp, expires) or self.expires
            self._go(RegEvent.OK)
            self._status("registered", None, granted)
            lo, hi = self.timing.refresh
            period = min(granted * self.rng.uniform(lo, hi), self.timing.refresh_max)
            self._until = now + max(1.0, period)
            self._wait_registered(now)
            return
        if code in (401, 407) and self._auth_tries < 2:
            header = "www-authenticate" if code == 401 else "proxy-authenticate"
            try:
                challenge = auth.best_challenge(resp.get_all(header))
            except ValueError as e:
                self._fail(f"{code} {resp.reason}: {e}", None, False, now)
                return
            stale = challenge.get("stale", "").lower() == "true"
            if self._challenge is not None and not stale and self._auth_tries > 0:
                self._fail(f"{code} {resp.reason}: wrong user name or password?", None, False, now)
                return
            self._auth_tries += 1
            self._challenge, self._nc = challenge, 0
            self._challenge_header = "authorization" if code == 401 else "proxy-authorization"
            self._go(RegEvent.RETRY)
            self._send_register(expires, now)
            return
        if code == 423 and self._tries_423 < 3 and not stopping:
            self._tries_423 += 1
            try:
                self.expires = max(self.expires, int((resp.get("min-expires") or "").strip()))
            except ValueError:
                self._fail(f"423 {resp.reason} without a usable Min-Expires", None, False, now)
                return
            self._go(RegEvent.RETRY)
            self._send_register(self.expires, now)
            return
        retry_after = None
        ra = (resp.get("retry-after") or "").partition(";")[0].partition("(")[0].strip()
        if ra.isdigit():
            retry_after = float(ra)
        hint = {401: "wrong user name or password?", 407: "wrong user name or password?",
                403: "wrong password?", 404: "unknown user name?"}.get(code)
        if code in (401, 407):
            self._challenge = None
        self._fail(f"{code} {resp.reason}" + (f": {hint}" if hint else ""), retry_after, False, now)

    def _fail(self, error: str, retry_after: float | None, unreachable: bool, now: float,
              event: RegEvent = RegEvent.FAILED) -> None:
        if self.state is RegState.UNREGISTERING:
            self._finish()  # best effort: the unregister is not retried
            return
        self._go(event)
        self._failures += 1
        self._status("failed", error)
        delay = retry_after if retry_after is not None else backoff_delay(self._failures, self.timing, self.rng)
        # only a registrar we could not reach is probed; one that refused us is not asked again early
        self._backoff(delay, probe=unreachable, now=now)

    def _finish(self) -> None:
        self._go(RegEvent.STOP_DONE)
        self.timer_at = None
        self._branch = ""
        self._status("unregistered")

    def _granted(self, resp: Message, requested: int) -> int:
        """The expiry the registrar granted to our Contact (its expires param, else Expires)."""
        # B17: the refresh follows what the registrar granted, not a hard-coded 115 s
        ours = f"{format_host(self.contact.host)}:{self.contact.port}"
        for c in resp.get_all("contact"):
            try:
                na = name_addr(c)
            except ParseError:
                continue
            if ours in na.uri and na.params.get("expires", "").isdigit():
                return int(na.params["expires"])
        exp = (resp.get("expires") or "").strip()
        return int(exp) if exp.isdigit() else requested

    # -- waiting: refresh, keepalive, backoff, probe --

    def _refresh(self, now: float) -> None:
        self._go(RegEvent.REFRESH)
        self.timer_at = None
        if self._rebind_reason:
            log.info("screener: registering again: %s", self._rebind_reason)
            self._rebind_reason = None
        self._resolve()

    def _wait_registered(self, now: float) -> None:
        interval = self.cfg.keepalive_interval
        self.timer_at = min(now + interval, self._until) if interval else self._until

    def _keepalive(self, now: float) -> None:
        if now >= self._until or not self.cfg.keepalive_interval:
            self._refresh(now)
            return
        self._ping(now)

    def _backoff(self, delay: float, probe: bool, now: float) -> None:
        """Wait before the next REGISTER; with `probe`, ping with OPTIONS and end the wait when one is answered.

        A registrar that was down answers again long before a backoff grown to backoff_max is over: a probe
        goes out every probe_interval (keepalive_interval when shorter) and the first one answered ends the
        wait, so the binding is back within about probe_interval + options_timeout of the registrar's return.
        """
        self._until, self._probe = now + delay, probe
        self._backoff_wait(now)

    def _backoff_wait(self, now: float) -> None:
        left = self._until - now
        if left <= 0:
            self._refresh(now)
            return
        interval = self._probe_interval()
        self.timer_at = self._until if not self._probe or left <= interval else now + interval

    def _probe_interval(self) -> float:
        keepalive = self.cfg.keepalive_interval
        return min(keepalive, self.timing.probe_interval) if keepalive else self.timing.probe_interval

    def _ping(self, now: float) -> None:
        if self.dest is None:
            self._refresh(now)  # not resolved yet: the REGISTER attempt resolves and reports why
            return
        self._go(RegEvent.PING)
        self._ping_sent = now
        self._send(self._options_request(), self.dest, self.timing.options_timeout)

    def _ping_result(self, resp: Message | None, now: float) -> None:
        if self.state is RegState.PROBING:
            if resp is not None:
                log.info("screener: the SIP registrar answers again: registering")
                self._refresh(now)
            else:
                self._go(RegEvent.PING_LOST)
                self._backoff_wait(now)
            return
        # a keepalive while registered
        if resp is None:
            dest = self.dest or ("", 0)
            self._go(RegEvent.PING_LOST)
            self._failures = 1
            self._status("failed", f"no answer from {format_host(dest[0])}:{dest[1]}")
            self._backoff(backoff_delay(1, self.timing, self.rng), probe=True, now=now)
            return
        if self._wake or now >= self._until:
            self._wake = False
            self._refresh(now)
            return
        if now - self._ping_sent > self.timing.t1:
            # answered, but only a retransmission was: the registrar was away (restarting?) when the first
            # one came, and may have come back without our binding. One REGISTER settles it. A registrar that
            # restarted between two pings is not noticed here (its replies carry no identity to compare):
            # refresh_max bounds that case.
            self._rebind_reason = "a keepalive was answered only after retransmissions"
            self._refresh(now)
            return
        self._go(RegEvent.PING_OK)
        self._wait_registered(now)

    # -- building requests --

    def _target(self) -> tuple[str, int]:
        """Where requests go: the outbound proxy when set, else the registrar."""
        if self.cfg.outbound_proxy:
            return split_hostport(self.cfg.outbound_proxy, 5060)
        return self.cfg.server, self.cfg.port

    def _resolve(self) -> None:
        host, port = self._target()
        self.outbox.append(ResolveProvider(host, port, self.cfg.local_address == "auto"))

    def aor_domain(self) -> str:
        cfg = self.cfg
        if cfg.domain:
            return format_host(cfg.domain)
        host = format_host(cfg.server)
        return host if cfg.port == 5060 else f"{host}:{cfg.port}"

    def _send_register(self, expires: int, now: float) -> None:
        assert self.dest is not None
        timeout = self.timing.register_timeout if expires else self.timing.stop_timeout
        self._send(self._register_request(expires), self.dest, timeout)

    def _send(self, data: bytes, dest: tuple[str, int], timeout: float) -> None:
        self.outbox.append(SendRequest(data, dest, self._branch, timeout))

    def _register_request(self, expires: int) -> bytes:
        cfg = self.cfg
        uri = f"sip:{self.aor_domain()}"
        aor = f"<sip:{cfg.username}@{format_host(cfg.sip_domain)}>"
        self._cseq += 1
        self._branch = new_branch(self.rng)
        headers = [("via", self.contact.via(self._branch)), ("max-forwards", "70")]
        if cfg.outbound_proxy:
            host, port = split_hostport(cfg.outbound_proxy, 5060)
            headers.append(("route", f"<sip:{format_host(host)}:{port};lr>"))
        headers += [("from", f"{aor};tag={self._tag}"), ("to", aor), ("call-id", self._callid),
                    ("cseq", f"{self._cseq} REGISTER"), ("contact", self.contact.header()),
                    ("expires", str(expires)), ("allow", ALLOW), ("user-agent", USER_AGENT)]
        if self._challenge is not None:
            self._nc += 1
            try:
                value = auth.authorization(self._challenge, "REGISTER", uri, cfg.auth_user, cfg.password, self._nc,
                                           token(self.rng, 8))
                headers.append((self._challenge_header, value))
            except ValueError:
                self._challenge = None
        return Message(method="REGISTER", uri=uri, headers=headers).to_bytes()

    def _options_request(self) -> bytes:
        domain = self.aor_domain()
        self._branch = new_branch(self.rng)
        headers = [("via", self.contact.via(self._branch)), ("max-forwards", "70"),
                   ("from", f"<sip:{self.cfg.username}@{domain}>;tag={token(self.rng, 6)}"),
                   ("to", f"<sip:{domain}>"), ("call-id", token(self.rng, 10)), ("cseq", "1 OPTIONS"),
                   ("contact", self.contact.header()), ("user-agent", USER_AGENT)]
        return Message(method="OPTIONS", uri=f"sip:{domain}", headers=headers).to_bytes()

    # -- state and status --

    def _go(self, event: RegEvent) -> None:
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise RuntimeError(f"registration: {event.name} in state {self.state.name}") from None

    def _status(self, state: str, error: str | None = None, expires: int | None = None) -> None:
        self.status = state
        self.outbox.append(StatusChange(state, error, expires))
