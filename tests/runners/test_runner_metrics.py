"""Metrics from the capacity tree and the runners, through the default in-memory collector."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    CapacitySource,
    DependencyGraph,
    DependencySource,
    HierarchicalTaskPoolRunner,
    InMemoryMetrics,
    ResourceCapacitySource,
    RetryPolicy,
    RunParked,
    ScheduledTask,
    ScheduledTaskPoolRunner,
    TaskEvent,
)


def sleeper(seconds: float, fails: int = 0) -> Any:
    attempts = 0

    async def body(emit: Any) -> str:
        nonlocal attempts
        attempts += 1
        await emit("tick")
        await trio.sleep(seconds)
        if attempts <= fails:
            raise ConnectionError("flaky")
        return "ok"

    return body


async def test_scheduled_run_metrics(autojump_clock: object) -> None:
    metrics = InMemoryMetrics()
    pool = ResourceCapacitySource({"cpu": 2, "mem": 4}, name="pool", metrics=metrics)
    graph: DependencyGraph[str] = DependencyGraph()
    runner = ScheduledTaskPoolRunner(
        "etl",
        DependencySource(graph),
        pool,
        retry=RetryPolicy(attempts=2, backoff=1),
        metrics=metrics,
    )
    runner.add_task(ScheduledTask("a", sleeper(2), cost={"cpu": 1, "mem": 2}))
    runner.add_task(ScheduledTask("b", sleeper(2), cost={"cpu": 1, "mem": 2}))
    runner.add_task(ScheduledTask("c", sleeper(1, fails=1), cost={"cpu": 2}), ["a"])
    runner.add_task(ScheduledTask("d", sleeper(1), cost={"cpu": 1}), ["c"])
    in_flight_mid: dict[str, dict[str, float]] = {}
    async with runner.run_tasks() as envelopes:
        await trio.sleep(1)
        in_flight_mid = metrics.snapshot().in_flight
        async for _ in envelopes:
            pass
    snap = metrics.snapshot()
    assert in_flight_mid == {"pool": {"cpu": 2, "mem": 4}}
    assert snap.in_flight == {"pool": {"cpu": 0, "mem": 0}}
    tasks = snap.task_counts["etl"]
    # a, b at 0-2; c at 2-3 fails, retried at 4-5; d at 5-6.
    assert tasks["started"] == 5
    assert tasks["finished"] == 4
    assert tasks["retried"] == 1
    assert tasks["intermediate"] == 5
    assert "failed" not in tasks
    capacity = snap.capacity_counts["pool"]
    assert capacity["accepted"] == capacity["released"] == 5
    assert "limits_changed" not in capacity
    run_time = snap.run_time["etl"]
    assert (run_time.count, run_time.total, run_time.min, run_time.max) == (5, 7, 1, 2)
    queue = snap.queue_wait["etl"]
    # Every task started the moment it became ready (the retry counts from its retry time).
    assert (queue.count, queue.max) == (5, 0)
    assert snap.utilization == {"pool": {"cpu": 0.0, "mem": 0.0}}
    assert trio.current_time() == 6


async def test_queue_wait_and_utilisation(autojump_clock: object) -> None:
    metrics = InMemoryMetrics()
    glob = CapacitySource(2, name="global", metrics=metrics)
    child = CapacitySource(2, glob, name="job")  # reports to its ancestor's collector
    runner = HierarchicalTaskPoolRunner(
        "job", [sleeper(1) for _ in range(4)], child, metrics=metrics
    )
    utilisation: dict[str, dict[str, float]] = {}
    async with runner.run_tasks() as envelopes:
        await trio.sleep(0.5)
        utilisation = metrics.snapshot().utilization
        async for _ in envelopes:
            pass
    assert utilisation["job"] == {"slots": 1.0}
    snap = metrics.snapshot()
    wait = snap.queue_wait["job"]
    # A list does not timestamp its items: the wait counts from when a task reached the head of
    # the source. Task 3 waited there from 0 to 1; task 4 reached the head at 1 and started.
    assert (wait.count, wait.total, wait.max) == (4, 1, 1)
    assert snap.task_counts["job"]["finished"] == 4
    glob.total_tokens = 5
    assert metrics.snapshot().capacity_counts["global"]["limits_changed"] == 1


async def test_a_failing_collector_never_breaks_scheduling(autojump_clock: object) -> None:
    class Broken:
        def record(self, event: object) -> None:
            raise RuntimeError("sink down")

    pool = ResourceCapacitySource({"cpu": 1}, metrics=Broken())
    runner = ScheduledTaskPoolRunner(
        "broken",
        [ScheduledTask(i, sleeper(1), cost={"cpu": 1}) for i in range(3)],
        pool,
        metrics=Broken(),
    )
    with pytest.warns(RuntimeWarning, match="sink down"):
        async with runner.run_tasks() as envelopes:
            finals = [e async for e in envelopes if e.is_final]
    assert len(finals) == 3
    with pytest.raises(TypeError, match="record"):
        ScheduledTaskPoolRunner("x", [], pool, metrics=object())  # type: ignore[arg-type]


async def test_task_events_carry_their_times(autojump_clock: object) -> None:
    events: list[TaskEvent] = []

    class Collect:
        def record(self, event: object) -> None:
            if isinstance(event, TaskEvent):
                events.append(event)

    runner = HierarchicalTaskPoolRunner(
        "timed", [sleeper(2), sleeper(3)], CapacitySource(1), metrics=Collect()
    )
    async with runner.run_tasks() as envelopes:
        async for _ in envelopes:
            pass
    started = [(e.task_id, e.at, e.queued_at) for e in events if e.kind == "started"]
    finished = [(e.task_id, e.at, e.started_at) for e in events if e.kind == "finished"]
    assert started == [(1, 0, 0), (2, 2, 0)]
    assert finished == [(1, 2, 0), (2, 5, 2)]


def test_limits_changed_outside_a_run_are_not_reported() -> None:
    metrics = InMemoryMetrics()
    cap = CapacitySource(2, metrics=metrics)
    cap.total_tokens = 4  # before trio.run: no clock, no event, no error
    assert metrics.snapshot().capacity_counts == {}


async def test_refusals_are_reported_whichever_api_refused() -> None:
    metrics = InMemoryMetrics()
    units = CapacitySource(1, metrics=metrics)
    resources = ResourceCapacitySource({"mem": 2}, metrics=metrics)
    units.acquire_nowait()
    with pytest.raises(trio.WouldBlock):
        units.acquire_on_behalf_of_nowait("someone else")
    resources.acquire_nowait({"mem": 2})
    with pytest.raises(trio.WouldBlock):
        resources.acquire_nowait({"mem": 1})
    assert not resources.try_acquire({"mem": 1})
    counts = metrics.snapshot().capacity_counts
    assert [counts[name].get("rejected") for name in sorted(counts)] == [1, 2]
    units.release()
    resources.release({"mem": 2})


class Events:
    """A collector that keeps the task events."""

    def __init__(self) -> None:
        self.events: list[TaskEvent] = []

    def record(self, event: object) -> None:
        if isinstance(event, TaskEvent):
            self.events.append(event)

    def of(self, kind: str) -> list[TaskEvent]:
        return [e for e in self.events if e.kind == kind]


def assert_each_start_was_queued(events: Events) -> None:
    """Every start follows a queued event of the same attempt, stamped with its queued_at."""
    waiting: dict[tuple[object, int], float] = {}
    for event in events.events:
        if event.kind == "queued":
            waiting[(event.key, event.attempt)] = event.at
        elif event.kind == "started":
            assert waiting.pop((event.key, event.attempt)) == event.queued_at


async def test_queued_events_of_a_graph_run(autojump_clock: object) -> None:
    """A graph node is queued when it becomes ready (a node ready before the run, when the run
    starts), and again when its retry time comes."""
    events = Events()
    pool = ResourceCapacitySource({"slots": 1})
    graph: DependencyGraph[str] = DependencyGraph()
    runner = ScheduledTaskPoolRunner(
        "graph",
        DependencySource(graph),
        pool,
        default_cost={"slots": 1},
        retry=RetryPolicy(attempts=2, backoff=5),
        metrics=events,
    )
    runner.add_task(ScheduledTask("a", sleeper(2)))
    runner.add_task(ScheduledTask("b", sleeper(1)))
    runner.add_task(ScheduledTask("c", sleeper(1, fails=1)), ["a"])
    await trio.sleep(3)  # the run starts at 3: a and b have been ready since 0
    async with runner.run_tasks() as envelopes:
        async for _ in envelopes:
            pass
    queued = [(e.key, e.at, e.attempt, e.task_id) for e in events.of("queued")]
    # a 3-5, b 5-6 (ready since 0), c ready at 5, runs 6-7, fails; retry ready at 12, runs 12-13.
    assert queued == [("a", 0, 1, None), ("b", 0, 1, None), ("c", 5, 1, None), ("c", 12, 2, 3)]
    started = [(e.key, e.at, e.queued_at) for e in events.of("started")]
    assert started == [("a", 3, 0), ("b", 5, 0), ("c", 6, 5), ("c", 12, 12)]
    assert_each_start_was_queued(events)


async def test_queued_events_of_plain_and_lazy_sources(autojump_clock: object) -> None:
    for source in ([sleeper(2) for _ in range(3)], (sleeper(2) for _ in range(3))):
        events = Events()
        runner = HierarchicalTaskPoolRunner("plain", source, CapacitySource(2), metrics=events)
        async with runner.run_tasks() as envelopes:
            async for _ in envelopes:
                pass
        start = events.of("started")[0].at
        # Tasks 1 and 2 start at once; task 3 reached the head at once and waited 2 s.
        assert [e.at - start for e in events.of("queued")] == [0, 0, 0]
        assert [e.at - start for e in events.of("started")] == [0, 0, 2]
        assert_each_start_was_queued(events)


async def test_a_parked_task_ends_its_attempt_with_a_parked_event(autojump_clock: object) -> None:
    metrics = InMemoryMetrics()

    async def parks(emit: object) -> None:
        await trio.sleep(2)
        raise RunParked("waits for a message")

    runner = HierarchicalTaskPoolRunner(
        "mixed", [sleeper(1), parks], CapacitySource(2), metrics=metrics
    )
    with pytest.raises(RunParked):
        async with runner.run_tasks() as envelopes:
            async for _ in envelopes:
                pass
    snap = metrics.snapshot()
    counts = snap.task_counts["mixed"]
    assert counts == {"queued": 2, "started": 2, "intermediate": 1, "finished": 1, "parked": 1}
    assert snap.run_time["mixed"].count == 2  # the parked attempt's time counts as run time
    assert snap.run_time["mixed"].max == 2
