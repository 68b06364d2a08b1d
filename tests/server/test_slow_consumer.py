"""Slow consumers: a connection that stops reading is closed with 4008 without slowing the run
or the other subscribers; the client library reconnects and resumes without loss or
duplicates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed

from sluiceway.client import connect
from sluiceway.server import CLOSE_SLOW_CONSUMER, ServerLimits, _connection
from tests.entities import workflows
from tests.server.conftest import (
    TIMEOUT,
    Chatter,
    call,
    events_until_end,
    frame,
    hello,
    open_raw,
    receive,
    serving,
)

#: The least a run emits (about 1.2 MB; it goes on until the server has closed the slow
#: connection, however much the kernel's socket buffers absorb), in envelopes a prompt reader
#: takes in its stride.
COUNT = 600
PAD = 2000
LIMITS = ServerLimits(queue_frames=4, slow_consumer_seconds=0.1, batch_bytes=PAD)


async def closed_as_slow(served: Any) -> None:
    """Until the server has closed a connection as a slow consumer (polled: the server's
    side of it is not otherwise visible)."""
    while True:
        if any(c.close_code == CLOSE_SLOW_CONSUMER for c in served.server._connections):
            return
        await trio.sleep(0.01)


async def test_a_slow_consumer_is_closed_and_the_others_get_everything(db: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(db, limits=LIMITS) as served:
            chatter = await served.runtime.create(
                Chatter, {"count": COUNT, "pad": PAD, "until_gate": True}
            )

            async def end_once_the_slow_one_is_closed() -> None:
                await closed_as_slow(served)
                workflows.GATES[chatter.name].set()

            async with (
                open_raw(served.url) as slow,
                open_raw(served.url) as good,
                trio.open_nursery() as nursery,
            ):
                await hello(slow)
                await hello(good)
                await slow.send_message(frame("subscribe", 1, entity_id=chatter.id))
                number = (await call(good, "subscribe", 1, entity_id=chatter.id))["subscription"]
                nursery.start_soon(end_once_the_slow_one_is_closed)
                await call(good, "start", 2, entity_id=chatter.id)
                events = await events_until_end(good, number)

                # The good subscriber got every envelope, in order, and the run completed.
                expected = [e.to_dict() for e in await served.runtime.envelopes(chatter.id)]
                assert len(expected) >= COUNT + 3  # STARTED, the updates, the return, COMPLETED
                assert [e["envelope"] for e in events[:-1]] == expected
                assert events[-1]["status"] == "COMPLETED"
                assert (await served.runtime.get(chatter.id)).status.value == "COMPLETED"

                # The slow one gets what was sent before the overflow, intact, then 4008.
                frames: list[dict[str, Any]] = []
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        frames.append(await receive(slow))
                assert closed.value.reason.code == CLOSE_SLOW_CONSUMER
                assert "slow consumer" in (closed.value.reason.reason or "")
                assert frames[0] == {
                    "v": 1,
                    "id": 1,
                    "ok": True,
                    "result": {"subscription": 1},
                }
                got = [f["envelope"] for f in frames[1:]]
                assert all(f.get("event") == "envelope" for f in frames[1:])
                assert got == expected[: len(got)]
                assert len(got) < len(expected)

                # The good connection is unaffected.
                assert await call(good, "ping", 3) == {"pong": True}


async def test_the_client_resumes_after_being_dropped_as_a_slow_consumer(db: Path) -> None:
    # The run goes on until the server has dropped the client that stopped reading: how much
    # that takes depends on how much the kernel's socket buffers absorb on this machine. A
    # longer queue than above, so that catching up after the reconnection, in the same process
    # as the server, rarely overflows again (it may: the client resumes again).
    limits = ServerLimits(queue_frames=8, slow_consumer_seconds=0.2, batch_bytes=2 * PAD)
    with trio.fail_after(TIMEOUT):
        async with (
            serving(db, limits=limits) as served,
            connect(served.url, buffer=2, reconnect_timeout=TIMEOUT) as client,
        ):
            chatter = await served.runtime.create(
                Chatter, {"count": 10, "pad": 2 * PAD, "until_gate": True}
            )
            async with client.subscribe(chatter.id) as subscription:
                got = []
                await client.start(chatter.id)
                async for envelope in subscription:
                    got.append(envelope)
                    if len(got) == 3:
                        break
                # Stop reading: the client's connection overflows and the server drops it.
                await closed_as_slow(served)
                assert client.reconnections == 0
                workflows.GATES[chatter.name].set()
                async for envelope in subscription:
                    got.append(envelope)
                assert subscription.status == "COMPLETED"
            assert client.reconnections >= 1
            expected = await served.runtime.envelopes(chatter.id)
            assert [e.seq for e in got] == [e.seq for e in expected]
            assert got == expected
            # The client still works after its reconnection.
            assert (await client.get(chatter.id))["status"] == "COMPLETED"


async def test_a_client_that_reads_nothing_more_is_cut(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow consumer that does not even read its close frame has its connection cut once
    the closing time is up: the server keeps nothing of it."""
    monkeypatch.setattr(_connection, "CLOSE_SECONDS", 0.2)
    with trio.fail_after(TIMEOUT):
        async with serving(db, limits=LIMITS) as served:
            chatter = await served.runtime.create(
                Chatter, {"count": COUNT, "pad": PAD, "until_gate": True}
            )

            async def end_once_the_stuck_one_is_closed() -> None:
                await closed_as_slow(served)
                workflows.GATES[chatter.name].set()

            async with open_raw(served.url) as stuck:
                await hello(stuck)
                async with open_raw(served.url) as good, trio.open_nursery() as nursery:
                    await hello(good)
                    await stuck.send_message(frame("subscribe", 1, entity_id=chatter.id))
                    number = (await call(good, "subscribe", 1, entity_id=chatter.id))[
                        "subscription"
                    ]
                    nursery.start_soon(end_once_the_stuck_one_is_closed)
                    await call(good, "start", 2, entity_id=chatter.id)
                    assert (await events_until_end(good, number))[-1]["status"] == "COMPLETED"
                # Only the stuck connection is left; the server lets it go by itself.
                await served.server._no_connections.wait()
                assert not served.server._connections
                # What it reads now ends with the connection.
                with pytest.raises(ConnectionClosed):
                    while True:
                        await receive(stuck)


