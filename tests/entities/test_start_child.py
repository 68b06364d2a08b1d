"""Children started to run on their own (``ctx.start_child``), a parent that waits for their
end (``ctx.wait_for_children``), and entities created already submitted
(``runtime.create(start=True)``). On virtual time."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    DataEntity,
    EntityNotRunnableError,
    EntityStatus,
    RunContext,
    RunnableEntity,
)
from tests.entities.virtual import BASE, now, virtual_runtime
from tests.entities.workflows import EXECUTIONS, executed
from tests.helpers import eventually

#: The unit of the tests' sleeps (short in virtual time: the runtime's heartbeat ticks every
#: few virtual seconds, and each tick costs real time).
HOUR = 3600.0


class Napper(RunnableEntity):
    """Sleeps ``data["hours"]`` durably and says when it woke."""

    async def run_impl(self, ctx: RunContext) -> Any:
        executed(self.name)
        await ctx.sleep(self.data["hours"] * HOUR)
        return {"woke": (now() - BASE) / HOUR}


class Record(DataEntity):
    """Data only."""


class Starter(RunnableEntity, allowed_connections={"Calls": [Napper, Record]}):
    """Starts ``data["count"]`` nappers (child i sleeps i + 1 hours), waits for them all, and
    returns what they returned."""

    async def run_impl(self, ctx: RunContext) -> Any:
        executed(self.name)
        created = 0
        async with trio.open_nursery() as nursery:

            async def start(i: int) -> None:
                nonlocal created
                _, new = await ctx.start_child(Napper, f"napper-{i}", {"hours": i + 1})
                created += new

            for i in range(self.data["count"]):
                nursery.start_soon(start, i)
        await ctx.status("RUNNING", f"started {created}")
        await ctx.wait_for_children()
        children = await ctx.runtime.store.children(ctx.id)
        return {
            "woke": sorted(child.result["woke"] for child in children),
            "at": (now() - BASE) / HOUR,
        }


class DataStarter(RunnableEntity, allowed_connections={"Calls": [Record]}):
    async def run_impl(self, ctx: RunContext) -> Any:
        await ctx.start_child(Record, "record")


TYPES: list[type[RunnableEntity]] = [Napper, Record, Starter, DataStarter]


async def test_started_children_run_on_their_own_and_the_parent_parks_until_the_last_ends(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, TYPES) as runtime:
        starter = await runtime.create(Starter, {"count": 20}, name="starter")
        await runtime.start(starter.id)
        # The parent parks on its children, which park on their timers.
        await eventually(
            lambda: _parked_on(runtime, starter.id, "children"),
        )
        children = await runtime.children(starter.id)
        assert len(children) == 20
        assert {child.parked_on for child in children} == {"timer"}
        assert await runtime.store.pending_children(starter.id) == 20
        result = await runtime.wait(starter.id)
        assert result == {"woke": [float(i + 1) for i in range(20)], "at": 20.0}
        assert await runtime.store.pending_children(starter.id) == 0
        envelopes = await runtime.envelopes(starter.id, subtree=False)
    # Each napper ran twice (its park, its wake); the starter once per wake-up it needed:
    # its first run, and once after the last child ended (the others ended while it was
    # not yet parked or left it parked on the ones still pending).
    assert all(EXECUTIONS[f"napper-{i}"] == 2 for i in range(20))
    assert EXECUTIONS["starter"] == 2
    assert [e.message for e in envelopes if e.status == "RUNNING"] == ["started 20"]


async def _parked_on(runtime: Any, entity_id: str, reason: str) -> bool:
    return bool((await runtime.get(entity_id)).parked_on == reason)


async def test_a_rerun_finds_the_started_children_and_starts_none_again(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, TYPES, work=False) as runtime:
        starter = await runtime.create(Starter, {"count": 5}, name="starter")
        # Without a claim loop nothing parks and nothing runs the children: stop the run
        # while it waits for them (a crash), then let a runtime with a claim loop resume it.
        with trio.move_on_after(1):
            await runtime.run(starter.id)
        children = await runtime.children(starter.id)
        assert [c.status for c in children] == [EntityStatus.PENDING] * 5
        assert all(c.runnable_at == BASE for c in children)  # submitted when created
    async with virtual_runtime(db, TYPES) as runtime:
        result = await runtime.wait(starter.id)
        # They ran from when the second runtime started, a second after they were submitted.
        assert result["woke"] == [i + 1 + 1 / HOUR for i in range(5)]
        assert len(await runtime.children(starter.id)) == 5
        envelopes = await runtime.envelopes(starter.id, subtree=False)
    assert [e.message for e in envelopes if e.status == "RUNNING"] == ["started 5"]
    assert all(EXECUTIONS[f"napper-{i}"] == 2 for i in range(5))


async def test_without_parking_the_parent_polls_for_its_children(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, TYPES, park_after=math.inf, poll_interval=60) as runtime:
        starter = await runtime.create(Starter, {"count": 3}, name="starter")
        result = await runtime.run(starter.id)
        assert result["woke"] == [1.0, 2.0, 3.0]
        # It noticed the last end within a poll interval.
        assert 3.0 <= result["at"] <= 3.0 + 60 / HOUR
        assert EXECUTIONS["starter"] == 1


async def test_wait_for_children_with_no_child_returns_at_once(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, TYPES) as runtime:
        starter = await runtime.create(Starter, {"count": 0}, name="starter")
        assert await runtime.run(starter.id) == {"woke": [], "at": 0.0}


async def test_a_data_entity_is_not_started(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, TYPES) as runtime:
        parent = await runtime.create(DataStarter, name="parent")
        with pytest.raises(Exception, match="DataEntity") as failed:
            await runtime.run(parent.id)
        assert "EntityNotRunnableError" in repr(failed.value) or isinstance(
            failed.value.__cause__, EntityNotRunnableError
        )
        with pytest.raises(EntityNotRunnableError):
            await runtime.create(Record, name="r", start=True)


async def test_create_with_start_submits_in_the_same_write(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, TYPES) as runtime:
        napper = await runtime.create(Napper, {"hours": 1}, name="napper", start=True)
        assert napper.runnable_at == BASE
        assert await runtime.wait(napper.id) == {"woke": 1.0}
        # exist_ok returns the existing entity as it is: nothing is submitted again.
        again = await runtime.create(Napper, {"hours": 9}, name="napper", exist_ok=True, start=True)
        assert again.id == napper.id
        assert again.status is EntityStatus.COMPLETED
        assert again.runnable_at is None
        assert EXECUTIONS["napper"] == 2
