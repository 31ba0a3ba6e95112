"""One frozen dataclass tree loaded from TOML.

Every field declares its own check; the loader walks the tree, so an unknown key, a wrong type or a bad value
always becomes one ConfigError naming the file and the dotted key.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers


class ConfigError(ValueError):
    """A configuration problem, worded for the user: `file: dotted.key must be ..., got X`."""


Check = tuple[Callable[[Any], bool], str]  # (predicate, what the value must be)


def _opt(default: Any, check: Check | None = None, **kw: Any) -> Any:
    return field(default=default, metadata={"check": check, **kw})


def _opt_list(default: list[str], check: Check | None = None, **kw: Any) -> Any:
    return field(default_factory=lambda: tuple(default), metadata={"check": check, **kw})


def _range(lo: int, hi: int, what: str = "an integer") -> Check:
    return (lambda v: lo <= v <= hi, f"{what} {lo}-{hi}")


_port = _range(1, 65535)


def _one_of(*choices: Any) -> Check:
    return (lambda v: v in choices, "one of " + ", ".join(json.dumps(c) for c in choices))


def _is_zone(v: str) -> bool:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _is_address(v: str) -> bool:
    if v == "auto":
        return True
    try:
        return not ipaddress.ip_address(v).is_unspecified
    except ValueError:
        return False


def _is_networks(v: tuple[str, ...]) -> bool:
    try:
        for item in v:
            ipaddress.ip_network(item, strict=False)
    except ValueError:
        return False
    return True


def _is_presets(v: tuple[str, ...]) -> bool:
    from screener.presets import PRESETS

    return all(p in PRESETS for p in v)


_zone = (_is_zone, 'an IANA time zone such as "Europe/Rome"')
_region = (lambda v: v in phonenumbers.SUPPORTED_REGIONS, 'a region code known to phonenumbers, such as "IT"')
_address = (_is_address, 'a real address of this host (not 0.0.0.0), or "auto"')
_networks = (_is_networks, "a list of addresses or CIDR ranges")
_hostport = (lambda v: v == "" or bool(re.fullmatch(r"[\w.\-]+(:\d{1,5})?", v)), "empty, host or host:port")
_digit = (lambda v: bool(re.fullmatch(r"[0-9*#]", v)), "one of the keys 0-9, * or #")
_presets = (_is_presets, 'a list of preset names ("it", "fr")')


@dataclass(frozen=True)
class SipConfig:
    server: str = _opt("", help="registrar host name or address")
    port: int = _opt(5060, _port)
    domain: str = _opt("", help="SIP domain of the account; empty = server")
    username: str = _opt("")
    password: str = _opt("", secret=True)
    password_file: str = _opt("")
    auth_username: str = _opt("", help="digest user name when it differs from username")
    outbound_proxy: str = _opt("", _hostport)
    local_address: str = _opt("auto", _address)
    sip_port: int = _opt(5062, _port)
    rtp_port_low: int = _opt(10000, _port)
    rtp_port_high: int = _opt(10199, _port)
    register_expires: int = _opt(300, _range(30, 86400))
    keepalive_interval: int = _opt(25, _range(0, 3600))
    trusted_sources: tuple[str, ...] = _opt_list([], _networks)
    mode: str = _opt("parallel", _one_of("parallel", "gatekeeper"),
                     help="parallel: the house rings beside screener; gatekeeper: screener rings the house")

    @property
    def auth_user(self) -> str:
        return self.auth_username or self.username

    @property
    def sip_domain(self) -> str:
        return self.domain or self.server

    @property
    def missing(self) -> str:
        """The first account setting still empty ("" when the account is complete)."""
        return next((k for k in ("server", "username", "password") if not getattr(self, k)), "")


@dataclass(frozen=True)
class PromptsConfig:
    challenge: str = _opt("")
    passed: str = _opt("")
    failed: str = _opt("")
    blocked: str = _opt("")
    voicemail: str = _opt("")
    hold: str = _opt("")


@dataclass(frozen=True)
class ScreeningConfig:
    region: str = _opt("IT", _region)
    timezone: str = _opt("Europe/Rome", _zone)
    default_action: str = _opt("screen", _one_of("screen", "allow", "block"))
    block_action: str = _opt("decline", _one_of("decline", "hangup"))
    decline_code: int = _opt(603, _one_of(603, 607))
    screen_delay: float = _opt(0.0, _range(0, 60, "a number"))
    challenge_digit: str = _opt("5", _digit)
    challenge_timeout: float = _opt(8.0, _range(1, 60, "a number"))
    challenge_repeats: int = _opt(1, _range(0, 5))
    max_screened_calls: int = _opt(4, _range(1, 64))
    max_ring_time: float = _opt(180.0, _range(10, 3600, "a number"))
    on_database_error: str = _opt("allow", _one_of("allow", "screen"))
    remember_verified: bool = _opt(True)
    voicemail: bool = _opt(True)
    voicemail_max_seconds: int = _opt(120, _range(5, 600))
    language: str = _opt("en", _one_of("en", "it"))
    trust_phonebook_names: bool = _opt(False)
    spam_name_prefixes: tuple[str, ...] = _opt_list(["SPAM"])
    presets: tuple[str, ...] = _opt_list([], _presets)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)


_sip_uri = (lambda v: v == "" or bool(re.fullmatch(r"sips?:[^\s@<>\"]+@[\w.\-\[\]:]+(;[^\s<>\"]*)?", v)),
            'empty or a SIP URI such as "sip:**9@fritz.box"')


_marker = (lambda v: len(v) <= 20 and not re.search(r'["\\<>\x00-\x1f]', v), "at most 20 characters, no quotes")


@dataclass(frozen=True)
class RingThroughConfig:
    target: str = _opt("", _sip_uri, help="who rings when a screened caller passes; empty = voicemail only")
    ask_name: bool = _opt(False)
    announce: bool = _opt(True)
    marker: str = _opt("screened", _marker, help="added to the caller's name on the household's display")
    talk_key: str = _opt("1", _digit)
    voicemail_key: str = _opt("2", _digit)
    block_key: str = _opt("9", _digit)
    timeout: float = _opt(25.0, _range(5, 300, "a number"))
    max_bridged_calls: int = _opt(4, _range(1, 32))
    max_talk_minutes: int = _opt(240, _range(1, 1440))
    username: str = _opt("", help="digest credentials for the target; empty = the [sip] account's")
    password: str = _opt("", secret=True)
    password_file: str = _opt("")


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = _opt("sqlite:///screener.db")


@dataclass(frozen=True)
class WebConfig:
    host: str = _opt("127.0.0.1")
    port: int = _opt(8080, _port)
    secret: str = _opt("", secret=True)
    secret_file: str = _opt("")
    trusted_proxies: tuple[str, ...] = _opt_list([], _networks)


NOTIFY_EVENTS = ("voicemail", "ring_through", "registration", "restart", "summary")
_events = (lambda v: all(e in NOTIFY_EVENTS for e in v), "a list of events among " + ", ".join(NOTIFY_EVENTS))
_notify_urls = (lambda v: all(re.fullmatch(r"[a-z][a-z0-9+]*://\S+", u) for u in v),
                'a list of notification URLs such as "ntfys://ntfy.sh/my-topic"')
_hhmm = (lambda v: bool(re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", v)), 'a time "HH:MM"')
_http_url = (lambda v: v == "" or bool(re.fullmatch(r"https?://[^\s/]+(/\S*)?", v)),
             'empty, or the address of the dashboard such as "http://192.168.1.10:8080"')


@dataclass(frozen=True)
class NotifyConfig:
    urls: tuple[str, ...] = _opt_list([], _notify_urls, secret=True)  # apprise URLs carry tokens
    events: tuple[str, ...] = _opt_list(list(NOTIFY_EVENTS), _events)
    registration_minutes: int = _opt(5, _range(1, 1440))
    summary_at: str = _opt("20:00", _hhmm)
    dashboard_url: str = _opt("", _http_url)


@dataclass(frozen=True)
class RetentionConfig:
    calls_days: int = _opt(0, _range(0, 36500))
    voicemail_days: int = _opt(0, _range(0, 36500))


@dataclass(frozen=True)
class Config:
    sip: SipConfig = field(default_factory=SipConfig)
    screening: ScreeningConfig = field(default_factory=ScreeningConfig)
    ring_through: RingThroughConfig = field(default_factory=RingThroughConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    web: WebConfig = field(default_factory=WebConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    data_dir: str = _opt("data", help="voicemail, converted prompts and generated secrets live here")
    path: str = field(default="", compare=False, metadata={"internal": True})

    def resolve(self, p: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        base = Path(self.path).parent if self.path else Path.cwd()
        return (base / p) if p else base

    @property
    def database_url(self) -> str:
        """The database URL, a relative SQLite path taken from the config file's folder."""
        url = self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(self.resolve(url[len(prefix):]))
        return url

    @property
    def data_path(self) -> Path:
        return self.resolve(self.data_dir)


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               tuple[str, ...]: "a list of strings"}


