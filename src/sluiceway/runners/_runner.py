"""What both runners share: the run lifecycle, statistics and control around the engine."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Any, Generic, Literal

import trio
from typing_extensions import TypeVar

from .._metrics import MetricsCollector
from .._util import aclose_after, raise_single, type_name
from ..capacity import BaseCapacity, CostVector
from ..sources import PeekableSource, as_task_source
from ._channel import EnvelopeChannel
from ._engine import Run
from ._stats import Counters, RunnerStatistics, WaitStatistics
from ._tasks import RetryPolicy

# Defaults (PEP 696) let ``Runner(name, source, capacity)`` type-check without annotations:
# nothing in the constructor says what the tasks emit and return.
I = TypeVar("I", default=Any)  # noqa: E741
O = TypeVar("O", default=Any)  # noqa: E741

#: Envelopes that may wait for the consumer before a run stops starting tasks. Once full, the run
#: resumes when the consumer has drained half of it, so the larger it is, the fewer wake-ups a
#: fast run pays per task when the consumer is the bottleneck.
DEFAULT_BUFFER_SIZE = 1024


def positive_seconds(value: object, what: str) -> float | None:
    """Validate an optional timeout in seconds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, got {value!r} ({type_name(value)})")
    if not 0 < value < math.inf:
        raise ValueError(f"{what} must be a positive, finite number of seconds (> 0), got {value}")
    return float(value)


