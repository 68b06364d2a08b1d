"""Leases: two runtimes never run one entity at once; expired or orphaned runs are taken over;
a run whose lease was lost records nothing more."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from sluiceway import (
    EntityBusyError,
    EntityCancelledError,
    EntityStatus,
    LeaseLostError,
    NewEntity,
    RunContext,
    RunnableEntity,
    SqliteStore,
    open_runtime,
)
from sluiceway.entities._runtime import owner_is_dead
from tests.entities.workflows import ALL_TYPES, EXECUTIONS, Leaf, open_gate, started


class WallClock:
    """A wall clock the test moves by hand (each runtime may get its own offset)."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def wait_for_execution(name: str, count: int = 1) -> None:
    with trio.fail_after(10):
        await started(name, count).wait()


async def test_two_runtimes_never_run_the_same_entity(db: Path) -> None:
    async with (
        open_runtime(SqliteStore(db), ALL_TYPES) as first,
        open_runtime(SqliteStore(db), ALL_TYPES) as second,
    ):
        assert first.owner != second.owner
        entity = await first.create(Leaf, {"value": 4, "gate": True}, name="busy")
        async with trio.open_nursery() as nursery:
            results: list[Any] = []

            async def run() -> None:
                results.append(await first.run(entity.id))

            nursery.start_soon(run)
            await wait_for_execution("busy")
            with pytest.raises(EntityBusyError, match="held by"):
                await second.run(entity.id)
            assert await second.recover() == []  # a live runtime of this process holds it
            open_gate("busy")
        assert results == [{"name": "busy", "value": 8}]
        assert await second.run(entity.id) == {"name": "busy", "value": 8}  # stored result
    assert EXECUTIONS["busy"] == 1


async def test_an_expired_lease_is_taken_over_and_the_old_run_is_fenced(db: Path) -> None:
    """Runtime A stalls (its heartbeat does not reach the store in time); B's clock is past
    A's lease, so B's recover() takes the entity over. When A's run wakes up it can record
    nothing: the entity's one result is B's."""
    clock_a = WallClock()
    clock_b = WallClock(clock_a.now + 100)  # B lives after A's lease expired
    async with (
        open_runtime(SqliteStore(db), ALL_TYPES, clock=clock_a, lease_seconds=30) as a,
        # B takes over only when told to (recover()), not by its claim loop at once.
        open_runtime(SqliteStore(db), ALL_TYPES, clock=clock_b, lease_seconds=30, work=False) as b,
    ):
        entity = await a.create(Leaf, {"value": 1, "gate": True}, name="contested")
        async with trio.open_nursery() as nursery:
            outcome_a: list[BaseException] = []

            async def run_a() -> None:
                try:
                    await a.run(entity.id)
                except LeaseLostError as exc:
                    outcome_a.append(exc)

            nursery.start_soon(run_a)
            await wait_for_execution("contested")
            record = await b.get(entity.id)
            assert record.lease_owner == a.owner
            assert record.lease_expires == clock_a.now + 30
            async with trio.open_nursery() as inner:
                recovered: list[Any] = []

                async def recover() -> None:
                    recovered.extend(await b.recover())

                inner.start_soon(recover)
                await wait_for_execution("contested", 2)  # B runs it now
                open_gate("contested")  # both runs may finish; only B's is recorded
        [taken] = recovered
        assert taken.result == {"name": "contested", "value": 2}
        assert len(outcome_a) == 1
        assert "lease" in str(outcome_a[0])
        record = await b.get(entity.id)
        assert (record.status, record.attempt, record.lease_owner) == (
            EntityStatus.COMPLETED,
            2,
            None,
        )
        envelopes = await b.envelopes(entity.id)
        assert [e.status for e in envelopes if e.type == "STATUS"].count("COMPLETED") == 1


