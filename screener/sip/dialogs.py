"""The incoming call's dialog and the messages it is made of, pure: state, route set, responses, BYE, SDP.

A dialog goes ringing -> answered (200 sent) -> confirmed (ACKed) -> ended; `end_reason` is set as soon as
the call is over for the handler (a hangup or a CANCEL crossing our 200 still waits for the ACK and sends
BYE after it).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from screener.sip import auth
from screener.sip.message import (
    Message,
    ParseError,
    Sdp,
    name_addr,
    params,
    parse,
    parse_sdp,
    parse_uri,
    sdp_body,
    via_sent_by,
)
from screener.sip.registration import USER_AGENT, Contact
from screener.sip.transactions import ServerInviteTransaction
from screener.text import clean

# option tags we implement (RFC 3262 reliable provisionals); another in Require: we ring, never answer
SUPPORTED: frozenset[str] = frozenset({"100rel", "timer"})  # timer: RFC 4028 session timers as the UAS
REASONS = {180: "Ringing", 420: "Bad Extension", 480: "Temporarily Unavailable", 486: "Busy Here",
           487: "Request Terminated", 488: "Not Acceptable Here", 500: "Server Internal Error", 603: "Decline",
           607: "Unwanted"}


@dataclass(frozen=True)
class IncomingCall:
    """An INVITE as plain values: everything the rest of screener may know about it."""

    call_id: str
    source: tuple[str, int]
    from_raw: str  # the From header value as received
    pai_raw: str | None  # P-Asserted-Identity, when present
    privacy: str | None  # the Privacy header, e.g. "id"
    called: str  # P-Called-Party-ID, else the To header value: the line that was called
    display_name: str  # from P-Asserted-Identity when present and from the provider, else From
    from_provider: bool
    request_uri: str = ""
    cannot_serve: str = ""  # why screener could ring but not answer this call ("" = it can)


class DState(enum.Enum):
    RINGING = "ringing"
    ANSWERED = "answered"  # 200 OK sent, waiting for its ACK
    CONFIRMED = "confirmed"
    ENDED = "ended"


class DEvent(enum.Enum):
    ANSWER = "answer"
    ACK = "ack"
    REJECT = "reject"  # a final non-2xx while ringing (decline, CANCEL, ring limit, handler gone)
    BYE_IN = "bye received"
    BYE_OUT = "bye sent"
    NO_ACK = "no ack"
    STOP = "stop"


DIALOG: dict[tuple[DState, DEvent], DState] = {
    (DState.RINGING, DEvent.ANSWER): DState.ANSWERED,
    (DState.RINGING, DEvent.REJECT): DState.ENDED,
    (DState.RINGING, DEvent.STOP): DState.ENDED,
    (DState.ANSWERED, DEvent.ACK): DState.CONFIRMED,
    (DState.ANSWERED, DEvent.BYE_IN): DState.ENDED,
    (DState.ANSWERED, DEvent.BYE_OUT): DState.ENDED,
    (DState.ANSWERED, DEvent.NO_ACK): DState.ENDED,
    (DState.ANSWERED, DEvent.STOP): DState.ENDED,
    (DState.CONFIRMED, DEvent.BYE_IN): DState.ENDED,
    (DState.CONFIRMED, DEvent.BYE_OUT): DState.ENDED,
    (DState.CONFIRMED, DEvent.STOP): DState.ENDED,
}


@dataclass(frozen=True)
class AnswerPlan:
    """What answering a call takes: the codec chosen from the offer and where its media goes."""

    codec: str
    payload: int
    event_payload: int | None
    remote: tuple[str, int]  # port 0: send nothing (a late offer, whose answer the ACK brings; a hold)
    late: bool
    ptime: int = 20  # ms per packet we send: the offer's a=ptime when within PTIME_RANGE
    direction: str = "sendrecv"  # of our answer (recvonly to a hold, RFC 3264 8.4)
    streams: tuple[tuple[str, str, str], ...] = ()  # the offer's m= lines, each answered (RFC 3264 6)
    audio_index: int = 0

    @property
    def sends(self) -> bool:
        return self.direction in ("sendrecv", "sendonly") and self.remote[1] != 0


class Dialog:
    """One incoming call from INVITE to its end (with its INVITE server transaction)."""

    def __init__(self, info: IncomingCall, invite: Message, addr: tuple[str, int], to_tag: str, local_cseq: int,
                 tx: ServerInviteTransaction, offer: Sdp | None) -> None:
        self.info, self.invite, self.addr, self.to_tag, self.tx, self.offer = info, invite, addr, to_tag, tx, offer
        self.key = invite.call_id  # as received (info.call_id is cleaned for display)
        self.state = DState.RINGING
        self.local_cseq = local_cseq
        # declined, cancelled, bye, hangup, no_ack, stopped, error, timeout, session_expired
        self.end_reason: str | None = None
        self.cancel_reason: str | None = None
        self.bye_pending = False
        self.local_sdp = b""
        self.has_media = False
        self.ring_deadline: float | None = None
        self.plan: AnswerPlan | None = None  # what our current SDP answered
        self.rtp_port = 0
        self.sdp_session = 0
        self.sdp_version = 0
        self.remote_cseq = invite.cseq[0]  # the highest CSeq of the caller's requests so far (RFC 3261 12.2.2)
        self.reinvite: ServerInviteTransaction | None = None  # the latest re-INVITE we answered
        self.reinvite_cseq = 0
        self.reinvite_late = False  # that re-INVITE had no offer: its ACK brings the answer to ours
        self.rseq = 0  # RSeq of our latest reliable provisional response (RFC 3262)
        self.reliable: bytes | None = None  # that response while its PRACK has not come
        self.rel_at: float | None = None  # when it goes again
        self.rel_interval = 0.0
        self.rel_deadline = 0.0
        self.session_expires = 0  # RFC 4028: the session interval (0: no session timer)
        self.refresher = "uac"
        self.session_at: float | None = None  # when we refresh (refresher uas), or end the call (uac)
        self.route_set = invite.get_all("record-route")  # B5/B4: kept and used for in-dialog requests
        contacts = invite.get_all("contact")
        self.remote_target = name_addr(contacts[0]).uri if contacts else name_addr(invite.get("from") or "").uri

    @property
    def call_id(self) -> str:
        return self.info.call_id

    @property
    def timer_at(self) -> float | None:
        return self.ring_deadline if self.state is DState.RINGING else None

    @property
    def over(self) -> bool:
        """Over for the handler."""
        return self.state is DState.ENDED or self.end_reason is not None

    @property
    def requires_100rel(self) -> bool:
        return self._has_tag("require", "100rel")

    @property
    def wants_100rel(self) -> bool:
        """The caller requires or supports reliable provisional responses: we send them (RFC 3262 3)."""
        return self._has_tag("require", "100rel") or self._has_tag("supported", "100rel")

    def _has_tag(self, header: str, tag: str) -> bool:
        return any(t.strip().lower() == tag for r in self.invite.get_all(header) for t in r.split(","))

    def go(self, event: DEvent) -> None:
        try:
            self.state = DIALOG[(self.state, event)]
        except KeyError:
            raise RuntimeError(f"dialog {self.call_id}: {event.name} in state {self.state.name}") from None

    def end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason


@dataclass(frozen=True, slots=True)
class Tombstone:
    """What is left of an ended call: a retransmitted INVITE gets the same final response until `timer_at`."""

    branch: str
    response: bytes
    timer_at: float


# -- building messages ---------------------------------------------------------------------------------------


def build_response(req: Message, addr: tuple[str, int], code: int, reason: str,
                   extra: list[tuple[str, str]] | None = None, body: bytes = b"", to_tag: str | None = None) -> bytes:
    """A response to `req` received from `addr` (received/rport filled in, RFC 3261 18.2.1 / RFC 3581)."""
    headers: list[tuple[str, str]] = []
    first = True
    for v in req.get_all("via"):
        if first:
            first = False
            p = params(v.partition(";")[2])
            try:
                host, _ = via_sent_by(v)
            except ParseError:
                host = ""
            if "rport" in p and not p["rport"]:
                v = v.replace(";rport", f";rport={addr[1]}", 1)
            if host != addr[0] and "received" not in p:
                v += f";received={addr[0]}"
        headers.append(("via", v))
    to = req.get("to") or ""
    if to_tag and code > 100 and "tag" not in params(to.partition(">")[2] if ">" in to else to.partition(";")[2]):
        to += f";tag={to_tag}"
    headers += [("from", req.get("from") or ""), ("to", to), ("call-id", req.call_id),
                ("cseq", req.get("cseq") or "")]
    headers += extra or []
    headers.append(("user-agent", USER_AGENT))
    return Message(status=code, reason=reason, headers=headers, body=body).to_bytes()


def bye_request(d: Dialog, contact: Contact, branch: str) -> bytes:
    """The BYE of our side: it follows the dialog's route set and remote target (B4), not the INVITE's Via."""
    return in_dialog_request(d, contact, branch, "BYE")


def authorized_retry(data: bytes, challenge: Message, contact: Contact, branch: str, user: str, password: str,
                     cnonce: str) -> bytes | None:
    """An in-dialog request of ours (BYE) again, answering the 401/407 `challenge` (RFC 3261 22.2): a new branch,
    the next CSeq, the credentials; None when the challenge cannot be answered."""
    header = "www-authenticate" if challenge.status == 401 else "proxy-authenticate"
    req = parse(data)
    try:
        chosen = auth.best_challenge(challenge.get_all(header))
        value = auth.authorization(chosen, req.method, req.uri, user, password, 1, cnonce, body=req.body)
    except ValueError:
        return None
    number, method = req.cseq
    headers = [("via", contact.via(branch))] + [
        (k, f"{number + 1} {method}" if k == "cseq" else v) for k, v in req.headers
        if k not in ("via", "authorization", "proxy-authorization", "content-length")]
    headers.append(("authorization" if challenge.status == 401 else "proxy-authorization", value))
    return Message(method=req.method, uri=req.uri, headers=headers, body=req.body).to_bytes()


MIN_SE = 90  # s: the shortest session interval RFC 4028 allows


def session_timer(req: Message, default_refresher: str = "uac") -> tuple[int, str] | None:
    """RFC 4028 as the UAS: (interval, refresher) for the 2xx to `req`, None when no session timer runs.

    The caller's refresher is kept; without one the caller refreshes when it supports timers, else we do.
    """
    value = req.get("session-expires")
    if value is None:
        return None
    number, _, rest = value.partition(";")
    if not number.strip().isdigit() or int(number) < MIN_SE:
        # RFC 4028 forbids intervals under 90 s (4.2); rather than end a call within a second we run no timer
        return None
    refresher = params(rest).get("refresher", "").lower()
    if refresher not in ("uac", "uas"):
        supports = any(t.strip().lower() == "timer" for h in ("supported", "require") for r in req.get_all(h)
                       for t in r.split(","))
        refresher = default_refresher if supports else "uas"
    return int(number), refresher


def in_dialog_request(d: Dialog, contact: Contact, branch: str, method: str) -> bytes:
    """A request of ours in the dialog (BYE, a session refresh): route set, remote target, the next CSeq (B4)."""
    d.local_cseq += 1
    inv = d.invite
    local = inv.get("to") or ""
    if "tag=" not in local.partition(">")[2]:
        local += f";tag={d.to_tag}"
    headers = [("via", contact.via(branch)), ("max-forwards", "70")]
    headers += [("route", r) for r in d.route_set]
    headers += [("from", local), ("to", inv.get("from") or ""), ("call-id", d.call_id),
                ("cseq", f"{d.local_cseq} {method}"), ("user-agent", USER_AGENT)]
    if method != "BYE":
        headers.append(("contact", contact.header()))
    return Message(method=method, uri=d.remote_target, headers=headers).to_bytes()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def bye_destination(d: Dialog, outbound_proxy: tuple[str, int] | None) -> tuple[str, int]:
    return request_destination(d.route_set, d.remote_target, outbound_proxy, d.addr)


def request_destination(route_set: list[str], remote_target: str, outbound_proxy: tuple[str, int] | None,
                        fallback: tuple[str, int]) -> tuple[str, int]:
    """Where an in-dialog request goes: the first route, else the outbound proxy, else the remote target; a name
    we will not resolve here means `fallback` (the hop the dialog came through)."""
    candidates = []
    if route_set:
        candidates.append(name_addr(route_set[0]).uri)
    elif outbound_proxy is not None:
        return outbound_proxy
    candidates.append(remote_target)
    for raw in candidates:
        try:
            uri = parse_uri(raw)
        except ParseError:
            continue
        if uri.host.strip("[]") and _is_ip(uri.host.strip("[]")):
            return uri.host.strip("[]"), uri.port or 5060
    return fallback


MediaPlan = tuple[tuple[str, int], tuple[str, int, int | None]]  # (where to send, (codec, payload, event payload))


def answer_media(body: bytes) -> MediaPlan | None:
    """Where our media goes and in which codec, by the SDP answer to our offer; None when it has no G.711."""
    try:
        sdp = parse_sdp(body)
    except ParseError:
        return None
    choice = choose_codec(sdp)
    if choice is None:
        return None
    sends = sdp.direction in ("sendrecv", "recvonly") and not sdp.on_hold  # the answer's view, reversed
    return (sdp.address, sdp.port if sends else 0), (choice[0], choice[1], sdp.event_payload())


def choose_codec(offer: Sdp) -> tuple[str, int] | None:
    if offer.proto.upper() not in ("RTP/AVP", "RTP/AVPF") or offer.port == 0:
        return None  # B12: SRTP-only offers and refused streams cannot be served
    for pt in offer.payloads:
        name = offer.codec(pt)
        if name in ("PCMU", "PCMA"):
            return name, pt
    return None


def servable(msg: Message) -> tuple[Sdp | None, str]:
    """The INVITE's SDP offer, and why we could not answer it ("" when we can)."""
    unsupported = [t.strip() for r in msg.get_all("require") for t in r.split(",")
                   if t.strip() and t.strip().lower() not in SUPPORTED]
    if unsupported:
        return None, "requires " + ", ".join(unsupported)[:80]
    body = sdp_body(msg)
    if body is None:
        if msg.body:
            return None, f"body of type {(msg.get('content-type') or '?')[:40]}, not SDP"
        return None, ""  # a late offer: ours goes in the 200
    try:
        offer = parse_sdp(body)
    except ParseError as e:
        return None, f"unreadable SDP ({e})"[:80]
    if choose_codec(offer) is None:
        codecs = sorted({offer.codec(pt) or str(pt) for pt in offer.payloads} - {"telephone-event"})
        return offer, f"no G.711 in the offer ({offer.proto} {' '.join(codecs)})"[:80]
    return offer, ""