@asynccontextmanager
async def open_run_nursery() -> AsyncIterator[trio.Nursery]:
    """The nursery of a run: its single error escapes bare, and an exception that reached it
    through two paths counts once.

    An iterable that raises a ``BaseException`` (``KeyboardInterrupt``, ...) ends its source with
    it, so the consumer receives it from the envelope channel, and it also propagates from where
    the iterable was advanced (a worker of the run): the same object, which must not become a
    group of two.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        raise_single(_without_repeats(group))


def _without_repeats(group: BaseExceptionGroup[BaseException]) -> BaseExceptionGroup[BaseException]:
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))
        else:
            leaves.append(exc)
    unique = list({id(exc): exc for exc in leaves}.values())
    if len(unique) == len(leaves):
        return group
    return BaseExceptionGroup(group.message, unique)


class TaskPoolRunner(Generic[I, O]):
    """The base of both runners: one engine, one run lifecycle, the same controls.

    Subclasses decide what a task costs (:meth:`_cost_of`, :meth:`_fixed_cost`). Use a runner
    as::

        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                ...
    """

    def __init__(
        self,
        name: str,
        source: object,
        capacity: BaseCapacity,
        *,
        task_timeout: float | None = None,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        retry: RetryPolicy | None = None,
        metrics: MetricsCollector | None = None,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a string, got {name!r}")
        if not isinstance(capacity, BaseCapacity):
            raise TypeError(
                f"capacity must be a CapacitySource or ResourceCapacitySource, got {capacity!r} "
                f"({type_name(capacity)})"
            )
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size must be an int >= 1, got {buffer_size!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {retry!r}")
        if metrics is not None and not callable(getattr(metrics, "record", None)):
            raise TypeError(f"metrics must have a record(event) method, got {metrics!r}")
        self.name = name
        self._source: PeekableSource[Any] = as_task_source(source)
        self._capacity = capacity
        self._task_timeout = positive_seconds(task_timeout, "task_timeout")
        self._buffer_size = buffer_size
        self._retry = retry
        self._metrics = metrics
        self._counters = Counters()
        self._run: Run | None = None

    # -- what subclasses decide ------------------------------------------------------------------

    def _cost_of(self, item: object) -> CostVector:
        """The (validated) cost of one task; raises if it is malformed or can never fit."""
        raise TypeError(f"{type(self).__name__} does not price tasks individually")

    def _fixed_cost(self) -> CostVector | None:
        """The cost of every task when it does not depend on the task, else ``None``."""
        return None

    # -- state ---------------------------------------------------------------------------------

    @property
    def source(self) -> PeekableSource[Any]:
        """The source tasks are taken from (adapted if it was a plain channel or iterable)."""
        return self._source

    @property
    def capacity(self) -> BaseCapacity:
        """The capacity node tasks are admitted under."""
        return self._capacity

    @property
    def running(self) -> bool:
        """Whether a ``run_tasks()`` block is active."""
        return self._run is not None

    def statistics(self) -> RunnerStatistics:
        """Counters across all runs, plus the current run's in-flight and buffered numbers."""
        counters = self._counters
        run = self._run
        return RunnerStatistics(
            name=self.name,
            started=counters.started,
            finished=counters.finished,
            failed=counters.failed,
            cancelled=counters.cancelled,
            timed_out=counters.timed_out,
            retried=counters.retried,
            aborted=counters.aborted,
            parked=counters.parked,
            in_flight=0 if run is None else run.in_flight(),
            admitted_waiting=0 if run is None else len(run.ready) + len(run.unproduced),
            buffered_envelopes=0 if run is None else len(run.channel),
            peak_buffered_envelopes=max(
                counters.peak_buffered, 0 if run is None else run.channel.peak
            ),
            # Every task started waited for its capacity once (perhaps no time at all).
            capacity_wait=WaitStatistics(counters.started, counters.wait_total, counters.wait_max),
        )

    # -- control -------------------------------------------------------------------------------

    def cancel(self, task_id: int | None = None, *, key: Hashable | None = None) -> int:
        """Cancel a running task by ``task_id``, or every running task with ``key``.

        The task is reported with an ``ERROR`` envelope carrying
        :class:`~sluiceway.TaskCancelledError` (it is not retried), its capacity is returned, and
        the run goes on; in a dependency graph its node and dependents are aborted. Returns how
        many tasks were cancelled (0 if none matched or no run is active). Only running tasks
        can be cancelled; to stop a task that has not started, abort its node.
        """
        if (task_id is None) == (key is None):
            raise TypeError("cancel() takes exactly one of task_id or key")
        if self._run is None:
            return 0
        return self._run.cancel(task_id, key, "cancelled by runner.cancel()")

    def shutdown(self, mode: Literal["drain", "cancel"] = "drain") -> None:
        """Wind the current run down: start nothing new and abort every task not started yet.

        ``"drain"`` lets running tasks finish; ``"cancel"`` cancels them too (reported with
        :class:`~sluiceway.TaskCancelledError`). A task that fails meanwhile is not retried.
        Every task the run had taken but will not run (admitted and not started yet, or
        waiting for a retry) is reported with :class:`~sluiceway.TaskAbortedError`. With a
        dependency source that is every node that has not started, so the graph ends done;
        any other source keeps the items it still holds (they were never taken: a list's rest,
        a buffer's queue, an iterable not advanced further), and they are not reported. The
        envelope stream then ends once the running tasks have reported; the run's
        ``async with`` does not raise for it. Calling it again with ``"cancel"`` escalates a
        drain. Without an active run it does nothing.
        """
        if mode not in ("drain", "cancel"):
            raise ValueError(f"mode must be 'drain' or 'cancel', got {mode!r}")
        if self._run is not None:
            self._run.shutdown(cancel_running=mode == "cancel")

    # -- the run -------------------------------------------------------------------------------

    @asynccontextmanager
    async def run_tasks(
        self, *, stop_on_error: bool = False, task_timeout: float | None = None
    ) -> AsyncIterator[EnvelopeChannel]:
        """Run every task of the source; yields the channel of envelopes.

        Args:
            stop_on_error: ``False`` (the default, as the original's examples behave): a task's
                error becomes an ``ERROR`` envelope and the others go on. ``True``: the first
                error cancels every other task, returns all capacity and is raised from this
                ``async with`` (bare, not in an exception group). Interruptions asked for by
                the caller (``cancel``, ``shutdown``, aborts) are reported, never raised.
            task_timeout: overrides the runner's per-task timeout for this run.

        The channel ends once the source is exhausted and every task has reported. If the source
        itself fails (an iterable raises, an error is thrown into a push-pull buffer), its error
        is raised from the channel after the envelopes of the tasks taken before it, and from
        this ``async with`` if the consumer did not receive it. Leaving the block early cancels
        the running tasks, returns every unit of capacity and closes the source.

        Raises:
            RuntimeError: if this runner is already running (runs do not nest).
        """
        if self._run is not None:
            raise RuntimeError(f"runner {self.name!r} is already running; runs do not nest")
        timeout = (
            self._task_timeout
            if task_timeout is None
            else positive_seconds(task_timeout, "task_timeout")
        )
        run = Run(
            name=self.name,
            source=self._source,
            capacity=self._capacity,
            cost_of=self._cost_of,
            fixed_cost=self._fixed_cost(),
            stop_on_error=stop_on_error,
            buffer_size=self._buffer_size,
            task_timeout=timeout,
            counters=self._counters,
            retry=self._retry,
            metrics=self._metrics,
        )
        self._run = run
        try:
            try:
                async with open_run_nursery() as nursery:
                    try:
                        run.start(nursery)
                        yield run.channel
                    finally:
                        run.stop()
                        nursery.cancel_scope.cancel("run_tasks() block exited")
            except BaseException as exc:
                await aclose_after(self._source.aclose, exc)
                raise
            await self._source.aclose()
            pending = run.channel.undelivered_error()
            if pending is not None:
                raise pending
        finally:
            self._counters.peak_buffered = max(self._counters.peak_buffered, run.channel.peak)
            self._run = None

    def __repr__(self) -> str:
        state = "running" if self._run is not None else "idle"
        return f"<{type(self).__name__} {self.name!r} {state} capacity={self._capacity!r}>"
