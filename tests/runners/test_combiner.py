"""AsyncIteratorCombiner: race / round-robin streams, all / race / any, closing and errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from sluiceway.runners import Final
from sluiceway.runners._combiner import AsyncIteratorCombiner
from sluiceway.runners._combiner_sources import SlotState

_NO_FINAL = object()


class Probe:
    """A hand-written async iterator that records how it is driven.

    Item ``i`` is ``(name, i)``, produced ``delays[i]`` seconds after it was asked for. It ends
    with ``StopAsyncIteration(final)`` (or a bare one), or raises ``error`` instead of item
    ``error_at``. It counts pulls, the pulls outstanding at once, cancelled pulls and ``aclose``.
    """

    def __init__(
        self,
        name: Any,
        delays: Sequence[float],
        *,
        final: object = _NO_FINAL,
        error_at: int | None = None,
        error: Exception | None = None,
        stamp: bool = False,
    ) -> None:
        self.name = name
        self.delays = list(delays)
        self.final = final
        self.error_at = error_at
        self.error = error or ValueError(f"source {name} failed")
        self.stamp = stamp
        self.pos = 0
        self.pulls = 0
        self.outstanding = 0
        self.max_outstanding = 0
        self.cancelled = 0
        self.closed = False
        self.pulled_after_close = False

    def __aiter__(self) -> Probe:
        return self

    async def __anext__(self) -> Any:
        self.pulls += 1
        self.outstanding += 1
        self.max_outstanding = max(self.max_outstanding, self.outstanding)
        if self.closed:
            self.pulled_after_close = True
        try:
            if self.pos == self.error_at:
                await trio.sleep(self.delays[self.pos] if self.pos < len(self.delays) else 0)
                raise self.error
            if self.pos >= len(self.delays):
                await trio.lowlevel.checkpoint()
                if self.final is _NO_FINAL:
                    raise StopAsyncIteration
                raise StopAsyncIteration(self.final)
            await trio.sleep(self.delays[self.pos])
            item = (self.name, self.pos)
            self.pos += 1
            if self.stamp:
                return (*item, trio.current_time())
            return item
        except trio.Cancelled:
            self.cancelled += 1
            raise
        finally:
            self.outstanding -= 1

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


class Log:
    """Records what async-generator sources did (``finally:`` blocks, cancelled pulls)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def __contains__(self, event: str) -> bool:
        return event in self.events


async def ticker(
    name: str, delays: Sequence[float], log: Log, *, final: object = _NO_FINAL
) -> AsyncIterator[Any]:
    """Async generator: yields ``(name, i)`` after ``delays[i]``; logs cancel and finally."""
    try:
        for i, delay in enumerate(delays):
            await trio.sleep(delay)
            yield (name, i)
        if final is not _NO_FINAL:
            yield Final(final)
    except trio.Cancelled:
        log.events.append(f"{name} cancelled")
        raise
    finally:
        log.events.append(f"{name} closed")


async def forever(name: str, period: float, log: Log) -> AsyncIterator[Any]:
    try:
        i = 0
        while True:
            await trio.sleep(period)
            yield (name, i)
            i += 1
    except trio.Cancelled:
        log.events.append(f"{name} cancelled")
        raise
    finally:
        log.events.append(f"{name} closed")


async def drain(channel: trio.abc.ReceiveChannel[Any]) -> list[Any]:
    return [item async for item in channel]


# -- race_stream -----------------------------------------------------------------------------


async def test_race_stream_yields_in_completion_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = Probe("a", [1, 1, 1], stamp=True)
    b = Probe("b", [0.5, 2], stamp=True)
    async with AsyncIteratorCombiner(a, b).race_stream() as channel:
        got = await drain(channel)
    assert [item[:2] for item in got] == [("b", 0), ("a", 0), ("a", 1), ("b", 1), ("a", 2)]
    # All sources are pulled concurrently: each source's clock runs independently.
    assert [item[2] for item in got] == [0.5, 1.0, 2.0, 2.5, 3.0]
    assert a.closed
    assert b.closed
    assert a.max_outstanding == b.max_outstanding == 1
    assert (a.pulls, b.pulls) == (4, 3)  # every item plus the pull that found the end


async def test_race_stream_accepts_async_generators_and_closes_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    combiner = AsyncIteratorCombiner(ticker("a", [2, 2], log), ticker("b", [1, 2], log))
    async with combiner.race_stream() as channel:
        got = await drain(channel)
    assert got == [("b", 0), ("a", 0), ("b", 1), ("a", 1)]
    assert sorted(log.events) == ["a closed", "b closed"]
    assert combiner.size == 0


