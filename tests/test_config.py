from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from screener import config
from screener.config import ConfigError


def test_example_config_loads_with_defaults() -> None:
    cfg = config.load(Path(__file__).parent.parent / "config.example.toml")
    # the example documents the defaults, and fills in only the account to show its form
    assert (cfg.sip.server, cfg.sip.username) == ("fritz.box", "screener")
    assert replace(cfg, sip=replace(cfg.sip, server="", username="")) == config.Config(path=cfg.path)


def test_values_are_read(write_config) -> None:
    cfg = config.load(write_config(
        '[sip]\nserver = "fritz.box"\nport = 5061\ntrusted_sources = ["10.0.0.0/8"]\n'
        '[screening]\nscreen_delay = 3\npresets = ["it"]\n[screening.prompts]\nchallenge = "my.wav"\n'))
    assert cfg.sip.server == "fritz.box" and cfg.sip.port == 5061
    assert cfg.sip.trusted_sources == ("10.0.0.0/8",)
    assert cfg.screening.screen_delay == 3.0 and isinstance(cfg.screening.screen_delay, float)
    assert cfg.screening.presets == ("it",)
    assert cfg.screening.prompts.challenge == "my.wav"


def test_auth_user_and_domain_default_to_username_and_server(write_config) -> None:
    cfg = config.load(write_config('[sip]\nserver = "fritz.box"\nusername = "620"\n'))
    assert (cfg.sip.auth_user, cfg.sip.sip_domain) == ("620", "fritz.box")


