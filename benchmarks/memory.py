"""Scenario D: 1,000,000 no-op tasks pulled lazily from an async generator, concurrency 100.

Measures how much the process's resident memory grows at its peak while the tasks run, and the
time. Every repetition of each side runs in a fresh interpreter (``python -m benchmarks.memory
SIDE N C``), which prints one JSON line.

Peak measurement (Linux): just before the run the child resets its peak-RSS counter (writing
``5`` to ``/proc/self/clear_refs``) and reads its current RSS (``VmRSS``); after the run it
reads the peak (``VmHWM``). ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is *not* used there:
a child started with ``vfork``/``posix_spawn`` inherits the parent's high-water mark, so it
reports the driver's peak, not the child's. Elsewhere ``ru_maxrss`` is the fallback (recorded as
the ``method``).

sluiceway side: a runner over the async generator (adapted to a lazy ``SourceFromIterable``) and a
``CapacitySource(100)``. asyncio side: 100 worker tasks that take the next task from the same kind
of async generator under an ``asyncio.Lock``, run it, and put the outcome on a bounded
``asyncio.Queue(1024)`` (the size of sluiceway's default envelope buffer) read by a consumer task.
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from sluiceway import CapacitySource
from sluiceway.runners import DEFAULT_BUFFER_SIZE, HierarchicalTaskPoolRunner

from .fanout import Outcome, capacity_probe, drain_runner, noop_body
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
    run_asyncio,
    run_trio,
    run_worker,
    task_failed,
)

#: The issue's target: peak growth under 50 MB (decimal megabytes).
LIMIT_MB = 50.0
MB = 1_000_000
#: The asyncio queue bound: the size of a sluiceway runner's envelope buffer by default.
QUEUE_SIZE = DEFAULT_BUFFER_SIZE  # same bound as the runner's envelope buffer

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


# -- measuring memory --------------------------------------------------------------------------


def _status_bytes(field: str) -> int | None:
    try:
        text = _STATUS.read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    return None


def current_rss_bytes() -> int | None:
    """The process's resident set size now (``VmRSS``), or ``None`` without ``/proc``."""
    return _status_bytes("VmRSS")


def _ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class MemoryProbe:
    """Current RSS just before the run and peak RSS during it."""

    def __init__(self) -> None:
        self.method = "VmHWM" if _status_bytes("VmHWM") is not None else "ru_maxrss"
        self.before = 0
        self.peak_reset = False

    def start(self) -> None:
        gc.collect()
        if self.method == "VmHWM":
            try:
                _CLEAR_REFS.write_text("5", encoding="ascii")  # reset VmHWM to the current RSS
                self.peak_reset = True
            except OSError:
                self.peak_reset = False
            self.before = _status_bytes("VmRSS") or 0
        else:
            self.before = _ru_maxrss_bytes()

    def report(self) -> dict[str, Any]:
        peak = (_status_bytes("VmHWM") if self.method == "VmHWM" else None) or _ru_maxrss_bytes()
        after = _status_bytes("VmRSS")
        return {
            "method": self.method,
            "peak_reset": self.peak_reset,
            "rss_before_bytes": self.before,
            "rss_peak_bytes": peak,
            "rss_after_bytes": after,
            "growth_mb": max(0, peak - self.before) / MB,
        }


# -- the two sides (run in the child) ----------------------------------------------------------


async def task_stream(
    tracker: Tracker, n: int
) -> AsyncGenerator[Callable[..., Awaitable[int]], None]:
    """The lazy source on both sides: yields ``n`` task callables, one at a time."""
    for i in range(n):
        yield partial(noop_body, tracker, i)


def child_sluiceway(n: int, limit: int) -> dict[str, Any]:
    probe = MemoryProbe()
    results = Results(n)
    checks: dict[str, Any] = {}

    async def main() -> float:
        capacity = CapacitySource(limit)
        tracker = Tracker("sluiceway", limit, capacity_probe(capacity))
        runner: HierarchicalTaskPoolRunner[Any, int] = HierarchicalTaskPoolRunner(
            "lazy", task_stream(tracker, n), capacity
        )
        probe.start()
        start = time.perf_counter()
        await drain_runner(runner, results)
        elapsed = time.perf_counter() - start
        checks.update(probe.report(), **results.verify(), **tracker.verify(n))
        if capacity.borrowed_tokens != 0:
            raise BenchmarkError(f"{capacity.borrowed_tokens} units still held after the run")
        return elapsed

    elapsed, wall = run_trio(main)
    return {"seconds": elapsed, "wall_seconds": wall, **checks}


