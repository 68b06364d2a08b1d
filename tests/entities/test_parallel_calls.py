"""``ctx.parallel_calls``: its source knows its end without holding capacity, creates the
children in the items' order, and reports bad items after the tasks before them. On virtual
time, so every timestamp is exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    CapacitySource,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    RunContext,
    RunnableEntity,
)
from tests.entities.virtual import BASE, now, virtual_runtime

#: The capacity every fan-out of a test shares (one slot: the fan-outs take turns).
SHARED: dict[str, CapacitySource] = {}


class Piece(RunnableEntity):
    """Takes ``data["seconds"]`` (a plain sleep: it holds its slot)."""

    async def run_impl(self, ctx: RunContext) -> Any:
        await trio.sleep(self.data["seconds"])
        return {"name": ctx.name, "end": now() - BASE}


class FanOut(RunnableEntity, allowed_connections={"Calls": [Piece]}):
    """Runs ``data["pieces"]`` pieces under the shared capacity; returns when its stream of
    envelopes ended, and what it got."""

    async def run_impl(self, ctx: RunContext) -> Any:
        items = [(f"piece-{n}", {"seconds": s}) for n, s in enumerate(self.data["pieces"])]
        runner = HierarchicalTaskPoolRunner(
            "pieces", ctx.parallel_calls(Piece, items), CapacitySource(1, SHARED["slots"])
        )
        got, errors = [], []
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                if envelope.kind is EnvelopeKind.FINAL:
                    got.append(envelope.value)
                elif envelope.kind is EnvelopeKind.ERROR:
                    errors.append(str(envelope.error))
        return {"ended": now() - BASE, "got": got, "errors": errors}


async def test_a_fan_out_ends_when_its_last_task_ends_however_busy_the_capacity(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Three fan-outs take turns on one slot. Each one's stream ends the moment its last piece
    ends, not after one more turn of the others just to learn that its source had nothing
    left (a lazy source is only advanced holding a unit)."""
    SHARED["slots"] = CapacitySource(1)
    async with virtual_runtime(tmp_path / "s.db", [FanOut, Piece]) as runtime:
        ids = []
        for name, pieces in (("a", [0.5, 0.5]), ("b", [0.5] * 4), ("c", [0.5] * 4)):
            record = await runtime.create(FanOut, {"pieces": pieces}, name=name)
            await runtime.start(record.id)
            ids.append(record.id)
            await trio.testing.wait_all_tasks_blocked()
        results = [await runtime.wait(i) for i in ids]
    ends = sorted(piece["end"] for result in results for piece in result["got"])
    assert ends == [0.5 * n for n in range(1, 11)]  # the slot never idled
    for result in results:
        assert result["ended"] == max(piece["end"] for piece in result["got"])
    assert results[0]["ended"] < 5.0  # A finished while B and C still had pieces to run


async def test_children_are_created_in_the_items_order_and_a_bad_item_ends_the_source(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    SHARED["slots"] = CapacitySource(10)

    class Duplicates(RunnableEntity, allowed_connections={"Calls": [Piece]}):
        async def run_impl(self, ctx: RunContext) -> Any:
            items = [("x", {"seconds": 1}), ("y", {"seconds": 0}), ("x", {"seconds": 0})]
            runner = HierarchicalTaskPoolRunner(
                "pieces", ctx.parallel_calls(Piece, items), CapacitySource(5)
            )
            got = []
            with pytest.raises(ValueError, match="got the name 'x' twice"):
                async with runner.run_tasks() as envelopes:
                    async for envelope in envelopes:
                        got.append(envelope.value["name"])
            return got

    types = [FanOut, Piece, Duplicates]
    async with virtual_runtime(tmp_path / "s.db", types) as runtime:
        fan = await runtime.create(FanOut, {"pieces": [0.3, 0.1, 0.2] * 10}, name="fan")
        result = await runtime.run(fan.id)
        assert sorted(p["name"] for p in result["got"]) == sorted(f"piece-{n}" for n in range(30))
        children = await runtime.children(fan.id)
        assert [child.name for child in children] == [f"piece-{n}" for n in range(30)]
        dup = await runtime.create(Duplicates, {}, name="dup")
        assert sorted(await runtime.run(dup.id)) == ["x", "y"]  # the tasks before the bad item
