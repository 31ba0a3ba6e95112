"""Calls screener must handle whatever they carry: extensions and offers it cannot serve, a hidden number with an
asserted identity, a display name that is not UTF-8, a CANCEL racing the answer, calls nobody ends, a full
dialog table.

Real kamailio, sipp phones and `screener run`; callers are FaultUac (tests/e2e/peers.py), a Python UAC that
sends any headers, SDP and bytes and times its CANCEL. Each test prints its figures.
"""

from __future__ import annotations

import html
import http.cookiejar
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from peers import (
    HOST,
    CallSpec,
    FaultUac,
    Kamailio,
    Phone,
    Ports,
    Screener,
    Sipp,
    screener_command,
    wait_until,
)

pytestmark = pytest.mark.e2e

BLOCKED = "+390212345678"
ALLOWED = "+390298765432"
UNKNOWN = "+390287654321"
ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'
ENDED_BY_CANCEL = {"answered_elsewhere", "missed", "caller_hung_up"}

G722 = "m=audio {port} RTP/AVP 9 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
OPUS = ("m=audio {port} RTP/AVP 111 101\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n"
        "a=rtpmap:101 telephone-event/48000\r\n")
SAVP = ("m=audio {port} RTP/SAVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n")
# (extra headers, SDP media or None for PCMU/PCMA, the extension the reason must name or None)
UNSERVABLE = [
    pytest.param(["Require: precondition", "Supported: precondition"], None, "precondition",
                 id="require-precondition"),
    pytest.param([], G722, None, id="g722-only"),
    pytest.param([], OPUS, None, id="opus-only"),
    pytest.param([], SAVP, None, id="srtp-savp"),
]


def _screener_replies(kamailio: Kamailio, screener: Screener, call_id: str) -> list[int]:
    """Status codes screener sent kamailio for one call (kamailio's REPLY log lines from screener's port)."""
    out = []
    for ln in kamailio.log_lines("REPLY"):
        m = re.search(rf"REPLY (\d+) (\S+) from {re.escape(HOST)}:{screener.sip_port}$", ln.rstrip())
        if m and m.group(2) == call_id:
            out.append(int(m.group(1)))
    return out


def _row_of(screener: Screener, call_id: str, timeout: float = 10.0) -> dict[str, Any]:
    return screener.wait_call(lambda r: r.get("call_id") == call_id, timeout=timeout)[0]


def _row_outcome(db_rows: Callable[..., list[tuple[Any, ...]]], screener: Screener, call_id: str) -> str | None:
    rows = db_rows(screener, "SELECT outcome FROM calls WHERE call_id = ?", (call_id,))
    return rows[0][0] if rows else None


def _evidence(screener: Screener) -> list[dict[str, Any]]:
    import json

    return json.loads(screener.cli("evidence", "-", "--json").stdout)


# ------------------------------------------------------------------ decide and log before anything can refuse


@pytest.mark.parametrize(("headers", "media", "ext"), UNSERVABLE)
def test_blocked_caller_is_declined_whatever_the_invite_requires_or_offers(
        screener: Screener, make_phone: Callable[..., Phone], kamailio: Kamailio, ports: Ports,
        headers: list[str], media: str | None, ext: str | None) -> None:
    household = make_phone(ring_ms=20000)
    screener.cli("list", "add", "block", BLOCKED)
    with FaultUac((HOST, ports.kamailio), (HOST, ports.caller), media=media) as uac:
        res = uac.run([BLOCKED], rate=1, timeout=8, extra_headers=headers)[0]
        codes = uac.codes(res.call_id)
    try:
        wait_until(lambda: household.events("CANCELLED"), 5, what="the household phone to be cancelled")
    except TimeoutError:
        pass
    mine = _screener_replies(kamailio, screener, res.call_id)
    rows = [r for r in screener.calls() if r.get("call_id") == res.call_id]
    print(f"\nblocked caller, {headers or media.split(chr(13))[0]}: caller got {codes} "
          f"({res.latency_ms or float('nan'):.1f} ms to the final); screener sent {mine}; household INVITE "
          f"{len(household.events('INVITE'))} CANCELLED {len(household.events('CANCELLED'))}; rows {rows}")
    assert res.final_code == 603, f"the caller got {codes}, screener sent {mine}"
    assert household.events("INVITE") and household.events("CANCELLED") == household.events("INVITE")
    row = _row_of(screener, res.call_id)
    assert (row["decision"], row["outcome"], row["e164"]) == ("block", "blocked", BLOCKED), row


