"""The connections of one PostgreSQL store: a writer that groups concurrent writes into one
transaction (group commit, as the SQLite store does), a pool of readers, and a listener.

psycopg 3's async connections run on asyncio only, so the store uses its synchronous
connections in worker threads, each call under the store's own limiter (one writer thread,
``readers`` reader threads). A read cancelled by trio is cancelled on the server too
(``cancel_safe``), so the thread and its connection come back at once.

**Writes.** Each write is a function of the batch's transaction (:class:`Tx`). The batches of
several processes run at once, under READ COMMITTED: a write that reads a row and then changes
it locks the row as it reads it (``FOR UPDATE``, the ``_sql`` statements say where), so
fenced check-then-write is safe; the claim loop skips rows another transaction has locked
(``FOR UPDATE SKIP LOCKED``). The envelopes a batch appends are inserted at its very end
(:func:`insert_pending`), under the lock of the one row of ``envelope_seq``, held until the
commit: appending transactions take turns for that last step only, so envelope seqs follow
commit order. A batch whose transaction fails as a whole for a transient reason (a deadlock
between batches that lock the same rows in another order, a serialization failure) runs
again, and so does a batch whose connection turns out to be dead as its transaction begins
(the server ended the session, or restarted); a write that raises is rolled back alone (a
savepoint each, on a second pass) and the rest commits. The writer's
session ends a transaction left idle (a process stopped mid-batch) after
``idle_in_transaction_session_timeout``, so a frozen process cannot hold the others up for
long.

**Notifications.** What a batch changed for other processes (envelopes appended, runs made
due, messages, cancellations) is sent as one ``NOTIFY`` in the batch's transaction, delivered
at commit. :meth:`PostgresDatabase.listen` waits for them on a connection of its own, without
a thread (``wait_readable`` on its socket).

**Time.** Leases, timers and deadlines are compared in the database's time: the store
measures the offset between this machine's clock and the server's when it opens, and
:meth:`PostgresDatabase.clock` is this machine's clock corrected by it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import attrs
import psycopg
import psycopg.errors
import psycopg_pool
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from .._errors import StoreError, StoreSchemaError
from ._group_commit import GroupCommit, Op, fail_batch
from ._lifetime import Lifetime
from ._postgres_schema import check_schema
from ._records import StoreChange
from ._rows import State
from ._sql import Notes, Tx

T = TypeVar("T")

#: How many times a batch whose transaction failed for a transient reason runs again.
RETRIES = 8

#: SQLSTATE classes and codes worth running a whole transaction again for.
_TRANSIENT = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)

#: A quoted part of a libpq message (see PostgresDatabase._connect).
_QUOTED = re.compile(r'"[^"]*"')

#: The most bytes of ids one notification carries (PostgreSQL's limit is 8000 bytes); past it
#: the notification says "anything may have changed".
_PAYLOAD_LIMIT = 7000


@attrs.frozen
class PostgresStoreStatistics:
    """Counters of a :class:`~sluiceway.PostgresStore` since it was created: write
    operations applied (committed or refused), the transactions they were grouped into, the
    most operations one transaction held, transactions run again after a transient failure,
    reads completed, and notifications sent."""

    writes: int
    batches: int
    largest_batch: int
    retries: int
    reads: int
    notifications: int


class PgTx:
    """An operation's view of the batch's transaction on a PostgreSQL connection (see
    ``_sql.Tx``)."""

    __slots__ = ("conn", "notes", "pending")

    creation_order = "ord"
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    unindexed = ""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.notes = Notes()
        # Envelopes to insert when the batch commits, with the lists their seqs go into.
        self.pending: list[tuple[list[int], Sequence[tuple[str, int, float, str]]]] = []

    def execute(self, query: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.conn.execute(query, params)

    def insert_envelopes(self, rows: Sequence[tuple[str, int, float, str]]) -> list[int]:
        # Inserted at the end of the batch (insert_pending), when the seqs are handed out.
        seqs = [0] * len(rows)
        if rows:
            self.pending.append((seqs, list(rows)))
        return seqs

    def is_duplicate(self, error: BaseException) -> bool:
        return isinstance(error, psycopg.errors.UniqueViolation)


def insert_pending(conn: psycopg.Connection[Any], txs: Sequence[PgTx]) -> None:
    """Insert the envelopes the writes of a batch appended, just before it commits, and fill
    in their seqs. The seqs come from the one envelope_seq row, locked from here to the
    commit: transactions that append take turns only for this last step, so seqs follow
    commit order (a follower whose cursor passed seq n never misses an envelope committed
    later with a lower one), while the rest of their work runs at once."""
    pending = [item for tx in txs for item in tx.pending]
    count = sum(len(rows) for _, rows in pending)
    if not count:
        return
    (last,) = conn.execute(
        "UPDATE envelope_seq SET last = last + %s RETURNING last", (count,)
    ).fetchone()  # type: ignore[misc]
    seq = last - count + 1
    columns: tuple[list[Any], ...] = ([], [], [], [], [])
    for seqs, rows in pending:
        for index, (entity_id, entity_seq, ts, body) in enumerate(rows):
            seqs[index] = seq
            values = (seq, entity_id, entity_seq, float(ts), body)
            for column, value in zip(columns, values, strict=True):
                column.append(value)
            seq += 1
    # One statement with arrays, not executemany: psycopg runs executemany in pipeline mode,
    # after which the server no longer ends a transaction left idle (its
    # idle_in_transaction_session_timeout is not armed again), so a process frozen just
    # after appending would hold every other writer up indefinitely.
    conn.execute(
        "INSERT INTO envelopes (seq, entity_id, entity_seq, ts, body) SELECT * FROM"
        " unnest(%s::bigint[], %s::text[], %s::bigint[], %s::float8[], %s::text[])",
        columns,
    )


class _ReadSlot:
    """The connection a read thread is using, so that a cancelled reader can cancel its
    query on the server.

    A cancel request reaches the server after an unknown delay: had the read ended by then,
    it would cancel whatever query the connection runs next, another caller's read. So a
    cancelled read's connection is closed, never handed back to the pool (the pool opens a
    new one), and the request is sent under ``lock``, so that the connection cannot be
    closed (or go back to the pool) while it is being sent. A read cancelled before it got
    its connection does not start its query at all."""

    __slots__ = ("cancelled", "connection", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connection: psycopg.Connection[Any] | None = None
        self.cancelled = False

    def use(self, conn: psycopg.Connection[Any]) -> bool:
        """The read is about to run its query on ``conn``; False if it was cancelled."""
        with self.lock:
            if self.cancelled:
                return False
            self.connection = conn
            return True

    def release(self) -> None:
        """The read is over (its transaction ended)."""
        with self.lock:
            conn, self.connection = self.connection, None
            if self.cancelled and conn is not None:
                # A cancel request was sent, or is on its way: the pool must not give this
                # connection to another read.
                conn.close()

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            conn = self.connection
            if conn is not None:
                # If it fails, the query ended or the connection broke: nothing runs any more.
                with contextlib.suppress(psycopg.Error):
                    conn.cancel_safe(timeout=5.0)


def describe(dsn: str) -> str:
    """A PostgreSQL target for messages, without its password: ``database 'x' at host:port``."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "a PostgreSQL database (its connection string is invalid)"
    host = params.get("host") or "the default host"
    port = params.get("port")
    where = f"{host}:{port}" if port else str(host)
    database = params.get("dbname") or params.get("user") or "(default)"
    return f"PostgreSQL database {database!r} at {where}"


