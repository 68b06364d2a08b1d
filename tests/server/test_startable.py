"""``Application(startable=...)``: which entities the protocol's generic ``start`` may begin a
run of. Endpoints (``ctx.start``) start anything; ``start`` follows what they started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from sluiceway import EntityFailedError, EntityStatus
from sluiceway.client import ServerError, connect
from sluiceway.server import Application, EndpointContext
from tests.entities import workflows
from tests.entities.workflows import Leaf
from tests.server.conftest import TIMEOUT, TYPES, Note, serving


def restricted_app(startable: Any) -> Application:
    """The test types, ``startable`` as given, and an endpoint ``go`` that starts any entity
    (as ``campaigns/execute`` starts a campaign)."""
    app = Application("startable-tests", types=TYPES, startable=startable)

    @app.endpoint("go")
    async def go(ctx: EndpointContext, body: dict[str, Any]) -> Any:
        return await ctx.start(body["entity_id"])

    return app


async def test_start_refuses_a_type_left_out_and_submits_nothing(db: Path) -> None:
    app = restricted_app([Leaf, "Chain"])
    with trio.fail_after(TIMEOUT):
        async with serving(db, app=app) as served, connect(served.url) as client:
            fan = await client.create("FanOut", {"count": 2, "per_parent": 2}, name="fan")
            with pytest.raises(ServerError) as refused:
                await client.start("fan")
            assert refused.value.code == "not_runnable"
            assert refused.value.details == {"startable": False}
            assert refused.value.message == (
                "startable-tests does not let start begin a run of FanOut 'fan' (PENDING): the "
                "application's endpoints start it"
            )
            record = await served.runtime.get(fan["id"])
            assert (record.status, record.runnable_at) == (EntityStatus.PENDING, None)

            # The types it names start as before (as a class or by name).
            leaf = await client.create("Leaf", {"value": 4})
            assert (await client.start(leaf["id"]))["state"] == "started"
            assert await served.runtime.wait(leaf["id"]) == {"name": leaf["name"], "value": 8}
            await client.create("Chain", {"children": []}, name="chain")
            assert (await client.start("chain"))["state"] == "started"


async def test_start_follows_a_run_an_endpoint_began(db: Path) -> None:
    """What ``sluiceway run`` does after an endpoint started the run: ``start`` answers
    running while it runs (submitting nothing), then completed with the result."""
    app = restricted_app([])
    with trio.fail_after(TIMEOUT):
        async with serving(db, app=app) as served, connect(served.url) as client:
            gated = await client.create("Leaf", {"gate": True, "value": 3}, name="gated")
            assert (await client.call("go", {"entity_id": gated["id"]}))["state"] == "started"
            await workflows.started("gated").wait()
            attempt = (await served.runtime.get(gated["id"])).attempt
            assert await client.start("gated") == {"entity_id": gated["id"], "state": "running"}
            workflows.GATES.setdefault("gated", trio.Event()).set()
            assert await served.runtime.wait(gated["id"]) == {"name": "gated", "value": 6}
            assert await client.start("gated") == {
                "entity_id": gated["id"],
                "state": "completed",
                "result": {"name": "gated", "value": 6},
            }
            assert (await served.runtime.get(gated["id"])).attempt == attempt  # one run


async def test_start_of_a_run_submitted_by_an_endpoint_submits_nothing(db: Path) -> None:
    """An entity its endpoint submitted (due, perhaps not claimed yet) is followed: the
    answer is running or completed, never a refusal."""
    app = restricted_app([])
    with trio.fail_after(TIMEOUT):
        async with serving(db, app=app) as served, connect(served.url) as client:
            leaf = await served.runtime.create(Leaf, {"value": 5}, name="due")
            await served.runtime.start(leaf.id)  # what ctx.start does
            answer = await client.start("due")
            assert answer["state"] in ("running", "completed"), answer
            assert await served.runtime.wait(leaf.id) == {"name": "due", "value": 10}
            assert (await served.runtime.get(leaf.id)).attempt == 1


async def test_a_predicate_decides_by_the_record(db: Path) -> None:
    app = restricted_app(lambda record: record.type == "Leaf" and record.data.get("ok"))
    with trio.fail_after(TIMEOUT):
        async with serving(db, app=app) as served, connect(served.url) as client:
            good = await client.create("Leaf", {"ok": True})
            bad = await client.create("Leaf", {"ok": False})
            assert (await client.start(good["id"]))["state"] == "started"
            with pytest.raises(ServerError, match="not_runnable"):
                await client.start(bad["id"])
            # An endpoint may start it all the same.
            assert (await client.call("go", {"entity_id": bad["id"]}))["state"] == "started"
            assert await served.runtime.wait(bad["id"]) == {"name": bad["name"], "value": 0}


async def test_the_other_answers_and_refusals_are_as_before(db: Path) -> None:
    """A data entity is not_runnable as always (without ``startable`` details); a cancelled
    entity is cancelled; a completed one answers completed."""
    app = restricted_app([])
    with trio.fail_after(TIMEOUT):
        async with serving(db, app=app) as served, connect(served.url) as client:
            note = await served.runtime.create(Note, {})
            with pytest.raises(ServerError) as refused:
                await client.start(note.id)
            assert (refused.value.code, refused.value.details) == ("not_runnable", None)
            leaf = await served.runtime.create(Leaf, {"value": 2})
            assert await served.runtime.run(leaf.id) == {"name": leaf.name, "value": 4}
            assert (await client.start(leaf.id))["state"] == "completed"
            other = await served.runtime.create(Leaf, {})
            await served.runtime.cancel(other.id)
            with pytest.raises(ServerError) as cancelled:
                await client.start(other.id)
            assert cancelled.value.code == "cancelled"


def test_startable_is_checked_when_the_application_is_made() -> None:
    record_type = Application("a", types=TYPES)
    assert record_type.startable is None
    with pytest.raises(ValueError, match="'Nope', which is not a type of a"):
        Application("a", types=TYPES, startable=["Nope"])
    with pytest.raises(TypeError, match="entity types"):
        Application("a", types=TYPES, startable=[3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="collection"):
        Application("a", types=TYPES, startable=Leaf)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="collection"):
        Application("a", types=TYPES, startable="Leaf")


async def test_retry_obeys_startable_too(db: Path) -> None:
    """A FAILED entity the application keeps to its endpoints is not retried by the protocol
    (a failed campaign is executed again through its endpoint, which prepares it)."""
    app = restricted_app(["Chain"])
    with trio.fail_after(TIMEOUT):
        async with serving(db, app=app) as served, connect(served.url) as client:
            leaf = await client.create("Leaf", {"value": 1, "fail": True}, name="kept")
            await client.call("go", {"entity_id": leaf["id"]})
            with pytest.raises(EntityFailedError):
                await served.runtime.wait(leaf["id"])
            with pytest.raises(ServerError) as refused:
                await client.retry("kept")
            assert (refused.value.code, refused.value.details) == (
                "not_runnable",
                {"startable": False},
            )
            assert (await served.runtime.get(leaf["id"])).runnable_at is None
