"""Real SIP peers for screener's end-to-end tests, benchmarks and demo.

kamailio plays the provider (a forking registrar), sipp plays callers and the household phone, and `Screener`
runs the real `screener` console script. No pytest import here: `make demo` and the benchmarks reuse it.
Every process is started by this module and stopped by its PID (its process group, for kamailio's children).
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
HOST = "127.0.0.1"
AOR_USER = "home"
PASSWORD = "s3cret-home"  # of the AOR, shared by the household phone and screener
SIPP_SHARE = Path("/usr/share/sip-tester")
DTMF_PCAP = SIPP_SHARE / "dtmf_2833_{}.pcap"
DTMF_PCAP_MS = 200  # the packaged RFC 2833 captures last 140 ms


class PeerError(RuntimeError):
    """A peer did not start, did not become ready, or did not stop."""


# --------------------------------------------------------------------------------------------------- ports


@dataclass(frozen=True)
class Ports:
    """Fixed loopback ports per role, shifted by `base` (one block per pytest-xdist worker)."""

    base: int = 25000

    @classmethod
    def for_worker(cls) -> Ports:
        """Ports for this process: $SCREENER_E2E_PORT_BASE, else 25000 + 2000 * xdist worker number."""
        if os.environ.get("SCREENER_E2E_PORT_BASE"):
            return cls(int(os.environ["SCREENER_E2E_PORT_BASE"]))
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        return cls(25000 + 2000 * int(worker.removeprefix("gw") or 0))

    kamailio = property(lambda self: self.base + 60)
    screener_sip = property(lambda self: self.base + 62)
    household = property(lambda self: self.base + 64)
    caller = property(lambda self: self.base + 66)
    decliner = property(lambda self: self.base + 68)
    registrar_client = property(lambda self: self.base + 70)
    # sipp binds its media port and the port + 2: keep four apart.
    household_media = property(lambda self: self.base + 72)
    decliner_media = property(lambda self: self.base + 76)
    caller_media = property(lambda self: self.base + 80)
    web = property(lambda self: self.base + 90)
    capture_low = property(lambda self: self.base + 100)
    capture_high = property(lambda self: self.base + 199)

    def pyphone(self, i: int) -> int:
        """SIP port of the i-th PyPhone (0-4); its media ports are the next 18."""
        if not 0 <= i < 5:
            raise ValueError(f"PyPhone index {i} outside 0-4")
        return self.base + 200 + 20 * i

    rtp_low = property(lambda self: self.base + 1000)
    rtp_high = property(lambda self: self.base + 1099)


def udp_port_free(port: int, host: str = HOST) -> bool:
    """True when nothing is bound to host:port over UDP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def require_free(*ports: int, host: str = HOST) -> None:
    """Raise PeerError naming the first port already in use."""
    for port in ports:
        if not udp_port_free(port, host):
            raise PeerError(f"UDP {host}:{port} is already in use (another test run, or a leftover process?)")


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "") -> Any:
    """Poll predicate until it returns something truthy; raise TimeoutError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)


def render(template: str, values: dict[str, Any]) -> str:
    """Fill {{NAME}} placeholders; a placeholder left without a value is an error, not silent text."""
    out = re.sub(r"\{\{(\w+)\}\}", lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0),
                 template)
    missing = sorted(set(re.findall(r"\{\{(\w+)\}\}", out)))
    if missing:
        raise KeyError(f"template values missing: {', '.join(missing)}")
    return out


# ----------------------------------------------------------------------------------------------- processes


class Proc:
    """A child process in its own process group, output to a file, stopped by its PID."""

    def __init__(self, argv: Sequence[str], log_path: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.cwd = cwd
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> None:
        """Start the process; its stdout and stderr go to log_path."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          cwd=self.cwd, env=self.env, start_new_session=True)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; raise TimeoutError if it does not."""
        assert self.popen is not None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.argv[0]} (pid {self.pid}) still running after {timeout:g} s") from None

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> tuple[int | None, float]:
        """Send sig to the process; SIGKILL its group after timeout. Returns (exit code or None if killed, s)."""
        if self.popen is None:
            return None, 0.0
        t0 = time.monotonic()
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                rc: int | None = self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                rc = None
                self.kill()
        else:
            rc = self.popen.returncode
        self._reap_group()
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL the process group this process leads (its own children included)."""
        assert self.popen is not None
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def _reap_group(self) -> None:
        # kamailio's workers exit after the main process; anything left in the group is ours and goes.
        assert self.popen is not None
        try:
            os.killpg(self.popen.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


# ------------------------------------------------------------------------------------------------ kamailio


def sip_options(host: str, port: int, timeout: float = 0.2, source: tuple[str, int] = (HOST, 0)) -> str | None:
    """Send one OPTIONS to host:port and return the status line of the reply, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(source)
        lport = s.getsockname()[1]
        tag = os.urandom(4).hex()
        msg = (f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {source[0]}:{lport};branch=z9hG4bK{tag}\r\n"
               f"From: <sip:probe@{source[0]}>;tag={tag}\r\nTo: <sip:{host}>\r\n"
               f"Call-ID: probe-{tag}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        s.settimeout(timeout)
        s.sendto(msg.encode(), (host, port))
        try:
            data = s.recv(65535)
        except (TimeoutError, ConnectionRefusedError):
            return None
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


class Kamailio:
    """kamailio in the foreground as the provider: registrar with digest auth that forks to every contact."""

    def __init__(self, workdir: Path, port: int, password: str, host: str = HOST, max_expires: int = 3600,
                 min_expires: int = 10, invite_auth: bool = False) -> None:
        self.workdir = workdir
        self.invite_auth = invite_auth  # INVITEs for the AOR "household" are challenged (407)
        self.host = host
        self.port = port
        self.password = password
        self.max_expires = max_expires
        self.min_expires = min_expires
        self.cfg = workdir / "kamailio.cfg"
        self.rundir = workdir / "run"
        self.log = workdir / "kamailio.log"
        self.proc: Proc | None = None

    def render(self) -> Path:
        """Write kamailio.cfg from the template."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rundir.mkdir(exist_ok=True)
        text = render((HERE / "kamailio.cfg.tmpl").read_text(), {
            "HOST": self.host, "PORT": self.port, "PASSWORD": self.password,
            "MAX_EXPIRES": self.max_expires, "MIN_EXPIRES": self.min_expires,
            "INVITE_AUTH": int(self.invite_auth),
        })
        self.cfg.write_text(text)
        return self.cfg

    def start(self, timeout: float = 5.0) -> None:
        """Start kamailio and wait until it answers OPTIONS."""
        require_free(self.port, host=self.host)
        self.render()
        self.proc = Proc(["kamailio", "-DD", "-E", "-f", self.cfg, "-Y", self.rundir,
                          "-P", self.rundir / "kamailio.pid", "-m", "32", "-M", "8"], self.log)
        self.proc.start()
        try:
            wait_until(lambda: not self.proc.alive() or sip_options(self.host, self.port) is not None,
                       timeout, interval=0.02, what="kamailio to answer OPTIONS")
        except TimeoutError:
            self.stop()
            raise
        if not self.proc.alive():
            raise PeerError(f"kamailio exited at start:\n{self.proc.output()[-3000:]}")

    def stop(self) -> None:
        """Stop kamailio by PID (SIGTERM, then SIGKILL to its process group)."""
        if self.proc is not None:
            self.proc.stop(timeout=3.0)
            self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down for down_for seconds, start again with empty location tables."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_lines(self, marker: str) -> list[str]:
        """The lines our script logged with the given marker (REGISTERED, AUTHFAIL, FORK, REPLY, ...)."""
        return [ln for ln in self.log_text().splitlines() if f" {marker} " in ln or f": {marker} " in ln]

    def registrations_from(self, port: int) -> list[str]:
        """REGISTERED lines for bindings made from the given source port."""
        return [ln for ln in self.log_lines("REGISTERED") if ln.rstrip().endswith(f":{port}")]


# ---------------------------------------------------------------------------------------------------- sipp


class Sipp:
    """One sipp process running a scenario rendered from tests/e2e/scenarios/NAME.xml into its own folder."""

    def __init__(self, name: str, workdir: Path, scenario: str, values: dict[str, Any], local_port: int,
                 remote: tuple[str, int] | None = None, *, calls: int | None = None, rate: float | None = None,
                 limit: int | None = None, media_port: int | None = None, host: str = HOST,
                 timeout: float | None = None, inf_rows: Iterable[Sequence[Any]] | None = None,
                 rtt: bool = False, extra: Sequence[str] = ()) -> None:
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.scenario = self.dir / f"{scenario}.xml"
        self.scenario.write_text(render((SCENARIOS / f"{scenario}.xml").read_text(), values))
        argv: list[str] = ["sipp"]
        if remote:
            argv.append(f"{remote[0]}:{remote[1]}")
        argv += ["-sf", self.scenario.name, "-i", host, "-p", str(local_port), "-t", "u1", "-nostdin",
                 "-trace_logs", "-trace_err", "-trace_stat", "-fd", "1", "-max_recv_loops", "10000"]
        if media_port:
            argv += ["-mi", host, "-mp", str(media_port)]
        if calls is not None:
            argv += ["-m", str(calls)]
        if rate is not None:
            argv += ["-r", f"{rate:g}"]
        if limit is not None:
            argv += ["-l", str(limit)]
        if timeout is not None:
            argv += ["-timeout", f"{timeout:g}s", "-timeout_error"]
        if rtt:
            argv += ["-trace_rtt", "-rtt_freq", "1"]
        if inf_rows is not None:
            inf = self.dir / "inject.csv"
            inf.write_text("SEQUENTIAL\n" + "".join(";".join(map(str, r)) + "\n" for r in inf_rows))
            argv += ["-inf", inf.name]
        argv += list(extra)
        self.ports = [local_port] + ([media_port, media_port + 2] if media_port else [])
        self.proc = Proc(argv, self.dir / "stdout.log", cwd=self.dir, env={**os.environ, "TERM": "dumb"})

    def start(self) -> Sipp:
        require_free(*self.ports)
        self.proc.start()
        return self

    def wait(self, timeout: float) -> int:
        """Wait for sipp to finish its calls; return its exit code (0: every call passed)."""
        try:
            return self.proc.wait(timeout)
        except TimeoutError:
            self.stop()
            raise

    def run(self, timeout: float) -> int:
        """Start, wait, return the exit code."""
        self.start()
        return self.wait(timeout)

    def stop(self) -> int | None:
        """Stop by PID; sipp exits on SIGUSR1 after its calls end, SIGTERM at once."""
        return self.proc.stop(timeout=2.0)[0]

    def _trace(self, suffix: str) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.dir.glob(f"{self.scenario.stem}_*_{suffix}")))

    def log_lines(self) -> list[str]:
        """Lines written by the scenario's <log> actions."""
        return [ln.strip() for ln in self._trace("logs.log").splitlines() if ln.strip()]

    def events(self, kind: str) -> list[str]:
        """Call-IDs of the scenario's log events of one kind (ANSWERED, CANCELLED, INVITE, CALLEE_HUNGUP)."""
        return [ln.split()[1] for ln in self.log_lines() if ln.split()[0] == kind]

    def errors(self) -> str:
        return self._trace("errors.log")

    def rtts(self, rtd: str) -> list[float]:
        """Response times in ms of one rtd timer, from -trace_rtt."""
        out = []
        for ln in self._trace("rtt.csv").splitlines():
            parts = ln.split(";")
            if len(parts) >= 3 and parts[2].strip() == rtd:
                try:
                    out.append(float(parts[1]))
                except ValueError:
                    pass
        return out

    def report(self) -> str:
        """What went wrong, for assertion messages: exit code, errors log, tail of stdout."""
        rc = self.proc.popen.returncode if self.proc.popen else None
        return (f"sipp {self.name} exit={rc}\n--- errors ---\n{self.errors()[-3000:]}\n"
                f"--- stdout ---\n{self.proc.output()[-1500:]}")


# ----------------------------------------------------------------------------------------- phones, callers


class Phone:
    """A sipp UAS registered on the AOR: the household phone, or a device that declines every call."""

    def __init__(self, workdir: Path, kamailio: Kamailio, port: int, media_port: int, name: str = "household",
                 *, ring_ms: int = 3000, decline: int | None = None, register_port: int | None = None,
                 expires: int = 3600, password: str | None = None, extra: Sequence[str] = (),
                 user: str = AOR_USER) -> None:
        self.kamailio = kamailio
        self.user = user  # the AOR it registers on
        self.password = kamailio.password if password is None else password
        self.port = port
        self.workdir = workdir
        self.name = name
        self.register_port = register_port or port + 1
        self.expires = expires
        if decline:
            self.uas = Sipp(name, workdir, "uas_decline", {"CODE": decline, "REASON": _REASONS.get(decline, "No")},
                            port, media_port=media_port, extra=extra)
        else:
            self.uas = Sipp(name, workdir, "uas_phone", {"RING_MS": ring_ms}, port, media_port=media_port,
                            extra=extra)

    def start(self) -> Phone:
        self.uas.start()
        self.register()
        return self

    def register(self, timeout: float = 5.0) -> None:
        """REGISTER the UAS's address on the AOR with digest auth (a short sipp run from another port)."""
        reg = Sipp(f"{self.name}-register", self.workdir, "register", {
            "USER": self.user, "PASSWORD": self.password, "CONTACT_HOST": HOST,
            "CONTACT_PORT": self.port, "EXPIRES": self.expires,
        }, self.register_port, (self.kamailio.host, self.kamailio.port), calls=1, timeout=timeout)
        rc = reg.run(timeout + 2)
        if rc != 0:
            raise PeerError(f"{self.name} could not register\n{reg.report()}")

    def stop(self) -> None:
        self.uas.stop()

    def events(self, kind: str) -> list[str]:
        return self.uas.events(kind)


_REASONS = {603: "Decline", 607: "Unwanted", 486: "Busy Here", 480: "Temporarily Unavailable"}


@dataclass
class Play:
    """A media step: replay a pcap file's RTP towards the callee."""

    path: Path


@dataclass
class Wait:
    """A media step: wait, noticing a BYE from the callee meanwhile."""

    ms: int


def dtmf(digit: str) -> list[Play | Wait]:
    """Media steps that send one RFC 2833 digit (sipp's packaged capture) and let it finish."""
    name = {"*": "star", "#": "pound"}.get(digit, digit)
    return [Play(Path(str(DTMF_PCAP).format(name))), Wait(DTMF_PCAP_MS)]


CODECS = {"PCMU": 0, "PCMA": 8}


@dataclass
class CallSpec:
    """What a sipp caller sends and expects."""

    number: str = "+390212345678"
    display: str | None = None
    extra_headers: Sequence[str] = ()
    codecs: Sequence[str] = ("PCMU", "PCMA")
    expect: str | int = "answer"  # "answer", or the final response code expected (603, 607, 404, ...)
    media: Sequence[Play | Wait] = ()
    hangup: str = "caller"  # after the media: "caller" sends BYE, "callee" waits for the callee's BYE
    bye_timeout_ms: int = 30000
    sdp_port: int | None = None  # m= port to offer; None = sipp's own media port
    from_header: str | None = None  # overrides number/display entirely

    def values(self) -> dict[str, Any]:
        """Template values for uac_answered.xml / uac_declined.xml."""
        if self.from_header is not None:
            from_h = self.from_header
        else:
            name = f'"{self.display}" ' if self.display is not None else ""
            from_h = f"{name}<sip:{self.number}@{HOST}>"
        pts = [CODECS[c] for c in self.codecs]
        return {
            "AOR_USER": AOR_USER,
            "FROM": from_h,
            "EXTRA_HEADERS": "".join(h + "\n" for h in self.extra_headers),
            "PAYLOADS": " ".join(map(str, pts)),
            "RTPMAPS": "".join(f"a=rtpmap:{CODECS[c]} {c}/8000\n" for c in self.codecs),
            "SDP_PORT": self.sdp_port if self.sdp_port is not None else "[media_port]",
            "CODE": self.expect,
            "MEDIA": _media_xml(self.media),
            "HANGUP": _hangup_xml(self.hangup, self.bye_timeout_ms),
        }


def _media_xml(steps: Sequence[Play | Wait]) -> str:
    out = []
    for i, step in enumerate(steps):
        if isinstance(step, Play):
            if not step.path.exists():
                raise FileNotFoundError(step.path)
            out.append(f'  <nop><action><exec play_pcap_audio="{step.path}"/></action></nop>')
        else:
            out.append(f'  <recv request="BYE" timeout="{step.ms}" ontimeout="w{i}" next="bye"/>\n'
                       f'  <label id="w{i}"/>')
    return "\n".join(out)


def _hangup_xml(hangup: str, bye_timeout_ms: int) -> str:
    if hangup == "callee":
        return f'  <recv request="BYE" timeout="{bye_timeout_ms}" next="bye"/>'
    if hangup != "caller":
        raise ValueError(f"hangup must be caller or callee, got {hangup!r}")
    return """  <send retrans="500">
    <![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
[last_From:]
[last_To:]
Call-ID: [call_id]
CSeq: 2 BYE
Contact: <sip:caller@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>"""


def caller(workdir: Path, ports: Ports, spec: CallSpec, *, name: str = "caller", host: str = HOST,
           target: tuple[str, int] | None = None, port: int | None = None, calls: int = 1,
           rate: float | None = None, limit: int | None = None, timeout: float = 30.0,
           inf_rows: Iterable[Sequence[Any]] | None = None, rtt: bool = False) -> Sipp:
    """A sipp UAC placing `calls` calls to the AOR through kamailio (or to target) per spec."""
    scenario = "uac_answered" if spec.expect == "answer" else "uac_declined"
    return Sipp(name, workdir, scenario, spec.values(), port or ports.caller,
                target or (HOST, ports.kamailio), calls=calls, rate=rate, limit=limit,
                media_port=ports.caller_media, host=host, timeout=timeout, inf_rows=inf_rows, rtt=rtt)


# --------------------------------------------------------------------------------------------- RTP, audio


@dataclass
class RtpPacket:
    """One RTP packet as received: arrival time (monotonic s) and header fields."""

    t: float
    pt: int
    seq: int
    ts: int
    ssrc: int
    marker: bool
    payload: bytes
    source: tuple[str, int]


class RtpCapture:
    """A UDP socket standing in for a caller's media port: records every RTP packet the callee sends."""

    def __init__(self, port: int, host: str = HOST) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.settimeout(0.05)
        self.port = port
        self.packets: list[RtpPacket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rtp-capture-{port}", daemon=True)

    def start(self) -> RtpCapture:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, src = self.sock.recvfrom(2048)
            except (TimeoutError, OSError):
                continue
            if len(data) < 12 or data[0] >> 6 != 2:
                continue
            cc = data[0] & 0x0F
            seq, ts, ssrc = struct.unpack("!HII", data[2:12])
            self.packets.append(RtpPacket(time.monotonic(), data[1] & 0x7F, seq, ts, ssrc, bool(data[1] & 0x80),
                                          data[12 + 4 * cc:], src))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def payload_types(self) -> set[int]:
        return {p.pt for p in self.packets}

    def gaps_ms(self, pt: int | None = None) -> list[float]:
        """Inter-arrival gaps in ms between consecutive audio packets (optionally of one payload type)."""
        pk = [p for p in self.packets if pt is None or p.pt == pt]
        return [(b.t - a.t) * 1000 for a, b in zip(pk, pk[1:], strict=False)]

    def samples(self, pt: int) -> list[int]:
        """16-bit linear samples of the packets with payload type pt (0 u-law, 8 A-law), in arrival order."""
        decode = ULAW if pt == 0 else ALAW
        return [decode[b] for p in self.packets if p.pt == pt for b in p.payload]

    def __enter__(self) -> RtpCapture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ulaw_decode(b: int) -> int:
    b = ~b & 0xFF
    mag = (((b & 0x0F) << 3) + 0x84) << ((b >> 4) & 0x07)
    return (0x84 - mag) if b & 0x80 else (mag - 0x84)


def _alaw_decode(b: int) -> int:
    b ^= 0x55
    seg = (b >> 4) & 0x07
    mag = ((b & 0x0F) << 4) + 8
    if seg:
        mag = (mag + 0x100) << (seg - 1)
    return mag if b & 0x80 else -mag


ULAW = [_ulaw_decode(i) for i in range(256)]
ALAW = [_alaw_decode(i) for i in range(256)]


def _nearest_code(table: list[int]) -> Callable[[int], int]:
    # Encoding by nearest decoded value: slow to build once, exact, and short enough to trust.
    pairs = sorted((v, code) for code, v in enumerate(table))
    values = [v for v, _ in pairs]

    def encode(x: int) -> int:
        i = bisect.bisect_left(values, x)
        best = min((j for j in (i - 1, i) if 0 <= j < len(values)), key=lambda j: abs(values[j] - x))
        return pairs[best][1]

    return encode


def encode_g711(samples: Sequence[int], pt: int) -> bytes:
    """16-bit linear samples to u-law (pt 0) or A-law (pt 8) bytes."""
    enc = _nearest_code(ULAW if pt == 0 else ALAW)
    return bytes(enc(max(-32768, min(32767, s))) for s in samples)


def tone(freq: float, seconds: float, amplitude: int = 8000, rate: int = 8000) -> list[int]:
    """A sine tone as 16-bit linear samples."""
    return [int(amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(int(seconds * rate))]


def write_rtp_pcap(path: Path, payload: bytes, pt: int, ssrc: int = 0x5C4EE4, ptime_ms: int = 20) -> Path:
    """A pcap of RTP packets carrying payload (already encoded, 8 kHz), for sipp's play_pcap_audio."""
    per = 8 * ptime_ms
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(0, len(payload) // per):
        rtp = struct.pack("!BBHII", 0x80, pt | (0x80 if i == 0 else 0), i & 0xFFFF, i * per, ssrc)
        rtp += payload[i * per:(i + 1) * per]
        udp = struct.pack("!HHHH", 40000, 40002, 8 + len(rtp), 0) + rtp
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                         socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")) + udp
        frame = b"\x00\x00\x00\x00\x00\x02" + b"\x00\x00\x00\x00\x00\x01" + b"\x08\x00" + ip
        usec = i * ptime_ms * 1000
        out.append(struct.pack("<IIII", 1_700_000_000 + usec // 1_000_000, usec % 1_000_000, len(frame), len(frame)))
        out.append(frame)
    path.write_bytes(b"".join(out))
    return path


def tone_power_ratio(samples: Sequence[int], freq: float, rate: int = 8000) -> float:
    """Share of the signal's energy at freq (Goertzel), 0-1; a clean tone at freq gives about 1."""
    n = len(samples)
    if not n:
        return 0.0
    coeff = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coeff * s1 * s2
    energy = sum(x * x for x in samples)
    return (2 * power / n) / energy if energy else 0.0


def read_wav(path: Path) -> tuple[int, list[int]]:
    """(sample rate, 16-bit linear mono samples) of a WAV file of 8- or 16-bit PCM."""
    with wave.open(str(path), "rb") as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    if width == 1:
        samples = [(b - 128) << 8 for b in raw]
    elif width == 2:
        samples = list(struct.unpack(f"<{len(raw) // 2}h", raw))
    else:
        raise ValueError(f"{path}: {width * 8}-bit WAV not handled")
    return rate, samples[::channels]


# ------------------------------------------------------------------------------------------------ screener


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def dump_toml(data: dict[str, Any]) -> str:
    """A small TOML writer: top-level keys, then one [table] (and [table.sub]) per nested dict."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]

    def tables(prefix: str, d: dict[str, Any]) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                lines.append(f"\n[{prefix}{k}]")
                lines.extend(f"{kk} = {_toml_value(vv)}" for kk, vv in v.items() if not isinstance(vv, dict))
                tables(f"{prefix}{k}.", v)

    tables("", data)
    return "\n".join(lines) + "\n"


# Test prompts are tones, so what a caller hears can be checked exactly: the challenge is CHALLENGE_TONE_HZ.
CHALLENGE_TONE_HZ = 440.0
CHALLENGE_SECONDS = 1.0
_PROMPT_TONES = {"challenge": (CHALLENGE_TONE_HZ, CHALLENGE_SECONDS), "passed": (1200.0, 0.3),
                 "failed": (300.0, 0.3), "blocked": (600.0, 0.3), "voicemail": (1500.0, 0.3)}


def write_wav(path: Path, samples: Sequence[int], rate: int = 8000) -> Path:
    """A 16-bit mono WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(struct.pack(f"<{len(samples)}h", *samples))
    return path


def write_test_prompts(folder: Path) -> dict[str, str]:
    """Short tone prompts (challenge 1 s at 440 Hz, the others 0.3 s) for [screening.prompts]."""
    folder.mkdir(parents=True, exist_ok=True)
    return {name: str(write_wav(folder / f"{name}.wav", tone(hz, secs, amplitude=12000)))
            for name, (hz, secs) in _PROMPT_TONES.items()}


def best_tone_window(samples: Sequence[int], freq: float, window_s: float = 0.5, rate: int = 8000) -> float:
    """The highest tone_power_ratio at freq over windows of window_s seconds (stepping 0.1 s)."""
    n, step = int(window_s * rate), rate // 10
    if len(samples) < n:
        return tone_power_ratio(samples, freq, rate)
    return max(tone_power_ratio(samples[i:i + n], freq, rate) for i in range(0, len(samples) - n + 1, step))


def screener_config(workdir: Path, ports: Ports, password: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """The test config as a dict; keyword arguments (sip=..., screening=...) override per section.

    Writes the tone prompts into workdir/prompts. challenge_repeats is 0 so one wrong digit fails the call.
    """
    cfg: dict[str, Any] = {
        "data_dir": str(workdir / "data"),
        "sip": {
            "server": HOST, "port": ports.kamailio, "username": AOR_USER, "password": password,
            "local_address": HOST, "sip_port": ports.screener_sip,
            "rtp_port_low": ports.rtp_low, "rtp_port_high": ports.rtp_high,
            "register_expires": 60, "keepalive_interval": 5, "trusted_sources": [f"{HOST}/32"],
        },
        "screening": {
            "region": "IT", "timezone": "Europe/Rome", "default_action": "screen", "block_action": "decline",
            "decline_code": 603, "screen_delay": 0.0, "challenge_digit": "5", "challenge_timeout": 5.0,
            "challenge_repeats": 0, "max_screened_calls": 4, "voicemail": True, "voicemail_max_seconds": 5,
            "prompts": write_test_prompts(workdir / "prompts"),
        },
        "database": {"url": f"sqlite:///{workdir / 'screener.db'}"},
        "web": {"host": HOST, "port": ports.web},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(cfg.get(name), dict):
            cfg[name] = {**cfg[name], **values}
        else:
            cfg[name] = values
    return cfg


def screener_command() -> list[str]:
    """The installed `screener` console script next to this Python, or a clear error."""
    script = Path(sys.executable).parent / "screener"
    found = str(script) if script.exists() else shutil.which("screener")
    if not found:
        raise PeerError("the `screener` console script is not installed: run "
                        f"`{sys.executable} -m pip install -e .` in the repository")
    return [found]


_REGISTERED = re.compile(r"(?<![\w-])registered\b", re.I)
_NOT_REGISTERED = re.compile(r"\b(not|un)[ -]?registered\b", re.I)


def says_registered(status_text: str) -> bool:
    """True when `screener status` output says the SIP account is registered (and not "not registered")."""
    return bool(_REGISTERED.search(status_text)) and not _NOT_REGISTERED.search(status_text)


@dataclass
class Screener:
    """The real `screener run` as a subprocess, with a config written for the test, and its CLI."""

    workdir: Path
    config: dict[str, Any]
    proc: Proc | None = None
    config_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "config.toml"
        self.write_config()

    def write_config(self) -> None:
        self.config_path.write_text(dump_toml(self.config))

    @property
    def sip_port(self) -> int:
        return int(self.config["sip"]["sip_port"])

    def cli(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run `screener --config PATH ARGS...`; with check, raise with its output on a non-zero exit."""
        cmd = [*screener_command(), "--config", str(self.config_path), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise PeerError(f"`screener {' '.join(args)}` exited {res.returncode}\n"
                            f"stdout: {res.stdout[-2000:]}\nstderr: {res.stderr[-3000:]}")
        return res

    def start(self) -> Screener:
        """Start `screener --config PATH run`; its output goes to screener.log."""
        require_free(self.sip_port)
        self.proc = Proc([*screener_command(), "--config", self.config_path, "run"], self.workdir / "screener.log",
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.proc.start()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def status(self) -> tuple[int, str]:
        """`screener status`: (exit code, output); 0 means registered."""
        res = self.cli("status", check=False)
        return res.returncode, (res.stdout + res.stderr).strip()

    def wait_registered(self, timeout: float = 15.0, registrar: Kamailio | None = None) -> str:
        """Wait until screener is registered; return the `screener status` output that says so.

        With the registrar given, first wait (cheaply) for its log to show screener's binding and for the
        sip_status row to say registered: every `screener status` is a Python start-up.
        """
        last = ""

        def exited() -> None:
            if self.proc is not None and not self.proc.alive():
                raise PeerError(f"screener exited (code {self.proc.popen.returncode}) before registering:\n"
                                f"{self.log_tail()}")

        def registered() -> bool:
            nonlocal last
            exited()
            rc, last = self.status()
            return rc == 0 and says_registered(last)

        def bound() -> bool:
            exited()
            return bool(registrar and registrar.registrations_from(self.sip_port)
                        and self.db_scalar("SELECT state FROM sip_status WHERE id = 1") in (None, "registered"))

        try:
            if registrar is not None:
                wait_until(bound, timeout, interval=0.02, what="kamailio to log screener's binding")
            wait_until(registered, timeout, interval=0.1, what="`screener status` to say registered")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; last status output:\n{last}\n--- screener log ---\n{self.log_tail()}") from None
        return last

    def db_scalar(self, sql: str) -> Any:
        """One value straight from the SQLite database (None if it or the table is not there yet).

        Only for cheap polling; assertions go through the CLI.
        """
        url = self.config["database"]["url"]
        if not url.startswith("sqlite:///"):
            return None
        try:
            with closing(sqlite3.connect(f"file:{url.removeprefix('sqlite:///')}?mode=ro", uri=True,
                                         timeout=1)) as db:
                row = db.execute(sql).fetchone()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    def calls(self) -> list[dict[str, Any]]:
        """`screener calls --json`: the call log, newest first."""
        out = self.cli("calls", "--json").stdout
        try:
            rows = json.loads(out)
        except json.JSONDecodeError as e:
            raise PeerError(f"`screener calls --json` printed no JSON ({e}):\n{out[:2000]}") from None
        if not isinstance(rows, list):
            raise PeerError(f"`screener calls --json` printed {type(rows).__name__}, not a list")
        return rows

    def wait_call(self, predicate: Callable[[dict[str, Any]], bool] = lambda row: True, timeout: float = 10.0,
                  count: int = 1) -> list[dict[str, Any]]:
        """Poll the call log until `count` rows match predicate (and each has an outcome); return them."""
        rows: list[dict[str, Any]] = []

        def found() -> bool:
            nonlocal rows
            finished = self.db_scalar("SELECT count(*) FROM calls WHERE outcome IS NOT NULL")
            if finished is not None and finished < count:
                return False
            rows = [r for r in self.calls() if predicate(r) and r.get("outcome")]
            return len(rows) >= count

        try:
            wait_until(found, timeout, interval=0.25, what=f"{count} finished call(s) in `screener calls`")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; rows: {json.dumps(self.calls(), indent=1)[:3000]}\n"
                               f"--- screener log ---\n{self.log_tail()}") from None
        return rows

    def stop(self, timeout: float = 5.0) -> tuple[int | None, float]:
        """SIGTERM by PID; returns (exit code, seconds taken), exit code None when it had to be killed."""
        if self.proc is None:
            return None, 0.0
        return self.proc.stop(timeout=timeout)

    def log_tail(self, n: int = 4000) -> str:
        return self.proc.output()[-n:] if self.proc else ""

    def rss_kb(self) -> int:
        """Resident memory of the running process, in KiB."""
        return _proc_status(self.proc.pid, "VmRSS") if self.proc else 0

    def threads(self) -> int:
        return _proc_status(self.proc.pid, "Threads") if self.proc else 0


def _proc_status(pid: int, key: str) -> int:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith(key + ":"):
            return int(ln.split()[1])
    return 0


def sip_invite(call_id: str, number: str, source: tuple[str, int], target: tuple[str, int],
               media_port: int = 9) -> bytes:
    """A plain, valid INVITE as a provider would forward it, for sending with send_udp."""
    host, port = source
    sdp = (f"v=0\r\no=x 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
           f"m=audio {media_port} RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n")
    return (f"INVITE sip:{AOR_USER}@{target[0]}:{target[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{os.urandom(6).hex()}\r\n"
            f"From: <sip:{number}@{host}>;tag={os.urandom(4).hex()}\r\nTo: <sip:{AOR_USER}@{target[0]}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{host}:{port}>\r\n"
            f"Max-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
            ).encode()


def send_udp(data: bytes, target: tuple[str, int], source: tuple[str, int] = (HOST, 0),
             wait: float = 0.0) -> list[bytes]:
    """Send one datagram from source; collect whatever comes back within wait seconds."""
    replies: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(source)
        s.sendto(data, target)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                replies.append(s.recv(65535))
            except (TimeoutError, ConnectionRefusedError):
                break
    return replies


# ------------------------------------------------------------------------------------ a Python UAC for timing


@dataclass
class CallResult:
    """One call placed by PyUac: when the INVITE left, and the first provisional and final responses."""

    call_id: str
    number: str
    sent: float
    provisional: float | None = None
    final_code: int | None = None
    final: float | None = None
    callee_hung_up: bool = False

    @property
    def latency_ms(self) -> float | None:
        """INVITE -> final response, in ms (perf_counter resolution)."""
        return None if self.final is None else (self.final - self.sent) * 1000


def _headers(msg: str) -> tuple[str, dict[str, list[str]]]:
    compact = {"i": "call-id", "v": "via", "t": "to", "f": "from", "m": "contact", "l": "content-length"}
    head = msg.split("\r\n\r\n", 1)[0].split("\r\n")
    out: dict[str, list[str]] = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        out.setdefault(compact.get(key, key), []).append(value.strip())
    return head[0], out


class PyUac:
    """A small SIP caller with perf_counter timestamps: INVITE at a steady rate, ACK, optional BYE.

    sipp's -trace_rtt has 1 ms resolution, too coarse for a proxy that answers in well under 1 ms. Each call
    offers an SDP port from sdp_port(i) (a capture socket, or a port nobody reads).
    """

    def __init__(self, target: tuple[str, int], local: tuple[str, int] = (HOST, 0)) -> None:
        self.target = target
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.sock.bind(local)
        self.sock.settimeout(0.05)
        self.local = self.sock.getsockname()
        self.calls: dict[str, CallResult] = {}
        self._invites: dict[str, str] = {}
        self._hold: dict[str, float] = {}
        self._byes: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rx = threading.Thread(target=self._receive, name="pyuac-rx", daemon=True)
        self._rx.start()

    def close(self) -> None:
        self._stop.set()
        self._rx.join(2)
        self.sock.close()

    def __enter__(self) -> PyUac:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, numbers: Sequence[str], rate: float, *, hold_s: float = 0.0, timeout: float = 10.0,
            sdp_port: Callable[[int], int] = lambda i: 9, codecs: Sequence[str] = ("PCMU", "PCMA"),
            extra_headers: Sequence[str] = ()) -> list[CallResult]:
        """Place one call per number at `rate` calls/s; answered calls get ACK, then BYE after hold_s.

        Returns when every call has a final response (and answered ones were hung up) or after timeout
        seconds past the last INVITE.
        """
        start = time.perf_counter()
        results = []
        for i, number in enumerate(numbers):
            due = start + i / rate
            while (now := time.perf_counter()) < due:
                self._send_due_byes(now)
                time.sleep(min(0.002, due - now))
            results.append(self._invite(number, sdp_port(i), codecs, extra_headers, hold_s))
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            self._send_due_byes(time.perf_counter())
            with self._lock:
                pending = any(r.final is None for r in results) or bool(self._byes) or bool(self._hold)
            if not pending:
                break
            time.sleep(0.005)
        return results

    def _invite(self, number: str, port: int, codecs: Sequence[str], extra: Sequence[str],
                hold_s: float) -> CallResult:
        tag, cid, branch = os.urandom(4).hex(), f"py-{os.urandom(8).hex()}", "z9hG4bK" + os.urandom(6).hex()
        host, lport = self.local
        pts = " ".join(str(CODECS[c]) for c in codecs)
        sdp = (f"v=0\r\no=pyuac 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
               f"m=audio {port} RTP/AVP {pts} 101\r\n"
               + "".join(f"a=rtpmap:{CODECS[c]} {c}/8000\r\n" for c in codecs)
               + "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n")
        req_uri = f"sip:{AOR_USER}@{self.target[0]}:{self.target[1]}"
        head = (f"INVITE {req_uri} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:{lport};branch={branch}\r\n"
                f"From: <sip:{number}@{host}>;tag={tag}\r\nTo: <sip:{AOR_USER}@{self.target[0]}>\r\n"
                f"Call-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{host}:{lport}>\r\nMax-Forwards: 70\r\n"
                + "".join(h + "\r\n" for h in extra)
                + f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n")
        result = CallResult(cid, number, time.perf_counter())
        with self._lock:
            self.calls[cid] = result
            self._invites[cid] = f"{req_uri}\n{branch}\n{tag}\n{number}"
            self._hold[cid] = hold_s
        self.sock.sendto((head + sdp).encode(), self.target)
        return result

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except (TimeoutError, OSError):
                continue
            t = time.perf_counter()
            text = data.decode(errors="replace")
            first, hdrs = _headers(text)
            cid = (hdrs.get("call-id") or [""])[0]
            if first.startswith("SIP/2.0 "):
                self._on_response(t, int(first.split()[1]), cid, hdrs)
            elif first.startswith("BYE "):
                self._reply(text, hdrs, "200 OK")
                with self._lock:
                    if cid in self.calls:
                        self.calls[cid].callee_hung_up = True
                    self._hold.pop(cid, None)
                    self._byes = [(due, c) for due, c in self._byes if c != cid]
            elif not first.startswith("ACK "):
                self._reply(text, hdrs, "200 OK")

    def _on_response(self, t: float, code: int, cid: str, hdrs: dict[str, list[str]]) -> None:
        cseq = (hdrs.get("cseq") or [""])[0]
        with self._lock:
            call = self.calls.get(cid)
            if call is None or not cseq.endswith("INVITE"):
                if cseq.endswith("BYE"):
                    self._hold.pop(cid, None)
                return
            if code < 200:
                call.provisional = call.provisional or t
                return
            first_final = call.final is None
            if first_final:
                call.final, call.final_code = t, code
            req_uri, branch, tag, number = self._invites[cid].split("\n")
            hold = self._hold.get(cid, 0.0)
        to = (hdrs.get("to") or [""])[0]
        host, lport = self.local
        if code >= 300:
            # The ACK of a failure response is part of the INVITE transaction: same branch, same R-URI.
            self.sock.sendto((f"ACK {req_uri} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:{lport};branch={branch}\r\n"
                              f"From: <sip:{number}@{host}>;tag={tag}\r\nTo: {to}\r\nCall-ID: {cid}\r\n"
                              "CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), self.target)
            with self._lock:
                self._hold.pop(cid, None)
            return
        contact = re.search(r"<([^>]+)>", (hdrs.get("contact") or [""])[0])
        target = contact.group(1) if contact else req_uri
        routes = [r.strip() for rr in reversed(hdrs.get("record-route", [])) for r in reversed(rr.split(","))]
        dialog = (f"Via: SIP/2.0/UDP {host}:{lport};branch=z9hG4bK{{branch}}\r\n"
                  + "".join(f"Route: {r}\r\n" for r in routes)
                  + f"From: <sip:{number}@{host}>;tag={tag}\r\nTo: {to}\r\nCall-ID: {cid}\r\nMax-Forwards: 70\r\n")
        ack = (f"ACK {target} SIP/2.0\r\n" + dialog.replace("{branch}", os.urandom(6).hex())
               + "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
        self.sock.sendto(ack.encode(), self.target)
        if first_final:
            bye = (f"BYE {target} SIP/2.0\r\n" + dialog.replace("{branch}", os.urandom(6).hex())
                   + "CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n")
            with self._lock:
                self._byes.append((t + hold, bye))

    def _send_due_byes(self, now: float) -> None:
        with self._lock:
            due = [b for b in self._byes if b[0] <= now]
            self._byes = [b for b in self._byes if b[0] > now]
        for _, bye in due:
            self.sock.sendto(bye.encode(), self.target)

    def _reply(self, text: str, hdrs: dict[str, list[str]], status: str) -> None:
        lines = [f"SIP/2.0 {status}"]
        lines += [f"Via: {v}" for v in hdrs.get("via", [])]
        for name in ("from", "to", "call-id", "cseq"):
            lines += [f"{name.title()}: {v}" for v in hdrs.get(name, [])]
        self.sock.sendto(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode(), self.target)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


# --------------------------------------------------------------------------------- a caller for fault tests


class FaultUac(PyUac):
    """PyUac with any From, headers and SDP media, every response recorded, and a CANCEL at a chosen moment.

    For what sipp scenarios make awkward: offers screener cannot serve (G.722, opus, RTP/SAVP), a display
    name that is not UTF-8 (encoding="latin-1"), and a CANCEL timed against screener's answer: cancel_after
    seconds after the first `cancel_on` response (e.g. 180), or after the INVITE when cancel_on is None.
    """

    def __init__(self, target: tuple[str, int], local: tuple[str, int] = (HOST, 0), *, media: str | None = None,
                 from_header: str | None = None, encoding: str = "utf-8", cancel_on: int | None = None,
                 cancel_after: float | None = None, cancel_reason: str | None = None) -> None:
        super().__init__(target, local)
        self.media = media  # SDP from the m= line on; "{port}" becomes the offered port
        self.from_header = from_header  # "{number}" and "{host}" are filled in
        self.encoding = encoding
        self.cancel_on = cancel_on
        self.cancel_after = cancel_after
        self.cancel_reason = cancel_reason
        self.responses: dict[str, list[tuple[float, int, str]]] = {}  # Call-ID -> (perf_counter, code, method)
        self.final_headers: dict[str, dict[str, list[str]]] = {}  # Call-ID -> headers of the INVITE's final
        self.cancelled: dict[str, float] = {}  # Call-ID -> perf_counter when the CANCEL left
        self._armed: set[str] = set()

    def codes(self, call_id: str, method: str = "INVITE") -> list[int]:
        """The status codes received for one call's requests of `method`, in arrival order."""
        with self._lock:
            return [code for _, code, m in self.responses.get(call_id, []) if m == method]

    def _invite(self, number: str, port: int, codecs: Sequence[str], extra: Sequence[str],
                hold_s: float) -> CallResult:
        tag, cid, branch = os.urandom(4).hex(), f"fault-{os.urandom(8).hex()}", "z9hG4bK" + os.urandom(6).hex()
        host, lport = self.local
        media = self.media if self.media is not None else (
            "m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n")
        sdp = (f"v=0\r\no=faultuac 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
               + media.replace("{port}", str(port)))
        from_h = (self.from_header.replace("{number}", number).replace("{host}", host) if self.from_header
                  else f"<sip:{number}@{host}>")
        req_uri = f"sip:{AOR_USER}@{self.target[0]}:{self.target[1]}"
        head = (f"INVITE {req_uri} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:{lport};branch={branch}\r\n"
                f"From: {from_h};tag={tag}\r\nTo: <sip:{AOR_USER}@{self.target[0]}>\r\n"
                f"Call-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{host}:{lport}>\r\nMax-Forwards: 70\r\n"
                + "".join(h + "\r\n" for h in extra)
                + f"Content-Type: application/sdp\r\nContent-Length: {len(sdp.encode(self.encoding))}\r\n\r\n")
        result = CallResult(cid, number, time.perf_counter())
        with self._lock:
            self.calls[cid] = result
            self._invites[cid] = f"{req_uri}\n{branch}\n{tag}\n{number}"
            self._hold[cid] = hold_s
        self.sock.sendto((head + sdp).encode(self.encoding), self.target)
        if self.cancel_on is None and self.cancel_after is not None:
            self._cancel_later(cid, self.cancel_after)
        return result

    def _on_response(self, t: float, code: int, cid: str, hdrs: dict[str, list[str]]) -> None:
        method = ((hdrs.get("cseq") or [""])[0].split() or [""])[-1].upper()
        with self._lock:
            self.responses.setdefault(cid, []).append((t, code, method))
            if method == "INVITE" and code >= 200 and cid not in self.final_headers:
                self.final_headers[cid] = hdrs
            arm = (self.cancel_on == code and method == "INVITE" and cid in self.calls and cid not in self._armed)
            if arm:
                self._armed.add(cid)
        if arm:
            self._cancel_later(cid, self.cancel_after or 0.0)
        super()._on_response(t, code, cid, hdrs)

    def _cancel_later(self, cid: str, delay: float) -> None:
        if delay <= 0:
            self.cancel(cid)
            return
        timer = threading.Timer(delay, self.cancel, (cid,))
        timer.daemon = True
        timer.start()

    def cancel(self, cid: str) -> None:
        """CANCEL the INVITE of one call (same branch and R-URI), unless it was refused or cancelled already."""
        with self._lock:
            call = self.calls.get(cid)
            if call is None or cid in self.cancelled or self._stop.is_set():
                return
            if call.final_code is not None and call.final_code >= 300:
                return
            req_uri, branch, tag, number = self._invites[cid].split("\n")
            self.cancelled[cid] = time.perf_counter()
        host, lport = self.local
        reason = f"Reason: {self.cancel_reason}\r\n" if self.cancel_reason else ""
        msg = (f"CANCEL {req_uri} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:{lport};branch={branch}\r\n"
               f"From: <sip:{number}@{host}>;tag={tag}\r\nTo: <sip:{AOR_USER}@{self.target[0]}>\r\n"
               f"Call-ID: {cid}\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\n{reason}Content-Length: 0\r\n\r\n")
        try:
            self.sock.sendto(msg.encode(), self.target)
        except OSError:
            pass
