"""The client's sampled subscriptions (``interval`` and ``keep``) against a real server: fewer
envelopes than stored, the others counted in ``Subscription.skipped``, everything accounted
for in order, the arguments checked, and the same sampling asked for again after a
reconnection."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from sluiceway import EntityEnvelope, Runtime
from sluiceway.client import Client, Subscription, connect
from tests.entities import workflows
from tests.server.conftest import TIMEOUT, Chatter, Served
from tests.server.test_client import _record, start_server

#: What a test took from a subscription: per batch, how much ``skipped`` grew with it and the
#: seqs of its envelopes.
Taken = list[tuple[int, list[int]]]


def seq_of(envelope: EntityEnvelope | dict[str, Any]) -> int:
    return envelope["seq"] if isinstance(envelope, dict) else envelope.seq


async def take_batches(
    subscription: Subscription[Any],
    taken: Taken,
    until: Callable[[], bool] = lambda: False,
) -> None:
    """Take batches into ``taken`` until the subscription ends or ``until()`` holds."""
    async for batch in subscription.batches():
        before = subscription.skipped - sum(skipped for skipped, _ in taken)
        taken.append((before, [seq_of(envelope) for envelope in batch]))
        if until():
            return


def check_accounts(taken: Taken, stored: list[int]) -> None:
    """The envelopes taken and the counts of those left out account for every stored
    envelope: each batch's envelopes are stored ones after the previous batch, in order, and
    with the count left out before it make up every stored one up to its last; the last
    taken is the last stored."""
    position = 0
    for skipped, seqs in taken:
        assert seqs, "a batch holds at least one envelope"
        assert seqs == sorted(set(seqs)), "in order, none twice"
        since = [seq for seq in stored if position < seq <= seqs[-1]]
        assert set(seqs) <= set(since), "only stored envelopes, after the previous batch"
        assert len(seqs) + skipped == len(since), (position, seqs, skipped)
        position = seqs[-1]
    assert position == stored[-1]


async def stored_when(
    runtime: Runtime, entity_id: str, done: Callable[[list[EntityEnvelope]], bool]
) -> list[EntityEnvelope]:
    """The stored envelopes of the entity's subtree, once ``done`` holds for them."""
    while True:
        envelopes = await runtime.envelopes(entity_id)
        if done(envelopes):
            return envelopes
        await trio.sleep(0.01)


def completed(envelopes: list[EntityEnvelope]) -> bool:
    return bool(envelopes) and envelopes[-1].status == "COMPLETED"


@pytest.mark.parametrize("raw", [False, True])
async def test_a_sampled_subscription_accounts_for_every_envelope(
    served: Served, raw: bool
) -> None:
    """Over a busy run: fewer envelopes than stored, and with the counts of the others
    every stored envelope accounted for, in order, none twice, ending with the last."""
    with trio.fail_after(TIMEOUT):
        chatter = await served.runtime.create(Chatter, {"count": 1200, "pause_after": 600})
        async with connect(served.url) as client:
            await client.start(chatter.id)
            # 601 envelopes stored before the subscription: its first events sample them.
            await stored_when(served.runtime, chatter.id, lambda got: len(got) == 601)
            taken: Taken = []
            async with client.subscribe(chatter.id, raw=raw, interval=0.05, keep=20) as sub:
                assert (sub.interval, sub.keep, sub.skipped) == (0.05, 20, 0)
                await take_batches(sub, taken, until=lambda: sub.last_seq == 601)
                assert all(len(seqs) <= 20 for _, seqs in taken)
                assert taken[0][0] > 0  # the first event left out the oldest
                check_accounts(taken, list(range(1, 602)))
                workflows.GATES.setdefault(chatter.name, trio.Event()).set()
                await take_batches(sub, taken)  # the rest of the run, live
            assert sub.status == "COMPLETED"
        stored = [e.seq for e in await served.runtime.envelopes(chatter.id)]
        assert len(stored) == 1203
        check_accounts(taken, stored)
        received = sum(len(seqs) for _, seqs in taken)
        assert received < len(stored)
        assert sub.skipped == len(stored) - received
        assert sub.last_seq == stored[-1]


async def test_per_envelope_iteration_counts_too(served: Served) -> None:
    """Taken one at a time, ``skipped`` grows as an event's first envelope is taken: with
    the envelopes taken, it accounts for every stored envelope at the end."""
    with trio.fail_after(TIMEOUT):
        chatter = await served.runtime.create(Chatter, {"count": 300})
        async with connect(served.url) as client:
            await client.start(chatter.id)
            stored = [e.seq for e in await stored_when(served.runtime, chatter.id, completed)]
            got: list[int] = []
            async with client.subscribe(chatter.id, keep=5) as sub:
                async for envelope in sub:
                    got.append(envelope.seq)
                    # Nothing left out after the envelope taken: the run has no notable ones.
                    assert len(got) + sub.skipped == stored.index(envelope.seq) + 1
            assert sub.status == "COMPLETED"
        assert got == sorted(set(got))
        assert got[-1] == stored[-1]
        assert len(got) + sub.skipped == len(stored)
        assert len(got) < len(stored)


