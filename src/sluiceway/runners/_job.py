"""A run's record of one task attempt (:class:`Job`, private) and the :class:`Emitter` its task
receives (public: ``await emit(value)``, ``emit.released()``, ``task_id``, ``key``, ``attempt``).

The two are apart so that what a task can see is only what it may use: the engine's bookkeeping
(its cancel scope, its cost, why it was cancelled) lives on the job, out of the task's reach.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs
import trio

from ..capacity import CostVector
from ._envelopes import EnvelopeKind, make_envelope
from ._parked import is_parked
from ._tasks import ScheduledTask, TaskSpec

if TYPE_CHECKING:
    from ._engine import Run

I = TypeVar("I")  # noqa: E741

#: Kinds of cancellation a running task can receive from the run (``Job.cancel_kind``).
CANCELLED, ABORTED, SHUT_DOWN = "cancelled", "aborted", "shut down"


class Job:
    """The run's record of one task attempt: what to call, how it is identified and limited,
    and the engine's state for it (its cancel scope, its capacity, how it was interrupted).

    Class-level defaults (no ``__slots__``): a plain task sets only what differs from them,
    which keeps the per-task cost of the most common case low.
    """

    spec: ScheduledTask[Any, Any] | None = None  # a ScheduledTask: callbacks, retry policy
    task_spec: TaskSpec[Any, Any] | None = None
    deadline: float | None = None
    node: Hashable | None = None  # its graph node (dependency sources only)
    attempt = 1
    started_at = 0.0
    queued_at: float | None = None  # only recorded with a metrics collector
    scope: trio.CancelScope | None = None  # set while its body runs
    cancel_kind: str | None = None  # CANCELLED, ABORTED or SHUT_DOWN once the run cancels it
    cancel_reason: str | None = None
    never_started = False  # reported without running (aborted, shut out, or rejected)
    released_depth = 0  # inside Emitter.released(): how many blocks deep
    paused = False  # its capacity is given back (a released() block, or waiting to retake it)

    def __init__(
        self,
        task_id: int,
        item: object,
        cost: CostVector,
        default_timeout: float | None,
        *,
        node: Hashable | None = None,
        attempt: int = 1,
    ) -> None:
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

    @property
    def item(self) -> object:
        """What the source gave for this task (to run it again on a retry)."""
        return self.spec or self.task_spec or self.fn


class Emitter(Generic[I]):
    """Passed to every task: ``await emit(value)`` streams an ``INTERMEDIATE`` envelope.

    It waits while the run's envelope buffer is full (backpressure). ``task_id`` and ``key``
    identify the task it belongs to; ``attempt`` counts its attempts (1-based).
    """

    __slots__ = ("_job", "_run")

    def __init__(self, run: Run, job: Job) -> None:
        self._run = run
        self._job = job

    @property
    def task_id(self) -> int:
        """The task's id: tasks are counted in the order they are taken, from 1."""
        return self._job.task_id

    @property
    def key(self) -> Hashable | None:
        """The task's key (a :class:`~sluiceway.TaskSpec`'s or
        :class:`~sluiceway.ScheduledTask`'s), else ``None``."""
        return self._job.key

    @property
    def attempt(self) -> int:
        """Which attempt of the task this is, from 1 (retries count up)."""
        return self._job.attempt

    async def __call__(self, value: I) -> None:
        job = self._job
        if job.scope is None:
            raise RuntimeError(f"task #{job.task_id} has finished; it cannot emit any more")
        run = self._run
        now = run.now()
        await run.channel.put_wait(
            make_envelope(
                job.task_id, EnvelopeKind.INTERMEDIATE, value, None, job.key, job.started_at, now
            )
        )
        if run.metrics is not None:
            run.event("intermediate", job, now)

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
        job = self._job
        if job.scope is None:
            raise RuntimeError(f"task #{job.task_id} has finished; it holds no capacity")
        if job.released_depth:
            job.released_depth += 1
            try:
                yield
            finally:
                job.released_depth -= 1
            return
        run = self._run
        job.released_depth = 1
        run.pause(job)
        try:
            yield
        except BaseException as exc:
            job.released_depth = 0
            if is_parked(exc):
                # The task ends parked: it must not wait to take back capacity it would give
                # straight back (nor let a Cancelled from that wait replace RunParked).
                raise
            await run.resume(job)
            raise
        job.released_depth = 0
        await run.resume(job)


@attrs.define(slots=True)
class Resume:
    """A paused task waiting to take its capacity back (see ``Emitter.released``)."""

    job: Job
    event: trio.Event = attrs.field(factory=trio.Event)
    granted: bool = False
    error: BaseException | None = None
