"""HierarchicalTaskPoolRunner: the runner contract, errors, early exit, backpressure, bad input."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from sluiceway import (
    CapacitySource,
    EnvelopeKind,
    Final,
    HierarchicalTaskPoolRunner,
    ImpossibleCostError,
    PushPullBuffer,
    QuotaCapacitySource,
    ResourceCapacitySource,
    SourceBuffer,
    SourceFromIterable,
    TaskCancelledError,
    TaskEnvelope,
    TaskSpec,
    TaskTimeoutError,
    UnknownResourceError,
    oneshot,
    streaming,
)
from tests.helpers import assert_idle

Envelope = TaskEnvelope[Any, Any]


class Tracker:
    """Counts live task bodies so tests can assert the concurrency bound."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self.started: list[str] = []

    def task(self, name: str, seconds: float = 1.0, result: Any = None) -> Callable[..., Any]:
        async def body(emit: Any) -> Any:
            self.live += 1
            self.peak = max(self.peak, self.live)
            self.started.append(name)
            try:
                await trio.sleep(seconds)
            finally:
                self.live -= 1
            return name if result is None else result

        return body


async def collect(runner: HierarchicalTaskPoolRunner[Any, Any], **kwargs: Any) -> list[Envelope]:
    async with runner.run_tasks(**kwargs) as envelopes:
        return [envelope async for envelope in envelopes]


async def test_fan_out_respects_the_limit_and_reports_every_task(autojump_clock: object) -> None:
    cap = CapacitySource(3)
    tracker = Tracker()
    runner = HierarchicalTaskPoolRunner(
        "docs", SourceBuffer([tracker.task(f"t{i}") for i in range(10)]), cap
    )
    envelopes = await collect(runner)
    assert tracker.peak == 3
    assert sorted(e.task_id for e in envelopes) == list(range(1, 11))
    assert {e.kind for e in envelopes} == {EnvelopeKind.FINAL}
    assert sorted(e.value for e in envelopes) == sorted(f"t{i}" for i in range(10))
    assert trio.current_time() == 4  # ceil(10 / 3) waves of 1 s
    stats = runner.statistics()
    assert (stats.started, stats.finished, stats.failed, stats.in_flight) == (10, 10, 0, 0)
    assert stats.capacity_wait.count == 10
    # Time at the head of the source waiting for capacity: one wave at most.
    assert stats.capacity_wait.max == 1
    assert_idle(cap)


async def test_task_ids_follow_the_order_tasks_are_taken(autojump_clock: object) -> None:
    seen: dict[int, str] = {}

    def task(name: str) -> Any:
        async def body(emit: Any) -> str:
            seen[emit.task_id] = name
            await trio.lowlevel.checkpoint()
            return name

        return body

    runner = HierarchicalTaskPoolRunner("ids", [task(c) for c in "abcde"], CapacitySource(2))
    envelopes = await collect(runner)
    assert seen == dict(enumerate("abcde", start=1))
    assert {e.task_id: e.value for e in envelopes} == seen


async def test_streaming_tasks_emit_in_order_then_final(autojump_clock: object) -> None:
    async def chatty(emit: Any) -> str:
        for step in range(3):
            await emit(f"step {step}")
            await trio.sleep(1)
        return "done"

    async def generator() -> AsyncIterator[Any]:
        yield "g1"
        await trio.sleep(0.5)
        yield "g2"
        yield Final({"images": 2})

    runner = HierarchicalTaskPoolRunner(
        "stream",
        [TaskSpec(chatty, key="chatty"), TaskSpec(streaming(generator), key="gen")],
        CapacitySource(2),
    )
    envelopes = await collect(runner)
    by_key: dict[Any, list[Envelope]] = defaultdict(list)
    for envelope in envelopes:
        by_key[envelope.key].append(envelope)
    assert [(e.kind, e.value) for e in by_key["chatty"]] == [
        (EnvelopeKind.INTERMEDIATE, "step 0"),
        (EnvelopeKind.INTERMEDIATE, "step 1"),
        (EnvelopeKind.INTERMEDIATE, "step 2"),
        (EnvelopeKind.FINAL, "done"),
    ]
    assert [(e.kind, e.value) for e in by_key["gen"]] == [
        (EnvelopeKind.INTERMEDIATE, "g1"),
        (EnvelopeKind.INTERMEDIATE, "g2"),
        (EnvelopeKind.FINAL, {"images": 2}),
    ]
    assert all(e.started_at <= e.at for e in envelopes)


