"""Runtime.stream_batches: the same envelopes as stream(), handed over in lists."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from sluiceway import EntityNotFoundError, open_runtime
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
