"""SourceFromIterable (lazy production), the channel adapter and as_task_source."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import trio
import trio.lowlevel
import trio.testing

from sluiceway import NOTHING, PushPullBuffer, SourceBuffer, SourceFromIterable, as_task_source
from sluiceway.sources import ChannelSource


async def test_async_iterable_is_advanced_only_on_demand() -> None:
    produced: list[int] = []

    async def gen() -> AsyncIterator[int]:
        for i in range(3):
            produced.append(i)
            yield i

    source = SourceFromIterable(gen())
    assert source.lazy
    assert not source.can_produce_nowait
    assert produced == []
    assert source.peek() is NOTHING  # a lazy source never peeks
    assert produced == []
    assert await source.produce() == 0
    assert produced == [0]
    assert await source.receive() == 1
    assert await source.produce() == 2
    with pytest.raises(trio.EndOfChannel):
        await source.produce()
    assert source.exhausted
    assert source.produced == 3


async def test_sync_iterable_produces_without_waiting() -> None:
    source = SourceFromIterable(iter([1, 2]))
    assert source.can_produce_nowait
    assert source.produce_nowait() == 1
    assert await source.produce() == 2
    with pytest.raises(trio.EndOfChannel):
        source.produce_nowait()
    with pytest.raises(trio.WouldBlock):
        SourceFromIterable(_agen()).produce_nowait()


async def _agen() -> AsyncIterator[int]:
    yield 1


async def test_iterable_error_ends_the_source_with_it() -> None:
    async def gen() -> AsyncIterator[int]:
        yield 1
        raise LookupError("listing failed")

    source = SourceFromIterable(gen())
    assert await source.produce() == 1
    with pytest.raises(LookupError, match="listing failed"):
        await source.produce()
    assert source.exhausted
    assert isinstance(source.failure, LookupError)
    with pytest.raises(LookupError):
        await source.produce()


async def test_production_is_serialised() -> None:
    inside = 0
    peak = 0

    async def gen() -> AsyncIterator[int]:
        nonlocal inside, peak
        for i in range(6):
            inside += 1
            peak = max(peak, inside)
            await trio.lowlevel.checkpoint()
            inside -= 1
            yield i

    source = SourceFromIterable(gen())
    got: list[int] = []

    async def pull() -> None:
        while True:
            try:
                got.append(await source.produce())
            except trio.EndOfChannel:
                return

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(pull)
    assert sorted(got) == list(range(6))
    assert peak == 1


async def test_aclose_runs_the_generator_cleanup() -> None:
    cleaned = trio.Event()

    async def gen() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            cleaned.set()

    source = SourceFromIterable(gen())
    assert await source.produce() == 1
    await source.aclose()
    assert cleaned.is_set()
    with pytest.raises(trio.ClosedResourceError):
        await source.produce()

    closed = []

    def sync_gen() -> Iterator[int]:
        try:
            yield 1
        finally:
            closed.append(True)

    sync_source = SourceFromIterable(sync_gen())
    sync_source.produce_nowait()
    await sync_source.aclose()
    assert closed == [True]


def test_refuses_non_iterables_and_strings() -> None:
    with pytest.raises(TypeError, match="characters"):
        SourceFromIterable("abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="iterable"):
        SourceFromIterable(42)  # type: ignore[arg-type]


async def test_channel_adapter_keeps_one_item_of_lookahead() -> None:
    send, receive = trio.open_memory_channel[int](10)
    adapter = ChannelSource(receive)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(adapter.run_feeder)
        for i in range(3):
            send.send_nowait(i)
        await trio.testing.wait_all_tasks_blocked()
        assert adapter.peek() == 0
        assert receive.statistics().current_buffer_used == 2  # only one was taken ahead
        assert adapter.take() == 0
        await trio.testing.wait_all_tasks_blocked()
        assert adapter.take() == 1
        send.close()
        await trio.testing.wait_all_tasks_blocked()
        assert adapter.take() == 2
    assert adapter.exhausted


def test_as_task_source() -> None:
    buffer = SourceBuffer([1])
    assert as_task_source(buffer) is buffer
    bridge: PushPullBuffer[int] = PushPullBuffer()
    assert as_task_source(bridge) is bridge.source
    _, receive = trio.open_memory_channel[int](0)
    assert isinstance(as_task_source(receive), ChannelSource)
    listed = as_task_source([1, 2])  # a sequence's end is known without advancing it
    assert isinstance(listed, SourceBuffer)
    assert listed.one_shot
    assert isinstance(as_task_source(iter([1, 2])), SourceFromIterable)
    assert isinstance(as_task_source(_agen()), SourceFromIterable)
    with pytest.raises(TypeError, match="not a task source"):
        as_task_source(42)
    with pytest.raises(TypeError, match="not a task source"):
        as_task_source("tasks")


async def test_a_producer_cancelled_while_waiting_its_turn_leaves_no_trace() -> None:
    gate = trio.Event()

    async def gen() -> AsyncIterator[int]:
        await gate.wait()
        yield 1
        yield 2

    source = SourceFromIterable(gen())
    got: list[int] = []

    async def pull() -> None:
        got.append(await source.produce())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pull)  # producing: waits on the gate
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as waiting:
            waiting.cancel()
            with trio.testing.assert_checkpoints():
                await source.advance()  # waits its turn: cancelled there, holding nothing
        assert waiting.cancelled_caught
        gate.set()
    assert got == [1]
    assert await source.advance() == 2  # production goes on: no turn was lost
    with pytest.raises(trio.EndOfChannel):
        await source.advance()
