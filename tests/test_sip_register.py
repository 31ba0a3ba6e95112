"""Registration (B17): digest, expiry, 423, Retry-After, backoff, keepalive, probe, rebind, stop.

The protocol is fed to the sans-I/O core as datagrams and times (sip_core_clock.Line: minutes of registrar
silence take no wall-clock time); a few socket tests against a fake registrar on loopback keep what only the
shell does: the socket round trip, the status callbacks and a quick stop.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from sip_core_clock import Line, check_digest
from sip_core_support import PROVIDER, US, invite
from test_sip_support import FAST, Peer, Recorder, method, running_agent

from screener.sip import RegStatus, auth
from screener.sip.agent import REBIND_MIN_INTERVAL, REFRESH_MAX, backoff_delay
from screener.sip.core import NewCall
from screener.sip.message import Message, name_addr, params, parse
from screener.sip.registration import ResolveProvider, StatusChange
from screener.sip.transactions import Timing

T = Timing()  # the production timers: the core's clock is ours, so they cost nothing
NO_ANSWER = f"no answer from {PROVIDER[0]}:{PROVIDER[1]}"


def registered(line: Line, expires: int = 3600) -> float:
    """Start `line` and let it register (challenge, then 200 granting `expires`); the time it is registered."""
    line.start()
    line.register(expires=expires)
    assert line.statuses[-1] == StatusChange("registered", None, expires)
    return line.now


# -- the REGISTER exchange -------------------------------------------------------------------------------------


def test_the_first_register_asks_for_the_configured_expiry_and_answers_the_challenge():
    line = Line(register_expires=3600, username="0612345678", auth_username="auth-42", domain="voip.example").start()
    assert line.statuses == [StatusChange("registering")] and line.resolves() == [0.0]
    first = line.request("REGISTER", 0.0)
    assert first.uri == "sip:voip.example" and first.get("expires") == "3600" and "authorization" not in first
    assert name_addr(first.get("to") or "").uri == "sip:0612345678@voip.example"
    assert first.get("contact") == f"<sip:0612345678@{US[0]}:{US[1]}>"
    line.answer(first, 401, "Unauthorized", 'WWW-Authenticate: Digest realm="r", nonce="n1", qop="auth"')
    second = line.request("REGISTER", 0.0)
    assert check_digest(second.get("authorization") or "", "REGISTER", "secret")["username"] == "auth-42"
    assert (second.call_id, second.cseq[0]) == (first.call_id, first.cseq[0] + 1)


@pytest.mark.parametrize("grant,granted", [
    ("Contact: {contact};expires=24", 24),  # the expires of our Contact...
    ("Expires: 24", 24),  # ... else the Expires header
    (f"Contact: <sip:screener@{PROVIDER[0]}:9>;expires=5\r\nExpires: 24", 24),  # another binding's is not ours
    ("Contact: {contact};expires=2", 2),  # a short grant: refreshed after 1 s at the earliest
])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_refreshes_within_the_granted_expiry(grant, granted, seed):
    # B17: refresh follows the expiry the registrar grants (at 50-80 % of it), not a hard-coded 115 s
    line = Line(register_expires=3600, seed=seed).start()
    req = line.request("REGISTER")
    line.answer(req, 401, "Unauthorized", 'WWW-Authenticate: Digest realm="r", nonce="n1"')
    first = line.request("REGISTER", 0.0)
    assert first.get("expires") == "3600"
    line.answer(first, 200, "OK", grant.format(contact=first.get("contact")))
    assert line.statuses[-1] == StatusChange("registered", None, granted)
    again = line.request("REGISTER")
    waited = line.now
    assert max(1.0, 0.5 * granted) <= waited <= max(1.0, 0.8 * granted)
    assert again.call_id == first.call_id and again.cseq[0] > first.cseq[0]
    assert check_digest(again.get("authorization") or "", "REGISTER", "secret")  # the nonce is used again


def test_refresh_is_capped_whatever_the_expiry_and_keepalives_wait_for_none():
    # a registrar restarting between two refreshes forgets the binding silently: refresh at least every
    # refresh_max (REFRESH_MAX, 20 s), even when an hour was granted
    assert REFRESH_MAX == 20.0  # README: registered again within 30 s of a registrar's return
    line = Line(keepalive_interval=25)  # the default keepalive: longer than the cap, so no OPTIONS at all
    t = registered(line, expires=3600)
    first = line.attempts()[0].msg
    for _ in range(5):
        again = line.register(expires=3600)
        assert line.now == pytest.approx(t + T.refresh_max) and again.call_id == first.call_id
        t = line.now
    assert line.attempts("OPTIONS") == []


def test_proxy_authentication_407():
    # a provider's outbound proxy challenges with 407: answered with Proxy-Authorization
    line = Line().start()
    req = line.request("REGISTER")
    line.answer(req, 407, "Proxy Authentication Required",
                'Proxy-Authenticate: Digest realm="proxy.example", nonce="p1", qop="auth"')
    req = line.request("REGISTER", 0.0)
    assert "authorization" not in req
    got = check_digest(req.get("proxy-authorization") or "", "REGISTER", "secret")
    assert (got["realm"], got["nonce"], got["qop"]) == ("proxy.example", "p1", "auth")
    line.answer(req, 200, "OK", "Expires: 60")
    assert line.statuses[-1] == StatusChange("registered", None, 60)


def test_423_retries_with_min_expires():
    line = Line(register_expires=30).start()
    req = line.request("REGISTER")
    line.answer(req, 423, "Interval Too Brief", "Min-Expires: 600")
    again = line.request("REGISTER", 0.0)
    assert again.get("expires") == "600"
    assert [s.state for s in line.statuses] == ["registering"]


@pytest.mark.parametrize("code,reason,extra,wait,error", [
    (403, "Forbidden", "Retry-After: 30", 30.0, "403 Forbidden: wrong password?"),
    (503, "Service Unavailable", "Retry-After: 120 (maintenance);duration=3600", 120.0, "503 Service Unavailable"),
    (404, "Not Found", "", T.backoff_min, "404 Not Found: unknown user name?"),  # no Retry-After: the backoff
])
def test_a_refusal_is_reported_and_its_retry_after_obeyed(code, reason, extra, wait, error):
    line = Line().start()
    req = line.request("REGISTER")
    line.answer(req, code, reason, *([extra] if extra else []))
    assert line.statuses[-1] == StatusChange("failed", error)
    refused = line.now
    again = line.request("REGISTER")
    assert line.now == pytest.approx(refused + wait)
    assert line.sent_between(refused + 0.001, line.now - 0.001) == []  # a registrar that refused is not probed
    assert again.call_id == req.call_id


def test_wrong_password_is_reported_not_looped():
    line = Line().start()
    chal = 'WWW-Authenticate: Digest realm="r", nonce="n1"'
    line.answer(line.request("REGISTER"), 401, "Unauthorized", chal)
    line.answer(line.request("REGISTER", 0.0), 401, "Unauthorized", chal)
    assert line.statuses[-1] == StatusChange("failed", "401 Unauthorized: wrong user name or password?")
    failed = line.now
    line.request("REGISTER")  # the next attempt only after the backoff
    assert line.now == pytest.approx(failed + backoff_delay(1, T))


def test_the_strongest_of_several_challenges_is_answered():
    line = Line(username="u", password="pw").start()
    line.answer(line.request("REGISTER"), 401, "Unauthorized",
                'WWW-Authenticate: Digest realm="r", nonce="n1", algorithm=MD5\r\n'
                'WWW-Authenticate: Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth"')
    req = line.request("REGISTER", 0.0)
    got = auth.parse_challenge(req.get("authorization") or "")
    assert (got["algorithm"], got["nonce"]) == ("SHA-256", "n2")
    chal = {"realm": "r", "nonce": "n2", "algorithm": "SHA-256", "qop": "auth"}
    expected = auth.authorization(chal, "REGISTER", got["uri"], "u", "pw", int(got["nc"], 16), got["cnonce"])
    assert auth.parse_challenge(expected)["response"] == got["response"]


def test_an_unsupported_algorithm_is_named_not_blamed_on_the_password():
    line = Line().start()
    line.answer(line.request("REGISTER"), 401, "Unauthorized",
                'WWW-Authenticate: Digest realm="r", nonce="n", algorithm=SHA3-256')
    last = line.statuses[-1]
    assert last.state == "failed" and "SHA3-256" in (last.error or "") and "password" not in (last.error or "")


def test_stray_datagrams_during_register_do_not_count():
    # B17: any datagram arriving during a REGISTER exchange used to be taken as its reply
    line = Line().start()
    req = line.request("REGISTER")
    ping = (f"OPTIONS sip:screener@{US[0]} SIP/2.0\r\nVia: SIP/2.0/UDP {PROVIDER[0]}:{PROVIDER[1]};branch=z9hG4bKp1"
            "\r\nFrom: <sip:ping@provider.example>;tag=1\r\nTo: <sip:screener@provider.example>\r\n"
            "Call-ID: opt1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    line.receive(ping)
    line.receive(b"SIP/2.0 500 Stray\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKother\r\n\r\n")
    assert [o.msg.status for o in line.out[1:]] == [200]  # the provider's OPTIONS is answered, that is all
    line.answer(req, 401, "Unauthorized", 'WWW-Authenticate: Digest realm="r", nonce="n1"')
    req = line.request("REGISTER", 0.0)
    line.answer(req, 200, "OK", "Expires: 60")
    assert [s.state for s in line.statuses] == ["registering", "registered"]


def test_outbound_proxy_distinct_from_registrar_domain():
    proxy = ("192.0.2.20", 5070)
    line = Line(server="registrar.invalid", port=5060, domain="voip.example", outbound_proxy="192.0.2.20:5070")
    line.dns = proxy
    line.start()
    assert [e for _, e in line.events if isinstance(e, ResolveProvider)] == [ResolveProvider(*proxy, False)]
    out = line.next_sent(lambda m: m.method == "REGISTER", 0.0)
    assert out.dest == proxy
    assert out.msg.uri == "sip:voip.example" and out.msg.get("route") == "<sip:192.0.2.20:5070;lr>"
    assert name_addr(out.msg.get("to") or "").uri == "sip:screener@voip.example"
    line.answer(out.msg, 401, "Unauthorized", 'WWW-Authenticate: Digest realm="r", nonce="n1"')
    line.register(expires=60, within=0.0)
    assert line.statuses[-1] == StatusChange("registered", None, 60)
    assert {o.dest for o in line.out} == {proxy} and len(line.out) == 2  # the registrar's name is never used


# -- silence, backoff, keepalive, probes -----------------------------------------------------------------------


def test_silent_registrar_is_retried_with_backoff_for_ever():
    # never a permanent FAILED: pyVoIP gives up after 3 failures; two hours of silence, then the registrar is back
    line = Line().start()
    line.at(7200.0)
    starts = [o.at for o in line.attempts("REGISTER")]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert len(starts) > 100
    # each attempt waits for its answer, then a backoff growing to backoff_max (a probe in flight may add its wait)
    assert all(T.register_timeout + T.backoff_min - 1e-6 <= g <= T.register_timeout + T.backoff_max
               + T.options_timeout for g in gaps)
    assert min(gaps[-20:]) >= T.register_timeout + T.backoff_max / 2  # grown to the cap and kept there
    assert 7200.0 - starts[-1] <= T.register_timeout + T.backoff_max + T.options_timeout
    # one failure per attempt, when its answer is overdue, and nothing else
    assert line.status_times("failed") == pytest.approx([s + T.register_timeout for s in starts
                                                         if s + T.register_timeout <= 7200.0])
    assert set(line.statuses[1:]) == {StatusChange("failed", NO_ANSWER)}
    line.register()  # the provider comes back: registered again without a restart
    assert line.statuses[-1].state == "registered"


def test_silent_registrar_is_probed_without_keepalives():
    # keepalives off and a long backoff: the probe (probe_interval) still finds the registrar back early
    line = Line(timing=Timing(backoff_min=30.0, backoff_max=30.0)).start()
    line.at(38.0 - 0.001)
    assert line.status_times("failed") == [T.register_timeout]
    probes = [o.at for o in line.attempts("OPTIONS")]
    assert probes == pytest.approx([13.0, 22.0, 31.0])  # every probe_interval after the last one was lost
    assert len(line.attempts("REGISTER")) == 1
    line.request("REGISTER")  # the backoff is over
    assert line.now == pytest.approx(8.0 + 30.0)
    probe = line.request("OPTIONS")
    assert line.now == pytest.approx(38.0 + T.register_timeout + T.probe_interval)
    line.answer(probe, 200, "OK")
    line.register(within=0.0)  # at once, not at the end of the backoff
    assert line.statuses[-1].state == "registered"


def test_keepalive_options_and_reregistration_after_provider_loss():
    line = Line(keepalive_interval=5)
    t = registered(line)
    ping = line.request("OPTIONS")
    assert line.now == pytest.approx(t + 5)
    line.answer(ping, 200, "OK")
    # the provider goes away: the next ping is unanswered, registration is retried and succeeds
    line.request("OPTIONS")
    assert line.now == pytest.approx(t + 10)
    line.at(t + 10 + T.options_timeout)
    assert line.statuses[-1] == StatusChange("failed", NO_ANSWER)
    line.register()
    assert line.now == pytest.approx(t + 10 + T.options_timeout + backoff_delay(1, T))
    assert line.statuses[-1].state == "registered"


def test_registrar_answering_again_ends_the_backoff():
    # an OPTIONS times out, later ones are answered again: REGISTER at once, not after the backoff (60 s here)
    line = Line(keepalive_interval=5, timing=Timing(backoff_min=60.0, backoff_max=60.0))
    t = registered(line)
    lost = line.request("OPTIONS")
    line.at(t + 5 + T.options_timeout)
    assert line.statuses[-1] == StatusChange("failed", NO_ANSWER)
    probe = line.request("OPTIONS")
    assert probe.call_id != lost.call_id and line.now == pytest.approx(t + 5 + T.options_timeout + 5)
    line.at(line.now + 0.1)
    line.answer(probe, 200, "OK")
    answered = line.now
    line.register(within=0.0)
    assert line.resolves()[-1] == answered and line.statuses[-1].state == "registered"


@pytest.mark.parametrize("answer_first", [True, False])
def test_keepalive_answered_only_after_retransmissions_registers_again(answer_first):
    # the registrar was away when the ping went out and answered a retransmission: it may have restarted
    # without our binding (tests/e2e: kamailio down 2 s, keepalive 1 s). A ping answered at once changes nothing.
    line = Line(keepalive_interval=5)
    t = registered(line)
    first = line.request("OPTIONS")
    if not answer_first:
        again = line.next_sent(lambda m: m.method == "OPTIONS", 1.0).msg
        assert again.branch == first.branch and line.now == pytest.approx(t + 5 + T.t1)  # a retransmission
        line.at(line.now + 0.05)  # its answer's way back
    line.answer(first, 200, "OK")
    answered = line.now
    line.at(t + 5 + T.options_timeout + 1)
    registers = [o.at for o in line.attempts("REGISTER")][2:]  # after the two of the first registration
    assert registers == ([] if answer_first else [answered])
    assert all(s.state != "failed" for s in line.statuses)


def foreign_invite(call_id: str, uri: str) -> bytes:
    data = invite(call_id)
    return f"INVITE {uri} SIP/2.0".encode() + data[data.index(b"\r\n"):]


def test_invite_not_for_our_contact_registers_again():
    # an INVITE routed to the AOR (or an old contact) reached us other than through our binding
    line = Line(timing=Timing(refresh_max=3600.0))  # no refresh in the way
    t = registered(line)
    line.receive(foreign_invite("ours", f"sip:0612345678@{US[0]}:{US[1]}"))  # the user part may be rewritten
    assert [o.msg.status for o in line.out if o.at == t and o.msg.call_id == "ours"] == [100]
    assert line.resolves() == [0.0]
    line.at(t + 1)
    line.receive(foreign_invite("aor", "sip:screener@provider.example"))
    assert line.resolves()[-1] == t + 1
    line.register(within=0.0)
    calls = [e.key for _, e in line.events if isinstance(e, NewCall)]
    assert calls == ["ours", "aor"]  # and the call itself is handled as usual
    line.at(t + REBIND_MIN_INTERVAL)
    line.receive(foreign_invite("aor2", "sip:screener@provider.example"))
    assert line.resolves()[-1] == t + 1  # at most one extra REGISTER per REBIND_MIN_INTERVAL
    line.at(t + 1 + REBIND_MIN_INTERVAL)
    line.receive(foreign_invite("aor3", "sip:screener@provider.example"))
    assert line.resolves()[-1] == t + 1 + REBIND_MIN_INTERVAL


# -- the shell: a real socket, the status callbacks, stop --------------------------------------------------------


@pytest.fixture
def registrar():
    p = Peer()
    yield p
    p.close()


def reply(req: Message, code: int, reason: str, *extra: str) -> bytes:
    lines = [f"SIP/2.0 {code} {reason}"]
    lines += [f"Via: {v}" for v in req.get_all("via")]
    to = req.get("to")
    if code >= 200 and "tag=" not in to:
        to += ";tag=reg1"
    lines += [f"From: {req.get('from')}", f"To: {to}", f"Call-ID: {req.call_id}", f"CSeq: {req.get('cseq')}"]
    lines += list(extra)
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


class Statuses:
    def __init__(self) -> None:
        self.seen: list[RegStatus] = []
        self.cv = threading.Condition()

    def __call__(self, st: RegStatus) -> None:
        with self.cv:
            self.seen.append(st)
            self.cv.notify_all()

    def wait(self, state: str, timeout: float = 3.0) -> RegStatus:
        with self.cv:
            ok = self.cv.wait_for(lambda: any(s.state == state for s in self.seen), timeout)
            assert ok, f"no {state!r} status; saw {[(s.state, s.last_error) for s in self.seen]}"
            return next(s for s in reversed(self.seen) if s.state == state)


def serve_register(reg: Peer, *, expires: int = 60, qop: bool = False, timeout: float = 3.0) -> Message:
    """Answer one REGISTER exchange with a challenge then 200; returns the authorised REGISTER."""
    req = reg.expect(method("REGISTER"), timeout)
    if "authorization" not in req:
        chal = 'Digest realm="provider.example", nonce="n0nce", opaque="op"' + (', qop="auth"' if qop else "")
        reg.send(reply(req, 401, "Unauthorized", f"WWW-Authenticate: {chal}"), req_source(req))
        req = reg.expect(method("REGISTER"), timeout)
    check_digest(req.get("authorization"), "REGISTER", "secret")
    contact = req.get("contact")
    reg.send(reply(req, 200, "OK", f"Contact: {contact};expires={expires}"), req_source(req))
    return req


def req_source(req: Message) -> tuple[str, int]:
    via = req.top_via.split()[1].partition(";")[0]
    host, _, port = via.partition(":")
    return host, int(port)


def test_registers_with_digest_auth_user_and_real_contact_and_unregisters_at_stop(registrar):
    st = Statuses()
    with running_agent(registrar, Recorder(), register=True, on_status=st, username="0612345678",
                       auth_username="auth-42", domain="voip.example", local_address="auto") as agent:
        req = serve_register(registrar, qop=True)
        assert req.uri == "sip:voip.example"
        assert name_addr(req.get("to")).uri == "sip:0612345678@voip.example"
        assert auth.parse_challenge(req.get("authorization"))["username"] == "auth-42"
        assert req.get("contact") == f"<sip:0612345678@127.0.0.1:{agent.local_port}>"
        assert "0.0.0.0" not in req.get("via")
        assert st.wait("registered").expires == 60

        def unregister() -> None:
            unreg = registrar.expect(method("REGISTER"))
            assert unreg.get("expires") == "0"
            registrar.send(reply(unreg, 200, "OK"), req_source(unreg))

        answering = threading.Thread(target=unregister)
        answering.start()
        agent.stop()
        answering.join(3)
    assert [s.state for s in st.seen] == ["registering", "registered", "unregistered"]
    assert st.seen[1].last_error is None and st.seen[1].since <= st.seen[2].since


def test_wrong_password_is_reported_through_the_status_callback(registrar):
    st = Statuses()
    with running_agent(registrar, Recorder(), register=True, on_status=st):
        req = registrar.expect(method("REGISTER"))
        chal = 'WWW-Authenticate: Digest realm="r", nonce="n1"'
        registrar.send(reply(req, 401, "Unauthorized", chal), req_source(req))
        req = registrar.expect(method("REGISTER"))
        registrar.send(reply(req, 401, "Unauthorized", chal), req_source(req))
        assert st.wait("failed").last_error == "401 Unauthorized: wrong user name or password?"


QUICK_STOP = dataclasses.replace(FAST, stop_timeout=0.2)


def test_stop_is_quick_with_a_silent_registrar_and_unregisters(registrar):
    st = Statuses()
    with running_agent(registrar, Recorder(), register=True, on_status=st, timing=QUICK_STOP) as agent:
        serve_register(registrar)
        st.wait("registered")
        t0 = time.monotonic()
        agent.stop()
        took = time.monotonic() - t0
    assert took < 2.0
    unreg = registrar.expect(method("REGISTER"), 1)
    assert unreg.get("expires") == "0"


def test_stop_within_two_seconds_when_nothing_ever_answered(registrar):
    with running_agent(registrar, Recorder(), register=True) as agent:
        registrar.expect(method("REGISTER"))
        t0 = time.monotonic()
        agent.stop()
        assert time.monotonic() - t0 < 2.0


# -- pure helpers ----------------------------------------------------------------------------------------------


def test_digest_known_vector():
    # RFC 2617 3.5 example, adapted: known inputs give a known response
    chal = auth.parse_challenge('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                                'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    value = auth.authorization(chal, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", 1, "0a4f113b")
    assert 'response="6629fae49393a05397450978507c4ef1"' in value
    assert params(";" + value.split(" ", 1)[1].replace(", ", ";"))["nc"] == "00000001"


def test_backoff_is_exponential_with_jitter_and_capped():
    delays = [backoff_delay(n, FAST) for n in range(1, 30)]
    assert delays[0] <= FAST.backoff_min * 1.01
    assert all(FAST.backoff_min <= d <= FAST.backoff_max for d in delays)
    assert max(delays[8:]) > FAST.backoff_max / 2


def test_parse_response_helper():
    msg = parse(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bKa\r\nContent-Length: 0\r\n\r\n")
    assert msg.status == 200 and msg.branch == "z9hG4bKa"
