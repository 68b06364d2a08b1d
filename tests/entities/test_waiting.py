"""Durable waits: messages, timeouts and sleeps that survive a restart, and waiting entities
that give their capacity back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    EntityEnvelope,
    EntityNotWaitingError,
    EntityStatus,
    RunContext,
    Runtime,
    WaitableEntity,
    WaitKind,
    WaitState,
    open_runtime,
)
from tests.entities.workflows import ALL_TYPES, EXECUTIONS, GLOBAL, Asker, FanOut, Sleeper
from tests.helpers import assert_idle


async def until_waiting(runtime: Runtime, entity_id: str, count: int = 1) -> None:
    """Follow the entity's stream until ``count`` WAITING envelopes were stored."""
    seen = 0
    async with runtime.stream(entity_id) as envelopes:
        async for envelope in envelopes:
            if envelope.type == "WAITING":
                seen += 1
                if seen == count:
                    return
    raise AssertionError(f"the stream ended after {seen} WAITING envelopes")


async def interrupted(runtime: Runtime, entity_id: str, until: Any) -> None:
    """Run the entity until ``until(runtime, entity_id)`` returns, then stop the run (as if the
    process stopped: the lease is given back, the entity stays unfinished)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runtime.run, entity_id)
        await until(runtime, entity_id)
        nursery.cancel_scope.cancel()


def kinds(envelopes: list[EntityEnvelope]) -> list[str]:
    return [e.status if e.type == "STATUS" else e.type for e in envelopes]


async def test_wait_for_a_message(db: Path) -> None:
    async with open_runtime(db, ALL_TYPES) as runtime:
        asker = await runtime.create(Asker, name="asker")
        async with trio.open_nursery() as nursery:
            result: list[Any] = []

            async def run() -> None:
                result.append(await runtime.run(asker.id))

            nursery.start_soon(run)
            await until_waiting(runtime, asker.id)
            record = await runtime.get(asker.id)
            assert record.status is EntityStatus.WAITING
            await runtime.send_message(asker.id, "yes", {"by": "ana"})
        assert result == [{"name": "asker", "value": 1, "answer": "yes", "data": {"by": "ana"}}]
        envelopes = await runtime.envelopes(asker.id)
        assert kinds(envelopes) == ["STARTED", "WAITING", "MESSAGE", "VALUE", "COMPLETED"]
        waiting = envelopes[1]
        assert (waiting.message, waiting.data) == ("approve asker?", {"choices": ["yes", "no"]})
        assert (envelopes[2].message, envelopes[2].data) == ("yes", {"by": "ana"})
        with pytest.raises(EntityNotWaitingError):
            await runtime.send_message(asker.id, "late")


async def test_a_message_sent_before_the_wait_is_received_at_once(db: Path) -> None:
    async with open_runtime(db, ALL_TYPES) as runtime:
        asker = await runtime.create(Asker, name="early")
        await runtime.send_message(asker.id, "no")
        await runtime.send_message(asker.id, "ignored: only one wait")
        result = await runtime.run(asker.id)
        assert result["answer"] == "no"
        messages = await runtime.store.messages(asker.id)
        assert [(m.message, m.consumed_by) for m in messages] == [
            ("no", 1),
            ("ignored: only one wait", None),
        ]


async def test_a_message_sent_while_nobody_runs_the_entity_is_kept(db: Path) -> None:
    async with open_runtime(db, ALL_TYPES, work=False) as runtime:
        asker = await runtime.create(Asker, name="patient")
        await interrupted(runtime, asker.id, until_waiting)
        record = await runtime.get(asker.id)
        assert (record.status, record.lease_owner) == (EntityStatus.WAITING, None)
    async with open_runtime(db, ALL_TYPES, work=False) as runtime:  # nothing runs it here
        await runtime.send_message(asker.id, "yes", {"late": True})
    async with open_runtime(db, ALL_TYPES) as runtime:
        [recovered] = await runtime.recover()
        assert recovered.result["answer"] == "yes"
        envelopes = await runtime.envelopes(asker.id)
    # One WAITING: the resumed run found its wait instead of asking again.
    assert kinds(envelopes) == ["STARTED", "WAITING", "STARTED", "MESSAGE", "VALUE", "COMPLETED"]
    assert EXECUTIONS["patient"] == 2


async def test_a_rerun_receives_the_same_message_again(db: Path) -> None:
    class Flaky(WaitableEntity):
        async def run_impl(self, ctx: RunContext) -> Any:
            EXECUTIONS[self.name] += 1
            first = await ctx.wait_for_message("first?")
            second = await ctx.wait_for_message("second?")
            if EXECUTIONS[self.name] == 1:
                raise RuntimeError("fails after both answers, once")
            return [first.message, second.message]

    async with open_runtime(db, [Flaky]) as runtime:
        flaky = await runtime.create(Flaky, name="flaky")
        for text in ("one", "two"):
            await runtime.send_message(flaky.id, text)
        with pytest.raises(Exception, match="once"):
            await runtime.run(flaky.id)
        await runtime.send_message(flaky.id, "three")  # not needed by the re-run
        assert await runtime.run(flaky.id) == ["one", "two"]
        messages = await runtime.store.messages(flaky.id)
        assert [(m.message, m.consumed_by) for m in messages] == [
            ("one", 1),
            ("two", 2),
            ("three", None),
        ]


async def test_a_wait_times_out(db: Path, mock_clock: trio.testing.MockClock) -> None:
    async with open_runtime(db, ALL_TYPES, clock=trio.current_time) as runtime:
        asker = await runtime.create(Asker, {"timeout": 10}, name="slow")
        async with trio.open_nursery() as nursery:
            result: list[Any] = []

            async def run() -> None:
                result.append(await runtime.run(asker.id))

            nursery.start_soon(run)
            await until_waiting(runtime, asker.id)
            mock_clock.jump(11)
        assert result[0]["answer"] == "timed out"
        wait = await runtime.store.get_wait(asker.id, 1)
        assert wait is not None
        assert (wait.kind, wait.state, wait.deadline) == (WaitKind.MESSAGE, WaitState.TIMED_OUT, 10)
        with pytest.raises(EntityNotWaitingError):
            await runtime.send_message(asker.id, "too late")


async def test_a_timeout_fires_after_a_restart(
    db: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with open_runtime(db, ALL_TYPES, clock=trio.current_time) as runtime:
        asker = await runtime.create(Asker, {"timeout": 10}, name="slow")
        await interrupted(runtime, asker.id, until_waiting)
    mock_clock.jump(20)  # nobody runs it meanwhile
    async with open_runtime(db, ALL_TYPES, clock=trio.current_time) as runtime:
        [recovered] = await runtime.recover()
        assert recovered.result["answer"] == "timed out"
        assert trio.current_time() == 20  # it did not wait again


async def test_a_durable_sleep_survives_a_restart(
    db: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with open_runtime(db, ALL_TYPES, clock=trio.current_time) as runtime:
        sleeper = await runtime.create(Sleeper, {"seconds": 100}, name="sleeper")

        async def until_sleeping(runtime: Runtime, entity_id: str) -> None:
            while await runtime.store.get_wait(entity_id, 1) is None:
                await trio.lowlevel.checkpoint()

        await interrupted(runtime, sleeper.id, until_sleeping)
    mock_clock.jump(60)
    async with open_runtime(db, ALL_TYPES, clock=trio.current_time) as runtime:
        async with trio.open_nursery() as nursery:
            outcomes: list[Any] = []

            async def recover() -> None:
                outcomes.extend(await runtime.recover())

            nursery.start_soon(recover)
            mock_clock.jump(40)  # before or after it sleeps again: it wakes at 100 either way
        [recovered] = outcomes
        assert recovered.result == {"woke": 100}
        wait = await runtime.store.get_wait(sleeper.id, 1)
        assert wait is not None
        assert wait.state is WaitState.ELAPSED


async def test_waiting_children_give_their_capacity_back(db: Path) -> None:
    """A pool of capacity 2 and ten children that all wait, answered in reverse order: all ten
    start (each gives its slot back while it waits) and they finish in the order answered."""
    async with open_runtime(db, ALL_TYPES) as runtime:
        parent = await runtime.create(
            FanOut, {"count": 10, "per_parent": 2, "child_type": "Asker"}, name="parent"
        )
        async with trio.open_nursery() as nursery:
            result: list[Any] = []

            async def run() -> None:
                result.append(await runtime.run(parent.id))

            nursery.start_soon(run)
            await until_waiting(runtime, parent.id, count=10)
            with trio.fail_after(10):  # the last one gives its slot back just after WAITING
                while GLOBAL.borrowed_tokens:  # noqa: ASYNC110 - no event for "returned"
                    await trio.sleep(0.001)
            children = {c.name: c.id for c in await runtime.children(parent.id)}
            assert len(children) == 10
            for i in reversed(range(10)):
                child = children[f"child-{i}"]
                await runtime.send_message(child, "yes")
                async with runtime.stream(child) as envelopes:  # until that child completed
                    async for _ in envelopes:
                        pass
        assert result == [{"ok": 10, "failed": 0, "total": 10, "status": "completed"}]
        envelopes = await runtime.envelopes(parent.id)
        finished = [
            e.entity_name for e in envelopes if e.type == "VALUE" and e.entity_name != "parent"
        ]
        assert finished == [f"child-{i}" for i in reversed(range(10))]
    assert_idle(GLOBAL)