def test_password_file_is_read_relative_to_the_config(write_config, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret-pass\n")
    cfg = config.load(write_config('[sip]\npassword_file = "pw"\n'))
    assert cfg.sip.password == "s3cret-pass"


def test_relative_sqlite_path_is_taken_from_the_config_folder(write_config, tmp_path: Path) -> None:
    cfg = config.load(write_config('[database]\nurl = "sqlite:///db/s.db"\n'))
    assert cfg.database_url == f"sqlite:///{tmp_path / 'db/s.db'}"


@pytest.mark.parametrize(("body", "message"), [
    ('[sip]\nport = "5060x"', 'sip.port must be an integer 1-65535, got "5060x"'),
    ("[sip]\nport = 0", "sip.port must be an integer 1-65535, got 0"),
    ("[sip]\nport = 70000", "sip.port must be an integer 1-65535, got 70000"),
    ("[sip]\nport = true", "sip.port must be an integer 1-65535, got true"),
    ("[sip]\nsip_port = 5060.5", "sip.sip_port must be an integer 1-65535, got 5060.5"),
    ('[sip]\nlocal_address = "0.0.0.0"',
     'sip.local_address must be a real address of this host (not 0.0.0.0), or "auto", got "0.0.0.0"'),
    ('[sip]\nlocal_address = "my-pc"',
     'sip.local_address must be a real address of this host (not 0.0.0.0), or "auto", got "my-pc"'),
    ('[sip]\ntrusted_sources = ["10.0.0.0/33"]',
     'sip.trusted_sources must be a list of addresses or CIDR ranges, got ["10.0.0.0/33"]'),
    ('[sip]\ntrusted_sources = "10.0.0.1"', 'sip.trusted_sources must be a list of addresses or CIDR ranges, got "10.0.0.1"'),
    ('[sip]\noutbound_proxy = "proxy:x"', 'sip.outbound_proxy must be empty, host or host:port, got "proxy:x"'),
    ("[sip]\nregister_expires = 10", "sip.register_expires must be an integer 30-86400, got 10"),
    ("[sip]\nkeepalive_interval = -1", "sip.keepalive_interval must be an integer 0-3600, got -1"),
    ("[sip]\nrtp_port_low = 0", "sip.rtp_port_low must be an integer 1-65535, got 0"),
    ("[sip]\nrtp_port_high = 99999", "sip.rtp_port_high must be an integer 1-65535, got 99999"),
    ("[sip]\nrtp_port_low = 20000\nrtp_port_high = 10000", "sip.rtp_port_high must be >= sip.rtp_port_low, got 10000"),
    ("[sip]\nsip_port = 10050", "sip.sip_port must lie outside the RTP port range, got 10050"),
    ('[sip]\npassword = "a"\npassword_file = "b"', "sip.password_file must be empty when sip.password is set"),
    ('[sip]\npassword_file = "nope"', "sip.password_file cannot be read: No such file or directory"),
    ("[sip]\nusername = 620", "sip.username must be a string, got 620"),
    ("[sip]\nserver = []", "sip.server must be a string, got []"),
    ('[sip]\nregistrar = "x"', "sip.registrar is not a known setting"),
    ('[screening]\nregion = "XX"', 'screening.region must be a region code known to phonenumbers, such as "IT", got "XX"'),
    ('[screening]\ntimezone = "Europe/Milano"',
     'screening.timezone must be an IANA time zone such as "Europe/Rome", got "Europe/Milano"'),
    ('[screening]\ndefault_action = "reject"',
     'screening.default_action must be one of "screen", "allow", "block", got "reject"'),
    ('[screening]\nblock_action = "busy"', 'screening.block_action must be one of "decline", "hangup", got "busy"'),
    ("[screening]\ndecline_code = 486", "screening.decline_code must be one of 603, 607, got 486"),
    ("[screening]\nscreen_delay = -1", "screening.screen_delay must be a number 0-60, got -1"),
    ('[screening]\nscreen_delay = "3s"', 'screening.screen_delay must be a number 0-60, got "3s"'),
    ('[screening]\nchallenge_digit = "55"', 'screening.challenge_digit must be one of the keys 0-9, * or #, got "55"'),
    ("[screening]\nchallenge_digit = 5", "screening.challenge_digit must be one of the keys 0-9, * or #, got 5"),
    ("[screening]\nchallenge_timeout = 0", "screening.challenge_timeout must be a number 1-60, got 0"),
    ("[screening]\nchallenge_repeats = 9", "screening.challenge_repeats must be an integer 0-5, got 9"),
    ("[screening]\nmax_screened_calls = 0", "screening.max_screened_calls must be an integer 1-64, got 0"),
    ('[screening]\nremember_verified = "yes"', 'screening.remember_verified must be true or false, got "yes"'),
    ("[screening]\nvoicemail_max_seconds = 1", "screening.voicemail_max_seconds must be an integer 5-600, got 1"),
    ('[screening]\nlanguage = "de"', 'screening.language must be one of "en", "it", got "de"'),
    ('[screening]\npresets = ["es"]', 'screening.presets must be a list of preset names ("it", "fr"), got ["es"]'),
    ("[screening]\nspam_name_prefixes = [1]", "screening.spam_name_prefixes must be a list of strings, got [1]"),
    ('[screening]\nprompts = "x"', 'screening.prompts must be a table, got "x"'),
    ('[screening.prompts]\nhello = "x.wav"', "screening.prompts.hello is not a known setting"),
    ("[database]\nurl = 5", "database.url must be a string, got 5"),
    ("[web]\nport = 80800", "web.port must be an integer 1-65535, got 80800"),
    ('[web]\nbind = "0.0.0.0"', "web.bind is not a known setting"),
    ('sip = "x"', 'sip must be a table, got "x"'),
    ('colour = "red"', "colour is not a known setting"),
])
def test_config_errors_name_file_and_key(write_config, body: str, message: str) -> None:
    path = write_config(body)
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert str(exc.value).startswith(f"{path}: {message}")


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file \(run `screener init`"):
        config.load("nope.toml")


def test_bad_toml_names_the_file_and_line(write_config) -> None:
    path = write_config("[sip\nport = 1")
    with pytest.raises(ConfigError, match=rf"^{path}: not valid TOML: .*line 2"):
        config.load(path)


def test_masked_hides_secrets(write_config) -> None:
    cfg = config.load(write_config('[sip]\nusername = "screener"\npassword = "hunter22"\n[web]\nsecret = "abc"\n'))
    shown = dict(config.masked(cfg))
    assert shown["sip.password"] == "********" and shown["web.secret"] == "********"
    assert shown["sip.username"] == "screener" and "hunter22" not in repr(shown)


@pytest.mark.parametrize(("body", "message"), [
    ('[sip]\npasword = "x"', "sip.pasword is not a known setting: did you mean `password`?"),
    ('[sip]\nusername = "a"\nuser_name = "b"', "sip.user_name is not a known setting: did you mean `username`?"),
    ("[screening]\nscreen_dealy = 2", "screening.screen_dealy is not a known setting: did you mean `screen_delay`?"),
    ('[web]\nsecrt = "x"', "web.secrt is not a known setting: did you mean `secret`?"),
    ('[sip]\npresets = ["it"]', "sip.presets is not a known setting: it belongs in [screening]"),
    ('[web]\ndata_dir = "d"', "web.data_dir is not a known setting: it belongs at the top, before any [section]"),
    ('[web]\nurl = "sqlite:///x.db"', "web.url is not a known setting: it belongs in [database]"),
    ('[web]\npassword = "x"', "web.password is not a known setting: it belongs in [sip] or in [ring_through]"),
    ('[screenig]\nregion = "IT"', "[screenig] is not a known section: did you mean `[screening]`?"),
    ('[screening.promts]\nchallenge = "x.wav"',
     "[screening.promts] is not a known section: did you mean `[screening.prompts]`?"),
    ('[Sip]\nserver = "x"', "[Sip] is not a known section: did you mean `[sip]`?"),
    ('[notifications]\nurls = []', "[notifications] is not a known section"),
    ('zzz = "x"', "zzz is not a known setting"),
    ("[web]\ntrusted_proxies = [\"10.0.0.300\"]",
     'web.trusted_proxies must be a list of addresses or CIDR ranges, got ["10.0.0.300"]'),
])
def test_unknown_keys_and_sections_suggest_the_fix(write_config, body: str, message: str) -> None:
    path = write_config(body)
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert str(exc.value) == f"{path}: {message}"


def test_a_section_near_no_known_one_gets_no_suggestion(write_config) -> None:
    path = write_config("[xyzzy]\na = 1")
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert str(exc.value) == f"{path}: [xyzzy] is not a known section"


# the config file's bytes as a Windows editor may save them
@pytest.mark.parametrize(("data", "message"), [
    ('[sip]\nserver = "fritz.box"\nusername = "citt\xe0"\n'.encode("latin-1"),
     ":3: the file is not UTF-8 (byte 0xe0, perhaps Latin-1): save it as UTF-8"),
    ('# \xa9 casa\n[sip]\n'.encode("cp1252"), ":1: the file is not UTF-8 (byte 0xa9, perhaps Latin-1): save it as UTF-8"),
    ('[sip]\nserver = "x"\n'.encode("utf-16"), ": the file is UTF-16, not UTF-8: save it as UTF-8"),
    (b'[sip]\nserver = fritz.box\n',
     ': not valid TOML: Invalid value (at line 2, column 10) (text needs quotes: key = "text")'),
])
def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert str(exc.value) == f"{path}{message}"


def test_a_utf8_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes('[sip]\nserver = "fritz.box"\nusername = "città"\n'.encode("utf-8-sig"))
    cfg = config.load(path)
    assert (cfg.sip.server, cfg.sip.username) == ("fritz.box", "città")


def test_a_folder_as_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        config.load(tmp_path)
    assert str(exc.value) == f"{tmp_path}: is a folder, not a config file: give the file, e.g. --config " \
                             f"{tmp_path / 'config.toml'}"
    (tmp_path / "config.toml").write_text("")
    with pytest.raises(ConfigError) as exc:
        config.load(tmp_path)
    assert str(exc.value) == f"{tmp_path}: is a folder, not a config file: did you mean `{tmp_path / 'config.toml'}`?"


def _pip(package: str) -> str:
    return f"{Path(sys.executable).parent / 'pip'} install '{package}'"


EXAMPLE_URLS = '"sqlite:///screener.db" or "postgresql+psycopg://user:password@host/screener"'


@pytest.mark.parametrize(("url", "message"), [
    ("screener.db", f'must be a database URL such as {EXAMPLE_URLS}, got "screener.db"'),
    ("", f'must be a database URL such as {EXAMPLE_URLS}, got ""'),
    ("postgresql+psycopg://me:hunter22@db:port/x",
     f'must be a database URL such as {EXAMPLE_URLS}, got "postgresql+psycopg://me:***@db:port/x"'),
    ("postgres://me@db/screener", 'must name sqlite or postgresql, got "postgres": did you mean `postgresql`?'),
    ("sqllite:///x.db", 'must name sqlite or postgresql, got "sqllite": did you mean `sqlite`?'),
    ("mysql://me@db/screener", f'must name sqlite or postgresql, got "mysql", such as {EXAMPLE_URLS}'),
    ("postgresql+psycopg3://me@db/screener",
     'names an unknown postgresql driver "psycopg3": did you mean `postgresql+psycopg`?'),
    ("postgresql+psycopg2://me@db/screener",
     f"needs the Python package psycopg2-binary, which is not installed: {_pip('psycopg2-binary')}"),
    ("postgresql+pg8000://me@db/screener", f"needs the Python package pg8000, which is not installed: {_pip('pg8000')}"),
])
def test_database_url_errors(write_config, url: str, message: str) -> None:
    path = write_config(f'[database]\nurl = "{url}"')
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert str(exc.value) == f"{path}: database.url {message}"
    assert "hunter22" not in str(exc.value)


def test_database_url_whose_driver_is_not_installed(write_config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as on a machine where `pip install psycopg` never ran
    path = write_config('[database]\nurl = "postgresql+psycopg://me@db/screener"')
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert str(exc.value) == (f"{path}: database.url needs the Python package psycopg[binary], which is not installed: "
                              f"{_pip('psycopg[binary]')}")


def test_secret_file_is_read_and_must_exist(write_config, tmp_path: Path) -> None:
    (tmp_path / "web-secret").write_text("abcdef\n")
    assert config.load(write_config('[web]\nsecret_file = "web-secret"')).web.secret == "abcdef"
    path = write_config('[web]\nsecret_file = "nope"')
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert str(exc.value) == f"{path}: web.secret_file cannot be read: No such file or directory ({tmp_path / 'nope'})"


def test_a_driver_that_cannot_be_loaded(write_config, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    def broken() -> None:
        raise ImportError("libpq.so.5: cannot open shared object file")

    monkeypatch.setattr(PGDialect_psycopg, "import_dbapi", broken)
    path = write_config('[database]\nurl = "postgresql+psycopg://me@db/screener"')
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert str(exc.value) == (f"{path}: database.url: the postgresql driver cannot be loaded: "
                              "libpq.so.5: cannot open shared object file")


def test_an_unreadable_config(write_config, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config("")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)  # root reads any file: the refusal is simulated
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert str(exc.value) == f"{path}: cannot be read: Permission denied"
