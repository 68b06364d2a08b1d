"""The public faces of a capacity-tree node."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import attrs
import trio
from trio.lowlevel import enable_ki_protection

from .._errors import ImpossibleCostError, OverReleaseError
from .._metrics import MetricsCollector
from .._util import open_owned_nursery, type_name
from . import _tree
from ._amounts import Vector, amount, describe, public, public_vector, vector
from ._demand import CapacityDemand, DemandOwner

if TYPE_CHECKING:
    from typing import Self

CostLike = Mapping[str, float]
LimitsLike = Mapping[str, float]


@attrs.frozen
class CapacityStatistics:
    """A snapshot of one node of a capacity tree.

    ``in_use`` is exact: everything granted in this node's subtree and not yet released. For a
    quota node ``consumed`` (what counts against the limits in the current window) can differ from
    it; for every other node the two are equal. ``available`` is ``limit - consumed`` at this node
    alone and is negative while a lowered limit is still being paid back.
    """

    limits: dict[str, int | float]
    in_use: dict[str, int | float]
    consumed: dict[str, int | float]
    available: dict[str, int | float]
    utilization: dict[str, float]
    waiting: int
    waiting_in_subtree: int
    granted: int
    released: int


@attrs.frozen
class UnitCapacityStatistics:
    """Statistics of a :class:`CapacitySource`, with trio's ``CapacityLimiterStatistics`` fields.

    ``borrowed_tokens`` counts every unit held in this node's subtree (runner tasks and child
    nodes included); ``borrowers`` lists only the borrowers of the trio-limiter methods.
    """

    borrowed_tokens: int | float
    total_tokens: int | float
    borrowers: list[object]
    tasks_waiting: int
    waiting_in_subtree: int
    granted: int
    released: int


@attrs.frozen
class TryAcquireResult:
    """Outcome of :meth:`ResourceCapacitySource.try_acquire`; truthy exactly when it succeeded.

    The original documented both a ``boolean`` and a result object for ``tryAcquire``; this is
    both: ``if source.try_acquire(cost):`` works, and the fields explain a refusal.
    """

    ok: bool
    requested: dict[str, int | float]
    available: dict[str, int | float]
    reason: Literal["insufficient_capacity"] | None = None

    def __bool__(self) -> bool:
        return self.ok


class BaseCapacity:
    """What every capacity face shares: a node of a capacity tree and its read-only views."""

    _node: _tree.Node

    def __init__(self) -> None:  # pragma: no cover - subclasses build the node
        raise TypeError("BaseCapacity is abstract; use CapacitySource or ResourceCapacitySource")

    # Subclasses call this instead of __init__.
    def _attach(
        self,
        limits: Vector,
        parent: BaseCapacity | None,
        *,
        quota: bool,
        backfill: bool,
        name: str | None,
        metrics: MetricsCollector | None,
    ) -> None:
        if parent is not None and not isinstance(parent, BaseCapacity):
            raise TypeError(
                f"parent must be a CapacitySource, ResourceCapacitySource or QuotaCapacitySource, "
                f"got {parent!r} ({type_name(parent)})"
            )
        self._parent = parent
        self.name = name
        if metrics is not None and not callable(getattr(metrics, "record", None)):
            raise TypeError(f"metrics must have a record(event) method, got {metrics!r}")
        self._node = _tree.Node(
            limits,
            None if parent is None else parent._node,
            quota=quota,
            backfill=backfill,
            face=self,
            label=name,
            metrics=metrics,
        )

    @property
    def parent(self) -> BaseCapacity | None:
        """The parent node's face, or ``None`` for a root."""
        return self._parent

    @property
    def limits(self) -> dict[str, int | float]:
        """A copy of this node's limits."""
        return public_vector(self._node.limits)

    @property
    def in_use(self) -> dict[str, int | float]:
        """Everything held in this node's subtree, per resource (exact)."""
        return {key: public(value) for key, value in self._node.held.items() if value}

    @property
    def available(self) -> dict[str, int | float]:
        """``limit - consumed`` per limited resource at this node alone (may be negative)."""
        node = self._node
        return {key: public(node.available(key)) for key in node.limits}

    @property
    def utilization(self) -> dict[str, float]:
        """``consumed / limit`` per limited resource; ``0.0`` for a limit of 0 or infinity."""
        node = self._node
        out: dict[str, float] = {}
        for key, limit in node.limits.items():
            used = node.usage.get(key, 0)
            out[key] = 0.0 if limit in (0, math.inf) else float(used / limit)
        return out

    def capacity_statistics(self) -> CapacityStatistics:
        """A snapshot of this node; see :class:`CapacityStatistics`."""
        node = self._node
        return CapacityStatistics(
            limits=self.limits,
            in_use=self.in_use,
            consumed={key: public(value) for key, value in node.usage.items() if value},
            available=self.available,
            utilization=self.utilization,
            waiting=len(node.queue),
            waiting_in_subtree=node.waiting,
            granted=node.granted_count,
            released=node.released_count,
        )

    # -- for runners --------------------------------------------------------------------------
    # A runner holds capacity through a standing demand (see CapacityDemand); these are all it
    # needs from a node.

    #: Whether a request whose cost can never fit under the current limits fails at once rather
    #: than waiting for them to be raised (a unit node waits: ``total_tokens = 0`` pauses it, as
    #: trio's limiter does).
    _fails_impossible = False

    def checked_cost(self, cost: object) -> Vector:
        """``cost`` normalised (exact amounts, zero entries dropped) and checked against this
        node's chain: what a runner does with a cost when it is configured, before any task.

        Raises:
            TypeError, ValueError: a malformed cost, or one that uses no resource.
            UnknownResourceError: a resource that no level of the chain tracks.
            ImpossibleCostError: a cost that can never fit under the current limits.
        """
        return checked_cost(self, cost)

    def check_tracked(self, cost: Vector) -> None:
        """Raise :class:`~sluiceway.UnknownResourceError` if the normalised ``cost`` names a
        resource that no level of the chain tracks (cheap: the tracked set is cached)."""
        self._node.check_known(cost)

    def demand(self, owner: DemandOwner) -> CapacityDemand:
        """A standing request at this node for ``owner`` (closed until
        :meth:`CapacityDemand.open <sluiceway.capacity.CapacityDemand.open>`): how a runner
        admits its tasks; see :class:`~sluiceway.capacity.CapacityDemand`."""
        return CapacityDemand(self._node, owner, validated=self._fails_impossible)

    def _set_limits(self, limits: Vector) -> None:
        _tree.set_limits(self._node, limits)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        node = self._node
        return (
            f"<{type(self).__name__}{label} limits={describe(node.limits)} "
            f"in_use={describe(node.held)} waiting={len(node.queue)}>"
        )


