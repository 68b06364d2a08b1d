"""Runtime.stream_batches: the same envelopes as stream(), handed over in lists."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    EntityEnvelope,
    EntityNotFoundError,
    RunContext,
    RunnableEntity,
    Runtime,
    open_runtime,
)
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


async def run_followed(
    runtime: Runtime, entity_id: str, *, pace: float
) -> list[tuple[float, list[EntityEnvelope]]]:
    """Run the entity while a paced stream follows it: when each list came, and what it held."""
    arrivals: list[tuple[float, list[EntityEnvelope]]] = []

    async def follow() -> None:
        async with runtime.stream_batches(entity_id, pace=pace) as stream:
            async for batch in stream:
                arrivals.append((trio.current_time(), batch))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await runtime.run(entity_id)
    return arrivals


async def test_a_paced_stream_comes_at_most_once_per_pace(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, [*ALL_TYPES, Dripper]) as runtime:
        drip = await runtime.create(Dripper, {"count": 200, "every": 0.01})
        arrivals = [
            (at, [e.seq for e in batch])
            for at, batch in await run_followed(runtime, drip.id, pace=0.25)
        ]
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


async def test_a_paced_stream_delivers_at_once_after_a_quiet_pace(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The pace bounds how often lists come, not how late: an envelope stored after a quiet
    while (a prompt a person waits to see) comes at once, not at the next beat."""
    async with virtual_runtime(db, [*ALL_TYPES, Dripper]) as runtime:
        drip = await runtime.create(Dripper, {"count": 3, "every": 2.5})
        arrivals = await run_followed(runtime, drip.id, pace=1.0)
        stored_at = {e.message: at for at, batch in arrivals for e in batch}
        for number, at in enumerate([2.5, 5.0, 7.5]):
            assert stored_at[str(number)] - at < 0.1, arrivals  # the beats: 3, 5 and 8


async def test_a_paced_stream_of_an_ended_run_ends_at_once(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Following a run that has ended: its envelopes, then the end, without waiting a pace."""
    async with virtual_runtime(db, [*ALL_TYPES, Dripper]) as runtime:
        drip = await runtime.create(Dripper, {"count": 700, "every": 0.0})
        await runtime.run(drip.id)
        stored = [e.seq for e in await runtime.envelopes(drip.id)]
        for pace in (0.5, 60.0):
            start = trio.current_time()
            async with runtime.stream_batches(drip.id, pace=pace) as stream:
                seen = [e.seq async for batch in stream for e in batch]
            assert seen == stored  # (a replay in pages, then the window)
            assert trio.current_time() - start < 0.5


class StepLimit(trio.abc.Instrument):
    """Cancels ``scope`` after ``limit`` task steps: a loop that never blocks (which virtual
    time cannot stop) fails the test."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.steps = 0
        self.scope = trio.CancelScope()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        if self.steps > self.limit:
            self.scope.cancel()


async def test_paced_streams_read_the_store_once_a_beat_for_all_of_them(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Three paced streams of a run that stores an envelope every 0.5 s while another run
    stores one every 0.05 s: the shared tail is read at the streams' beats, once for the
    three, and a beat that found nothing new waits for the next one rather than reading
    again at once (the store changes all the time, but not under the run followed)."""
    async with virtual_runtime(db, [*ALL_TYPES, Dripper]) as runtime:
        drip = await runtime.create(Dripper, {"count": 4, "every": 0.5})
        busy = await runtime.create(Dripper, {"count": 40, "every": 0.05})
        reads: list[float] = []
        read_tail = runtime.store.read_tail

        async def counted(*args: Any, **kwargs: Any) -> Any:
            reads.append(trio.current_time())
            assert len(reads) < 200, "the streams read the store over and over"
            return await read_tail(*args, **kwargs)

        runtime.store.read_tail = counted  # type: ignore[method-assign]
        seen: list[list[int]] = [[], [], []]

        async def follow(into: list[int]) -> None:
            async with runtime.stream_batches(drip.id, pace=0.25) as stream:
                async for batch in stream:
                    into.extend(e.seq for e in batch)

        steps = StepLimit(5_000)  # a stream spinning on its beat fails, not hangs
        trio.lowlevel.add_instrument(steps)
        try:
            with steps.scope:
                async with trio.open_nursery() as nursery:
                    for into in seen:
                        nursery.start_soon(follow, into)
                    nursery.start_soon(runtime.run, busy.id)
                    await runtime.run(drip.id)
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert not steps.scope.cancelled_caught, f"{steps.steps} task steps: a stream spun"
        stored = [e.seq for e in await runtime.envelopes(drip.id)]
        assert seen == [stored, stored, stored]
        # 2 s of the run: a few reads before the first list, then one a beat (0.25 s)
        assert len(reads) <= 16, reads
