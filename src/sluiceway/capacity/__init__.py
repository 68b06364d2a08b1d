"""Capacity trees: unit, multi-resource and quota nodes with atomic, fair admission.

Every face here is a node of one capacity-tree core (``_tree``): admission is atomic across all
levels of a node's chain, every release or limit change re-dispatches waiters anywhere in the tree,
requests are FIFO within a node, and across siblings a freed unit goes to the child holding the
smallest share (max-min fairness), ties to the request that has waited longest.

Runners hold capacity through a standing request at their node, a :class:`CapacityDemand`
(:meth:`BaseCapacity.demand`); it, :meth:`BaseCapacity.checked_cost`,
:meth:`BaseCapacity.check_tracked`, :func:`normalize_cost` and :func:`plain_amounts` are
everything a runner uses of this package.
"""

from ._balancer import BalancedChild, BalancerAdjustment, HierarchicalBalancer
from ._demand import CapacityDemand, CostVector, DemandOwner, normalize_cost, plain_amounts
from ._faces import (
    BaseCapacity,
    CapacitySource,
    CapacityStatistics,
    QuotaCapacitySource,
    ResourceCapacitySource,
    TryAcquireResult,
    UnitCapacityStatistics,
)
from ._gauges import CapacityGauges

__all__ = [
    "BalancedChild",
    "BalancerAdjustment",
    "BaseCapacity",
    "CapacityGauges",
    "CapacityDemand",
    "CapacitySource",
    "CapacityStatistics",
    "CostVector",
    "DemandOwner",
    "HierarchicalBalancer",
    "QuotaCapacitySource",
    "ResourceCapacitySource",
    "TryAcquireResult",
    "UnitCapacityStatistics",
    "normalize_cost",
    "plain_amounts",
]
