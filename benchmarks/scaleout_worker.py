"""The worker processes of scenarios J and K (``scaleout.py``): one process of K sharing one
PostgreSQL database, on either side.

``python -m benchmarks.scaleout_worker SIDE DSN OPTIONS_JSON`` opens its side's connections,
prints one JSON line ``{"ready": true, "pid": ..., "owner": ...}``, works (claims roots that
are due and runs them) until a line arrives on its standard input (or it closes), then prints
one JSON report line and exits. The driver starts, stops and SIGKILLs these processes; it
submits the roots and measures.

**The workload** (both sides): root ``r`` of ``m`` children fans out the children
``r*m .. r*m+m-1`` (a global index ``g``, so every child of the run has its own number); each
child emits one RUNNING status envelope and returns ``{"i": g, "double": 2g}`` (scenario E's
child), so a child ends with its row, its ``Calls`` edge and 4 envelopes (STARTED, RUNNING,
VALUE, COMPLETED), a root with 3 (STARTED, VALUE, COMPLETED). At most ``limit`` (100) child
bodies run at once in a process, whatever roots they belong to, and a process holds at most
``max_runs`` roots at once. Scenario K's root (``{"hold": seconds}``) stores a RUNNING status
and sleeps.

**sluiceway**: ``open_runtime(PostgresStore(dsn), [ScaleRoot, ScaleChild, HoldRoot],
max_runs=..., lease_seconds=..., poll_interval=...)``; its claim loop claims the submitted roots
(woken by the store's ``NOTIFY``), each root's run fans its children out with
``ctx.parallel_calls`` through a ``HierarchicalTaskPoolRunner`` under the process's one
``CapacitySource(limit)``.

**asyncio baseline**: psycopg 3's ``AsyncConnectionPool`` (``pool`` connections) under
``asyncio.run``, the same tables as the store's (the columns, unique constraints, indexes and
foreign keys this workload touches), written the usual way: **one transaction per step**
(``async with pool.connection()``: its block is the transaction). A claim loop, woken by
``LISTEN``/``NOTIFY`` or every ``poll`` seconds, claims due roots with ``FOR UPDATE SKIP
LOCKED`` (submitted, or IN_PROGRESS with an expired lease: a dead process's), at most
``max_runs`` held, with their STARTED envelopes; a heartbeat task renews the process's leases
every third of ``lease``. A root's run spawns a task per child in an ``asyncio.TaskGroup``,
each under the process's ``asyncio.Semaphore(limit)``, and consumes their results from an
``asyncio.Queue``; each child takes E's four steps, each one transaction: insert its row and
edge; claim it (status, lease, attempt, STARTED); its RUNNING envelope; finish it (status,
result, lease cleared, VALUE and COMPLETED). Then the root is finished the same way. Times are
the database's (``clock_timestamp()`` in the statements). Envelope ``seq`` is an identity
column: unlike the store's, not handed out in commit order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from sluiceway import (
    CapacitySource,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    PostgresStore,
    RunContext,
    RunnableEntity,
    open_runtime,
)

from .entities import (
    _dumps,
    child_index,
    child_name,
    child_result,
    final_bodies,
    running_body,
    running_message,
    started_body,
)
from .fanout import capacity_probe, semaphore_probe
from .harness import ASYNCIO, SLUICEWAY, BenchmarkError, Tracker, task_failed

#: The channel the baseline's submissions ``NOTIFY`` and its workers ``LISTEN`` on.
CHANNEL = "bench_due"
#: The database's clock, in seconds since the epoch (the baseline's statements).
NOW = "extract(epoch FROM clock_timestamp())"


# -- the workload, shared by both sides and the driver ---------------------------------------------


def root_name(r: int) -> str:
    return f"root-{r}"


def root_children(r: int, m: int) -> range:
    return range(r * m, (r + 1) * m)


def root_result(r: int, m: int) -> dict[str, Any]:
    """What root ``r`` of ``m`` children returns: their count and the sum of their doubles."""
    return {"children": m, "total": 2 * sum(root_children(r, m))}


def hold_result(hold: float) -> dict[str, Any]:
    return {"held": hold}


HOLD_MESSAGE = "holding the root"


# -- this process's accounting, identical on both sides --------------------------------------------


class WorkerLog:
    """What the bodies of this process report: the children that ran (each at most once), the
    roots whose run completed here, and the :class:`Tracker` of the child bodies in flight."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.ran: set[int] = set()
        self.roots: list[int] = []

    def enter(self, g: int) -> None:
        if g in self.ran:
            raise BenchmarkError(f"{child_name(g)} ran twice in process {os.getpid()}")
        self.ran.add(g)
        self.tracker.enter()

    def exit(self) -> None:
        self.tracker.exit()

    def report(self) -> dict[str, Any]:
        tracker = self.tracker
        if tracker.entered != len(self.ran) or tracker.exited != tracker.entered or tracker.active:
            raise BenchmarkError(
                f"process {os.getpid()}: {tracker.entered} child bodies entered, "
                f"{tracker.exited} exited, {len(self.ran)} children"
            )
        return {
            "ran": sorted(self.ran),
            "roots": sorted(self.roots),
            **tracker.verify(len(self.ran)),
        }


