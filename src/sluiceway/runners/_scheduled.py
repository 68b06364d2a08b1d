"""ScheduledTaskPoolRunner: tasks with their own multi-resource costs, dependencies and retries."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from .._metrics import MetricsCollector
from .._util import type_name
from ..capacity import BaseCapacity, CostVector
from ..sources import DependencySource, NodeState, SourceFromIterable
from ..sources._iterable import read_ahead
from ._runner import DEFAULT_BUFFER_SIZE, I, O, TaskPoolRunner
from ._tasks import RetryPolicy, ScheduledTask


class ScheduledTaskPoolRunner(TaskPoolRunner[I, O]):
    """Run :class:`~sluiceway.ScheduledTask` objects, each admitted for its own cost.

    The source is usually a :class:`~sluiceway.DependencySource` or
    :class:`~sluiceway.PriorityDependencySource` (tasks run once their dependencies completed),
    but any source of scheduled tasks works (a plain iterable is read one task ahead, so each
    task is priced by its own cost before it is admitted). For each task the runner peeks the
    source, checks the task's cost against every level of ``capacity`` and takes it, in one
    synchronous step: the task it admits is the task it checked. The run's tasks are started in
    source order: a head that does not fit waits, and the smaller tasks behind it wait with it
    (strict head of line, no starvation of large tasks). ``backfill=True`` on a capacity node
    lets *other* requests at that node (another runner, a direct ``acquire()``) pass this run's
    blocked head when that cannot delay it; it does not reorder one run's own tasks.

    A task that fails is retried according to its :class:`~sluiceway.RetryPolicy`, waiting
    without holding capacity. With a dependency source the runner also drives the graph: after
    a task's ``on_complete`` returns its node completes, so its dependents are queued before
    the consumer sees the ``FINAL`` envelope; after a task's last attempt its node and every
    dependent are aborted and reported. ``on_complete`` / ``on_error`` run before the consumer
    sees the task's envelope.

    A task whose cost is malformed, names a resource no level tracks, or can never fit is
    rejected with a clear error (in :meth:`add_task` at once, or as an ``ERROR`` envelope if it
    reaches the runner another way); the runner never waits for it.

    Args:
        name: a label for task names, ``repr``, statistics and metrics.
        source: where the scheduled tasks come from.
        capacity: the node tasks are admitted under (usually a
            :class:`~sluiceway.ResourceCapacitySource`; a quota parent adds a rate limit).
        default_cost: the cost of a task that has none (there is no silent default).
        retry: the retry policy of tasks that have none of their own.
        task_timeout, buffer_size, metrics: as for
            :class:`~sluiceway.HierarchicalTaskPoolRunner`.
    """

    def __init__(
        self,
        name: str,
        source: object,
        capacity: BaseCapacity,
        *,
        default_cost: Mapping[str, float] | None = None,
        retry: RetryPolicy | None = None,
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
            retry=retry,
            metrics=metrics,
        )
        self._default_cost = None if default_cost is None else capacity.checked_cost(default_cost)
        if isinstance(self._source, SourceFromIterable):
            # Each task is admitted for its own cost, so it must exist before it is admitted.
            self._source = read_ahead(self._source)

    def _cost_of(self, item: object) -> CostVector:
        # Called on every peek: the task's cost was normalised when it was built; resource names
        # are checked against a cached set here, and the capacity tree itself fails a cost that
        # can never fit (reported through demand_impossible).
        cost = item.normalized_cost if isinstance(item, ScheduledTask) else None
        if cost is None:
            if self._default_cost is None:
                what = f"task {item.key!r}" if isinstance(item, ScheduledTask) else repr(item)
                raise TypeError(
                    f"{what} has no cost and runner {self.name!r} has no default_cost; give the "
                    "task a cost (e.g. cost={'cpu': 1}) or the runner a default_cost"
                )
            return self._default_cost
        self._capacity.check_tracked(cost)
        return cost

    def add_task(
        self, task: ScheduledTask[I, O], dependencies: Iterable[Hashable] = ()
    ) -> NodeState:
        """Add ``task`` to the dependency source (before or during a run); returns its state.

        Its cost is checked now: a malformed cost, an untracked resource or a cost that can
        never fit raises here, and nothing is added.

        Raises:
            TypeError: if the source is not a dependency source, or ``task`` not a
                :class:`~sluiceway.ScheduledTask`.
            ImpossibleCostError, UnknownResourceError, ValueError: for a bad cost.
            DependencyError: for a duplicate key or an unknown dependency.
        """
        if not isinstance(task, ScheduledTask):
            raise TypeError(f"add_task() needs a ScheduledTask, got {task!r} ({type_name(task)})")
        source = self._source
        if not isinstance(source, DependencySource):
            raise TypeError(
                f"add_task() needs a DependencySource or PriorityDependencySource; this runner's "
                f"source is {type_name(source)} (add tasks to it directly)"
            )
        self._capacity.checked_cost(self._cost_of(task))  # raises if it can never fit
        return source.add_task(task.key, task, dependencies)

    def abort(self, key: Hashable) -> list[Hashable]:
        """Abort ``key`` and every node that depends on it; returns the aborted keys.

        A running task among them is cancelled (its capacity returned) and every aborted task is
        reported with :class:`~sluiceway.TaskAbortedError`.
        """
        source = self._source
        if not isinstance(source, DependencySource):
            raise TypeError(f"abort() needs a dependency source, not {type_name(source)}")
        aborted: list[Any] = source.abort(key)
        return aborted


__all__ = ["ScheduledTaskPoolRunner"]