PTIME_RANGE = (10, 60)  # packet times (ms) we send at when an offer asks; anything else gets 20 ms
# RFC 3264 6.1: the direction of an answer to each direction of an offer
ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
NO_SEND = {"sendrecv": "recvonly", "sendonly": "inactive", "recvonly": "recvonly", "inactive": "inactive"}


def answer_plan(offer: Sdp | None) -> AnswerPlan | None:
    """How to answer `offer` (None: no codec we can use); a late offer gets PCMU/PCMA offered by us."""
    if offer is None:
        return AnswerPlan("PCMU", 0, 101, ("0.0.0.0", 0), True)
    choice = choose_codec(offer)
    if choice is None:
        return None
    direction = ANSWER_DIRECTION.get(offer.direction, "sendrecv")
    if offer.on_hold:  # RFC 2543 hold (c=0.0.0.0): nothing may be sent to that address
        direction = NO_SEND[direction]
    sends = direction in ("sendrecv", "sendonly")
    remote = (offer.address, offer.port if sends else 0)
    ptime = offer.ptime if offer.ptime is not None and PTIME_RANGE[0] <= offer.ptime <= PTIME_RANGE[1] else 20
    return AnswerPlan(choice[0], choice[1], offer.event_payload(), remote, False, ptime, direction, offer.streams,
                      offer.audio_index)


