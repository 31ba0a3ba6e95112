"""Edits to config.toml, for the CLI (`screener config set`) and the dashboard (setup page, settings).

The file keeps its comments and layout (tomlkit); the edited text is checked by screener.config.load before it
replaces the file, so a bad value is refused with the key it names and nothing is written. Secrets are
write-only: an empty value leaves them as they are; a SIP password goes into `sip.password_file` when the
config names one.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import tomlkit
from tomlkit.items import Item, Table

from screener import config as config_mod
from screener.config import Config, ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"  # what a missing config file starts from


class EditError(ValueError):
    """A change that was refused: `key` is the dotted setting it concerns ("" when none)."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Setting:
    key: str  # dotted, e.g. "sip.server"
    type: Any  # str, int, float, bool or tuple[str, ...]
    secret: bool
    default: Any


def settings(cls: type = Config, prefix: str = "") -> dict[str, Setting]:
    """Every setting of the config tree by dotted key."""
    out: dict[str, Setting] = {}
    hints = get_type_hints(cls)
    defaults = cls()
    for f in fields(cls):
        if f.metadata.get("internal"):
            continue
        tp = hints[f.name]
        if is_dataclass(tp):
            out.update(settings(tp, prefix + f.name + "."))  # type: ignore[arg-type]
        else:
            out[prefix + f.name] = Setting(prefix + f.name, tp, bool(f.metadata.get("secret")),
                                           getattr(defaults, f.name))
    return out


SETTINGS = settings()
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def coerce(key: str, text: str) -> Any:
    """A value typed as text (a form field, a command-line argument) as the type `key` takes."""
    s = SETTINGS.get(key)
    if s is None:
        raise EditError(f"{key} is not a known setting", key)
    text = text.strip()
    try:
        if s.type is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError
        if s.type is int:
            return int(text)
        if s.type is float:
            return float(text)
    except ValueError:
        word = {bool: "true or false", int: "an integer", float: "a number"}[s.type]
        raise EditError(f"{key} must be {word}, got {text!r}", key) from None
    if s.type == tuple[str, ...]:
        if text.startswith("["):
            try:
                value = tomlkit.parse(f"v = {text}")["v"]
            except Exception:
                raise EditError(f"{key} must be a list such as [\"a\", \"b\"], got {text!r}", key) from None
            return [str(v) for v in value]
        return [p for p in re.split(r"[,\s]+", text) if p]
    return text


def _set(doc: tomlkit.TOMLDocument, key: str, value: Any) -> None:
    *tables, name = key.split(".")
    where: Any = doc
    for t in tables:
        if t not in where:
            where[t] = tomlkit.table()
        where = where[t]
        if not isinstance(where, Table | dict):
            raise EditError(f"{key}: {t} is not a table in the file", key)
    new: Item = tomlkit.item(list(value) if isinstance(value, tuple) else value)
    old = where.get(name) if name in where else None
    if isinstance(old, Item):
        # the comment at the end of the line stays with the key
        new.trivia.indent, new.trivia.comment_ws = old.trivia.indent, old.trivia.comment_ws
        new.trivia.comment, new.trivia.trail = old.trivia.comment, old.trivia.trail
    where[name] = new


