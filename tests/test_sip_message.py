"""The pure SIP parser: header forms pyVoIP mangled (B8, B10, B11, B19), name-addr, URIs, SDP, digest."""

from __future__ import annotations

import pytest

from screener.sip.message import (
    Message,
    ParseError,
    check_request,
    name_addr,
    parse,
    parse_sdp,
    parse_uri,
    sdp_body,
    split_list,
    via_sent_by,
)

BASE = ("INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK1;rport\r\n"
        "From: <sip:1@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n")


def msg(extra: str = "", body: str = "") -> Message:
    return parse((BASE + extra + f"Content-Length: {len(body.encode())}\r\n\r\n{body}").encode())


def test_compact_odd_case_no_space_empty_and_folded_headers():
    # B8: pyVoIP split on ": " and knew only canonical long names
    m = parse(b"INVITE sip:a@b SIP/2.0\r\nv:SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:1@b>;tag=1\r\nT :<sip:a@b>\r\n"
              b"i:cid\r\nCSEQ: 2\r\n INVITE\r\nSubject:\r\nl: 0\r\n\r\n")
    assert (m.call_id, m.cseq, m.get("to"), m.get("subject")) == ("cid", (2, "INVITE"), "<sip:a@b>", "")
    check_request(m)


def test_duplicate_headers_are_all_kept():
    # B8: pyVoIP kept only the first of repeated headers
    m = msg("P-Asserted-Identity: <sip:+390212345678@p>\r\nP-Asserted-Identity: <tel:+390212345678>\r\n"
            "Record-Route: <sip:p1;lr>, <sip:p2;lr>\r\nRecord-Route: <sip:p3;lr>\r\n")
    assert m.get_all("p-asserted-identity") == ["<sip:+390212345678@p>", "<tel:+390212345678>"]
    assert m.get_all("record-route") == ["<sip:p1;lr>", "<sip:p2;lr>", "<sip:p3;lr>"]


@pytest.mark.parametrize("raw,scheme,user,host", [
    ("tel:+390212345678;phone-context=+39", "tel", "+390212345678", ""),
    ("sips:0212345678@provider.it:5061;user=phone", "sips", "0212345678", "provider.it"),
    ("sip:%2B39021234@[2001:db8::1]:5060", "sip", "+39021234", "2001:db8::1"),
    ("sip:provider.it", "sip", "", "provider.it"),
])
def test_uris(raw, scheme, user, host):
    # B10: tel: and sips: URIs are parsed, not a reason to drop the INVITE
    u = parse_uri(raw)
    assert (u.scheme, u.user, u.host) == (scheme, user, host)


@pytest.mark.parametrize("value,display,uri,tag", [
    ('"Rossi, Mario \\"M\\"" <sip:1@b>;tag=x', 'Rossi, Mario "M"', "sip:1@b", "x"),
    ("Kitchen <sip:**622@fritz.box>", "Kitchen", "sip:**622@fritz.box", None),
    ("sip:1@b;tag=y", "", "sip:1@b", "y"),
    ("<tel:+39021>;tag=z", "", "tel:+39021", "z"),
])
def test_name_addr(value, display, uri, tag):
    na = name_addr(value)
    assert (na.display, na.uri, na.tag) == (display, uri, tag)


@pytest.mark.parametrize("bad", ['"unterminated <sip:a@b>', "<sip:a@b", "two words@b"])
def test_name_addr_errors(bad):
    with pytest.raises(ParseError):
        name_addr(bad)


def test_split_list_respects_quotes_and_brackets():
    assert split_list('"a, b" <sip:x@y;p=1,2>, <sip:z@w>') == ['"a, b" <sip:x@y;p=1,2>', "<sip:z@w>"]


