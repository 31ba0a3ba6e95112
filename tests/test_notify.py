"""Notifications: what is said for each event (pure, table-driven), and delivery through apprise's json:// to a
real HTTP endpoint on 127.0.0.1 that the test starts: delivered, retried, logged, and never on a call's path."""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from notify_support import Endpoint, closed_port_url
from test_service import PROMPTS, FakeAgent, FakeCall, FlushingHandler, Info

from screener import config, health, notify, store
from screener.notify import Message, Notifier, RegistrationWatch, call_message, next_summary, restart_message
from screener.service import Service

ROME = ZoneInfo("Europe/Rome")
T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


@pytest.fixture
def endpoint():
    ep = Endpoint()
    yield ep
    ep.close()


def cfg_with(write_config, body: str) -> config.Config:
    return config.load(write_config(body))


# -- what is said --

CALLS = [
    # name, row values, dashboard_url, expected (event, title part, body parts, attach) or None
    ("voicemail", dict(e164="+390212345678", name="Anna", outcome="passed", voicemail_path="voicemail/a.wav",
                       started_at=T0, duration_s=31.0),
     "http://pi:8080/", ("voicemail", "Voicemail from +390212345678 (Anna)",
                         ["left a message at 2026-03-02 10:30", "http://pi:8080/voicemail"], "voicemail/a.wav")),
    ("voicemail without a link", dict(e164="+390212345678", outcome="passed", voicemail_path="voicemail/a.wav",
                                      started_at=T0),
     "", ("voicemail", "Voicemail from +390212345678", ["left a message"], "voicemail/a.wav")),
    ("ring-through nobody answered", dict(e164="+390212345678", outcome="passed", started_at=T0,
                                          ring_through="nobody answered within 30 s"),
     "http://pi:8080", ("ring_through", "Unanswered call from +390212345678",
                        ["nobody answered within 30 s", "http://pi:8080/numbers/%2B390212345678"], None)),
    ("withheld ring-through", dict(withheld=True, outcome="passed", started_at=T0, ring_through="no answer"),
     "", ("ring_through", "withheld number", ["no answer"], None)),
    ("passed, no ring-through, no message", dict(e164="+390212345678", outcome="passed", started_at=T0), "", None),
    ("passed, empty ring-through field", dict(e164="+3902", outcome="passed", started_at=T0, ring_through=""), "",
     None),
    ("blocked", dict(e164="+390212345678", outcome="blocked", started_at=T0), "http://pi", None),
    ("missed", dict(e164="+390212345678", outcome="missed", started_at=T0), "", None),
]


@pytest.mark.parametrize("name,values,url,expected", CALLS, ids=[c[0] for c in CALLS])
def test_call_message(name, values, url, expected):
    cfg = replace(config.Config(), notify=config.NotifyConfig(dashboard_url=url))
    msg = call_message(values, cfg)
    if expected is None:
        assert msg is None
        return
    event, title, parts, attach = expected
    assert msg.event == event and title in msg.title
    for part in parts:
        assert part in msg.body
    assert "http" not in msg.body or url
    assert msg.attach == (cfg.data_path / attach if attach else None)


WATCH = [
    # name, [(time s, state, error)], expected [(time index, title)]
    ("registered at once: nothing", [(0, "registering", ""), (2, "registered", "")], []),
    ("never registered: lost after N minutes", [(0, "registering", ""), (301, "registering", "")],
     [(1, "not registered")]),
    ("lost and back within N minutes: nothing",
     [(0, "registered", ""), (10, "failed", "403"), (200, "registered", "")], []),
    ("lost for longer and back", [(0, "registered", ""), (10, "failed", "403 Forbidden"), (400, "failed", ""),
                                  (500, "registered", "")], [(2, "not registered"), (3, "registered again")]),
    ("reported once per outage", [(0, "registered", ""), (10, "failed", ""), (400, "failed", ""),
                                  (900, "registering", ""), (1000, "registered", ""), (1100, "failed", ""),
                                  (1500, "failed", "")],
     [(2, "not registered"), (4, "registered again"), (6, "not registered")]),
]


