"""SIP transactions over UDP (RFC 3261 17, with RFC 6026's Accepted state), pure.

Each transaction is an object with an enum state, an explicit transition table and at most one pending timer
(`timer_at`, a time on the caller's clock). Inputs are method calls carrying `now`; outputs are the datagrams
to send, returned as lists. Nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

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


class InvalidTransition(RuntimeError):
    """An event the transaction's table does not allow in its current state (a bug in the caller)."""


def _step(table: dict[tuple[enum.Enum, enum.Enum], enum.Enum], state: enum.Enum, event: enum.Enum) -> enum.Enum:
    try:
        return table[(state, event)]
    except KeyError:
        raise InvalidTransition(f"{event.name} in state {state.name}") from None


# -- INVITE server transaction (17.2.1; 2xx retransmitted in Accepted as RFC 6026 describes) -------------------


class SIState(enum.Enum):
    PROCEEDING = "proceeding"
    COMPLETED = "completed"  # a non-2xx final sent: retransmitted (Timer G) until the ACK or Timer H
    ACCEPTED = "accepted"  # a 2xx sent: retransmitted until the ACK or Timer H (RFC 6026, 13.3.1.4)
    CONFIRMED = "confirmed"  # the ACK of a non-2xx came: absorb retransmissions until Timer I
    TERMINATED = "terminated"


class SIEvent(enum.Enum):
    PROVISIONAL = "provisional"
    FINAL_2XX = "2xx"
    FINAL_ERROR = "300-699"
    ACK = "ack"
    TIMER_G = "timer G"
    TIMER_H = "timer H"
    TIMER_I = "timer I"


SERVER_INVITE: dict[tuple[SIState, SIEvent], SIState] = {
    (SIState.PROCEEDING, SIEvent.PROVISIONAL): SIState.PROCEEDING,
    (SIState.PROCEEDING, SIEvent.FINAL_2XX): SIState.ACCEPTED,
    (SIState.PROCEEDING, SIEvent.FINAL_ERROR): SIState.COMPLETED,
    (SIState.COMPLETED, SIEvent.TIMER_G): SIState.COMPLETED,
    (SIState.COMPLETED, SIEvent.ACK): SIState.CONFIRMED,
    (SIState.COMPLETED, SIEvent.TIMER_H): SIState.TERMINATED,
    (SIState.ACCEPTED, SIEvent.TIMER_G): SIState.ACCEPTED,
    (SIState.ACCEPTED, SIEvent.ACK): SIState.TERMINATED,
    (SIState.ACCEPTED, SIEvent.TIMER_H): SIState.TERMINATED,
    (SIState.CONFIRMED, SIEvent.ACK): SIState.CONFIRMED,
    (SIState.CONFIRMED, SIEvent.TIMER_I): SIState.TERMINATED,
}


