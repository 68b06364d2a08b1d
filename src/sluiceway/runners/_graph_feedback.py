"""What a run does for a :class:`~sluiceway.DependencySource`: it drives the graph.

A task that succeeds completes its node, so its dependents become ready before the consumer sees
its envelope; a failed attempt that is retried waits as the graph's delayed readiness; a task
that fails for good aborts its node and every dependent, and every aborted node that has a task
is reported with an ``ERROR`` envelope (a running one is cancelled first). A graph node keeps its
task id across attempts, and counts them.

Only a run whose source is a dependency source has a :class:`GraphFeedback`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from .._errors import InvalidTransitionError, TaskAbortedError
from .._metrics import TaskEvent, safe_record
from ._envelopes import EnvelopeKind
from ._job import ABORTED, Job

if TYPE_CHECKING:
    from ..sources import DependencySource
    from ._engine import Run

_NO_NODE = object()


class GraphFeedback:
    """The graph side of one run (see the module docstring)."""

    def __init__(self, run: Run, graph: DependencySource[Any, Any]) -> None:
        self._run = run
        self.graph = graph
        # A node keeps its task id and counts its attempts across retries.
        self._task_ids: dict[Hashable, int] = {}
        self._attempts: dict[Hashable, int] = {}
        # Nodes whose on_complete callback is running (the node is still RUNNING): an abort
        # meanwhile is reported by their settling, with their real outcome.
        self.settling_nodes: set[Hashable] = set()
        # Nodes whose task parked: they stay RUNNING in the graph, so their dependents cannot
        # become ready in this run, and they are never reported as aborted.
        self.parked_nodes: set[Hashable] = set()
        # The node whose own failure is aborting its graph (reported by the task, not the
        # abort listener).
        self._finalizing: object = _NO_NODE
        # While a completion is fed to the graph, source changes (each newly ready dependent)
        # are noted here and handled once, with a single dispatch, when it returns.
        self.completing = False
        self.changed_meanwhile = False

    def subscribe(self) -> list[Callable[[], None]]:
        """Listen to the graph; returns the unsubscribers."""
        graph = self.graph
        unsubscribe = [graph.subscribe_aborts(self._on_node_aborted)]
        if self._run.metrics is not None:
            for node in list(graph.graph.ready):  # ready before the run: queued now
                self._on_node_ready(node)
            unsubscribe.append(graph.graph.subscribe(on_ready=self._on_node_ready))
        return unsubscribe

    # -- task identity ---------------------------------------------------------------------

    def task_id(self, node: Hashable) -> int:
        """The task id of ``node``: the one it got on an earlier attempt, or a new one."""
        known = self._task_ids.get(node)
        if known is not None:
            return known
        task_id = self._task_ids[node] = self._run.new_task_id()
        return task_id

    def attempt(self, node: Hashable) -> int:
        """Which attempt of ``node``'s task comes next (1-based)."""
        return self._attempts.get(node, 1)

    def forget(self, node: Hashable) -> None:
        """``node``'s task is over (reported or parked): drop its id and attempt count."""
        self._task_ids.pop(node, None)
        self._attempts.pop(node, None)

    # -- outcomes --------------------------------------------------------------------------

    def complete(self, node: Hashable) -> BaseException | None:
        """Complete ``node`` (its task succeeded); returns the error to report instead, if the
        graph refused it or a listener raised."""
        run = self._run
        error: BaseException | None = None
        # The first dependent admitted now is the releasing worker's next task (no wake-up).
        run.workers.releaser_claim = True
        self.completing = True
        try:
            self.graph.task_completed(node)  # dependents become ready now
        except InvalidTransitionError as exc:  # someone else settled the node meanwhile
            error = InvalidTransitionError(
                f"{exc}; the run settles the nodes of its tasks itself: do not complete() "
                "or fail() them from a callback (the original's bridge pattern)"
            )
            error.__cause__ = exc
        except Exception as exc:  # a graph listener raised: report it with the task
            error = exc
        finally:
            self.completing = False
            if self.changed_meanwhile:
                self.changed_meanwhile = False
                run.on_source_change()
            run.workers.releaser_claim = False
        return error

    def retry_at(self, job: Job, at: float) -> bool:
        """Make ``job``'s node ready again at ``at``; ``False`` if it was aborted meanwhile."""
        assert job.node is not None
        if not self.graph.task_failed(job.node, at):
            return False
        self._attempts[job.node] = job.attempt + 1
        return True

    def fail(self, node: Hashable) -> None:
        """Give up on ``node``: abort it and its dependents (reported through the listener)."""
        self._finalizing = node
        try:
            self.graph.task_failed(node, None)
        finally:
            self._finalizing = _NO_NODE

    def abort(self, node: Hashable) -> None:
        """Abort ``node``, whose task the run reports itself (a shutdown before it started)."""
        self._finalizing = node
        try:
            self.graph.abort(node)
        finally:
            self._finalizing = _NO_NODE

    def parked(self, node: Hashable) -> None:
        """``node``'s task parked: it stays RUNNING in the graph."""
        self.parked_nodes.add(node)
        self.forget(node)

    def _on_node_aborted(self, node: Hashable, task: object) -> None:
        """A graph node was aborted (by a cascade, ``abort()`` or a shutdown): act on its task."""
        run = self._run
        if node == self._finalizing or run.stopping or node in self.settling_nodes:
            return  # a node being settled is reported by its settling, with its real outcome
        if node in self.parked_nodes:
            return  # its task parked: it is reported as parked, never as aborted
        for job in run.running.values():
            if job.node == node:
                run.cancel_job(job, ABORTED, "its node was aborted")
                return
        if run.drop_admitted(node):
            return
        if task is not None:
            self.report_aborted(node, task)

    def report_aborted(self, node: Hashable, item: object) -> None:
        """Report ``node``'s task, which never ran, as aborted."""
        run = self._run
        job = Job(self.task_id(node), item, {}, None, node=node)
        job.started_at = now = run.now()
        job.never_started = True
        run.counters.aborted += 1
        error = TaskAbortedError(f"task {job.key!r} was aborted before it ran")
        run.outcomes.final(job, EnvelopeKind.ERROR, None, error, now)

    def stuck(self) -> bool:
        """With nothing in flight, whether the graph, not done, can do nothing more in this
        run. No node waits for its retry time, no ready node has a task, and either

        * a ready node still has no task (``add_node`` without ``set_task``): the source ends
          with :class:`~sluiceway.MissingTaskError` (its ``fail_if_missing``), or
        * some task parked and no node is ready: the parked nodes stay RUNNING, so their
          dependents can never become ready in this run; the run ends parked.

        Otherwise (nodes running outside this run, say) the run keeps waiting. Also ``False``
        when the run has just ended meanwhile (see below).
        """
        graph = self.graph
        if graph.next_due() is not None:
            return False
        if graph.fail_if_missing():
            # The source's end notified its listeners, this run among them: its
            # on_source_change may have ended the run already (then there is nothing to do).
            return not self._run.finished
        return bool(self._run.parked) and not graph.graph.ready

    # -- metrics ---------------------------------------------------------------------------

    def ready_time(self, node: Hashable) -> float:
        """When ``node`` became ready; the run's start if that was before ``trio.run``."""
        ready = self.graph.queued_time(node)
        return self._run.started_at if ready is None else ready

    def _on_node_ready(self, node: Hashable) -> None:
        """Record that a graph node became ready (its task is queued for capacity)."""
        run = self._run
        assert run.metrics is not None
        safe_record(
            run.metrics,
            TaskEvent(
                kind="queued",
                runner=run.name,
                at=self.ready_time(node),
                task_id=self._task_ids.get(node),
                key=node,
                attempt=self._attempts.get(node, 1),
            ),
        )
