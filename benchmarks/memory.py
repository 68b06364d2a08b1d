"""Scenario D: 1,000,000 no-op tasks pulled lazily from an async generator, concurrency 100.

Measures the CPU time per task, paired with the asyncio worker pool as in A (``fanout.py``'s
:class:`~benchmarks.fanout.PerTaskFanout`), and how much the process's resident memory grows at
its peak while the tasks run. Every run of every side is a fresh interpreter (``python -m
benchmarks.pertask VARIANT agen N C``), which prints one JSON line.

Peak measurement (Linux), :class:`MemoryProbe`: just before the run the child resets its peak-RSS
counter (writing ``5`` to ``/proc/self/clear_refs``) and reads its current RSS (``VmRSS``); after
the run it reads the peak (``VmHWM``). ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is *not*
used there: a child started with ``vfork``/``posix_spawn`` inherits the parent's high-water mark,
so it reports the driver's peak, not the child's. Elsewhere ``ru_maxrss`` is the fallback
(recorded as the ``method``).

sluiceway side: a runner over the async generator (adapted to a lazy ``SourceFromIterable``) and a
``CapacitySource(100)``, consumed per envelope and in batches. asyncio side: the worker pool, 100
worker tasks that take the next task from the same kind of async generator under an
``asyncio.Lock``, run it, and put the outcome on a bounded ``asyncio.Queue(1024)`` (the size of
sluiceway's default envelope buffer) read by a consumer task.
"""

from __future__ import annotations

import gc
import resource
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from .fanout import (
    BATCHES,
    DIRECT,
    ENVELOPES,
    POOL,
    RESULTS_QUEUE_SIZE,
    STREAM,
    PerTaskFanout,
    noop_body,
)
from .harness import ASYNCIO, SLUICEWAY, Metric, Params, Sample, Summary, Target, Tracker

#: The issue's target: peak growth under 50 MB (decimal megabytes).
LIMIT_MB = 50.0
MB = 1_000_000

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


# -- the lazy source, the same on every side -----------------------------------------------------


async def task_stream(
    tracker: Tracker, n: int
) -> AsyncGenerator[Callable[..., Awaitable[int]], None]:
    """The lazy source on both sides: yields ``n`` task callables, one at a time."""
    for i in range(n):
        yield partial(noop_body, tracker, i)


class LazyMemory(PerTaskFanout):
    key = "D"
    title = "lazy async-generator source, memory"
    source = STREAM
    asyncio_variants = (POOL, DIRECT)
    baseline = (
        "asyncio worker pool: a producer puts the bodies of the same async generator on an "
        "asyncio.Queue(100), 100 workers take them, results via a bounded "
        f"Queue({RESULTS_QUEUE_SIZE}) to a consumer; row `| direct pool`: the 100 workers take "
        "the next body from the generator themselves, under an asyncio.Lock"
    )
    metrics = (
        Metric("growth_mb", "peak RSS growth, largest of the side's runs", "MB", 1),
        *PerTaskFanout.per_task_metrics,
    )

    def params(self, quick: bool) -> dict[str, Any]:
        return {"n": 20_000 if quick else 1_000_000, "concurrency": 100}

    def warm_up_params(self) -> dict[str, Any]:
        return self.params(quick=True)

    def describe(self, params: Params) -> str:
        return (
            f"{params['n']:,} no-op tasks from an async generator, concurrency "
            f"{params['concurrency']}, CPU time of the fan-out, every run in a fresh process"
        )

    def run(self, side: str, params: Params) -> Sample:
        sample = super().run(side, params)
        runs = sample.info["runs"]
        mine = (ENVELOPES, BATCHES) if side == SLUICEWAY else (POOL, DIRECT)
        sample.metrics["growth_mb"] = max(
            float(runs[variant]["growth_mb"]) for variant in mine if variant in runs
        )
        return sample

    def target(self, summary: Summary, params: Params) -> Target:
        worst = summary["growth_mb"][SLUICEWAY].high
        median = summary["growth_mb"][SLUICEWAY].median
        theirs = summary["growth_mb"][ASYNCIO].median
        goal, measured, met = self.cpu_verdict(summary)
        return Target(
            f"sluiceway peak growth < {LIMIT_MB:g} MB in every run; {goal}",
            f"max {worst:.1f} MB, median {median:.1f} MB (asyncio {theirs:.1f} MB); {measured}",
            worst < LIMIT_MB and met,
        )
