"""The public interface runners use at a capacity node: checked costs and a standing demand."""

from __future__ import annotations

import ast
import pathlib
from fractions import Fraction

import pytest

from sluiceway import (
    CapacitySource,
    ImpossibleCostError,
    OverReleaseError,
    QuotaCapacitySource,
    ResourceCapacitySource,
    UnknownResourceError,
)
from sluiceway.capacity import CostVector, normalize_cost, plain_amounts
from tests.helpers import assert_idle


class Owner:
    """A demand owner that wants ``tasks`` tasks of one cost and records what it is told."""

    def __init__(self, cost: CostVector, tasks: int) -> None:
        self.cost = cost
        self.tasks = tasks
        self.granted: list[CostVector] = []
        self.impossible: list[ImpossibleCostError] = []

    def demand_cost(self) -> CostVector | None:
        return self.cost if self.tasks else None

    def demand_granted(self, cost: CostVector) -> None:
        self.tasks -= 1
        self.granted.append(cost)

    def demand_impossible(self, cost: CostVector, error: ImpossibleCostError) -> None:
        self.impossible.append(error)
        self.tasks = 0


def test_checked_cost_normalises_and_refuses_bad_costs() -> None:
    node = ResourceCapacitySource({"cpu": 4, "mem": 8})
    assert node.checked_cost({"cpu": 0.5, "mem": 0}) == {"cpu": Fraction(1, 2)}
    with pytest.raises(ValueError, match="uses no resource"):
        node.checked_cost({"cpu": 0})
    with pytest.raises(UnknownResourceError):
        node.checked_cost({"gpu": 1})
    with pytest.raises(ImpossibleCostError):
        node.checked_cost({"cpu": 5})
    with pytest.raises(TypeError):
        node.checked_cost(["cpu"])
    node.check_tracked({"cpu": 1})
    with pytest.raises(UnknownResourceError):
        node.check_tracked({"gpu": 1})


def test_normalize_cost_and_plain_amounts() -> None:
    cost = normalize_cost({"cpu": 0.1, "mem": 0}, what="task cost")
    assert cost == {"cpu": Fraction(1, 10)}
    assert plain_amounts(cost) == {"cpu": 0.1}
    with pytest.raises(ValueError, match="task cost"):
        normalize_cost({"cpu": -1}, what="task cost")


def test_a_demand_is_granted_while_open_and_fits() -> None:
    node = CapacitySource(3)
    owner = Owner({"slots": 1}, tasks=5)
    demand = node.demand(owner)
    assert not demand.is_open
    assert owner.granted == []  # nothing before it opens
    demand.open()
    assert demand.is_open
    assert len(owner.granted) == 3  # granted at once, as far as it fits
    assert node.borrowed_tokens == 3
    assert demand.alone  # the only request in the tree
    demand.give_back({"slots": 1})  # one task ran: the next is granted in its place
    assert len(owner.granted) == 4
    assert node.borrowed_tokens == 3
    demand.close()
    assert not demand.is_open
    assert not demand.alone
    demand.give_back({"slots": 1})
    assert len(owner.granted) == 4  # closed: nothing more
    for _ in range(2):
        demand.refund({"slots": 1})
    with pytest.raises(OverReleaseError):
        demand.give_back({"slots": 1})
    assert_idle(node)


def test_hand_over_keeps_the_capacity_only_when_dispatch_would() -> None:
    root = CapacitySource(2)
    leaf = CapacitySource(2, root)
    owner = Owner({"slots": 1}, tasks=10)
    demand = leaf.demand(owner)
    demand.open()
    assert len(owner.granted) == 2
    assert demand.alone
    assert demand.hand_over({"slots": 1})  # counted as a release and a grant
    stats = leaf.capacity_statistics()
    assert (stats.granted, stats.released) == (3, 1)
    assert leaf.borrowed_tokens == 2
    # A sibling waiting: the freed unit is the fairness rule's to give, not this demand's.
    sibling = Owner({"slots": 1}, tasks=1)
    other = CapacitySource(2, root).demand(sibling)
    other.open()
    assert not demand.alone
    # hand_over asks that itself: it refuses, counting nothing.
    assert not demand.hand_over({"slots": 1})
    assert leaf.capacity_statistics().released == 1
    demand.give_back({"slots": 1})
    assert sibling.granted == [{"slots": 1}]  # the sibling holding nothing goes first
    other.close()
    demand.close()
    other.give_back({"slots": 1})
    demand.give_back({"slots": 1})
    assert not demand.hand_over({"slots": 1})  # a closed demand keeps nothing
    assert_idle(root, leaf)


