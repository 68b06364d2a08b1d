"""The per-task fast paths keep the runner's contracts: the direct grant of a lazy source's next
unit (only when the run holds the only request in the tree), the fast envelope constructor, and
the envelope channel's ``blocked`` flag kept in step with its buffer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from sluiceway import (
    CapacitySource,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    QuotaCapacitySource,
    SourceBuffer,
    TaskEnvelope,
    envelope_to_dict,
)
from sluiceway.runners._channel import EnvelopeChannel
from sluiceway.runners._envelopes import make_envelope
from tests.helpers import assert_idle


def test_make_envelope_builds_the_same_frozen_envelope() -> None:
    error = ValueError("bad")
    fast = make_envelope(3, EnvelopeKind.ERROR, None, error, "k", 1.5, 2.5)
    slow = TaskEnvelope(3, EnvelopeKind.ERROR, None, error, "k", 1.5, 2.5)
    assert type(fast) is TaskEnvelope
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert repr(fast) == repr(slow)
    assert envelope_to_dict(fast) == envelope_to_dict(slow)
    assert attrs.evolve(fast, at=3.0) == TaskEnvelope(
        3, EnvelopeKind.ERROR, None, error, "k", 1.5, 3.0
    )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast.value = 1  # type: ignore[misc]


def lazy_tasks(
    name: str, count: int, seconds: float, live: dict[str, int], peak: dict[str, int]
) -> AsyncIterator[Callable[..., Any]]:
    async def body(emit: Any) -> str:
        live[name] += 1
        peak[name] = max(peak[name], live[name])
        try:
            await trio.sleep(seconds)
        finally:
            live[name] -= 1
        return name

    async def generate() -> AsyncIterator[Callable[..., Any]]:
        for _ in range(count):
            await trio.lowlevel.checkpoint()
            yield body

    return generate()


async def test_lazy_runs_on_sibling_nodes_share_the_parent_fairly(autojump_clock: object) -> None:
    # Each run alone in the tree takes the direct grant; with a sibling, the tree decides.
    parent = CapacitySource(4)
    live = {"a": 0, "b": 0}
    peak = {"a": 0, "b": 0}
    done: dict[str, float] = {}

    async def consume(name: str, seconds: float) -> None:
        runner = HierarchicalTaskPoolRunner(
            name, lazy_tasks(name, 40, seconds, live, peak), CapacitySource(4, parent)
        )
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                assert envelope.kind is EnvelopeKind.FINAL
        done[name] = trio.current_time()

    samples: list[tuple[int, int]] = []

    async def monitor() -> None:
        await trio.sleep(0.5)
        while len(done) < 2:
            if not done:
                samples.append((live["a"], live["b"]))
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume, "a", 1.0)
        await trio.testing.wait_all_tasks_blocked()  # a alone (direct grants), then b arrives
        nursery.start_soon(monitor)
        nursery.start_soon(consume, "b", 1.0)
    assert all(a + b <= 4 for a, b in samples)
    # From the first release on, the freed units go to b until both hold 2 (max-min fair),
    # until a's source runs out.
    assert samples[0] == (4, 0)
    assert len(samples) > 10
    assert all(sample == (2, 2) for sample in samples[2:-1]), str(samples)
    assert abs(done["a"] - done["b"]) <= 2  # neither was starved
    assert_idle(parent)


@given(
    limit=st.integers(min_value=1, max_value=6),
    count=st.integers(min_value=0, max_value=30),
    quota=st.booleans(),
)
def test_a_lazy_run_alone_never_exceeds_its_limit(limit: int, count: int, quota: bool) -> None:
    async def main() -> None:
        root: Any = QuotaCapacitySource({"slots": 1000}) if quota else CapacitySource(limit * 2)
        node = CapacitySource(limit, root)
        live = {"x": 0}
        peak = {"x": 0}
        runner = HierarchicalTaskPoolRunner("x", lazy_tasks("x", count, 0.5, live, peak), node)
        seen = 0
        async with runner.run_tasks() as envelopes:
            async for _ in envelopes:
                seen += 1
                assert node.borrowed_tokens <= limit
        assert seen == count
        assert peak["x"] <= limit
        stats = node.capacity_statistics()
        assert stats.granted == stats.released  # every grant given back once
        assert_idle(node)
        if not quota:
            assert_idle(root)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_lazy_run_keeps_every_unit_busy_with_long_tasks(autojump_clock: object) -> None:
    # The next item of a lazy source is admitted by whichever worker comes first; a worker
    # that goes on to a long task must not leave it unadmitted.
    live = [0]
    peak = [0]

    async def body(emit: Any) -> None:
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        try:
            await trio.sleep(10)
        finally:
            live[0] -= 1

    async def generate() -> AsyncIterator[Callable[..., Any]]:
        for _ in range(12):
            yield body

    capacity = CapacitySource(4)
    runner = HierarchicalTaskPoolRunner("lazy", generate(), capacity)
    finals = 0
    async with runner.run_tasks() as envelopes:
        await trio.sleep(1)
        assert live[0] == 4  # every unit busy at once
        await trio.sleep(10)
        assert live[0] == 4  # and again once the first four ended
        async for envelope in envelopes:
            finals += envelope.is_final
    assert finals == 12
    assert peak[0] == 4
    assert trio.current_time() == 30  # three rounds of ten seconds, no gap
    assert_idle(capacity)


def test_the_channel_blocks_admission_from_full_to_half_and_for_good_once_closed() -> None:
    # ``blocked`` is an attribute kept in step with the buffer (the run reads it per task).
    spaces: list[int] = []
    channel = EnvelopeChannel(4, lambda: spaces.append(len(channel)))
    envelopes = [make_envelope(i, EnvelopeKind.FINAL, i, None, None, 0.0, 0.0) for i in range(5)]
    for envelope in envelopes[:3]:
        channel.put(envelope)
    assert not channel.blocked
    channel.put(envelopes[3])
    assert channel.blocked  # full
    channel.receive_nowait()
    assert channel.blocked  # 3 left: not yet drained to half
    assert channel.receive_batch_nowait(1) == [envelopes[1]]
    assert not channel.blocked  # 2 left: half
    assert spaces == [2]
    channel.put(envelopes[4])
    channel.close()
    assert channel.blocked
    assert spaces == [2, 0]
    channel.put(envelopes[0])  # dropped: the consumer left
    assert channel.blocked
    assert len(channel) == 0


class TakeFails(SourceBuffer[Any]):
    """A buffer whose ``take`` fails once, after a ``peek`` that saw an item: the worker that
    hands its unit to the next task meets the failure with the unit already kept for it."""

    def __init__(self, items: list[Any], fail_at: int) -> None:
        super().__init__(items)
        self.taken = 0
        self.fail_at = fail_at

    def take(self) -> Any:
        if self.taken == self.fail_at:
            self.taken += 1
            raise RuntimeError("take failed")
        self.taken += 1
        return super().take()


@pytest.mark.parametrize("fail_at", [0, 1, 3, 7])
async def test_a_failing_take_on_the_hand_over_path_keeps_no_unit(
    autojump_clock: object, fail_at: int
) -> None:
    done: list[int] = []

    def task(i: int) -> Callable[[Any], Any]:
        async def body(emit: Any) -> int:
            done.append(i)
            return i

        return body

    capacity = CapacitySource(2)
    runner = HierarchicalTaskPoolRunner(
        "r", TakeFails([task(i) for i in range(10)], fail_at), capacity
    )
    with pytest.raises(RuntimeError, match="take failed"):
        async with runner.run_tasks() as envelopes:
            async for _ in envelopes:
                pass
    assert len(done) <= 10
    assert_idle(capacity)
