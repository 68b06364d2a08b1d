"""Float limits and costs are exact: nothing is rounded away, and decimal amounts add up.

A finite float stands for the decimal number its ``repr`` shows (a whole float for its integer),
so the capacity tree compares amounts exactly as Python compares the floats, and ten costs of
``0.1`` fill a limit of ``1`` and release back to exactly zero.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway import (
    DependencyGraph,
    DependencySource,
    HierarchicalTaskPoolRunner,
    ImpossibleCostError,
    ResourceCapacitySource,
    ScheduledTask,
    ScheduledTaskPoolRunner,
)
from sluiceway.capacity._amounts import amount
from tests.helpers import assert_idle

finite = st.floats(min_value=0, allow_nan=False, allow_infinity=False)


def test_a_cost_just_above_the_limit_never_fits() -> None:
    pool = ResourceCapacitySource({"cpu": 4})
    with pytest.raises(ImpossibleCostError, match=r"'cpu' needs 4\.0000000001"):
        pool.validate_cost({"cpu": 4.0000000001})
    with pytest.raises(ImpossibleCostError):
        pool.try_acquire({"cpu": 4.0000000001})
    with pytest.raises(ImpossibleCostError):
        HierarchicalTaskPoolRunner("r", [], pool, cost={"cpu": 4.0000000001})
    runner = ScheduledTaskPoolRunner("s", DependencySource(DependencyGraph()), pool)
    with pytest.raises(ImpossibleCostError):
        runner.add_task(ScheduledTask("t", lambda emit: None, cost={"cpu": 4.0000000001}))
    assert pool.try_acquire({"cpu": 4.0})
    pool.release({"cpu": 4})
    assert_idle(pool)


def test_an_ancestor_limit_just_below_the_cost_refuses_it_too() -> None:
    root = ResourceCapacitySource({"cpu": 4})
    child = ResourceCapacitySource({"cpu": 10}, root)
    with pytest.raises(ImpossibleCostError, match="ancestor"):
        child.validate_cost({"cpu": 4 + 1e-15})
    assert child.try_acquire({"cpu": 3.9999999999})
    assert not child.try_acquire({"cpu": 1.0000000001e-10})  # just over 4 in all
    assert child.try_acquire({"cpu": 1e-10})  # exactly 4
    assert root.in_use == {"cpu": 4}
    child.release({"cpu": 3.9999999999})
    child.release({"cpu": 1e-10})
    assert_idle(root, child)


def test_the_smallest_amounts_are_not_zero() -> None:
    with pytest.raises(ImpossibleCostError):
        ResourceCapacitySource({"cpu": 0}).validate_cost({"cpu": 5e-324})
    pool = ResourceCapacitySource({"cpu": 1e-300})
    with pytest.raises(ImpossibleCostError):
        pool.validate_cost({"cpu": math.nextafter(1e-300, 1)})
    assert pool.try_acquire({"cpu": 1e-300})
    pool.release({"cpu": 1e-300})
    assert_idle(pool)


def test_ten_tenths_fill_one_exactly_and_return_to_zero() -> None:
    pool = ResourceCapacitySource({"cpu": 1})
    for _ in range(10):
        assert pool.try_acquire({"cpu": 0.1})
    assert pool.in_use == {"cpu": 1}
    assert pool.available == {"cpu": 0}
    assert not pool.try_acquire({"cpu": 5e-324})
    for _ in range(10):
        pool.release({"cpu": 0.1})
    assert_idle(pool)
    # Mixed decimal amounts, released in another order.
    for cost in (0.7, 0.2, 0.1):
        assert pool.try_acquire({"cpu": cost})
    assert pool.available == {"cpu": 0}
    for cost in (0.1, 0.7, 0.2):
        pool.release({"cpu": cost})
    assert_idle(pool)


def test_whole_floats_are_their_integers() -> None:
    from sluiceway.capacity._amounts import exact_float  # noqa: PLC0415

    big = 2**60
    assert exact_float(float(big)) == big  # not the 17-digit decimal repr() shows
    pool = ResourceCapacitySource({"cpu": big})
    assert pool.try_acquire({"cpu": float(big)})
    pool.release({"cpu": big})
    assert_idle(pool)
    assert exact_float(0.1) == Fraction(1, 10)
    assert exact_float(-0.0) == 0


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (math.nan, ValueError, "must be a number, got NaN"),
        (math.inf, ValueError, "must be finite, got inf"),
        (-math.inf, ValueError, "must be finite, got -inf"),
        (-0.5, ValueError, r"must be >= 0, got -0\.5"),
        (-1e-300, ValueError, "must be >= 0"),
        ("1", TypeError, "must be a number"),
    ],
)
def test_bad_amounts_still_raise_clear_errors(
    value: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        ResourceCapacitySource({"cpu": 1}).validate_cost({"cpu": value})  # type: ignore[dict-item]
    if value != math.inf:
        with pytest.raises(error, match=message):
            ResourceCapacitySource({"cpu": value})  # type: ignore[dict-item]


@given(limit=finite, cost=finite.filter(bool))
def test_a_cost_fits_exactly_when_the_floats_say_so(limit: float, cost: float) -> None:
    pool = ResourceCapacitySource({"cpu": limit})
    if cost <= limit:
        assert pool.try_acquire({"cpu": cost})
        pool.release({"cpu": cost})
        assert_idle(pool)
    else:
        with pytest.raises(ImpossibleCostError):
            pool.validate_cost({"cpu": cost})


@given(x=finite, y=finite)
def test_the_exact_amounts_keep_the_order_of_the_floats(x: float, y: float) -> None:
    a = amount(x, what="x")
    b = amount(y, what="y")
    assert (a < b) == (x < y)
    assert (a == b) == (x == y)


@given(costs=st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=20))
def test_any_float_costs_return_to_exactly_zero(costs: list[float]) -> None:
    pool = ResourceCapacitySource({"cpu": math.inf, "mem": 1e7})
    held = [cost for cost in costs if cost and pool.try_acquire({"cpu": cost, "mem": cost})]
    random.Random(len(held)).shuffle(held)
    for cost in held:
        pool.release({"cpu": cost, "mem": cost})
    assert_idle(pool)
