"""Spread fan-outs (``parallel_calls(..., spread=True)``): children run by every runtime that
shares the store, the parent waiting for them (or parking), on virtual time. Several
runtimes on one store stand in for processes; tests/scaleout/ has the real processes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import trio

from sluiceway import (
    CapacitySource,
    EntityStatus,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    RunContext,
    RunnableEntity,
)
from tests.entities.virtual import virtual_runtime

#: Which runtime ran each child (owner -> count), and how often each child ran.
RAN_BY: Counter[str] = Counter()
RUNS: Counter[str] = Counter()


class Piece(RunnableEntity):
    """Works ``data["seconds"]``, then returns its number doubled; fails if asked to."""

    async def run_impl(self, ctx: RunContext) -> Any:
        RAN_BY[ctx.runtime.owner] += 1
        RUNS[self.name] += 1
        await trio.sleep(self.data.get("seconds", 1.0))
        if self.data.get("fail"):
            raise RuntimeError("failed on purpose")
        return self.data["n"] * 2


class Spread(RunnableEntity, allowed_connections={"Calls": ["Piece"]}):
    """Spreads ``data["count"]`` pieces over the cluster, ``data["in_flight"]`` at a time."""

    async def run_impl(self, ctx: RunContext) -> Any:
        count = self.data["count"]
        items = [
            (
                f"piece-{n}",
                {
                    "n": n,
                    "fail": n in self.data.get("fail", []),
                    "seconds": self.data.get("seconds", 1.0),
                },
            )
            for n in range(count)
        ]
        runner = HierarchicalTaskPoolRunner(
            "pieces",
            ctx.parallel_calls(Piece, items, spread=True),
            CapacitySource(self.data.get("in_flight", count)),
        )
        total, failed = 0, 0
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                if envelope.kind is EnvelopeKind.FINAL:
                    total += envelope.value
                elif envelope.kind is EnvelopeKind.ERROR:
                    failed += 1
        return {"total": total, "failed": failed}


def reset() -> None:
    RAN_BY.clear()
    RUNS.clear()


async def test_children_run_in_every_runtime_and_the_parent_gathers_them(
    db: Path, autojump_clock: trio.abc.Clock
) -> None:
    reset()
    async with (
        virtual_runtime(db, [Spread, Piece], poll_interval=0.1, max_runs=4) as first,
        virtual_runtime(db, [Piece], poll_interval=0.1, max_runs=4) as second,
    ):
        root = await first.create(Spread, {"count": 12, "fail": [3]}, name="spread")
        await first.start(root.id)
        result = await first.wait(root.id)
    assert result == {"total": 2 * sum(range(12)) - 6, "failed": 1}
    assert sum(RAN_BY.values()) == 12
    assert RAN_BY[second.owner] >= 4  # the second runtime took its share
    assert set(RUNS.values()) == {1}  # each piece ran once


async def test_a_parent_waiting_long_parks_and_the_last_child_wakes_it(
    db: Path, autojump_clock: trio.abc.Clock
) -> None:
    reset()
    async with (
        virtual_runtime(db, [Spread, Piece], poll_interval=0.5, park_after=2.0) as first,
        virtual_runtime(db, [Piece], poll_interval=0.5, max_runs=1),
    ):
        # The pieces take 5 s each: the parent waits longer than park_after and parks.
        root = await first.create(Spread, {"count": 6, "seconds": 5.0}, name="spread")
        await first.start(root.id)
        result = await first.wait(root.id)
        record = await first.store.get_entity(root.id)
    assert result == {"total": 2 * sum(range(6)), "failed": 0}
    assert record.status is EntityStatus.COMPLETED
    assert record.attempt >= 2  # it parked, and was run again when the pieces were done
    assert set(RUNS.values()) == {1}
