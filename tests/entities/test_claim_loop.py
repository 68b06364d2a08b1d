"""Durable submission and the claim loop: start() is committed before it returns, and any
runtime's claim loop runs what is due, within its limits."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    DataConflictError,
    DataEntity,
    EntityCancelledError,
    EntityFailedError,
    EntityNotRunnableError,
    EntityStatus,
    RunContext,
    RunnableEntity,
    SqliteStore,
    open_runtime,
)
from sluiceway.store import NewEntity
from tests.entities.virtual import virtual_runtime
from tests.entities.workflows import ALL_TYPES, EXECUTIONS, GATES, Leaf, executed, started

#: Runs of Gate in progress now, and the most at once.
RUNNING = {"now": 0, "peak": 0}


class Gate(RunnableEntity):
    """Waits for ``GATES[name]``, counting how many run at once."""

    async def run_impl(self, ctx: RunContext) -> Any:
        executed(self.name)
        RUNNING["now"] += 1
        RUNNING["peak"] = max(RUNNING["peak"], RUNNING["now"])
        try:
            await GATES.setdefault(self.name, trio.Event()).wait()
        finally:
            RUNNING["now"] -= 1
        return self.name


class Stopper(RunnableEntity):
    """Raises the BaseException named in its data, from its own code."""

    async def run_impl(self, ctx: RunContext) -> Any:
        executed(self.name)
        await ctx.status("RUNNING", "about to stop")
        kind = self.data["raise"]
        if kind == "SystemExit":
            raise SystemExit(3)
        if kind == "KeyboardInterrupt":
            raise KeyboardInterrupt
        raise GeneratorExit("not quite")


class Note(DataEntity):
    pass


TYPES = [*ALL_TYPES, Gate, Stopper, Note]


async def test_start_submits_and_the_claim_loop_runs_it(db: Path) -> None:
    async with open_runtime(db, TYPES) as runtime:
        leaf = await runtime.create(Leaf, {"value": 4}, name="queued")
        submitted = await runtime.start(leaf.id)
        assert submitted.status is EntityStatus.PENDING
        assert submitted.runnable_at is not None  # committed before start() returned
        assert await runtime.wait(leaf.id) == {"name": "queued", "value": 8}
        again = await runtime.start(leaf.id)  # a COMPLETED entity: nothing submitted
        assert again.status is EntityStatus.COMPLETED
        assert again.runnable_at is None
    assert EXECUTIONS["queued"] == 1


async def test_a_submission_outlives_the_runtime_that_took_it(db: Path) -> None:
    async with open_runtime(db, TYPES, work=False) as runtime:  # it never runs anything
        leaf = await runtime.create(Leaf, {"value": 1}, name="orphan")
        await runtime.start(leaf.id)
    async with open_runtime(db, TYPES) as runtime:
        assert await runtime.wait(leaf.id) == {"name": "orphan", "value": 2}


async def test_start_merges_data_and_checks_what_it_expects_in_one_step(db: Path) -> None:
    async with open_runtime(db, TYPES, work=False) as runtime:
        leaf = await runtime.create(Leaf, {"value": 1, "status": "draft"}, name="draft")
        record = await runtime.start(
            leaf.id, expect={"status": "draft"}, data={"status": "executing", "value": 5}
        )
        assert record.data == {"value": 5, "status": "executing"}
        with pytest.raises(DataConflictError, match="status='executing', not 'draft'") as caught:
            await runtime.start(leaf.id, expect={"status": "draft"}, data={"status": "twice"})
        assert (caught.value.key, caught.value.actual) == ("status", "executing")
        assert (await runtime.get(leaf.id)).data["status"] == "executing"  # nothing written
        other = await runtime.create(Leaf, {"value": 1}, name="typed")
        with pytest.raises(DataConflictError):  # 1 is not True, nor 1.0 for a str...
            await runtime.start(other.id, expect={"value": True})
        assert (await runtime.get(other.id)).runnable_at is None
        with pytest.raises(TypeError, match="tuple"):
            await runtime.start(other.id, data={"pair": (1, 2)})


async def test_start_refuses_what_cannot_run(db: Path) -> None:
    async with open_runtime(db, TYPES, work=False) as runtime:
        note = await runtime.create(Note, {"text": "hello"}, name="note")
        with pytest.raises(EntityNotRunnableError):
            await runtime.start(note.id)
        leaf = await runtime.create(Leaf, name="gone")
        await runtime.cancel(leaf.id)
        with pytest.raises(EntityCancelledError):
            await runtime.start(leaf.id)


async def test_the_loop_holds_at_most_max_runs(db: Path) -> None:
    RUNNING.update(now=0, peak=0)
    async with open_runtime(db, TYPES, max_runs=3, claim_batch=2) as runtime:
        gates = [await runtime.create(Gate, name=f"g{i}") for i in range(8)]
        for gate in gates:
            await runtime.start(gate.id)
        with trio.fail_after(10):
            for number in range(8):
                await started(f"g{number}").wait()
                assert RUNNING["now"] <= 3
                GATES.setdefault(f"g{number}", trio.Event()).set()
            for gate in gates:
                assert await runtime.wait(gate.id) == gate.name
    assert RUNNING["peak"] == 3


async def test_a_runtime_claims_only_the_types_it_knows(db: Path) -> None:
    async with open_runtime(db, TYPES, work=False) as runtime:
        gate = await runtime.create(Gate, name="foreign")
        await runtime.start(gate.id)
    async with open_runtime(db, ALL_TYPES, poll_interval=0.01) as runtime:  # no Gate here
        await trio.sleep(0.1)
        record = await runtime.get(gate.id)
        assert (record.status, record.lease_owner) == (EntityStatus.PENDING, None)
        assert await runtime.abandoned() == []


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt", "GeneratorExit"])
async def test_a_base_exception_from_entity_code_fails_that_entity_only(
    db: Path, kind: str
) -> None:
    async with open_runtime(db, TYPES) as runtime:
        stopper = await runtime.create(Stopper, {"raise": kind}, name="stopper")
        leaf = await runtime.create(Leaf, {"value": 2}, name="bystander")
        await runtime.start(stopper.id)
        await runtime.start(leaf.id)
        with pytest.raises(EntityFailedError, match=kind) as caught:
            await runtime.wait(stopper.id)
        assert caught.value.error["type"] == kind
        assert await runtime.wait(leaf.id) == {"name": "bystander", "value": 4}
        record = await runtime.get(stopper.id)
        assert (record.status, record.lease_owner, record.runnable_at) == (
            EntityStatus.FAILED,
            None,
            None,
        )
        # The runtime goes on: a direct run raises the entity's failure, not the exception.
        with pytest.raises(EntityFailedError):
            await runtime.run(stopper.id)
        statuses = [e.status for e in await runtime.envelopes(stopper.id) if e.status]
        assert statuses[-1] == "FAILED"


async def test_recover_is_one_claim_pass_that_waits(
    db: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with virtual_runtime(db, TYPES, work=False) as runtime:
        leaves = [await runtime.create(Leaf, {"value": n}, name=f"r{n}") for n in range(5)]
        for leaf in leaves:
            await runtime.start(leaf.id)
        outcomes = await runtime.recover()
        assert sorted(run.entity_name for run in outcomes) == [f"r{n}" for n in range(5)]
        assert all(run.error is None and not run.parked for run in outcomes)
        assert await runtime.recover() == []


async def test_recover_sees_the_runs_the_claim_loop_took_as_it_opened(tmp_path: Path) -> None:
    """recover() called as the runtime opens takes over the run a dead process left, whether
    the claim loop or recover() itself claims it (ten times, each on a new store)."""
    gone = await trio.run_process(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_stdout=True
    )
    dead = f"{socket.gethostname()}:{gone.stdout.decode().strip()}:gone"
    for attempt in range(10):
        db = tmp_path / f"race-{attempt}.db"
        async with SqliteStore(db) as store:
            await store.create_entity(
                NewEntity(
                    id="e", name="orphan", type="Leaf", general_type="Leaf", data={"value": 3},
                    created_at=time.time(),
                )
            )  # fmt: skip
            now = time.time()
            claimed = await store.claim(
                "e", dead, now=now, expires=now + 3600, started={"kind": "STARTED"}, own_run=True
            )
            assert claimed is not None  # held by a process that no longer exists
        async with open_runtime(db, TYPES) as runtime:
            [recovered] = await runtime.recover()
            assert recovered.result == {"name": "orphan", "value": 6}
