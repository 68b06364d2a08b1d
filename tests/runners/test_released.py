"""Emitter.released(): a task gives its capacity back while it waits on something else."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    CapacitySource,
    Emitter,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    ImpossibleCostError,
    ResourceCapacitySource,
    TaskCancelledError,
)
from tests.helpers import assert_idle


class Holders:
    """Counts the tasks that hold capacity (running outside a released() block)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        self.now -= 1


async def test_a_pool_of_waiting_tasks_does_not_deadlock(autojump_clock: object) -> None:
    """Capacity 2, ten tasks that each wait for an answer; answers come in reverse order."""
    pool = CapacitySource(2)
    answers = [trio.Event() for _ in range(10)]
    waiting: set[int] = set()
    holders = Holders()
    order: list[int] = []

    def task(i: int) -> Any:
        async def body(emit: Emitter[Any]) -> int:
            holders.enter()
            async with emit.released():
                holders.leave()
                waiting.add(i)
                await answers[i].wait()
                waiting.discard(i)
            holders.enter()
            await trio.sleep(1)
            order.append(i)
            holders.leave()
            return i

        return body

    runner = HierarchicalTaskPoolRunner("waiters", [task(i) for i in range(10)], pool)
    async with runner.run_tasks() as envelopes:
        await trio.sleep(1)
        assert waiting == set(range(10))  # all ten started: none holds capacity while waiting
        assert pool.borrowed_tokens == 0
        for i in reversed(range(10)):
            answers[i].set()
            await trio.sleep(0.1)
        results = [envelope.value async for envelope in envelopes]
    assert sorted(results) == list(range(10))
    assert holders.peak <= 2
    assert order[:2] == [9, 8]
    assert_idle(pool)


async def test_a_resumed_task_goes_before_new_tasks(autojump_clock: object) -> None:
    pool = CapacitySource(1)
    starts: list[tuple[str, float]] = []
    answer = trio.Event()

    async def waiter(emit: Emitter[Any]) -> str:
        async with emit.released():
            await answer.wait()
        starts.append(("resumed", trio.current_time()))
        await trio.sleep(1)
        return "waiter"

    def worker(name: str) -> Any:
        async def body(emit: Emitter[Any]) -> str:
            starts.append((name, trio.current_time()))
            await trio.sleep(1)
            if name == "w0":
                answer.set()  # the waiter's answer arrives while w0 runs
            await trio.sleep(1)
            return name

        return body

    tasks = [waiter, worker("w0"), worker("w1"), worker("w2")]
    runner = HierarchicalTaskPoolRunner("order", tasks, pool)
    async with runner.run_tasks() as envelopes:
        done = [envelope.value async for envelope in envelopes]
    # w0 runs 0-2 while the waiter waits; then the waiter (not w1) gets the slot.
    assert starts == [("w0", 0), ("resumed", 2), ("w1", 3), ("w2", 5)]
    assert done == ["w0", "waiter", "w1", "w2"]
    assert_idle(pool)


async def test_released_with_weighted_costs_and_nesting(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"mem": 4})
    seen: list[dict[str, float]] = []

    async def body(emit: Emitter[Any]) -> None:
        async with emit.released():
            async with emit.released():  # nested: released once, taken back once
                seen.append(dict(pool.in_use))
            seen.append(dict(pool.in_use))
        seen.append(dict(pool.in_use))

    runner = HierarchicalTaskPoolRunner("weights", [body], pool, cost={"mem": 3})
    async with runner.run_tasks() as envelopes:
        [envelope] = [e async for e in envelopes]
    assert envelope.kind is EnvelopeKind.FINAL
    assert seen == [{}, {}, {"mem": 3}]
    assert_idle(pool)


async def test_cancelled_while_released_or_retaking(autojump_clock: object) -> None:
    """Leaving the run while tasks wait (released, or queued to take capacity back) returns
    everything and releases nothing twice."""
    pool = CapacitySource(1)
    never = trio.Event()
    answer = trio.Event()

    async def parked(emit: Emitter[Any]) -> None:
        async with emit.released():
            await never.wait()

    async def retaking(emit: Emitter[Any]) -> None:
        async with emit.released():
            await answer.wait()

    async def hog(emit: Emitter[Any]) -> None:
        await trio.sleep(100)

    runner = HierarchicalTaskPoolRunner("cancel", [parked, retaking, hog], pool)
    async with runner.run_tasks():
        await trio.sleep(1)
        answer.set()  # "retaking" now waits for the slot "hog" holds
        await trio.sleep(1)
        assert pool.borrowed_tokens == 1
        # leave early: every task is cancelled, waiting or not
    assert_idle(pool)


async def test_shutdown_drain_lets_paused_tasks_finish(autojump_clock: object) -> None:
    pool = CapacitySource(1)
    answer = trio.Event()

    async def waiter(emit: Emitter[Any]) -> str:
        async with emit.released():
            await answer.wait()
        await trio.sleep(1)
        return "answered"

    async def other(emit: Emitter[Any]) -> str:
        await trio.sleep(5)
        return "other"

    runner = HierarchicalTaskPoolRunner("drain", [waiter, other, other], pool)
    async with runner.run_tasks() as envelopes:
        await trio.sleep(1)
        runner.shutdown("drain")  # the second "other" never starts; the waiter may resume
        answer.set()
        results = [(e.kind, e.value) async for e in envelopes]
    # The second "other" stays in its list (a plain source keeps what was never taken).
    assert sorted(results) == [(EnvelopeKind.FINAL, "answered"), (EnvelopeKind.FINAL, "other")]
    assert trio.current_time() == 6  # the waiter takes the slot back at 5, when "other" ends
    assert_idle(pool)


async def test_cancelling_a_paused_task(autojump_clock: object) -> None:
    pool = CapacitySource(1)

    async def waiter(emit: Emitter[Any]) -> None:
        async with emit.released():
            await trio.sleep_forever()

    runner = HierarchicalTaskPoolRunner("cancel-one", [waiter], pool)
    async with runner.run_tasks() as envelopes:
        await trio.sleep(1)
        assert runner.cancel(1) == 1
        [envelope] = [e async for e in envelopes]
    assert isinstance(envelope.error, TaskCancelledError)
    assert_idle(pool)


async def test_a_limit_lowered_below_a_paused_task(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"mem": 8})
    answer = trio.Event()

    async def big(emit: Emitter[Any]) -> None:
        async with emit.released():
            await answer.wait()

    runner = HierarchicalTaskPoolRunner("shrink", [big], pool, cost={"mem": 6})
    async with runner.run_tasks() as envelopes:
        await trio.sleep(1)
        pool.set_limits({"mem": 4})
        answer.set()
        [envelope] = [e async for e in envelopes]
    assert isinstance(envelope.error, ImpossibleCostError)
    assert_idle(pool)


async def test_released_after_the_task_finished_is_an_error(autojump_clock: object) -> None:
    kept: list[Emitter[Any]] = []

    async def body(emit: Emitter[Any]) -> None:
        kept.append(emit)

    runner = HierarchicalTaskPoolRunner("late", [body], CapacitySource(1))
    async with runner.run_tasks() as envelopes:
        async for _ in envelopes:
            pass
    with pytest.raises(RuntimeError, match="finished"):
        async with kept[0].released():
            pass
