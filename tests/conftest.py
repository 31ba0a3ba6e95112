"""Shared fixtures: a config file factory, a migrated store (SQLite, and PostgreSQL in a throw-away cluster)."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from screener import config, store

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write a config.toml with the given TOML body into a temp folder; returns its path."""

    def write(body: str = "") -> Path:
        p = tmp_path / "config.toml"
        db = "" if "[database]" in body else f'\n[database]\nurl = "sqlite:///{tmp_path / "screener.db"}"\n'
        p.write_text(f'data_dir = "{tmp_path / "data"}"\n{body}\n{db}', encoding="utf-8")
        return p

    return write


@pytest.fixture
def cfg(write_config: Callable[[str], Path]) -> config.Config:
    return config.load(write_config(""))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[tuple[str, int]]:
    """A PostgreSQL 15 cluster of our own on a free loopback port, owned by `postgres` (it refuses root)."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail("PostgreSQL 15 is not installed (make test installs it: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="screener-pg-"))
    datadir = root / "data"
    as_pg: list[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        shutil.chown(root, "postgres")
    port = _free_port()
    subprocess.run([*as_pg, str(PG_BIN / "initdb"), "-D", str(datadir), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-w", "-l", str(root / "log"),
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield str(root), port
    finally:
        subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


_db_counter = itertools.count()


@pytest.fixture
def postgres_url(postgres_server: tuple[str, int]) -> str:
    """A fresh, empty database in the test cluster."""
    import psycopg

    _, port = postgres_server
    name = f"t{os.getpid()}_{next(_db_counter)}"
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{name}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on SQLite and again on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'screener.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def st(db_url: str) -> Iterator[store.Store]:
    s = store.Store(db_url)
    store.upgrade(s)
    yield s
    s.dispose()


@pytest.fixture
def db(conf: Path) -> Iterator[store.Store]:
    """The migrated store behind the test module's `conf` config file, to seed and inspect."""
    st = store.Store(config.load(conf).database_url)
    store.upgrade(st)
    yield st
    st.dispose()


# The longest tests (registrar outages of up to a minute) start first: with `pytest -n 2` (make test) the other
# worker runs the rest meanwhile, instead of both idling at the end behind them.
_FIRST = ("tests/faults/test_registrar.py", "tests/faults/test_postgres.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(_FIRST))
