"""PostgresStore on a real server, beyond the contract every store keeps: notifications
(``watch``), cancelled reads, schema creation and refusal, connection strings and passwords,
the writer's connection dying under it, transactions left idle, and the database's clock.

Server-side state is looked at, and sessions are ended, from plain connections of the test's
own (as an administrator would). See ``test_postgres_concurrency.py`` for several writers at
once."""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import socket
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
import trio
import trio.testing
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo

from sluiceway import RunContext, RunnableEntity, open_runtime
from sluiceway._errors import StoreError, StoreSchemaError
from sluiceway.store import PostgresStore, StoreChange
from sluiceway.store import _sql as store_sql
from tests.pg_server import schema_dsn
from tests.store.helpers import claimed, new

EVERYTHING = StoreChange(everything=True)
SECRET = "s3cret-Pa55word"


@pytest.fixture
def dsn(pg_dsn: str, pg_schema: str) -> str:
    """A connection string of this test's fresh schema."""
    return schema_dsn(pg_dsn, pg_schema)


@contextlib.contextmanager
def admin(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit connection of the test's own (an administrator's)."""
    with psycopg.connect(pg_dsn, autocommit=True, connect_timeout=10) as conn:
        yield conn


def query(pg_dsn: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with admin(pg_dsn) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def tables(pg_dsn: str, schema: str) -> list[str]:
    rows = query(
        pg_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,)
    )
    return [name for (name,) in rows]


async def terminate(pg_dsn: str, pid: int) -> None:
    """End the session ``pid`` from outside, and wait until it is gone."""
    assert query(pg_dsn, "SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
    await eventually(
        lambda: not query(pg_dsn, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
    )


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (for what the server does a moment later)."""
    with trio.fail_after(5):
        for _ in itertools.count():
            if condition():
                return
            await trio.sleep(0.01)


async def writer_pid(store: PostgresStore) -> int:
    """The server process of the store's writer connection."""
    return int(
        await store._db.write(lambda tx: tx.execute("SELECT pg_backend_pid()").fetchone()[0])
    )


