"""Nodes added to a running graph before their task: ``graph.add_node(...)``, then
``source.set_task(...)``.

Rule: a ready node without a task is not startable (the nodes behind it are served meanwhile);
``set_task`` makes it startable and wakes the run. Only when the run has nothing else to do (no
task running, admitted, being settled or waiting for a retry, no other ready node with a task)
while a ready key still has no task does the run end with MissingTaskError, after the envelopes
of the tasks it ran.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    DependencyGraph,
    DependencySource,
    EnvelopeKind,
    MissingTaskError,
    NodeState,
    PriorityDependencySource,
    ResourceCapacitySource,
    RunParked,
    ScheduledTask,
    ScheduledTaskPoolRunner,
    TaskEnvelope,
)
from tests.helpers import assert_idle

Envelope = TaskEnvelope[Any, Any]
SOURCES = [DependencySource, PriorityDependencySource]


def job(key: str, log: list[str], seconds: float = 1) -> ScheduledTask[Any, Any]:
    async def body(emit: Any) -> str:
        log.append(key)
        await trio.sleep(seconds)
        return key

    return ScheduledTask(key, body)


def setup(
    source_type: type[DependencySource[str, Any]], slots: int = 2
) -> tuple[DependencyGraph[str], DependencySource[str, Any], ScheduledTaskPoolRunner[Any, Any]]:
    graph: DependencyGraph[str] = DependencyGraph()
    source = source_type(graph)
    pool = ResourceCapacitySource({"slots": slots})
    runner = ScheduledTaskPoolRunner("late", source, pool, default_cost={"slots": 1})
    return graph, source, runner


async def finals_of(runner: ScheduledTaskPoolRunner[Any, Any]) -> list[str]:
    async with runner.run_tasks() as envelopes:
        return [e.key async for e in envelopes if e.kind is EnvelopeKind.FINAL]


@pytest.mark.parametrize("source_type", SOURCES)
async def test_add_node_then_set_task_from_a_callback(
    autojump_clock: object, source_type: type[DependencySource[str, Any]]
) -> None:
    graph, source, runner = setup(source_type)
    log: list[str] = []

    def grow(key: str, result: Any) -> None:
        # As the scheduling guide says: the node first, its task after.
        graph.add_node("child", ["root"])  # ready at once: root completes right after this
        graph.add_node("free")  # no dependencies: ready now, before its task exists
        source.set_task("child", job("child", log))
        source.set_task("free", job("free", log))

    root = job("root", log)
    runner.add_task(ScheduledTask("root", root.runner, on_complete=grow))
    with trio.fail_after(100):
        assert sorted(await finals_of(runner)) == ["child", "free", "root"]
    assert graph.is_done
    assert_idle(runner.capacity)


@pytest.mark.parametrize("source_type", SOURCES)
async def test_add_node_then_set_task_from_the_consumer_and_from_a_task(
    autojump_clock: object, source_type: type[DependencySource[str, Any]]
) -> None:
    graph, source, runner = setup(source_type)
    log: list[str] = []

    async def spawner(emit: Any) -> str:
        graph.add_node("from task")
        await trio.sleep(1)  # the node waits, ready, for its task
        source.set_task("from task", job("from task", log))
        return "spawner"

    runner.add_task(ScheduledTask("spawner", spawner))
    runner.add_task(job("slow", log, seconds=5))
    seen: list[str] = []
    with trio.fail_after(100):
        async with runner.run_tasks() as envelopes:
            graph.add_node("from consumer", ["spawner"])
            await trio.sleep(0.5)
            source.set_task("from consumer", job("from consumer", log))
            async for envelope in envelopes:
                seen.append(envelope.key)
    assert sorted(seen) == ["from consumer", "from task", "slow", "spawner"]
    assert_idle(runner.capacity)


@pytest.mark.parametrize("source_type", SOURCES)
async def test_a_ready_node_without_task_does_not_block_those_behind_it(
    autojump_clock: object, source_type: type[DependencySource[str, Any]]
) -> None:
    graph, source, runner = setup(source_type, slots=1)
    log: list[str] = []
    graph.add_node("no task yet")  # first in line
    runner.add_task(job("a", log))
    runner.add_task(job("b", log))
    async with runner.run_tasks() as envelopes:
        await trio.sleep(1.5)
        assert log == ["a", "b"]  # served past the node that waits for its task
        source.set_task("no task yet", job("no task yet", log))
        keys = [e.key async for e in envelopes]
    assert keys == ["a", "b", "no task yet"]


@pytest.mark.parametrize("source_type", SOURCES)
async def test_a_task_never_set_raises_missing_task_error_when_nothing_else_can_run(
    autojump_clock: object, source_type: type[DependencySource[str, Any]]
) -> None:
    graph, _, runner = setup(source_type)
    log: list[str] = []
    runner.add_task(job("a", log, seconds=1))
    runner.add_task(job("b", log, seconds=3))
    seen: list[str] = []
    with trio.fail_after(100), pytest.raises(MissingTaskError, match="'orphan' is ready"):
        async with runner.run_tasks() as envelopes:
            graph.add_node("orphan", ["a"])  # never gets a task
            async for envelope in envelopes:
                seen.append(envelope.key)
    # Raised once nothing else could run: after "b", which ran past the orphan.
    assert seen == ["a", "b"]
    assert trio.current_time() == 3
    assert graph.get_state("orphan") is NodeState.READY
    assert_idle(runner.capacity)


async def test_missing_and_parked_together_the_error_wins(autojump_clock: object) -> None:
    graph, _, runner = setup(DependencySource)

    async def parks(emit: Any) -> None:
        raise RunParked("waits")

    runner.add_task(ScheduledTask("parks", parks))
    graph.add_node("orphan")
    with pytest.raises(MissingTaskError) as caught:
        await finals_of(runner)
    assert any("parked" in note for note in caught.value.__notes__)


async def test_a_source_read_directly_waits_for_the_task_then_fails_if_stalled(
    autojump_clock: object,
) -> None:
    """Read directly (no runner), "nothing else can happen" means: no node is running or
    waiting for its retry time."""
    graph: DependencyGraph[str] = DependencyGraph()
    source: DependencySource[str, str] = DependencySource(graph, {"x": "task x"})
    graph.add_node("x")
    graph.add_node("a")
    graph.add_node("b", ["a"])
    assert source.take_keyed() == ("x", "task x")  # "x" is running: its owner may add tasks
    received: list[str] = []

    async def consume() -> None:
        async for task in source:
            received.append(task)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.sleep(1)
        assert received == []  # "a" is ready but not startable: the reader waits
        source.set_task("a", "task a")
        await trio.sleep(1)
        assert received == ["task a"]
        source.set_task("b", "task b")
        graph.complete("a")
        await trio.sleep(1)
        assert received == ["task a", "task b"]
        graph.complete("b")
        graph.complete("x")  # the graph is done: the reader's loop ends
    # Nothing running, nothing due, and a ready key without a task: nothing can change that.
    graph.add_node("c")
    with pytest.raises(MissingTaskError, match="'c' is ready"):
        await source.receive()
