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

A task that raises :class:`~sluiceway.RunParked` *parks* (``_parked.py``): it is reported with no
envelope, and once nothing else can happen the run ends by raising a new ``RunParked`` from the
envelope channel, after everything deposited before.

With a :class:`~sluiceway.DependencySource` the run also drives the graph: a task that succeeds
completes its node (its dependents become ready before the consumer sees the envelope), a failed
attempt is retried through the graph's delayed readiness (the node is not ready until its retry
time, so the wait holds no capacity and blocks nobody), and a task that fails for good aborts its
node and every dependent; every aborted node with a task is reported with an ``ERROR`` envelope.
With any other source a retried task waits in the run itself (holding no capacity either) and,
once due, is started ahead of the tasks still in the source.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from types import CoroutineType
from typing import Any, Generic, TypeAlias, TypeVar

import attrs
import trio

from .._errors import (
    ImpossibleCostError,
    InvalidTransitionError,
    TaskAbortedError,
    TaskCancelledError,
    TaskTimeoutError,
)
from .._metrics import MetricsCollector, TaskEvent, TaskEventKind, safe_record
from .._util import NOTHING, WaitQueue
from ..capacity import BaseCapacity, CostVector, plain_amounts
from ..sources import ChannelSource, DependencySource, PeekableSource, SourceFromIterable
from ._channel import EnvelopeChannel
from ._envelopes import EnvelopeKind, TaskEnvelope
from ._parked import is_parked, note_parked, parked_error
from ._tasks import (
    RetryPolicy,
    RetryScheduled,
    ScheduledTask,
    TaskSpec,
    call_task,
    finish,
    streamed,
)

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741

#: How many tasks a worker may run back to back (each finishing without blocking) before it
#: yields to the scheduler once, so a stream of instant tasks cannot starve other tasks.
YIELD_EVERY = 16

#: Kinds of cancellation a running task can receive from the run.
CANCELLED, ABORTED, SHUT_DOWN = "cancelled", "aborted", "shut down"


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
        self.retried = 0
        self.aborted = 0
        self.parked = 0
        self.peak_buffered = 0
        self.wait_count = 0
        self.wait_total = 0.0
        self.wait_max = 0.0


class Emitter(Generic[I]):
    """Passed to every task: ``await emit(value)`` streams an ``INTERMEDIATE`` envelope.

    It waits while the run's envelope buffer is full (backpressure). ``task_id`` and ``key``
    identify the task it belongs to; ``attempt`` counts its attempts (1-based). (One object per
    attempt: it is also the run's record of the task.)
    """

    # Class-level defaults (no __slots__): a plain task sets only what differs from them, which
    # keeps the per-task cost of the most common case low.
    spec: ScheduledTask[Any, Any] | None = None
    task_spec: TaskSpec[Any, Any] | None = None
    deadline: float | None = None
    node: Hashable | None = None
    attempt = 1
    started_at = 0.0
    queued_at: float | None = None
    scope: trio.CancelScope | None = None
    cancel_kind: str | None = None
    cancel_reason: str | None = None
    never_started = False  # reported without running (aborted, shut out, or rejected)
    released_depth = 0  # inside released(): how many blocks deep
    paused = False  # its capacity is given back (a released() block, or waiting to retake it)

    def __init__(
        self,
        run: Run,
        task_id: int,
        item: object,
        cost: CostVector,
        default_timeout: float | None,
        *,
        node: Hashable | None = None,
        attempt: int = 1,
    ) -> None:
        self._run = run
        self.task_id = task_id
        self.cost = cost
        if node is not None:
            self.node = node
            self.attempt = attempt
        if isinstance(item, ScheduledTask):
            self.spec = item
            self.fn: object = item.runner
            self.key: Hashable | None = item.key
            self.timeout = item.timeout if item.timeout is not None else default_timeout
            self.deadline = item.deadline
        elif isinstance(item, TaskSpec):
            self.task_spec = item
            self.fn = item.fn
            self.key = item.key if item.key is not None else node
            self.timeout = item.timeout if item.timeout is not None else default_timeout
            self.deadline = item.deadline
        else:
            self.fn = item
            self.key = node
            self.timeout = default_timeout

    async def __call__(self, value: I) -> None:
        if self.scope is None:
            raise RuntimeError(f"task #{self.task_id} has finished; it cannot emit any more")
        run = self._run
        now = run.now()
        await run.channel.put_wait(
            TaskEnvelope(
                self.task_id,
                EnvelopeKind.INTERMEDIATE,
                value,
                None,
                self.key,
                self.started_at,
                now,
            )
        )
        if run.metrics is not None:
            run.event("intermediate", self, now)

    @asynccontextmanager
    async def released(self) -> AsyncIterator[None]:
        """Give the task's capacity back while the block runs, and take it back after.

        For a task that waits on something outside the pool (a message, a timer): while it
        waits, its capacity goes to other tasks, so a pool full of waiting tasks cannot
        deadlock. On leaving the block the task waits for its capacity again, ahead of the
        tasks its run has not started yet (it is work in progress). Nested blocks, or several
        at once in one task, release it once. If the wait to take it back is cancelled, the
        task holds nothing and the run does not release anything for it. A block left by
        :class:`~sluiceway.RunParked` does not take it back at all: the task is parking.

        Raises:
            RuntimeError: the task has finished.
            ImpossibleCostError: a limit was lowered so that the task's cost can never fit
                again.
        """
        if self.scope is None:
            raise RuntimeError(f"task #{self.task_id} has finished; it holds no capacity")
        if self.released_depth:
            self.released_depth += 1
            try:
                yield
            finally:
                self.released_depth -= 1
            return
        run = self._run
        self.released_depth = 1
        run.pause(self)
        try:
            yield
        except BaseException as exc:
            self.released_depth = 0
            if is_parked(exc):
                # The task ends parked: it must not wait to take back capacity it would give
                # straight back (nor let a Cancelled from that wait replace RunParked).
                raise
            await run.resume(self)
            raise
        self.released_depth = 0
        await run.resume(self)


