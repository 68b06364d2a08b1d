"""Scenario I: 10,000 long sleepers. Each durably records that it started, sleeps three days,
then durably records that it finished.

What is measured, on both sides, in a fresh interpreter per repetition (``python -m
benchmarks.parking SIDE STORE N SUBMITTERS``, which prints one JSON line):

* **parked per second**: N / the time from just before the first sleeper is created until all N
  have recorded their start and are waiting (sluiceway: every run has parked; asyncio: every
  task is in its ``asyncio.sleep``);
* **woken and completed per second**: N / the time from the clock jump of three days until all N
  have recorded their end;
* **RSS per waiting sleeper**: (``VmRSS`` with all N waiting - ``VmRSS`` just before the first
  was created) / N, each read after ``gc.collect()``, in the process that runs them.

Time is not waited for: each side's clock is shifted by three days once all N are waiting.

sluiceway side: ``open_runtime(SqliteStore(path), [Sleeper], clock=...)`` with its defaults
(``park_after`` 10 s, ``max_runs`` 100, ``claim_batch`` 50, ``poll_interval`` 0.5 s), the
wall clock being ``time.time() + offset``. ``Sleeper.run_impl`` stores a RUNNING status
("going to sleep"), ``await ctx.sleep(3 days)`` and returns ``{"i": i}``. 100 submitter tasks
``runtime.create()`` then ``runtime.start()`` the N sleepers; the claim loop claims them, each run
stores its start, begins the durable timer and parks (the run ends, its lease goes, the row is
WAITING with ``runnable_at`` three days ahead). All parked = every body has reached its sleep
and the claim loop has no run left (``runtime.claims.idle()``). The jump: the offset grows by
three days and ``runtime.claims.wake()`` makes the claim loop look at once (it would look by
itself within ``poll_interval``); it claims the N sleepers, due now, in batches, and each
replays from the top of ``run_impl`` (the stored RUNNING status is not stored again, the
elapsed wait returns at once) and completes.

asyncio side (the baseline, "the usual way"): one task per sleeper in an ``asyncio.TaskGroup``,
storage as scenario E's baseline (``AsyncioDb``: stdlib ``sqlite3`` on one connection owned by a
single-thread executor, one transaction per step, the same schema, WAL,
``synchronous=NORMAL``). Each task: insert its row; claim it (status, lease, attempt, STARTED
envelope); the RUNNING "going to sleep" envelope; ``await asyncio.sleep(3 days)``; finish it
(status, result, lease cleared, VALUE and COMPLETED envelopes). The event loop is asyncio's own
with its ``time()`` shifted by an offset (:class:`ShiftedLoop`); the jump adds three days to
it, and the loop runs every timer that is then due. What it does not do: the wait is not stored
(a crash loses every sleeper: their rows say IN_PROGRESS, with no wake-up time), no leases are
checked, no group commit.

Checks on every repetition of both sides. At the moment all are waiting (read from the store
file with a separate connection): N sleepers stored, none COMPLETED, each with exactly its
STARTED and RUNNING envelopes; sluiceway: every one WAITING, ``parked_on = 'timer'``, no lease,
``runnable_at`` three days after it was started, one timer wait each, and fewer than 50 live
trio tasks (``trio.lowlevel.current_statistics().tasks_living``), not about N; asyncio: every
one IN_PROGRESS. In the process: no sleeper woke before the jump; each woke exactly once. After
the run (:func:`verify_sleepers`, on the store file): every sleeper exists once, is COMPLETED
with its result, holds no lease, and has exactly its envelopes in order: its RUNNING "going to
sleep" once (before the jump), VALUE and COMPLETED once (after it), STARTED once per attempt;
sluiceway: attempt 2 (one park, one wake), its timer wait ELAPSED, nothing left parked or due;
asyncio: attempt 1; ``PRAGMA integrity_check`` ok.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import math
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from sluiceway import RunContext, RunnableEntity, SqliteStore, open_runtime

from .entities import AsyncioDb
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
    ratio,
    run_worker,
)
from .memory import MemoryProbe, current_rss_bytes

DAY = 86_400.0
#: How long every sleeper sleeps, and how far each side's clock jumps once all are waiting.
SLEEP_SECONDS = 3 * DAY
#: What a sleeper's start record says (its RUNNING status envelope).
ASLEEP_MESSAGE = "going to sleep"
#: The most live trio tasks allowed while N entities are parked (a constant, not about N).
MAX_TASKS_PARKED = 50
#: The target: sluiceway's RSS per parked entity at most this fraction of asyncio's per task.
TARGET_RSS_FRACTION = 0.1
STORE_FILE = "sleepers.db"
ROOT = Path(__file__).resolve().parents[1]


def sleeper_name(i: int) -> str:
    return f"sleeper-{i}"


def sleeper_result(i: int) -> dict[str, Any]:
    return {"i": i}


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# -- what the bodies report, identically on both sides -----------------------------------------


class SleeperLog:
    """The sleepers of one process: which reached their sleep before the jump, which woke (each
    once, none before the jump), and the events the timer waits for."""

    def __init__(self, n: int, on_all_asleep: Callable[[], None], on_all_woke: Callable[[], None]):
        self.n = n
        self.jumped = False
        self.entered = 0  # body entries (sluiceway: twice per sleeper, the replay included)
        self.asleep = bytearray(n)
        self.asleep_count = 0
        self.woke = bytearray(n)
        self.woke_count = 0
        self.woke_early: list[int] = []
        self.woke_twice: list[int] = []
        self._on_all_asleep = on_all_asleep
        self._on_all_woke = on_all_woke

    def going_to_sleep(self, i: int) -> None:
        """The body reached its sleep (after its start record)."""
        self.entered += 1
        if self.jumped:
            return  # sluiceway's replay reaches it again; the wait returns at once
        if self.asleep[i]:
            raise BenchmarkError(f"{sleeper_name(i)} went to sleep twice before the jump")
        self.asleep[i] = 1
        self.asleep_count += 1
        if self.asleep_count == self.n:
            self._on_all_asleep()

    def woke_up(self, i: int) -> None:
        """The body's sleep returned (reported, not raised: raising would fail the entity)."""
        if not self.jumped:
            self.woke_early.append(i)
        if self.woke[i]:
            self.woke_twice.append(i)
            return
        self.woke[i] = 1
        self.woke_count += 1
        if self.woke_count == self.n:
            self._on_all_woke()

    def verify(self) -> dict[str, Any]:
        if self.woke_early:
            raise BenchmarkError(
                f"{len(self.woke_early)} sleepers woke before the clock jump: "
                f"{[sleeper_name(i) for i in self.woke_early[:5]]}"
            )
        if self.woke_twice:
            raise BenchmarkError(
                f"{len(self.woke_twice)} sleepers woke twice: "
                f"{[sleeper_name(i) for i in self.woke_twice[:5]]}"
            )
        if self.asleep_count != self.n or self.woke_count != self.n:
            raise BenchmarkError(
                f"{self.asleep_count} sleepers went to sleep and {self.woke_count} woke, "
                f"expected {self.n}"
            )
        return {"bodies_entered": self.entered, "woke": self.woke_count}


