"""Scenarios A (no-op fan-out) and B (latency-bound fan-out), plus the pieces C and D reuse.

sluiceway side: a :class:`~sluiceway.runners.HierarchicalTaskPoolRunner` over a list of tasks and a
:class:`~sluiceway.CapacitySource`, the consumer reading every envelope as it arrives.

asyncio side (the baseline named in the issue): ``asyncio.TaskGroup`` spawning all N tasks, each
``async with semaphore``; every outcome is put on an ``asyncio.Queue`` as the task finishes and a
consumer task reads it, so results are delivered as they complete, as sluiceway's are.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any

import trio

from sluiceway import CapacitySource
from sluiceway.runners import EnvelopeKind, HierarchicalTaskPoolRunner

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


def capacity_probe(capacity: CapacitySource) -> Callable[[], float]:
    """Units of ``capacity`` (its whole subtree) held right now."""
    return lambda: capacity.borrowed_tokens


def semaphore_probe(semaphore: asyncio.Semaphore, limit: int) -> Callable[[], float]:
    """Units of ``semaphore`` held right now (asyncio has no public accessor for it)."""
    return lambda: limit - semaphore._value


# -- the two scenarios ---------------------------------------------------------------------------


def _fanout_sluiceway(
    params: Params, make_body: Callable[[Tracker, int], Callable[[Any], Awaitable[int]]]
) -> Sample:
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
        start = time.perf_counter()
        await drain_runner(runner, results)
        elapsed = time.perf_counter() - start
        checks.update(results.verify(), **tracker.verify(n))
        if capacity.borrowed_tokens != 0:
            raise BenchmarkError(f"{capacity.borrowed_tokens} units still held after the run")
        return elapsed

    elapsed, wall = run_trio(main)
    return Sample({"seconds": elapsed}, {"wall_seconds": wall, **checks})


def _fanout_asyncio(
    params: Params, make_body: Callable[[Tracker, int], Callable[[], Awaitable[int]]]
) -> Sample:
    n, limit = params["n"], params["concurrency"]
    checks: dict[str, Any] = {}

    async def main() -> float:
        semaphore = asyncio.Semaphore(limit)
        tracker = Tracker("asyncio", limit, semaphore_probe(semaphore, limit))
        results = Results(n)
        bodies = [make_body(tracker, i) for i in range(n)]
        start = time.perf_counter()
        await asyncio_semaphore_fanout(bodies, [semaphore], results)
        elapsed = time.perf_counter() - start
        checks.update(results.verify(), **tracker.verify(n))
        return elapsed

    elapsed, wall = run_asyncio(main)
    return Sample({"seconds": elapsed}, {"wall_seconds": wall, **checks})


SPAWN_ALL_BASELINE = (
    "asyncio TaskGroup + Semaphore (spawn all N, each `async with sem`), results via a Queue"
)


class NoopFanout(Scenario):
    key = "A"
    title = "no-op fan-out"
    baseline = SPAWN_ALL_BASELINE
    metrics = (
        Metric("seconds", "time", "s"),
        Metric("us_per_task", "per task", "us", 2),
    )

    def params(self, quick: bool) -> dict[str, Any]:
        return {"n": 5_000 if quick else 100_000, "concurrency": 100}

    def warm_up_params(self) -> dict[str, Any]:
        return {"n": 500, "concurrency": 100}

    def describe(self, params: Params) -> str:
        return f"{params['n']:,} no-op tasks, concurrency {params['concurrency']}"

    def run(self, side: str, params: Params) -> Sample:
        if side == SLUICEWAY:
            sample = _fanout_sluiceway(params, lambda tracker, i: partial(noop_body, tracker, i))
        else:
            sample = _fanout_asyncio(params, lambda tracker, i: partial(noop_body, tracker, i))
        sample.metrics["us_per_task"] = sample.metrics["seconds"] / params["n"] * 1e6
        return sample

    def target(self, summary: Summary, params: Params) -> Target:
        value = ratio(summary, "seconds")
        return Target("sluiceway time <= 1.00x asyncio", f"{value:.2f}x", value <= 1.0)


class SleepFanout(Scenario):
    key = "B"
    title = "latency-bound fan-out"
    baseline = SPAWN_ALL_BASELINE
    metrics = (
        Metric("seconds", "makespan", "s"),
        Metric("x_ideal", "makespan / ideal", "x"),
        Metric("overhead_us_per_task", "(makespan-ideal)/N", "us", 2),
    )

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

    def run(self, side: str, params: Params) -> Sample:
        delay = params["latency"]
        if side == SLUICEWAY:
            sample = _fanout_sluiceway(
                params, lambda tracker, i: partial(trio_sleep_body, tracker, delay, i)
            )
        else:
            sample = _fanout_asyncio(
                params, lambda tracker, i: partial(asyncio_sleep_body, tracker, delay, i)
            )
        ideal = self.ideal(params)
        seconds = sample.metrics["seconds"]
        sample.metrics["x_ideal"] = seconds / ideal
        sample.metrics["overhead_us_per_task"] = (seconds - ideal) / params["n"] * 1e6
        if sample.info["peak_concurrency"] != params["concurrency"]:
            sample.info.setdefault("warnings", []).append(
                f"peak concurrency {sample.info['peak_concurrency']} never reached the limit "
                f"{params['concurrency']}"
            )
        return sample

    def target(self, summary: Summary, params: Params) -> Target:
        ours = summary["x_ideal"][SLUICEWAY].median
        theirs = summary["x_ideal"][ASYNCIO].median
        return Target(
            "sluiceway makespan <= 1.10x ideal",
            f"{ours:.3f}x ideal (asyncio {theirs:.3f}x)",
            ours <= 1.10,
        )
