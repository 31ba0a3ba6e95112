"""RFC 3263 server location (screener.sip.resolve) against a DNS server of our own on loopback: real packets
(and, where only the answers matter, the same zone answered in memory)."""

from __future__ import annotations

import random
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import dns.message
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

from screener.sip.resolve import ResolveError, Target, _weighted_order, resolve, trusted_addresses

ZONE = {
    # the provider: NAPTR -> SRV -> A/AAAA, priorities and weights, TCP and TLS beside UDP
    ("provider.test", "NAPTR"): ['20 10 "s" "SIP+D2T" "" _sip._tcp.provider.test.',
                                 '10 10 "s" "SIP+D2U" "" _sip._udp.provider.test.',
                                 '30 10 "s" "SIPS+D2T" "" _sips._tcp.provider.test.'],
    ("_sip._udp.provider.test", "SRV"): ["10 60 5060 a.provider.test.", "10 40 5070 b.provider.test.",
                                         "20 0 5080 c.provider.test."],
    ("_sip._tcp.provider.test", "SRV"): ["10 0 5060 tcp.provider.test."],
    ("_sips._tcp.provider.test", "SRV"): ["10 0 5061 tls.provider.test."],
    ("a.provider.test", "A"): ["192.0.2.1"],
    ("a.provider.test", "AAAA"): ["2001:db8::1"],
    ("b.provider.test", "A"): ["192.0.2.2"],
    ("c.provider.test", "A"): ["192.0.2.3"],
    ("tcp.provider.test", "A"): ["192.0.2.10"],
    ("tls.provider.test", "A"): ["192.0.2.11"],
    ("provider.test", "A"): ["192.0.2.99"],
    # SRV only
    ("_sip._udp.srvonly.test", "SRV"): ["0 0 5062 a.provider.test."],
    ("srvonly.test", "A"): ["192.0.2.98"],
    # A only
    ("plain.test", "A"): ["192.0.2.50", "192.0.2.51"],
    ("plain.test", "AAAA"): ["2001:db8::50"],
    # RFC 2782: no SIP service here
    ("_sip._udp.nosip.test", "SRV"): ["0 0 0 ."],
    ("nosip.test", "A"): ["192.0.2.60"],
    # two NAPTRs for UDP (failover between sites), one with the "a" flag; a site's SRV pointing at a known host
    ("twosites.test", "NAPTR"): ['10 20 "a" "SIP+D2U" "" west.twosites.test.',
                                 '10 10 "s" "SIP+D2U" "" _sip._udp.east.twosites.test.'],
    ("_sip._udp.east.twosites.test", "SRV"): ["0 0 5060 east.twosites.test.", "1 0 5060 west.twosites.test."],
    ("east.twosites.test", "A"): ["192.0.2.70"],
    ("west.twosites.test", "A"): ["192.0.2.71"],
    # a home router's DNS that ignores NAPTR queries
    ("_sip._udp.slow.test", "SRV"): ["0 0 5060 a.provider.test."],
}


class DnsServer:
    """Answers UDP queries from a dict of (name, type) -> rdata texts; NXDOMAIN for unknown names."""

    def __init__(self, records: dict[tuple[str, str], list[str]], behaviour: dict[tuple[str, str], str]):
        self.records, self.behaviour = records, behaviour
        self.queries: list[tuple[str, str]] = []
        self.stopping = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            if self.stopping:
                return
            query = dns.message.from_wire(data)
            q = query.question[0]
            key = (q.name.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(q.rdtype))
            self.queries.append(key)
            how = self.behaviour.get(key) or self.behaviour.get(("*", "*"))
            reply = dns.message.make_response(query)
            if how == "servfail":
                reply.set_rcode(dns.rcode.SERVFAIL)
            elif key in self.records:
                reply.answer.append(dns.rrset.from_text(key[0] + ".", 300, "IN", key[1], *self.records[key]))
            elif not any(name == key[0] for name, _ in self.records):
                reply.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(reply.to_wire(), addr)

    def resolver(self) -> dns.resolver.Resolver:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = self.port
        r.timeout = r.lifetime = 0.3
        return r

    def close(self) -> None:
        self.stopping = True
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wake:  # a blocked recvfrom ignores close()
            wake.sendto(b"", ("127.0.0.1", self.port))
        self.thread.join(1)
        self.sock.close()


@contextmanager
def dns_server(records=ZONE, behaviour=None) -> Iterator[DnsServer]:
    server = DnsServer(records, behaviour or {})
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with dns_server() as s:
        yield s


def addrs(targets: list[Target]) -> list[tuple[str, int]]:
    return [t.addr for t in targets]


