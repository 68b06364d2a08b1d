"""Parked waits: a long durable wait ends the run and gives everything back; the store wakes
the entity and it replays to where it was. On virtual time, so days pass in moments and every
timestamp is exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    CapacitySource,
    EntityCancelledError,
    EntityStatus,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    RunContext,
    RunnableEntity,
    WaitableEntity,
    WaitTimeoutError,
)
from tests.entities.virtual import BASE, DAY, now, virtual_runtime
from tests.entities.workflows import EXECUTIONS, executed
from tests.helpers import eventually

#: The capacity each ``Gatherer`` gives its children (shared, to read it from the tests).
POOL: dict[str, CapacitySource] = {}


class Sleeper(RunnableEntity):
    """Sleeps ``data["seconds"]`` durably, saying so before and after."""

    async def run_impl(self, ctx: RunContext) -> Any:
        executed(self.name)
        await ctx.status("RUNNING", "going to sleep")
        await ctx.sleep(self.data["seconds"])
        await ctx.status("RUNNING", "woke up")
        return {"woke": now() - BASE}


class Asker(WaitableEntity):
    """Waits for one message (with ``data["timeout"]`` if given) and returns it."""

    async def run_impl(self, ctx: RunContext) -> Any:
        executed(self.name)
        await ctx.status("RUNNING", "asking")
        try:
            message = await ctx.wait_for_message("ok?", timeout=self.data.get("timeout"))
        except WaitTimeoutError:
            return {"answer": None, "at": now() - BASE}
        return {"answer": message.message, "at": now() - BASE}


class Gatherer(RunnableEntity, allowed_connections={"Calls": [Asker, Sleeper]}):
    """Asks ``data["count"]`` children (three at a time) and counts their answers."""

    async def run_impl(self, ctx: RunContext) -> Any:
        executed(self.name)
        pool = POOL[self.name] = CapacitySource(3)
        items = [(f"kid-{i}", {}) for i in range(self.data["count"])]
        runner = HierarchicalTaskPoolRunner("ask", ctx.parallel_calls(Asker, items), pool)
        answers: list[str | None] = []
        failed = 0
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                if envelope.kind is EnvelopeKind.FINAL:
                    answers.append(envelope.value["answer"])
                else:
                    failed += 1
                await ctx.status("RUNNING", f"{len(answers) + failed} answered")
        return {"answers": sorted(a for a in answers if a is not None), "failed": failed}


class Caller(RunnableEntity, allowed_connections={"Calls": [Sleeper]}):
    """Calls one sleeping child, then says what it returned."""

    async def run_impl(self, ctx: RunContext) -> Any:
        executed(self.name)
        result = await ctx.call(Sleeper, "nap", {"seconds": self.data["seconds"]})
        await ctx.status("RUNNING", "the child is back")
        return {"child": result}


TYPES: list[type[RunnableEntity]] = [Sleeper, Asker, Gatherer, Caller]


def steps(envelopes: list[Any], name: str) -> list[tuple[str, Any]]:
    """(status or type, message) of the envelopes of ``name``, in order."""
    return [(e.status or e.type, e.message) for e in envelopes if e.entity_name == name]


async def until(predicate: Any) -> None:
    """Let virtual time pass until ``predicate()`` (awaited) holds."""
    await eventually(predicate)


async def parked(runtime: Any, entity_id: str) -> bool:
    record = await runtime.get(entity_id)
    return bool(record.parked)


async def test_a_long_sleep_parks_then_wakes_on_time_and_replays_once(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, TYPES) as runtime:
        tasks_idle = trio.lowlevel.current_statistics().tasks_living
        sleeper = await runtime.create(Sleeper, {"seconds": 3 * DAY}, name="sleeper")
        await runtime.start(sleeper.id)
        await until(lambda: parked(runtime, sleeper.id))
        record = await runtime.get(sleeper.id)
        # A row, not a task: no lease, nothing running, its wake-up time stored.
        assert record.status is EntityStatus.WAITING
        assert (record.parked_on, record.lease_owner, record.lease_expires) == ("timer", None, None)
        assert record.runnable_at == BASE + 3 * DAY
        assert not runtime.is_running(sleeper.id)
        assert trio.lowlevel.current_statistics().tasks_living == tasks_idle
        assert await runtime.wait(sleeper.id) == {"woke": 3 * DAY}
        assert trio.current_time() == 3 * DAY
        envelopes = await runtime.envelopes(sleeper.id)
    # The re-run replayed "going to sleep" without storing it again.
    assert steps(envelopes, "sleeper") == [
        ("STARTED", None),
        ("RUNNING", "going to sleep"),
        ("STARTED", None),
        ("RUNNING", "woke up"),
        ("VALUE", None),
        ("COMPLETED", None),
    ]
    assert [e.metadata["attempt"] for e in envelopes if e.status == "STARTED"] == [1, 2]
    assert [e.ts - BASE for e in envelopes] == [0, 0, 3 * DAY, 3 * DAY, 3 * DAY, 3 * DAY]
    assert EXECUTIONS["sleeper"] == 2


async def test_a_wait_shorter_than_park_after_stays_in_memory(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, TYPES, park_after=60) as runtime:
        sleeper = await runtime.create(Sleeper, {"seconds": 59}, name="nap")
        assert await runtime.run(sleeper.id) == {"woke": 59}
        assert (await runtime.get(sleeper.id)).attempt == 1
    assert EXECUTIONS["nap"] == 1


@pytest.mark.parametrize(("park_after", "runs"), [(0, 2), (float("inf"), 1)])
async def test_park_after_zero_parks_every_wait_and_inf_none(
    db: Path, autojump_clock: trio.testing.MockClock, park_after: float, runs: int
) -> None:
    async with virtual_runtime(db, TYPES, park_after=park_after) as runtime:
        sleeper = await runtime.create(Sleeper, {"seconds": 1}, name="blink")
        assert await runtime.run(sleeper.id) == {"woke": 1}
        assert (await runtime.get(sleeper.id)).attempt == runs
    assert EXECUTIONS["blink"] == runs


async def test_without_a_claim_loop_nothing_parks(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Only a claim loop wakes parked entities: a runtime without one waits in memory."""
    async with virtual_runtime(db, TYPES, work=False, park_after=0) as runtime:
        sleeper = await runtime.create(Sleeper, {"seconds": DAY}, name="awake")
        assert await runtime.run(sleeper.id) == {"woke": DAY}
        assert (await runtime.get(sleeper.id)).attempt == 1