async def test_a_dead_process_lease_is_taken_over_at_once(db: Path) -> None:
    """The lease of a process of this machine that no longer exists does not have to expire."""
    finished = await trio.run_process(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_stdout=True
    )
    dead = f"{socket.gethostname()}:{finished.stdout.decode().strip()}:gone"
    assert owner_is_dead(dead)
    assert not owner_is_dead(f"{socket.gethostname()}:1:init")  # pid 1 exists
    assert not owner_is_dead("another-host:12345:x")  # cannot tell: wait for expiry
    async with SqliteStore(db) as store:
        await store.create_entity(
            NewEntity(
                id="e1",
                name="orphan",
                type="Leaf",
                general_type="Leaf",
                data={"value": 3},
                created_at=0.0,
            )
        )
        clock = WallClock()
        claimed = await store.claim(
            "e1",
            dead,
            now=clock.now,
            expires=clock.now + 3600,
            started={
                "type": "STATUS",
                "entity_id": "e1",
                "entity_type": "Leaf",
                "entity_name": "orphan",
                "status": "STARTED",
            },
            own_run=True,  # a run of its own: due again if its process dies
        )
        assert claimed is not None
    async with open_runtime(db, ALL_TYPES, clock=clock, work=False) as runtime:
        [recovered] = await runtime.recover()  # no claim loop: recover() takes it over
        assert recovered.result == {"name": "orphan", "value": 6}


async def test_cancel_from_another_runtime_stops_the_run(db: Path) -> None:
    async with (
        open_runtime(SqliteStore(db), ALL_TYPES, lease_seconds=0.3) as first,
        open_runtime(SqliteStore(db), ALL_TYPES) as second,
    ):
        entity = await first.create(Leaf, {"gate": True}, name="stop-me")
        async with trio.open_nursery() as nursery:
            outcome: list[BaseException] = []

            async def run() -> None:
                try:
                    await first.run(entity.id)
                except EntityCancelledError as exc:
                    outcome.append(exc)

            nursery.start_soon(run)
            await wait_for_execution("stop-me")
            assert await second.cancel(entity.id) == [entity.id]
            # The first runtime's heartbeat notices within a third of its lease.
        assert len(outcome) == 1
        record = await first.get(entity.id)
        assert record.status is EntityStatus.CANCELLED


async def test_a_run_that_lost_its_lease_starts_no_child(db: Path) -> None:
    """A's run of the parent was taken over by B; when A's run goes on, it can neither create
    nor start a child: only B's run does, once."""
    gate = trio.Event()

    class Parent(RunnableEntity, allowed_connections={"Calls": [Leaf]}):
        async def run_impl(self, ctx: RunContext) -> Any:
            EXECUTIONS[self.name] += 1
            started(self.name, EXECUTIONS[self.name]).set()
            await gate.wait()
            return await ctx.call(Leaf, "kid", {"value": 7})

    clock_a = WallClock()
    clock_b = WallClock(clock_a.now + 100)  # B lives after A's lease expired
    types = [Parent, Leaf]
    async with (
        open_runtime(SqliteStore(db), types, clock=clock_a) as a,
        open_runtime(SqliteStore(db), types, clock=clock_b) as b,
    ):
        parent = await a.create(Parent, name="parent")
        outcomes: dict[str, Any] = {}

        async def run_a() -> None:
            try:
                outcomes["a"] = await a.run(parent.id)
            except LeaseLostError as exc:
                outcomes["a"] = exc

        async def recover_b() -> None:
            [recovered] = await b.recover()
            outcomes["b"] = recovered.result

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_a)
            await wait_for_execution("parent")
            nursery.start_soon(recover_b)
            await wait_for_execution("parent", 2)
            gate.set()
        assert isinstance(outcomes["a"], LeaseLostError)
        assert outcomes["b"] == {"name": "kid", "value": 14}
        [kid] = await b.children(parent.id)
        assert (kid.status, kid.attempt) == (EntityStatus.COMPLETED, 1)
    assert EXECUTIONS["kid"] == 1


def test_a_killed_process_not_reaped_yet_is_dead() -> None:
    """A process that exited but that its parent has not waited for yet (a zombie) still has
    its pid: it runs nothing any more, so its leases can be taken over at once."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    owner = f"{socket.gethostname()}:{child.pid}:zombie"
    try:
        assert not owner_is_dead(owner)
        child.kill()
        deadline = time.monotonic() + 10
        while not owner_is_dead(owner):  # until the kernel has made it a zombie
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        child.kill()
        child.wait()
