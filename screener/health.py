"""Is the service alive? It writes a heartbeat (state, pid, untrusted SIP) every INTERVAL seconds; `judge`
tells `screener status` and the dashboard what a row means: a beat older than STALE_AFTER is a dead service.

Wiring (screener/service.py): `Heartbeat(db, agent_snapshot(agent)).start()` after the agent started, and
`.stop()` when the service stops (it writes a last "stopped").
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from screener import store

if TYPE_CHECKING:
    from screener.sip.agent import SipAgent

log = logging.getLogger("screener.health")

INTERVAL = 5.0
STALE_AFTER = 3 * INTERVAL  # three missed beats: the service is gone (killed, hung, machine off)

NOT_CONFIGURED = "not_configured"  # the service runs and waits for a SIP account (the dashboard's setup page)

# `screener status` exit codes (LSB init-script style, for monitoring)
EXIT_REGISTERED = 0
EXIT_NOT_REGISTERED = 1  # running, registration not (yet) done or failing
EXIT_NOT_RUNNING = 3  # stopped, never ran, or no heartbeat for STALE_AFTER
EXIT_UNKNOWN = 4  # the database could not be read


@dataclass(frozen=True)
class Untrusted:
    """SIP from untrusted addresses dropped since the service started."""

    count: int = 0
    sources: int = 0
    last_source: str = ""
    last_at: datetime | None = None


@dataclass(frozen=True)
class Snapshot:
    """What one beat writes."""

    state: str  # the agent's registration state: registering, registered, failed, unregistered; not_configured
    error: str = ""
    since: datetime | None = None  # when the state began (None: now)
    untrusted: Untrusted = field(default_factory=Untrusted)


def agent_snapshot(agent: SipAgent) -> Callable[[], Snapshot]:
    """A snapshot() for Heartbeat reading a running SipAgent (its status and untrusted summary)."""

    def snapshot() -> Snapshot:
        st = agent.status
        u = agent.untrusted_summary()
        last_at = datetime.fromtimestamp(u.last_at, UTC) if u.last_at is not None else None
        return Snapshot(st.state, st.last_error or "", datetime.fromtimestamp(st.since, UTC),
                        Untrusted(u.count, u.sources, u.last_source, last_at))

    return snapshot


class Heartbeat:
    """A daemon thread writing snapshot() to the sip_status row every `interval` seconds; never raises.

    A failing write (database locked, PostgreSQL away) is logged once per outage, not once per beat.
    """

    def __init__(self, db: store.Store, snapshot: Callable[[], Snapshot], interval: float = INTERVAL,
                 pid: int | None = None, file: Path | None = None) -> None:
        self.db = db
        self.file = file  # the same beat, also written where no database lock or outage can stop it
        self.snapshot = snapshot
        self.interval = interval
        self.pid = os.getpid() if pid is None else pid
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._last = Snapshot("registering")

    def start(self) -> Heartbeat:
        """Beat now and then every interval, on a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self, state: str = "stopped") -> None:
        """End the thread and write a last beat with `state`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 1.0)
        self.beat(Snapshot(state, untrusted=self._last.untrusted))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self.interval)

    def beat(self, snap: Snapshot | None = None) -> bool:
        """Write one beat in its own short transaction; False (and logged once per outage) when it failed."""
        try:
            snap = snap or self.snapshot()
            self._last = snap
            u = snap.untrusted
            if self.file is not None:
                now = store.utcnow()
                try:
                    write_beat_file(self.file, Beat(snap.state, snap.since or now, snap.error[:300], now,
                                                    self.pid, u.count, u.sources, u.last_source, u.last_at))
                except OSError as e:
                    log.debug("heartbeat file not written: %s", e)
            with self.db.write() as s:
                store.write_heartbeat(s, snap.state, snap.error[:300], snap.since, self.pid,
                                      (u.count, u.sources, u.last_source, u.last_at))
        except Exception as e:
            if not self._failing:
                self._failing = True
                log.warning("screener: cannot write the heartbeat to the database (%s)%s", e,
                            "; the beat file still tells status the service runs" if self.file else
                            ": status will say not running")
            return False
        if self._failing:
            self._failing = False
            log.info("screener: heartbeat written again")
        return True


@dataclass(frozen=True)
class Health:
    """What a sip_status row means now."""

    state: str  # the registration state, or "stopped", "stale" (no beat for STALE_AFTER), "never"
    running: bool
    exit_code: int
    age: float | None  # seconds since the last beat (None: no beat recorded)


def judge(state: str | None, heartbeat_at: datetime | None, now: datetime,
          stale_after: float = STALE_AFTER) -> Health:
    """The service's health from the sip_status row's state and heartbeat time (pure)."""
    if state is None:
        return Health("never", False, EXIT_NOT_RUNNING, None)
    age = (now - heartbeat_at).total_seconds() if heartbeat_at is not None else None
    if state == "stopped":
        return Health("stopped", False, EXIT_NOT_RUNNING, age)
    if age is not None and age > stale_after:
        return Health("stale", False, EXIT_NOT_RUNNING, age)
    # age None: a service without a heartbeat wrote the row (an older screener); its state is all there is
    return Health(state, True, EXIT_REGISTERED if state == "registered" else EXIT_NOT_REGISTERED, age)


@dataclass(frozen=True)
class Beat:
    """What the last beat recorded: the sip_status row's fields, read from the database or the beat file."""

    state: str
    since: datetime
    last_error: str
    heartbeat_at: datetime | None
    pid: int | None
    untrusted_count: int = 0
    untrusted_sources: int = 0
    untrusted_last_source: str = ""
    untrusted_last_at: datetime | None = None


BEAT_FILE = "heartbeat.json"  # in the data folder


def write_beat_file(path: Path, beat: Beat) -> None:
    """Replace the beat file atomically (a reader never sees half of it); OSError when it cannot."""
    doc = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(beat).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    tmp.replace(path)


def read_beat_file(path: Path) -> Beat | None:
    """The beat file's record; None when there is none or it cannot be read."""
    try:
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        for k in ("since", "heartbeat_at", "untrusted_last_at"):
            if doc.get(k):
                doc[k] = datetime.fromisoformat(doc[k])
        return Beat(**doc)
    except (OSError, ValueError, TypeError):
        return None


def freshest(row: Any, beat: Beat | None) -> Any:
    """The sip_status row or the beat file's record, whichever was written last (None: neither exists).

    A database write lock held for a while (a backup, an import elsewhere) or a PostgreSQL restart stops the
    row's beats, not the file's: a running service never looks dead for that.
    """
    if beat is None:
        return row
    if row is None or row.heartbeat_at is None or (beat.heartbeat_at and beat.heartbeat_at > row.heartbeat_at):
        return beat
    return row