class Changes:
    """What a store's ``watch`` reported, in order, to be awaited one at a time."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[StoreChange](math.inf)

    def __call__(self, change: StoreChange) -> None:
        self._send.send_nowait(change)

    async def next(self) -> StoreChange:
        """The next change reported (it is expected within milliseconds)."""
        with trio.fail_after(5):
            return await self._receive.receive()

    def pending(self) -> list[StoreChange]:
        """The changes reported and not taken yet."""
        changes = []
        while True:
            try:
                changes.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                return changes


@contextlib.asynccontextmanager
async def watching(store: PostgresStore) -> AsyncIterator[Changes]:
    """Run ``store.watch`` while the block runs; it has started listening when the block
    begins (its first report, ``everything``, has been taken)."""
    changes = Changes()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.watch, changes)
        assert await changes.next() == EVERYTHING
        yield changes
        nursery.cancel_scope.cancel()


# -- notifications ----------------------------------------------------------------------------


async def test_watch_reports_what_another_store_commits_and_not_its_own(dsn: str) -> None:
    async with PostgresStore(dsn) as first, PostgresStore(dsn) as second:
        first.bind_owner("runtime-1")
        second.bind_owner("runtime-2")
        await claimed(second, "x", "w2")
        await second.create_entity(new("x1", parent="x"))
        await second.create_entity(new("s"))
        await second.create_entity(new("m"))
        await claimed(first, "own", "w1")

        async with watching(first) as heard_by_first, watching(second) as heard_by_second:
            await second.append_envelopes("w2", [("x", 11.0, {"n": 1}), ("x", 11.0, {"n": 2})])
            assert await heard_by_first.next() == StoreChange(envelopes=True)
            await second.submit("s", now=12.0)
            assert await heard_by_first.next() == StoreChange(due=True)
            await second.send_message("m", "hello", {"a": 1}, now=13.0)
            assert await heard_by_first.next() == StoreChange(messages=frozenset({"m"}))
            await second.cancel("x", now=14.0, envelope={"kind": "CANCELLED"})
            assert await heard_by_first.next() == StoreChange(
                envelopes=True, cancelled=frozenset({"x", "x1"})
            )

            # The first store's own writes are announced (to the second store), not to itself.
            sent = first.statistics().notifications
            await first.append_envelopes("w1", [("own", 15.0, {"n": 1})])
            await first.submit("s", now=16.0)
            await first.send_message("m", "again", None, now=17.0)
            await first.cancel("own", now=18.0, envelope={"kind": "CANCELLED"})
            assert first.statistics().notifications == sent + 4
            assert [await heard_by_second.next() for _ in range(4)] == [
                StoreChange(envelopes=True),
                StoreChange(due=True),
                StoreChange(messages=frozenset({"m"})),
                StoreChange(envelopes=True, cancelled=frozenset({"own"})),
            ]
            # Notifications arrive in commit order: had the first store heard any of its own
            # writes, it would hear them before this one.
            await second.submit("s", now=19.0)
            assert await heard_by_first.next() == StoreChange(due=True)
            assert heard_by_first.pending() == []
            assert heard_by_second.pending() == []


async def test_writes_that_change_nothing_others_wait_for_are_not_announced(dsn: str) -> None:
    async with PostgresStore(dsn) as first, PostgresStore(dsn) as second:
        second.bind_owner("runtime-2")
        async with watching(first) as heard:
            sent = second.statistics().notifications
            await second.create_entity(new("quiet"))
            await second.update_data("quiet", None, {"k": 1}, now=2.0)
            assert second.statistics().notifications == sent
            await second.submit("quiet", now=3.0)
            assert await heard.next() == StoreChange(due=True)  # the first thing heard
            assert second.statistics().notifications == sent + 1


async def test_one_notification_per_committed_batch(dsn: str) -> None:
    async with (
        PostgresStore(dsn) as writer,
        PostgresStore(dsn) as listener,
        PostgresStore(dsn) as other,
    ):
        writer.bind_owner("writer")
        other.bind_owner("other")
        await claimed(writer, "x", "w")
        await other.create_entity(new("s"))
        async with watching(listener) as heard:
            before = writer.statistics()
            go = trio.Event()

            async def append(index: int) -> None:
                await go.wait()
                await writer.append_envelopes("w", [("x", 11.0, {"n": index})])

            async with trio.open_nursery() as nursery:
                for index in range(200):
                    nursery.start_soon(append, index)
                await trio.testing.wait_all_tasks_blocked()
                go.set()
            after = writer.statistics()
            batches = after.batches - before.batches
            assert after.writes - before.writes == 200
            assert batches <= 20  # grouped into few transactions
            assert after.notifications - before.notifications == batches

            await other.submit("s", now=12.0)  # a marker: everything before it has arrived
            reported = []
            while (change := await heard.next()) != StoreChange(due=True):
                reported.append(change)
            assert reported == [StoreChange(envelopes=True)] * batches


async def test_watch_listens_again_after_its_connection_is_killed(
    dsn: str, pg_dsn: str, pg_schema: str
) -> None:
    async with PostgresStore(dsn) as first, PostgresStore(dsn) as second:
        first.bind_owner("runtime-1")
        second.bind_owner("runtime-2")
        await second.create_entity(new("s"))
        async with watching(first) as heard:
            killed = query(
                pg_dsn,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN%%' AND query LIKE %s AND pid <> pg_backend_pid()",
                (f"%{pg_schema}%",),
            )
            assert killed == [(True,)]
            # What was committed while nobody listened is unknown: "everything" changed.
            assert await heard.next() == EVERYTHING
            await second.submit("s", now=2.0)
            assert await heard.next() == StoreChange(due=True)
            assert heard.pending() == []


# -- reads --------------------------------------------------------------------------------------


def running_queries(pg_dsn: str, marker: str) -> int:
    rows = query(
        pg_dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s"
        " AND pid <> pg_backend_pid()",
        (f"%{marker}%",),
    )
    return int(rows[0][0])


async def test_a_cancelled_read_stops_its_query_on_the_server(dsn: str, pg_dsn: str) -> None:
    marker = f"sleepy-{uuid.uuid4().hex}"
    with trio.fail_after(10):  # far less than the query's 30 s, closing included
        async with PostgresStore(dsn, readers=1) as store:
            with trio.move_on_after(0.2) as scope:
                await store._db.read(lambda tx: tx.execute(f"SELECT pg_sleep(30) -- {marker}"))
            assert scope.cancelled_caught
            await eventually(lambda: running_queries(pg_dsn, marker) == 0)
            # Its only read connection works (another one took the cancelled one's place).
            assert await store.last_seq() == 0
            await store.create_entity(new("x"))
            assert (await store.get_entity("x")).name == "x"
            assert store.statistics().reads == 2  # the cancelled read is not counted


async def test_a_read_cancelled_before_it_starts_never_runs(dsn: str, pg_dsn: str) -> None:
    marker = f"never-{uuid.uuid4().hex}"
    ran: list[int] = []

    def read(tx: Any) -> None:
        ran.append(1)
        tx.execute(f"SELECT pg_sleep(30) -- {marker}")

    async with PostgresStore(dsn, readers=1) as store:
        blocker = threading.Event()
        async with trio.open_nursery() as nursery:
            # The only reader is busy: the next read waits for it, and is cancelled waiting.
            nursery.start_soon(store._db.read, lambda tx: blocker.wait(10))
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0.1):
                await store._db.read(read)
            blocker.set()
        assert await store.last_seq() == 0
    assert ran == []
    assert running_queries(pg_dsn, marker) == 0


async def test_cancelling_reads_never_cancels_another_read(dsn: str) -> None:
    # A cancel request reaches the server a moment later; had the cancelled read's connection
    # gone back to the pool, the request would cancel the next read on it.
    failures: list[str] = []
    rng = random.Random(7)
    async with PostgresStore(dsn, readers=1) as store:
        done = trio.Event()

        async def innocent() -> None:
            while not done.is_set():
                try:
                    await store._db.read(lambda tx: tx.execute("SELECT pg_sleep(0.001)"))
                except StoreError as exc:
                    failures.append(str(exc))

        async def cancelled() -> None:
            for _ in range(400):
                with trio.move_on_after(rng.uniform(0, 0.008)):
                    await store._db.read(lambda tx: tx.execute("SELECT pg_sleep(0.003)"))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(innocent)
            nursery.start_soon(cancelled)
    assert failures == []


# -- schema ---------------------------------------------------------------------------------------


async def test_stores_opening_a_new_schema_at_once_create_it_once(
    dsn: str, pg_dsn: str, pg_schema: str
) -> None:
    stores = [PostgresStore(dsn) for _ in range(4)]
    opened = 0
    all_open, finish = trio.Event(), trio.Event()

    async def hold(store: PostgresStore) -> None:
        nonlocal opened
        async with store:
            opened += 1
            if opened == len(stores):
                all_open.set()
            await finish.wait()

    async with trio.open_nursery() as nursery:
        for store in stores:
            nursery.start_soon(hold, store)
        with trio.fail_after(30):
            await all_open.wait()
        assert {store.schema for store in stores} == {pg_schema}
        record, created = await stores[0].create_entity(new("x"))
        assert created
        assert await stores[3].get_entity("x") == record
        finish.set()
    assert query(
        pg_dsn,
        pgsql.SQL("SELECT key FROM {}.meta ORDER BY key")
        .format(pgsql.Identifier(pg_schema))
        .as_string(),
    ) == [("application",), ("version",)]
    envelope_seq = pgsql.SQL("SELECT count(*) FROM {}.envelope_seq").format(
        pgsql.Identifier(pg_schema)
    )
    assert query(pg_dsn, envelope_seq.as_string()) == [(1,)]


@pytest.mark.parametrize("read_only", [False, True])
async def test_a_schema_holding_a_table_of_the_stores_name_is_refused(
    pg_dsn: str, pg_schema: str, read_only: bool
) -> None:
    with admin(schema_dsn(pg_dsn, pg_schema)) as conn:
        conn.execute("CREATE TABLE entities (id integer PRIMARY KEY)")
    store = PostgresStore(schema_dsn(pg_dsn, pg_schema), read_only=read_only)
    with pytest.raises(StoreSchemaError, match="not a sluiceway entity store"):
        async with store:
            pass  # pragma: no cover
    assert tables(pg_dsn, pg_schema) == ["entities"]


async def test_a_store_shares_its_schema_with_other_tables(
    dsn: str, pg_dsn: str, pg_schema: str
) -> None:
    with admin(dsn) as conn:
        conn.execute("CREATE TABLE customers (id integer PRIMARY KEY, name text)")
        conn.execute("INSERT INTO customers VALUES (1, 'Ada')")
    async with PostgresStore(dsn) as store:
        await store.create_entity(new("x"))
    async with PostgresStore(dsn, read_only=True) as reader:
        assert (await reader.get_entity("x")).name == "x"
    assert "customers" in tables(pg_dsn, pg_schema)
    assert "entities" in tables(pg_dsn, pg_schema)
    with admin(dsn) as conn:
        assert conn.execute("SELECT * FROM customers").fetchall() == [(1, "Ada")]


async def test_a_meta_table_written_by_something_else_is_refused(
    pg_dsn: str, pg_schema: str
) -> None:
    with admin(schema_dsn(pg_dsn, pg_schema)) as conn:
        conn.execute("CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('application', 'billing'), ('version', '1')")
    with pytest.raises(StoreSchemaError, match="written by something else"):
        async with PostgresStore(schema_dsn(pg_dsn, pg_schema)):
            pass  # pragma: no cover
    assert tables(pg_dsn, pg_schema) == ["meta"]


@pytest.mark.parametrize("other_tables", [[], ["customers"]])
async def test_read_only_refuses_a_schema_without_a_store(
    dsn: str, pg_dsn: str, pg_schema: str, other_tables: list[str]
) -> None:
    with admin(dsn) as conn:
        for name in other_tables:
            conn.execute(pgsql.SQL("CREATE TABLE {} (id integer)").format(pgsql.Identifier(name)))
    with pytest.raises(StoreSchemaError, match="not a sluiceway entity store"):
        async with PostgresStore(dsn, read_only=True):
            pass  # pragma: no cover
    assert tables(pg_dsn, pg_schema) == other_tables


@pytest.mark.parametrize("read_only", [False, True])
async def test_a_store_written_by_a_newer_sluiceway_is_refused(
    dsn: str, pg_dsn: str, pg_schema: str, read_only: bool
) -> None:
    async with PostgresStore(dsn) as store:
        await store.create_entity(new("x"))
    with admin(dsn) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    with pytest.raises(StoreSchemaError, match="newer") as info:
        async with PostgresStore(dsn, read_only=read_only):
            pass  # pragma: no cover
    assert "99" in str(info.value)
    assert query(
        pg_dsn,
        pgsql.SQL("SELECT value FROM {}.meta WHERE key = 'version'")
        .format(pgsql.Identifier(pg_schema))
        .as_string(),
    ) == [("99",)]


async def test_a_read_only_store_reads_and_has_no_writer(dsn: str) -> None:
    async with PostgresStore(dsn) as store:
        record, _ = await store.create_entity(new("x"))
    async with PostgresStore(dsn, read_only=True) as reader:
        assert reader.read_only
        assert reader._db._write_conn is None
        assert await reader.get_entity("x") == record
        with pytest.raises(RuntimeError, match="read-only"):
            await reader.create_entity(new("y"))
        assert reader.statistics().batches == 0


# -- connection strings and passwords --------------------------------------------------------


def closed_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_hidden(error: BaseException) -> None:
    """Neither the error's message nor its whole traceback shows the password."""
    assert SECRET not in str(error)
    assert SECRET not in "".join(traceback.format_exception(error))


