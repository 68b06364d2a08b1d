"""Scenario E: an entity fans out 10,000 children on the SQLite store, concurrency 100.

Also the workload scenario F (``entities_resume.py``) kills and resumes: the entity types, the
asyncio baseline's storage and fan-out, and the checks of a store after a run.

The workflow: a parent entity runs its children through
``HierarchicalTaskPoolRunner(ctx.parallel_calls(BenchChild, items), CapacitySource(100))`` and
consumes every ``FINAL`` envelope; each child emits one status envelope
(``await ctx.status("RUNNING", ...)``) and returns a small dict. Per child the store then holds
four envelopes (STATUS STARTED, STATUS RUNNING, VALUE return, STATUS COMPLETED), the child's row
and its parent->child ``Calls`` edge; the parent has three envelopes of its own.

sluiceway side: ``open_runtime(SqliteStore(path))``, the parent created before the timer, then
``runtime.run(parent)`` timed. Every repetition uses a fresh store file in a temporary directory
(deleted afterwards).

asyncio side (the baseline): the same rows, edges and envelope bodies, written with the standard
library's ``sqlite3`` on one connection owned by a single-thread executor
(``loop.run_in_executor`` on a ``ThreadPoolExecutor(max_workers=1)``: sqlite3 connections belong
to one thread, so the idiomatic way is a dedicated thread, not ``asyncio.to_thread`` plus a
lock). An ``asyncio.TaskGroup`` spawns a task per child, each under ``asyncio.Semaphore(100)``;
every child takes four steps, each one transaction (``with conn:``) committed in the executor:
insert the child row and its edge; claim it (status, lease, attempt, STARTED envelope); the
RUNNING envelope; finish it (status, result, lease cleared, VALUE and COMPLETED envelopes). Each
result goes on an ``asyncio.Queue`` read by the parent's consumer. Same schema (tables, unique
and secondary indexes, foreign keys on), WAL and ``synchronous=NORMAL``. What it does not do:
it writes the lease columns but never checks them: no fencing (sluiceway checks in every write
of a run that the runtime still holds the entity's lease, and for a child's creation and start
its parent's too), no lease expiry, heartbeat or takeover rules, no group commit (one
transaction per step), no savepoint per write, no type registry or connection checks, no reading
back of the rows it wrote.

Checks on every repetition of both sides (:func:`verify_store`, on the store file afterwards):
every child exists once, is COMPLETED with the right result and has exactly its envelopes
(STARTED, RUNNING, VALUE, COMPLETED, in that order); one edge per child; the parent's result is
right; no lease is left held; ``PRAGMA integrity_check`` is ok. In the run itself: each child's
result reaches the parent's consumer once, the bodies in flight never exceed the limit and each
runs holding capacity (:class:`~benchmarks.harness.Tracker`), and the capacity node (semaphore)
is idle afterwards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from sluiceway import (
    CapacitySource,
    EntityFailedError,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    RunContext,
    RunnableEntity,
    SqliteStore,
    open_runtime,
)

from .fanout import capacity_probe, semaphore_probe
from .harness import (
    ASYNCIO,
    SLUICEWAY,
    BenchmarkError,
    Metric,
    Params,
    Results,
    Sample,
    Scenario,
    Summary,
    Target,
    Tracker,
    ratio,
    run_asyncio,
    run_trio,
    task_failed,
)

T = TypeVar("T")

#: The issue's target for scenario E: sluiceway completes at least this many children a second.
TARGET_CHILDREN_PER_SECOND = 2_000
#: The root entity's name (both sides).
PARENT = "parent"
#: The lease both sides write on a claim (sluiceway's default ``lease_seconds``).
LEASE_SECONDS = 30.0


# -- the workload, shared by both sides ------------------------------------------------------------


def child_name(i: int) -> str:
    return f"child-{i}"


def child_result(i: int) -> dict[str, Any]:
    """What child ``i`` returns."""
    return {"i": i, "double": 2 * i}


def parent_result(n: int) -> dict[str, Any]:
    """What the parent of ``n`` children returns: their count and the sum of their doubles."""
    return {"children": n, "total": n * (n - 1)}


def running_message(i: int) -> str:
    return f"working on child {i}"


def child_index(name: object, value: object) -> int:
    """The index of the child whose result ``value`` the consumer got, after checking it."""
    if not isinstance(value, dict) or not isinstance(value.get("i"), int):
        raise BenchmarkError(f"unexpected child result {value!r}")
    i: int = value["i"]
    if name != child_name(i) or value != child_result(i):
        raise BenchmarkError(f"child {name!r} returned {value!r}")
    return i


class ChildLog:
    """What the child bodies of one process run report, identically on both sides: which
    children ran (each at most once), when the first one started, and the :class:`Tracker` of
    the bodies in flight."""

    __slots__ = ("first_start", "ran", "tracker")

    def __init__(self, n: int, tracker: Tracker) -> None:
        self.ran = bytearray(n)
        self.first_start: float | None = None
        self.tracker = tracker

    def enter(self, i: int) -> None:
        if self.first_start is None:
            self.first_start = time.perf_counter()
        if self.ran[i]:
            raise BenchmarkError(f"{child_name(i)} ran twice in one process")
        self.ran[i] = 1
        self.tracker.enter()

    def exit(self) -> None:
        self.tracker.exit()

    def verify(self, expected: range) -> dict[str, Any]:
        """Exactly the children ``expected`` ran (once each), within the limit."""
        ran = [i for i, flag in enumerate(self.ran) if flag]
        if ran != list(expected):
            extra = sorted(set(ran) - set(expected))[:5]
            missing = sorted(set(expected) - set(ran))[:5]
            raise BenchmarkError(
                f"{len(ran)} children ran, expected {len(expected)} ({expected.start}.."
                f"{expected.stop - 1}); unexpected {extra}, missing {missing}"
            )
        return self.tracker.verify(len(expected))


class Killer:
    """Scenario F's deterministic kill point, on either side.

    Children ``kill_at`` and above stop after their RUNNING envelope and never finish; the
    consumer, on the ``kill_at``-th result (so children ``0 .. kill_at-1`` are COMPLETED),
    waits until every child that took capacity meanwhile has stopped there (``min(limit, n -
    kill_at)`` of them), then SIGKILLs the process. The store then always holds exactly
    ``kill_at`` COMPLETED children and that many interrupted ones (STARTED and RUNNING,
    attempt 1, their lease held by the dead process).
    """

    def __init__(self, kill_at: int, n: int, limit: int, started: float) -> None:
        self.kill_at = kill_at
        self.expected_stopped = min(limit, n - kill_at)
        self.stopped = 0
        self.started = started
        self.on_all_stopped: Callable[[], None] = lambda: None

    def blocks(self, i: int) -> bool:
        return i >= self.kill_at

    def stop(self) -> None:
        self.stopped += 1
        if self.stopped == self.expected_stopped:
            self.on_all_stopped()

    @property
    def all_stopped(self) -> bool:
        return self.stopped >= self.expected_stopped

    def die(self) -> None:
        """Report how long the run took to get here, then SIGKILL this process."""
        report = {
            "killed_after_seconds": time.perf_counter() - self.started,
            "completed": self.kill_at,
            "stopped": self.stopped,
        }
        print(json.dumps(report), flush=True)
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


# -- sluiceway: the entity types -------------------------------------------------------------------


@dataclass
class TrioRun:
    """The state of one sluiceway run in this process, which the entities reach through
    :func:`current_run` (the runtime creates entity instances itself)."""

    n: int
    pool: CapacitySource
    log: ChildLog
    results: Results
    killer: Killer | None = None
    all_stopped: trio.Event = field(default_factory=trio.Event)
    total: int = 0


class _Current:
    run: TrioRun | None = None


def set_run(run: TrioRun | None) -> None:
    _Current.run = run


def current_run() -> TrioRun:
    if _Current.run is None:
        raise BenchmarkError("no benchmark run is set up in this process")
    return _Current.run


class BenchChild(RunnableEntity):
    """Emits one RUNNING status envelope and returns a small dict."""

    async def run_impl(self, ctx: RunContext) -> Any:
        run = current_run()
        i: int = self.data["i"]
        run.log.enter(i)
        await ctx.status("RUNNING", running_message(i))
        killer = run.killer
        if killer is not None and killer.blocks(i):
            killer.stop()
            await trio.sleep_forever()
        run.log.exit()
        return child_result(i)


class BenchParent(RunnableEntity, allowed_connections={"Calls": [BenchChild]}):
    """Fans out ``data["n"]`` children through a task pool under the run's capacity node and
    consumes their results (SIGKILLing the process at the run's kill point, if any)."""

    async def run_impl(self, ctx: RunContext) -> Any:
        run = current_run()
        n: int = self.data["n"]
        items = [(child_name(i), {"i": i}) for i in range(n)]
        runner = HierarchicalTaskPoolRunner(
            "children", ctx.parallel_calls(BenchChild, items), run.pool
        )
        killer = run.killer
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                if envelope.kind is EnvelopeKind.FINAL:
                    i = child_index(envelope.key, envelope.value)
                    run.results.add(i)
                    run.total += envelope.value["double"]
                    if killer is not None and run.results.count == killer.kill_at:
                        await run.all_stopped.wait()
                        killer.die()
                elif envelope.kind is EnvelopeKind.ERROR:
                    raise task_failed(f"child {envelope.key!r}", envelope.error)
                else:
                    raise BenchmarkError(f"unexpected {envelope!r}: children emit no values")
        return {"children": run.results.count, "total": run.total}


ENTITY_TYPES: list[type[RunnableEntity]] = [BenchParent, BenchChild]


def new_trio_run(n: int, limit: int, killer: Killer | None = None) -> TrioRun:
    """Set up this process's sluiceway run (inside ``trio.run``)."""
    pool = CapacitySource(limit, name="children")
    run = TrioRun(n, pool, ChildLog(n, Tracker(SLUICEWAY, limit, capacity_probe(pool))), Results(n))
    if killer is not None:
        run.killer = killer
        killer.on_all_stopped = run.all_stopped.set
        if killer.all_stopped:
            run.all_stopped.set()
    set_run(run)
    return run


async def run_entity(run: Callable[[], Any]) -> Any:
    """Await ``run()`` (``runtime.run`` or ``runtime.recover``); a failed parent is a
    correctness failure."""
    try:
        return await run()
    except EntityFailedError as exc:
        raise BenchmarkError(f"the parent entity failed: {exc.error}") from exc


def check_pool_idle(pool: CapacitySource) -> dict[str, Any]:
    """The capacity node is idle: nothing held, nobody waiting, every grant released."""
    stats = pool.statistics()
    if (
        stats.borrowed_tokens != 0
        or stats.tasks_waiting
        or stats.waiting_in_subtree
        or stats.granted != stats.released
    ):
        raise BenchmarkError(f"the capacity node is not idle after the run: {stats!r}")
    return {"capacity_granted": stats.granted}


# -- asyncio: sqlite3 in a single-thread executor --------------------------------------------------

#: The schema of sluiceway's entity store, minus what this workload never touches (meta,
#: messages, waits): the same columns, unique and secondary indexes and foreign keys.
SCHEMA = (
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
    "CREATE UNIQUE INDEX entities_child_name ON entities (parent_id, name)"
    " WHERE parent_id IS NOT NULL",
    "CREATE UNIQUE INDEX entities_root_name ON entities (name) WHERE parent_id IS NULL",
    "CREATE INDEX entities_parent ON entities (parent_id, created_at)",
    "CREATE INDEX entities_status ON entities (status)",
    "CREATE INDEX entities_lease_owner ON entities (lease_owner) WHERE lease_owner IS NOT NULL",
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
)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def started_body(attempt: int) -> str:
    return _dumps({"type": "STATUS", "status": "STARTED", "metadata": {"attempt": attempt}})


def running_body(i: int) -> str:
    return _dumps({"type": "STATUS", "status": "RUNNING", "message": running_message(i)})


def final_bodies(result: object) -> tuple[str, str]:
    return (
        _dumps({"type": "VALUE", "sub_type": "return", "value": result}),
        _dumps({"type": "STATUS", "status": "COMPLETED"}),
    )


@dataclass(frozen=True)
class Row:
    """An entity as the asyncio baseline loads it back (resuming)."""

    id: str
    name: str
    status: str
    result: Any


class AsyncioDb:
    """The baseline's storage: one ``sqlite3`` connection, owned by a single-thread executor.

    Every public coroutine is one step of the workflow: a function run in the executor thread,
    one transaction (``with conn:``) committed there.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.owner = f"{socket.gethostname()}:{os.getpid()}:asyncio"
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="sqlite"
        )
        self._conn: sqlite3.Connection | None = None
        self.transactions = 0

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the database is not open")
        return self._conn

    async def open(self) -> None:
        await self.call(self._open)

    def _open(self) -> None:
        exists = os.path.exists(self.path)
        conn = self._conn = sqlite3.connect(self.path, timeout=30.0)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        if not exists:
            with conn:
                for statement in SCHEMA:
                    conn.execute(statement)

    async def close(self) -> None:
        try:
            await self.call(self._close)
        finally:
            self.executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the steps (each runs in the executor thread, one transaction) --------------------------

    def _create(self, entity_id: str, parent_id: str | None, name: str, data: str) -> None:
        now = time.time()
        with self.conn as conn:
            conn.execute(
                "INSERT INTO entities (id, parent_id, name, type, general_type, status, data,"
                " created_at, modified_at) VALUES (?, ?, ?, ?, ?, 'PENDING', ?, ?, ?)",
                (
                    entity_id,
                    parent_id,
                    name,
                    "BenchChild" if parent_id else "BenchParent",
                    "BenchChild" if parent_id else "BenchParent",
                    data,
                    now,
                    now,
                ),
            )
            if parent_id is not None:
                conn.execute(
                    "INSERT INTO edges (from_id, to_id, type, position, data, created_at)"
                    " VALUES (?, ?, 'Calls', (SELECT coalesce(max(position), 0) + 1 FROM edges"
                    " WHERE from_id = ? AND type = 'Calls'), '{}', ?)",
                    (parent_id, entity_id, parent_id, now),
                )
        self.transactions += 1

    def _claim(self, entity_id: str) -> int:
        now = time.time()
        with self.conn as conn:
            row = conn.execute(
                "UPDATE entities SET status = 'IN_PROGRESS', lease_owner = ?, lease_expires = ?,"
                " attempt = attempt + 1, last_entity_seq = last_entity_seq + 1, modified_at = ?"
                " WHERE id = ? RETURNING attempt, last_entity_seq",
                (self.owner, now + LEASE_SECONDS, now, entity_id),
            ).fetchone()
            attempt, seq = row
            conn.execute(
                "INSERT INTO envelopes (entity_id, entity_seq, ts, body) VALUES (?, ?, ?, ?)",
                (entity_id, seq, now, started_body(attempt)),
            )
        self.transactions += 1
        return int(attempt)

    def _append(self, entity_id: str, body: str) -> None:
        now = time.time()
        with self.conn as conn:
            (seq,) = conn.execute(
                "UPDATE entities SET last_entity_seq = last_entity_seq + 1 WHERE id = ?"
                " RETURNING last_entity_seq",
                (entity_id,),
            ).fetchone()
            conn.execute(
                "INSERT INTO envelopes (entity_id, entity_seq, ts, body) VALUES (?, ?, ?, ?)",
                (entity_id, seq, now, body),
            )
        self.transactions += 1

    def _finish(self, entity_id: str, result: str, bodies: Sequence[str]) -> None:
        now = time.time()
        with self.conn as conn:
            (seq,) = conn.execute(
                "UPDATE entities SET status = 'COMPLETED', result = ?, lease_owner = NULL,"
                " lease_expires = NULL, modified_at = ?, last_entity_seq = last_entity_seq + ?"
                " WHERE id = ? RETURNING last_entity_seq",
                (result, now, len(bodies), entity_id),
            ).fetchone()
            first = seq - len(bodies) + 1
            conn.executemany(
                "INSERT INTO envelopes (entity_id, entity_seq, ts, body) VALUES (?, ?, ?, ?)",
                [(entity_id, first + k, now, body) for k, body in enumerate(bodies)],
            )
        self.transactions += 1

    def _root(self) -> Row | None:
        row = self.conn.execute(
            "SELECT id, name, status, result FROM entities WHERE parent_id IS NULL AND name = ?",
            (PARENT,),
        ).fetchone()
        return None if row is None else Row(row[0], row[1], row[2], row[3])

    def _children(self, parent_id: str) -> dict[str, Row]:
        rows = self.conn.execute(
            "SELECT id, name, status, result FROM entities WHERE parent_id = ?", (parent_id,)
        ).fetchall()
        return {name: Row(ident, name, status, result) for ident, name, status, result in rows}

    # -- the coroutines -------------------------------------------------------------------------

    async def create(self, entity_id: str, parent_id: str | None, name: str, data: str) -> None:
        await self.call(self._create, entity_id, parent_id, name, data)

    async def claim(self, entity_id: str) -> int:
        return await self.call(self._claim, entity_id)

    async def append(self, entity_id: str, body: str) -> None:
        await self.call(self._append, entity_id, body)

    async def finish(self, entity_id: str, result: object) -> None:
        await self.call(self._finish, entity_id, _dumps(result), final_bodies(result))

    async def root(self) -> Row | None:
        return await self.call(self._root)

    async def children(self, parent_id: str) -> dict[str, Row]:
        return await self.call(self._children, parent_id)


ChildOutcome = tuple[bool, str, object]  # (ok, child name, result or error)


@dataclass
class AsyncioRun:
    """The state of one asyncio baseline run (the counterpart of :class:`TrioRun`)."""

    n: int
    semaphore: asyncio.Semaphore
    log: ChildLog
    results: Results
    killer: Killer | None = None
    all_stopped: asyncio.Event = field(default_factory=asyncio.Event)


def new_asyncio_run(n: int, limit: int, killer: Killer | None = None) -> AsyncioRun:
    """Set up an asyncio baseline run (inside the event loop)."""
    semaphore = asyncio.Semaphore(limit)
    log = ChildLog(n, Tracker(ASYNCIO, limit, semaphore_probe(semaphore, limit)))
    run = AsyncioRun(n, semaphore, log, Results(n))
    if killer is not None:
        run.killer = killer
        killer.on_all_stopped = run.all_stopped.set
        if killer.all_stopped:
            run.all_stopped.set()
    return run


async def asyncio_child(
    db: AsyncioDb, run: AsyncioRun, parent_id: str, i: int, row: Row | None
) -> ChildOutcome:
    """One child, in its own task: create it (unless ``row`` says it exists), claim it, run
    its body, finish it; all under the semaphore."""
    name = child_name(i)
    async with run.semaphore:
        try:
            if row is None:
                entity_id = str(uuid.uuid4())
                await db.create(entity_id, parent_id, name, _dumps({"i": i}))
            else:
                entity_id = row.id
            await db.claim(entity_id)
            # The body: the same work as BenchChild.run_impl.
            run.log.enter(i)
            await db.append(entity_id, running_body(i))
            killer = run.killer
            if killer is not None and killer.blocks(i):
                killer.stop()
                await asyncio.Event().wait()
            run.log.exit()
            result = child_result(i)
            await db.finish(entity_id, result)
        except Exception as exc:
            return (False, name, exc)
    return (True, name, result)


async def asyncio_parent(db: AsyncioDb, run: AsyncioRun, parent_id: str, resume: bool) -> Any:
    """The parent's run: claim it, fan out every child (skipping the COMPLETED ones when
    resuming: one bulk load of its children, their stored results delivered at once), consume
    every result, finish it. Returns its result."""
    await db.claim(parent_id)
    existing = await db.children(parent_id) if resume else {}
    queue: asyncio.Queue[ChildOutcome | None] = asyncio.Queue()
    total = 0

    async def run_one(i: int, row: Row | None) -> None:
        queue.put_nowait(await asyncio_child(db, run, parent_id, i, row))

    async def spawn_all() -> None:
        async with asyncio.TaskGroup() as group:
            for i in range(run.n):
                row = existing.get(child_name(i))
                if row is not None and row.status == "COMPLETED":
                    queue.put_nowait((True, row.name, json.loads(row.result)))
                    continue
                group.create_task(run_one(i, row))
        queue.put_nowait(None)

    async def consume() -> None:
        nonlocal total
        killer = run.killer
        while (item := await queue.get()) is not None:
            ok, name, value = item
            if not ok:
                raise task_failed(f"asyncio child {name!r}", value)
            i = child_index(name, value)
            run.results.add(i)
            total += child_result(i)["double"]
            if killer is not None and run.results.count == killer.kill_at:
                await run.all_stopped.wait()
                killer.die()

    async with asyncio.TaskGroup() as group:
        group.create_task(consume())
        group.create_task(spawn_all())
    result = {"children": run.results.count, "total": total}
    await db.finish(parent_id, result)
    return result


async def asyncio_create_root(db: AsyncioDb, n: int) -> str:
    root_id = str(uuid.uuid4())
    await db.create(root_id, None, PARENT, _dumps({"n": n}))
    return root_id


def check_semaphore_idle(semaphore: asyncio.Semaphore, limit: int) -> dict[str, Any]:
    if semaphore._value != limit or semaphore.locked():
        raise BenchmarkError(
            f"the semaphore is not idle after the run: value {semaphore._value}, limit {limit}"
        )
    return {}


# -- checking a store after a run ------------------------------------------------------------------


def _kinds(bodies: Sequence[str]) -> list[str]:
    out = []
    for body in bodies:
        envelope = json.loads(body)
        kind = envelope.get("type")
        if kind == "STATUS":
            status = envelope.get("status")
            if status == "STARTED":
                status = f"STARTED#{envelope.get('metadata', {}).get('attempt')}"
            out.append(str(status))
        elif kind == "VALUE" and envelope.get("sub_type") == "return":
            out.append("VALUE")
        else:
            out.append(str(kind))
    return out


def expected_kinds(attempts: int, parent: bool = False, replay: bool = False) -> list[str]:
    """The envelopes of an entity that ran ``attempts`` times and completed in the last:
    STARTED per attempt, a child's RUNNING per attempt (``replay``: once, after the first
    STARTED), then VALUE and COMPLETED once.

    ``replay`` is sluiceway's way: a run that runs again replays ``run_impl`` from the top and
    does not store again the envelopes the entity emitted before; the asyncio baseline stores
    its RUNNING envelope again in every attempt."""
    out: list[str] = []
    for attempt in range(1, attempts + 1):
        out.append(f"STARTED#{attempt}")
        if not parent and (attempt == 1 or not replay):
            out.append("RUNNING")
    return [*out, "VALUE", "COMPLETED"]


def verify_store(
    path: str,
    n: int,
    *,
    attempts: Mapping[int, int] | None = None,
    parent_attempts: int = 1,
    replay: bool = False,
) -> dict[str, Any]:
    """Check the store after a complete run of ``n`` children (see the module's docstring).

    ``attempts`` gives the children that ran more than once (scenario F: interrupted by the
    kill and run again); every other child ran exactly once. ``replay``: a child that ran
    again stored its RUNNING envelope once (sluiceway), not once per attempt (the baseline);
    see :func:`expected_kinds`.
    """
    attempts = attempts or {}
    conn = sqlite3.connect(path)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        if integrity != [("ok",)]:
            raise BenchmarkError(f"PRAGMA integrity_check: {integrity[:5]}")
        entities = conn.execute(
            "SELECT id, parent_id, name, status, result, attempt, lease_owner FROM entities"
        ).fetchall()
        envelopes = conn.execute(
            "SELECT entity_id, body FROM envelopes ORDER BY entity_id, entity_seq"
        ).fetchall()
        seqs = conn.execute(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM envelopes"
        ).fetchone()
        edges = conn.execute("SELECT from_id, to_id, type FROM edges").fetchall()
    finally:
        conn.close()
    roots = [row for row in entities if row[1] is None]
    if len(roots) != 1 or roots[0][2] != PARENT:
        raise BenchmarkError(f"expected one root entity {PARENT!r}, found {roots!r}")
    root_id, _, _, root_status, root_result, root_attempt, _ = roots[0]
    if root_status != "COMPLETED" or json.loads(root_result) != parent_result(n):
        raise BenchmarkError(f"the parent is {root_status} with result {root_result}")
    if root_attempt != parent_attempts:
        raise BenchmarkError(f"the parent ran {root_attempt} times, expected {parent_attempts}")
    held = [row[2] for row in entities if row[6] is not None]
    if held:
        raise BenchmarkError(f"{len(held)} leases still held after the run: {held[:5]}")
    children = [row for row in entities if row[1] is not None]
    names = Counter(row[2] for row in children)
    if len(children) != n or set(names) != {child_name(i) for i in range(n)}:
        twice = [name for name, count in names.items() if count > 1][:5]
        raise BenchmarkError(
            f"{len(children)} children stored for {n} ({len(names)} names; twice: {twice})"
        )
    if any(row[1] != root_id for row in children):
        raise BenchmarkError("a child is stored under another parent")
    by_entity: dict[str, list[str]] = {}
    for entity_id, body in envelopes:
        by_entity.setdefault(entity_id, []).append(body)
    for entity_id, _, name, status, result, attempt, _ in children:
        i = int(name.removeprefix("child-"))
        expected_attempts = attempts.get(i, 1)
        if status != "COMPLETED" or json.loads(result) != child_result(i):
            raise BenchmarkError(f"{name} is {status} with result {result}")
        if attempt != expected_attempts:
            raise BenchmarkError(f"{name} ran {attempt} times, expected {expected_attempts}")
        kinds = _kinds(by_entity.get(entity_id, []))
        expected = expected_kinds(expected_attempts, replay=replay)
        if kinds != expected:
            raise BenchmarkError(
                f"{name} (attempt {attempt}) has the envelopes {kinds}, expected {expected}"
            )
    kinds = _kinds(by_entity.get(root_id, []))
    if kinds != expected_kinds(parent_attempts, parent=True):
        raise BenchmarkError(f"the parent has the envelopes {kinds}")
    count, distinct, _, _ = seqs
    expected_count = sum(
        len(expected_kinds(attempts.get(i, 1), replay=replay)) for i in range(n)
    ) + len(expected_kinds(parent_attempts, parent=True))
    if count != expected_count or distinct != count:
        raise BenchmarkError(
            f"{count} envelopes stored ({distinct} seqs), expected {expected_count}"
        )
    calls = Counter((from_id, edge_type) for from_id, _, edge_type in edges)
    child_ids = {row[0] for row in children}
    if (
        len(edges) != n
        or calls != {(root_id, "Calls"): n}
        or {to_id for _, to_id, _ in edges} != child_ids
    ):
        raise BenchmarkError(f"{len(edges)} edges stored for {n} children: {dict(calls)}")
    return {
        "stored_children": len(children),
        "stored_envelopes": count,
        "stored_edges": len(edges),
        "integrity_check": "ok",
    }


def count_envelopes(path: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM envelopes").fetchone()[0])
    finally:
        conn.close()


# -- scenario E: the two sides ---------------------------------------------------------------------


def store_dir(scenario: str) -> tempfile.TemporaryDirectory[str]:
    """A fresh temporary directory for one repetition's store file (deleted afterwards)."""
    return tempfile.TemporaryDirectory(prefix=f"sluiceway-bench-{scenario}-")


def _sluiceway(params: Params) -> Sample:
    n, limit = params["n"], params["concurrency"]
    out: dict[str, Any] = {}
    with store_dir("E") as tmp:
        path = str(Path(tmp) / "entities.db")

        async def main() -> float:
            run = new_trio_run(n, limit)
            store = SqliteStore(path)
            try:
                async with open_runtime(store, ENTITY_TYPES) as runtime:
                    root = await runtime.create(BenchParent, {"n": n}, name=PARENT)
                    before = store.statistics()
                    start = time.perf_counter()
                    result = await run_entity(lambda: runtime.run(root.id))
                    elapsed = time.perf_counter() - start
                    after = store.statistics()
            finally:
                set_run(None)
            if result != parent_result(n):
                raise BenchmarkError(f"the parent returned {result!r}")
            out["info"] = {
                **run.results.verify(),
                **run.log.verify(range(n)),
                **check_pool_idle(run.pool),
                "store_writes": after.writes - before.writes,
                "store_batches": after.batches - before.batches,
                "largest_batch": after.largest_batch,
                "store_reads": after.reads - before.reads,
            }
            return elapsed

        elapsed, wall = run_trio(main)
        info = {**out["info"], **verify_store(path, n), "wall_seconds": wall}
    return _sample(n, elapsed, info, info["store_batches"], info["store_writes"])


def _asyncio(params: Params) -> Sample:
    n, limit = params["n"], params["concurrency"]
    out: dict[str, Any] = {}
    with store_dir("E") as tmp:
        path = str(Path(tmp) / "entities.db")

        async def main() -> float:
            run = new_asyncio_run(n, limit)
            db = AsyncioDb(path)
            await db.open()
            try:
                root_id = await asyncio_create_root(db, n)
                before = db.transactions
                start = time.perf_counter()
                result = await asyncio_parent(db, run, root_id, resume=False)
                elapsed = time.perf_counter() - start
                transactions = db.transactions - before
            finally:
                await db.close()
            if result != parent_result(n):
                raise BenchmarkError(f"the parent returned {result!r}")
            out["info"] = {
                **run.results.verify(),
                **run.log.verify(range(n)),
                **check_semaphore_idle(run.semaphore, limit),
                "store_writes": transactions,
                "store_batches": transactions,
            }
            return elapsed

        elapsed, wall = run_asyncio(main)
        info = {**out["info"], **verify_store(path, n), "wall_seconds": wall}
    return _sample(n, elapsed, info, info["store_batches"], info["store_writes"])


def _sample(n: int, elapsed: float, info: dict[str, Any], batches: int, writes: int) -> Sample:
    envelopes = info["stored_envelopes"]
    return Sample(
        {
            "seconds": elapsed,
            "children_per_s": n / elapsed,
            "envelopes_per_s": envelopes / elapsed,
            "us_per_child": elapsed / n * 1e6,
            "transactions": batches,
            "writes_per_transaction": writes / batches,
        },
        info,
    )


class EntityFanout(Scenario):
    key = "E"
    title = "entity fan-out on the SQLite store, concurrency 100"
    baseline = (
        "asyncio TaskGroup + Semaphore(100), stdlib sqlite3 on one connection in a "
        "ThreadPoolExecutor(max_workers=1) (loop.run_in_executor): per child 4 transactions "
        "(insert row+edge; claim+STARTED; RUNNING; finish+VALUE+COMPLETED), same schema, WAL, "
        "synchronous=NORMAL, results via a Queue; no leases/fencing, no group commit"
    )
    metrics = (
        Metric("seconds", "time", "s"),
        Metric("children_per_s", "children/s (higher is better)", "1/s", 0),
        Metric("envelopes_per_s", "envelopes stored/s (higher is better)", "1/s", 0),
        Metric("us_per_child", "per child", "us", 1),
        Metric("transactions", "write transactions", "count", 0),
        Metric("writes_per_transaction", "writes per transaction", "mean", 1),
    )

    def params(self, quick: bool) -> dict[str, Any]:
        return {"n": 1_000 if quick else 10_000, "concurrency": 100}

    def warm_up_params(self) -> dict[str, Any]:
        return {"n": 200, "concurrency": 100}

    def describe(self, params: Params) -> str:
        return (
            f"1 parent entity, {params['n']:,} children via parallel_calls, concurrency "
            f"{params['concurrency']}; each child 1 status envelope + a small result (4 "
            "envelopes per child stored); fresh store file per run"
        )

    def run(self, side: str, params: Params) -> Sample:
        return _sluiceway(params) if side == SLUICEWAY else _asyncio(params)

    def target(self, summary: Summary, params: Params) -> Target:
        ours = summary["children_per_s"][SLUICEWAY].median
        theirs = summary["children_per_s"][ASYNCIO].median
        return Target(
            f"sluiceway >= {TARGET_CHILDREN_PER_SECOND:,} children/s",
            f"{ours:,.0f} children/s ({ratio(summary, 'children_per_s'):.2f}x asyncio's "
            f"{theirs:,.0f}/s)",
            ours >= TARGET_CHILDREN_PER_SECOND,
        )
