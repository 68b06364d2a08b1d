"""Property tests of the runners over random trees, tasks, errors, limit changes and early exits.

Invariants:
* at every grant no level of the tree is over a limit, and no runner has more live tasks than
  its node allows;
* a run that is read to the end reports every task exactly once (FINAL or ERROR), and each
  task's envelopes come in order (its INTERMEDIATE values as emitted, then the final one);
* whatever happens (early exit, stop_on_error, timeouts, cancellations), every unit of capacity
  is back and nobody waits once all runs have ended.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from sluiceway import (
    CapacitySource,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    ResourceCapacitySource,
    SourceBuffer,
    SourceFromIterable,
    TaskSpec,
    TaskTimeoutError,
)
from sluiceway.capacity import BaseCapacity
from tests.helpers import assert_idle, grants_never_exceed_limits


class Boom(Exception):
    pass


@dataclass
class TaskPlan:
    emits: int
    seconds: float
    fails: bool
    timeout: float | None


@dataclass
class RunPlan:
    node_limit: int
    parent: int | None
    tasks: list[TaskPlan]
    lazy: bool
    resource_cost: bool
    stop_on_error: bool
    read_at_most: int | None
    consumer_delay: float
    buffer_size: int
    start_at: float


task_plans = st.builds(
    TaskPlan,
    emits=st.integers(0, 3),
    seconds=st.sampled_from([0, 0.5, 1, 2]),
    fails=st.booleans(),
    timeout=st.sampled_from([None, None, None, 1.5]),
)


@st.composite
def plans(draw: st.DrawFn) -> tuple[list[int], list[RunPlan], list[tuple[float, int, int]]]:
    roots = [draw(st.integers(1, 6)) for _ in range(draw(st.integers(1, 2)))]
    runs = [
        RunPlan(
            node_limit=draw(st.integers(1, 5)),
            parent=draw(st.one_of(st.none(), st.integers(0, len(roots) - 1))),
            tasks=draw(st.lists(task_plans, max_size=12)),
            lazy=draw(st.booleans()),
            resource_cost=draw(st.booleans()),
            stop_on_error=draw(st.booleans()),
            read_at_most=draw(st.one_of(st.none(), st.integers(0, 8))),
            consumer_delay=draw(st.sampled_from([0, 0, 0.25, 1])),
            buffer_size=draw(st.sampled_from([1, 2, 64])),
            start_at=draw(st.sampled_from([0, 0, 0.5, 1])),
        )
        for _ in range(draw(st.integers(1, 4)))
    ]
    changes = [
        (draw(st.sampled_from([0.25, 1, 2.5])), draw(st.integers(0, len(runs) - 1)), value)
        for value in draw(st.lists(st.integers(1, 5), max_size=3))
    ]
    return roots, runs, changes


def make_task(plan: TaskPlan, live: dict[int, int], peak: dict[int, int], run: int) -> Any:
    async def body(emit: Any) -> str:
        live[run] += 1
        peak[run] = max(peak[run], live[run])
        try:
            for step in range(plan.emits):
                await emit(step)
                await trio.sleep(plan.seconds / (plan.emits + 1))
            await trio.sleep(plan.seconds / (plan.emits + 1))
            if plan.fails:
                raise Boom
            return "ok"
        finally:
            live[run] -= 1

    return TaskSpec(body, timeout=plan.timeout) if plan.timeout else body


@given(plans())
def test_random_runs_report_everything_and_leak_nothing(
    plan: tuple[list[int], list[RunPlan], list[tuple[float, int, int]]],
) -> None:
    roots_limits, runs, changes = plan

    async def main() -> None:
        roots: list[BaseCapacity] = [CapacitySource(limit) for limit in roots_limits]
        nodes: dict[int, BaseCapacity] = {}
        live: dict[int, int] = defaultdict(int)
        peak: dict[int, int] = defaultdict(int)
        limits_seen: dict[int, int] = {}

        async def one(index: int, run: RunPlan) -> None:
            await trio.sleep(run.start_at)
            parent = None if run.parent is None else roots[run.parent]
            node: BaseCapacity
            if run.resource_cost:
                node = ResourceCapacitySource({"slots": run.node_limit}, parent)
                cost: dict[str, int] | None = {"slots": 1}
            else:
                node = CapacitySource(run.node_limit, parent)
                cost = None
            nodes[index] = node
            limits_seen[index] = run.node_limit
            tasks = [make_task(task, live, peak, index) for task in run.tasks]
            source: Any = SourceFromIterable(iter(tasks)) if run.lazy else SourceBuffer(tasks)
            runner = HierarchicalTaskPoolRunner(
                f"run{index}", source, node, cost=cost, buffer_size=run.buffer_size
            )
            seen: dict[int, list[Any]] = defaultdict(list)
            finals: dict[int, Any] = {}
            read = 0
            read_all = False
            try:
                async with runner.run_tasks(stop_on_error=run.stop_on_error) as envelopes:
                    async for envelope in envelopes:
                        assert envelope.task_id not in finals, "envelope after the final one"
                        if envelope.kind is EnvelopeKind.INTERMEDIATE:
                            seen[envelope.task_id].append(envelope.value)
                        else:
                            finals[envelope.task_id] = envelope
                        read += 1
                        if run.read_at_most is not None and read >= run.read_at_most:
                            break
                        await trio.sleep(run.consumer_delay)
                    else:
                        read_all = True
            except (Boom, TaskTimeoutError):
                assert run.stop_on_error
                return
            for values in seen.values():
                assert values == list(range(len(values))), "INTERMEDIATE values out of order"
            if read_all:
                assert sorted(finals) == list(range(1, len(run.tasks) + 1))
                for task_id, envelope in finals.items():
                    if envelope.kind is EnvelopeKind.FINAL:
                        assert len(seen[task_id]) == run.tasks[task_id - 1].emits

        async def change(at: float, index: int, value: int) -> None:
            await trio.sleep(at)
            if index in nodes:
                node = nodes[index]
                if isinstance(node, CapacitySource):
                    node.total_tokens = value
                else:
                    assert isinstance(node, ResourceCapacitySource)
                    node.set_limits({"slots": value})
                limits_seen[index] = max(limits_seen[index], value)

        async with trio.open_nursery() as nursery:
            for at, index, value in changes:
                nursery.start_soon(change, at, index, value)
            for index, run in enumerate(runs):
                nursery.start_soon(one, index, run)
        for index, limit in limits_seen.items():
            assert peak[index] <= limit, "a runner had more live tasks than its node allows"
        assert_idle(*roots, *nodes.values())

    with pytest.MonkeyPatch.context() as patch, grants_never_exceed_limits(patch):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
