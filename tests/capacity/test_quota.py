"""QuotaCapacitySource and its structured refilling timer (virtual time)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from sluiceway import CapacitySource, QuotaCapacitySource, ResourceCapacitySource
from tests.helpers import assert_idle


def test_release_does_not_restore_quota() -> None:
    quota = QuotaCapacitySource({"requests": 2})
    quota.acquire_nowait({"requests": 1})
    quota.release({"requests": 1})
    quota.acquire_nowait({"requests": 1})
    quota.release({"requests": 1})
    assert not quota.try_acquire({"requests": 1})
    assert quota.in_use == {}  # nothing is held...
    assert quota.statistics().consumed == {"requests": 2}  # ...but the window is used up
    quota.reset()
    assert quota.try_acquire({"requests": 1})


def test_increment_is_capped_and_reports_what_it_added() -> None:
    bucket = QuotaCapacitySource({"tokens": 10})
    for _ in range(10):
        bucket.acquire_nowait({"tokens": 1})
        bucket.release({"tokens": 1})
    assert bucket.increment({"tokens": 4}) == {"tokens": 4}
    assert bucket.available == {"tokens": 4}
    assert bucket.increment({"tokens": 100}) == {"tokens": 6}
    assert bucket.increment({"tokens": 1, "other": 5}) == {"tokens": 0}
    bucket.acquire_nowait({"tokens": 8})
    assert bucket.increment({"tokens": 5}, cap={"tokens": 4}) == {"tokens": 2}


async def test_periodic_reset_window(autojump_clock: object) -> None:
    quota = QuotaCapacitySource({"requests": 100})
    started: list[float] = []

    async def request() -> None:
        await quota.acquire({"requests": 1})
        started.append(trio.current_time())
        quota.release({"requests": 1})

    async with quota.refilling(60):
        assert quota.refilling_active
        async with trio.open_nursery() as nursery:
            for _ in range(250):
                nursery.start_soon(request)
    assert not quota.refilling_active
    windows = [sum(1 for t in started if lo <= t < lo + 60) for lo in (0, 60, 120)]
    assert windows == [100, 100, 50]
    assert max(started) == 120  # the third window's first tick; nothing waits for a fourth


async def test_token_bucket_refill_hands_off_to_waiters(autojump_clock: object) -> None:
    bucket = QuotaCapacitySource({"tokens": 4})
    times: list[float] = []

    async def take() -> None:
        await bucket.acquire({"tokens": 1})
        times.append(trio.current_time())

    async with bucket.refilling(1, amount={"tokens": 2}), trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(take)
    # A burst of 4, then 2 per second.
    assert sorted(times) == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]


async def test_one_timer_per_quota() -> None:
    quota = QuotaCapacitySource({"r": 1})
    async with quota.refilling(1):
        with pytest.raises(RuntimeError, match="already refilling"):
            async with quota.refilling(1):
                pass  # pragma: no cover
    with pytest.raises(ValueError, match="> 0"):
        async with quota.refilling(0):
            pass  # pragma: no cover


async def test_refilling_block_errors_surface_bare() -> None:
    quota = QuotaCapacitySource({"r": 1})
    with pytest.raises(KeyError):
        async with quota.refilling(1):
            raise KeyError("body")


async def test_concurrency_and_rate_combined(autojump_clock: object) -> None:
    # "At most 5 in flight and 20 per minute": a pool under a quota parent.
    per_minute = QuotaCapacitySource({"requests": 20})
    pool = ResourceCapacitySource({"requests": 5}, per_minute)
    in_flight = 0
    peak = 0
    started: list[float] = []

    async def call() -> None:
        nonlocal in_flight, peak
        async with pool.hold({"requests": 1}):
            in_flight += 1
            peak = max(peak, in_flight)
            started.append(trio.current_time())
            await trio.sleep(1)
            in_flight -= 1

    async with per_minute.refilling(60), trio.open_nursery() as nursery:
        for _ in range(45):
            nursery.start_soon(call)
    assert peak == 5
    assert sum(1 for t in started if t < 60) == 20
    assert sum(1 for t in started if 60 <= t < 120) == 20
    assert sum(1 for t in started if t >= 120) == 5
    assert_idle(pool)


def test_quota_as_a_child_returns_capacity_to_ordinary_parents() -> None:
    # The original leaked the parent's capacity here; releases still reach ordinary levels.
    pool = CapacitySource(3)
    quota = QuotaCapacitySource({"slots": 10}, pool)
    for _ in range(3):
        quota.acquire_nowait({"slots": 1})
    assert not quota.try_acquire({"slots": 1})  # the pool is full
    quota.release({"slots": 3})
    assert pool.borrowed_tokens == 0
    assert quota.try_acquire({"slots": 1})  # the pool is free again; the quota still counts
    assert quota.statistics().consumed == {"slots": 4}