async def test_a_reader_catching_up_on_a_long_log_is_never_dropped(db: Path) -> None:
    """Subscriptions wait for a reader that reads: replaying thousands of stored envelopes
    through a queue of 2 frames ends without a 4008, in one connection."""
    limits = ServerLimits(queue_frames=2, batch_bytes=PAD, slow_consumer_seconds=30)
    with trio.fail_after(TIMEOUT):
        async with serving(db, limits=limits) as served:
            chatter = await served.runtime.create(Chatter, {"count": COUNT, "pad": PAD})
            await served.runtime.run(chatter.id)
            expected = await served.runtime.envelopes(chatter.id)
            async with connect(served.url, buffer=1) as client:
                for _ in range(3):
                    async with client.subscribe(chatter.id) as subscription:
                        got = [envelope async for envelope in subscription]
                    assert got == expected
                assert client.reconnections == 0


async def test_envelopes_come_in_batches_encoded_once(db: Path) -> None:
    """What a subscription has ready goes out in one ``envelopes`` event (up to batch_bytes),
    and each envelope is encoded once for all the subscriptions."""
    with trio.fail_after(TIMEOUT):
        async with serving(db) as served:
            chatter = await served.runtime.create(Chatter, {"count": 50, "pad": 10})
            await served.runtime.run(chatter.id)
            async with open_raw(served.url) as ws:
                await hello(ws)
                for ident in (1, 2):
                    await ws.send_message(frame("subscribe", ident, entity_id=chatter.id))
                    batches = []
                    while True:
                        got = await ws.get_message()
                        assert isinstance(got, str)
                        decoded = json.loads(got)
                        if decoded.get("event") == "end":
                            break
                        if decoded.get("event") == "envelopes":
                            batches.append(decoded["envelopes"])
                    flat = [e for batch in batches for e in batch]
                    assert flat == [e.to_dict() for e in await served.runtime.envelopes(chatter.id)]
                    assert len(batches) < len(flat)  # the stored log came in a few frames
            assert sorted(served.server._encoded) == [e["seq"] for e in flat]
