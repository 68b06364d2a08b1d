"""SqliteStore: every method of the EntityStore protocol and its documented edge cases."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import Any

import attrs
import pytest
import trio

from sluiceway._errors import (
    DataConflictError,
    DuplicateEntityError,
    EntityNotFoundError,
    EntityNotWaitingError,
    LeaseLostError,
)
from sluiceway.store import (
    EdgeRecord,
    EntityStatus,
    MessageRecord,
    SqliteStore,
    WaitKind,
    WaitState,
    _store,
)
from sluiceway.store._json import MAX_JSON_DEPTH
from tests.store.helpers import claimed, new

PENDING = EntityStatus.PENDING
IN_PROGRESS = EntityStatus.IN_PROGRESS
WAITING = EntityStatus.WAITING
COMPLETED = EntityStatus.COMPLETED
FAILED = EntityStatus.FAILED
CANCELLED = EntityStatus.CANCELLED

STARTED = {"kind": "STARTED"}


async def snapshot(store: SqliteStore, *entity_ids: str) -> object:
    """Everything stored about these entities (to show that a refused write changed nothing)."""
    state = []
    for entity_id in entity_ids:
        state.append(
            (
                await store.get_entity(entity_id),
                await store.read_envelopes(entity_id, subtree=False),
                await store.edges(entity_id),
                await store.messages(entity_id),
                [await store.get_wait(entity_id, index) for index in (1, 2, 3)],
            )
        )
    return state


# -- create_entity, get_entity, find_entity, children ---------------------------------------------


async def test_create_a_root(store: SqliteStore) -> None:
    record, created = await store.create_entity(new("r1", name="root", data={"a": [1, 2]}))
    assert created
    assert record.id == "r1"
    assert record.name == "root"
    assert record.parent_id is None
    assert record.type == "Task"
    assert record.general_type == "Workflow"
    assert record.status is PENDING
    assert record.data == {"a": [1, 2]}
    assert record.result is None
    assert record.error is None
    assert record.attempt == 0
    assert record.lease_owner is None
    assert record.lease_expires is None
    assert record.created_at == record.modified_at == 1.0
    assert record.last_entity_seq == 0
    assert await store.get_entity("r1") == record
    assert await store.find_entity(None, "root") == record
    assert await store.find_entity(None, "r1") is None
    assert await store.edges("r1") == ([], [])


async def test_create_children_with_their_calls_edges(store: SqliteStore) -> None:
    await store.create_entity(new("root"))
    first, created = await store.create_entity(
        new("c1", parent="root", created_at=2.0, edge_data={"why": "first"})
    )
    assert created
    assert first.parent_id == "root"
    second, _ = await store.create_entity(new("c2", parent="root", created_at=3.0))
    other, _ = await store.create_entity(new("c3", parent="root", edge_type="Spawns"))
    outgoing, incoming = await store.edges("root")
    assert incoming == []
    assert [(e.to_id, e.type, e.position, e.data) for e in outgoing] == [
        ("c1", "Calls", 1, {"why": "first"}),
        ("c2", "Calls", 2, {}),
        ("c3", "Spawns", 1, {}),
    ]
    assert outgoing[0].created_at == 2.0
    assert (await store.edges("c1")) == ([], [outgoing[0]])
    assert await store.find_entity("root", "c2") == second
    assert await store.find_entity("root", "nope") is None
    assert await store.find_entity("c1", "c2") is None
    assert other.parent_id == "root"


async def test_a_taken_name_returns_the_existing_entity_unchanged(store: SqliteStore) -> None:
    original, _ = await store.create_entity(new("root", data={"v": 1}))
    await store.create_entity(new("child", parent="root", data={"v": 1}))
    again, created = await store.create_entity(new("other-id", name="root", data={"v": 2}))
    assert not created
    assert again == original
    child, created = await store.create_entity(
        new("child-2", parent="root", name="child", data={"v": 2})
    )
    assert not created
    assert child.id == "child"
    assert child.data == {"v": 1}
    assert len((await store.edges("root"))[0]) == 1
    with pytest.raises(EntityNotFoundError):
        await store.get_entity("other-id")
    assert store.statistics().writes == 4


async def test_strict_creation_refuses_a_taken_name(store: SqliteStore) -> None:
    await store.create_entity(new("root"))
    await store.create_entity(new("child", parent="root"))
    with pytest.raises(DuplicateEntityError, match="'root' exists among the roots"):
        await store.create_entity(new("x", name="root"), strict=True)
    with pytest.raises(DuplicateEntityError, match="'child' exists under 'root'"):
        await store.create_entity(new("y", parent="root", name="child"), strict=True)
    created = await store.create_entity(new("z", parent="root"), strict=True)
    assert created[1]


async def test_a_taken_id_is_refused(store: SqliteStore) -> None:
    await store.create_entity(new("root"))
    with pytest.raises(DuplicateEntityError, match="id 'root' is taken"):
        await store.create_entity(new("root", name="another-name"))
    with pytest.raises(DuplicateEntityError, match="id 'root' is taken"):
        await store.create_entity(new("root", parent="root", name="child"))
    assert await store.children("root") == []
    assert await store.edges("root") == ([], [])


async def test_an_unknown_parent_is_refused(store: SqliteStore) -> None:
    with pytest.raises(EntityNotFoundError, match="'ghost'"):
        await store.create_entity(new("child", parent="ghost"))
    with pytest.raises(EntityNotFoundError):
        await store.get_entity("child")


async def test_names_are_unique_per_parent_and_among_roots(store: SqliteStore) -> None:
    await store.create_entity(new("a", name="same"))
    await store.create_entity(new("b", name="b"))
    _, created_under_a = await store.create_entity(new("a1", parent="a", name="same"))
    _, created_under_b = await store.create_entity(new("b1", parent="b", name="same"))
    _, another_root = await store.create_entity(new("c", name="same"))
    assert (created_under_a, created_under_b, another_root) == (True, True, False)
    assert (await store.find_entity(None, "same")).id == "a"  # type: ignore[union-attr]
    assert (await store.find_entity("a", "same")).id == "a1"  # type: ignore[union-attr]
    assert (await store.find_entity("b", "same")).id == "b1"  # type: ignore[union-attr]


async def test_an_empty_id_does_not_collide_with_the_roots(store: SqliteStore) -> None:
    await store.create_entity(new("", name="parent"))
    await store.create_entity(new("root", name="same"))
    record, created = await store.create_entity(new("child", parent="", name="same"))
    assert created
    assert record.parent_id == ""


async def test_get_entity_of_an_unknown_id(store: SqliteStore) -> None:
    with pytest.raises(EntityNotFoundError, match="'nope'"):
        await store.get_entity("nope")


async def test_children_oldest_first(store: SqliteStore) -> None:
    await store.create_entity(new("root"))
    for name, created_at in [("late", 9.0), ("early", 2.0), ("tie-1", 5.0), ("tie-2", 5.0)]:
        await store.create_entity(new(name, parent="root", created_at=created_at))
    await store.create_entity(new("grandchild", parent="early", created_at=1.0))
    assert [c.id for c in await store.children("root")] == ["early", "tie-1", "tie-2", "late"]
    assert [c.id for c in await store.children("early")] == ["grandchild"]
    assert await store.children("grandchild") == []
    assert await store.children("unknown") == []


async def test_count_children(store: SqliteStore) -> None:
    await store.create_entity(new("root"))
    assert await store.count_children("root") == {}
    for name in ("a", "b", "c", "d"):
        await store.create_entity(new(name, parent="root"))
    await store.claim("a", "o", now=1.0, expires=9.0, started=STARTED)
    await store.claim("b", "o", now=1.0, expires=9.0, started=STARTED)
    await store.finish("b", "o", COMPLETED, now=2.0, result=1)
    await store.cancel("c", now=2.0, envelope={"kind": "CANCELLED"})
    assert await store.count_children("root") == {
        IN_PROGRESS: 1,
        COMPLETED: 1,
        CANCELLED: 1,
        PENDING: 1,
    }
    assert await store.count_children("unknown") == {}


async def test_a_child_created_submitted_is_due_and_pending(store: SqliteStore) -> None:
    await store.create_entity(new("root"))
    assert await store.pending_children("root") == 0
    await store.create_entity(new("plain", parent="root"))
    submitted = attrs.evolve(new("sub", parent="root", created_at=3.0), submit=True)
    record, created = await store.create_entity(submitted)
    assert created
    assert (record.status, record.runnable_at) == (PENDING, 3.0)
    assert [r.id for r in await store.runnable(now=3.0)] == ["sub"]
    # Only the submitted one is pending (a never-submitted child is not).
    assert await store.pending_children("root") == 1
    await store.claim("sub", "o", now=4.0, expires=9.0, started=STARTED)
    assert await store.pending_children("root") == 1
    await store.finish("sub", "o", COMPLETED, now=5.0, result=1)
    assert await store.pending_children("root") == 0
    # Found again, it is returned as it is: not submitted again.
    again, created = await store.create_entity(submitted)
    assert not created
    assert (again.status, again.runnable_at) == (COMPLETED, None)
    assert await store.pending_children("unknown") == 0


@pytest.mark.parametrize(
    ("data", "error", "fragment"),
    [
        ({"s": {1, 2}}, TypeError, "set"),
        ({"f": math.nan}, ValueError, "nan at ['f'] is not a finite number"),
        ({"f": [1, math.inf]}, ValueError, "inf at ['f'][1] is not a finite number"),
        ({1: "int key"}, TypeError, "the key 1 is not a str but int"),
        ({"n": {1: "a", "1": "b"}}, TypeError, "the key 1 at ['n'] is not a str but int"),
        ({"t": [(1, 2)]}, TypeError, "a tuple at ['t'][0] would be stored as a list"),
        ({"s": "bad \ud800 text"}, ValueError, "the string at ['s'] contains a lone surrogate"),
        ({"\udc00": 1}, ValueError, "lone surrogate"),
        ({"o": object()}, TypeError, "object"),
    ],
)
async def test_data_that_is_not_json_is_refused(
    store: SqliteStore, data: dict[Any, Any], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match="entity data of 'x'") as caught:
        await store.create_entity(new("x", data=data))
    assert fragment in str(caught.value)
    assert await store.find_entity(None, "x") is None
    assert store.statistics().writes == 0


async def test_json_values_round_trip(store: SqliteStore) -> None:
    data = {
        "text": 'héllo ☃ \u0000 "quoted"',
        "nested": {"list": [1, 2.5, None, True, {"deep": []}]},
        "proxy": MappingProxyType({"k": "v"}),
        "big": 2**62,
    }
    record, _ = await store.create_entity(new("x", data=data))
    expected = {**data, "proxy": {"k": "v"}}
    assert record.data == expected
    assert (await store.get_entity("x")).data == expected


async def test_data_must_be_a_mapping(store: SqliteStore) -> None:
    with pytest.raises(TypeError, match="must be a mapping"):
        await store.create_entity(new("x", data=[1, 2]))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes a NewEntity"):
        await store.create_entity({"id": "x"})  # type: ignore[arg-type]


# -- update_data ---------------------------------------------------------------------------------


async def test_update_data_merges_top_level_keys(store: SqliteStore) -> None:
    await store.create_entity(new("x", data={"keep": 1, "replace": {"a": 1, "b": 2}}))
    data = await store.update_data("x", None, {"replace": {"a": 9}, "add": [1]}, now=5.0)
    assert data == {"keep": 1, "replace": {"a": 9}, "add": [1]}
    record = await store.get_entity("x")
    assert record.data == data
    assert record.modified_at == 5.0
    assert await store.update_data("x", None, {}, now=6.0) == data


async def test_update_data_is_fenced_when_an_owner_is_given(store: SqliteStore) -> None:
    await claimed(store, "x", "owner-a")
    assert await store.update_data("x", "owner-a", {"n": 1}, now=11.0) == {"n": 1}
    before = await snapshot(store, "x")
    with pytest.raises(LeaseLostError, match="'owner-b' no longer holds the lease of entity 'x'"):
        await store.update_data("x", "owner-b", {"n": 2}, now=12.0)
    assert await snapshot(store, "x") == before
    # Without an owner (an update from outside any run) it is not fenced.
    assert await store.update_data("x", None, {"n": 3}, now=13.0) == {"n": 3}


async def test_update_data_of_an_unknown_entity(store: SqliteStore) -> None:
    with pytest.raises(EntityNotFoundError):
        await store.update_data("nope", None, {"a": 1}, now=1.0)
    with pytest.raises(EntityNotFoundError):
        await store.update_data("nope", "owner", {"a": 1}, now=1.0)
    with pytest.raises(TypeError, match="data update of entity 'nope'"):
        await store.update_data("nope", None, {"a": {1, 2}}, now=1.0)


async def test_update_data_from_100_concurrent_callers_keeps_every_key(
    store: SqliteStore,
) -> None:
    await claimed(store, "x", "owner-a")

    async def update(index: int) -> None:
        owner = "owner-a" if index % 2 else None
        await store.update_data("x", owner, {f"k{index}": index}, now=20.0)

    async with trio.open_nursery() as nursery:
        for index in range(100):
            nursery.start_soon(update, index)
    assert (await store.get_entity("x")).data == {f"k{index}": index for index in range(100)}
    assert store.statistics().batches < 50


async def test_update_data_with_expect_is_a_compare_and_set(store: SqliteStore) -> None:
    await store.create_entity(new("x", data={"score": 10, "log": {"a": 1}}))
    data = await store.update_data(
        "x", None, {"score": 15, "log": {"a": 1, "b": 5}}, now=2.0, expect={"score": 10}
    )
    assert data == {"score": 15, "log": {"a": 1, "b": 5}}
    before = await snapshot(store, "x")
    with pytest.raises(DataConflictError, match="has score=15, not 10") as conflict:
        await store.update_data("x", None, {"score": 99}, now=3.0, expect={"score": 10})
    assert (conflict.value.key, conflict.value.expected, conflict.value.actual) == ("score", 10, 15)
    # 15.0 is not 15 (a JSON float is not an integer), nested values compare whole, and a
    # missing key matches None.
    for expect in ({"score": 15.0}, {"log": {"a": 1}}, {"absent": 0}):
        with pytest.raises(DataConflictError):
            await store.update_data("x", None, {"score": 99}, now=3.0, expect=expect)
    assert await snapshot(store, "x") == before
    data = await store.update_data(
        "x", None, {"n": 1}, now=4.0, expect={"log": {"b": 5, "a": 1}, "absent": None}
    )
    assert data["n"] == 1
    with pytest.raises(TypeError, match="data expected of entity 'x'"):
        await store.update_data("x", None, {}, now=5.0, expect={"a": {1}})


async def test_compare_and_set_from_concurrent_callers_loses_no_increment(
    store: SqliteStore,
) -> None:
    await store.create_entity(new("x", data={"count": 0}))

    async def increment() -> None:
        while True:
            count = (await store.get_entity("x")).data["count"]
            try:
                await store.update_data(
                    "x", None, {"count": count + 1}, now=1.0, expect={"count": count}
                )
                return
            except DataConflictError:
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for _ in range(30):
            nursery.start_soon(increment)
    assert (await store.get_entity("x")).data["count"] == 30


# -- claim, renew_leases, release ------------------------------------------------------------------


async def test_claim_a_pending_entity(store: SqliteStore) -> None:
    await store.create_entity(new("x"))
    record = await store.claim("x", "a", now=10.0, expires=40.0, started=STARTED)
    assert record is not None
    assert record.status is IN_PROGRESS
    assert record.attempt == 1
    assert (record.lease_owner, record.lease_expires) == ("a", 40.0)
    assert record.modified_at == 10.0
    assert record.last_entity_seq == 1
    assert record == await store.get_entity("x")
    [envelope] = await store.read_envelopes("x")
    assert (envelope.entity_id, envelope.entity_seq, envelope.ts, envelope.body) == (
        "x",
        1,
        10.0,
        STARTED,
    )


async def test_create_and_claim(store: SqliteStore) -> None:
    await claimed(store, "parent", "a")
    record, created, claimed_now = await store.create_and_claim(
        new("c1", parent="parent", data={"v": 1}), "a", now=10.0, expires=40.0, started=STARTED
    )
    assert (created, claimed_now) == (True, True)
    assert (record.status, record.attempt, record.lease_owner) == (IN_PROGRESS, 1, "a")
    assert record.data == {"v": 1}
    [edge], _ = await store.edges("parent")
    assert (edge.to_id, edge.type, edge.position) == ("c1", "Calls", 1)
    # The name exists and another owner holds it: found, not created, not claimed.
    await store.create_entity(new("c2", parent="parent"))
    assert await store.claim("c2", "x", now=10.0, expires=90.0, started=STARTED) is not None
    again, created, claimed_now = await store.create_and_claim(
        new("c2-again", parent="parent", name="c2"), "a", now=20.0, expires=50.0, started=STARTED
    )
    assert (again.id, again.lease_owner, created, claimed_now) == ("c2", "x", False, False)
    # After it completes, nobody claims it again.
    await store.finish("c1", "a", COMPLETED, now=30.0, result=3)
    done, created, claimed_now = await store.create_and_claim(
        new("c3", parent="parent", name="c1"), "a", now=60.0, expires=90.0, started=STARTED
    )
    assert (done.status, done.result, created, claimed_now) == (COMPLETED, 3, False, False)
    with pytest.raises(EntityNotFoundError):
        await store.create_and_claim(
            new("orphan", parent="nobody"), "a", now=1.0, expires=2.0, started=STARTED
        )


async def test_a_parent_run_that_lost_its_lease_starts_no_child(store: SqliteStore) -> None:
    """Creating, starting and connecting children are fenced by the parent's lease."""
    await claimed(store, "parent", "a")
    await store.create_entity(new("old", parent="parent"))
    before = await snapshot(store, "parent")
    with pytest.raises(LeaseLostError):
        await store.create_and_claim(
            new("kid", parent="parent"), "b", now=10.0, expires=40.0, started=STARTED
        )
    with pytest.raises(LeaseLostError):
        await store.create_entity(new("kid", parent="parent"), owner="b")
    with pytest.raises(LeaseLostError):
        await store.claim("old", "b", now=10.0, expires=40.0, started=STARTED, fence="parent")
    with pytest.raises(LeaseLostError):
        await store.add_edge("parent", "old", "Owns", now=10.0, owner="b")
    assert await store.find_entity("parent", "kid") is None
    assert (await store.get_entity("old")).lease_owner is None
    assert await snapshot(store, "parent") == before
    # The holder of the parent's lease may do all of it.
    _, created = await store.create_entity(new("kid", parent="parent"), owner="a")
    assert created
    assert await store.claim("old", "a", now=10.0, expires=40.0, started=STARTED, fence="parent")
    edge = await store.add_edge("parent", "old", "Owns", now=10.0, owner="a")
    assert edge.type == "Owns"