class ServerInviteTransaction:
    """An INVITE we received: its last response is what a retransmitted INVITE gets again."""

    def __init__(self, branch: str, timing: Timing) -> None:
        self.branch = branch
        self.timing = timing
        self.state = SIState.PROCEEDING
        self.last_response = b""
        self.final_code: int | None = None
        self.timed_out = False  # Timer H fired: the final response was never ACKed
        self.timer_at: float | None = None
        self._interval = timing.t1
        self._deadline = 0.0
        self._pending: SIEvent | None = None

    def _go(self, event: SIEvent) -> None:
        self.state = _step(SERVER_INVITE, self.state, event)  # type: ignore[arg-type,assignment]
        if self.state is SIState.TERMINATED:
            self.timer_at = self._pending = None

    def respond(self, code: int, data: bytes, now: float) -> list[bytes]:
        """Send a response of the TU; a final one starts Timers G and H."""
        if code < 200:
            self._go(SIEvent.PROVISIONAL)
            self.last_response = data
            return [data]
        self._go(SIEvent.FINAL_2XX if code < 300 else SIEvent.FINAL_ERROR)
        self.last_response, self.final_code = data, code
        self._interval = self.timing.t1
        self._deadline = now + 64 * self.timing.t1
        self._arm(now)
        return [data]

    def _arm(self, now: float) -> None:
        if now + self._interval < self._deadline:
            self.timer_at, self._pending = now + self._interval, SIEvent.TIMER_G
        else:
            self.timer_at, self._pending = self._deadline, SIEvent.TIMER_H

    def retransmission(self) -> bytes:
        """What a retransmitted INVITE gets: the last response (b"" when none was sent yet)."""
        return self.last_response if self.state is not SIState.TERMINATED else b""

    def ack(self, now: float) -> bool:
        """The ACK of our final response; False when the transaction expected none."""
        if self.state not in (SIState.COMPLETED, SIState.ACCEPTED, SIState.CONFIRMED):
            return False
        first = self.state is not SIState.CONFIRMED
        self._go(SIEvent.ACK)
        if self.state is SIState.CONFIRMED and first:
            self.timer_at, self._pending = now + self.timing.t4, SIEvent.TIMER_I
        return first

    def on_timer(self, now: float) -> list[bytes]:
        if self.timer_at is None or now < self.timer_at or self._pending is None:
            return []
        event = self._pending
        self._go(event)
        if event is SIEvent.TIMER_G:
            self._interval = min(self._interval * 2, self.timing.t2)
            self._arm(now)
            return [self.last_response]
        if event is SIEvent.TIMER_H:
            self.timed_out = True
        return []

    def terminate(self) -> None:
        """Stop at once (the agent stops)."""
        self.state, self.timer_at, self._pending = SIState.TERMINATED, None, None


# -- non-INVITE server transaction (17.2.2) ---------------------------------------------------------------------


class NSState(enum.Enum):
    TRYING = "trying"
    COMPLETED = "completed"  # final sent: a retransmitted request gets it again until Timer J
    TERMINATED = "terminated"


class NSEvent(enum.Enum):
    FINAL = "final"
    TIMER_J = "timer J"


SERVER_NON_INVITE: dict[tuple[NSState, NSEvent], NSState] = {
    (NSState.TRYING, NSEvent.FINAL): NSState.COMPLETED,
    (NSState.COMPLETED, NSEvent.TIMER_J): NSState.TERMINATED,
}


class ServerTransaction:
    """A BYE, OPTIONS, CANCEL... we received: answered once, the same answer to its retransmissions (Timer J)."""

    def __init__(self, branch: str, method: str, timing: Timing) -> None:
        self.branch, self.method, self.timing = branch, method, timing
        self.state = NSState.TRYING
        self.last_response = b""
        self.timer_at: float | None = None

    def respond(self, data: bytes, now: float) -> list[bytes]:
        self.state = _step(SERVER_NON_INVITE, self.state, NSEvent.FINAL)  # type: ignore[arg-type,assignment]
        self.last_response = data
        self.timer_at = now + 64 * self.timing.t1
        return [data]

    def retransmission(self) -> bytes:
        return self.last_response if self.state is NSState.COMPLETED else b""

    def on_timer(self, now: float) -> list[bytes]:
        if self.timer_at is not None and now >= self.timer_at:
            self.state = _step(SERVER_NON_INVITE, self.state, NSEvent.TIMER_J)  # type: ignore[arg-type,assignment]
            self.timer_at = None
        return []


# -- non-INVITE client transaction (17.1.2) ---------------------------------------------------------------------


class NCState(enum.Enum):
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"  # final received: its retransmissions are absorbed until Timer K
    TERMINATED = "terminated"


class NCEvent(enum.Enum):
    PROVISIONAL = "1xx"
    FINAL = "final"
    TIMER_E = "timer E"
    TIMER_F = "timer F"
    TIMER_K = "timer K"