@pytest.mark.parametrize(
    "template",
    [
        "postgresql://bob:{secret}@127.0.0.1:{port}/app",
        "host=127.0.0.1 port={port} user=bob password={secret} dbname=app",
    ],
)
async def test_an_unreachable_server_is_a_store_error_without_the_password(template: str) -> None:
    store = PostgresStore(template.format(secret=SECRET, port=closed_port()), connect_timeout=5)
    assert SECRET not in repr(store)
    with pytest.raises(StoreError) as info:
        async with store:
            pass  # pragma: no cover
    assert "127.0.0.1" in str(info.value)
    assert_hidden(info.value)
    assert SECRET not in repr(store)


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://bob:{SECRET} x@127.0.0.1:1/app",  # a space: libpq quotes the part
        f"host=127.0.0.1 password='{SECRET}",  # an unterminated quote
        f"host=127.0.0.1 password {SECRET}",
    ],
)
async def test_an_invalid_connection_string_is_a_store_error_without_the_password(
    dsn: str,
) -> None:
    store = PostgresStore(dsn)
    assert SECRET not in repr(store)
    with pytest.raises(StoreError, match="connection string is invalid") as info:
        async with store:
            pass  # pragma: no cover
    assert_hidden(info.value)


async def test_repr_and_messages_never_show_the_password(pg_dsn: str, pg_schema: str) -> None:
    dsn = make_conninfo(schema_dsn(pg_dsn, pg_schema), password=SECRET)  # the server trusts
    store = PostgresStore(dsn)
    assert SECRET not in repr(store)
    async with store:
        assert "open" in repr(store)
        assert SECRET not in repr(store)
    assert "closed" in repr(store)
    assert SECRET not in repr(store)

    with admin(schema_dsn(pg_dsn, pg_schema)) as conn:
        conn.execute("CREATE TABLE other (id integer)")
        conn.execute("DROP TABLE meta CASCADE")
    with pytest.raises(StoreSchemaError) as info:
        async with PostgresStore(dsn):
            pass  # pragma: no cover
    assert_hidden(info.value)


