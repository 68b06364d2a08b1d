"""Retries of a run, and the timer that makes them ready when they fall due.

A failed attempt that its :class:`~sluiceway.RetryPolicy` retries holds no capacity while it
waits for its retry time. With a :class:`~sluiceway.DependencySource` the wait is the graph's
delayed readiness (the node is not ready until then, so it blocks nobody); with any other source
the attempt waits here, in a heap by due time, and once due it moves to ``due``, which the run
serves before the source's next item (the task is work in progress). One timer task serves both:
it sleeps until the earliest due time, of the graph's delayed nodes or of this heap, and is woken
sooner when an earlier one is added.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import TYPE_CHECKING

import attrs
import trio

if TYPE_CHECKING:
    from ._engine import Run


@attrs.define(slots=True)
class Retry:
    """A task of a source without a graph, waiting for (or due for) its next attempt."""

    item: object
    task_id: int
    attempt: int


class Retries:
    """The retries of one run (see the module docstring)."""

    def __init__(self, run: Run) -> None:
        self._run = run
        # Waiting for their time: (due time, sequence for ties, retry), a heap.
        self.waiting: list[tuple[float, int, Retry]] = []
        # Due: taken before the source's next item, oldest first.
        self.due: deque[Retry] = deque()
        self._seq = 0
        self._started = False
        self._timer: trio.lowlevel.Task | None = None  # the timer task while it sleeps
        self._timer_until: float | None = None  # when it is to wake up (None: when woken)

    def __bool__(self) -> bool:
        """Whether any retry is waiting or due."""
        return bool(self.waiting or self.due)

    def add(self, retry: Retry, at: float) -> None:
        """Keep ``retry`` until ``at``."""
        self._seq += 1
        heapq.heappush(self.waiting, (at, self._seq, retry))
        self.start_timer()
        self.rearm(at)

    def take_all(self) -> list[Retry]:
        """Remove every retry, due ones first, then by due time (to report them)."""
        retries = [*self.due, *(entry for _, _, entry in sorted(self.waiting))]
        self.due.clear()
        self.waiting.clear()
        return retries

    def start_timer(self) -> None:
        """Start the timer task in the run's nursery (once)."""
        run = self._run
        if not self._started and run.nursery is not None:
            self._started = True
            run.nursery.start_soon(self._run_timer, name=f"{run.name}:retry-timer")

    def rearm(self, due: float | None) -> None:
        """Wake the sleeping timer if a retry now falls due sooner than it sleeps for."""
        if (
            self._timer is not None
            and due is not None
            and (self._timer_until is None or due < self._timer_until)
        ):
            task, self._timer = self._timer, None
            trio.lowlevel.reschedule(task)

    def wake(self) -> None:
        """Wake the timer so it sees the run has ended."""
        if self._timer is not None:
            task, self._timer = self._timer, None
            trio.lowlevel.reschedule(task)

    def _next_due(self) -> float | None:
        graph = self._run.graph
        due = graph.next_due() if graph is not None else None
        if self.waiting and (due is None or self.waiting[0][0] < due):
            due = self.waiting[0][0]
        return due

    async def _run_timer(self) -> None:
        """Make retries ready when they fall due: the graph's delayed nodes, or the run's own
        retries of a source without a graph; then ask the tree for capacity for them."""
        run = self._run
        while not (run.finished or run.stopping):
            due = self._timer_until = self._next_due()
            with trio.move_on_at(math.inf if due is None else due):
                self._timer = trio.lowlevel.current_task()

                def abort(_: object) -> trio.lowlevel.Abort:
                    self._timer = None
                    return trio.lowlevel.Abort.SUCCEEDED

                await trio.lowlevel.wait_task_rescheduled(abort)
            self._timer = None
            now = trio.current_time()
            if due is None or due > now or run.finished or run.stopping:
                continue
            if run.graph is not None:
                run.graph.peek()  # releases due nodes: they become ready and notify
            released = False
            while self.waiting and self.waiting[0][0] <= now:
                self.due.append(heapq.heappop(self.waiting)[2])
                released = True
            if released and not run.capacity.is_open:
                if not (run.shutting_down or run.abandoned):
                    run.capacity.open()
            else:
                run.capacity.dispatch()