def local_sdp(host: str, port: int, plan: AnswerPlan, session: int, version: int | None = None) -> bytes:
    """Our SDP: the answer to the plan's offer (every offered m= line answered, the ones we refuse with port 0,
    RFC 3264 6), or our offer for a late-offer INVITE."""
    family = "IP6" if ":" in host else "IP4"
    fmts = [(0, "PCMU"), (8, "PCMA")] if plan.late else [(plan.payload, plan.codec)]
    event_pt = plan.event_payload
    lines = ["v=0", f"o=screener {session} {session if version is None else version} IN {family} {host}",
             "s=screener", f"c=IN {family} {host}", "t=0 0"]
    pts = [str(p) for p, _ in fmts] + ([str(event_pt)] if event_pt is not None else [])
    audio = [f"m=audio {port} RTP/AVP {' '.join(pts)}"]
    audio += [f"a=rtpmap:{p} {name}/8000" for p, name in fmts]
    if event_pt is not None:
        audio += [f"a=rtpmap:{event_pt} telephone-event/8000", f"a=fmtp:{event_pt} 0-15"]
    audio += [f"a=ptime:{plan.ptime}", f"a={plan.direction}"]
    streams = plan.streams or (("audio", "RTP/AVP", ""),)
    for i, (media, proto, formats) in enumerate(streams):
        if i == (plan.audio_index if plan.streams else 0):
            lines += audio
        else:
            lines.append(f"m={media} 0 {proto} {formats}")  # refused: same media, proto and formats, port 0
    return ("\r\n".join(lines) + "\r\n").encode()


