"""The entity runtime on a real SQLite store: runs, children, results, failures, streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    ConnectionNotAllowedError,
    DataConflictError,
    DataEntity,
    DuplicateEntityError,
    EntityCancelledError,
    EntityEnvelope,
    EntityFailedError,
    EntityNotFoundError,
    EntityStatus,
    RunContext,
    RunnableEntity,
    SqliteStore,
    UnknownEntityTypeError,
    open_runtime,
)
from sluiceway.entities import _tail as tail_module
from tests.entities.workflows import (
    ALL_TYPES,
    EXECUTIONS,
    GATES,
    GLOBAL,
    Chain,
    FanOut,
    Leaf,
    open_gate,
    started,
)
from tests.helpers import assert_idle


def chain_data(*children: dict[str, Any]) -> dict[str, Any]:
    return {"children": list(children)}


def leaf(name: str, value: int = 1, **extra: Any) -> dict[str, Any]:
    return {"name": name, "data": {"value": value, **extra}}


def summary(envelopes: list[EntityEnvelope]) -> list[tuple[str, str, str | None]]:
    """(entity name, type, status) of each envelope, in order."""
    return [(e.entity_name, e.type, e.status) for e in envelopes]


async def test_a_run_streams_started_progress_value_and_completed(db: Path) -> None:
    async with open_runtime(db, ALL_TYPES) as runtime:
        root = await runtime.create(Leaf, {"value": 21}, name="answer")
        assert root.status is EntityStatus.PENDING
        assert await runtime.run(root.id) == {"name": "answer", "value": 42}
        record = await runtime.get(root.id)
        assert record.status is EntityStatus.COMPLETED
        assert record.result == {"name": "answer", "value": 42}
        assert record.lease_owner is None
        envelopes = await runtime.envelopes(root.id)
    assert summary(envelopes) == [
        ("answer", "STATUS", "STARTED"),
        ("answer", "STATUS", "RUNNING"),
        ("answer", "VALUE", None),
        ("answer", "STATUS", "COMPLETED"),
    ]
    assert envelopes[2].sub_type == "return"
    assert envelopes[2].value == {"name": "answer", "value": 42}
    assert [e.entity_seq for e in envelopes] == [1, 2, 3, 4]
    assert [e.seq for e in envelopes] == sorted(e.seq for e in envelopes)
    assert envelopes[0].metadata == {"attempt": 1}


async def test_completed_entities_never_run_again(db: Path) -> None:
    async with open_runtime(db, ALL_TYPES) as runtime:
        root = await runtime.create(Chain, chain_data(leaf("a", 1), leaf("b", 2)), name="root")
        first = await runtime.run(root.id)
        again = await runtime.run(root.id)
    assert first == again == [{"name": "a", "value": 2}, {"name": "b", "value": 4}]
    assert EXECUTIONS == {"root": 1, "a": 1, "b": 1}
    # Another runtime on the same file: the stored result, nothing runs.
    async with open_runtime(db, ALL_TYPES) as runtime:
        assert await runtime.run(root.id) == first
        envelopes = await runtime.envelopes(root.id)
    assert EXECUTIONS == {"root": 1, "a": 1, "b": 1}
    # The subtree's envelopes were each stored once, in the entity that produced them.
    assert [e.entity_name for e in envelopes if e.status == "STARTED"] == ["root", "a", "b"]


async def test_children_are_found_again_and_their_data_is_kept(db: Path) -> None:
    class Maker(RunnableEntity, allowed_connections={"Calls": [Leaf]}):
        async def run_impl(self, ctx: RunContext) -> Any:
            first = await ctx.append_or_retrieve_call(Leaf, "kid", {"value": 1})
            again = await ctx.append_or_retrieve_call(Leaf, "kid", {"value": 99})
            assert first.id == again.id
            assert (first.created, again.created) == (True, False)
            assert again.record.data == {"value": 1}  # data is stored only at creation
            with pytest.raises(DuplicateEntityError, match="kid"):
                await ctx.append_call(Leaf, "kid", {"value": 2})
            strict = await ctx.append_call(Leaf, "other", {"value": 5})
            return [await first.run(), await strict.run()]

    async with open_runtime(db, [Maker, Leaf]) as runtime:
        root = await runtime.create(Maker, name="maker")
        assert await runtime.run(root.id) == [
            {"name": "kid", "value": 2},
            {"name": "other", "value": 10},
        ]
        children = await runtime.children(root.id)
        assert [c.name for c in children] == ["kid", "other"]
        outgoing, _ = await runtime.store.edges(root.id)
        assert [(edge.type, edge.position) for edge in outgoing] == [("Calls", 1), ("Calls", 2)]


async def test_error_isolation_and_rerun_of_failed_children(db: Path) -> None:
    async with open_runtime(db, ALL_TYPES) as runtime:
        root = await runtime.create(
            Chain,
            chain_data(leaf("ok1"), leaf("bad", fail=True), leaf("ok2")),
            name="root",
        )
        results = await runtime.run(root.id)
        assert results[0] == {"name": "ok1", "value": 2}
        assert results[1] == {"failed": "bad", "error": "bad failed on purpose"}
        assert results[2] == {"name": "ok2", "value": 2}
        children = {c.name: c for c in await runtime.children(root.id)}
        assert children["bad"].status is EntityStatus.FAILED
        assert children["bad"].error == {
            "type": "RuntimeError",
            "message": "bad failed on purpose",
        }
        envelopes = await runtime.envelopes(children["bad"].id)
        assert summary(envelopes)[-2:] == [("bad", "ERROR", None), ("bad", "STATUS", "FAILED")]
        # The parent decided its own status: it completed.
        assert (await runtime.get(root.id)).status is EntityStatus.COMPLETED


async def test_a_failed_entity_runs_again_and_only_unfinished_leaves_execute(db: Path) -> None:
    class Picky(RunnableEntity, allowed_connections={"Calls": [Leaf]}):
        async def run_impl(self, ctx: RunContext) -> Any:
            EXECUTIONS[self.name] += 1
            out = [await ctx.call(Leaf, "first", {"value": 1})]
            out.append(await ctx.call(Leaf, "second", {"value": 2, "gate": True}))
            if EXECUTIONS[self.name] == 1:
                raise ValueError("the parent fails after its children, once")
            return out

    async with open_runtime(db, [Picky, Leaf]) as runtime:
        root = await runtime.create(Picky, name="picky")
        GATES["second"] = trio.Event()
        GATES["second"].set()
        with pytest.raises(EntityFailedError, match="once") as caught:
            await runtime.run(root.id)
        assert caught.value.error["type"] == "ValueError"
        assert isinstance(caught.value.__cause__, ValueError)
        record = await runtime.get(root.id)
        assert (record.status, record.attempt) == (EntityStatus.FAILED, 1)
        assert await runtime.run(root.id) == [
            {"name": "first", "value": 2},
            {"name": "second", "value": 4},
        ]
        assert (await runtime.get(root.id)).attempt == 2
    assert EXECUTIONS == {"picky": 2, "first": 1, "second": 1}


async def test_resume_after_interruption_reruns_only_unfinished_leaves(db: Path) -> None:
    """A runtime stops mid-run: the root and the unfinished child stay IN_PROGRESS (lease
    released), and a new runtime's recover() finishes the work without redoing finished
    children."""
    data = chain_data(leaf("a"), leaf("b", gate=True), leaf("c"))
    # No claim loop in the runtime that stops: it would resume the run at once.
    async with open_runtime(db, ALL_TYPES, work=False) as runtime:
        root = await runtime.create(Chain, data, name="root")
        with trio.move_on_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runtime.run, root.id)
                await started("b").wait()
                nursery.cancel_scope.cancel()  # the "crash": b is running, c not started
        record = await runtime.get(root.id)
        assert record.status is EntityStatus.IN_PROGRESS
        assert record.lease_owner is None
    open_gate("b")
    async with open_runtime(db, ALL_TYPES) as runtime:
        [recovered] = await runtime.recover()
        assert recovered.entity_id == root.id
        assert recovered.error is None
        assert recovered.result == [{"name": n, "value": 2} for n in "abc"]
        assert await runtime.recover() == []  # nothing left
        envelopes = await runtime.envelopes(root.id)
    assert EXECUTIONS == {"root": 2, "a": 1, "b": 2, "c": 1}
    starts = [(e.entity_name, e.metadata["attempt"]) for e in envelopes if e.status == "STARTED"]
    assert starts == [("root", 1), ("a", 1), ("b", 1), ("root", 2), ("b", 2), ("c", 1)]


async def test_types_and_connections_are_checked(db: Path) -> None:
    class Unregistered(RunnableEntity):
        async def run_impl(self, ctx: RunContext) -> Any:
            return None

    class Loner(RunnableEntity):  # allows no connections at all
        async def run_impl(self, ctx: RunContext) -> Any:
            await ctx.call(Leaf, "kid")

    class Caller(RunnableEntity, allowed_connections={"Calls": [Leaf]}):
        async def run_impl(self, ctx: RunContext) -> Any:
            await ctx.call(Unregistered, "x")

    with pytest.raises(UnknownEntityTypeError, match="Chain allows Calls to 'Leaf'"):
        async with open_runtime(db, [Chain]):
            pass
    async with open_runtime(db, [Loner, Caller, Leaf]) as runtime:
        with pytest.raises(UnknownEntityTypeError, match="Unregistered"):
            await runtime.create(Unregistered)
        loner = await runtime.create(Loner, name="loner")
        with pytest.raises(EntityFailedError) as failed:
            await runtime.run(loner.id)
        assert isinstance(failed.value.__cause__, ConnectionNotAllowedError)
        assert "Loner may not connect to Leaf with a Calls edge" in str(failed.value.__cause__)
        caller = await runtime.create(Caller, name="caller")
        with pytest.raises(EntityFailedError) as failed:
            await runtime.run(caller.id)
        assert isinstance(failed.value.__cause__, UnknownEntityTypeError)
        message = str(failed.value.__cause__)
        assert "Caller" in message
        assert "Unregistered" in message
        with pytest.raises(EntityNotFoundError):
            await runtime.run("no-such-id")
    with pytest.raises(ValueError, match="two entity types are named 'Leaf'"):
        async with open_runtime(db, [Leaf, type("Other", (Leaf,), {}, type_name="Leaf")]):
            pass


async def test_fan_out_under_per_parent_and_global_capacity(db: Path) -> None:
    async with open_runtime(db, ALL_TYPES) as runtime:
        a = await runtime.create(FanOut, {"count": 12, "failing": [3, 7]}, name="a")
        b = await runtime.create(FanOut, {"count": 9}, name="b")
        async with trio.open_nursery() as nursery:
            results: dict[str, Any] = {}

            async def run(name: str, entity_id: str) -> None:
                results[name] = await runtime.run(entity_id)

            nursery.start_soon(run, "a", a.id)
            nursery.start_soon(run, "b", b.id)
        assert results["a"] == {
            "ok": 10,
            "failed": 2,
            "total": 2 * (sum(range(12)) - 3 - 7),
            "status": "completed_with_errors",
        }
        assert results["b"]["ok"] == 9
        record = await runtime.get(a.id)
        assert record.data["status"] == "completed_with_errors"
        counts = await runtime.store.count_children(a.id)
        assert counts == {EntityStatus.COMPLETED: 10, EntityStatus.FAILED: 2}
    assert_idle(GLOBAL)


async def test_streams_replay_then_follow_and_resume_from_a_cursor(db: Path) -> None:
    async with open_runtime(db, ALL_TYPES) as runtime:
        root = await runtime.create(Chain, chain_data(leaf("a"), leaf("b", gate=True)), name="root")
        live: list[EntityEnvelope] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runtime.run, root.id)

            async def follow() -> None:
                async with runtime.stream(root.id) as envelopes:
                    async for envelope in envelopes:
                        live.append(envelope)
                        if envelope.entity_name == "b" and envelope.status == "RUNNING":
                            open_gate("b")

            nursery.start_soon(follow)
        stored = await runtime.envelopes(root.id)
        assert live == stored
        assert live[-1].entity_name == "root"
        assert live[-1].status == "COMPLETED"
        # A subscriber that stopped after the 4th envelope resumes from its seq.
        async with runtime.stream(root.id, after_seq=stored[3].seq) as envelopes:
            rest = [envelope async for envelope in envelopes]
        assert rest == stored[4:]
        # The stream of a child is its own subtree only.
        child = next(c for c in await runtime.children(root.id) if c.name == "a")
        async with runtime.stream(child.id) as envelopes:
            assert {e.entity_name async for e in envelopes} == {"a"}
        with pytest.raises(EntityNotFoundError):
            async with runtime.stream("nope"):
                pass


async def test_cancel_stops_the_subtree_and_marks_it_cancelled(db: Path) -> None:
    async with open_runtime(db, ALL_TYPES) as runtime:
        root = await runtime.create(
            Chain, chain_data(leaf("a"), leaf("b", gate=True), leaf("c")), name="root"
        )
        async with trio.open_nursery() as nursery:
            outcome: list[BaseException] = []

            async def run() -> None:
                try:
                    await runtime.run(root.id)
                except EntityCancelledError as exc:
                    outcome.append(exc)

            nursery.start_soon(run)
            await started("b").wait()
            cancelled = await runtime.cancel(root.id)
        assert len(outcome) == 1
        children = {c.name: c for c in await runtime.children(root.id)}
        assert set(cancelled) == {root.id, children["b"].id}
        assert children["a"].status is EntityStatus.COMPLETED
        assert children["b"].status is EntityStatus.CANCELLED
        assert "c" not in children  # never created
        assert (await runtime.get(root.id)).status is EntityStatus.CANCELLED
        with pytest.raises(EntityCancelledError):
            await runtime.run(root.id)
        assert await runtime.recover() == []
        envelopes = await runtime.envelopes(root.id)
        assert [e.entity_name for e in envelopes if e.status == "CANCELLED"] == ["root", "b"]
        assert await runtime.cancel(root.id) == []  # already cancelled


async def test_update_data_is_an_atomic_merge(db: Path) -> None:
    class Counter(RunnableEntity):
        async def run_impl(self, ctx: RunContext) -> Any:
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(lambda i=i: ctx.update_data(**{f"k{i}": i}))
            return await ctx.update_data(last=True)

    async with open_runtime(db, [Counter]) as runtime:
        root = await runtime.create(Counter, {"kept": "yes"}, name="counter")
        data = await runtime.run(root.id)
        assert data == {"kept": "yes", "last": True, **{f"k{i}": i for i in range(50)}}
        assert (await runtime.get(root.id)).data == data


class Note(DataEntity):
    """Data only."""


async def test_update_data_if_is_a_compare_and_set(db: Path) -> None:
    async with open_runtime(db, [Note]) as runtime:
        note = await runtime.create(Note, {"score": 1}, name="note")
        assert await runtime.update_data_if(note.id, {"score": 1}, {"score": 2}) == {"score": 2}
        with pytest.raises(DataConflictError, match="has score=2, not 1"):
            await runtime.update_data_if(note.id, {"score": 1}, {"score": 3})
        assert (await runtime.get(note.id)).data == {"score": 2}
        with pytest.raises(TypeError):
            await runtime.update_data_if(note.id, {"score": {2}}, {})
        with pytest.raises(EntityNotFoundError):
            await runtime.update_data_if("nope", {}, {"a": 1})


async def test_context_rejects_bad_input(db: Path) -> None:
    problems: list[str] = []

    class Careless(RunnableEntity, allowed_connections={"Calls": [Leaf]}):
        async def run_impl(self, ctx: RunContext) -> Any:
            attempts = [
                lambda: ctx.status("COMPLETED"),
                lambda: ctx.emit("ERROR", message="no"),
                lambda: ctx.emit("VALUE", sub_type="return", value=1),
                lambda: ctx.emit("INTERNAL_UPDATE", metadata={"when": object()}),
                lambda: ctx.update_data(bad={1, 2}),
                lambda: ctx.append_or_retrieve_call(Leaf, "", {}),
                lambda: ctx.append_or_retrieve_call(Leaf, "x", {"nan": float("nan")}),
                lambda: ctx.wait_for_message("not waitable"),
                lambda: ctx.sleep(-1),
            ]
            for attempt in attempts:
                try:
                    await attempt()
                except (TypeError, ValueError) as exc:
                    problems.append(type(exc).__name__)
            with pytest.raises(TypeError):
                ctx.idempotency_key(1.5)  # type: ignore[arg-type]
            await ctx.emit("BOT_PROGRESS", message="custom types are fine", metadata={"n": 1})
            return {"key": ctx.idempotency_key("send", 7)}

    async with open_runtime(db, [Careless, Leaf]) as runtime:
        root = await runtime.create(Careless, name="careless")
        result = await runtime.run(root.id)
        assert result == {"key": f"Careless:{root.id}:send:7"}
        envelopes = await runtime.envelopes(root.id)
    assert len(problems) == 9
    assert [e.type for e in envelopes] == ["STATUS", "BOT_PROGRESS", "VALUE", "STATUS"]


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        ({"when": object()}, "object"),
        ({1: "a", "1": "b"}, "the key 1 is not a str"),
        ({"pair": (1, 2)}, "a tuple at ['pair'] would be stored as a list"),
        ([float("nan")], "nan at [0] is not a finite number"),
        ("\udfff", "lone surrogate"),
    ],
)
async def test_results_must_be_json(db: Path, result: Any, problem: str) -> None:
    class Odd(RunnableEntity):
        async def run_impl(self, ctx: RunContext) -> Any:
            return result

    async with open_runtime(db, [Odd]) as runtime:
        root = await runtime.create(Odd, name="odd")
        with pytest.raises(EntityFailedError, match="is not JSON") as caught:
            await runtime.run(root.id)
        assert problem in str(caught.value)
        assert (await runtime.get(root.id)).status is EntityStatus.FAILED
        with pytest.raises(TypeError, match="JSON"):
            await runtime.create(Odd, {"x": b"bytes"})
        with pytest.raises(ValueError, match="lone surrogate"):
            await runtime.create(Odd, {"x": "\ud800"})


async def test_typed_edges(db: Path) -> None:
    class Contact(RunnableEntity):
        async def run_impl(self, ctx: RunContext) -> Any:
            return None

    class Campaign(RunnableEntity, allowed_connections={"HasRecipient": [Contact]}):
        async def run_impl(self, ctx: RunContext) -> Any:
            contacts = self.data["contacts"]
            edges = [
                await ctx.connect("HasRecipient", cid, data={"n": i})
                for i, cid in enumerate(contacts)
            ]
            again = await ctx.connect("HasRecipient", contacts[0])
            assert again.id == edges[0].id
            refused = "Campaign may not connect to Campaign"
            with pytest.raises(ConnectionNotAllowedError, match=refused):
                await ctx.connect("HasRecipient", ctx.id)
            with pytest.raises(ConnectionNotAllowedError, match="no 'Owns' entry"):
                await ctx.connect("Owns", contacts[0])
            return [edge.position for edge in edges]

    async with open_runtime(db, [Contact, Campaign]) as runtime:
        contacts = [(await runtime.create(Contact, name=f"c{i}")).id for i in range(3)]
        campaign = await runtime.create(Campaign, {"contacts": contacts}, name="campaign")
        assert await runtime.run(campaign.id) == [1, 2, 3]
        outgoing, incoming = await runtime.store.edges(campaign.id)
        assert [(e.type, e.to_id, e.data) for e in outgoing] == [
            ("HasRecipient", contacts[i], {"n": i}) for i in range(3)
        ]
        _, incoming = await runtime.store.edges(contacts[1])
        assert [(e.type, e.from_id) for e in incoming] == [("HasRecipient", campaign.id)]


async def test_root_names_and_exist_ok(db: Path) -> None:
    async with open_runtime(db, ALL_TYPES) as runtime:
        first = await runtime.create(Leaf, {"value": 1}, name="unique")
        with pytest.raises(DuplicateEntityError):
            await runtime.create(Leaf, {"value": 2}, name="unique")
        again = await runtime.create(Leaf, {"value": 3}, name="unique", exist_ok=True)
        assert again.id == first.id
        assert again.data == {"value": 1}
        anonymous = await runtime.create(Leaf)
        assert anonymous.name == anonymous.id


async def test_concurrent_runs_in_one_runtime_share_one_execution(db: Path) -> None:
    async with open_runtime(db, ALL_TYPES) as runtime:
        good = await runtime.create(Leaf, {"value": 5, "gate": True}, name="shared")
        bad = await runtime.create(Leaf, {"gate": True, "fail": True}, name="shared-bad")
        outcomes: dict[str, list[Any]] = {"shared": [], "shared-bad": []}
        GATES["shared"], GATES["shared-bad"] = trio.Event(), trio.Event()

        async def run(name: str, entity_id: str) -> None:
            try:
                outcomes[name].append(await runtime.run(entity_id))
            except EntityFailedError as exc:
                outcomes[name].append(type(exc).__name__)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(run, "shared", good.id)
                nursery.start_soon(run, "shared-bad", bad.id)
            await started("shared").wait()
            await started("shared-bad").wait()
            assert runtime.is_running(good.id)
            GATES["shared"].set()
            GATES["shared-bad"].set()
        assert outcomes["shared"] == [{"name": "shared", "value": 10}] * 3
        assert outcomes["shared-bad"] == ["EntityFailedError"] * 3
        assert (await runtime.get(good.id)).attempt == 1
    assert EXECUTIONS == {"shared": 1, "shared-bad": 1}


def test_subclasses_inherit_their_connections() -> None:
    class Base(RunnableEntity, allowed_connections={"Calls": [Leaf]}):
        pass

    class Derived(Base):
        pass

    class Narrowed(Base, allowed_connections={}):
        pass

    assert Derived.type_name == "Derived"
    assert Derived.allowed_connections == {"Calls": ("Leaf",)}
    assert Narrowed.allowed_connections == {}


@pytest.mark.parametrize("window", [4096, 3])
async def test_many_streams_of_one_run_share_its_reads(
    db: Path, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fifty followers of one run (some from the start, some joining late from a cursor, the
    window of shared envelopes large or tiny) each get every envelope once, in order."""
    monkeypatch.setattr(tail_module, "WINDOW", window)
    async with open_runtime(db, ALL_TYPES) as runtime:
        parent = await runtime.create(
            FanOut, {"count": 30, "per_parent": 4, "child_type": "Leaf"}, name="fan"
        )
        received: dict[int, list[int]] = {}

        async def follow(index: int, after: int) -> None:
            got = received.setdefault(index, [])
            async with runtime.stream(parent.id, after_seq=after) as envelopes:
                async for envelope in envelopes:
                    got.append(envelope.seq)

        async with trio.open_nursery() as nursery:
            for index in range(25):
                nursery.start_soon(follow, index, 0)
            nursery.start_soon(runtime.run, parent.id)
            await started("child-10").wait()
            midway = (await runtime.envelopes(parent.id))[20].seq
            for index in range(25, 50):
                nursery.start_soon(follow, index, midway)
        stored = [envelope.seq for envelope in await runtime.envelopes(parent.id)]
        assert stored == sorted(stored)
        for index, seqs in received.items():
            assert seqs == (stored if index < 25 else [s for s in stored if s > midway])
    assert_idle(GLOBAL)


