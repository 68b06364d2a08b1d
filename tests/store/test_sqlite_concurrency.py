"""SqliteStore under concurrency: group commit, failed batches, cancellation, two stores on one
file, and random interleavings checked against a model."""

from __future__ import annotations

import contextlib
import copy
import os
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway._errors import EntityNotFoundError, LeaseLostError, StoreError
from sluiceway.store import EntityStatus, SqliteStore
from tests.store.helpers import assert_integrity, claimed, new, raw_query

STARTED = {"kind": "STARTED"}


@contextlib.contextmanager
def write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold the database's write lock from another connection (as another process would)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")


async def assert_contiguous(store: SqliteStore, entity_id: str) -> list[int]:
    """The entity's envelopes are numbered 1, 2, 3... and their seqs increase; returns them."""
    envelopes = await store.read_envelopes(entity_id, subtree=False, limit=100_000)
    assert [e.entity_seq for e in envelopes] == list(range(1, len(envelopes) + 1))
    seqs = [e.seq for e in envelopes]
    assert seqs == sorted(set(seqs))
    assert (await store.get_entity(entity_id)).last_entity_seq == len(envelopes)
    return seqs


# -- group commit --------------------------------------------------------------------------------


async def test_concurrent_appends_are_grouped_into_few_transactions(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    results: dict[int, list[int]] = {}

    async def append(index: int) -> None:
        results[index] = await store.append_envelopes("a", [("x", 11.0, {"n": index})])

    before = store.statistics()
    async with trio.open_nursery() as nursery:
        for index in range(500):
            nursery.start_soon(append, index)
    stats = store.statistics()

    assert stats.writes - before.writes == 500
    assert stats.batches - before.batches <= 10
    assert stats.largest_batch >= 50
    seqs = await assert_contiguous(store, "x")
    assert len(seqs) == 501
    assert sorted(seq for [seq] in results.values()) == seqs[1:]
    bodies = {e.seq: e.body["n"] for e in (await store.read_envelopes("x", limit=1000))[1:]}
    assert {index: bodies[seq] for index, [seq] in results.items()} == {i: i for i in range(500)}


async def test_a_batch_holds_at_most_max_batch_writes(db_path: Path) -> None:
    async with SqliteStore(db_path, max_batch=7) as store:
        await claimed(store, "x", "a")
        async with trio.open_nursery() as nursery:
            for index in range(100):
                nursery.start_soon(store.append_envelopes, "a", [("x", 1.0, {"n": index})])
        stats = store.statistics()
        assert stats.largest_batch == 7
        assert stats.batches >= 100 // 7
        await assert_contiguous(store, "x")


async def test_a_refused_write_is_rolled_back_alone_within_its_batch(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    outcomes: dict[int, object] = {}

    async def append(index: int) -> None:
        owner = "intruder" if index == 5 else "a"
        entity = "ghost" if index == 7 else "x"
        try:
            outcomes[index] = await store.append_envelopes(owner, [(entity, 1.0, {"n": index})])
        except (LeaseLostError, EntityNotFoundError) as exc:
            outcomes[index] = type(exc)

    before = store.statistics()
    async with trio.open_nursery() as nursery:
        for index in range(20):
            nursery.start_soon(append, index)
    assert store.statistics().batches == before.batches + 1
    assert outcomes.pop(5) is LeaseLostError
    assert outcomes.pop(7) is EntityNotFoundError
    assert all(isinstance(seqs, list) for seqs in outcomes.values())
    envelopes = await store.read_envelopes("x")
    assert sorted(e.body.get("n", -1) for e in envelopes) == [-1, *sorted(outcomes)]
    await assert_contiguous(store, "x")


async def test_writes_apply_in_call_order(store: SqliteStore) -> None:
    await claimed(store, "x", "a")
    seqs: dict[int, int] = {}

    async def append(index: int) -> None:
        [seqs[index]] = await store.append_envelopes("a", [("x", 1.0, {"n": index})])

    async with trio.open_nursery() as nursery:
        for index in range(30):
            nursery.start_soon(append, index)
            # The call is queued before the task first blocks: start the next one after that.
            await trio.testing.wait_all_tasks_blocked()
    assert [seqs[index] for index in range(30)] == sorted(seqs.values())


# -- failed batches --------------------------------------------------------------------------------


async def test_a_locked_database_fails_the_whole_batch(db_path: Path) -> None:
    async with SqliteStore(db_path, busy_timeout=0.05) as store:
        await claimed(store, "x", "a")
        errors: list[BaseException] = []

        async def append(index: int) -> None:
            try:
                await store.append_envelopes("a", [("x", 1.0, {"n": index})])
            except StoreError as exc:
                errors.append(exc)

        with write_lock(db_path):
            async with trio.open_nursery() as nursery:
                for index in range(5):
                    nursery.start_soon(append, index)
        assert len(errors) == 5
        for error in errors:
            assert "failed and was rolled back" in str(error)
            assert "database is locked" in str(error)
            assert isinstance(error.__cause__, sqlite3.OperationalError)
        assert await store.last_seq() == 1
        # The store recovers once the lock is gone.
        await store.append_envelopes("a", [("x", 2.0, {"n": "after"})])
        await assert_contiguous(store, "x")
    assert_integrity(db_path)


async def test_a_full_disk_fails_the_whole_batch(store: SqliteStore, db_path: Path) -> None:
    await claimed(store, "x", "a")
    pages = raw_query(db_path, "PRAGMA page_count")[0][0]
    await store._db.write(lambda conn: conn.execute(f"PRAGMA max_page_count = {pages + 2}"))
    outcomes: dict[int, object] = {}

    async def append(index: int) -> None:
        size = 1_000_000 if index == 3 else 10
        try:
            outcomes[index] = await store.append_envelopes("a", [("x", 1.0, {"p": "x" * size})])
        except StoreError as exc:
            outcomes[index] = exc

    async with trio.open_nursery() as nursery:
        for index in range(6):
            nursery.start_soon(append, index)
    assert len(outcomes) == 6
    for outcome in outcomes.values():
        assert isinstance(outcome, StoreError)
        assert "full" in str(outcome)
        assert isinstance(outcome.__cause__, sqlite3.OperationalError)
    assert await store.last_seq() == 1
    await store._db.write(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823"))
    await store.append_envelopes("a", [("x", 2.0, {"p": "x" * 1_000_000})])
    await assert_contiguous(store, "x")


# -- cancellation --------------------------------------------------------------------------------


async def test_a_cancelled_writer_still_sees_its_write_applied_once(
    store: SqliteStore, db_path: Path
) -> None:
    await claimed(store, "x", "a")
    seen: list[list[int]] = []
    scope = trio.CancelScope()

    async def append() -> None:
        with scope:
            seen.append(await store.append_envelopes("a", [("x", 2.0, {"n": "once"})]))
            await trio.sleep_forever()

    with write_lock(db_path) as lock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(append)
            await trio.sleep(0.05)  # the batch now waits for the lock, in its thread
            scope.cancel()
            await trio.sleep(0.05)
            assert seen == []  # shielded: still waiting for its transaction
            lock.execute("ROLLBACK")
    assert scope.cancelled_caught
    assert len(seen) == 1
    envelopes = await store.read_envelopes("x")
    assert [e.body for e in envelopes] == [STARTED, {"n": "once"}]
    assert seen == [[envelopes[-1].seq]]


async def test_a_caller_cancelled_before_its_write_is_queued_writes_nothing(
    store: SqliteStore,
) -> None:
    await claimed(store, "x", "a")
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.append_envelopes("a", [("x", 2.0, {})])
    assert scope.cancelled_caught
    assert await store.last_seq() == 1


async def test_leaving_the_store_applies_the_writes_still_queued(db_path: Path) -> None:
    with trio.CancelScope() as outer:
        async with SqliteStore(db_path) as store:
            await claimed(store, "x", "a")
            async with trio.open_nursery() as nursery:
                for index in range(50):
                    nursery.start_soon(store.append_envelopes, "a", [("x", 1.0, {"n": index})])
                await trio.testing.wait_all_tasks_blocked()
                outer.cancel()
    assert outer.cancelled_caught
    assert raw_query(db_path, "SELECT count(*) FROM envelopes") == [(51,)]
    assert raw_query(db_path, "SELECT last_entity_seq FROM entities") == [(51,)]
    assert_integrity(db_path)


async def test_a_cancelled_read_is_interrupted(db_path: Path) -> None:
    endless = (
        "WITH RECURSIVE c (x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    )
    with trio.fail_after(20):
        async with SqliteStore(db_path, readers=1) as store:
            await store.create_entity(new("x"))
            with trio.move_on_after(0.05) as scope:
                await store._db.read(lambda conn: conn.execute(endless).fetchone())
            assert scope.cancelled_caught
            # The interrupted connection is back in the pool and works.
            assert (await store.get_entity("x")).id == "x"
            reads = store.statistics().reads
        assert reads == 1


# -- two stores on one file ----------------------------------------------------------------------


async def test_two_stores_on_one_file_never_both_win_a_claim(db_path: Path) -> None:
    async with SqliteStore(db_path) as first, SqliteStore(db_path) as second:
        ids = [f"e{index}" for index in range(40)]
        for entity_id in ids:
            await first.create_entity(new(entity_id))
        winners: dict[str, list[str]] = {entity_id: [] for entity_id in ids}

        async def claim(store: SqliteStore, owner: str, entity_id: str) -> None:
            record = await store.claim(entity_id, owner, now=1.0, expires=100.0, started=STARTED)
            if record is not None:
                winners[entity_id].append(owner)
                await store.append_envelopes(owner, [(entity_id, 2.0, {"by": owner})])

        async with trio.open_nursery() as nursery:
            for entity_id in ids:
                nursery.start_soon(claim, first, "p1", entity_id)
                nursery.start_soon(claim, second, "p2", entity_id)
        for entity_id in ids:
            [winner] = winners[entity_id]
            record = await second.get_entity(entity_id)
            assert (record.lease_owner, record.attempt) == (winner, 1)
            envelopes = await first.read_envelopes(entity_id)
            assert [e.body for e in envelopes] == [STARTED, {"by": winner}]
            await assert_contiguous(first, entity_id)
        assert {owner for [owner] in winners.values()} <= {"p1", "p2"}
    assert_integrity(db_path)


async def test_two_stores_create_the_same_names(db_path: Path) -> None:
    async with SqliteStore(db_path) as first, SqliteStore(db_path) as second:
        await first.create_entity(new("root"))
        created: list[tuple[str, bool]] = []

        async def create(store: SqliteStore, prefix: str, index: int) -> None:
            record, was_created = await store.create_entity(
                new(f"{prefix}{index}", parent="root", name=f"step-{index}")
            )
            created.append((record.id, was_created))

        async with trio.open_nursery() as nursery:
            for index in range(30):
                nursery.start_soon(create, first, "a", index)
                nursery.start_soon(create, second, "b", index)
        assert sum(was_created for _, was_created in created) == 30
        children = await first.children("root")
        assert len(children) == 30
        outgoing, _ = await second.edges("root")
        assert sorted(e.position for e in outgoing) == list(range(1, 31))
    assert_integrity(db_path)


# -- random interleavings against a model ----------------------------------------------------------

LEASE = 2.0
OWNERS = ("A", "B")
ENTITIES = ("r", "c")  # c is a child of r


@attrs.define
class ModelEntity:
    status: str = "PENDING"
    owner: str | None = None
    expires: float | None = None
    attempt: int = 0
    envelopes: int = 0
    data: dict[str, Any] = attrs.field(factory=dict)

    def observed(self) -> tuple[object, ...]:
        return (self.status, self.owner, self.expires, self.attempt, self.envelopes, self.data)


@attrs.define
class Model:
    now: float = 100.0
    entities: dict[str, ModelEntity] = attrs.field(
        factory=lambda: {name: ModelEntity() for name in ENTITIES}
    )

    def apply(self, op: tuple[Any, ...]) -> tuple[str, object]:
        """What the store must answer to ``op``; updates the model as the store must."""
        kind, *args = op
        if kind == "claim":
            name, owner, steal = args
            entity = self.entities[name]
            if entity.status in ("COMPLETED", "CANCELLED"):
                return ("ok", None)
            free = (
                entity.owner in (None, owner)
                or (steal is not None and entity.owner == steal)
                or (entity.expires is not None and entity.expires <= self.now)
            )
            if not free:
                return ("ok", None)
            entity.owner, entity.expires = owner, self.now + LEASE
            entity.status = "WAITING" if entity.status == "WAITING" else "IN_PROGRESS"
            entity.attempt += 1
            entity.envelopes += 1
            return ("ok", entity.attempt)
        if kind == "renew":
            [owner] = args
            held = [e for e in self.entities.values() if e.owner == owner]
            for entity in held:
                entity.expires = self.now + LEASE
            return ("ok", len(held))
        if kind == "release":
            name, owner = args
            entity = self.entities[name]
            if entity.owner != owner:
                return ("ok", False)
            entity.owner = entity.expires = None
            return ("ok", True)
        if kind == "cancel":
            [name] = args
            if self.entities[name].status in ("COMPLETED", "CANCELLED"):
                return ("ok", [])
            names = [name] + (["c"] if name == "r" else [])
            cancelled = [
                n for n in names if self.entities[n].status not in ("COMPLETED", "CANCELLED")
            ]
            for n in cancelled:
                entity = self.entities[n]
                entity.status, entity.owner, entity.expires = "CANCELLED", None, None
                entity.envelopes += 1
            return ("ok", cancelled)
        # Fenced operations.
        name, owner, *rest = args
        entity = self.entities[name]
        if entity.owner != owner:
            return ("error", LeaseLostError)
        if kind == "append":
            [count] = rest
            entity.envelopes += count
            return ("ok", count)
        if kind == "set_status":
            [status] = rest
            entity.status = status
            entity.envelopes += 1
            return ("ok", None)
        if kind == "finish":
            [status] = rest
            entity.status, entity.owner, entity.expires = status, None, None
            entity.envelopes += 1
            return ("ok", None)
        assert kind == "update"
        [key] = rest
        entity.data[key] = None
        return ("ok", dict(entity.data))


async def run_op(store: SqliteStore, model: Model, op: tuple[Any, ...]) -> tuple[str, object]:
    """Run ``op`` on the store; its answer in the model's form."""
    kind, *args = op
    now = model.now
    try:
        if kind == "claim":
            name, owner, steal = args
            record = await store.claim(
                name,
                owner,
                now=now,
                expires=now + LEASE,
                started=STARTED,
                steal_from=steal,
            )
            return ("ok", None if record is None else record.attempt)
        if kind == "renew":
            return ("ok", await store.renew_leases(args[0], expires=now + LEASE))
        if kind == "release":
            return ("ok", await store.release(args[0], args[1]))
        if kind == "cancel":
            return ("ok", await store.cancel(args[0], now=now, envelope={"kind": "CANCELLED"}))
        if kind == "append":
            name, owner, count = args
            items = [(name, now, {"n": n}) for n in range(count)]
            return ("ok", len(await store.append_envelopes(owner, items)))
        if kind == "set_status":
            name, owner, status = args
            await store.set_status(name, owner, EntityStatus(status), now=now, envelope={"s": 1})
            return ("ok", None)
        if kind == "finish":
            name, owner, status = args
            if status == "COMPLETED":
                await store.finish(
                    name,
                    owner,
                    EntityStatus.COMPLETED,
                    now=now,
                    result=1,
                    envelopes=[{"kind": "FINAL"}],
                )
            else:
                await store.finish(
                    name,
                    owner,
                    EntityStatus.FAILED,
                    now=now,
                    error={"type": "E", "message": "m"},
                    envelopes=[{"kind": "ERROR"}],
                )
            return ("ok", None)
        assert kind == "update"
        name, owner, key = args
        return ("ok", await store.update_data(name, owner, {key: None}, now=now))
    except LeaseLostError:
        return ("error", LeaseLostError)


async def observe(store: SqliteStore) -> dict[str, tuple[object, ...]]:
    observed: dict[str, tuple[object, ...]] = {}
    for name in ENTITIES:
        record = await store.get_entity(name)
        observed[name] = (
            record.status.value,
            record.lease_owner,
            record.lease_expires,
            record.attempt,
            record.last_entity_seq,
            record.data,
        )
    return observed


names = st.sampled_from(ENTITIES)
owners = st.sampled_from(OWNERS)
OP_STRATEGIES: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "claim": st.tuples(
        st.just("claim"), names, owners, st.sampled_from([None, None, None, "A", "B", "C"])
    ),
    "append": st.tuples(st.just("append"), names, owners, st.integers(1, 3)),
    "renew": st.tuples(st.just("renew"), owners),
    "release": st.tuples(st.just("release"), names, owners),
    "cancel": st.tuples(st.just("cancel"), names),
    "set_status": st.tuples(
        st.just("set_status"), names, owners, st.sampled_from(["IN_PROGRESS", "WAITING"])
    ),
    "finish": st.tuples(st.just("finish"), names, owners, st.sampled_from(["COMPLETED", "FAILED"])),
    "update": st.tuples(st.just("update"), names, owners, st.sampled_from(["k1", "k2", "k3"])),
}
# Weighted: the interesting histories are claims racing leases, and fenced writes after them.
OP_WEIGHTS = {"claim": 6, "append": 3, "set_status": 2, "renew": 2, "release": 2}
store_ops = st.sampled_from(
    [kind for kind in OP_STRATEGIES for _ in range(OP_WEIGHTS.get(kind, 1))]
).flatmap(OP_STRATEGIES.__getitem__)
steps = st.sampled_from(["tick"] * 3 + ["one"] * 6 + ["both"] * 2).flatmap(
    lambda kind: {
        "tick": st.tuples(st.just("tick"), st.sampled_from([0.5, 1.0, 2.0, 3.0])),
        "one": st.tuples(st.just("one"), store_ops),
        "both": st.tuples(st.just("both"), store_ops, store_ops),
    }[kind]
)


@settings(max_examples=max(200, settings().max_examples))
@given(st.lists(steps, min_size=8, max_size=40))
def test_random_interleavings_match_the_model(plan: list[tuple[Any, ...]]) -> None:
    async def main(path: Path) -> None:
        model = Model()
        async with SqliteStore(path, readers=2) as store:
            await store.create_entity(new("r", created_at=1.0))
            await store.create_entity(new("c", parent="r", created_at=2.0))
            for step in plan:
                if step[0] == "tick":
                    model.now += step[1]
                    continue
                if step[0] == "one":
                    expected = model.apply(step[1])
                    got = await run_op(store, model, step[1])
                    assert got == expected, (step, got, expected)
                else:
                    _, first, second = step
                    results: dict[int, tuple[str, object]] = {}

                    async def run(
                        index: int,
                        op: tuple[Any, ...],
                        results: dict[int, tuple[str, object]] = results,
                        model: Model = model,
                    ) -> None:
                        results[index] = await run_op(store, model, op)

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(run, 0, first)
                        nursery.start_soon(run, 1, second)
                    # Concurrent calls apply in some order: the store must match one of them.
                    candidates = []
                    for order in ((0, 1), (1, 0)):
                        trial = copy.deepcopy(model)
                        ops = (first, second)
                        answers = {index: trial.apply(ops[index]) for index in order}
                        candidates.append((trial, answers))
                    observed = await observe(store)
                    matching = [
                        trial
                        for trial, answers in candidates
                        if answers == results
                        and {n: e.observed() for n, e in trial.entities.items()} == observed
                    ]
                    assert matching, (step, results, observed)
                    model = matching[0]
                # At most one owner, nothing fenced applied: the store is exactly the model.
                assert await observe(store) == {
                    n: e.observed() for n, e in model.entities.items()
                }, step
            for name in ENTITIES:
                await assert_contiguous(store, name)
        assert_integrity(path)

    with tempfile.TemporaryDirectory() as directory:
        trio.run(main, Path(directory) / "model.db")


OPEN_STORE = """
import sys, trio
from sluiceway import SqliteStore

async def main():
    async with SqliteStore(sys.argv[1]):
        pass

trio.run(main)
"""


ROOT = Path(__file__).resolve().parents[2]


async def open_store_process(path: Path, results: list[tuple[int, str]]) -> None:
    done = await trio.run_process(
        [sys.executable, "-c", OPEN_STORE, str(path)],
        capture_stderr=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    results.append((done.returncode, done.stderr.decode()))


async def test_processes_creating_one_store_at_once_all_open_it(tmp_path: Path) -> None:
    # Putting a new file in WAL mode takes an exclusive lock that SQLite does not wait for:
    # the store tries again for up to its busy timeout.
    for round_number in range(3):
        path = tmp_path / f"new-{round_number}.db"
        results: list[tuple[int, str]] = []
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(open_store_process, path, results)
        assert results == [(0, "")] * 4
        assert_integrity(path)
