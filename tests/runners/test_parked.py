"""Tasks that park: they raise RunParked, are reported with no envelope, and the run ends by
raising RunParked (with their keys) once everything else has been reported."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    CapacitySource,
    DependencyGraph,
    DependencySource,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    PriorityDependencySource,
    ResourceCapacitySource,
    RetryPolicy,
    RunParked,
    ScheduledTask,
    ScheduledTaskPoolRunner,
    SourceBuffer,
    SourceFromIterable,
    TaskEnvelope,
    TaskSpec,
)
from sluiceway.capacity import BaseCapacity
from tests.helpers import assert_idle

Envelope = TaskEnvelope[Any, Any]


class Boom(Exception):
    pass


def tree() -> tuple[CapacitySource, CapacitySource, CapacitySource]:
    root = CapacitySource(3, name="root")
    leaf = CapacitySource(2, root, name="leaf")
    sibling = CapacitySource(2, root, name="sibling")
    return root, leaf, sibling


def assert_all_returned(*faces: BaseCapacity) -> None:
    """Every unit is back: nothing in use, everything available, at every level."""
    for face in faces:
        assert face.in_use == {}, face
        assert face.available == face.limits, face
    assert_idle(*faces)


def parking(key: str, seconds: float, *, emits: int = 0) -> TaskSpec[Any, Any]:
    async def body(emit: Any) -> None:
        for step in range(emits):
            await emit(f"{key} step {step}")
        await trio.sleep(seconds)
        raise RunParked(f"{key} waits for a message")

    return TaskSpec(body, key=key)


def finishing(key: str, seconds: float, *, emits: int = 0) -> TaskSpec[Any, Any]:
    async def body(emit: Any) -> str:
        for step in range(emits):
            await emit(f"{key} step {step}")
        await trio.sleep(seconds)
        return key

    return TaskSpec(body, key=key)


async def test_parked_tasks_report_nothing_and_the_run_ends_parked(
    autojump_clock: object,
) -> None:
    root, leaf, sibling = tree()
    specs = [
        parking(f"t{i}", 1 + i % 3, emits=1) if i % 3 == 0 else finishing(f"t{i}", 1 + i % 4)
        for i in range(10)
    ]
    parked_keys = {spec.key for spec in specs if spec.key in {"t0", "t3", "t6", "t9"}}
    runner = HierarchicalTaskPoolRunner("pool", SourceBuffer(specs), leaf)
    received: list[Envelope] = []
    inside: RunParked | None = None
    with pytest.raises(RunParked) as caught:
        async with runner.run_tasks() as envelopes:
            try:
                async for envelope in envelopes:
                    received.append(envelope)
            except RunParked as exc:
                inside = exc
                assert root.in_use == {}  # raised once every task had ended
                raise
    # Raised bare and unchanged: the object the async for raised, not a group or a copy.
    assert caught.value is inside
    assert type(caught.value) is RunParked
    assert sorted(caught.value.keys) == sorted(parked_keys)  # type: ignore[type-var]
    assert "4 tasks of runner 'pool' parked" in str(caught.value)
    by_key: dict[Any, list[Envelope]] = defaultdict(list)
    for envelope in received:
        by_key[envelope.key].append(envelope)
    for key in parked_keys:  # what they emitted before parking, and nothing else
        assert [(e.kind, e.value) for e in by_key[key]] == [
            (EnvelopeKind.INTERMEDIATE, f"{key} step 0")
        ]
    finished = [spec.key for spec in specs if spec.key not in parked_keys]
    for key in finished:
        assert [(e.kind, e.value) for e in by_key[key]] == [(EnvelopeKind.FINAL, key)]
    stats = runner.statistics()
    assert (stats.started, stats.finished, stats.parked) == (10, 6, 4)
    assert (stats.failed, stats.cancelled, stats.in_flight) == (0, 0, 0)
    assert_all_returned(root, leaf, sibling)


async def test_a_resource_tree_gets_everything_back(autojump_clock: object) -> None:
    root = ResourceCapacitySource({"cpu": 4, "mem": 8})
    leaf = ResourceCapacitySource({"cpu": 3}, root)
    tasks = [parking("p1", 1), finishing("f1", 2), parking("p2", 3), finishing("f2", 0)]
    runner = HierarchicalTaskPoolRunner(
        "resources", SourceFromIterable(iter(tasks)), leaf, cost={"cpu": 1, "mem": 2.5}
    )
    finals: list[Any] = []
    with pytest.raises(RunParked) as caught:
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                finals.append(envelope.value)
    assert caught.value.keys == ("p1", "p2")
    assert sorted(finals) == ["f1", "f2"]
    assert_all_returned(root, leaf)


async def test_a_run_with_no_parked_task_ends_normally(autojump_clock: object) -> None:
    runner = HierarchicalTaskPoolRunner("plain", [finishing("a", 1)], CapacitySource(1))
    async with runner.run_tasks() as envelopes:
        assert [e.value async for e in envelopes] == ["a"]
    assert runner.statistics().parked == 0


async def test_a_group_of_run_parked_parks_too(autojump_clock: object) -> None:
    async def fan_out(emit: Any) -> None:
        async with trio.open_nursery() as nursery:  # its child parks: a group reaches the run
            nursery.start_soon(trio.sleep, 5)
            await trio.sleep(1)
            raise RunParked("child waits")

    runner = HierarchicalTaskPoolRunner("group", [TaskSpec(fan_out, key="f")], CapacitySource(1))
    with pytest.raises(RunParked) as caught:
        async with runner.run_tasks() as envelopes:
            assert [e async for e in envelopes] == []
    assert caught.value.keys == ("f",)


async def test_run_parked_survives_an_enclosing_scope_cancelled_as_it_propagates(
    autojump_clock: object,
) -> None:
    """DESIGN rule 4: the awaits of the run's cleanup (closing the source) are checkpoints; an
    enclosing scope cancelled as RunParked leaves must not turn it into Cancelled (which the
    scope would then swallow)."""
    runner = HierarchicalTaskPoolRunner(
        "trap", SourceFromIterable(iter([parking("p", 1)])), CapacitySource(1)
    )
    with pytest.raises(RunParked), trio.CancelScope() as scope:
        async with runner.run_tasks() as envelopes:
            try:
                async for _ in envelopes:
                    pass
            except RunParked:
                scope.cancel()
                raise
    assert_idle(runner.capacity)


async def test_a_consumer_that_leaves_early_gets_nothing_raised(autojump_clock: object) -> None:
    cap = CapacitySource(2)
    runner = HierarchicalTaskPoolRunner(
        "early", [finishing("a", 0), parking("p", 0), finishing("b", 5)], cap
    )
    async with runner.run_tasks() as envelopes:
        async for _ in envelopes:
            break  # before the run could end parked
    # The run ended parked before the consumer looked: it never reached RunParked.
    runner = HierarchicalTaskPoolRunner("done", [finishing("a", 0), parking("p", 0)], cap)
    async with runner.run_tasks() as envelopes:
        await trio.sleep(10)
        assert (await envelopes.receive()).value == "a"
    assert_idle(cap)


async def test_an_error_under_stop_on_error_wins(autojump_clock: object) -> None:
    async def fails(emit: Any) -> None:
        await trio.sleep(2)
        raise Boom("real error")

    cap = CapacitySource(3)
    runner = HierarchicalTaskPoolRunner(
        "strict", [parking("p", 1), TaskSpec(fails, key="f"), finishing("slow", 10)], cap
    )
    with pytest.raises(Boom):
        async with runner.run_tasks(stop_on_error=True) as envelopes:
            async for _ in envelopes:
                pass
    assert runner.statistics().parked == 1
    assert_idle(cap)


async def test_a_source_error_wins_and_mentions_the_parked_tasks(
    autojump_clock: object,
) -> None:
    def tasks() -> Any:
        yield parking("p", 1)
        yield finishing("f", 2)
        raise Boom("listing failed")

    runner = HierarchicalTaskPoolRunner("listing", tasks(), CapacitySource(2))
    with pytest.raises(Boom) as caught:
        async with runner.run_tasks() as envelopes:
            async for _ in envelopes:
                pass
    assert any("parked" in note for note in caught.value.__notes__)


@pytest.mark.parametrize("how", ["break", "outer cancel"])
async def test_tasks_parking_while_the_run_is_cancelled_do_not_break_cancellation(
    autojump_clock: object, how: str
) -> None:
    async def parks_when_cancelled(emit: Any) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            raise RunParked("parked on the way out") from None

    cap = CapacitySource(4)
    tasks = [TaskSpec(parks_when_cancelled, key=i) for i in range(3)] + [finishing("f", 1)]
    runner = HierarchicalTaskPoolRunner("cancelled", tasks, cap)
    with trio.move_on_after(5) as outer:
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                assert envelope.value == "f"
                if how == "break":
                    break
    # Left by a break, or cancelled from outside: nothing raised, the scope caught Cancelled.
    assert outer.cancelled_caught == (how == "outer cancel")
    assert runner.statistics().parked == 3
    assert_idle(cap)


async def test_a_task_parking_when_cancelled_or_timed_out_is_parked(
    autojump_clock: object,
) -> None:
    async def parks_when_cancelled(emit: Any) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            raise RunParked("parked instead") from None

    cap = CapacitySource(2)
    runner = HierarchicalTaskPoolRunner(
        "c",
        [TaskSpec(parks_when_cancelled, key="cancel me"), TaskSpec(parks_when_cancelled, key="t")],
        cap,
    )
    with trio.fail_after(100), pytest.raises(RunParked) as caught:
        async with runner.run_tasks(task_timeout=10) as envelopes:
            await trio.sleep(1)
            assert runner.cancel(key="cancel me") == 1
            assert [e async for e in envelopes] == []
    assert caught.value.keys == ("cancel me", "t")
    stats = runner.statistics()
    assert (stats.parked, stats.cancelled, stats.timed_out) == (2, 0, 0)
    assert_idle(cap)


@pytest.mark.parametrize("source_type", [DependencySource, PriorityDependencySource])
async def test_a_parked_graph_node_ends_the_run_parked_without_running_its_dependents(
    autojump_clock: object, source_type: type[DependencySource[str, Any]]
) -> None:
    root = ResourceCapacitySource({"slots": 3, "mem": 10})
    pool = ResourceCapacitySource({"slots": 2}, root)
    graph: DependencyGraph[str] = DependencyGraph()
    source = source_type(graph)
    runner = ScheduledTaskPoolRunner(
        "graph", source, pool, default_cost={"slots": 1, "mem": 3}, retry=RetryPolicy(attempts=3)
    )
    started: list[str] = []
    callbacks: list[tuple[str, str]] = []

    def job(key: str, *, parks: bool = False) -> ScheduledTask[Any, Any]:
        async def body(emit: Any) -> str:
            started.append(key)
            await trio.sleep(1)
            if parks:
                raise RunParked(f"{key} waits")
            return key

        return ScheduledTask(
            key,
            body,
            on_complete=lambda k, v: callbacks.append(("complete", k)),
            on_error=lambda k, e: callbacks.append(("error", k)),
        )

    runner.add_task(job("a"))
    runner.add_task(job("b", parks=True), ["a"])  # the middle node parks
    runner.add_task(job("c"), ["b"])
    runner.add_task(job("d"), ["c"])
    runner.add_task(job("x"))  # independent
    runner.add_task(job("y"), ["a", "x"])
    finals: list[str] = []
    with trio.fail_after(100), pytest.raises(RunParked) as caught:
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                assert envelope.kind is EnvelopeKind.FINAL
                finals.append(envelope.key)
    assert caught.value.keys == ("b",)
    assert sorted(finals) == ["a", "x", "y"]
    assert sorted(started) == ["a", "b", "x", "y"]  # b started once: never retried
    assert ("complete", "b") not in callbacks
    assert ("error", "b") not in callbacks
    assert graph.get_state("b").name == "RUNNING"  # its work continues elsewhere
    assert graph.get_state("c").name == "PENDING"
    stats = runner.statistics()
    assert (stats.parked, stats.finished, stats.retried, stats.failed) == (1, 3, 0, 0)
    assert_all_returned(root, pool)


async def test_a_graph_waits_for_retries_before_ending_parked(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"slots": 2})
    source: DependencySource[str, Any] = DependencySource(DependencyGraph())
    runner = ScheduledTaskPoolRunner(
        "retrying", source, pool, default_cost={"slots": 1}, retry=RetryPolicy(backoff=5)
    )
    attempts = 0

    async def flaky(emit: Any) -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise Boom("first attempt")
        return "second attempt"

    async def parks(emit: Any) -> None:
        raise RunParked("parked")

    runner.add_task(ScheduledTask("parks", parks))
    runner.add_task(ScheduledTask("flaky", flaky))
    runner.add_task(ScheduledTask("after", flaky), ["flaky"])
    seen: list[tuple[str, EnvelopeKind]] = []
    with trio.fail_after(100), pytest.raises(RunParked):
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                seen.append((envelope.key, envelope.kind))
    assert seen == [
        ("flaky", EnvelopeKind.INTERMEDIATE),  # the retry announcement
        ("flaky", EnvelopeKind.FINAL),
        ("after", EnvelopeKind.FINAL),
    ]
    assert_idle(pool)


async def test_a_shutdown_with_parked_tasks_still_ends_parked(autojump_clock: object) -> None:
    cap = CapacitySource(1)
    runner = HierarchicalTaskPoolRunner(
        "shut", [parking("p", 1), finishing("f", 1), finishing("g", 1), finishing("h", 1)], cap
    )
    seen: list[Any] = []
    with pytest.raises(RunParked) as caught:
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                seen.append(envelope.key)
                runner.shutdown()  # "g" started when "f" ended; "h" is never taken
    assert seen == ["f", "g"]
    assert caught.value.keys == ("p",)
    assert_idle(cap)


async def test_a_task_parking_inside_released_does_not_wait_for_capacity(
    autojump_clock: object,
) -> None:
    """A task waiting with its capacity given back (emit.released()) parks from there: it
    ends at once, without first waiting to take back capacity that others now hold."""
    root, leaf, sibling = tree()
    parked_at: list[float] = []

    async def waits_then_parks(emit: Any) -> None:
        async with emit.released():
            await trio.sleep(1)  # meanwhile the other tasks take the whole pool
            parked_at.append(trio.current_time())
            raise RunParked("the message will take days")

    runner = HierarchicalTaskPoolRunner(
        "released",
        [TaskSpec(waits_then_parks, key="waiter"), finishing("a", 10), finishing("b", 10)],
        leaf,
    )
    with pytest.raises(RunParked) as caught:
        async with runner.run_tasks() as envelopes:
            await trio.sleep(2)
            stats = runner.statistics()
            assert (stats.parked, stats.in_flight) == (1, 2)  # ended at 1, not at 10
            assert leaf.in_use == {"slots": 2}
            async for envelope in envelopes:
                assert envelope.key in ("a", "b")
    assert caught.value.keys == ("waiter",)
    assert parked_at == [1]
    assert runner.statistics().parked == 1
    assert_all_returned(root, leaf, sibling)


async def test_a_group_of_run_parked_and_cancelled_parks_without_breaking_the_cancel(
    autojump_clock: object,
) -> None:
    """A task whose own nursery has one child park while the run is cancelled from outside:
    its group holds RunParked and Cancelled. It counts as parked, and the cancellation goes on
    (the enclosing scope catches it; no RunParked escapes)."""

    async def child_parks_on_cancel() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            raise RunParked("parked on the way out") from None

    async def fan_out(emit: Any) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child_parks_on_cancel)
            nursery.start_soon(trio.sleep_forever)

    cap = CapacitySource(2)
    runner = HierarchicalTaskPoolRunner("group", [TaskSpec(fan_out, key="f")], cap)
    with trio.move_on_after(5) as outer:
        async with runner.run_tasks() as envelopes:
            async for _ in envelopes:
                pass
    assert outer.cancelled_caught
    assert runner.statistics().parked == 1
    assert_idle(cap)