async def test_an_envelope_stored_while_the_stream_reads_wakes_it(
    db: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Time is frozen (no poll ever fires): an envelope stored while the stream's read of the
    store is under way must still wake the stream."""
    async with open_runtime(
        SqliteStore(db, threads=False), ALL_TYPES, clock=trio.current_time, work=False
    ) as runtime:
        leaf = await runtime.create(Leaf, {"gate": True, "value": 1}, name="racer")
        gate = GATES["racer"] = trio.Event()
        reads = 0

        def then_let_the_run_go(read: Any) -> Any:
            async def reading(*args: Any, **kwargs: Any) -> Any:
                nonlocal reads
                page = await read(*args, **kwargs)
                reads += 1
                if reads == 2:  # the stream's read after the run's first envelopes
                    gate.set()
                    while (await runtime.store.get_entity(leaf.id)).status is not (
                        EntityStatus.COMPLETED
                    ):
                        await trio.lowlevel.checkpoint()  # the run stores its end meanwhile
                return page

            return reading

        # a replay reads envelopes, the shared tail reads its tail: either may be second
        store = runtime.store
        store.read_envelopes = then_let_the_run_go(store.read_envelopes)  # type: ignore[method-assign]
        store.read_tail = then_let_the_run_go(store.read_tail)  # type: ignore[method-assign]
        seen: list[str | None] = []

        async def follow() -> None:
            async with runtime.stream(leaf.id) as envelopes:
                async for envelope in envelopes:
                    seen.append(envelope.status or envelope.type)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(runtime.run, leaf.id)
            await started("racer").wait()
            nursery.start_soon(follow)
            await trio.testing.wait_all_tasks_blocked()
            # Everything is still (and time stands still): the stream got the end by now,
            # or it missed its wake-up and waits for a poll that never comes.
            assert seen == ["STARTED", "RUNNING", "VALUE", "COMPLETED"]
            nursery.cancel_scope.cancel()
    assert trio.current_time() == 0
