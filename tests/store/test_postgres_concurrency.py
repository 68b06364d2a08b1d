"""PostgresStore with several writers at once: stores of one process and worker processes
creating one name at the same moment, appending envelopes while a reader follows the stream
with a cursor (the "seq gap": a reader must never pass a seq that commits later), and opening
a new schema together.

The worker processes run :data:`WORKER` (``python -c``): each opens its store, prints
``READY``, waits for a line on stdin (so that all of them start at one moment), does its part
and prints ``RESULT`` and a JSON value."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import trio
import trio.testing
from psycopg import sql as pgsql

from sluiceway.store import PostgresStore, StoredEnvelope
from sluiceway.store import _sql as store_sql
from tests.pg_server import schema_dsn
from tests.store.helpers import claimed, new

NAMES = [f"n{i}" for i in range(20)]
ROOTS = [f"r{i}" for i in range(5)]

WORKER = r"""
import json, sys, time
import trio
from sluiceway.store import NewEntity, PostgresStore
from sluiceway.store import _sql as store_sql

dsn, mode, who = sys.argv[1:4]


def go():
    print("READY", flush=True)
    sys.stdin.readline()


def entity(entity_id, name, parent):
    return NewEntity(
        id=entity_id, name=name, type="Task", general_type="Step", data={"by": who},
        created_at=1.0, parent_id=parent,
    )


async def create(store, results, name, parent):
    record, created = await store.create_entity(entity(f"{who}-{name}", name, parent))
    results[name] = [record.id, created]


def held(entity_id, n):
    def write(tx):
        body = json.dumps({"by": who, "n": n})
        entity_seq = store_sql.next_entity_seq(tx, entity_id)
        seqs = tx.insert_envelopes([(entity_id, entity_seq, 1.0, body)])
        time.sleep(0.004)  # the transaction stays open (its seq comes as it commits)
        return seqs
    return write


