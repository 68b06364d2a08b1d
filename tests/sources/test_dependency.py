"""DependencySource and PriorityDependencySource built before a trio run."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    NOTHING,
    DependencyGraph,
    DependencySource,
    MissingTaskError,
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


@pytest.mark.parametrize("cls", [DependencySource, PriorityDependencySource])
async def test_a_ready_key_without_a_task_is_passed_over_until_it_gets_one(
    cls: type[DependencySource[str, Any]],
) -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    source = cls(graph)
    woken: list[int] = []
    source.subscribe(lambda: woken.append(1))
    graph.add_node("late")
    graph.add_node("ready")
    source.set_task("ready", "task ready")
    assert source.waiting_for_tasks() == ["late"]
    assert source.peek() == "task ready"  # past "late", which waits for its task
    assert source.take_keyed() == ("ready", "task ready")
    assert source.peek() is NOTHING
    assert not source.exhausted  # not an error: "late" may still get its task
    woken.clear()
    source.set_task("late", "task late")
    assert woken  # the source tells its listeners (a runner) that "late" is startable
    assert source.take_keyed() == ("late", "task late")
    assert source.waiting_for_tasks() == []


def test_fail_if_missing_only_when_no_ready_key_has_a_task() -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    source: DependencySource[str, str] = DependencySource(graph, {"b": "task b"})
    graph.add_node("a")
    graph.add_node("b")
    assert not source.fail_if_missing()  # "b" can still run
    source.take_keyed()
    assert source.fail_if_missing()
    assert source.exhausted
    assert isinstance(source.failure, MissingTaskError)
    assert "'a' is ready but has no task" in str(source.failure)


@pytest.mark.parametrize("cls", [DependencySource, PriorityDependencySource])
async def test_peek_releases_a_due_retry_and_refuses_once_closed(
    cls: type[DependencySource[str, Any]], autojump_clock: trio.testing.MockClock
) -> None:
    # DependencySource implements peek() in one step (runners peek for every task they admit).
    source = cls(DependencyGraph())
    source.add_task("a", "task a")
    assert source.take_keyed() == ("a", "task a")
    assert source.fail("a", retry_at=trio.current_time() + 5)
    assert source.peek() is NOTHING  # not due yet
    await trio.sleep(5)
    assert source.peek() == "task a"  # due: released by the peek itself
    source.close()
    with pytest.raises(trio.ClosedResourceError):
        source.peek()