# -- the writer's connection ----------------------------------------------------------------------


async def test_the_writer_replaces_a_connection_killed_while_idle(dsn: str, pg_dsn: str) -> None:
    # A batch that finds its connection dead as its transaction begins runs again on a new
    # one: nothing of it reached the server. So the next write succeeds.
    async with PostgresStore(dsn) as store:
        await claimed(store, "x", "a")
        first = await writer_pid(store)
        await terminate(pg_dsn, first)
        assert await store.append_envelopes("a", [("x", 11.0, {"n": 1})]) == [2]
        second = await writer_pid(store)
        assert second != first
        await terminate(pg_dsn, second)
        assert await store.append_envelopes("a", [("x", 12.0, {"n": 2})]) == [3]
        envelopes = await store.read_envelopes("x")
        assert [(e.seq, e.entity_seq) for e in envelopes] == [(1, 1), (2, 2), (3, 3)]
        assert [e.body for e in envelopes][1:] == [{"n": 1}, {"n": 2}]
        assert store.statistics().retries == 0  # not counted as a transient failure


async def test_a_connection_killed_mid_batch_applies_the_batch_exactly_once(
    dsn: str, pg_dsn: str
) -> None:
    # The transaction on the killed connection is rolled back by the server, and the batch
    # runs again on a new connection (as when one of its writes raises: each write is a
    # function of the transaction). Another store's write of the same entity waits for the
    # row lock the killed transaction held, and goes on once it is gone.
    async with PostgresStore(dsn) as store, PostgresStore(dsn) as other:
        await claimed(store, "x", "a")
        entered, release = threading.Event(), threading.Event()
        pids: list[int] = []

        def two_steps(tx: Any) -> list[int]:
            pids.append(tx.execute("SELECT pg_backend_pid()").fetchone()[0])
            store_sql.append(tx, "x", 1.0, '{"part": 1}')
            if len(pids) == 1:
                entered.set()
                release.wait(10)
            return tx.insert_envelopes([("x", store_sql.next_entity_seq(tx, "x"), 1.0, "{}")])

        results: list[list[int]] = []
        other_done = trio.Event()

        async def write_other() -> None:
            await other.update_data("x", None, {"other": True}, now=1.0)
            other_done.set()

        async with trio.open_nursery() as nursery:
            try:

                async def write() -> None:
                    results.append(await store._db.write(two_steps))

                nursery.start_soon(write)
                assert await trio.to_thread.run_sync(entered.wait, 10)
                nursery.start_soon(write_other)
                await trio.sleep(0.1)
                assert not other_done.is_set()  # it waits for the lock
                await terminate(pg_dsn, pids[0])
                with trio.fail_after(5):
                    await other_done.wait()
            finally:
                release.set()

        assert len(pids) == 2
        assert pids[1] != pids[0]
        assert results == [[3]]  # its seqs came when it committed
        envelopes = await store.read_envelopes("x")
        assert [(e.seq, e.entity_seq, e.body) for e in envelopes][1:] == [
            (2, 2, {"part": 1}),
            (3, 3, {}),
        ]
        assert (await store.get_entity("x")).data == {"other": True}
        assert (await store.get_entity("x")).last_entity_seq == 3
        assert await store.append_envelopes("a", [("x", 2.0, {"n": 3})]) == [4]


