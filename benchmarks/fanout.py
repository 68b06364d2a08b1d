"""Scenarios A (no-op fan-out) and B (latency-bound fan-out), plus the pieces C and D reuse.

sluiceway side: a :class:`~sluiceway.runners.HierarchicalTaskPoolRunner` over a list of tasks and a
:class:`~sluiceway.CapacitySource`, the consumer reading every envelope as it arrives, one at a
time (``async for envelope in envelopes``) or in batches (``async for batch in
envelopes.batches()``).

asyncio sides: the **worker pool** (C worker tasks taking bodies from an ``asyncio.Queue``, or
from a shared async generator under an ``asyncio.Lock``, each outcome put on a bounded results
``asyncio.Queue`` read by a consumer task: the fastest fan-out asyncio has, and the mark of A and
D), and ``asyncio.TaskGroup`` spawning all N tasks, each ``async with semaphore``, every outcome
put on an ``asyncio.Queue`` as the task finishes and read by a consumer task. Results are
delivered as they complete on every side, as sluiceway's are.

A and D measure the CPU time of the fan-out, each run of each side in a fresh interpreter
(``benchmarks/pertask.py``), and pair every sluiceway run with a worker-pool run right beside it
(:class:`PerTaskFanout`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Sequence,
)
from functools import partial
from typing import Any

import trio

from sluiceway import CapacitySource, PreciseClock
from sluiceway.runners import (
    DEFAULT_BUFFER_SIZE,
    EnvelopeChannel,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
)

from .harness import (
    ASYNCIO,
    SLUICEWAY,
    BenchmarkError,
    Metric,
    Params,
    Results,
    Sample,
    Scenario,
    Spread,
    Summary,
    Target,
    Tracker,
    run_asyncio,
    run_trio,
    run_worker,
    task_failed,
)

# -- task bodies (task ``i`` returns ``i``; ``emit`` is passed by sluiceway, unused) --------------


async def noop_body(tracker: Tracker, i: int, emit: object = None) -> int:
    """A no-op task: the same coroutine on both sides."""
    tracker.enter()
    tracker.exit()
    return i


async def trio_sleep_body(tracker: Tracker, delay: float, i: int, emit: object = None) -> int:
    tracker.enter()
    await trio.sleep(delay)
    tracker.exit()
    return i


async def asyncio_sleep_body(tracker: Tracker, delay: float, i: int) -> int:
    tracker.enter()
    await asyncio.sleep(delay)
    tracker.exit()
    return i


# -- sluiceway: drain a runner -----------------------------------------------------------------


async def drain_runner(
    runner: HierarchicalTaskPoolRunner[Any, Any],
    results: Results,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``runner`` and consume every envelope as it arrives.

    ``task_status.started()`` is called once the run is open (its demand is queued in the
    capacity tree), so ``nursery.start`` orders runs deterministically.
    """
    async with runner.run_tasks() as envelopes:
        task_status.started()
        async for envelope in envelopes:
            if envelope.kind is EnvelopeKind.FINAL:
                results.add(envelope.value)
            elif envelope.kind is EnvelopeKind.ERROR:
                raise task_failed(
                    f"runner {runner.name!r} task #{envelope.task_id}", envelope.error
                )
            else:
                raise BenchmarkError(f"unexpected {envelope!r}: no task emits intermediates")


