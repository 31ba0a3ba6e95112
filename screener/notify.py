"""Notifications through apprise (Telegram, ntfy, Gotify, e-mail, Home Assistant, ...), never on a call's path.

The pure part says what to send: `call_message` for a closed call row, `RegistrationWatch` for a registration
lost and back, `restart_message` after a crash, `summary_message` once a day. `Notifier` is the adapter: the
service hands it events (a bounded queue, never a wait: a full queue drops the message and logs it), and one
worker thread sends them to each URL, retrying a failed URL with backoff; every failure goes to the service log.
`send_test` is the "send a test notification" of the CLI and the dashboard.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from screener.config import Config

log = logging.getLogger("screener.notify")

QUEUE_MAX = 100
BACKOFF_S = (2.0, 10.0, 30.0)  # a failed URL is tried again after these waits, then given up
TICK_S = 5.0  # how often the worker looks at the registration and the summary clock when idle


@dataclass(frozen=True)
class Message:
    event: str  # one of config.NOTIFY_EVENTS, or "test"
    title: str
    body: str
    attach: Path | None = None


@dataclass(frozen=True)
class Result:
    """One URL's answer to a test notification."""

    url: str  # shown form: scheme only, the rest may hold a token
    error: str  # "" = sent


def shown_url(url: str) -> str:
    """A notification URL as it may be shown or logged: its scheme only (tokens sit in paths and hosts)."""
    scheme, sep, _rest = url.partition("://")
    return f"{scheme}://…" if sep else "…"


# -- what to say (pure) --


def _who(values: Mapping[str, Any]) -> str:
    if values.get("withheld"):
        number = "withheld number"
    else:
        number = values.get("e164") or values.get("caller_raw") or "unknown number"
    name = (values.get("name") or "").strip()
    return f"{number} ({name})" if name else str(number)


def _link(cfg: Config, path: str) -> str:
    base = cfg.notify.dashboard_url.rstrip("/")
    return f"\n{base}{path}" if base else ""


def _when(values: Mapping[str, Any], tz: ZoneInfo) -> str:
    at = values.get("started_at")
    return f"{at.astimezone(tz):%Y-%m-%d %H:%M}" if isinstance(at, datetime) else ""


def call_message(values: Mapping[str, Any], cfg: Config) -> Message | None:
    """The message for a call row as closed (store.Call's values), or None when the call needs none.

    A voicemail left: the number, the name, the time, a link, the WAV. A ring-through the house did not answer:
    outcome passed with a `ring_through` reason and no voicemail.
    """
    tz = ZoneInfo(cfg.screening.timezone)
    who, when = _who(values), _when(values, tz)
    e164 = values.get("e164")
    number_page = f"/numbers/{quote(e164)}" if e164 else "/calls"
    if values.get("voicemail_path"):
        dur = values.get("duration_s")
        body = f"{who} left a message at {when}" + (f" (call of {dur:.0f} s)" if dur else "") + "."
        return Message("voicemail", f"Voicemail from {who}", body + _link(cfg, "/voicemail"),
                       cfg.data_path / str(values["voicemail_path"]))
    if values.get("outcome") == "passed" and values.get("ring_through"):
        body = f"{who} passed the screening at {when} and rang the house; nobody answered ({values['ring_through']})."
        return Message("ring_through", f"Unanswered call from {who}", body + _link(cfg, number_page))
    return None


class RegistrationWatch:
    """The registration lost for more than `after_s` seconds, and back (pure: states and times in, messages out).

    Not yet registered at start counts as lost from the start: a wrong password after an update is news too.
    """

    def __init__(self, after_s: float, now: float) -> None:
        self.after_s = after_s
        self.down_since: float | None = now
        self.error = ""
        self.reported = False

    def update(self, state: str, error: str, now: float) -> list[Message]:
        if state == "registered":
            out = []
            if self.reported and self.down_since is not None:
                minutes = (now - self.down_since) / 60
                out.append(Message("registration", "Phone line registered again",
                                   f"screener is registered again after {minutes:.0f} minutes without the line."))
            self.down_since, self.reported, self.error = None, False, ""
            return out
        if self.down_since is None:
            self.down_since = now
        self.error = error or self.error
        return self.tick(now)

    def tick(self, now: float) -> list[Message]:
        if self.down_since is None or self.reported or now - self.down_since < self.after_s:
            return []
        self.reported = True
        why = f" Last error: {self.error}." if self.error else ""
        return [Message("registration", "Phone line not registered",
                        f"screener has not been registered for {(now - self.down_since) / 60:.0f} minutes: "
                        f"calls are not screened.{why}")]


