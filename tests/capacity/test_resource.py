"""ResourceCapacitySource: the original's API with exact accounting and clear errors."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
import trio
import trio.testing

from sluiceway import (
    CapacitySource,
    ImpossibleCostError,
    OverReleaseError,
    ResourceCapacitySource,
    UnknownResourceError,
)
from tests.helpers import assert_idle, assert_no_lost_wakeup


def test_try_acquire_result_is_truthy_and_explains_refusals() -> None:
    pool = ResourceCapacitySource({"cpu": 4, "mem": 8})
    ok = pool.try_acquire({"cpu": 3, "mem": 2})
    assert ok
    assert ok.ok
    assert ok.requested == {"cpu": 3, "mem": 2}
    assert ok.available == {"cpu": 1, "mem": 6}
    refused = pool.try_acquire({"cpu": 2})
    assert not refused
    assert refused.reason == "insufficient_capacity"
    assert refused.available == {"cpu": 1, "mem": 6}
    pool.release({"cpu": 3, "mem": 2})
    assert_idle(pool)


def test_can_acquire_and_acquire_nowait() -> None:
    pool = ResourceCapacitySource({"cpu": 2})
    assert pool.can_acquire({"cpu": 2})
    pool.acquire_nowait({"cpu": 2})
    assert not pool.can_acquire({"cpu": 1})
    with pytest.raises(trio.WouldBlock):
        pool.acquire_nowait({"cpu": 1})
    pool.release({"cpu": 2})


def test_untracked_resource_is_an_error_not_free() -> None:
    pool = ResourceCapacitySource({"slots": 3})
    with pytest.raises(UnknownResourceError, match=r"'capacity'.*no level"):
        pool.try_acquire({"capacity": 1})
    with pytest.raises(UnknownResourceError):
        pool.validate_cost({"slots": 1, "gpu": 1})
    # A resource tracked by an ancestor is fine.
    child = ResourceCapacitySource({"slots": 2}, ResourceCapacitySource({"gpu": 1}))
    child.validate_cost({"slots": 1, "gpu": 1})


def test_impossible_cost_is_refused_when_submitted_with_the_limits() -> None:
    root = ResourceCapacitySource({"mem": 8})
    child = ResourceCapacitySource({"mem": 16, "cpu": 4}, root)
    with pytest.raises(
        ImpossibleCostError, match=r"'mem' needs 10 but the ancestor .* limited to 8"
    ):
        child.validate_cost({"mem": 10})
    with pytest.raises(ImpossibleCostError, match="'cpu' needs 5 but this node is limited to 4"):
        child.try_acquire({"cpu": 5})
    assert isinstance(ImpossibleCostError("x"), ValueError)


async def test_impossible_acquire_raises_instead_of_hanging() -> None:
    pool = ResourceCapacitySource({"mem": 8})
    with pytest.raises(ImpossibleCostError):
        await pool.acquire({"mem": 9})


@pytest.mark.parametrize(
    ("cost", "error", "match"),
    [
        ({"cpu": -1}, ValueError, ">= 0"),
        ({"cpu": "1"}, TypeError, "must be a number"),
        ({"cpu": True}, TypeError, "must be a number"),
        ({"cpu": math.nan}, ValueError, "NaN"),
        ({"cpu": math.inf}, ValueError, "finite"),
        ({}, ValueError, "uses no resource"),
        ({"cpu": 0}, ValueError, "uses no resource"),
        ([("cpu", 1)], TypeError, "mapping"),
        ({1: 1}, TypeError, "non-empty strings"),
    ],
)
def test_bad_costs_are_refused(cost: object, error: type[Exception], match: str) -> None:
    pool = ResourceCapacitySource({"cpu": 4})
    with pytest.raises(error, match=match):
        pool.try_acquire(cost)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("limits", "error"),
    [
        ({"cpu": -1}, ValueError),
        ({"cpu": "4"}, TypeError),
        ({}, ValueError),
        (4, TypeError),
        ({"cpu": math.nan}, ValueError),
    ],
)
def test_bad_limits_are_refused(limits: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        ResourceCapacitySource(limits)  # type: ignore[arg-type]


def test_over_release_is_an_error_and_changes_nothing() -> None:
    pool = ResourceCapacitySource({"cpu": 4, "mem": 4})
    pool.acquire_nowait({"cpu": 2, "mem": 1})
    with pytest.raises(OverReleaseError, match="'mem' would go negative"):
        pool.release({"cpu": 1, "mem": 2})
    assert pool.in_use == {"cpu": 2, "mem": 1}
    pool.release({"cpu": 2, "mem": 1})
    with pytest.raises(OverReleaseError):
        pool.release({"cpu": 1})
    assert_idle(pool)


def test_lowering_a_limit_keeps_exact_debt() -> None:
    # The reference's example: limit 12, 10 in use; lower to 8; release 5 -> 3 available, not 5.
    pool = ResourceCapacitySource({"units": 12})
    pool.acquire_nowait({"units": 10})
    pool.set_limits({"units": 8})
    assert pool.available == {"units": -2}
    pool.release({"units": 5})
    assert pool.available == {"units": 3}
    assert not pool.try_acquire({"units": 4})
    assert pool.try_acquire({"units": 3})
    pool.release({"units": 8})
    assert_idle(pool)


def test_set_limits_partial_and_new_resources() -> None:
    pool = ResourceCapacitySource({"cpu": 4})
    pool.set_limits({"mem": 16})
    assert pool.limits == {"cpu": 4, "mem": 16}
    pool.validate_cost({"mem": 16})
    with pytest.raises(ValueError, match=">= 0"):
        pool.set_limits({"cpu": -1})
    assert pool.limits == {"cpu": 4, "mem": 16}


def test_reconcile_applies_the_difference_at_every_level() -> None:
    root = ResourceCapacitySource({"tokens": 100})
    child = ResourceCapacitySource({"tokens": 60}, root)
    child.acquire_nowait({"tokens": 50})
    child.reconcile({"tokens": 50}, {"tokens": 20})  # overestimate: 30 come back
    assert child.in_use == {"tokens": 20}
    assert root.in_use == {"tokens": 20}
    child.reconcile({"tokens": 20}, {"tokens": 70})  # underestimate: now in debt at the child
    assert child.available == {"tokens": -10}
    assert not child.try_acquire({"tokens": 1})
    with pytest.raises(OverReleaseError):
        child.reconcile({"tokens": 100}, {"tokens": 0})
    child.release({"tokens": 70})
    assert_idle(root, child)


def test_utilization_peek_and_statistics() -> None:
    root = ResourceCapacitySource({"cpu": 4, "gpu": 0, "net": math.inf})
    child = ResourceCapacitySource({"cpu": 8}, root)
    child.acquire_nowait({"cpu": 3})
    assert root.utilization == {"cpu": 0.75, "gpu": 0.0, "net": 0.0}
    assert child.peek() == {"cpu": 1}  # min over the chain
    child.acquire_nowait({"cpu": 1})
    assert child.peek() is None
    stats = root.statistics()
    assert stats.in_use == {"cpu": 4}
    assert stats.available == {"cpu": 0, "gpu": 0, "net": math.inf}
    assert stats.granted == 0  # grants are counted at the node they were made at
    assert child.statistics().granted == 2
    child.release({"cpu": 4})
    assert child.statistics().released == 1


def test_fractional_amounts_are_exact() -> None:
    pool = ResourceCapacitySource({"cpu": 1})
    for _ in range(10):
        pool.acquire_nowait({"cpu": 0.1})
    assert not pool.try_acquire({"cpu": 0.1})
    for _ in range(10):
        pool.release({"cpu": 0.1})
    assert_idle(pool)
    pool.acquire_nowait({"cpu": Fraction(1, 3)})
    pool.acquire_nowait({"cpu": Decimal("0.5")})
    assert pool.in_use == {"cpu": 5 / 6}
    pool.release({"cpu": Fraction(1, 3)})
    pool.release({"cpu": 0.5})
    assert_idle(pool)


async def test_acquire_waits_fifo_and_hold_always_releases(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"mem": 10})
    admitted: dict[str, float] = {}

    async def user(name: str, mem: int) -> None:
        async with pool.hold({"mem": mem}):
            admitted[name] = trio.current_time()
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        for name, mem in [("a", 6), ("b", 6), ("c", 2), ("d", 4)]:
            nursery.start_soon(user, name, mem)
            await trio.testing.wait_all_tasks_blocked()
    # Strict head of line: c (2) does not pass b (6) although it would fit beside a at t=0;
    # b and c enter together when a leaves; d (4) must wait for them (6 + 2 + 4 > 10).
    assert admitted == {"a": 0, "b": 1, "c": 1, "d": 2}
    assert_idle(pool)


async def test_hold_releases_on_error() -> None:
    pool = ResourceCapacitySource({"mem": 10})
    with pytest.raises(KeyError):
        async with pool.hold({"mem": 4}):
            raise KeyError("boom")
    assert_idle(pool)


async def test_backfill_passes_only_requests_that_cannot_delay_the_head(
    autojump_clock: object,
) -> None:
    pool = ResourceCapacitySource({"mem": 10, "cpu": 4}, backfill=True)
    order: list[str] = []

    async def user(name: str, cost: dict[str, int]) -> None:
        async with pool.hold(cost):
            order.append(name)
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        pool.acquire_nowait({"mem": 6})  # the head below will be short of mem
        nursery.start_soon(user, "head", {"mem": 6})
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(user, "needs-mem", {"mem": 2})  # would delay the head: waits
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(user, "cpu-only", {"cpu": 2})  # uses nothing the head lacks: passes
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["cpu-only"]
        pool.release({"mem": 6})
    assert order[0] == "cpu-only"
    assert sorted(order[1:]) == ["head", "needs-mem"]
    assert_idle(pool)


async def test_lowering_a_limit_fails_waiters_that_can_never_fit() -> None:
    pool = ResourceCapacitySource({"mem": 10})
    pool.acquire_nowait({"mem": 10})
    outcome: list[BaseException] = []

    async def user() -> None:
        try:
            await pool.acquire({"mem": 8})
        except ImpossibleCostError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(user)
        await trio.testing.wait_all_tasks_blocked()
        pool.set_limits({"mem": 6})
    assert len(outcome) == 1
    assert "limited to 6" in str(outcome[0])
    pool.release({"mem": 10})
    assert_idle(pool)


async def test_release_at_a_sibling_wakes_a_waiter_blocked_by_the_parent() -> None:
    root = ResourceCapacitySource({"conn": 2})
    a = ResourceCapacitySource({"conn": 2}, root)
    b = ResourceCapacitySource({"conn": 2}, root)
    a.acquire_nowait({"conn": 2})
    got = trio.Event()

    async def wants() -> None:
        await b.acquire({"conn": 1})
        got.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wants)
        await trio.testing.wait_all_tasks_blocked()
        assert not got.is_set()
        a.release({"conn": 1})
    assert got.is_set()
    assert_no_lost_wakeup(root)
    a.release({"conn": 1})
    b.release({"conn": 1})
    assert_idle(root, a, b)


def test_reset_and_increment_on_an_ordinary_node_never_forget_held_work() -> None:
    pool = ResourceCapacitySource({"cpu": 4})
    pool.acquire_nowait({"cpu": 3})
    assert pool.increment({"cpu": 2}) == {"cpu": 0}
    pool.reset()
    assert pool.available == {"cpu": 1}
    pool.reset({"cpu": 6})
    assert pool.available == {"cpu": 3}
    pool.release({"cpu": 3})


def test_parent_must_be_a_capacity_face() -> None:
    with pytest.raises(TypeError, match="parent must be"):
        ResourceCapacitySource({"cpu": 1}, parent=object())  # type: ignore[arg-type]
    ResourceCapacitySource({"cpu": 1}, parent=CapacitySource(3))
