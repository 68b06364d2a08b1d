"""PreciseClock: trio waits the whole granules before a deadline, then polls through the last."""

from __future__ import annotations

import math
import socket

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from sluiceway import PreciseClock, _clock
from sluiceway._clock import MAX_GRANULARITY, default_granularity

NOW = 1_000.0  # the performance counter, frozen by the tests that read the clock


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_clock, "perf_counter", lambda: NOW)


def polled_wait_ms(timeout: float) -> int:
    """How many milliseconds epoll waits for ``timeout`` seconds: Python rounds it up."""
    return math.ceil(timeout * 1000) if timeout > 0 else 0


@pytest.mark.parametrize(
    ("platform", "granularity"),
    [("linux", 0.001), ("win32", 0.001), ("darwin", 0.0), ("freebsd14", 0.0)],
)
def test_default_granularity_is_the_event_loops_unit(platform: str, granularity: float) -> None:
    assert default_granularity(platform) == granularity


def test_the_default_is_this_platforms() -> None:
    assert PreciseClock().granularity == default_granularity()


@pytest.mark.parametrize("bad", [-0.001, math.nan, math.inf, MAX_GRANULARITY * 2])
def test_a_granularity_out_of_range_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="granularity must be between 0 and"):
        PreciseClock(bad)


@pytest.mark.parametrize("bad", [True, "0.001", [0.001]])
def test_a_granularity_that_is_not_a_number_is_refused(bad: object) -> None:
    with pytest.raises(TypeError, match="granularity must be a number of seconds"):
        PreciseClock(bad)  # type: ignore[arg-type]


def test_time_is_the_performance_counter_plus_an_offset(frozen: None) -> None:
    clock = PreciseClock(0.001)
    offset = clock.current_time() - NOW
    assert 10_000 <= offset <= 200_000  # like trio's own clock: never mistaken for another
    assert clock.current_time() == clock.current_time()


def test_it_waits_the_whole_milliseconds_then_polls(frozen: None) -> None:
    clock = PreciseClock(0.001)
    now = clock.current_time()
    # 10.5 ms ahead: wait 10 ms (epoll's unit), not the 11 ms Python would round 10.5 up to.
    assert polled_wait_ms(clock.deadline_to_sleep_time(now + 0.0105)) == 10
    assert clock.deadline_to_sleep_time(now + 0.0105) < 0.0105
    # Within the last millisecond, and at or past the deadline: poll.
    for ahead in (0.0009, 1e-7, 0.0, -0.5):
        assert clock.deadline_to_sleep_time(now + ahead) == 0.0
    # No deadline at all, or a far one: the wait is trio's to cap (at a day).
    assert clock.deadline_to_sleep_time(math.inf) == math.inf
    assert clock.deadline_to_sleep_time(now + 7200.25) == pytest.approx(7200.25)
    assert clock.deadline_to_sleep_time(-math.inf) == 0.0


@given(ahead=st.floats(min_value=-1.0, max_value=100.0), granularity=st.sampled_from([1e-3, 4e-3]))
def test_a_wait_never_passes_its_deadline_and_leaves_under_a_granule(
    ahead: float, granularity: float
) -> None:
    clock = PreciseClock(granularity)
    # Fix the clock's offset, and freeze its counter at NOW for this example.
    clock._offset = 50_000.0  # the one random part, fixed
    deadline = 50_000.0 + NOW + ahead
    original = _clock.perf_counter
    _clock.perf_counter = lambda: NOW  # type: ignore[assignment]
    try:
        wait = clock.deadline_to_sleep_time(deadline)
    finally:
        _clock.perf_counter = original
    remaining = deadline - (50_000.0 + NOW)
    assert wait >= 0.0
    # The system call rounds the wait up to whole milliseconds: it still ends by the deadline.
    assert polled_wait_ms(wait) / 1000 <= max(remaining, 0.0) + 1e-12
    # What is left to poll through is less than a granule (plus the margin kept below it).
    assert remaining - wait < granularity + 2e-6


def test_granularity_zero_waits_exactly(frozen: None) -> None:
    clock = PreciseClock(0)
    now = clock.current_time()
    assert clock.deadline_to_sleep_time(now + 0.0105) == pytest.approx(0.0105)
    assert clock.deadline_to_sleep_time(now - 1) == pytest.approx(-1.0)  # trio clamps it to 0


def test_sleeps_under_it_never_end_before_their_deadline() -> None:
    woken: list[tuple[float, float]] = []

    async def sleeper(delay: float) -> None:
        deadline = trio.current_time() + delay
        await trio.sleep_until(deadline)
        woken.append((deadline, trio.current_time()))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(sleeper, 0.0005 * (i % 7))

    clock = PreciseClock()
    trio.run(main, clock=clock)
    assert len(woken) == 60
    assert all(now >= deadline for deadline, now in woken)


def test_io_is_seen_while_it_polls_towards_a_deadline() -> None:
    order: list[str] = []

    async def reader(sock: trio.socket.SocketType) -> None:
        await sock.recv(1)
        order.append("read")

    async def main() -> None:
        left, right = trio.socket.socketpair(socket.AF_UNIX)
        with left, right:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader, left)
                await trio.testing.wait_all_tasks_blocked()
                for step in range(20):
                    if step == 5:
                        await right.send(b"x")
                    await trio.sleep(0.0003)  # shorter than a granule: the loop polls
                    order.append(f"sleep {step}")

    trio.run(main, clock=PreciseClock())
    # The byte sent before the sixth sleep is read during that sleep, not after the polling.
    assert order.index("read") < order.index("sleep 6")
