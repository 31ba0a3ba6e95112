"""RTP for one answered call: G.711 in and out, RFC 2833 digits in. The only module that imports pyVoIP.

pyVoIP's RTPClient keeps the session state (payload map, sequence, timestamp, SSRC); its socket handling,
codec and buffering are replaced here because of B6, B7, B13, B21 and B22.
"""

from __future__ import annotations

import audioop
import ipaddress
import logging
import random
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable

from pyVoIP.RTP import PayloadType, RTPClient, TransmitType  # noqa: TID251 (the one pyVoIP import)

log = logging.getLogger("screener.sip")

FRAME_SAMPLES = 160  # 20 ms at 8 kHz
FRAME_BYTES = FRAME_SAMPLES * 2  # 16-bit linear
FRAME_SECONDS = 0.02
INPUT_FRAMES = 50  # B22: at most 1 s of received audio is buffered per call
FED_WAIT = 0.1  # a relayed stream's thread has no clock to keep: it wakes this often to see stop() or the relay end
DTMF_KEYS = "0123456789*#ABCD"
CODECS = {"PCMU": PayloadType.PCMU, "PCMA": PayloadType.PCMA}
# G.711 law to law, one byte for one byte: a bridge transcodes with bytes.translate, not through linear PCM
_U2A = audioop.lin2alaw(audioop.ulaw2lin(bytes(range(256)), 2), 2)
_A2U = audioop.lin2ulaw(audioop.alaw2lin(bytes(range(256)), 2), 2)
_WIRING = threading.Lock()  # who relays to whom: changed by relay_to() and by a session that closes


def _split(packet: bytes) -> tuple[int, int, int, bytes] | None:
    """An RTP datagram as (marker|payload-type byte, timestamp, SSRC, payload), or None when malformed (B7)."""
    if len(packet) < 12 or packet[0] >> 6 != 2:  # B7: short packets are dropped, not fatal
        return None
    first = packet[0]
    start = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # header extension
        if len(packet) < start + 4:
            return None
        start += 4 + 4 * struct.unpack_from("!H", packet, start + 2)[0]
    end = len(packet) - (packet[-1] if first & 0x20 else 0)
    if end < start:
        return None
    timestamp, ssrc = struct.unpack_from("!II", packet, 4)
    return packet[1], timestamp, ssrc, packet[start:end]


def _plain_ip(host: str) -> str:
    """An address as recvfrom() and the SDP may spell it differently: no IPv4-mapped prefix, no zone, compressed."""
    host = host.strip("[]").split("%")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host  # a name in c=: only a trusted source can latch
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return ip.compressed


class PortPool:
    """RTP ports of one range, handed out once and taken back when a call ends (B13)."""

    def __init__(self, host: str, low: int, high: int, family: int = socket.AF_INET) -> None:
        self.host, self.low, self.high, self.family = host, low, high, family
        step = 2 if high - low >= 1 else 1  # even ports by convention, RTCP would take the odd one
        self._ports = list(range(low + (low % 2 if step == 2 else 0), high + 1, step)) or [low]
        self._next = random.randrange(len(self._ports))
        self._used: set[int] = set()
        self._lock = threading.Lock()

    def bind(self) -> socket.socket:
        """A UDP socket bound to a free port of the range; OSError when none is free."""
        with self._lock:
            for _ in range(len(self._ports)):
                port = self._ports[self._next]
                self._next = (self._next + 1) % len(self._ports)
                if port in self._used:
                    continue
                sock = socket.socket(self.family, socket.SOCK_DGRAM)
                try:
                    sock.bind((self.host, port))
                except OSError:
                    sock.close()  # B13: a socket that failed to bind is closed, not leaked
                    continue
                sock.setblocking(False)
                self._used.add(port)
                return sock
        raise OSError(f"no free RTP port in {self.low}-{self.high}")

    def release(self, port: int) -> None:
        with self._lock:
            self._used.discard(port)

    @property
    def in_use(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._used)


