"""Runtime.stream_samples: the newest envelopes of what came, the notable older ones, and a
count of the rest; and the shared tail's window that makes a sample cost only what it keeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway import EntityEnvelope, EnvelopeSample, open_runtime
from sluiceway.entities import _tail as tail_module
from sluiceway.entities._tail import NOTABLE_TYPES, Tail, sample
from sluiceway.store import EnvelopeRow
from tests.entities.test_stream_batches import Dripper
from tests.entities.workflows import ALL_TYPES, FanOut

KINDS = ["INTERNAL_UPDATE", "STATUS", "VALUE", "ERROR", "WAITING", "MESSAGE"]


def stored(seq: int, kind: str) -> EnvelopeRow:
    return EnvelopeRow(seq, "e", seq, 0.0, f'{{"type":"{kind}"}}', "T", "n")


@settings(max_examples=200, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(KINDS), max_size=80),
    gaps=st.lists(st.integers(1, 3), min_size=80, max_size=80),
    size=st.integers(1, 60),
    keep=st.integers(1, 12),
    data=st.data(),
)
def test_a_window_sample_is_the_sample_of_what_it_holds(
    kinds: list[str], gaps: list[int], size: int, keep: int, data: st.DataObject
) -> None:
    tail = Tail("e", base=0, size=size)
    seqs = [sum(gaps[: i + 1]) for i in range(len(kinds))]
    cut = data.draw(st.integers(0, len(kinds)))
    for part in (slice(0, cut), slice(cut, None)):  # two reads
        tail._append([stored(seq, kind) for seq, kind in zip(seqs[part], kinds[part], strict=True)])
        tail._trim()
    assert [e.seq for e in tail.window] == tail.seqs == seqs[max(0, len(seqs) - size) :]
    assert tail.base == (seqs[-size - 1] if len(seqs) > size else 0)
    notable = [seq for seq, kind in zip(seqs, kinds, strict=True) if kind in NOTABLE_TYPES]
    assert tail.notable_seqs == notable[max(0, len(notable) - size) :]  # kept past the window
    # A sample decodes what it keeps, not what it skips.
    tail.sample_after(tail.base, keep)
    decoded = [e for e in tail.window if isinstance(e, EntityEnvelope)]
    assert len([e for e in decoded if e.type not in NOTABLE_TYPES]) <= keep
    for position in {0, tail.base, *(tail.seqs[:3]), *(tail.seqs[-3:])}:
        if position < tail.base:
            continue
        after = tail.after(position)
        assert [e.seq for e in after] == [seq for seq in tail.seqs if seq > position]
        assert tail.sample_after(position, keep) == sample(after, keep)
    # A sampled stream that passed the first `taken` envelopes, maybe dropped by the window
    # since: its sample is that of everything after them (exact while keep <= size / 2).
    everything = [
        EntityEnvelope.from_stored(stored(seq, kind).stored())
        for seq, kind in zip(seqs, kinds, strict=True)
    ]
    if keep <= size // 2:
        for taken in range(len(seqs) + 1):
            position = seqs[taken - 1] if taken else 0
            assert tail.sample_since(taken, position, keep) == sample(everything[taken:], keep)


def test_a_sample_keeps_the_newest_and_the_older_notable() -> None:
    envelopes = [
        EntityEnvelope(kind, "e", "T", "n", seq=seq)
        for seq, kind in enumerate(["ERROR", "VALUE", "WAITING", "VALUE", "VALUE", "MESSAGE"], 1)
    ]
    assert sample(envelopes, 10) == EnvelopeSample(envelopes)
    two = sample(envelopes, 2)
    assert [e.seq for e in two.envelopes] == [1, 3, 5, 6]
    assert two.skipped == 2
    one = sample(envelopes, 1)
    assert [e.seq for e in one.envelopes] == [3, 6]  # the newest notable of the older ones
    assert one.skipped == 4


@pytest.mark.parametrize(("window", "pace"), [(4096, 0.01), (8, 0.01), (8, 0.1)])
async def test_samples_of_a_run_account_for_every_envelope(
    db: Path, window: int, pace: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Followed live and replayed (a tiny window sends the live stream to the store too,
    also while a paced stream waits for its beat), each sample holds the newest of its span
    and its notable older ones, counts the rest, and together they cover the run's envelopes
    exactly."""
    monkeypatch.setattr(tail_module, "WINDOW", window)
    async with open_runtime(db, ALL_TYPES, poll_interval=0.01) as runtime:
        fan = await runtime.create(
            FanOut, {"count": 40, "per_parent": 4, "failing": [3, 17, 30]}, name="fan"
        )
        live: list[EnvelopeSample] = []

        every: list[int] = []

        async def follow() -> None:
            async with runtime.stream_samples(fan.id, keep=4, pace=pace) as samples:
                live.extend([item async for item in samples])

        async def follow_everything() -> None:
            # reads the shared tail at every step, moving its window on while the sampled
            # stream waits for its beat
            async with runtime.stream(fan.id) as envelopes:
                every.extend([envelope.seq async for envelope in envelopes])

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow)
                nursery.start_soon(follow_everything)
                await trio.sleep(0.05)  # (only lets the follower start; nothing is timed)
                await runtime.run(fan.id)
            async with runtime.stream_samples(fan.id, keep=3, after_seq=2) as samples:
                replayed = [item async for item in samples]

        everything = await runtime.envelopes(fan.id)
        assert sum(e.type == "ERROR" for e in everything) == 3
        assert every == [e.seq for e in everything]
        check(live, everything, keep=4)
        check(replayed, [e for e in everything if e.seq > 2], keep=3)
        kept_errors = [e for item in live for e in item.envelopes if e.type == "ERROR"]
        assert len(kept_errors) == 3  # never sampled out

        with pytest.raises(ValueError, match="keep"):
            async with runtime.stream_samples(fan.id, keep=0):
                pass