def test_rtpmap_for_payload_not_on_m_line_is_ignored():
    # B11: pyVoIP dropped the INVITE when an rtpmap named a payload missing from m=
    sdp = parse_sdp(b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 8 101\r\na=rtpmap:97 iLBC/8000\r\n"
                    b"a=rtpmap:101 telephone-event/8000\r\n")
    assert sdp.payloads == (8, 101) and 97 not in sdp.rtpmap
    assert sdp.codec(8) == "PCMA" and sdp.event_payload() == 101


def test_sdp_values_with_equals_and_session_level_address():
    # B19: pyVoIP split SDP lines on every "=", cutting values
    sdp = parse_sdp(b"v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
                    b"m=audio 4000 RTP/AVP 0\r\na=fmtp:0 x=y;z=w\r\na=sendonly\r\nm=video 5000 RTP/AVP 31\r\n")
    assert (sdp.address, sdp.port, sdp.direction) == ("192.0.2.9", 4000, "sendonly")


def test_content_length_is_honoured_and_checked():
    # B19: pyVoIP ignored Content-Length
    m = parse((BASE + "Content-Length: 4\r\n\r\nbodyTRAILING").encode())
    assert m.body == b"body"
    with pytest.raises(ParseError, match="Content-Length"):
        parse((BASE + "Content-Length: 400\r\n\r\nshort").encode())
    with pytest.raises(ParseError, match="Content-Length"):
        parse((BASE + "Content-Length: -1\r\n\r\n").encode())


def test_non_utf8_and_large_datagrams():
    # B19: non-UTF-8 bytes dropped the message and datagrams were cut at 8 KB
    m = parse((BASE + "X-Big: " + "a" * 40000 + "\r\nContent-Length: 0\r\n\r\n").encode().replace(b"<sip:1@b>",
                                                                                                  b'"\xe8\xff" <sip:1@b>'))
    assert len(m.get("x-big")) == 40000 and name_addr(m.get("from")).display.startswith("\udce8")
    assert m.to_bytes().count(b"\xe8\xff") == 1  # round-trips byte for byte
    with pytest.raises(ParseError, match="too large"):
        parse(b"x" * 70000)


@pytest.mark.parametrize("extra,problem", [
    ("CSeq: 2 INVITE\r\n", "duplicate"), ("Max-Forwards: ten\r\n", "Max-Forwards"),
])
def test_check_request_problems(extra, problem):
    with pytest.raises(ParseError, match=problem):
        check_request(msg(extra))


@pytest.mark.parametrize("text,problem", [
    ("INVITE sip:a@b SIP/2.0\r\nFrom: <sip:1@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n",
     "missing Via"),
    (BASE.replace("CSeq: 1 INVITE", "CSeq: 1 BYE") + "\r\n", "bad CSeq"),
    (BASE.replace("CSeq: 1 INVITE", "CSeq: 99999999999 INVITE") + "\r\n", "bad CSeq"),
])
def test_incomplete_requests(text, problem):
    with pytest.raises(ParseError, match=problem):
        check_request(parse(text.encode()))


def test_garbage_start_lines():
    for data in (b"", b"\r\n\r\n", b"HELLO\r\n\r\n", b"SIP/2.0 999 Odd\r\n\r\n", b"INVITE\r\n\r\n",
                 b"INVITE sip:a@b SIP/2.0\r\nno colon here\r\n\r\n"):
        with pytest.raises(ParseError):
            parse(data)


def test_via_sent_by():
    assert via_sent_by("SIP/2.0/UDP 192.0.2.1:5070;branch=x") == ("192.0.2.1", 5070)
    assert via_sent_by("SIP / 2.0 / UDP [2001:db8::1];branch=x") == ("2001:db8::1", 5060)


def test_multipart_sdp_body():
    body = ("--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b1\r\nContent-Type: application/sdp\r\n\r\n"
            "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\n\r\n--b1--\r\n")
    m = msg('Content-Type: multipart/mixed;boundary="b1"\r\n', body)
    assert parse_sdp(sdp_body(m)).port == 4000
