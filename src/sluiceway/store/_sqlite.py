"""The embedded entity store: one SQLite file, shared safely by several processes.

Writes go through a single writer task that groups the writes of concurrent callers into one
transaction (group commit); each write runs inside its own savepoint, so a write that is refused
(a lost lease, an unknown entity) is rolled back alone and the rest of its batch commits. Reads
run on a small pool of read connections in worker threads; in WAL mode they never wait for the
writer.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import json
import math
import os
import pathlib
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Generic, TypeVar

import attrs
import trio

from .._errors import (
    DuplicateEntityError,
    EntityNotFoundError,
    EntityNotWaitingError,
    LeaseLostError,
    StoreError,
    StoreSchemaError,
)
from .._util import aclose_after, open_owned_nursery, type_name
from ._records import (
    JSON,
    EdgeRecord,
    EntityRecord,
    EntityStatus,
    MessageRecord,
    NewEntity,
    StoredEnvelope,
    WaitKind,
    WaitRecord,
    WaitState,
)

T = TypeVar("T")

#: What ``meta.application`` holds in every sluiceway entity store.
APPLICATION = "sluiceway-entity-store"

#: The oldest SQLite this store works with (``RETURNING`` arrived in 3.35).
MIN_SQLITE_VERSION = (3, 35, 0)

#: The schema, as numbered migrations applied in order: ``(version, statements)``. Version 1 is
#: the initial schema. To change the schema, append ``(2, [...])``: a store at version 1 runs
#: those statements (in the same transaction as the version bump) the next time it is opened
#: writable, and an older sluiceway refuses a store at version 2.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            f"INSERT INTO meta (key, value) VALUES ('application', '{APPLICATION}')",
            """
            CREATE TABLE entities (
                id TEXT PRIMARY KEY,
                parent_id TEXT REFERENCES entities (id),
                name TEXT NOT NULL,
                type TEXT NOT NULL,
                general_type TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN (
                    'PENDING', 'IN_PROGRESS', 'WAITING', 'COMPLETED', 'FAILED', 'CANCELLED'
                )),
                data TEXT NOT NULL,
                result TEXT,
                error TEXT,
                attempt INTEGER NOT NULL DEFAULT 0,
                lease_owner TEXT,
                lease_expires REAL,
                created_at REAL NOT NULL,
                modified_at REAL NOT NULL,
                last_entity_seq INTEGER NOT NULL DEFAULT 0
            )
            """,
            # Names are unique per parent and among roots. Two partial indexes rather than one
            # on (coalesce(parent_id, ''), name), so that an entity whose id is '' cannot
            # collide with the roots.
            "CREATE UNIQUE INDEX entities_child_name ON entities (parent_id, name)"
            " WHERE parent_id IS NOT NULL",
            "CREATE UNIQUE INDEX entities_root_name ON entities (name) WHERE parent_id IS NULL",
            # Children oldest first: index entries are ordered by (parent_id, created_at, rowid).
            "CREATE INDEX entities_parent ON entities (parent_id, created_at)",
            "CREATE INDEX entities_status ON entities (status)",
            # Heartbeats renew every lease of one owner.
            "CREATE INDEX entities_lease_owner ON entities (lease_owner)"
            " WHERE lease_owner IS NOT NULL",
            """
            CREATE TABLE edges (
                id INTEGER PRIMARY KEY,
                from_id TEXT NOT NULL REFERENCES entities (id),
                to_id TEXT NOT NULL REFERENCES entities (id),
                type TEXT NOT NULL,
                position INTEGER NOT NULL,
                data TEXT NOT NULL,
                created_at REAL NOT NULL,
                UNIQUE (from_id, type, to_id),
                UNIQUE (from_id, type, position)
            )
            """,
            "CREATE INDEX edges_to ON edges (to_id)",
            """
            CREATE TABLE envelopes (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                entity_id TEXT NOT NULL REFERENCES entities (id),
                entity_seq INTEGER NOT NULL,
                ts REAL NOT NULL,
                body TEXT NOT NULL,
                UNIQUE (entity_id, entity_seq)
            )
            """,
            """
            CREATE TABLE messages (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                entity_id TEXT NOT NULL REFERENCES entities (id),
                message TEXT NOT NULL,
                data TEXT NOT NULL,
                sent_at REAL NOT NULL,
                consumed_by INTEGER
            )
            """,
            "CREATE INDEX messages_entity ON messages (entity_id, consumed_by)",
            """
            CREATE TABLE waits (
                entity_id TEXT NOT NULL REFERENCES entities (id),
                idx INTEGER NOT NULL,
                kind TEXT NOT NULL,
                prompt TEXT,
                data TEXT NOT NULL,
                deadline REAL,
                state TEXT NOT NULL,
                message_id INTEGER REFERENCES messages (id),
                created_at REAL NOT NULL,
                PRIMARY KEY (entity_id, idx)
            )
            """,
        ],
    ),
]

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

_ENTITY_COLUMNS = (
    "id, parent_id, name, type, general_type, status, data, result, error, attempt,"
    " lease_owner, lease_expires, created_at, modified_at, last_entity_seq"
)
_ENTITY_COLUMNS_E = ", ".join(f"e.{column.strip()}" for column in _ENTITY_COLUMNS.split(","))
_SELECT_ENTITY = f"SELECT {_ENTITY_COLUMNS} FROM entities"
_EDGE_COLUMNS = "id, from_id, to_id, type, position, data, created_at"
_MESSAGE_COLUMNS = "id, entity_id, message, data, sent_at, consumed_by"
_SELECT_WAIT = (
    "SELECT w.entity_id, w.idx, w.kind, w.prompt, w.data, w.deadline, w.state, w.created_at,"
    " m.id, m.entity_id, m.message, m.data, m.sent_at, m.consumed_by"
    " FROM waits AS w LEFT JOIN messages AS m ON m.id = w.message_id"
    " WHERE w.entity_id = ? AND w.idx = ?"
)
_ACTIVE = (EntityStatus.IN_PROGRESS.value, EntityStatus.WAITING.value)
_TERMINAL = (EntityStatus.COMPLETED.value, EntityStatus.CANCELLED.value)


@attrs.frozen
class SqliteStoreStatistics:
    """Counters of a :class:`SqliteStore` since it was created.

    ``writes`` counts write operations applied (committed or refused), ``batches`` the
    transactions they were grouped into, ``largest_batch`` the most operations one transaction
    held, and ``reads`` the read operations that completed.
    """

    writes: int
    batches: int
    largest_batch: int
    reads: int


class _State(enum.Enum):
    NEW = "new"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class _Op(Generic[T]):
    """One queued write: ``fn`` runs in the writer thread inside its own savepoint; ``task``
    waits (uncancellably) until the writer reschedules it."""

    __slots__ = ("error", "fn", "result", "task")

    def __init__(self, fn: Callable[[sqlite3.Connection], T], task: trio.lowlevel.Task) -> None:
        self.fn = fn
        self.task = task
        self.result: T | None = None
        self.error: BaseException | None = None


class _ReadSlot:
    """The connection a read thread is using, so that a cancelled reader can interrupt it."""

    __slots__ = ("connection", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connection: sqlite3.Connection | None = None

    def interrupt(self) -> None:
        with self.lock:
            if self.connection is not None:
                self.connection.interrupt()


class SqliteStore:
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

    Raises:
        TypeError, ValueError: an argument is invalid.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        synchronous: str = "NORMAL",
        busy_timeout: float = 30.0,
        max_batch: int = 1000,
        readers: int = 4,
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
        if not isinstance(read_only, bool):
            raise TypeError(f"SqliteStore() read_only must be a bool, got {read_only!r}")
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
        self._path = fspath
        self._read_only = read_only
        self._synchronous = synchronous.upper()
        self._busy_timeout = float(busy_timeout)
        self._max_batch = max_batch
        self._readers = readers
        self._state = _State.NEW
        self._write_conn: sqlite3.Connection | None = None
        self._read_conns: list[sqlite3.Connection] = []
        self._idle_readers: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._read_limiter = trio.CapacityLimiter(readers)
        self._write_limiter = trio.CapacityLimiter(1)
        self._queue: collections.deque[_Op[Any]] = collections.deque()
        self._work = trio.Event()
        self._closing = False
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._writes = 0
        self._batches = 0
        self._largest_batch = 0
        self._reads = 0

    @property
    def path(self) -> str:
        """The database file, as given."""
        return self._path

    @property
    def read_only(self) -> bool:
        """Whether the store was opened for reading only."""
        return self._read_only

    def __repr__(self) -> str:
        mode = " read-only" if self._read_only else ""
        return f"<SqliteStore {self._path!r}{mode} {self._state.value}>"

    def statistics(self) -> SqliteStoreStatistics:
        """How many writes, write transactions and reads the store has done (see
        :class:`SqliteStoreStatistics`)."""
        return SqliteStoreStatistics(
            writes=self._writes,
            batches=self._batches,
            largest_batch=self._largest_batch,
            reads=self._reads,
        )

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
        if self._state is not _State.NEW:
            raise RuntimeError(
                f"this SqliteStore is {self._state.value}; a store can be entered only once "
                "(create a new SqliteStore to open the file again)"
            )
        self._state = _State.OPENING
        try:
            await trio.to_thread.run_sync(self._open)
            if not self._read_only:
                nursery_cm = open_owned_nursery()
                nursery = await nursery_cm.__aenter__()
                self._nursery_cm = nursery_cm
                nursery.start_soon(self._writer, name=f"SqliteStore writer {self._path!r}")
        except BaseException:
            self._close_connections()
            self._state = _State.CLOSED
            raise
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Apply the writes still queued, stop the writer and close every connection.

        An exception raised by the block is never hidden: it propagates unchanged (together
        with the closing error in a group, should closing fail as well).
        """
        if self._state is not _State.OPEN:
            raise RuntimeError(f"this SqliteStore is {self._state.value}, not open")
        self._state = _State.CLOSING
        await aclose_after(self._close, exc)

    async def _close(self) -> None:
        try:
            nursery_cm, self._nursery_cm = self._nursery_cm, None
            if nursery_cm is not None:
                # The writer task is shielded: it drains the queue and returns even if the
                # surroundings are cancelled, so this wait always ends with the queue applied.
                # (The nursery must be exited outside any cancel scope opened here.)
                self._closing = True
                self._work.set()
                await nursery_cm.__aexit__(None, None, None)
        finally:
            with trio.CancelScope(shield=True):
                # Reads abandoned by a cancelled caller may still run in their threads: the
                # limiter is released only when a thread ends, so holding every token means
                # that no read uses a connection any more.
                tokens = [object() for _ in range(self._readers)]
                for token in tokens:
                    await self._read_limiter.acquire_on_behalf_of(token)
                try:
                    await trio.to_thread.run_sync(self._close_connections)
                finally:
                    for token in tokens:
                        self._read_limiter.release_on_behalf_of(token)
                    self._state = _State.CLOSED
        # Everything above ran shielded: deliver a cancellation now that the store is closed.
        await trio.lowlevel.checkpoint_if_cancelled()

    def _check_open(self) -> None:
        if self._state is not _State.OPEN:
            if self._state is _State.NEW or self._state is _State.OPENING:
                problem = "is not open"
            else:
                problem = "is closed"
            raise RuntimeError(
                f"this SqliteStore {problem}; use it inside `async with SqliteStore(...) as store:`"
            )

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise RuntimeError(
                f"this SqliteStore ({self._path!r}) was opened read-only; it cannot write"
            )

    # -- opening (in a worker thread) ----------------------------------------------------------

    def _connect(self, target: str, *, uri: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            target,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            uri=uri,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {round(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open(self) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise RuntimeError(
                f"SqliteStore needs SQLite {'.'.join(map(str, MIN_SQLITE_VERSION))} or newer; "
                f"this Python uses SQLite {sqlite3.sqlite_version}"
            )
        path = self._path
        if self._read_only:
            if not os.path.exists(path):
                raise FileNotFoundError(
                    errno.ENOENT, f"no entity store at {path!r} (opened read-only)", path
                )
            target, uri = pathlib.Path(path).resolve().as_uri() + "?mode=ro", True
        else:
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory):
                raise FileNotFoundError(
                    errno.ENOENT,
                    f"cannot create the entity store {path!r}: no directory {directory!r}",
                    directory,
                )
            target, uri = path, False
        try:
            try:
                if self._read_only:
                    first = self._connect(target, uri=True)
                    self._read_conns.append(first)
                    first.execute("PRAGMA query_only = ON")
                    _check_schema(first, path, migrate=False)
                else:
                    conn = self._connect(target, uri=False)
                    self._write_conn = conn
                    conn.execute(f"PRAGMA synchronous = {self._synchronous}")
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        raise StoreError(
                            f"cannot put the entity store {path!r} in WAL mode (it stays in "
                            f"{mode!r} mode)"
                        )
                    _check_schema(conn, path, migrate=True)
                while len(self._read_conns) < self._readers:
                    reader = self._connect(target, uri=uri)
                    self._read_conns.append(reader)
                    reader.execute("PRAGMA query_only = ON")
            except sqlite3.Error as exc:
                if exc.sqlite_errorcode == sqlite3.SQLITE_NOTADB:
                    raise StoreSchemaError(
                        f"{path!r} is not an SQLite database, so not a sluiceway entity store"
                    ) from exc
                raise StoreError(f"cannot open the entity store {path!r}: {exc}") from exc
        except BaseException:
            self._close_connections()
            raise
        self._idle_readers = list(self._read_conns)

    def _close_connections(self) -> None:
        conns = [*self._read_conns]
        if self._write_conn is not None:
            conns.append(self._write_conn)
        self._read_conns = []
        self._idle_readers = []
        self._write_conn = None
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # -- the writer ----------------------------------------------------------------------------

    async def _writer(self) -> None:
        # Shielded: queued writers wait shielded for their op, so the writer must apply every
        # op it is given even while the store's surroundings are cancelled. It stops when the
        # store closes and the queue is empty.
        with trio.CancelScope(shield=True):
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._work = trio.Event()
                    await self._work.wait()
                    continue
                count = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(count)]
                try:
                    await trio.to_thread.run_sync(
                        self._apply_batch, batch, limiter=self._write_limiter
                    )
                except Exception as exc:  # pragma: no cover - _apply_batch catches everything
                    _fail_batch(batch, exc)
                self._writes += count
                self._batches += 1
                self._largest_batch = max(self._largest_batch, count)
                for op in batch:
                    trio.lowlevel.reschedule(op.task)

    def _apply_batch(self, ops: Sequence[_Op[Any]]) -> None:
        """Run ``ops`` in one transaction, then commit (in the writer's worker thread).

        An op that raises is rolled back alone and keeps its error; if the transaction as a
        whole fails, it is rolled back and every op gets a :class:`StoreError`. Ops are first
        run without savepoints (they almost never fail); if one raises, the transaction is
        rolled back and the batch runs again with a savepoint around each op.
        """
        conn = self._write_conn
        try:
            if conn is None:
                raise RuntimeError("the write connection is closed")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for op in ops:
                    op.result = op.fn(conn)
            except Exception:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # the cause is raised below
                        conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")
                return
        except BaseException as exc:
            _fail_batch(ops, exc)
            return
        self._apply_batch_carefully(ops)

    def _apply_batch_carefully(self, ops: Sequence[_Op[Any]]) -> None:
        """:meth:`_apply_batch` with a savepoint around each op, so that the ops that fail are
        rolled back alone."""
        conn = self._write_conn
        try:
            if conn is None:
                raise RuntimeError("the write connection is closed")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for op in ops:
                    op.result = None
                    conn.execute("SAVEPOINT op")
                    try:
                        op.result = op.fn(conn)
                    except Exception as exc:
                        if not conn.in_transaction:
                            raise  # SQLite rolled the whole transaction back (disk full...)
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        if isinstance(exc, sqlite3.Error):
                            error: Exception = StoreError(f"the write failed: {exc}")
                            error.__cause__ = exc
                            op.error = error
                        else:
                            op.error = exc
                    else:
                        conn.execute("RELEASE op")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # the cause is raised below
                        conn.execute("ROLLBACK")
                raise
        except BaseException as exc:
            _fail_batch(ops, exc)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_writable()
        await trio.lowlevel.checkpoint_if_cancelled()
        op = _Op(fn, trio.lowlevel.current_task())
        self._queue.append(op)
        self._work.set()
        # Not cancellable (cheaper than a shielded scope): the caller always learns how its
        # write ended; a cancellation is delivered at its next checkpoint.
        await trio.lowlevel.wait_task_rescheduled(_not_abortable)
        error = op.error
        if error is not None:
            op.error = None
            try:
                raise error
            finally:
                del error
        return op.result  # type: ignore[return-value]  # set unless error

    # -- reads ---------------------------------------------------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        slot = _ReadSlot()
        try:
            result = await trio.to_thread.run_sync(
                self._run_read, fn, slot, limiter=self._read_limiter, abandon_on_cancel=True
            )
        except trio.Cancelled:
            slot.interrupt()
            raise
        self._reads += 1
        return result

    def _run_read(self, fn: Callable[[sqlite3.Connection], T], slot: _ReadSlot) -> T:
        with self._pool_lock:
            if not self._idle_readers:
                raise RuntimeError("this SqliteStore is closed")
            conn = self._idle_readers.pop()
        with slot.lock:
            slot.connection = conn
        try:
            conn.execute("BEGIN")
            try:
                result = fn(conn)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # interrupted mid-statement
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            raise StoreError(f"reading the entity store {self._path!r} failed: {exc}") from exc
        finally:
            with slot.lock:
                slot.connection = None
            with self._pool_lock:
                self._idle_readers.append(conn)

    # -- entities ------------------------------------------------------------------------------

    async def create_entity(
        self, new: NewEntity, *, strict: bool = False, owner: str | None = None
    ) -> tuple[EntityRecord, bool]:
        """Create ``new`` unless an entity with its name exists under its parent.

        Returns ``(record, created)``. If the name is taken, the existing entity is returned
        unchanged (its data is *not* updated) and ``created`` is ``False``; with
        ``strict=True`` that raises :class:`~sluiceway.DuplicateEntityError` instead. A child
        is created with the edge ``new.edge_type`` from its parent in the same transaction
        (its position follows the parent's other edges of that type).

        With ``owner``, the write is fenced by the parent's lease (a run creating its child):
        if ``owner`` does not hold it, nothing is created.

        Raises:
            EntityNotFoundError: ``new.parent_id`` names no entity.
            DuplicateEntityError: ``strict`` and the name is taken, or ``new.id`` is taken.
            LeaseLostError: ``owner`` was given and does not hold the parent's lease.
            TypeError, ValueError: ``new.data`` or ``new.edge_data`` is not JSON.
        """
        self._check_writable()
        if not isinstance(new, NewEntity):
            raise TypeError(f"create_entity() takes a NewEntity, got {new!r}")
        data = _dump_object(new.data, f"entity data of {new.name!r}")
        edge_data = _dump_object(new.edge_data, f"edge data of {new.name!r}")

        def write(conn: sqlite3.Connection) -> tuple[EntityRecord, bool]:
            if owner is not None and new.parent_id is not None:
                _fence(conn, new.parent_id, owner, f"create child {new.name!r}")
            return _create_entity(conn, new, data, edge_data, strict)

        return await self._write(write)

    async def get_entity(self, entity_id: str) -> EntityRecord:
        """The entity with this id.

        Raises:
            EntityNotFoundError: there is none.
        """
        return await self._read(lambda conn: _require_entity(conn, entity_id))

    async def find_entity(self, parent_id: str | None, name: str) -> EntityRecord | None:
        """The child of ``parent_id`` (a root if ``None``) called ``name``, if any."""
        return await self._read(lambda conn: _find_entity(conn, parent_id, name))

    async def children(self, parent_id: str) -> list[EntityRecord]:
        """The children of ``parent_id`` (created with it as parent), oldest first (by
        ``created_at``, then creation order); empty if there is no such entity."""

        def read(conn: sqlite3.Connection) -> list[EntityRecord]:
            rows = conn.execute(
                f"{_SELECT_ENTITY} WHERE parent_id = ? ORDER BY created_at, rowid", (parent_id,)
            )
            return [_entity(row) for row in rows]

        return await self._read(read)

    async def count_children(self, parent_id: str) -> dict[EntityStatus, int]:
        """How many children of ``parent_id`` are in each status (absent statuses omitted)."""

        def read(conn: sqlite3.Connection) -> dict[EntityStatus, int]:
            rows = conn.execute(
                "SELECT status, count(*) FROM entities WHERE parent_id = ? GROUP BY status",
                (parent_id,),
            )
            return {EntityStatus(status): count for status, count in rows}

        return await self._read(read)

    async def update_data(
        self, entity_id: str, owner: str | None, partial: Mapping[str, JSON], *, now: float
    ) -> dict[str, JSON]:
        """Merge ``partial`` into the entity's data (top-level keys are replaced, others kept)
        atomically, and return the new data. Fenced unless ``owner`` is ``None`` (an update
        from outside any run).

        Raises:
            EntityNotFoundError, LeaseLostError.
            TypeError, ValueError: ``partial`` is not a mapping of JSON values.
        """
        self._check_writable()
        _dump_object(partial, f"the data update of entity {entity_id!r}")
        patch = dict(partial)

        def write(conn: sqlite3.Connection) -> dict[str, JSON]:
            if owner is None:
                row = conn.execute(
                    "SELECT data FROM entities WHERE id = ?", (entity_id,)
                ).fetchone()
                if row is None:
                    raise _not_found(entity_id)
                data_json = row[0]
            else:
                data_json = _fence(conn, entity_id, owner, "data")[1]
            data: dict[str, JSON] = json.loads(data_json)
            data.update(patch)
            conn.execute(
                "UPDATE entities SET data = ?, modified_at = ? WHERE id = ?",
                (_dump(data, f"entity data of {entity_id!r}"), now, entity_id),
            )
            return data

        return await self._write(write)

    # -- runs and leases -----------------------------------------------------------------------

    async def claim(
        self,
        entity_id: str,
        owner: str,
        *,
        now: float,
        expires: float,
        started: Mapping[str, JSON],
        steal_from: str | None = None,
        fence: str | None = None,
    ) -> EntityRecord | None:
        """Take the entity's lease to run it, if nobody else holds it.

        The claim succeeds if the entity is PENDING, IN_PROGRESS, WAITING or FAILED, and its
        lease is free, expired (``lease_expires <= now``), already ``owner``'s, or held by
        ``steal_from`` (an owner the caller knows to be dead). It then sets the lease
        (``owner``, ``expires``), the status IN_PROGRESS (WAITING stays WAITING), adds 1 to
        ``attempt``, clears ``error``, and appends the envelope ``started`` (at ``now``), all
        in one transaction, and returns the updated record. Otherwise (COMPLETED, CANCELLED,
        or leased by someone else) it changes nothing and returns ``None``.

        Raises:
            EntityNotFoundError.
            TypeError, ValueError: ``started`` is not a mapping of JSON values.
        """
        self._check_writable()
        body = _dump_object(started, f"the started envelope of entity {entity_id!r}")

        def write(conn: sqlite3.Connection) -> EntityRecord | None:
            if fence is not None:
                _fence(conn, fence, owner, f"start child {entity_id!r}")
            return _claim(
                conn, entity_id, owner, now=now, expires=expires, body=body, steal_from=steal_from
            )

        return await self._write(write)

    async def create_and_claim(
        self,
        new: NewEntity,
        owner: str,
        *,
        now: float,
        expires: float,
        started: Mapping[str, JSON],
    ) -> tuple[EntityRecord, bool, bool]:
        """Create the entity ``new`` describes and claim it for ``owner``, in one transaction
        (a parent's run creating and starting its child). If its name is taken, the existing
        entity is returned unchanged and not claimed (the caller claims it the usual way).

        Returns ``(record, created, claimed)``: the record as it is afterwards, whether it was
        created, and whether ``owner`` holds its lease now (exactly when it was created).
        Fenced by the parent's lease.

        Raises:
            EntityNotFoundError: ``new.parent_id`` names no entity.
            DuplicateEntityError: ``new.id`` is taken by another entity.
            LeaseLostError: ``owner`` does not hold the parent's lease.
            TypeError, ValueError: data or ``started`` is not JSON.
        """
        self._check_writable()
        if not isinstance(new, NewEntity):
            raise TypeError(f"create_and_claim() takes a NewEntity, got {new!r}")
        data = _dump_object(new.data, f"entity data of {new.name!r}")
        edge_data = _dump_object(new.edge_data, f"edge data of {new.name!r}")
        body = _dump_object(started, f"the started envelope of entity {new.name!r}")

        def write(conn: sqlite3.Connection) -> tuple[EntityRecord, bool, bool]:
            if new.parent_id is not None:
                _fence(conn, new.parent_id, owner, f"create child {new.name!r}")
            existing = _find_entity(conn, new.parent_id, new.name)
            if existing is not None:
                return existing, False, False
            record = _insert_claimed(
                conn,
                new,
                data=data,
                edge_data=edge_data,
                owner=owner,
                now=now,
                expires=expires,
                body=body,
            )
            return record, True, True

        return await self._write(write)

    async def renew_leases(self, owner: str, *, expires: float) -> int:
        """Extend every lease ``owner`` holds to ``expires`` (a heartbeat); returns how many."""

        def write(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "UPDATE entities SET lease_expires = ? WHERE lease_owner = ?", (expires, owner)
            )
            return cursor.rowcount

        return await self._write(write)

    async def release(self, entity_id: str, owner: str) -> bool:
        """Give up the lease without finishing (the run was interrupted): the status stays as
        it is, so the entity is found by :meth:`active` and runs again. Returns ``False``
        (changing nothing) if ``owner`` did not hold it (or there is no such entity)."""

        def write(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE entities SET lease_owner = NULL, lease_expires = NULL"
                " WHERE id = ? AND lease_owner = ?",
                (entity_id, owner),
            )
            return cursor.rowcount == 1

        return await self._write(write)

    async def set_status(
        self,
        entity_id: str,
        owner: str,
        status: EntityStatus,
        *,
        now: float,
        envelope: Mapping[str, JSON] | None = None,
    ) -> None:
        """Move a running entity between IN_PROGRESS and WAITING, appending ``envelope`` if
        given, atomically. Fenced.

        Raises:
            ValueError: ``status`` is neither IN_PROGRESS nor WAITING.
            EntityNotFoundError, LeaseLostError.
        """
        self._check_writable()
        if status is not EntityStatus.IN_PROGRESS and status is not EntityStatus.WAITING:
            raise ValueError(
                f"set_status() moves an entity to IN_PROGRESS or WAITING, not {status!r}; "
                "use finish() or cancel() to end it"
            )
        body = (
            None
            if envelope is None
            else _dump_object(envelope, f"the envelope of entity {entity_id!r}")
        )

        def write(conn: sqlite3.Connection) -> None:
            _fence(conn, entity_id, owner, "status")
            conn.execute(
                "UPDATE entities SET status = ?, modified_at = ? WHERE id = ?",
                (status.value, now, entity_id),
            )
            if body is not None:
                _append(conn, entity_id, now, body)

        await self._write(write)

    async def finish(
        self,
        entity_id: str,
        owner: str,
        status: EntityStatus,
        *,
        now: float,
        result: JSON = None,
        error: Mapping[str, str] | None = None,
        envelopes: Sequence[Mapping[str, JSON]] = (),
    ) -> None:
        """End a run: set the status (COMPLETED with ``result``, or FAILED with ``error``),
        clear the lease and append ``envelopes`` (at ``now``), in one transaction. Fenced.

        Raises:
            ValueError: ``status`` is neither COMPLETED nor FAILED, or a ``result`` is given
                with FAILED or an ``error`` with COMPLETED.
            TypeError: ``error`` is not a mapping of strings, or a value is not JSON.
            EntityNotFoundError, LeaseLostError.
        """
        self._check_writable()
        if status is EntityStatus.COMPLETED:
            if error is not None:
                raise ValueError(f"finish() got an error for COMPLETED entity {entity_id!r}")
            result_json: str | None = _dump(result, f"the result of entity {entity_id!r}")
            error_json: str | None = None
        elif status is EntityStatus.FAILED:
            if result is not None:
                raise ValueError(f"finish() got a result for FAILED entity {entity_id!r}")
            result_json = None
            error_json = None
            if error is not None:
                if not isinstance(error, Mapping) or not all(
                    isinstance(key, str) and isinstance(value, str) for key, value in error.items()
                ):
                    raise TypeError(
                        f"finish() error must map str to str (type, message), got {error!r}"
                    )
                error_json = _dump(dict(error), f"the error of entity {entity_id!r}")
        else:
            raise ValueError(
                f"finish() ends a run as COMPLETED or FAILED, not {status!r}; "
                "use cancel() to cancel an entity"
            )
        bodies = _dump_envelopes(envelopes, entity_id)

        def write(conn: sqlite3.Connection) -> None:
            last = _bump_seq(conn, entity_id, owner, len(bodies), "finish")
            conn.execute(
                "UPDATE entities SET status = ?, result = ?, error = ?, lease_owner = NULL,"
                " lease_expires = NULL, modified_at = ? WHERE id = ?",
                (status.value, result_json, error_json, now, entity_id),
            )
            _insert_envelopes(conn, entity_id, last, now, bodies)

        await self._write(write)

    async def cancel(
        self, entity_id: str, *, now: float, envelope: Mapping[str, JSON]
    ) -> list[str]:
        """Cancel the entity and every descendant that is not COMPLETED or CANCELLED already:
        set CANCELLED, clear their leases (fencing out their runs) and append ``envelope`` to
        each, in one transaction. Returns the ids cancelled, the entity first, then the
        descendants by depth and age (empty if the entity was already COMPLETED or
        CANCELLED). Descendants below a COMPLETED or CANCELLED entity are cancelled too if
        they are not finished themselves.

        Raises:
            EntityNotFoundError.
            TypeError, ValueError: ``envelope`` is not a mapping of JSON values.
        """
        self._check_writable()
        body = _dump_object(envelope, f"the cancel envelope of entity {entity_id!r}")

        def write(conn: sqlite3.Connection) -> list[str]:
            row = conn.execute("SELECT status FROM entities WHERE id = ?", (entity_id,)).fetchone()
            if row is None:
                raise _not_found(entity_id)
            if row[0] in _TERMINAL:
                return []
            rows = conn.execute(
                """
                WITH RECURSIVE subtree (id, depth) AS (
                    SELECT ?, 0
                    UNION ALL
                    SELECT e.id, subtree.depth + 1
                    FROM entities AS e JOIN subtree ON e.parent_id = subtree.id
                )
                SELECT e.id FROM subtree JOIN entities AS e ON e.id = subtree.id
                WHERE e.status NOT IN (?, ?)
                ORDER BY subtree.depth, e.created_at, e.rowid
                """,
                (entity_id, *_TERMINAL),
            ).fetchall()
            ids = [row[0] for row in rows]
            for cancelled in ids:
                conn.execute(
                    "UPDATE entities SET status = ?, lease_owner = NULL, lease_expires = NULL,"
                    " modified_at = ? WHERE id = ?",
                    (EntityStatus.CANCELLED.value, now, cancelled),
                )
                _append(conn, cancelled, now, body)
            return ids

        return await self._write(write)

    async def active(self) -> list[EntityRecord]:
        """The IN_PROGRESS or WAITING entities, whoever holds their lease (held, expired or
        free), topmost only: an entity whose parent is also IN_PROGRESS or WAITING is left out,
        because running the parent runs it again. Oldest first. The runtime decides which of
        them are abandoned (lease free or expired, or held by an owner it knows is dead)."""

        def read(conn: sqlite3.Connection) -> list[EntityRecord]:
            rows = conn.execute(
                f"SELECT {_ENTITY_COLUMNS_E} FROM entities AS e"
                " LEFT JOIN entities AS p ON p.id = e.parent_id"
                " WHERE e.status IN (?, ?) AND (p.id IS NULL OR p.status NOT IN (?, ?))"
                " ORDER BY e.created_at, e.rowid",
                (*_ACTIVE, *_ACTIVE),
            )
            return [_entity(row) for row in rows]

        return await self._read(read)

    # -- envelopes -----------------------------------------------------------------------------

    async def append_envelopes(
        self, owner: str, items: Sequence[tuple[str, float, Mapping[str, JSON]]]
    ) -> list[int]:
        """Append ``(entity_id, ts, body)`` envelopes in order; returns their ``seq`` numbers.
        Fenced per entity: if ``owner`` does not hold the lease of any of them, nothing is
        appended.

        Raises:
            EntityNotFoundError, LeaseLostError.
            TypeError, ValueError: an item is not ``(entity_id, ts, mapping of JSON values)``.
        """
        self._check_writable()
        prepared: list[tuple[str, float, str]] = []
        for item in items:
            if not isinstance(item, tuple) or len(item) != 3:
                raise TypeError(
                    f"append_envelopes() items are (entity_id, ts, body) tuples, got {item!r}"
                )
            entity_id, ts, body = item
            prepared.append(
                (entity_id, ts, _dump_object(body, f"an envelope of entity {entity_id!r}"))
            )
        if not prepared:
            await trio.lowlevel.checkpoint()
            return []

        def write(conn: sqlite3.Connection) -> list[int]:
            if len(prepared) == 1:  # the common case: one envelope of one entity
                entity_id, ts, body = prepared[0]
                last = _bump_seq(conn, entity_id, owner, 1, "envelopes")
                return _insert_envelopes(conn, entity_id, last, ts, [body])
            for entity_id in dict.fromkeys(entity_id for entity_id, _, _ in prepared):
                _fence(conn, entity_id, owner, "envelopes")
            return [_append(conn, entity_id, ts, body) for entity_id, ts, body in prepared]

        return await self._write(write)

    async def read_envelopes(
        self,
        entity_id: str,
        *,
        after_seq: int = 0,
        limit: int = 1000,
        subtree: bool = True,
    ) -> list[StoredEnvelope]:
        """Envelopes with ``seq > after_seq`` in ``seq`` order, at most ``limit``: of the entity
        and all its descendants (``subtree=True``) or of the entity alone.

        Raises:
            EntityNotFoundError.
            ValueError: ``limit`` is negative.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"read_envelopes() limit must be an int >= 0, got {limit!r}")

        def read(conn: sqlite3.Connection) -> list[StoredEnvelope]:
            if conn.execute("SELECT 1 FROM entities WHERE id = ?", (entity_id,)).fetchone() is None:
                raise _not_found(entity_id)
            if subtree:
                rows = conn.execute(
                    """
                    WITH RECURSIVE subtree (id) AS (
                        SELECT ?
                        UNION ALL
                        SELECT e.id FROM entities AS e JOIN subtree ON e.parent_id = subtree.id
                    )
                    SELECT v.seq, v.entity_id, v.entity_seq, v.ts, v.body, e.type, e.name
                    FROM envelopes AS v JOIN entities AS e ON e.id = v.entity_id
                    WHERE v.seq > ? AND v.entity_id IN subtree
                    ORDER BY v.seq LIMIT ?
                    """,
                    (entity_id, after_seq, limit),
                )
            else:
                rows = conn.execute(
                    "SELECT v.seq, v.entity_id, v.entity_seq, v.ts, v.body, e.type, e.name"
                    " FROM envelopes AS v JOIN entities AS e ON e.id = v.entity_id"
                    " WHERE v.entity_id = ? AND v.seq > ? ORDER BY v.seq LIMIT ?",
                    (entity_id, after_seq, limit),
                )
            return [
                StoredEnvelope(
                    seq=seq,
                    entity_id=owner_id,
                    entity_seq=entity_seq,
                    ts=ts,
                    body=json.loads(body),
                    entity_type=type_name,
                    entity_name=name,
                )
                for seq, owner_id, entity_seq, ts, body, type_name, name in rows
            ]

        return await self._read(read)

    async def last_seq(self) -> int:
        """The highest ``seq`` stored (0 if none)."""

        def read(conn: sqlite3.Connection) -> int:
            value = conn.execute("SELECT max(seq) FROM envelopes").fetchone()[0]
            return 0 if value is None else int(value)

        return await self._read(read)

    # -- edges ---------------------------------------------------------------------------------

    async def add_edge(
        self,
        from_id: str,
        to_id: str,
        edge_type: str,
        *,
        now: float,
        data: Mapping[str, JSON] | None = None,
        owner: str | None = None,
    ) -> EdgeRecord:
        """Add the edge, or return it unchanged if ``(from_id, edge_type, to_id)`` exists.
        Its ``position`` is one more than the highest of ``(from_id, edge_type)``. With
        ``owner``, fenced by ``from_id``'s lease (a run connecting its entity).

        Raises:
            EntityNotFoundError: either end names no entity.
            LeaseLostError: ``owner`` was given and does not hold ``from_id``'s lease.
            TypeError, ValueError: ``data`` is not a mapping of JSON values.
        """
        self._check_writable()
        data_json = _dump_object(
            {} if data is None else data, f"the data of edge {from_id!r} -{edge_type}-> {to_id!r}"
        )

        def write(conn: sqlite3.Connection) -> EdgeRecord:
            for end in (from_id, to_id):
                if conn.execute("SELECT 1 FROM entities WHERE id = ?", (end,)).fetchone() is None:
                    raise _not_found(end)
            if owner is not None:
                _fence(conn, from_id, owner, f"{edge_type} edge")
            return _add_edge(conn, from_id, to_id, edge_type, now=now, data=data_json)

        return await self._write(write)

    async def edges(self, entity_id: str) -> tuple[list[EdgeRecord], list[EdgeRecord]]:
        """``(outgoing, incoming)`` edges of the entity, each by type, then position."""

        def read(conn: sqlite3.Connection) -> tuple[list[EdgeRecord], list[EdgeRecord]]:
            outgoing = conn.execute(
                f"SELECT {_EDGE_COLUMNS} FROM edges WHERE from_id = ? ORDER BY type, position",
                (entity_id,),
            )
            out = [_edge(row) for row in outgoing]
            incoming = conn.execute(
                f"SELECT {_EDGE_COLUMNS} FROM edges WHERE to_id = ? ORDER BY type, position, id",
                (entity_id,),
            )
            return out, [_edge(row) for row in incoming]

        return await self._read(read)

    # -- messages and durable waits ------------------------------------------------------------

    async def send_message(
        self, entity_id: str, message: str, data: JSON, *, now: float
    ) -> MessageRecord:
        """Store a message for the entity; it is kept until a wait receives it.

        Raises:
            EntityNotFoundError.
            EntityNotWaitingError: the entity is COMPLETED or CANCELLED.
            TypeError, ValueError: ``data`` is not JSON.
        """
        self._check_writable()
        if not isinstance(message, str):
            raise TypeError(f"send_message() message must be a str, got {message!r}")
        data_json = _dump(data, f"the data of message {message!r} to entity {entity_id!r}")

        def write(conn: sqlite3.Connection) -> MessageRecord:
            row = conn.execute("SELECT status FROM entities WHERE id = ?", (entity_id,)).fetchone()
            if row is None:
                raise _not_found(entity_id)
            if row[0] in _TERMINAL:
                raise EntityNotWaitingError(
                    f"entity {entity_id!r} is {row[0]}; it cannot receive message {message!r}"
                )
            cursor = conn.execute(
                "INSERT INTO messages (entity_id, message, data, sent_at) VALUES (?, ?, ?, ?)",
                (entity_id, message, data_json, now),
            )
            assert cursor.lastrowid is not None
            return MessageRecord(
                id=cursor.lastrowid,
                entity_id=entity_id,
                message=message,
                data=json.loads(data_json),
                sent_at=now,
                consumed_by=None,
            )

        return await self._write(write)

    async def messages(self, entity_id: str) -> list[MessageRecord]:
        """Every message sent to the entity, oldest first."""

        def read(conn: sqlite3.Connection) -> list[MessageRecord]:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE entity_id = ? ORDER BY id",
                (entity_id,),
            )
            return [_message(row) for row in rows]

        return await self._read(read)

    async def begin_wait(
        self,
        entity_id: str,
        owner: str,
        index: int,
        kind: WaitKind,
        *,
        now: float,
        prompt: str | None = None,
        data: JSON = None,
        deadline: float | None = None,
        envelope: Mapping[str, JSON] | None = None,
    ) -> WaitRecord:
        """Start wait ``index`` of the entity, or return it as stored if it exists (a re-run
        reaching a wait it made before: nothing else changes then).

        A new wait is stored with state WAITING; for a message wait the entity's status
        becomes WAITING and ``envelope`` (the WAITING envelope) is appended, in the same
        transaction. Fenced.

        Raises:
            EntityNotFoundError, LeaseLostError.
            ValueError: ``index`` is not an int >= 1 (waits are numbered from 1).
            TypeError: ``kind`` is not a :class:`WaitKind`, or a value is not JSON.
        """
        self._check_writable()
        _check_index(index)
        if not isinstance(kind, WaitKind):
            raise TypeError(f"begin_wait() kind must be a WaitKind, got {kind!r}")
        data_json = _dump(data, f"the data of wait {index} of entity {entity_id!r}")
        body = (
            None
            if envelope is None
            else _dump_object(envelope, f"the waiting envelope of entity {entity_id!r}")
        )

        def write(conn: sqlite3.Connection) -> WaitRecord:
            _fence(conn, entity_id, owner, "wait")
            existing = _get_wait(conn, entity_id, index)
            if existing is not None:
                return existing
            conn.execute(
                "INSERT INTO waits (entity_id, idx, kind, prompt, data, deadline, state,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entity_id,
                    index,
                    kind.value,
                    prompt,
                    data_json,
                    deadline,
                    WaitState.WAITING.value,
                    now,
                ),
            )
            if kind is WaitKind.MESSAGE:
                conn.execute(
                    "UPDATE entities SET status = ?, modified_at = ? WHERE id = ?",
                    (EntityStatus.WAITING.value, now, entity_id),
                )
                if body is not None:
                    _append(conn, entity_id, now, body)
            wait = _get_wait(conn, entity_id, index)
            assert wait is not None
            return wait

        return await self._write(write)

    async def take_message(
        self, entity_id: str, owner: str, index: int, *, now: float
    ) -> WaitRecord:
        """Give wait ``index`` the oldest unread message, if it has none yet and one is
        stored: the message is marked read by it, the wait ANSWERED, and the entity
        IN_PROGRESS again, atomically. Returns the wait as it is then (still WAITING if there
        was no message). A wait that is no longer WAITING (answered, timed out) or is a timer
        is returned unchanged. Fenced.

        Raises:
            EntityNotFoundError: the entity, or its wait ``index``, does not exist.
            LeaseLostError.
        """
        self._check_writable()

        def write(conn: sqlite3.Connection) -> WaitRecord:
            _fence(conn, entity_id, owner, "message")
            wait = _require_wait(conn, entity_id, index)
            if (
                wait.state is not WaitState.WAITING
                or wait.kind is not WaitKind.MESSAGE
                or wait.message is not None
            ):
                return wait
            row = conn.execute(
                "SELECT id FROM messages WHERE entity_id = ? AND consumed_by IS NULL"
                " ORDER BY id LIMIT 1",
                (entity_id,),
            ).fetchone()
            if row is None:
                return wait
            conn.execute("UPDATE messages SET consumed_by = ? WHERE id = ?", (index, row[0]))
            conn.execute(
                "UPDATE waits SET state = ?, message_id = ? WHERE entity_id = ? AND idx = ?",
                (WaitState.ANSWERED.value, row[0], entity_id, index),
            )
            conn.execute(
                "UPDATE entities SET status = ?, modified_at = ? WHERE id = ?",
                (EntityStatus.IN_PROGRESS.value, now, entity_id),
            )
            return _require_wait(conn, entity_id, index)

        return await self._write(write)

    async def end_wait(
        self, entity_id: str, owner: str, index: int, state: WaitState, *, now: float
    ) -> WaitRecord:
        """Close a wait that is still WAITING as TIMED_OUT or ELAPSED (the entity becomes
        IN_PROGRESS again); a wait that is no longer WAITING is returned unchanged (a message
        may have arrived first). Fenced.

        Raises:
            ValueError: ``state`` is WAITING or ANSWERED.
            EntityNotFoundError: the entity, or its wait ``index``, does not exist.
            LeaseLostError.
        """
        self._check_writable()
        if state is not WaitState.TIMED_OUT and state is not WaitState.ELAPSED:
            raise ValueError(f"end_wait() closes a wait as TIMED_OUT or ELAPSED, not {state!r}")

        def write(conn: sqlite3.Connection) -> WaitRecord:
            _fence(conn, entity_id, owner, "wait")
            wait = _require_wait(conn, entity_id, index)
            if wait.state is not WaitState.WAITING:
                return wait
            conn.execute(
                "UPDATE waits SET state = ? WHERE entity_id = ? AND idx = ?",
                (state.value, entity_id, index),
            )
            conn.execute(
                "UPDATE entities SET status = ?, modified_at = ? WHERE id = ?",
                (EntityStatus.IN_PROGRESS.value, now, entity_id),
            )
            return _require_wait(conn, entity_id, index)

        return await self._write(write)

    async def get_wait(self, entity_id: str, index: int) -> WaitRecord | None:
        """Wait ``index`` of the entity, if it was made."""
        return await self._read(lambda conn: _get_wait(conn, entity_id, index))


# -- JSON ------------------------------------------------------------------------------------------


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type_name(value)} {value!r} is not JSON serializable")


def _dump(value: object, what: str) -> str:
    """``value`` as compact JSON, or a ``TypeError``/``ValueError`` naming ``what``."""
    try:
        return json.dumps(
            value,
            separators=(",", ":"),
            allow_nan=False,
            ensure_ascii=False,
            default=_json_default,
        )
    except (TypeError, ValueError, RecursionError) as exc:
        kind = ValueError if isinstance(exc, ValueError | RecursionError) else TypeError
        raise kind(f"{what} is not JSON: {exc}") from exc


def _dump_object(value: object, what: str) -> str:
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping (a JSON object), got {type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"{what} has a key that is not a str: {key!r}")
    return _dump(dict(value), what)


def _dump_envelopes(envelopes: Iterable[Mapping[str, JSON]], entity_id: str) -> list[str]:
    return [_dump_object(body, f"an envelope of entity {entity_id!r}") for body in envelopes]


# -- rows ----------------------------------------------------------------------------------------


def _entity(row: Sequence[Any]) -> EntityRecord:
    (
        entity_id,
        parent_id,
        name,
        type_,
        general_type,
        status,
        data,
        result,
        error,
        attempt,
        lease_owner,
        lease_expires,
        created_at,
        modified_at,
        last_entity_seq,
    ) = row
    return EntityRecord(
        id=entity_id,
        parent_id=parent_id,
        name=name,
        type=type_,
        general_type=general_type,
        status=EntityStatus(status),
        data=json.loads(data),
        result=None if result is None else json.loads(result),
        error=None if error is None else json.loads(error),
        attempt=attempt,
        lease_owner=lease_owner,
        lease_expires=lease_expires,
        created_at=created_at,
        modified_at=modified_at,
        last_entity_seq=last_entity_seq,
    )


def _edge(row: Sequence[Any]) -> EdgeRecord:
    edge_id, from_id, to_id, edge_type, position, data, created_at = row
    return EdgeRecord(
        id=edge_id,
        from_id=from_id,
        to_id=to_id,
        type=edge_type,
        position=position,
        data=json.loads(data),
        created_at=created_at,
    )


def _message(row: Sequence[Any]) -> MessageRecord:
    message_id, entity_id, message, data, sent_at, consumed_by = row
    return MessageRecord(
        id=message_id,
        entity_id=entity_id,
        message=message,
        data=json.loads(data),
        sent_at=sent_at,
        consumed_by=consumed_by,
    )


def _not_found(entity_id: str) -> EntityNotFoundError:
    return EntityNotFoundError(f"no entity has the id {entity_id!r}")


def _check_index(index: int) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or index < 1:
        raise ValueError(f"a wait index is an int >= 1 (waits are numbered from 1), got {index!r}")


def _fail_batch(ops: Iterable[_Op[Any]], cause: BaseException) -> None:
    ops = list(ops)
    for op in ops:
        error = StoreError(
            f"a write transaction of {len(ops)} operation(s) failed and was rolled back: "
            f"{type_name(cause)}: {cause}"
        )
        error.__cause__ = cause
        op.result = None
        op.error = error


# -- operations (run in a worker thread, inside a transaction) ----------------------------------


def _require_entity(conn: sqlite3.Connection, entity_id: str) -> EntityRecord:
    row = conn.execute(f"{_SELECT_ENTITY} WHERE id = ?", (entity_id,)).fetchone()
    if row is None:
        raise _not_found(entity_id)
    return _entity(row)


def _find_entity(conn: sqlite3.Connection, parent_id: str | None, name: str) -> EntityRecord | None:
    if parent_id is None:
        row = conn.execute(
            f"{_SELECT_ENTITY} WHERE parent_id IS NULL AND name = ?", (name,)
        ).fetchone()
    else:
        row = conn.execute(
            f"{_SELECT_ENTITY} WHERE parent_id = ? AND name = ?", (parent_id, name)
        ).fetchone()
    return None if row is None else _entity(row)


def _fence(conn: sqlite3.Connection, entity_id: str, owner: str, what: str) -> tuple[Any, ...]:
    """``(lease_owner, data)`` of the entity if ``owner`` holds its lease; raises otherwise."""
    row = conn.execute(
        "SELECT lease_owner, data FROM entities WHERE id = ?", (entity_id,)
    ).fetchone()
    if row is None:
        raise _not_found(entity_id)
    if row[0] != owner:
        holder = "nobody holds it" if row[0] is None else f"{row[0]!r} holds it"
        raise LeaseLostError(
            f"{owner!r} no longer holds the lease of entity {entity_id!r} ({holder}); "
            f"its {what} write was refused"
        )
    return tuple(row)


def _append(conn: sqlite3.Connection, entity_id: str, ts: float, body: str) -> int:
    row = conn.execute(
        "UPDATE entities SET last_entity_seq = last_entity_seq + 1 WHERE id = ?"
        " RETURNING last_entity_seq",
        (entity_id,),
    ).fetchone()
    if row is None:
        raise _not_found(entity_id)
    cursor = conn.execute(
        "INSERT INTO envelopes (entity_id, entity_seq, ts, body) VALUES (?, ?, ?, ?)",
        (entity_id, row[0], ts, body),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _add_edge(
    conn: sqlite3.Connection, from_id: str, to_id: str, edge_type: str, *, now: float, data: str
) -> EdgeRecord:
    row = conn.execute(
        f"SELECT {_EDGE_COLUMNS} FROM edges WHERE from_id = ? AND type = ? AND to_id = ?",
        (from_id, edge_type, to_id),
    ).fetchone()
    if row is not None:
        return _edge(row)
    row = conn.execute(
        "INSERT INTO edges (from_id, to_id, type, position, data, created_at)"
        " VALUES (?, ?, ?, (SELECT coalesce(max(position), 0) + 1 FROM edges"
        " WHERE from_id = ? AND type = ?), ?, ?)"
        f" RETURNING {_EDGE_COLUMNS}",
        (from_id, to_id, edge_type, from_id, edge_type, data, now),
    ).fetchone()
    return _edge(row)


def _claim(
    conn: sqlite3.Connection,
    entity_id: str,
    owner: str,
    *,
    now: float,
    expires: float,
    body: str,
    steal_from: str | None,
) -> EntityRecord | None:
    row = conn.execute(
        "SELECT status, lease_owner, lease_expires FROM entities WHERE id = ?", (entity_id,)
    ).fetchone()
    if row is None:
        raise _not_found(entity_id)
    status, holder, holder_expires = row
    if status in _TERMINAL:
        return None
    free = (
        holder is None
        or holder == owner
        or (steal_from is not None and holder == steal_from)
        or holder_expires is None
        or holder_expires <= now
    )
    if not free:
        return None
    new_status = (
        EntityStatus.WAITING.value
        if status == EntityStatus.WAITING.value
        else EntityStatus.IN_PROGRESS.value
    )
    conn.execute(
        "UPDATE entities SET lease_owner = ?, lease_expires = ?, status = ?,"
        " attempt = attempt + 1, error = NULL, modified_at = ? WHERE id = ?",
        (owner, expires, new_status, now, entity_id),
    )
    _append(conn, entity_id, now, body)
    return _require_entity(conn, entity_id)


def _insert_claimed(
    conn: sqlite3.Connection,
    new: NewEntity,
    *,
    data: str,
    edge_data: str,
    owner: str,
    now: float,
    expires: float,
    body: str,
) -> EntityRecord:
    """Insert ``new`` already claimed by ``owner`` (attempt 1, its STARTED envelope as entity
    sequence number 1), with its edge from its parent: three statements, no re-read."""
    try:
        conn.execute(
            f"INSERT INTO entities ({_ENTITY_COLUMNS}) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, NULL, NULL, 1, ?, ?, ?, ?, 1)",
            (
                new.id,
                new.parent_id,
                new.name,
                new.type,
                new.general_type,
                EntityStatus.IN_PROGRESS.value,
                data,
                owner,
                expires,
                new.created_at,
                now,
            ),
        )
    except sqlite3.IntegrityError as exc:
        raise DuplicateEntityError(f"the entity id {new.id!r} is taken") from exc
    if new.parent_id is not None:
        conn.execute(
            "INSERT INTO edges (from_id, to_id, type, position, data, created_at)"
            " VALUES (?, ?, ?, (SELECT coalesce(max(position), 0) + 1 FROM edges"
            " WHERE from_id = ? AND type = ?), ?, ?)",
            (
                new.parent_id,
                new.id,
                new.edge_type,
                new.parent_id,
                new.edge_type,
                edge_data,
                new.created_at,
            ),
        )
    conn.execute(
        "INSERT INTO envelopes (entity_id, entity_seq, ts, body) VALUES (?, 1, ?, ?)",
        (new.id, now, body),
    )
    return EntityRecord(
        id=new.id,
        parent_id=new.parent_id,
        name=new.name,
        type=new.type,
        general_type=new.general_type,
        status=EntityStatus.IN_PROGRESS,
        data=json.loads(data),
        result=None,
        error=None,
        attempt=1,
        lease_owner=owner,
        lease_expires=expires,
        created_at=new.created_at,
        modified_at=now,
        last_entity_seq=1,
    )


def _bump_seq(conn: sqlite3.Connection, entity_id: str, owner: str, count: int, what: str) -> int:
    """Reserve ``count`` entity sequence numbers for a fenced write; returns the last one.
    Raises (through :func:`_fence`) if ``owner`` does not hold the lease."""
    row = conn.execute(
        "UPDATE entities SET last_entity_seq = last_entity_seq + ?"
        " WHERE id = ? AND lease_owner = ? RETURNING last_entity_seq",
        (count, entity_id, owner),
    ).fetchone()
    if row is None:
        _fence(conn, entity_id, owner, what)  # raises: not found, or the lease is lost
        raise AssertionError("unreachable")  # pragma: no cover
    return int(row[0])


def _insert_envelopes(
    conn: sqlite3.Connection, entity_id: str, last: int, ts: float, bodies: Sequence[str]
) -> list[int]:
    """Insert ``bodies`` numbered up to ``last`` (reserved by :func:`_bump_seq`)."""
    seqs = []
    first = last - len(bodies) + 1
    for offset, body in enumerate(bodies):
        cursor = conn.execute(
            "INSERT INTO envelopes (entity_id, entity_seq, ts, body) VALUES (?, ?, ?, ?)",
            (entity_id, first + offset, ts, body),
        )
        assert cursor.lastrowid is not None
        seqs.append(cursor.lastrowid)
    return seqs


def _not_abortable(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


def _create_entity(
    conn: sqlite3.Connection, new: NewEntity, data: str, edge_data: str, strict: bool
) -> tuple[EntityRecord, bool]:
    if new.parent_id is not None:
        parent = conn.execute("SELECT 1 FROM entities WHERE id = ?", (new.parent_id,)).fetchone()
        if parent is None:
            raise EntityNotFoundError(
                f"no entity has the id {new.parent_id!r} (the parent of {new.name!r})"
            )
    existing = _find_entity(conn, new.parent_id, new.name)
    if existing is not None:
        if strict:
            where = "among the roots" if new.parent_id is None else f"under {new.parent_id!r}"
            raise DuplicateEntityError(
                f"an entity called {new.name!r} exists {where} already ({existing.id})"
            )
        return existing, False
    if conn.execute("SELECT 1 FROM entities WHERE id = ?", (new.id,)).fetchone() is not None:
        raise DuplicateEntityError(f"the entity id {new.id!r} is taken")
    conn.execute(
        f"INSERT INTO entities ({_ENTITY_COLUMNS}) VALUES"
        " (?, ?, ?, ?, ?, ?, ?, NULL, NULL, 0, NULL, NULL, ?, ?, 0)",
        (
            new.id,
            new.parent_id,
            new.name,
            new.type,
            new.general_type,
            EntityStatus.PENDING.value,
            data,
            new.created_at,
            new.created_at,
        ),
    )
    if new.parent_id is not None:
        _add_edge(conn, new.parent_id, new.id, new.edge_type, now=new.created_at, data=edge_data)
    return _require_entity(conn, new.id), True


def _get_wait(conn: sqlite3.Connection, entity_id: str, index: int) -> WaitRecord | None:
    row = conn.execute(_SELECT_WAIT, (entity_id, index)).fetchone()
    if row is None:
        return None
    (wait_entity, idx, kind, prompt, data, deadline, state, created_at, *message) = row
    return WaitRecord(
        entity_id=wait_entity,
        index=idx,
        kind=WaitKind(kind),
        prompt=prompt,
        data=json.loads(data),
        deadline=deadline,
        state=WaitState(state),
        message=None if message[0] is None else _message(message),
        created_at=created_at,
    )


def _require_wait(conn: sqlite3.Connection, entity_id: str, index: int) -> WaitRecord:
    wait = _get_wait(conn, entity_id, index)
    if wait is None:
        raise EntityNotFoundError(f"entity {entity_id!r} has no wait {index}")
    return wait


# -- schema ------------------------------------------------------------------------------------


def _check_schema(conn: sqlite3.Connection, path: str, *, migrate: bool) -> None:
    """Create, migrate (``migrate``) or just verify the schema of an opened database."""
    versions = [version for version, _ in MIGRATIONS]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"MIGRATIONS must be numbered 1, 2, 3... in order, got {versions}")
    latest = versions[-1]
    if migrate:
        conn.execute("BEGIN IMMEDIATE")
    else:
        conn.execute("BEGIN")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if objects == 0 and version == 0:
            if not migrate:
                raise StoreSchemaError(
                    f"{path!r} is not a sluiceway entity store (it is an empty database)"
                )
        else:
            has_meta = (
                conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
                ).fetchone()
                is not None
            )
            application = None
            if has_meta:
                row = conn.execute("SELECT value FROM meta WHERE key = 'application'").fetchone()
                application = None if row is None else row[0]
            if application != APPLICATION or version < 1:
                raise StoreSchemaError(
                    f"{path!r} is not a sluiceway entity store (it is an SQLite database "
                    "that something else wrote)"
                )
            if version > latest:
                raise StoreSchemaError(
                    f"the entity store {path!r} was written by a newer sluiceway (schema "
                    f"version {version}; this sluiceway knows versions up to {latest}); "
                    "upgrade sluiceway to open it"
                )
            if version < latest and not migrate:
                raise StoreSchemaError(
                    f"the entity store {path!r} has schema version {version} and needs "
                    f"migrating to version {latest}; open it once without read_only to "
                    "migrate it"
                )
        for number, statements in MIGRATIONS:
            if number <= version:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(number)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