def test_hand_over_is_refused_under_a_quota_or_a_lowered_limit() -> None:
    quota = QuotaCapacitySource({"calls": 10})
    owner = Owner({"calls": 1}, tasks=3)
    demand = quota.demand(owner)
    demand.open()
    assert demand.alone
    assert not demand.hand_over({"calls": 1})  # a quota counts every grant
    demand.close()

    node = ResourceCapacitySource({"cpu": 2})
    busy = Owner({"cpu": 1}, tasks=5)
    running = node.demand(busy)
    running.open()
    node.set_limits({"cpu": 1})  # now over its limit: the debt is paid back first
    assert not running.hand_over({"cpu": 1})
    running.close()
    running.give_back({"cpu": 1})
    running.give_back({"cpu": 1})
    assert_idle(node)


def test_a_demand_that_can_never_fit_is_told_on_a_validating_node() -> None:
    node = ResourceCapacitySource({"cpu": 2})
    owner = Owner({"cpu": 3}, tasks=1)
    demand = node.demand(owner)
    demand.open()
    assert len(owner.impossible) == 1
    demand.close()
    # A unit node waits instead (total_tokens = 0 pauses it, as trio's limiter does).
    paused = CapacitySource(0)
    waiting = Owner({"slots": 1}, tasks=1)
    unit = paused.demand(waiting)
    unit.open()
    assert waiting.impossible == []
    assert waiting.granted == []
    paused.total_tokens = 1
    assert waiting.granted == [{"slots": 1}]
    unit.close()
    unit.give_back({"slots": 1})
    assert_idle(node, paused)


def test_runners_import_no_private_capacity_name() -> None:
    runners = pathlib.Path(__file__).parents[2] / "src" / "sluiceway" / "runners"
    for path in sorted(runners.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and "capacity" in node.module:
                assert "._" not in f".{node.module}", f"{path.name} imports {node.module}"
                for alias in node.names:
                    assert not alias.name.startswith("_"), f"{path.name} imports {alias.name}"
            if isinstance(node, ast.Attribute) and node.attr == "_node":
                pytest.fail(f"{path.name}:{node.lineno} reaches into a capacity node")


def test_hand_over_is_refused_after_a_reconcile_goes_over_a_limit() -> None:
    node = ResourceCapacitySource({"cpu": 2})
    owner = Owner({"cpu": 1}, tasks=10)
    demand = node.demand(owner)
    demand.open()
    assert demand.hand_over({"cpu": 1})  # within limits: checked, and remembered
    node.reconcile({"cpu": 0}, {"cpu": 1})  # an estimate fell short: now over the limit
    assert not demand.hand_over({"cpu": 1})
    node.release({"cpu": 1})  # back within the limit
    assert demand.hand_over({"cpu": 1})
    demand.close()
    demand.give_back({"cpu": 1})
    demand.give_back({"cpu": 1})
    assert_idle(node)


def test_grant_now_only_when_alone_and_it_fits() -> None:
    root = CapacitySource(2)
    leaf = CapacitySource(2, root)
    owner = Owner({"slots": 1}, tasks=0)  # wants nothing at first: nothing is granted
    demand = leaf.demand(owner)
    assert not demand.grant_now({"slots": 1})  # closed
    demand.open()
    assert demand.grant_now({"slots": 1})
    assert demand.grant_now({"slots": 1})
    assert not demand.grant_now({"slots": 1})  # the limit is reached
    assert leaf.capacity_statistics().granted == 2
    demand.give_back({"slots": 1})
    sibling = CapacitySource(2, root).demand(Owner({"slots": 1}, tasks=0))
    sibling.open()
    assert not demand.grant_now({"slots": 1})  # not alone: the tree decides
    sibling.close()
    demand.close()
    demand.give_back({"slots": 1})
    assert_idle(root, leaf)
