"""The connections of one SQLite file: a writer that groups concurrent writes into one
transaction (group commit), and a small pool of readers.

Writes go through a single writer task; each write is a function run inside the batch's
transaction (first without savepoints; if one raises, the batch runs again with a savepoint
around each write, so a refused write is rolled back alone and the rest commits). Reads run on
read connections; in WAL mode they never wait for the writer. By default SQLite runs in worker
threads; with ``threads=False`` every call runs on the trio thread instead, so virtual time
(``trio.testing.MockClock``) cannot move while a write is under way.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import pathlib
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
import trio

from .._errors import StoreError, StoreSchemaError
from ._group_commit import GroupCommit, Op, fail_batch
from ._lifetime import Lifetime
from ._rows import State
from ._sql import Notes, Tx
from ._sqlite_schema import MIN_SQLITE_VERSION, check_schema

T = TypeVar("T")


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


@functools.lru_cache(maxsize=512)
def _qmarks(query: str) -> str:
    """A statement of ``_sql`` (``%s`` placeholders) in SQLite's ``?`` style."""
    return query.replace("%s", "?").replace("%%", "%")


class SqliteTx:
    """An operation's view of a transaction on a SQLite connection (see ``_sql.Tx``)."""

    __slots__ = ("conn", "notes")

    creation_order = "rowid"
    for_update = ""  # one writer at a time: nothing to lock
    skip_locked = ""
    unindexed = "+"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.notes = Notes()  # one process's SQLite store tells nobody

    def execute(self, query: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(_qmarks(query), params)

    def insert_envelopes(self, rows: Sequence[tuple[str, int, float, str]]) -> list[int]:
        seqs = []
        for row in rows:
            cursor = self.conn.execute(
                "INSERT INTO envelopes (entity_id, entity_seq, ts, body) VALUES (?, ?, ?, ?)", row
            )
            assert cursor.lastrowid is not None
            seqs.append(cursor.lastrowid)
        return seqs

    def is_duplicate(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.IntegrityError)


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


class SqliteDatabase(Lifetime):
    """The connections, the writer task and the readers of one store (see the module
    documentation). :class:`~sluiceway.SqliteStore` checks its arguments and owns one."""

    kind = "SqliteStore"

    def __init__(
        self,
        path: str,
        *,
        read_only: bool,
        synchronous: str,
        busy_timeout: float,
        max_batch: int,
        readers: int,
        threads: bool,
    ) -> None:
        self.path = path
        self.where = repr(path)
        self.read_only = read_only
        self.state = State.NEW
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._readers = readers
        self._threads = threads
        self._write_conn: sqlite3.Connection | None = None
        self._read_conns: list[sqlite3.Connection] = []
        self._idle_readers: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._read_limiter = trio.CapacityLimiter(readers)
        self._writer: GroupCommit[Tx] = GroupCommit(
            # Looked up at each batch, so that the crash tests can wrap _apply_batch.
            lambda ops: self._apply_batch(ops),  # noqa: PLW0108
            max_batch=max_batch,
            threads=threads,
            name=f"SqliteStore {path!r}",
        )
        self._reads = 0

    def statistics(self) -> SqliteStoreStatistics:
        return SqliteStoreStatistics(
            writes=self._writer.writes,
            batches=self._writer.batches,
            largest_batch=self._writer.largest_batch,
            reads=self._reads,
        )

    # -- lifetime ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the connections, create or migrate the schema and start the writer task."""
        if self.state is not State.NEW:
            raise RuntimeError(
                f"this SqliteStore is {self.state.value}; a store can be entered only once "
                "(create a new SqliteStore to open the file again)"
            )
        self.state = State.OPENING
        try:
            await self._in_thread(self._open)
            if not self.read_only:
                await self._writer.start()
        except BaseException:
            self._close_connections()
            self.state = State.CLOSED
            raise
        self.state = State.OPEN

    async def _close_connections_async(self) -> None:
        await self._in_thread(self._close_connections)

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        if self._threads:
            return await trio.to_thread.run_sync(fn)
        await trio.lowlevel.checkpoint_if_cancelled()
        result = fn()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return result

    # -- opening -------------------------------------------------------------------------------

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
        path = self.path
        if self.read_only:
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
                if self.read_only:
                    first = self._connect(target, uri=True)
                    self._read_conns.append(first)
                    first.execute("PRAGMA query_only = ON")
                    check_schema(first, path, migrate=False)
                else:
                    conn = self._connect(target, uri=False)
                    self._write_conn = conn
                    conn.execute(f"PRAGMA synchronous = {self._synchronous}")
                    mode = self._into_wal(conn)
                    if str(mode).lower() != "wal":
                        raise StoreError(
                            f"cannot put the entity store {path!r} in WAL mode (it stays in "
                            f"{mode!r} mode)"
                        )
                    check_schema(conn, path, migrate=True)
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

    def _into_wal(self, conn: sqlite3.Connection) -> str:
        """Put the database in WAL mode; returns the mode it is in. Switching takes an
        exclusive lock, and SQLite does not wait for it as it waits for others (the busy
        timeout): two processes creating a store at once would see "database is locked".
        So it is tried again, for up to the busy timeout."""
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.001
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                if not busy or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

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

    def _apply_batch(self, ops: Sequence[Op[Tx, Any]]) -> None:
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
                    op.result = op.fn(SqliteTx(conn))
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
            fail_batch(ops, exc)
            return
        self._apply_batch_carefully(ops)

    def _apply_batch_carefully(self, ops: Sequence[Op[Tx, Any]]) -> None:
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
                        op.result = op.fn(SqliteTx(conn))
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
            fail_batch(ops, exc)

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a write transaction (grouped with other writes) and return its result;
        what it raised is raised here (and only its own changes are rolled back)."""
        self.check_writable()
        return await self._writer.write(fn)

    # -- reads ---------------------------------------------------------------------------------

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a read transaction on a read connection and return its result."""
        self.check_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        slot = _ReadSlot()
        if not self._threads:
            result = self._run_read(fn, slot)
            self._reads += 1
            await trio.lowlevel.cancel_shielded_checkpoint()
            return result
        try:
            result = await trio.to_thread.run_sync(
                self._run_read, fn, slot, limiter=self._read_limiter, abandon_on_cancel=True
            )
        except trio.Cancelled:
            slot.interrupt()
            raise
        self._reads += 1
        return result

    def _run_read(self, fn: Callable[[Tx], T], slot: _ReadSlot) -> T:
        with self._pool_lock:
            if not self._idle_readers:
                raise RuntimeError("this SqliteStore is closed")
            conn = self._idle_readers.pop()
        with slot.lock:
            slot.connection = conn
        try:
            conn.execute("BEGIN")
            try:
                result = fn(SqliteTx(conn))
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # interrupted mid-statement
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            raise StoreError(f"reading the entity store {self.path!r} failed: {exc}") from exc
        finally:
            with slot.lock:
                slot.connection = None
            with self._pool_lock:
                self._idle_readers.append(conn)
