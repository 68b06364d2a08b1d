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
    ResourceCapacitySource,
    RetryPolicy,
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