async def test_task_returning_an_async_iterator_streams(autojump_clock: object) -> None:
    class Countdown:
        def __init__(self) -> None:
            self.n = 3

        def __aiter__(self) -> Countdown:
            return self

        async def __anext__(self) -> int:
            if self.n == 0:
                raise StopAsyncIteration("liftoff")
            self.n -= 1
            return self.n

    runner = HierarchicalTaskPoolRunner("it", [lambda emit: Countdown()], CapacitySource(1))
    envelopes = await collect(runner)
    assert [e.value for e in envelopes] == [2, 1, 0, "liftoff"]


async def test_oneshot_helper(autojump_clock: object) -> None:
    async def add(a: int, b: int) -> int:
        await trio.sleep(1)
        return a + b

    runner = HierarchicalTaskPoolRunner("add", [oneshot(add, 1, 2)], CapacitySource(1))
    [envelope] = await collect(runner)
    assert envelope.value == 3
    with pytest.raises(TypeError, match="callable"):
        oneshot(3)  # type: ignore[call-overload]


async def test_errors_become_error_envelopes_and_others_go_on(autojump_clock: object) -> None:
    cap = CapacitySource(2)

    async def fails_at_once(emit: Any) -> None:
        raise ValueError("bad input")

    async def fails_later(emit: Any) -> None:
        await emit("working")
        await trio.sleep(1)
        raise RuntimeError("upstream 500")

    tracker = Tracker()
    tasks = [fails_at_once, tracker.task("a"), fails_later, tracker.task("b"), tracker.task("c")]
    runner = HierarchicalTaskPoolRunner("mixed", tasks, cap)
    envelopes = await collect(runner, stop_on_error=False)
    finals = [e for e in envelopes if e.is_final]
    assert len(finals) == 5
    errors = {e.task_id: e.error for e in finals if e.kind is EnvelopeKind.ERROR}
    assert isinstance(errors[1], ValueError)
    assert isinstance(errors[3], RuntimeError)
    assert sorted(e.value for e in finals if e.kind is EnvelopeKind.FINAL) == ["a", "b", "c"]
    assert runner.statistics().failed == 2
    assert_idle(cap)


async def test_stop_on_error_cancels_the_rest_and_raises_bare(autojump_clock: object) -> None:
    cap = CapacitySource(3)
    cancelled = 0

    async def slow(emit: Any) -> None:
        nonlocal cancelled
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            cancelled += 1
            raise

    async def boom(emit: Any) -> None:
        await trio.sleep(1)
        raise KeyError("boom")

    runner = HierarchicalTaskPoolRunner("strict", [slow, slow, boom, slow], cap)
    seen: list[Envelope] = []
    with pytest.raises(KeyError, match="boom"):
        async with runner.run_tasks(stop_on_error=True) as envelopes:
            async for envelope in envelopes:
                seen.append(envelope)
    assert seen == []
    assert cancelled == 2
    assert trio.current_time() == 1
    assert not runner.running
    assert_idle(cap)


