"""ReadCache: one computation shared by the requests of its time-to-live; failures and
cancellations are never shared."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from sluiceway.server._cache import MAX_ENTRIES, ReadCache


async def test_one_computation_serves_the_requests_of_its_ttl(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = ReadCache(ttl=0.5)
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await trio.sleep(0.1)
        return calls

    got: list[int] = []

    async def ask() -> None:
        got.append(await cache.get("k", compute))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(ask)
    assert got == [1] * 10  # nine waited for the one under way
    await trio.sleep(0.3)
    assert await cache.get("k", compute) == 1  # 0.4 s old: still fresh
    await trio.sleep(0.2)
    assert await cache.get("k", compute) == 2  # stale: computed again
    cache.clear()
    assert await cache.get("k", compute) == 3
    assert (cache.computed, cache.shared) == (3, 10)


async def test_a_failure_is_not_shared(autojump_clock: trio.testing.MockClock) -> None:
    cache = ReadCache(ttl=10)
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        await trio.sleep(0.1)
        if attempts == 1:
            raise OSError("the store is away")
        return "fine"

    results: list[object] = []

    async def ask() -> None:
        try:
            results.append(await cache.get("k", flaky))
        except OSError as error:
            results.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.sleep(0.01)
        nursery.start_soon(ask)  # waits for the first, which fails: it asks again
    assert isinstance(results[0], OSError)
    assert results[1] == "fine"
    assert attempts == 2


async def test_the_number_of_answers_kept_is_bounded() -> None:
    cache = ReadCache(ttl=10)

    async def value() -> int:
        await trio.lowlevel.checkpoint()
        return 1

    for key in range(MAX_ENTRIES + 10):
        await cache.get(key, value)
    assert len(cache._entries) == MAX_ENTRIES
    with pytest.raises(ZeroDivisionError):
        await cache.get("boom", _divide)


async def _divide() -> int:
    await trio.lowlevel.checkpoint()
    return 1 // 0


async def test_a_slow_answer_is_shared_by_all_who_waited_for_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An answer that takes longer than the time-to-live is still shared by the requests
    that came while it was computed (they do not each compute it again)."""
    cache = ReadCache(ttl=0.5)
    calls = 0

    async def slow() -> int:
        nonlocal calls
        calls += 1
        await trio.sleep(0.8)
        return calls

    got: list[int] = []

    async def ask() -> None:
        got.append(await cache.get("tree", slow))

    async with trio.open_nursery() as nursery:
        for _ in range(30):
            nursery.start_soon(ask)
    assert (got, calls) == ([1] * 30, 1)
    assert await cache.get("tree", slow) == 1  # fresh: its age counts from when it was known