@pytest.mark.parametrize(("headers", "media", "ext"), UNSERVABLE)
def test_caller_screener_cannot_serve_rings_the_house_and_is_logged_with_the_reason(
        screener: Screener, make_phone: Callable[..., Phone], kamailio: Kamailio, ports: Ports,
        headers: list[str], media: str | None, ext: str | None) -> None:
    household = make_phone(ring_ms=1000)
    with FaultUac((HOST, ports.kamailio), (HOST, ports.caller), media=media) as uac:
        res = uac.run([UNKNOWN], rate=1, timeout=8, hold_s=0.3, extra_headers=headers)[0]
        codes = uac.codes(res.call_id)
    mine = _screener_replies(kamailio, screener, res.call_id)
    rows = [r for r in screener.calls() if r.get("call_id") == res.call_id]
    print(f"\nunknown caller, {headers or media.split(chr(13))[0]}: caller got {codes}; screener sent {mine}; "
          f"household ANSWERED {len(household.events('ANSWERED'))}; rows {rows}")
    # Let ring: no answer and no refusal from screener, the household phone decides (and answers here).
    assert res.final_code == 200 and len(household.events("ANSWERED")) == 1, (codes, mine)
    assert not [c for c in mine if c >= 200 and c != 487], f"screener answered or refused: {mine}"
    row = _row_of(screener, res.call_id)
    assert "cannot screen" in row["reason"].lower(), row
    if ext:
        assert ext in row["reason"], row
    assert row["outcome"] == "answered_elsewhere", row


# ------------------------------------------------------------------------------- who the caller is, and its name


def test_withheld_caller_whose_asserted_identity_is_blocked_is_blocked(
        screener: Screener, make_phone: Callable[..., Phone], call: Callable[..., Sipp]) -> None:
    household = make_phone(ring_ms=20000)
    screener.cli("list", "add", "block", BLOCKED)
    pai = f"<sip:{BLOCKED}@{HOST};user=phone>"
    sipp = call(CallSpec(from_header='"Anonymous" <sip:anonymous@anonymous.invalid>', expect=603,
                         extra_headers=["Privacy: id", f"P-Asserted-Identity: {pai}"]), timeout=10)
    rows = screener.calls()
    print(f"\nPrivacy: id with P-Asserted-Identity {pai}: sipp exit {sipp.proc.popen.returncode}; rows {rows}")
    assert sipp.proc.popen.returncode == 0, sipp.report()
    row = screener.wait_call(lambda r: True)[0]
    assert (row["decision"], row["outcome"], row["withheld"]) == ("block", "blocked", True), row
    ev = [e for e in _evidence(screener) if e["call_id"] == row["call_id"]]
    print(f"evidence: {ev}")
    assert ev and BLOCKED in ev[0]["pai_raw"], ev
    wait_until(lambda: household.events("CANCELLED"), 5, what="the household phone to be cancelled")


