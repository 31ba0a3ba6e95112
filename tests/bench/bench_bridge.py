"""Bridge benchmark: bridged calls (RtpSession.relay_to) on loopback, one leg PCMU and the other PCMA.

Each call has two far ends sending 20 ms packets both ways. Every packet also goes straight to a twin socket of
the far end it is meant for, so the delay the bridge adds is measured packet by packet, from kernel receive
timestamps (SO_TIMESTAMPNS): the peers' own scheduling is not in it. The bridge runs in a child process that
reports its own CPU time; the peers' CPU is the parent's and is printed apart.
Goals (issue 9): added one-way delay p99 <= 5 ms with 4 bridged calls, inter-packet gap at each far end
p99 <= 25 ms; CPU per bridged call reported.

Run with `make bench` or `python -m tests.bench bridge [--seconds 20] [--calls 4]`. Not collected by pytest.
Ports: $SCREENER_E2E_PORT_BASE (else 25000) + 1600..1699 for the bridge, + 1700.. for the peers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings

with warnings.catch_warnings():  # deprecated in 3.11, still what the screener uses for G.711
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

HOST = "127.0.0.1"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; the control message has the same number
TIMESPEC = struct.Struct("@ll")
WARMUP = 1.0  # seconds of packets left out of the figures (latching, first wake-ups)
U2A = audioop.lin2alaw(audioop.ulaw2lin(bytes(range(256)), 2), 2)
A2U = audioop.lin2ulaw(audioop.alaw2lin(bytes(range(256)), 2), 2)
DIGITS_U = bytes(range(16))  # u-law codes that survive u-law -> A-law -> u-law: a packet's number is in them
DIGITS_A = DIGITS_U.translate(U2A)
VOICE_LIN = struct.pack("<156h", *(int(6000 * math.sin(2 * math.pi * 440 * i / 8000)) for i in range(156)))
VOICE = {0: audioop.lin2ulaw(VOICE_LIN, 2), 8: audioop.lin2alaw(VOICE_LIN, 2)}
# what a far end must receive after the packet number: (payload type, via the bridge) -> bytes
EXPECTED = {(0, False): VOICE[0], (8, False): VOICE[8], (0, True): VOICE[8].translate(A2U),
            (8, True): VOICE[0].translate(U2A)}


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def port_base() -> int:
    return int(os.environ.get("SCREENER_E2E_PORT_BASE") or 25000)


# ------------------------------------------------------------------------------------- the bridge (child)


def serve(peers: list[tuple[int, int]]) -> int:
    """Bridge one PCMU and one PCMA session per pair of far-end ports; `mark` prints CPU and wall time."""
    from screener.sip.media import PortPool, RtpSession

    base = port_base()
    pool = PortPool(HOST, base + 1600, base + 1699)
    sessions: list[RtpSession] = []
    for port_a, port_b in peers:
        a = RtpSession(pool, pool.bind(), "PCMU", 0, 101, (HOST, port_a))
        b = RtpSession(pool, pool.bind(), "PCMA", 8, 101, (HOST, port_b))
        a.relay_to(b)  # before the threads start: no frame of their own goes out
        b.relay_to(a)
        a.start()
        b.start()
        sessions += [a, b]
    print(json.dumps({"ports": [s.port for s in sessions]}), flush=True)
    for line in sys.stdin:
        if line.strip() == "mark":
            print(json.dumps({"cpu": time.process_time(), "wall": time.monotonic()}), flush=True)
        elif line.strip() == "stop":
            break
    for s in sessions:
        s.stop(wait=1)
    print(json.dumps({"ports_in_use": len(pool.in_use), "threads": threading.active_count()}), flush=True)
    return 0


# ------------------------------------------------------------------------------------- the peers (parent)


def packet(pt: int, k: int, digits: bytes, voice: bytes) -> bytes:
    number = bytes(digits[(k >> shift) & 15] for shift in (12, 8, 4, 0))
    return struct.pack("!BBHII", 0x80, pt, k & 0xFFFF, k * 160 & 0xFFFFFFFF, 0x5EED) + number + voice


def number_of(payload: bytes, digits: dict[int, int]) -> int:
    return sum(digits[payload[i]] << shift for i, shift in enumerate((12, 8, 4, 0)))


class Peers:
    """The far ends: `near[c][leg]` talks to the bridge, `twin[c][leg]` gets the same packets directly."""

    def __init__(self, calls: int) -> None:
        base = port_base() + 1700
        self.calls = calls
        self.near = [[self._socket(base + 4 * c + leg) for leg in (0, 1)] for c in range(calls)]
        self.twin = [[self._socket(base + 4 * c + 2 + leg) for leg in (0, 1)] for c in range(calls)]
        # arrivals[(call, leg, via bridge)] = [(packet number, kernel receive time)]
        self.arrivals: dict[tuple[int, int, bool], list[tuple[int, float]]] = {
            (c, leg, bridged): [] for c in range(calls) for leg in (0, 1) for bridged in (False, True)}
        self.sent: dict[int, float] = {}  # packet number -> send time (both legs of every call send it)
        self.role = {s.fileno(): (c, leg, via) for c in range(calls) for leg in (0, 1)
                     for via, s in ((True, self.near[c][leg]), (False, self.twin[c][leg]))}
        self.running = True
        self.bad = 0  # packets without a readable number
        self.wrong = 0  # packets whose audio is not what the sender's was, in the receiver's law

    @staticmethod
    def _socket(port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, port))
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        return s

    def send(self, bridge_ports: list[int], seconds: float) -> None:
        """Every 20 ms each far end sends packet k to its leg of the bridge and to the other far end's twin."""
        legs = [(0, 0, DIGITS_U, VOICE[0]), (1, 8, DIGITS_A, VOICE[8])]
        start = time.monotonic() + 0.05
        for k in range(int(seconds / 0.02)):
            delay = start + k * 0.02 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.sent[k] = time.time()
            for c in range(self.calls):
                for leg, pt, digits, voice in legs:
                    data = packet(pt, k, digits, voice)
                    self.near[c][leg].sendto(data, (HOST, bridge_ports[2 * c + leg]))
                    self.near[c][leg].sendto(data, self.twin[c][1 - leg].getsockname())

    def receive(self) -> None:
        decode = {0: {b: i for i, b in enumerate(DIGITS_U)}, 8: {b: i for i, b in enumerate(DIGITS_A)}}
        socks = [s for pair in self.near + self.twin for s in pair]
        space = socket.CMSG_SPACE(TIMESPEC.size)
        while self.running:
            ready, _, _ = select.select(socks, [], [], 0.1)
            for s in ready:
                data, anc, _, _ = s.recvmsg(2048, space)
                stamp = next((TIMESPEC.unpack_from(d) for lvl, typ, d in anc
                              if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS), None)
                when = stamp[0] + stamp[1] / 1e9 if stamp else time.time()
                try:
                    k = number_of(data[12:16], decode[data[1] & 0x7F])
                except (KeyError, IndexError):
                    self.bad += 1
                    continue
                c, leg, via = self.role[s.fileno()]
                self.wrong += data[16:] != EXPECTED.get((data[1] & 0x7F, via))
                self.arrivals[(c, leg, via)].append((k, when))

    def close(self) -> None:
        for pair in self.near + self.twin:
            for s in pair:
                s.close()


