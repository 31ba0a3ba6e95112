"""SIP message parsing and building, pure (no sockets, no clocks).

Replaces pyVoIP's SIPMessage parser, which drops or misreads whole classes of valid datagrams (B8, B10, B11,
B19). Everything here raises ParseError on malformed input and never anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

MAX_DATAGRAM = 65535

# RFC 3261 7.3.3 and the later extensions' compact forms
COMPACT = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length", "c": "content-type",
    "f": "from", "s": "subject", "k": "supported", "t": "to", "v": "via", "r": "refer-to", "b": "referred-by",
    "o": "event", "u": "allow-events", "x": "session-expires", "a": "accept-contact", "j": "reject-contact",
    "d": "request-disposition", "y": "identity", "n": "identity-info",
}

# Headers whose value may hold several comma-separated entries (RFC 3261 7.3.1)
_LIST_HEADERS = {"via", "contact", "route", "record-route", "allow", "supported", "require", "proxy-require",
                 "unsupported", "accept"}

_PRETTY = {"call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate",
           "p-asserted-identity": "P-Asserted-Identity", "p-called-party-id": "P-Called-Party-ID"}

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_STATUS = re.compile(r"SIP/2\.0 +(\d{3}) ?(.*)", re.IGNORECASE)
_REQUEST = re.compile(r"(\S+) +(\S+) +SIP/(\d+\.\d+)", re.IGNORECASE)


class ParseError(ValueError):
    """A datagram that is not a usable SIP message."""


def pretty(name: str) -> str:
    """Canonical spelling of a lower-case header name, for messages we build."""
    return _PRETTY.get(name) or "-".join(p.capitalize() for p in name.split("-"))


def split_list(value: str) -> list[str]:
    """Split a header value on commas outside quotes and angle brackets."""
    out: list[str] = []
    cur: list[str] = []
    quoted = esc = False
    depth = 0
    for ch in value:
        if esc:
            esc = False
        elif quoted and ch == "\\":
            esc = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif not quoted and depth == 0 and ch == ",":
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return [v for v in out if v]


@dataclass
class Message:
    """One parsed SIP request or response. Header names are stored lower-case and long-form."""

    method: str = ""  # requests only
    version: str = "2.0"
    uri: str = ""
    status: int = 0  # responses only
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return bool(self.method)

    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of a header (name case-insensitive, compact form allowed)."""
        name = _norm(name)
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of a header, list headers split into their entries (B8: duplicates kept)."""
        name = _norm(name)
        out: list[str] = []
        for k, v in self.headers:
            if k == name:
                out.extend(split_list(v) if name in _LIST_HEADERS else [v])
        return out

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    @property
    def call_id(self) -> str:
        return self.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        num, _, method = (self.get("cseq") or "").strip().partition(" ")
        return int(num), method.strip().upper()

    @property
    def top_via(self) -> str:
        vias = self.get_all("via")
        return vias[0] if vias else ""

    @property
    def branch(self) -> str:
        return param(self.top_via, "branch") or ""

    def to_bytes(self) -> bytes:
        """Serialise; Content-Length is always computed from the body."""
        if self.method:
            first = f"{self.method} {self.uri} SIP/2.0"
        else:
            first = f"SIP/2.0 {self.status} {self.reason}"
        lines = [first]
        lines += [f"{pretty(k)}: {v}" for k, v in self.headers if k != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body


def _norm(name: str) -> str:
    n = name.strip().lower()
    return COMPACT.get(n, n)


def parse(data: bytes, check_length: bool = True) -> Message:
    """Parse one datagram. Tolerates LWS, folding, compact and odd-case names, non-UTF-8 bytes."""
    if len(data) > MAX_DATAGRAM:
        raise ParseError("datagram too large")
    data = data.lstrip(b"\r\n")  # RFC 3261 7.5: ignore leading CRLFs (keepalives)
    if not data:
        raise ParseError("empty datagram")
    sep = data.find(b"\r\n\r\n")
    if sep >= 0:
        head, body = data[:sep], data[sep + 4:]
    else:
        sep = data.find(b"\n\n")  # bare-LF senders exist
        head, body = (data[:sep], data[sep + 2:]) if sep >= 0 else (data, b"")
    # B19: undecodable bytes must not drop the message; surrogateescape keeps them round-trippable
    text = head.decode("utf-8", "surrogateescape")
    lines = re.split(r"\r?\n", text)
    msg = Message()
    _parse_start(lines[0].strip(), msg)
    unfolded: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and unfolded:
            unfolded[-1] += " " + line.strip()  # RFC 3261 7.3.1 header folding
        elif line.strip():
            unfolded.append(line)
    for line in unfolded:
        # B8: split on the first ':' whatever the spacing; an empty value is a valid header
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name.strip()):
            raise ParseError(f"malformed header line {line[:40]!r}")
        msg.headers.append((_norm(name), value.strip()))
    # B19: honour Content-Length; on UDP a missing one means "the rest of the datagram"
    cl = msg.get("content-length")
    if cl is not None and check_length:
        if not cl.isdigit():
            raise ParseError("bad Content-Length")
        n = int(cl)
        if n > len(body):
            raise ParseError("Content-Length larger than the datagram")
        body = body[:n]
    msg.body = body
    return msg


def _parse_start(line: str, msg: Message) -> None:
    m = _STATUS.fullmatch(line)
    if m:
        msg.status, msg.reason = int(m.group(1)), m.group(2)
        if not 100 <= msg.status <= 699:
            raise ParseError("status code out of range")
        return
    m = _REQUEST.fullmatch(line)
    if not m:
        raise ParseError(f"bad start line {line[:40]!r}")
    msg.version = m.group(3)
    if not _TOKEN.fullmatch(m.group(1)):
        raise ParseError("bad method")
    msg.method, msg.uri = m.group(1), m.group(2)


class VersionError(ParseError):
    """A request with a SIP version other than 2.0 (answered 505)."""


def check_request(msg: Message) -> None:
    """The checks a UAS needs before acting (RFC 3261 8.2); raise ParseError naming the problem."""
    if msg.version != "2.0":
        raise VersionError(f"SIP/{msg.version}")
    for h in ("via", "from", "to", "call-id", "cseq"):
        if not (msg.get(h) or "").strip():
            raise ParseError(f"missing {pretty(h)}")
    try:
        num, method = msg.cseq
    except ValueError:
        raise ParseError("bad CSeq") from None
    if not 0 <= num < 2**31 or method != msg.method.upper():
        raise ParseError("bad CSeq")
    if len(msg.get_all("content-length")) > 1 or len(msg.get_all("cseq")) > 1:
        raise ParseError("duplicate header")
    for h in ("from", "to"):
        if len(msg.get_all(h)) > 1:
            raise ParseError(f"duplicate {pretty(h)}")
        # B10: only the name-addr syntax is checked here; tel:, sips: and other schemes are fine
        name_addr(msg.get(h) or "")
    mf = msg.get("max-forwards")
    if mf is not None and not mf.strip().isdigit():
        raise ParseError("bad Max-Forwards")
    for raw in (v for k, v in msg.headers if k == "via"):
        if re.search(r";\s*[;,]|,\s*[,;]|[;,]\s*$", raw):
            raise ParseError("empty Via element")
    via = msg.top_via
    if not re.match(r"SIP\s*/\s*2\.0\s*/\s*[A-Za-z]+\s+\S", via, re.IGNORECASE):
        raise ParseError("bad Via")


# -- parameters, name-addr and URIs -------------------------------------------------------------------------


def params(text: str) -> dict[str, str]:
    """`;a=1;b;c="x"` -> {"a": "1", "b": "", "c": "x"} (names lower-case, spaces around '=' allowed)."""
    out: dict[str, str] = {}
    for part in _split_semis(text):
        k, _, v = part.partition("=")
        k = k.strip().lower()
        if k:
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1]
            out[k] = v
    return out


def param(text: str, name: str) -> str | None:
    """One parameter of a header value such as a Via (`;branch=...`)."""
    _, _, rest = text.partition(";")
    return params(rest).get(name.lower())


def _split_semis(text: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [p for p in out if p.strip()]


@dataclass(frozen=True)
class Uri:
    scheme: str  # "sip", "sips", "tel", or anything else seen
    user: str  # unescaped user part, or the tel: number
    host: str
    port: int | None
    params: dict[str, str]
    raw: str

    def hostport(self, default: int = 5060) -> tuple[str, int]:
        return self.host, self.port or default


def parse_uri(raw: str) -> Uri:
    """Parse sip:, sips: and tel: URIs (B10); other schemes keep only their raw text."""
    raw = raw.strip()
    scheme, colon, rest = raw.partition(":")
    if not colon or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+\-.]*", scheme):
        raise ParseError(f"bad URI {raw[:40]!r}")
    scheme = scheme.lower()
    if scheme == "tel":
        number, _, p = rest.partition(";")
        return Uri("tel", unquote(number), "", None, params(p), raw)
    if scheme not in ("sip", "sips"):
        return Uri(scheme, "", "", None, {}, raw)
    rest = rest.partition("?")[0]
    user, at, hostpart = rest.rpartition("@")
    if not at:
        user, hostpart = "", rest
    user = user.partition(":")[0]  # drop a password
    hostpart, _, p = hostpart.partition(";")
    hostpart = hostpart.strip()
    port: int | None = None
    if hostpart.startswith("["):
        host, _, tail = hostpart[1:].partition("]")
        if tail.startswith(":"):
            port = _port(tail[1:])
    else:
        host, colon2, portpart = hostpart.partition(":")
        if colon2:
            port = _port(portpart)
    if not host:
        raise ParseError(f"URI without host {raw[:40]!r}")
    return Uri(scheme, unquote(user), host.lower(), port, params(p), raw)


def _port(text: str) -> int:
    if not text.strip().isdigit() or not 0 < int(text) < 65536:
        raise ParseError("bad port")
    return int(text)


@dataclass(frozen=True)
class NameAddr:
    display: str
    uri: str  # raw URI text
    params: dict[str, str]

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")


def name_addr(value: str) -> NameAddr:
    """Parse `"Name" <uri>;p=v`, `Name <uri>` or a bare `uri;p=v` (whose params belong to the header)."""
    v = value.strip()
    if "<" in v:
        display, _, rest = _split_display(v)
        uri, close, tail = rest.partition(">")
        if not close:
            raise ParseError("unbalanced <")
        return NameAddr(display, uri.strip(), params(tail))
    if not v:
        raise ParseError("empty address")
    uri, _, tail = v.partition(";")
    if " " in uri.strip():
        raise ParseError("address with spaces")
    return NameAddr("", uri.strip(), params(tail))


def _split_display(v: str) -> tuple[str, str, str]:
    if v.startswith('"'):
        i, esc = 1, False
        while i < len(v):
            if esc:
                esc = False
            elif v[i] == "\\":
                esc = True
            elif v[i] == '"':
                break
            i += 1
        else:
            raise ParseError("unterminated quoted display name")
        display = re.sub(r"\\(.)", r"\1", v[1:i])
        rest = v[i + 1:].lstrip()
        if not rest.startswith("<"):
            raise ParseError("display name without <uri>")
        return display, "<", rest[1:]
    display, lt, rest = v.partition("<")
    return " ".join(display.split()), lt, rest


def via_sent_by(via: str) -> tuple[str, int]:
    """(host, port) of a Via value such as `SIP/2.0/UDP 192.0.2.1:5060;branch=...`."""
    proto_host = via.partition(";")[0]
    m = re.match(r"\s*SIP\s*/\s*[\d.]+\s*/\s*[A-Za-z]+\s+(\[[^\]]+\]|[^\s:]+)\s*(?::\s*(\d+))?",
                 proto_host, re.IGNORECASE)
    if not m:
        raise ParseError("bad Via")
    return m.group(1).strip("[]"), int(m.group(2) or 5060)


# -- SDP -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sdp:
    address: str  # connection address of the audio stream
    port: int  # 0 = stream refused / held
    proto: str  # "RTP/AVP", "RTP/SAVP", ...
    payloads: tuple[int, ...]  # in the offerer's order of preference
    rtpmap: dict[int, str]  # pt -> "PCMA/8000" (only for payloads on the m= line, B11)
    direction: str  # sendrecv, sendonly, recvonly, inactive
    ptime: int | None = None  # a=ptime of the audio stream (or the session), in ms
    streams: tuple[tuple[str, str, str], ...] = ()  # every m= line: (media, proto, formats), in order
    audio_index: int = 0  # which of `streams` is the audio stream above

    @property
    def on_hold(self) -> bool:
        """An RFC 2543 hold: the offerer's connection address is unspecified (c=0.0.0.0 or c=::)."""
        return self.address in ("0.0.0.0", "::")

    def event_payload(self) -> int | None:
        for pt, enc in self.rtpmap.items():
            if enc.lower().startswith("telephone-event/8000"):
                return pt
        return None

    def codec(self, pt: int) -> str:
        if pt in self.rtpmap:
            return self.rtpmap[pt].split("/")[0].upper()
        return {0: "PCMU", 8: "PCMA"}.get(pt, "")