async def main():
    if mode == "open":
        go()
        async with PostgresStore(dsn) as store:
            print("RESULT", json.dumps(store.schema), flush=True)
        return
    async with PostgresStore(dsn) as store:
        await trio.to_thread.run_sync(go)
        if mode == "create":
            results = {}
            async with trio.open_nursery() as nursery:
                for name in json.loads(sys.argv[4]):
                    nursery.start_soon(create, store, results, name, "p")
                for name in json.loads(sys.argv[5]):
                    nursery.start_soon(create, store, results, name, None)
            print("RESULT", json.dumps(results), flush=True)
        elif mode == "append":
            quick, slow, count = sys.argv[4], sys.argv[5], int(sys.argv[6])
            seqs = []

            async def appends():
                for n in range(count):
                    items = [(quick, 1.0, {"n": n})]
                    seqs.extend(await store.append_envelopes("o-" + quick, items))

            async def holds():
                for n in range(count // 2):
                    seqs.extend(await store._db.write(held(slow, n)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(appends)
                nursery.start_soon(holds)
            print("RESULT", json.dumps(sorted(seqs)), flush=True)


trio.run(main)
"""


@pytest.fixture
def dsn(pg_dsn: str, pg_schema: str) -> str:
    """A connection string of this test's fresh schema."""
    return schema_dsn(pg_dsn, pg_schema)


class Worker:
    """A worker process running :data:`WORKER`."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.output = b""

    async def _line(self, prefix: bytes) -> bytes:
        assert self.process.stdout is not None
        while True:
            for line in self.output.splitlines(keepends=True):
                if line.startswith(prefix) and line.endswith(b"\n"):
                    self.output = self.output.replace(line, b"", 1)
                    return line[len(prefix) :].strip()
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                raise AssertionError(f"the worker ended early:\n{self.output.decode()}")
            self.output += chunk

    async def ready(self) -> None:
        await self._line(b"READY")

    async def go(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(b"go\n")

    async def result(self) -> Any:
        value = json.loads(await self._line(b"RESULT "))
        assert await self.process.wait() == 0, self.output.decode()
        return value


@contextlib.asynccontextmanager
async def worker(dsn: str, mode: str, who: str, *args: str) -> AsyncIterator[Worker]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", WORKER, dsn, mode, who, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield Worker(process)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:  # the test failed before the worker was done
                process.kill()
            await process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    await stream.aclose()


async def ready_workers(stack: contextlib.AsyncExitStack, count: int, *args: str) -> list[Worker]:
    """Start ``count`` workers (``worker(*args)``, each called ``w<i>``); ready when returned."""
    dsn, mode, *rest = args
    workers = [
        await stack.enter_async_context(worker(dsn, mode, f"w{i}", *rest)) for i in range(count)
    ]
    with trio.fail_after(60):
        for each in workers:
            await each.ready()
    return workers


# -- one name, created at once ------------------------------------------------------------------


def check_one_creator(outcomes: dict[str, dict[str, list[Any]]], names: list[str]) -> None:
    """``outcomes`` (who -> name -> [id, created]): every caller got the same entity for each
    name, and exactly one of them created it (with its own id)."""
    for name in names:
        ids = {who: result[name][0] for who, result in outcomes.items()}
        creators = [who for who, result in outcomes.items() if result[name][1]]
        assert len(set(ids.values())) == 1, (name, ids)
        assert len(creators) == 1, (name, creators)
        assert ids[creators[0]] == f"{creators[0]}-{name}"


async def test_two_stores_creating_one_name_at_once_get_one_entity(dsn: str) -> None:
    async with PostgresStore(dsn) as first, PostgresStore(dsn) as second:
        await first.create_entity(new("p"))
        stores = {"first": first, "second": second}
        records: dict[str, dict[str, Any]] = {who: {} for who in stores}
        outcomes: dict[str, dict[str, list[Any]]] = {who: {} for who in stores}
        go = trio.Event()

        async def create(who: str, name: str, parent: str | None) -> None:
            await go.wait()
            record, created = await stores[who].create_entity(
                new(f"{who}-{name}", name=name, parent=parent, data={"by": who})
            )
            records[who][name] = record
            outcomes[who][name] = [record.id, created]

        async with trio.open_nursery() as nursery:
            for name in NAMES:
                for who in stores:
                    nursery.start_soon(create, who, name, "p")
            for name in ROOTS:
                for who in stores:
                    nursery.start_soon(create, who, name, None)
            await trio.testing.wait_all_tasks_blocked()
            go.set()

        check_one_creator(outcomes, NAMES + ROOTS)
        assert records["first"] == records["second"]  # the very same records
        children = await first.children("p")
        assert sorted(child.name for child in children) == sorted(NAMES)
        outgoing, _ = await second.edges("p")
        assert sorted(edge.to_id for edge in outgoing) == sorted(c.id for c in children)
        assert [edge.position for edge in outgoing] == list(range(1, len(NAMES) + 1))


async def test_processes_creating_one_name_at_once_get_one_entity(dsn: str) -> None:
    async with PostgresStore(dsn) as store:
        await store.create_entity(new("p"))
        async with contextlib.AsyncExitStack() as stack:
            workers = await ready_workers(
                stack, 2, dsn, "create", json.dumps(NAMES), json.dumps(ROOTS)
            )
            outcomes: dict[str, dict[str, list[Any]]] = {}
            go = trio.Event()

            async def here(name: str, parent: str | None) -> None:
                await go.wait()
                record, created = await store.create_entity(
                    new(f"here-{name}", name=name, parent=parent)
                )
                outcomes.setdefault("here", {})[name] = [record.id, created]

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for name in NAMES:
                        nursery.start_soon(here, name, "p")
                    for name in ROOTS:
                        nursery.start_soon(here, name, None)
                    await trio.testing.wait_all_tasks_blocked()
                    for each in workers:
                        await each.go()
                    go.set()
                for index, each in enumerate(workers):
                    outcomes[f"w{index}"] = await each.result()

        check_one_creator(outcomes, NAMES + ROOTS)
        assert sorted(child.name for child in await store.children("p")) == sorted(NAMES)
        for name in ROOTS:
            root = await store.find_entity(None, name)
            assert root is not None
            assert root.id == outcomes["here"][name][0]


# -- the seq gap ----------------------------------------------------------------------------------


def held_append(entity_id: str, n: int) -> Any:
    """A write that appends an envelope, then keeps its transaction open a little longer (in
    the writer's thread: a write function may block it). The envelope gets its seq when the
    batch commits, so transactions that take longer commit later, with their seqs after."""

    def write(tx: Any) -> int:
        store_sql.append(tx, entity_id, 1.0, json.dumps({"by": "here", "n": n}))
        time.sleep(0.004)
        return n

    return write


async def follow(store: PostgresStore, root: str, done: trio.Event) -> list[StoredEnvelope]:
    """Read the subtree's envelopes with a cursor, as a stream does, until ``done`` is set and
    nothing more comes."""
    seen: list[StoredEnvelope] = []
    cursor = 0
    while True:
        finished = done.is_set()
        page = await store.read_envelopes(root, after_seq=cursor, limit=5)
        seen.extend(page)
        if page:
            cursor = page[-1].seq
        elif finished:
            return seen


async def check_followed(store: PostgresStore, root: str, seen: list[StoredEnvelope]) -> None:
    """The follower saw every envelope of the subtree, each once, in seq order."""
    full = await store.read_envelopes(root, limit=100_000)
    assert [e.seq for e in seen] == [e.seq for e in full]
    assert seen == full
    assert [e.seq for e in full] == list(range(1, len(full) + 1))  # no seq was lost either


async def test_a_follower_misses_nothing_while_two_stores_append(dsn: str) -> None:
    async with (
        PostgresStore(dsn) as quick,
        PostgresStore(dsn) as slow,
        PostgresStore(dsn, readers=2) as follower,
    ):
        await quick.create_entity(new("root"))
        await claimed(quick, "a", "wa", parent="root")
        await claimed(slow, "b", "wb", parent="root")
        done, held = trio.Event(), trio.Event()
        seen: list[StoredEnvelope] = []
        appended = 0

        async def appends() -> None:
            # As long as the other store holds its transactions open (and at least 30).
            nonlocal appended
            while appended < 30 or not held.is_set():
                await quick.append_envelopes("wa", [("a", 1.0, {"n": appended})])
                appended += 1

        async def holds() -> None:
            for n in range(30):
                await slow._db.write(held_append("b", n))
            held.set()

        async def run_follower() -> None:
            seen.extend(await follow(follower, "root", done))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_follower)
                async with trio.open_nursery() as writers:
                    writers.start_soon(appends)
                    writers.start_soon(holds)
                done.set()

        await check_followed(follower, "root", seen)
        assert len(seen) == 2 + appended + 30  # the two STARTED envelopes, and the appends
        for entity_id, count in (("a", appended + 1), ("b", 31)):
            ours = [e.entity_seq for e in seen if e.entity_id == entity_id]
            assert ours == list(range(1, count + 1))


async def test_a_follower_misses_nothing_while_two_processes_append(dsn: str) -> None:
    async with PostgresStore(dsn) as store, PostgresStore(dsn, read_only=True) as follower:
        await store.create_entity(new("root"))
        for entity_id in ("a", "a2", "b", "b2"):
            await claimed(store, entity_id, f"o-{entity_id}", parent="root")
        done = trio.Event()
        seen: list[StoredEnvelope] = []

        async with contextlib.AsyncExitStack() as stack:
            [other] = await ready_workers(stack, 1, dsn, "append", "b", "b2", "40")

            async def appends() -> None:
                for n in range(40):
                    await store.append_envelopes("o-a", [("a", 1.0, {"n": n})])

            async def holds() -> None:
                for n in range(20):
                    await store._db.write(held_append("a2", n))

            async def run_follower() -> None:
                seen.extend(await follow(follower, "root", done))

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(run_follower)
                    async with trio.open_nursery() as writers:
                        writers.start_soon(appends)
                        writers.start_soon(holds)
                        await other.go()
                    theirs = await other.result()
                    done.set()

        await check_followed(follower, "root", seen)
        assert len(seen) == 4 + 2 * (40 + 20)
        assert theirs == sorted(
            e.seq for e in seen if e.entity_id in ("b", "b2") and e.entity_seq > 1
        )


# -- a new schema, opened at once ---------------------------------------------------------------


async def test_processes_opening_a_new_schema_at_once_create_it_once(
    dsn: str, pg_dsn: str, pg_schema: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        workers = await ready_workers(stack, 3, dsn, "open")
        here: list[str] = []

        async def open_here() -> None:
            async with PostgresStore(dsn) as store:
                here.append(store.schema)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for each in workers:
                    await each.go()
                nursery.start_soon(open_here)
            schemas = [await each.result() for each in workers]
    assert schemas + here == [pg_schema] * 4
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        name = pgsql.Identifier(pg_schema)
        keys = conn.execute(pgsql.SQL("SELECT key FROM {}.meta ORDER BY key").format(name))
        assert keys.fetchall() == [("application",), ("version",)]
        rows = conn.execute(pgsql.SQL("SELECT last FROM {}.envelope_seq").format(name))
        assert rows.fetchall() == [(0,)]
    async with PostgresStore(dsn) as store:
        _, created = await store.create_entity(new("x"))
        assert created