CLIENT_NON_INVITE: dict[tuple[NCState, NCEvent], NCState] = {
    (NCState.TRYING, NCEvent.TIMER_E): NCState.TRYING,
    (NCState.TRYING, NCEvent.PROVISIONAL): NCState.PROCEEDING,
    (NCState.TRYING, NCEvent.FINAL): NCState.COMPLETED,
    (NCState.TRYING, NCEvent.TIMER_F): NCState.TERMINATED,
    (NCState.PROCEEDING, NCEvent.TIMER_E): NCState.PROCEEDING,
    (NCState.PROCEEDING, NCEvent.PROVISIONAL): NCState.PROCEEDING,
    (NCState.PROCEEDING, NCEvent.FINAL): NCState.COMPLETED,
    (NCState.PROCEEDING, NCEvent.TIMER_F): NCState.TERMINATED,
    (NCState.COMPLETED, NCEvent.PROVISIONAL): NCState.COMPLETED,
    (NCState.COMPLETED, NCEvent.FINAL): NCState.COMPLETED,
    (NCState.COMPLETED, NCEvent.TIMER_K): NCState.TERMINATED,
}


class ClientTransaction:
    """A request we send (REGISTER, OPTIONS, BYE): retransmitted (Timer E) until a final response or Timer F.

    `timeout` is Timer F: 64*T1 by the RFC, shorter for REGISTER and OPTIONS so that a silent registrar shows
    early. `result` holds the final response once there is one; `timed_out` says Timer F fired first.
    """

    def __init__(self, data: bytes, dest: tuple[str, int], branch: str, timing: Timing, timeout: float,
                 now: float) -> None:
        self.data, self.dest, self.branch, self.timing = data, dest, branch, timing
        self.state = NCState.TRYING
        self.sent_at = now
        self.final_code: int | None = None
        self.timed_out = False
        self._interval = timing.t1
        self._deadline = now + timeout
        self._pending = NCEvent.TIMER_E
        self.timer_at: float | None = None
        self._arm(now)

    def _go(self, event: NCEvent) -> None:
        self.state = _step(CLIENT_NON_INVITE, self.state, event)  # type: ignore[arg-type,assignment]
        if self.state is NCState.TERMINATED:
            self.timer_at = None

    def _arm(self, now: float) -> None:
        if now + self._interval < self._deadline:
            self.timer_at, self._pending = now + self._interval, NCEvent.TIMER_E
        else:
            self.timer_at, self._pending = max(now, self._deadline), NCEvent.TIMER_F

    def start(self) -> list[bytes]:
        return [self.data]

    def on_response(self, code: int, now: float) -> bool:
        """A response carrying our branch; True when it is the final response the TU waits for."""
        if self.state is NCState.TERMINATED:
            return False
        if code < 200:
            self._go(NCEvent.PROVISIONAL)
            if self.state is NCState.PROCEEDING:
                self._interval = self.timing.t2  # 17.1.2.2: keep going, but at T2
            return False
        first = self.state is not NCState.COMPLETED
        self._go(NCEvent.FINAL)
        if first:
            self.final_code = code
            self.timer_at, self._pending = now + self.timing.t4, NCEvent.TIMER_K
        return first

    def on_timer(self, now: float) -> list[bytes]:
        if self.timer_at is None or now < self.timer_at:
            return []
        event = self._pending
        self._go(event)
        if event is NCEvent.TIMER_E:
            self._interval = min(self._interval * 2, self.timing.t2)
            self._arm(now)
            return [self.data]
        if event is NCEvent.TIMER_F:
            self.timed_out = True
        return []

    def terminate(self) -> None:
        self.state, self.timer_at = NCState.TERMINATED, None


# -- INVITE client transaction (17.1.1): for calls we place (ring-through) -----------------------------------


class CIState(enum.Enum):
    CALLING = "calling"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"  # a non-2xx final came and was ACKed: retransmissions ACKed again until Timer D
    ACCEPTED = "accepted"  # a 2xx came: further 2xx go to the TU (RFC 6026 Timer M, 64*T1)
    TERMINATED = "terminated"


class CIEvent(enum.Enum):
    PROVISIONAL = "1xx"
    FINAL_2XX = "2xx"
    FINAL_ERROR = "300-699"
    TIMER_A = "timer A"
    TIMER_B = "timer B"
    TIMER_D = "timer D"
    TIMER_M = "timer M"


