"""The operations for looking around and for a page's actions: ``list`` (the runs, filtered
and paged), ``capacity`` (the watched capacity nodes) and ``retry`` (a FAILED entity run
again), over the real protocol."""

from __future__ import annotations

import contextlib
import gc
from typing import Any

import pytest
import trio

from sluiceway import CapacitySource, EntityFailedError
from tests.server.conftest import (
    TIMEOUT,
    Served,
    call,
    error,
    events_until_end,
    frame,
    open_raw,
)


async def test_list_pages_through_the_runs_newest_first(served: Served) -> None:
    runtime = served.runtime
    for n in range(5):
        await runtime.create("Leaf", {"value": n}, name=f"leaf-{n}")
    await runtime.create("Chain", {}, name="chain")
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            first = await call(ws, "list", 1, limit=4)
            assert [r["name"] for r in first["runs"]] == ["chain", "leaf-4", "leaf-3", "leaf-2"]
            assert set(first["runs"][0]) == {
                "id", "name", "type", "status", "attempt", "parked_on", "created_at",
                "modified_at", "error",
            }  # fmt: skip
            rest = await call(ws, "list", 2, limit=4, cursor=first["cursor"])
            assert [r["name"] for r in rest["runs"]] == ["leaf-1", "leaf-0"]
            assert rest["cursor"] is None
            leaves = await call(ws, "list", 3, type="Leaf", name="LEAF-3", status="PENDING")
            assert [r["name"] for r in leaves["runs"]] == ["leaf-3"]
            bad = await error(ws, frame("list", 4, status="DONE"), 4)
            assert bad["code"] == "invalid_request"
            assert "known: PENDING" in bad["message"]
            for fields in ({"limit": 0}, {"limit": 201}, {"cursor": "nonsense"}):
                bad = await error(ws, frame("list", 5, **fields), 5)
                assert bad["code"] == "invalid_request"


async def test_capacity_shows_the_watched_nodes_while_they_live(served: Served) -> None:
    gauges = served.runtime.gauges
    images = gauges.watch(CapacitySource(10, name="images"))
    story = CapacitySource(3, images)
    runs = gauges.watch(CapacitySource(2, images))
    await story.acquire()
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            with gauges.watching(story, name="story brave-kitten"):
                nodes = (await call(ws, "capacity", 1))["nodes"]
            assert nodes == [
                {"name": "images", "parent": None, "limits": {"slots": 10},
                 "in_use": {"slots": 1}, "waiting": 0, "waiting_in_subtree": 0},
                {"name": "node 2", "parent": "images", "limits": {"slots": 2},
                 "in_use": {}, "waiting": 0, "waiting_in_subtree": 0},
                {"name": "story brave-kitten", "parent": "images", "limits": {"slots": 3},
                 "in_use": {"slots": 1}, "waiting": 0, "waiting_in_subtree": 0},
            ]  # fmt: skip
            story.release()
            names = [n["name"] for n in (await call(ws, "capacity", 2))["nodes"]]
            assert names == ["images", "node 2"]  # shown while its run used it
            del runs
            gc.collect()  # a node nobody uses any more goes away by itself
            assert [n["name"] for n in (await call(ws, "capacity", 3))["nodes"]] == ["images"]


async def test_retry_runs_a_failed_entity_again(served: Served) -> None:
    runtime = served.runtime
    leaf = await runtime.create("Leaf", {"value": 4, "fail": True}, name="flaky")
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            refused = await error(ws, frame("retry", 1, entity_id=leaf.id), 1)
            assert refused["code"] == "not_failed"
            assert "PENDING" in refused["message"]
            await call(ws, "start", 2, entity_id=leaf.id)
            with contextlib.suppress(EntityFailedError):
                await runtime.wait(leaf.id)
            await runtime.update_data(leaf.id, fail=False)  # the cause is fixed
            answer = await call(ws, "retry", 3, entity_id="flaky")
            assert answer["entity_id"] == leaf.id
            assert await runtime.wait(leaf.id) == {"name": "flaky", "value": 8}
            missing = await error(ws, frame("retry", 4, entity_id="nobody"), 4)
            assert missing["code"] == "not_found"


async def test_pages_polling_one_run_share_the_stores_answers(served: Served) -> None:
    """Twenty connections asking for one run's tree at once cost the store one tree; a
    write (a cancel) makes the next answer fresh."""
    runtime = served.runtime
    fan = await runtime.create("FanOut", {"count": 3}, name="shared")
    await runtime.start(fan.id)
    await runtime.wait(fan.id)
    reads = served.server.reads
    trees: list[dict[str, object]] = []

    async def page() -> None:
        async with open_raw(served.url) as ws:
            trees.append(await call(ws, "tree", 1, entity_id="shared", depth=1))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(page)
        assert len(trees) == 20
        assert all(tree == trees[0] for tree in trees)
        assert reads.computed + reads.shared >= 20
        assert reads.computed <= 2
        leaf = await runtime.create("Leaf", {"gate": True}, name="stuck")
        async with open_raw(served.url) as ws:
            before = reads.computed
            await call(ws, "tree", 1, entity_id="stuck")
            await call(ws, "start", 2, entity_id=leaf.id)  # a write: the next tree is fresh
            await call(ws, "cancel", 3, entity_id=leaf.id)
            tree = await call(ws, "tree", 4, entity_id="stuck")
            assert tree["status"] == "CANCELLED"
            assert reads.computed == before + 2


async def test_a_subscription_to_a_runs_own_envelopes_reads_only_those(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``subtree: false`` is read as such from the store: following a run of many children
    costs no query over its children."""
    runtime = served.runtime
    store = runtime.store
    asked: list[bool] = []
    read = store.read_envelopes

    async def recording(*args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs.get("subtree", True))
        return await read(*args, **kwargs)

    monkeypatch.setattr(store, "read_envelopes", recording)
    fan = await runtime.create("FanOut", {"count": 5}, name="own")
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            number = (await call(ws, "subscribe", 1, entity_id="own", subtree=False))[
                "subscription"
            ]
            await call(ws, "start", 2, entity_id=fan.id)
            events = await events_until_end(ws, number)
    envelopes = [event["envelope"] for event in events[:-1]]
    assert {e["entity_id"] for e in envelopes} == {fan.id}
    assert [e["seq"] for e in envelopes] == [
        e.seq for e in await runtime.envelopes(fan.id, subtree=False)
    ]
    assert asked
    assert not any(asked)  # every read was of the run's own envelopes
