"""Every operation's happy path over the real protocol: a real server on a SQLite file, raw
WebSocket connections (and the client library where it says so)."""

from __future__ import annotations

from typing import Any

import trio
from trio_websocket import WebSocketConnection

from sluiceway import __version__
from sluiceway.client import connect
from tests.entities import workflows
from tests.server.conftest import (
    TIMEOUT,
    Served,
    call,
    error,
    events_until_end,
    frame,
    hello,
    open_raw,
    receive,
    response,
)


def envelopes_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The envelopes of a subscription's events (the last event is its ``end``)."""
    assert events[-1]["event"] == "end"
    assert all(event["event"] == "envelope" for event in events[:-1])
    return [event["envelope"] for event in events[:-1]]


async def stored(served: Served, entity_id: str, **kwargs: Any) -> list[dict[str, Any]]:
    return [e.to_dict() for e in await served.runtime.envelopes(entity_id, **kwargs)]


async def subscribe_all(
    ws: WebSocketConnection, ident: int, entity_id: str, **fields: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Subscribe and read to the end: (envelopes, end event)."""
    result = await call(ws, "subscribe", ident, entity_id=entity_id, **fields)
    events = await events_until_end(ws, result["subscription"])
    return envelopes_of(events), events[-1]


async def test_hello_and_ping(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            first = await receive(ws)
            assert first == {
                "v": 1,
                "event": "hello",
                "protocol": 1,
                "server": "sluiceway",
                "version": __version__,
                "app": "server-tests",
                "max_frame_bytes": 1024 * 1024,
            }
            assert await call(ws, "ping", 1) == {"pong": True}
            assert await call(ws, "ping", "a-string-id") == {"pong": True}
            # The same id may be used again once answered.
            assert await call(ws, "ping", 1) == {"pong": True}


async def test_create_start_subscribe(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            children = [{"name": f"leaf-{i}", "data": {"value": i}} for i in range(3)]
            created = await call(
                ws, "create", 1, type="Chain", data={"children": children}, name="chain"
            )
            assert created["type"] == "Chain"
            assert created["name"] == "chain"
            assert created["status"] == "PENDING"
            assert created["data"] == {"children": children}
            assert created["parent_id"] is None
            root = created["id"]

            # Subscribing before the start: the subscription follows the run from its start.
            subscription = (await call(ws, "subscribe", 2, entity_id=root))["subscription"]
            assert await call(ws, "start", 3, entity_id=root) == {
                "entity_id": root,
                "state": "started",
            }
            events = await events_until_end(ws, subscription)
            got = envelopes_of(events)
            assert got == await stored(served, root)
            assert events[-1] == {
                "v": 1,
                "event": "end",
                "subscription": subscription,
                "status": "COMPLETED",
                "seq": got[-1]["seq"],
            }
            seqs = [e["seq"] for e in got]
            assert seqs == sorted(set(seqs))
            assert {e["entity_name"] for e in got} == {"chain", "leaf-0", "leaf-1", "leaf-2"}
            assert got[-1]["entity_id"] == root
            assert (got[-1]["type"], got[-1]["status"]) == ("STATUS", "COMPLETED")

            record = await call(ws, "get", 4, entity_id=root)
            assert record["status"] == "COMPLETED"
            assert record["result"] == [{"name": f"leaf-{i}", "value": 2 * i} for i in range(3)]
            # Starting a completed entity returns its result; it does not run again.
            assert await call(ws, "start", 5, entity_id=root) == {
                "entity_id": root,
                "state": "completed",
                "result": record["result"],
            }
            assert workflows.EXECUTIONS["chain"] == 1


async def test_subscribe_entity_only_and_after_seq(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            children = [{"name": f"leaf-{i}", "data": {"value": i}} for i in range(3)]
            root = (await call(ws, "create", 1, type="Chain", data={"children": children}))["id"]
            await call(ws, "start", 2, entity_id=root)
            everything, _ = await subscribe_all(ws, 3, root)

            # The entity alone: its own envelopes, in order, nothing of its children.
            own, end = await subscribe_all(ws, 4, root, subtree=False)
            assert own == await stored(served, root, subtree=False)
            assert own == [e for e in everything if e["entity_id"] == root]
            assert end["status"] == "COMPLETED"

            # A child's subscription ends with the child's status.
            child_id = next(e["entity_id"] for e in everything if e["entity_name"] == "leaf-1")
            child, end = await subscribe_all(ws, 5, child_id)
            assert child == [e for e in everything if e["entity_id"] == child_id]
            assert end["status"] == "COMPLETED"

            # From after_seq: exactly the envelopes after it, from every position.
            for cut in {0, everything[0]["seq"], everything[len(everything) // 2]["seq"]}:
                rest, end = await subscribe_all(ws, 6, root, after_seq=cut)
                assert rest == [e for e in everything if e["seq"] > cut]
            rest, end = await subscribe_all(ws, 7, root, after_seq=everything[-1]["seq"])
            assert rest == []
            assert end["status"] == "COMPLETED"
            assert end["seq"] >= everything[-1]["seq"]

            # Entity only, from after_seq.
            cut = own[1]["seq"]
            rest, _ = await subscribe_all(ws, 8, root, after_seq=cut, subtree=False)
            assert rest == [e for e in own if e["seq"] > cut]


async def test_start_twice_and_unsubscribe(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            gate = workflows.GATES["held"] = trio.Event()
            leaf = (await call(ws, "create", 1, type="Leaf", data={"gate": True}, name="held"))[
                "id"
            ]
            assert (await call(ws, "start", 2, entity_id=leaf))["state"] == "started"
            await workflows.started("held").wait()
            assert (await call(ws, "start", 3, entity_id=leaf))["state"] == "running"

            subscription = (await call(ws, "subscribe", 4, entity_id=leaf))["subscription"]
            # The run waits at its gate: the subscription shows STARTED and RUNNING, then waits.
            first = [await receive(ws), await receive(ws)]
            assert [f["envelope"]["status"] for f in first] == ["STARTED", "RUNNING"]

            # Unsubscribing answers {} and ends the subscription (in either order).
            await ws.send_message(frame("unsubscribe", 5, subscription=subscription))
            frames = [await receive(ws), await receive(ws)]
            answer = next(f for f in frames if "id" in f)
            end = next(f for f in frames if "event" in f)
            assert answer == {"v": 1, "id": 5, "ok": True, "result": {}}
            assert end["event"] == "end"
            assert end["subscription"] == subscription
            assert end["status"] == "unsubscribed"
            assert end["seq"] == first[-1]["envelope"]["seq"]
            # It is gone.
            body = await error(ws, frame("unsubscribe", 6, subscription=subscription), 6)
            assert body["code"] == "unknown_subscription"

            # A second subscription numbers on; the run goes on without subscribers.
            again = (await call(ws, "subscribe", 7, entity_id=leaf))["subscription"]
            assert again != subscription
            gate.set()
            events = await events_until_end(ws, again)
            assert events[-1]["status"] == "COMPLETED"
            assert envelopes_of(events) == await stored(served, leaf)
            assert workflows.EXECUTIONS["held"] == 1


async def test_send_message_to_a_waiting_entity(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            asker = (await call(ws, "create", 1, type="Asker", name="asker"))["id"]
            subscription = (await call(ws, "subscribe", 2, entity_id=asker))["subscription"]
            await call(ws, "start", 3, entity_id=asker)
            while True:
                got = await receive(ws)
                assert got["subscription"] == subscription
                if got["envelope"]["type"] == "WAITING":
                    break
            assert got["envelope"]["message"] == "approve asker?"
            assert (await call(ws, "get", 4, entity_id=asker))["status"] == "WAITING"

            sent = await call(
                ws, "send_message", 5, entity_id=asker, message="yes", data={"by": "ops"}
            )
            assert set(sent) == {"message_id"}
            assert isinstance(sent["message_id"], int)

            events = await events_until_end(ws, subscription)
            assert events[-1]["status"] == "COMPLETED"
            kinds = [e["envelope"]["type"] for e in events[:-1]]
            assert kinds[0] == "MESSAGE"
            assert events[0]["envelope"]["message"] == "yes"
            record = await call(ws, "get", 6, entity_id=asker)
            assert record["result"] == {
                "name": "asker",
                "value": 1,
                "answer": "yes",
                "data": {"by": "ops"},
            }
            # A completed entity takes no message.
            body = await error(ws, frame("send_message", 7, entity_id=asker, message="again"), 7)
            assert body["code"] == "not_waiting"


async def test_cancel(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            workflows.GATES["stuck"] = trio.Event()  # never set
            leaf = (await call(ws, "create", 1, type="Leaf", data={"gate": True}, name="stuck"))[
                "id"
            ]
            subscription = (await call(ws, "subscribe", 2, entity_id=leaf))["subscription"]
            await call(ws, "start", 3, entity_id=leaf)
            await workflows.started("stuck").wait()
            assert await call(ws, "cancel", 4, entity_id=leaf) == {"cancelled": [leaf]}
            events = await events_until_end(ws, subscription)
            assert events[-1]["status"] == "CANCELLED"
            stored = [e.to_dict() for e in await served.runtime.envelopes(leaf)]
            assert (stored[-1]["type"], stored[-1]["status"]) == ("STATUS", "CANCELLED")
            # The subscription delivered the log's tail: envelopes that came while the cancel
            # call waited for its answer were passed over by it, not lost.
            delivered = [e["envelope"] for e in events[:-1]]
            assert delivered == stored[len(stored) - len(delivered) :]
            assert (await call(ws, "get", 5, entity_id=leaf))["status"] == "CANCELLED"
            # Cancelling again cancels nothing more.
            assert await call(ws, "cancel", 6, entity_id=leaf) == {"cancelled": []}
            assert workflows.EXECUTIONS["stuck"] == 1


async def test_get(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            created = await call(ws, "create", 1, type="Leaf", data={"value": 4}, name="four")
            got = await call(ws, "get", 2, entity_id=created["id"])
            assert got == created
            assert got["status"] == "PENDING"
            record = await served.runtime.get(created["id"])
            assert got["id"] == record.id
            assert got["data"] == {"value": 4}
            # exist_ok returns the existing entity unchanged.
            again = await call(
                ws, "create", 3, type="Leaf", data={"value": 5}, name="four", exist_ok=True
            )
            assert again["id"] == created["id"]
            assert again["data"] == {"value": 4}


async def test_tree(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            children = [
                {
                    "type": "Chain",
                    "name": "mid",
                    "data": {"children": [{"name": "deep", "data": {"value": 1}}]},
                },
                *({"name": f"leaf-{i}", "data": {"value": i}} for i in range(4)),
            ]
            root = (await call(ws, "create", 1, type="Chain", data={"children": children}))["id"]
            await call(ws, "start", 2, entity_id=root)
            await subscribe_all(ws, 3, root)

            full = await call(ws, "tree", 4, entity_id=root)
            assert full["id"] == root
            assert full["status"] == "COMPLETED"
            assert full["children_by_status"] == {"COMPLETED": 5}
            assert [c["name"] for c in full["children"]] == [
                "mid",
                *(f"leaf-{i}" for i in range(4)),
            ]
            assert full["more"] == 0
            mid = full["children"][0]
            assert mid["type"] == "Chain"
            assert [c["name"] for c in mid["children"]] == ["deep"]
            assert mid["children"][0]["children"] == []
            assert mid["children"][0]["children_by_status"] == {}
            assert "more" not in mid["children"][0]  # no children, nothing more

            limited = await call(ws, "tree", 5, entity_id=root, max_children=2)
            assert [c["name"] for c in limited["children"]] == ["mid", "leaf-0"]
            assert limited["more"] == 3
            assert limited["children_by_status"] == {"COMPLETED": 5}

            shallow = await call(ws, "tree", 6, entity_id=root, depth=1)
            assert len(shallow["children"]) == 5
            assert shallow["children"][0]["children"] == []
            assert shallow["children"][0]["more"] == 1  # "deep", not shown at this depth

            top = await call(ws, "tree", 7, entity_id=root, depth=0)
            assert top["children"] == []
            assert top["more"] == 5
            none = await call(ws, "tree", 8, entity_id=root, max_children=0)
            assert none["children"] == []
            assert none["more"] == 5
            explicit = await call(ws, "tree", 9, entity_id=root, depth=None, max_children=20)
            assert explicit == full


async def test_call_endpoints(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            assert await call(ws, "call", 1, endpoint="echo", body={"a": [1, "b"]}) == {
                "body": {"a": [1, "b"]},
                "state": "state",
            }
            assert await call(ws, "call", 2, endpoint="echo") == {"body": {}, "state": "state"}

            refused = await error(ws, frame("call", 3, endpoint="refuse", body={}), 3)
            assert refused == {
                "code": "endpoint_error",
                "message": "approve the template first",
                "details": {"code": "template_not_approved", "details": {"id": 7}},
            }
            missing = await error(ws, frame("call", 4, endpoint="fanout/create", body={}), 4)
            assert missing["code"] == "endpoint_error"
            assert missing["details"] == {"code": "missing_count", "details": {"field": "count"}}

            unknown = await error(ws, frame("call", 5, endpoint="no/such", body={}), 5)
            assert unknown["code"] == "unknown_endpoint"
            assert "no/such" in unknown["message"]
            assert "details" not in unknown

            # A bug inside an endpoint: an internal error that names no internals.
            broken = await error(ws, frame("call", 6, endpoint="boom"), 6)
            assert broken["code"] == "internal_error"
            assert "secret" not in broken["message"]

            # An endpoint that starts a run in the server; the run outlives the request.
            started = await call(ws, "call", 7, endpoint="fanout/create", body={"count": 6})
            fanout = started["entity_id"]
            got, end = await subscribe_all(ws, 8, fanout)
            assert end["status"] == "COMPLETED"
            assert got == await stored(served, fanout)
            record = await call(ws, "get", 9, entity_id=fanout)
            assert record["result"] == {"ok": 6, "failed": 0, "total": 30, "status": "completed"}


async def test_requests_are_answered_concurrently(served: Served) -> None:
    """A slow request does not hold up the others of its connection; each gets its answer."""
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            await ws.send_message(frame("call", "slow", endpoint="gate", body={"gate": "g"}))
            for i in range(5):
                assert await call(ws, "ping", i) == {"pong": True}
            workflows.GATES.setdefault("g", trio.Event()).set()
            assert (await response(ws, "slow"))["result"] == {"passed": "g"}


async def test_several_subscribers_see_the_same_sequence(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            fanout = (await call(ws, "create", 1, type="FanOut", data={"count": 12}))["id"]
            seen: dict[int, list[dict[str, Any]]] = {}

            async def follow(index: int, task_status: trio.TaskStatus[None]) -> None:
                async with open_raw(served.url) as own:
                    await hello(own)
                    number = (await call(own, "subscribe", 1, entity_id=fanout))["subscription"]
                    task_status.started()
                    seen[index] = await events_until_end(own, number)

            async with trio.open_nursery() as nursery:
                for index in range(5):
                    await nursery.start(follow, index)
                await call(ws, "start", 2, entity_id=fanout)
            expected = await stored(served, fanout)
            assert len(expected) > 12 * 4
            for events in seen.values():
                assert envelopes_of(events) == expected
                assert events[-1]["status"] == "COMPLETED"
            assert len(seen) == 5


async def test_several_client_subscriptions_on_one_connection(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(served.url) as client:
            fanout = (await client.create("FanOut", {"count": 8}))["id"]
            seen: list[list[int]] = []

            async def follow(task_status: trio.TaskStatus[None]) -> None:
                async with client.subscribe(fanout) as subscription:
                    task_status.started()
                    seen.append([envelope.seq async for envelope in subscription])
                    assert subscription.status == "COMPLETED"

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    await nursery.start(follow)
                await client.start(fanout)
            expected = [e.seq for e in await served.runtime.envelopes(fanout)]
            assert seen == [expected] * 5
