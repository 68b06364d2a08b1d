"""Capacity trees: unit, multi-resource and quota nodes with atomic, fair admission.

Every face here is a node of one capacity-tree core (``_tree``): admission is atomic across all
levels of a node's chain, every release or limit change re-dispatches waiters anywhere in the tree,
requests are FIFO within a node, and across siblings a freed unit goes to the child holding the
smallest share (max-min fairness), ties to the request that has waited longest.
"""

from ._balancer import BalancedChild, BalancerAdjustment, HierarchicalBalancer
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
    "CapacitySource",
    "CapacityStatistics",
    "HierarchicalBalancer",
    "QuotaCapacitySource",
    "ResourceCapacitySource",
    "TryAcquireResult",
    "UnitCapacityStatistics",
]
