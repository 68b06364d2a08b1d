"""The store as a durable work queue: submissions, claims by the claim loop, parking and
wake-ups, and the crash-loop guard (counting, pauses, probation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sluiceway._errors import DataConflictError, LeaseLostError
from sluiceway.store import EntityStatus, ParkReason, SqliteStore
from tests.store.helpers import claimed, new

FAILURE = (
    {"type": "CrashLoop", "message": "died too often"},
    [{"type": "ERROR"}, {"type": "STATUS", "status": "FAILED"}],
)


def started(attempt: int) -> dict[str, Any]:
    return {"kind": "STARTED", "attempt": attempt}


async def claim_due(store: SqliteStore, owner: str, now: float, **options: Any) -> Any:
    options.setdefault("limit", 10)
    return await store.claim_due(owner, now=now, expires=now + 100, started=started, **options)


async def test_submit_makes_an_entity_due_and_claim_due_runs_the_earliest(
    store: SqliteStore,
) -> None:
    for name, created in (("b", 2.0), ("a", 1.0), ("c", 3.0)):
        await store.create_entity(new(name, created_at=created))
    assert (await claim_due(store, "o", 100.0)).claimed == []  # nothing submitted
    for name, at in (("b", 5.0), ("a", 4.0), ("c", 50.0)):
        await store.submit(name, now=at)
    batch = await claim_due(store, "o", 10.0)
    assert [record.id for record in batch.claimed] == ["a", "b"]  # c is not due yet
    assert all(record.lease_owner == "o" for record in batch.claimed)
    assert [record.runnable_at for record in batch.claimed] == [4.0, 5.0]  # kept while running
    assert [e.body for e in await store.read_envelopes("a")] == [started(1)]
    assert (await claim_due(store, "p", 20.0)).claimed == []  # held by o
    assert [r.id for r in (await claim_due(store, "p", 60.0)).claimed] == ["c"]
    assert [r.id for r in (await claim_due(store, "p", 110.0)).claimed] == ["a", "b"]  # expired


async def test_claim_due_takes_the_types_asked_for_and_dead_owners_leases(
    store: SqliteStore,
) -> None:
    await store.create_entity(new("x", entity_type="Known"))
    await store.create_entity(new("y", entity_type="Other"))
    await store.create_entity(new("z", entity_type="Known"))
    for name in "xyz":
        await store.submit(name, now=1.0)
    await claim_due(store, "dead", 1.0, types=["Known"], limit=1)  # takes x
    batch = await claim_due(store, "o", 2.0, types=["Known"], steal_from=["dead"])
    assert sorted(record.id for record in batch.claimed) == ["x", "z"]
    assert (await store.get_entity("y")).lease_owner is None
    assert [r.id for r in await store.runnable(now=3.0)] == ["y"]


async def test_submit_checks_what_it_expects_and_merges_data_in_one_step(
    store: SqliteStore,
) -> None:
    await store.create_entity(new("e", data={"status": "draft", "n": 1}))
    record = await store.submit(
        "e", now=5.0, expect={"status": "draft"}, data={"status": "executing"}
    )
    assert (record.data, record.runnable_at) == ({"status": "executing", "n": 1}, 5.0)
    writes = store.statistics().writes
    with pytest.raises(DataConflictError) as caught:
        await store.submit("e", now=6.0, expect={"status": "draft", "n": 1}, data={"x": 1})
    assert (caught.value.key, caught.value.expected, caught.value.actual) == (
        "status",
        "draft",
        "executing",
    )
    assert (await store.get_entity("e")).data == {"status": "executing", "n": 1}
    assert store.statistics().writes == writes + 1  # refused: rolled back alone
    with pytest.raises(DataConflictError):
        await store.submit("e", now=6.0, expect={"n": 1.0})  # 1.0 is not 1
    with pytest.raises(DataConflictError):
        await store.submit("e", now=6.0, expect={"missing": False})  # None is not False
    assert (await store.submit("e", now=6.0, expect={"missing": None})).runnable_at == 5.0


async def test_submitting_a_running_or_finished_entity_changes_nothing_of_its_run(
    store: SqliteStore,
) -> None:
    await claimed(store, "running")
    assert (await store.submit("running", now=11.0)).runnable_at == 11.0  # resumed if it dies
    assert (await store.get_entity("running")).lease_owner == "owner-a"
    await store.finish("running", "owner-a", EntityStatus.COMPLETED, now=12.0, result=1)
    done = await store.submit("running", now=13.0)
    assert (done.status, done.runnable_at) == (EntityStatus.COMPLETED, None)


async def test_parking_gives_the_lease_up_and_stores_what_wakes_it(store: SqliteStore) -> None:
    await claimed(store, "sleeper")
    parked = await store.park(
        "sleeper", "owner-a", now=11.0, reason=ParkReason.TIMER, wake_at=500.0
    )
    assert (parked.status, parked.lease_owner, parked.parked_on, parked.runnable_at) == (
        EntityStatus.WAITING,
        None,
        "timer",
        500.0,
    )
    assert parked.parked
    with pytest.raises(LeaseLostError):
        await store.park("sleeper", "owner-a", now=12.0, reason=ParkReason.TIMER, wake_at=1.0)
    assert await store.next_due(after=12.0) == 500.0
    assert (await claim_due(store, "o", 499.0)).claimed == []
    [woken] = (await claim_due(store, "o", 500.0)).claimed
    assert (woken.status, woken.parked_on, woken.attempt) == (EntityStatus.IN_PROGRESS, None, 2)
    with pytest.raises(ValueError, match="wake_at"):
        await store.park("sleeper", "o", now=501.0, reason=ParkReason.TIMER)


async def test_a_message_wakes_a_run_parked_on_a_message_wait(store: SqliteStore) -> None:
    await claimed(store, "asker")
    await claimed(store, "timer")
    await store.park("asker", "owner-a", now=11.0, reason=ParkReason.MESSAGE, wake_at=900.0)
    await store.park("timer", "owner-a", now=11.0, reason=ParkReason.TIMER, wake_at=900.0)
    await store.send_message("asker", "yes", None, now=20.0)
    await store.send_message("timer", "ignored until it wakes", None, now=20.0)
    assert (await store.get_entity("asker")).runnable_at == 20.0  # now, not at its timeout
    assert (await store.get_entity("timer")).runnable_at == 900.0
    # A message that came while the run was deciding to park: due at once.
    await store.claim("asker", "b", now=21.0, expires=50.0, started=started)
    parked = await store.park("asker", "b", now=22.0, reason=ParkReason.MESSAGE)
    assert parked.runnable_at == 22.0


async def test_a_parent_parked_on_its_children_wakes_when_the_last_one_ends(
    store: SqliteStore,
) -> None:
    await claimed(store, "parent")
    for kid in ("k1", "k2", "k3"):
        await claimed(store, kid, parent="parent")
    await store.create_entity(new("data-kid", parent="parent"))  # never run: not awaited
    await store.park("k1", "owner-a", now=11.0, reason=ParkReason.MESSAGE)
    await store.park("k2", "owner-a", now=11.0, reason=ParkReason.TIMER, wake_at=50.0)
    await store.finish("k3", "owner-a", EntityStatus.FAILED, now=11.0, error={"type": "E"})
    parent = await store.park("parent", "owner-a", now=12.0, reason=ParkReason.CHILDREN)
    assert (parent.parked_on, parent.runnable_at) == ("children", None)
    [woken] = (await claim_due(store, "o", 50.0)).claimed  # its timer: it runs on its own
    assert woken.id == "k2"
    assert await store.finish("k2", "o", EntityStatus.COMPLETED, now=51.0, result=2) is False
    assert (await store.get_entity("parent")).runnable_at is None  # k1 still waits
    assert await store.cancel("k1", now=60.0, envelope={"kind": "CANCELLED"}) == ["k1"]
    assert (await store.get_entity("parent")).runnable_at == 60.0
    # Parking when nothing is pending any more: due at once.
    await store.create_entity(new("p2"))
    await store.claim("p2", "o", now=61.0, expires=90.0, started=started)
    assert (await store.park("p2", "o", now=62.0, reason=ParkReason.CHILDREN)).runnable_at == 62.0


async def test_release_decides_whether_the_run_is_due_again(store: SqliteStore) -> None:
    await claimed(store, "own")
    await claimed(store, "child", parent="own")
    assert await store.release("own", "owner-a", resubmit_at=30.0)
    assert await store.release("child", "owner-a")
    assert [r.id for r in await store.runnable(now=30.0)] == ["own"]  # its parent reruns it
    assert not await store.release("own", "owner-a")  # it holds it no more


async def dies_holding(store: SqliteStore, owner: str, now: float, **options: Any) -> Any:
    """``owner`` claims what is due and dies (its lease expires at ``now + 100``)."""
    return await claim_due(store, owner, now, crash_limit=3, crash_failure=lambda n: FAILURE)


async def test_the_crash_loop_guard_counts_deaths_that_follow_a_claim(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        store.bind_owner("runtime")
        await store.create_entity(new("pill"))
        await store.submit("pill", now=0.0)
    now = 0.0
    for death in range(1, 3):
        async with SqliteStore(db_path) as store:
            batch = await dies_holding(store, f"process-{death}", now)
            assert [r.id for r in batch.claimed] == ["pill"]
            assert batch.claimed[0].abandoned == death - 1
        now += 101  # its lease expired: the process is gone
        if death == 2:
            # The second takeover in a row waits a second before running it again...
            async with SqliteStore(db_path) as store:
                batch = await dies_holding(store, "process-3", now)
                assert batch.claimed == []
                record = await store.get_entity("pill")
                assert (record.abandoned, record.lease_owner, record.runnable_at) == (
                    2,
                    None,
                    now + 1,
                )
            now += 1
    async with SqliteStore(db_path) as store:
        # ... and runs it on probation: alone, and nothing else in its batch.
        await store.create_entity(new("bystander"))
        await store.submit("bystander", now=now)
        batch = await dies_holding(store, "process-3", now)
        assert [r.id for r in batch.claimed] == ["pill"]
        assert batch.claimed[0].abandoned == 2
    now += 101
    async with SqliteStore(db_path) as store:
        batch = await dies_holding(store, "process-4", now)
        assert batch.failed == ["pill"]  # the third death in a row
        assert [r.id for r in batch.claimed] == ["bystander"]
        record = await store.get_entity("pill")
        assert (record.status, record.error, record.lease_owner, record.runnable_at) == (
            EntityStatus.FAILED,
            FAILURE[0],
            None,
            None,
        )
        assert [e.body for e in await store.read_envelopes("pill")][-2:] == FAILURE[1]


async def test_a_suspect_waits_until_the_claimer_runs_nothing_else(store: SqliteStore) -> None:
    await store.create_entity(new("suspect"))
    await store.submit("suspect", now=0.0)
    raw = store._db  # the count as two earlier deaths left it
    await raw.write(lambda conn: conn.execute("UPDATE entities SET abandoned = 2"))
    busy = await claim_due(
        store, "o", 1.0, crash_limit=3, crash_failure=lambda n: FAILURE, idle=False
    )
    assert (busy.claimed, busy.suspect_waiting) == ([], True)
    idle = await claim_due(store, "o", 1.0, crash_limit=3, crash_failure=lambda n: FAILURE)
    assert [r.id for r in idle.claimed] == ["suspect"]


async def test_deaths_of_a_busy_process_are_not_blamed_on_its_runs(db_path: Path) -> None:
    """A process that served requests (or started other runs) after claiming an entity, then
    died, was not shown to die of it: the count does not move."""
    async with SqliteStore(db_path) as store:
        await store.create_entity(new("victim"))
        await store.submit("victim", now=0.0)
    now = 0.0
    for death in range(5):
        async with SqliteStore(db_path) as store:
            store.bind_owner(f"server-{death}")
            await dies_holding(store, f"server-{death}", now)
            await store.create_entity(new(f"request-{death}"))  # then it served a request
        now += 101
    async with SqliteStore(db_path) as store:
        record = await store.get_entity("victim")
        assert (record.status, record.abandoned, record.attempt) == (
            EntityStatus.IN_PROGRESS,
            0,
            5,
        )


async def test_progress_and_heartbeats_start_the_count_again(store: SqliteStore) -> None:
    await store.create_entity(new("e"))
    await store.submit("e", now=0.0)
    await claim_due(store, "a", 0.0)
    await store._db.write(lambda conn: conn.execute("UPDATE entities SET abandoned = 1"))
    await store.append_envelopes("a", [("e", 1.0, {"kind": "step"})], emitted=1)
    assert (await store.get_entity("e")).abandoned == 0
    await store._db.write(lambda conn: conn.execute("UPDATE entities SET abandoned = 1"))
    assert await store.renew_leases("a", expires=99.0) == 1
    record = await store.get_entity("e")
    assert (record.abandoned, record.emitted) == (0, 1)
    assert (
        await store._db.read(lambda tx: tx.execute("SELECT count(*) FROM runtimes").fetchone()[0])
        == 1
    )


async def test_a_claimer_of_no_type_claims_nothing(store: SqliteStore) -> None:
    await store.create_entity(new("e"))
    await store.submit("e", now=0.0)
    batch = await store.claim_due(
        "a", now=1.0, expires=9.0, limit=5, started=lambda attempt: {"n": attempt}, types=[]
    )
    assert (batch.claimed, batch.failed) == ([], [])
    assert await store.runnable(now=1.0, types=[]) == []