# -- sluiceway: the entity ---------------------------------------------------------------------


class _Current:
    log: SleeperLog | None = None


def current_log() -> SleeperLog:
    if _Current.log is None:
        raise BenchmarkError("no benchmark run is set up in this process")
    return _Current.log


class Sleeper(RunnableEntity):
    """Stores that it starts, sleeps three days durably, returns ``{"i": i}``."""

    async def run_impl(self, ctx: RunContext) -> Any:
        log = current_log()
        i: int = self.data["i"]
        await ctx.status("RUNNING", ASLEEP_MESSAGE)
        log.going_to_sleep(i)
        await ctx.sleep(SLEEP_SECONDS)
        log.woke_up(i)
        return sleeper_result(i)


# -- checking the store ------------------------------------------------------------------------


def _read_only(path: str) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _envelope_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT entity_id, count(*) FROM envelopes GROUP BY entity_id"))


def check_waiting(
    path: str, n: int, side: str, started_from: float, started_until: float
) -> dict[str, Any]:
    """The store at the moment all N are waiting (before the jump): N sleepers, none finished,
    each with its STARTED and RUNNING envelopes only; sluiceway: all parked on their timer,
    due three days after they started."""
    conn = _read_only(path)
    try:
        rows = conn.execute(
            "SELECT id, name, status, attempt, lease_owner, result FROM entities"
        ).fetchall()
        envelopes = _envelope_counts(conn)
        parked: list[tuple[Any, ...]] = []
        waits: dict[str, tuple[str, str, float]] = {}
        if side == SLUICEWAY:
            parked = conn.execute(
                "SELECT id, parked_on, runnable_at FROM entities WHERE status = 'WAITING'"
            ).fetchall()
            waits = {
                entity_id: (kind, state, deadline)
                for entity_id, kind, state, deadline in conn.execute(
                    "SELECT entity_id, kind, state, deadline FROM waits"
                )
            }
    finally:
        conn.close()
    if len(rows) != n or {row[1] for row in rows} != {sleeper_name(i) for i in range(n)}:
        raise BenchmarkError(f"{len(rows)} sleepers stored while waiting, expected {n}")
    wanted = "WAITING" if side == SLUICEWAY else "IN_PROGRESS"
    wrong = [row[1] for row in rows if row[2] != wanted or row[3] != 1 or row[5] is not None]
    if wrong:
        raise BenchmarkError(
            f"{len(wrong)} sleepers not {wanted} at attempt 1 without a result before the jump "
            f"(none may have finished): {wrong[:5]}"
        )
    odd = [row[1] for row in rows if envelopes.get(row[0]) != 2]
    if odd:
        raise BenchmarkError(f"{len(odd)} sleepers without exactly 2 envelopes: {odd[:5]}")
    if side == SLUICEWAY:
        leased = [row[1] for row in rows if row[4] is not None]
        if leased:
            raise BenchmarkError(f"{len(leased)} parked sleepers still hold a lease: {leased[:5]}")
        low, high = started_from + SLEEP_SECONDS, started_until + SLEEP_SECONDS
        bad = [
            entity_id
            for entity_id, parked_on, runnable_at in parked
            if parked_on != "timer" or runnable_at is None or not low <= runnable_at <= high
        ]
        if len(parked) != n or bad:
            raise BenchmarkError(
                f"{len(parked)} sleepers parked, {len(bad)} of them not on a timer due three "
                f"days after their start: {bad[:5]}"
            )
        if len(waits) != n or any(
            (kind, state) != ("timer", "waiting") for kind, state, _ in waits.values()
        ):
            raise BenchmarkError(f"{len(waits)} timer waits stored for {n} parked sleepers")
    return {"checked_waiting": n}


