"""SourceBuffer, PushPullBuffer and the look-ahead protocol they share."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from sluiceway import NOTHING
from sluiceway.sources import BufferMode, OverflowPolicy, PushPullBuffer, SourceBuffer


async def test_fifo_and_lifo_order() -> None:
    fifo = SourceBuffer([1, 2, 3])
    assert [item async for item in fifo] == [1, 2, 3]
    lifo = SourceBuffer([1, 2, 3], mode=BufferMode.LIFO)
    assert lifo.peek() == 3
    assert [item async for item in lifo] == [3, 2, 1]


async def test_one_shot_is_exhausted_when_drained_and_refuses_appends() -> None:
    buffer = SourceBuffer(["a"])
    assert buffer.one_shot
    assert not buffer.exhausted
    assert buffer.take() == "a"
    assert buffer.exhausted
    assert buffer.peek() is NOTHING
    with pytest.raises(trio.ClosedResourceError, match="accepts no more"):
        buffer.append("late")
    with pytest.raises(trio.EndOfChannel):
        await buffer.receive()


async def test_open_buffer_waits_for_appends_until_input_closed() -> None:
    buffer: SourceBuffer[int] = SourceBuffer(one_shot=False)
    got: list[int] = []

    async def consume() -> None:
        async for item in buffer:
            got.append(item)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        buffer.append(1)
        buffer.extend([2, 3])
        await trio.testing.wait_all_tasks_blocked()
        assert got == [1, 2, 3]
        buffer.close_input()
    assert buffer.exhausted
    with pytest.raises(trio.ClosedResourceError):
        buffer.extend([4])


async def test_peek_then_take_and_subscribers() -> None:
    buffer: SourceBuffer[str] = SourceBuffer(one_shot=False)
    calls: list[int] = []
    unsubscribe = buffer.subscribe(lambda: calls.append(len(buffer)))
    buffer.append("x")
    assert calls == [1]
    assert buffer.peek() == "x"
    assert buffer.take() == "x"
    with pytest.raises(trio.WouldBlock):
        buffer.take()
    unsubscribe()
    buffer.append("y")
    assert calls == [1]


async def test_closed_source_raises_and_drops_items() -> None:
    buffer = SourceBuffer([1, 2])
    await buffer.aclose()
    assert buffer.exhausted
    with pytest.raises(trio.ClosedResourceError):
        buffer.peek()
    with pytest.raises(trio.ClosedResourceError):
        await buffer.receive()


def test_bad_mode() -> None:
    with pytest.raises(TypeError, match="BufferMode"):
        SourceBuffer([1], mode="FIFO")  # type: ignore[arg-type]


async def test_push_pull_closing_the_sink_ends_the_stream_after_the_items() -> None:
    bridge: PushPullBuffer[int] = PushPullBuffer()
    got: list[int] = []

    async def producer() -> None:
        with bridge.sink:
            for i in range(5):
                await bridge.sink.send(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        async for item in bridge.source:
            got.append(item)
    assert got == [0, 1, 2, 3, 4]
    assert bridge.source.exhausted


async def test_push_pull_items_sent_before_the_consumer_starts_are_delivered() -> None:
    bridge: PushPullBuffer[str] = PushPullBuffer()
    bridge.sink.send_nowait("early")
    bridge.sink.close()
    assert [item async for item in bridge.source] == ["early"]


async def test_error_thrown_into_the_sink_arrives_after_the_items_before_it() -> None:
    bridge: PushPullBuffer[int] = PushPullBuffer()
    bridge.sink.send_nowait(1)
    bridge.sink.send_nowait(2)
    bridge.sink.throw(ValueError("producer failed"))
    got: list[int] = []
    with pytest.raises(ValueError, match="producer failed"):
        async for item in bridge.source:
            got.append(item)
    assert got == [1, 2]
    assert isinstance(bridge.source.failure, ValueError)
    with pytest.raises(trio.ClosedResourceError):
        bridge.sink.send_nowait(3)
    with pytest.raises(TypeError, match="needs an exception"):
        PushPullBuffer[int]().sink.throw("oops")  # type: ignore[arg-type]


async def test_bounded_block_policy(autojump_clock: object) -> None:
    bridge: PushPullBuffer[int] = PushPullBuffer(2)
    bridge.sink.send_nowait(1)
    bridge.sink.send_nowait(2)
    with pytest.raises(trio.WouldBlock):
        bridge.sink.send_nowait(3)
    sent = trio.Event()

    async def send_third() -> None:
        await bridge.sink.send(3)
        sent.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_third)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()
        assert bridge.statistics().tasks_waiting_send == 1
        assert await bridge.source.receive() == 1
    assert sent.is_set()
    assert len(bridge) == 2


@pytest.mark.parametrize(
    ("policy", "kept"),
    [(OverflowPolicy.DROP_OLDEST, [3, 4]), (OverflowPolicy.DROP_NEWEST, [1, 2])],
)
async def test_bounded_drop_policies(policy: OverflowPolicy, kept: list[int]) -> None:
    bridge: PushPullBuffer[int] = PushPullBuffer(2, overflow=policy)
    for i in (1, 2, 3, 4):
        await bridge.sink.send(i)
    bridge.sink.close()
    assert [item async for item in bridge.source] == kept
    stats = bridge.statistics()
    assert stats.dropped == 2
    assert stats.sent == 2 + (2 if policy is OverflowPolicy.DROP_OLDEST else 0)


async def test_sink_clones_end_the_stream_only_when_all_are_closed() -> None:
    bridge: PushPullBuffer[str] = PushPullBuffer()
    second = bridge.sink.clone()
    bridge.sink.send_nowait("a")
    bridge.sink.close()
    assert not bridge.source.exhausted
    second.send_nowait("b")
    await second.aclose()
    assert [item async for item in bridge.source] == ["a", "b"]
    with pytest.raises(trio.ClosedResourceError):
        bridge.sink.clone()


async def test_source_clones_share_items_and_closing_all_breaks_senders() -> None:
    bridge: PushPullBuffer[int] = PushPullBuffer()
    other = bridge.source.clone()
    bridge.sink.send_nowait(1)
    bridge.sink.send_nowait(2)
    assert bridge.source.take() == 1
    assert other.take() == 2
    bridge.source.close()
    bridge.sink.send_nowait(3)
    other.close()
    with pytest.raises(trio.BrokenResourceError):
        bridge.sink.send_nowait(4)
    assert bridge.statistics().open_sources == 0


async def test_blocked_sender_is_released_when_consumers_leave(autojump_clock: object) -> None:
    bridge: PushPullBuffer[int] = PushPullBuffer(1)
    bridge.sink.send_nowait(0)
    errors: list[BaseException] = []

    async def send() -> None:
        try:
            await bridge.sink.send(1)
        except trio.BrokenResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()
        bridge.source.close()
    assert len(errors) == 1


@pytest.mark.parametrize(
    ("size", "error"), [(0, ValueError), (-1, ValueError), (2.5, TypeError), ("3", TypeError)]
)
def test_bad_bounds(size: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        PushPullBuffer(size)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="OverflowPolicy"):
        PushPullBuffer(math.inf, overflow="drop")  # type: ignore[arg-type]


def test_peek_and_take_follow_the_mode_and_refuse_once_closed() -> None:
    # SourceBuffer implements peek() and take() itself (runners call them for every task).
    for mode, order in ((BufferMode.FIFO, [1, 2, 3]), (BufferMode.LIFO, [3, 2, 1])):
        buffer = SourceBuffer([1, 2, 3], mode=mode)
        taken = []
        while buffer.peek() is not NOTHING:
            head = buffer.peek()
            taken.append(buffer.take())
            assert taken[-1] == head
        assert taken == order
        with pytest.raises(trio.WouldBlock):
            buffer.take()
        assert buffer.exhausted
    closed = SourceBuffer([1])
    closed.close()
    with pytest.raises(trio.ClosedResourceError):
        closed.peek()
    with pytest.raises(trio.ClosedResourceError):
        closed.take()
