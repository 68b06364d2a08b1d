"""Sampled subscriptions (``interval`` and ``keep``): at most one ``envelopes`` event per
interval, the newest ``keep`` envelopes in each and the others counted in ``skipped``;
nothing missed silently, nothing twice, and a client resumes from the last seq it got."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway.entities import EntityEnvelope
from sluiceway.entities._tail import sample
from sluiceway.server._relay import Found, SubscriptionRelay

from .conftest import TIMEOUT, Served, call, error, frame, hello, open_raw, receive_frame

# -- the relay on virtual time ---------------------------------------------------------------


def envelope(seq: int, notable: bool = False) -> EntityEnvelope:
    kind = ("ERROR", "WAITING", "MESSAGE")[seq % 3] if notable else "INTERNAL_UPDATE"
    return EntityEnvelope(kind, "e", "T", "n", seq=seq, message=str(seq))


class Sent:
    """What a relay handed to its connection: (virtual time, seqs, skipped) per call."""

    def __init__(self) -> None:
        self.events: list[tuple[float, list[int], int]] = []

    async def emit(self, parts: list[str], skipped: int) -> None:
        await trio.lowlevel.checkpoint()
        seqs = [json.loads(part)["seq"] for part in parts]
        self.events.append((trio.current_time(), seqs, skipped))


def encode(item: EntityEnvelope) -> str:
    return json.dumps(item.to_dict())


async def feed(
    send: trio.MemorySendChannel[Found],
    plan: list[tuple[float, int]],
    notable: frozenset[int],
    presample: int | None,
) -> list[int]:
    """Send batches of ``size`` envelopes after ``delay`` seconds each (those of the seqs in
    ``notable`` an error, a prompt or an answer), or samples of them (as the runtime's
    ``stream_samples`` hands them over); the seqs sent."""
    seqs: list[int] = []
    async with send:
        for delay, size in plan:
            await trio.sleep(delay)
            batch = [
                envelope(seq, seq in notable) for seq in range(len(seqs) + 1, len(seqs) + 1 + size)
            ]
            seqs.extend(item.seq for item in batch)
            await send.send(batch if presample is None else sample(batch, presample))
    return seqs


def check_accounting(
    sent: Sent, seqs: list[int], keep: int | None, notable: frozenset[int] = frozenset()
) -> None:
    """Each event holds the newest ``keep`` of what came since the previous one, plus the
    newest ``keep`` of the older ``notable`` ones, and counts the rest: together they are
    every seq, once, in order."""
    position = 0
    for _, got, skipped in sent.events:
        assert got, "an event holds at least one envelope"
        since = [seq for seq in seqs if position < seq <= got[-1]]
        assert len(since) == len(got) + skipped
        if keep is None:
            assert got == since
            assert skipped == 0
        else:
            newest, older = since[-keep:], since[:-keep]
            assert got == [seq for seq in older if seq in notable][-keep:] + newest
        position = got[-1]
    assert position == (seqs[-1] if seqs else 0)


async def run_relay(
    plan: list[tuple[float, int]],
    *,
    interval: float,
    keep: int | None,
    notable: frozenset[int] = frozenset(),
    presample: bool = False,
) -> tuple[Sent, list[int], SubscriptionRelay]:
    sent = Sent()
    relay = SubscriptionRelay(sent.emit, encode, after_seq=0, interval=interval, keep=keep)
    send, receive = trio.open_memory_channel[Found](16)
    seqs: list[int] = []

    async def feeder() -> None:
        seqs.extend(await feed(send, plan, notable, keep if presample else None))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feeder)
        async with receive:
            await relay.relay(receive)
    return sent, seqs, relay


async def test_one_event_per_interval_with_the_newest_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 100 batches of 7 envelopes, one every 10 ms: a second of a busy run.
    plan = [(0.01, 7)] * 100
    sent, seqs, relay = await run_relay(plan, interval=0.25, keep=5)
    check_accounting(sent, seqs, keep=5)
    times = [at for at, _, _ in sent.events]
    # the first at once, then at most one per interval (the one after the end at once)
    assert times[0] == pytest.approx(0.01)
    for before, after in itertools.pairwise(times[:-1]):
        assert after - before >= 0.25 - 1e-9
    assert len(sent.events) <= 1 + 1.0 / 0.25 + 1
    assert relay.last == seqs[-1] == 700
    assert sum(skipped for _, _, skipped in sent.events) == 700 - sum(
        len(got) for _, got, _ in sent.events
    )


async def test_interval_alone_sends_everything_in_fewer_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent, seqs, _ = await run_relay([(0.01, 3)] * 50, interval=0.1, keep=None)
    check_accounting(sent, seqs, keep=None)
    assert [seq for _, got, _ in sent.events for seq in got] == seqs
    assert len(sent.events) <= 1 + 0.5 / 0.1 + 1


async def test_keep_alone_sends_each_batch_at_once_cut_to_its_newest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent, seqs, _ = await run_relay([(0.5, 12), (0.5, 2), (0.5, 30)], interval=0.0, keep=10)
    check_accounting(sent, seqs, keep=10)
    assert [(got, skipped) for _, got, skipped in sent.events] == [
        (list(range(3, 13)), 2),
        ([13, 14], 0),
        (list(range(35, 45)), 20),
    ]
    assert [at for at, _, _ in sent.events] == pytest.approx([0.5, 1.0, 1.5])


async def test_a_quiet_stream_is_sent_as_it_comes(autojump_clock: trio.testing.MockClock) -> None:
    # batches further apart than the interval: no waiting at all
    sent, seqs, _ = await run_relay([(1.0, 1)] * 5, interval=0.5, keep=3)
    assert [at for at, _, _ in sent.events] == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])
    check_accounting(sent, seqs, keep=3)


async def test_errors_prompts_and_answers_are_kept_among_the_older(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # one batch of 100: the newest 10, and the notable ones before them (the newest 10 of them)
    notable = frozenset({5, 17, 18, 40, 95})
    sent, _, _ = await run_relay([(0.1, 100)], interval=1.0, keep=10, notable=notable)
    assert [(got, skipped) for _, got, skipped in sent.events] == [
        ([5, 17, 18, 40, *range(91, 101)], 86)
    ]
    many = frozenset(range(1, 100, 2))  # 50 notable: only the newest 3 older ones are kept
    sent, _, _ = await run_relay([(0.1, 100)], interval=1.0, keep=3, notable=many)
    assert [(got, skipped) for _, got, skipped in sent.events] == [([93, 95, 97, 98, 99, 100], 94)]


@settings(max_examples=60, deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.sampled_from([0.0, 0.003, 0.02, 0.2]), st.integers(1, 40)), max_size=30
    ),
    interval=st.sampled_from([0.0, 0.01, 0.05, 0.3]),
    keep=st.one_of(st.none(), st.integers(1, 25)),
    notable=st.frozensets(st.integers(1, 1200), max_size=60),
    presample=st.booleans(),
)
def test_every_seq_is_sent_or_counted_once_in_order(
    plan: list[tuple[float, int]],
    interval: float,
    keep: int | None,
    notable: frozenset[int],
    presample: bool,
) -> None:
    """Whether the relay gets every envelope or samples already cut by the runtime, what it
    sends is the same: the sample of each event's span."""

    async def main() -> None:
        sent, seqs, relay = await run_relay(
            plan, interval=interval, keep=keep, notable=notable, presample=presample
        )
        check_accounting(sent, seqs, keep, notable)
        assert relay.last == (seqs[-1] if seqs else 0)
        times = [at for at, _, _ in sent.events]
        for before, after in itertools.pairwise(times[:-1]):
            assert after - before >= interval - 1e-9

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- through the server --------------------------------------------------------------------------