async def test_interval_and_keep_are_checked(served: Served) -> None:
    """Values the server would refuse raise ValueError at once; the bounds themselves are
    accepted (and an int interval, and None for either)."""
    with trio.fail_after(TIMEOUT):
        chatter = await served.runtime.create(Chatter, {"count": 30})
        async with connect(served.url) as client:
            bad_intervals: list[Any] = [-1, -0.001, 60.5, 61, math.nan, math.inf, True, "1"]
            for interval in bad_intervals:
                with pytest.raises(ValueError, match="interval must be a number of seconds"):
                    client.subscribe(chatter.id, interval=interval)
            bad_keeps: list[Any] = [0, -3, 1001, 1.5, 20.0, True, "3"]
            for keep in bad_keeps:
                with pytest.raises(ValueError, match="keep must be an int from 1 to 1,000"):
                    client.subscribe(chatter.id, keep=keep)
            # Nothing was sent: the connection is as it was.
            assert await client.request("ping") == {"pong": True}

            await client.start(chatter.id)
            stored = [e.seq for e in await stored_when(served.runtime, chatter.id, completed)]
            cases: list[tuple[float | None, int | None]] = [
                (0, 1),
                (0.1, None),
                (None, 1),
                (None, None),
            ]
            for interval, keep in cases:
                taken: Taken = []
                async with client.subscribe(chatter.id, interval=interval, keep=keep) as sub:
                    await take_batches(sub, taken)
                assert sub.status == "COMPLETED"
                check_accounts(taken, stored)
                if keep is None or keep >= len(stored):
                    assert sub.skipped == 0
                    assert [seq for _, seqs in taken for seq in seqs] == stored
                else:
                    assert sub.skipped > 0
            # The largest: the first event holds the whole replay (the server sends the end
            # an interval later, so the block is left before it).
            async with client.subscribe(chatter.id, interval=60, keep=1000) as sub:
                async for batch in sub.batches():
                    assert [e.seq for e in batch] == stored
                    break
            assert sub.status == "unsubscribed"
            assert (sub.interval, sub.keep, sub.skipped) == (60.0, 1000, 0)


async def test_a_resumed_subscription_asks_for_the_same_sampling(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stops in the middle of the run; another finishes the run while the client is
    cut off; the client reconnects to a third and resubscribes from its last seq with the same
    interval and keep: what was stored meanwhile comes sampled, and the envelopes taken and the
    counts still account for every stored envelope."""
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            first, stop_first = await start_server(nursery, db, grace=0)
            port = int(first.url.rpartition(":")[2])
            async with connect(first.url, reconnect_timeout=TIMEOUT) as client:
                asked = spy_on_subscribes(client, monkeypatch)
                chatter = await client.create(
                    "Chatter", {"count": 400, "pause_after": 200}, name="chatter"
                )
                await client.start(chatter["id"])
                # STARTED and 200 updates: the run waits at its gate.
                await stored_when(first.runtime, chatter["id"], lambda got: len(got) == 201)
                taken: Taken = []
                async with client.subscribe(chatter["id"], interval=0.05, keep=10) as sub:
                    await take_batches(sub, taken, until=lambda: sub.last_seq == 201)
                    assert all(len(seqs) <= 10 for _, seqs in taken)
                    check_accounts(taken, list(range(1, 202)))
                    cut = len(taken)

                    # The first server stops: its run is interrupted, its lease given back.
                    await stop_first()
                    record = await _record(db, chatter["id"])
                    assert record.lease_owner is None
                    # Another server, on another port, runs it to the end (the client cannot
                    # reach it), then stops.
                    workflows.GATES.setdefault("chatter", trio.Event()).set()
                    second, stop_second = await start_server(nursery, db)
                    await stored_when(second.runtime, chatter["id"], completed)
                    await stop_second()
                    # A third, where the client was connected.
                    third, stop_third = await start_server(nursery, db, port=port)
                    await take_batches(sub, taken)
                    assert sub.status == "COMPLETED"
                    assert client.reconnections >= 1
            envelopes = await third.runtime.envelopes(chatter["id"])
            await stop_third()
        assert [e.metadata["attempt"] for e in envelopes if e.status == "STARTED"] == [1, 2]
        stored = [e.seq for e in envelopes]
        check_accounts(taken, stored)
        after_cut = [seqs for _, seqs in taken[cut:]]
        assert sum(map(len, after_cut)) < len([seq for seq in stored if seq > 201])
        assert sub.skipped == len(stored) - sum(len(seqs) for _, seqs in taken)
        # Asked for the same sampling on every connection, from where it was.
        assert len(asked) >= 2
        assert [(f["interval"], f["keep"]) for f in asked] == [(0.05, 10)] * len(asked)
        assert asked[0]["after_seq"] == 0
        assert all(f["after_seq"] == 201 for f in asked[1:])


def spy_on_subscribes(client: Client, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The fields of every ``subscribe`` request the client sends from now on."""
    asked: list[dict[str, Any]] = []
    request = client._request

    async def spy(
        op: str, fields: dict[str, Any], on_result: Callable[[Any], None] | None = None
    ) -> Any:
        if op == "subscribe":
            asked.append(dict(fields))
        return await request(op, fields, on_result)

    monkeypatch.setattr(client, "_request", spy)
    return asked
