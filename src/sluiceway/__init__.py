"""sluiceway: fan out concurrent work on trio under hierarchical capacity limits."""

from ._errors import (
    CapacityError,
    ImpossibleCostError,
    OverReleaseError,
    RemoteTaskError,
    SluicewayError,
    TaskCancelledError,
    TaskError,
    TaskTimeoutError,
    UnknownResourceError,
)
from .capacity import (
    BalancedChild,
    BalancerAdjustment,
    BaseCapacity,
    CapacitySource,
    CapacityStatistics,
    HierarchicalBalancer,
    QuotaCapacitySource,
    ResourceCapacitySource,
    TryAcquireResult,
    UnitCapacityStatistics,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "BalancedChild",
    "BalancerAdjustment",
    "BaseCapacity",
    "CapacityError",
    "CapacitySource",
    "CapacityStatistics",
    "HierarchicalBalancer",
    "ImpossibleCostError",
    "OverReleaseError",
    "QuotaCapacitySource",
    "RemoteTaskError",
    "ResourceCapacitySource",
    "SluicewayError",
    "TaskCancelledError",
    "TaskError",
    "TaskTimeoutError",
    "TryAcquireResult",
    "UnitCapacityStatistics",
    "UnknownResourceError",
]
