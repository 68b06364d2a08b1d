"""Error responses: every code the server sends, each for the request that caused it (its id
echoed when it could be read), and the connection keeps working after each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed

from sluiceway import open_runtime
from sluiceway.server import EndpointContext, ServerLimits
from tests.entities import workflows
from tests.server.conftest import (
    TIMEOUT,
    TYPES,
    Chatter,
    Served,
    call,
    error,
    frame,
    hello,
    open_raw,
    receive,
    response,
    serving,
)

UNKNOWN = "00000000-0000-0000-0000-000000000000"


async def test_not_found(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            requests = [
                ("get", {}),
                ("start", {}),
                ("subscribe", {}),
                ("subscribe", {"subtree": False, "after_seq": 3}),
                ("cancel", {}),
                ("tree", {}),
                ("send_message", {"message": "yes"}),
            ]
            for ident, (op, fields) in enumerate(requests):
                body = await error(ws, frame(op, ident, entity_id=UNKNOWN, **fields), ident)
                assert body["code"] == "not_found", (op, body)
                assert UNKNOWN in body["message"]
            assert await call(ws, "ping", "after") == {"pong": True}


async def test_conflict_and_unknown_type(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            first = await call(ws, "create", 1, type="Leaf", name="taken")
            body = await error(ws, frame("create", 2, type="Leaf", name="taken"), 2)
            assert body["code"] == "conflict"
            assert "taken" in body["message"]
            # exist_ok does not make a name taken by another type usable.
            other = await error(
                ws, frame("create", 3, type="Chain", name="taken", exist_ok=True), 3
            )
            assert other["code"] == "conflict"
            assert "Leaf" in other["message"]
            assert (await call(ws, "get", 4, entity_id=first["id"]))["type"] == "Leaf"

            body = await error(ws, frame("create", 5, type="NoSuchType"), 5)
            assert body["code"] == "unknown_type"
            assert "NoSuchType" in body["message"]


async def test_cancelled_not_runnable_not_waiting(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            leaf = (await call(ws, "create", 1, type="Leaf", name="doomed"))["id"]
            assert await call(ws, "cancel", 2, entity_id=leaf) == {"cancelled": [leaf]}
            body = await error(ws, frame("start", 3, entity_id=leaf), 3)
            assert body["code"] == "cancelled"
            assert workflows.EXECUTIONS["doomed"] == 0
            body = await error(ws, frame("send_message", 4, entity_id=leaf, message="hi"), 4)
            assert body["code"] == "not_waiting"

            note = (await call(ws, "create", 5, type="Note", data={"text": "hi"}))["id"]
            body = await error(ws, frame("start", 6, entity_id=note), 6)
            assert body["code"] == "not_runnable"
            assert (await call(ws, "get", 7, entity_id=note))["status"] == "PENDING"


async def test_invalid_requests(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            leaf = (await call(ws, "create", 0, type="Leaf"))["id"]
            wrong = [
                # wrong types: no coercion
                {"op": "get", "entity_id": 5},
                {"op": "subscribe", "entity_id": leaf, "after_seq": "1"},
                {"op": "subscribe", "entity_id": leaf, "after_seq": 1.5},
                {"op": "subscribe", "entity_id": leaf, "after_seq": True},
                {"op": "subscribe", "entity_id": leaf, "subtree": 1},
                {"op": "create", "type": "Leaf", "data": [1, 2]},
                {"op": "create", "type": "Leaf", "name": 7},
                {"op": "create", "type": "Leaf", "exist_ok": "yes"},
                {"op": "tree", "entity_id": leaf, "depth": "2"},
                {"op": "call", "endpoint": "echo", "body": "text"},
                {"op": "unsubscribe", "subscription": "1"},
                # unknown fields
                {"op": "ping", "extra": 1},
                {"op": "get", "entity_id": leaf, "entity": leaf},
                # missing fields
                {"op": "get"},
                {"op": "send_message", "entity_id": leaf},
                {"op": "call"},
            ]
            for ident, fields in enumerate(wrong, start=1):
                text = json.dumps({"v": 1, "id": ident, **fields})
                body = await error(ws, text, ident)
                assert body["code"] == "invalid_request", (fields, body)
                assert isinstance(body["details"]["problems"], list), body
                assert body["details"]["problems"], body

            # Checked by the operation itself (the message says what is wrong).
            checked = [
                ({"op": "subscribe", "entity_id": leaf, "after_seq": -1}, "after_seq"),
                ({"op": "subscribe", "entity_id": leaf, "after_seq": 2**70}, "after_seq"),
                ({"op": "tree", "entity_id": leaf, "depth": -1}, "depth"),
                ({"op": "tree", "entity_id": leaf, "max_children": -2}, "max_children"),
                ({"op": "create", "type": "Leaf", "name": ""}, "name"),
                ({"op": "send_message", "entity_id": leaf, "message": ""}, "message"),
            ]
            for ident, (fields, word) in enumerate(checked, start=100):
                body = await error(ws, json.dumps({"v": 1, "id": ident, **fields}), ident)
                assert body["code"] == "invalid_request", (fields, body)
                assert word in body["message"], (fields, body)

            # A request without a usable id: the error's id is null.
            for ident in [None, True, 1.5, "", "x" * 65, [1], {"a": 1}]:
                fields = {"v": 1, "op": "ping"}
                if ident is not None:
                    fields["id"] = ident
                body = await error(ws, json.dumps(fields), None)
                assert body["code"] == "invalid_request", (ident, body)
                assert "id" in body["message"]
            # The longest id allowed is echoed.
            assert await call(ws, "ping", "x" * 64) == {"pong": True}
            assert await call(ws, "ping", -(2**70)) == {"pong": True}
            assert await call(ws, "ping", "ping") == {"pong": True}


async def test_unsupported_version_and_unknown_op(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            for ident, version in enumerate([2, 0, "1", True, None, 1.0001]):
                fields = {"id": ident, "op": "ping"}
                if version is not None:
                    fields["v"] = version
                body = await error(ws, json.dumps(fields), ident)
                assert body["code"] == "unsupported_version", (version, body)
                assert body["details"] == {"supported": [1]}
            for ident, op in enumerate(["nope", 5, None, "", "PING", ["ping"]], start=10):
                fields = {"v": 1, "id": ident}
                if op is not None:
                    fields["op"] = op
                body = await error(ws, json.dumps(fields), ident)
                assert body["code"] == "unknown_op", (op, body)
                assert "details" not in body
                assert "ping" in body["message"]  # the known ops are listed


async def test_bad_frames(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            for text in ["not json", "", "[1, 2]", "42", '"text"', "null", '{"v": 1,', "{" * 5000]:
                body = await error(ws, text, None)
                assert body["code"] == "bad_frame", (text[:20], body)
            for data in [b"\x00", b'{"v": 1, "id": 1, "op": "ping"}', b""]:
                body = await error(ws, data, None)
                assert body["code"] == "bad_frame"
                assert "binary" in body["message"]
            assert await call(ws, "ping", 1) == {"pong": True}


async def test_frame_too_large(db: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(db, limits=ServerLimits(max_frame_bytes=1000)) as served:
            async with open_raw(served.url) as ws:
                await hello(ws)
                pad = "x" * 1000
                body = await error(ws, frame("call", 1, endpoint="echo", body={"pad": pad}), None)
                assert body["code"] == "frame_too_large"
                assert "1000" in body["message"]
                # Counted in UTF-8 bytes: 400 characters of 3 bytes each are too many.
                body = await error(ws, frame("call", 2, endpoint="echo", body={"p": "€" * 400}))
                assert body["code"] == "frame_too_large"
                # Just under the limit is fine.
                small = frame("call", 3, endpoint="echo", body={"pad": ""})
                fits = frame("call", 3, endpoint="echo", body={"pad": "x" * (1000 - len(small))})
                assert len(fits.encode()) == 1000
                await ws.send_message(fits)
                assert (await response(ws, 3))["ok"] is True
                assert await call(ws, "ping", 4) == {"pong": True}

            # Far beyond the limit, the transport itself closes the connection (1009).
            async with open_raw(served.url) as ws:
                await hello(ws)
                await ws.send_message("x" * 10_000)
                with pytest.raises(ConnectionClosed) as closed:
                    await receive(ws)
                assert closed.value.reason.code == 1009
            # The server goes on.
            async with open_raw(served.url) as ws:
                await hello(ws)
                assert await call(ws, "ping", 1) == {"pong": True}


async def test_too_many_requests(db: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            serving(db, limits=ServerLimits(max_pending=1)) as served,
            open_raw(served.url) as ws,
            open_raw(served.url) as other,
        ):
            await hello(ws)
            await hello(other)
            await ws.send_message(frame("call", "slow", endpoint="gate", body={"gate": "g"}))
            for ident in range(3):
                body = await error(ws, frame("ping", ident), ident)
                assert body["code"] == "too_many_requests"
                assert "1" in body["message"]
            # The limit is per connection.
            assert await call(other, "ping", 1) == {"pong": True}
            workflows.GATES.setdefault("g", trio.Event()).set()
            assert (await response(ws, "slow"))["result"] == {"passed": "g"}
            assert await call(ws, "ping", 9) == {"pong": True}

            # A subscription is answered at once: it holds no request slot, so the
            # connection can still unsubscribe (and do anything else).
            leaf = (await call(ws, "create", 10, type="Leaf", name="held"))["id"]
            number = (await call(ws, "subscribe", 11, entity_id=leaf))["subscription"]
            assert await call(ws, "ping", 12) == {"pong": True}
            await ws.send_message(frame("unsubscribe", 13, subscription=number))
            frames = [await receive(ws), await receive(ws)]
            assert {"id": 13, "ok": True, "result": {}, "v": 1} in frames
            assert any(f.get("status") == "unsubscribed" for f in frames)


async def test_too_many_subscriptions(db: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            serving(db, limits=ServerLimits(max_subscriptions=2)) as served,
            open_raw(served.url) as ws,
        ):
            await hello(ws)
            leaf = (await call(ws, "create", 1, type="Leaf"))["id"]
            first = (await call(ws, "subscribe", 2, entity_id=leaf))["subscription"]
            await call(ws, "subscribe", 3, entity_id=leaf)
            body = await error(ws, frame("subscribe", 4, entity_id=leaf), 4)
            assert body["code"] == "too_many_requests"
            assert "subscriptions" in body["message"]
            await call(ws, "unsubscribe", 5, subscription=first)
            await call(ws, "subscribe", 6, entity_id=leaf)


async def test_shutting_down(db: Path) -> None:
    """A request that starts a run while the server stops gets ``shutting_down``, and frames
    queued before the close are delivered before it."""
    app_started: list[Any] = []
    with trio.fail_after(TIMEOUT):
        async with serving(db) as served:

            @served.server.app.endpoint("stop-then-start")
            async def stop_then_start(ctx: EndpointContext, body: dict[str, Any]) -> Any:
                record = await ctx.runtime.create("Leaf")
                assert ctx.server is not None
                ctx.server.shutdown()
                app_started.append(await ctx.start(record.id))

            async with open_raw(served.url) as ws:
                await hello(ws)
                body = await error(ws, frame("call", 1, endpoint="stop-then-start"), 1)
                assert body["code"] == "shutting_down"
                with pytest.raises(ConnectionClosed) as closed:
                    await receive(ws)
                assert closed.value.reason.code == 1001
    assert app_started == []


async def test_internal_errors_name_no_internals(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)

            @served.server.app.endpoint("not-json")
            async def not_json(ctx: EndpointContext, body: dict[str, Any]) -> Any:
                await trio.lowlevel.checkpoint()
                return {"value": {1, 2}}

            @served.server.app.endpoint("nan")
            async def nan(ctx: EndpointContext, body: dict[str, Any]) -> Any:
                await trio.lowlevel.checkpoint()
                return {"value": float("nan")}

            for ident, endpoint in enumerate(["boom", "not-json", "nan"]):
                body = await error(ws, frame("call", ident, endpoint=endpoint), ident)
                assert body["code"] == "internal_error", (endpoint, body)
                assert "secret" not in body["message"]
            assert await call(ws, "ping", 9) == {"pong": True}


async def test_text_that_utf8_cannot_carry(served: Served) -> None:
    """A lone surrogate (valid in JSON text as an escape) is echoed back escaped: the
    connection is not broken by it."""
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            await ws.send_message('{"v": 1, "id": "\\ud800", "op": "ping"}')
            assert await response(ws, "\ud800") == {
                "v": 1,
                "id": "\ud800",
                "ok": True,
                "result": {"pong": True},
            }
            echoed = await call(ws, "call", 2, endpoint="echo", body={"text": "\udfff and é"})
            assert echoed["body"] == {"text": "\udfff and é"}
            body = await error(ws, '{"v": 1, "id": 3, "op": "get", "entity_id": "\\ud800"}', 3)
            assert body["code"] in ("not_found", "invalid_request")
            assert await call(ws, "ping", 4) == {"pong": True}


SURROGATE_REQUESTS = [
    '{"v": 1, "id": 1, "op": "create", "type": "Leaf", "name": "\\ud800", "data": {"value": 1}}',
    '{"v": 1, "id": 1, "op": "create", "type": "Leaf", "data": {"value": "\\udfff"}}',
    '{"v": 1, "id": 1, "op": "create", "type": "Leaf", "data": {"\\ud800": 1}}',
    '{"v": 1, "id": 1, "op": "create", "type": "\\ud800"}',
    '{"v": 1, "id": 1, "op": "start", "entity_id": "\\ud800"}',
    '{"v": 1, "id": 1, "op": "subscribe", "entity_id": "x\\udc00"}',
    '{"v": 1, "id": 1, "op": "cancel", "entity_id": "\\ud800"}',
    '{"v": 1, "id": 1, "op": "tree", "entity_id": "\\ud800"}',
    '{"v": 1, "id": 1, "op": "send_message", "entity_id": "\\ud800", "message": "hi"}',
]


@pytest.mark.parametrize("text", SURROGATE_REQUESTS)
async def test_lone_surrogates_in_entity_names_and_data_get_structured_errors(
    served: Served, text: str
) -> None:
    """Text UTF-8 cannot carry, where the store would keep it: a structured error (never
    internal_error), and the connection and the server go on."""
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            body = await error(ws, text, 1)
            assert body["code"] in ("invalid_request", "not_found", "unknown_type"), body
            assert await call(ws, "ping", 2) == {"pong": True}
            leaf = await call(ws, "create", 3, type="Leaf", data={"value": 1})
            assert (await call(ws, "get", 4, entity_id=leaf["id"]))["data"] == {"value": 1}


async def test_clients_leaving_mid_stream_do_not_hurt_the_server(served: Served) -> None:
    """Clients that subscribe to a busy run and leave at once, mid-stream, one after the
    other: the server goes on serving the others."""
    with trio.fail_after(TIMEOUT):
        chatter = await served.runtime.create(Chatter, {"count": 1000, "pad": 10})
        async with open_raw(served.url) as good:
            await hello(good)
            number = (await call(good, "subscribe", 1, entity_id=chatter.id))["subscription"]
            await call(good, "start", 2, entity_id=chatter.id)
            for i in range(30):
                async with open_raw(served.url) as ws:
                    await hello(ws)
                    await ws.send_message(frame("subscribe", 1, entity_id=chatter.id))
                    await ws.send_message(frame("get", 2, entity_id=chatter.id))
                    for _ in range(i % 5):
                        await receive(ws)
            expected = [e.seq for e in await served.runtime.envelopes(chatter.id)]
            seen: list[int] = []
            while True:
                got = await receive(good)
                assert got["subscription"] == number
                if got["event"] == "end":
                    break
                seen.append(got["envelope"]["seq"])
            assert seen == [e.seq for e in await served.runtime.envelopes(chatter.id)]
            assert seen[: len(expected)] == expected
            assert await call(good, "ping", 3) == {"pong": True}
        # Every connection ends on the server's side too.
        await served.server._no_connections.wait()
        assert not served.server._connections


async def test_busy(served: Served) -> None:
    """An entity another runtime runs (it holds the lease) is ``busy`` for an endpoint that
    runs it itself."""
    with trio.fail_after(TIMEOUT):

        @served.server.app.endpoint("run")
        async def run(ctx: EndpointContext, body: dict[str, Any]) -> Any:
            return await ctx.runtime.run(body["entity_id"])

        leaf = await served.runtime.create("Leaf", {"gate": True}, name="elsewhere")
        gate = workflows.GATES["elsewhere"] = trio.Event()
        async with (
            open_runtime(served.path, TYPES) as other,
            trio.open_nursery() as nursery,
            open_raw(served.url) as ws,
        ):
            nursery.start_soon(other.run, leaf.id)
            await workflows.started("elsewhere").wait()
            await hello(ws)
            text = frame("call", 1, endpoint="run", body={"entity_id": leaf.id})
            body = await error(ws, text, 1)
            assert body["code"] == "busy"
            gate.set()
        assert (await served.runtime.get(leaf.id)).status.value == "COMPLETED"