def test_naptr_srv_then_addresses_in_priority_order(server):
    targets = resolve("provider.test", resolver=server.resolver(), rng=random.Random(1))
    assert set(addrs(targets[:3])) == {("192.0.2.1", 5060), ("2001:db8::1", 5060), ("192.0.2.2", 5070)}
    assert targets[3:] == [Target("c.provider.test", "192.0.2.3", 5080, "udp")]
    assert {t.host for t in targets[:3]} == {"a.provider.test", "b.provider.test"}
    assert server.queries[:2] == [("provider.test", "NAPTR"), ("_sip._udp.provider.test", "SRV")]
    assert ("_sip._tcp.provider.test", "SRV") not in server.queries  # a transport we did not ask for


class ZoneResolver:
    """dnspython's Resolver.resolve() answered from ZONE in memory: the same rdata, no packets, no waiting."""

    def __init__(self, records: dict[tuple[str, str], list[str]], timeouts: frozenset[tuple[str, str]] = frozenset()):
        self.answers = {key: [dns.rdata.from_text("IN", key[1], text) for text in texts]
                        for key, texts in records.items()}
        self.timeouts = timeouts
        self.queries: list[tuple[str, str]] = []

    def resolve(self, qname: str, rdtype: str, search: bool = False) -> list[object]:
        key = (qname.rstrip(".").lower(), rdtype)
        self.queries.append(key)
        if key in self.timeouts:  # what dnspython raises when a server never answers
            raise dns.resolver.LifetimeTimeout(timeout=0.3, errors=[])
        if key not in self.answers:
            raise dns.resolver.NXDOMAIN
        return self.answers[key]


class Draw:
    """A random source whose every draw is `n` (capped to the range asked): to count over each value."""

    def __init__(self, n: int) -> None:
        self.n = n

    def randint(self, a: int, b: int) -> int:
        return max(a, min(self.n, b))


@pytest.mark.parametrize("weights,firsts", [
    ((60, 40), [61, 40]),  # RFC 2782: a number drawn from 0..60+40 inclusive, the first running sum >= it
    ((10, 20, 30), [11, 20, 30]),
    ((0, 10), [1, 10]),  # a zero weight goes first in line: chosen only on a draw of 0
    ((10, 0), [10, 1]),
    ((0, 0), [1, 0]),  # all zero: the order they came in
])
def test_srv_weights_share_the_first_place(weights, firsts):
    # counted over every number the selection can draw, instead of resolving 200 times
    records = [dns.rdata.from_text("IN", "SRV", f"10 {w} 5060 t{i}.provider.test.") for i, w in enumerate(weights)]
    total = sum(weights)
    counts = Counter(_weighted_order(records, Draw(n))[0] for n in range(total + 1))
    assert [counts[r] for r in records] == firsts
    for n in range(total + 1):  # every record is in the order once, whatever is drawn
        assert sorted(map(id, _weighted_order(records, Draw(n)))) == sorted(map(id, records))


def test_resolve_orders_each_srv_priority_by_weight():
    # a (weight 60) comes first about 60% of the time, b (weight 40) the rest; c (priority 20) always last
    firsts: Counter[str] = Counter()
    resolver = ZoneResolver(ZONE)
    for seed in range(1000):
        targets = resolve("provider.test", resolver=resolver, rng=random.Random(seed), address_types=("A",))
        firsts[targets[0].host] += 1
        assert targets[-1].host == "c.provider.test"
    assert set(firsts) == {"a.provider.test", "b.provider.test"}
    assert 0.55 < firsts["a.provider.test"] / 1000 < 0.66, firsts


def test_no_naptr_falls_back_to_srv_udp(server):
    assert resolve("srvonly.test", resolver=server.resolver()) == [
        Target("a.provider.test", "192.0.2.1", 5062), Target("a.provider.test", "2001:db8::1", 5062)]
    assert server.queries[:2] == [("srvonly.test", "NAPTR"), ("_sip._udp.srvonly.test", "SRV")]


def test_no_naptr_no_srv_falls_back_to_a_and_aaaa_on_5060(server):
    got = addrs(resolve("plain.test", resolver=server.resolver()))
    assert set(got[:2]) == {("192.0.2.50", 5060), ("192.0.2.51", 5060)}  # an RRset has no order
    assert got[2:] == [("2001:db8::50", 5060)]
    assert len(resolve("plain.test", resolver=server.resolver(), address_types=("A",))) == 2


def test_explicit_port_skips_naptr_and_srv(server):
    assert addrs(resolve("provider.test", 5099, resolver=server.resolver())) == [("192.0.2.99", 5099)]
    assert server.queries == [("provider.test", "A"), ("provider.test", "AAAA")]


def test_explicit_transport_skips_naptr(server):
    targets = resolve("provider.test", transport="TCP", resolver=server.resolver())
    assert targets == [Target("tcp.provider.test", "192.0.2.10", 5060, "tcp")]
    assert server.queries[0] == ("_sip._tcp.provider.test", "SRV")
    assert resolve("provider.test", transport="tls", resolver=server.resolver())[0].port == 5061


