"""Property tests of ScheduledTaskPoolRunner over random DAGs.

Random graphs with random multi-resource costs under a two-level capacity tree, random failures
(some retried), and random aborts of running or waiting nodes. Whatever happens:

* no task starts before every one of its dependencies has completed;
* at every grant, no level of the tree is over any limit;
* the graph ends done: every node completed or aborted;
* every node is reported exactly once with a final envelope, FINAL exactly for the completed
  nodes and ERROR for the aborted ones;
* every unit of every resource is back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import event, given
from hypothesis import strategies as st

from sluiceway import (
    DependencyGraph,
    DependencySource,
    EnvelopeKind,
    NodeState,
    PriorityDependencySource,
    PrioritySource,
    ResourceCapacitySource,
    RetryPolicy,
    RetryScheduled,
    ScheduledTask,
    ScheduledTaskPoolRunner,
    TaskAbortedError,
)
from tests.helpers import assert_idle, grants_never_exceed_limits


@dataclass
class NodePlan:
    deps: list[int]
    cost: dict[str, int]
    seconds: float
    failures: int  # how many attempts fail before one succeeds


@dataclass
class Plan:
    nodes: list[NodePlan]
    retries: int
    aborts: list[tuple[float, int]]
    prioritised: bool
    global_limits: dict[str, int]
    pool_limits: dict[str, int]


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    count = draw(st.integers(1, 25))
    nodes = []
    for index in range(count):
        deps = sorted(
            set(draw(st.lists(st.integers(0, index - 1), max_size=3))) if index else set()
        )
        cost = {"cpu": draw(st.integers(1, 3))}
        if draw(st.booleans()):
            cost["mem"] = draw(st.integers(1, 4))
        nodes.append(
            NodePlan(
                deps=deps,
                cost=cost,
                seconds=draw(st.sampled_from([0, 0.5, 1, 2])),
                failures=draw(st.sampled_from([0, 0, 0, 1, 2, 5])),
            )
        )
    return Plan(
        nodes=nodes,
        retries=draw(st.integers(1, 3)),
        aborts=draw(
            st.lists(
                st.tuples(st.sampled_from([0.25, 1, 2.5, 4]), st.integers(0, count - 1)),
                max_size=3,
            )
        ),
        prioritised=draw(st.booleans()),
        global_limits={"cpu": draw(st.integers(3, 6)), "mem": draw(st.integers(4, 8))},
        pool_limits={"cpu": draw(st.integers(3, 8)), "mem": draw(st.integers(4, 10))},
    )


@given(plans())
def test_random_dags(plan: Plan) -> None:
    async def main() -> None:
        glob = ResourceCapacitySource(plan.global_limits)
        pool = ResourceCapacitySource(plan.pool_limits, glob)
        graph: DependencyGraph[int] = DependencyGraph()
        source: DependencySource[int, Any]
        if plan.prioritised:
            source = PriorityDependencySource(
                graph, priority=lambda key, task: key % 3, aging_rate=1, max_age_boost=2
            )
        else:
            source = DependencySource(graph)
        runner = ScheduledTaskPoolRunner(
            "dag", source, pool, retry=RetryPolicy(attempts=plan.retries, backoff=0.5)
        )
        attempts: dict[int, int] = {}

        def task(key: int, node: NodePlan) -> Any:
            async def body(emit: Any) -> int:
                for dependency in node.deps:
                    assert graph.get_state(dependency) is NodeState.COMPLETED, (
                        f"{key} started before its dependency {dependency} completed"
                    )
                attempts[key] = attempts.get(key, 0) + 1
                await emit("working")
                await trio.sleep(node.seconds)
                if attempts[key] <= node.failures:
                    raise RuntimeError(f"{key} failed attempt {attempts[key]}")
                return key

            return body

        for key, node in enumerate(plan.nodes):
            runner.add_task(ScheduledTask(key, task(key, node), cost=node.cost), node.deps)

        async def abort_later(at: float, key: int) -> None:
            await trio.sleep(at)
            runner.abort(key)

        finals: dict[int, Any] = {}
        async with trio.open_nursery() as nursery:
            for at, key in plan.aborts:
                nursery.start_soon(abort_later, at, key)
            async with runner.run_tasks() as envelopes:
                async for envelope in envelopes:
                    if envelope.is_final:
                        assert envelope.key not in finals, f"{envelope.key} reported twice"
                        finals[envelope.key] = envelope

        assert graph.is_done
        assert sorted(finals) == list(range(len(plan.nodes)))
        stats = runner.statistics()
        aborted_running = any(
            isinstance(e.error, TaskAbortedError) and "while running" in str(e.error)
            for e in finals.values()
        )
        event(f"retried: {'some' if stats.retried else 'none'}")
        event(f"aborted: {'some' if stats.aborted else 'none'}")
        event(f"aborted while running: {'yes' if aborted_running else 'no'}")
        for key, envelope in finals.items():
            state = graph.get_state(key)
            if envelope.kind is EnvelopeKind.FINAL:
                assert state is NodeState.COMPLETED
            else:
                assert state is NodeState.ABORTED
            if state is NodeState.COMPLETED:
                assert attempts[key] == plan.nodes[key].failures + 1
                assert attempts[key] <= plan.retries
        assert_idle(glob, pool)

    with pytest.MonkeyPatch.context() as patch, grants_never_exceed_limits(patch):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@dataclass
class PlainPlan:
    tasks: list[NodePlan]
    retries: int
    source: str
    shutdown: tuple[float, str] | None
    limits: dict[str, int]


@st.composite
def plain_plans(draw: st.DrawFn) -> PlainPlan:
    tasks = [
        NodePlan(
            deps=[],
            cost={"cpu": draw(st.integers(1, 3))},
            seconds=draw(st.sampled_from([0, 0.5, 1, 2])),
            failures=draw(st.sampled_from([0, 0, 1, 2, 5])),
        )
        for _ in range(draw(st.integers(1, 25)))
    ]
    return PlainPlan(
        tasks=tasks,
        retries=draw(st.integers(1, 3)),
        source=draw(st.sampled_from(["list", "priority", "lazy"])),
        shutdown=draw(
            st.none()
            | st.tuples(st.sampled_from([0.25, 1, 2.5, 6]), st.sampled_from(["drain", "cancel"]))
        ),
        limits={"cpu": draw(st.integers(3, 6))},
    )


@given(plain_plans())
def test_random_retries_from_plain_sources(plan: PlainPlan) -> None:
    """Retries without a graph, from every kind of source, with shutdowns at random times:
    every task is reported exactly once, under one task id; a task succeeds exactly when one
    of its allowed attempts does; no limit is exceeded; all capacity comes back."""

    async def main() -> None:
        pool = ResourceCapacitySource(plan.limits)
        attempts: dict[int, int] = {}

        def task(key: int, node: NodePlan) -> ScheduledTask[Any, Any]:
            async def body(emit: Any) -> int:
                attempts[key] = attempts.get(key, 0) + 1
                await trio.sleep(node.seconds)
                if attempts[key] <= node.failures:
                    raise RuntimeError(f"{key} failed attempt {attempts[key]}")
                return key

            return ScheduledTask(key, body, cost=node.cost)

        tasks = [task(key, node) for key, node in enumerate(plan.tasks)]
        source: Any
        if plan.source == "list":
            source = tasks
        elif plan.source == "priority":
            source = PrioritySource()
            for item in tasks:
                source.enqueue(item, priority=-item.key)  # the reverse of the key order
            source.close_input()
        else:

            async def produce() -> Any:
                for item in tasks:
                    await trio.sleep(0.1)
                    yield item

            source = produce()
        runner = ScheduledTaskPoolRunner(
            "plain", source, pool, retry=RetryPolicy(attempts=plan.retries, backoff=0.5)
        )

        async def shut_down_later(at: float, mode: Any) -> None:
            await trio.sleep(at)
            runner.shutdown(mode)

        finals: dict[int, Any] = {}
        ids: dict[int, set[int]] = {}
        retries_announced = 0
        async with trio.open_nursery() as nursery:
            if plan.shutdown is not None:
                nursery.start_soon(shut_down_later, *plan.shutdown)
            async with runner.run_tasks() as envelopes:
                async for envelope in envelopes:
                    ids.setdefault(envelope.key, set()).add(envelope.task_id)
                    if isinstance(envelope.value, RetryScheduled):
                        retries_announced += 1
                    if envelope.is_final:
                        assert envelope.key not in finals, f"{envelope.key} reported twice"
                        finals[envelope.key] = envelope
            nursery.cancel_scope.cancel()

        stats = runner.statistics()
        event(f"retried: {'some' if stats.retried else 'none'}")
        event(f"shut down: {plan.shutdown[1] if plan.shutdown else 'no'}")
        assert all(len(task_ids) == 1 for task_ids in ids.values())
        if plan.shutdown is None or plan.source != "lazy":
            # A plain source keeps what was never taken; everything taken is reported.
            taken = set(attempts) | {k for k, e in finals.items() if e.kind is EnvelopeKind.ERROR}
            assert taken <= set(finals)
        if plan.shutdown is None:
            assert sorted(finals) == list(range(len(plan.tasks)))
        for key, envelope in finals.items():
            node = plan.tasks[key]
            if envelope.kind is EnvelopeKind.FINAL:
                assert attempts[key] == node.failures + 1 <= plan.retries
            elif isinstance(envelope.error, RuntimeError):
                assert attempts[key] <= node.failures
                # All its attempts were made, unless a shutdown stopped further ones.
                assert attempts[key] == plan.retries or plan.shutdown is not None
            else:
                assert plan.shutdown is not None
        # Every retry is announced; each one that came due ran another attempt.
        assert stats.retried == retries_announced
        assert sum(attempts.values()) - len(attempts) <= retries_announced
        if plan.shutdown is None:
            assert sum(attempts.values()) - len(attempts) == retries_announced
        assert_idle(pool)

    with pytest.MonkeyPatch.context() as patch, grants_never_exceed_limits(patch):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
