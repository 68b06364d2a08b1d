"""A runner's statistics: counters kept across its runs, and its tasks' lifecycle events.

The counters are plain integers bumped on the per-task path (no locks, no objects);
:meth:`~sluiceway.TaskPoolRunner.statistics` snapshots them into the frozen
:class:`RunnerStatistics`. Events go to an optional :class:`~sluiceway.MetricsCollector` and
cost nothing when there is none (callers test ``metrics is not None`` first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from .._errors import TaskAbortedError, TaskCancelledError, TaskTimeoutError
from .._metrics import MetricsCollector, TaskEvent, TaskEventKind, safe_record
from ..capacity import plain_amounts

if TYPE_CHECKING:
    from ._job import Job


@attrs.frozen
class WaitStatistics:
    """Aggregate of how long tasks waited at the head of the source for capacity (seconds)."""

    count: int
    total: float
    max: float

    @property
    def mean(self) -> float:
        """Average wait, ``0.0`` with no samples."""
        return self.total / self.count if self.count else 0.0


@attrs.frozen
class RunnerStatistics:
    """Counters of a runner, across all its runs.

    ``started`` counts attempts (a retried task starts more than once); ``retried`` the attempts
    that were retried; ``aborted`` the tasks reported as aborted, started or not; ``parked`` the
    tasks that parked (raised :class:`~sluiceway.RunParked`, and were reported with no envelope).
    """

    name: str
    started: int
    finished: int
    failed: int
    cancelled: int
    timed_out: int
    retried: int
    aborted: int
    parked: int
    in_flight: int
    admitted_waiting: int
    buffered_envelopes: int
    peak_buffered_envelopes: int
    capacity_wait: WaitStatistics


class Counters:
    """Mutable counters a runner keeps across runs (snapshotted by ``statistics()``)."""

    __slots__ = (
        "aborted",
        "cancelled",
        "failed",
        "finished",
        "parked",
        "peak_buffered",
        "retried",
        "started",
        "timed_out",
        "wait_max",
        "wait_total",
    )

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0
        self.failed = 0
        self.cancelled = 0
        self.timed_out = 0
        self.retried = 0
        self.aborted = 0
        self.parked = 0
        self.peak_buffered = 0
        self.wait_total = 0.0
        self.wait_max = 0.0


def count_failure(counters: Counters, job: Job, error: BaseException) -> None:
    """Count a task that ended with ``error`` under the counter that says how it ended (the
    counters are named after the lifecycle events: aborted, cancelled, timed_out, failed)."""
    kind = event_kind(job, error)
    setattr(counters, kind, getattr(counters, kind) + 1)


def event_kind(job: Job, error: BaseException | None) -> TaskEventKind:
    """The lifecycle event that reports a task ending with ``error`` (``None``: it finished)."""
    if error is None:
        return "finished"
    if isinstance(error, TaskAbortedError):
        return "aborted"
    if isinstance(error, TaskCancelledError):
        return "cancelled"
    if isinstance(error, TaskTimeoutError) and job.cancel_kind is None:
        return "timed_out"
    return "failed"


def record_event(
    metrics: MetricsCollector,
    runner: str,
    kind: TaskEventKind,
    job: Job,
    at: float,
    *,
    error: BaseException | None = None,
    retry_at: float | None = None,
) -> None:
    """Record a task lifecycle event with ``metrics`` (a failing collector is logged, never
    raised into the run)."""
    safe_record(
        metrics,
        TaskEvent(
            kind=kind,
            runner=runner,
            at=at,
            task_id=job.task_id,
            key=job.key,
            attempt=job.attempt,
            cost=plain_amounts(job.cost) if job.cost else None,
            error=error,
            queued_at=job.queued_at if kind == "started" else None,
            started_at=None
            if kind in ("started", "queued") or job.never_started
            else job.started_at,
            retry_at=retry_at,
        ),
    )
