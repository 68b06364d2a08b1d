"""Roots by name, the start checks shared by the operation and endpoints, and the client's
own frame limit."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from sluiceway import open_runtime
from sluiceway.client import ServerError, connect
from sluiceway.server import EndpointContext
from tests.entities import workflows
from tests.server.conftest import TIMEOUT, TYPES, Served, call, error, hello, open_raw


async def test_a_root_is_found_by_its_name(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            made = await call(ws, "create", 1, type="Leaf", data={"value": 4}, name="by-name")
            assert (await call(ws, "get", 2, entity_id="by-name"))["id"] == made["id"]
            started = await call(ws, "start", 3, entity_id="by-name")
            assert started["entity_id"] == made["id"]
        async with connect(served.url) as client:
            async with client.subscribe("by-name") as envelopes:
                seen = [envelope async for envelope in envelopes]
            assert seen[-1].status == "COMPLETED"
            assert {envelope.entity_id for envelope in seen} == {made["id"]}
            tree = await client.tree("by-name")
            assert tree["id"] == made["id"]
            assert await client.cancel("by-name") == []
            with pytest.raises(ServerError) as caught:
                await client.get("no-such-name")
            assert caught.value.code == "not_found"


async def test_start_answers_running_for_an_entity_another_runtime_runs(served: Served) -> None:
    leaf = await served.runtime.create("Leaf", {"gate": True}, name="elsewhere")
    gate = workflows.GATES["elsewhere"] = trio.Event()
    with trio.fail_after(TIMEOUT):
        async with (
            open_runtime(served.path, TYPES, work=False) as other,
            trio.open_nursery() as nursery,
            open_raw(served.url) as ws,
        ):
            nursery.start_soon(other.run, leaf.id)
            await workflows.started("elsewhere").wait()
            await hello(ws)
            answer = await call(ws, "start", 1, entity_id=leaf.id)
            assert answer == {"entity_id": leaf.id, "state": "running"}
            assert not served.runtime.is_running(leaf.id)  # nothing was started here
            gate.set()


async def test_endpoints_start_with_the_same_checks(served: Served) -> None:
    answers: list[Any] = []

    @served.server.app.endpoint("start-twice")
    async def start_twice(ctx: EndpointContext, body: dict[str, Any]) -> Any:
        record = await ctx.runtime.create("Leaf", {"value": 1})
        await ctx.runtime.run(record.id)
        answers.append(await ctx.start(record.id))
        note = await ctx.runtime.create("Note", {})
        return await ctx.start(note.id)

    with trio.fail_after(TIMEOUT):
        async with connect(served.url) as client:
            with pytest.raises(ServerError) as caught:
                await client.call("start-twice")
    assert caught.value.code == "not_runnable"
    assert answers[0]["state"] == "completed"
    assert answers[0]["result"] == {"name": answers[0]["entity_id"], "value": 2}


async def test_a_float_version_is_not_version_1(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            text = '{"v": 1.0, "id": 1, "op": "ping"}'
            assert (await error(ws, text, 1))["code"] == "unsupported_version"


async def test_the_client_refuses_a_request_over_the_servers_frame_limit(
    served: Served,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(served.url) as client:
            assert client.hello["max_frame_bytes"] == 1024 * 1024
            with pytest.raises(ServerError) as caught:
                await client.call("echo", {"blob": "x" * (2 * 1024 * 1024)})
            assert caught.value.code == "frame_too_large"
            assert await client.call("echo", {"small": 1}) is not None  # still usable