def verify_sleepers(path: str, n: int, side: str, jump_ts: float) -> dict[str, Any]:
    """The store after the run (see the module's docstring). ``jump_ts`` is the time of the
    jump on the clock the side's envelope timestamps use."""
    attempts = 2 if side == SLUICEWAY else 1
    conn = sqlite3.connect(path)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        if integrity != [("ok",)]:
            raise BenchmarkError(f"PRAGMA integrity_check: {integrity[:5]}")
        rows = conn.execute(
            "SELECT id, parent_id, name, status, result, attempt, lease_owner FROM entities"
        ).fetchall()
        envelopes = conn.execute(
            "SELECT entity_id, ts, body FROM envelopes ORDER BY entity_id, entity_seq"
        ).fetchall()
        extra: dict[str, Any] = {}
        if side == SLUICEWAY:
            extra["still_due"] = conn.execute(
                "SELECT count(*) FROM entities WHERE runnable_at IS NOT NULL"
                " OR parked_on IS NOT NULL"
            ).fetchone()[0]
            extra["waits"] = conn.execute(
                "SELECT count(*), count(DISTINCT entity_id), sum(kind = 'timer' AND idx = 1"
                " AND state = 'elapsed') FROM waits"
            ).fetchone()
    finally:
        conn.close()
    names = {row[2] for row in rows}
    if len(rows) != n or names != {sleeper_name(i) for i in range(n)}:
        raise BenchmarkError(f"{len(rows)} sleepers stored ({len(names)} names), expected {n}")
    by_entity: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for entity_id, ts, body in envelopes:
        by_entity.setdefault(entity_id, []).append((ts, json.loads(body)))
    for entity_id, parent_id, name, status, result, attempt, lease_owner in rows:
        i = int(name.removeprefix("sleeper-"))
        if parent_id is not None:
            raise BenchmarkError(f"{name} has a parent")
        if status != "COMPLETED" or json.loads(result) != sleeper_result(i):
            raise BenchmarkError(f"{name} is {status} with result {result}")
        if attempt != attempts:
            raise BenchmarkError(f"{name} ran {attempt} times, expected {attempts}")
        if lease_owner is not None:
            raise BenchmarkError(f"{name} still holds a lease")
        found = [(_kind(body), ts >= jump_ts) for ts, body in by_entity.get(entity_id, [])]
        expected = [("STARTED#1", False), ("RUNNING", False)]
        if side == SLUICEWAY:
            expected.append(("STARTED#2", True))
        expected += [("VALUE", True), ("COMPLETED", True)]
        if found != expected:
            raise BenchmarkError(
                f"{name} has the envelopes (kind, written after the jump) {found}, expected "
                f"{expected}"
            )
    if side == SLUICEWAY:
        if extra["still_due"]:
            raise BenchmarkError(f"{extra['still_due']} sleepers still parked or due")
        if tuple(extra["waits"]) != (n, n, n):
            raise BenchmarkError(
                f"timer waits (count, entities, elapsed): {extra['waits']}, expected {n} each"
            )
    return {"stored_sleepers": n, "stored_envelopes": len(envelopes), "integrity_check": "ok"}


