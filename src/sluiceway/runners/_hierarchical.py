"""HierarchicalTaskPoolRunner: run a source's tasks under a capacity node, streaming envelopes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._metrics import MetricsCollector
from ..capacity import BaseCapacity, CapacitySource, CostVector
from ._runner import DEFAULT_BUFFER_SIZE, I, O, TaskPoolRunner


class HierarchicalTaskPoolRunner(TaskPoolRunner[I, O]):
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
        name: a label for task names, ``repr``, statistics and metrics.
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
        metrics: a collector of task lifecycle events (see :class:`~sluiceway.InMemoryMetrics`).
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
        metrics: MetricsCollector | None = None,
    ) -> None:
        super().__init__(
            name,
            source,
            capacity,
            task_timeout=task_timeout,
            buffer_size=buffer_size,
            metrics=metrics,
        )
        self._cost = self._resolve_cost(capacity, cost)

    @staticmethod
    def _resolve_cost(capacity: BaseCapacity, cost: Mapping[str, float] | None) -> CostVector:
        if cost is None:
            if isinstance(capacity, CapacitySource):
                return {capacity.resource: 1}
            raise TypeError(
                "a ResourceCapacitySource needs an explicit cost per task, e.g. "
                "cost={'cpu': 1}; nothing is assumed (an assumed key could be untracked)"
            )
        return capacity.checked_cost(cost)

    def _fixed_cost(self) -> CostVector:
        return self._cost

    def _cost_of(self, item: Any) -> CostVector:
        return self._cost


__all__ = ["DEFAULT_BUFFER_SIZE", "HierarchicalTaskPoolRunner"]
