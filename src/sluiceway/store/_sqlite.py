"""The embedded entity store: one SQLite file, shared safely by several processes.

:class:`SqliteStore` is the store's operations (``_store``, ``_store_runs``, their SQL in
``_sql``, shared with the PostgreSQL store) over the file's writer and readers
(``_sqlite_db``: group commit, a reader pool); the schema and its migrations are in
``_sqlite_schema``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import NoReturn

import trio

from ._protocol import EntityStore
from ._records import StoreChange
from ._sqlite_db import SqliteDatabase, SqliteStoreStatistics
from ._store import StoreOperations

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class SqliteStore(StoreOperations, EntityStore):
    """An :class:`~sluiceway.store.EntityStore` in one SQLite file.

    Several stores (in one process or several) may share a file: every write transaction starts
    with ``BEGIN IMMEDIATE``, so they are serialised by SQLite's lock, and the database runs in
    WAL mode so that readers never block the writer. Within one store, concurrent writes are
    grouped into one transaction by a writer task (group commit), each in its own savepoint:
    a refused write is rolled back alone and raised in its caller. A write waits for its
    transaction shielded from cancellation, so a cancelled caller never leaves a write
    half-known: it is applied (or refused) exactly once either way.

    Use it as an async context manager, once::

        async with SqliteStore("entities.db") as store:
            record, created = await store.create_entity(new)

    Args:
        path: The database file. It is created (with the schema) if it does not exist; a store
            written by an older sluiceway is migrated when opened.
        read_only: Open an existing store for reading only (no schema creation or migration;
            every write method raises ``RuntimeError``).
        synchronous: SQLite's ``synchronous`` setting: ``"NORMAL"`` (the default: in WAL mode
            a committed write survives a crash of the process, but the last transactions may be
            lost on power loss), ``"FULL"`` (they survive power loss too), ``"EXTRA"`` or
            ``"OFF"``.
        busy_timeout: How long (seconds) a transaction waits for another process's lock before
            it fails.
        max_batch: The most writes grouped into one transaction.
        readers: How many read connections (and concurrent reads) the store uses.
        threads: Run SQLite in worker threads (the default), or on the trio thread
            (``False``): for tests under ``trio.testing.MockClock(autojump_threshold=0)``,
            where virtual time must not jump while a write is under way. Each call then blocks
            the trio thread for as long as SQLite takes (usually well under a millisecond).

    Raises:
        TypeError, ValueError: an argument is invalid.
    """

    _db: SqliteDatabase

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        synchronous: str = "NORMAL",
        busy_timeout: float = 30.0,
        max_batch: int = 1000,
        readers: int = 4,
        threads: bool = True,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"SqliteStore() path must be a str or os.PathLike, got {path!r}")
        fspath = os.fspath(path)
        if not isinstance(fspath, str):
            raise TypeError(f"SqliteStore() path must name a file as str, got {fspath!r}")
        if fspath in ("", ":memory:") or fspath.startswith("file::memory:"):
            raise ValueError(
                "SqliteStore() needs a database file (several connections share it); for a "
                f"throwaway store use a file in a temporary directory, not {fspath!r}"
            )
        for flag, given in (("read_only", read_only), ("threads", threads)):
            if not isinstance(given, bool):
                raise TypeError(f"SqliteStore() {flag} must be a bool, got {given!r}")
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(
                f"SqliteStore() synchronous must be one of {', '.join(_SYNCHRONOUS)}, "
                f"got {synchronous!r}"
            )
        if (
            isinstance(busy_timeout, bool)
            or not isinstance(busy_timeout, int | float)
            or not math.isfinite(busy_timeout)
            or busy_timeout < 0
        ):
            raise ValueError(
                "SqliteStore() busy_timeout must be a finite number of seconds >= 0, "
                f"got {busy_timeout!r}"
            )
        for name, value in (("max_batch", max_batch), ("readers", readers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SqliteStore() {name} must be an int >= 1, got {value!r}")
        self._db = SqliteDatabase(
            fspath,
            read_only=read_only,
            synchronous=synchronous.upper(),
            busy_timeout=float(busy_timeout),
            max_batch=max_batch,
            readers=readers,
            threads=threads,
        )
        self._owner: str | None = None

    @property
    def path(self) -> str:
        """The database file, as given."""
        return self._db.path

    @property
    def read_only(self) -> bool:
        """Whether the store was opened for reading only."""
        return self._db.read_only

    def __repr__(self) -> str:
        mode = " read-only" if self.read_only else ""
        return f"<SqliteStore {self.path!r}{mode} {self._db.state.value}>"

    def statistics(self) -> SqliteStoreStatistics:
        """How many writes, write transactions and reads the store has done (see
        :class:`SqliteStoreStatistics`)."""
        return self._db.statistics()

    # -- lifetime ------------------------------------------------------------------------------

    async def __aenter__(self) -> SqliteStore:
        """Open the connections, create or migrate the schema and start the writer task.

        Raises:
            RuntimeError: the store was already entered (a store can be entered once), or
                SQLite is older than 3.35.
            FileNotFoundError: ``read_only`` and there is no file at ``path``, or the directory
                of ``path`` does not exist.
            StoreSchemaError: the file is not a database, not a sluiceway entity store, was
                written by a newer sluiceway, or (``read_only``) needs a migration.
            StoreError: the database could not be opened (locked for longer than
                ``busy_timeout``, unreadable...).
        """
        await self._db.open()
        return self

    async def watch(self, on_change: Callable[[StoreChange], None]) -> NoReturn:
        """SQLite cannot tell one process what another committed: this waits forever, and
        the runtime finds other processes' changes by polling."""
        await trio.sleep_forever()
