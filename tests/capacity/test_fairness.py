"""Max-min fairness across siblings and work conservation, with plain waiters (virtual time)."""

from __future__ import annotations

import trio
import trio.testing

from sluiceway import CapacitySource, ResourceCapacitySource
from tests.helpers import assert_idle


async def _job(cap: CapacitySource, tasks: int, seconds: float, done: dict[str, float], name: str):
    async def one() -> None:
        async with cap:
            await trio.sleep(seconds)

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
    done[name] = trio.current_time()


async def test_work_conserving_hierarchy_hits_the_lower_bound(autojump_clock: object) -> None:
    # Global 10; A: 200 x 1 s, limit 2, queued first; B: 200 x 1 s, limit 50.
    # Two naively nested trio limiters take 116-118 s and starve one job; the bound is 100 s.
    glob = CapacitySource(10)
    a = CapacitySource(2, glob)
    b = CapacitySource(50, glob)
    done: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_job, a, 200, 1, done, "A")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(_job, b, 200, 1, done, "B")
    assert done == {"A": 100, "B": 25}
    assert trio.current_time() == 100
    assert_idle(glob, a, b)


async def test_freed_unit_goes_to_the_child_with_fewest_in_use(autojump_clock: object) -> None:
    glob = CapacitySource(4)
    busy = CapacitySource(4, glob)
    light = CapacitySource(4, glob)
    for i in range(3):
        busy.acquire_on_behalf_of_nowait(("busy", i))
    light.acquire_on_behalf_of_nowait(("light", 0))
    got: list[str] = []

    async def wait_for(cap: CapacitySource, name: str) -> None:
        await cap.acquire_on_behalf_of(name)
        got.append(name)

    async with trio.open_nursery() as nursery:
        # busy's waiter queued first, so FIFO alone would serve it; fairness serves light.
        nursery.start_soon(wait_for, busy, "busy-waiter")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(wait_for, light, "light-waiter")
        await trio.testing.wait_all_tasks_blocked()
        busy.release_on_behalf_of(("busy", 0))  # 2 busy vs 1 light in use
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["light-waiter"]
        busy.release_on_behalf_of(("busy", 1))
    assert got == ["light-waiter", "busy-waiter"]


async def test_ties_go_to_the_request_that_waited_longest(autojump_clock: object) -> None:
    glob = CapacitySource(1)
    x = CapacitySource(1, glob)
    y = CapacitySource(1, glob)
    glob_holder = CapacitySource(1, glob)
    glob_holder.acquire_on_behalf_of_nowait("h")
    got: list[str] = []

    async def wait_for(cap: CapacitySource, name: str) -> None:
        await cap.acquire_on_behalf_of(name)
        got.append(name)
        cap.release_on_behalf_of(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for, y, "y")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(wait_for, x, "x")
        await trio.testing.wait_all_tasks_blocked()
        glob_holder.release_on_behalf_of("h")
    assert got == ["y", "x"]


async def test_weighted_head_is_not_starved_by_small_siblings(autojump_clock: object) -> None:
    # Strict rule across siblings: the fairness winner (big, 0 in use) reserves the parent.
    root = ResourceCapacitySource({"mem": 10})
    big = ResourceCapacitySource({"mem": 10}, root)
    small = ResourceCapacitySource({"mem": 10}, root)
    small.acquire_nowait({"mem": 6})
    admitted: list[str] = []

    async def want(face: ResourceCapacitySource, name: str, mem: int) -> None:
        await face.acquire({"mem": mem})
        admitted.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(want, big, "big", 8)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(want, small, "small", 2)
        await trio.testing.wait_all_tasks_blocked()
        # 4 free: small's 2 would fit, but big (fewer in use) is due first and needs 8.
        assert admitted == []
        small.release({"mem": 6})
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(admitted) == ["big", "small"]
    big.release({"mem": 8})
    small.release({"mem": 2})
    assert_idle(root, big, small)


async def test_deep_tree_release_reaches_every_descendant(autojump_clock: object) -> None:
    root = CapacitySource(2)
    mid1 = CapacitySource(2, root)
    mid2 = CapacitySource(2, root)
    leaf1 = CapacitySource(2, mid1)
    leaf2 = CapacitySource(2, mid2)
    leaf1.acquire_on_behalf_of_nowait("a")
    leaf1.acquire_on_behalf_of_nowait("b")
    got = trio.Event()

    async def waiter() -> None:
        await leaf2.acquire_on_behalf_of("c")
        got.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not got.is_set()
        leaf1.release_on_behalf_of("a")
    assert got.is_set()
    leaf1.release_on_behalf_of("b")
    leaf2.release_on_behalf_of("c")
    assert_idle(root, mid1, mid2, leaf1, leaf2)
