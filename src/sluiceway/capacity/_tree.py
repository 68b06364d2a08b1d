"""The capacity-tree core shared by every capacity face.

A tree of :class:`Node` objects, each with limits on named resources. A request names a cost and the
node it is submitted at; it is granted only when the cost fits at that node *and every ancestor*,
and then it is taken at every level at once (atomic admission). Every release, limit change or new
request re-runs :func:`dispatch`, which grants waiting requests anywhere in the tree until nothing
more fits, so no wake-up can be lost and nobody polls.

Who is served next is decided recursively from the root by the rules in ``_selection.py``:
first-in first-out within a node (strict head of line, unless the node backfills), and max-min
fairness across the children of a node, whose own queue competes as one more child.

The requests themselves come in two kinds. A :class:`Waiter` is one task blocked in ``acquire`` for
one fixed cost. A :class:`Demand` is a runner's standing request: its cost is asked for at dispatch
time (the cost of the runner's next task, or ``None`` when it has nothing to start), and each grant
hands the runner one admitted task synchronously, so peek, check and take form one step with no
``await`` in between. After a grant, a demand goes to the back of its node's queue, so several
runners sharing one node take turns.

All of this is synchronous and never awaits, so it is safe to call from any trio context, including
``run_sync_soon`` callbacks (``trio.to_thread.run_sync`` releases its limiter from one).
"""

from __future__ import annotations

import abc
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Protocol

import outcome
import trio

from .._errors import ImpossibleCostError, OverReleaseError, UnknownResourceError
from .._metrics import CapacityEvent, CapacityEventKind, MetricsCollector, safe_record
from ._amounts import Amount, Vector, describe, public, public_vector
from ._selection import fits, select


class DemandOwner(Protocol):
    """What the owner of a standing request (a runner's run, through a
    :class:`~sluiceway.capacity.CapacityDemand`) implements. The tree calls these synchronously,
    from inside a dispatch: they must not await."""

    def demand_cost(self) -> Vector | None:
        """Cost of the next task to admit, or ``None`` when there is nothing to start now."""

    def demand_granted(self, cost: Vector) -> None:
        """``cost`` was taken at every level for the next task: take that task now (no await)."""

    def demand_impossible(self, cost: Vector, error: ImpossibleCostError) -> None:
        """The next task can never fit: drop it (and report ``error`` for it) synchronously."""


_labels = itertools.count(1)


def report(node: Node, kind: CapacityEventKind, amounts: Vector, reason: str | None = None) -> None:
    """Send a capacity event about ``node`` to its collector (callers check it has one).

    Events carry trio's clock; a change made outside a trio run (limits set at start-up) is
    not reported.
    """
    assert node.metrics is not None
    try:
        at = trio.current_time()
    except RuntimeError:
        return
    safe_record(
        node.metrics,
        CapacityEvent(
            kind=kind,
            node=node.label,
            at=at,
            amounts=public_vector(amounts),
            limits=public_vector(node.limits),
            in_use={key: public(value) for key, value in node.held.items() if value},
            reason=reason,
        ),
    )


class Tree:
    """State shared by all the nodes below one root."""

    __slots__ = ("again", "dispatching", "limits_version", "overuse_version", "root", "seq")

    def __init__(self, root: Node) -> None:
        self.root = root
        self.seq = 0
        self.dispatching = False
        self.again = False
        self.limits_version = 0  # bumped whenever some node's limits change
        # Bumped whenever a level may have come to use more than a limit: a limit changed, or
        # a reconcile added to what is held (grants only ever fit).
        self.overuse_version = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


class Request(abc.ABC):
    """A request queued at a node. ``seq`` orders it against every other request of the tree."""

    __slots__ = ("node", "seq", "validated")

    persistent = False

    def __init__(self, node: Node, *, validated: bool) -> None:
        self.node = node
        self.validated = validated
        self.seq = 0

    @abc.abstractmethod
    def current_cost(self) -> Vector | None:
        """The cost to admit next, or ``None`` when this request wants nothing right now."""

    @abc.abstractmethod
    def on_grant(self, cost: Vector) -> None:
        """``cost`` was taken at every level for this request."""

    @abc.abstractmethod
    def on_impossible(self, cost: Vector, error: ImpossibleCostError) -> None:
        """``cost`` can never fit under the current limits."""