@pytest.mark.parametrize("name,steps,expected", WATCH, ids=[w[0] for w in WATCH])
def test_registration_watch(name, steps, expected):
    w = RegistrationWatch(300, steps[0][0])
    got = []
    for i, (t, state, err) in enumerate(steps):
        got += [(i, m.title) for m in w.update(state, err, t)]
    assert len(got) == len(expected)
    for (gi, gt), (ei, et) in zip(got, expected, strict=True):
        assert gi == ei and et in gt.lower()


def test_registration_watch_names_the_last_error_and_the_tick_reports():
    w = RegistrationWatch(60, 0)
    assert w.update("registered", "", 1) == []
    assert w.update("failed", "403 Forbidden: wrong password?", 5) == []
    assert w.tick(30) == []
    [msg] = w.tick(70)
    assert "403 Forbidden" in msg.body and "1 minutes" in msg.body
    assert w.tick(200) == []


RESTARTS = [
    ("clean stop", "stopped", 0, None),
    ("first run ever", None, 0, None),
    ("killed while registered", "registered", 0, "did not stop cleanly"),
    ("killed with calls open", "registered", 2, "2 call(s)"),
    ("calls interrupted without a beat file", None, 1, "1 call(s)"),
]


@pytest.mark.parametrize("name,state,interrupted,expected", RESTARTS, ids=[r[0] for r in RESTARTS])
def test_restart_message(name, state, interrupted, expected):
    msg = restart_message(state, T0 if state else None, interrupted, ROME)
    if expected is None:
        assert msg is None
    else:
        assert msg.event == "restart" and expected in msg.body


SUMMARY_TIMES = [
    ("later today", datetime(2026, 3, 2, 10, 0, tzinfo=ROME), "20:00", datetime(2026, 3, 2, 20, 0, tzinfo=ROME)),
    ("tomorrow", datetime(2026, 3, 2, 21, 0, tzinfo=ROME), "20:00", datetime(2026, 3, 3, 20, 0, tzinfo=ROME)),
    ("at the minute: the next day", datetime(2026, 3, 2, 20, 0, tzinfo=ROME), "20:00",
     datetime(2026, 3, 3, 20, 0, tzinfo=ROME)),
    ("across the spring change", datetime(2026, 3, 28, 21, 0, tzinfo=ROME), "20:00",
     datetime(2026, 3, 29, 20, 0, tzinfo=ROME)),
]


@pytest.mark.parametrize("name,after,at,expected", SUMMARY_TIMES, ids=[s[0] for s in SUMMARY_TIMES])
def test_next_summary(name, after, at, expected):
    got = next_summary(after.astimezone(UTC), at, ROME)
    assert got == expected and got.astimezone(ROME).hour == expected.hour


def test_summary_message_counts():
    msg = notify.summary_message({"calls": 7, "blocked": 3, "screened": 2, "messages": 1}, T0 - timedelta(days=1),
                                 T0, ROME)
    assert "7 calls, 3 blocked, 2 screened, 1 new messages" in msg.body


BAD = [
    ('[notify]\nurls = ["not a url"]\n', "notify.urls must be a list of notification URLs"),
    ('[notify]\nevents = ["voicemail", "party"]\n', "notify.events must be a list of events among"),
    ('[notify]\nsummary_at = "25:00"\n', 'notify.summary_at must be a time "HH:MM"'),
    ('[notify]\ndashboard_url = "pi:8080"\n', "notify.dashboard_url must be empty, or the address"),
    ("[retention]\ncalls_days = -1\n", "retention.calls_days must be an integer 0-36500"),
]