@pytest.mark.parametrize("host,port,expected", [
    ("192.0.2.7", None, Target("192.0.2.7", "192.0.2.7", 5060)),
    ("192.0.2.7", 5080, Target("192.0.2.7", "192.0.2.7", 5080)),
    ("[2001:db8::7]", None, Target("2001:db8::7", "2001:db8::7", 5060)),
    ("2001:0db8::0007", 5062, Target("2001:0db8::0007", "2001:db8::7", 5062)),
])
def test_an_ip_address_needs_no_dns(server, host, port, expected):
    assert resolve(host, port, resolver=server.resolver()) == [expected]
    assert server.queries == []


def test_two_naptr_sites_fail_over_in_preference_order_without_duplicates(server):
    # preference 10 (east, by SRV: east then west) before preference 20 ("a" flag: west, already listed)
    assert addrs(resolve("twosites.test", resolver=server.resolver())) == [("192.0.2.70", 5060),
                                                                          ("192.0.2.71", 5060)]


def test_srv_target_dot_means_no_sip_service(server):
    with pytest.raises(ResolveError) as e:
        resolve("nosip.test", resolver=server.resolver())
    assert str(e.value) == "cannot resolve nosip.test: _sip._udp.nosip.test says no SIP service here (SRV target '.')"
    assert ("nosip.test", "A") not in server.queries


def test_unknown_name_is_a_resolve_error_and_an_oserror(server):
    with pytest.raises(OSError) as e:
        resolve("nowhere.test", resolver=server.resolver())
    assert isinstance(e.value, ResolveError)
    assert str(e.value) == "cannot resolve nowhere.test: no NAPTR, SRV, A or AAAA record"


def test_a_dns_server_that_ignores_naptr_still_gets_srv():
    resolver = ZoneResolver(ZONE, timeouts=frozenset({("slow.test", "NAPTR")}))
    assert addrs(resolve("slow.test", resolver=resolver, address_types=("A",))) == [("192.0.2.1", 5060)]
    assert resolver.queries[:2] == [("slow.test", "NAPTR"), ("_sip._udp.slow.test", "SRV")]


def test_a_failing_dns_server_is_named_in_the_error():
    with dns_server(behaviour={("*", "*"): "servfail"}) as server, pytest.raises(ResolveError) as e:
        resolve("provider.test", resolver=server.resolver())
    assert str(e.value).startswith("cannot resolve provider.test: AAAA provider.test: ")
    assert "SERVFAIL" in str(e.value)


@pytest.mark.parametrize("host,transport,message", [
    ("", None, "empty host name"),
    ("provider.test", "sctp", "unsupported transport 'sctp'"),
])
def test_bad_arguments(server, host, transport, message):
    with pytest.raises(ResolveError) as e:
        resolve(host, transport=transport, resolver=server.resolver())
    assert str(e.value) == message


def test_trusted_addresses_cover_every_transport(server):
    got = trusted_addresses("provider.test", resolver=server.resolver())
    assert set(got[:4]) == {"192.0.2.1", "2001:db8::1", "192.0.2.2", "192.0.2.3"}  # UDP (NAPTR order 10)
    assert got[4:] == ["192.0.2.10", "192.0.2.11"]  # then TCP (20) and TLS (30)
    assert sorted(trusted_addresses("plain.test", 5060, resolver=server.resolver())) == [
        "192.0.2.50", "192.0.2.51", "2001:db8::50"]
    assert trusted_addresses("192.0.2.7", resolver=server.resolver()) == ["192.0.2.7"]


def test_the_agent_registers_at_the_first_target_fails_over_and_trusts_them_all(server):
    # the shell's DNS step (RFC 3263 wired in): targets in order, the rest for failover, every address trusted
    from screener.config import SipConfig
    from screener.sip.registration import ResolveProvider
    from screener.sip.shell import SipAgent

    cfg = SipConfig(server="provider.test", port=5060, username="screener", password="secret",
                    local_address="127.0.0.1", sip_port=0, keepalive_interval=0)
    agent = SipAgent(cfg, lambda call: None, register=True)
    agent._resolver = server.resolver()
    agent._command = lambda fn: fn(0.0)  # type: ignore[method-assign]  # no socket loop: run the input at once
    trusted = agent._provider_addresses()
    assert {"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.10", "192.0.2.11"} <= trusted
    agent.core.start_registration(0.0)
    [req] = [e for e in agent.core.events() if isinstance(e, ResolveProvider)]
    agent._resolve(req)
    reg = agent.core.registration
    assert reg.dest in {("192.0.2.1", 5060), ("192.0.2.2", 5070)}
    assert set([reg.dest, *reg.alternatives]) == {("192.0.2.1", 5060), ("192.0.2.2", 5070), ("192.0.2.3", 5080)}
    assert reg.alternatives[-1] == ("192.0.2.3", 5080)  # the lower priority last; IPv6 left out on an IPv4 socket
    assert all(agent.core.is_trusted(ip) for ip in trusted | {"192.0.2.3"})
