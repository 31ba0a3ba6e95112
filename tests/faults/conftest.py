"""Fixtures for the fault tests: the real peers of tests/e2e (kamailio, sipp, `screener run`), reused as they are.

pytest only honours `pytest_plugins` in the root conftest, so tests/e2e/conftest.py is loaded here as a module
of its own and its fixtures (and its hook that attaches the log tails of a failed test) are re-exported.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
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


class PgCluster:
    """A throw-away PostgreSQL 15 cluster of the test's own, to stop and start at will (pg_ctl, by its data dir).

    It runs as `postgres` when the tests run as root (PostgreSQL refuses root), in a folder under /tmp that
    user can reach.
    """

    BIN = Path("/usr/lib/postgresql/15/bin")

    def __init__(self) -> None:
        if not (self.BIN / "initdb").exists():
            pytest.fail("PostgreSQL 15 is not installed (make test installs it: apt-get install postgresql)")
        self.root = Path(tempfile.mkdtemp(prefix="screener-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_pg:
            shutil.chown(self.root, "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres")

    def _run(self, tool: str, *args: Any, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*self._as_pg, str(self.BIN / tool), *map(str, args)], capture_output=True, text=True,
                             timeout=60)
        if check and res.returncode != 0:
            raise RuntimeError(f"{tool} exited {res.returncode}: {res.stdout[-1500:]}{res.stderr[-1500:]}")
        return res

    def start(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-w", "-l", self.log, "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop", check=False)

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def query(self, dbname: str, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}",
                             connect_timeout=2) as c:
            return c.execute(sql).fetchall()

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A started PostgreSQL cluster for one test, stopped and removed in teardown (it may stop and start it)."""
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