@pytest.mark.parametrize("body,message", BAD)
def test_bad_notify_and_retention_settings(write_config, body, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(write_config(body))


def test_urls_are_secrets_in_the_effective_settings(write_config):
    cfg = cfg_with(write_config, '[notify]\nurls = ["tgram://123:abc/456"]\n')
    assert dict(config.masked(cfg))["notify.urls"] == "********"
    assert notify.shown_url("tgram://123:abc/456") == "tgram://…"


# -- delivery to a real endpoint --


def make_handler(cfg: config.Config, notifier: Notifier | None):
    db = store.Store(cfg.database_url)
    store.upgrade(db)
    handler = FlushingHandler(cfg, db, PROMPTS)
    if notifier is not None:
        handler.on_closed = notifier.call_closed
    return handler, db


def test_voicemail_is_delivered_with_its_wav_within_2_s(write_config, endpoint):
    cfg = cfg_with(write_config, f'[notify]\nurls = ["{endpoint.url}"]\ndashboard_url = "http://pi.lan:8080"\n')
    notifier = Notifier(cfg).start()
    handler, db = make_handler(cfg, notifier)
    try:
        call = FakeCall(Info(display_name="Anna"), keys=["5"], voice_seconds=2.0)
        handler(call)
        closed = time.monotonic()
        assert endpoint.wait(1, 2.0), "no notification within 2 s of the voicemail's row"
        at, body = endpoint.received[0]
        assert at - closed < 2.0
        assert body["title"] == "Voicemail from +390212345678 (Anna)"
        assert "http://pi.lan:8080/voicemail" in body["message"]
        [wav] = body["attachments"]
        assert wav["filename"].endswith(".wav") and base64.b64decode(wav["base64"])[:4] == b"RIFF"
    finally:
        notifier.stop()
        handler.close()
        db.dispose()


def test_a_hanging_endpoint_never_holds_a_call(write_config):
    ep = Endpoint("hang")
    cfg = cfg_with(write_config, f'[notify]\nurls = ["{ep.url}"]\n')
    notifier = Notifier(cfg).start()
    handler, db = make_handler(cfg, notifier)
    try:
        handler(FakeCall(keys=["5"], voice_seconds=2.0))  # its notification is sent and held by the endpoint
        assert ep.hanging.wait(5)
        # while the endpoint holds the worker, calls go on: each gets its action and its row
        for i in range(20):
            call = FakeCall(Info(call_id=f"c{i}", from_raw=f"<sip:021234{i:04d}@fritz.box>"), keys=["5"],
                            voice_seconds=2.0)
            handler(call)
            assert call.log[:2] == ["ring", "answer"]
        assert ep.hanging.is_set() and not ep.release.is_set()
        with db.read() as s:
            assert s.query(store.Call).filter(store.Call.outcome == "passed").count() == 21
    finally:
        ep.close()
        notifier.stop()
        handler.close()
        db.dispose()


def test_a_failing_url_is_retried_with_backoff_and_each_failure_logged(write_config, endpoint, caplog):
    down = closed_port_url()
    cfg = cfg_with(write_config, f'[notify]\nurls = ["{down}", "{endpoint.url}"]\n')
    notifier = Notifier(cfg, backoff=(0.05, 0.1)).start()
    try:
        with caplog.at_level(logging.WARNING, logger="screener.notify"):
            notifier.post(Message("voicemail", "t", "b"))
            assert endpoint.wait(1, 5)
            deadline = time.monotonic() + 10
            while notifier.failed < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert notifier.failed == 3 and notifier.sent == 1
        lines = [r.getMessage() for r in caplog.records if r.name == "screener.notify"]
        assert [("attempt 1" in x, "attempt 2" in x, "attempt 3" in x) for x in lines] == [
            (True, False, False), (False, True, False), (False, False, True)]
        assert "given up" in lines[-1] and "json://…" in lines[-1] and str(endpoint.port) not in "".join(lines)
        assert len(endpoint.received) == 1  # the working URL got it once, not once per retry of the other
    finally:
        notifier.stop()


def test_a_full_queue_drops_and_never_waits(write_config, caplog):
    gate = threading.Event()

    def stuck(url: str, msg: Message) -> str:
        gate.wait(10)
        return ""

    cfg = cfg_with(write_config, '[notify]\nurls = ["json://127.0.0.1:9/x"]\n')
    notifier = Notifier(cfg, send=stuck).start()
    try:
        with caplog.at_level(logging.WARNING, logger="screener.notify"):
            results = [notifier.post(Message("voicemail", "t", str(i))) for i in range(notify.QUEUE_MAX + 10)]
        assert results.count(False) >= 9
        assert any("queue full" in r.getMessage() for r in caplog.records)
    finally:
        gate.set()
        notifier.stop()


def test_events_not_chosen_are_not_sent(write_config, endpoint):
    cfg = cfg_with(write_config, f'[notify]\nurls = ["{endpoint.url}"]\nevents = ["summary"]\n')
    notifier = Notifier(cfg)
    assert not notifier.post(Message("voicemail", "t", "b"))
    assert notifier.post(Message("summary", "t", "b"))
    assert not Notifier(cfg_with(write_config, "")).post(Message("summary", "t", "b"))  # no URL: off


def test_send_test_reports_each_url(write_config, endpoint):
    cfg = cfg_with(write_config, f'[notify]\nurls = ["{endpoint.url}", "{closed_port_url()}"]\n')
    ok, down = notify.send_test(cfg)
    assert (ok.url, ok.error) == ("json://…", "")
    assert down.url == "json://…" and down.error
    assert endpoint.received[0][1]["title"] == "screener test notification"


def test_daily_summary_is_sent_when_its_time_comes(write_config, endpoint):
    now = [datetime(2026, 3, 2, 18, 59, 50, tzinfo=UTC)]  # 19:59:50 in Rome
    cfg = cfg_with(write_config, f'[notify]\nurls = ["{endpoint.url}"]\nsummary_at = "20:00"\n')
    asked = []

    def counts(since, until):
        asked.append((since, until))
        return {"calls": 4, "blocked": 2, "screened": 1, "messages": 1}

    notifier = Notifier(cfg, counts=counts, wall=lambda: now[0])
    notifier._due()
    assert not asked
    now[0] += timedelta(seconds=15)
    notifier._due()
    assert asked == [(datetime(2026, 3, 1, 19, tzinfo=UTC), datetime(2026, 3, 2, 19, tzinfo=UTC))]
    notifier.start()
    try:
        assert endpoint.wait(1, 5)
        assert "4 calls, 2 blocked, 1 screened, 1 new messages" in endpoint.received[0][1]["message"]
    finally:
        notifier.stop()


def test_service_reports_a_restart_after_a_crash(write_config, endpoint):
    cfg = cfg_with(write_config, f'[notify]\nurls = ["{endpoint.url}"]\n')
    db = store.Store(cfg.database_url)
    store.upgrade(db)
    with db.write() as s:
        s.add(store.Call(call_id="left-open", decision="screen"))
    now = store.utcnow()
    health.write_beat_file(cfg.data_path / health.BEAT_FILE, health.Beat("registered", now, "", now, 99999))
    svc = Service(cfg, db=db, agent_factory=FakeAgent)
    svc.start()
    try:
        assert endpoint.wait(1, 5)
        body = endpoint.received[0][1]
        assert body["title"] == "screener restarted after a crash" and "1 call(s)" in body["message"]
    finally:
        svc.stop()
    # a clean stop wrote "stopped": the next start says nothing
    ep2 = Endpoint()
    cfg2 = cfg_with(write_config, f'[notify]\nurls = ["{ep2.url}"]\n')
    svc = Service(cfg2, agent_factory=FakeAgent)
    svc.start()
    try:
        assert not ep2.wait(1, 0.5)
    finally:
        svc.stop()
        ep2.close()


def test_notifier_off_without_urls_starts_no_thread(write_config):
    before = threading.active_count()
    n = Notifier(cfg_with(write_config, "")).start()
    n.call_closed({"voicemail_path": "x.wav", "outcome": "passed"})
    n.status("failed", "x")
    assert threading.active_count() == before
    n.stop()


def test_voicemail_path_is_inside_data(tmp_path: Path):
    cfg = replace(config.Config(path=str(tmp_path / "config.toml")))
    msg = call_message({"voicemail_path": "voicemail/x.wav", "outcome": "passed"}, cfg)
    assert msg.attach == tmp_path / "data" / "voicemail" / "x.wav"