async def test_a_message_wait_parks_after_park_after_and_a_message_wakes_it(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, TYPES, park_after=10) as runtime:
        asker = await runtime.create(Asker, name="asker")
        await runtime.start(asker.id)
        await until(lambda: parked(runtime, asker.id))
        assert trio.current_time() == pytest.approx(10, abs=0.02)  # it waited in memory first
        record = await runtime.get(asker.id)
        assert (record.parked_on, record.runnable_at) == ("message", None)
        await trio.sleep(DAY - trio.current_time())
        await runtime.send_message(asker.id, "yes")
        assert await runtime.wait(asker.id) == {"answer": "yes", "at": DAY}
        envelopes = await runtime.envelopes(asker.id)
    assert steps(envelopes, "asker") == [
        ("STARTED", None),
        ("RUNNING", "asking"),
        ("WAITING", "ok?"),
        ("STARTED", None),
        ("MESSAGE", "yes"),
        ("VALUE", None),
        ("COMPLETED", None),
    ]


async def test_a_parked_message_wait_still_times_out(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, TYPES, park_after=0) as runtime:
        asker = await runtime.create(Asker, {"timeout": 2 * DAY}, name="patient")
        await runtime.start(asker.id)
        await until(lambda: parked(runtime, asker.id))
        assert (await runtime.get(asker.id)).runnable_at == BASE + 2 * DAY  # its timeout
        assert await runtime.wait(asker.id) == {"answer": None, "at": 2 * DAY}


async def test_a_message_sent_while_no_runtime_runs_wakes_it_in_the_next(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, TYPES, park_after=0) as runtime:
        asker = await runtime.create(Asker, name="later")
        await runtime.start(asker.id)
        await until(lambda: parked(runtime, asker.id))
    async with virtual_runtime(db, TYPES, work=False) as runtime:  # nothing runs here
        await runtime.send_message(asker.id, "sure")
        assert (await runtime.get(asker.id)).runnable_at == now()  # due, for any claim loop
    async with virtual_runtime(db, TYPES) as runtime:
        assert (await runtime.wait(asker.id))["answer"] == "sure"
    assert EXECUTIONS["later"] == 2


