"""Runtime.stream_batches: the same envelopes as stream(), handed over in lists."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import EntityNotFoundError, RunContext, RunnableEntity, open_runtime
from tests.entities.virtual import virtual_runtime
from tests.entities.workflows import ALL_TYPES, FanOut


async def test_batches_hold_the_streams_envelopes_in_order(db: Path) -> None:
    async with open_runtime(db, ALL_TYPES, poll_interval=0.01) as runtime:
        first = await runtime.create(FanOut, {"count": 30, "per_parent": 4})
        await runtime.run(first.id)  # stored: a replay comes in pages
        second = await runtime.create(FanOut, {"count": 30, "per_parent": 4})
        batches: list[list[int]] = []

        async def follow_live() -> None:
            async with runtime.stream_batches(second.id) as stream:
                async for batch in stream:
                    batches.append([envelope.seq for envelope in batch])

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow_live)
                await trio.sleep(0.05)  # (only lets the follower start; nothing is timed)
                await runtime.run(second.id)
            async with runtime.stream_batches(first.id, after_seq=3) as stream:
                replayed = [batch async for batch in stream]

        live = [seq for batch in batches for seq in batch]
        assert live == [e.seq for e in await runtime.envelopes(second.id)]
        assert all(batches)  # never an empty list
        assert len(batches) < len(live)  # several at a time
        stored = [e for e in await runtime.envelopes(first.id) if e.seq > 3]
        assert [e for batch in replayed for e in batch] == stored
        assert len(replayed) < len(stored)

        with pytest.raises(EntityNotFoundError):
            async with runtime.stream_batches("nope"):
                pass
        with pytest.raises(ValueError, match="after_seq"):
            async with runtime.stream_batches(first.id, after_seq=-1):
                pass


class Dripper(RunnableEntity):
    """Emits ``data["count"]`` envelopes, one every ``data["every"]`` seconds."""

    async def run_impl(self, ctx: RunContext) -> Any:
        for i in range(self.data["count"]):
            await trio.sleep(self.data["every"])
            await ctx.emit("INTERNAL_UPDATE", message=str(i))
        return self.data["count"]


async def test_a_paced_stream_comes_at_most_once_per_pace(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, [*ALL_TYPES, Dripper]) as runtime:
        drip = await runtime.create(Dripper, {"count": 200, "every": 0.01})
        arrivals: list[tuple[float, list[int]]] = []

        async def follow() -> None:
            async with runtime.stream_batches(drip.id, pace=0.25) as stream:
                async for batch in stream:
                    arrivals.append((trio.current_time(), [e.seq for e in batch]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await runtime.run(drip.id)
        # every envelope once, in order, in few lists: 2 s of drips, a list every 0.25 s
        assert [seq for _, batch in arrivals for seq in batch] == [
            e.seq for e in await runtime.envelopes(drip.id)
        ]
        assert len(arrivals) <= 2.0 / 0.25 + 3
        times = [at for at, _ in arrivals]
        assert all(later - earlier >= 0.25 for earlier, later in itertools.pairwise(times)), times

        for pace in (-1.0, math.nan, math.inf):
            with pytest.raises(ValueError, match="pace"):
                async with runtime.stream_batches(drip.id, pace=pace):
                    pass