def _consume(r: int, m: int, g: object, value: object, seen: set[int]) -> int:
    """Check one child result delivered to root ``r``'s consumer; returns its double."""
    i = child_index(g, value)
    if i not in root_children(r, m):
        raise BenchmarkError(f"root {r} got the result of {child_name(i)}")
    if i in seen:
        raise BenchmarkError(f"root {r} got the result of {child_name(i)} twice")
    seen.add(i)
    return 2 * i


# -- sluiceway -------------------------------------------------------------------------------------


@dataclass
class TrioWorker:
    pool: CapacitySource
    log: WorkerLog


class _Current:
    worker: TrioWorker | None = None


def current() -> TrioWorker:
    if _Current.worker is None:
        raise BenchmarkError("no benchmark worker is set up in this process")
    return _Current.worker


class ScaleChild(RunnableEntity):
    """Scenario E's child: one RUNNING status envelope, a small dict returned."""

    async def run_impl(self, ctx: RunContext) -> Any:
        log = current().log
        g: int = self.data["i"]
        log.enter(g)
        await ctx.status("RUNNING", running_message(g))
        log.exit()
        return child_result(g)


class ScaleRoot(RunnableEntity, allowed_connections={"Calls": [ScaleChild]}):
    """Root ``r``: fans out its ``m`` children under the process's capacity node and consumes
    every result."""

    async def run_impl(self, ctx: RunContext) -> Any:
        worker = current()
        r: int = self.data["r"]
        m: int = self.data["m"]
        items = [(child_name(g), {"i": g}) for g in root_children(r, m)]
        runner = HierarchicalTaskPoolRunner(
            f"root-{r}", ctx.parallel_calls(ScaleChild, items), worker.pool
        )
        seen: set[int] = set()
        total = 0
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                if envelope.kind is EnvelopeKind.FINAL:
                    total += _consume(r, m, envelope.key, envelope.value, seen)
                elif envelope.kind is EnvelopeKind.ERROR:
                    raise task_failed(f"child {envelope.key!r}", envelope.error)
                else:
                    raise BenchmarkError(f"unexpected {envelope!r}: children emit no values")
        if len(seen) != m:
            raise BenchmarkError(f"root {r} got {len(seen)} results of {m}")
        worker.log.roots.append(r)
        return {"children": m, "total": total}


class HoldRoot(RunnableEntity):
    """Scenario K's root: stores a RUNNING status, then holds its lease for a long time."""

    async def run_impl(self, ctx: RunContext) -> Any:
        hold: float = self.data["hold"]
        await ctx.status("RUNNING", HOLD_MESSAGE)
        await trio.sleep(hold)
        return hold_result(hold)