def child_asyncio(n: int, limit: int) -> dict[str, Any]:
    probe = MemoryProbe()
    results = Results(n)
    checks: dict[str, Any] = {}
    busy = [0]  # workers holding a task: the pool's "units held"

    async def main() -> float:
        tracker = Tracker("asyncio", limit, lambda: busy[0])
        stream = task_stream(tracker, n)
        lock = asyncio.Lock()
        queue: asyncio.Queue[Outcome | None] = asyncio.Queue(QUEUE_SIZE)

        async def worker() -> None:
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
                await queue.put(outcome)

        async def pool() -> None:
            async with asyncio.TaskGroup() as group:
                for _ in range(limit):
                    group.create_task(worker())
            await queue.put(None)

        async def consume() -> None:
            while (item := await queue.get()) is not None:
                ok, value = item
                if not ok:
                    raise task_failed("asyncio baseline", value)
                results.add(value)

        probe.start()
        start = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            group.create_task(consume())
            group.create_task(pool())
        await stream.aclose()
        elapsed = time.perf_counter() - start
        checks.update(probe.report(), **results.verify(), **tracker.verify(n))
        return elapsed

    elapsed, wall = run_asyncio(main)
    return {"seconds": elapsed, "wall_seconds": wall, **checks}


def child_main(argv: list[str]) -> int:
    """``python -m benchmarks.memory SIDE N CONCURRENCY``: one run, one JSON line on stdout."""
    side, n, limit = argv[0], int(argv[1]), int(argv[2])
    run = {SLUICEWAY: child_sluiceway, ASYNCIO: child_asyncio}[side]
    try:
        report = run(n, limit)
    except BaseException as exc:  # report it to the parent, which fails the suite loudly
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise
    print(json.dumps(report))
    return 0


# -- the scenario (run in the driver) ----------------------------------------------------------


def _spawn(side: str, params: Params) -> dict[str, Any]:
    n, limit = params["n"], params["concurrency"]
    report = run_worker(
        "benchmarks.memory",
        [side, str(n), str(limit)],
        timeout=120 + n * 0.001,
        what=f"{side} child",
    )
    if report.get("results") != n:
        raise BenchmarkError(f"{side} child reported {report.get('results')} results, not {n}")
    return report


class LazyMemory(Scenario):
    key = "D"
    title = "lazy async-generator source, memory"
    baseline = (
        "asyncio pool: 100 workers pull from the same async generator under an asyncio.Lock, "
        f"results via a bounded Queue({QUEUE_SIZE}) to a consumer"
    )
    metrics = (
        Metric("growth_mb", "peak RSS growth", "MB", 1),
        Metric("seconds", "time", "s"),
        Metric("us_per_task", "per task", "us", 2),
    )
    warm_up = False  # every run is a fresh interpreter anyway

    def params(self, quick: bool) -> dict[str, Any]:
        return {"n": 20_000 if quick else 1_000_000, "concurrency": 100}

    def warm_up_params(self) -> dict[str, Any]:
        return self.params(quick=True)

    def describe(self, params: Params) -> str:
        return (
            f"{params['n']:,} no-op tasks from an async generator, concurrency "
            f"{params['concurrency']}, each run in a fresh subprocess"
        )

    def run(self, side: str, params: Params) -> Sample:
        report = _spawn(side, params)
        seconds = float(report.pop("seconds"))
        growth = float(report["growth_mb"])
        metrics = {
            "growth_mb": growth,
            "seconds": seconds,
            "us_per_task": seconds / params["n"] * 1e6,
        }
        return Sample(metrics, report)

    def target(self, summary: Summary, params: Params) -> Target:
        worst = summary["growth_mb"][SLUICEWAY].high
        median = summary["growth_mb"][SLUICEWAY].median
        theirs = summary["growth_mb"][ASYNCIO].median
        return Target(
            f"sluiceway peak growth < {LIMIT_MB:g} MB in every run",
            f"max {worst:.1f} MB, median {median:.1f} MB (asyncio median {theirs:.1f} MB)",
            worst < LIMIT_MB,
        )


if __name__ == "__main__":
    raise SystemExit(child_main(sys.argv[1:]))
