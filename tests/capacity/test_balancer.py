"""HierarchicalBalancer: grow busy children, shrink idle ones, with hysteresis (virtual time)."""

from __future__ import annotations

import pytest
import trio

from sluiceway import BalancedChild, CapacitySource, HierarchicalBalancer, ResourceCapacitySource


async def test_busy_child_grows_and_idle_child_shrinks(autojump_clock: object) -> None:
    root = ResourceCapacitySource({"conn": 20})
    busy = ResourceCapacitySource({"conn": 4}, root)
    idle = ResourceCapacitySource({"conn": 8}, root)
    balancer = HierarchicalBalancer(
        [
            BalancedChild(busy, min={"conn": 2}, max={"conn": 6}),
            BalancedChild(idle, min={"conn": 5}, max={"conn": 10}),
        ],
        check_interval=1,
        idle_time=5,
        busy_time=5,
    )
    busy.acquire_nowait({"conn": 4})  # utilisation 1.0 > 0.85
    async with balancer.running():
        assert balancer.is_running
        await trio.sleep(5.5)
        assert busy.limits == {"conn": 5}  # one step after 5 s of being busy
        assert idle.limits == {"conn": 7}  # one step after 5 s of being idle
        busy.acquire_nowait({"conn": 1})  # 5/5: still busy after growing
        await trio.sleep(4)
        assert busy.limits == {"conn": 5}  # the clock restarted after the change: wait again
        await trio.sleep(1.5)
        assert busy.limits == {"conn": 6}
        await trio.sleep(30)
        assert busy.limits == {"conn": 6}  # clamped at max
        assert idle.limits == {"conn": 5}  # clamped at min
    assert not balancer.is_running
    busy.release({"conn": 5})


async def test_hysteresis_band_changes_nothing(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"conn": 10})
    balancer = HierarchicalBalancer(
        [BalancedChild(pool, min={"conn": 1}, max={"conn": 20})], check_interval=1
    )
    pool.acquire_nowait({"conn": 5})  # 0.5: neither idle (< 0.3) nor busy (> 0.85)
    async with balancer.running():
        await trio.sleep(60)
    assert pool.limits == {"conn": 10}
    pool.release({"conn": 5})


async def test_manual_check_and_unit_children() -> None:
    cap = CapacitySource(4)
    balancer = HierarchicalBalancer(
        [BalancedChild(cap, min=2, max=8, increment=2)], idle_time=0, busy_time=0
    )
    changes = balancer.check()
    assert [(c.kind, c.before, c.after) for c in changes] == [
        ("shrink", {"slots": 4}, {"slots": 2})
    ]
    for i in range(2):
        cap.acquire_on_behalf_of_nowait(i)
    changes = balancer.check()
    assert [(c.kind, c.after) for c in changes] == [("grow", {"slots": 4})]


def test_bad_configuration_is_refused() -> None:
    pool = ResourceCapacitySource({"conn": 4})
    with pytest.raises(TypeError, match="BalancedChild"):
        HierarchicalBalancer([pool])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="does not limit"):
        HierarchicalBalancer([BalancedChild(pool, min={"cpu": 1}, max={"cpu": 2})])
    with pytest.raises(ValueError, match="min 5 > max"):
        HierarchicalBalancer([BalancedChild(pool, min={"conn": 5}, max={"conn": 2})])
    with pytest.raises(ValueError, match="hysteresis"):
        HierarchicalBalancer([], idle_threshold=0.9, busy_threshold=0.5)
    with pytest.raises(ValueError, match="> 0"):
        HierarchicalBalancer([], check_interval=0)


async def test_running_twice_is_refused() -> None:
    balancer = HierarchicalBalancer([])
    async with balancer.running():
        with pytest.raises(RuntimeError, match="already running"):
            async with balancer.running():
                pass  # pragma: no cover
