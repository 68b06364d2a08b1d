"""The image service's SQLite state: one connection, used one call at a time (a
:class:`trio.Lock`) from worker threads or inline, WAL journal, every write in one ``BEGIN
IMMEDIATE`` transaction (the plumbing is :class:`~sluiceway.apps._sqlite_file.SqliteFile`'s)."""

from __future__ import annotations

import sqlite3
from functools import partial
from typing import Any

from .._sqlite_file import (
    COUNTERS_SCHEMA,
    SqliteFile,
    count_requests,
    dump_json,
    load_object,
    request_totals,
    schema_version,
    transaction,
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    key TEXT UNIQUE,
    result TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS key_counts (
    key TEXT PRIMARY KEY,
    requests INTEGER NOT NULL DEFAULT 0,
    generations INTEGER NOT NULL DEFAULT 0
);
{COUNTERS_SCHEMA}
"""

#: The schema version this code writes (``PRAGMA user_version``); a newer file is refused.
SCHEMA_VERSION = 1


class ImageStore(SqliteFile):
    """The ``images`` table (at most one row per idempotency key: a ``UNIQUE`` column, keyless
    images have ``NULL`` there), the per-key request and generation counts, and the totals."""

    what = "image store"

    def _prepare(self, conn: sqlite3.Connection) -> None:
        def create(conn: sqlite3.Connection) -> None:
            schema_version(conn, known=SCHEMA_VERSION, what=f"the image store {self.path}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

        transaction(conn, "BEGIN IMMEDIATE", create)

    async def repeat(self, key: str) -> dict[str, Any] | None:
        """The stored result for ``key``, counting the request as a repeat; ``None`` (and
        nothing counted) when the key was never generated."""

        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT result FROM images WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            _count(conn, key, "repeats")
            return load_object(row[0])

        return await self._run(run)

    async def record(self, result: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Record ``result`` (its ``idempotency_key`` may be ``None``) unless its key already
        has an image (the ``UNIQUE`` constraint decides, not a check-then-insert). Returns
        ``(True, result)`` for a new image, ``(False, stored)`` (counted as a repeat) when
        another writer got there first."""
        key = result["idempotency_key"]

        def run(conn: sqlite3.Connection) -> tuple[bool, dict[str, Any]]:
            cursor = conn.execute(
                "INSERT INTO images (id, key, result, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key) DO NOTHING",
                (result["id"], key, dump_json(result), result["created_at"]),
            )
            if cursor.rowcount == 1:
                _count(conn, key, "generations")
                return True, result
            row = conn.execute("SELECT result FROM images WHERE key = ?", (key,)).fetchone()
            _count(conn, key, "repeats")
            return False, load_object(row[0])

        return await self._run(run)

    async def count_failure(self, key: str | None) -> None:
        """Count a request answered with an error (against ``key`` too, when it had one)."""
        await self._run(lambda conn: _count(conn, key, "failures"))

    async def by_id(self, image_id: str) -> dict[str, Any] | None:
        """The stored result with this ``id``, or ``None``."""

        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT result FROM images WHERE id = ?", (image_id,)).fetchone()
            return None if row is None else load_object(row[0])

        return await self._run(run, write=False)

    async def counts(self, prefix: str | None = None) -> dict[str, dict[str, int]]:
        """``{key: {"requests", "generations"}}`` for the keys starting with ``prefix``
        (``None``: all), in key order."""

        def run(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            query = "SELECT key, requests, generations FROM key_counts"
            args: tuple[object, ...] = ()
            if prefix:
                # substr, not LIKE: a prefix may hold % or _ like any key.
                query += " WHERE substr(key, 1, ?) = ?"
                args = (len(prefix), prefix)
            rows = conn.execute(query + " ORDER BY key", args).fetchall()
            return {
                key: {"requests": int(requests), "generations": int(generations)}
                for key, requests, generations in rows
            }

        return await self._run(run, write=False)

    async def stats(self) -> dict[str, int]:
        """``{"generations", "requests", "repeats", "failures"}`` (persisted with the images)."""
        totals = partial(request_totals, stored="generations", table="images")
        return await self._run(totals, write=False)


def _count(conn: sqlite3.Connection, key: str | None, outcome: str) -> None:
    """Count one answered request: in the totals (``outcome`` is ``"repeats"``, ``"failures"``
    or ``"generations"``, which the totals read from the ``images`` table) and against its
    ``key``, if it had one."""
    count_requests(conn, ("requests",) if outcome == "generations" else ("requests", outcome))
    if key is not None:
        generated = int(outcome == "generations")
        conn.execute(
            "INSERT INTO key_counts (key, requests, generations) VALUES (?, 1, ?)"
            " ON CONFLICT (key) DO UPDATE SET requests = requests + 1,"
            " generations = generations + excluded.generations",
            (key, generated),
        )