async def test_a_transaction_left_idle_is_ended_and_holds_nobody_up(dsn: str) -> None:
    # A write that stops inside its transaction (a process frozen mid-batch) holds the lock of
    # the entity it appended to; the server ends the session once it has been idle for
    # idle_timeout, so that another store's write of that entity goes on while it is still
    # stuck.
    async with PostgresStore(dsn, idle_timeout=0.3) as stuck, PostgresStore(dsn) as other:
        await claimed(stuck, "x", "a")
        entered, release = threading.Event(), threading.Event()

        def stalls(tx: Any) -> str:
            store_sql.append(tx, "x", 1.0, '{"stalled": true}')
            entered.set()
            release.wait(10)
            return "returned"

        outcome: list[BaseException | str] = []

        async def write() -> None:
            try:
                outcome.append(await stuck._db.write(stalls))
            except StoreError as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            try:
                nursery.start_soon(write)
                assert await trio.to_thread.run_sync(entered.wait, 10)
                with trio.fail_after(5):
                    await other.update_data("x", None, {"other": True}, now=1.0)
                assert not outcome  # the stuck write is still stuck
            finally:
                release.set()

        [error] = outcome
        assert isinstance(error, StoreError)
        assert "idle" in str(error)
        # Nothing of it was applied, and the store writes again (on a new connection).
        assert [e.body for e in await stuck.read_envelopes("x")] == [{"kind": "STARTED"}]
        assert (await stuck.get_entity("x")).last_entity_seq == 1
        assert await stuck.append_envelopes("a", [("x", 2.0, {"n": 1})]) == [2]