ENTITY_TYPES: list[type[RunnableEntity]] = [ScaleRoot, ScaleChild, HoldRoot]


def owner_id(host: str | None, tag: str) -> str:
    """A lease owner id ``host:pid:tag`` (sluiceway's own format). ``host`` other than this
    machine's name makes the process look remote: its death is then only seen when its leases
    expire."""
    return f"{host or socket.gethostname()}:{os.getpid()}:{tag}"


async def _stdin_line() -> bytes:
    return await trio.to_thread.run_sync(sys.stdin.buffer.readline, abandon_on_cancel=True)


def sluiceway_worker(dsn: str, options: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    async def main() -> None:
        limit = options["limit"]
        pool = CapacitySource(limit, name="children")
        worker = TrioWorker(pool, WorkerLog(Tracker(SLUICEWAY, limit, capacity_probe(pool))))
        _Current.worker = worker
        store = PostgresStore(dsn)
        owner = owner_id(options.get("owner_host"), uuid.uuid4().hex[:12])
        async with open_runtime(
            store,
            ENTITY_TYPES,
            lease_seconds=options["lease"],
            poll_interval=options["poll"],
            max_runs=options["max_runs"],
            owner=owner,
            clock=store.clock,
        ) as runtime:
            _emit({"ready": True, "pid": os.getpid(), "owner": runtime.owner})
            await _stdin_line()
            claims = runtime.claims
            if claims is not None and claims.running:
                out["runs_at_stop"] = claims.running
            stats = store.statistics()
        out.update(worker.log.report())
        out["capacity_granted"] = pool.statistics().granted
        stats_after = pool.statistics()
        if stats_after.borrowed_tokens or stats_after.granted != stats_after.released:
            raise BenchmarkError(f"the capacity node is not idle at the end: {stats_after!r}")
        out["store"] = {
            "writes": stats.writes,
            "batches": stats.batches,
            "largest_batch": stats.largest_batch,
            "retries": stats.retries,
            "reads": stats.reads,
            "notifications": stats.notifications,
        }

    trio.run(main)
    return out


# -- asyncio + psycopg: the baseline ---------------------------------------------------------------

#: The store's tables that this workload touches, in its PostgreSQL types, with the same
#: columns, unique constraints, secondary indexes and foreign keys (envelope ``seq`` is an
#: identity column here; the store hands seqs out in commit order from a locked row).
SCHEMA = (
    """
    CREATE TABLE entities (
        id text PRIMARY KEY,
        ord bigint GENERATED ALWAYS AS IDENTITY,
        parent_id text REFERENCES entities (id),
        name text NOT NULL,
        type text NOT NULL,
        general_type text NOT NULL,
        status text NOT NULL CHECK (status IN (
            'PENDING', 'IN_PROGRESS', 'WAITING', 'COMPLETED', 'FAILED', 'CANCELLED'
        )),
        data text NOT NULL,
        result text,
        error text,
        attempt integer NOT NULL DEFAULT 0,
        lease_owner text,
        lease_expires double precision,
        created_at double precision NOT NULL,
        modified_at double precision NOT NULL,
        last_entity_seq bigint NOT NULL DEFAULT 0,
        runnable_at double precision
    )
    """,
    "CREATE UNIQUE INDEX entities_child_name ON entities (parent_id, name)"
    " WHERE parent_id IS NOT NULL",
    "CREATE UNIQUE INDEX entities_root_name ON entities (name) WHERE parent_id IS NULL",
    "CREATE INDEX entities_parent ON entities (parent_id, created_at, ord)",
    "CREATE INDEX entities_status ON entities (status)",
    "CREATE INDEX entities_lease_owner ON entities (lease_owner) WHERE lease_owner IS NOT NULL",
    "CREATE INDEX entities_runnable ON entities (runnable_at, ord) WHERE runnable_at IS NOT NULL",
    """
    CREATE TABLE edges (
        id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        from_id text NOT NULL REFERENCES entities (id),
        to_id text NOT NULL REFERENCES entities (id),
        type text NOT NULL,
        position integer NOT NULL,
        data text NOT NULL,
        created_at double precision NOT NULL,
        UNIQUE (from_id, type, to_id),
        UNIQUE (from_id, type, position)
    )
    """,
    "CREATE INDEX edges_to ON edges (to_id)",
    """
    CREATE TABLE envelopes (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        entity_id text NOT NULL REFERENCES entities (id),
        entity_seq bigint NOT NULL,
        ts double precision NOT NULL,
        body text NOT NULL,
        UNIQUE (entity_id, entity_seq)
    )
    """,
    "CREATE INDEX envelopes_entity ON envelopes (entity_id, seq)",
)

_INSERT_ENVELOPE = (
    f"INSERT INTO envelopes (entity_id, entity_seq, ts, body) VALUES (%s, %s, {NOW}, %s)"
)

# Roots that are due: submitted, or held by a lease that expired (a dead process's run).
_CLAIM_ROOTS = f"""
    WITH due AS (
        SELECT id FROM entities
        WHERE parent_id IS NULL AND (
            (runnable_at IS NOT NULL AND runnable_at <= {NOW})
            OR (status = 'IN_PROGRESS' AND lease_expires < {NOW})
        )
        ORDER BY ord LIMIT %s FOR UPDATE SKIP LOCKED
    )
    UPDATE entities AS e SET status = 'IN_PROGRESS', lease_owner = %s,
        lease_expires = {NOW} + %s, attempt = e.attempt + 1, runnable_at = NULL,
        last_entity_seq = e.last_entity_seq + 1, modified_at = {NOW}
    FROM due WHERE e.id = due.id
    RETURNING e.id, e.attempt, e.last_entity_seq, e.data
"""


@dataclass
class AsyncioWorker:
    """One baseline worker process: its pool, its limits, its claim loop's state."""

    pool: Any  # psycopg_pool.AsyncConnectionPool
    owner: str
    lease: float
    poll: float
    max_runs: int
    semaphore: asyncio.Semaphore
    log: WorkerLog
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0
    transactions: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    # -- the steps, one transaction each ---------------------------------------------------------

    async def claim_roots(self, limit: int) -> list[tuple[str, int, dict[str, Any]]]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(_CLAIM_ROOTS, (limit, self.owner, self.lease))
            rows = await cursor.fetchall()
            if rows:
                async with conn.cursor() as cur:
                    await cur.executemany(
                        _INSERT_ENVELOPE,
                        [(row[0], row[2], started_body(row[1])) for row in rows],
                    )
        self.transactions += 1
        return [(entity_id, attempt, json.loads(data)) for entity_id, attempt, _, data in rows]

    async def create_child(self, entity_id: str, parent_id: str, g: int, position: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO entities (id, parent_id, name, type, general_type, status, data,"
                f" created_at, modified_at) VALUES (%s, %s, %s, 'ScaleChild', 'ScaleChild',"
                f" 'PENDING', %s, {NOW}, {NOW})",
                (entity_id, parent_id, child_name(g), _dumps({"i": g})),
            )
            await conn.execute(
                "INSERT INTO edges (from_id, to_id, type, position, data, created_at)"
                f" VALUES (%s, %s, 'Calls', %s, '{{}}', {NOW})",
                (parent_id, entity_id, position),
            )
        self.transactions += 1

    async def claim_child(self, entity_id: str) -> None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE entities SET status = 'IN_PROGRESS', lease_owner = %s,"
                f" lease_expires = {NOW} + %s, attempt = attempt + 1,"
                f" last_entity_seq = last_entity_seq + 1, modified_at = {NOW}"
                " WHERE id = %s RETURNING attempt, last_entity_seq",
                (self.owner, self.lease, entity_id),
            )
            attempt, seq = await cursor.fetchone()
            await conn.execute(_INSERT_ENVELOPE, (entity_id, seq, started_body(attempt)))
        self.transactions += 1

    async def append(self, entity_id: str, body: str) -> None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE entities SET last_entity_seq = last_entity_seq + 1 WHERE id = %s"
                " RETURNING last_entity_seq",
                (entity_id,),
            )
            (seq,) = await cursor.fetchone()
            await conn.execute(_INSERT_ENVELOPE, (entity_id, seq, body))
        self.transactions += 1

    async def finish(self, entity_id: str, result: object) -> None:
        bodies = final_bodies(result)
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE entities SET status = 'COMPLETED', result = %s, lease_owner = NULL,"
                f" lease_expires = NULL, modified_at = {NOW},"
                " last_entity_seq = last_entity_seq + %s WHERE id = %s RETURNING last_entity_seq",
                (_dumps(result), len(bodies), entity_id),
            )
            (seq,) = await cursor.fetchone()
            first = seq - len(bodies) + 1
            async with conn.cursor() as cur:
                await cur.executemany(
                    _INSERT_ENVELOPE,
                    [(entity_id, first + k, body) for k, body in enumerate(bodies)],
                )
        self.transactions += 1

    async def renew_leases(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                f"UPDATE entities SET lease_expires = {NOW} + %s"
                " WHERE lease_owner = %s AND status = 'IN_PROGRESS'",
                (self.lease, self.owner),
            )
        self.transactions += 1

    # -- the runs --------------------------------------------------------------------------------

    async def child(self, parent_id: str, g: int, position: int) -> tuple[bool, int, object]:
        async with self.semaphore:
            try:
                entity_id = str(uuid.uuid4())
                await self.create_child(entity_id, parent_id, g, position)
                await self.claim_child(entity_id)
                self.log.enter(g)  # the body: the same work as ScaleChild.run_impl
                await self.append(entity_id, running_body(g))
                self.log.exit()
                result = child_result(g)
                await self.finish(entity_id, result)
            except Exception as exc:
                return (False, g, exc)
        return (True, g, result)

    async def run_root(self, entity_id: str, data: dict[str, Any]) -> None:
        try:
            if "hold" in data:
                await self.append(entity_id, _dumps_status_running(HOLD_MESSAGE))
                await asyncio.sleep(data["hold"])
                await self.finish(entity_id, hold_result(data["hold"]))
                return
            r, m = data["r"], data["m"]
            queue: asyncio.Queue[tuple[bool, int, object] | None] = asyncio.Queue()

            async def one(g: int, position: int) -> None:
                queue.put_nowait(await self.child(entity_id, g, position))

            async def spawn_all() -> None:
                async with asyncio.TaskGroup() as group:
                    for position, g in enumerate(root_children(r, m), start=1):
                        group.create_task(one(g, position))
                queue.put_nowait(None)

            seen: set[int] = set()
            total = 0

            async def consume() -> None:
                nonlocal total
                while (item := await queue.get()) is not None:
                    ok, g, value = item
                    if not ok:
                        raise task_failed(f"asyncio child {child_name(g)!r}", value)
                    total += _consume(r, m, child_name(g), value, seen)

            async with asyncio.TaskGroup() as group:
                group.create_task(consume())
                group.create_task(spawn_all())
            if len(seen) != m:
                raise BenchmarkError(f"root {r} got {len(seen)} results of {m}")
            await self.finish(entity_id, {"children": m, "total": total})
            self.log.roots.append(r)
        finally:
            self.running -= 1
            self.wake.set()

    async def claim_loop(self) -> None:
        while True:
            self.wake.clear()
            free = self.max_runs - self.running
            if free > 0:
                claimed = await self.claim_roots(free)
                for entity_id, _, data in claimed:
                    self.running += 1
                    task = asyncio.get_running_loop().create_task(self.run_root(entity_id, data))
                    self.tasks.add(task)
                    task.add_done_callback(self._run_done)
                if len(claimed) == free:
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll)

    def _run_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A root's run failed: a correctness failure, reported by the process's exit.
            print(f"a root's run failed: {task.exception()!r}", file=sys.stderr, flush=True)
            os._exit(3)

    async def listen(self, conn: Any) -> None:
        async for _ in conn.notifies():
            self.wake.set()

    async def heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            await self.renew_leases()