def restart_message(last_state: str | None, last_beat: datetime | None, interrupted: int,
                    tz: ZoneInfo) -> Message | None:
    """After a start: a message when the last run did not stop cleanly (its last beat was not "stopped", or
    it left calls open), else None. `last_state` None: there was no last run to judge."""
    unclean = last_state is not None and last_state != "stopped"
    if not unclean and not interrupted:
        return None
    seen = f" Its last sign of life was at {last_beat.astimezone(tz):%Y-%m-%d %H:%M:%S}." if last_beat else ""
    calls = f" {interrupted} call(s) it was handling are marked interrupted." if interrupted else ""
    return Message("restart", "screener restarted after a crash",
                   f"The previous run of screener did not stop cleanly (killed, crashed or power cut).{seen}{calls}")


def summary_message(counts: Mapping[str, int], since: datetime, until: datetime, tz: ZoneInfo) -> Message:
    """The daily summary: calls, blocked, screened, messages, for the 24 hours to `until`."""
    body = (f"{counts.get('calls', 0)} calls, {counts.get('blocked', 0)} blocked, {counts.get('screened', 0)} "
            f"screened, {counts.get('messages', 0)} new messages between {since.astimezone(tz):%d/%m %H:%M} and "
            f"{until.astimezone(tz):%d/%m %H:%M}.")
    return Message("summary", f"screener: {counts.get('calls', 0)} calls today", body)


def next_summary(after: datetime, at: str, tz: ZoneInfo) -> datetime:
    """The first moment after `after` whose wall-clock time in `tz` is `at` ("HH:MM")."""
    hh, mm = (int(x) for x in at.split(":"))
    local = after.astimezone(tz)
    day = local.date()
    for extra in range(3):  # a time a daylight-saving jump skips moves to the next day's
        cand = datetime(day.year, day.month, day.day, hh, mm, tzinfo=tz) + timedelta(days=extra)
        if cand > after:
            return cand
    raise AssertionError("unreachable")


# -- sending (the adapter) --


def send_one(url: str, msg: Message) -> str:
    """Send `msg` to one apprise URL now; "" when sent, else why not (one line)."""
    import apprise

    a = apprise.Apprise()
    if not a.add(url):
        return "not a notification URL apprise knows"
    attach = None
    if msg.attach is not None and getattr(a[0], "attachment_support", False) and msg.attach.is_file():
        attach = apprise.AppriseAttachment(str(msg.attach))
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as out:  # type: ignore[no-untyped-call]
        ok = a.notify(body=msg.body, title=msg.title, attach=attach)
    if ok:
        return ""
    lines = [x.strip() for x in out.getvalue().splitlines() if x.strip()]
    return (lines[-1] if lines else "the service did not accept it")[:300]


def send_test(cfg: Config, send: Callable[[str, Message], str] = send_one) -> list[Result]:
    """Send a test notification to every configured URL now (no queue, no retry): what `screener notify-test`
    and the dashboard's button do. An empty list: no URL configured."""
    msg = Message("test", "screener test notification",
                  "This is a test from screener: notifications reach you here." + _link(cfg, "/"))
    out = []
    for url in cfg.notify.urls:
        try:
            err = send(url, msg)
        except Exception as e:  # a plugin bug must not become a 500 or a traceback
            err = f"{type(e).__name__}: {e}"
        if err:
            log.warning("screener: test notification to %s failed: %s", shown_url(url), err)
        out.append(Result(shown_url(url), err))
    return out


Counts = Callable[[datetime, datetime], Mapping[str, int]]