async def test_leaving_early_cancels_releases_and_closes_the_source(
    autojump_clock: object,
) -> None:
    glob = CapacitySource(4)
    cap = CapacitySource(2, glob)
    closed = trio.Event()
    produced = 0

    async def tasks() -> AsyncIterator[Any]:
        nonlocal produced
        try:
            for i in range(100):
                produced += 1
                yield Tracker().task(f"t{i}", seconds=1 + i % 3)
        finally:
            closed.set()

    runner = HierarchicalTaskPoolRunner("early", tasks(), cap)
    async with runner.run_tasks() as envelopes:
        async for envelope in envelopes:
            assert envelope.kind is EnvelopeKind.FINAL
            break
    assert closed.is_set()
    assert produced <= 4  # lazily advanced: never much more than what capacity allowed
    assert_idle(glob, cap)
    # The consumer can leave without reading anything, too.
    runner2 = HierarchicalTaskPoolRunner("early2", [Tracker().task("x", 50)] * 5, cap)
    async with runner2.run_tasks():
        await trio.sleep(1)
    assert_idle(glob, cap)


async def test_error_in_the_consumer_body_surfaces_bare(autojump_clock: object) -> None:
    cap = CapacitySource(2)
    runner = HierarchicalTaskPoolRunner("body", [Tracker().task("x", 10)] * 4, cap)
    with pytest.raises(ZeroDivisionError):
        async with runner.run_tasks() as envelopes:
            await trio.sleep(1)
            _ = 1 / 0
    assert_idle(cap)
    assert not runner.running
    with pytest.raises(trio.ClosedResourceError, match="block has exited"):
        await envelopes.receive()  # a kept reference never blocks forever


async def test_a_source_that_raises(autojump_clock: object) -> None:
    cap = CapacitySource(2)
    tracker = Tracker()

    async def tasks() -> AsyncIterator[Any]:
        yield tracker.task("a", 2)
        yield tracker.task("b", 3)
        raise ConnectionError("listing failed")

    runner = HierarchicalTaskPoolRunner("src", tasks(), cap)
    seen: list[Envelope] = []
    with pytest.raises(ConnectionError, match="listing failed"):
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                seen.append(envelope)
    # The source's error comes after the envelopes of the tasks taken before it.
    assert sorted(e.value for e in seen) == ["a", "b"]
    assert_idle(cap)


async def test_a_source_error_is_raised_even_if_the_consumer_did_not_read_it(
    autojump_clock: object,
) -> None:
    cap = CapacitySource(2)
    bridge: PushPullBuffer[Any] = PushPullBuffer()
    bridge.sink.send_nowait(Tracker().task("a", 1))
    bridge.sink.throw(OSError("producer died"))
    runner = HierarchicalTaskPoolRunner("bridge", bridge, cap)
    with pytest.raises(OSError, match="producer died"):
        async with runner.run_tasks():
            await trio.sleep(5)
    assert_idle(cap)


async def test_slow_consumer_holds_memory_bounded(autojump_clock: object) -> None:
    cap = CapacitySource(4)
    tracker = Tracker()
    runner = HierarchicalTaskPoolRunner(
        "slow", (tracker.task(f"t{i}", 0.1) for i in range(500)), cap, buffer_size=8
    )
    async with runner.run_tasks() as envelopes:
        await trio.sleep(100)  # the consumer reads nothing for a long time
        stats = runner.statistics()
        # Nothing new starts while the buffer is full: at most buffer + live tasks are held.
        assert stats.started <= 8 + 4
        assert stats.buffered_envelopes <= 8 + 4
        assert stats.in_flight == 0
        assert cap.borrowed_tokens == 0  # the blocked run holds no capacity
        count = 0
        async for _ in envelopes:
            count += 1
            await trio.sleep(0.01)
    assert count == 500
    assert 8 <= runner.statistics().peak_buffered_envelopes <= 12  # kept after the run
    assert tracker.peak <= 4
    assert_idle(cap)