# -- time -----------------------------------------------------------------------------------------


async def test_the_clock_is_the_servers(dsn: str, pg_dsn: str) -> None:
    async with PostgresStore(dsn) as store:
        [(server,)] = query(pg_dsn, "SELECT extract(epoch FROM clock_timestamp())::float8")
        assert abs(store.clock() - server) < 1.0
        assert abs(store.clock() - time.time()) < 1.0  # the server runs on this machine


class Quick(RunnableEntity):
    async def run_impl(self, ctx: RunContext) -> Any:
        return "done"


async def test_a_runtime_on_the_store_keeps_its_clock(dsn: str) -> None:
    store = PostgresStore(dsn)
    async with open_runtime(store, types=[Quick]) as runtime:
        assert runtime.clock == store.clock
        before = store.clock()
        record = await runtime.create(Quick)
        assert before <= record.created_at <= store.clock()
        assert await runtime.run(record.id) == "done"


async def test_a_runtime_given_a_clock_keeps_that_one(dsn: str) -> None:
    clock: Callable[[], float] = lambda: 1_000.0  # noqa: E731
    async with open_runtime(PostgresStore(dsn), types=[Quick], clock=clock, work=False) as rt:
        assert rt.clock is clock
        assert (await rt.create(Quick)).created_at == 1_000.0
