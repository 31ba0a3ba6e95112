"""The first run from the command line: `run` and `web` print the dashboard's address, a missing SIP account and
the one-time setup code; `status` says "not configured"; `config set` edits the file as the dashboard does."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from screener import cli, config, store, users


@pytest.fixture
def run(write_config: Callable[[str], Path], capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    conf = write_config("")

    def run_(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = cli.main(["--config", str(conf), *argv])
        out, err = capsys.readouterr()
        return status, out, err

    run_.conf = conf  # type: ignore[attr-defined]
    return run_


def test_the_notice_gives_the_missing_account_and_a_setup_code(write_config, capsys) -> None:
    # the dashboard's own address line comes from the dashboard process once its port is bound
    cfg = config.load(write_config('[sip]\nserver = "fritz.box"\nusername = "screener"\n[web]\nport = 8099\n'))
    store.upgrade(store.Store(cfg.database_url))
    cli._dashboard_notice(cfg)
    out = capsys.readouterr().out.splitlines()
    code = (cfg.data_path / users.CODE_FILE).read_text().strip()
    assert out == [
        "SIP: not configured yet (sip.password is empty): the service waits; set up the line on "
        "http://127.0.0.1:8099/setup",
        f"no dashboard user yet: open http://127.0.0.1:8099/ and enter the setup code {code[:4]}-{code[4:]}",
    ]
    cli._dashboard_notice(cfg)  # every start makes a new code: an old one seen in a log is worthless
    assert (cfg.data_path / users.CODE_FILE).read_text().strip() != code


def test_a_user_made_on_the_console_ends_the_setup_code(run, monkeypatch) -> None:
    cfg = config.load(run.conf)
    store.upgrade(store.Store(cfg.database_url))
    users.issue_code(cfg.data_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse\n"))
    assert run("user", "add", "admin", "--password-stdin") == (0, "user admin saved\n", "")
    assert not (cfg.data_path / users.CODE_FILE).exists()
    cli._dashboard_notice(cfg)  # with a user: no code
    assert not (cfg.data_path / users.CODE_FILE).exists()


def test_status_says_not_configured(run, monkeypatch) -> None:
    cfg = config.load(run.conf)
    db = store.Store(cfg.database_url)
    store.upgrade(db)
    since = datetime(2026, 3, 4, 11, 0, tzinfo=UTC)
    with db.write() as s:
        store.write_heartbeat(s, "not_configured", "sip.password is empty", since, 4242, now=since)
    monkeypatch.setattr(store, "utcnow", lambda: since)
    assert run("status") == (1, "running, not configured since 2026-03-04 12:00:00 CET: sip.password is empty; "
                                "set up the line on the dashboard's setup page (/setup) or in the config file\n", "")


def test_config_set_edits_the_file_and_refuses_a_bad_value(run) -> None:
    conf: Path = run.conf
    before = conf.read_text()
    status, out, err = run("config", "set", "sip.server=fritz.box", "screening.presets=it", "sip.port=5070")
    assert (status, err) == (0, "")
    assert out == f"{conf}: sip.server, screening.presets, sip.port saved (a running screener applies it within a " \
                  "second)\n"
    cfg = config.load(conf)
    assert (cfg.sip.server, cfg.sip.port, cfg.screening.presets) == ("fritz.box", 5070, ("it",))
    after = conf.read_text()
    assert run("config", "set", "sip.port=99999") == (
        2, "", f"screener: {conf}: sip.port must be an integer 1-65535, got 99999\n")
    assert run("config", "set", "sip.port") == (2, "", "screener: 'sip.port': write KEY=VALUE, e.g. sip.server=fritz.box\n")
    assert conf.read_text() == after != before
