"""PrioritySource: capped aging, FIFO among equals, peek/take agreement (virtual time)."""

from __future__ import annotations

import math

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from sluiceway import NOTHING, PrioritySource


async def test_worked_aging_numbers(autojump_clock: object) -> None:
    # The original's example: base 10, 0.005 per ms (5 per s), cap 45.
    source: PrioritySource[str] = PrioritySource(aging_rate=5, max_age_boost=45)
    source.enqueue("free", 10)
    for at, expected in [(2, 20), (6, 40), (8, 50), (9, 55), (30, 55)]:
        await trio.sleep_until(at)
        assert source.peek_priority() == pytest.approx(expected)
        assert source.effective_priority(10, at) == pytest.approx(expected)


async def test_aged_item_ties_a_fresh_one_and_wins_by_fifo(autojump_clock: object) -> None:
    source: PrioritySource[str] = PrioritySource(aging_rate=5, max_age_boost=45)
    source.enqueue("free", 10)
    await trio.sleep_until(8)
    source.enqueue("standard", 50)  # 50 == the free item's 10 + 40 boost
    assert source.take() == "free"
    assert source.take() == "standard"


async def test_premium_always_beats_a_capped_item(autojump_clock: object) -> None:
    source: PrioritySource[str] = PrioritySource(aging_rate=5, max_age_boost=45)
    source.enqueue("free", 10)
    await trio.sleep(1000)
    source.enqueue("premium", 100)
    assert source.peek() == "premium"


async def test_small_rates(autojump_clock: object) -> None:
    source: PrioritySource[str] = PrioritySource(aging_rate=10, max_age_boost=5)
    source.enqueue("x", 1)
    await trio.sleep(0.5)
    assert source.peek_priority() == pytest.approx(6)
    slow: PrioritySource[str] = PrioritySource(aging_rate=1)
    slow.enqueue("y", 0)
    await trio.sleep(2)
    assert slow.peek_priority() == pytest.approx(2)


async def test_fifo_among_equals_and_highest_first() -> None:
    source: PrioritySource[str] = PrioritySource()
    for name, priority in [("a", 1), ("b", 5), ("c", 1), ("d", 5), ("e", 3)]:
        source.enqueue(name, priority)
    source.close_input()
    assert [item async for item in source] == ["b", "d", "e", "a", "c"]


async def test_take_returns_exactly_the_peeked_item(autojump_clock: object) -> None:
    source: PrioritySource[str] = PrioritySource(aging_rate=1)
    source.enqueue("old", 0)
    await trio.sleep(10)
    source.enqueue("new", 10)  # ties at 10: old first by FIFO
    assert source.peek() == "old"
    await trio.sleep(1)  # time moves between peek and take: the peeked item is still taken
    assert source.take() == "old"
    assert source.take() == "new"
    assert source.peek() is NOTHING


async def test_close_input_and_bad_input() -> None:
    source: PrioritySource[int] = PrioritySource()
    source.close_input()
    assert source.closed
    assert source.exhausted
    with pytest.raises(trio.ClosedResourceError):
        source.enqueue(1, 0)
    with pytest.raises(TypeError):
        PrioritySource().enqueue(1, "high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        PrioritySource().enqueue(1, math.nan)
    with pytest.raises(ValueError, match="aging_rate"):
        PrioritySource(aging_rate=-1)
    with pytest.raises(ValueError, match="max_age_boost"):
        PrioritySource(max_age_boost=-1)
    with pytest.raises(TypeError):
        PrioritySource(aging_rate="fast")  # type: ignore[arg-type]


async def test_waits_for_items_until_closed(autojump_clock: object) -> None:
    source: PrioritySource[str] = PrioritySource()
    got: list[str] = []

    async def consume() -> None:
        async for item in source:
            got.append(item)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.sleep(1)
        source.enqueue("x", 1)
        await trio.sleep(1)
        source.close_input()
    assert got == ["x"]


@given(
    st.lists(
        st.tuples(st.integers(0, 20), st.integers(0, 30), st.integers(0, 50)),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([0.0, 0.5, 2.0]),
    st.sampled_from([math.inf, 5.0, 20.0]),
    st.integers(0, 60),
)
def test_matches_a_brute_force_scan(
    items: list[tuple[int, int, int]], rate: float, cap: float, read_at: int
) -> None:
    """The two-heap structure serves exactly what a full rescan would serve."""

    async def main() -> None:
        source: PrioritySource[int] = PrioritySource(aging_rate=rate, max_age_boost=cap)
        entries = []
        for number, (at, priority, _) in enumerate(sorted(items, key=lambda item: item[0])):
            await trio.sleep_until(at)
            source.enqueue(number, priority)
            entries.append((number, at, priority))
        await trio.sleep_until(max(read_at, trio.current_time()))
        now = trio.current_time()
        remaining = list(entries)
        while remaining:
            expected = max(
                remaining,
                key=lambda entry: (
                    entry[2] + min(rate * (now - entry[1]), cap),
                    -entry[0],
                ),
            )
            assert source.take() == expected[0]
            remaining.remove(expected)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_items_enqueued_before_the_run_age_from_its_start() -> None:
    source: PrioritySource[str] = PrioritySource(aging_rate=1)
    source.enqueue("early-low", 0)  # outside any trio run
    source.enqueue("early-high", 5)

    async def main() -> list[str]:
        await trio.sleep(10)
        source.enqueue("late", 5)  # early items age from the first use (t=10), like this one
        assert len(source) == 3
        order = [source.take(), source.take(), source.take()]
        assert len(source) == 0
        return order

    order = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # At t=10 (first use) early-high is 5 + 0 = 5 and late is 5 + 0: a tie, FIFO keeps
    # early-high first; early-low is 0.
    assert order == ["early-high", "late", "early-low"]