class RtpSession(RTPClient):
    """One RTP stream: plays queued 16-bit PCM, keeps the last second of received PCM, reports digits."""

    def __init__(self, pool: PortPool, sock: socket.socket, codec: str, payload: int, event_payload: int | None,
                 remote: tuple[str, int], on_digit: Callable[[str], None] | None = None,
                 trusted: Callable[[str], bool] | None = None, ptime: int = 20) -> None:
        assoc = {payload: CODECS[codec]}
        if event_payload is not None:
            assoc[event_payload] = PayloadType.EVENT
        local = sock.getsockname()
        super().__init__(assoc, local[0], local[1], remote[0], remote[1], TransmitType.SENDRECV, on_digit)
        self.preference = CODECS[codec]
        self.payload = payload
        self.event_payload = event_payload
        self.pool = pool
        self.sin = self.sout = sock
        self.trusted = trusted  # the provider's addresses: its media relay may send from one the SDP did not name
        self._expect = (_plain_ip(remote[0]), remote[1])  # what the caller's SDP announced (c= / m=)
        self._source: tuple[str, int] | None = None  # the sender latched on (see _accepts)
        self._dropped = 0
        self.pmin = self.pmout = None  # type: ignore[assignment]  # B22: unbounded buffers never used
        self.outSequence = random.randrange(0x10000)
        self.outTimestamp = random.randrange(0x100000000)
        self.outSSRC = random.randrange(1, 0x100000000)
        self._out: deque[bytes] = deque()
        self._in: deque[bytes] = deque(maxlen=INPUT_FRAMES)
        self._cv = threading.Condition()
        self._sent = 0  # frames of queued audio sent so far
        self._queued = 0
        self._last_event_ts: int | None = None
        self._thread: threading.Thread | None = None
        self._frame_bytes = FRAME_BYTES
        self.set_ptime(ptime)
        self._first = True
        # the bridge (relay_to): this session's received packets go to _relay; _feeder's go out on this stream
        self._relay: RtpSession | None = None
        self._feeder: RtpSession | None = None
        self._tx = threading.Lock()  # sequence, timestamp, marker and socket: a feeder's thread sends here too
        self._closed = False
        self._anchor: int | None = None  # the relayed SSRC that _ts_delta was computed for
        self._ts_delta = 0

    @property
    def port(self) -> int:
        return self.inPort

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"rtp-{self.inPort}", daemon=True)
        self._thread.start()

    def stop(self, wait: float = 0.0) -> None:
        """End the stream; its thread closes the socket and gives the port back (B1, B13). Idempotent."""
        with self._cv:
            running, self.NSD = self.NSD, False
            self._cv.notify_all()
        if self._thread is None:
            if running:
                self._close()
        elif wait and self._thread is not threading.current_thread():
            self._thread.join(wait)

    def set_codec(self, codec: str, payload: int, event_payload: int | None) -> None:
        """Switch to the codec of a late SDP answer (the one in an ACK)."""
        self.preference, self.payload, self.event_payload = CODECS[codec], payload, event_payload
        self._silence = self.encode_packet(b"\0" * self._frame_bytes)

    def set_ptime(self, ptime: int) -> None:
        """Send packets of `ptime` ms (the offer's a=ptime): audio queued from now on is cut to that size."""
        with self._cv:
            self._frame_bytes = FRAME_BYTES * ptime // 20
            self._silence = self.encode_packet(b"\0" * self._frame_bytes)

    def _close(self) -> None:
        with _WIRING:  # either side of a bridge ending ends the bridge: the other goes back to its own clock
            target, feeder, self._relay = self._relay, self._feeder, None
            if target is not None:
                target._unfeed(self)
            if feeder is not None and feeder._relay is self:
                feeder._relay = None
            with self._tx:
                self._feeder, self._closed = None, True
                self.sin.close()
        self.pool.release(self.inPort)

    # -- the bridge --

    def relay_to(self, other: RtpSession | None) -> None:
        """Forward every packet received from now on to `other`'s far end as `other`'s stream; None stops.

        Forwarding happens on this session's thread as each packet arrives. `other` sends no frames of its own
        (what it had queued, and what is played on it meanwhile, is dropped) until the relay stops or either
        session ends; then its clock starts again within FED_WAIT. Digits are still reported here; received
        audio is no longer buffered. A bridge is a.relay_to(b); b.relay_to(a).
        """
        if other is self:
            raise ValueError("an RTP session cannot relay to itself")
        with _WIRING:
            old, self._relay = self._relay, None
            if old is not None and old is not other:
                old._unfeed(self)
            if other is None or not other._feed(self):
                return
            self._relay = other
        self.flush_input()

    def _feed(self, feeder: RtpSession) -> bool:
        """`feeder`'s packets go out on this stream from now on; False when this session has ended."""
        previous = self._feeder
        if previous is not None and previous is not feeder:
            previous._relay = None  # one stream, one source
        with self._tx:
            if self._closed:
                return False
            if previous is not feeder:
                self._feeder, self._anchor = feeder, None
        self.clear_playback()  # after the feeder is set: play() drops from then on, so nothing is left queued
        return True

    def _unfeed(self, feeder: RtpSession) -> None:
        with self._tx:
            if self._feeder is feeder:
                self._feeder, self._first = None, True

    def _forward(self, target: RtpSession, packet: bytes) -> None:
        """One received datagram onto `target`'s stream: its payload types, its law (runs on this thread)."""
        head = _split(packet)
        if head is None:
            return
        second, timestamp, ssrc, body = head
        pt = second & 0x7F
        if pt == self.event_payload:
            self._telephone_event(body, timestamp)
            if target.event_payload is None or len(body) < 4:
                return
            target._send_relayed(self, second & 0x80 | target.event_payload, timestamp, ssrc, body, 0)
        elif pt == self.payload and body:
            if self.preference != target.preference:
                body = body.translate(_U2A if self.preference == PayloadType.PCMU else _A2U)
            target._send_relayed(self, second & 0x80 | target.payload, timestamp, ssrc, body, len(body))

    def _send_relayed(self, feeder: RtpSession, second: int, timestamp: int, ssrc: int, body: bytes,
                      samples: int) -> None:
        with self._tx:
            if self._feeder is not feeder:  # the relay was rewired or this session ended meanwhile
                return
            if ssrc != self._anchor:
                # the first relayed packet (or a new source) continues this stream's timeline and starts a
                # talkspurt; after it the source's own spacing (gaps, events' shared timestamps) is kept
                self._anchor, self._ts_delta = ssrc, (self.outTimestamp - timestamp) & 0xFFFFFFFF
                second |= 0x80
            out = (timestamp + self._ts_delta) & 0xFFFFFFFF
            header = struct.pack("!BBHII", 0x80, second, self.outSequence, out, self.outSSRC)
            self.outSequence = (self.outSequence + 1) & 0xFFFF
            end = (out + samples) & 0xFFFFFFFF
            if samples and (end - self.outTimestamp) & 0xFFFFFFFF < 0x80000000:  # a late packet moves nothing
                self.outTimestamp = end
            if self.outPort:
                try:
                    self.sout.sendto(header + body, (self.outIP, self.outPort))
                except OSError:
                    pass

    def set_remote(self, addr: tuple[str, int]) -> None:
        """A new SDP (re-INVITE, late answer): send there, and accept only what that SDP announced."""
        self.outIP, self.outPort = addr
        self._expect, self._source = (_plain_ip(addr[0]), addr[1]), None

    def _accepts(self, addr: tuple[str, int]) -> bool:
        """Whether a datagram from `addr` belongs to this call (runs on the RTP thread, per packet)."""
        # Anyone who learns the port could send RTP to it, DTMF included, and pass the challenge for a caller
        # who never pressed a key. So only the sender the SDP announced is heard. NAT may change the source
        # port (and a provider's media relay send from an address of its own): the first packet from the
        # SDP's address on any port, or from a trusted provider address, latches the session onto its exact
        # source; from then on nothing else is heard until a new SDP comes.
        src = (addr[0], addr[1])
        if self._source is not None:
            return src == self._source
        ip = _plain_ip(src[0])
        if ip == self._expect[0] or (self.trusted is not None and self.trusted(ip)):
            self._source = src
            if (ip, src[1]) != self._expect:
                log.info("screener: RTP latched on %s:%d (SDP said %s:%d)", ip, src[1], *self._expect)
            return True
        self._dropped += 1
        if self._dropped == 1:
            log.warning("screener: RTP from %s:%d dropped: not the caller's media address %s:%d", ip, src[1],
                        *self._expect)
        return False

    # -- audio out --

    def play(self, pcm: bytes) -> int:
        """Queue 8 kHz 16-bit mono PCM; returns a mark for wait_played(). Dropped while the stream is relayed."""
        with self._cv:
            if self._feeder is not None:
                self._out.clear()
                self._queued += 1
                self._sent = self._queued
                self._cv.notify_all()
                return self._queued
            size = self._frame_bytes
            for i in range(0, len(pcm), size):
                frame = pcm[i:i + size]
                self._out.append(frame.ljust(size, b"\0"))
                self._queued += 1
            return self._queued

    def wait_played(self, mark: int, timeout: float) -> bool:
        with self._cv:
            self._cv.wait_for(lambda: self._sent >= mark or not self.NSD, timeout)
            return self._sent >= mark

    def clear_playback(self) -> None:
        with self._cv:
            self._sent += len(self._out)
            self._out.clear()
            self._cv.notify_all()

    # -- audio in --

    def read_frame(self, timeout: float) -> bytes | None:
        """The oldest received 20 ms of 16-bit PCM, or None after `timeout` without audio."""
        with self._cv:
            if not self._cv.wait_for(lambda: self._in or not self.NSD, timeout) or not self._in:
                return None
            return self._in.popleft()

    def flush_input(self) -> None:
        with self._cv:
            self._in.clear()

    # -- the thread --

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._close()

    def _loop(self) -> None:
        next_send = time.monotonic()
        while self.NSD:
            now = time.monotonic()
            if self._feeder is not None:  # what goes out is relayed: the own clock starts again after the relay
                next_send, wait = now, FED_WAIT
            elif now >= next_send:
                seconds = self._send_frame()
                next_send += seconds
                if now - next_send > 0.2:  # the machine stalled: resynchronise rather than burst
                    next_send = now + seconds
                continue
            else:
                wait = next_send - now
            try:
                ready, _, _ = select.select([self.sin], [], [], wait)
            except (OSError, ValueError):
                return
            if ready:
                self._drain()

    def _drain(self) -> None:
        for _ in range(64):
            try:
                data, addr = self.sin.recvfrom(2048)
            except BlockingIOError:
                return
            except OSError:  # ICMP errors surface here; they must not end the stream
                return
            if not self._accepts(addr):
                continue
            target = self._relay
            try:
                if target is not None:
                    self._forward(target, data)
                else:
                    self.parse_packet(data)
            except Exception:  # noqa: BLE001  # B7: no packet may kill the receive thread
                log.debug("bad RTP packet from %s:%s", *addr[:2], exc_info=True)

    def _send_frame(self) -> float:
        """Send the next packet (silence when nothing is queued); returns the seconds of audio it holds."""
        with self._cv:
            frame = self._out.popleft() if self._out else None
            if frame is not None:
                self._sent += 1
                self._cv.notify_all()
            silence = self._silence
        payload = self.encode_packet(frame) if frame is not None else silence
        samples = len(payload)  # G.711: one byte a sample
        with self._tx:
            if self._feeder is not None or self._closed:
                return samples / 8000
            marker = 0x80 if self._first else 0
            self._first = False
            header = struct.pack("!BBHII", 0x80, marker | self.payload, self.outSequence, self.outTimestamp,
                                 self.outSSRC)
            # B21: sequence and timestamp wrap modulo their field size instead of overflowing
            self.outSequence = (self.outSequence + 1) & 0xFFFF
            self.outTimestamp = (self.outTimestamp + samples) & 0xFFFFFFFF
            if self.outPort:
                try:
                    self.sout.sendto(header + payload, (self.outIP, self.outPort))
                except OSError:
                    pass
        return samples / 8000

    def encode_packet(self, payload: bytes) -> bytes:
        """16-bit linear -> the negotiated G.711 law."""
        if self.preference == PayloadType.PCMA:
            return audioop.lin2alaw(payload, 2)  # B6: PCMA encoded as A-law (pyVoIP sends u-law)
        return audioop.lin2ulaw(payload, 2)

    def parse_packet(self, packet: bytes) -> None:
        """One received datagram; anything malformed or foreign is ignored (B7)."""
        head = _split(packet)
        if head is None:
            return
        second, timestamp, _, body = head
        pt = second & 0x7F
        if pt == self.event_payload:
            self._telephone_event(body, timestamp)
        elif pt == self.payload and body:
            if self.preference == PayloadType.PCMA:
                pcm = audioop.alaw2lin(body, 2)
            else:
                pcm = audioop.ulaw2lin(body, 2)
            with self._cv:
                self._in.append(pcm)  # B22: bounded, oldest audio dropped when nobody reads
                self._cv.notify_all()

    def _telephone_event(self, body: bytes, timestamp: int) -> None:
        # RFC 4733: one event = one RTP timestamp, repeated many times; report it once
        if len(body) < 4 or timestamp == self._last_event_ts:
            return
        if body[0] >= len(DTMF_KEYS):  # B7: events >= 16 (flash, tones) are ignored, not an IndexError
            return
        self._last_event_ts = timestamp
        if self.dtmf is not None:
            self.dtmf(DTMF_KEYS[body[0]])
