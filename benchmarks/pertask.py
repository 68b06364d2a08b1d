"""The fresh process of one run of scenario A or D: ``python -m benchmarks.pertask VARIANT SOURCE
N CONCURRENCY`` runs N no-op tasks once and prints one JSON line (its report).

VARIANT is one of ``envelopes`` (a sluiceway runner, the consumer iterating over its envelopes
one at a time), ``batches`` (the same, consuming ``envelopes.batches()``), ``floor`` (the trio
floor: the same semantics with no engine, per envelope, ``triofloor``), ``triopool`` (the
idiomatic trio worker pool over memory channels, ``triopool``), ``anyio`` (anyio's task group
on trio, each spawn gated by an anyio Semaphore), ``aiometer-trio`` and ``aiometer``
(``aiometer.amap`` on trio and on asyncio; these three over a list only, ``anyiopeers``),
``pool`` (the asyncio
worker pool fed by a producer task through a ``Queue(C)``: the mark), ``direct`` (the pool's
workers taking the bodies from the source themselves: a queue filled before the timer, or the
generator under a lock) and ``spawn`` (asyncio TaskGroup + Semaphore, list source only); SOURCE
is ``list`` (the task callables built before the timer) or ``agen`` (an async generator yielding
them one at a time, advanced lazily on every side).

Measured inside the event loop around the fan-out, from just before it starts until the consumer
has received the last result: ``cpu_seconds`` (``time.process_time()``) and ``seconds``
(``time.perf_counter()``); ``wall_seconds`` is the whole ``trio.run``/``asyncio.run``. The
peak growth of resident memory during the run is reported too (``memory.MemoryProbe``). Every
run is verified as in every scenario: each result delivered once (``Results``), the bodies in
flight within the limit and each holding a unit of its limiter (``Tracker``), sluiceway's
capacity all returned.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio

from sluiceway import CapacitySource
from sluiceway.runners import HierarchicalTaskPoolRunner

from .anyiopeers import aiometer_fanout, anyio_gated_spawn_fanout
from .fanout import (
    AIOMETER,
    AIOMETER_TRIO,
    ANYIO,
    BATCHES,
    DIRECT,
    ENVELOPES,
    FLOOR,
    LIST,
    POOL,
    SPAWN,
    STREAM,
    TRIO_POOL,
    VARIANTS,
    Body,
    asyncio_direct_pool_fanout,
    asyncio_direct_stream_pool_fanout,
    asyncio_pool_fanout,
    asyncio_semaphore_fanout,
    capacity_probe,
    drain_runner,
    drain_runner_batches,
    noop_body,
    semaphore_probe,
)
from .harness import BenchmarkError, Results, Tracker, run_asyncio, run_trio
from .memory import MemoryProbe, task_stream
from .triofloor import trio_floor_fanout
from .triopool import trio_pool_fanout


def run_sluiceway(variant: str, source: str, n: int, limit: int) -> dict[str, Any]:
    probe = MemoryProbe()
    out: dict[str, Any] = {}
    drain = drain_runner_batches if variant == BATCHES else drain_runner

    async def main() -> float:
        capacity = CapacitySource(limit)
        tracker = Tracker("sluiceway", limit, capacity_probe(capacity))
        results = Results(n)
        tasks: Any = (
            [partial(noop_body, tracker, i) for i in range(n)]
            if source == LIST
            else task_stream(tracker, n)
        )
        runner: HierarchicalTaskPoolRunner[Any, int] = HierarchicalTaskPoolRunner(
            "bench", tasks, capacity
        )
        probe.start()
        cpu, start = time.process_time(), time.perf_counter()
        await drain(runner, results)
        elapsed = time.perf_counter() - start
        out["cpu_seconds"] = time.process_time() - cpu
        out.update(probe.report(), **results.verify(), **tracker.verify(n))
        if capacity.borrowed_tokens != 0:
            raise BenchmarkError(f"{capacity.borrowed_tokens} units still held after the run")
        return elapsed

    elapsed, wall = run_trio(main)
    return {"seconds": elapsed, "wall_seconds": wall, **out}


def run_trio_reference(variant: str, source: str, n: int, limit: int) -> dict[str, Any]:
    """The trio floor (``triofloor``, per envelope) or the trio worker pool (``triopool``, a
    list source only), verified as the other runs are."""
    probe = MemoryProbe()
    out: dict[str, Any] = {}
    if variant == TRIO_POOL and source != LIST:
        raise BenchmarkError("the trio worker pool runs over a list source only")

    async def main() -> float:
        held = [0]
        tracker = Tracker(f"trio {variant}", limit, lambda: held[0])
        results = Results(n)
        bodies: Any = (
            deque(partial(noop_body, tracker, i) for i in range(n))
            if source == LIST
            else task_stream(tracker, n)
        )
        probe.start()
        cpu, start = time.process_time(), time.perf_counter()
        if variant == FLOOR:
            await trio_floor_fanout(bodies, limit, results, held, batches=False)
        else:
            await trio_pool_fanout(bodies, limit, results, held)
        elapsed = time.perf_counter() - start
        out["cpu_seconds"] = time.process_time() - cpu
        if source != LIST:
            await bodies.aclose()
        out.update(probe.report(), **results.verify(), **tracker.verify(n))
        return elapsed

    elapsed, wall = run_trio(main)
    return {"seconds": elapsed, "wall_seconds": wall, **out}


def run_anyio_peer(variant: str, source: str, n: int, limit: int) -> dict[str, Any]:
    """anyio's gated spawn on trio, or aiometer on trio or asyncio (``anyiopeers``; a list
    source only), verified as the other runs are."""
    probe = MemoryProbe()
    out: dict[str, Any] = {}
    if source != LIST:
        raise BenchmarkError(f"{variant} runs over a list source only")

    async def main() -> float:
        results = Results(n)
        run: Callable[[], Any]
        if variant == ANYIO:
            semaphore = anyio.Semaphore(limit)
            tracker = Tracker("anyio", limit, lambda: limit - semaphore.value)
            bodies = [partial(noop_body, tracker, i) for i in range(n)]
            run = partial(anyio_gated_spawn_fanout, bodies, limit, results, semaphore)
        else:
            busy = [0]
            tracker = Tracker(variant, limit, lambda: busy[0])
            bodies = [partial(noop_body, tracker, i) for i in range(n)]
            run = partial(aiometer_fanout, bodies, limit, results, busy)
        probe.start()
        cpu, start = time.process_time(), time.perf_counter()
        await run()
        elapsed = time.perf_counter() - start
        out["cpu_seconds"] = time.process_time() - cpu
        out.update(probe.report(), **results.verify(), **tracker.verify(n))
        return elapsed

    elapsed, wall = run_asyncio(main) if variant == AIOMETER else run_trio(main)
    return {"seconds": elapsed, "wall_seconds": wall, **out}


def run_asyncio_side(variant: str, source: str, n: int, limit: int) -> dict[str, Any]:
    probe = MemoryProbe()
    out: dict[str, Any] = {}
    if variant == SPAWN and source != LIST:
        raise BenchmarkError("TaskGroup + Semaphore runs over a list source only")

    async def main() -> float:
        results = Results(n)
        busy = [0]  # the pool's workers running a body: its "units held"
        run: Callable[[], Any]
        if variant in (POOL, DIRECT):
            tracker = Tracker(f"asyncio {variant} pool", limit, lambda: busy[0])
            if source == STREAM:
                stream = task_stream(tracker, n)
                fanout = (
                    asyncio_pool_fanout if variant == POOL else asyncio_direct_stream_pool_fanout
                )
                run = partial(fanout, stream, limit, results, busy)
            elif variant == POOL:
                bodies = [partial(noop_body, tracker, i) for i in range(n)]
                run = partial(asyncio_pool_fanout, bodies, limit, results, busy)
            else:
                queue: asyncio.Queue[Body] = asyncio.Queue()
                for i in range(n):
                    queue.put_nowait(partial(noop_body, tracker, i))
                run = partial(asyncio_direct_pool_fanout, queue, limit, results, busy)
        else:
            semaphore = asyncio.Semaphore(limit)
            tracker = Tracker("asyncio", limit, semaphore_probe(semaphore, limit))
            bodies = [partial(noop_body, tracker, i) for i in range(n)]
            run = partial(asyncio_semaphore_fanout, bodies, [semaphore], results)
        probe.start()
        cpu, start = time.process_time(), time.perf_counter()
        await run()
        elapsed = time.perf_counter() - start
        out["cpu_seconds"] = time.process_time() - cpu
        if source == STREAM:
            await stream.aclose()
        out.update(probe.report(), **results.verify(), **tracker.verify(n))
        return elapsed

    elapsed, wall = run_asyncio(main)
    return {"seconds": elapsed, "wall_seconds": wall, **out}


def main(argv: list[str]) -> int:
    """``python -m benchmarks.pertask VARIANT SOURCE N CONCURRENCY``: one run, one JSON line."""
    variant, source, n, limit = argv[0], argv[1], int(argv[2]), int(argv[3])
    if variant not in VARIANTS or source not in (LIST, STREAM):
        print(f"unknown variant {variant!r} or source {source!r}", file=sys.stderr)
        return 2
    try:
        if variant in (FLOOR, TRIO_POOL):
            report = run_trio_reference(variant, source, n, limit)
        elif variant in (ANYIO, AIOMETER, AIOMETER_TRIO):
            report = run_anyio_peer(variant, source, n, limit)
        elif variant in (ENVELOPES, BATCHES):
            report = run_sluiceway(variant, source, n, limit)
        else:
            report = run_asyncio_side(variant, source, n, limit)
    except BaseException as exc:  # reported to the driver, which fails the suite loudly
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise
    print(json.dumps({"variant": variant, "source": source, **report}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
