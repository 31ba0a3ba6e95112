"""Fixtures for the fault tests: the real peers of tests/e2e (kamailio, sipp, `screener run`), reused as they are.

pytest only honours `pytest_plugins` in the root conftest, so tests/e2e/conftest.py is loaded here as a module
of its own and its fixtures (and its hook that attaches the log tails of a failed test) are re-exported.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

E2E = Path(__file__).resolve().parents[1] / "e2e"
sys.path.insert(0, str(E2E))


def _load_e2e_conftest() -> Any:
    spec = importlib.util.spec_from_file_location("screener_e2e_fixtures", E2E / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_e2e = _load_e2e_conftest()
ports = _e2e.ports
kamailio = _e2e.kamailio
make_phone = _e2e.make_phone
household = _e2e.household
call = _e2e.call
make_screener = _e2e.make_screener
screener = _e2e.screener
pytest_runtest_makereport = _e2e.pytest_runtest_makereport

from peers import Screener  # noqa: E402


def sqlite_path(s: Screener) -> Path:
    """The SQLite file behind a screener's config."""
    url = s.config["database"]["url"]
    assert url.startswith("sqlite:///"), url
    return Path(url.removeprefix("sqlite:///"))


def sqlite_rows(s: Screener, sql: str = "SELECT call_id, outcome, decision, voicemail_path FROM calls",
                params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows straight from the SQLite file, read-only (a WAL reader: it never waits for a writer)."""
    with closing(sqlite3.connect(f"file:{sqlite_path(s)}?mode=ro", uri=True, timeout=5)) as db:
        return db.execute(sql, params).fetchall()


@pytest.fixture
def db_rows() -> Any:
    """db_rows(screener, sql=..., params=...): rows straight from a screener's SQLite database."""
    return sqlite_rows
