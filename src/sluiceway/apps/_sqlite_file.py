"""The SQLite plumbing the applications' services share (the notification service, the image
service): one connection to one file, used one call at a time (a :class:`trio.Lock`) from
worker threads or inline, WAL journal, every call in one transaction (``BEGIN IMMEDIATE`` for
a write).

A service's store subclasses :class:`SqliteFile`, brings a new connection's file to its schema
in :meth:`SqliteFile._prepare`, and runs its queries through :meth:`SqliteFile._run`. The
service tables' request totals live in a ``counters`` table (:data:`COUNTERS_SCHEMA`).
"""

from __future__ import annotations

import abc
import json
import os
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

import trio

__all__ = [
    "COUNTERS_SCHEMA",
    "SqliteFile",
    "count_requests",
    "dump_json",
    "load_object",
    "request_totals",
    "schema_version",
    "transaction",
]

T = TypeVar("T")

#: The request totals every service keeps (``requests`` counts every answered request, the
#: others its outcome), for a store's schema script.
COUNTERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value)
    VALUES ('requests', 0), ('repeats', 0), ('failures', 0);
"""


class SqliteFile(abc.ABC):
    """One SQLite file: :meth:`open` connects (creating the file if needed, then
    :meth:`_prepare` brings it to the subclass's schema), :meth:`_run` runs a function on the
    connection in one transaction, :meth:`close` closes it.

    With ``threads=False`` the file is used on the trio thread (for tests on virtual time,
    where a wait on a worker thread lets the mock clock jump).
    """

    #: What the file is called in errors (``"the notification store is not open"``).
    what: ClassVar[str] = "store"

    def __init__(self, path: str | os.PathLike[str], *, threads: bool = True) -> None:
        self.path = os.fspath(path)
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
        # isolation_level=None: the transactions are this class's own (BEGIN in transaction()).
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @abc.abstractmethod
    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Bring a new connection's file to the schema this code writes (create its tables,
        migrate an older file, refuse a newer one), in transactions of its own. Called on the
        thread that connects."""

    async def close(self) -> None:
        """Close the connection (safe to call twice; completes even when cancelled)."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                conn, self._conn = self._conn, None
                if conn is not None:
                    await self._call(conn.close)

    async def _call(self, func: Callable[[], T]) -> T:
        """``func()`` on a worker thread, or inline (after a checkpoint) without threads."""
        if not self.threads:
            await trio.lowlevel.checkpoint()
            return func()
        return await trio.to_thread.run_sync(func)

    async def _run(self, func: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """``func(conn)`` in one transaction (``BEGIN IMMEDIATE`` for a ``write``, so that
        two processes sharing the file never both read before either writes); raises
        :class:`RuntimeError` when the file is not open."""
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError(f"the {self.what} is not open")
            begin = "BEGIN IMMEDIATE" if write else "BEGIN"
            return await self._call(lambda: transaction(conn, begin, func))


def transaction(conn: sqlite3.Connection, begin: str, func: Callable[[sqlite3.Connection], T]) -> T:
    """``func(conn)`` between ``begin`` and ``COMMIT``; rolled back if it raises."""
    conn.execute(begin)
    try:
        value = func(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return value


def schema_version(conn: sqlite3.Connection, *, known: int, what: str) -> int:
    """The file's schema version (``PRAGMA user_version``); :class:`RuntimeError` for a file
    written by a newer version than ``known`` (``what`` names the file in the message)."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > known:
        raise RuntimeError(
            f"{what} has schema version {version}; this code knows versions up to {known}"
        )
    return int(version)


def count_requests(conn: sqlite3.Connection, names: Iterable[str]) -> None:
    """Add one to each of the ``counters`` named."""
    names = tuple(names)
    conn.execute(
        f"UPDATE counters SET value = value + 1 WHERE name IN ({', '.join('?' * len(names))})",
        names,
    )


def request_totals(conn: sqlite3.Connection, stored: str, *, table: str) -> dict[str, int]:
    """``{stored, "requests", "repeats", "failures"}``: the rows of ``table`` under the name
    ``stored`` (``"sends"``), then the ``counters`` table's totals."""
    (rows,) = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    totals = {name: int(counters[name]) for name in ("requests", "repeats", "failures")}
    return {stored: int(rows), **totals}


def dump_json(value: object) -> str:
    """A document as the stores keep it: compact JSON text."""
    # Never Infinity or NaN in a stored document: JSON has neither.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def load_object(text: str) -> dict[str, Any]:
    """A stored JSON object, decoded."""
    value = json.loads(text)
    assert isinstance(value, dict)
    return value