def checked_cost(face: BaseCapacity, cost: object) -> Vector:
    """Normalise ``cost`` and refuse it if it is malformed, names an untracked resource, or can
    never fit under the current limits of ``face``'s chain."""
    normalised = vector(cost, what="cost", drop_zero=True)
    if not normalised:
        raise ValueError(
            f"cost {cost!r} uses no resource; a task that uses nothing would run unbounded"
        )
    face._node.check_known(normalised)
    error = face._node.impossible(normalised)
    if error is not None:
        raise error
    return normalised


def _tokens(value: object) -> int | float:
    # trio's exception types and messages, word for word (its tests match them).
    if isinstance(value, bool) or not (isinstance(value, int) or value == math.inf):
        raise TypeError("total_tokens must be an int or math.inf")
    assert isinstance(value, int | float)
    if value < 0:
        raise ValueError("total_tokens must be >= 0")
    return value


class CapacitySource(BaseCapacity):
    """A unit-cost node of a capacity tree, usable wherever trio takes a ``CapacityLimiter``.

    Each acquisition takes one unit of ``resource`` (``"slots"`` by default) at this node and at
    every ancestor, atomically; see :mod:`sluiceway.capacity` for the fairness rules. It
    implements trio's limiter interface (``acquire``, ``acquire_nowait``,
    ``acquire_on_behalf_of``, ``acquire_on_behalf_of_nowait``, ``release``,
    ``release_on_behalf_of``, ``total_tokens``, ``borrowed_tokens``, ``available_tokens``,
    ``statistics`` and ``async with``), so it works as the ``limiter=`` of
    :func:`trio.to_thread.run_sync`.

    As with trio, ``total_tokens = 0`` pauses the node: acquisitions wait until it is raised.
    It behaves as trio's limiter does where trio defines it: the same exception types and
    messages, and the bookkeeping is updated in the step that grants a unit (raising
    ``total_tokens`` or a release hands units to waiters at once, so ``statistics().borrowers``
    lists them before they wake up). trio's own ``CapacityLimiter`` tests pass against it.

    Args:
        total_tokens: the number of units, an ``int`` or ``math.inf`` (named as trio names it).
        parent: an optional parent node (any capacity face); the parent must not be a leaf of a
            different tree.
        resource: the resource name units are counted in, so a unit node can sit under a
            :class:`ResourceCapacitySource` that limits the same name.
        name: a label for ``repr``, statistics and metrics.
        metrics: a :class:`~sluiceway.MetricsCollector` that receives a
            :class:`~sluiceway.CapacityEvent` for every grant, refusal, release, refund and
            change of limits at this node.
    """

    def __init__(
        self,
        total_tokens: int | float,
        parent: BaseCapacity | None = None,
        *,
        resource: str = "slots",
        name: str | None = None,
        metrics: MetricsCollector | None = None,
    ) -> None:
        if not isinstance(resource, str) or not resource:
            raise TypeError(f"resource must be a non-empty string, got {resource!r}")
        self._resource = resource
        self._unit: Vector = {resource: 1}
        self._borrowers: set[object] = set()
        # Tasks waiting in acquire_on_behalf_of -> the borrower they wait for (as in trio).
        self._pending_borrowers: dict[trio.lowlevel.Task, object] = {}
        self._attach(
            {resource: _tokens(total_tokens)},
            parent,
            quota=False,
            backfill=False,
            name=name,
            metrics=metrics,
        )

    @property
    def resource(self) -> str:
        """The resource name this node counts units in."""
        return self._resource

    @property
    def total_tokens(self) -> int | float:
        """The number of units; assign to change it at runtime (waiters are served at once)."""
        return public(self._node.limits[self._resource])

    @total_tokens.setter
    def total_tokens(self, value: int | float) -> None:
        self._set_limits({self._resource: _tokens(value)})

    @property
    def borrowed_tokens(self) -> int | float:
        """Units held in this node's subtree."""
        held = self._node.held.get(self._resource, 0)
        return held if type(held) is int else public(held)  # an int, without a call, usually

    @property
    def available_tokens(self) -> int | float:
        """``total_tokens - borrowed_tokens`` (negative while a lowered total is paid back)."""
        return public(self._node.available(self._resource))

    @enable_ki_protection
    def acquire_nowait(self) -> None:
        """Take a unit for the current task without blocking; raise ``trio.WouldBlock``."""
        self.acquire_on_behalf_of_nowait(trio.lowlevel.current_task())

    @enable_ki_protection
    def acquire_on_behalf_of_nowait(self, borrower: object) -> None:
        """Take a unit for ``borrower`` without blocking.

        Raises:
            trio.WouldBlock: if the fair dispatcher would not grant it now (a newcomer never
                overtakes a waiter that is due first).
            RuntimeError: if ``borrower`` already holds a unit of this node.
        """
        self._check_new_borrower(borrower)
        if not _tree.try_now(self._node, self._unit, validated=False):
            if self._node.metrics is not None:
                _tree.report(self._node, "rejected", self._unit, "insufficient_capacity")
            raise trio.WouldBlock
        self._borrowers.add(borrower)

    @enable_ki_protection
    async def acquire(self) -> None:
        """Take a unit for the current task, waiting fairly if necessary."""
        await self.acquire_on_behalf_of(trio.lowlevel.current_task())

    @enable_ki_protection
    async def acquire_on_behalf_of(self, borrower: object) -> None:
        """Take a unit for ``borrower``, waiting fairly if necessary.

        ``borrower`` is recorded in the step that grants the unit, before this task wakes up.
        A cancelled wait holds nothing and leaves no trace.

        Raises:
            RuntimeError: if ``borrower`` already holds a unit of this node.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._check_new_borrower(borrower)
        except BaseException:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise
        task = trio.lowlevel.current_task()
        pending = self._pending_borrowers
        pending[task] = borrower

        def granted() -> None:
            self._borrowers.add(pending.pop(task))

        try:
            # Checkpoints for cancellation once more (cheap: nothing happened since ours).
            await _tree.acquire(self._node, self._unit, validated=False, when_granted=granted)
        finally:
            pending.pop(task, None)  # cancelled (or failed) before it was granted

    @enable_ki_protection
    def release(self) -> None:
        """Give back the current task's unit."""
        self.release_on_behalf_of(trio.lowlevel.current_task())

    @enable_ki_protection
    def release_on_behalf_of(self, borrower: object) -> None:
        """Give back ``borrower``'s unit; waiters anywhere in the tree are served at once.

        Raises:
            RuntimeError: if ``borrower`` holds no unit of this node (an
                :class:`~sluiceway.OverReleaseError`).
        """
        if borrower not in self._borrowers:
            raise OverReleaseError(
                "this borrower isn't holding any of this CapacitySource's tokens"
            )
        self._borrowers.remove(borrower)
        _tree.give_back(self._node, self._unit)

    def _check_new_borrower(self, borrower: object) -> None:
        if borrower in self._borrowers:
            raise RuntimeError(
                "this borrower is already holding one of this CapacitySource's tokens"
            )

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def statistics(self) -> UnitCapacityStatistics:
        """trio-compatible statistics plus tree-wide waiting and grant counts."""
        node = self._node
        return UnitCapacityStatistics(
            borrowed_tokens=self.borrowed_tokens,
            total_tokens=self.total_tokens,
            borrowers=list(self._borrowers),
            tasks_waiting=len(node.queue),
            waiting_in_subtree=node.waiting,
            granted=node.granted_count,
            released=node.released_count,
        )


