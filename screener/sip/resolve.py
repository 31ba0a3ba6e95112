"""Locating the provider's SIP servers (RFC 3263 4): NAPTR, then SRV, then A/AAAA, with dnspython.

`resolve()` returns the targets in the order to try them; the caller fails over to the next one when a target
does not answer. The resolver is an argument, so tests point it at a DNS server of their own.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.resolver

DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
_NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
_SRV_PREFIXES = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}


class ResolveError(OSError):
    """No address for a SIP server (an OSError, like socket.gaierror, so callers catch one kind)."""


@dataclass(frozen=True)
class Target:
    """One place to send requests to: `host` is the name it came from (the literal itself for an IP)."""

    host: str
    ip: str
    port: int
    transport: str = "udp"

    @property
    def addr(self) -> tuple[str, int]:
        """(ip, port) for sendto()."""
        return self.ip, self.port


def resolve(host: str, port: int | None = None, transport: str | None = None, *,
            resolver: dns.resolver.Resolver | None = None, transports: tuple[str, ...] = ("udp",),
            address_types: tuple[str, ...] = ("A", "AAAA"), rng: random.Random | None = None) -> list[Target]:
    """The targets for a SIP URI's host, port and transport parameter, in the order to try them (RFC 3263 4).

    An IP address or an explicit port skips NAPTR and SRV; an explicit transport skips NAPTR. `transports` are
    the ones the caller can use, in its order of preference. Raises ResolveError when nothing resolves.
    """
    host = host.strip().removeprefix("[").removesuffix("]").rstrip(".")
    if not host:
        raise ResolveError("empty host name")
    if transport is not None:
        transport = transport.lower()
        if transport not in DEFAULT_PORTS:
            raise ResolveError(f"unsupported transport {transport!r}")
        transports = (transport,)
    if not transports:
        raise ResolveError("no transport to resolve for")
    first = transports[0]
    if _is_ip(host):
        return [Target(host, str(ipaddress.ip_address(host)), port or DEFAULT_PORTS[first], first)]
    lookup = _Lookup(resolver or dns.resolver.Resolver(), address_types, rng or random.Random())
    targets: list[Target] = []
    if port is None:
        if transport is None:
            targets = lookup.naptr(host, transports)
        if not targets and not lookup.refused:
            for t in transports:
                targets += lookup.srv(f"{_SRV_PREFIXES[t]}.{host}", t)
    if not targets and not lookup.refused:
        targets = lookup.addresses(host, port or DEFAULT_PORTS[first], first)
    if not targets:
        why = lookup.refused or lookup.error or "no NAPTR, SRV, A or AAAA record"
        raise ResolveError(f"cannot resolve {host}: {why}")
    seen: set[tuple[str, int, str]] = set()
    out: list[Target] = []
    for target in targets:  # one address reached through two names is tried once, at its first place
        key = (target.ip, target.port, target.transport)
        if key not in seen:
            seen.add(key)
            out.append(target)
    return out


def trusted_addresses(host: str, port: int | None = None, transport: str | None = None, *,
                      resolver: dns.resolver.Resolver | None = None) -> list[str]:
    """Every address `host` resolves to over any SIP transport: the sources to accept requests from."""
    targets = resolve(host, port, transport, resolver=resolver, transports=("udp", "tcp", "tls"))
    return list(dict.fromkeys(t.ip for t in targets))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Lookup:
    """The DNS queries of one resolution, remembering the last failure for the error message."""

    def __init__(self, resolver: dns.resolver.Resolver, address_types: tuple[str, ...], rng: random.Random):
        self.resolver, self.address_types, self.rng = resolver, address_types, rng
        self.error: str | None = None  # a query that failed (timeout, SERVFAIL): later steps still run
        self.refused: str | None = None  # an SRV target of "." (RFC 2782: decidedly not available): stop

    def query(self, name: str, rdtype: str) -> list[Any]:
        try:
            return list(self.resolver.resolve(name + ".", rdtype, search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.DNSException, OSError) as e:  # timeouts, SERVFAIL, unreachable: try the next step
            self.error = f"{rdtype} {name}: {e}"
            return []

    def naptr(self, host: str, transports: tuple[str, ...]) -> list[Target]:
        records = [r for r in self.query(host, "NAPTR")
                   if _NAPTR_SERVICES.get(r.service.decode().upper()) in transports]
        records.sort(key=lambda r: (r.order, r.preference))
        out: list[Target] = []
        for r in records:  # every usable record in order, so a dead one fails over to the next
            t = _NAPTR_SERVICES[r.service.decode().upper()]
            name = r.replacement.to_text(omit_final_dot=True)
            flags = r.flags.decode().lower()
            if flags == "s":
                out += self.srv(name, t)
            elif flags == "a":
                out += self.addresses(name, DEFAULT_PORTS[t], t)
        return out

    def srv(self, name: str, transport: str) -> list[Target]:
        records = self.query(name, "SRV")
        if len(records) == 1 and records[0].target.to_text() == ".":
            self.refused = f"{name} says no SIP service here (SRV target '.')"
            return []
        out: list[Target] = []
        for priority in sorted({r.priority for r in records}):
            for r in _weighted_order([r for r in records if r.priority == priority], self.rng):
                out += self.addresses(r.target.to_text(omit_final_dot=True), r.port, transport)
        return out

    def addresses(self, host: str, port: int, transport: str) -> list[Target]:
        return [Target(host, r.address, port, transport) for rdtype in self.address_types
                for r in self.query(host, rdtype)]


def _weighted_order(records: list[Any], rng: random.Random) -> list[Any]:
    """RFC 2782's selection within one priority: each pick weighted by `weight`, zero weights first in line."""
    pending = sorted(records, key=lambda r: r.weight != 0)
    out: list[Any] = []
    while pending:
        n = rng.randint(0, sum(r.weight for r in pending))
        running = 0
        for i, r in enumerate(pending):
            running += r.weight
            if running >= n:
                out.append(pending.pop(i))
                break
    return out