def incoming_info(msg: Message, addr: tuple[str, int], from_provider: bool, cannot_serve: str = "") -> IncomingCall:
    pai = msg.get("p-asserted-identity")
    display = ""
    for raw in ([pai] if pai and from_provider else []) + [msg.get("from") or ""]:
        try:
            display = name_addr(raw).display
        except ParseError:
            continue
        if display:
            break
    # text from the wire, made safe once here: undecodable bytes (Latin-1 phonebooks), NUL, bidi controls
    return IncomingCall(
        call_id=clean(msg.call_id), source=addr, from_raw=clean(msg.get("from") or ""),
        pai_raw=clean(pai) if pai is not None else None, privacy=clean(msg.get("privacy") or "") or None,
        called=clean(msg.get("p-called-party-id") or msg.get("to") or ""), display_name=clean(display),
        from_provider=from_provider, request_uri=clean(msg.uri), cannot_serve=cannot_serve)


DTMF_KEYS = "0123456789*#ABCD"


def dtmf_relay_keys(msg: Message) -> list[str]:
    """Keys of a SIP INFO with application/dtmf-relay (`Signal=5`) or application/dtmf (the key alone, `5`)."""
    ctype = (msg.get("content-type") or "").lower().partition(";")[0].strip()
    if ctype == "application/dtmf":
        text = msg.body.decode("ascii", "replace").strip().upper()
        if len(text) == 1 and text in DTMF_KEYS:
            return [text]
        # some send the RFC 4733 event number (0-9, 10 = *, 11 = #, 12-15 = A-D)
        return [DTMF_KEYS[int(text)]] if text.isdigit() and int(text) < 16 else []
    if ctype != "application/dtmf-relay":
        return []
    keys = []
    for line in msg.body.decode("ascii", "replace").splitlines():
        key, _, value = line.partition("=")
        value = value.strip().upper()
        if key.strip().lower() != "signal" or not value:
            continue
        if value.isdigit() and 10 <= int(value) < 16:  # the RFC 4733 event number some send for * # A-D
            keys.append(DTMF_KEYS[int(value)])
        elif value[0] in DTMF_KEYS:
            keys.append(value[0])
    return [k for k in keys if k]