class Waiter(Request):
    """One acquisition of one fixed cost, by a task that is (or may be) blocked.

    ``when_granted`` (optional) is called synchronously at the grant, before the task is
    rescheduled, so the owner's bookkeeping (a limiter's borrowers) is right at once, as in trio.
    """

    __slots__ = ("cost", "granted", "task", "when_granted")

    def __init__(
        self,
        node: Node,
        cost: Vector,
        task: trio.lowlevel.Task | None,
        *,
        validated: bool,
        when_granted: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(node, validated=validated)
        self.cost = cost
        self.task = task
        self.granted = False
        self.when_granted = when_granted

    def current_cost(self) -> Vector:
        return self.cost

    def on_grant(self, cost: Vector) -> None:
        self.granted = True
        if self.when_granted is not None:
            self.when_granted()
        if self.task is not None:
            trio.lowlevel.reschedule(self.task)

    def on_impossible(self, cost: Vector, error: ImpossibleCostError) -> None:
        dequeue(self)
        if self.task is not None:
            trio.lowlevel.reschedule(self.task, outcome.Error(error))


class Demand(Request):
    """A runner's standing request; see the module docstring."""

    __slots__ = ("owner",)

    persistent = True

    def __init__(self, node: Node, owner: DemandOwner, *, validated: bool) -> None:
        super().__init__(node, validated=validated)
        self.owner = owner

    def current_cost(self) -> Vector | None:
        return self.owner.demand_cost()

    def on_grant(self, cost: Vector) -> None:
        self.owner.demand_granted(cost)

    def on_impossible(self, cost: Vector, error: ImpossibleCostError) -> None:
        self.owner.demand_impossible(cost, error)


class Node:
    """One level of a capacity tree.

    ``held`` is exact: the sum of every cost granted in this node's subtree and not yet released,
    for every resource that passed through, limited here or not. ``usage`` is what counts
    against ``limits``: ``held`` itself for an ordinary node; for a quota node, ``consumed``,
    which a release does not lower (only a reset or refill does).
    """

    __slots__ = (
        "_tracked",
        "_tracked_version",
        "active_children",
        "backfill",
        "chain",
        "consumed",
        "face",
        "granted_count",
        "held",
        "label",
        "limits",
        "metrics",
        "own_held",
        "parent",
        "queue",
        "quota",
        "quota_in_chain",
        "released_count",
        "tree",
        "usage",
        "waiting",
    )

    def __init__(
        self,
        limits: Vector,
        parent: Node | None = None,
        *,
        quota: bool = False,
        backfill: bool = False,
        face: object = None,
        label: str | None = None,
        metrics: MetricsCollector | None = None,
    ) -> None:
        self.limits: Vector = dict(limits)
        self.label = label if label is not None else f"node-{next(_labels)}"
        # A node reports to its own collector, else to its nearest ancestor's.
        self.metrics: MetricsCollector | None = (
            metrics if metrics is not None else (parent.metrics if parent is not None else None)
        )
        self.parent = parent
        self.quota = quota
        self.backfill = backfill
        self.face = face
        self.held: Vector = {}
        self.consumed: Vector = {}
        self.usage: Vector = self.consumed if quota else self.held
        self.own_held: Vector = {}
        self.queue: OrderedDict[Request, None] = OrderedDict()
        self.waiting = 0
        self.active_children: dict[Node, None] = {}
        self.granted_count = 0
        self.released_count = 0
        if parent is None:
            self.tree = Tree(self)
            self.chain: tuple[Node, ...] = (self,)
        else:
            self.tree = parent.tree
            self.chain = (self, *parent.chain)
        self.quota_in_chain = any(level.quota for level in self.chain)
        self._tracked: frozenset[str] = frozenset()
        self._tracked_version = -1

    # -- queries ---------------------------------------------------------------------------

    def tracks(self, resource: str) -> bool:
        """Whether some level of this node's chain limits ``resource``."""
        return resource in self.tracked()

    def tracked(self) -> frozenset[str]:
        """Every resource some level of this node's chain limits (cached per limits version)."""
        version = self.tree.limits_version
        if self._tracked_version != version:
            self._tracked = frozenset(key for level in self.chain for key in level.limits)
            self._tracked_version = version
        return self._tracked

    def available(self, resource: str) -> Amount:
        """``limit - usage`` at this node alone (may be negative after a limit was lowered)."""
        limit = self.limits.get(resource, math.inf)
        return limit - self.usage.get(resource, 0)

    def iter_subtree_requests(self) -> Iterator[Request]:
        """Every request queued in this subtree (children found through ``active_children``)."""
        yield from list(self.queue)
        for child in list(self.active_children):
            yield from child.iter_subtree_requests()

    # -- validation ------------------------------------------------------------------------

    def check_known(self, cost: Vector, *, what: str = "cost") -> None:
        """Raise :class:`UnknownResourceError` for a key no level of the chain tracks."""
        tracked_now = self.tracked()
        if cost.keys() <= tracked_now:
            return
        for resource in cost:
            if resource not in tracked_now:
                tracked = sorted(tracked_now)
                raise UnknownResourceError(
                    f"{what} {describe(cost)} names resource {resource!r}, which no level of this "
                    f"capacity chain tracks (tracked: {tracked}); an untracked resource would be "
                    "unlimited, so it is refused"
                )

    def impossible(self, cost: Vector) -> ImpossibleCostError | None:
        """The error to raise if ``cost`` can never fit under the current limits, else ``None``."""
        for depth, level in enumerate(self.chain):
            for resource, needed in cost.items():
                limit = level.limits.get(resource)
                if limit is not None and needed > limit:
                    where = "this node" if depth == 0 else f"the ancestor {depth} level(s) up"
                    return ImpossibleCostError(
                        f"cost {describe(cost)} can never fit: {resource!r} needs "
                        f"{public(needed)} but {where} is limited to {public(limit)} "
                        f"(limits along the chain: "
                        f"{[describe(lvl.limits) for lvl in self.chain]})"
                    )
        return None

    def fits_chain(self, cost: Vector) -> bool:
        """Whether ``cost`` fits right now at this node and every ancestor."""
        for level in self.chain:  # noqa: SIM110 - no generator per grant, unlike all()
            if not fits(level, cost):
                return False
        return True


# -- queue bookkeeping ---------------------------------------------------------------------


def enqueue(request: Request) -> None:
    node = request.node
    request.seq = node.tree.next_seq()
    node.queue[request] = None
    for level in node.chain:
        level.waiting += 1
        if level.waiting == 1 and level.parent is not None:
            level.parent.active_children[level] = None


def dequeue(request: Request) -> None:
    node = request.node
    if request not in node.queue:
        return
    del node.queue[request]
    for level in node.chain:
        level.waiting -= 1
        if level.waiting == 0 and level.parent is not None:
            del level.parent.active_children[level]


# -- accounting ------------------------------------------------------------------------------


def take(node: Node, cost: Vector) -> None:
    """Record ``cost`` as granted at ``node`` and every ancestor."""
    for level in node.chain:
        held = level.held
        for resource, value in cost.items():
            held[resource] = held.get(resource, 0) + value
        if level.quota:
            consumed = level.consumed
            for resource, value in cost.items():
                consumed[resource] = consumed.get(resource, 0) + value
    own = node.own_held
    for resource, value in cost.items():
        own[resource] = own.get(resource, 0) + value
    node.granted_count += 1
    if node.metrics is not None:
        report(node, "accepted", cost)


def give_back(node: Node, cost: Vector, *, refund: bool = False, redispatch: bool = True) -> None:
    """Return ``cost`` at ``node`` and every ancestor, then re-dispatch the tree.

    Quota levels keep it consumed (only a reset or refill restores quota), unless ``refund``
    (see :func:`refund`). Raises :class:`OverReleaseError`, changing nothing, when more is
    released than this node holds. ``redispatch=False`` skips the dispatch; only for a caller
    that knows nobody could be granted anything (see the runner's release).
    """
    own = node.own_held
    for resource, value in cost.items():
        if own.get(resource, 0) < value:
            raise OverReleaseError(
                f"release of {describe(cost)} exceeds what is held at this node "
                f"({describe(own)}): {resource!r} would go negative"
            )
    for resource, value in cost.items():
        own[resource] -= value
    for level in node.chain:
        held = level.held
        for resource, value in cost.items():
            held[resource] -= value
        if refund and level.quota:
            consumed = level.consumed
            for resource, value in cost.items():
                consumed[resource] = max(consumed.get(resource, 0) - value, 0)
    node.released_count += 1
    if node.metrics is not None:
        report(node, "refunded" if refund else "released", cost)
    if redispatch and node.tree.root.waiting:
        dispatch(node.tree)


def refund(node: Node, cost: Vector) -> None:
    """Undo a grant that never became work (a task that was never started).

    Like :func:`give_back`, but quota levels get their quota back too, since nothing ran: a run
    that learns its lazy source has ended, or leaves before starting a granted task, must not use
    up a rate limit for it.
    """
    give_back(node, cost, refund=True)


def adjust(node: Node, delta: Vector) -> None:
    """Add a signed ``delta`` to what ``node`` holds (``reconcile``). Checked before any change."""
    own = node.own_held
    for resource, value in delta.items():
        if own.get(resource, 0) + value < 0:
            raise OverReleaseError(
                f"reconcile would make {resource!r} held at this node negative "
                f"({public(own.get(resource, 0))} held, change {public(value)})"
            )
    for resource, value in delta.items():
        own[resource] = own.get(resource, 0) + value
    node.tree.overuse_version += 1
    for level in node.chain:
        held = level.held
        for resource, value in delta.items():
            held[resource] = held.get(resource, 0) + value
        if level.quota:
            consumed = level.consumed
            for resource, value in delta.items():
                consumed[resource] = max(consumed.get(resource, 0) + value, 0)
    if node.metrics is not None:
        more = {resource: value for resource, value in delta.items() if value > 0}
        less = {resource: -value for resource, value in delta.items() if value < 0}
        if more:
            report(node, "accepted", more)
        if less:
            report(node, "released", less)
    if node.tree.root.waiting:
        dispatch(node.tree)


# -- admission ---------------------------------------------------------------------------


def grant(request: Request, cost: Vector) -> None:
    """Take ``cost`` for ``request`` at every level and notify it."""
    node = request.node
    take(node, cost)
    if request.persistent:
        request.seq = node.tree.next_seq()
        node.queue.move_to_end(request)
    else:
        dequeue(request)
    request.on_grant(cost)


def dispatch(tree: Tree) -> None:
    """Grant waiting requests anywhere in the tree until nothing more fits.

    Re-entrant calls (a grant callback that releases or changes limits) are folded into the
    running pass, which then goes round once more.
    """
    if tree.dispatching:
        tree.again = True
        return
    tree.dispatching = True
    try:
        while True:
            tree.again = False
            root = tree.root
            if root.waiting == 1 and _serve_sole_request(tree):
                if not tree.again:
                    return
                continue
            while root.waiting:
                found = select(root)
                if found is None:
                    break
                grant(*found)
            if not tree.again:
                return
    finally:
        tree.dispatching = False


def _serve_sole_request(tree: Tree) -> bool:
    """Dispatch when exactly one request waits in the whole tree (the common case of a run).

    With one request there is nothing for the fairness rules to decide: grant it while its next
    cost fits along its chain. Returns ``True`` when that settled the dispatch: the request is
    still the only one and wants nothing now, or its next cost does not fit (the general loop
    would find the same, at the price of a fairness pass over the tree). Returns ``False`` when
    the general loop must decide (another request appeared, or the sole one was withdrawn).
    """
    root = tree.root
    node = root
    while not node.queue:
        node = next(iter(node.active_children))
    request = next(iter(node.queue))
    while root.waiting == 1:
        cost = request.current_cost()
        if cost is None:
            return root.waiting == 1 and request in node.queue
        if not node.fits_chain(cost):
            if request.validated:
                error = node.impossible(cost)
                if error is not None:
                    request.on_impossible(cost, error)
                    if request in node.queue:
                        continue  # a demand dropped that task; look at its next one
                    return False
            return root.waiting == 1 and request in node.queue
        grant(request, cost)
        if not request.persistent:
            return False
    return False


def chain_within_limits(node: Node) -> bool:
    """Whether no level of ``node``'s chain uses more than a limit of any resource (a lowered
    limit keeps its debt until it is paid back)."""
    for level in node.chain:
        usage = level.usage
        for resource, limit in level.limits.items():
            if usage.get(resource, 0) > limit:
                return False
    return True


def try_now(node: Node, cost: Vector, *, validated: bool) -> bool:
    """Grant ``cost`` at once if the fair dispatcher would grant it now; never waits.

    With nobody waiting in the tree this is a plain fit check. Otherwise the request is queued, the
    tree dispatched, and the request withdrawn again if it was not chosen, so a newcomer never
    overtakes a waiter that the fairness rule would serve first.
    """
    tree = node.tree
    if not tree.root.waiting:
        if node.fits_chain(cost):
            take(node, cost)
            return True
        return False
    waiter = Waiter(node, cost, None, validated=validated)
    enqueue(waiter)
    dispatch(tree)
    if waiter.granted:
        return True
    dequeue(waiter)
    dispatch(tree)  # its presence may have held back others under the head-of-line rule
    return False


async def acquire(
    node: Node,
    cost: Vector,
    *,
    validated: bool,
    when_granted: Callable[[], None] | None = None,
) -> None:
    """Wait until ``cost`` is granted at ``node`` and every ancestor.

    Always checkpoints. A cancelled waiter holds nothing: it is removed before ``Cancelled``
    propagates, and its removal re-dispatches the tree. ``when_granted()`` (optional) runs
    synchronously in the step that grants the cost (before this task wakes up).
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    if try_now(node, cost, validated=validated):
        if when_granted is not None:
            when_granted()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return
    waiter = Waiter(
        node, cost, trio.lowlevel.current_task(), validated=validated, when_granted=when_granted
    )
    enqueue(waiter)

    def abort(_: Callable[[], object]) -> trio.lowlevel.Abort:
        dequeue(waiter)
        dispatch(node.tree)
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)


def fail_impossible_waiters(node: Node) -> None:
    """After limits were lowered: fail every validated waiter below ``node`` that can never fit."""
    for request in list(node.iter_subtree_requests()):
        if request.validated and not request.persistent:
            cost = request.current_cost()
            if cost is not None:
                error = request.node.impossible(cost)
                if error is not None:
                    request.on_impossible(cost, error)


def set_limits(node: Node, limits: Vector) -> None:
    """Update (and possibly add) limits at ``node``; never revokes what is held."""
    lowered = any(value < node.limits.get(key, math.inf) for key, value in limits.items())
    update_limits(node, limits)
    if node.metrics is not None:
        report(node, "limits_changed", limits)
    if lowered:
        fail_impossible_waiters(node)
    if node.tree.root.waiting:
        dispatch(node.tree)


def update_limits(node: Node, limits: Vector) -> None:
    """Write new limits at ``node`` (the one place limits change, so caches stay right)."""
    node.limits.update(limits)
    node.tree.limits_version += 1
    node.tree.overuse_version += 1


def open_demand(node: Node, owner: DemandOwner, *, validated: bool) -> Demand:
    """Queue a runner's standing request at ``node`` and dispatch (it may be granted at once)."""
    demand = Demand(node, owner, validated=validated)
    enqueue(demand)
    try:
        dispatch(node.tree)
    except BaseException:
        # The owner never got the demand (a grant callback raised): withdraw it, or it would
        # stay queued for good, holding back the requests behind it.
        dequeue(demand)
        raise
    return demand


def close_demand(demand: Demand) -> None:
    """Withdraw a standing request; its absence may unblock others, so the tree is dispatched."""
    if demand in demand.node.queue:
        dequeue(demand)
        if demand.node.tree.root.waiting:
            dispatch(demand.node.tree)
