"""The notification service's SQLite state: one connection, used from worker threads one call at a
time (a :class:`trio.Lock`), WAL journal, every write in one ``BEGIN IMMEDIATE`` transaction."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sends (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    result TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value)
    VALUES ('requests', 0), ('repeats', 0), ('failures', 0);
"""


class Store:
    """The ``sends`` table (one row per idempotency key) and the request counters."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
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
                self._conn = await trio.to_thread.run_sync(self._connect)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
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
                    await trio.to_thread.run_sync(conn.close)

    async def _run(self, func: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError("the notification store is not open")
            begin = "BEGIN IMMEDIATE" if write else "BEGIN"
            return await trio.to_thread.run_sync(_transaction, conn, begin, func)

    async def repeat(self, key: str) -> dict[str, Any] | None:
        """The stored result for ``key``, counting the request as a repeat; ``None`` (and nothing
        counted) when the key was never sent."""

        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT result FROM sends WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            _count(conn, "repeats")
            return _loads(row[0])

        return await self._run(run)

    async def record(
        self, key: str, result: dict[str, Any], message: dict[str, Any]
    ) -> tuple[bool, dict[str, Any]]:
        """Record ``result`` as the send for ``key`` unless the key already has one (a unique
        constraint, not a check-then-insert). Returns ``(True, result)`` for a new send,
        ``(False, stored)`` (counted as a repeat) when another writer got there first."""

        def run(conn: sqlite3.Connection) -> tuple[bool, dict[str, Any]]:
            cursor = conn.execute(
                "INSERT INTO sends (key, id, result, message, created_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO NOTHING",
                (key, result["id"], _dumps(result), _dumps(message), result["timestamp"]),
            )
            if cursor.rowcount == 1:
                _count(conn)
                return True, result
            row = conn.execute("SELECT result FROM sends WHERE key = ?", (key,)).fetchone()
            _count(conn, "repeats")
            return False, _loads(row[0])

        return await self._run(run)

    async def count_failure(self) -> None:
        """Count a request answered with an error."""
        await self._run(lambda conn: _count(conn, "failures"))

    async def by_id(self, notification_id: str) -> dict[str, Any] | None:
        """The stored result with this ``id``, or ``None``."""

        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT result FROM sends WHERE id = ?", (notification_id,)
            ).fetchone()
            return None if row is None else _loads(row[0])

        return await self._run(run, write=False)

    async def stats(self) -> dict[str, int]:
        """``{"sends", "requests", "repeats", "failures"}`` (persisted with the sends)."""

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
            (sends,) = conn.execute("SELECT COUNT(*) FROM sends").fetchone()
            return {
                "sends": int(sends),
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


def _count(conn: sqlite3.Connection, outcome: str | None = None) -> None:
    names = ("requests",) if outcome is None else ("requests", outcome)
    conn.execute(
        f"UPDATE counters SET value = value + 1 WHERE name IN ({', '.join('?' * len(names))})",
        names,
    )


def _dumps(value: object) -> str:
    # Never Infinity or NaN in a stored document: JSON has neither.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _loads(text: str) -> dict[str, Any]:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value