def _kind(body: dict[str, Any]) -> str:
    kind = body.get("type")
    if kind == "STATUS":
        status = body.get("status")
        if status == "STARTED":
            return f"STARTED#{body.get('metadata', {}).get('attempt')}"
        if status == "RUNNING":
            return "RUNNING" if body.get("message") == ASLEEP_MESSAGE else f"RUNNING {body!r}"
        return str(status)
    if kind == "VALUE" and body.get("sub_type") == "return":
        return "VALUE"
    return str(kind)


# -- the worker: sluiceway ---------------------------------------------------------------------


def _deadline(n: int) -> float:
    """A bound on each phase, so that a run that never ends fails instead of hanging."""
    return 60.0 + n * 0.02


def _waiting_report(probe: MemoryProbe, rss_before: int, n: int) -> dict[str, Any]:
    gc.collect()
    rss = current_rss_bytes()
    if rss is None:
        raise BenchmarkError("scenario I reads the current RSS from /proc/self/status (Linux)")
    peak = probe.report()
    return {
        "rss_before_bytes": rss_before,
        "rss_waiting_bytes": rss,
        "rss_growth_bytes": rss - rss_before,
        "rss_per_sleeper_bytes": (rss - rss_before) / n,
        "rss_peak_bytes": peak["rss_peak_bytes"],
        "rss_method": peak["method"],
    }