def _show(v: Any) -> str:
    return json.dumps(v, default=str)


def _type_ok(tp: Any, v: Any) -> bool:
    if tp == tuple[str, ...]:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    if tp is float:
        return isinstance(v, int | float) and not isinstance(v, bool)
    return isinstance(v, tp) and not (tp is int and isinstance(v, bool))


def _sections(cls: type | None = None, prefix: str = "") -> dict[str, dict[str, bool]]:
    """Every section of the tree ("" = top level) with its keys, each marked True when it is itself a section."""
    cls = cls or Config
    hints = get_type_hints(cls)
    keys = {f.name: is_dataclass(hints[f.name]) for f in fields(cls) if not f.metadata.get("internal")}
    out = {prefix.rstrip("."): keys}
    for name, sub in keys.items():
        if sub:
            out.update(_sections(hints[name], prefix + name + "."))
    return out


def _unknown(prefix: str, key: str, value: Any, fname: str) -> ConfigError:
    """The error for a key the tree does not have, with the likeliest fix: a near spelling, or its section."""
    here = prefix.rstrip(".")
    sections = _sections()
    if isinstance(value, dict):
        near = difflib.get_close_matches(prefix + key, [s for s in sections if s], n=1)
        hint = f": did you mean `[{near[0]}]`?" if near else ""
        return ConfigError(f"{fname}: [{prefix}{key}] is not a known section{hint}")
    near = difflib.get_close_matches(key, [k for k, sub in sections[here].items() if not sub], n=1)
    if near:
        hint = f": did you mean `{near[0]}`?"
    else:
        homes = [s for s, keys in sections.items() if s != here and keys.get(key) is False]
        where = " or ".join("at the top, before any [section]" if h == "" else f"in [{h}]" for h in homes)
        hint = f": it belongs {where}" if homes else ""
    return ConfigError(f"{fname}: {prefix}{key} is not a known setting{hint}")


