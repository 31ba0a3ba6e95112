"""Helpers for driving the sans-I/O core on the test's own clock: a registering line whose DNS answers at once,
the time each datagram went out, and a registrar that answers in datagrams (no tests here)."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable

from sip_core_support import PROVIDER, US, reply

from screener.config import SipConfig
from screener.sip import auth
from screener.sip.core import Event, SipCore
from screener.sip.message import Message, parse
from screener.sip.registration import Contact, ResolveProvider, StatusChange
from screener.sip.transactions import Timing

Addr = tuple[str, int]
_BRANCH = re.compile(rb"branch=([^;,\s]+)")


def line_core(*, timing: Timing | None = None, seed: int = 1, **cfg: object) -> SipCore:
    """A registering SipCore for the account screener/secret at PROVIDER; `cfg` overrides SipConfig fields."""
    fields: dict[str, object] = dict(server=PROVIDER[0], port=PROVIDER[1], username="screener", password="secret",
                                     local_address=US[0], sip_port=US[1], keepalive_interval=0,
                                     register_expires=3600)
    fields.update(cfg)
    sip = SipConfig(**fields)  # type: ignore[arg-type]
    core = SipCore(sip, Contact(US[0], US[1], sip.username), timing=timing or Timing(), rng=random.Random(seed),
                   register=True)
    core.add_provider_ips({PROVIDER[0]})
    return core


class Out:
    """A datagram the core sent: when, where to, and the message (parsed when first asked for)."""

    def __init__(self, at: float, data: bytes, dest: Addr) -> None:
        self.at, self.data, self.dest = at, data, dest
        self._msg: Message | None = None

    @property
    def msg(self) -> Message:
        if self._msg is None:
            self._msg = parse(self.data)
        return self._msg

    def is_request(self, method: str | None) -> bool:
        return method is None or self.data.startswith(method.encode() + b" ")

    @property
    def transaction(self) -> bytes:
        """Method and top Via branch, without parsing (the core's own datagrams put the Via first)."""
        found = _BRANCH.search(self.data)
        return self.data.split(b" ", 1)[0] + b" " + (found.group(1) if found else b"")


class Line:
    """A SipCore and its clock. Timers fire only when the test moves the clock (`at`, `next_sent`); every
    ResolveProvider is answered at once with `dns` (None: the look-up fails)."""

    def __init__(self, core: SipCore | None = None, **kw: object) -> None:
        self.core = core or line_core(**kw)  # type: ignore[arg-type]
        self.now = 0.0
        self.dns: Addr | None = PROVIDER
        self.out: list[Out] = []
        self.events: list[tuple[float, Event]] = []
        self._taken = 0  # how much of `out` next_sent() has gone through

    # -- what came out --

    @property
    def statuses(self) -> list[StatusChange]:
        return [e for _, e in self.events if isinstance(e, StatusChange)]

    def status_times(self, state: str) -> list[float]:
        return [t for t, e in self.events if isinstance(e, StatusChange) and e.state == state]

    def resolves(self) -> list[float]:
        return [t for t, e in self.events if isinstance(e, ResolveProvider)]

    def sent_between(self, start: float, end: float, method: str | None = None) -> list[Out]:
        return [o for o in self.out if start <= o.at <= end and o.is_request(method)]

    def attempts(self, method: str = "REGISTER") -> list[Out]:
        """The requests of `method` that are not retransmissions (each has a branch of its own)."""
        seen: set[bytes] = set()
        first = []
        for o in self.out:
            if o.is_request(method) and o.transaction not in seen:
                seen.add(o.transaction)
                first.append(o)
        return first

    # -- driving it --

    def pump(self) -> None:
        core = self.core
        while True:
            self.out += [Out(self.now, d, a) for d, a in core.datagrams_to_send()]
            events = core.events()
            if not events:
                return
            self.events += [(self.now, e) for e in events]
            for e in events:
                if isinstance(e, ResolveProvider):
                    if self.dns is None:
                        core.resolve_failed("no such host", set(), self.now)
                    else:
                        core.resolved(self.dns, None, {self.dns[0]}, self.now)

    def start(self) -> Line:
        self.core.start_registration(self.now)
        self.pump()
        return self

    def at(self, t: float) -> None:
        """Move the clock to `t`, firing every timer due on the way at its own time; next_sent() then looks only
        at what is sent after `t`."""
        self._advance(t)
        self._taken = len(self.out)

    def _advance(self, t: float) -> None:
        while (when := self.core.next_timer()) is not None and when <= t:
            self.now = max(self.now, when)
            self.core.handle_timer(self.now)
            self.pump()
        self.now = max(self.now, t)

    def next_sent(self, pred: Callable[[Message], bool], within: float = 3600.0, fresh: bool = False) -> Out:
        """The next datagram sent that matches `pred` (the ones before it are passed over), moving the clock on
        from timer to timer as long as it takes, up to `within` seconds. `fresh`: no retransmission (a request
        whose branch went out before)."""
        deadline = self.now + within
        while True:
            while self._taken < len(self.out):
                o = self.out[self._taken]
                self._taken += 1
                if pred(o.msg) and not (fresh and self._sent_before(self._taken - 1)):
                    return o
            when = self.core.next_timer()
            if when is None or when > deadline:
                raise AssertionError(f"nothing matching was sent by {deadline}; sent: "
                                     f"{[(o.at, o.msg.method or o.msg.status) for o in self.out]}")
            self._advance(when)

    def _sent_before(self, i: int) -> bool:
        """Whether out[i] is a retransmission: a request of a transaction that went out before."""
        key = self.out[i].transaction
        return any(o.transaction == key for o in self.out[:i])

    def request(self, method: str, within: float = 3600.0, fresh: bool = True) -> Message:
        """The next request of `method` sent, not a retransmission unless `fresh` is False."""
        return self.next_sent(lambda m: m.method == method, within, fresh).msg

    def receive(self, data: bytes, src: Addr = PROVIDER) -> None:
        self.core.receive_datagram(data, src, self.now)
        self.pump()

    def answer(self, req: Message, code: int, reason: str, *extra: str) -> None:
        self.receive(reply(req, code, reason, *extra))

    def register(self, *, expires: int = 3600, qop: bool = False, within: float = 3600.0) -> Message:
        """Be the registrar for one REGISTER exchange: a digest challenge, then 200 granting `expires` to our
        Contact. Returns the REGISTER with credentials (checked)."""
        req = self.request("REGISTER", within)
        if "authorization" not in req:
            chal = 'Digest realm="provider.example", nonce="n0nce", opaque="op"' + (', qop="auth"' if qop else "")
            self.answer(req, 401, "Unauthorized", f"WWW-Authenticate: {chal}")
            req = self.request("REGISTER", 0.0)
        check_digest(req.get("authorization") or "", "REGISTER", "secret")
        self.answer(req, 200, "OK", f"Contact: {req.get('contact')};expires={expires}")
        return req


def md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


def check_digest(header: str, method: str, password: str) -> dict[str, str]:
    """The fields of an MD5 Authorization header, after checking its response the way a registrar does."""
    p = auth.parse_challenge(header)
    ha1 = md5(f"{p['username']}:{p['realm']}:{password}")
    ha2 = md5(f"{method}:{p['uri']}")
    if p.get("qop") == "auth":
        want = md5(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:auth:{ha2}")
    else:
        want = md5(f"{ha1}:{p['nonce']}:{ha2}")
    assert p["response"] == want, "digest response does not verify"
    return p