def fmt(values: list[float]) -> str:
    return "  ".join(f"{percentile(values, p) * 1000:7.2f}" for p in (50, 99)) + f"  {max(values) * 1000:7.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve([tuple(p) for p in json.loads(args.serve)])

    load = os.getloadavg()  # the figures are only as quiet as the machine: printed with them
    peers = Peers(args.calls)
    remotes = [[peers.near[c][0].getsockname()[1], peers.near[c][1].getsockname()[1]] for c in range(args.calls)]
    child = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(remotes)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None

    def ask(line: str) -> dict[str, float]:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(line + "\n")
        child.stdin.flush()
        answer: dict[str, float] = json.loads(child.stdout.readline())
        return answer

    try:
        ports = json.loads(child.stdout.readline())["ports"]
        receiver = threading.Thread(target=peers.receive, daemon=True)
        receiver.start()
        total = args.seconds + WARMUP
        sender = threading.Thread(target=peers.send, args=(ports, total), daemon=True)
        peer_cpu0 = time.process_time()
        sender.start()
        time.sleep(WARMUP)
        before = ask("mark")
        sender.join()
        after = ask("mark")
        peer_cpu = time.process_time() - peer_cpu0
        time.sleep(0.2)
        peers.running = False
        receiver.join()
        ended = ask("stop")
        child.wait(5)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        peers.close()

    first = int(WARMUP / 0.02)
    added, direct, bridged, gaps, direct_gaps, gap_added = [], [], [], [], [], []
    lost = relayed = 0
    for c in range(args.calls):
        for leg in (0, 1):
            via = {k: t for k, t in peers.arrivals[(c, leg, True)] if k >= first}
            straight = {k: t for k, t in peers.arrivals[(c, leg, False)] if k >= first}
            expected = [k for k in peers.sent if k >= first]
            lost += sum(k not in via for k in expected)
            relayed += len(via)
            for k in expected:
                if k in via and k in straight:
                    added.append(via[k] - straight[k])
                    bridged.append(via[k] - peers.sent[k])
                    direct.append(straight[k] - peers.sent[k])
            for arrivals, out in ((via, gaps), (straight, direct_gaps)):
                times = sorted(arrivals.values())
                out += [b - a for a, b in zip(times, times[1:], strict=False)]
            gap_added += [(via[k + 1] - via[k]) - (straight[k + 1] - straight[k]) for k in expected
                          if k in via and k + 1 in via and k in straight and k + 1 in straight]
    wall = after["wall"] - before["wall"]
    cpu = after["cpu"] - before["cpu"]
    per_call = cpu / wall / args.calls * 100
    print(f"{args.calls} bridged calls, PCMU <-> PCMA, 20 ms packets both ways, {args.seconds:g} s measured: "
          f"{relayed} packets relayed, {lost} lost, {peers.bad} unreadable, {peers.wrong} with the wrong audio; load average "
          f"{load[0]:.2f} before, {os.getloadavg()[0]:.2f} after ({os.cpu_count()} cores)")
    print(f"{'ms':42}  {'p50':>7}  {'p99':>7}  {'max':>7}")
    print(f"{'one-way delay, direct loopback':42}  {fmt(direct)}")
    print(f"{'one-way delay, through the bridge':42}  {fmt(bridged)}")
    print(f"{'added by the bridge (per packet)':42}  {fmt(added)}  goal p99 <= 5 ms: "
          f"{'met' if percentile(added, 99) <= 0.005 else 'MISSED'}")
    print(f"{'inter-packet gap at the far ends, direct':42}  {fmt(direct_gaps)}  (the peers' own pacing)")
    print(f"{'inter-packet gap at the far ends, bridged':42}  {fmt(gaps)}  goal p99 <= 25 ms: "
          f"{'met' if percentile(gaps, 99) <= 0.025 else 'MISSED'}")
    print(f"{'  the same two packets, bridged - direct':42}  {fmt(gap_added)}  (what the bridge adds to a gap)")
    print(f"bridge CPU: {cpu:.2f} s in {wall:.1f} s = {per_call:.2f} % of one core per bridged call "
          f"({cpu / wall * 100:.1f} % for all {args.calls}); the peers, another process: "
          f"{peer_cpu / wall * 100:.1f} % of one core")
    print(f"after stop: {int(ended['ports_in_use'])} bridge ports in use, {int(ended['threads'])} threads")
    return 0 if relayed and not lost and not peers.wrong and not peers.bad else 1


if __name__ == "__main__":
    sys.exit(main())
