"""RFC 4475 torture messages (tests/data/rfc4475): the pure parser and the sans-I/O core survive each, and a running
agent the whole corpus."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from sip_core_support import PROVIDER, make_core, sent
from sip_core_support import invite as core_invite
from test_sip_support import Peer, Recorder, agent_addr, invite, options, running_agent

from screener.sip.core import NewCall
from screener.sip.message import (
    ParseError,
    check_request,
    name_addr,
    parse,
    parse_sdp,
    parse_uri,
    sdp_body,
    via_sent_by,
)

DATA = Path(__file__).parent / "data" / "rfc4475"
# every tag of RFC 4475 section 3: a missing file fails its tests instead of skipping them
VALID = ["wsinv", "intmeth", "esc01", "escnull", "esc02", "lwsdisp", "longreq", "dblreq", "semiuri", "transports",
         "mpart01", "unreason", "noreason"]
TAGS = sorted(VALID + [
    "badinv01", "clerr", "scalar02", "scalarlg", "quotbal", "ltgtruri", "lwsruri", "lwsstart", "trws", "escruri",
    "baddate", "regbadct", "badaspec", "baddn", "badvers", "mismatch01", "mismatch02", "bigcode", "badbranch",
    "insuf", "unkscm", "novelsc", "unksm2", "bext01", "invut", "regaut01", "multi01", "mcl01", "bcast", "zeromf",
    "cparam01", "cparam02", "regescrt", "sdp01", "inv2543", "ncl"])
TORTURE = [DATA / f"{tag}.dat" for tag in TAGS]


def test_the_corpus_is_in_the_repository():
    assert len(TAGS) == 49
    assert sorted(p.stem for p in DATA.glob("*.dat")) == TAGS


@pytest.mark.parametrize("path", TORTURE, ids=lambda p: p.stem)
def test_pure_parser_accepts_or_raises_parse_error(path):
    """parse and check_request, and the header parsers the agent calls, raise nothing but ParseError."""
    data = path.read_bytes()
    for check_length in (True, False):
        try:
            msg = parse(data, check_length=check_length)
            if msg.is_request:
                check_request(msg)
                parse_uri(msg.uri)
        except ParseError:  # VersionError included
            assert path.stem not in VALID, f"{path.stem} is valid SIP (RFC 4475 3.1.1)"
            continue
        for name in ("from", "to", "contact", "route", "record-route"):
            for value in msg.get_all(name):
                _parse_error_or_value(name_addr, value)
        for via in msg.get_all("via"):
            _parse_error_or_value(via_sent_by, via)
        body = sdp_body(msg)
        if body is not None:
            _parse_error_or_value(parse_sdp, body)


def _parse_error_or_value(fn, arg):
    try:
        return fn(arg)
    except ParseError:
        return None


@pytest.fixture(scope="module")
def peer_and_agent():
    peer = Peer()
    rec = Recorder(lambda c: c.decline(603))  # never answer: their SDP points outside loopback
    with running_agent(peer, rec) as agent:
        yield peer, agent, rec
    peer.close()


ANSWERS = (100, 200, 400, 405, 415, 420, 481, 482, 488, 505, 603)  # what a torture message may get


@pytest.mark.parametrize("path", TORTURE, ids=lambda p: p.stem)
def test_torture_message_is_survived_by_the_core(path, caplog):
    # each message fed to the sans-I/O core as the provider's datagram; a call is declined as the handler would
    caplog.set_level(logging.ERROR, "screener.sip")
    core = make_core()
    core.receive_datagram(path.read_bytes(), PROVIDER, 0.0)
    for ev in core.events():
        if isinstance(ev, NewCall):
            core.decline(ev.key, 603, 0.0)
    replies = sent(core)  # every reply parses
    while (when := core.next_timer()) is not None and when <= 64.0:  # retransmissions, until the records go
        core.handle_timer(when)
        replies += sent(core)
    assert all(m.status in ANSWERS for m, _ in replies), (path.stem, [m.status for m, _ in replies])
    assert all(to == PROVIDER for _, to in replies)
    # the core still answers a valid request afterwards
    ping = core_invite("after", body="").replace(b"INVITE", b"OPTIONS", 1).replace(b"1 INVITE", b"1 OPTIONS")
    core.receive_datagram(ping, PROVIDER, 65.0)
    core.receive_datagram(core_invite("after-invite"), PROVIDER, 65.0)
    assert [(m.call_id, m.status) for m, _ in sent(core)] == [("after", 200), ("after-invite", 100)]
    assert [e.key for e in core.events() if isinstance(e, NewCall)] == ["after-invite"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_running_agent_survives_the_whole_corpus(peer_and_agent, caplog):
    # the socket loop, the handler threads and the event dispatch around the core: the corpus in one go
    peer, agent, _ = peer_and_agent
    errors: list[BaseException] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    caplog.set_level(logging.ERROR, "screener.sip")
    try:
        for path in TORTURE:
            peer.send(path.read_bytes(), agent_addr(agent))
        peer.send(options(peer, "after-all"), agent_addr(agent))
        replies = []
        while (got := peer.recv_raw(0.3)) is not None:
            try:
                msg = parse(got[0])
            except ParseError as e:  # pragma: no cover - would be our own bug
                pytest.fail(f"unparseable reply {got[0][:80]!r}: {e}")
            if msg.status >= 300 and msg.cseq[1] == "INVITE":
                peer.ack(msg, agent_addr(agent))
            replies.append(msg)
        assert all(m.status in ANSWERS for m in replies), [(m.call_id, m.status) for m in replies]
        assert ("after-all", 200) in [(m.call_id, m.status) for m in replies]
        # the agent still takes a call afterwards
        peer.send(invite(agent.local_port, peer, "inv-after-all"), agent_addr(agent))
        peer.ack(peer.expect(lambda m: m.status == 603 and m.call_id == "inv-after-all"), agent_addr(agent))
    finally:
        threading.excepthook = old_hook
    assert errors == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def _parses(data: bytes) -> bool:
    try:
        parse(data, check_length=False)
    except ParseError:
        return False
    return True


@pytest.mark.parametrize("name,expected", [("badinv01", 400), ("ncl", 400), ("clerr", 400), ("badvers", 505),
                                           ("insuf", 400), ("mismatch01", 400), ("unkscm", 200),
                                           ("wsinv", 481), ("intmeth", 405), ("esc01", 603), ("lwsstart", 603)])
def test_torture_expected_answers(name, expected, peer_and_agent):
    path = DATA / f"{name}.dat"
    peer, agent, _ = peer_and_agent
    call_id = parse(path.read_bytes(), check_length=False).call_id  # "" when it has none (insuf)
    peer.send(path.read_bytes(), agent_addr(agent))
    got = peer.expect(lambda m: m.call_id == call_id and m.status != 100, 1.0)
    if got.status >= 300 and got.cseq[1] == "INVITE":
        peer.ack(got, agent_addr(agent))
    assert got.status == expected
