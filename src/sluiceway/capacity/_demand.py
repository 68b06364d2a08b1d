"""The interface a runner uses to hold capacity at a node: a standing demand and its grants.

A runner does not acquire capacity task by task. It keeps one standing request, a *demand*, at
its node; at every dispatch the tree asks the demand's owner for the cost of its next task and,
when that fits along the chain (and the fairness rules pick it), takes it at every level and tells
the owner in the same synchronous step, so the owner peeks, checks and takes its task with no
``await`` in between. Whatever the owner was granted it later gives back (the task ran) or refunds
(it never ran: a quota gets it back too).

This module is the whole of what runners need from the tree core, so that no runner reaches into
it: :meth:`BaseCapacity.demand <sluiceway.BaseCapacity.demand>` returns a :class:`CapacityDemand`.
"""

from __future__ import annotations

from . import _tree
from ._amounts import Vector, public_vector, vector
from ._tree import DemandOwner

__all__ = ["CapacityDemand", "CostVector", "DemandOwner", "normalize_cost", "plain_amounts"]

#: A normalised cost: resource name to an exact amount (``int`` or ``fractions.Fraction``), as
#: :meth:`BaseCapacity.checked_cost <sluiceway.BaseCapacity.checked_cost>` and
#: :func:`normalize_cost` return it.
CostVector = Vector


def normalize_cost(cost: object, *, what: str = "cost") -> CostVector:
    """Validate a mapping of resource name to amount and normalise it (exact amounts, zero
    entries dropped); ``what`` names it in error messages. Raises ``TypeError`` or
    ``ValueError`` for a malformed one."""
    return vector(cost, what=what, drop_zero=True)


def plain_amounts(cost: CostVector) -> dict[str, int | float]:
    """A normalised cost as plain ``int`` and ``float`` values, for reporting."""
    return public_vector(cost)


class CapacityDemand:
    """A runner's standing request at one capacity node, and the capacity its grants hand back.

    Created closed by :meth:`BaseCapacity.demand <sluiceway.BaseCapacity.demand>`. While it is
    open (:meth:`open`) the tree grants it, one task at a time, whenever its owner's next cost
    fits and the fairness rules choose it; after a grant it goes to the back of its node's queue,
    so several runners on one node take turns. Everything here is synchronous.
    """

    __slots__ = (
        "_demand",
        "_node",
        "_owner",
        "_root",
        "_tree",
        "_validated",
        "_within_limits_version",
    )

    def __init__(self, node: _tree.Node, owner: DemandOwner, *, validated: bool) -> None:
        self._node = node
        self._tree = node.tree
        self._root = node.tree.root
        self._owner = owner
        self._validated = validated
        self._demand: _tree.Demand | None = None
        # The tree's overuse_version when every level of the chain was last seen within its
        # limits (see hand_over); -1: not seen yet.
        self._within_limits_version = -1

    @property
    def is_open(self) -> bool:
        """Whether the demand is queued (the tree may grant it)."""
        return self._demand is not None

    @property
    def alone(self) -> bool:
        """Whether this demand is open and the only request waiting anywhere in the tree: then
        nothing but it can be granted what it gives back (see :meth:`hand_over`)."""
        return self._demand is not None and self._root.waiting == 1

    def open(self) -> None:
        """Queue the demand and dispatch (the owner may be granted tasks before this returns).
        Does nothing if it is open already."""
        if self._demand is None:
            self._demand = _tree.open_demand(self._node, self._owner, validated=self._validated)

    def close(self) -> None:
        """Withdraw the demand (its absence may unblock others: the tree is dispatched). Does
        nothing if it is closed."""
        demand = self._demand
        if demand is not None:
            self._demand = None
            _tree.close_demand(demand)

    def dispatch(self) -> None:
        """Run admission again if any request waits: call it when the owner's next cost may
        have changed (a task became available, a consumer made room)."""
        if self._root.waiting:
            _tree.dispatch(self._tree)

    def give_back(self, cost: CostVector, *, dispatch: bool = True) -> None:
        """Return ``cost`` (granted to this demand, its task has run) at every level, then
        dispatch. A quota keeps it consumed. ``dispatch=False`` skips the dispatch, for an owner
        that knows no request could be granted anything now (it holds the only one and has
        nothing to start). Raises :class:`~sluiceway.OverReleaseError` for more than is held."""
        _tree.give_back(self._node, cost, redispatch=dispatch)

    def refund(self, cost: CostVector) -> None:
        """Return ``cost`` for a task that never ran (a quota gets it back too), then dispatch."""
        _tree.refund(self._node, cost)

    def grant_now(self, cost: CostVector) -> bool:
        """Grant ``cost`` to this demand at once, without a dispatch, when that is what a
        dispatch would do: the demand is the only request in the tree (:attr:`alone`) and
        ``cost`` fits at every level of its chain. Takes it at every level and returns ``True``;
        the owner then takes its next task itself (``demand_granted`` is not called). Returns
        ``False``, changing nothing, otherwise (then :meth:`dispatch` decides)."""
        demand = self._demand
        node = self._node
        if demand is None or self._root.waiting != 1 or not node.fits_chain(cost):
            return False
        _tree.take(node, cost)
        demand.seq = self._tree.next_seq()
        return True

    def hand_over(self, cost: CostVector) -> bool:
        """Keep ``cost``, about to be given back, for the owner's next task of the same cost,
        when that is exactly what giving it back and dispatching would do: the demand is the
        only request in the tree (:attr:`alone`), no level of the chain is a quota (a quota
        counts every grant) and no level is over a lowered limit. Counts a release and a grant
        and returns ``True`` (the owner takes its next task now); returns ``False``, changing
        nothing, otherwise."""
        demand = self._demand
        if demand is None or self._root.waiting != 1:
            return False
        tree = self._tree
        if self._within_limits_version != tree.overuse_version:
            # A level can only come to use more than a limit when a limit changes or a
            # reconcile adds to what is held (grants only ever fit, a hand-over changes no
            # usage), and both bump overuse_version: so it is checked once per such change.
            if self._node.quota_in_chain or not _tree.chain_within_limits(self._node):
                return False
            self._within_limits_version = tree.overuse_version
        # Count a release and a grant, as giving back and dispatching would. Inline: this runs
        # once per task of a lone run, where every call counts.
        node = self._node
        node.released_count += 1
        node.granted_count += 1
        tree.seq += 1
        demand.seq = tree.seq
        if node.metrics is not None:
            _tree.report(node, "released", cost)
            _tree.report(node, "accepted", cost)
        return True
