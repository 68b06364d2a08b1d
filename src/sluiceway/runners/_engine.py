"""The task-pool engine shared by the runners: one :class:`Run` per ``run_tasks()`` block.

A run holds a standing request at its capacity node (a :class:`~sluiceway.capacity.CapacityDemand`).
The tree grants it one task at a time, in the same synchronous step in which it checks the task's
cost and takes the task from the source (:meth:`Run.accept`), so admission and take are atomic.
The granted task is queued in ``ready`` and started by a worker.

Nothing waits while holding capacity for the source: a peekable source is only asked for an item
when one is available, and a lazy source (:class:`~sluiceway.SourceFromIterable`) is advanced once
its capacity is held, which is the definition of lazy. Results go through an
:class:`~sluiceway.EnvelopeChannel`; while it is full the demand asks for nothing, so the run
starts no new task and its capacity goes to its siblings.

The run is the hub; each concern is a part of its own, in its own module:

* ``_workers.py``, :class:`~._workers.Workers`: the worker tasks, the per-task path (start, run,
  release, report);
* ``_outcomes.py``, :class:`~._outcomes.Outcomes`: how a task's end is counted, retried, fed back
  and reported;
* ``_graph_feedback.py``, :class:`~._graph_feedback.GraphFeedback`: driving a
  :class:`~sluiceway.DependencySource` (only for one);
* ``_retries.py``, :class:`~._retries.Retries`: retries of other sources and the retry timer;
* ``_job.py``: the private record of a task attempt (:class:`~._job.Job`) and the public
  :class:`~sluiceway.Emitter` its task receives;
* ``_stats.py``: counters, statistics and lifecycle events.

A task that raises :class:`~sluiceway.RunParked` *parks* (``_parked.py``): it is reported with no
envelope, and once nothing else can happen the run ends by raising a new ``RunParked`` from the
envelope channel, after everything deposited before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

import trio

from .._errors import ImpossibleCostError, TaskAbortedError
from .._metrics import MetricsCollector, TaskEventKind
from .._util import NOTHING
from ..capacity import BaseCapacity, CostVector
from ..sources import ChannelSource, DependencySource, PeekableSource, SourceFromIterable
from ._channel import EnvelopeChannel
from ._envelopes import EnvelopeKind
from ._graph_feedback import GraphFeedback
from ._job import CANCELLED, SHUT_DOWN, Emitter, Job, Resume
from ._outcomes import Outcomes
from ._parked import note_parked, parked_error
from ._retries import Retries
from ._stats import Counters, RunnerStatistics, WaitStatistics, record_event
from ._tasks import RetryPolicy
from ._workers import Workers

__all__ = ["Counters", "Emitter", "Run", "RunnerStatistics", "WaitStatistics"]


class Run:
    """The state of one ``run_tasks()`` block, and what the capacity tree calls (see the module
    docstring)."""

    def __init__(
        self,
        *,
        name: str,
        source: PeekableSource[Any],
        capacity: BaseCapacity,
        cost_of: Callable[[object], CostVector],
        fixed_cost: CostVector | None,
        stop_on_error: bool,
        buffer_size: int,
        task_timeout: float | None,
        counters: Counters,
        retry: RetryPolicy | None = None,
        metrics: MetricsCollector | None = None,
    ) -> None:
        # -- configuration
        self.name = name
        self.source = source
        self.lazy = source.lazy
        # A synchronous iterable is advanced in the step that grants its capacity, like a peek.
        self.sync_iterable: SourceFromIterable[Any] | None = (
            source if isinstance(source, SourceFromIterable) and source.can_produce_nowait else None
        )
        self.graph: DependencySource[Any, Any] | None = (
            source if isinstance(source, DependencySource) else None
        )
        self.cost_of = cost_of
        self.fixed_cost = fixed_cost  # every task's cost, when the runner knows it up front
        self.stop_on_error = stop_on_error
        self.task_timeout = task_timeout
        self.counters = counters
        self.retry = retry
        self.metrics = metrics
        self.now: Callable[[], float] = trio.lowlevel.current_clock().current_time
        self.started_at = self.now()
        # -- the parts
        self.capacity = capacity.demand(self)  # the run's standing request at its node
        self.channel = EnvelopeChannel(buffer_size, self._on_space)
        self.workers = Workers(self)
        self.outcomes = Outcomes(self)
        self.retries = Retries(self)
        self.feedback = GraphFeedback(self, self.graph) if self.graph is not None else None
        # -- tasks, from admission to report
        # Admitted, not started yet: (item, cost, seconds waited for capacity, graph node).
        self.ready: deque[tuple[object, CostVector, float, Hashable | None]] = deque()
        # Grants for a lazy source's next item, not produced yet: (cost, seconds waited).
        self.unproduced: deque[tuple[CostVector, float]] = deque()
        self.producing = 0  # workers advancing a lazy source
        self.running: dict[int, Job] = {}
        self.resumes: deque[Resume] = deque()  # paused tasks taking capacity back, served first
        self.parked: list[Hashable | None] = []  # keys of the tasks that parked, in order
        self.next_task_id = 1
        self.head_since: float | None = None  # when the source's head started waiting
        # -- the run's state
        self.finished = False  # ended: the channel has its end
        self.stopping = False  # the run_tasks() block is exiting, or stop_on_error raised
        self.shutting_down = False  # shutdown(): start nothing new
        self.source_exhausted = False
        self.abandoned: BaseException | None = None  # why the run gave up on its source
        self.nursery: trio.Nursery | None = None
        self._unsubscribe: list[Callable[[], None]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.workers.start(nursery)
        if isinstance(self.source, ChannelSource):
            nursery.start_soon(self.source.run_feeder, name=f"{self.name}:feeder")
        self._unsubscribe.append(self.source.subscribe(self.on_source_change))
        if self.feedback is not None:
            self._unsubscribe.extend(self.feedback.subscribe())
            self.retries.start_timer()
        self.source_exhausted = self.source.exhausted
        if not self.source_exhausted:
            self.capacity.open()
        self.maybe_finish()

    def stop(self) -> None:
        """Withdraw from the tree and give back every grant no task is using (synchronous)."""
        self.stopping = True
        while self._unsubscribe:
            self._unsubscribe.pop()()
        self._withdraw()
        while self.ready:
            self.capacity.refund(self.ready.popleft()[1])
        self.channel.close("the run_tasks() block has exited")
        self._wake_everyone()

    def _withdraw(self) -> None:
        """Stop asking the tree for capacity and refund the grants waiting for a lazy source's
        next item (a quota gets them back: nothing ran)."""
        self.capacity.close()
        while self.unproduced:
            self.capacity.refund(self.unproduced.popleft()[0])

    def maybe_finish(self) -> None:
        """End the run if nothing more can happen: nothing is admitted, running, being
        produced, settled or waiting to retry, and the source is exhausted (or the run shut
        down or gave up on its source), or a graph is stuck (see ``GraphFeedback.stuck``)."""
        if self.finished or self.stopping:
            return
        if self.ready or self.unproduced or self.running or self.producing:
            return
        if self.outcomes.settling or self.retries:
            return
        if not (
            self.shutting_down
            or self.abandoned
            or self.source.exhausted
            or (self.feedback is not None and self.feedback.stuck())
        ):
            return
        self.finished = True
        self._withdraw()
        error = self.abandoned or (None if self.shutting_down else self.source.failure)
        if self.parked:
            # An error is never lost to a park: it wins, and says which tasks parked too.
            if error is None:
                error = parked_error(self.name, self.parked)
            else:
                note_parked(error, self.name, self.parked)
        self.channel.end(error)
        self._wake_everyone()

    def _wake_everyone(self) -> None:
        self.workers.wake_all()
        self.retries.wake()

    def new_task_id(self) -> int:
        task_id = self.next_task_id
        self.next_task_id += 1
        return task_id

    def event(
        self,
        kind: TaskEventKind,
        job: Job,
        at: float,
        *,
        error: BaseException | None = None,
        retry_at: float | None = None,
    ) -> None:
        """Record a task lifecycle event with the run's metrics collector."""
        assert self.metrics is not None
        record_event(self.metrics, self.name, kind, job, at, error=error, retry_at=retry_at)

    # -- the demand (called synchronously by the capacity tree) ------------------------------

    def next_cost(self) -> CostVector | None:
        """The cost of the task the run would start next, or ``None`` if it starts nothing now."""
        if self.stopping:
            return None
        if self.resumes:
            # Work in progress first, even while shutting down or blocked on the consumer.
            return self.resumes[0].job.cost
        if self.shutting_down or self.channel.blocked:
            return None
        due = self.retries.due
        while due:
            if self.fixed_cost is not None:
                return self.fixed_cost
            try:
                return self.cost_of(due[0].item)
            except Exception as error:  # the limits changed: it can never fit any more
                self._reject(error)
        if self.lazy:
            # An async iterable is advanced by a worker holding the capacity of the item it will
            # produce; at most one unit per run may wait on the iterable that way.
            if self.source_exhausted or self.unproduced or self.producing:
                return None
            return self.fixed_cost if self.fixed_cost is not None else self.cost_of(None)
        source = self.source
        while True:
            item = source.peek()
            if item is NOTHING:
                return None
            if self.fixed_cost is not None:
                return self.fixed_cost
            try:
                return self.cost_of(item)
            except Exception as error:  # a cost that is malformed, unknown or can never fit
                self._reject(error)  # takes that item; look at the next one

    def admit_next(self) -> None:
        """Admit the run's next task if it can start now: what a dispatch of the tree does,
        done directly when this run holds the only request in the tree (no fairness to decide,
        no second look at the source once it has nothing more to start)."""
        capacity = self.capacity
        if capacity.alone:
            cost = self.next_cost()
            if cost is None:
                return  # a dispatch would grant nobody anything
            if capacity.grant_now(cost):
                self.accept(cost)  # granted in the step it asked: it waited no time
                return
        capacity.dispatch()

    def demand_cost(self) -> CostVector | None:
        cost = self.next_cost()
        if cost is not None and self.head_since is None:
            self.head_since = self.now()
        return cost

    def demand_granted(self, cost: CostVector) -> None:
        self.accept(cost)

    def accept(self, cost: CostVector) -> None:
        """Take the granted task (synchronously, with the grant) and get a worker for it."""
        if self.resumes:
            resume = self.resumes.popleft()
            resume.granted = True
            resume.event.set()
            self.head_since = None
            return
        waited = self._waited()
        # ``cost`` is already taken at every level: until the task is queued, anything that
        # goes wrong (the source's end or failure, a KeyboardInterrupt raised by a synchronous
        # iterable, any other BaseException) must give it back, or it leaks at every level.
        queued = False
        try:
            if self.retries.due:
                self.ready.append((self.retries.due.popleft(), cost, waited, None))
            elif self.sync_iterable is not None:
                try:
                    item = self.sync_iterable.produce_nowait()
                except Exception:  # its end, or its failure (delivered via EnvelopeChannel.end)
                    queued = True  # refunded here, not below
                    self.capacity.refund(cost)
                    self.maybe_finish()
                    return
                self.ready.append((item, cost, waited, None))
            elif self.lazy:
                self.unproduced.append((cost, waited))
            elif self.graph is not None:
                key, item = self.graph.take_keyed()
                self.ready.append((item, cost, waited, key))
            else:
                self.ready.append((self.source.take(), cost, waited, None))
            queued = True
        finally:
            if not queued:
                self.capacity.refund(cost)  # then the BaseException goes on
        workers = self.workers
        if workers.releaser_claim:
            workers.releaser_claim = False  # the releasing worker takes it (no call needed)
        else:
            workers.work_available()

    def hand_over_next(self, cost: CostVector) -> bool:
        """A worker's release of ``cost``: when the run is alone in its tree, every task costs
        the same and the next one is at hand, keep the unit for that task and queue it (for the
        releasing worker). What ``next_cost``, the capacity's ``hand_over`` and :meth:`accept`
        do on this path, without their general cases, which cost a call each on the per-task
        path; ``False``, changing nothing, in any other case (the caller then gives the unit
        back to the tree). Whether the run is alone is asked last, of ``hand_over`` (which
        knows it without a call), once the next task is known to be at hand."""
        if (
            cost is not self.fixed_cost
            or self.stopping
            or self.resumes
            or self.shutting_down
            or self.channel.blocked
            or self.retries.due
        ):
            return False
        if self.lazy:
            # The iterable's next item, produced by the releasing worker under this unit.
            if self.source_exhausted or self.unproduced or self.producing:
                return False
            if not self.capacity.hand_over(cost):
                return False
            self.unproduced.append((cost, 0.0 if self.head_since is None else self._waited()))
            return True
        if self.sync_iterable is not None or self.graph is not None:
            return False
        source = self.source
        if source.peek() is NOTHING or not self.capacity.hand_over(cost):
            return False
        try:
            item = source.take()
        except BaseException:
            self.capacity.refund(cost)  # as accept does: a unit is never kept without a task
            raise
        waited = 0.0 if self.head_since is None else self._waited()
        self.ready.append((item, cost, waited, None))
        return True

    def _waited(self) -> float:
        """How long the source's head waited for capacity, if it was waiting (and it no longer
        is). The hand-over path reads ``head_since`` itself first: it is almost always
        ``None`` there, and this call would be one more per task."""
        since = self.head_since
        if since is None:
            return 0.0
        self.head_since = None
        return self.now() - since

    def demand_impossible(self, cost: CostVector, error: ImpossibleCostError) -> None:
        """A limit was lowered below the next task's cost: report it instead of waiting forever."""
        if self.resumes:
            resume = self.resumes.popleft()  # it can never take its capacity back
            resume.error = error
            resume.event.set()
            return
        if self.lazy and not self.retries.due:
            # A lazy source's next item does not exist yet, and every task of the run has this
            # same cost: none can run any more. Ask for nothing more, and end the run with the
            # error once the running tasks have reported.
            self.abandoned = error
            self._withdraw()
            self.outcomes.drop_retries(lambda: ImpossibleCostError(str(error)))
            self.maybe_finish()
            return
        self._reject(error)

    def _reject(self, error: Exception) -> None:
        """Take the next item and report it as failed without running it (its cost is wrong)."""
        node: Hashable | None = None
        if self.retries.due:
            retry = self.retries.due.popleft()
            job = Job(retry.task_id, retry.item, {}, None)
            job.attempt = retry.attempt
        else:
            if self.graph is not None:
                node, item = self.graph.take_keyed()
            else:
                item = self.source.take()
            job = Job(self._task_id(node), item, {}, None, node=node)
        job.started_at = self.now()
        job.never_started = True
        self.counters.failed += 1
        self.outcomes.final(job, EnvelopeKind.ERROR, None, error, job.started_at)
        if node is not None and self.feedback is not None:
            self.feedback.fail(node)
        self.maybe_finish()

    def _task_id(self, node: Hashable | None) -> int:
        """A new task id, or the one a graph node already got on an earlier attempt."""
        if node is not None and self.feedback is not None:
            return self.feedback.task_id(node)
        return self.new_task_id()

    def on_source_change(self) -> None:
        """The source has new items, or ended: ask the tree accordingly."""
        if self.finished or self.stopping:
            return
        if self.graph is not None:
            self.retries.rearm(self.graph.next_due())
        if self.feedback is not None and self.feedback.completing:
            self.feedback.changed_meanwhile = True  # handled once the completion returns
            return
        if self.source.exhausted:
            self.source_exhausted = True
            # Nothing more will come (or the source was closed): stop asking the tree at once,
            # so it never peeks a closed source, and return grants no task will use.
            self._withdraw()
            self._ensure_demand()  # unless paused tasks still need their capacity back
            self.maybe_finish()
            return
        self.source_exhausted = False
        if not self.capacity.is_open:
            # The source has work again (a graph that was done got new nodes from a task being
            # settled): ask the tree again.
            if not (self.shutting_down or self.abandoned):
                self.capacity.open()
        else:
            self.capacity.dispatch()

    def _on_space(self) -> None:
        """The consumer drained a full envelope buffer to half: admit again."""
        if not self.finished:
            self.workers.refilling = True
            try:
                self.capacity.dispatch()
            finally:
                self.workers.refilling = False

    def _ensure_demand(self) -> None:
        """Ask the tree again for paused tasks (or due retries) after the demand was withdrawn."""
        if not self.capacity.is_open and (self.resumes or self.retries.due) and not self.stopping:
            self.capacity.open()

    def drop_admitted(self, node: Hashable) -> bool:
        """Drop ``node``'s admitted task that has not started (its node was aborted) and
        report it; ``False`` if it has none."""
        for index, entry in enumerate(self.ready):
            if entry[3] == node:
                del self.ready[index]
                self.capacity.refund(entry[1])
                assert self.feedback is not None
                self.feedback.report_aborted(node, entry[0])
                self.maybe_finish()
                return True
        return False

    # -- paused and parked tasks -------------------------------------------------------------

    def pause(self, job: Job) -> None:
        """Give a running task's capacity back while it waits on something else."""
        job.paused = True
        self.capacity.give_back(job.cost)

    async def resume(self, job: Job) -> None:
        """Wait until the run's demand grants a paused task its capacity again (before any new
        task of the run). Cancelled while waiting, the task holds nothing and stays paused."""
        resume = Resume(job)
        self.resumes.append(resume)
        try:
            if not self.capacity.is_open:
                self._ensure_demand()
            else:
                self.capacity.dispatch()
            if not resume.granted:
                await resume.event.wait()
            else:
                await trio.lowlevel.checkpoint()
        except BaseException:
            if not resume.granted and resume in self.resumes:
                self.resumes.remove(resume)
                self.capacity.dispatch()  # it may have held back the head of line
            raise
        finally:
            if resume.granted:
                job.paused = False  # it holds its capacity again, even if cancelled just now
        if resume.error is not None:
            raise resume.error

    def record_park(self, job: Job) -> None:
        """Record a task that parked: it gets no envelope, no callback, no retry and does not
        stop the run under stop_on_error. Called before its capacity is released, so a run
        that the release lets end (a lazy source found exhausted) knows it parked."""
        self.counters.parked += 1
        self.parked.append(job.key)
        if self.metrics is not None:
            self.event("parked", job, self.now())
        if job.node is not None and self.feedback is not None:
            self.feedback.parked(job.node)

    # -- control -------------------------------------------------------------------------------

    def cancel_job(self, job: Job, kind: str, reason: str) -> bool:
        if job.scope is None or job.cancel_kind is not None:
            return False
        job.cancel_kind = kind
        job.cancel_reason = reason
        job.scope.cancel(reason)
        return True

    def cancel(self, task_id: int | None, key: Hashable | None, reason: str) -> int:
        """Cancel running tasks by id or key; returns how many were cancelled."""
        if task_id is not None:
            jobs = [self.running[task_id]] if task_id in self.running else []
        else:
            jobs = [job for job in self.running.values() if job.key == key]
        return sum(self.cancel_job(job, CANCELLED, reason) for job in jobs)

    def shutdown(self, cancel_running: bool) -> None:
        """Stop starting tasks, abort those not started, and cancel the running ones if asked."""
        if self.finished or self.stopping:
            return
        first = not self.shutting_down
        self.shutting_down = True
        if first:
            self._withdraw()
            while self.ready:
                item, cost, _, node = self.ready.popleft()
                self.capacity.refund(cost)
                if self.feedback is not None and node is not None:
                    self.feedback.abort(node)
                    self.feedback.report_aborted(node, item)
                else:
                    error = TaskAbortedError("the run shut down before this task started")
                    self.outcomes.report_unstarted(item, error)
            self.outcomes.drop_retries(
                lambda: TaskAbortedError("the run shut down before retrying this task")
            )
            if self.graph is not None:
                self.graph.abort_pending()  # reported through the abort listener
            self._ensure_demand()  # paused tasks still take their capacity back to finish
        if cancel_running:
            for job in list(self.running.values()):
                self.cancel_job(job, SHUT_DOWN, "the run shut down")
        self.maybe_finish()

    def in_flight(self) -> int:
        return len(self.running) + self.producing
