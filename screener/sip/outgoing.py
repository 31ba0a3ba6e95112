"""The outgoing call (UAC) of ring-through, pure: the leg's state and the requests it is made of.

A leg goes calling (INVITE sent) -> ringing (a provisional came) -> answered (2xx ACKed) -> ended; a failed,
cancelled or stopped leg goes straight to ended. `end_reason` is set as soon as the leg is over for the handler;
the record stays while one of its INVITE transactions still needs it (the ACK of a retransmitted final
response) and then goes. `SipCore` drives it; nothing here sends, sleeps or reads a clock.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from screener.sip.dialogs import AnswerPlan, local_sdp
from screener.sip.message import Message, ParseError, name_addr, parse_uri
from screener.sip.registration import ALLOW, USER_AGENT, Contact, format_host
from screener.sip.transactions import ClientInviteTransaction, ServerInviteTransaction

LOOP_HEADER = "x-screener-loop"  # our marker: an INVITE carrying the token of a live leg is our own call back


class LState(enum.Enum):
    CALLING = "calling"  # INVITE sent, nothing back yet
    RINGING = "ringing"  # a provisional response came: a CANCEL may go now (RFC 3261 9.1)
    ANSWERED = "answered"  # a 2xx came and was ACKed: a confirmed dialog
    ENDED = "ended"


class LEvent(enum.Enum):
    PROVISIONAL = "1xx"
    ANSWERED = "2xx"
    FAILED = "final non-2xx, timeout, cancel"
    RETRY = "INVITE again with credentials"
    BYE = "bye either way"
    STOP = "stop"


LEG: dict[tuple[LState, LEvent], LState] = {
    (LState.CALLING, LEvent.PROVISIONAL): LState.RINGING,
    (LState.CALLING, LEvent.ANSWERED): LState.ANSWERED,
    (LState.CALLING, LEvent.FAILED): LState.ENDED,
    (LState.CALLING, LEvent.STOP): LState.ENDED,
    (LState.CALLING, LEvent.RETRY): LState.CALLING,
    (LState.RINGING, LEvent.RETRY): LState.CALLING,
    (LState.RINGING, LEvent.PROVISIONAL): LState.RINGING,
    (LState.RINGING, LEvent.ANSWERED): LState.ANSWERED,
    (LState.RINGING, LEvent.FAILED): LState.ENDED,
    (LState.RINGING, LEvent.STOP): LState.ENDED,
    (LState.ANSWERED, LEvent.BYE): LState.ENDED,
    (LState.ANSWERED, LEvent.STOP): LState.ENDED,
}


class Credentials(NamedTuple):
    """Digest credentials for a challenged INVITE (and the leg's BYE); a plain (user, password) tuple works too."""

    user: str
    password: str


class OutgoingLeg:
    """One call we place, from INVITE to its end."""

    def __init__(self, key: str, call_id: str, local_tag: str, target_uri: str, from_user: str, display: str,
                 loop_token: str, dest: tuple[str, int], credentials: Credentials | None, local_sdp: bytes) -> None:
        self.key, self.call_id, self.local_tag = key, call_id, local_tag
        self.target_uri, self.from_user, self.display = target_uri, from_user, display
        self.loop_token, self.dest, self.credentials, self.local_sdp = loop_token, dest, credentials, local_sdp
        self.state = LState.CALLING
        self.invite = Message()  # the INVITE of the current transaction (the first, or its authorized retry)
        self.tx: ClientInviteTransaction | None = None
        self.branches: set[str] = set()  # INVITE transactions still running (the retry's and the challenged one)
        self.auth_tried = False
        self.cancel_wanted = False  # CANCEL as soon as a provisional response allows it
        self.cancel_sent = False
        self.cancel_deadline: float | None = None  # no final response this long after the CANCEL: give up
        self.end_reason: str | None = None  # failed, cancelled, bye, hangup, stopped
        self.final_code: int | None = None
        self.remote_tag = ""
        self.remote_target = target_uri
        self.route_set: list[str] = []
        self.ack = b""  # our ACK of the 2xx, sent again for each retransmitted 2xx
        self.local_cseq = 1
        self.remote_cseq = -1
        self.extra_headers: tuple[tuple[str, str], ...] = ()
        self.rtp_port = 0
        self.sdp_session = 0
        self.sdp_version = 0
        self.reinvite: ServerInviteTransaction | None = None  # the latest re-INVITE of theirs we answered
        self.reinvite_cseq = 0
        self.reinvite_late = False  # it had no offer: its ACK brings the answer to ours
        self.reinvite_addr: tuple[str, int] = dest  # where it came from

    @property
    def over(self) -> bool:
        return self.state is LState.ENDED or self.end_reason is not None

    @property
    def timer_at(self) -> float | None:
        return self.cancel_deadline if self.state is LState.RINGING else None

    def go(self, event: LEvent) -> None:
        try:
            self.state = LEG[(self.state, event)]
        except KeyError:
            raise RuntimeError(f"leg {self.call_id}: {event.name} in state {self.state.name}") from None

    def end(self, reason: str, code: int | None = None) -> bool:
        """Over for the handler; False when it already was."""
        if self.end_reason is not None:
            return False
        self.end_reason, self.final_code = reason, code if code is not None else self.final_code
        return True

    # -- what the other side's requests look like to us --

    def local_uri(self, domain: str) -> str:
        return f"sip:{self.from_user}@{domain}"

    def from_header(self, domain: str) -> str:
        display = self.display.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{display}" <{self.local_uri(domain)}>;tag={self.local_tag}'


OFFER_PLAN = AnswerPlan("PCMU", 0, 101, ("0.0.0.0", 0), True)  # a late offer's plan: our offer, as local_sdp writes it


def offer_sdp(host: str, port: int, session: int, version: int | None = None) -> bytes:
    """Our offer: PCMU (0), PCMA (8) and telephone-event (101), 20 ms, sendrecv."""
    return local_sdp(host, port, OFFER_PLAN, session, version)


def invite_request(leg: OutgoingLeg, contact: Contact, domain: str, branch: str, proxy: tuple[str, int] | None,
                   extra: tuple[tuple[str, str], ...]) -> bytes:
    headers = [("via", contact.via(branch)), ("max-forwards", "70")]
    if proxy is not None:
        headers.append(("route", f"<sip:{format_host(proxy[0])}:{proxy[1]};lr>"))
    headers += [("from", leg.from_header(domain)), ("to", f"<{leg.target_uri}>"), ("call-id", leg.call_id),
                ("cseq", f"{leg.local_cseq} INVITE"), ("contact", contact.header()), ("allow", ALLOW),
                ("user-agent", USER_AGENT), (LOOP_HEADER, leg.loop_token)]
    headers += [(k.lower(), v) for k, v in extra]
    headers.append(("content-type", "application/sdp"))
    return Message(method="INVITE", uri=leg.target_uri, headers=headers, body=leg.local_sdp).to_bytes()


def non2xx_ack(invite: Message, response: Message) -> bytes:
    """The ACK of a non-2xx final response: part of the INVITE's transaction (RFC 3261 17.1.1.3)."""
    headers = [("via", invite.top_via), ("max-forwards", "70")] + [("route", r) for r in invite.get_all("route")]
    headers += [("from", invite.get("from") or ""), ("to", response.get("to") or ""), ("call-id", invite.call_id),
                ("cseq", f"{invite.cseq[0]} ACK"), ("user-agent", USER_AGENT)]
    return Message(method="ACK", uri=invite.uri, headers=headers).to_bytes()


def cancel_request(invite: Message) -> bytes:
    """CANCEL of the INVITE: its Request-URI, top Via (branch), Route, From, To and CSeq number (RFC 3261 9.1)."""
    headers = [("via", invite.top_via), ("max-forwards", "70")] + [("route", r) for r in invite.get_all("route")]
    headers += [("from", invite.get("from") or ""), ("to", invite.get("to") or ""), ("call-id", invite.call_id),
                ("cseq", f"{invite.cseq[0]} CANCEL"), ("user-agent", USER_AGENT)]
    return Message(method="CANCEL", uri=invite.uri, headers=headers).to_bytes()


def take_2xx(leg: OutgoingLeg, response: Message) -> None:
    """The dialog the 2xx makes: remote tag, remote target (Contact), route set (Record-Route reversed, 12.1.2)."""
    leg.remote_tag = name_addr(response.get("to") or "").tag or ""
    contacts = response.get_all("contact")
    if contacts:
        leg.remote_target = name_addr(contacts[0]).uri
    leg.route_set = list(reversed(response.get_all("record-route")))


def leg_request(leg: OutgoingLeg, contact: Contact, domain: str, branch: str, method: str,
                cseq: int | None = None) -> bytes:
    """A request of ours in the leg's dialog: ACK (the INVITE's CSeq number), BYE (the next one)."""
    if cseq is None:
        leg.local_cseq += 1
        cseq = leg.local_cseq
    to = f"<{leg.target_uri}>" + (f";tag={leg.remote_tag}" if leg.remote_tag else "")
    headers = [("via", contact.via(branch)), ("max-forwards", "70")] + [("route", r) for r in leg.route_set]
    headers += [("from", leg.from_header(domain)), ("to", to), ("call-id", leg.call_id),
                ("cseq", f"{cseq} {method}"), ("user-agent", USER_AGENT)]
    return Message(method=method, uri=leg.remote_target, headers=headers).to_bytes()


def loop_marks(msg: Message) -> tuple[str, str, str]:
    """(loop token, From user, From display name) of an INVITE, to compare with the live legs'."""
    token = (msg.get(LOOP_HEADER) or "").strip()
    try:
        frm = name_addr(msg.get("from") or "")
        user = parse_uri(frm.uri).user
    except ParseError:
        return token, "", ""
    return token, user, frm.display


__all__ = ["LOOP_HEADER", "OFFER_PLAN", "Credentials", "LEvent", "LState", "OutgoingLeg", "cancel_request",
           "invite_request", "leg_request", "loop_marks", "non2xx_ack", "offer_sdp", "take_2xx"]