def _dashboard(screener: Screener, ports: Ports, paths: list[str]) -> dict[str, tuple[int, str]]:
    """Log in to the dashboard `screener run` serves and GET each path: {path: (status, text)}."""
    user, password = "faults", "faults-pass-1"
    subprocess.run([*screener_command(), "--config", str(screener.config_path), "user", "add", user,
                    "--password-stdin"], input=password + "\n", text=True, check=True, capture_output=True,
                   timeout=30)
    base = f"http://{HOST}:{ports.web}"
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    wait_until(lambda: _get(opener, base + "/login")[0] == 200, 10, interval=0.2, what="the dashboard")
    _, page = _get(opener, base + "/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token, page[:500]
    form = urllib.parse.urlencode({"csrf_token": token.group(1), "login": user, "password": password}).encode()
    with opener.open(urllib.request.Request(base + "/login", data=form), timeout=10) as r:
        assert r.status == 200 and "/login" not in r.url, r.url
    return {p: _get(opener, base + p) for p in paths}


def _get(opener: urllib.request.OpenerDirector, url: str) -> tuple[int, str]:
    try:
        with opener.open(url, timeout=10) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except OSError:
        return 0, ""


def test_latin1_display_name_is_logged_decoded_and_shown(screener: Screener, make_phone: Callable[..., Phone],
                                                          ports: Ports) -> None:
    household = make_phone(ring_ms=20000)
    screener.cli("list", "add", "block", BLOCKED)
    # Latin-1 on the wire: "Jos\xe9 Garc\xeda", one byte per accented letter, not UTF-8.
    with FaultUac((HOST, ports.kamailio), (HOST, ports.caller), from_header='"José García" <sip:{number}@{host}>',
                  encoding="latin-1") as uac:
        res = uac.run([BLOCKED], rate=1, timeout=8)[0]
        codes = uac.codes(res.call_id)
    rows = [r for r in screener.calls() if r.get("call_id") == res.call_id]
    print(f"\nFrom with Latin-1 bytes: caller got {codes}; rows {rows}")
    assert res.final_code == 603, codes
    row = _row_of(screener, res.call_id)
    assert (row["decision"], row["outcome"]) == ("block", "blocked"), row
    assert row["name"] == "José García", row
    text = screener.cli("calls").stdout
    ev = [e for e in _evidence(screener) if e["call_id"] == res.call_id]
    pages = _dashboard(screener, ports, ["/", "/calls", f"/numbers/{BLOCKED}"])
    print(f"`screener calls`: {text.strip()[:300]}\nevidence: {ev}\n"
          f"dashboard: {[(p, code, len(body)) for p, (code, body) in pages.items()]}")
    assert "José García" in text
    assert ev and ev[0]["name"] == "José García", ev
    for path, (code, body) in pages.items():
        assert code == 200, f"{path}: {code}\n{body[:2000]}"
    assert "José García" in html.unescape(pages["/calls"][1])
    wait_until(lambda: household.events("CANCELLED"), 5, what="the household phone to be cancelled")


# ----------------------------------------------------------------------------------- a CANCEL racing the answer


def _race(screener: Screener, ports: Ports, db_rows: Callable[..., Any], delays: list[float]) -> list[str]:
    """One screened call per delay, straight to screener: CANCEL `delay` s after its 180. Returns problems."""
    problems = []
    print()
    with FaultUac((HOST, screener.sip_port), (HOST, ports.caller), cancel_on=180,
                  cancel_reason=ELSEWHERE) as uac:
        for i, delay in enumerate(delays):
            uac.cancel_after = delay
            number = f"+3902876{i:05d}"
            res = uac.run([number], rate=1, timeout=5)[0]
            cid = res.call_id
            try:
                # the CANCEL leaves even when screener's 200 came first (it crosses the 200 on a real line)
                wait_until(lambda c=cid, r=res: c in uac.cancelled or r.final_code not in (None, 200), 2,
                           interval=0.002)
                wait_until(lambda c=cid: _row_outcome(db_rows, screener, c), 10, interval=0.02)
            except TimeoutError:
                pass
            closed = time.perf_counter()
            outcome = _row_outcome(db_rows, screener, cid)
            with uac._lock:
                seen = list(uac.responses.get(cid, []))
                cancel_at = uac.cancelled.get(cid)
            t0 = res.sent
            trail = " ".join(f"{code}/{m[:3]}@{(t - t0) * 1000:.1f}" for t, code, m in seen)
            trail += " (screener sent BYE)" if res.callee_hung_up else ""
            after_cancel = (closed - cancel_at) if cancel_at else float("nan")
            print(f"  CANCEL 180+{delay * 1000:.0f} ms (sent @{((cancel_at or t0) - t0) * 1000:.1f} ms): {trail}; "
                  f"outcome {outcome}, row closed <= {after_cancel:.2f} s after the CANCEL")
            invite = [(t, code) for t, code, m in seen if m == "INVITE" and code >= 200]
            cancel_ok = [t for t, code, m in seen if m == "CANCEL" and code == 200]
            answered = [t for t, code in invite if code == 200]
            if answered and any(code == 487 for _, code in invite):
                problems.append(f"{cid}: both 200 and 487 for the INVITE")
            if answered and cancel_ok and answered[0] > cancel_ok[0]:
                problems.append(f"{cid}: 200 OK to the INVITE after the 200 OK to the CANCEL (answered after it)")
            if outcome not in ENDED_BY_CANCEL:
                problems.append(f"{cid}: outcome {outcome}")
            if not after_cancel < 5.0:
                problems.append(f"{cid}: row not complete {after_cancel:.2f} s after the CANCEL")
    return problems


def test_cancel_racing_the_answer_after_screen_delay(make_screener: Callable[..., Screener], ports: Ports,
                                                      db_rows: Callable[..., Any]) -> None:
    delay = 0.5
    screener = make_screener(screening={"screen_delay": delay, "challenge_timeout": 30.0})
    offsets = [-0.02, -0.005, -0.002, 0.0, 0.002, 0.005, 0.02]
    problems = _race(screener, ports, db_rows, [delay + o for o in offsets for _ in (1, 2)])
    assert screener.alive(), screener.log_tail()
    assert not problems, "\n".join(problems) + "\n" + screener.log_tail()


def test_cancel_sent_on_ringing_races_an_immediate_answer(make_screener: Callable[..., Screener], ports: Ports,
                                                           db_rows: Callable[..., Any]) -> None:
    screener = make_screener(screening={"screen_delay": 0.0, "challenge_timeout": 30.0})
    problems = _race(screener, ports, db_rows, [0.0] * 10 + [0.001] * 5)
    assert screener.alive(), screener.log_tail()
    assert not problems, "\n".join(problems) + "\n" + screener.log_tail()


# ------------------------------------------------------------------------------------------- every call ends


class _Peak:
    """Samples a screener's threads and RSS every 0.1 s in the background; keeps the highest of each."""

    def __init__(self, screener: Screener) -> None:
        self.screener = screener
        self.threads = self.rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.threads = max(self.threads, self.screener.threads())
                self.rss = max(self.rss, self.screener.rss_kb())
            except (OSError, ValueError):
                return

    def __enter__(self) -> _Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


def _settled(screener: Screener, threads0: int, rss0: int, timeout: float) -> tuple[int, int]:
    """Wait until threads and RSS are back (threads <= before, RSS within 5 MB); return the last figures."""
    last = (screener.threads(), screener.rss_kb())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = (screener.threads(), screener.rss_kb())
        if last[0] <= threads0 and last[1] - rss0 <= 5 * 1024:
            break
        time.sleep(0.5)
    return last


def test_calls_nobody_ends_are_ended_by_max_ring_time(make_screener: Callable[..., Screener], ports: Ports,
                                                       db_rows: Callable[..., Any]) -> None:
    max_ring, n = 10, 200
    screener = make_screener(screening={"max_ring_time": max_ring})
    screener.cli("list", "add", "allow", "+3902987*")
    time.sleep(1.0)
    threads0, rss0 = screener.threads(), screener.rss_kb()
    numbers = [f"+3902987{i:05d}" for i in range(n)]
    with FaultUac((HOST, screener.sip_port), (HOST, ports.caller)) as uac, _Peak(screener) as peak:
        t0 = time.monotonic()
        res = uac.run(numbers, rate=50, timeout=max_ring + 15)
        last_invite = t0 + (n - 1) / 50
        ids = [r.call_id for r in res]

        def open_rows() -> int:
            done = {c for c, o in db_rows(screener, "SELECT call_id, outcome FROM calls") if o}
            return sum(1 for c in ids if c not in done)

        try:
            wait_until(lambda: open_rows() == 0, max(0.1, last_invite + max_ring + 10 - time.monotonic()),
                       interval=0.25)
        except TimeoutError:
            pass
        closed_after = time.monotonic() - last_invite
    finals: dict[Any, int] = {}
    for r in res:
        finals[r.final_code] = finals.get(r.final_code, 0) + 1
    outcomes = dict(db_rows(screener, "SELECT outcome, count(*) FROM calls GROUP BY outcome"))
    latencies = sorted(r.latency_ms / 1000 for r in res if r.latency_ms is not None)
    threads1, rss1 = _settled(screener, threads0, rss0, 15)
    print(f"\n{n} allowed calls never cancelled, max_ring_time {max_ring} s: finals {finals}, INVITE -> final "
          f"{latencies[0] if latencies else float('nan'):.1f}-{latencies[-1] if latencies else float('nan'):.1f} s; "
          f"rows {outcomes}, open rows {open_rows()}, all closed {closed_after:.1f} s after the last INVITE; "
          f"threads {threads0} -> peak {peak.threads} -> {threads1}; RSS {rss0} -> peak {peak.rss} -> {rss1} KiB "
          f"({(rss1 - rss0) / 1024:+.1f} MiB)")
    assert screener.alive(), screener.log_tail()
    assert finals == {480: n}, finals
    assert open_rows() == 0 and closed_after <= max_ring + 10, f"{open_rows()} rows open, {outcomes}"
    assert outcomes == {"missed": n}, outcomes
    assert threads1 <= threads0, f"threads {threads0} -> {threads1}"
    assert rss1 - rss0 <= 5 * 1024, f"RSS {rss0} -> {rss1} KiB"


def test_full_dialog_table_refuses_with_503_retry_after_and_a_row(make_screener: Callable[..., Screener],
                                                                    ports: Ports, db_rows: Callable[..., Any]) -> None:
    max_ring, n = 10, 256
    screener = make_screener(screening={"max_ring_time": max_ring})
    screener.cli("list", "add", "allow", "+3902987*")
    with FaultUac((HOST, screener.sip_port), (HOST, ports.caller)) as uac:
        res = uac.run([f"+3902987{i:05d}" for i in range(n)], rate=100, timeout=0.5)
        wait_until(lambda: all(r.provisional or r.final_code for r in res), 10, what=f"{n} calls ringing")
        ringing = sum(1 for r in res if r.final_code is None)
        extra = uac.run([ALLOWED], rate=1, timeout=3)[0]
        hdrs = uac.final_headers.get(extra.call_id, {})
        try:
            row = _row_of(screener, extra.call_id, timeout=5)
        except TimeoutError:
            row = None
        wait_until(lambda: all(r.final_code for r in res), max_ring + 15, interval=0.25,
                   what=f"the {n} ringing calls to end")
    finals: dict[Any, int] = {}
    for r in res:
        finals[r.final_code] = finals.get(r.final_code, 0) + 1
    print(f"\n{ringing} of {n} calls ringing; call {n + 1} got {extra.final_code} "
          f"({extra.latency_ms or float('nan'):.1f} ms), Retry-After {hdrs.get('retry-after')}; row {row}; "
          f"the {n} ended with {finals}")
    assert ringing == n
    assert extra.final_code == 503 and hdrs.get("retry-after"), (extra.final_code, hdrs)
    assert row is not None and row["outcome"] == "over_capacity", row
    assert screener.alive(), screener.log_tail()


def test_callers_screener_cannot_serve_are_ended_by_max_ring_time_too(
        make_screener: Callable[..., Screener]) -> None:
    max_ring = 10
    screener = make_screener(screening={"max_ring_time": max_ring})
    t0 = time.monotonic()
    with FaultUac((HOST, screener.sip_port), media=G722) as g722, FaultUac((HOST, screener.sip_port)) as rel:
        rel.run([UNKNOWN], rate=1, timeout=0.1, extra_headers=["Require: precondition"])  # returns while it rings
        g722.run(["+390287600001"], rate=1, timeout=max_ring + 10)
        res = [*rel.calls.values(), *g722.calls.values()]
        wait_until(lambda: all(r.final_code for r in res), 5, what="both finals")
        codes = [rel.codes(r.call_id) or g722.codes(r.call_id) for r in res]
    took = time.monotonic() - t0
    rows = [r for r in screener.calls() if r["call_id"] in {x.call_id for x in res}]
    print(f"\nG.722-only and Require: precondition callers nobody ends, max_ring_time {max_ring} s: codes {codes} after "
          f"{took:.1f} s; rows {[(r['outcome'], r['reason']) for r in rows]}")
    assert [r.final_code for r in res] == [480, 480], codes
    assert len(rows) == 2 and all(r["outcome"] == "missed" and "cannot screen" in r["reason"] for r in rows), rows
