"""The PostgreSQL test server fixtures: a live server, a private schema per test, and
connection strings that select it."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.pg_server import schema_dsn


def test_schema_dsn_on_a_url_keeps_its_parameters() -> None:
    dsn = schema_dsn("postgresql://postgres:@/postgres?host=/tmp/tmpab12&connect_timeout=5", "s_1")
    assert conninfo_to_dict(dsn) == {
        "user": "postgres",
        "dbname": "postgres",
        "host": "/tmp/tmpab12",
        "connect_timeout": "5",
        "options": "-c search_path=s_1",
    }


def test_schema_dsn_on_key_values_appends_to_options() -> None:
    dsn = schema_dsn("host=/run/pg port=5433 dbname=app options='-c work_mem=8MB'", "s_2")
    assert conninfo_to_dict(dsn) == {
        "host": "/run/pg",
        "port": "5433",
        "dbname": "app",
        "options": "-c work_mem=8MB -c search_path=s_2",
    }


@pytest.mark.parametrize("schema", ["", "Upper", "two words", "a;b", "x" * 64, "1st"])
def test_schema_dsn_refuses_names_it_cannot_pass_plainly(schema: str) -> None:
    with pytest.raises(ValueError, match="schema name"):
        schema_dsn("dbname=app", schema)


def test_a_schema_dsn_works_in_its_own_schema(pg_dsn: str, pg_schema: str) -> None:
    with psycopg.connect(schema_dsn(pg_dsn, pg_schema), autocommit=True) as conn:
        conn.execute("CREATE TABLE probe (id integer PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO probe VALUES (1, 'one')")
        assert conn.execute("SELECT current_schema()").fetchone() == (pg_schema,)
        assert conn.execute("SELECT note FROM probe").fetchall() == [("one",)]
        row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
        assert row is not None
        assert row[0] >= 130000
        table = conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'probe'"
        ).fetchall()
        assert table == [(pg_schema,)]

    # Sessions on the plain DSN do not see it.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('probe')").fetchone() == (None,)


def test_each_test_gets_a_new_empty_schema(pg_dsn: str, pg_schema: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        count = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", [pg_schema]
        ).fetchone()
        assert count == (0,)


def test_the_server_takes_many_connections(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('max_connections')::int").fetchone()
    assert row is not None
    assert row[0] >= 100