def parse_sdp(body: bytes) -> Sdp:
    """The first audio stream of an SDP body (and the list of all its m= lines); ParseError when there is none."""
    text = body.decode("utf-8", "replace")
    session_c = ""
    session_ptime: int | None = None
    session_dir = "sendrecv"
    audio: dict[str, object] | None = None
    streams: list[tuple[str, str, str]] = []
    current: int | None = None  # the index of the m= section being read; None: the session part
    audio_index = 0
    lines = [ln.strip() for ln in re.split(r"\r?\n", text) if ln.strip()]
    for line in lines:
        # B19: split once, so values containing '=' survive
        kind, eq, value = line.partition("=")
        if not eq:
            continue
        if kind == "m":
            parts = value.split()
            if len(parts) < 3:
                raise ParseError("bad m= line")
            streams.append((parts[0], parts[2], " ".join(parts[3:]) or "0"))
            current = len(streams) - 1
            if audio is None and parts[0] == "audio":
                try:
                    port = int(parts[1].partition("/")[0])
                    pts = tuple(int(p) for p in parts[3:] if p.isdigit() and int(p) < 128)
                except ValueError:
                    raise ParseError("bad m= line") from None
                audio = {"port": port, "proto": parts[2], "pts": pts, "c": "", "rtpmap": {}, "dir": session_dir,
                         "ptime": None}
                audio_index = current
        elif kind == "c":
            addr = value.split()  # "IN IP4 192.0.2.1", "IN IP6 2001:db8::1" (a multicast TTL after a /)
            if len(addr) >= 3:
                if current is None:
                    session_c = addr[2].partition("/")[0]
                elif audio is not None and current == audio_index:
                    audio["c"] = addr[2].partition("/")[0]
        elif kind == "a":
            name, _, val = value.partition(":")
            if name == "ptime":
                try:
                    ms = int(float(val.strip()))
                except ValueError:
                    continue
                if current is None:
                    session_ptime = ms
                elif audio is not None and current == audio_index:
                    audio["ptime"] = ms
            if current is None and name in ("sendrecv", "sendonly", "recvonly", "inactive"):
                session_dir = name
            if audio is None or current != audio_index:
                continue
            if name == "rtpmap":
                pt, _, enc = val.partition(" ")
                # B11: an rtpmap for a payload not on the m= line is ignored, not fatal
                if pt.isdigit() and int(pt) in audio["pts"]:  # type: ignore[operator]
                    audio["rtpmap"][int(pt)] = enc.strip()  # type: ignore[index]
            elif name in ("sendrecv", "sendonly", "recvonly", "inactive"):
                audio["dir"] = name
    if audio is None:
        raise ParseError("no audio stream in SDP")
    address = str(audio["c"] or session_c)
    if not address:
        raise ParseError("no connection address in SDP")
    ptime = audio["ptime"] if audio["ptime"] is not None else session_ptime
    return Sdp(address, int(audio["port"]), str(audio["proto"]), audio["pts"],  # type: ignore[arg-type, call-overload]
               dict(audio["rtpmap"]), str(audio["dir"]), ptime, tuple(streams), audio_index)  # type: ignore[call-overload, arg-type]


def sdp_body(msg: Message) -> bytes | None:
    """The application/sdp body of a message, also inside multipart/mixed; None when there is none."""
    if not msg.body:
        return None
    ctype = msg.get("content-type") or "application/sdp"
    if ctype.lower().startswith("application/sdp"):
        return msg.body
    if ctype.lower().startswith("multipart/"):
        boundary = params(ctype.partition(";")[2]).get("boundary")
        if boundary:
            for part in msg.body.split(b"--" + boundary.encode()):
                head, sep, content = part.partition(b"\r\n\r\n")
                if sep and b"application/sdp" in head.lower():
                    return content.rstrip(b"\r\n")
    return None
