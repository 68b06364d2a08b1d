"""Parking at scale, on virtual time: a parent of a thousand children that each wait for a
message parks, and the messages (some sent while no runtime runs) complete every child once
and the parent once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

from sluiceway import (
    CapacitySource,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    RunContext,
    RunnableEntity,
    WaitableEntity,
)
from tests.entities.virtual import virtual_runtime
from tests.entities.workflows import EXECUTIONS, executed
from tests.helpers import eventually

CHILDREN = 1000


class Enrollment(WaitableEntity):
    async def run_impl(self, ctx: RunContext) -> Any:
        executed(self.name)
        message = await ctx.wait_for_message("confirm?")
        return message.data["n"]


class Drip(RunnableEntity, allowed_connections={"Calls": [Enrollment]}):
    async def run_impl(self, ctx: RunContext) -> Any:
        executed(self.name)
        items = [(f"e{n:04}", {}) for n in range(self.data["count"])]
        runner = HierarchicalTaskPoolRunner(
            "enroll", ctx.parallel_calls(Enrollment, items), CapacitySource(10)
        )
        total = finished = 0
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                assert envelope.kind is EnvelopeKind.FINAL
                total += envelope.value
                finished += 1
                if not finished % 100:
                    await ctx.status("RUNNING", f"{finished} confirmed")
        return {"finished": finished, "total": total}


TYPES = [Drip, Enrollment]


async def test_a_thousand_waiting_children_park_their_parent_and_each_completes_once(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, TYPES, park_after=0) as runtime:
        tasks_idle = trio.lowlevel.current_statistics().tasks_living
        drip = await runtime.create(Drip, {"count": CHILDREN}, name="drip")
        await runtime.start(drip.id)

        async def parked() -> bool:
            return bool((await runtime.get(drip.id)).parked)

        await eventually(parked)
        assert trio.lowlevel.current_statistics().tasks_living == tasks_idle
        kids = {kid.name: kid.id for kid in await runtime.children(drip.id)}
        assert len(kids) == CHILDREN
        for n in range(300):  # answered over time, while this runtime runs
            await trio.sleep(1)
            await runtime.send_message(kids[f"e{n:04}"], "ok", {"n": n})
    async with virtual_runtime(db, TYPES, work=False) as runtime:
        for n in range(300, 700):  # no runtime runs anything meanwhile
            await runtime.send_message(kids[f"e{n:04}"], "ok", {"n": n})
        assert (await runtime.get(drip.id)).parked
    async with virtual_runtime(db, TYPES, park_after=0) as runtime:
        for n in range(700, CHILDREN):
            await runtime.send_message(kids[f"e{n:04}"], "ok", {"n": n})
        result = await runtime.wait(drip.id)
        children = await runtime.children(drip.id)
        envelopes = await runtime.envelopes(drip.id)
    assert result == {"finished": CHILDREN, "total": sum(range(CHILDREN))}
    assert {kid.status.value for kid in children} == {"COMPLETED"}
    assert all(EXECUTIONS[name] == 2 for name in kids)  # parked once, woken once
    assert EXECUTIONS["drip"] == 2  # parked once, woken once: by the last answer
    completed = [e.entity_name for e in envelopes if e.status == "COMPLETED"]
    assert sorted(completed) == sorted([*kids, "drip"])  # each once
    progress = [e.message for e in envelopes if e.entity_name == "drip" and e.status == "RUNNING"]
    assert progress == [f"{n} confirmed" for n in range(100, CHILDREN + 1, 100)]