async def test_a_parent_whose_children_all_wait_parks_and_is_woken_once(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Twelve children, three at a time: each parks on its message wait and gives its slot
    back, so all twelve start; the parent parks once only parked children are left, is woken
    once by the last answer, and replays: every child's result once, every step once."""
    async with virtual_runtime(db, TYPES, park_after=0) as runtime:
        gatherer = await runtime.create(Gatherer, {"count": 12}, name="gatherer")
        await runtime.start(gatherer.id)
        await until(lambda: parked(runtime, gatherer.id))
        assert (await runtime.get(gatherer.id)).parked_on == "children"
        kids = await runtime.children(gatherer.id)
        assert len(kids) == 12
        assert all(kid.parked_on == "message" for kid in kids)
        assert POOL["gatherer"].borrowed_tokens == 0  # waiting children hold no capacity
        for number, kid in enumerate(kids):
            await trio.sleep(60)
            await runtime.send_message(kid.id, f"answer-{number:02}")
            await until(lambda kid=kid: done(runtime, kid.id))
            if number < 11:
                assert (await runtime.get(gatherer.id)).parked  # not woken before the last
        result = await runtime.wait(gatherer.id)
        envelopes = await runtime.envelopes(gatherer.id)
    assert result == {"answers": [f"answer-{n:02}" for n in range(12)], "failed": 0}
    assert EXECUTIONS["gatherer"] == 2
    assert all(EXECUTIONS[f"kid-{i}"] == 2 for i in range(12))
    progress = [m for status, m in steps(envelopes, "gatherer") if status == "RUNNING"]
    assert progress == [f"{n} answered" for n in range(1, 13)]
    assert [s for s, _ in steps(envelopes, "gatherer")].count("STARTED") == 2


async def done(runtime: Any, entity_id: str) -> bool:
    return bool((await runtime.get(entity_id)).status.is_terminal)


async def test_a_parked_child_called_with_call_parks_its_parent_until_it_ends(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, TYPES) as runtime:
        caller = await runtime.create(Caller, {"seconds": DAY}, name="caller")
        assert await runtime.run(caller.id) == {"child": {"woke": DAY}}
        assert trio.current_time() == DAY
        envelopes = await runtime.envelopes(caller.id)
    assert EXECUTIONS == {"caller": 2, "nap": 2}
    assert [(name, s) for name, s in ((e.entity_name, e.status) for e in envelopes) if s] == [
        ("caller", "STARTED"),
        ("nap", "STARTED"),
        ("nap", "RUNNING"),
        ("nap", "STARTED"),  # woken on its own: its parent was parked meanwhile
        ("nap", "RUNNING"),
        ("nap", "COMPLETED"),
        ("caller", "STARTED"),  # woken by its child's end
        ("caller", "RUNNING"),
        ("caller", "COMPLETED"),
    ]


async def test_cancelling_a_parked_child_counts_as_its_end_for_the_parent(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, TYPES, park_after=0) as runtime:
        gatherer = await runtime.create(Gatherer, {"count": 2}, name="pair")
        await runtime.start(gatherer.id)
        await until(lambda: parked(runtime, gatherer.id))
        first, second = await runtime.children(gatherer.id)
        assert await runtime.cancel(first.id) == [first.id]
        assert (await runtime.get(gatherer.id)).parked  # the other still waits
        await runtime.send_message(second.id, "here")
        assert await runtime.wait(gatherer.id) == {"answers": ["here"], "failed": 1}
        with pytest.raises(EntityCancelledError):
            await runtime.wait(first.id)


async def test_children_started_at_zero_show_up_at_zero(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Exact timelines: the store never leaves the trio thread, so virtual time does not
    move while it writes."""
    async with virtual_runtime(db, TYPES, park_after=float("inf")) as runtime:
        gatherer = await runtime.create(Caller, {"seconds": 7}, name="timed")
        await runtime.run(gatherer.id)
        envelopes = await runtime.envelopes(gatherer.id)
    assert [(e.entity_name, e.status or e.type, e.ts - BASE) for e in envelopes] == [
        ("timed", "STARTED", 0),
        ("nap", "STARTED", 0),
        ("nap", "RUNNING", 0),
        ("nap", "RUNNING", 7),
        ("nap", "VALUE", 7),
        ("nap", "COMPLETED", 7),
        ("timed", "RUNNING", 7),
        ("timed", "VALUE", 7),
        ("timed", "COMPLETED", 7),
    ]


async def test_a_wait_begun_in_an_earlier_run_parks_at_once_when_its_run_starts_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """``park_after`` counts from when the wait began, not from when this run reached it: the
    run that takes an entity over and finds its wait begun long enough ago parks it at once,
    instead of holding a lease for another ``park_after`` (under restarts more frequent than
    ``park_after``, a waiting entity would otherwise never park)."""
    db = tmp_path / "w.db"
    async with virtual_runtime(db, [Asker], park_after=100.0) as runtime:
        asker = await runtime.create(Asker, {}, name="asker")
        await runtime.start(asker.id)
        await trio.sleep(50)  # waiting, not parked yet: then the process stops
        record = await runtime.get(asker.id)
        assert (record.status.value, record.parked_on) == ("WAITING", None)
    async with virtual_runtime(db, [Asker], park_after=10.0) as runtime:

        async def parked() -> bool:
            return (await runtime.get(asker.id)).parked_on == "message"

        await eventually(parked)
        assert now() - BASE < 51  # its wait began 50 s ago: more than this runtime's 10 s
        await runtime.send_message(asker.id, "yes")
        assert (await runtime.wait(asker.id))["answer"] == "yes"