async def test_claim_is_refused_while_another_owner_holds_a_valid_lease(
    store: SqliteStore,
) -> None:
    await claimed(store, "x", "a", now=10.0, expires=40.0)
    before = await snapshot(store, "x")
    assert await store.claim("x", "b", now=39.9, expires=70.0, started=STARTED) is None
    assert await snapshot(store, "x") == before


async def test_claim_again_by_the_same_owner(store: SqliteStore) -> None:
    await claimed(store, "x", "a", now=10.0, expires=40.0)
    record = await store.claim("x", "a", now=20.0, expires=50.0, started=STARTED)
    assert record is not None
    assert (record.attempt, record.lease_expires, record.last_entity_seq) == (2, 50.0, 2)


@pytest.mark.parametrize("now", [40.0, 41.0])
async def test_an_expired_lease_can_be_claimed(store: SqliteStore, now: float) -> None:
    await claimed(store, "x", "a", now=10.0, expires=40.0)
    record = await store.claim("x", "b", now=now, expires=now + 30, started=STARTED)
    assert record is not None
    assert (record.lease_owner, record.attempt, record.status) == ("b", 2, IN_PROGRESS)
    with pytest.raises(LeaseLostError):
        await store.append_envelopes("a", [("x", now, {"late": True})])


async def test_steal_from_a_dead_owner(store: SqliteStore) -> None:
    await claimed(store, "x", "dead", now=10.0, expires=40.0)
    assert (
        await store.claim("x", "b", now=11.0, expires=41.0, started=STARTED, steal_from="c") is None
    )
    record = await store.claim("x", "b", now=11.0, expires=41.0, started=STARTED, steal_from="dead")
    assert record is not None
    assert record.lease_owner == "b"