async def test_a_paced_stream_left_behind_while_it_waits_replays_what_it_missed(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a paced stream waits for its beat, a follower that is not paced moves the shared
    window (6 envelopes) far past it; the paced streams still account for every envelope
    (they replay from the store what the window dropped). Nothing is timed: the run only
    goes faster than the pace."""
    monkeypatch.setattr(tail_module, "WINDOW", 6)
    async with open_runtime(db, [*ALL_TYPES, Dripper], poll_interval=0.01) as runtime:
        drip = await runtime.create(Dripper, {"count": 150, "every": 0.002})
        samples: list[EnvelopeSample] = []
        batches: list[list[int]] = []
        every: list[int] = []

        async def sampled() -> None:
            async with runtime.stream_samples(drip.id, keep=3, pace=0.1) as stream:
                samples.extend([item async for item in stream])

        async def paced() -> None:
            async with runtime.stream_batches(drip.id, pace=0.1) as stream:
                batches.extend([[e.seq for e in batch] async for batch in stream])

        async def everything() -> None:
            async with runtime.stream(drip.id) as stream:
                every.extend([envelope.seq async for envelope in stream])

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for follower in (sampled, paced, everything):
                    nursery.start_soon(follower)
                await trio.sleep(0.05)  # (only lets the followers start; nothing is timed)
                await runtime.run(drip.id)
        stored = await runtime.envelopes(drip.id)
        assert every == [e.seq for e in stored]
        assert [seq for batch in batches for seq in batch] == every
        check(samples, stored, keep=3)
        assert sum(item.skipped for item in samples) > 0


def check(
    samples: list[EnvelopeSample], expected: list[tail_module.EntityEnvelope], keep: int
) -> None:
    position = 0
    for item in samples:
        span = expected[position : position + len(item.envelopes) + item.skipped]
        assert item.envelopes, "a sample holds at least one envelope"
        assert item == sample(span, keep)
        position += len(span)
    assert position == len(expected)