class Notifier:
    """The service's side: post() never waits; one worker thread sends, retries, logs.

    `counts(since, until)` gives the daily summary's figures (read by the worker, never by a call's thread).
    Nothing starts when no URL is configured: every method is then a cheap no-op.
    """

    def __init__(self, cfg: Config, *, counts: Counts | None = None,
                 send: Callable[[str, Message], str] = send_one, backoff: tuple[float, ...] = BACKOFF_S,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], datetime] | None = None) -> None:
        from screener.store import utcnow

        self.cfg = cfg
        self.enabled = bool(cfg.notify.urls)
        self.tz = ZoneInfo(cfg.screening.timezone)
        self._counts, self._send, self._backoff = counts, send, backoff
        self._clock, self._wall = clock, wall or utcnow
        self._q: queue.Queue[Message | None] = queue.Queue(QUEUE_MAX)
        self._watch = RegistrationWatch(cfg.notify.registration_minutes * 60.0, clock())
        self._watch_lock = threading.Lock()
        self._retries: list[tuple[float, int, int, str, Message]] = []  # (due, seq, attempt, url, msg)
        self._seq = itertools.count()
        self._next_summary = next_summary(self._wall(), cfg.notify.summary_at, self.tz)
        self._thread: threading.Thread | None = None
        self._dropped = 0
        self.sent = 0  # messages delivered to one URL, for tests and the log
        self.failed = 0  # attempts that failed

    def wants(self, event: str) -> bool:
        return self.enabled and event in self.cfg.notify.events

    def post(self, msg: Message) -> bool:
        """Queue `msg` if its event is wanted; never waits. False when not wanted or the queue is full."""
        if not self.wants(msg.event):
            return False
        try:
            self._q.put_nowait(msg)
        except queue.Full:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 100 == 0:
                log.warning("screener: notification queue full: %s dropped (%d so far)", msg.event, self._dropped)
            return False
        return True

    # -- the service's hooks: each returns at once and never raises --

    def call_closed(self, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            msg = call_message(values, self.cfg)
            if msg is not None:
                self.post(msg)
        except Exception:
            log.exception("screener: no notification for call %s", values.get("call_id"))

    def status(self, state: str, error: str) -> None:
        if not self.enabled:
            return
        try:
            with self._watch_lock:
                msgs = self._watch.update(state, error, self._clock())
            for m in msgs:
                self.post(m)
        except Exception:
            log.exception("screener: no notification for the SIP state %s", state)

    def started(self, last_state: str | None, last_beat: datetime | None, interrupted: int) -> None:
        if not self.enabled:
            return
        msg = restart_message(last_state, last_beat, interrupted, self.tz)
        if msg is not None:
            log.info("screener: the last run did not stop cleanly (state %s, %d call(s) interrupted)",
                     last_state, interrupted)
            self.post(msg)

    # -- the worker --

    def start(self) -> Notifier:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the worker; what is still queued or waiting for a retry is dropped (logged)."""
        if self._thread is None:
            return
        try:
            self._q.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        try:
            import apprise  # noqa: F401  (loading its plugins takes a second: before the first message, not with it)
        except ImportError as e:
            log.error("screener: notifications cannot be sent: %s", e)
        while True:
            now = self._clock()
            wait = TICK_S if not self._retries else max(0.0, min(TICK_S, self._retries[0][0] - now))
            try:
                msg = self._q.get(timeout=wait)
            except queue.Empty:
                msg = None
                stopping = False
            else:
                stopping = msg is None
            if stopping:
                if self._retries or not self._q.empty():
                    log.warning("screener: stopping with %d notification(s) unsent",
                                len(self._retries) + self._q.qsize())
                return
            if msg is not None:
                for url in self.cfg.notify.urls:
                    self._attempt(url, msg, 0)
            self._due()

    def _due(self) -> None:
        now = self._clock()
        while self._retries and self._retries[0][0] <= now:
            _due, _seq, attempt, url, msg = heapq.heappop(self._retries)
            self._attempt(url, msg, attempt)
        with self._watch_lock:
            msgs = self._watch.tick(now)
        for m in msgs:
            self.post(m)
        wall = self._wall()
        if wall >= self._next_summary:
            since = self._next_summary - timedelta(days=1)
            until = self._next_summary
            self._next_summary = next_summary(wall, self.cfg.notify.summary_at, self.tz)
            if self.wants("summary") and self._counts is not None:
                try:
                    self.post(summary_message(self._counts(since, until), since, until, self.tz))
                except Exception as e:
                    log.error("screener: no daily summary: cannot count the calls (%s)", e)

    def _attempt(self, url: str, msg: Message, attempt: int) -> None:
        try:
            err = self._send(url, msg)
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
        if not err:
            self.sent += 1
            return
        self.failed += 1
        if attempt < len(self._backoff):
            delay = self._backoff[attempt]
            log.warning("screener: %s notification to %s failed (attempt %d): %s; trying again in %.0f s",
                        msg.event, shown_url(url), attempt + 1, err, delay)
            heapq.heappush(self._retries, (self._clock() + delay, next(self._seq), attempt + 1, url, msg))
        else:
            log.error("screener: %s notification to %s failed (attempt %d): %s; given up",
                      msg.event, shown_url(url), attempt + 1, err)
