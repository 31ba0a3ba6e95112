"""The service without a SIP account ("not_configured"), and config file changes applied while it runs:
[screening] on the next call, [sip] by a new registration (after the calls in progress)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from screener import config, config_edit, health, store
from screener.service import SIP_CHANGE_WAIT_S, Service


class RecordingAgent:
    """Stands in for SipAgent: records the [sip] it was made with; reports registered (or fails to bind)."""

    made: list[RecordingAgent] = []
    bind_error: OSError | None = None

    def __init__(self, sip_cfg: config.SipConfig, on_call: Any, on_status: Any, **kwargs: Any) -> None:
        self.sip, self.on_status = sip_cfg, on_status
        self.started = self.stopped = False
        RecordingAgent.made.append(self)

    def start(self) -> None:
        if RecordingAgent.bind_error is not None:
            raise RecordingAgent.bind_error
        self.started = True
        self.on_status(type("S", (), {"state": "registered", "last_error": None, "since": time.time()})())

    def stop(self) -> None:
        self.stopped = True

    @property
    def status(self) -> Any:
        return type("S", (), {"state": "registered", "last_error": None, "since": time.time()})()

    def untrusted_summary(self) -> Any:
        return type("U", (), {"count": 0, "sources": 0, "last_source": "", "last_at": None})()


@pytest.fixture
def service(write_config: Callable[[str], Path]) -> Any:
    made: list[Service] = []
    RecordingAgent.made, RecordingAgent.bind_error = [], None

    def make(body: str = "") -> Service:
        cfg = config.load(write_config(body))
        db = store.Store(cfg.database_url)
        store.upgrade(db)
        svc = Service(cfg, db=db, agent_factory=RecordingAgent)
        made.append(svc)
        svc.start()
        return svc

    yield make
    for svc in made:
        svc.stop()


def _status(svc: Service) -> tuple[str, str]:
    assert svc._db is not None
    with svc._db.read() as s:
        row = store.get_sip_status(s)
        return row.state, row.last_error


ACCOUNT = '[sip]\nserver = "127.0.0.1"\nusername = "home"\npassword = "secret"\n'


def test_without_an_account_the_service_runs_and_says_not_configured(service: Any) -> None:
    svc = service('[sip]\nserver = "fritz.box"\nusername = "screener"\n')
    assert RecordingAgent.made == []  # nothing registers, nothing binds
    assert _status(svc) == (health.NOT_CONFIGURED, "sip.password is empty")
    snap = svc._snapshot()
    assert (snap.state, snap.error) == (health.NOT_CONFIGURED, "sip.password is empty")
    h = health.judge(snap.state, store.utcnow(), store.utcnow())
    assert (h.running, h.exit_code) == (True, health.EXIT_NOT_REGISTERED)


def test_an_account_written_to_the_file_registers_without_a_restart(service: Any) -> None:
    svc = service("")
    assert not svc.config_changed()
    config_edit.edit(svc.cfg.path, {"sip.server": "127.0.0.1", "sip.username": "home", "sip.password": "pw"})
    assert svc.config_changed()
    assert svc.reload()
    assert svc._apply_sip_change()
    (agent,) = RecordingAgent.made
    assert agent.started and (agent.sip.server, agent.sip.username, agent.sip.password) == ("127.0.0.1", "home", "pw")
    assert _status(svc)[0] == "registered"
    assert svc._snapshot().state == "registered"


def test_a_sip_change_replaces_the_agent_and_a_screening_change_does_not(service: Any) -> None:
    svc = service(ACCOUNT)
    (first,) = RecordingAgent.made
    config_edit.edit(svc.cfg.path, {"screening.block_action": "hangup"})
    assert svc.config_changed() and svc.reload()
    assert not svc._apply_sip_change()
    assert RecordingAgent.made == [first] and not first.stopped
    assert svc.handler is not None and svc.handler.sc.block_action == "hangup"  # the next call uses it

    config_edit.edit(svc.cfg.path, {"sip.server": "127.0.0.2"})
    assert svc.config_changed() and svc.reload()
    assert svc._apply_sip_change()
    assert first.stopped
    assert [a.sip.server for a in RecordingAgent.made] == ["127.0.0.1", "127.0.0.2"]
    assert svc.agent is RecordingAgent.made[-1]


def test_a_password_file_change_counts_as_a_change(service: Any, tmp_path: Path) -> None:
    (tmp_path / "sip-password").write_text("old\n")
    svc = service('[sip]\nserver = "127.0.0.1"\nusername = "home"\npassword_file = "sip-password"\n')
    config_edit.edit(svc.cfg.path, {"sip.password": "new-one"})  # written to the file, config.toml unchanged
    assert (tmp_path / "sip-password").read_text() == "new-one\n"
    assert svc.config_changed() and svc.reload() and svc._apply_sip_change()
    assert RecordingAgent.made[-1].sip.password == "new-one"


def test_a_sip_change_waits_for_the_calls_in_progress(service: Any) -> None:
    svc = service(ACCOUNT)
    config_edit.edit(svc.cfg.path, {"sip.username": "other"})
    assert svc.config_changed() and svc.reload()
    assert svc.handler is not None
    svc.handler._active = 1  # a call is being handled
    now = time.monotonic()
    assert not svc._apply_sip_change(now)
    assert len(RecordingAgent.made) == 1
    assert svc._apply_sip_change(now + SIP_CHANGE_WAIT_S + 1)  # it waited long enough: the call ends as on a stop
    assert RecordingAgent.made[0].stopped and RecordingAgent.made[-1].sip.username == "other"
    svc.handler._active = 0


def test_a_new_agent_that_cannot_bind_is_reported_as_failed(service: Any) -> None:
    svc = service(ACCOUNT)
    config_edit.edit(svc.cfg.path, {"sip.sip_port": 5070})
    RecordingAgent.bind_error = OSError(98, "Address already in use")
    assert svc.config_changed() and svc.reload() and svc._apply_sip_change()
    assert svc.agent is None
    assert _status(svc) == ("failed", "cannot bind UDP port 5070: Address already in use")
    assert svc._snapshot().state == "failed"


def test_a_bad_file_keeps_the_running_configuration(service: Any) -> None:
    svc = service(ACCOUNT)
    Path(svc.cfg.path).write_text(Path(svc.cfg.path).read_text() + "\n[sip.bad\n")
    assert svc.config_changed()
    assert not svc.reload()
    assert not svc._apply_sip_change()
    assert svc.cfg.sip.server == "127.0.0.1" and svc.agent is RecordingAgent.made[0]


def test_a_ring_through_change_applies_to_the_next_call_with_its_keys_in_the_announcement(service: Any) -> None:
    svc = service(ACCOUNT)
    assert svc.handler is not None
    default_options = svc.handler.prompts.announcer.options
    config_edit.edit(svc.cfg.path, {"ring_through.target": "sip:**9@fritz.box", "ring_through.talk_key": "3"})
    assert svc.config_changed() and svc.reload()
    assert not svc._apply_sip_change()  # no new registration for it
    assert svc.handler.rt.target == "sip:**9@fritz.box" and svc.handler.rt.talk_key == "3"
    assert svc.handler.prompts.announcer.options != default_options  # "press 3 to talk"
