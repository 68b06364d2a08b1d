"""DependencyGraph: the state machine of a DAG of keyed work items.

A pure, synchronous data structure: no trio, no clock (retry times are floats the caller passes
in, normally ``trio.current_time()``). Sources and runners build on it: they subscribe to its
events to learn, with no polling and no gap, when a node becomes ready, completes or is aborted.

Every transition costs ``O(1)`` or ``O(degree)`` (``abort`` costs the size of the cascade, retry
release ``O(log n)`` per node); only :meth:`DependencyGraph.add_all` (its cycle check),
:meth:`~DependencyGraph.topological_sort` and :meth:`~DependencyGraph.has_cycle` look at more
than the nodes involved.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, KeysView, Mapping
from typing import Generic, TypeAlias, TypeVar

from .._errors import CycleError, DependencyError, InvalidTransitionError

K = TypeVar("K", bound=Hashable)


class NodeState(enum.Enum):
    """The state of one node of a :class:`DependencyGraph`.

    ::

        PENDING --(deps all COMPLETED)--> READY --start()--> RUNNING --complete()--> COMPLETED
                                           ^  ^                |  |
                                           |  +----fail()------+  | fail(retry_at=t)
                                           |                      v
                                           +--release_due(now>=t)-- FAILED

        PENDING, READY, RUNNING, FAILED --abort()--> ABORTED (and every transitive dependent)
    """

    #: Waiting for at least one dependency to complete.
    PENDING = "pending"
    #: Every dependency completed; may be started.
    READY = "ready"
    #: Started and not yet completed, failed or aborted.
    RUNNING = "running"
    #: Finished successfully (terminal).
    COMPLETED = "completed"
    #: Failed and waiting for its retry time; :meth:`DependencyGraph.release_due` makes it READY.
    FAILED = "failed"
    #: Aborted, directly or because a dependency was (terminal).
    ABORTED = "aborted"


_PENDING = NodeState.PENDING
_READY = NodeState.READY
_RUNNING = NodeState.RUNNING
_COMPLETED = NodeState.COMPLETED
_FAILED = NodeState.FAILED
_ABORTED = NodeState.ABORTED


class _Node(Generic[K]):
    __slots__ = ("dependencies", "dependents", "fail_seq", "key", "state", "waiting")

    def __init__(self, key: K, dependencies: list[K], state: NodeState, waiting: int) -> None:
        self.key = key
        self.dependencies = dependencies  # keys, in the order given, without repeats
        self.dependents: list[_Node[K]] = []  # in insertion order
        self.state = state
        self.waiting = waiting  # dependencies not COMPLETED (meaningful while PENDING)
        self.fail_seq = -1  # sequence number of the node's live retry-heap entry


class _Subscription:
    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = True


_Listeners: TypeAlias = tuple[tuple[_Subscription, Callable[[K], None]], ...]


class DependencyGraph(Generic[K]):
    """A DAG of work items, keyed by any hashable ``K``, and the state of each one.

    A node is added with the keys it depends on, which must already be in the graph (or, with
    :meth:`add_all`, be added in the same call), so the graph is always acyclic. It starts
    ``READY`` when all of its dependencies are ``COMPLETED``, ``ABORTED`` when one of them is
    ``ABORTED``, and ``PENDING`` otherwise; it then moves through the states of
    :class:`NodeState` by :meth:`start`, :meth:`complete`, :meth:`fail`, :meth:`release_due` and
    :meth:`abort`. Nodes may be added at any time, also after the graph is done.

    **Events.** :meth:`subscribe` registers listeners (any number) for nodes becoming ready,
    completing and being aborted. They are called synchronously, before the graph method that
    caused the event returns, and only after that method has fully applied its state change.
    Events are delivered in the order the transitions happened, each to every listener in
    subscription order. A listener may call back into the graph: its calls take effect at once
    (their state is visible as soon as they return), and the events they cause are queued behind
    the events already waiting, so every listener sees one history in order. Those queued events
    are delivered by the outermost graph call before it returns (so a call made by a listener
    returns before its own events are delivered), and errors raised by listeners propagate from
    that outermost call.

    **Listener errors** never interrupt a transition: every listener is called for every event,
    then the one exception raised is re-raised, or an :class:`ExceptionGroup` of all of them when
    several listeners raised. A ``KeyboardInterrupt`` or other non-``Exception`` raised by a
    listener propagates at once (in a :class:`BaseExceptionGroup` with the listener errors
    collected before it, if any) and drops the events not yet delivered; the state is applied.

    **Queries.** :attr:`ready`, :attr:`running`, :attr:`completed`, :attr:`failed`,
    :attr:`pending` and :attr:`aborted` are live, read-only, insertion-ordered views
    (:class:`~collections.abc.KeysView`) of the keys in each state: ``O(1)`` to get, set-like
    (``in``, ``len``, ``&``, ``|``). Like any dict view they raise ``RuntimeError`` if the graph
    changes while one is being iterated; iterate over ``list(graph.ready)`` to change the graph as
    you go.
    """

    __slots__ = (
        "_aborted",
        "_completed",
        "_delivering",
        "_events",
        "_fail_seq",
        "_failed",
        "_nodes",
        "_on_abort",
        "_on_complete",
        "_on_ready",
        "_pending",
        "_ready",
        "_retry_heap",
        "_running",
        "_sets",
    )

    def __init__(self) -> None:
        """Create an empty graph (which is done)."""
        self._nodes: dict[K, _Node[K]] = {}
        # OrderedDict (a linked list) keeps "first ready key" O(1) under constant churn, where a
        # plain dict would scan the holes its deletions leave at the front.
        self._pending: OrderedDict[K, None] = OrderedDict()
        self._ready: OrderedDict[K, None] = OrderedDict()
        self._running: OrderedDict[K, None] = OrderedDict()
        self._completed: OrderedDict[K, None] = OrderedDict()
        self._failed: OrderedDict[K, None] = OrderedDict()
        self._aborted: OrderedDict[K, None] = OrderedDict()
        self._sets: dict[NodeState, OrderedDict[K, None]] = {
            _PENDING: self._pending,
            _READY: self._ready,
            _RUNNING: self._running,
            _COMPLETED: self._completed,
            _FAILED: self._failed,
            _ABORTED: self._aborted,
        }
        # (retry_at, fail_seq, node); entries of nodes aborted while FAILED are dropped lazily.
        self._retry_heap: list[tuple[float, int, _Node[K]]] = []
        self._fail_seq = 0
        self._on_ready: _Listeners[K] = ()
        self._on_complete: _Listeners[K] = ()
        self._on_abort: _Listeners[K] = ()
        self._events: deque[tuple[_Listeners[K], K]] = deque()
        self._delivering = False

    # -- building -----------------------------------------------------------------------------

    def add_node(self, key: K, dependencies: Iterable[K] = ()) -> NodeState:
        """Add one node that depends on nodes already in the graph.

        The node starts ``READY`` (and ``on_ready`` fires before this returns) when every
        dependency is ``COMPLETED`` or there are none, ``ABORTED`` (and ``on_abort`` fires) when a
        dependency is ``ABORTED``, and ``PENDING`` otherwise. A key repeated in ``dependencies``
        counts once.

        Args:
            key: The new node's key.
            dependencies: Keys of the nodes it depends on, all already in the graph. Not a
                ``str`` or ``bytes`` (wrap a single key in a list).

        Returns:
            The state the node was given on insertion (a listener may already have moved it on).

        Raises:
            DependencyError: ``key`` is already in the graph, or a dependency is not.
            CycleError: The node depends on itself.
            TypeError: ``dependencies`` is a string.
        """
        if key in self._nodes:
            raise DependencyError(f"duplicate key: {key!r} is already in the graph")
        deps = self._dependency_list(key, dependencies)
        for dep in deps:
            if dep not in self._nodes:
                raise DependencyError(f"{key!r} depends on unknown key {dep!r}")
        state = self._insert(key, deps)
        self._flush()
        return state

    def add_all(self, nodes: Mapping[K, Iterable[K]]) -> dict[K, NodeState]:
        """Add several nodes at once, in any order; all of them or none.

        A dependency may be a node already in the graph or another node of ``nodes``, defined
        before or after it in the mapping. Everything is checked before anything changes: on an
        error the graph is left exactly as it was and no event fires. The nodes are then inserted
        in a topological order that follows the mapping's order as far as the dependencies allow
        (at each step, the earliest node in the mapping whose dependencies are all in the graph),
        and each gets its initial state and event as with :meth:`add_node`. Events fire after all
        the nodes are inserted, in insertion order.

        Args:
            nodes: Each new key mapped to the keys it depends on.

        Returns:
            The state each node was given on insertion, in the mapping's order.

        Raises:
            DependencyError: A key is already in the graph, or a dependency is neither in the
                graph nor in ``nodes``.
            CycleError: The new nodes contain a cycle; its ``cycle`` lists one, each key
                depending on the next (``['a', 'b', 'a']``: ``a`` depends on ``b`` and ``b`` on
                ``a``).
            TypeError: A dependency list is a string.
        """
        specs: dict[K, list[K]] = {}
        for key, dependencies in nodes.items():
            if key in self._nodes:
                raise DependencyError(f"duplicate key: {key!r} is already in the graph")
            specs[key] = self._dependency_list(key, dependencies)
        for key, deps in specs.items():
            for dep in deps:
                if dep not in specs and dep not in self._nodes:
                    raise DependencyError(f"{key!r} depends on unknown key {dep!r}")
        order = _stable_topological_order(specs)
        states = {key: self._insert(key, specs[key]) for key in order}
        self._flush()
        return {key: states[key] for key in specs}

    @staticmethod
    def _dependency_list(key: K, dependencies: Iterable[K]) -> list[K]:
        if isinstance(dependencies, str | bytes):
            raise TypeError(
                f"dependencies of {key!r} must be an iterable of keys, not a string "
                f"({dependencies!r}); wrap a single key in a list"
            )
        deps = list(dict.fromkeys(dependencies))
        if key in deps:
            raise CycleError(f"{key!r} depends on itself", [key, key])
        return deps

    def _insert(self, key: K, deps: list[K]) -> NodeState:
        """Insert a validated node whose dependencies are all in the graph; queue its event."""
        nodes = self._nodes
        dep_nodes = [nodes[dep] for dep in deps]
        waiting = 0
        state = _READY
        for dep in dep_nodes:
            if dep.state is _ABORTED:
                state = _ABORTED
            elif dep.state is not _COMPLETED:
                waiting += 1
        if state is _READY and waiting:
            state = _PENDING
        node = _Node(key, deps, state, waiting)
        nodes[key] = node
        for dep in dep_nodes:
            dep.dependents.append(node)
        self._sets[state][key] = None
        if state is _READY:
            self._queue(self._on_ready, key)
        elif state is _ABORTED:
            self._queue(self._on_abort, key)
        return state

    # -- transitions --------------------------------------------------------------------------

    def start(self, key: K) -> None:
        """Move a ``READY`` node to ``RUNNING``.

        Args:
            key: The node to start.

        Raises:
            InvalidTransitionError: The node is not ``READY``.
            DependencyError: ``key`` is not in the graph.
        """
        node = self._node(key)
        if node.state is not _READY:
            raise self._invalid(node, "start", "READY")
        del self._ready[key]
        self._running[key] = None
        node.state = _RUNNING

    def complete(self, key: K) -> list[K] | None:
        """Move a ``RUNNING`` node to ``COMPLETED`` and make ready the dependents it unblocks.

        Fires ``on_complete(key)``, then ``on_ready`` for each newly ready dependent.

        Args:
            key: The node that finished.

        Returns:
            The dependents that became ``READY``, in the order they did (the order they were
            added), or ``None`` if the node was ``ABORTED`` (for example while it was running):
            then nothing changes and no event fires.

        Raises:
            InvalidTransitionError: The node is neither ``RUNNING`` nor ``ABORTED``.
            DependencyError: ``key`` is not in the graph.
        """
        node = self._node(key)
        if node.state is not _RUNNING:
            if node.state is _ABORTED:
                return None
            raise self._invalid(node, "complete", "RUNNING")
        del self._running[key]
        self._completed[key] = None
        node.state = _COMPLETED
        self._queue(self._on_complete, key)
        newly_ready: list[K] = []
        pending, ready = self._pending, self._ready
        for dependent in node.dependents:
            # A dependent of a node that was not complete is PENDING or ABORTED.
            if dependent.state is _PENDING:
                dependent.waiting -= 1
                if not dependent.waiting:
                    dep_key = dependent.key
                    del pending[dep_key]
                    ready[dep_key] = None
                    dependent.state = _READY
                    newly_ready.append(dep_key)
        if newly_ready and self._on_ready:
            for dep_key in newly_ready:
                self._queue(self._on_ready, dep_key)
        self._flush()
        return newly_ready

    def fail(self, key: K, *, retry_at: float | None = None) -> bool:
        """Send a ``RUNNING`` node back to be retried, now or from ``retry_at`` on.

        With ``retry_at=None`` the node is ``READY`` again at once and ``on_ready(key)`` fires.
        Otherwise it is ``FAILED`` until :meth:`release_due` is called with a time at or after
        ``retry_at`` (even if that time has already passed), so a retry back-off holds no
        capacity; no event fires until then.

        Args:
            key: The node whose run failed.
            retry_at: When the node may run again, on the caller's clock (normally
                ``trio.current_time()``); ``None`` for right away.

        Returns:
            ``True``, or ``False`` if the node was ``ABORTED`` (for example while it was
            running): then nothing changes and no event fires.

        Raises:
            InvalidTransitionError: The node is neither ``RUNNING`` nor ``ABORTED``.
            DependencyError: ``key`` is not in the graph.
            ValueError: ``retry_at`` is NaN.
            TypeError: ``retry_at`` is not a number.
        """
        node = self._node(key)
        if retry_at is not None:
            if isinstance(retry_at, bool) or not isinstance(retry_at, int | float):
                raise TypeError(f"retry_at must be a number or None, got {retry_at!r}")
            if math.isnan(retry_at):
                raise ValueError("retry_at must not be NaN")
        if node.state is not _RUNNING:
            if node.state is _ABORTED:
                return False
            raise self._invalid(node, "fail", "RUNNING")
        del self._running[key]
        if retry_at is None:
            self._ready[key] = None
            node.state = _READY
            self._queue(self._on_ready, key)
            self._flush()
        else:
            self._failed[key] = None
            node.state = _FAILED
            self._fail_seq += 1
            node.fail_seq = self._fail_seq
            heapq.heappush(self._retry_heap, (float(retry_at), self._fail_seq, node))
        return True

    def release_due(self, now: float) -> list[K]:
        """Make ``READY`` every ``FAILED`` node whose retry time is at or before ``now``.

        Fires ``on_ready`` for each, in the order returned.

        Args:
            now: The current time, on the clock the ``retry_at`` times were given on.

        Returns:
            The released keys, by retry time, ties in the order the nodes failed.

        Raises:
            ValueError: ``now`` is NaN.
        """
        if math.isnan(now):
            raise ValueError("now must not be NaN")
        heap = self._retry_heap
        released: list[K] = []
        failed, ready = self._failed, self._ready
        while heap and heap[0][0] <= now:
            _, seq, node = heapq.heappop(heap)
            if node.state is not _FAILED or node.fail_seq != seq:
                continue  # aborted while it waited
            key = node.key
            del failed[key]
            ready[key] = None
            node.state = _READY
            released.append(key)
        if released and self._on_ready:
            for key in released:
                self._queue(self._on_ready, key)
        self._flush()
        return released

    def next_due(self) -> float | None:
        """The earliest retry time among ``FAILED`` nodes, or ``None`` if there are none."""
        heap = self._retry_heap
        while heap:
            retry_at, seq, node = heap[0]
            if node.state is _FAILED and node.fail_seq == seq:
                return retry_at
            heapq.heappop(heap)
        return None

    def abort(self, key: K) -> list[K]:
        """Abort a node and, breadth-first, every node that transitively depends on it.

        Works on ``PENDING``, ``READY``, ``RUNNING`` and ``FAILED`` nodes. ``COMPLETED`` and
        already ``ABORTED`` nodes are skipped: aborting one returns ``[]`` and changes nothing.
        Fires ``on_abort`` for each aborted key, in the order returned. Aborting a ``RUNNING``
        node does not stop its work (the graph runs nothing); its later :meth:`complete` or
        :meth:`fail` is a no-op that reports so.

        Args:
            key: The node to abort.

        Returns:
            The keys aborted, ``key`` first, then in breadth-first order over dependents.

        Raises:
            DependencyError: ``key`` is not in the graph.
        """
        root = self._node(key)
        if root.state is _COMPLETED or root.state is _ABORTED:
            return []
        sets, aborted_set = self._sets, self._aborted
        cascade = [root]
        del sets[root.state][key]
        aborted_set[key] = None
        root.state = _ABORTED
        index = 0
        while index < len(cascade):
            node = cascade[index]
            index += 1
            for dependent in node.dependents:
                # Dependents of an ABORTED node are already ABORTED; none can be COMPLETED.
                if dependent.state is not _ABORTED:
                    del sets[dependent.state][dependent.key]
                    aborted_set[dependent.key] = None
                    dependent.state = _ABORTED
                    cascade.append(dependent)
        keys = [node.key for node in cascade]
        if self._on_abort:
            for aborted_key in keys:
                self._queue(self._on_abort, aborted_key)
        self._compact_retry_heap()
        self._flush()
        return keys

    # -- events -------------------------------------------------------------------------------

    def subscribe(
        self,
        *,
        on_ready: Callable[[K], None] | None = None,
        on_complete: Callable[[K], None] | None = None,
        on_abort: Callable[[K], None] | None = None,
    ) -> Callable[[], None]:
        """Register listeners for nodes becoming ready, completing and being aborted.

        Each callback receives the node's key. See the class documentation for when and in
        which order they are called. A listener receives the events of transitions made while
        it is subscribed; after ``unsubscribe()`` returns it is never called again, even for
        events already queued.

        Args:
            on_ready: Called when a node becomes ``READY`` (added ready, unblocked by a
                completion, failed without delay, released after its retry time).
            on_complete: Called when a node becomes ``COMPLETED``.
            on_abort: Called for every node aborted, directly, by a cascade, or on insertion
                because a dependency was aborted.

        Returns:
            A function that removes these listeners; calling it again does nothing.

        Raises:
            TypeError: No callback was given, or one is not callable.
        """
        callbacks = {"on_ready": on_ready, "on_complete": on_complete, "on_abort": on_abort}
        if all(callback is None for callback in callbacks.values()):
            raise TypeError("subscribe() needs at least one of on_ready, on_complete, on_abort")
        for name, callback in callbacks.items():
            if callback is not None and not callable(callback):
                raise TypeError(f"{name} must be callable, got {callback!r}")
        subscription = _Subscription()
        if on_ready is not None:
            self._on_ready = (*self._on_ready, (subscription, on_ready))
        if on_complete is not None:
            self._on_complete = (*self._on_complete, (subscription, on_complete))
        if on_abort is not None:
            self._on_abort = (*self._on_abort, (subscription, on_abort))

        def unsubscribe() -> None:
            if not subscription.active:
                return
            subscription.active = False
            self._on_ready = tuple(e for e in self._on_ready if e[0] is not subscription)
            self._on_complete = tuple(e for e in self._on_complete if e[0] is not subscription)
            self._on_abort = tuple(e for e in self._on_abort if e[0] is not subscription)

        return unsubscribe

    def _queue(self, listeners: _Listeners[K], key: K) -> None:
        if listeners:
            self._events.append((listeners, key))

    def _flush(self) -> None:
        """Deliver queued events, unless an outer call is already delivering them."""
        if self._delivering or not self._events:
            return
        self._delivering = True
        events = self._events
        errors: list[Exception] = []
        try:
            while events:
                listeners, key = events.popleft()
                for subscription, callback in listeners:
                    if subscription.active:
                        try:
                            callback(key)
                        except Exception as exc:
                            errors.append(exc)
        except BaseException as exc:
            events.clear()
            if errors:
                raise BaseExceptionGroup(
                    "DependencyGraph listeners raised", [*errors, exc]
                ) from None
            raise
        finally:
            self._delivering = False
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup("DependencyGraph listeners raised", errors)

    # -- queries ------------------------------------------------------------------------------

    @property
    def ready(self) -> KeysView[K]:
        """Live view of the ``READY`` keys, in the order they became ready."""
        return self._ready.keys()

    @property
    def running(self) -> KeysView[K]:
        """Live view of the ``RUNNING`` keys, in the order they were started."""
        return self._running.keys()

    @property
    def completed(self) -> KeysView[K]:
        """Live view of the ``COMPLETED`` keys, in the order they completed."""
        return self._completed.keys()

    @property
    def aborted(self) -> KeysView[K]:
        """Live view of the ``ABORTED`` keys, in the order they were aborted."""
        return self._aborted.keys()

    @property
    def pending(self) -> KeysView[K]:
        """Live view of the ``PENDING`` keys, in the order they were added."""
        return self._pending.keys()

    @property
    def failed(self) -> KeysView[K]:
        """Live view of the ``FAILED`` keys (waiting for their retry time), in failure order."""
        return self._failed.keys()

    @property
    def is_done(self) -> bool:
        """Whether every node is ``COMPLETED`` or ``ABORTED`` (an empty graph is done)."""
        return len(self._completed) + len(self._aborted) == len(self._nodes)

    def get_state(self, key: K) -> NodeState:
        """The state of a node.

        Raises:
            DependencyError: ``key`` is not in the graph.
        """
        return self._node(key).state

    def is_ready(self, key: K) -> bool:
        """Whether ``key`` is a node in state ``READY`` (an unknown key is not; never raises)."""
        node = self._nodes.get(key)
        return node is not None and node.state is _READY

    def dependencies(self, key: K) -> list[K]:
        """The keys a node depends on, in the order given (a repeated key once), as a new list.

        Raises:
            DependencyError: ``key`` is not in the graph.
        """
        return list(self._node(key).dependencies)

    def dependents(self, key: K) -> list[K]:
        """The keys that depend directly on a node, in the order they were added (a new list).

        Raises:
            DependencyError: ``key`` is not in the graph.
        """
        return [node.key for node in self._node(key).dependents]

    def topological_sort(self) -> list[K]:
        """Every key, each after all of its dependencies, as a new list.

        This is the insertion order (the order :meth:`add_all` actually inserted its nodes, see
        there), which is always topological because a node's dependencies are inserted first. It
        is therefore deterministic and keeps insertion order among independent nodes.
        """
        return list(self._nodes)

    def has_cycle(self) -> bool:
        """Check the whole graph for a cycle with a depth-first search (``O(nodes + edges)``).

        Always ``False`` for a graph built through this API, which rejects cycles when nodes are
        added; kept for parity with the original.
        """
        done: set[K] = set()
        on_path: set[K] = set()
        nodes = self._nodes
        for root in nodes:
            if root in done:
                continue
            on_path.add(root)
            stack: list[tuple[K, Iterator[K]]] = [(root, iter(nodes[root].dependencies))]
            while stack:
                key, deps = stack[-1]
                for dep in deps:
                    if dep in on_path:
                        return True
                    if dep not in done:
                        on_path.add(dep)
                        stack.append((dep, iter(nodes[dep].dependencies)))
                        break
                else:
                    stack.pop()
                    on_path.discard(key)
                    done.add(key)
        return False

    def __len__(self) -> int:
        """The number of nodes."""
        return len(self._nodes)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is a node of the graph."""
        return key in self._nodes

    def __iter__(self) -> Iterator[K]:
        """The keys, in insertion order."""
        return iter(self._nodes)

    def __repr__(self) -> str:
        """A summary: the number of nodes in each state."""
        counts = ", ".join(
            f"{state.value}={len(keys)}" for state, keys in self._sets.items() if keys
        )
        return f"<DependencyGraph nodes={len(self._nodes)}{', ' if counts else ''}{counts}>"

    # -- helpers ------------------------------------------------------------------------------

    def _node(self, key: K) -> _Node[K]:
        try:
            return self._nodes[key]
        except KeyError:
            raise DependencyError(f"unknown key {key!r}: not in the graph") from None

    @staticmethod
    def _invalid(node: _Node[K], action: str, needed: str) -> InvalidTransitionError:
        return InvalidTransitionError(
            f"cannot {action} {node.key!r}: it is {node.state.name}, not {needed}"
        )

    def _compact_retry_heap(self) -> None:
        """Drop the heap entries of aborted nodes once they outnumber the live ones."""
        heap = self._retry_heap
        if len(heap) > 32 and len(heap) > 2 * len(self._failed):
            self._retry_heap = [
                entry
                for entry in heap
                if entry[2].state is _FAILED and entry[2].fail_seq == entry[1]
            ]
            heapq.heapify(self._retry_heap)