class ResourceCapacitySource(BaseCapacity):
    """A multi-resource node of a capacity tree: costs are vectors such as ``{"cpu": 2, "mem": 8}``.

    A cost is admitted only when every amount fits at this node and at every ancestor that limits
    that resource, and is then taken at every level at once. Accounting is exact (limits may be
    lowered below current use; the debt is kept and no new grant happens until it is paid back).

    Compared with the original: a cost that can never fit is refused when submitted
    (:class:`~sluiceway.ImpossibleCostError`), a resource that no level tracks is an error
    (:class:`~sluiceway.UnknownResourceError`) instead of free, and releasing more than is held
    raises :class:`~sluiceway.OverReleaseError` instead of being clamped.

    Args:
        limits: resource name to limit (``>= 0``; ``math.inf`` for unlimited).
        parent: an optional parent node (any capacity face).
        backfill: let a smaller request pass a blocked head of line when it uses none of the
            resources the head is short of (so it cannot delay the head). Default: strict FIFO.
        name: a label for ``repr``, statistics and metrics.
        metrics: a :class:`~sluiceway.MetricsCollector` that receives a
            :class:`~sluiceway.CapacityEvent` for every grant, refusal (including a cost that
            can never fit), release, refund and change of limits at this node.
    """

    _quota = False
    _fails_impossible = True

    def __init__(
        self,
        limits: LimitsLike,
        parent: BaseCapacity | None = None,
        *,
        backfill: bool = False,
        name: str | None = None,
        metrics: MetricsCollector | None = None,
    ) -> None:
        normalised = vector(limits, what="limits", allow_inf=True)
        if not normalised:
            raise ValueError("limits must name at least one resource")
        self._attach(
            normalised, parent, quota=self._quota, backfill=backfill, name=name, metrics=metrics
        )

    # -- validation --------------------------------------------------------------------------

    def _cost(self, cost: object) -> Vector:
        try:
            return checked_cost(self, cost)
        except ImpossibleCostError:
            if self._node.metrics is not None:
                _tree.report(self._node, "rejected", vector(cost, what="cost"), "impossible")
            raise

    def _rejected(self, cost: Vector) -> None:
        if self._node.metrics is not None:
            _tree.report(self._node, "rejected", cost, "insufficient_capacity")

    def validate_cost(self, cost: CostLike) -> None:
        """Raise if ``cost`` is malformed or could never fit under the current limits.

        Raises:
            TypeError, ValueError: malformed cost (non-numeric, negative, NaN, empty).
            UnknownResourceError: a resource no level of the chain tracks.
            ImpossibleCostError: an amount above a limit somewhere along the chain.
        """
        self._cost(cost)

    # -- acquisition -------------------------------------------------------------------------

    def can_acquire(self, cost: CostLike) -> bool:
        """Whether ``cost`` fits right now along the whole chain (nothing is taken).

        A later :meth:`try_acquire` may still refuse if the fairness rule serves a waiting
        request first.
        """
        return self._node.fits_chain(self._cost(cost))

    def try_acquire(self, cost: CostLike) -> TryAcquireResult:
        """Take ``cost`` now if the fair dispatcher would grant it; never waits."""
        normalised = self._cost(cost)
        if _tree.try_now(self._node, normalised, validated=True):
            return TryAcquireResult(True, public_vector(normalised), self.available)
        self._rejected(normalised)
        return TryAcquireResult(
            False, public_vector(normalised), self.available, "insufficient_capacity"
        )

    def acquire_nowait(self, cost: CostLike) -> None:
        """Take ``cost`` now or raise ``trio.WouldBlock`` (the original ``acquireImmediate``)."""
        normalised = self._cost(cost)
        if not _tree.try_now(self._node, normalised, validated=True):
            self._rejected(normalised)
            raise trio.WouldBlock

    async def acquire(self, cost: CostLike) -> None:
        """Wait until ``cost`` is granted along the whole chain; FIFO within this node.

        Raises:
            ImpossibleCostError: at once if the cost can never fit, or later if a limit is
                lowered so that it can never fit while it waits.
        """
        await _tree.acquire(self._node, self._cost(cost), validated=True)

    def release(self, cost: CostLike) -> None:
        """Give ``cost`` back at every level; waiters anywhere in the tree are served at once.

        Raises:
            OverReleaseError: if this node holds less than ``cost`` (nothing is changed).
        """
        _tree.give_back(self._node, vector(cost, what="cost", drop_zero=True))

    @asynccontextmanager
    async def hold(self, cost: CostLike) -> AsyncIterator[None]:
        """``async with source.hold(cost):`` acquires and always releases."""
        normalised = self._cost(cost)
        await _tree.acquire(self._node, normalised, validated=True)
        try:
            yield
        finally:
            _tree.give_back(self._node, normalised)

    def reconcile(self, estimated: CostLike, actual: CostLike) -> None:
        """Replace a held ``estimated`` cost by the ``actual`` one once it is known.

        The difference is applied at every level (an underestimate may put a level in debt, in
        which case nothing new is granted until it is paid back). Release ``actual`` afterwards.
        """
        before = vector(estimated, what="estimated")
        after = vector(actual, what="actual")
        self._node.check_known(after, what="actual")
        delta: Vector = {}
        for key in before.keys() | after.keys():
            change = after.get(key, 0) - before.get(key, 0)
            if change:
                delta[key] = change
        if delta:
            _tree.adjust(self._node, delta)

    def peek(self) -> dict[str, int | float] | None:
        """Available budget along the chain (min over levels), or ``None`` if some resource
        limited at this node has nothing left anywhere along the chain."""
        node = self._node
        budget: dict[str, int | float] = {}
        for key in node.limits:
            value = min(level.available(key) for level in node.chain if key in level.limits)
            if value <= 0:
                return None
            budget[key] = public(value)
        return budget

    def statistics(self) -> CapacityStatistics:
        """A snapshot of this node; see :class:`CapacityStatistics`."""
        return self.capacity_statistics()

    # -- limits ------------------------------------------------------------------------------

    def set_limits(self, limits: LimitsLike) -> None:
        """Change some limits (new resources may be added); in-flight work is never revoked.

        Lowering a limit below current use keeps the exact debt. Requests already waiting that
        can no longer ever fit are failed with :class:`~sluiceway.ImpossibleCostError`.
        """
        self._set_limits(vector(limits, what="limits", allow_inf=True))

    def reset(self, limits: LimitsLike | None = None) -> None:
        """Optionally set new limits, then refill: a quota starts a fresh window.

        On an ordinary node what is held is real, so a reset only applies the limits and serves
        waiters; it never forgets work in flight.
        """
        node = self._node
        if limits is not None:
            _tree.update_limits(node, vector(limits, what="limits", allow_inf=True))
        if node.quota:
            for key in node.consumed:
                node.consumed[key] = 0
        if node.metrics is not None:
            _tree.report(node, "reset", node.limits)
        _tree.fail_impossible_waiters(node)
        if node.tree.root.waiting:
            _tree.dispatch(node.tree)

    def increment(
        self, amount_by: CostLike, cap: LimitsLike | None = None
    ) -> dict[str, int | float]:
        """Refill a quota by ``amount_by`` without changing its limits (token-bucket style).

        Availability per resource grows by at most ``amount_by`` and never beyond ``cap``
        (default: the limits). Resources this node does not limit are ignored. Returns what was
        actually added. On an ordinary node, availability is exactly ``limit - held``, so there
        is nothing to refill and every entry is ``0``.
        """
        node = self._node
        by = vector(amount_by, what="amount")
        ceiling = node.limits if cap is None else vector(cap, what="cap", allow_inf=True)
        added: dict[str, int | float] = {}
        for key, step in by.items():
            limit = node.limits.get(key)
            if limit is None:
                continue
            if not node.quota or limit == math.inf:
                added[key] = 0
                continue
            consumed = node.consumed.get(key, 0)
            available = limit - consumed
            top = min(ceiling.get(key, limit), limit)
            new_available = max(available, min(available + step, top))
            node.consumed[key] = limit - new_available
            added[key] = public(new_available - available)
        if node.metrics is not None:
            _tree.report(node, "increment", {key: value for key, value in added.items() if value})
        if any(added.values()) and node.tree.root.waiting:
            _tree.dispatch(node.tree)
        return added