async def test_race_stream_buffers_results_while_the_consumer_is_busy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = Probe("a", [1, 1], stamp=True)
    b = Probe("b", [2, 2], stamp=True)
    c = Probe("c", [3], stamp=True)
    async with AsyncIteratorCombiner(a, b, c).race_stream() as channel:
        first = await channel.receive()
        await trio.sleep(10)  # b and c resolve meanwhile; a is not pulled again (lazy)
        assert a.pulls == 1
        rest = await drain(channel)
    assert first[:2] == ("a", 0)
    # Buffered results come out in completion order, then fresh pulls.
    assert [item[:2] for item in rest] == [("b", 0), ("c", 0), ("a", 1), ("b", 1)]
    assert [item[2] for item in rest] == [2.0, 3.0, 12.0, 13.0]


async def test_race_stream_with_source(autojump_clock: trio.testing.MockClock) -> None:
    async with AsyncIteratorCombiner(Probe("a", [2]), Probe("b", [1])).race_stream(
        with_source=True
    ) as channel:
        assert await drain(channel) == [(1, ("b", 0)), (0, ("a", 0))]


async def test_no_sources(autojump_clock: trio.testing.MockClock) -> None:
    empty: AsyncIteratorCombiner[Any] = AsyncIteratorCombiner()
    assert empty.size == 0
    async with empty.race_stream() as channel:
        assert await drain(channel) == []
    async with AsyncIteratorCombiner[Any]() as combiner:
        assert await combiner.all() == []
        with pytest.raises(trio.EndOfChannel):
            await combiner.race()
        with pytest.raises(trio.EndOfChannel):
            await combiner.any()


# -- round_robin_stream ------------------------------------------------------------------------


async def test_round_robin_takes_turns_in_source_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = Probe("a", [3, 3, 3])  # slowest source first: order does not depend on speed
    b = Probe("b", [1])
    c = Probe("c", [0.5, 0.5])
    async with AsyncIteratorCombiner(a, b, c).round_robin_stream(with_source=True) as channel:
        got = await drain(channel)
    assert got == [
        (0, ("a", 0)),
        (1, ("b", 0)),
        (2, ("c", 0)),
        (0, ("a", 1)),
        (2, ("c", 1)),
        (0, ("a", 2)),
    ]
    for probe in (a, b, c):
        assert probe.closed
        assert probe.max_outstanding == 1