def worker_sluiceway(path: str, n: int, submitters: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    offset = [0.0]

    def clock() -> float:
        return time.time() + offset[0]

    async def main() -> None:
        all_asleep, all_woke = trio.Event(), trio.Event()
        log = _Current.log = SleeperLog(n, all_asleep.set, all_woke.set)
        store = SqliteStore(path)
        try:
            async with open_runtime(store, [Sleeper], clock=clock) as runtime:
                claims = runtime.claims
                if claims is None:
                    raise BenchmarkError("the runtime has no claim loop")
                tasks_idle = trio.lowlevel.current_statistics().tasks_living
                probe = MemoryProbe()
                probe.start()
                rss_before = probe.before
                indices: Iterator[int] = iter(range(n))

                async def submit() -> None:
                    for i in indices:
                        record = await runtime.create(Sleeper, {"i": i}, name=sleeper_name(i))
                        await runtime.start(record.id)

                started_from = clock()
                start = time.perf_counter()
                with trio.fail_after(_deadline(n)):
                    async with trio.open_nursery() as nursery:
                        for _ in range(submitters):
                            nursery.start_soon(submit)
                    out["submitted_seconds"] = time.perf_counter() - start
                    await all_asleep.wait()
                    await claims.idle()
                out["parked_seconds"] = time.perf_counter() - start
                parked_at = clock()
                out["tasks_living_parked"] = trio.lowlevel.current_statistics().tasks_living
                out["tasks_living_idle"] = tasks_idle
                out["runs_parked"] = claims.running
                out.update(_waiting_report(probe, rss_before, n))
                if out["tasks_living_parked"] >= MAX_TASKS_PARKED or claims.running:
                    raise BenchmarkError(
                        f"{out['tasks_living_parked']} trio tasks alive and {claims.running} "
                        f"runs under way with all {n:,} entities parked (expected fewer than "
                        f"{MAX_TASKS_PARKED} and none)"
                    )
                out.update(check_waiting(path, n, SLUICEWAY, started_from, parked_at))
                # The jump: three days pass on the runtime's clock, and the claim loop is told
                # to look now (nothing is submitted).
                log.jumped = True
                offset[0] += SLEEP_SECONDS
                out["jump_ts"] = clock()
                start = time.perf_counter()
                claims.wake()
                with trio.fail_after(_deadline(n)):
                    await all_woke.wait()
                    await claims.idle()
                out["woken_seconds"] = time.perf_counter() - start
                stats = store.statistics()
                out["store_writes"], out["store_batches"] = stats.writes, stats.batches
        finally:
            _Current.log = None
        out.update(log.verify())

    gc.collect()
    wall = time.perf_counter()
    trio.run(main)
    out["wall_seconds"] = time.perf_counter() - wall
    return out


# -- the worker: asyncio -----------------------------------------------------------------------


class ShiftedLoop(asyncio.SelectorEventLoop):
    """asyncio's event loop with its clock shifted by ``offset`` seconds: growing the offset
    makes every timer that is then due run at the loop's next iteration."""

    offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset


class SleeperDb(AsyncioDb):
    """E's baseline storage, for root entities of type ``Sleeper``."""

    def _create(self, entity_id: str, parent_id: str | None, name: str, data: str) -> None:
        now = time.time()
        with self.conn as conn:
            conn.execute(
                "INSERT INTO entities (id, parent_id, name, type, general_type, status, data,"
                " created_at, modified_at) VALUES (?, NULL, ?, 'Sleeper', 'Sleeper', 'PENDING',"
                " ?, ?, ?)",
                (entity_id, name, data, now, now),
            )
        self.transactions += 1


def worker_asyncio(path: str, n: int, submitters: int) -> dict[str, Any]:
    del submitters  # one task per sleeper: the executor thread orders their writes
    out: dict[str, Any] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if not isinstance(loop, ShiftedLoop):
            raise BenchmarkError(f"the baseline runs on a ShiftedLoop, not {loop!r}")
        all_asleep, all_woke = asyncio.Event(), asyncio.Event()
        log = SleeperLog(n, all_asleep.set, lambda: None)
        finished = itertools.count(1)
        db = SleeperDb(path)
        await db.open()

        async def sleeper(i: int) -> None:
            entity_id = str(uuid.uuid4())
            await db.create(entity_id, None, sleeper_name(i), _dumps({"i": i}))
            await db.claim(entity_id)
            await db.append(entity_id, ASLEEP_BODY)
            log.going_to_sleep(i)
            await asyncio.sleep(SLEEP_SECONDS)
            log.woke_up(i)
            await db.finish(entity_id, sleeper_result(i))
            if next(finished) == n:
                all_woke.set()

        try:
            probe = MemoryProbe()
            probe.start()
            rss_before = probe.before
            start = time.perf_counter()
            bound = asyncio.timeout(_deadline(n))
            async with bound, asyncio.TaskGroup() as group:
                for i in range(n):
                    group.create_task(sleeper(i))
                await all_asleep.wait()
                out["parked_seconds"] = time.perf_counter() - start
                out["tasks_living_parked"] = len(asyncio.all_tasks())
                out.update(_waiting_report(probe, rss_before, n))
                out.update(check_waiting(path, n, ASYNCIO, 0.0, 0.0))
                # The jump: three days pass on the loop's clock; the sleepers' timers are due.
                log.jumped = True
                loop.offset += SLEEP_SECONDS
                bound.reschedule(loop.time() + _deadline(n))  # on the shifted clock too
                out["jump_ts"] = time.time()  # the baseline's envelopes carry time.time()
                start = time.perf_counter()
                await all_woke.wait()
                out["woken_seconds"] = time.perf_counter() - start
        finally:
            await db.close()
        out["store_writes"] = out["store_batches"] = db.transactions
        out.update(log.verify())

    gc.collect()
    wall = time.perf_counter()
    with asyncio.Runner(loop_factory=ShiftedLoop) as runner:
        runner.run(main())
    out["wall_seconds"] = time.perf_counter() - wall
    return out


ASLEEP_BODY = _dumps({"type": "STATUS", "status": "RUNNING", "message": ASLEEP_MESSAGE})


def worker_main(argv: list[str]) -> int:
    """``python -m benchmarks.parking SIDE STORE N SUBMITTERS``: one run, one JSON line."""
    side, path, n, submitters = argv[0], argv[1], int(argv[2]), int(argv[3])
    work = {SLUICEWAY: worker_sluiceway, ASYNCIO: worker_asyncio}[side]
    try:
        report = work(path, n, submitters)
    except BaseException as exc:  # report it to the driver, which fails the suite loudly
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise
    print(json.dumps(report))
    return 0


# -- the driver --------------------------------------------------------------------------------


def _spawn(side: str, path: str, params: Params) -> dict[str, Any]:
    n = params["n"]
    return run_worker(
        "benchmarks.parking",
        [side, path, str(n), str(params["submitters"])],
        timeout=3 * _deadline(n),
        what=f"{side} worker",
    )


class ParkedWaits(Scenario):
    key = "I"
    title = "parked waits: long sleepers on the SQLite store"
    baseline = (
        "a task per sleeper in an asyncio TaskGroup, asyncio.sleep(3 days) on a loop whose "
        "clock is shifted; stdlib sqlite3 as in E (one connection in a "
        "ThreadPoolExecutor(max_workers=1), per sleeper 4 transactions: insert; claim+STARTED; "
        "RUNNING; finish+VALUE+COMPLETED); the wait itself is not stored"
    )
    metrics = (
        Metric("parked_per_s", "started and waiting/s (higher is better)", "1/s", 0),
        Metric("woken_per_s", "woken and completed/s (higher is better)", "1/s", 0),
        Metric("rss_per_sleeper", "RSS per waiting sleeper", "bytes", 0),
        Metric("parked_seconds", "time until all wait", "s"),
        Metric("woken_seconds", "time from the jump until all completed", "s"),
        Metric("rss_growth_mb", "RSS growth with all waiting", "MB", 2),
        Metric("tasks_living", "live tasks with all waiting", "count", 0),
    )
    warm_up = False  # every run is a fresh interpreter anyway
    #: A repetition of both sides takes about 25 s at full size.
    full_repeat = 3

    def params(self, quick: bool) -> dict[str, Any]:
        return {"n": 300 if quick else 10_000, "submitters": 100, "sleep_seconds": SLEEP_SECONDS}

    def warm_up_params(self) -> dict[str, Any]:
        return {**self.params(quick=True), "n": 50}

    def describe(self, params: Params) -> str:
        return (
            f"{params['n']:,} sleepers, each stores its start, sleeps 3 days (the clock jumps), "
            f"stores its end; sluiceway parks them ({params['submitters']} submitters create "
            "and start them); a fresh process and store file per run"
        )

    def run(self, side: str, params: Params) -> Sample:
        n = params["n"]
        with tempfile.TemporaryDirectory(prefix="sluiceway-bench-I-") as tmp:
            path = str(Path(tmp) / STORE_FILE)
            report = _spawn(side, path, params)
            report.update(verify_sleepers(path, n, side, report["jump_ts"]))
        metrics = {
            "parked_per_s": n / report["parked_seconds"],
            "woken_per_s": n / report["woken_seconds"],
            "rss_per_sleeper": report["rss_per_sleeper_bytes"],
            "parked_seconds": report["parked_seconds"],
            "woken_seconds": report["woken_seconds"],
            "rss_growth_mb": report["rss_growth_bytes"] / 1e6,
            "tasks_living": report["tasks_living_parked"],
        }
        return Sample(metrics, report)

    def target(self, summary: Summary, params: Params) -> Target:
        ours = summary["rss_per_sleeper"][SLUICEWAY]
        theirs = summary["rss_per_sleeper"][ASYNCIO].median
        tasks = summary["tasks_living"][SLUICEWAY].high
        met = ours.high <= TARGET_RSS_FRACTION * theirs and tasks < MAX_TASKS_PARKED
        return Target(
            f"a parked entity costs a row, not a task: sluiceway RSS per parked entity <= "
            f"{TARGET_RSS_FRACTION:g}x asyncio's per sleeping task in every run, with < "
            f"{MAX_TASKS_PARKED} live trio tasks",
            f"max {ours.high:,.0f} B, median {ours.median:,.0f} B "
            f"({ratio(summary, 'rss_per_sleeper'):.3f}x asyncio's {theirs:,.0f} B), "
            f"{tasks:.0f} live tasks; parked/s {ratio(summary, 'parked_per_s'):.2f}x, "
            f"woken/s {ratio(summary, 'woken_per_s'):.2f}x asyncio",
            met and not math.isnan(ours.high),
        )


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
