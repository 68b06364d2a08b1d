"""The entity store on PostgreSQL: many runtime processes, on many machines, share one
database.

:class:`PostgresStore` is the store's operations (``_store``, ``_store_runs``, their SQL in
``_sql``: the same as the SQLite store's) over one database's connections (``_postgres_db``:
group commit on a writer connection, a pool of readers, a listener for notifications); the
schema and its migrations are in ``_postgres_schema``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NoReturn

from ._postgres_db import PostgresDatabase, PostgresStoreStatistics, describe
from ._protocol import EntityStore
from ._records import StoreChange
from ._store import StoreOperations


class PostgresStore(StoreOperations, EntityStore):
    """An :class:`~sluiceway.store.EntityStore` in a PostgreSQL database (13 or newer), shared
    by any number of processes on any number of machines.

    The store keeps its tables in the connection's current schema (the first schema of its
    ``search_path`` that exists: ``public`` unless the connection string says otherwise, e.g.
    ``options=-csearch_path=myapp``), creating them when it first opens a database. Within one
    store, concurrent writes are grouped into one transaction (group commit); the transactions
    of several processes run at once, locking the rows they change, and take turns only to
    insert their envelopes just before they commit, so envelope ``seq`` numbers follow commit
    order and a stream never misses an envelope that committed late. What a
    transaction changes is announced with one ``NOTIFY``, which :meth:`watch` hears in the
    other processes within milliseconds.

    Use it as an async context manager, once::

        async with PostgresStore("postgresql://app@db.internal/app") as store:
            record, created = await store.create_entity(new)

    It needs ``psycopg`` and ``psycopg-pool`` (``pip install 'sluiceway[postgres]'``). Its
    connections must reach the server directly or through a session-pooling proxy: a proxy
    in transaction-pooling mode (PgBouncer's ``pool_mode = transaction``) breaks ``LISTEN``.

    Args:
        dsn: A libpq connection string or URL (``postgresql://user:password@host/dbname``).
        read_only: Open an existing store for reading only (no schema creation or migration;
            every write method raises ``RuntimeError``; no writer connection).
        readers: How many read connections (and concurrent reads) the store uses.
        max_batch: The most writes grouped into one transaction.
        connect_timeout: How long (seconds) opening a connection may take.
        idle_timeout: How long (seconds) the server lets the writer's transaction sit idle
            before it ends it (a process frozen mid-transaction then holds up the others'
            writes for no longer than this).

    Raises:
        TypeError, ValueError: an argument is invalid.
    """

    _db: PostgresDatabase

    def __init__(
        self,
        dsn: str,
        *,
        read_only: bool = False,
        readers: int = 4,
        max_batch: int = 1000,
        connect_timeout: float = 10.0,
        idle_timeout: float = 5.0,
    ) -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise TypeError(f"PostgresStore() dsn must be a non-empty string, got {dsn!r}")
        if not isinstance(read_only, bool):
            raise TypeError(f"PostgresStore() read_only must be a bool, got {read_only!r}")
        for name, value in (("readers", readers), ("max_batch", max_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PostgresStore() {name} must be an int >= 1, got {value!r}")
        for name, seconds in (("connect_timeout", connect_timeout), ("idle_timeout", idle_timeout)):
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, int | float)
                or not math.isfinite(seconds)
                or seconds <= 0
            ):
                raise ValueError(
                    f"PostgresStore() {name} must be a finite number of seconds > 0, "
                    f"got {seconds!r}"
                )
        self._db = PostgresDatabase(
            dsn,
            read_only=read_only,
            readers=readers,
            max_batch=max_batch,
            connect_timeout=float(connect_timeout),
            idle_timeout=float(idle_timeout),
        )
        self._owner: str | None = None

    @property
    def read_only(self) -> bool:
        """Whether the store was opened for reading only."""
        return self._db.read_only

    @property
    def schema(self) -> str:
        """The schema that holds the store's tables (known once the store is open)."""
        return self._db.schema

    def __repr__(self) -> str:
        mode = " read-only" if self.read_only else ""
        return f"<PostgresStore {describe(self._db.dsn)}{mode} {self._db.state.value}>"

    def statistics(self) -> PostgresStoreStatistics:
        """How many writes, write transactions, retries, reads and notifications the store
        has done (see :class:`PostgresStoreStatistics`)."""
        return self._db.statistics()

    def clock(self) -> float:
        """The database server's time, in seconds since the epoch: this machine's clock
        corrected by the offset measured when the store opened. A runtime on this store uses
        it for leases, timers and deadlines, so that processes on machines whose clocks
        disagree still agree on when a lease expires."""
        return self._db.clock()

    def bind_owner(self, owner: str) -> None:
        super().bind_owner(owner)
        self._db.owner = owner

    # -- lifetime ------------------------------------------------------------------------------

    async def __aenter__(self) -> PostgresStore:
        """Connect, create or migrate the schema (under an advisory lock, so that processes
        opening a new database at once migrate it once) and start the writer task.

        Raises:
            RuntimeError: the store was already entered (a store can be entered once).
            StoreSchemaError: the schema holds tables that are not a sluiceway entity store,
                was written by a newer sluiceway, or (``read_only``) is empty or needs a
                migration.
            StoreError: the server could not be reached or refused the connection.
        """
        await self._db.open()
        return self

    async def watch(self, on_change: Callable[[StoreChange], None]) -> NoReturn:
        """Call ``on_change`` with what each transaction committed by *another* store on the
        same database changed (``LISTEN``/``NOTIFY``), until cancelled. It is also called with
        ``everything=True`` whenever the notification connection is (re)opened, since what
        happened while nobody listened is unknown."""
        await self._db.listen(on_change)