def _dumps_status_running(message: str) -> str:
    return _dumps({"type": "STATUS", "status": "RUNNING", "message": message})


def asyncio_worker(dsn: str, options: dict[str, Any]) -> dict[str, Any]:
    import psycopg  # noqa: PLC0415 - the baseline's processes only
    from psycopg_pool import AsyncConnectionPool  # noqa: PLC0415

    out: dict[str, Any] = {}

    async def main() -> None:
        limit = options["limit"]
        semaphore = asyncio.Semaphore(limit)
        log = WorkerLog(Tracker(ASYNCIO, limit, semaphore_probe(semaphore, limit)))
        pool = AsyncConnectionPool(
            dsn, min_size=options["pool"], max_size=options["pool"], open=False
        )
        await pool.open(wait=True, timeout=30)
        listener = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            await listener.execute(f"LISTEN {CHANNEL}")
            worker = AsyncioWorker(
                pool,
                owner_id(options.get("owner_host"), "asyncio"),
                options["lease"],
                options["poll"],
                options["max_runs"],
                semaphore,
                log,
            )
            loop = asyncio.get_running_loop()
            background = [
                loop.create_task(worker.claim_loop()),
                loop.create_task(worker.heartbeat()),
                loop.create_task(worker.listen(listener)),
            ]
            _emit({"ready": True, "pid": os.getpid(), "owner": worker.owner})
            stop = loop.run_in_executor(None, sys.stdin.buffer.readline)
            await asyncio.wait([stop, *background], return_when=asyncio.FIRST_COMPLETED)
            for task in background:
                if task.done():
                    task.result()  # a background task failed: raise its error
            if worker.tasks:
                out["runs_at_stop"] = len(worker.tasks)
            for task in [*background, *worker.tasks]:
                task.cancel()
            await asyncio.gather(*background, *worker.tasks, return_exceptions=True)
        finally:
            await listener.close()
            await pool.close()
        out.update(log.report())
        if semaphore._value != limit:
            raise BenchmarkError(f"the semaphore is at {semaphore._value} at the end, not {limit}")
        out["store"] = {"writes": worker.transactions, "batches": worker.transactions}

    asyncio.run(main())
    return out


async def create_baseline_schema(conn: Any) -> None:
    """Create the baseline's tables (``conn``: an autocommit psycopg ``AsyncConnection``)."""
    async with conn.transaction():
        for statement in SCHEMA:
            await conn.execute(statement)


def create_baseline_schema_sync(conn: Any) -> None:
    """Create the baseline's tables (``conn``: an autocommit psycopg ``Connection``)."""
    with conn.transaction():
        for statement in SCHEMA:
            conn.execute(statement)


# -- the process -----------------------------------------------------------------------------------


def _emit(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str]) -> int:
    """``python -m benchmarks.scaleout_worker SIDE DSN OPTIONS_JSON``."""
    side, dsn, options = argv[0], argv[1], json.loads(argv[2])
    work = {SLUICEWAY: sluiceway_worker, ASYNCIO: asyncio_worker}[side]
    started = time.process_time()
    try:
        report = work(dsn, options)
    except BaseException as exc:  # the driver fails the suite loudly with this
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise
    report["pid"] = os.getpid()
    report["cpu_seconds"] = time.process_time() - started
    _emit(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
