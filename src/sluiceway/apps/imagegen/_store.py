"""The image service's SQLite state: one connection, used one call at a time (a
:class:`trio.Lock`) from worker threads or inline, WAL journal, every write in one ``BEGIN
IMMEDIATE`` transaction."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")

_SCHEMA = """
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
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value)
    VALUES ('requests', 0), ('repeats', 0), ('failures', 0);
"""

#: The schema version this code writes (``PRAGMA user_version``); a newer file is refused.
SCHEMA_VERSION = 1


class ImageStore:
    """The ``images`` table (at most one row per idempotency key: a ``UNIQUE`` column, keyless
    images have ``NULL`` there), the per-key request and generation counts, and the totals."""

    def __init__(self, path: str | os.PathLike[str], *, threads: bool = True) -> None:
        self.path = os.fspath(path)
        # Without threads the file is used on the trio thread (for tests on virtual time,
        # where a wait on a worker thread lets the mock clock jump).
        self.threads = threads
        self._conn: sqlite3.Connection | None = None
        self._lock = trio.Lock()

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` ran and :meth:`close` did not."""
        return self._conn is not None

    async def open(self) -> None:
        """Open (creating if needed) the database file."""
        async with self._lock:
            if self._conn is None:
                self._conn = await self._call(self._connect)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                if version > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"the image store {self.path} has schema version {version}; "
                        f"this code knows versions up to {SCHEMA_VERSION}"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Close the connection (safe to call twice; completes even when cancelled)."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                conn, self._conn = self._conn, None
                if conn is not None:
                    await self._call(conn.close)

    async def _call(self, func: Callable[[], T]) -> T:
        if not self.threads:
            await trio.lowlevel.checkpoint()
            return func()
        return await trio.to_thread.run_sync(func)

    async def _run(self, func: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError("the image store is not open")
            begin = "BEGIN IMMEDIATE" if write else "BEGIN"
            return await self._call(lambda: _transaction(conn, begin, func))

    async def repeat(self, key: str) -> dict[str, Any] | None:
        """The stored result for ``key``, counting the request as a repeat; ``None`` (and
        nothing counted) when the key was never generated."""

        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT result FROM images WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            _count(conn, key, "repeats")
            return _loads(row[0])

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
                (result["id"], key, _dumps(result), result["created_at"]),
            )
            if cursor.rowcount == 1:
                _count(conn, key, "generations")
                return True, result
            row = conn.execute("SELECT result FROM images WHERE key = ?", (key,)).fetchone()
            _count(conn, key, "repeats")
            return False, _loads(row[0])

        return await self._run(run)

    async def count_failure(self, key: str | None) -> None:
        """Count a request answered with an error (against ``key`` too, when it had one)."""
        await self._run(lambda conn: _count(conn, key, "failures"))

    async def by_id(self, image_id: str) -> dict[str, Any] | None:
        """The stored result with this ``id``, or ``None``."""

        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT result FROM images WHERE id = ?", (image_id,)).fetchone()
            return None if row is None else _loads(row[0])

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

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
            (generations,) = conn.execute("SELECT COUNT(*) FROM images").fetchone()
            return {
                "generations": int(generations),
                "requests": int(counters["requests"]),
                "repeats": int(counters["repeats"]),
                "failures": int(counters["failures"]),
            }

        return await self._run(run, write=False)


def _transaction(
    conn: sqlite3.Connection, begin: str, func: Callable[[sqlite3.Connection], T]
) -> T:
    conn.execute(begin)
    try:
        value = func(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return value


def _count(conn: sqlite3.Connection, key: str | None, outcome: str) -> None:
    """Count one answered request: in the totals (``outcome`` is ``"repeats"``, ``"failures"``
    or ``"generations"``, which the totals read from the ``images`` table) and against its
    ``key``, if it had one."""
    names = ("requests",) if outcome == "generations" else ("requests", outcome)
    conn.execute(
        f"UPDATE counters SET value = value + 1 WHERE name IN ({', '.join('?' * len(names))})",
        names,
    )
    if key is not None:
        generated = int(outcome == "generations")
        conn.execute(
            "INSERT INTO key_counts (key, requests, generations) VALUES (?, 1, ?)"
            " ON CONFLICT (key) DO UPDATE SET requests = requests + 1,"
            " generations = generations + excluded.generations",
            (key, generated),
        )


def _dumps(value: object) -> str:
    # Never Infinity or NaN in a stored document: JSON has neither.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _loads(text: str) -> dict[str, Any]:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value
