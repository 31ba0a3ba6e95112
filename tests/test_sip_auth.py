"""Digest authentication (screener.sip.auth): known vectors for every algorithm and qop, and the challenge choice.

Vectors: RFC 7616 3.9.1 (MD5, SHA-256), draft-smith-sipping-auth-examples 3.1/3.2 (SIP, MD5). Where no published
vector exists (SHA-512-256, the -sess variants, auth-int) the expected values were computed step by step with the
openssl command line (`printf %s ... | openssl dgst -sha512-256`), an implementation independent of this module.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest

from screener.sip import auth
from screener.sip.message import Message, params, parse

# RFC 7616 3.9.1
MUFASA = dict(method="GET", uri="/dir/index.html", user="Mufasa", password="Circle of Life", nc=1,
              cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
MUFASA_CHALLENGE = ('Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={alg}, '
                    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
                    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')
# draft-smith-sipping-auth-examples (SIP INVITE, bob / zanzibar)
BOB = dict(method="INVITE", uri="sip:bob@biloxi.com", user="bob", password="zanzibar", nc=1, cnonce="0a4f113b")
BOB_CHALLENGE = 'Digest realm="biloxi.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093"{extra}'
SDP = (b"v=0\r\no=bob 2890844526 2890844526 IN IP4 192.0.2.4\r\ns=-\r\nc=IN IP4 192.0.2.4\r\nt=0 0\r\n"
       b"m=audio 49170 RTP/AVP 0\r\n")


def fields(value: str) -> dict[str, str]:
    assert value.startswith("Digest ")
    return auth.parse_challenge(value)


def answer(challenge: str, args: dict, **kw) -> dict[str, str]:
    a = args
    return fields(auth.authorization(auth.parse_challenge(challenge), a["method"], a["uri"], a["user"], a["password"],
                                     a["nc"], a["cnonce"], **kw))


@pytest.mark.parametrize("alg,expected", [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),  # RFC 7616 3.9.1
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),  # RFC 7616 3.9.1
    ("SHA-512-256", "430d05014cecc49cab6fbe03176d41a1da86cbfe24a16580e22aaad928d960d0"),
    ("MD5-sess", "e783283f46242139c486a698fec7211d"),
    ("SHA-256-sess", "2fd51b3a77ad75bad6afad6003e818d767133c46d9e2749e7f5232ae1ea3efd7"),
    ("SHA-512-256-sess", "3f2a34f923c38b0fb26dce2fdfc2ce326c23cecf86fbb1444f3e51fbbc2cb92e"),
])
def test_rfc7616_example_with_each_algorithm(alg, expected):
    got = answer(MUFASA_CHALLENGE.format(alg=alg), MUFASA)
    assert got == {"username": "Mufasa", "realm": "http-auth@example.org",
                   "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "uri": "/dir/index.html",
                   "response": expected, "algorithm": alg, "cnonce": MUFASA["cnonce"], "qop": "auth",
                   "nc": "00000001", "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"}


def test_rfc7616_sha512_256_userhash_example():
    # RFC 7616 3.9.2 prints 488869...(username) and ae66e6...(response): those are SHA-512 cut to 256 bits, not
    # SHA-512/256 (FIPS 180-4) that its 3.2 defines and that OpenSSL, pjsip and kamailio use; we follow the text.
    chal = ('Digest realm="api@example.org", qop="auth", algorithm=SHA-512-256, '
            'nonce="5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK", '
            'opaque="HRPCssKJSGjCrkzDg8OhwpzCiGPChXYjwrI2QmXDnsOS", charset=UTF-8, userhash=true')
    got = answer(chal, dict(method="GET", uri="/doe.json", user="J\u00e4s\u00f8n Doe", password="Secret, or not?",
                            nc=1, cnonce="NTg6RKcb9boFIAS3KrFK9BGeh+iDa/sm6jUMp2wds69v"))
    assert got["username"] == "793263caabb707a56211940d90411ea4a575adeccb7e360aeb624ed06ece9b0b"
    assert got["response"] == "3798d4131c277846293534c3edc11bd8a5e4cdcbff78b05db9d95eeb1cec68a5"
    assert got["userhash"] == "true"


@pytest.mark.parametrize("extra,expected", [
    ('', "bf57e4e0d0bffc0fbaedce64d59add5e"),  # draft 3.1: no qop (RFC 2069 form)
    (', qop="auth"', "89eb0059246c02b2f6ee02c7961d5ea3"),  # draft 3.2
    (', qop="auth-int"', "cf0b429c708be1d0f2a843cb9ea22789"),
    (', qop="auth-int", algorithm=SHA-256', "286d571836d8522ac7ff56bad246b94dcd86b5e8963cd9359a251e5c9febf9e4"),
    (', qop="auth-int", algorithm=SHA-512-256', "c96a23fbb6472eeb46e780fd517036b2d50390079b523f8894023182b0ae1617"),
])
def test_sip_invite_vectors_qop_none_auth_and_auth_int(extra, expected):
    got = answer(BOB_CHALLENGE.format(extra=extra), BOB, body=SDP)
    assert got["response"] == expected
    assert got.get("qop") == params(";" + extra.replace(", ", ";")).get("qop")
    assert ("nc" in got, "cnonce" in got) == (bool(extra), bool(extra))


def test_auth_int_hashes_the_body_and_an_empty_one_when_there_is_none():
    chal = auth.parse_challenge('Digest realm="biloxi.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", qop="auth-int"')
    empty = auth.authorization(chal, "REGISTER", "sip:biloxi.com", "bob", "zanzibar", 1, "0a4f113b")
    assert fields(empty)["response"] == "21b30cb3720f1d6f22eba30b35c52265"
    with_body = auth.authorization(chal, "REGISTER", "sip:biloxi.com", "bob", "zanzibar", 1, "0a4f113b", body=b"x")
    assert fields(with_body)["response"] != fields(empty)["response"]


def test_auth_preferred_over_auth_int_when_both_are_offered():
    # as pjsip and OpenSIPS do: auth-int breaks wherever a proxy rewrites the body
    assert answer(BOB_CHALLENGE.format(extra=', qop="auth-int,auth"'), BOB, body=SDP)["qop"] == "auth"


def test_existing_positional_api_unchanged():
    chal = auth.parse_challenge('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                                'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    value = auth.authorization(chal, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", 1, "0a4f113b")
    assert fields(value)["response"] == "6629fae49393a05397450978507c4ef1"  # RFC 2617 3.5
    assert fields(auth.authorization(chal, "GET", "/", "u", "p"))["nc"] == "00000001"  # a fresh cnonce each time


def test_quotes_and_backslashes_in_values_are_escaped_and_unescaped():
    chal = auth.parse_challenge(r'Digest realm="a \"home\" realm\\", nonce="n"')
    assert chal["realm"] == 'a "home" realm\\'
    value = auth.authorization(chal, "REGISTER", "sip:h", 'o"brien', "p", 1, "c")
    assert r'username="o\"brien"' in value and r'realm="a \"home\" realm\\"' in value
    assert fields(value)["username"] == 'o"brien'


def test_sess_without_qop_still_sends_its_cnonce():
    value = auth.authorization(auth.parse_challenge('Digest realm="r", nonce="n", algorithm=MD5-sess'),
                               "REGISTER", "sip:h", "u", "p", 1, "c0ffee")
    assert fields(value)["cnonce"] == "c0ffee" and "qop" not in fields(value)


@pytest.mark.parametrize("values,algorithm", [
    (['Digest realm="r", nonce="1"'], "MD5"),
    (['Digest realm="r", nonce="1", algorithm=MD5', 'Digest realm="r", nonce="2", algorithm=SHA-256'], "SHA-256"),
    (['Digest realm="r", nonce="1", algorithm=SHA-256', 'Digest realm="r", nonce="2", algorithm=SHA-512-256',
      'Digest realm="r", nonce="3", algorithm=MD5'], "SHA-512-256"),
    (['Digest realm="r", nonce="1", algorithm=SHA3-256', 'Digest realm="r", nonce="2", algorithm=md5'], "md5"),
    (['Basic realm="r"', 'Digest realm="r", nonce="2", algorithm=SHA-256-sess'], "SHA-256-sess"),
    # several challenges folded into one header value (RFC 7235 4.1)
    (['Digest realm="r", nonce="1", qop="auth,auth-int", algorithm=MD5, Digest realm="r", nonce="2", '
      'algorithm=SHA-256, qop="auth"'], "SHA-256"),
    # one with a qop we cannot do is skipped
    (['Digest realm="r", nonce="1", algorithm=SHA-512-256, qop="auth-conf"', 'Digest realm="r", nonce="2"'], "MD5"),
])
def test_best_challenge(values, algorithm):
    assert auth.best_challenge(values).get("algorithm", "MD5") == algorithm


def test_best_challenge_keeps_the_servers_order_among_equals():
    got = auth.best_challenge(['Digest realm="r", nonce="1", algorithm=SHA-256',
                               'Digest realm="r", nonce="2", algorithm=SHA-256-sess'])
    assert got["nonce"] == "1"


@pytest.mark.parametrize("values,message", [
    (['Digest realm="r", nonce="1", algorithm=SHA3-256'], "unsupported digest algorithm: SHA3-256"),
    (['Digest realm="r", nonce="1", algorithm=SHA3-256', 'Digest realm="r", nonce="2", algorithm=AKAv1-MD5'],
     "unsupported digest algorithm: SHA3-256, AKAv1-MD5"),
    (['Basic realm="r"'], "unsupported authentication scheme 'Basic'"),
    (['Digest realm="r"'], "challenge without nonce"),
    (['Digest realm="r", nonce="1", qop="auth-conf"'], "unsupported qop: auth-conf"),
    ([], "no challenge"),
])
def test_best_challenge_errors_name_what_was_offered(values, message):
    with pytest.raises(ValueError) as e:
        auth.best_challenge(values)
    assert str(e.value) == message


@pytest.mark.parametrize("challenge,message", [
    ('Digest realm="r", nonce="1", algorithm=SHA3-256', "unsupported digest algorithm: SHA3-256"),
    ('Digest realm="r", nonce="1", qop="auth-conf"', "unsupported qop: auth-conf"),
    ('Basic realm="r"', "unsupported authentication scheme 'Basic'"),
])
def test_parse_challenge_refuses_what_it_cannot_answer(challenge, message):
    # the agent reports this text as the registration error, not "wrong user name or password?"
    with pytest.raises(ValueError) as e:
        auth.parse_challenge(challenge)
    assert str(e.value) == message


def test_authorization_refuses_an_unsupported_algorithm():
    with pytest.raises(ValueError, match="^unsupported digest algorithm: SHA3-256$"):
        auth.authorization({"nonce": "n", "algorithm": "SHA3-256"}, "REGISTER", "sip:h", "u", "p")


def test_without_sha512_256_in_hashlib_it_is_skipped_and_named(monkeypatch):
    # hashlib has sha512_256 only on OpenSSL builds: then SHA-256 is chosen, and alone it is a clear error
    monkeypatch.delitem(auth.HASHES, "SHA-512-256")
    offered = ['Digest realm="r", nonce="1", algorithm=SHA-512-256', 'Digest realm="r", nonce="2", algorithm=SHA-256']
    assert auth.best_challenge(offered)["algorithm"] == "SHA-256"
    with pytest.raises(ValueError) as e:
        auth.best_challenge(offered[:1])
    assert str(e.value) == "unsupported digest algorithm: SHA-512-256 (not in this Python's hashlib)"


def test_this_python_has_every_algorithm():
    assert set(auth.HASHES) == {"SHA-512-256", "SHA-256", "MD5"}


# --- against a real peer: kamailio 5.6's auth module challenges with MD5 or SHA-256 (it has no SHA-512-256), with
# or without qop=auth. It cannot check auth-int: auth_check_response() hashes an H(entity-body) it never computes.

KAMAILIO_CFG = """#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=1
disable_tcp=yes
auto_aliases=no
dns=no
rev_dns=no
listen=udp:127.0.0.1:{port}
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "auth.so"
modparam("auth", "algorithm", "{algorithm}")
request_route {{
\tif (!pv_auth_check("$td", "s3cret", "0", "1")) {{
\t\tif ($tU == "qop-none") {{ auth_challenge("$td", "0"); }}
\t\telse if ($tU == "qop-auth-int") {{ auth_challenge("$td", "2"); }}
\t\telse {{ auth_challenge("$td", "1"); }}
\t\texit;
\t}}
\tsl_send_reply("200", "OK");
}}
"""


@pytest.fixture(scope="module", params=["MD5", "SHA-256"])
def kamailio(request, tmp_path_factory):
    if shutil.which("kamailio") is None:
        pytest.skip("kamailio is not installed (make test installs it)")
    workdir = tmp_path_factory.mktemp("kamailio")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = workdir / "kamailio.cfg"
    cfg.write_text(KAMAILIO_CFG.format(port=port, algorithm=request.param))
    log = (workdir / "kamailio.log").open("wb")
    proc = subprocess.Popen(["kamailio", "-DD", "-E", "-f", str(cfg), "-Y", str(workdir), "-P",
                             str(workdir / "kamailio.pid"), "-m", "16", "-M", "4"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.1)
        deadline = time.monotonic() + 10
        while _exchange(sock, port, _register(sock, "probe", 1)) is None:
            assert proc.poll() is None and time.monotonic() < deadline, (workdir / "kamailio.log").read_text()
        yield request.param, sock, port
        sock.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _register(sock: socket.socket, user: str, cseq: int, authorization: str | None = None) -> Message:
    host, port = sock.getsockname()
    headers = [("via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bK{uuid.uuid4().hex};rport"),
               ("max-forwards", "70"), ("from", f"<sip:{user}@127.0.0.1>;tag=t{cseq}"),
               ("to", f"<sip:{user}@127.0.0.1>"), ("call-id", f"auth-{user}"), ("cseq", f"{cseq} REGISTER"),
               ("contact", f"<sip:{user}@{host}:{port}>"), ("expires", "60")]
    if authorization:
        headers.append(("authorization", authorization))
    return Message(method="REGISTER", uri="sip:127.0.0.1", headers=headers)


def _exchange(sock: socket.socket, port: int, request: Message, timeout: float = 0.1) -> Message | None:
    sock.sendto(request.to_bytes(), ("127.0.0.1", port))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = parse(sock.recv(65535))
        except TimeoutError:
            continue
        if reply.branch == request.branch:
            return reply
    return None


@pytest.mark.e2e
@pytest.mark.parametrize("qop", ["none", "auth"])
def test_kamailio_accepts_our_answer(kamailio, qop):
    algorithm, sock, port = kamailio
    user = f"qop-{qop}"
    first = _exchange(sock, port, _register(sock, user, 1), 2.0)
    assert first is not None and first.status == 401
    challenge = auth.best_challenge(first.get_all("www-authenticate"))
    assert challenge.get("algorithm", "MD5") == algorithm
    assert challenge.get("qop") == (None if qop == "none" else qop)
    wrong = auth.authorization(challenge, "REGISTER", "sip:127.0.0.1", user, "wrong", 1)
    assert _exchange(sock, port, _register(sock, user, 2, wrong), 2.0).status == 401
    right = auth.authorization(challenge, "REGISTER", "sip:127.0.0.1", user, "s3cret", 2)
    reply = _exchange(sock, port, _register(sock, user, 3, right), 2.0)
    assert reply.status == 200, reply.to_bytes().decode()
