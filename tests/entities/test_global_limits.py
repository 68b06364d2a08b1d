"""Global limits inside one store: several runtimes (standing in for processes) share the
units; in each, the limit is the root of an in-process capacity tree. The processes on
PostgreSQL are in tests/scaleout/."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from sluiceway import CapacitySource, SqliteStore
from tests.entities.virtual import virtual_runtime


class Peak:
    """Counts tasks inside a region, and the most at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.done = 0

    async def work(self, limit: CapacitySource, seconds: float) -> None:
        async with limit:
            self.now += 1
            self.peak = max(self.peak, self.now)
            await trio.sleep(seconds)
            self.now -= 1
            self.done += 1


async def test_runtimes_sharing_a_store_never_exceed_the_total(
    db: Path, autojump_clock: trio.abc.Clock
) -> None:
    peak = Peak()
    async with (
        virtual_runtime(db, [], poll_interval=0.05) as first,
        virtual_runtime(db, [], poll_interval=0.05) as second,
        first.global_limit("gpu", 3) as first_limit,
        second.global_limit("gpu", 3) as second_limit,
        trio.open_nursery() as nursery,
    ):
        # In each process, the global limit is the root of a local tree: 5 per process.
        for limit in (first_limit, second_limit):
            local = CapacitySource(5, parent=limit)
            for _ in range(20):
                nursery.start_soon(peak.work, local, 0.2)
    assert peak.done == 40
    assert peak.peak == 3
    async with SqliteStore(db) as store:
        assert await store.unit_holders("gpu", now=0.0) == {}


async def test_units_move_to_the_process_that_needs_them(
    db: Path, autojump_clock: trio.abc.Clock
) -> None:
    peak = Peak()
    async with (
        virtual_runtime(db, [], poll_interval=0.05) as busy,
        virtual_runtime(db, [], poll_interval=0.05) as idle,
        busy.global_limit("gpu", 4, linger=0.1) as busy_limit,
        idle.global_limit("gpu", 4, linger=0.1) as idle_limit,
    ):
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(peak.work, idle_limit, 0.5)
        await trio.sleep(0.5)  # past the linger: the idle one gave its units back
        assert idle_limit.total_tokens == 0
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(peak.work, busy_limit, 0.5)
        # All four units went to the busy one: two rounds of four, not eight rounds of one.
        assert trio.current_time() - started < 1.5
    assert peak.peak == 4
    assert peak.done == 16


async def test_leaving_the_block_gives_every_unit_back(
    db: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with virtual_runtime(db, [], poll_interval=0.05) as runtime:
        async with runtime.global_limit("gpu", 2, linger=3600.0) as limit:
            async with limit:
                await trio.sleep(0.1)
            assert limit.total_tokens >= 1  # lingering: kept for the next task
            assert await runtime.store.unit_holders("gpu", now=runtime.clock()) == {
                runtime.owner: limit.total_tokens
            }
        assert await runtime.store.unit_holders("gpu", now=runtime.clock()) == {}


@pytest.mark.parametrize(
    ("name", "total", "linger"), [("", 1, 0.0), ("gpu", 0, 0.0), ("gpu", 2, -1.0)]
)
async def test_bad_limits_are_refused(
    db: Path, autojump_clock: trio.abc.Clock, name: str, total: int, linger: float
) -> None:
    async with virtual_runtime(db, []) as runtime:
        with pytest.raises((TypeError, ValueError)):
            async with runtime.global_limit(name, total, linger=linger):
                pass
