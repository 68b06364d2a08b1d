"""Fixtures of the scale-out tests: a fresh schema of the session's PostgreSQL server, as the
URL workers take and the DSN the test reads it with, with the ledger's tables."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.pg_server import schema_dsn
from tests.scaleout.cluster import create_ledger, schema_url


class Schema:
    """One schema: ``url`` for ``--db``, ``dsn`` for psycopg."""

    def __init__(self, server_dsn: str, name: str) -> None:
        self.name = name
        self.url = schema_url(server_dsn, name)
        self.dsn = schema_dsn(server_dsn, name)


@pytest.fixture
def new_schema(pg_dsn: str) -> Iterator[object]:
    """A factory of fresh schemas (each with the ledger's tables), dropped at the end."""
    made: list[str] = []

    def make() -> Schema:
        name = f"scaleout_{len(made)}_{id(made) % 100000}"
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        made.append(name)
        schema = Schema(pg_dsn, name)
        create_ledger(schema.dsn)
        return schema

    yield make
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
