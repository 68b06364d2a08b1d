"""The worker tasks of a run: they start admitted tasks, run them, release their capacity and
report them. This is the per-task path.

Workers are kept at most as numerous as the tasks that ever held capacity at once: a grant wakes
an idle worker, or asks the spawner task for a new one when none is idle. A worker that finishes a
task releases its capacity first; if that release grants the run its next task, the same worker
starts it right away without a task switch (``releaser_claim``).

Every worker runs in the run's nursery, each task inside a cancel scope of its own (its timeout,
``cancel()``, an abort, a shutdown), so a task that swallows a cancellation costs the worker
nothing but a fresh scope.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from types import CoroutineType
from typing import TYPE_CHECKING, Any

import trio

from .._errors import TaskAbortedError, TaskCancelledError, TaskTimeoutError
from .._util import WaitQueue
from ..capacity import CostVector
from ..sources import SourceFromIterable
from ._job import ABORTED, Emitter, Job
from ._parked import is_parked
from ._retries import Retry
from ._tasks import STREAM_TYPES, call_task, finish, is_stream_type, streamed

if TYPE_CHECKING:
    from ._engine import Run

#: How many tasks a worker may run back to back (each finishing without blocking) before it
#: yields to the scheduler once, so a stream of instant tasks cannot starve other tasks.
YIELD_EVERY = 16


class Workers:
    """The worker pool of one run (see the module docstring)."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self.idle = WaitQueue()
        self.spawn_needed = 0
        self.coming = 0  # workers woken or spawned that have not looked for work yet
        # Set by a worker releasing capacity (or completing a graph node): the task that the
        # release admits is its own next one, so no other worker is woken for it.
        self.releaser_claim = False
        self.refilling = False  # admitting after the consumer drained a full envelope buffer
        # Set when a worker is to call ``run.admit_next()`` when it next looks for work (a lazy
        # source's next item, see _produced): one is woken (or spawned) for it unless one is
        # on its way, and a worker on its way that takes an admitted task first wakes another
        # for it, so no long task leaves it waiting.
        self.admit_wanted = False
        self._spawner: trio.lowlevel.Task | None = None

    def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._run_spawner, nursery, name=f"{self._run.name}:spawner")

    def wake_all(self) -> None:
        """Wake every idle worker and the spawner (the run has ended)."""
        self.coming += self.idle.wake_all()
        if self._spawner is not None:
            task, self._spawner = self._spawner, None
            trio.lowlevel.reschedule(task)

    def work_available(self) -> None:
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
        run = self._run
        pending = len(run.ready) + len(run.unproduced)
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
        if self._spawner is not None:
            task, self._spawner = self._spawner, None
            trio.lowlevel.reschedule(task)

    def _wake(self) -> None:
        """Wake an idle worker, or have a new one spawned."""
        self.coming += 1
        if self.idle.tasks:
            self.idle.wake_one(newest=True)
            return
        self.spawn_needed += 1
        if self._spawner is not None:
            task, self._spawner = self._spawner, None
            trio.lowlevel.reschedule(task)

    async def _run_spawner(self, nursery: trio.Nursery) -> None:
        run = self._run
        while True:
            while self.spawn_needed:
                self.spawn_needed -= 1
                nursery.start_soon(self._work, name=f"{run.name}:worker")
            if run.finished or run.stopping:
                return
            self._spawner = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self._spawner = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)

    async def _park(self) -> None:
        await self.idle.park()
        self.coming -= 1

    async def _work(self) -> None:
        """One worker: take admitted tasks and run them until the run is over."""
        run = self._run
        outcomes = run.outcomes
        ready = run.ready
        unproduced = run.unproduced
        running = run.running
        source = run.source
        advance = source.advance if isinstance(source, SourceFromIterable) else None
        stream_types = STREAM_TYPES
        self.coming -= 1
        while True:
            scope = trio.CancelScope()
            job: Job | None = None
            with scope:
                streak = 0
                stamp: float | None = None  # the clock, if read since the last await
                while True:
                    job = None
                    if ready:
                        item, cost, waited, node = ready.popleft()
                        job = self._admit(item, cost, waited, node, stamp)
                        if (ready or unproduced) and not self.coming:
                            self.work_available()  # the wake-up chain
                        elif self.admit_wanted and not self.coming:
                            self._wake()  # someone else admits the source's next item
                    elif unproduced:
                        # A lazy source's next item, its capacity held: advance the iterable
                        # here (one coroutine level fewer than a helper would cost).
                        stamp = None
                        cost, waited = unproduced.popleft()
                        if (ready or unproduced) and not self.coming:
                            self.work_available()  # the wake-up chain
                        assert advance is not None  # only a lazy async source has unproduced
                        run.producing += 1
                        try:
                            item = await advance()
                        except Exception:
                            # Its end, or its failure: that ends the stream and reaches the
                            # consumer after the envelopes of the tasks taken before it
                            # (EnvelopeChannel.end).
                            self._not_produced(cost)
                            continue
                        except BaseException:
                            self._not_produced(cost)
                            raise
                        job = self._produced(item, cost, waited)
                        if job is None:
                            continue
                    elif self.admit_wanted:
                        self.admit_wanted = False
                        stamp = None
                        self.releaser_claim = True  # what it admits is this worker's to start
                        try:
                            run.admit_next()
                        finally:
                            self.releaser_claim = False
                        continue
                    elif run.finished or run.stopping:
                        return
                    else:
                        streak = 0
                        stamp = None
                        await self._park()
                        continue
                    job.scope = scope
                    limited = job.timeout is not None or job.deadline is not None
                    if limited:
                        scope.deadline = _deadline_of(job)
                    # Run the task; its capacity is released the moment its body returns or
                    # raises. Inlined here, the hottest path: no coroutine of its own.
                    outcome_value: Any = None
                    failure: BaseException | None = None
                    try:
                        fn = job.fn
                        emit: Emitter[Any] = Emitter(run, job)
                        if callable(fn):
                            result = fn(emit)
                            # The common case (a coroutine) without the detour through
                            # call_task.
                            if type(result) is CoroutineType:
                                outcome_value = await result
                                if outcome_value is not None:
                                    kind = type(outcome_value)
                                    streams = stream_types.get(kind)
                                    if streams is None:
                                        streams = is_stream_type(kind)
                                    if streams:
                                        # ``return entity.start()``: stream what it gives
                                        outcome_value = await streamed(fn, outcome_value, emit)
                            else:
                                outcome_value = await finish(fn, result, emit)
                        else:
                            outcome_value = await call_task(fn, emit)
                    except Exception as exc:
                        failure = exc
                    except BaseException as exc:
                        # Anything else (``Cancelled``, ``KeyboardInterrupt``) propagates, but a
                        # ``RunParked`` (or a group of them) is caught here, so it can never
                        # replace a Cancelled.
                        if not is_parked(exc):
                            raise
                        run.record_park(job)
                        failure = exc
                    finally:
                        del running[job.task_id]
                        if not job.paused:  # a paused task gave its capacity back already
                            self.releaser_claim = True
                            try:
                                # Its unit goes straight to the next task if it can (the common
                                # case, without a call more), else back to the tree.
                                if not run.hand_over_next(job.cost):
                                    self._release(job.cost)
                            finally:
                                self.releaser_claim = False
                    if limited:
                        scope.deadline = math.inf
                    job.scope = None
                    spec = job.spec
                    if failure is not None and is_parked(failure):
                        stamp = None
                        # Recorded above. A task that parks while the run itself is being
                        # cancelled (from outside the task's own scope) ends nothing: the run is
                        # going away.
                        if scope.cancel_called or trio.current_effective_deadline() != -math.inf:
                            run.maybe_finish()
                    elif spec is None and job.node is None and run.retry is None:
                        stamp = outcomes.report(job, outcome_value, failure)
                    elif spec is None or (spec.on_complete is None and spec.on_error is None):
                        stamp = None
                        outcomes.settle_now(job, outcome_value, failure)
                    else:
                        stamp = None
                        await outcomes.settle(job, outcome_value, failure)
                    # Only the run cancels this scope (cancel_job, which sets cancel_kind) or its
                    # deadline does: tested so, since scope.cancel_called reads the clock.
                    if job.cancel_kind is not None or (limited and scope.cancel_called):
                        break  # the task swallowed our cancellation: take a fresh scope
                    streak += 1
                    if streak >= YIELD_EVERY:
                        streak = 0
                        stamp = None
                        await trio.lowlevel.checkpoint()
            if job is not None and job.scope is not None:
                # Our scope was cancelled while this job ran: a timeout, a cancel or an abort.
                job.scope = None
                await outcomes.settle(job, None, _interruption(job))

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
        run = self._run
        if node is None:
            if type(item) is Retry:
                job = Job(item.task_id, item.item, cost, run.task_timeout)
                job.attempt = item.attempt
            else:
                task_id = run.next_task_id
                run.next_task_id += 1
                job = Job(task_id, item, cost, run.task_timeout)
        else:
            feedback = run.feedback
            assert feedback is not None
            job = Job(
                feedback.task_id(node),
                item,
                cost,
                run.task_timeout,
                node=node,
                attempt=feedback.attempt(node),
            )
        job.started_at = run.now() if now is None else now
        run.running[job.task_id] = job
        counters = run.counters
        counters.started += 1  # and a wait for capacity, of ``waited`` seconds (maybe none)
        if waited:
            counters.wait_total += waited
            if waited > counters.wait_max:  # noqa: PLR1730 - cheaper than max() here
                counters.wait_max = waited
        if run.metrics is not None:
            # When the task became ready: a dependency source knows (and its "queued" event
            # was recorded then); other sources do not timestamp their items, so the wait
            # counts from when the task reached the head of the run, recorded now.
            if run.feedback is not None and node is not None:
                job.queued_at = run.feedback.ready_time(node)
            else:
                job.queued_at = job.started_at - waited
                run.event("queued", job, job.queued_at)
            run.event("started", job, job.started_at)
        return job

    def _not_produced(self, cost: CostVector) -> None:
        """The lazy source had no item for ``cost`` (it ended or failed, or a BaseException
        interrupted it): give the capacity back (a quota gets it back too)."""
        run = self._run
        run.producing -= 1
        run.capacity.refund(cost)
        run.maybe_finish()

    def _produced(self, item: object, cost: CostVector, waited: float) -> Job | None:
        """Record the task a lazy source produced under ``cost`` as started (``None`` if the
        run is stopping: then its capacity is given back), and see to the source's next item."""
        run = self._run
        if run.stopping:
            self._not_produced(cost)
            return None
        job = self._admit(item, cost, waited)
        run.producing -= 1  # after _admit: the run never looks idle in between
        if run.capacity.alone:
            # The next item may be produced now. Rather than taking its unit at once (and
            # giving this task's back when it ends), leave it to whoever comes first: this
            # worker's release, if its task ends without blocking, hands its own unit over
            # (no take, no give-back); else the worker woken here admits it.
            self.admit_wanted = True
            if not self.coming:
                self._wake()
        else:
            run.admit_next()  # with other requests in the tree, the tree decides now
        return job

    def _release(self, cost: CostVector) -> None:
        """Give back a finished task's capacity, handing it straight to the next task when this
        run holds the only request in the tree (what dispatch would do, minus the work)."""
        run = self._run
        capacity = run.capacity
        if capacity.alone:
            next_cost = run.next_cost()
            if next_cost is cost and capacity.hand_over(cost):
                run.accept(cost)
                return
            if next_cost is None:
                # Nothing to start now (a graph's dependents become ready only when the task
                # is settled): a dispatch could grant nobody anything.
                capacity.give_back(cost, dispatch=False)
                return
        capacity.give_back(cost)


def _deadline_of(job: Job) -> float:
    """The earlier of the job's deadline and its start plus its timeout (one of them set)."""
    limit = math.inf if job.deadline is None else job.deadline
    if job.timeout is not None:
        limit = min(limit, job.started_at + job.timeout)
    return limit


def _interruption(job: Job) -> BaseException:
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
