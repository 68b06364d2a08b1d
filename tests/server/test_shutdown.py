"""Shutting a server down: clients are closed with 1001, ``run()`` returns, and the runs it
started either finish within the grace period or are left resumable (never half written)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio
import trio.lowlevel
from trio_websocket import ConnectionClosed

from sluiceway import EntityStatus, open_runtime
from sluiceway.client import connect
from sluiceway.server import (
    CLOSE_GOING_AWAY,
    ErrorCode,
    ProtocolError,
    RuntimeServer,
    ServerAddress,
)
from tests.entities import workflows
from tests.server.conftest import (
    TIMEOUT,
    TYPES,
    Chatter,
    call,
    hello,
    make_app,
    open_raw,
    receive,
    serving,
)


async def test_shutdown_closes_clients_and_keeps_the_work(db: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_runtime(db, TYPES, poll_interval=0.05, work=False) as runtime:
            server = RuntimeServer(runtime, make_app())
            returned = trio.Event()

            async def serve(task_status: trio.TaskStatus[ServerAddress]) -> None:
                await server.run(grace=0.1, task_status=task_status)
                returned.set()

            chatter = await runtime.create(Chatter, {"count": 20, "pause_after": 8}, name="c")
            async with trio.open_nursery() as nursery:
                url = (await nursery.start(serve)).url
                async with open_raw(url) as first, open_raw(url) as second:
                    await hello(first)
                    await hello(second)
                    number = (await call(first, "subscribe", 1, entity_id=chatter.id))[
                        "subscription"
                    ]
                    await call(first, "start", 2, entity_id=chatter.id)
                    seen = []
                    while len(seen) < 9:  # STARTED and 8 updates: the run waits at its gate
                        event = await receive(first)
                        assert event["subscription"] == number
                        seen.append(event["envelope"])

                    server.shutdown()
                    server.shutdown()  # idempotent
                    for ws in (first, second):
                        with pytest.raises(ConnectionClosed) as closed:
                            while True:
                                await receive(ws)
                        assert closed.value.reason.code == CLOSE_GOING_AWAY
                        assert closed.value.reason.reason == "the server is shutting down"
            assert returned.is_set()
            assert not server._connections

            # The interrupted run is not half written: still IN_PROGRESS, its lease given back,
            # due again at once, nothing stored after what the subscriber saw.
            record = await runtime.get(chatter.id)
            assert record.status is EntityStatus.IN_PROGRESS
            assert record.lease_owner is None
            assert record.runnable_at is not None
            stored = [e.to_dict() for e in await runtime.envelopes(chatter.id)]
            assert stored == seen
            # Nothing more can be started in the stopped server.
            with pytest.raises(ProtocolError) as refused:
                await server.start(chatter.id)
            assert refused.value.code is ErrorCode.SHUTTING_DOWN

        # A new server on the same file resumes the run by itself and completes it.
        workflows.GATES.setdefault("c", trio.Event()).set()
        async with serving(db) as served, connect(served.url) as client:
            async with client.subscribe(chatter.id, after_seq=seen[-1]["seq"]) as subscription:
                rest = [envelope async for envelope in subscription]
            assert subscription.status == "COMPLETED"
            assert rest[0].status == "STARTED"
            assert rest[0].metadata == {"attempt": 2}
            assert rest[-1].is_terminal
            assert (await served.runtime.get(chatter.id)).status is EntityStatus.COMPLETED
            assert [e.to_dict() for e in await served.runtime.envelopes(chatter.id)] == [
                *seen,
                *(e.to_dict() for e in rest),
            ]
        assert workflows.EXECUTIONS["c"] == 2


async def test_runs_finish_within_the_grace_period(db: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_runtime(db, TYPES, poll_interval=0.05, work=False) as runtime:
            server = RuntimeServer(runtime, make_app())
            leaf = await runtime.create("Leaf", {"gate": True, "value": 4}, name="late")
            gate = workflows.GATES["late"] = trio.Event()
            async with trio.open_nursery() as nursery:
                address = await nursery.start(partial(server.run, grace=TIMEOUT))
                async with connect(address.url, reconnect_timeout=0) as client:
                    await client.start(leaf.id)
                    await workflows.started("late").wait()
                    server.shutdown()
                    # The server waits for its run: let it finish.
                    await trio.lowlevel.checkpoint()
                    gate.set()
            # run() returned once the run had completed (not at the end of its grace).
            record = await runtime.get(leaf.id)
            assert record.status is EntityStatus.COMPLETED
            assert record.result == {"name": "late", "value": 8}


async def test_shutdown_without_clients_or_runs(db: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_runtime(db, TYPES) as runtime:
            server = RuntimeServer(runtime, make_app())
            async with trio.open_nursery() as nursery:
                address = await nursery.start(server.run)
                assert server.address == address
                assert address.url == f"ws://127.0.0.1:{address.port}"
                server.shutdown()
            # Cancelling a server works too (the runs are given back the same way).
            server = RuntimeServer(runtime, make_app())
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                nursery.cancel_scope.cancel()