async def test_blocked_consumer_lets_siblings_use_the_capacity(autojump_clock: object) -> None:
    glob = CapacitySource(2)
    stuck = HierarchicalTaskPoolRunner(
        "stuck", [Tracker().task("s", 1)] * 50, CapacitySource(2, glob), buffer_size=2
    )
    busy_tracker = Tracker()
    busy = HierarchicalTaskPoolRunner(
        "busy", [busy_tracker.task("b", 1)] * 10, CapacitySource(2, glob)
    )
    async with stuck.run_tasks():
        await trio.sleep(5)  # stuck's consumer never reads
        await collect(busy)
    assert busy_tracker.peak == 2
    assert_idle(glob)


async def test_per_task_timeout_and_cancel(autojump_clock: object) -> None:
    cap = CapacitySource(3)

    async def forever(emit: Any) -> None:
        await trio.sleep_forever()

    tasks: list[Any] = [
        TaskSpec(forever, key="slow", timeout=2),
        TaskSpec(forever, key="victim"),
        TaskSpec(Tracker().task("ok", 1), key="ok"),
        TaskSpec(forever, key="default-timeout"),
    ]
    runner = HierarchicalTaskPoolRunner("t", tasks, cap, task_timeout=10)
    results: dict[Any, Envelope] = {}
    async with runner.run_tasks() as envelopes:
        async for envelope in envelopes:
            results[envelope.key] = envelope
            if envelope.key == "ok":
                assert runner.cancel(key="victim") == 1
                assert runner.cancel(12345) == 0
    assert results["ok"].kind is EnvelopeKind.FINAL
    assert isinstance(results["slow"].error, TaskTimeoutError)
    assert results["slow"].at == 2
    assert isinstance(results["victim"].error, TaskCancelledError)
    assert results["victim"].at == 1
    assert isinstance(results["default-timeout"].error, TaskTimeoutError)
    assert results["default-timeout"].at == 11  # started when "ok" freed its unit at t=1
    stats = runner.statistics()
    assert (stats.cancelled, stats.timed_out, stats.failed) == (1, 2, 0)
    with pytest.raises(TypeError, match="exactly one"):
        runner.cancel()
    assert runner.cancel(1) == 0  # no run active
    assert_idle(cap)


async def test_a_task_that_swallows_cancellation_is_still_reported(autojump_clock: object) -> None:
    cap = CapacitySource(1)

    async def stubborn(emit: Any) -> str:
        try:
            await trio.sleep(10)
        except trio.Cancelled:
            return "ignored the timeout"
        return "finished"  # pragma: no cover

    runner = HierarchicalTaskPoolRunner(
        "stubborn", [TaskSpec(stubborn, timeout=1), Tracker().task("next", 1)], cap
    )
    envelopes = await collect(runner)
    assert sorted(str(e.value) for e in envelopes) == ["ignored the timeout", "next"]
    assert_idle(cap)


async def test_resource_costs(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"mem": 8, "cpu": 4})
    tracker = Tracker()
    runner = HierarchicalTaskPoolRunner(
        "etl", [tracker.task(f"t{i}") for i in range(6)], pool, cost={"mem": 3, "cpu": 1}
    )
    await collect(runner)
    assert tracker.peak == 2  # memory allows two at a time
    assert_idle(pool)