async def drain_runner_batches(
    runner: HierarchicalTaskPoolRunner[Any, Any],
    results: Results,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """:func:`drain_runner`, taking the envelopes in batches (``envelopes.batches()``): one
    schedule point per batch instead of one per envelope; every envelope is checked the same."""
    async with runner.run_tasks() as envelopes:
        task_status.started()
        add = results.add
        final = EnvelopeKind.FINAL
        async for batch in envelopes.batches():
            for envelope in batch:
                if envelope.kind is final:
                    add(envelope.value)
                elif envelope.kind is EnvelopeKind.ERROR:
                    raise task_failed(
                        f"runner {runner.name!r} task #{envelope.task_id}", envelope.error
                    )
                else:
                    raise BenchmarkError(f"unexpected {envelope!r}: no task emits intermediates")


def batches_available() -> bool:
    """Whether this sluiceway's envelope channel has ``batches()``."""
    return hasattr(EnvelopeChannel, "batches")


# -- asyncio: TaskGroup + Semaphore, spawn all, results through a queue ------------------------

Outcome = tuple[bool, object]  # (ok, value or error)


async def asyncio_semaphore_fanout(
    bodies: Iterable[Callable[[], Awaitable[int]]],
    semaphores: Sequence[asyncio.Semaphore],
    results: Results,
) -> None:
    """Spawn one task per body in a TaskGroup; each enters ``semaphores`` in order (nested).

    Each outcome goes on an unbounded ``asyncio.Queue`` once the task has left its semaphores;
    a consumer task reads them until the sentinel that follows the last one.
    """
    queue: asyncio.Queue[Outcome | None] = asyncio.Queue()

    async def run_one(body: Callable[[], Awaitable[int]]) -> None:
        outcome: Outcome
        async with semaphores[0]:
            try:
                outcome = (True, await body())
            except Exception as exc:
                outcome = (False, exc)
        queue.put_nowait(outcome)

    async def run_one_nested(body: Callable[[], Awaitable[int]]) -> None:
        outcome: Outcome
        async with semaphores[0], semaphores[1]:
            try:
                outcome = (True, await body())
            except Exception as exc:
                outcome = (False, exc)
        queue.put_nowait(outcome)

    if len(semaphores) not in (1, 2):
        raise ValueError("one semaphore, or two to nest (outer first)")
    run = run_one if len(semaphores) == 1 else run_one_nested

    async def spawn_all() -> None:
        async with asyncio.TaskGroup() as group:
            for body in bodies:
                group.create_task(run(body))
        queue.put_nowait(None)

    async def consume() -> None:
        while (item := await queue.get()) is not None:
            ok, value = item
            if not ok:
                raise task_failed("asyncio baseline", value)
            results.add(value)

    async with asyncio.TaskGroup() as group:
        group.create_task(consume())
        group.create_task(spawn_all())


# -- asyncio: the worker pool ----------------------------------------------------------------------

#: The bound of the worker pool's results queue: a sluiceway runner's envelope buffer by default.
RESULTS_QUEUE_SIZE = DEFAULT_BUFFER_SIZE

Body = Callable[[], Awaitable[int]]


async def _consume_outcomes(queue: asyncio.Queue[Outcome | None], results: Results) -> None:
    while (item := await queue.get()) is not None:
        ok, value = item
        if not ok:
            raise task_failed("asyncio baseline", value)
        results.add(value)


async def _run_pool(
    worker: Callable[[asyncio.Queue[Outcome | None]], Coroutine[Any, Any, None]],
    workers: int,
    results: Results,
    producer: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """``workers`` copies of ``worker`` (and ``producer``, if any) in a TaskGroup, their outcomes
    on a bounded results queue (:data:`RESULTS_QUEUE_SIZE`) read by a consumer task until the
    sentinel put once every worker has returned."""
    queue: asyncio.Queue[Outcome | None] = asyncio.Queue(RESULTS_QUEUE_SIZE)

    async def pool() -> None:
        async with asyncio.TaskGroup() as group:
            if producer is not None:
                group.create_task(producer())
            for _ in range(workers):
                group.create_task(worker(queue))
        await queue.put(None)

    async with asyncio.TaskGroup() as group:
        group.create_task(_consume_outcomes(queue, results))
        group.create_task(pool())


async def asyncio_pool_fanout(
    source: Iterable[Body] | AsyncIterable[Body], workers: int, results: Results, busy: list[int]
) -> None:
    """The asyncio worker pool (the mark of A and D): a producer task puts the bodies of
    ``source`` (iterated lazily, ``async for`` if it is an async iterable) on a work queue
    bounded to ``workers``, then one ``None`` per worker; ``workers`` tasks take them and put
    each outcome on the results queue read by a consumer task. ``busy[0]`` counts the workers
    running a body (the pool's "units held")."""
    work: asyncio.Queue[Body | None] = asyncio.Queue(workers)

    async def producer() -> None:
        put = work.put
        if isinstance(source, AsyncIterable):
            async for body in source:
                await put(body)
        else:
            for body in source:
                await put(body)
        for _ in range(workers):
            await put(None)

    async def worker(queue: asyncio.Queue[Outcome | None]) -> None:
        get, put = work.get, queue.put
        while (body := await get()) is not None:
            busy[0] += 1
            outcome: Outcome
            try:
                outcome = (True, await body())
            except Exception as exc:
                outcome = (False, exc)
            busy[0] -= 1
            await put(outcome)

    await _run_pool(worker, workers, results, producer)


async def asyncio_direct_pool_fanout(
    bodies: asyncio.Queue[Body], workers: int, results: Results, busy: list[int]
) -> None:
    """The worker pool without a producer: the workers take the bodies straight from
    ``bodies``, an unbounded queue filled beforehand, until it is empty. As no-op bodies never
    suspend, one worker runs bodies until the results queue is full: the fastest form."""

    async def worker(queue: asyncio.Queue[Outcome | None]) -> None:
        get, put = bodies.get_nowait, queue.put
        while True:
            try:
                body = get()
            except asyncio.QueueEmpty:
                return
            busy[0] += 1
            outcome: Outcome
            try:
                outcome = (True, await body())
            except Exception as exc:
                outcome = (False, exc)
            busy[0] -= 1
            await put(outcome)

    await _run_pool(worker, workers, results)


async def asyncio_direct_stream_pool_fanout(
    stream: AsyncIterator[Body], workers: int, results: Results, busy: list[int]
) -> None:
    """:func:`asyncio_direct_pool_fanout` over a lazy source: the workers take the next body
    from the shared async iterator ``stream``, one at a time under an ``asyncio.Lock`` (an async
    generator must not be advanced by two tasks at once)."""
    lock = asyncio.Lock()

    async def worker(queue: asyncio.Queue[Outcome | None]) -> None:
        put = queue.put
        while True:
            async with lock:
                try:
                    body = await anext(stream)
                except StopAsyncIteration:
                    return
            busy[0] += 1
            outcome: Outcome
            try:
                outcome = (True, await body())
            except Exception as exc:
                outcome = (False, exc)
            busy[0] -= 1
            await put(outcome)

    await _run_pool(worker, workers, results)


def capacity_probe(capacity: CapacitySource) -> Callable[[], float]:
    """Units of ``capacity`` (its whole subtree) held right now."""
    return lambda: capacity.borrowed_tokens


def semaphore_probe(semaphore: asyncio.Semaphore, limit: int) -> Callable[[], float]:
    """Units of ``semaphore`` held right now (asyncio has no public accessor for it)."""
    return lambda: limit - semaphore._value


# -- one side in this process (B; C and H have their own) ------------------------------------------


def _fanout_sluiceway(
    params: Params,
    make_body: Callable[[Tracker, int], Callable[[Any], Awaitable[int]]],
    clock: trio.abc.Clock | None = None,
) -> Sample:
    """One sluiceway run, consumed per envelope, on ``clock`` (trio's own by default)."""
    n, limit = params["n"], params["concurrency"]
    checks: dict[str, Any] = {}

    async def main() -> float:
        capacity = CapacitySource(limit)
        tracker = Tracker("sluiceway", limit, capacity_probe(capacity))
        results = Results(n)
        tasks = [make_body(tracker, i) for i in range(n)]
        runner: HierarchicalTaskPoolRunner[Any, int] = HierarchicalTaskPoolRunner(
            "bench", tasks, capacity
        )
        cpu, start = time.process_time(), time.perf_counter()
        await drain_runner(runner, results)
        elapsed = time.perf_counter() - start
        checks["cpu_seconds"] = time.process_time() - cpu
        checks.update(results.verify(), **tracker.verify(n))
        if capacity.borrowed_tokens != 0:
            raise BenchmarkError(f"{capacity.borrowed_tokens} units still held after the run")
        return elapsed

    elapsed, wall = run_trio(main, clock=clock)
    return Sample({"seconds": elapsed}, {"wall_seconds": wall, **checks})


def on_both_clocks(
    run: Callable[[trio.abc.Clock | None], Sample], *, reverse: bool
) -> tuple[Sample, Sample]:
    """``run`` on :class:`~sluiceway.PreciseClock` and on trio's own clock (``None``), in that
    order or the ``reverse``: the two samples, PreciseClock's first. B and C run sluiceway so,
    alternating the order from one repetition to the next."""
    clocks: list[trio.abc.Clock | None] = [PreciseClock(), None]
    if reverse:
        clocks.reverse()
    samples = {clock is None: run(clock) for clock in clocks}
    return samples[False], samples[True]


def _fanout_asyncio(
    params: Params,
    make_body: Callable[[Tracker, int], Callable[[], Awaitable[int]]],
    variant: str = "spawn",
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> Sample:
    """One asyncio run: ``variant`` "spawn" (TaskGroup + Semaphore) or "pool" (the worker
    pool, :func:`asyncio_pool_fanout`), on ``loop_factory``'s loop (asyncio's own by
    default)."""
    n, limit = params["n"], params["concurrency"]
    checks: dict[str, Any] = {}

    async def main() -> float:
        results = Results(n)
        if variant == "pool":
            busy = [0]
            tracker = Tracker("asyncio pool", limit, lambda: busy[0])
            pool_bodies = [make_body(tracker, i) for i in range(n)]
            cpu, start = time.process_time(), time.perf_counter()
            await asyncio_pool_fanout(pool_bodies, limit, results, busy)
        else:
            semaphore = asyncio.Semaphore(limit)
            tracker = Tracker("asyncio", limit, semaphore_probe(semaphore, limit))
            bodies = [make_body(tracker, i) for i in range(n)]
            cpu, start = time.process_time(), time.perf_counter()
            await asyncio_semaphore_fanout(bodies, [semaphore], results)
        elapsed = time.perf_counter() - start
        checks["cpu_seconds"] = time.process_time() - cpu
        checks.update(results.verify(), **tracker.verify(n))
        return elapsed

    elapsed, wall = run_asyncio(main, loop_factory=loop_factory)
    return Sample({"seconds": elapsed}, {"wall_seconds": wall, **checks})


SPAWN_ALL_BASELINE = (
    "asyncio TaskGroup + Semaphore (spawn all N, each `async with sem`), results via a Queue"
)
POOL_BASELINE = (
    "asyncio worker pool (a producer puts the bodies on an asyncio.Queue(C), C workers take "
    f"them, results via a bounded Queue({RESULTS_QUEUE_SIZE}) to a consumer)"
)

# -- A and D: CPU time per task, each run in a fresh process, paired with the worker pool --------

#: The runs a per-task scenario makes (``python -m benchmarks.pertask VARIANT ...``).
ENVELOPES, BATCHES, POOL, DIRECT, SPAWN = "envelopes", "batches", "pool", "direct", "spawn"
FLOOR, TRIO_POOL = "floor", "triopool"
ANYIO, AIOMETER, AIOMETER_TRIO = "anyio", "aiometer", "aiometer-trio"
VARIANTS = (
    ENVELOPES,
    BATCHES,
    FLOOR,
    TRIO_POOL,
    ANYIO,
    AIOMETER_TRIO,
    AIOMETER,
    POOL,
    DIRECT,
    SPAWN,
)
VARIANT_NAMES = {
    ENVELOPES: "sluiceway, per envelope (`async for envelope in envelopes`)",
    BATCHES: "sluiceway, batches (`async for batch in envelopes.batches()`)",
    FLOOR: "the trio floor: sluiceway's semantics with no engine, per envelope (triofloor)",
    TRIO_POOL: "trio worker pool over memory channels (triopool)",
    ANYIO: "anyio on trio, gated spawn (anyiopeers)",
    AIOMETER_TRIO: "aiometer.amap on trio (anyiopeers)",
    AIOMETER: "aiometer.amap on asyncio (anyiopeers)",
    POOL: "asyncio worker pool, fed by a producer through a Queue(C) (the mark)",
    DIRECT: "asyncio worker pool, the workers pulling from the source directly",
    SPAWN: "asyncio TaskGroup + Semaphore",
}
#: Short names of the peers, for the table's rows and the target line.
PEER_NAMES = {
    TRIO_POOL: "trio worker pool",
    ANYIO: "anyio gated spawn",
    AIOMETER_TRIO: "aiometer on trio",
    AIOMETER: "aiometer on asyncio",
}
#: The sources: a list built before the timer, or a lazy async generator.
LIST, STREAM = "list", "agen"
#: The targets (issue 14): sluiceway's CPU time per task over the worker pool's, paired.
ENVELOPES_TARGET = 2.0
BATCHES_TARGET = 1.2


def run_child(variant: str, source: str, params: Params) -> dict[str, Any]:
    """One verified run of ``variant`` over ``source`` in a fresh interpreter: its report."""
    n, limit = params["n"], params["concurrency"]
    report = run_worker(
        "benchmarks.pertask",
        [variant, source, str(n), str(limit)],
        timeout=120 + n * 5e-4,
        what=f"{VARIANT_NAMES[variant]}, {source} source, run",
    )
    if report.get("results") != n or report.get("bodies") != n:
        raise BenchmarkError(
            f"{variant} run reported {report.get('results')} results and "
            f"{report.get('bodies')} bodies, not {n}"
        )
    return report


class PerTaskFanout(Scenario):
    """A fan-out of no-op tasks measured in CPU time per task, every run in a fresh process.

    Each repetition of the sluiceway side runs per-envelope consumption, the worker pool, batch
    consumption, the trio floor (``triofloor``: the same semantics with no engine, per
    envelope) and the scenario's peers (``peers``), in that order or the
    reverse (so the pool run is next to each of sluiceway's two), and reports each one's CPU
    time over the pool's of the same repetition: the medians of those ratios are the paired
    ratios. The asyncio side runs the worker pool and the scenario's other baselines
    (``asyncio_variants``), also alternating their order. The
    asyncio column of the ratio rows is the pool over itself, 1.
    """

    source: str
    asyncio_variants: tuple[str, ...] = (POOL, DIRECT, SPAWN)
    #: Peers run with the sluiceway side (each paired with the pool like the rest): the trio
    #: worker pool, anyio's and aiometer's fan-outs.
    peers: tuple[str, ...] = ()
    warm_up = False  # every run is a fresh interpreter

    per_task_metrics = (
        Metric("cpu_us", "CPU per task: per envelope | worker pool", "us", 2),
        Metric("x_pool", "x worker pool, paired: per envelope | pool", "x", 2),
        Metric("cpu_us_batches", "CPU per task: batches | worker pool", "us", 2),
        Metric("x_pool_batches", "x worker pool, paired: batches | pool", "x", 2),
        Metric("x_pool_floor", "x worker pool, paired: trio floor per envelope | pool", "x", 2),
        Metric("cpu_us_direct", "CPU per task: per envelope | direct pool", "us", 2),
        Metric("wall_us", "wall per task: per envelope | worker pool", "us", 2),
    )

    def __init__(self) -> None:
        self._turns = {SLUICEWAY: 0, ASYNCIO: 0}

    def order(self, side: str) -> list[str]:
        """This repetition's runs of ``side``, alternating their order from one to the next."""
        turn = self._turns[side]
        self._turns[side] = turn + 1
        if side == SLUICEWAY:
            order = (
                [ENVELOPES, POOL, BATCHES, FLOOR, *self.peers]
                if batches_available()
                else [ENVELOPES, POOL]
            )
        else:
            order = list(self.asyncio_variants)
        return order if turn % 2 == 0 else order[::-1]

    def run(self, side: str, params: Params) -> Sample:
        order = self.order(side)
        runs = {variant: run_child(variant, self.source, params) for variant in order}
        n = params["n"]
        cpu = {variant: float(report["cpu_seconds"]) for variant, report in runs.items()}
        per_task = {variant: seconds / n * 1e6 for variant, seconds in cpu.items()}
        wall = {variant: float(report["seconds"]) / n * 1e6 for variant, report in runs.items()}
        info: dict[str, Any] = {"order": order, "runs": runs}
        if side == SLUICEWAY:
            batches = per_task.get(BATCHES, math.nan)
            if BATCHES not in runs:
                info["warnings"] = [
                    "EnvelopeChannel.batches() is not available: no batch consumption measured"
                ]
            metrics = {
                "cpu_us": per_task[ENVELOPES],
                "x_pool": cpu[ENVELOPES] / cpu[POOL],
                "cpu_us_batches": batches,
                "x_pool_batches": batches / per_task[POOL],
                "x_pool_floor": per_task.get(FLOOR, math.nan) / per_task[POOL],
                **{
                    f"x_pool_{peer}": per_task.get(peer, math.nan) / per_task[POOL]
                    for peer in self.peers
                },
                "wall_us": wall[ENVELOPES],
                "pool_cpu_us": per_task[POOL],
            }
        else:
            metrics = {
                "cpu_us": per_task[POOL],
                "x_pool": 1.0,
                "cpu_us_batches": per_task[POOL],
                "x_pool_batches": 1.0,
                "x_pool_floor": 1.0,
                **{f"x_pool_{peer}": 1.0 for peer in self.peers},
                "wall_us": wall[POOL],
                "pool_cpu_us": per_task[POOL],
            }
        for variant in (DIRECT, SPAWN):
            if variant in self.asyncio_variants:
                metrics[f"cpu_us_{variant}"] = per_task[ENVELOPES if side == SLUICEWAY else variant]
        return Sample(metrics, info)

    def cpu_verdict(self, summary: Summary) -> tuple[str, str, bool]:
        """The CPU targets: goal, measured, met."""
        envelopes: Spread = summary["x_pool"][SLUICEWAY]  # medians of the per-pair ratios
        batches: Spread = summary["x_pool_batches"][SLUICEWAY]
        floor: Spread = summary["x_pool_floor"][SLUICEWAY]
        pool = summary["cpu_us"][ASYNCIO].median
        goal = (
            f"sluiceway CPU per task <= {ENVELOPES_TARGET:.1f}x the worker pool per envelope, "
            f"<= {BATCHES_TARGET:.1f}x in batches (paired medians)"
        )
        measured = (
            f"per envelope {envelopes.median:.2f}x ({envelopes.low:.2f}-{envelopes.high:.2f}), "
            f"batches {batches.median:.2f}x ({batches.low:.2f}-{batches.high:.2f}); "
            f"the trio floor per envelope {floor.median:.2f}x ({floor.low:.2f}-{floor.high:.2f}); "
            f"pool {pool:.2f} us/task"
        )
        direct = summary["cpu_us_direct"][ASYNCIO].median
        measured += f", direct pool {direct:.2f}"
        if "cpu_us_spawn" in summary:
            spawn = summary["cpu_us_spawn"][ASYNCIO].median
            measured += f", TaskGroup+Semaphore {spawn:.2f}"
        peers = [
            f"{PEER_NAMES[peer]} {summary[f'x_pool_{peer}'][SLUICEWAY].median:.2f}x"
            for peer in self.peers
        ]
        if peers:
            measured += "; against the pool: " + ", ".join(peers)
        met = envelopes.median <= ENVELOPES_TARGET and batches.median <= BATCHES_TARGET
        return goal, measured, met


class NoopFanout(PerTaskFanout):
    key = "A"
    title = "no-op fan-out"
    source = LIST
    baseline = (
        f"{POOL_BASELINE}; row `| direct pool`: the same without the producer, the workers "
        "taking the bodies from an unbounded Queue filled before the timer; row "
        f"`| TaskGroup+Semaphore`: {SPAWN_ALL_BASELINE}; row `trio worker pool` (run with the "
        "sluiceway side): C trio tasks fed by a producer through a memory channel, results "
        "through a second one to the consumer; rows `anyio gated spawn`, `aiometer on trio` "
        "and `aiometer on asyncio` (also with the sluiceway side): anyio's task group under an "
        "anyio Semaphore taken before each spawn, and aiometer.amap(max_at_once=C)"
    )
    peers = (TRIO_POOL, ANYIO, AIOMETER_TRIO, AIOMETER)
    metrics = (
        *PerTaskFanout.per_task_metrics,
        Metric("cpu_us_spawn", "CPU per task: per envelope | TaskGroup+Semaphore", "us", 2),
        *(
            Metric(f"x_pool_{peer}", f"x worker pool, paired: {PEER_NAMES[peer]} | pool", "x", 2)
            for peer in peers
        ),
    )

    def params(self, quick: bool) -> dict[str, Any]:
        return {"n": 5_000 if quick else 100_000, "concurrency": 100}

    def warm_up_params(self) -> dict[str, Any]:
        return {"n": 500, "concurrency": 100}

    def describe(self, params: Params) -> str:
        return (
            f"{params['n']:,} no-op tasks from a list, concurrency {params['concurrency']}, "
            "CPU time of the fan-out, every run in a fresh process"
        )

    def target(self, summary: Summary, params: Params) -> Target:
        return Target(*self.cpu_verdict(summary))


# -- B: makespan against the ideal -------------------------------------------------------------


def trio_sleep_floor(
    n: int, concurrency: int, latency: float, clock: trio.abc.Clock | None = None
) -> float:
    """B's floor on bare trio: ``concurrency`` tasks take the next of ``n`` items in turn and
    sleep ``latency`` for each, nothing else (no limit object, no results, no consumer); its
    makespan in seconds, on ``clock`` (trio's own by default). What any fan-out of these sleeps
    pays on trio: timer wake-ups and task switches."""

    async def main() -> float:
        items = iter(range(n))
        done = [0]

        async def chain() -> None:
            for _ in items:
                await trio.sleep(latency)
                done[0] += 1

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(chain)
        if done[0] != n:
            raise BenchmarkError(f"trio floor: {done[0]} sleeps of {n}")
        return time.perf_counter() - start

    return run_trio(main, clock=clock)[0]


def asyncio_sleep_floor(
    n: int,
    concurrency: int,
    latency: float,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> float:
    """:func:`trio_sleep_floor` on asyncio (``loop_factory``: its event loop, default asyncio's)."""

    async def main() -> float:
        items = iter(range(n))
        done = [0]

        async def chain() -> None:
            for _ in items:
                await asyncio.sleep(latency)
                done[0] += 1

        start = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(chain())
        if done[0] != n:
            raise BenchmarkError(f"asyncio floor: {done[0]} sleeps of {n}")
        return time.perf_counter() - start

    return run_asyncio(main, loop_factory=loop_factory)[0]


try:
    import uvloop  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # optional: the bench extra installs it where it can
    uvloop = None

#: The asyncio side's runs in B: (name, variant, loop factory).
B_BASELINES: tuple[tuple[str, str, Callable[[], asyncio.AbstractEventLoop] | None], ...] = (
    ("spawn", "spawn", None),
    ("pool", "pool", None),
    *((("uvloop_pool", "pool", uvloop.new_event_loop),) if uvloop is not None else ()),
)


class SleepFanout(Scenario):
    key = "B"
    title = "latency-bound fan-out"
    baseline = (
        f"{SPAWN_ALL_BASELINE}; rows `| worker pool`: {POOL_BASELINE}, on asyncio's loop and "
        + ("on uvloop's" if uvloop is not None else "(uvloop is not installed: its row is nan)")
    )
    metrics = (
        Metric("seconds", "makespan | TaskGroup+Semaphore", "s"),
        Metric("x_ideal", "makespan / ideal | TaskGroup+Semaphore", "x"),
        Metric("x_ideal_pool", "makespan / ideal | worker pool", "x"),
        Metric("x_ideal_uvloop", "makespan / ideal | uvloop worker pool", "x"),
        Metric("x_ideal_trio_clock", "makespan / ideal, trio's clock | TaskGroup+Semaphore", "x"),
        Metric("x_ideal_floor", "makespan / ideal | bare runtime floor", "x"),
        Metric("x_ideal_floor_precise", "floor / ideal, on PreciseClock | bare runtime floor", "x"),
        Metric("cpu_seconds", "CPU time | worker pool", "s"),
        Metric("cpu_seconds_trio_clock", "CPU time, trio's clock | worker pool", "s"),
        Metric("overhead_us_per_task", "(makespan-ideal)/N | TaskGroup+Semaphore", "us", 2),
    )
    #: The target: sluiceway's makespan over the ideal (issue 14).
    TARGET = 1.08

    def __init__(self) -> None:
        self._turns = {SLUICEWAY: 0, ASYNCIO: 0}

    def _reversed_turn(self, side: str) -> bool:
        """Whether this repetition of ``side`` runs its variants in reverse order (every other
        one does, so that no variant always runs first)."""
        turn = self._turns[side]
        self._turns[side] = turn + 1
        return turn % 2 == 1

    def params(self, quick: bool) -> dict[str, Any]:
        return {"n": 1_000 if quick else 10_000, "concurrency": 100, "latency": 0.01}

    def warm_up_params(self) -> dict[str, Any]:
        return {"n": 200, "concurrency": 100, "latency": 0.001}

    @staticmethod
    def ideal(params: Params) -> float:
        return float(math.ceil(params["n"] / params["concurrency"]) * params["latency"])

    def describe(self, params: Params) -> str:
        return (
            f"{params['n']:,} tasks of sleep({params['latency']}), concurrency "
            f"{params['concurrency']}; ideal ceil(N/C)*L = {self.ideal(params):.3f} s"
        )

    def _check(self, sample: Sample, params: Params, what: str) -> None:
        if sample.info["peak_concurrency"] != params["concurrency"]:
            sample.info.setdefault("warnings", []).append(
                f"{what}: peak concurrency {sample.info['peak_concurrency']} never reached the "
                f"limit {params['concurrency']}"
            )

    def _sluiceway(self, params: Params) -> Sample:
        """sluiceway on :class:`~sluiceway.PreciseClock` (the target's run) and on trio's own
        clock, in alternating order, then bare trio's floor on each clock."""
        delay, n, concurrency = params["latency"], params["n"], params["concurrency"]
        ideal = self.ideal(params)
        sample, on_trio = on_both_clocks(
            lambda clock: _fanout_sluiceway(
                params, lambda tracker, i: partial(trio_sleep_body, tracker, delay, i), clock
            ),
            reverse=self._reversed_turn(SLUICEWAY),
        )
        self._check(sample, params, "sluiceway on PreciseClock")
        self._check(on_trio, params, "sluiceway on trio's clock")
        x = sample.metrics["seconds"] / ideal
        sample.metrics.update(
            x_ideal=x,
            x_ideal_pool=x,
            x_ideal_uvloop=x,
            x_ideal_trio_clock=on_trio.metrics["seconds"] / ideal,
            x_ideal_floor=trio_sleep_floor(n, concurrency, delay) / ideal,
            x_ideal_floor_precise=trio_sleep_floor(n, concurrency, delay, PreciseClock()) / ideal,
            cpu_seconds=sample.info["cpu_seconds"],
            cpu_seconds_trio_clock=on_trio.info["cpu_seconds"],
            overhead_us_per_task=(sample.metrics["seconds"] - ideal) / n * 1e6,
        )
        sample.info["trio_clock_run"] = {**on_trio.metrics, **on_trio.info}
        warnings = on_trio.info.get("warnings", [])
        if warnings:
            sample.info.setdefault("warnings", []).extend(warnings)
        return sample

    def run(self, side: str, params: Params) -> Sample:
        delay = params["latency"]
        ideal = self.ideal(params)
        n = params["n"]
        if side == SLUICEWAY:
            return self._sluiceway(params)
        order = list(B_BASELINES)
        if self._reversed_turn(ASYNCIO):
            order.reverse()
        runs: dict[str, Sample] = {}
        for name, variant, loop_factory in order:
            runs[name] = _fanout_asyncio(
                params,
                lambda tracker, i: partial(asyncio_sleep_body, tracker, delay, i),
                variant,
                loop_factory,
            )
            self._check(runs[name], params, name)
        spawn = runs["spawn"].metrics["seconds"]
        uvloop_run = runs.get("uvloop_pool")
        asyncio_floor = asyncio_sleep_floor(n, params["concurrency"], delay) / ideal
        pool_cpu = runs["pool"].info["cpu_seconds"]
        metrics = {
            "seconds": spawn,
            "x_ideal": spawn / ideal,
            "x_ideal_trio_clock": spawn / ideal,
            "cpu_seconds": pool_cpu,
            "cpu_seconds_trio_clock": pool_cpu,
            "x_ideal_pool": runs["pool"].metrics["seconds"] / ideal,
            "x_ideal_uvloop": (
                uvloop_run.metrics["seconds"] / ideal if uvloop_run is not None else math.nan
            ),
            "overhead_us_per_task": (spawn - ideal) / n * 1e6,
            "x_ideal_floor": asyncio_floor,
            "x_ideal_floor_precise": asyncio_floor,
        }
        info: dict[str, Any] = {
            "order": [name for name, _, _ in order],
            "runs": {name: {**run.metrics, **run.info} for name, run in runs.items()},
        }
        warnings = [w for run in runs.values() for w in run.info.get("warnings", [])]
        if warnings:
            info["warnings"] = warnings
        return Sample(metrics, info)

    def target(self, summary: Summary, params: Params) -> Target:
        ours = summary["x_ideal"][SLUICEWAY].median
        spawn = summary["x_ideal"][ASYNCIO].median
        pool = summary["x_ideal_pool"][ASYNCIO].median
        uv = summary["x_ideal_uvloop"][ASYNCIO].median
        on_trio_clock = summary["x_ideal_trio_clock"][SLUICEWAY].median
        trio_floor = summary["x_ideal_floor"][SLUICEWAY].median
        precise_floor = summary["x_ideal_floor_precise"][SLUICEWAY].median
        asyncio_floor = summary["x_ideal_floor"][ASYNCIO].median
        return Target(
            f"sluiceway makespan <= {self.TARGET:.2f}x ideal",
            f"{ours:.3f}x ideal on PreciseClock, {on_trio_clock:.3f}x on trio's own clock "
            f"(asyncio TaskGroup+Semaphore {spawn:.3f}x, worker pool {pool:.3f}x, uvloop worker "
            f"pool {uv:.3f}x; the bare runtime's floor: trio {trio_floor:.3f}x, trio on "
            f"PreciseClock {precise_floor:.3f}x, asyncio {asyncio_floor:.3f}x)",
            ours <= self.TARGET,
        )