class PostgresDatabase(Lifetime):
    """The connections, the writer task, the readers and the listener of one
    :class:`~sluiceway.PostgresStore` (see the module documentation)."""

    kind = "PostgresStore"

    def __init__(
        self,
        dsn: str,
        *,
        read_only: bool,
        readers: int,
        max_batch: int,
        connect_timeout: float,
        idle_timeout: float,
    ) -> None:
        self.dsn = dsn
        self.where = describe(dsn)
        self.read_only = read_only
        self.state = State.NEW
        self.schema = ""
        self.owner: str | None = None
        self._readers = readers
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._write_conn: psycopg.Connection[Any] | None = None
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._read_limiter = trio.CapacityLimiter(readers)
        self._writer: GroupCommit[Tx] = GroupCommit(
            self._apply_batch, max_batch=max_batch, threads=True, name=self.where
        )
        self._offset = 0.0
        self._began = False  # whether the current batch got past BEGIN (the connection works)
        self._retries = 0
        self._reads = 0
        self._notifications = 0

    @property
    def channel(self) -> str:
        """The notification channel of this store (one per schema of the database)."""
        name = f"sluiceway:{self.schema}"
        if len(name.encode()) > 63:  # identifiers are cut at 63 bytes: keep them distinct
            name = "sluiceway:" + hashlib.sha256(self.schema.encode()).hexdigest()[:40]
        return name

    def statistics(self) -> PostgresStoreStatistics:
        return PostgresStoreStatistics(
            writes=self._writer.writes,
            batches=self._writer.batches,
            largest_batch=self._writer.largest_batch,
            retries=self._retries,
            reads=self._reads,
            notifications=self._notifications,
        )

    def clock(self) -> float:
        """The database's time (this machine's clock, corrected by the offset measured when
        the store opened)."""
        return time.time() + self._offset

    # -- lifetime ------------------------------------------------------------------------------

    async def open(self) -> None:
        if self.state is not State.NEW:
            raise RuntimeError(
                f"this PostgresStore is {self.state.value}; a store can be entered only once "
                "(create a new PostgresStore to open the database again)"
            )
        self.state = State.OPENING
        try:
            await trio.to_thread.run_sync(self._open)
            if not self.read_only:
                await self._writer.start()
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close_connections)
            self.state = State.CLOSED
            raise
        self.state = State.OPEN

    async def _close_connections_async(self) -> None:
        await trio.to_thread.run_sync(self._close_connections)

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=max(1, round(self._connect_timeout))
            )
        except psycopg.ProgrammingError as exc:
            # libpq could not parse the connection string, and its message quotes the part it
            # choked on, which may be the password: the quotes are blanked out, and the
            # exception itself is not chained (its message would show in the traceback).
            problem = _QUOTED.sub('"..."', str(exc)).strip()
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the {self.where}: {exc}") from exc
        raise StoreError(f"cannot connect: the PostgreSQL connection string is invalid ({problem})")

    def _open(self) -> None:
        conn = self._connect()
        try:
            try:
                self.schema = check_schema(conn, self.where, migrate=not self.read_only)
                before = time.time()
                (server_time,) = conn.execute(
                    "SELECT extract(epoch FROM clock_timestamp())::float8"
                ).fetchone()  # type: ignore[misc]
                after = time.time()
                self._offset = server_time - (before + after) / 2
            except (StoreSchemaError, StoreError):
                raise
            except psycopg.Error as exc:
                raise StoreError(
                    f"cannot open the entity store in the {self.where}: {exc}"
                ) from exc
            if self.read_only:
                conn.close()
            else:
                self._prepare_writer(conn)
                self._write_conn = conn
        except BaseException:
            conn.close()
            raise
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            self.dsn,
            min_size=self._readers,
            max_size=self._readers,
            kwargs={"autocommit": True},
            open=False,
            name=f"sluiceway readers of {self.where}",
        )
        try:
            pool.open(wait=True, timeout=self._connect_timeout)
        except psycopg_pool.PoolTimeout as exc:
            pool.close()
            raise StoreError(
                f"cannot open {self._readers} read connections to the {self.where} within "
                f"{self._connect_timeout:g} s"
            ) from exc
        self._pool = pool

    def _prepare_writer(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
            (f"{round(self._idle_timeout * 1000)}ms",),
        )

    def _close_connections(self) -> None:
        conn, self._write_conn = self._write_conn, None
        pool, self._pool = self._pool, None
        if conn is not None:
            conn.close()
        if pool is not None:
            pool.close()

    # -- writes --------------------------------------------------------------------------------

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a write transaction (grouped with other writes) and return its result;
        what it raised is raised here (and only its own changes are rolled back)."""
        self.check_writable()
        return await self._writer.write(fn)

    def _writer_connection(self) -> psycopg.Connection[Any]:
        conn = self._write_conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._write_conn = None
            conn = self._connect()
            try:
                self._prepare_writer(conn)
            except BaseException:
                conn.close()  # not left open behind the store's back
                raise
            self._write_conn = conn
        return conn

    def _apply_batch(self, ops: Sequence[Op[Tx, Any]]) -> None:
        """Run ``ops`` in one transaction and commit (in the writer's worker thread); first
        without savepoints, then (if one raised) with a savepoint around each. A transient
        failure of the whole transaction runs it again, and so does (once) a batch whose
        connection turns out to be dead when its transaction begins."""
        careful = False
        attempt = 0
        reconnected = False
        while True:
            self._began = False
            try:
                conn = self._writer_connection()
                if careful:
                    notes = self._run_carefully(conn, ops)
                else:
                    notes = self._run_plainly(conn, ops)
            except _OpRaised:
                careful = True
                continue
            except _TRANSIENT as exc:
                attempt += 1
                self._retries += 1
                if attempt > RETRIES:
                    fail_batch(ops, exc)
                    return
                time.sleep(random.uniform(0, 0.005 * 2**attempt))
                continue
            except psycopg.Error as exc:
                dead = self._write_conn is None or self._write_conn.broken
                if dead and not self._began and not reconnected:
                    # The connection died while idle (the server ended the session, or
                    # restarted): nothing but BEGIN reached it, so nothing of the batch can
                    # have been applied. It runs again, once, on a new connection.
                    reconnected = True
                    continue
                fail_batch(ops, exc)
                return
            except BaseException as exc:
                # A broken connection may have committed or not: the callers are told it
                # failed (a StoreError), and the next batch connects again.
                fail_batch(ops, exc)
                return
            if notes:
                self._notifications += 1
            return

    def _begin(self) -> None:
        # BEGIN went through (psycopg sends it on entering the transaction block): the
        # connection works, so a failure from now on is mid-batch.
        self._began = True

    def _notify(self, conn: psycopg.Connection[Any], notes: Notes) -> None:
        if notes:
            conn.execute("SELECT pg_notify(%s, %s)", (self.channel, self._payload(notes)))

    def _payload(self, notes: Notes) -> str:
        body: dict[str, Any] = {"o": self.owner or ""}
        if notes.envelopes:
            body["e"] = 1
        if notes.due:
            body["d"] = 1
        if notes.messages:
            body["m"] = sorted(notes.messages)
        if notes.cancelled:
            body["c"] = sorted(notes.cancelled)
        if notes.units:
            body["u"] = 1
        if notes.units_wanted:
            body["w"] = 1
        payload = json.dumps(body, separators=(",", ":"))
        if len(payload.encode()) > _PAYLOAD_LIMIT:
            payload = json.dumps({"o": self.owner or "", "all": 1})
        return payload

    def _run_plainly(self, conn: psycopg.Connection[Any], ops: Sequence[Op[Tx, Any]]) -> Notes:
        notes = Notes()
        done: list[PgTx] = []
        with conn.transaction():
            self._begin()
            for op in ops:
                tx = PgTx(conn)
                try:
                    op.result = op.fn(tx)
                except _TRANSIENT:
                    raise
                except Exception as exc:
                    raise _OpRaised from exc
                notes.merge(tx.notes)
                done.append(tx)
            insert_pending(conn, done)
            self._notify(conn, notes)
        return notes

    def _run_carefully(self, conn: psycopg.Connection[Any], ops: Sequence[Op[Tx, Any]]) -> Notes:
        notes = Notes()
        done: list[PgTx] = []
        with conn.transaction():
            self._begin()
            for op in ops:
                op.result = None
                op.error = None
                tx = PgTx(conn)
                try:
                    with conn.transaction():  # a savepoint: rolled back alone if it raises
                        op.result = op.fn(tx)
                except _TRANSIENT:
                    raise
                except psycopg.OperationalError:
                    raise  # the connection broke: the whole batch fails
                except psycopg.Error as exc:
                    error = StoreError(f"the write failed: {exc}")
                    error.__cause__ = exc
                    op.error = error
                except Exception as exc:
                    op.error = exc
                else:
                    notes.merge(tx.notes)
                    done.append(tx)
            insert_pending(conn, done)
            self._notify(conn, notes)
        return notes

    # -- reads ---------------------------------------------------------------------------------

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a read transaction on a pooled connection and return its result."""
        self.check_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        slot = _ReadSlot()
        try:
            result = await trio.to_thread.run_sync(
                self._run_read, fn, slot, limiter=self._read_limiter, abandon_on_cancel=True
            )
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(slot.cancel)
            raise
        self._reads += 1
        return result

    def _run_read(self, fn: Callable[[Tx], T], slot: _ReadSlot) -> T:
        pool = self._pool
        if pool is None:
            raise RuntimeError("this PostgresStore is closed")
        try:
            with pool.connection(timeout=self._connect_timeout) as conn:
                if not slot.use(conn):
                    raise _ReadAbandoned  # nobody waits for this read any more
                try:
                    with conn.transaction():
                        return fn(PgTx(conn))
                finally:
                    slot.release()
        except psycopg.Error as exc:
            raise StoreError(f"reading the entity store in the {self.where} failed: {exc}") from exc
        except psycopg_pool.PoolTimeout as exc:
            raise StoreError(f"no connection to the {self.where} came free: {exc}") from exc

    # -- notifications -------------------------------------------------------------------------

    async def listen(self, on_change: Callable[[StoreChange], None]) -> NoReturn:
        """Call ``on_change`` with what each batch committed by another store changed, until
        cancelled. After (re)connecting, it is called once with ``everything`` set: what
        happened while nobody listened is unknown. A lost connection is opened again."""
        self.check_open()
        pause = 0.1
        while True:
            try:
                conn = await trio.to_thread.run_sync(self._connect)
            except StoreError:
                await trio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            try:
                await trio.to_thread.run_sync(
                    conn.execute, sql.SQL("LISTEN {}").format(sql.Identifier(self.channel))
                )
                on_change(StoreChange(everything=True))
                pause = 0.1
                await self._receive(conn, on_change)
            except (psycopg.Error, OSError):
                await trio.sleep(pause)
                pause = min(pause * 2, 5.0)
            finally:
                conn.close()

    async def _receive(
        self, conn: psycopg.Connection[Any], on_change: Callable[[StoreChange], None]
    ) -> None:
        pgconn = conn.pgconn
        while True:
            await trio.lowlevel.wait_readable(pgconn.socket)
            pgconn.consume_input()
            while (notify := pgconn.notifies()) is not None:
                change = self._parse(notify.extra.decode())
                if change is not None:
                    on_change(change)

    def _parse(self, payload: str) -> StoreChange | None:
        try:
            body = json.loads(payload)
        except ValueError:
            return StoreChange(everything=True)
        if not isinstance(body, dict):
            return StoreChange(everything=True)
        if self.owner is not None and body.get("o") == self.owner:
            return None  # this store's own write: its runtime knows already
        if body.get("all"):
            return StoreChange(everything=True)
        return StoreChange(
            envelopes=bool(body.get("e")),
            due=bool(body.get("d")),
            messages=frozenset(str(item) for item in body.get("m", ())),
            cancelled=frozenset(str(item) for item in body.get("c", ())),
            units=bool(body.get("u")),
            units_wanted=bool(body.get("w")),
        )


class _OpRaised(Exception):
    """A write raised during a plain pass: the batch runs again, carefully."""


class _ReadAbandoned(Exception):
    """A read cancelled before its query started (its caller is gone: nobody sees this)."""