def _build(cls: type, data: dict[str, Any], prefix: str, fname: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if not f.metadata.get("internal")}
    for key, value in data.items():
        if key not in known:
            raise _unknown(prefix, key, value, fname)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f, tp, where = known[name], hints[name], prefix + name
        if is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{fname}: {where} must be a table, got {_show(value)}")
            kwargs[name] = _build(tp, value, where + ".", fname)  # type: ignore[arg-type]
            continue
        check: Check | None = f.metadata.get("check")
        must = check[1] if check else _TYPE_WORDS[tp]
        if not _type_ok(tp, value) or (check and not check[0](value)):
            raise ConfigError(f"{fname}: {where} must be {must}, got {_show(value)}")
        kwargs[name] = tuple(value) if tp == tuple[str, ...] else (float(value) if tp is float else value)
    return cls(**kwargs)


def _cross_checks(cfg: Config, fname: str) -> None:
    sip = cfg.sip
    if sip.rtp_port_low > sip.rtp_port_high:
        raise ConfigError(f"{fname}: sip.rtp_port_high must be >= sip.rtp_port_low, got {sip.rtp_port_high}")
    if sip.rtp_port_low <= sip.sip_port <= sip.rtp_port_high:
        raise ConfigError(f"{fname}: sip.sip_port must lie outside the RTP port range, got {sip.sip_port}")
    if sip.password and sip.password_file:
        raise ConfigError(f"{fname}: sip.password_file must be empty when sip.password is set")
    rt = cfg.ring_through
    if rt.password and rt.password_file:
        raise ConfigError(f"{fname}: ring_through.password_file must be empty when ring_through.password is set")
    keys = (rt.talk_key, rt.voicemail_key, rt.block_key)
    if len(set(keys)) < 3:
        raise ConfigError(f"{fname}: ring_through.talk_key, voicemail_key and block_key must differ, got {list(keys)}")
    if sip.mode == "gatekeeper" and not rt.target:
        raise ConfigError(f'{fname}: sip.mode = "gatekeeper" needs ring_through.target (the phones to ring)')


# the Python package that provides each database driver SQLAlchemy may ask for
_DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pg8000": "pg8000"}
_BACKENDS = ("sqlite", "postgresql")  # what the store is written and tested for
_URL_EXAMPLE = '"sqlite:///screener.db" or "postgresql+psycopg://user:password@host/screener"'


