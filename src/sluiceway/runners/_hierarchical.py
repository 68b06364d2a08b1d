"""HierarchicalTaskPoolRunner: run a source's tasks under a capacity node, streaming envelopes."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Hashable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Generic

from typing_extensions import TypeVar

from .._util import aclose_after, open_owned_nursery, type_name
from ..capacity import BaseCapacity, CapacitySource, ResourceCapacitySource
from ..capacity._amounts import Vector
from ..capacity._faces import checked_cost
from ..sources import PeekableSource, as_task_source
from ._channel import EnvelopeChannel
from ._engine import Counters, Run, RunnerStatistics, WaitStatistics

# Defaults (PEP 696) let ``HierarchicalTaskPoolRunner(name, source, capacity)`` type-check
# without annotations: nothing in the constructor says what the tasks emit and return.
I = TypeVar("I", default=Any)  # noqa: E741
O = TypeVar("O", default=Any)  # noqa: E741

#: Envelopes that may wait for the consumer before a run stops starting tasks. Once full, the run
#: resumes when the consumer has drained half of it, so the larger it is, the fewer wake-ups a
#: fast run pays per task when the consumer is the bottleneck.
DEFAULT_BUFFER_SIZE = 1024


def _positive_seconds(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, got {value!r} ({type_name(value)})")
    if not 0 < value < math.inf:
        raise ValueError(f"{what} must be a positive, finite number of seconds (> 0), got {value}")
    return float(value)


class HierarchicalTaskPoolRunner(Generic[I, O]):
    """Run the tasks of a source under a capacity node and stream every task's progress.

    ``source`` yields tasks: ``async def task(emit) -> result`` callables (or
    :class:`~sluiceway.TaskSpec` objects); any sluiceway source, ``trio.abc.ReceiveChannel`` or
    (async) iterable is accepted. ``capacity`` is the node every task is admitted under: a
    :class:`~sluiceway.CapacitySource` (each task takes one unit) or a
    :class:`~sluiceway.ResourceCapacitySource` with a ``cost`` per task.

    Use it as::

        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                ...

    Contract: a task is never called without holding its capacity; capacity is never held while
    waiting for the source (a lazy iterable is advanced once capacity is held, which is what makes
    it lazy); at most as many tasks are live as hold capacity; a task's capacity is released the
    moment its body returns or raises; results go through a bounded channel, and while it is full
    nothing new starts; leaving the block early cancels the running tasks, returns every unit and
    closes the source.

    Args:
        name: a label for task names, ``repr`` and statistics.
        source: where tasks come from (see above).
        capacity: the node tasks are admitted under.
        cost: the cost of each task; required for a ``ResourceCapacitySource``, one unit of the
            node's resource for a ``CapacitySource``. Validated now: unknown resources and costs
            that can never fit are refused here.
        task_timeout: default per-task timeout in seconds (a :class:`~sluiceway.TaskSpec` may
            override it); a task that exceeds it is cancelled and reported as
            :class:`~sluiceway.TaskTimeoutError`.
        buffer_size: how many envelopes may wait for the consumer before the run stops starting
            tasks (backpressure).
    """

    def __init__(
        self,
        name: str,
        source: object,
        capacity: BaseCapacity,
        *,
        cost: Mapping[str, float] | None = None,
        task_timeout: float | None = None,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
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
        self.name = name
        self._source: PeekableSource[Any] = as_task_source(source)
        self._capacity = capacity
        self._cost = self._resolve_cost(capacity, cost)
        self._task_timeout = _positive_seconds(task_timeout, "task_timeout")
        self._buffer_size = buffer_size
        self._counters = Counters()
        self._run: Run | None = None

    @staticmethod
    def _resolve_cost(capacity: BaseCapacity, cost: Mapping[str, float] | None) -> Vector:
        if cost is None:
            if isinstance(capacity, CapacitySource):
                return {capacity.resource: 1}
            raise TypeError(
                "a ResourceCapacitySource needs an explicit cost per task, e.g. "
                "cost={'cpu': 1}; nothing is assumed (an assumed key could be untracked)"
            )
        return checked_cost(capacity, cost)

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
            in_flight=0 if run is None else run.in_flight(),
            admitted_waiting=0 if run is None else len(run.ready) + len(run.unproduced),
            buffered_envelopes=0 if run is None else len(run.channel),
            peak_buffered_envelopes=max(
                counters.peak_buffered, 0 if run is None else run.channel.peak
            ),
            capacity_wait=WaitStatistics(
                counters.wait_count, counters.wait_total, counters.wait_max
            ),
        )

    def cancel(self, task_id: int | None = None, *, key: Hashable | None = None) -> int:
        """Cancel a running task by ``task_id``, or every running task with ``key``.

        The task is reported with an ``ERROR`` envelope carrying
        :class:`~sluiceway.TaskCancelledError`, its capacity is returned, and the run goes on.
        Returns how many tasks were cancelled (0 if none matched or no run is active).
        """
        if (task_id is None) == (key is None):
            raise TypeError("cancel() takes exactly one of task_id or key")
        if self._run is None:
            return 0
        return self._run.cancel(task_id, key, "cancelled by runner.cancel()")

    def _cost_of(self, item: object) -> Vector:
        return self._cost

    @asynccontextmanager
    async def run_tasks(
        self, *, stop_on_error: bool = False, task_timeout: float | None = None
    ) -> AsyncIterator[EnvelopeChannel]:
        """Run every task of the source; yields the channel of envelopes.

        Args:
            stop_on_error: ``False`` (the default, as the original's examples behave): a task's
                error becomes an ``ERROR`` envelope and the others go on. ``True``: the first
                error cancels every other task, returns all capacity and is raised from this
                ``async with`` (bare, not in an exception group).
            task_timeout: overrides the runner's per-task timeout for this run.

        The channel ends once the source is exhausted and every task has reported. If the source
        itself fails (an iterable raises, an error is thrown into a push-pull buffer), its error
        is raised from the channel after the envelopes of the tasks taken before it, and from
        this ``async with`` if the consumer did not receive it.

        Raises:
            RuntimeError: if this runner is already running (runs do not nest).
        """
        if self._run is not None:
            raise RuntimeError(f"runner {self.name!r} is already running; runs do not nest")
        timeout = (
            self._task_timeout
            if task_timeout is None
            else _positive_seconds(task_timeout, "task_timeout")
        )
        run = Run(
            name=self.name,
            source=self._source,
            node=self._capacity._node,
            cost_of=self._cost_of,
            fixed_cost=self._cost,
            validated=isinstance(self._capacity, ResourceCapacitySource),
            stop_on_error=stop_on_error,
            buffer_size=self._buffer_size,
            task_timeout=timeout,
            counters=self._counters,
        )
        self._run = run
        try:
            try:
                async with open_owned_nursery() as nursery:
                    run.start(nursery)
                    try:
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
        return f"<HierarchicalTaskPoolRunner {self.name!r} {state} capacity={self._capacity!r}>"
