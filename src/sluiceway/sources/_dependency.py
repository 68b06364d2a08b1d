"""DependencySource and PriorityDependencySource: a dependency graph as a task source."""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import trio

from .._errors import MissingTaskError
from .._util import NOTHING, Nothing, type_name
from ._base import PeekableSource
from ._graph import DependencyGraph, NodeState
from ._priority import PrioritySource

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class DependencySource(PeekableSource[T], Generic[K, T]):
    """Serve the tasks of a :class:`DependencyGraph` as their dependencies complete.

    A key whose node becomes ready is served in the order it became ready; taking its task starts
    the node (``graph.start``). ``tasks`` maps keys to tasks and may be filled later, also during
    a run: ``graph.add_node(key)`` then ``set_task(key, task)`` works.

    **Tasks set late.** A ready key without a task is simply not startable: it is skipped (the
    ready keys behind it are served meanwhile) until :meth:`set_task` gives it one, which wakes
    whoever waits on the source. It is an error only once nothing else can happen: then the
    source ends with :class:`~sluiceway.MissingTaskError`, naming the keys, instead of waiting
    forever. "Nothing else can happen" is decided by whoever reads the source: a runner decides
    it when it has nothing left to do (no task running, admitted, being settled or waiting for a
    retry, and no ready key with a task; see :meth:`fail_if_missing`), and it then raises the
    error after the envelopes of the tasks it ran; a reader of the source itself (``receive``,
    ``async for``, :meth:`wait`) decides it when it would wait while no node of the graph is
    running or waiting for its retry time.

    The source is exhausted when the graph is done (every node completed or aborted); every
    transition that can finish the graph, an abort included, wakes whoever waits on the source. A
    node that failed with a retry time (``fail(key, retry_at=...)``) waits without being served;
    :meth:`next_due` tells a runner when to look again.

    Runners drive the graph through the feedback methods (:meth:`task_completed`,
    :meth:`task_failed`, :meth:`abort`). Used by hand, call :meth:`complete`, :meth:`fail` and
    :meth:`abort` yourself.

    Args:
        graph: the dependency graph (it may already hold nodes, and may grow while served).
        tasks: the task of each key (more can be added with :meth:`add_task` or :meth:`set_task`).
    """

    def __init__(self, graph: DependencyGraph[K], tasks: Mapping[K, T] | None = None) -> None:
        super().__init__()
        if not isinstance(graph, DependencyGraph):
            raise TypeError(f"graph must be a DependencyGraph, got {graph!r} ({type_name(graph)})")
        self.graph = graph
        self._tasks: dict[K, T] = dict(tasks or {})
        self._fifo: deque[K] = deque()
        # When each ready node became ready (None: before a trio run started).
        self._ready_at: dict[K, float | None] = {}
        self._failure: BaseException | None = None
        self._abort_listeners: list[Callable[[K, T | None], None]] = []
        self._unsubscribe = graph.subscribe(
            on_ready=self._on_ready, on_complete=self._on_settled, on_abort=self._on_abort
        )
        for key in graph.ready:
            self._on_ready(key)

    # -- building -------------------------------------------------------------------------------

    def add_task(self, key: K, task: T, dependencies: Iterable[K] = ()) -> NodeState:
        """Add a node to the graph and its task here in one step; returns the node's state."""
        previous = self._tasks.get(key)
        self._tasks[key] = task
        try:
            return self.graph.add_node(key, dependencies)
        except BaseException:
            if key not in self.graph:  # refused: undo; a listener error came after insertion
                if previous is None:
                    del self._tasks[key]
                else:
                    self._tasks[key] = previous
            raise

    def set_task(self, key: K, task: T) -> None:
        """Give (or replace) the task of ``key``; the node may be added before or after.

        A ready node that was waiting for its task becomes startable, and whoever waits on the
        source (a runner) is woken.
        """
        self._tasks[key] = task
        if key in self.graph and self.graph.get_state(key) is NodeState.READY:
            self._notify()

    def task_for(self, key: K) -> T | None:
        """The task of ``key``, or ``None`` if it has none yet."""
        return self._tasks.get(key)

    # -- manual graph transitions ---------------------------------------------------------------

    def complete(self, key: K) -> list[K] | None:
        """Mark ``key`` completed; returns the newly ready keys (``None`` if it was aborted)."""
        return self.graph.complete(key)

    def fail(self, key: K, *, retry_at: float | None = None) -> bool:
        """Send ``key`` back to ready, now or at ``retry_at``; ``False`` if it was aborted."""
        done = self.graph.fail(key, retry_at=retry_at)
        if retry_at is not None:
            self._notify()  # a runner re-arms its timer for the new due time
        return done

    def abort(self, key: K) -> list[K]:
        """Abort ``key`` and every node that depends on it; returns the aborted keys."""
        return self.graph.abort(key)

    def abort_pending(self) -> list[K]:
        """Abort every node that is not running or finished (a shutdown); returns their keys."""
        aborted: list[K] = []
        for key in [k for k in self.graph if self._abortable(k)]:
            if self.graph.get_state(key) is not NodeState.ABORTED:
                aborted.extend(self.graph.abort(key))
        return aborted

    def _abortable(self, key: K) -> bool:
        return self.graph.get_state(key) in (NodeState.PENDING, NodeState.READY, NodeState.FAILED)

    # -- runner feedback ---------------------------------------------------------------------------

    def take_keyed(self) -> tuple[K, T]:
        """Take the next ready task together with its key (what runners use)."""
        if self._receive_closed:
            raise trio.ClosedResourceError("this source was closed")
        if self._failure is not None:
            raise trio.WouldBlock
        key = self._head_key()
        if key is NOTHING:
            raise trio.WouldBlock
        task = self._tasks[key]
        self._drop_head(key)
        self.graph.start(key)
        return key, task

    # -- ready keys without a task -----------------------------------------------------------

    def waiting_for_tasks(self) -> list[K]:
        """The ready keys that have no task yet (not startable until :meth:`set_task`)."""
        tasks = self._tasks
        return [key for key in self.graph.ready if tasks.get(key) is None]

    def fail_if_missing(self) -> bool:
        """End the source with :class:`~sluiceway.MissingTaskError` if some ready key has no
        task while none has one; returns whether it did (or had failed already).

        What a reader calls once nothing else can happen: a runner, when it has nothing left
        to do. Ready keys that have their task mean there is still work, so nothing is failed.
        """
        if self._failure is not None:
            return True
        tasks = self._tasks
        missing: list[K] = []
        for key in self.graph.ready:
            if tasks.get(key) is not None:
                return False
            missing.append(key)
        if not missing:
            return False
        self._failure = _missing_error(missing)
        self._notify()
        return True

    def _stalled(self) -> bool:
        """For a reader of the source itself: a ready key waits for its task while no node is
        running or waiting for its retry time, so nothing can change (see the class doc)."""
        graph = self.graph
        return not graph.running and graph.next_due() is None and self.fail_if_missing()

    def task_completed(self, key: K) -> None:
        """A runner finished ``key``'s task successfully: complete the node (dependents become
        ready before this returns)."""
        self.graph.complete(key)

    def task_failed(self, key: K, retry_at: float | None) -> bool:
        """A runner's attempt of ``key``'s task failed: retry at ``retry_at``, or (``None``) give
        up and abort the node and its dependents. Returns whether a retry was scheduled."""
        if retry_at is None:
            self.graph.abort(key)
            return False
        return self.fail(key, retry_at=retry_at)

    def subscribe_aborts(self, callback: Callable[[K, T | None], None]) -> Callable[[], None]:
        """Call ``callback(key, task)`` for every aborted node (``task`` is ``None`` if it has
        none); returns an unsubscribe function."""
        self._abort_listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._abort_listeners:
                self._abort_listeners.remove(callback)

        return unsubscribe

    def queued_time(self, key: K) -> float | None:
        """When ``key``'s node last became ready (trio clock), if it is ready or running."""
        return self._ready_at.get(key)

    # -- time ----------------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """When the earliest node waiting for a retry becomes ready, or ``None``."""
        return self.graph.next_due()

    def _release_due(self) -> None:
        due = self.graph.next_due()
        if due is not None:
            now = _now()
            if now is not None and due <= now:
                self.graph.release_due(now)

    # -- graph events ----------------------------------------------------------------------------

    def _on_ready(self, key: K) -> None:
        self._ready_at[key] = _now()
        self._queue_ready(key)
        self._notify()

    def _on_settled(self, key: K) -> None:
        self._ready_at.pop(key, None)
        if self.graph.is_done:
            self._notify()  # the source is exhausted: wake whoever waits on it

    def _on_abort(self, key: K) -> None:
        self._ready_at.pop(key, None)
        task = self._tasks.get(key)
        for callback in tuple(self._abort_listeners):
            callback(key, task)
        if self.graph.is_done:
            self._notify()

    # -- the ready queue (FIFO here; priority in the subclass) -----------------------------------

    def _queue_ready(self, key: K) -> None:
        self._fifo.append(key)

    def _head_key(self) -> K | Nothing:
        """The first ready key that has a task (ready keys without one are passed over)."""
        fifo = self._fifo
        is_ready = self.graph.is_ready
        tasks = self._tasks
        while fifo:
            key = fifo[0]
            if is_ready(key):
                break
            fifo.popleft()  # started or aborted since it was queued
        else:
            return NOTHING
        if tasks.get(key) is not None:
            return key
        for key in itertools.islice(fifo, 1, None):  # the head waits for its task
            if tasks.get(key) is not None and is_ready(key):
                return key
        return NOTHING

    def _drop_head(self, key: K) -> None:
        fifo = self._fifo
        if fifo[0] == key:
            fifo.popleft()
        else:
            fifo.remove(key)  # served past ready keys that wait for their task

    # -- PeekableSource ----------------------------------------------------------------------------

    def peek(self) -> T | Nothing:
        """The next ready task without taking it, or ``NOTHING`` if none is available now."""
        # PeekableSource.peek and _peek in one step, a due retry looked for inline: runners
        # peek for every task they admit, and retries are rare.
        if self._receive_closed:
            raise trio.ClosedResourceError("this source was closed")
        if self._failure is not None:
            return NOTHING
        if self.graph.next_due() is not None:
            self._release_due()
        key = self._head_key()
        if key is NOTHING:
            return NOTHING
        return self._tasks[key]

    def _peek(self) -> T | Nothing:
        if self._failure is not None:
            return NOTHING
        self._release_due()
        key = self._head_key()
        if key is NOTHING:
            return NOTHING
        return self._tasks[key]

    def _take(self) -> T:
        key = self._head_key()
        assert key is not NOTHING
        self._drop_head(key)
        self.graph.start(key)
        return self._tasks[key]

    def _is_exhausted(self) -> bool:
        return self._failure is not None or self.graph.is_done

    @property
    def failure(self) -> BaseException | None:
        """The :class:`~sluiceway.MissingTaskError` that ended the source, if one did."""
        return self._failure

    def receive_nowait(self) -> T:
        """Take the next startable task now (see :class:`DependencySource` for a ready key that
        has no task: once nothing else can happen, this raises
        :class:`~sluiceway.MissingTaskError`)."""
        if not self._receive_closed and self._peek() is NOTHING:
            self._stalled()
        return super().receive_nowait()

    def _on_receive_closed(self) -> None:
        self._unsubscribe()

    async def wait(self) -> None:
        """Wait until a task is ready or the graph is done (retry times are honoured); a ready
        key that has no task while nothing else can happen ends the source (see the class)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self.exhausted and self._peek() is NOTHING and not self._stalled():
            due = self.next_due()
            with trio.move_on_at(math.inf if due is None else due):
                await self._receivers.park()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def __len__(self) -> int:
        return len(self.graph.ready)


class PriorityDependencySource(DependencySource[K, T]):
    """A :class:`DependencySource` that serves ready tasks by priority, with capped aging.

    ``priority(key, task)`` gives a ready task's base priority (higher first); it is evaluated
    when the task is first needed after its node became ready, so tasks may be supplied after
    their nodes. The effective priority ages from the moment the node became ready:
    ``priority + min(aging_rate * age, max_age_boost)`` (``aging_rate`` per second); ties go to
    the node that became ready first. A node that becomes ready again after a failed attempt ages
    from that moment.
    """

    def __init__(
        self,
        graph: DependencyGraph[K],
        tasks: Mapping[K, T] | None = None,
        *,
        priority: Callable[[K, T], float] | None = None,
        aging_rate: float = 0.0,
        max_age_boost: float = math.inf,
    ) -> None:
        if priority is not None and not callable(priority):
            raise TypeError(f"priority must be callable as priority(key, task), got {priority!r}")
        self._priority_fn = priority
        self._queue: PrioritySource[K] = PrioritySource(
            aging_rate=aging_rate, max_age_boost=max_age_boost
        )
        self._unranked: deque[K] = deque()
        super().__init__(graph, tasks)

    @property
    def queue_size(self) -> int:
        """Ready tasks waiting to be served."""
        return len(self.graph.ready)

    def peek_key(self) -> K | None:
        """The key :meth:`peek` would serve, or ``None``."""
        if self._peek() is NOTHING:
            return None
        key = self._head_key()
        return None if key is NOTHING else key

    def _queue_ready(self, key: K) -> None:
        self._unranked.append(key)

    def _rank_new(self) -> None:
        """Give every newly ready key that has its task a priority; the keys still waiting for
        their task stay unranked (they are not startable yet)."""
        unranked = self._unranked
        if not unranked:
            return
        waiting: deque[K] = deque()
        while unranked:
            key = unranked.popleft()
            if self.graph.get_state(key) is not NodeState.READY:
                continue
            task = self._tasks.get(key)
            if task is None:
                waiting.append(key)
                continue
            if self._priority_fn is None:
                base = 1.0
            else:
                # User code, run while a runner peeks (possibly inside another task's release):
                # an error ends this source with it instead of escaping there.
                try:
                    base = float(self._priority_fn(key, task))
                except Exception as exc:
                    exc.add_note(f"raised by the priority function for key {key!r}")
                    self._failure = exc
                    waiting.extend(unranked)
                    self._unranked = waiting
                    self._notify()
                    return
            ready_at = self._ready_at.get(key)
            self._queue._enqueue_at(key, base, ready_at if ready_at is not None else _now())
        self._unranked = waiting

    def _head_key(self) -> K | Nothing:
        self._rank_new()
        if self._failure is not None:
            return NOTHING
        queue = self._queue
        while True:
            key = queue._peek()
            if key is NOTHING:
                return NOTHING
            if self.graph.is_ready(key):
                return key
            queue._take()  # started or aborted since it was queued

    def _drop_head(self, key: K) -> None:
        self._queue._take()


def _missing_error(keys: list[Any]) -> MissingTaskError:
    if len(keys) == 1:
        what = f"key {keys[0]!r} is ready but has no task"
    else:
        what = "keys " + ", ".join(repr(key) for key in keys) + " are ready but have no task"
    return MissingTaskError(
        f"{what}, and nothing else can run; give a node its task with set_task() (or add it "
        "with add_task()) while other tasks of the run are still unfinished"
    )


def _now() -> float | None:
    """trio's clock, or ``None`` outside a run (a graph is often built before ``trio.run``)."""
    try:
        return trio.current_time()
    except RuntimeError:
        return None
