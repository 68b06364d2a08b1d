"""The task-pool engine shared by the runners.

One :class:`Run` exists per ``run_tasks()`` block. It holds a standing request (a *demand*) in the
capacity tree; the tree grants it one task at a time, in the same synchronous step in which it
checks the task's cost and takes the task from the source, so admission and take are atomic. The
granted task is queued in ``ready`` and started by a worker task.

Workers are kept at most as numerous as the tasks that ever held capacity at once: a grant wakes an
idle worker, or asks the spawner task for a new one when none is idle. A worker that finishes a task
releases its capacity first; if that release grants the run its next task, the same worker starts
it right away without a task switch.

Nothing waits while holding capacity for the source: a peekable source is only asked for an item
when one is available, and a lazy source (:class:`~sluiceway.SourceFromIterable`) is advanced once
its capacity is held, which is the definition of lazy. Results go through an
:class:`~sluiceway.EnvelopeChannel`; while it is full the demand asks for nothing, so
the run starts no new task and its capacity goes to its siblings.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable
from types import CoroutineType
from typing import Any, Generic, TypeAlias, TypeVar

import attrs
import trio

from .._errors import ImpossibleCostError, TaskCancelledError, TaskTimeoutError
from .._util import NOTHING, WaitQueue
from ..capacity import _tree
from ..capacity._amounts import Vector
from ..sources import ChannelSource, PeekableSource, SourceFromIterable
from ._channel import EnvelopeChannel
from ._envelopes import EnvelopeKind, TaskEnvelope
from ._tasks import TaskSpec, call_task, finish

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741

#: How many tasks a worker may run back to back (each finishing without blocking) before it
#: yields to the scheduler once, so a stream of instant tasks cannot starve other tasks.
YIELD_EVERY = 16


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
    """Counters of a runner, across all its runs."""

    name: str
    started: int
    finished: int
    failed: int
    cancelled: int
    timed_out: int
    in_flight: int
    admitted_waiting: int
    buffered_envelopes: int
    peak_buffered_envelopes: int
    capacity_wait: WaitStatistics


class Counters:
    """Mutable counters a runner keeps across runs (snapshotted by ``statistics()``)."""

    __slots__ = (
        "cancelled",
        "failed",
        "finished",
        "peak_buffered",
        "started",
        "timed_out",
        "wait_count",
        "wait_max",
        "wait_total",
    )

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0
        self.failed = 0
        self.cancelled = 0
        self.timed_out = 0
        self.peak_buffered = 0
        self.wait_count = 0
        self.wait_total = 0.0
        self.wait_max = 0.0


class Emitter(Generic[I]):
    """Passed to every task: ``await emit(value)`` streams an ``INTERMEDIATE`` envelope.

    It waits while the run's envelope buffer is full (backpressure). ``task_id`` and ``key``
    identify the task it belongs to. (One object per task: it is also the run's record of the
    task.)
    """

    __slots__ = (
        "_run",
        "cancel_reason",
        "cost",
        "fn",
        "key",
        "scope",
        "started_at",
        "task_id",
        "timeout",
    )

    def __init__(
        self,
        run: Run,
        task_id: int,
        item: object,
        cost: Vector,
        default_timeout: float | None,
    ) -> None:
        self._run = run
        self.task_id = task_id
        self.cost = cost
        if isinstance(item, TaskSpec):
            self.fn: object = item.fn
            self.key: Hashable | None = item.key
            self.timeout = item.timeout if item.timeout is not None else default_timeout
        else:
            self.fn = item
            self.key = None
            self.timeout = default_timeout
        self.started_at = 0.0
        self.scope: trio.CancelScope | None = None
        self.cancel_reason: str | None = None

    async def __call__(self, value: I) -> None:
        if self.scope is None:
            raise RuntimeError(f"task #{self.task_id} has finished; it cannot emit any more")
        run = self._run
        await run.channel.put_wait(
            TaskEnvelope(
                self.task_id,
                EnvelopeKind.INTERMEDIATE,
                value,
                None,
                self.key,
                self.started_at,
                run.now(),
            )
        )


Job: TypeAlias = Emitter[Any]


class Run:
    """The state of one ``run_tasks()`` block; see the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        source: PeekableSource[Any],
        node: _tree.Node,
        cost_of: Callable[[object], Vector],
        fixed_cost: Vector | None,
        validated: bool,
        stop_on_error: bool,
        buffer_size: int,
        task_timeout: float | None,
        counters: Counters,
    ) -> None:
        self.name = name
        self.source = source
        self.lazy = source.lazy
        self.sync_iterable: SourceFromIterable[Any] | None = (
            source if isinstance(source, SourceFromIterable) and source.can_produce_nowait else None
        )
        self.node = node
        self.cost_of = cost_of
        self.fixed_cost = fixed_cost
        self.validated = validated
        self.stop_on_error = stop_on_error
        self.task_timeout = task_timeout
        self.counters = counters
        self.channel = EnvelopeChannel(buffer_size, self._on_space)
        # Admitted tasks not started yet: (item, cost, seconds it waited for capacity).
        self.ready: deque[tuple[object, Vector, float]] = deque()
        # Grants for a lazy source's next item, not produced yet: (cost, seconds waited).
        self.unproduced: deque[tuple[Vector, float]] = deque()
        self.running: dict[int, Job] = {}
        self.producing = 0
        self.next_task_id = 1
        self.idle = WaitQueue()
        self.spawn_needed = 0
        self.coming = 0  # workers woken or spawned that have not looked for work yet
        self.spawner: trio.lowlevel.Task | None = None
        self.releaser_claim = False
        self.finished = False
        self.stopping = False
        self.source_exhausted = False
        self.abandoned: BaseException | None = None  # why the run gave up on its source
        self.head_since: float | None = None
        self.nursery: trio.Nursery | None = None
        self.demand: _tree.Demand | None = None
        self.unsubscribe: Callable[[], None] | None = None
        self.now: Callable[[], float] = trio.lowlevel.current_clock().current_time

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        nursery.start_soon(self._spawner, name=f"{self.name}:spawner")
        if isinstance(self.source, ChannelSource):
            nursery.start_soon(self.source.run_feeder, name=f"{self.name}:feeder")
        self.unsubscribe = self.source.subscribe(self._on_source_change)
        self.source_exhausted = self.source.exhausted
        if not self.source_exhausted:
            self.demand = _tree.open_demand(self.node, self, validated=self.validated)
        self._maybe_finish()

    def stop(self) -> None:
        """Withdraw from the tree and give back every grant no task is using (synchronous)."""
        self.stopping = True
        if self.unsubscribe is not None:
            self.unsubscribe()
            self.unsubscribe = None
        self._withdraw()
        while self.ready:
            _tree.refund(self.node, self.ready.popleft()[1])
        self.channel.close("the run_tasks() block has exited")
        self._wake_everyone()

    def _withdraw(self) -> None:
        """Stop asking the tree for capacity and refund the grants waiting for a lazy source's
        next item (a quota gets them back: nothing ran)."""
        if self.demand is not None:
            _tree.close_demand(self.demand)
            self.demand = None
        while self.unproduced:
            _tree.refund(self.node, self.unproduced.popleft()[0])

    def _maybe_finish(self) -> None:
        if self.finished or self.stopping:
            return
        if self.ready or self.unproduced or self.running or self.producing:
            return
        if not (self.source.exhausted or self.abandoned):
            return
        self.finished = True
        self._withdraw()
        self.channel.end(self.abandoned or self.source.failure)
        self._wake_everyone()

    def _wake_everyone(self) -> None:
        self.coming += self.idle.wake_all()
        if self.spawner is not None:
            task, self.spawner = self.spawner, None
            trio.lowlevel.reschedule(task)

    # -- the demand (called synchronously by the capacity tree) ------------------------------

    def _next_cost(self) -> Vector | None:
        """The cost of the task the run would start next, or ``None`` if it starts nothing now."""
        if self.stopping or self.channel.blocked:
            return None
        if self.lazy:
            # An async iterable is advanced by a worker holding the capacity of the item it will
            # produce; at most one unit per run may wait on the iterable that way.
            if self.source_exhausted or self.unproduced or self.producing:
                return None
            return self.fixed_cost if self.fixed_cost is not None else self.cost_of(None)
        item = self.source.peek()
        if item is NOTHING:
            return None
        return self.fixed_cost if self.fixed_cost is not None else self.cost_of(item)

    def demand_cost(self) -> Vector | None:
        cost = self._next_cost()
        if cost is not None and self.head_since is None:
            self.head_since = self.now()
        return cost

    def demand_granted(self, cost: Vector) -> None:
        self._accept(cost)

    def _accept(self, cost: Vector) -> None:
        """Take the granted task (synchronously, with the grant) and get a worker for it."""
        waited = 0.0
        if self.head_since is not None:
            waited = self.now() - self.head_since
            self.head_since = None
        if self.sync_iterable is not None:
            # A synchronous iterable is advanced in the same step as the grant, like a peek.
            try:
                item = self.sync_iterable.produce_nowait()
            except Exception:  # its end, or its failure (delivered through EnvelopeChannel.end)
                _tree.refund(self.node, cost)
                self._maybe_finish()
                return
            self.ready.append((item, cost, waited))
        elif self.lazy:
            self.unproduced.append((cost, waited))
        else:
            self.ready.append((self.source.take(), cost, waited))
        self._work_available()

    def demand_impossible(self, cost: Vector, error: ImpossibleCostError) -> None:
        """A limit was lowered below the next task's cost: report it instead of waiting forever."""
        if self.lazy:
            # A lazy source's next item does not exist yet, and every task of the run has this
            # same cost: none can run any more. Ask for nothing more, and end the run with the
            # error once the running tasks have reported.
            self.abandoned = error
            self._withdraw()
            self._maybe_finish()
            return
        item = self.source.take()
        job: Job = Emitter(self, self.next_task_id, item, cost, None)
        self.next_task_id += 1
        self.counters.failed += 1
        now = self.now()
        self.channel.put(
            TaskEnvelope(job.task_id, EnvelopeKind.ERROR, None, error, job.key, now, now)
        )
        self._maybe_finish()

    def _work_available(self) -> None:
        """A task was admitted: make sure some worker will pick it up, and wake no more.

        Idle workers are woken in a chain: one at a time, each waking the next when it takes a
        task and more are waiting. A burst of admissions (a refilled envelope buffer, a raised
        limit) thus wakes no worker for nothing when the tasks are instant, and still gets one
        worker per task when they are not. With no idle worker, a new one is spawned per task,
        so a run's first burst starts at once.
        """
        if self.releaser_claim:
            self.releaser_claim = False  # the worker that released the capacity takes it
            return
        if self.idle.tasks:
            if self.coming:
                return  # a woken worker is on its way; it will wake the next one
            self.coming += 1
            self.idle.wake_one(newest=True)  # the most recently busy worker
            return
        if self.coming >= len(self.ready) + len(self.unproduced):
            return  # workers being spawned will take every admitted task
        self.coming += 1
        self.spawn_needed += 1
        if self.spawner is not None:
            task, self.spawner = self.spawner, None
            trio.lowlevel.reschedule(task)

    def _on_source_change(self) -> None:
        if self.finished or self.stopping:
            return
        if self.source.exhausted:
            self.source_exhausted = True
            # Nothing more will come (or the source was closed): stop asking the tree at once,
            # so it never peeks a closed source, and return grants no task will use.
            self._withdraw()
            self._maybe_finish()
        elif self.node.tree.root.waiting:
            _tree.dispatch(self.node.tree)

    def _on_space(self) -> None:
        if not self.finished and self.node.tree.root.waiting:
            _tree.dispatch(self.node.tree)

    # -- tasks -----------------------------------------------------------------------------

    async def _spawner(self) -> None:
        assert self.nursery is not None
        while True:
            while self.spawn_needed:
                self.spawn_needed -= 1
                self.nursery.start_soon(self._worker, name=f"{self.name}:worker")
            if self.finished or self.stopping:
                return
            self.spawner = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self.spawner = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)

    async def _park(self) -> None:
        await self.idle.park()
        self.coming -= 1

    async def _worker(self) -> None:
        self.coming -= 1
        while True:
            scope = trio.CancelScope()
            job: Job | None = None
            with scope:
                streak = 0
                stamp: float | None = None  # the clock, if read since the last await
                while True:
                    job = None
                    if self.ready:
                        item, cost, waited = self.ready.popleft()
                        job = self._admit(item, cost, waited, stamp)
                        if (self.ready or self.unproduced) and not self.coming:
                            self._work_available()  # the wake-up chain
                    elif self.unproduced:
                        stamp = None
                        cost, waited = self.unproduced.popleft()
                        if (self.ready or self.unproduced) and not self.coming:
                            self._work_available()  # the wake-up chain
                        job = await self._produce(cost, waited)
                        if job is None:
                            continue
                    elif self.finished or self.stopping:
                        return
                    else:
                        streak = 0
                        stamp = None
                        await self._park()
                        continue
                    job.scope = scope
                    if job.timeout is not None:
                        scope.deadline = job.started_at + job.timeout
                    outcome_value, failure = await self._execute(job)
                    if job.timeout is not None:
                        scope.deadline = math.inf
                    job.scope = None
                    stamp = self._report(job, outcome_value, failure)
                    if scope.cancel_called:
                        break  # the task swallowed our cancellation: take a fresh scope
                    streak += 1
                    if streak >= YIELD_EVERY:
                        streak = 0
                        stamp = None
                        await trio.lowlevel.checkpoint()
            if job is not None and job.scope is not None:
                # Our scope was cancelled while this job ran: a timeout or runner.cancel().
                job.scope = None
                if job.cancel_reason is not None:
                    self.counters.cancelled += 1
                    error: BaseException = TaskCancelledError(
                        f"task #{job.task_id} was cancelled: {job.cancel_reason}"
                    )
                else:
                    self.counters.timed_out += 1
                    error = TaskTimeoutError(
                        f"task #{job.task_id} did not finish within {job.timeout} s"
                    )
                self._report(job, None, error)

    def _admit(self, item: object, cost: Vector, waited: float, now: float | None = None) -> Job:
        """Record a task as started after waiting ``waited`` seconds at the head of the source;
        ``now`` may be passed when the caller just read the clock and nothing awaited since."""
        job: Job = Emitter(self, self.next_task_id, item, cost, self.task_timeout)
        self.next_task_id += 1
        job.started_at = self.now() if now is None else now
        self.running[job.task_id] = job
        counters = self.counters
        counters.started += 1
        counters.wait_count += 1
        if waited:
            counters.wait_total += waited
            if waited > counters.wait_max:  # noqa: PLR1730 - cheaper than max() here
                counters.wait_max = waited
        return job

    async def _produce(self, cost: Vector, waited: float) -> Job | None:
        """Advance a lazy source while holding ``cost``; ``None`` if it had nothing more."""
        source = self.source
        assert isinstance(source, SourceFromIterable)
        self.producing += 1
        kept = False
        try:
            try:
                item = await source.advance()
            except trio.EndOfChannel:
                return None
            except Exception:
                # The source's failure: it ends the stream and reaches the consumer after the
                # envelopes of the tasks taken before it (EnvelopeChannel.end).
                return None
            if self.stopping:
                return None
            kept = True
            return self._admit(item, cost, waited)
        finally:
            self.producing -= 1
            if not kept:
                _tree.refund(self.node, cost)
                self._maybe_finish()
            elif self.node.tree.root.waiting:
                _tree.dispatch(self.node.tree)  # the run may now claim its next unit

    async def _execute(self, job: Job) -> tuple[Any, BaseException | None]:
        """Run one task; its capacity is released the moment its body returns or raises."""
        try:
            fn = job.fn
            if callable(fn):
                result = fn(job)
                # The common case (a coroutine) without the detour through call_task.
                value = await (result if type(result) is CoroutineType else finish(fn, result, job))
            else:
                value = await call_task(fn, job)
        except Exception as exc:
            return None, exc
        else:
            return value, None
        finally:
            del self.running[job.task_id]
            self.releaser_claim = True
            try:
                self._release(job.cost)
            finally:
                self.releaser_claim = False

    def _release(self, cost: Vector) -> None:
        """Give back a finished task's capacity, handing it straight to the next task when this
        run holds the only request in the tree (what dispatch would do, minus the work)."""
        demand = self.demand
        if (
            demand is not None
            and self.node.tree.root.waiting == 1
            and _tree.can_transfer(demand, cost)
            and self._next_cost() is cost
        ):
            _tree.count_transfer(demand)
            self._accept(cost)
            return
        _tree.give_back(self.node, cost)

    def _report(self, job: Job, value: Any, error: BaseException | None) -> float:
        """Deposit the task's final envelope; returns the clock reading it used."""
        counters = self.counters
        if error is None:
            counters.finished += 1
            kind = EnvelopeKind.FINAL
        else:
            if self.stop_on_error:
                self.stopping = True
                raise error
            if not isinstance(error, TaskCancelledError | TaskTimeoutError):
                counters.failed += 1
            kind = EnvelopeKind.ERROR
        now = self.now()
        envelope: TaskEnvelope[Any, Any] = TaskEnvelope(
            job.task_id, kind, value, error, job.key, job.started_at, now
        )
        self.channel.put(envelope)
        self._maybe_finish()
        return now

    def cancel(self, task_id: int | None, key: Hashable | None, reason: str) -> int:
        """Cancel running tasks by id or key; returns how many were cancelled."""
        if task_id is not None:
            jobs = [self.running[task_id]] if task_id in self.running else []
        else:
            jobs = [job for job in self.running.values() if job.key == key]
        count = 0
        for job in jobs:
            if job.scope is not None and job.cancel_reason is None:
                job.cancel_reason = reason
                job.scope.cancel(reason)
                count += 1
        return count

    def in_flight(self) -> int:
        return len(self.running) + self.producing
