"""config_edit: comments kept, bad values refused with their key and nothing written, secrets write-only."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from screener import config, config_edit
from screener.config_edit import EditError, coerce, edit, profile_changes

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(EXAMPLE.read_text(encoding="utf-8").replace('url = "sqlite:///screener.db"',
                                                              f'url = "sqlite:///{tmp_path / "s.db"}"'))
    return p


def test_an_edit_keeps_every_comment_and_changes_only_its_lines(conf: Path) -> None:
    before = conf.read_text().splitlines()
    cfg = edit(conf, {"sip.server": "192.168.178.1", "screening.presets": ["it"], "screening.screen_delay": 2.5})
    after = conf.read_text().splitlines()
    assert (cfg.sip.server, cfg.screening.presets, cfg.screening.screen_delay) == ("192.168.178.1", ("it",), 2.5)
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [('server = "fritz.box"', 'server = "192.168.178.1"'), ("screen_delay = 0", "screen_delay = 2.5"),
                       ("presets = []", 'presets = ["it"]')]


def test_an_end_of_line_comment_stays_and_missing_tables_are_added(tmp_path: Path) -> None:
    p = tmp_path / "config.toml"
    p.write_text('# mine\n[sip]\nport = 5060  # the box\n')
    edit(p, {"sip.port": 5070, "screening.language": "it"})
    assert p.read_text() == '# mine\n[sip]\nport = 5070  # the box\n\n[screening]\nlanguage = "it"\n'


@pytest.mark.parametrize(("changes", "key", "message"), [
    ({"sip.port": 70000}, "sip.port", "sip.port must be an integer 1-65535, got 70000"),
    ({"screening.block_action": "drop"}, "screening.block_action", 'must be one of "decline", "hangup"'),
    ({"screening.timezone": "Mars/Base"}, "screening.timezone", "an IANA time zone"),
    ({"sip.paswd": "x"}, "sip.paswd", "sip.paswd is not a known setting"),
    ({"sip.sip_port": 10050}, "sip.sip_port", "must lie outside the RTP port range"),
])
def test_a_bad_value_names_its_key_and_writes_nothing(conf: Path, changes: dict, key: str, message: str) -> None:
    before = conf.read_bytes()
    with pytest.raises(EditError) as e:
        edit(conf, changes)
    assert e.value.key == key and message in str(e.value)
    assert str(conf.parent) not in str(e.value)  # no temporary file named
    assert conf.read_bytes() == before
    assert sorted(p.name for p in conf.parent.iterdir()) == ["config.toml"]


def test_an_empty_secret_is_left_unchanged_and_a_file_with_one_is_private(conf: Path) -> None:
    edit(conf, {"sip.password": "first-pw"})
    assert config.load(conf).sip.password == "first-pw"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    edit(conf, {"sip.password": "", "sip.username": "u2"})
    cfg = config.load(conf)
    assert (cfg.sip.password, cfg.sip.username) == ("first-pw", "u2")


def test_a_password_goes_to_the_password_file_when_one_is_named(conf: Path) -> None:
    edit(conf, {"sip.password_file": "sip-password", "sip.password": "in-the-file"})
    pw = conf.parent / "sip-password"
    assert pw.read_text() == "in-the-file\n" and stat.S_IMODE(pw.stat().st_mode) == 0o600
    assert 'password = ""' in conf.read_text()
    assert config.load(conf).sip.password == "in-the-file"


def test_a_refused_edit_leaves_no_password_file(conf: Path) -> None:
    with pytest.raises(EditError):
        edit(conf, {"sip.password_file": "sip-password", "sip.password": "x", "sip.port": 0})
    assert not (conf.parent / "sip-password").exists()


def test_a_missing_file_is_made_from_the_template(tmp_path: Path) -> None:
    p = tmp_path / "config.toml"
    edit(p, {"sip.username": "screener", "database.url": f"sqlite:///{tmp_path / 's.db'}"}, template=EXAMPLE)
    assert "# screener configuration." in p.read_text()


@pytest.mark.parametrize(("key", "text", "value"), [
    ("sip.port", " 5080 ", 5080), ("screening.screen_delay", "1.5", 1.5), ("screening.voicemail", "no", False),
    ("screening.voicemail", "true", True), ("screening.presets", "it, fr", ["it", "fr"]),
    ("screening.presets", '["it"]', ["it"]), ("screening.presets", "", []), ("sip.server", " fritz.box ", "fritz.box"),
])
def test_coerce_reads_text_as_the_setting_type(key: str, text: str, value: object) -> None:
    assert coerce(key, text) == value


@pytest.mark.parametrize(("key", "text", "message"), [
    ("sip.port", "50x", "sip.port must be an integer, got '50x'"),
    ("screening.voicemail", "maybe", "screening.voicemail must be true or false"),
    ("sip.nope", "1", "sip.nope is not a known setting"),
])
def test_coerce_refuses_text_that_is_not_the_type(key: str, text: str, message: str) -> None:
    with pytest.raises(EditError, match=message):
        coerce(key, text)


def test_the_fritzbox_profile_fills_the_italian_household_settings(conf: Path) -> None:
    changes = profile_changes("fritzbox_it", {"sip.server": "fritz.box", "sip.username": "screener",
                                              "sip.password": "pw-12345"})
    cfg = edit(conf, changes)
    assert (cfg.sip.server, cfg.sip.port, cfg.sip.username, cfg.sip.password) == ("fritz.box", 5060, "screener",
                                                                                   "pw-12345")
    sc = cfg.screening
    assert (sc.block_action, sc.language, sc.presets, sc.region) == ("hangup", "it", ("it",), "IT")
    assert config_edit.PROFILES["fritzbox_it"].ui_language == "it"


def test_the_provider_profile_and_a_server_with_a_port(conf: Path) -> None:
    cfg = edit(conf, profile_changes("provider", {
        "sip.server": "voip.example.it:5070", "sip.domain": "example.it", "sip.username": "0212345678",
        "sip.auth_username": "+390212345678", "sip.password": "pw", "sip.outbound_proxy": "proxy.example.it:5060",
        "sip.keepalive_interval": ""}))
    s = cfg.sip
    assert (s.server, s.port, s.domain, s.auth_user, s.outbound_proxy, s.keepalive_interval) == (
        "voip.example.it", 5070, "example.it", "+390212345678", "proxy.example.it:5060", 25)
    assert cfg.screening.block_action == "decline"


@pytest.mark.parametrize(("answers", "key"), [
    ({"sip.server": "", "sip.username": "u"}, "sip.server"),
    ({"sip.server": "fritz.box", "sip.username": ""}, "sip.username"),
    ({"sip.server": "fritz.box:99999", "sip.username": "u"}, "sip.port"),
])
def test_a_profile_refuses_an_empty_or_bad_answer(conf: Path, answers: dict, key: str) -> None:
    with pytest.raises(EditError) as e:
        edit(conf, profile_changes("other_router", answers))
    assert e.value.key == key
