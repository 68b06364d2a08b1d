"""Property tests of parked tasks mixed with tasks that finish, fail, are cancelled or time out.

Whatever the mix, under a random two-level capacity tree:

* every task is either reported exactly once (one FINAL or ERROR envelope, of the kind its
  behaviour calls for) or parked exactly once (its key once in ``RunParked.keys``, no final
  envelope), never both; in a dependency graph the only other fate is to wait behind a parked
  node (never started, never reported);
* the run raises ``RunParked`` exactly when some task parked, after every envelope;
* the statistics count each outcome, and every unit is back at every level.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from sluiceway import (
    CapacitySource,
    DependencyGraph,
    DependencySource,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    ResourceCapacitySource,
    RunParked,
    ScheduledTask,
    ScheduledTaskPoolRunner,
    SourceBuffer,
    SourceFromIterable,
    TaskSpec,
)
from tests.helpers import assert_idle, grants_never_exceed_limits

# What a task does: finish, fail, park; "cancelled" waits until runner.cancel() reaches it;
# "parks when cancelled" turns that cancellation into a park; "times out" outlives its timeout.
BEHAVIOURS = ["finishes", "fails", "parks", "cancelled", "parks when cancelled", "times out"]


class Boom(Exception):
    pass


@dataclass
class TaskPlan:
    behaviour: str
    seconds: float
    emits: int


@dataclass
class Plan:
    tasks: list[TaskPlan]
    root_limit: int
    leaf_limit: int
    lazy: bool
    buffer_size: int
    consumer_delay: float


task_plans = st.builds(
    TaskPlan,
    behaviour=st.sampled_from(BEHAVIOURS),
    seconds=st.sampled_from([0, 0.5, 1, 3]),
    emits=st.integers(0, 2),
)
plans = st.builds(
    Plan,
    tasks=st.lists(task_plans, max_size=14),
    root_limit=st.integers(1, 4),
    leaf_limit=st.integers(1, 5),
    lazy=st.booleans(),
    buffer_size=st.sampled_from([1, 4, 64]),
    consumer_delay=st.sampled_from([0, 0, 0.25]),
)

EXPECTED = {
    "finishes": "FINAL",
    "fails": "Boom",
    "cancelled": "TaskCancelledError",
    "times out": "TaskTimeoutError",
}


def make_body(key: int, plan: TaskPlan) -> Any:
    async def work(emit: Any) -> int:
        for step in range(plan.emits):
            await emit(step)
        await trio.sleep(plan.seconds)
        if plan.behaviour == "fails":
            raise Boom(key)
        if plan.behaviour == "parks":
            raise RunParked(f"{key} parks")
        if plan.behaviour in ("cancelled", "parks when cancelled"):
            await trio.sleep_forever()
        if plan.behaviour == "times out":
            await trio.sleep(100)
        return key

    async def body(emit: Any) -> int:
        if plan.behaviour != "parks when cancelled":
            return await work(emit)
        try:
            return await work(emit)
        except trio.Cancelled:
            raise RunParked(f"{key} parks on cancellation") from None

    return body


def outcome(envelope: Any) -> str:
    if envelope.kind is EnvelopeKind.FINAL:
        return "FINAL"
    return type(envelope.error).__name__


@given(plans)
def test_each_task_is_reported_once_or_parked_once(plan: Plan) -> None:
    async def main() -> None:
        root = CapacitySource(plan.root_limit)
        leaf = CapacitySource(plan.leaf_limit, root)
        specs = [
            TaskSpec(make_body(key, task), key=key, timeout=10)
            for key, task in enumerate(plan.tasks)
        ]
        source: Any = SourceFromIterable(iter(specs)) if plan.lazy else SourceBuffer(specs)
        runner = HierarchicalTaskPoolRunner("mixed", source, leaf, buffer_size=plan.buffer_size)
        cancellable = {key for key, task in enumerate(plan.tasks) if "cancelled" in task.behaviour}
        finals: Counter[int] = Counter()
        outcomes: dict[int, str] = {}
        parked: tuple[Any, ...] = ()

        async def canceller() -> None:
            while True:  # cancel each cancellable task once it runs
                await trio.sleep(0.75)
                for key in list(cancellable):
                    if runner.cancel(key=key):
                        cancellable.discard(key)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(canceller)
            with trio.fail_after(10_000):
                try:
                    async with runner.run_tasks() as envelopes:
                        async for envelope in envelopes:
                            if envelope.is_final:
                                finals[envelope.key] += 1
                                outcomes[envelope.key] = outcome(envelope)
                            await trio.sleep(plan.consumer_delay)
                except RunParked as exc:
                    parked = exc.keys
            nursery.cancel_scope.cancel()

        expected_parked = sorted(
            key for key, task in enumerate(plan.tasks) if task.behaviour.startswith("parks")
        )
        assert sorted(parked) == expected_parked  # each parked task exactly once
        assert all(count == 1 for count in finals.values())  # each report exactly once
        assert set(finals).isdisjoint(parked)
        assert set(finals) | set(parked) == set(range(len(plan.tasks)))
        for key, task in enumerate(plan.tasks):
            if key in outcomes:
                assert outcomes[key] == EXPECTED[task.behaviour], (key, task)
        stats = runner.statistics()
        assert stats.parked == len(expected_parked)
        assert stats.started == len(plan.tasks)
        assert stats.finished + stats.failed + stats.cancelled + stats.timed_out == len(finals)
        assert stats.in_flight == 0
        assert_idle(root, leaf)

    with pytest.MonkeyPatch.context() as patch, grants_never_exceed_limits(patch):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@st.composite
def graph_plans(draw: st.DrawFn) -> tuple[list[list[int]], list[str]]:
    count = draw(st.integers(1, 16))
    deps = [
        sorted(set(draw(st.lists(st.integers(0, index - 1), max_size=2)))) if index else []
        for index in range(count)
    ]
    behaviours = [
        draw(st.sampled_from(["finishes", "finishes", "fails", "parks", "times out"]))
        for _ in range(count)
    ]
    return deps, behaviours


@given(graph_plans(), st.integers(1, 3))
def test_a_graph_with_parked_nodes_never_runs_what_waits_behind_them(
    plan: tuple[list[list[int]], list[str]], limit: int
) -> None:
    deps, behaviours = plan

    async def main() -> None:
        root = ResourceCapacitySource({"slots": limit + 1})
        pool = ResourceCapacitySource({"slots": limit}, root)
        graph: DependencyGraph[int] = DependencyGraph()
        runner = ScheduledTaskPoolRunner(
            "dag", DependencySource(graph), pool, default_cost={"slots": 1}
        )
        started: list[int] = []

        def task(key: int) -> Any:
            body = make_body(key, TaskPlan(behaviours[key], 1, 0))

            async def traced(emit: Any) -> Any:
                started.append(key)
                return await body(emit)

            return traced

        for key, key_deps in enumerate(deps):
            runner.add_task(ScheduledTask(key, task(key), timeout=10), key_deps)
        finals: Counter[int] = Counter()
        parked: tuple[Any, ...] = ()
        with trio.fail_after(10_000):
            try:
                async with runner.run_tasks() as envelopes:
                    async for envelope in envelopes:
                        if envelope.is_final:
                            finals[envelope.key] += 1
            except RunParked as exc:
                parked = exc.keys
        assert all(count == 1 for count in finals.values())
        assert set(finals).isdisjoint(parked)
        assert len(set(parked)) == len(parked)
        assert all(behaviours[key] == "parks" for key in parked)
        # Whatever is neither reported nor parked waits behind a parked node, and never ran.
        behind_parked: set[int] = set()
        for key, key_deps in enumerate(deps):  # keys are in topological order
            if any(dep in parked or dep in behind_parked for dep in key_deps):
                behind_parked.add(key)
        for key in range(len(deps)):
            if key not in finals and key not in parked:
                assert key in behind_parked, key
                assert key not in started
                assert graph.get_state(key).name == "PENDING"
        assert all(key in finals or key in parked for key in started)
        assert runner.statistics().parked == len(parked)
        assert_idle(root, pool)

    with pytest.MonkeyPatch.context() as patch, grants_never_exceed_limits(patch):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