CLIENT_INVITE: dict[tuple[CIState, CIEvent], CIState] = {
    (CIState.CALLING, CIEvent.TIMER_A): CIState.CALLING,
    (CIState.CALLING, CIEvent.TIMER_B): CIState.TERMINATED,
    (CIState.CALLING, CIEvent.PROVISIONAL): CIState.PROCEEDING,
    (CIState.CALLING, CIEvent.FINAL_2XX): CIState.ACCEPTED,
    (CIState.CALLING, CIEvent.FINAL_ERROR): CIState.COMPLETED,
    (CIState.PROCEEDING, CIEvent.PROVISIONAL): CIState.PROCEEDING,
    (CIState.PROCEEDING, CIEvent.FINAL_2XX): CIState.ACCEPTED,
    (CIState.PROCEEDING, CIEvent.FINAL_ERROR): CIState.COMPLETED,
    (CIState.COMPLETED, CIEvent.FINAL_ERROR): CIState.COMPLETED,
    (CIState.COMPLETED, CIEvent.TIMER_D): CIState.TERMINATED,
    (CIState.ACCEPTED, CIEvent.FINAL_2XX): CIState.ACCEPTED,
    (CIState.ACCEPTED, CIEvent.TIMER_M): CIState.TERMINATED,
}


class ClientInviteTransaction:
    """An INVITE we send: retransmitted (Timer A) until a response or Timer B; non-2xx finals ACKed by us.

    `make_ack(response)` builds the ACK for a non-2xx final (same branch, RFC 3261 17.1.1.3); the 2xx's ACK
    belongs to the dialog. `on_response` returns (datagrams to send, whether the TU should see this response).
    """

    def __init__(self, data: bytes, dest: tuple[str, int], branch: str, timing: Timing, now: float) -> None:
        self.data, self.dest, self.branch, self.timing = data, dest, branch, timing
        self.state = CIState.CALLING
        self.timed_out = False
        self.ack: bytes = b""
        self._interval = timing.t1
        self._deadline = now + 64 * timing.t1
        self._pending = CIEvent.TIMER_A
        self.timer_at: float | None = now + timing.t1

    def _go(self, event: CIEvent) -> None:
        self.state = _step(CLIENT_INVITE, self.state, event)  # type: ignore[arg-type,assignment]
        if self.state is CIState.TERMINATED:
            self.timer_at = None

    def start(self) -> list[bytes]:
        return [self.data]

    def on_response(self, code: int, ack: bytes, now: float) -> tuple[list[bytes], bool]:
        if self.state is CIState.TERMINATED:
            return [], False
        if code < 200:
            if self.state is CIState.COMPLETED or self.state is CIState.ACCEPTED:
                return [], False
            self._go(CIEvent.PROVISIONAL)
            self.timer_at = None  # 17.1.1.2: no more retransmissions, and no Timer B in Proceeding
            return [], True
        if code < 300:
            if self.state is CIState.COMPLETED:
                return [], False
            self._go(CIEvent.FINAL_2XX)
            self.timer_at, self._pending = now + 64 * self.timing.t1, CIEvent.TIMER_M
            return [], True
        if self.state is CIState.ACCEPTED:
            return [], False
        first = self.state is not CIState.COMPLETED
        self._go(CIEvent.FINAL_ERROR)
        if first:
            self.ack = ack
            self.timer_at, self._pending = now + 32.0, CIEvent.TIMER_D  # 17.1.1.2: at least 32 s on UDP
        return [self.ack], first

    def on_timer(self, now: float) -> list[bytes]:
        if self.timer_at is None or now < self.timer_at:
            return []
        event = self._pending
        self._go(event)
        if event is CIEvent.TIMER_A:
            self._interval *= 2  # 17.1.1.2: Timer A doubles without the T2 cap
            if now + self._interval < self._deadline:
                self.timer_at = now + self._interval
            else:
                self.timer_at, self._pending = self._deadline, CIEvent.TIMER_B
            return [self.data]
        if event is CIEvent.TIMER_B:
            self.timed_out = True
        return []

    def terminate(self) -> None:
        """Stop at once (a CANCEL that never brought the final response, RFC 3261 9.1)."""
        self.state, self.timer_at = CIState.TERMINATED, None