async def test_round_robin_prefetches_at_most_one_item_per_source(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sources = [Probe(name, [1, 1, 1]) for name in "abc"]
    async with AsyncIteratorCombiner(*sources).round_robin_stream() as channel:
        assert await channel.receive() == ("a", 0)
        # While a was awaited, b and c were pulled once each, no more.
        assert [s.pulls for s in sources] == [1, 1, 1]
        assert await channel.receive() == ("b", 0)
        assert await channel.receive() == ("c", 0)
        assert trio.current_time() == 1.0  # the three pulls overlapped
        rest = await drain(channel)
    assert len(rest) == 6
    assert trio.current_time() == 3.0
    assert all(s.max_outstanding == 1 and s.closed for s in sources)


async def test_round_robin_final_values(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    combiner = AsyncIteratorCombiner(
        ticker("a", [1, 1], log, final="A"), ticker("b", [1], log), Probe("c", [1], final="C")
    )
    async with combiner.round_robin_stream(yield_final_values=True) as channel:
        got = await drain(channel)
    assert got == [("a", 0), ("b", 0), ("c", 0), ("a", 1), Final(None), Final("C"), Final("A")]


# -- final values ------------------------------------------------------------------------------


def _final_sources(log: Log) -> list[Any]:
    return [
        ticker("gen", [1, 1], log, final="gen-final"),  # Final(...) as the last item
        Probe("hand", [1.5], final="hand-final"),  # StopAsyncIteration(value)
        ticker("plain", [0.5], log),  # ends without a final value
    ]


async def test_final_values_are_dropped_by_default(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with AsyncIteratorCombiner(*_final_sources(Log())).race_stream() as channel:
        got = await drain(channel)
    assert got == [("plain", 0), ("gen", 0), ("hand", 0), ("gen", 1)]


async def test_final_values_are_delivered_when_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    combiner = AsyncIteratorCombiner(*_final_sources(Log()))
    async with combiner.race_stream(yield_final_values=True, with_source=True) as channel:
        got = await drain(channel)
    assert got == [
        (2, ("plain", 0)),
        (2, Final(None)),
        (0, ("gen", 0)),
        (1, ("hand", 0)),
        (1, Final("hand-final")),
        (0, ("gen", 1)),
        (0, Final("gen-final")),
    ]


async def test_a_final_item_ends_the_source_and_closes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()

    async def source() -> AsyncIterator[Any]:
        try:
            yield 1
            yield Final("done")
            log.events.append("pulled past Final")
            yield 2
        finally:
            log.events.append("closed")

    async with AsyncIteratorCombiner(source()) as combiner:
        assert await combiner.race(yield_final_values=True) == 1
        assert combiner.size == 1
        assert await combiner.race(yield_final_values=True) == Final("done")
        assert combiner.size == 0
        await trio.lowlevel.checkpoint()
        assert log.events == ["closed"]  # closed as soon as it ended, not at exit


# -- all ---------------------------------------------------------------------------------------


async def test_all_returns_one_item_per_source_in_source_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = Probe("a", [3, 1])
    b = Probe("b", [1])
    c = Probe("c", [2, 2, 2])
    async with AsyncIteratorCombiner(a, b, c) as combiner:
        assert combiner.size == 3
        assert await combiner.all() == [("a", 0), ("b", 0), ("c", 0)]
        assert trio.current_time() == 3.0  # concurrent: the slowest, not the sum
        # b is exhausted: it is omitted (and dropped).
        assert await combiner.all() == [("a", 1), ("c", 1)]
        assert combiner.size == 2
        assert await combiner.all() == [("c", 2)]
        assert await combiner.all() == []
        assert combiner.size == 0
        assert await combiner.all() == []


async def test_all_with_final_values(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    async with AsyncIteratorCombiner(
        ticker("a", [1, 1], log, final="A"), Probe("b", [1], final="B"), ticker("c", [1], log)
    ) as combiner:
        assert await combiner.all(yield_final_values=True) == [("a", 0), ("b", 0), ("c", 0)]
        assert await combiner.all(yield_final_values=True) == [("a", 1), Final("B"), Final(None)]
        assert await combiner.all(yield_final_values=True) == [Final("A")]
        assert await combiner.all(yield_final_values=True) == []
    assert sorted(log.events) == ["a closed", "c closed"]


async def test_all_raises_the_first_error_and_keeps_the_other_results(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = Probe("a", [3, 1])
    b = Probe("b", [1], error_at=0, error=KeyError("b broke"))
    c = Probe("c", [2, 2])
    async with AsyncIteratorCombiner(a, b, c) as combiner:
        with pytest.raises(KeyError) as excinfo:
            await combiner.all()
        assert excinfo.type is KeyError
        assert trio.current_time() == 1.0  # raised as soon as it arrived
        assert combiner.size == 2
        # a and c were not pulled again: their in-flight results are used now.
        assert await combiner.all() == [("a", 0), ("c", 0)]
        assert (a.pulls, c.pulls) == (1, 1)
    assert b.closed


async def test_all_uses_results_buffered_by_race(autojump_clock: trio.testing.MockClock) -> None:
    async with AsyncIteratorCombiner(Probe("a", [1, 1]), Probe("b", [2])) as combiner:
        assert await combiner.race() == ("a", 0)
        assert await combiner.all() == [("a", 1), ("b", 0)]


# -- race --------------------------------------------------------------------------------------


async def test_race_returns_the_first_result_and_keeps_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = Probe("a", [1, 1])
    b = Probe("b", [2, 2])
    c = Probe("c", [3, 3])
    async with AsyncIteratorCombiner(a, b, c) as combiner:
        assert await combiner.race() == ("a", 0)
        assert trio.current_time() == 1.0
        await trio.sleep(5)  # b and c resolve; a stays idle
        assert await combiner.race() == ("b", 0)
        assert await combiner.race() == ("c", 0)
        assert trio.current_time() == 6.0  # served from the buffer, no waiting
        assert (a.pulls, b.pulls, c.pulls) == (1, 1, 1)
        assert await combiner.race() == ("a", 1)
        assert trio.current_time() == 7.0


async def test_race_discard_round_drops_the_other_results(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = Probe("a", [1, 1])
    b = Probe("b", [2, 2])
    c = Probe("c", [3, 3])
    async with AsyncIteratorCombiner(a, b, c) as combiner:
        assert await combiner.race(discard_round=True) == ("a", 0)
        await trio.sleep(5)  # b's and c's first items arrive and are thrown away
        assert await combiner.race() == ("a", 1)
        assert trio.current_time() == 7.0
        assert await combiner.race() == ("b", 1)
        assert b.max_outstanding == c.max_outstanding == 1
        # Buffered results are part of the round too.
        await trio.sleep(5)  # c's second item is buffered
        assert await combiner.race(discard_round=True) == ("c", 1)
        with pytest.raises(trio.EndOfChannel):
            await combiner.race()


async def test_race_discard_round_never_discards_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with AsyncIteratorCombiner(
        Probe("a", [1, 1]), Probe("b", [2], error_at=0, error=OSError("b"))
    ) as combiner:
        assert await combiner.race(discard_round=True) == ("a", 0)
        await trio.sleep(5)
        with pytest.raises(OSError, match="b"):
            await combiner.race()
        assert await combiner.race() == ("a", 1)


async def test_race_skips_ended_sources_unless_final_values_are_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with AsyncIteratorCombiner(Probe("a", [], final="A"), Probe("b", [1])) as combiner:
        assert await combiner.race() == ("b", 0)
        assert combiner.size == 1
        with pytest.raises(trio.EndOfChannel):
            await combiner.race()
    async with AsyncIteratorCombiner(Probe("a", [], final="A"), Probe("b", [1])) as combiner:
        assert await combiner.race(yield_final_values=True) == Final("A")
        assert await combiner.race(yield_final_values=True) == ("b", 0)
        assert await combiner.race(yield_final_values=True) == Final(None)
        with pytest.raises(trio.EndOfChannel):
            await combiner.race(yield_final_values=True)


async def test_race_raises_an_error_that_settles_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = Probe("a", [2, 2])
    b = Probe("b", [1], error_at=0)
    async with AsyncIteratorCombiner(a, b) as combiner:
        with pytest.raises(ValueError, match="source b failed") as excinfo:
            await combiner.race()
        assert excinfo.type is ValueError
        assert combiner.size == 1
        assert await combiner.race() == ("a", 0)
    assert b.closed
    assert a.closed


async def test_race_checkpoints_even_when_a_result_is_buffered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with AsyncIteratorCombiner(Probe("a", [1]), Probe("b", [2])) as combiner:
        await combiner.race()
        await trio.sleep(2)
        with trio.testing.assert_checkpoints():
            assert await combiner.race() == ("b", 0)
        with trio.testing.assert_checkpoints():
            assert await combiner.all() == []


async def test_cancelled_race_loses_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with AsyncIteratorCombiner(Probe("a", [5])) as combiner:
        with trio.move_on_after(1):
            await combiner.race()
        assert await combiner.race() == ("a", 0)  # the same pull, still in flight
        assert trio.current_time() == 5.0


# -- any ---------------------------------------------------------------------------------------


async def test_any_ignores_errors_until_a_source_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a_error = ValueError("a")
    b_error = KeyError("b")
    async with AsyncIteratorCombiner(
        Probe("a", [1], error_at=0, error=a_error),
        Probe("b", [2], error_at=0, error=b_error),
        Probe("c", [3, 3]),
    ) as combiner:
        assert await combiner.any() == ("c", 0)
        assert combiner.size == 1  # the failed sources are dropped
        assert combiner.suppressed_errors == [(0, a_error), (1, b_error)]
        assert await combiner.any() == ("c", 1)


async def test_any_raises_a_group_of_every_error_when_all_fail(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a_error = ValueError("a")
    b_error = KeyError("b")
    async with AsyncIteratorCombiner(
        Probe("a", [2], error_at=0, error=a_error),
        Probe("b", [1], error_at=0, error=b_error),
        Probe("c", []),  # ends without an item: not an error
    ) as combiner:
        with pytest.raises(ExceptionGroup) as excinfo:
            await combiner.any()
        assert excinfo.value.exceptions == (b_error, a_error)  # completion order
        assert combiner.size == 0
        assert combiner.suppressed_errors == []
        with pytest.raises(trio.EndOfChannel):
            await combiner.any()


async def test_any_with_a_single_failure_still_raises_a_group(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with AsyncIteratorCombiner(Probe("a", [1], error_at=0)) as combiner:
        with pytest.raises(ExceptionGroup) as excinfo:
            await combiner.any()
        assert [type(e) for e in excinfo.value.exceptions] == [ValueError]


async def test_any_final_values_and_discard_round(autojump_clock: trio.testing.MockClock) -> None:
    async with AsyncIteratorCombiner(
        Probe("a", [1], error_at=0), Probe("b", [], final="B"), Probe("c", [2, 2])
    ) as combiner:
        assert await combiner.any(yield_final_values=True, discard_round=True) == Final("B")
        # c's first item was in flight in that round: it is discarded, c is pulled afresh; a's
        # error was in flight too, but errors are never discarded: any() collects it.
        assert await combiner.any() == ("c", 1)
        assert trio.current_time() == 4.0
        assert [index for index, _ in combiner.suppressed_errors] == [0]


async def test_cancelled_any_puts_the_collected_errors_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with AsyncIteratorCombiner(Probe("a", [1], error_at=0), Probe("b", [10])) as combiner:
        with trio.move_on_after(2):
            await combiner.any()
        assert combiner.size == 2
        with pytest.raises(ValueError, match="source a failed"):
            await combiner.race()
        assert await combiner.race() == ("b", 0)


# -- size, laziness, misuse --------------------------------------------------------------------


async def test_size_counts_active_sources(autojump_clock: trio.testing.MockClock) -> None:
    combiner = AsyncIteratorCombiner(Probe("a", [1]), Probe("b", [2]), Probe("c", []))
    assert combiner.size == 3
    async with combiner:
        assert combiner.size == 3
        assert await combiner.race() == ("a", 0)  # c's end settles first and is skipped
        assert combiner.size == 2
        await trio.sleep(5)
        assert combiner.size == 2  # b's item is buffered, a is idle
        assert await combiner.all() == [("b", 0)]  # a ended: omitted and dropped
        assert combiner.size == 1
        assert await combiner.all() == []
        assert combiner.size == 0
    assert combiner.size == 0


async def test_pulls_happen_only_on_demand(autojump_clock: trio.testing.MockClock) -> None:
    sources = [Probe(name, [1, 1, 1]) for name in "abc"]
    async with AsyncIteratorCombiner(*sources) as combiner:
        await trio.sleep(10)
        assert [s.pulls for s in sources] == [0, 0, 0]
        await combiner.race()
        assert [s.pulls for s in sources] == [1, 1, 1]
        await trio.sleep(10)
        assert [s.pulls for s in sources] == [1, 1, 1]
    assert all(s.closed for s in sources)


def test_bad_sources_raise_type_error() -> None:
    with pytest.raises(TypeError, match=r"source 1 .*synchronous iterable"):
        AsyncIteratorCombiner(Probe("a", []), [1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be an async iterable or async iterator"):
        AsyncIteratorCombiner(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="forget to call"):
        AsyncIteratorCombiner(ticker)  # type: ignore[arg-type]

    class BadIterable:
        def __aiter__(self) -> object:
            return object()

    with pytest.raises(TypeError, match="not an async iterator"):
        AsyncIteratorCombiner(BadIterable())  # type: ignore[arg-type]


def test_the_same_iterator_twice_is_rejected() -> None:
    probe = Probe("a", [])
    with pytest.raises(ValueError, match="sources 0 and 1"):
        AsyncIteratorCombiner(probe, probe)


async def test_async_iterables_are_iterated_once(autojump_clock: trio.testing.MockClock) -> None:
    class Numbers:
        def __init__(self) -> None:
            self.calls = 0

        def __aiter__(self) -> AsyncIterator[int]:
            self.calls += 1
            return self._gen()

        async def _gen(self) -> AsyncIterator[int]:
            for i in range(3):
                yield i

    numbers = Numbers()
    send, receive = trio.open_memory_channel[int](5)
    with send:
        for i in (10, 20):
            send.send_nowait(i)
    async with AsyncIteratorCombiner[int](numbers, receive).round_robin_stream() as channel:
        assert await drain(channel) == [0, 10, 1, 20, 2]
    assert numbers.calls == 1
    with pytest.raises(trio.ClosedResourceError):
        receive.receive_nowait()  # the channel (its own iterator) was closed


async def test_race_any_all_need_an_entered_combiner() -> None:
    combiner = AsyncIteratorCombiner(Probe("a", [1]))
    with pytest.raises(RuntimeError, match=r"race\(\) needs an entered combiner"):
        await combiner.race()
    with pytest.raises(RuntimeError, match=r"any\(\) needs an entered combiner"):
        await combiner.any()
    with pytest.raises(RuntimeError, match=r"all\(\) needs an entered combiner"):
        await combiner.all()
    async with combiner:
        pass
    with pytest.raises(RuntimeError, match="closed combiner"):
        await combiner.race()
    with pytest.raises(RuntimeError, match="closed combiner"):
        async with combiner.race_stream():
            pass  # pragma: no cover
    with pytest.raises(RuntimeError, match="entered only once"):
        async with combiner:
            pass  # pragma: no cover


async def test_one_consumer_at_a_time(autojump_clock: trio.testing.MockClock) -> None:
    async with AsyncIteratorCombiner(Probe("a", [1, 1])) as combiner:
        async with combiner.race_stream() as channel:
            assert await channel.receive() == ("a", 0)
            with pytest.raises(trio.BusyResourceError):
                await combiner.race()
            with pytest.raises(trio.BusyResourceError):
                async with combiner.round_robin_stream():
                    pass  # pragma: no cover
        assert await combiner.race() == ("a", 1)


# -- closing and cancellation ------------------------------------------------------------------


async def test_early_exit_cancels_pulls_and_closes_sources(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    slow = Probe("slow", [100])
    async with AsyncIteratorCombiner(
        forever("fast", 1, log), forever("idle", 0.5, log), slow
    ).race_stream() as channel:
        async for item in channel:
            if item == ("fast", 0):
                break
    assert trio.current_time() == 1.0
    assert "fast closed" in log
    assert "idle closed" in log  # its buffered item was dropped, the generator closed
    assert slow.cancelled == 1  # the outstanding pull was cancelled
    assert slow.closed


async def test_early_exit_from_a_stream_on_an_open_combiner_keeps_its_pulls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    slow = Probe("slow", [3])
    async with AsyncIteratorCombiner(ticker("fast", [1, 1], log), slow) as combiner:
        async with combiner.race_stream() as channel:
            assert await channel.receive() == ("fast", 0)
        assert slow.cancelled == 0
        assert log.events == []
        assert await combiner.race() == ("fast", 1)
        assert await combiner.race() == ("slow", 0)
        assert trio.current_time() == 3.0
        assert slow.pulls == 1
    assert log.events == ["fast closed"]
    assert slow.closed


async def test_consumer_cancellation_closes_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    slow = Probe("slow", [100])
    got: list[Any] = []
    with trio.move_on_after(2.5) as scope:
        async with AsyncIteratorCombiner(forever("fast", 1, log), slow).race_stream() as channel:
            async for item in channel:
                got.append(item)
    assert scope.cancelled_caught
    assert got == [("fast", 0), ("fast", 1)]
    assert log.events == ["fast cancelled", "fast closed"]
    assert slow.cancelled == 1
    assert slow.closed


async def test_cancelling_the_combiner_block_closes_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    with trio.move_on_after(2.5) as scope:
        async with AsyncIteratorCombiner(forever("a", 1, log), forever("b", 2, log)) as combiner:
            while True:
                await combiner.race()
    assert scope.cancelled_caught
    assert sorted(log.events) == ["a cancelled", "a closed", "b cancelled", "b closed"]


async def test_source_cleanup_can_await_while_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()

    async def source() -> AsyncIterator[int]:
        try:
            yield 1
            await trio.sleep_forever()
        finally:
            await trio.sleep(1)  # async cleanup, e.g. releasing a lease
            log.events.append("cleaned up")

    with trio.move_on_after(5):
        async with AsyncIteratorCombiner(source()).race_stream() as channel:
            async for _ in channel:
                await trio.sleep_forever()  # the source is idle (suspended at its yield)
    assert log.events == ["cleaned up"]
    assert trio.current_time() == 6.0  # the cleanup ran to its end, shielded


# -- errors ------------------------------------------------------------------------------------


async def test_first_error_surfaces_bare_and_closes_the_other_sources(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    slow = Probe("slow", [100])
    got: list[Any] = []
    with pytest.raises(ValueError, match="source bad failed") as excinfo:
        async with AsyncIteratorCombiner(
            Probe("bad", [2], error_at=0), forever("fast", 0.5, log), Probe("mid", [1.8]), slow
        ).race_stream() as channel:
            async for item in channel:
                got.append(item)
                await trio.sleep(0.6)  # busy consumer: mid's item is buffered at 1.8
    assert excinfo.type is ValueError  # bare, not a one-member group
    # Results that resolved before the error (at 2.0) are delivered, then the error.
    assert got == [("fast", 0), ("fast", 1), ("mid", 0)]
    assert trio.current_time() == pytest.approx(2.8)
    assert slow.cancelled == 1
    assert slow.closed
    assert "fast closed" in log


async def test_stream_error_is_raised_by_receive_then_the_channel_is_broken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    async with AsyncIteratorCombiner(
        ticker("a", [1, 5], log), Probe("bad", [2], error_at=0)
    ).race_stream() as channel:
        assert await channel.receive() == ("a", 0)
        with pytest.raises(ValueError, match="source bad failed"):
            await channel.receive()
        with pytest.raises(trio.BrokenResourceError) as excinfo:
            await channel.receive()
        assert isinstance(excinfo.value.__cause__, ValueError)
    # The error was received, so leaving the block raises nothing.
    assert log.events == ["a cancelled", "a closed"]


async def test_round_robin_error_is_raised_whatever_the_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow = Probe("slow", [10, 10])
    with pytest.raises(KeyError) as excinfo:
        async with AsyncIteratorCombiner(
            slow, Probe("bad", [1], error_at=0, error=KeyError("bad"))
        ).round_robin_stream() as channel:
            await channel.receive()
    assert excinfo.type is KeyError
    assert trio.current_time() == 1.0
    assert slow.cancelled == 1
    assert slow.closed


async def test_an_error_nobody_received_is_raised_from_the_block(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    with pytest.raises(ValueError, match="source bad failed") as excinfo:
        async with AsyncIteratorCombiner(
            ticker("a", [1, 100], log), Probe("bad", [2], error_at=0)
        ).race_stream() as channel:
            assert await channel.receive() == ("a", 0)
            await trio.sleep(5)  # the error arrives while we are busy; then we leave
    assert excinfo.type is ValueError
    assert log.events == ["a closed"]  # a was idle: closed, never pulled again


async def test_an_error_nobody_received_is_raised_from_the_combiner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(ValueError, match="source bad failed") as excinfo:
        async with AsyncIteratorCombiner(
            Probe("a", [1]), Probe("bad", [2], error_at=0)
        ) as combiner:
            assert await combiner.race() == ("a", 0)
            await trio.sleep(5)
    assert excinfo.type is ValueError


async def test_a_pending_error_and_a_body_error_are_both_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(ExceptionGroup) as excinfo:
        async with AsyncIteratorCombiner(
            Probe("a", [0.5]), Probe("bad", [1], error_at=0)
        ).race_stream() as channel:
            await channel.receive()
            await trio.sleep(5)
            raise LookupError("consumer bug")
    assert sorted(type(e).__name__ for e in excinfo.value.exceptions) == [
        "LookupError",
        "ValueError",
    ]


async def test_stream_error_on_an_open_combiner_closes_every_source_before_leaving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()

    async def slow_cleanup() -> AsyncIterator[int]:
        try:
            await trio.sleep(0.5)
            yield 1
            await trio.sleep_forever()
        finally:
            await trio.sleep(3)
            log.events.append("slow cleaned up")

    async with AsyncIteratorCombiner(
        slow_cleanup(), Probe("bad", [1], error_at=0), forever("f", 10, log)
    ) as combiner:
        with pytest.raises(ValueError, match="source bad failed") as excinfo:
            async with combiner.race_stream() as channel:
                async for _ in channel:
                    await trio.sleep(2)  # slow_cleanup is idle when bad fails at 1.0
        assert excinfo.type is ValueError
        assert trio.current_time() == 4.0  # waited for slow_cleanup's cleanup (1.0 + 3)
        # Every source is closed once the block is left, not only when the combiner exits.
        assert sorted(log.events) == ["f cancelled", "f closed", "slow cleaned up"]
        assert combiner.size == 0
        with pytest.raises(trio.EndOfChannel):
            await combiner.race()


async def test_a_source_failing_to_close_is_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def source() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2  # pragma: no cover
        finally:
            raise OSError("cleanup failed")

    with pytest.raises(OSError, match="cleanup failed") as excinfo:
        async with AsyncIteratorCombiner(source()).race_stream() as channel:
            async for _ in channel:
                break
    assert excinfo.type is OSError


async def test_a_buffered_error_fails_a_stream_opened_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = Probe("a", [1, 1])
    async with AsyncIteratorCombiner(a, Probe("bad", [2], error_at=0)) as combiner:
        assert await combiner.race() == ("a", 0)
        await trio.sleep(5)
        with pytest.raises(ValueError, match="source bad failed"):
            async with combiner.race_stream() as channel:
                await drain(channel)
        assert a.closed
        assert a.pulls == 1


# -- properties --------------------------------------------------------------------------------

_delays = st.lists(st.sampled_from([0, 0.5, 1, 1.5, 3]), max_size=6)


@given(
    per_source=st.lists(_delays, max_size=5),
    consumer_delays=st.lists(st.sampled_from([0, 0.5, 2]), max_size=8),
)
def test_race_stream_delivers_every_item_once_in_source_order(
    per_source: list[list[float]], consumer_delays: list[float]
) -> None:
    sources = [Probe(index, delays, stamp=True) for index, delays in enumerate(per_source)]

    async def main() -> list[Any]:
        got: list[Any] = []
        async with AsyncIteratorCombiner(*sources).race_stream(with_source=True) as channel:
            async for item in channel:
                got.append(item)
                if consumer_delays:
                    await trio.sleep(consumer_delays[len(got) % len(consumer_delays)])
        return got

    got = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    delivered = [(index, item[:2]) for index, item in got]
    expected = [(i, (i, n)) for i, delays in enumerate(per_source) for n in range(len(delays))]
    assert sorted(delivered) == sorted(expected)  # every item exactly once
    for i in range(len(per_source)):
        positions = [item[1] for index, item in delivered if index == i]
        assert positions == sorted(positions)  # each source's own order
    times = [item[2] for _, item in got]
    assert times == sorted(times)  # completion order
    for probe in sources:
        assert probe.max_outstanding == 1
        assert probe.pulls == len(probe.delays) + 1
        assert probe.closed
        assert not probe.pulled_after_close


@given(per_source=st.lists(_delays, max_size=5))
def test_round_robin_stream_matches_the_turn_model(per_source: list[list[float]]) -> None:
    sources = [Probe(index, delays) for index, delays in enumerate(per_source)]

    async def main() -> list[Any]:
        async with AsyncIteratorCombiner(*sources).round_robin_stream() as channel:
            return await drain(channel)

    got = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    expected = []
    for n in range(max((len(d) for d in per_source), default=0)):
        expected += [(i, n) for i, delays in enumerate(per_source) if n < len(delays)]
    assert got == expected
    for probe in sources:
        assert probe.max_outstanding <= 1
        assert probe.pulls == len(probe.delays) + 1
        assert probe.closed


@given(
    per_source=st.lists(_delays, min_size=1, max_size=4),
    stop_after=st.integers(0, 6),
    fail=st.booleans(),
)
def test_leaving_early_or_failing_always_closes_every_source(
    per_source: list[list[float]], stop_after: int, fail: bool
) -> None:
    sources = [Probe(index, delays) for index, delays in enumerate(per_source)]
    if fail:
        sources.append(Probe("bad", [1], error_at=0))

    async def main() -> None:
        async with AsyncIteratorCombiner(*sources).race_stream() as channel:
            count = 0
            async for _ in channel:
                count += 1
                if count > stop_after:
                    break

    failed: list[ValueError] = []
    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    except ValueError as exc:
        failed.append(exc)
    if failed:
        assert fail
        assert "bad" in str(failed[0])
    for probe in sources:
        assert probe.max_outstanding <= 1
        assert probe.outstanding == 0
        assert probe.closed


def _check_bookkeeping(combiner: AsyncIteratorCombiner[Any]) -> None:
    """White-box: the slot states, the ready buffer, the idle set and the counters agree."""
    sources = combiner._sources
    slots = sources.slots
    states = [slot.state for slot in slots]
    assert sources.pulling == states.count(SlotState.PULLING)
    assert combiner.size == len(slots) - states.count(SlotState.DONE)
    assert set(sources.idle) == {s.index for s in slots if s.state is SlotState.IDLE}
    assert set(sources.ready) == {s.index for s in slots if s.state is SlotState.READY}
    for slot in slots:
        assert (slot.result is not None) == (slot.state is SlotState.READY)


_operations = st.sampled_from(
    [
        *("race", "race_discard", "race_final", "any", "all", "all_final"),
        *("race_stream", "rr_stream", "cancelled_race", "cancelled_any", "sleep"),
    ]
)


@given(
    per_source=st.lists(st.tuples(_delays, st.none() | st.integers(0, 3)), min_size=1, max_size=4),
    operations=st.lists(_operations, max_size=12),
)
def test_random_operations_keep_every_invariant(
    per_source: list[tuple[list[float], int | None]], operations: list[str]
) -> None:
    sources = [
        Probe(index, delays, error_at=error_at)
        for index, (delays, error_at) in enumerate(per_source)
    ]
    delivered: list[Any] = []

    def record(item: Any) -> None:
        if isinstance(item, tuple):
            delivered.append(item)

    async def operate(combiner: AsyncIteratorCombiner[Any], operation: str) -> None:
        if operation == "race":
            record(await combiner.race())
        elif operation == "race_discard":
            record(await combiner.race(discard_round=True))
        elif operation == "race_final":
            record(await combiner.race(yield_final_values=True))
        elif operation == "any":
            record(await combiner.any())
        elif operation in ("all", "all_final"):
            for item in await combiner.all(yield_final_values=operation == "all_final"):
                record(item)
        elif operation in ("race_stream", "rr_stream"):
            stream = (
                combiner.race_stream()
                if operation == "race_stream"
                else combiner.round_robin_stream()
            )
            async with stream as channel:
                for _ in range(2):
                    try:
                        record(await channel.receive())
                    except trio.EndOfChannel:
                        break
        elif operation == "cancelled_race":
            with trio.move_on_after(0.7):
                record(await combiner.race())
        elif operation == "cancelled_any":
            with trio.move_on_after(0.7):
                record(await combiner.any())
        else:
            await trio.sleep(1)

    async def main() -> None:
        combiner = AsyncIteratorCombiner(*sources)
        try:
            async with combiner:
                for operation in operations:
                    try:
                        with trio.fail_after(10_000):  # virtual: a lost wake-up fails, not hangs
                            await operate(combiner, operation)
                    except (ValueError, ExceptionGroup, trio.EndOfChannel):
                        pass
                    _check_bookkeeping(combiner)
                    assert all(probe.outstanding <= 1 for probe in sources)
        except (ValueError, ExceptionGroup):
            pass  # an error nobody received is raised at exit
        _check_bookkeeping(combiner)
        assert combiner.size == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(delivered) == len(set(delivered))  # never twice
    for index in range(len(sources)):
        positions = [n for source, n in delivered if source == index]
        assert positions == sorted(positions)
    for probe in sources:
        assert probe.max_outstanding <= 1
        assert probe.outstanding == 0
        assert probe.closed
        assert not probe.pulled_after_close