async def test_bad_construction_is_refused_clearly() -> None:
    cap = CapacitySource(2)
    pool = ResourceCapacitySource({"mem": 8})
    with pytest.raises(TypeError, match="explicit cost"):
        HierarchicalTaskPoolRunner("x", [], pool)
    with pytest.raises(UnknownResourceError):
        HierarchicalTaskPoolRunner("x", [], pool, cost={"gpu": 1})
    with pytest.raises(ImpossibleCostError, match="limited to 8"):
        HierarchicalTaskPoolRunner("x", [], pool, cost={"mem": 9})
    with pytest.raises(ValueError, match="must be >= 0"):
        HierarchicalTaskPoolRunner("x", [], pool, cost={"mem": -1})
    with pytest.raises(TypeError, match="capacity must be"):
        HierarchicalTaskPoolRunner("x", [], 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a task source"):
        HierarchicalTaskPoolRunner("x", 42, cap)
    with pytest.raises(ValueError, match="buffer_size"):
        HierarchicalTaskPoolRunner("x", [], cap, buffer_size=0)
    with pytest.raises(ValueError, match="> 0"):
        HierarchicalTaskPoolRunner("x", [], cap, task_timeout=-1)
    with pytest.raises(TypeError, match="name"):
        HierarchicalTaskPoolRunner(None, [], cap)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        TaskSpec(lambda emit: None, timeout=0)
    with pytest.raises(TypeError, match="callable"):
        TaskSpec("not callable")  # type: ignore[arg-type]


async def test_bad_tasks_are_reported_not_swallowed(autojump_clock: object) -> None:
    cap = CapacitySource(2)

    def sync_task(emit: Any) -> int:
        return 3

    async def no_emit_param() -> None:  # called with emit: TypeError from Python itself
        return None

    runner = HierarchicalTaskPoolRunner(
        "bad", ["not callable", sync_task, no_emit_param, Tracker().task("ok")], cap
    )
    envelopes = await collect(runner)
    errors = sorted(
        (e.task_id, type(e.error).__name__, str(e.error))
        for e in envelopes
        if e.kind is EnvelopeKind.ERROR
    )
    assert [(task_id, kind) for task_id, kind, _ in errors] == [
        (1, "TypeError"),
        (2, "TypeError"),
        (3, "TypeError"),
    ]
    assert "must be callable" in errors[0][2]
    assert "sync function" in errors[1][2]
    assert [e.value for e in envelopes if e.kind is EnvelopeKind.FINAL] == ["ok"]
    with pytest.raises(TypeError, match="must be callable"):
        await collect(
            HierarchicalTaskPoolRunner("strict", ["nope"], CapacitySource(1)), stop_on_error=True
        )
    assert_idle(cap)


async def test_runs_do_not_nest_and_runners_can_run_again(autojump_clock: object) -> None:
    cap = CapacitySource(2)
    buffer: SourceBuffer[Any] = SourceBuffer(one_shot=False)
    runner = HierarchicalTaskPoolRunner("again", buffer, cap)
    async with runner.run_tasks():
        assert runner.running
        with pytest.raises(RuntimeError, match="already running"):
            async with runner.run_tasks():
                pass  # pragma: no cover
    assert not runner.running
    # The source was closed on exit (rule: leaving closes the sources).
    assert buffer.exhausted
    assert await collect(runner) == []


async def test_emit_after_the_task_finished_is_an_error(autojump_clock: object) -> None:
    kept: list[Any] = []

    async def leaky(emit: Any) -> None:
        kept.append(emit)

    await collect(HierarchicalTaskPoolRunner("leak", [leaky], CapacitySource(1)))
    with pytest.raises(RuntimeError, match="has finished"):
        await kept[0]("late")


async def test_push_pull_buffer_as_a_live_queue(autojump_clock: object) -> None:
    cap = CapacitySource(2)
    queue: PushPullBuffer[Any] = PushPullBuffer()
    tracker = Tracker()
    runner = HierarchicalTaskPoolRunner("live", queue.source, cap)

    async def producer() -> None:
        with queue.sink:
            for i in range(6):
                await queue.sink.send(tracker.task(f"sub{i}", 0.5))
                await trio.sleep(0.1)

    got: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                got.append(envelope.value)
    assert sorted(got) == [f"sub{i}" for i in range(6)]
    assert tracker.peak <= 2
    assert_idle(cap)


async def test_any_receive_channel_is_a_source(autojump_clock: object) -> None:
    cap = CapacitySource(3)
    send, receive = trio.open_memory_channel[Any](0)
    tracker = Tracker()

    async def producer() -> None:
        async with send:
            for i in range(5):
                await send.send(tracker.task(f"c{i}", 1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        envelopes = await collect(HierarchicalTaskPoolRunner("chan", receive, cap))
    assert sorted(e.value for e in envelopes) == [f"c{i}" for i in range(5)]
    assert_idle(cap)


async def test_lazy_source_creates_work_only_with_capacity(autojump_clock: object) -> None:
    cap = CapacitySource(2)
    created_at: list[float] = []

    async def tasks() -> AsyncIterator[Any]:
        for i in range(6):
            created_at.append(trio.current_time())  # e.g. creating a child entity
            yield Tracker().task(f"t{i}", 1)

    await collect(HierarchicalTaskPoolRunner("lazy", SourceFromIterable(tasks()), cap))
    assert created_at == [0, 0, 1, 1, 2, 2]
    assert_idle(cap)


async def test_a_slow_generator_never_sits_on_its_siblings_capacity(
    autojump_clock: object,
) -> None:
    """At most one unit per run waits on an async iterable (the unit of the item it produces)."""
    glob = CapacitySource(10)
    slow_cap = CapacitySource(10, glob)
    fast_cap = CapacitySource(10, glob)
    slow_tracker = Tracker()
    fast_tracker = Tracker()
    worst_idle_hold = 0

    async def slow_listing() -> AsyncIterator[Any]:
        nonlocal worst_idle_hold
        for i in range(5):
            await trio.sleep(3)  # e.g. paging through a slow API
            worst_idle_hold = max(worst_idle_hold, slow_cap.borrowed_tokens - slow_tracker.live)
            yield slow_tracker.task(f"s{i}", 1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, HierarchicalTaskPoolRunner("slow", slow_listing(), slow_cap))
        await trio.sleep(0.5)
        fast = HierarchicalTaskPoolRunner(
            "fast", [fast_tracker.task(f"f{i}", 1) for i in range(45)], fast_cap
        )
        nursery.start_soon(collect, fast)
    assert worst_idle_hold == 1
    assert fast_tracker.peak == 9  # everything but the one unit the slow listing waits with
    assert_idle(glob, slow_cap, fast_cap)


async def test_lazy_end_under_a_quota_uses_no_quota(autojump_clock: object) -> None:
    """Learning that a lazy source ended takes a grant; it is refunded, quota included."""
    per_minute = QuotaCapacitySource({"requests": 100})
    pool = ResourceCapacitySource({"requests": 5}, per_minute)
    tracker = Tracker()
    tasks = (tracker.task(f"t{i}", 1) for i in range(250))
    runner = HierarchicalTaskPoolRunner("rate", tasks, pool, cost={"requests": 1})
    async with per_minute.refilling(60):
        envelopes = await collect(runner)
        assert per_minute.statistics().consumed == {"requests": 50}  # not 51
    assert len(envelopes) == 250
    stats = runner.statistics()
    assert stats.started == stats.capacity_wait.count == 250
    assert_idle(pool)


async def test_a_list_under_a_quota_ends_with_its_last_task(autojump_clock: object) -> None:
    per_minute = QuotaCapacitySource({"requests": 100})
    pool = ResourceCapacitySource({"requests": 5}, per_minute)
    tasks = [Tracker().task(f"t{i}", 1) for i in range(200)]
    runner = HierarchicalTaskPoolRunner("rate", tasks, pool, cost={"requests": 1})
    async with per_minute.refilling(60):
        await collect(runner)
        # 100 in the first window, 100 from t=60 (5 at a time, 1 s each): done at 80 s, without
        # waiting for a third window to learn that the list has ended.
        assert trio.current_time() == 80
    assert_idle(pool)


async def test_empty_sources_finish_at_once() -> None:
    cap = CapacitySource(1)
    assert await collect(HierarchicalTaskPoolRunner("empty", [], cap)) == []
    assert await collect(HierarchicalTaskPoolRunner("empty", SourceBuffer([]), cap)) == []


async def test_raising_total_tokens_mid_run_uses_the_new_capacity(autojump_clock: object) -> None:
    cap = CapacitySource(1)
    tracker = Tracker()
    runner = HierarchicalTaskPoolRunner("grow", [tracker.task(f"t{i}", 1) for i in range(9)], cap)
    async with runner.run_tasks() as envelopes:
        await trio.sleep(0.5)
        cap.total_tokens = 4
        async for _ in envelopes:
            pass
    assert tracker.peak == 4
    assert trio.current_time() == 3  # t0 alone at t=0, then 4 + 4 from t=0.5 and t=1.5... = 3
    cap.total_tokens = math.inf
    assert_idle(cap)


async def test_lowering_a_limit_below_the_task_cost_reports_instead_of_hanging(
    autojump_clock: object,
) -> None:
    pool = ResourceCapacitySource({"mem": 8})
    runner = HierarchicalTaskPoolRunner(
        "shrink", [Tracker().task(f"t{i}", 1) for i in range(5)], pool, cost={"mem": 4}
    )
    async with runner.run_tasks() as envelopes:
        await trio.sleep(0.5)  # t0 and t1 run
        pool.set_limits({"mem": 2})  # no task of cost 4 can ever run again
        got = [envelope async for envelope in envelopes]
    finals = sorted((e.task_id, e.kind) for e in got)
    assert finals[:2] == [(1, EnvelopeKind.FINAL), (2, EnvelopeKind.FINAL)]
    assert [kind for _, kind in finals[2:]] == [EnvelopeKind.ERROR] * 3
    assert all(isinstance(e.error, ImpossibleCostError) for e in got if e.error)
    assert_idle(pool)


async def test_a_lazy_run_whose_cost_became_impossible_ends_with_the_error(
    autojump_clock: object,
) -> None:
    pool = ResourceCapacitySource({"mem": 8})
    produced = 0

    async def tasks() -> AsyncIterator[Any]:
        nonlocal produced
        for i in range(5):
            produced += 1
            yield Tracker().task(f"t{i}", 1)

    runner = HierarchicalTaskPoolRunner("shrink", tasks(), pool, cost={"mem": 4})
    got: list[Envelope] = []
    with pytest.raises(ImpossibleCostError, match="limited to 2"):
        async with runner.run_tasks() as envelopes:
            await trio.sleep(0.5)
            pool.set_limits({"mem": 2})
            async for envelope in envelopes:
                got.append(envelope)
    assert sorted(e.value for e in got) == ["t0", "t1"]  # the running tasks finished first
    assert produced == 2
    assert_idle(pool)


@pytest.mark.parametrize("mode", ["drain", "cancel"])
@pytest.mark.parametrize("lazy", [False, True])
async def test_shutdown_winds_a_run_down(autojump_clock: object, mode: str, lazy: bool) -> None:
    cap = CapacitySource(2)
    tracker = Tracker()
    tasks = [tracker.task(f"t{i}", 5) for i in range(6)]
    source: Any = iter(tasks) if lazy else tasks
    runner = HierarchicalTaskPoolRunner("sd", source, cap)
    async with runner.run_tasks() as envelopes:
        await trio.sleep(1)
        runner.shutdown(mode)  # type: ignore[arg-type]
        runner.shutdown(mode)  # type: ignore[arg-type]  # idempotent
        got = [envelope async for envelope in envelopes]
    assert tracker.started == ["t0", "t1"]  # nothing started after the shutdown
    finals = [e for e in got if e.is_final]
    assert len(finals) == 2  # the running ones; unstarted items of a plain source never ran
    if mode == "drain":
        assert {e.value for e in finals} == {"t0", "t1"}
        assert trio.current_time() == 5
    else:
        assert all(isinstance(e.error, TaskCancelledError) for e in finals)
        assert trio.current_time() == 1
    assert runner.statistics().in_flight == 0
    assert_idle(cap)