def _hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _check_database(url: str, fname: str) -> None:
    """A URL SQLAlchemy can open with a driver that is installed, for a database the store supports."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    where = f"{fname}: database.url"
    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(f"{where} must be a database URL such as {_URL_EXAMPLE}, got {_show(_hide_password(url))}"
                          ) from None
    backend, _plus, driver = u.drivername.partition("+")
    if backend not in _BACKENDS:
        near = difflib.get_close_matches(backend, _BACKENDS, n=1)
        hint = f": did you mean `{near[0]}`?" if near else f", such as {_URL_EXAMPLE}"
        raise ConfigError(f"{where} must name sqlite or postgresql, got {_show(backend)}{hint}")
    try:
        dialect = u.get_dialect()
    except NoSuchModuleError:
        near = difflib.get_close_matches(driver or "", _DRIVER_PACKAGES, n=1)
        hint = f": did you mean `{backend}+{near[0]}`?" if near else ""
        raise ConfigError(f"{where} names an unknown {backend} driver {_show(driver)}{hint}") from None
    try:
        dialect.import_dbapi()
    except ModuleNotFoundError as e:
        package = _DRIVER_PACKAGES.get(e.name or "", e.name or "")
        pip = f"{Path(sys.executable).parent / 'pip'} install '{package}'"
        raise ConfigError(f"{where} needs the Python package {package}, which is not installed: {pip}") from None
    except ImportError as e:
        raise ConfigError(f"{where}: the {backend} driver cannot be loaded: {e}") from None


def _read_text(p: Path, fname: str) -> str:
    """The file as text: UTF-8, with or without a byte-order mark (Windows editors write one)."""
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{fname}: no such file (run `screener init` to create it)") from None
    except IsADirectoryError:
        inside = p / "config.toml"
        hint = f"did you mean `{inside}`?" if inside.is_file() else f"give the file, e.g. --config {inside}"
        raise ConfigError(f"{fname}: is a folder, not a config file: {hint}") from None
    except OSError as e:
        raise ConfigError(f"{fname}: cannot be read: {e.strerror}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{fname}: the file is UTF-16, not UTF-8: save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{fname}:{line}: the file is not UTF-8 (byte 0x{data[e.start]:02x}, perhaps Latin-1): "
                          "save it as UTF-8") from None


def _read_secret(cfg: Config, key: str, value: str, fname: str) -> str:
    path = cfg.resolve(value)
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8"
        raise ConfigError(f"{fname}: {key} cannot be read: {why} ({path})") from None


def load(path: str | os.PathLike[str]) -> Config:
    """Read and check a config file; raise ConfigError naming the file and key."""
    p = Path(path)
    fname = str(path)
    try:
        raw = tomllib.loads(_read_text(p, fname))
    except tomllib.TOMLDecodeError as e:
        hint = " (text needs quotes: key = \"text\")" if str(e).startswith("Invalid value") else ""
        raise ConfigError(f"{fname}: not valid TOML: {e}{hint}") from None
    cfg: Config = _build(Config, raw, "", fname)
    _cross_checks(cfg, fname)
    _check_database(cfg.database.url, fname)
    cfg = replace(cfg, path=str(p.resolve()))
    if cfg.sip.password_file:
        pw = _read_secret(cfg, "sip.password_file", cfg.sip.password_file, fname)
        cfg = replace(cfg, sip=replace(cfg.sip, password=pw))
    if cfg.ring_through.password_file:
        pw = _read_secret(cfg, "ring_through.password_file", cfg.ring_through.password_file, fname)
        cfg = replace(cfg, ring_through=replace(cfg.ring_through, password=pw))
    if cfg.web.secret_file and not cfg.web.secret:
        secret = _read_secret(cfg, "web.secret_file", cfg.web.secret_file, fname)
        cfg = replace(cfg, web=replace(cfg.web, secret=secret))
    return cfg


def default_path() -> Path:
    """$SCREENER_CONFIG, else ./config.toml."""
    return Path(os.environ.get("SCREENER_CONFIG", "config.toml"))


def masked(cfg: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """The effective settings as (dotted key, value) pairs with secrets masked, for display."""
    out: list[tuple[str, Any]] = []
    for f in fields(cfg):
        if f.metadata.get("internal"):
            continue
        v = getattr(cfg, f.name)
        if is_dataclass(v):
            out += masked(v, prefix + f.name + ".")
        elif f.metadata.get("secret") and v:
            out.append((prefix + f.name, "********"))
        else:
            out.append((prefix + f.name, list(v) if isinstance(v, tuple) else v))
    return out


