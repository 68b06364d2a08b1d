"""EnvelopeChannel.batches(): envelopes taken in groups, one schedule point per batch, with the
ordering, backpressure, errors and cancellation of per-envelope iteration."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    CapacitySource,
    HierarchicalTaskPoolRunner,
    RunParked,
    SourceFromIterable,
    TaskEnvelope,
    TaskSpec,
)
from tests.helpers import assert_idle

Envelope = TaskEnvelope[Any, Any]


def sleeper(seconds: float, result: Any) -> Callable[..., Any]:
    async def body(emit: Any) -> Any:
        await trio.sleep(seconds)
        return result

    return body


def instant(result: Any) -> Callable[..., Any]:
    async def body(emit: Any) -> Any:
        return result

    return body


async def test_batches_hold_everything_in_completion_order(autojump_clock: object) -> None:
    durations = [(i * 7) % 13 + 1 for i in range(40)]
    capacity = CapacitySource(4)
    tasks = [sleeper(seconds, i) for i, seconds in enumerate(durations)]
    runner = HierarchicalTaskPoolRunner("ordered", tasks, capacity)
    batches: list[list[Envelope]] = []
    async with runner.run_tasks() as envelopes:
        async for batch in envelopes.batches(max_size=3):
            batches.append(batch)
    assert all(1 <= len(batch) <= 3 for batch in batches)
    flat = [envelope for batch in batches for envelope in batch]
    assert sorted(envelope.value for envelope in flat) == list(range(40))
    finished = [envelope.at for envelope in flat]
    assert finished == sorted(finished)  # in completion order, across batches too
    assert len(batches) < len(flat)  # tasks finishing together came in one batch
    assert_idle(capacity)


async def test_a_batch_is_everything_buffered_up_to_max_size() -> None:
    capacity = CapacitySource(10)
    runner = HierarchicalTaskPoolRunner("instant", [instant(i) for i in range(25)], capacity)
    async with runner.run_tasks() as envelopes:
        await trio.testing.wait_all_tasks_blocked()  # every task has deposited its envelope
        assert len(envelopes) == 25
        batches = [batch async for batch in envelopes.batches(max_size=10)]
    assert [len(batch) for batch in batches] == [10, 10, 5]
    assert sorted(e.value for batch in batches for e in batch) == list(range(25))
    assert_idle(capacity)


async def test_one_schedule_point_per_batch() -> None:
    capacity = CapacitySource(10)
    runner = HierarchicalTaskPoolRunner("instant", [instant(i) for i in range(20)], capacity)
    async with runner.run_tasks() as envelopes:
        await trio.testing.wait_all_tasks_blocked()
        assert len(envelopes) == 20
        batches = envelopes.batches()
        with trio.testing.assert_checkpoints():
            batch = await batches.__anext__()
        assert len(batch) == 20
        with pytest.raises(StopAsyncIteration):
            await batches.__anext__()


async def test_backpressure_stays_bounded(autojump_clock: object) -> None:
    capacity = CapacitySource(4)
    runner = HierarchicalTaskPoolRunner(
        "slow", (sleeper(0.1, i) for i in range(300)), capacity, buffer_size=8
    )
    seen = 0
    async with runner.run_tasks() as envelopes:
        await trio.sleep(50)  # nothing is read for a long time
        stats = runner.statistics()
        assert stats.started <= 8 + 4
        assert stats.buffered_envelopes <= 8 + 4
        assert capacity.borrowed_tokens == 0  # the blocked run holds no capacity
        async for batch in envelopes.batches(max_size=5):
            assert len(batch) <= 5
            seen += len(batch)
            assert len(envelopes) <= 8 + 4
            await trio.sleep(1)  # a slow consumer: the run fills the buffer again meanwhile
    assert seen == 300
    assert runner.statistics().peak_buffered_envelopes <= 12
    assert_idle(capacity)


async def test_a_source_error_is_raised_after_the_last_batch(autojump_clock: object) -> None:
    capacity = CapacitySource(2)

    async def tasks() -> AsyncIterator[Any]:
        yield sleeper(1, "a")
        yield sleeper(2, "b")
        raise ConnectionError("listing failed")

    runner = HierarchicalTaskPoolRunner("src", tasks(), capacity)
    seen: list[Any] = []
    with pytest.raises(ConnectionError, match="listing failed"):
        async with runner.run_tasks() as envelopes:
            async for batch in envelopes.batches():
                seen.extend(envelope.value for envelope in batch)
    assert sorted(seen) == ["a", "b"]
    assert_idle(capacity)


async def test_task_errors_are_envelopes_or_stop_the_run(autojump_clock: object) -> None:
    async def fails(emit: Any) -> None:
        await trio.sleep(1)
        raise KeyError("bad")

    capacity = CapacitySource(2)
    tasks = [sleeper(2, "ok"), fails, sleeper(3, "ok too")]
    runner = HierarchicalTaskPoolRunner("errors", tasks, capacity)
    async with runner.run_tasks() as envelopes:
        kinds = [e.kind async for batch in envelopes.batches() for e in batch]
    assert sorted(kind.value for kind in kinds) == ["ERROR", "FINAL", "FINAL"]

    stopping = HierarchicalTaskPoolRunner("stop", [fails, sleeper(10, "never")], capacity)
    with pytest.raises(KeyError, match="bad"):
        async with stopping.run_tasks(stop_on_error=True) as envelopes:
            async for _ in envelopes.batches():
                pass
    assert_idle(capacity)


async def test_a_run_that_parked_ends_its_batches_with_run_parked(autojump_clock: object) -> None:
    async def parks(emit: Any) -> None:
        await trio.sleep(1)
        raise RunParked("waits for a message")

    capacity = CapacitySource(2)
    tasks = [TaskSpec(parks, key="p"), sleeper(2, "done")]
    runner = HierarchicalTaskPoolRunner("parked", tasks, capacity)
    seen: list[Any] = []
    with pytest.raises(RunParked) as info:
        async with runner.run_tasks() as envelopes:
            async for batch in envelopes.batches():
                seen.extend(envelope.value for envelope in batch)
    assert seen == ["done"]
    assert list(info.value.keys) == ["p"]
    assert_idle(capacity)


async def test_cancelled_while_waiting_for_a_batch(autojump_clock: object) -> None:
    capacity = CapacitySource(3)
    runner = HierarchicalTaskPoolRunner(
        "cancelled", SourceFromIterable(sleeper(10, i) for i in range(30)), capacity
    )
    seen = 0
    async with runner.run_tasks() as envelopes:
        with trio.move_on_after(25) as scope:
            async for batch in envelopes.batches():
                seen += len(batch)
        assert scope.cancelled_caught
        assert seen == 6  # two rounds of three tasks finished within 25 s
    assert_idle(capacity)
    assert not runner.running


async def test_cancelled_with_a_batch_ready_takes_nothing(autojump_clock: object) -> None:
    capacity = CapacitySource(3)
    runner = HierarchicalTaskPoolRunner("ready", [instant(i) for i in range(3)], capacity)
    async with runner.run_tasks() as envelopes:
        await trio.sleep(1)
        assert len(envelopes) == 3
        with trio.CancelScope() as scope:
            scope.cancel()
            await envelopes.batches().__anext__()
        assert scope.cancelled_caught
        assert len(envelopes) == 3  # nothing was taken by the cancelled call
        assert [e.value async for batch in envelopes.batches() for e in batch] == [0, 1, 2]
    assert_idle(capacity)


async def test_mixed_with_per_envelope_reads(autojump_clock: object) -> None:
    capacity = CapacitySource(1)
    runner = HierarchicalTaskPoolRunner(
        "mixed", [sleeper(1, i) for i in range(10)], capacity, buffer_size=100
    )
    values: list[Any] = []
    async with runner.run_tasks() as envelopes:
        values.append((await envelopes.receive()).value)
        async for batch in envelopes.batches(max_size=2):
            values.extend(envelope.value for envelope in batch)
            if len(values) >= 5:
                break
        async for envelope in envelopes:
            values.append(envelope.value)
    assert values == list(range(10))  # nothing lost or repeated, in order
    assert_idle(capacity)


async def test_after_the_block_exits_batches_raise_closed(autojump_clock: object) -> None:
    runner = HierarchicalTaskPoolRunner("closed", [sleeper(5, 1)], CapacitySource(1))
    async with runner.run_tasks() as envelopes:
        pass
    with pytest.raises(trio.ClosedResourceError, match="block has exited"):
        async for _ in envelopes.batches():
            pass


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "8", None])
async def test_max_size_must_be_a_positive_int(bad: Any) -> None:
    runner = HierarchicalTaskPoolRunner("bad", [instant(1)], CapacitySource(1))
    async with runner.run_tasks() as envelopes:
        with pytest.raises(ValueError, match="max_size must be an int >= 1"):
            envelopes.batches(bad)
        assert [e.value async for e in envelopes] == [1]