@pytest.mark.parametrize("status", [COMPLETED, CANCELLED])
async def test_a_finished_entity_cannot_be_claimed(
    store: SqliteStore, status: EntityStatus
) -> None:
    await claimed(store, "x", "a")
    if status is COMPLETED:
        await store.finish("x", "a", COMPLETED, now=11.0, result="done")
    else:
        await store.cancel("x", now=11.0, envelope={"kind": "CANCELLED"})
    before = await snapshot(store, "x")
    assert await store.claim("x", "a", now=12.0, expires=99.0, started=STARTED) is None
    assert await store.claim("x", "b", now=12.0, expires=99.0, started=STARTED) is None
    assert await snapshot(store, "x") == before


async def test_a_failed_entity_is_claimed_again_and_its_error_cleared(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    await store.finish("x", "a", FAILED, now=11.0, error={"type": "KeyError", "message": "'k'"})
    failed = await store.get_entity("x")
    assert failed.error == {"type": "KeyError", "message": "'k'"}
    assert failed.lease_owner is None
    record = await store.claim("x", "b", now=12.0, expires=99.0, started=STARTED)
    assert record is not None
    assert (record.status, record.error, record.attempt) == (IN_PROGRESS, None, 2)


async def test_a_waiting_entity_stays_waiting_when_claimed(store: SqliteStore) -> None:
    await claimed(store, "x", "a", expires=40.0)
    await store.set_status("x", "a", WAITING, now=11.0)
    record = await store.claim("x", "b", now=50.0, expires=80.0, started=STARTED)
    assert record is not None
    assert (record.status, record.lease_owner, record.attempt) == (WAITING, "b", 2)


async def test_claim_an_unknown_entity(store: SqliteStore) -> None:
    with pytest.raises(EntityNotFoundError):
        await store.claim("nope", "a", now=1.0, expires=2.0, started=STARTED)
    with pytest.raises(TypeError, match="started envelope of entity 'nope'"):
        await store.claim("nope", "a", now=1.0, expires=2.0, started={"x": {1}})


async def test_renew_leases_extends_only_the_owners(store: SqliteStore) -> None:
    await claimed(store, "x", "a", expires=40.0)
    await claimed(store, "y", "a", expires=45.0)
    await claimed(store, "z", "b", expires=40.0)
    await store.create_entity(new("free"))
    assert await store.renew_leases("a", expires=100.0) == 2
    assert await store.renew_leases("nobody", expires=100.0) == 0
    leases = {r.id: (r.lease_owner, r.lease_expires) for r in await store.active()}
    assert leases == {"x": ("a", 100.0), "y": ("a", 100.0), "z": ("b", 40.0)}
    assert (await store.get_entity("free")).lease_expires is None


async def test_release_gives_up_the_lease_and_keeps_the_status(store: SqliteStore) -> None:
    await claimed(store, "x", "a", expires=40.0)
    await store.set_status("x", "a", WAITING, now=11.0)
    assert not await store.release("x", "b")
    assert (await store.get_entity("x")).lease_owner == "a"
    assert await store.release("x", "a")
    record = await store.get_entity("x")
    assert (record.status, record.lease_owner, record.lease_expires) == (WAITING, None, None)
    assert not await store.release("x", "a")
    assert not await store.release("unknown", "a")
    assert [r.id for r in await store.active()] == ["x"]
    claimed_again = await store.claim("x", "b", now=12.0, expires=40.0, started=STARTED)
    assert claimed_again is not None


# -- fencing -------------------------------------------------------------------------------------

FENCED: dict[str, Callable[[SqliteStore, str], Awaitable[object]]] = {
    "update_data": lambda s, o: s.update_data("x", o, {"k": "v"}, now=20.0),
    "set_status": lambda s, o: s.set_status("x", o, WAITING, now=20.0, envelope={"e": 1}),
    "finish-completed": lambda s, o: s.finish(
        "x", o, COMPLETED, now=20.0, result=1, envelopes=[{"e": 1}]
    ),
    "finish-failed": lambda s, o: s.finish(
        "x", o, FAILED, now=20.0, error={"type": "E", "message": "m"}
    ),
    "append_envelopes": lambda s, o: s.append_envelopes(o, [("x", 20.0, {"e": 1})]),
    "begin_wait": lambda s, o: s.begin_wait(
        "x", o, 2, WaitKind.MESSAGE, now=20.0, envelope={"e": 1}
    ),
    "take_message": lambda s, o: s.take_message("x", o, 1, now=20.0),
    "end_wait": lambda s, o: s.end_wait("x", o, 1, WaitState.TIMED_OUT, now=20.0),
}


async def prepare_fenced(store: SqliteStore) -> None:
    await claimed(store, "x", "a", expires=40.0)
    await store.begin_wait("x", "a", 1, WaitKind.MESSAGE, now=11.0)
    await store.set_status("x", "a", IN_PROGRESS, now=11.0)
    await store.send_message("x", "hello", {"n": 1}, now=12.0)


@pytest.mark.parametrize("method", list(FENCED))
async def test_fenced_methods_refuse_another_owner(store: SqliteStore, method: str) -> None:
    await prepare_fenced(store)
    before = await snapshot(store, "x")
    with pytest.raises(LeaseLostError, match="'b' no longer holds the lease of entity 'x'"):
        await FENCED[method](store, "b")
    assert await snapshot(store, "x") == before
    await FENCED[method](store, "a")  # the owner may
    assert await snapshot(store, "x") != before


@pytest.mark.parametrize("method", list(FENCED))
async def test_fenced_methods_refuse_after_a_cancel(store: SqliteStore, method: str) -> None:
    await prepare_fenced(store)
    await store.cancel("x", now=15.0, envelope={"kind": "CANCELLED"})
    before = await snapshot(store, "x")
    with pytest.raises(LeaseLostError, match="nobody holds it"):
        await FENCED[method](store, "a")
    assert await snapshot(store, "x") == before


@pytest.mark.parametrize("method", list(FENCED))
async def test_fenced_methods_refuse_after_a_takeover(store: SqliteStore, method: str) -> None:
    await prepare_fenced(store)
    assert await store.claim("x", "b", now=50.0, expires=90.0, started=STARTED) is not None
    before = await snapshot(store, "x")
    with pytest.raises(LeaseLostError, match="'b' holds it"):
        await FENCED[method](store, "a")
    assert await snapshot(store, "x") == before


@pytest.mark.parametrize("method", list(FENCED))
async def test_fenced_methods_on_an_unknown_entity(store: SqliteStore, method: str) -> None:
    with pytest.raises(EntityNotFoundError, match="'x'"):
        await FENCED[method](store, "a")


# -- set_status and finish -------------------------------------------------------------------------


async def test_set_status_between_in_progress_and_waiting(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    await store.set_status("x", "a", WAITING, now=11.0, envelope={"kind": "WAITING"})
    record = await store.get_entity("x")
    assert (record.status, record.modified_at, record.last_entity_seq) == (WAITING, 11.0, 2)
    await store.set_status("x", "a", IN_PROGRESS, now=12.0)
    record = await store.get_entity("x")
    assert (record.status, record.modified_at, record.last_entity_seq) == (IN_PROGRESS, 12.0, 2)
    assert [e.body for e in await store.read_envelopes("x")] == [STARTED, {"kind": "WAITING"}]


@pytest.mark.parametrize("status", [PENDING, COMPLETED, FAILED, CANCELLED])
async def test_set_status_refuses_other_statuses(store: SqliteStore, status: EntityStatus) -> None:
    await claimed(store, "x", "a")
    with pytest.raises(ValueError, match="IN_PROGRESS or WAITING"):
        await store.set_status("x", "a", status, now=11.0)
    assert (await store.get_entity("x")).status is IN_PROGRESS


async def test_finish_completed(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    await store.finish(
        "x",
        "a",
        COMPLETED,
        now=12.0,
        result={"answer": 42},
        envelopes=[{"kind": "INTERMEDIATE"}, {"kind": "FINAL"}],
    )
    record = await store.get_entity("x")
    assert record.status is COMPLETED
    assert record.result == {"answer": 42}
    assert record.error is None
    assert (record.lease_owner, record.lease_expires) == (None, None)
    assert (record.modified_at, record.last_entity_seq) == (12.0, 3)
    envelopes = await store.read_envelopes("x")
    assert [(e.entity_seq, e.ts, e.body["kind"]) for e in envelopes] == [
        (1, 10.0, "STARTED"),
        (2, 12.0, "INTERMEDIATE"),
        (3, 12.0, "FINAL"),
    ]
    assert await store.active() == []


async def test_finish_completed_with_a_none_result(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    await store.finish("x", "a", COMPLETED, now=12.0)
    record = await store.get_entity("x")
    assert (record.status, record.result) == (COMPLETED, None)


async def test_finish_failed(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    error = {"type": "ValueError", "message": "bad"}
    await store.finish("x", "a", FAILED, now=12.0, error=error, envelopes=[{"kind": "ERROR"}])
    record = await store.get_entity("x")
    assert (record.status, record.error, record.result, record.lease_owner) == (
        FAILED,
        error,
        None,
        None,
    )
    assert record.last_entity_seq == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"status": IN_PROGRESS}, ValueError, "COMPLETED or FAILED"),
        ({"status": CANCELLED}, ValueError, "use cancel"),
        ({"status": COMPLETED, "error": {"type": "E", "message": "m"}}, ValueError, "an error"),
        ({"status": FAILED, "result": 1}, ValueError, "a result"),
        ({"status": FAILED, "error": {"type": 1}}, TypeError, "map str to str"),
        ({"status": COMPLETED, "result": {1, 2}}, TypeError, "the result of entity 'x'"),
        ({"status": COMPLETED, "envelopes": [[1]]}, TypeError, "an envelope of entity 'x'"),
    ],
)
async def test_finish_refuses_bad_arguments(
    store: SqliteStore, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    await claimed(store, "x", "a")
    before = await snapshot(store, "x")
    with pytest.raises(error, match=match):
        await store.finish("x", "a", now=12.0, **kwargs)
    assert await snapshot(store, "x") == before


# -- cancel and active --------------------------------------------------------------------------


async def test_cancel_a_subtree(store: SqliteStore) -> None:
    await claimed(store, "root", "a")
    await store.create_entity(new("done", parent="root", created_at=2.0))
    await store.claim("done", "a", now=10.0, expires=99.0, started=STARTED)
    await store.finish("done", "a", COMPLETED, now=11.0, result=1)
    await store.create_entity(new("running", parent="root", created_at=3.0))
    await store.claim("running", "b", now=10.0, expires=99.0, started=STARTED)
    await store.create_entity(new("pending", parent="root", created_at=4.0))
    await store.create_entity(new("grandchild", parent="running", created_at=5.0))
    await store.create_entity(new("under-done", parent="done", created_at=6.0))
    await store.create_entity(new("elsewhere"))
    envelope = {"kind": "CANCELLED", "reason": "user"}

    cancelled = await store.cancel("root", now=20.0, envelope=envelope)

    assert cancelled == ["root", "running", "pending", "grandchild", "under-done"]
    for entity_id in cancelled:
        record = await store.get_entity(entity_id)
        assert record.status is CANCELLED
        assert (record.lease_owner, record.lease_expires, record.modified_at) == (None, None, 20.0)
        last = (await store.read_envelopes(entity_id, subtree=False))[-1]
        assert (last.body, last.ts, last.entity_seq) == (envelope, 20.0, record.last_entity_seq)
    done = await store.get_entity("done")
    assert (done.status, done.result, done.modified_at, done.last_entity_seq) == (
        COMPLETED,
        1,
        11.0,
        1,
    )
    assert (await store.get_entity("elsewhere")).status is PENDING
    assert await store.active() == []
    assert await store.cancel("root", now=21.0, envelope=envelope) == []
    assert await store.cancel("done", now=21.0, envelope=envelope) == []
    assert (await store.get_entity("done")).last_entity_seq == 1


async def test_cancel_a_leaf_leaves_its_parent(store: SqliteStore) -> None:
    await claimed(store, "root", "a")
    await store.create_entity(new("child", parent="root"))
    assert await store.cancel("child", now=20.0, envelope={"kind": "CANCELLED"}) == ["child"]
    assert (await store.get_entity("root")).status is IN_PROGRESS


async def test_cancel_an_unknown_entity(store: SqliteStore) -> None:
    with pytest.raises(EntityNotFoundError):
        await store.cancel("nope", now=1.0, envelope={})


async def test_active_lists_the_topmost_running_entities(store: SqliteStore) -> None:
    await claimed(store, "top", "a", expires=40.0)
    await claimed(store, "nested", "a", parent="top")
    await store.create_entity(new("pending-parent", created_at=2.0))
    await claimed(store, "under-pending", "b", parent="pending-parent", expires=15.0)
    await claimed(store, "failed-parent", "a")
    await store.finish("failed-parent", "a", FAILED, now=12.0)
    await claimed(store, "under-failed", "a", parent="failed-parent")
    await store.release("under-failed", "a")
    await claimed(store, "waiting", "c")
    await store.set_status("waiting", "c", WAITING, now=13.0)
    await claimed(store, "waiting-child", "c", parent="waiting")
    await claimed(store, "completed", "a")
    await store.finish("completed", "a", COMPLETED, now=14.0)
    await store.create_entity(new("idle"))

    active = await store.active()

    assert [r.id for r in active] == ["top", "under-pending", "under-failed", "waiting"]
    assert {r.id: r.lease_owner for r in active}["under-failed"] is None
    assert {r.id: r.status for r in active}["waiting"] is WAITING


# -- envelopes -----------------------------------------------------------------------------------


async def test_envelope_sequence_numbers(store: SqliteStore) -> None:
    assert await store.last_seq() == 0
    await claimed(store, "a", "o")
    await claimed(store, "b", "o")
    seqs = await store.append_envelopes(
        "o", [("a", 11.0, {"n": 1}), ("b", 11.0, {"n": 2}), ("a", 12.0, {"n": 3})]
    )
    assert seqs == [3, 4, 5]
    assert await store.last_seq() == 5
    envelopes = await store.read_envelopes("a", subtree=False)
    assert [(e.seq, e.entity_seq, e.ts, e.body) for e in envelopes] == [
        (1, 1, 10.0, STARTED),
        (3, 2, 11.0, {"n": 1}),
        (5, 3, 12.0, {"n": 3}),
    ]
    assert [(e.seq, e.entity_seq) for e in await store.read_envelopes("b")] == [(2, 1), (4, 2)]
    assert (await store.get_entity("a")).last_entity_seq == 3
    assert await store.append_envelopes("o", []) == []


async def test_read_envelopes_of_a_subtree_in_seq_order(store: SqliteStore) -> None:
    await claimed(store, "root", "o")
    await claimed(store, "child", "o", parent="root")
    await claimed(store, "grandchild", "o", parent="child")
    await claimed(store, "other", "o")
    await store.append_envelopes(
        "o",
        [
            ("grandchild", 11.0, {"n": 1}),
            ("other", 11.0, {"n": 2}),
            ("root", 11.0, {"n": 3}),
            ("child", 11.0, {"n": 4}),
        ],
    )
    subtree = await store.read_envelopes("root")
    assert [e.entity_id for e in subtree] == [
        "root",
        "child",
        "grandchild",
        "grandchild",
        "root",
        "child",
    ]
    assert [e.seq for e in subtree] == sorted(e.seq for e in subtree)
    assert [e.entity_id for e in await store.read_envelopes("child")] == [
        "child",
        "grandchild",
        "grandchild",
        "child",
    ]
    assert [e.entity_id for e in await store.read_envelopes("root", subtree=False)] == [
        "root",
        "root",
    ]


@pytest.mark.parametrize("walk", ["up", "down", "up, then down"])
async def test_read_envelopes_of_a_subtree_walking_up_or_down(
    store: SqliteStore, walk: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subtree's envelopes near the newest are found by walking up from the entities that
    stored them, a span of seqs at a time, and once past a span with few found, by walking
    down from the subtree's root: the same answers."""
    span = {"up": 10**9, "down": -1, "up, then down": 20}[walk]
    monkeypatch.setattr(_store, "_UPWARD_SPAN", span)
    rng = random.Random(7)
    parents: dict[str, str | None] = {}
    for number in range(40):
        entity_id = f"e{number}"
        parent = rng.choice([None, None, *parents]) if parents else None
        parents[entity_id] = parent
        await claimed(store, entity_id, "o", parent=parent)
    order = [rng.choice(list(parents)) for _ in range(300)]
    await store.append_envelopes("o", [(owner, 11.0, {"n": n}) for n, owner in enumerate(order)])

    def in_subtree(entity_id: str, root: str) -> bool:
        node: str | None = entity_id
        while node is not None:
            if node == root:
                return True
            node = parents[node]
        return False

    everything = await store.read_envelopes("e0", limit=10_000, subtree=False)
    assert everything
    highest = await store.last_seq()
    for root in ["e0", "e1", "e5", *rng.sample(list(parents), 5)]:
        for after in [0, 1, highest // 2, highest - 7, highest]:
            for limit in [3, 1000]:
                got = await store.read_envelopes(root, after_seq=after, limit=limit)
                assert all(e.seq > after for e in got)
                assert [e.seq for e in got] == sorted(e.seq for e in got)
                assert all(in_subtree(e.entity_id, root) for e in got)
                wanted = await store.read_envelopes(root, after_seq=after, limit=10_000)
                assert [e.seq for e in got] == [e.seq for e in wanted][:limit]
        # every envelope of the subtree, counted from the entities' own
        own = [
            e.seq
            for entity_id in parents
            if in_subtree(entity_id, root)
            for e in await store.read_envelopes(entity_id, limit=10_000, subtree=False)
        ]
        assert [e.seq for e in await store.read_envelopes(root, limit=10_000)] == sorted(own)


async def test_read_envelopes_pages_with_after_seq_and_limit(store: SqliteStore) -> None:
    await claimed(store, "root", "o")
    await claimed(store, "child", "o", parent="root")
    await store.append_envelopes("o", [("child", float(n), {"n": n}) for n in range(20)])
    everything = await store.read_envelopes("root", limit=1000)
    assert len(everything) == 22
    pages: list[list[int]] = []
    cursor = 0
    while page := await store.read_envelopes("root", after_seq=cursor, limit=5):
        pages.append([e.seq for e in page])
        cursor = page[-1].seq
    assert [len(page) for page in pages] == [5, 5, 5, 5, 2]
    assert [seq for page in pages for seq in page] == [e.seq for e in everything]
    assert await store.read_envelopes("root", limit=0) == []
    assert await store.read_envelopes("root", after_seq=await store.last_seq()) == []
    tail = await store.read_envelopes("child", after_seq=everything[-3].seq, subtree=False)
    assert [e.body["n"] for e in tail] == [18, 19]


async def test_read_tail_reads_the_entity_the_highest_seq_and_the_envelopes(
    store: SqliteStore,
) -> None:
    await claimed(store, "root", "o")
    await claimed(store, "child", "o", parent="root")
    await claimed(store, "other", "o")
    await store.append_envelopes("o", [("child", 1.0, {"n": n}) for n in range(5)])
    await store.append_envelopes("o", [("other", 1.0, {"n": 9})])
    everything = await store.read_envelopes("root")
    tail = await store.read_tail("root", after_seq=everything[1].seq, limit=2)
    assert tail.record == await store.get_entity("root")
    assert tail.highest == await store.last_seq() > everything[-1].seq  # "other" stored last
    assert [row.stored() for row in tail.envelopes] == everything[2:4]
    assert [row.envelope_type() for row in tail.envelopes] == ["", ""]  # bodies without one
    own = await store.read_tail("child", after_seq=0, subtree=False)
    assert [row.stored() for row in own.envelopes] == await store.read_envelopes(
        "child", subtree=False
    )
    with pytest.raises(EntityNotFoundError):
        await store.read_tail("nope", after_seq=0)
    with pytest.raises(ValueError, match="limit"):
        await store.read_tail("root", after_seq=0, limit=-1)


async def test_read_envelopes_refuses_bad_arguments(store: SqliteStore) -> None:
    with pytest.raises(EntityNotFoundError):
        await store.read_envelopes("nope")
    with pytest.raises(EntityNotFoundError):
        await store.read_envelopes("nope", subtree=False)
    await store.create_entity(new("x"))
    with pytest.raises(ValueError, match="limit must be an int >= 0"):
        await store.read_envelopes("x", limit=-1)


async def test_append_envelopes_is_fenced_per_entity(store: SqliteStore) -> None:
    await claimed(store, "mine", "a")
    await claimed(store, "theirs", "b")
    before = await snapshot(store, "mine", "theirs")
    with pytest.raises(LeaseLostError, match="entity 'theirs'"):
        await store.append_envelopes(
            "a", [("mine", 11.0, {"n": 1}), ("theirs", 11.0, {"n": 2}), ("mine", 11.0, {})]
        )
    with pytest.raises(EntityNotFoundError, match="'ghost'"):
        await store.append_envelopes("a", [("mine", 11.0, {"n": 1}), ("ghost", 11.0, {})])
    assert await snapshot(store, "mine", "theirs") == before
    assert await store.last_seq() == 2


async def test_append_envelopes_refuses_bad_items(store: SqliteStore) -> None:
    with pytest.raises(TypeError, match="items are"):
        await store.append_envelopes("a", [("x", 1.0)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="an envelope of entity 'x'"):
        await store.append_envelopes("a", [("x", 1.0, {"nan": math.nan})])


# -- edges ---------------------------------------------------------------------------------------


async def test_add_edge_numbers_positions_and_is_idempotent(store: SqliteStore) -> None:
    for name in ("a", "b", "c", "d"):
        await store.create_entity(new(name))
    first = await store.add_edge("a", "b", "Uses", now=5.0, data={"w": 1})
    assert first == EdgeRecord(
        id=first.id, from_id="a", to_id="b", type="Uses", position=1, data={"w": 1}, created_at=5.0
    )
    second = await store.add_edge("a", "c", "Uses", now=6.0)
    again = await store.add_edge("a", "b", "Uses", now=7.0, data={"w": 2})
    other_type = await store.add_edge("a", "b", "Watches", now=8.0)
    to_itself = await store.add_edge("a", "a", "Uses", now=9.0)
    assert again == first
    assert (second.position, second.data, other_type.position, to_itself.position) == (
        2,
        {},
        1,
        3,
    )
    outgoing, incoming = await store.edges("a")
    assert [(e.to_id, e.type, e.position) for e in outgoing] == [
        ("b", "Uses", 1),
        ("c", "Uses", 2),
        ("a", "Uses", 3),
        ("b", "Watches", 1),
    ]
    assert incoming == [to_itself]
    await store.add_edge("d", "b", "Uses", now=10.0)
    _, into_b = await store.edges("b")
    assert [(e.from_id, e.type, e.position) for e in into_b] == [
        ("a", "Uses", 1),
        ("d", "Uses", 1),
        ("a", "Watches", 1),
    ]
    assert await store.edges("unknown") == ([], [])


async def test_add_edge_needs_both_ends(store: SqliteStore) -> None:
    await store.create_entity(new("a"))
    with pytest.raises(EntityNotFoundError, match="'ghost'"):
        await store.add_edge("a", "ghost", "Uses", now=1.0)
    with pytest.raises(EntityNotFoundError, match="'ghost'"):
        await store.add_edge("ghost", "a", "Uses", now=1.0)
    with pytest.raises(TypeError, match="data of edge"):
        await store.add_edge("a", "a", "Uses", now=1.0, data={"x": object()})
    assert await store.edges("a") == ([], [])


# -- messages and waits ----------------------------------------------------------------------------


async def test_send_message_and_list_messages(store: SqliteStore) -> None:
    await store.create_entity(new("x"))
    first = await store.send_message("x", "approve", {"by": "ann"}, now=5.0)
    assert first == MessageRecord(
        id=first.id,
        entity_id="x",
        message="approve",
        data={"by": "ann"},
        sent_at=5.0,
        consumed_by=None,
    )
    second = await store.send_message("x", "note", None, now=6.0)
    assert await store.messages("x") == [first, second]
    assert await store.messages("unknown") == []


@pytest.mark.parametrize("status", [COMPLETED, CANCELLED])
async def test_a_finished_entity_takes_no_message(store: SqliteStore, status: EntityStatus) -> None:
    await claimed(store, "x", "a")
    if status is COMPLETED:
        await store.finish("x", "a", COMPLETED, now=11.0)
    else:
        await store.cancel("x", now=11.0, envelope={})
    with pytest.raises(EntityNotWaitingError, match=f"is {status.value}"):
        await store.send_message("x", "hello", 1, now=12.0)
    assert await store.messages("x") == []


async def test_a_failed_or_pending_entity_takes_messages(store: SqliteStore) -> None:
    await store.create_entity(new("pending"))
    await claimed(store, "failed", "a")
    await store.finish("failed", "a", FAILED, now=11.0)
    for entity_id in ("pending", "failed"):
        await store.send_message(entity_id, "hello", 1, now=12.0)
        assert len(await store.messages(entity_id)) == 1


async def test_send_message_refuses_bad_arguments(store: SqliteStore) -> None:
    with pytest.raises(EntityNotFoundError):
        await store.send_message("nope", "hello", None, now=1.0)
    with pytest.raises(TypeError, match="message must be a str"):
        await store.send_message("nope", 5, None, now=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="the data of message 'hello'"):
        await store.send_message("nope", "hello", {1, 2}, now=1.0)


async def test_begin_a_message_wait(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    wait = await store.begin_wait(
        "x",
        "a",
        1,
        WaitKind.MESSAGE,
        now=11.0,
        prompt="approve?",
        data={"options": ["yes", "no"]},
        deadline=50.0,
        envelope={"kind": "WAITING"},
    )
    assert (wait.entity_id, wait.index, wait.kind, wait.state) == (
        "x",
        1,
        WaitKind.MESSAGE,
        WaitState.WAITING,
    )
    assert (wait.prompt, wait.data, wait.deadline, wait.message, wait.created_at) == (
        "approve?",
        {"options": ["yes", "no"]},
        50.0,
        None,
        11.0,
    )
    record = await store.get_entity("x")
    assert (record.status, record.modified_at, record.last_entity_seq) == (WAITING, 11.0, 2)
    assert await store.get_wait("x", 1) == wait
    assert await store.get_wait("x", 2) is None
    assert await store.get_wait("unknown", 1) is None


async def test_begin_an_existing_wait_returns_it_unchanged(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    wait = await store.begin_wait(
        "x", "a", 1, WaitKind.MESSAGE, now=11.0, prompt="first", envelope={"kind": "WAITING"}
    )
    await store.send_message("x", "go", 1, now=12.0)
    await store.take_message("x", "a", 1, now=13.0)
    # A re-run (another attempt) reaches wait 1 again.
    await store.release("x", "a")
    await store.claim("x", "b", now=14.0, expires=99.0, started=STARTED)
    before = await snapshot(store, "x")
    again = await store.begin_wait(
        "x", "b", 1, WaitKind.TIMER, now=15.0, prompt="second", envelope={"kind": "WAITING"}
    )
    assert await snapshot(store, "x") == before
    assert (again.prompt, again.kind, again.state, again.created_at) == (
        "first",
        WaitKind.MESSAGE,
        WaitState.ANSWERED,
        11.0,
    )
    assert again.message is not None
    assert again.message.message == "go"
    assert wait.state is WaitState.WAITING


async def test_a_timer_wait_keeps_the_status(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    wait = await store.begin_wait(
        "x", "a", 1, WaitKind.TIMER, now=11.0, deadline=20.0, envelope={"kind": "WAITING"}
    )
    assert (wait.kind, wait.state, wait.deadline) == (WaitKind.TIMER, WaitState.WAITING, 20.0)
    record = await store.get_entity("x")
    assert (record.status, record.last_entity_seq) == (IN_PROGRESS, 1)
    await store.send_message("x", "early", 1, now=12.0)
    assert await store.take_message("x", "a", 1, now=13.0) == wait
    ended = await store.end_wait("x", "a", 1, WaitState.ELAPSED, now=20.0)
    assert ended.state is WaitState.ELAPSED
    assert [m.consumed_by for m in await store.messages("x")] == [None]


async def test_begin_wait_refuses_bad_arguments(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    for index in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="wait index is an int >= 1"):
            await store.begin_wait("x", "a", index, WaitKind.TIMER, now=11.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="kind must be a WaitKind"):
        await store.begin_wait("x", "a", 1, "message", now=11.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="the data of wait 1 of entity 'x'"):
        await store.begin_wait("x", "a", 1, WaitKind.TIMER, now=11.0, data={1, 2})
    assert await store.get_wait("x", 1) is None


async def test_take_message_without_a_message(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    wait = await store.begin_wait("x", "a", 1, WaitKind.MESSAGE, now=11.0)
    assert await store.take_message("x", "a", 1, now=12.0) == wait
    assert (await store.get_entity("x")).status is WAITING


async def test_take_message_in_order_and_idempotently(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    first = await store.send_message("x", "one", 1, now=5.0)
    second = await store.send_message("x", "two", 2, now=6.0)
    await store.begin_wait("x", "a", 1, WaitKind.MESSAGE, now=11.0)

    taken = await store.take_message("x", "a", 1, now=12.0)

    assert taken.state is WaitState.ANSWERED
    assert taken.message == MessageRecord(
        id=first.id, entity_id="x", message="one", data=1, sent_at=5.0, consumed_by=1
    )
    record = await store.get_entity("x")
    assert (record.status, record.modified_at) == (IN_PROGRESS, 12.0)
    assert await store.take_message("x", "a", 1, now=13.0) == taken
    assert [m.consumed_by for m in await store.messages("x")] == [1, None]
    assert await store.get_wait("x", 1) == taken

    await store.begin_wait("x", "a", 2, WaitKind.MESSAGE, now=14.0)
    second_taken = await store.take_message("x", "a", 2, now=15.0)
    assert second_taken.message is not None
    assert (second_taken.message.id, second_taken.message.consumed_by) == (second.id, 2)
    assert [m.consumed_by for m in await store.messages("x")] == [1, 2]


async def test_take_message_of_an_unknown_wait(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    with pytest.raises(EntityNotFoundError, match="entity 'x' has no wait 3"):
        await store.take_message("x", "a", 3, now=12.0)
    with pytest.raises(EntityNotFoundError, match="entity 'x' has no wait 3"):
        await store.end_wait("x", "a", 3, WaitState.TIMED_OUT, now=12.0)


async def test_a_message_after_a_timeout_is_kept_for_the_next_wait(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    await store.begin_wait("x", "a", 1, WaitKind.MESSAGE, now=11.0, deadline=20.0)

    timed_out = await store.end_wait("x", "a", 1, WaitState.TIMED_OUT, now=20.0)

    assert timed_out.state is WaitState.TIMED_OUT
    assert timed_out.message is None
    assert (await store.get_entity("x")).status is IN_PROGRESS
    late = await store.send_message("x", "late", "yes", now=21.0)
    assert await store.take_message("x", "a", 1, now=22.0) == timed_out
    assert [m.consumed_by for m in await store.messages("x")] == [None]
    await store.begin_wait("x", "a", 2, WaitKind.MESSAGE, now=23.0)
    answered = await store.take_message("x", "a", 2, now=24.0)
    assert answered.message is not None
    assert answered.message.id == late.id


async def test_end_wait_leaves_an_answered_wait_unchanged(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    await store.begin_wait("x", "a", 1, WaitKind.MESSAGE, now=11.0)
    await store.send_message("x", "first", 1, now=12.0)
    answered = await store.take_message("x", "a", 1, now=13.0)
    assert await store.end_wait("x", "a", 1, WaitState.TIMED_OUT, now=14.0) == answered
    timed_out = await store.end_wait("x", "a", 1, WaitState.ELAPSED, now=14.0)
    assert timed_out.state is WaitState.ANSWERED


@pytest.mark.parametrize("state", [WaitState.WAITING, WaitState.ANSWERED])
async def test_end_wait_refuses_other_states(store: SqliteStore, state: WaitState) -> None:
    await claimed(store, "x", "a")
    await store.begin_wait("x", "a", 1, WaitKind.MESSAGE, now=11.0)
    with pytest.raises(ValueError, match="TIMED_OUT or ELAPSED"):
        await store.end_wait("x", "a", 1, state, now=12.0)
    assert (await store.get_wait("x", 1)).state is WaitState.WAITING  # type: ignore[union-attr]


async def test_nesting_deeper_than_the_limit_is_refused_and_the_limit_itself_reads_back(
    store: SqliteStore,
) -> None:
    def nested(depth: int) -> Any:
        value: Any = "leaf"
        for level in range(depth):
            value = {"k": value} if level % 2 else [value]
        return value

    record, _ = await store.create_entity(new("ok", data={"v": nested(MAX_JSON_DEPTH - 1)}))
    assert (await store.get_entity(record.id)).data == {"v": nested(MAX_JSON_DEPTH - 1)}
    for depth in (MAX_JSON_DEPTH, 400):
        with pytest.raises(ValueError, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
            await store.create_entity(new(f"deep{depth}", data={"v": nested(depth)}))
    # Every kind of stored JSON is checked the same way: results, envelopes, messages...
    await store.claim("ok", "o", now=1.0, expires=99.0, started={"kind": "STARTED"})
    with pytest.raises(ValueError, match="nested deeper"):
        await store.append_envelopes("o", [("ok", 1.0, {"value": nested(400)})])
    with pytest.raises(TypeError, match="tuple"):
        await store.finish("ok", "o", COMPLETED, now=2.0, result={"pair": (1, 2)})
    with pytest.raises(TypeError, match="the key 1 is not a str"):
        await store.finish("ok", "o", COMPLETED, now=2.0, result={1: "a", "1": "b"})
    with pytest.raises(ValueError, match="lone surrogate"):
        await store.send_message("ok", "m", {"text": "\ud800"}, now=2.0)
    assert [m.id for m in await store.messages("ok")] == []
    assert (await store.get_entity("ok")).status is IN_PROGRESS


async def test_an_id_that_is_not_valid_unicode_names_no_entity(store: SqliteStore) -> None:
    bad = "id-\ud800"
    with pytest.raises(EntityNotFoundError):
        await store.get_entity(bad)
    with pytest.raises(EntityNotFoundError):
        await store.cancel(bad, now=1.0, envelope={"kind": "CANCELLED"})
    with pytest.raises(EntityNotFoundError):
        await store.send_message(bad, "m", None, now=1.0)
    with pytest.raises(EntityNotFoundError):
        await store.read_envelopes(bad)
    with pytest.raises(EntityNotFoundError):
        await store.submit(bad, now=1.0)
    assert await store.find_entity(None, bad) is None
    assert await store.children(bad) == []
    assert await store.count_children(bad) == {}
