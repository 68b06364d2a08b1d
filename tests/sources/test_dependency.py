"""DependencySource and PriorityDependencySource built before a trio run."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    DependencyGraph,
    DependencySource,
    PriorityDependencySource,
    ResourceCapacitySource,
    ScheduledTask,
    ScheduledTaskPoolRunner,
)


@pytest.mark.parametrize("cls", [DependencySource, PriorityDependencySource])
def test_a_graph_built_before_trio_run(cls: type[DependencySource[str, Any]]) -> None:
    source = cls(DependencyGraph())
    pool = ResourceCapacitySource({"slots": 2})
    runner = ScheduledTaskPoolRunner("early", source, pool, default_cost={"slots": 1})
    done: list[str] = []

    def task(name: str) -> Any:
        async def body(emit: Any) -> str:
            await trio.sleep(1)
            done.append(name)
            return name

        return body

    runner.add_task(ScheduledTask("a", task("a")))  # outside trio: "a" is ready already
    runner.add_task(ScheduledTask("b", task("b")), ["a"])
    assert source.queued_time("a") is None  # no clock yet

    async def main() -> None:
        async with runner.run_tasks() as envelopes:
            async for _ in envelopes:
                pass

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert done == ["a", "b"]