class QuotaCapacitySource(ResourceCapacitySource):
    """A resource node whose capacity is consumed, not borrowed: a release does not restore it.

    Quota comes back only through :meth:`reset` (a fresh window) or :meth:`increment` (a token
    bucket), usually driven by ``async with quota.refilling(...)``. As a parent of an ordinary
    pool it gives "at most N in flight and M per window"; as a child, releases still return
    capacity to the ordinary levels around it (the original leaked it).

    Args:
        limits: resource name to the quota of one window (``>= 0``).
        parent: an optional parent node (any capacity face).
        name: a label for ``repr``, statistics and metrics.
        metrics: as for :class:`ResourceCapacitySource`; a quota also reports every ``reset``
            and ``increment``.
    """

    _quota = True

    def __init__(
        self,
        limits: LimitsLike,
        parent: BaseCapacity | None = None,
        *,
        name: str | None = None,
        metrics: MetricsCollector | None = None,
    ) -> None:
        super().__init__(limits, parent, backfill=False, name=name, metrics=metrics)
        self._refilling = False

    @property
    def refilling_active(self) -> bool:
        """Whether a :meth:`refilling` block is running."""
        return self._refilling

    @asynccontextmanager
    async def refilling(
        self,
        every: float,
        *,
        amount: CostLike | None = None,
        cap: LimitsLike | None = None,
    ) -> AsyncIterator[Self]:
        """Refill this quota on a timer while the block runs (one timer task, trio's clock).

        Without ``amount``, every ``every`` seconds the quota is :meth:`reset` (a per-window
        limit). With ``amount``, every ``every`` seconds it is :meth:`increment`-ed by it (a token
        bucket, capped by ``cap`` or the limits). The first refill comes one full interval after
        entering, as with ``setInterval``; ticks missed while the loop was busy are made up.
        Waiting requests are served directly by the refill (no polling).

        Raises:
            RuntimeError: if this quota is already refilling (one timer per quota).
        """
        interval = amount_seconds(every)
        step = None if amount is None else vector(amount, what="amount")
        if cap is not None:
            vector(cap, what="cap", allow_inf=True)
        if self._refilling:
            raise RuntimeError("this QuotaCapacitySource is already refilling (one timer only)")
        self._refilling = True
        try:
            async with open_owned_nursery() as nursery:
                nursery.start_soon(self._refill_loop, interval, step, cap)
                yield self
                nursery.cancel_scope.cancel("refilling block exited")
        finally:
            self._refilling = False

    async def _refill_loop(
        self, interval: float, step: Vector | None, cap: LimitsLike | None
    ) -> None:
        deadline = trio.current_time() + interval
        while True:
            await trio.sleep_until(deadline)
            ticks = 1 + int((trio.current_time() - deadline) // interval)
            deadline += ticks * interval
            if step is None:
                self.reset()
            else:
                self.increment({key: public(value * ticks) for key, value in step.items()}, cap)


def amount_seconds(value: object) -> float:
    """Validate a positive, finite interval in seconds."""
    seconds = amount(value, what="interval")
    if not seconds:
        raise ValueError("interval must be > 0 seconds")
    return float(seconds)
