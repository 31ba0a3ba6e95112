"""Dashboard users, for the CLI (`screener user add`) and the dashboard (first run, the users page).

With no user at all the dashboard shows only its setup page, which asks for a one-time setup code: `screener
run` / `screener web` print it on the console (who sees the console owns the machine). It lives in the data
folder (0600) until the first user is made with it.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.security import generate_password_hash

from screener.store import User

MIN_PASSWORD = 8
CODE_FILE = "setup-code"  # in the data folder
CODE_DIGITS = 8


class UserError(ValueError):
    """A refused user change, worded for the user."""


def has_users(s: Session) -> bool:
    return s.scalar(select(User.id).limit(1)) is not None


def check_password(password: str, again: str | None = None) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must have at least {MIN_PASSWORD} characters")
    if again is not None and password != again:
        raise UserError("the passwords differ")


def save_user(s: Session, login: str, password: str) -> User:
    """Add `login` with `password`, or set its password (scrypt); its sessions end with the old password."""
    login = login.strip()
    if not login or len(login) > 64 or any(c.isspace() for c in login):
        raise UserError("the user name must be 1-64 characters without spaces")
    check_password(password)
    u = s.scalar(select(User).where(User.login == login))
    if u is None:
        u = User(login=login, password_hash="")
        s.add(u)
    u.password_hash = generate_password_hash(password, method="scrypt")
    s.flush()
    return u


def remove_user(s: Session, login: str) -> None:
    """Remove `login`; never the last user (nobody could log in again but through the console)."""
    u = s.scalar(select(User).where(User.login == login))
    if u is None:
        raise UserError(f"no user {login}")
    if (s.scalar(select(func.count()).select_from(User)) or 0) <= 1:
        raise UserError("the last user cannot be removed")
    s.delete(u)


def issue_code(data_path: Path) -> str:
    """A new setup code in data_path/setup-code (readable by this user only), replacing any older one."""
    code = "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))
    data_path.mkdir(parents=True, exist_ok=True)
    path = data_path / CODE_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(code + "\n")
    tmp.replace(path)
    return code


def show_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


def code_matches(data_path: Path, given: str) -> bool:
    """Whether `given` (spaces and dashes ignored) is the current setup code; constant-time."""
    try:
        code = (data_path / CODE_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return False
    typed = "".join(c for c in given if c not in " -\t")
    return bool(code) and hmac.compare_digest(typed.encode(), code.encode())


def clear_code(data_path: Path) -> None:
    """The code is used up (or a user exists): forget it."""
    (data_path / CODE_FILE).unlink(missing_ok=True)