async def read_sampled(ws: Any, subscription: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The raw ``envelopes`` events of a subscription up to its ``end``."""
    events: list[dict[str, Any]] = []
    while True:
        got = await receive_frame(ws)
        if got.get("subscription") != subscription:
            continue
        if got["event"] == "end":
            return events, got
        assert set(got) <= {"v", "event", "subscription", "envelopes", "skipped"}, got
        events.append(got)


async def test_a_sampled_subscription_accounts_for_every_envelope(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            root = (await call(ws, "create", 1, type="Chatter", data={"count": 1200}))["id"]
            await call(ws, "start", 2, entity_id=root)
            result = await call(ws, "subscribe", 3, entity_id=root, interval=0.2, keep=50)
            events, end = await read_sampled(ws, result["subscription"])
            stored = [e.seq for e in await served.runtime.envelopes(root)]
            assert end["status"] == "COMPLETED"

            position = 0
            for event in events:
                got = [e["seq"] for e in event["envelopes"]]
                since = [seq for seq in stored if position < seq <= got[-1]]
                skipped = event.get("skipped", 0)
                assert got == since[skipped:]
                assert len(got) <= 50
                position = got[-1]
            assert position == stored[-1] == end["seq"]
            assert sum(e.get("skipped", 0) for e in events) > 0  # 1,203 envelopes, 50 a time
            assert events[-1]["envelopes"][-1]["status"] == "COMPLETED"

            # Resuming from any seq it got: the rest, accounted for the same way.
            cut = events[0]["envelopes"][-1]["seq"]
            result = await call(ws, "subscribe", 4, entity_id=root, after_seq=cut, keep=1000)
            events, end = await read_sampled(ws, result["subscription"])
            assert [e["seq"] for ev in events for e in ev["envelopes"]] == [
                seq for seq in stored if seq > cut
            ]
            assert all("skipped" not in event for event in events)


async def test_bad_interval_or_keep_is_refused(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as ws:
            await hello(ws)
            root = (await call(ws, "create", 1, type="Chatter", data={"count": 1}))["id"]
            cases: list[tuple[dict[str, Any], str]] = [
                ({"interval": -1}, "interval must be from 0 to 60"),
                ({"interval": 61}, "interval must be from 0 to 60"),
                ({"interval": "1"}, "expected float @ $.interval"),
                ({"interval": True}, "expected float @ $.interval"),
                ({"keep": 0}, "keep must be from 1 to 1000"),
                ({"keep": 1001}, "keep must be from 1 to 1000"),
                ({"keep": 1.5}, "@ $.keep"),
            ]
            for ident, (fields, message) in enumerate(cases, start=2):
                body = await error(ws, frame("subscribe", ident, entity_id=root, **fields), ident)
                assert body["code"] == "invalid_request", body
                assert message in body["message"], body