Job: TypeAlias = Emitter[Any]

_NO_NODE = object()


@attrs.define(slots=True)
class Resume:
    """A paused task waiting to take its capacity back (see ``Emitter.released``)."""

    job: Emitter[Any]
    event: trio.Event = attrs.field(factory=trio.Event)
    granted: bool = False
    error: BaseException | None = None


@attrs.define(slots=True)
class Retry:
    """A task of a source without a graph, waiting for (or due for) its next attempt."""

    item: object
    task_id: int
    attempt: int


class Run:
    """The state of one ``run_tasks()`` block; see the module docstring."""

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
        self.name = name
        self.source = source
        self.lazy = source.lazy
        self.sync_iterable: SourceFromIterable[Any] | None = (
            source if isinstance(source, SourceFromIterable) and source.can_produce_nowait else None
        )
        self.graph: DependencySource[Any, Any] | None = (
            source if isinstance(source, DependencySource) else None
        )
        # The run's standing request at its capacity node: how its tasks are admitted.
        self.capacity = capacity.demand(self)
        self.cost_of = cost_of
        self.fixed_cost = fixed_cost
        self.stop_on_error = stop_on_error
        self.task_timeout = task_timeout
        self.counters = counters
        self.retry = retry
        self.metrics = metrics
        self.channel = EnvelopeChannel(buffer_size, self._on_space)
        # Admitted tasks not started yet: (item, cost, seconds waited for capacity, graph key).
        self.ready: deque[tuple[object, CostVector, float, Hashable | None]] = deque()
        # Grants for a lazy source's next item, not produced yet: (cost, seconds waited).
        self.unproduced: deque[tuple[CostVector, float]] = deque()
        self.running: dict[int, Job] = {}
        self.producing = 0
        self.settling = 0  # finished tasks whose graph feedback or callbacks are under way
        # While a completion is fed back to the graph, source changes (each newly ready
        # dependent) are collected and handled once, with a single dispatch.
        self.deferring = False
        self.deferred = False
        self.next_task_id = 1
        # A graph node keeps its task id and counts its attempts across retries.
        self.task_ids: dict[Hashable, int] = {}
        self.attempts: dict[Hashable, int] = {}
        # Without a graph, retried tasks wait here: (due time, sequence, retry), then in ``due``
        # once their time has come (taken before the source's next item).
        self.retries: list[tuple[float, int, Retry]] = []
        self.due: deque[Retry] = deque()
        self.retry_seq = 0
        self.timer_started = False
        # Graph nodes whose on_complete callback is running (their node is still RUNNING).
        self.settling_nodes: set[Hashable] = set()
        # Paused tasks waiting to take their capacity back, served before new tasks.
        self.resumes: deque[Resume] = deque()
        self.finalizing: object = _NO_NODE  # the node whose own failure is aborting its graph
        # Tasks that parked: their keys in the order they parked, and their graph nodes (which
        # stay RUNNING in the graph: their dependents cannot become ready in this run).
        self.parked: list[Hashable | None] = []
        self.parked_nodes: set[Hashable] = set()
        self.idle = WaitQueue()
        self.spawn_needed = 0
        self.coming = 0  # workers woken or spawned that have not looked for work yet
        self.refilling = False  # admitting after the consumer drained a full envelope buffer
        self.spawner: trio.lowlevel.Task | None = None
        self.timer: trio.lowlevel.Task | None = None
        self.timer_due: float | None = None
        self.releaser_claim = False
        self.finished = False
        self.stopping = False
        self.shutting_down = False
        self.source_exhausted = False
        self.abandoned: BaseException | None = None  # why the run gave up on its source
        self.head_since: float | None = None
        self.nursery: trio.Nursery | None = None
        self.unsubscribe: list[Callable[[], None]] = []
        self.now: Callable[[], float] = trio.lowlevel.current_clock().current_time
        self.started_at = self.now()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        nursery.start_soon(self._spawner, name=f"{self.name}:spawner")
        if isinstance(self.source, ChannelSource):
            nursery.start_soon(self.source.run_feeder, name=f"{self.name}:feeder")
        self.unsubscribe.append(self.source.subscribe(self._on_source_change))
        if self.graph is not None:
            self.unsubscribe.append(self.graph.subscribe_aborts(self._on_node_aborted))
            self._start_timer()
            if self.metrics is not None:
                for node in list(self.graph.graph.ready):  # ready before the run: queued now
                    self._on_node_ready(node)
                self.unsubscribe.append(self.graph.graph.subscribe(on_ready=self._on_node_ready))
        self.source_exhausted = self.source.exhausted
        if not self.source_exhausted:
            self.capacity.open()
        self._maybe_finish()

    def stop(self) -> None:
        """Withdraw from the tree and give back every grant no task is using (synchronous)."""
        self.stopping = True
        while self.unsubscribe:
            self.unsubscribe.pop()()
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

    def _maybe_finish(self) -> None:
        """End the run if nothing more can happen: nothing is admitted, running, being
        produced, settled or waiting to retry, and the source is exhausted (or the run shut
        down or gave up on its source), or a graph is stuck (see :meth:`_graph_stuck`)."""
        if self.finished or self.stopping:
            return
        if self.ready or self.unproduced or self.running or self.producing or self.settling:
            return
        if self.retries or self.due:
            return
        if not (
            self.shutting_down or self.abandoned or self.source.exhausted or self._graph_stuck()
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

    def _graph_stuck(self) -> bool:
        """With nothing in flight, whether a graph that is not done can do nothing more in this
        run. No node waits for its retry time, no ready node has a task, and either

        * a ready node still has no task (``add_node`` without ``set_task``): the source ends
          with :class:`~sluiceway.MissingTaskError` (its ``fail_if_missing``), or
        * some task parked and no node is ready: the parked nodes stay RUNNING, so their
          dependents can never become ready in this run; the run ends parked.

        Otherwise (nodes running outside this run, say) the run keeps waiting. Also ``False``
        when the run has just ended meanwhile (see below).
        """
        graph = self.graph
        if graph is None or graph.next_due() is not None:
            return False
        if graph.fail_if_missing():
            # The source's end notified its listeners, this run among them: its
            # _on_source_change may have ended the run already (then there is nothing to do).
            return not self.finished
        return bool(self.parked) and not graph.graph.ready

    def _wake_everyone(self) -> None:
        self.coming += self.idle.wake_all()
        for name in ("spawner", "timer"):
            task = getattr(self, name)
            if task is not None:
                setattr(self, name, None)
                trio.lowlevel.reschedule(task)

    # -- the demand (called synchronously by the capacity tree) ------------------------------

    def _next_cost(self) -> CostVector | None:
        """The cost of the task the run would start next, or ``None`` if it starts nothing now."""
        if self.stopping:
            return None
        if self.resumes:
            # Work in progress first, even while shutting down or blocked on the consumer.
            return self.resumes[0].job.cost
        if self.shutting_down or self.channel.blocked:
            return None
        while self.due:
            if self.fixed_cost is not None:
                return self.fixed_cost
            try:
                return self.cost_of(self.due[0].item)
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

    def demand_cost(self) -> CostVector | None:
        cost = self._next_cost()
        if cost is not None and self.head_since is None:
            self.head_since = self.now()
        return cost

    def demand_granted(self, cost: CostVector) -> None:
        self._accept(cost)

    def _accept(self, cost: CostVector) -> None:
        """Take the granted task (synchronously, with the grant) and get a worker for it."""
        if self.resumes:
            resume = self.resumes.popleft()
            resume.granted = True
            resume.event.set()
            self.head_since = None
            return
        waited = 0.0
        if self.head_since is not None:
            waited = self.now() - self.head_since
            self.head_since = None
        # ``cost`` is already taken at every level: until the task is queued, anything that
        # goes wrong (the source's end or failure, a KeyboardInterrupt raised by a synchronous
        # iterable, any other BaseException) must give it back, or it leaks at every level.
        queued = False
        try:
            if self.due:
                self.ready.append((self.due.popleft(), cost, waited, None))
            elif self.sync_iterable is not None:
                # A synchronous iterable is advanced in the same step as the grant, like a peek.
                try:
                    item = self.sync_iterable.produce_nowait()
                except Exception:  # its end, or its failure (delivered via EnvelopeChannel.end)
                    queued = True  # refunded here, not below
                    self.capacity.refund(cost)
                    self._maybe_finish()
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
        self._work_available()

    def demand_impossible(self, cost: CostVector, error: ImpossibleCostError) -> None:
        """A limit was lowered below the next task's cost: report it instead of waiting forever."""
        if self.resumes:
            resume = self.resumes.popleft()  # it can never take its capacity back
            resume.error = error
            resume.event.set()
            return
        if self.lazy and not self.due:
            # A lazy source's next item does not exist yet, and every task of the run has this
            # same cost: none can run any more. Ask for nothing more, and end the run with the
            # error once the running tasks have reported.
            self.abandoned = error
            self._withdraw()
            self._drop_retries(lambda: ImpossibleCostError(str(error)))
            self._maybe_finish()
            return
        self._reject(error)

    def _reject(self, error: Exception) -> None:
        """Take the next item and report it as failed without running it (its cost is wrong)."""
        node: Hashable | None = None
        retry: Retry | None = None
        if self.due:
            retry = self.due.popleft()
            item = retry.item
        elif self.graph is not None:
            node, item = self.graph.take_keyed()
        else:
            item = self.source.take()
        if retry is not None:
            job: Job = Emitter(self, retry.task_id, item, {}, None)
            job.attempt = retry.attempt
        else:
            job = Emitter(self, self._task_id(node), item, {}, None, node=node)
        job.started_at = self.now()
        job.never_started = True
        self.counters.failed += 1
        self._final(job, EnvelopeKind.ERROR, None, error, job.started_at)
        if node is not None:
            self._fail_node(node)
        self._maybe_finish()

    def _work_available(self) -> None:
        """A task was admitted: make sure some worker will pick it up, and wake no more.

        Normally one worker is woken (or spawned) per admitted task, so a burst of real tasks
        starts at once. The burst that follows a refill of a full envelope buffer is different:
        the run was waiting for its consumer, its tasks are typically instant, and the first
        worker woken would run them all. There, idle workers are woken in a chain (one at a
        time, each waking the next when it takes a task and more are waiting), so none is woken
        for nothing.
        """
        if self.releaser_claim:
            self.releaser_claim = False  # the worker that released the capacity takes it
            return
        pending = len(self.ready) + len(self.unproduced)
        if self.idle.tasks:
            if self.coming and (self.refilling or self.coming >= pending):
                return  # workers on their way will take it (a refill wakes them in a chain)
            self.coming += 1
            self.idle.wake_one(newest=True)  # the most recently busy worker
            return
        if self.coming >= pending:
            return  # workers being spawned will take every admitted task
        self.coming += 1
        self.spawn_needed += 1
        if self.spawner is not None:
            task, self.spawner = self.spawner, None
            trio.lowlevel.reschedule(task)

    def _on_source_change(self) -> None:
        if self.finished or self.stopping:
            return
        if self.timer is not None and self.graph is not None:
            self._rearm_timer(self.graph.next_due())
        if self.deferring:
            self.deferred = True  # handled once the graph feedback under way is complete
            return
        if self.source.exhausted:
            self.source_exhausted = True
            # Nothing more will come (or the source was closed): stop asking the tree at once,
            # so it never peeks a closed source, and return grants no task will use.
            self._withdraw()
            self._ensure_demand()  # unless paused tasks still need their capacity back
            self._maybe_finish()
            return
        self.source_exhausted = False
        if not self.capacity.is_open:
            # The source has work again (a graph that was done got new nodes from a task being
            # settled): ask the tree again.
            if not (self.shutting_down or self.abandoned):
                self.capacity.open()
        else:
            self.capacity.dispatch()

    # -- paused tasks (Emitter.released) -----------------------------------------------------

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

    def _ensure_demand(self) -> None:
        """Ask the tree again for paused tasks (or due retries) after the demand was withdrawn."""
        if not self.capacity.is_open and (self.resumes or self.due) and not self.stopping:
            self.capacity.open()

    def _on_space(self) -> None:
        if not self.finished:
            self.refilling = True
            try:
                self.capacity.dispatch()
            finally:
                self.refilling = False

    # -- graph feedback ----------------------------------------------------------------------------

    def _task_id(self, node: Hashable | None) -> int:
        """A new task id, or the one a graph node already got on an earlier attempt."""
        if node is not None:
            known = self.task_ids.get(node)
            if known is not None:
                return known
        task_id = self.next_task_id
        self.next_task_id += 1
        if node is not None:
            self.task_ids[node] = task_id
        return task_id

    def _fail_node(self, node: Hashable) -> None:
        """Give up on ``node``: abort it and its dependents (reported through the listener)."""
        assert self.graph is not None
        self.finalizing = node
        try:
            self.graph.task_failed(node, None)
        finally:
            self.finalizing = _NO_NODE

    def _on_node_aborted(self, node: Hashable, task: object) -> None:
        """A graph node was aborted (by a cascade, ``abort()`` or a shutdown): act on its task."""
        if node == self.finalizing or self.stopping or node in self.settling_nodes:
            return  # a node being settled is reported by its settling, with its real outcome
        if node in self.parked_nodes:
            return  # its task parked: it is reported as parked, never as aborted
        for job in self.running.values():
            if job.node == node:
                self._cancel_job(job, ABORTED, "its node was aborted")
                return
        for index, entry in enumerate(self.ready):
            if entry[3] == node:
                del self.ready[index]
                self.capacity.refund(entry[1])
                self._report_aborted(node, entry[0])
                self._maybe_finish()
                return
        if task is not None:
            self._report_aborted(node, task)

    def _report_aborted(self, node: Hashable, item: object) -> None:
        job: Job = Emitter(self, self._task_id(node), item, {}, None, node=node)
        job.started_at = now = self.now()
        job.never_started = True
        self.counters.aborted += 1
        error = TaskAbortedError(f"task {job.key!r} was aborted before it ran")
        self._final(job, EnvelopeKind.ERROR, None, error, now)

    def _start_timer(self) -> None:
        if not self.timer_started and self.nursery is not None:
            self.timer_started = True
            self.nursery.start_soon(self._retry_timer, name=f"{self.name}:retry-timer")

    def _rearm_timer(self, due: float | None) -> None:
        """Wake the parked retry timer if a retry now falls due sooner than it waits for."""
        if (
            self.timer is not None
            and due is not None
            and (self.timer_due is None or due < self.timer_due)
        ):
            task, self.timer = self.timer, None
            trio.lowlevel.reschedule(task)

    def _next_due(self) -> float | None:
        due = self.graph.next_due() if self.graph is not None else None
        if self.retries and (due is None or self.retries[0][0] < due):
            due = self.retries[0][0]
        return due

    async def _retry_timer(self) -> None:
        """Make retries ready when they fall due: the graph's delayed nodes, or the run's own
        retries of a source without a graph; then ask the tree for capacity for them."""
        while not (self.finished or self.stopping):
            due = self.timer_due = self._next_due()
            with trio.move_on_at(math.inf if due is None else due):
                self.timer = trio.lowlevel.current_task()

                def abort(_: object) -> trio.lowlevel.Abort:
                    self.timer = None
                    return trio.lowlevel.Abort.SUCCEEDED

                await trio.lowlevel.wait_task_rescheduled(abort)
            self.timer = None
            now = trio.current_time()
            if due is None or due > now or self.finished or self.stopping:
                continue
            if self.graph is not None:
                self.graph.peek()  # releases due nodes: they become ready and notify
            released = False
            while self.retries and self.retries[0][0] <= now:
                self.due.append(heapq.heappop(self.retries)[2])
                released = True
            if released and not self.capacity.is_open:
                if not (self.shutting_down or self.abandoned):
                    self.capacity.open()
            else:
                self.capacity.dispatch()

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
                        item, cost, waited, node = self.ready.popleft()
                        job = self._admit(item, cost, waited, node, stamp)
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
                    limited = job.timeout is not None or job.deadline is not None
                    if limited:
                        scope.deadline = self._deadline_of(job)
                    outcome_value, failure = await self._execute(job)
                    if limited:
                        scope.deadline = math.inf
                    job.scope = None
                    spec = job.spec
                    if failure is not None and is_parked(failure):
                        stamp = None
                        # Recorded by _execute. A task that parks while the run itself is being
                        # cancelled (from outside the task's own scope) ends nothing: the run is
                        # going away.
                        if scope.cancel_called or trio.current_effective_deadline() != -math.inf:
                            self._maybe_finish()
                    elif spec is None and job.node is None and self.retry is None:
                        stamp = self._report(job, outcome_value, failure)
                    elif spec is None or (spec.on_complete is None and spec.on_error is None):
                        stamp = None
                        self._settle_now(job, outcome_value, failure)
                    else:
                        stamp = None
                        await self._settle(job, outcome_value, failure)
                    if scope.cancel_called:
                        break  # the task swallowed our cancellation: take a fresh scope
                    streak += 1
                    if streak >= YIELD_EVERY:
                        streak = 0
                        stamp = None
                        await trio.lowlevel.checkpoint()
            if job is not None and job.scope is not None:
                # Our scope was cancelled while this job ran: a timeout, a cancel or an abort.
                job.scope = None
                await self._settle(job, None, self._interruption(job))

    def _record_park(self, job: Job) -> None:
        """Record a task that parked: it gets no envelope, no callback, no retry and does not
        stop the run under stop_on_error. Called before its capacity is released, so a run
        that the release lets end (a lazy source found exhausted) knows it parked."""
        self.counters.parked += 1
        self.parked.append(job.key)
        if self.metrics is not None:
            self.event("parked", job, self.now())
        node = job.node
        if node is not None:
            self.parked_nodes.add(node)  # it stays RUNNING in the graph
            self.task_ids.pop(node, None)
            self.attempts.pop(node, None)

    def _deadline_of(self, job: Job) -> float:
        """The earlier of the job's deadline and its start plus its timeout (one of them set)."""
        limit = math.inf if job.deadline is None else job.deadline
        if job.timeout is not None:
            limit = min(limit, job.started_at + job.timeout)
        return limit

    def _interruption(self, job: Job) -> BaseException:
        """The error that describes why the run interrupted ``job``."""
        kind = job.cancel_kind
        if kind == ABORTED:
            return TaskAbortedError(f"task {job.key!r} (#{job.task_id}) was aborted while running")
        if kind is not None:
            return TaskCancelledError(f"task #{job.task_id} was {kind}: {job.cancel_reason}")
        if job.timeout is not None and (
            job.deadline is None or job.started_at + job.timeout <= job.deadline
        ):
            return TaskTimeoutError(f"task #{job.task_id} did not finish within {job.timeout} s")
        return TaskTimeoutError(f"task #{job.task_id} was still running at its deadline")

    def _admit(
        self,
        item: object,
        cost: CostVector,
        waited: float,
        node: Hashable | None = None,
        now: float | None = None,
    ) -> Job:
        """Record a task as started after waiting ``waited`` seconds at the head of the source;
        ``now`` may be passed when the caller just read the clock and nothing awaited since."""
        if node is None:
            if type(item) is Retry:
                job: Job = Emitter(self, item.task_id, item.item, cost, self.task_timeout)
                job.attempt = item.attempt
            else:
                task_id = self.next_task_id
                self.next_task_id += 1
                job = Emitter(self, task_id, item, cost, self.task_timeout)
        else:
            job = Emitter(
                self,
                self._task_id(node),
                item,
                cost,
                self.task_timeout,
                node=node,
                attempt=self.attempts.get(node, 1),
            )
        job.started_at = self.now() if now is None else now
        self.running[job.task_id] = job
        counters = self.counters
        counters.started += 1
        counters.wait_count += 1
        if waited:
            counters.wait_total += waited
            if waited > counters.wait_max:  # noqa: PLR1730 - cheaper than max() here
                counters.wait_max = waited
        if self.metrics is not None:
            # When the task became ready: a dependency source knows (and its "queued" event
            # was recorded then); other sources do not timestamp their items, so the wait
            # counts from when the task reached the head of the run, recorded now.
            if self.graph is not None:
                job.queued_at = self._ready_time(node)
            else:
                job.queued_at = job.started_at - waited
                self.event("queued", job, job.queued_at)
            self.event("started", job, job.started_at)
        return job

    def _ready_time(self, node: Hashable) -> float:
        """When a graph node became ready; the run's start if that was before ``trio.run``."""
        assert self.graph is not None
        ready = self.graph.queued_time(node)
        return self.started_at if ready is None else ready

    def _on_node_ready(self, node: Hashable) -> None:
        """Record that a graph node became ready (its task is queued for capacity)."""
        assert self.metrics is not None
        safe_record(
            self.metrics,
            TaskEvent(
                kind="queued",
                runner=self.name,
                at=self._ready_time(node),
                task_id=self.task_ids.get(node),
                key=node,
                attempt=self.attempts.get(node, 1),
            ),
        )

    async def _produce(self, cost: CostVector, waited: float) -> Job | None:
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
                self.capacity.refund(cost)
                self._maybe_finish()
            else:
                self.capacity.dispatch()  # the run may now claim its next unit

    async def _execute(self, job: Job) -> tuple[Any, BaseException | None]:
        """Run one task; its capacity is released the moment its body returns or raises.

        Returns the task's value, or the exception it raised: an ``Exception``, or the
        ``RunParked`` (or group of them) with which it parked. Anything else (``Cancelled``,
        ``KeyboardInterrupt``) propagates.
        """
        try:
            fn = job.fn
            if callable(fn):
                result = fn(job)
                # The common case (a coroutine) without the detour through call_task.
                if type(result) is CoroutineType:
                    value = await result
                    if hasattr(type(value), "__aiter__") or hasattr(type(value), "__anext__"):
                        value = await streamed(value, job)  # ``return entity.start()``
                else:
                    value = await finish(fn, result, job)
            else:
                value = await call_task(fn, job)
        except Exception as exc:
            return None, exc
        except BaseException as exc:
            if is_parked(exc):
                self._record_park(job)
                return None, exc  # caught here, so it can never replace a Cancelled
            raise
        else:
            return value, None
        finally:
            del self.running[job.task_id]
            if not job.paused:  # a paused task gave its capacity back already
                self.releaser_claim = True
                try:
                    self._release(job.cost)
                finally:
                    self.releaser_claim = False

    def _release(self, cost: CostVector) -> None:
        """Give back a finished task's capacity, handing it straight to the next task when this
        run holds the only request in the tree (what dispatch would do, minus the work)."""
        capacity = self.capacity
        if capacity.alone:
            next_cost = self._next_cost()
            if next_cost is cost and capacity.hand_over(cost):
                self._accept(cost)
                return
            if next_cost is None:
                # Nothing to start now (a graph's dependents become ready only when the task
                # is settled): a dispatch could grant nobody anything.
                capacity.give_back(cost, dispatch=False)
                return
        capacity.give_back(cost)

    # -- reporting ---------------------------------------------------------------------------

    def _report(self, job: Job, value: Any, error: BaseException | None) -> float:
        """Deposit a plain task's final envelope; returns the clock reading it used."""
        counters = self.counters
        if error is None:
            counters.finished += 1
            kind = EnvelopeKind.FINAL
        else:
            if self.stop_on_error and job.cancel_kind is None:
                self.stopping = True
                raise error
            self._count_failure(job, error)
            kind = EnvelopeKind.ERROR
        now = self.now()
        self.channel.put(
            TaskEnvelope(job.task_id, kind, value, error, job.key, job.started_at, now)
        )
        if self.metrics is not None:
            self.event(_event_kind(job, error), job, now, error=error)
        self._maybe_finish()
        return now

    def _count_failure(self, job: Job, error: BaseException) -> None:
        counters = self.counters
        if isinstance(error, TaskAbortedError):
            counters.aborted += 1
        elif isinstance(error, TaskCancelledError):
            counters.cancelled += 1
        elif isinstance(error, TaskTimeoutError) and job.cancel_kind is None:
            counters.timed_out += 1
        else:
            counters.failed += 1

    def _final(
        self, job: Job, kind: EnvelopeKind, value: Any, error: BaseException | None, now: float
    ) -> None:
        """Deposit the envelope that ends a task, and its lifecycle event."""
        envelope: TaskEnvelope[Any, Any] = TaskEnvelope(
            job.task_id, kind, value, error, job.key, job.started_at, now
        )
        self.channel.put(envelope)
        if job.node is not None:
            self.task_ids.pop(job.node, None)
            self.attempts.pop(job.node, None)
        if self.metrics is not None:
            self.event(_event_kind(job, error), job, now, error=error)

    async def _settle(self, job: Job, value: Any, error: BaseException | None) -> None:
        """Finish a scheduled or graph task: feed the graph back, retry, run its callbacks, then
        deposit its envelope (so dependents are queued before the consumer sees it)."""
        spec = job.spec
        if spec is None or (spec.on_complete is None and spec.on_error is None):
            self._settle_now(job, value, error)  # no callback to await: no coroutine either
            return
        self.settling += 1
        node = job.node
        try:
            completed = error is None
            callback_failed = False
            if completed and spec.on_complete is not None:
                # Before the graph hears of it: dependents may rely on what the callback records.
                if node is not None:
                    self.settling_nodes.add(node)
                try:
                    error = await _call_back(spec.on_complete, job.key, value)
                finally:
                    self.settling_nodes.discard(node)
                callback_failed = error is not None
            # A failed on_complete fails the node (never retried: the task itself succeeded).
            error, retried = self._feed_back(job, error, retry=not callback_failed)
            if not retried:
                if not completed and spec.on_error is not None:
                    assert error is not None
                    callback_error = await _call_back(spec.on_error, job.key, error)
                    if callback_error is not None:
                        callback_error.__context__ = error
                        error = callback_error
                self._conclude(job, value, error)
        finally:
            self.settling -= 1
        self._maybe_finish()

    def _settle_now(self, job: Job, value: Any, error: BaseException | None) -> None:
        """:meth:`_settle` for a task without callbacks (synchronous)."""
        self.settling += 1
        try:
            error, retried = self._feed_back(job, error)
            if not retried:
                self._conclude(job, value, error)
        finally:
            self.settling -= 1
        self._maybe_finish()

    def _feed_back(
        self, job: Job, error: BaseException | None, *, retry: bool = True
    ) -> tuple[BaseException | None, bool]:
        """Tell the graph how the task ended; returns the error to report and whether the task
        will be retried instead (then nothing is reported yet)."""
        graph = self.graph
        node = job.node
        if graph is None or node is None:
            if error is not None and retry and self._retry_later(job, error):
                return error, True
            return error, False
        if error is None:
            # The first dependent admitted now is this worker's next task (no wake-up).
            self.releaser_claim = True
            self.deferring = True
            try:
                graph.task_completed(node)  # dependents become ready now
            except InvalidTransitionError as exc:  # someone else settled the node meanwhile
                error = InvalidTransitionError(
                    f"{exc}; the run settles the nodes of its tasks itself: do not complete() "
                    "or fail() them from a callback (the original's bridge pattern)"
                )
                error.__cause__ = exc
            except Exception as exc:  # a graph listener raised: report it with the task
                error = exc
            finally:
                self.deferring = False
                if self.deferred:
                    self.deferred = False
                    self._on_source_change()
                self.releaser_claim = False
            return error, False
        if retry and self._retry_later(job, error):
            return error, True
        if job.cancel_kind != ABORTED:
            try:
                self._fail_node(node)
            except Exception as exc:  # a graph listener raised: keep both errors
                exc.__context__ = error
                error = exc
        return error, False

    def _conclude(self, job: Job, value: Any, error: BaseException | None) -> None:
        """Count the outcome and deposit the final envelope (or raise, under stop_on_error)."""
        # Interruptions the user asked for (cancel, abort, shutdown) are reported, never raised.
        if error is not None and self.stop_on_error and job.cancel_kind is None:
            self.stopping = True
            raise error
        if error is None:
            self.counters.finished += 1
        else:
            self._count_failure(job, error)
        kind = EnvelopeKind.FINAL if error is None else EnvelopeKind.ERROR
        self._final(job, kind, value, error, self.now())

    def _retry_later(self, job: Job, error: BaseException) -> bool:
        """Schedule another attempt of ``job`` if its policy allows; True if it did."""
        if job.cancel_kind is not None:
            return False
        policy = job.spec.retry if job.spec is not None and job.spec.retry else self.retry
        if policy is None or self.shutting_down or not policy.should_retry(error, job.attempt):
            return False
        now = self.now()
        retry_at = now + policy.delay(job.attempt, random.random())
        if self.graph is not None and job.node is not None:
            if not self.graph.task_failed(job.node, retry_at):
                return False  # its node was aborted meanwhile
            self.attempts[job.node] = job.attempt + 1
        else:
            item = job.spec or job.task_spec or job.fn
            self.retry_seq += 1
            entry = Retry(item, job.task_id, job.attempt + 1)
            heapq.heappush(self.retries, (retry_at, self.retry_seq, entry))
            self._start_timer()
            self._rearm_timer(retry_at)
        self.counters.retried += 1
        self.channel.put(
            TaskEnvelope(
                job.task_id,
                EnvelopeKind.INTERMEDIATE,
                RetryScheduled(job.attempt, error, retry_at),
                None,
                job.key,
                job.started_at,
                now,
            )
        )
        if self.metrics is not None:
            self.event("retried", job, now, error=error, retry_at=retry_at)
        return True

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
        safe_record(
            self.metrics,
            TaskEvent(
                kind=kind,
                runner=self.name,
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

    # -- control -------------------------------------------------------------------------------

    def _cancel_job(self, job: Job, kind: str, reason: str) -> bool:
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
        return sum(self._cancel_job(job, CANCELLED, reason) for job in jobs)

    def shutdown(self, cancel_running: bool) -> None:
        """Stop starting tasks, abort those not started, and cancel the running ones if asked."""
        if self.finished or self.stopping:
            return
        first = not self.shutting_down
        self.shutting_down = True
        graph = self.graph
        if first:
            self._withdraw()
            while self.ready:
                item, cost, _, node = self.ready.popleft()
                self.capacity.refund(cost)
                if graph is not None and node is not None:
                    self.finalizing = node
                    try:
                        graph.abort(node)
                    finally:
                        self.finalizing = _NO_NODE
                    self._report_aborted(node, item)
                else:
                    error = TaskAbortedError("the run shut down before this task started")
                    self._report_unstarted(item, error)
            self._drop_retries(
                lambda: TaskAbortedError("the run shut down before retrying this task")
            )
            if graph is not None:
                graph.abort_pending()  # reported through the abort listener
            self._ensure_demand()  # paused tasks still take their capacity back to finish
        if cancel_running:
            for job in list(self.running.values()):
                self._cancel_job(job, SHUT_DOWN, "the run shut down")
        self._maybe_finish()

    def _report_unstarted(self, item: object, error: Exception) -> None:
        """Report a task of a source without a graph that will not start (again): shut out by
        a shutdown, or a retry that can no longer run."""
        if type(item) is Retry:
            job: Job = Emitter(self, item.task_id, item.item, {}, None)
            job.attempt = item.attempt
        else:
            job = Emitter(self, self._task_id(None), item, {}, None)
        job.started_at = now = self.now()
        job.never_started = True
        if isinstance(error, TaskAbortedError):
            self.counters.aborted += 1
        else:
            self.counters.failed += 1
        self._final(job, EnvelopeKind.ERROR, None, error, now)

    def _drop_retries(self, error: Callable[[], Exception]) -> None:
        """Report every retry still waiting (due first, then by due time) with ``error()``."""
        retries = [*self.due, *(entry for _, _, entry in sorted(self.retries))]
        self.due.clear()
        self.retries.clear()
        for retry in retries:
            self._report_unstarted(retry, error())

    def in_flight(self) -> int:
        return len(self.running) + self.producing


async def _call_back(callback: Callable[..., object], key: object, arg: object) -> Exception | None:
    """Run a user callback (sync or async); return the exception it raised, if any."""
    try:
        result = callback(key, arg)
        if type(result) is CoroutineType or hasattr(result, "__await__"):
            await result
    except Exception as exc:
        return exc
    return None


def _event_kind(job: Job, error: BaseException | None) -> TaskEventKind:
    if error is None:
        return "finished"
    if isinstance(error, TaskAbortedError):
        return "aborted"
    if isinstance(error, TaskCancelledError):
        return "cancelled"
    if isinstance(error, TaskTimeoutError) and job.cancel_kind is None:
        return "timed_out"
    return "failed"
