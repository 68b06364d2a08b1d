"""How a run reports the end of a task: counts it, retries it, feeds the graph back, runs the
task's callbacks, and deposits its final envelope (or, under ``stop_on_error``, raises).

A plain task (no graph node, no callbacks, no retry policy) takes :meth:`Outcomes.report`, the
short path. Everything else is *settled* (:meth:`Outcomes.settle`): the graph learns the outcome
first and a retried task reports nothing yet, so a dependent is queued before the consumer sees
the envelope of the task it depends on.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from .._errors import TaskAbortedError
from ._envelopes import EnvelopeKind, TaskEnvelope, make_envelope
from ._job import ABORTED, Job
from ._retries import Retry
from ._stats import count_failure, event_kind
from ._tasks import RetryScheduled

if TYPE_CHECKING:
    from ._engine import Run


class Outcomes:
    """The reporting side of one run (see the module docstring)."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self.settling = 0  # tasks whose graph feedback or callbacks are under way

    def report(self, job: Job, value: Any, error: BaseException | None) -> float:
        """Deposit a plain task's final envelope; returns the clock reading it used."""
        run = self._run
        counters = run.counters
        if error is None:
            counters.finished += 1
            kind = EnvelopeKind.FINAL
        else:
            if run.stop_on_error and job.cancel_kind is None:
                run.stopping = True
                raise error
            count_failure(counters, job, error)
            kind = EnvelopeKind.ERROR
        now = run.now()
        run.channel.put(
            make_envelope(job.task_id, kind, value, error, job.key, job.started_at, now)
        )
        if run.metrics is not None:
            run.event(event_kind(job, error), job, now, error=error)
        if not (run.ready or run.unproduced):  # a task admitted: the run cannot end yet
            run.maybe_finish()
        return now

    def final(
        self, job: Job, kind: EnvelopeKind, value: Any, error: BaseException | None, now: float
    ) -> None:
        """Deposit the envelope that ends a task, and its lifecycle event."""
        run = self._run
        run.channel.put(
            make_envelope(job.task_id, kind, value, error, job.key, job.started_at, now)
        )
        if job.node is not None and run.feedback is not None:
            run.feedback.forget(job.node)
        if run.metrics is not None:
            run.event(event_kind(job, error), job, now, error=error)

    async def settle(self, job: Job, value: Any, error: BaseException | None) -> None:
        """Finish a scheduled or graph task: feed the graph back, retry, run its callbacks, then
        deposit its envelope (so dependents are queued before the consumer sees it)."""
        spec = job.spec
        if spec is None or (spec.on_complete is None and spec.on_error is None):
            self.settle_now(job, value, error)  # no callback to await: no coroutine either
            return
        feedback = self._run.feedback
        self.settling += 1
        node = job.node
        try:
            completed = error is None
            callback_failed = False
            if completed and spec.on_complete is not None:
                # Before the graph hears of it: dependents may rely on what the callback records.
                if node is not None and feedback is not None:
                    feedback.settling_nodes.add(node)
                try:
                    error = await _call_back(spec.on_complete, job.key, value)
                finally:
                    if feedback is not None:
                        feedback.settling_nodes.discard(node)
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
        self._run.maybe_finish()

    def settle_now(self, job: Job, value: Any, error: BaseException | None) -> None:
        """:meth:`settle` for a task without callbacks (synchronous)."""
        self.settling += 1
        try:
            error, retried = self._feed_back(job, error)
            if not retried:
                self._conclude(job, value, error)
        finally:
            self.settling -= 1
        self._run.maybe_finish()

    def _feed_back(
        self, job: Job, error: BaseException | None, *, retry: bool = True
    ) -> tuple[BaseException | None, bool]:
        """Tell the graph how the task ended; returns the error to report and whether the task
        will be retried instead (then nothing is reported yet)."""
        feedback = self._run.feedback
        node = job.node
        if feedback is None or node is None:
            if error is not None and retry and self._retry_later(job, error):
                return error, True
            return error, False
        if error is None:
            return feedback.complete(node), False
        if retry and self._retry_later(job, error):
            return error, True
        if job.cancel_kind != ABORTED:
            try:
                feedback.fail(node)
            except Exception as exc:  # a graph listener raised: keep both errors
                exc.__context__ = error
                error = exc
        return error, False

    def _conclude(self, job: Job, value: Any, error: BaseException | None) -> None:
        """Count the outcome and deposit the final envelope (or raise, under stop_on_error)."""
        run = self._run
        # Interruptions the user asked for (cancel, abort, shutdown) are reported, never raised.
        if error is not None and run.stop_on_error and job.cancel_kind is None:
            run.stopping = True
            raise error
        if error is None:
            run.counters.finished += 1
        else:
            count_failure(run.counters, job, error)
        kind = EnvelopeKind.FINAL if error is None else EnvelopeKind.ERROR
        self.final(job, kind, value, error, run.now())

    def _retry_later(self, job: Job, error: BaseException) -> bool:
        """Schedule another attempt of ``job`` if its policy allows; True if it did."""
        run = self._run
        if job.cancel_kind is not None:
            return False
        policy = job.spec.retry if job.spec is not None and job.spec.retry else run.retry
        if policy is None or run.shutting_down or not policy.should_retry(error, job.attempt):
            return False
        now = run.now()
        retry_at = now + policy.delay(job.attempt, random.random())
        if run.feedback is not None and job.node is not None:
            if not run.feedback.retry_at(job, retry_at):
                return False  # its node was aborted meanwhile
        else:
            run.retries.add(Retry(job.item, job.task_id, job.attempt + 1), retry_at)
        run.counters.retried += 1
        run.channel.put(
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
        if run.metrics is not None:
            run.event("retried", job, now, error=error, retry_at=retry_at)
        return True

    def report_unstarted(self, item: object, error: Exception) -> None:
        """Report a task of a source without a graph that will not start (again): shut out by
        a shutdown, or a retry that can no longer run."""
        run = self._run
        if type(item) is Retry:
            job = Job(item.task_id, item.item, {}, None)
            job.attempt = item.attempt
        else:
            job = Job(run.new_task_id(), item, {}, None)
        job.started_at = now = run.now()
        job.never_started = True
        if isinstance(error, TaskAbortedError):
            run.counters.aborted += 1
        else:
            run.counters.failed += 1
        self.final(job, EnvelopeKind.ERROR, None, error, now)

    def drop_retries(self, error: Callable[[], Exception]) -> None:
        """Report every retry still waiting (due first, then by due time) with ``error()``."""
        for retry in self._run.retries.take_all():
            self.report_unstarted(retry, error())


async def _call_back(callback: Callable[..., object], key: object, arg: object) -> Exception | None:
    """Run a user callback (sync or async); return the exception it raised, if any."""
    try:
        result = callback(key, arg)
        if type(result) is CoroutineType or hasattr(result, "__await__"):
            await result
    except Exception as exc:
        return exc
    return None