def _stable_topological_order(specs: dict[K, list[K]]) -> list[K]:
    """Order new nodes so each comes after its new dependencies, earliest in ``specs`` first.

    Dependencies outside ``specs`` are already in the graph and impose nothing.

    Raises:
        CycleError: The new nodes contain a cycle.
    """
    keys = list(specs)
    index = {key: i for i, key in enumerate(keys)}
    missing = [0] * len(keys)  # new dependencies not yet placed
    dependents: list[list[int]] = [[] for _ in keys]
    for i, key in enumerate(keys):
        for dep in specs[key]:
            j = index.get(dep)
            if j is not None:
                missing[i] += 1
                dependents[j].append(i)
    heap = [i for i, count in enumerate(missing) if not count]  # ascending: already a heap
    order: list[K] = []
    while heap:
        i = heapq.heappop(heap)
        order.append(keys[i])
        for j in dependents[i]:
            missing[j] -= 1
            if not missing[j]:
                heapq.heappush(heap, j)
    if len(order) == len(keys):
        return order
    # Every node left has a dependency left: follow them until one repeats.
    start = next(i for i, count in enumerate(missing) if count)
    path: list[int] = []
    seen: dict[int, int] = {}
    i = start
    while i not in seen:
        seen[i] = len(path)
        path.append(i)
        i = next(j for dep in specs[keys[i]] if (j := index.get(dep, -1)) >= 0 and missing[j])
    cycle: list[object] = [keys[j] for j in path[seen[i] :]]
    cycle.append(keys[i])
    raise CycleError("these nodes form a cycle: " + " -> ".join(repr(key) for key in cycle), cycle)
