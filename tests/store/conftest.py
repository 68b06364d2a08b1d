"""Fixtures of the entity store tests: every test of the ``store`` fixture runs against both
stores, a real SQLite file in ``tmp_path`` and a real PostgreSQL server (one fresh schema per
test; see ``tests/pg_server.py``). A test that also asks for ``db_path`` looks at the SQLite
file itself, so it runs on SQLite only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sluiceway.store import EntityStore, PostgresStore, SqliteStore
from tests.pg_server import schema_dsn
from tests.store.helpers import assert_integrity

BACKENDS = ("sqlite", "postgres")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        sqlite_only = "db_path" in metafunc.fixturenames
        metafunc.parametrize("backend", ["sqlite"] if sqlite_only else BACKENDS)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "entities.db"


@pytest.fixture
def new_store(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[..., EntityStore]:
    """A factory of stores (not opened yet) on this test's one database: a SQLite file, or a
    fresh schema of the PostgreSQL server. ``new_store(**options)`` passes the options on."""
    if backend == "sqlite":
        path = tmp_path / "entities.db"
        return lambda **options: SqliteStore(path, **options)
    pg_dsn: str = request.getfixturevalue("pg_dsn")
    dsn = schema_dsn(pg_dsn, request.getfixturevalue("pg_schema"))
    return lambda **options: PostgresStore(dsn, **options)


@pytest.fixture
async def store(
    new_store: Callable[..., EntityStore], backend: str, tmp_path: Path
) -> AsyncIterator[EntityStore]:
    async with new_store() as opened:
        yield opened
    if backend == "sqlite":
        assert_integrity(tmp_path / "entities.db")
