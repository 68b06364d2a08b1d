"""A lazy source that raises a BaseException (KeyboardInterrupt, SystemExit, a custom one) while
the runner holds the grant of the item it was producing: the exception propagates, and every unit
is back at every level of the capacity tree."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    CapacitySource,
    HierarchicalTaskPoolRunner,
    QuotaCapacitySource,
    ResourceCapacitySource,
    SourceFromIterable,
)
from sluiceway.capacity import BaseCapacity
from tests.helpers import assert_idle


class Halt(BaseException):
    """A BaseException of the program's own (not an Exception)."""


def task(seconds: float) -> Any:
    async def body(emit: Any) -> float:
        await trio.sleep(seconds)
        return seconds

    return body


def sync_tasks(error: BaseException, after: int) -> Iterator[Any]:
    for i in range(after):
        yield task(1 + i % 3)
    raise error


async def async_tasks(error: BaseException, after: int) -> AsyncIterator[Any]:
    for i in range(after):
        await trio.sleep(0.25)
        yield task(1 + i % 3)
    raise error


def trees() -> list[tuple[str, Any]]:
    def unit() -> tuple[BaseCapacity, list[BaseCapacity]]:
        root = CapacitySource(3)
        leaf = CapacitySource(2, root)
        return leaf, [root, leaf]

    def resource() -> tuple[BaseCapacity, list[BaseCapacity]]:
        root = ResourceCapacitySource({"slots": 3})
        leaf = ResourceCapacitySource({"slots": 2}, root)
        return leaf, [root, leaf]

    return [("unit", unit), ("resource", resource)]


@pytest.mark.parametrize("make_error", [Halt, KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("after", [0, 1, 4])
@pytest.mark.parametrize(("tree_name", "tree"), trees())
async def test_a_base_exception_from_a_lazy_source_leaks_nothing(
    autojump_clock: object,
    make_error: type[BaseException],
    kind: str,
    after: int,
    tree_name: str,
    tree: Any,
) -> None:
    leaf, levels = tree()
    error = make_error("the source gave up")
    iterable: Any = sync_tasks(error, after) if kind == "sync" else async_tasks(error, after)
    cost = {"slots": 1} if tree_name == "resource" else None
    runner = HierarchicalTaskPoolRunner("lazy", SourceFromIterable(iterable), leaf, cost=cost)
    received = 0
    with pytest.raises(make_error, match="the source gave up"):
        async with runner.run_tasks() as envelopes:
            async for _ in envelopes:
                received += 1
    assert received <= after
    assert_idle(*levels)
    assert runner.statistics().in_flight == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_quota_gets_the_grant_of_the_unproduced_item_back(
    autojump_clock: object, kind: str
) -> None:
    quota = QuotaCapacitySource({"slots": 10})
    leaf = ResourceCapacitySource({"slots": 2}, quota)
    error = Halt("the source gave up")
    iterable: Any = sync_tasks(error, 3) if kind == "sync" else async_tasks(error, 3)
    runner = HierarchicalTaskPoolRunner(
        "lazy", SourceFromIterable(iterable), leaf, cost={"slots": 1}
    )
    with pytest.raises(Halt):
        async with runner.run_tasks() as envelopes:
            async for _ in envelopes:
                pass
    assert_idle(quota, leaf)
    # Only tasks that ran consumed quota: not the grant of the item the source failed to make.
    assert quota.capacity_statistics().consumed.get("slots", 0) <= runner.statistics().started


async def test_a_sibling_run_advancing_the_iterable_leaks_nothing_either(
    autojump_clock: object,
) -> None:
    """Run A's synchronous iterable is advanced in the step that grants A a unit, here the
    release of run B's task (they share a parent). Its BaseException then propagates in B, and
    A learns of it from its source: both blocks raise it, and nothing is held anywhere."""
    root = CapacitySource(1)
    a_node = CapacitySource(1, root)
    b_node = CapacitySource(1, root)

    def a_tasks() -> Iterator[Any]:
        raise Halt("A's source gave up")
        yield  # a generator

    runner_a = HierarchicalTaskPoolRunner("a", SourceFromIterable(a_tasks()), a_node)
    runner_b = HierarchicalTaskPoolRunner("b", [task(1)], b_node)
    raised: dict[str, BaseException] = {}

    async def consume(name: str, runner: HierarchicalTaskPoolRunner[Any, Any]) -> None:
        try:
            async with runner.run_tasks() as envelopes:
                async for _ in envelopes:
                    pass
        except Halt as exc:
            raised[name] = exc

    with trio.fail_after(100):  # virtual time: a run left waiting fails instead of hanging
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume, "b", runner_b)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(consume, "a", runner_a)
    assert set(raised) == {"a", "b"}
    assert all(str(exc) == "A's source gave up" for exc in raised.values())
    assert_idle(root, a_node, b_node)
