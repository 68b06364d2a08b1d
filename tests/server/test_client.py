"""The client library against a real server: its helpers, its errors, and reconnecting with
resume when the connection drops."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from sluiceway import EntityEnvelope, EntityRecord, EntityStatus, SqliteStore
from sluiceway.client import ConnectionLostError, ServerError, connect
from tests.entities import workflows
from tests.server.conftest import TIMEOUT, Chatter, Served, serving


async def test_helpers(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(served.url) as client:
            assert client.hello["event"] == "hello"
            assert client.hello["app"] == "server-tests"
            assert await client.request("ping") == {"pong": True}

            asker = await client.create("Asker", name="asker")
            assert asker["status"] == "PENDING"
            assert (await client.create("Asker", name="asker", exist_ok=True))["id"] == asker["id"]
            assert await client.start(asker["id"]) == {
                "entity_id": asker["id"],
                "state": "started",
            }
            seen: list[EntityEnvelope] = []
            async with client.subscribe(asker["id"]) as subscription:
                async for envelope in subscription:
                    seen.append(envelope)
                    if envelope.type == "WAITING":
                        message_id = await client.send_message(asker["id"], "no", {"why": 1})
                        assert isinstance(message_id, int)
                assert subscription.status == "COMPLETED"
                assert subscription.last_seq == seen[-1].seq
            assert seen == await served.runtime.envelopes(asker["id"])
            assert (await client.get(asker["id"]))["result"]["answer"] == "no"

            tree = await client.tree(asker["id"], depth=0, max_children=1)
            assert tree["children"] == []
            assert tree["status"] == "COMPLETED"
            assert await client.call("echo", {"x": 1}) == {"body": {"x": 1}, "state": "state"}

            leaf = await client.create("Leaf", {"gate": True}, name="gated")
            workflows.GATES["gated"] = trio.Event()
            await client.start(leaf["id"])
            await workflows.started("gated").wait()
            assert await client.cancel(leaf["id"]) == [leaf["id"]]

            # Only the entity's own envelopes, from a position.
            own = [e.seq for e in await served.runtime.envelopes(asker["id"], subtree=False)]
            async with client.subscribe(
                asker["id"], after_seq=own[1], subtree=False
            ) as subscription:
                assert [e.seq async for e in subscription] == own[2:]


async def test_raw_subscriptions_yield_the_envelopes_as_sent(served: Served) -> None:
    """With raw=True the envelopes come as plain dicts: the server's JSON objects, the same
    ones, in the same order, as the envelopes of the default mode."""
    with trio.fail_after(TIMEOUT):
        chatter = await served.runtime.create(Chatter, {"count": 12, "pause_after": 100})
        async with connect(served.url) as client:
            await client.start(chatter.id)
            async with client.subscribe(chatter.id, raw=True) as subscription:
                assert subscription.raw
                got = [envelope async for envelope in subscription]
            assert subscription.status == "COMPLETED"
            expected = await served.runtime.envelopes(chatter.id)
            assert all(type(envelope) is dict for envelope in got)
            assert got == [envelope.to_dict() for envelope in expected]
            assert [EntityEnvelope.from_dict(envelope) for envelope in got] == expected
            assert subscription.last_seq == expected[-1].seq

            # From a position, the entity's own envelopes only.
            async with client.subscribe(
                chatter.id, after_seq=expected[3].seq, subtree=False, raw=True
            ) as subscription:
                assert [e["seq"] async for e in subscription] == [e.seq for e in expected[4:]]
            assert subscription.status == "COMPLETED"


@pytest.mark.parametrize("raw", [False, True])
async def test_batches_give_the_same_envelopes_in_groups(served: Served, raw: bool) -> None:
    """batches() gives every envelope once, in order, in non-empty lists of at most
    max_size, and mixes with per-envelope iteration."""
    with trio.fail_after(TIMEOUT):
        chatter = await served.runtime.create(Chatter, {"count": 40, "pause_after": 100})
        expected = None
        async with connect(served.url) as client:
            await client.start(chatter.id)
            got: list[Any] = []
            sizes: list[int] = []
            async with client.subscribe(chatter.id, raw=raw) as subscription:
                got.append(await subscription.__anext__())  # one, then the rest in batches
                async for batch in subscription.batches(max_size=3):
                    assert 1 <= len(batch) <= 3
                    sizes.append(len(batch))
                    got.extend(batch)
            assert subscription.status == "COMPLETED"
            expected = await served.runtime.envelopes(chatter.id)
            assert got == ([e.to_dict() for e in expected] if raw else expected)
            assert sum(sizes) == len(expected) - 1

            with pytest.raises(ValueError, match="max_size"):
                subscription.batches(0)


async def test_batches_raise_the_subscriptions_error(db: Path) -> None:
    """After the last batch, a subscription whose connection is lost for good raises
    ConnectionLostError from batches() too."""
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            served, stop = await start_server(nursery, db)
            chatter = await served.runtime.create(Chatter, {"count": 30, "pause_after": 5})
            async with connect(served.url, reconnect_timeout=0) as client:
                await client.start(chatter.id)
                got: list[EntityEnvelope] = []
                async with client.subscribe(chatter.id) as subscription:
                    with pytest.raises(ConnectionLostError):
                        async for batch in subscription.batches():
                            got.extend(batch)
                            if len(got) >= 6:  # STARTED and 5 updates: the run waits
                                await stop()
                assert [e.seq for e in got] == list(range(1, len(got) + 1))


async def test_server_errors(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(served.url) as client:
            with pytest.raises(ServerError) as raised:
                await client.call("refuse")
            assert raised.value.code == "endpoint_error"
            assert raised.value.message == "approve the template first"
            assert raised.value.details == {"code": "template_not_approved", "details": {"id": 7}}
            assert str(raised.value) == "endpoint_error: approve the template first"

            with pytest.raises(ServerError) as raised:
                await client.get("nope")
            assert raised.value.code == "not_found"
            assert raised.value.details is None

            with pytest.raises(ServerError) as raised:
                await client.request("no_such_op")
            assert raised.value.code == "unknown_op"

            with pytest.raises(ServerError) as raised:
                await client.request("ping", extra=1)
            assert raised.value.code == "invalid_request"
            assert raised.value.details["problems"]

            # Subscribing to nothing fails at once.
            with pytest.raises(ServerError) as raised:
                async with client.subscribe("nope"):
                    pass
            assert raised.value.code == "not_found"
            # The client goes on.
            assert await client.request("ping") == {"pong": True}


async def test_leaving_a_subscription_early_unsubscribes(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        chatter = await served.runtime.create(Chatter, {"count": 10, "pause_after": 5})
        async with connect(served.url) as client:
            await client.start(chatter.id)
            async with client.subscribe(chatter.id) as subscription:
                async for envelope in subscription:
                    if envelope.type == "INTERNAL_UPDATE":
                        break
            assert subscription.status == "unsubscribed"
            assert subscription.closed
            # Leaving the block waited for the unsubscription: the server dropped it.
            (connection,) = served.server._connections
            assert connection.subscriptions == {}
            # The run goes on without subscribers.
            workflows.GATES.setdefault(chatter.name, trio.Event()).set()
            async with client.subscribe(chatter.id) as subscription:
                assert [e.seq async for e in subscription] == [
                    e.seq for e in await served.runtime.envelopes(chatter.id)
                ]
            assert subscription.status == "COMPLETED"


async def test_connecting_to_a_closed_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with trio.fail_after(TIMEOUT), pytest.raises(ConnectionLostError, match="cannot connect"):
        async with connect(f"ws://127.0.0.1:{port}", reconnect_timeout=TIMEOUT):
            pass  # never reached
    with pytest.raises(ValueError, match="reconnect_timeout"):
        async with connect(f"ws://127.0.0.1:{port}", reconnect_timeout=-1):
            pass
    with pytest.raises(ValueError, match="ws://"):
        async with connect(f"http://127.0.0.1:{port}"):
            pass


async def test_requests_fail_once_reconnecting_gave_up(db: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with contextlib.AsyncExitStack() as stack:
            served = await stack.enter_async_context(serving(db, grace=0))
            client = await stack.enter_async_context(connect(served.url, reconnect_timeout=0.3))
            leaf = await client.create("Leaf", {"gate": True}, name="gated")
            workflows.GATES["gated"] = trio.Event()
            failures: list[BaseException] = []

            async def follow(task_status: trio.TaskStatus[None]) -> None:
                async with client.subscribe(leaf["id"]) as subscription:
                    task_status.started()
                    try:
                        async for _ in subscription:
                            pass
                    except ConnectionLostError as exc:
                        failures.append(exc)

            async def in_flight(task_status: trio.TaskStatus[None]) -> None:
                task_status.started()
                try:
                    await client.call("gate", {"gate": "never"})
                except ConnectionLostError as exc:
                    failures.append(exc)

            async with trio.open_nursery() as nursery:
                await nursery.start(follow)
                await nursery.start(in_flight)
                await client.start(leaf["id"])
                # The server goes away for good.
                served.server.shutdown()

            # The request in flight failed, the subscription ended with the failure, and
            # every request from now on fails at once.
            assert len(failures) == 2
            assert all(isinstance(f, ConnectionLostError) for f in failures)
            for _ in range(3):
                with pytest.raises(ConnectionLostError, match="could not be restored"):
                    await client.request("ping")
            with pytest.raises(ConnectionLostError):
                async with client.subscribe(leaf["id"]):
                    pass


@pytest.mark.parametrize("raw", [False, True])
async def test_resume_across_a_server_restart(db: Path, raw: bool) -> None:
    """The server stops in the middle of a run and another starts on the same port and file:
    the client reconnects, the run resumes in the new server, and the subscription gets
    exactly the stored envelopes, none lost, none twice (as objects, or as raw dicts)."""
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            first, stop_first = await start_server(nursery, db, grace=0)
            port = int(first.url.rpartition(":")[2])
            async with connect(first.url, reconnect_timeout=TIMEOUT) as client:
                chatter = await client.create(
                    "Chatter", {"count": 30, "pause_after": 10}, name="chatter"
                )
                got: list[EntityEnvelope] = []
                async with client.subscribe(chatter["id"], raw=raw) as subscription:
                    await client.start(chatter["id"])
                    async for envelope in subscription:
                        got.append(EntityEnvelope.from_dict(envelope) if raw else envelope)
                        if len(got) == 11:  # STARTED and 10 updates: the run waits at its gate
                            break
                    # The first server stops: its run is interrupted, its lease given back.
                    await stop_first()
                    record = await _record(db, chatter["id"])
                    assert record.status is EntityStatus.IN_PROGRESS
                    assert record.lease_owner is None
                    assert client.reconnections == 0

                    workflows.GATES.setdefault("chatter", trio.Event()).set()
                    second, stop_second = await start_server(nursery, db, port=port)
                    async for envelope in subscription:
                        got.append(EntityEnvelope.from_dict(envelope) if raw else envelope)
                    assert subscription.status == "COMPLETED"
                    assert client.reconnections >= 1
                    expected = await second.runtime.envelopes(chatter["id"])
                    assert (await client.get(chatter["id"]))["status"] == "COMPLETED"
            await stop_second()
        assert [e.seq for e in got] == [e.seq for e in expected]
        assert got == expected
        attempts = [e.metadata["attempt"] for e in got if e.status == "STARTED"]
        assert attempts == [1, 2]
        assert workflows.EXECUTIONS["chatter"] == 2


async def start_server(
    nursery: trio.Nursery, db: Path, **kwargs: Any
) -> tuple[Served, Callable[[], Awaitable[None]]]:
    """A server in a task of ``nursery``, and a function that stops it (and waits)."""
    stop, stopped = trio.Event(), trio.Event()

    async def serve(task_status: trio.TaskStatus[Served]) -> None:
        try:
            async with serving(db, **kwargs) as served:
                task_status.started(served)
                await stop.wait()
        finally:
            stopped.set()

    async def stop_it() -> None:
        stop.set()
        await stopped.wait()

    served: Served = await nursery.start(serve)
    return served, stop_it


async def _record(db: Path, entity_id: str) -> EntityRecord:
    async with SqliteStore(db) as store:
        return await store.get_entity(entity_id)