def _get(doc: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def _key_of(message: str) -> str:
    first = message.split(" ", 1)[0]
    return first if first in SETTINGS or "." in first else ""


def render(path: Path, changes: Mapping[str, Any], template: Path | None = None) -> tuple[str, str | None]:
    """The file's new text with `changes` applied, and the SIP password to write to its password_file (if any).

    Empty secrets are left out (unchanged). `template` is read when `path` does not exist yet."""
    if path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        text = template.read_text(encoding="utf-8") if template else ""
    doc = tomlkit.parse(text)
    password_to_file: str | None = None
    for key, value in changes.items():
        s = SETTINGS.get(key)
        if s is None:
            raise EditError(f"{key} is not a known setting", key)
        if s.secret and (value is None or value == ""):
            continue
        if key == "sip.password" and (changes.get("sip.password_file") or _get(doc, "sip.password_file")):
            password_to_file = str(value)
            continue
        _set(doc, key, value)
    return tomlkit.dumps(doc), password_to_file


def edit(path: str | os.PathLike[str], changes: Mapping[str, Any], *, template: Path | None = None) -> Config:
    """Apply `changes` ({dotted key: value}) to the config file, keeping its comments; return the new Config.

    The new text is checked first: EditError (naming the key) and the file untouched when any value is bad."""
    path = Path(path)
    new_text, password = render(path, changes, template)
    folder = path.resolve().parent
    fd, tmp_name = tempfile.mkstemp(prefix=".config-", suffix=".toml", dir=folder)
    tmp = Path(tmp_name)
    created: Path | None = None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new_text)
        doc = tomlkit.parse(new_text)
        if password is not None:
            # the password file is written once the rest is known good; load() must find it meanwhile
            target = folder / str(_get(doc, "sip.password_file"))
            if not target.exists():
                _write_secret(target, "")
                created = target
        try:
            cfg = config_mod.load(tmp)
        except ConfigError as e:
            if created is not None:
                created.unlink(missing_ok=True)
            message = str(e).replace(f"{tmp}: ", "", 1).replace(str(tmp), str(path))
            raise EditError(message, _key_of(message)) from None
        if password is not None:
            _write_secret(cfg.resolve(cfg.sip.password_file), password)
        secret_inside = bool(_get(doc, "sip.password") or _get(doc, "web.secret"))
        mode = (path.stat().st_mode & 0o777) if path.exists() else 0o644
        os.chmod(tmp, 0o600 if secret_inside else mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return config_mod.load(path)


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".secret-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")
    os.chmod(tmp_name, 0o600)
    os.replace(tmp_name, path)


# --- profiles: the setup page's plain-words starting points ------------------------------------------------


@dataclass(frozen=True)
class Profile:
    name: str
    asks: tuple[str, ...]  # the settings the user fills in, in order
    fills: Mapping[str, Any]  # settings the profile sets
    defaults: Mapping[str, Any]  # starting values of what it asks
    ui_language: str = ""  # the dashboard's language it switches to ("" = leave)


_ACCOUNT = ("sip.server", "sip.username", "sip.password")
_PLAIN = {"sip.domain": "", "sip.auth_username": "", "sip.outbound_proxy": ""}

PROFILES: dict[str, Profile] = {
    # a FRITZ!Box's IP phone; hangup: whether the box cancels the other phones on a 603 is not documented
    "fritzbox_it": Profile("fritzbox_it", _ACCOUNT,
                           {**_PLAIN, "screening.block_action": "hangup", "screening.language": "it",
                            "screening.presets": ["it"], "screening.region": "IT",
                            "screening.timezone": "Europe/Rome"},
                           {"sip.server": "fritz.box", "sip.username": "screener"}, ui_language="it"),
    "provider": Profile("provider", ("sip.server", "sip.domain", "sip.username", "sip.auth_username",
                                     "sip.password", "sip.outbound_proxy", "sip.keepalive_interval"),
                        {"screening.block_action": "decline"}, {"sip.keepalive_interval": 25}),
    "other_router": Profile("other_router", _ACCOUNT, {**_PLAIN, "screening.block_action": "hangup"},
                            {"sip.server": "192.168.1.1", "sip.username": "screener"}),
}


def profile_changes(profile: str, answers: Mapping[str, str]) -> dict[str, Any]:
    """The changes a profile makes from the user's answers (text as typed); EditError naming a bad one.

    A server typed as host:port sets sip.port too."""
    p = PROFILES.get(profile)
    if p is None:
        raise EditError(f"no profile {profile!r}")
    changes: dict[str, Any] = dict(p.fills)
    for key in p.asks:
        text = (answers.get(key) or "").strip()
        if key == "sip.server":
            host, sep, port = text.rpartition(":")
            if sep and port.isdigit() and host and not host.endswith(":"):
                text = host
                changes["sip.port"] = coerce("sip.port", port)
            elif "sip.port" not in changes:
                changes["sip.port"] = 5060
            if not text:
                raise EditError("sip.server must not be empty", key)
        if key == "sip.username" and not text:
            raise EditError("sip.username must not be empty", key)
        if key == "sip.keepalive_interval" and not text:
            text = str(p.defaults.get(key, 25))
        changes[key] = coerce(key, text)
    return changes
