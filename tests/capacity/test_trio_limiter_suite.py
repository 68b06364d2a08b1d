"""trio's own test-suite of ``CapacityLimiter``, run against :class:`sluiceway.CapacitySource`.

The test functions below are copied from trio 0.35.0, file ``trio/_tests/test_sync.py``
(``test_CapacityLimiter``, ``test_CapacityLimiter_inf``,
``test_CapacityLimiter_change_total_tokens``, ``test_CapacityLimiter_memleak_548``,
``test_CapacityLimiter_zero_limit_tokens`` and the generic lock tests parametrised over lock
factories). Their bodies are unmodified; the only difference is that the name
``CapacityLimiter`` is bound to ``sluiceway.CapacitySource``, and the generic tests are
parametrised over the one lock factory that is a limiter, ``lambda: CapacityLimiter(1)``
(the others are trio's semaphores, locks and channel-based locks). The imports reproduce the
names those bodies use (``_core`` is trio's core module, as in trio's test).
"""

# ruff: noqa: PLC0415

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import pytest
from trio import _core
from trio.testing import assert_checkpoints, wait_all_tasks_blocked

from sluiceway import CapacitySource as CapacityLimiter


async def test_CapacityLimiter() -> None:
    assert CapacityLimiter(0).total_tokens == 0
    with pytest.raises(TypeError):
        CapacityLimiter(1.0)
    with pytest.raises(ValueError, match=r"^total_tokens must be >= 0$"):
        CapacityLimiter(-1)
    c = CapacityLimiter(2)
    repr(c)  # smoke test
    assert c.total_tokens == 2
    assert c.borrowed_tokens == 0
    assert c.available_tokens == 2
    with pytest.raises(RuntimeError):
        c.release()
    assert c.borrowed_tokens == 0
    c.acquire_nowait()
    assert c.borrowed_tokens == 1
    assert c.available_tokens == 1

    stats = c.statistics()
    assert stats.borrowed_tokens == 1
    assert stats.total_tokens == 2
    assert stats.borrowers == [_core.current_task()]
    assert stats.tasks_waiting == 0

    # Can't re-acquire when we already have it
    with pytest.raises(RuntimeError):
        c.acquire_nowait()
    assert c.borrowed_tokens == 1
    with pytest.raises(RuntimeError):
        await c.acquire()
    assert c.borrowed_tokens == 1

    # We can acquire on behalf of someone else though
    with assert_checkpoints():
        await c.acquire_on_behalf_of("someone")

    # But then we've run out of capacity
    assert c.borrowed_tokens == 2
    with pytest.raises(_core.WouldBlock):
        c.acquire_on_behalf_of_nowait("third party")

    assert set(c.statistics().borrowers) == {_core.current_task(), "someone"}

    # Until we release one
    c.release_on_behalf_of(_core.current_task())
    assert c.statistics().borrowers == ["someone"]

    c.release_on_behalf_of("someone")
    assert c.borrowed_tokens == 0
    with assert_checkpoints():
        async with c:
            assert c.borrowed_tokens == 1

    async with _core.open_nursery() as nursery:
        await c.acquire_on_behalf_of("value 1")
        await c.acquire_on_behalf_of("value 2")
        nursery.start_soon(c.acquire_on_behalf_of, "value 3")
        await wait_all_tasks_blocked()
        assert c.borrowed_tokens == 2
        assert c.statistics().tasks_waiting == 1
        c.release_on_behalf_of("value 2")
        # Fairness:
        assert c.borrowed_tokens == 2
        with pytest.raises(_core.WouldBlock):
            c.acquire_nowait()

    c.release_on_behalf_of("value 3")
    c.release_on_behalf_of("value 1")


async def test_CapacityLimiter_inf() -> None:
    from math import inf

    c = CapacityLimiter(inf)
    repr(c)  # smoke test
    assert c.total_tokens == inf
    assert c.borrowed_tokens == 0
    assert c.available_tokens == inf
    with pytest.raises(RuntimeError):
        c.release()
    assert c.borrowed_tokens == 0
    c.acquire_nowait()
    assert c.borrowed_tokens == 1
    assert c.available_tokens == inf


async def test_CapacityLimiter_change_total_tokens() -> None:
    c = CapacityLimiter(2)

    with pytest.raises(TypeError):
        c.total_tokens = 1.0

    with pytest.raises(ValueError, match=r"^total_tokens must be >= 0$"):
        c.total_tokens = -1

    with pytest.raises(ValueError, match=r"^total_tokens must be >= 0$"):
        c.total_tokens = -10

    assert c.total_tokens == 2

    async with _core.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(c.acquire_on_behalf_of, i)
            await wait_all_tasks_blocked()
        assert set(c.statistics().borrowers) == {0, 1}
        assert c.statistics().tasks_waiting == 3
        c.total_tokens += 2
        assert set(c.statistics().borrowers) == {0, 1, 2, 3}
        assert c.statistics().tasks_waiting == 1
        c.total_tokens -= 3
        assert c.borrowed_tokens == 4
        assert c.total_tokens == 1
        c.release_on_behalf_of(0)
        c.release_on_behalf_of(1)
        c.release_on_behalf_of(2)
        assert set(c.statistics().borrowers) == {3}
        assert c.statistics().tasks_waiting == 1
        c.release_on_behalf_of(3)
        assert set(c.statistics().borrowers) == {4}
        assert c.statistics().tasks_waiting == 0


# regression test for issue #548
async def test_CapacityLimiter_memleak_548() -> None:
    limiter = CapacityLimiter(total_tokens=1)
    await limiter.acquire()

    async with _core.open_nursery() as n:
        n.start_soon(limiter.acquire)
        await wait_all_tasks_blocked()  # give it a chance to run the task
        n.cancel_scope.cancel()

    # if this is 1, the acquire call (despite being killed) is still there in the task, and will
    # leak memory all the while the limiter is active
    assert len(limiter._pending_borrowers) == 0


async def test_CapacityLimiter_zero_limit_tokens() -> None:
    c = CapacityLimiter(5)

    assert c.total_tokens == 5

    async with _core.open_nursery() as nursery:
        c.total_tokens = 0

        for i in range(5):
            nursery.start_soon(c.acquire_on_behalf_of, i)
            await wait_all_tasks_blocked()

        assert set(c.statistics().borrowers) == set()
        assert c.statistics().tasks_waiting == 5

        c.total_tokens = 5

        assert set(c.statistics().borrowers) == {0, 1, 2, 3, 4}

        nursery.start_soon(c.acquire_on_behalf_of, 5)
        await wait_all_tasks_blocked()

        assert c.statistics().tasks_waiting == 1

        for i in range(5):
            c.release_on_behalf_of(i)

        assert c.statistics().tasks_waiting == 0
        c.release_on_behalf_of(5)

        # making sure that zero limit capacity limiter doesn't let any tasks through

        c.total_tokens = 0

        with pytest.raises(_core.WouldBlock):
            c.acquire_nowait()

        nursery.start_soon(c.acquire_on_behalf_of, 6)
        await wait_all_tasks_blocked()

        assert c.statistics().tasks_waiting == 1
        assert c.statistics().borrowers == []

        c.total_tokens = 1
        assert c.statistics().tasks_waiting == 0
        assert c.statistics().borrowers == [6]
        c.release_on_behalf_of(6)

        await c.acquire_on_behalf_of(0)  # total_tokens is 1

        nursery.start_soon(c.acquire_on_behalf_of, 1)
        await wait_all_tasks_blocked()
        c.total_tokens = 0

        assert c.statistics().borrowers == [0]

        c.release_on_behalf_of(0)
        await wait_all_tasks_blocked()
        assert c.statistics().borrowers == []
        assert c.statistics().tasks_waiting == 1

        c.total_tokens = 1
        await wait_all_tasks_blocked()
        assert c.statistics().borrowers == [1]
        assert c.statistics().tasks_waiting == 0

        c.release_on_behalf_of(1)

        c.total_tokens = 0

        nursery.cancel_scope.cancel()

    assert c.total_tokens == 0
    assert c.statistics().borrowers == []
    assert c._pending_borrowers == {}


lock_factories = [
    lambda: CapacityLimiter(1),
]
lock_factory_names = [
    "CapacityLimiter(1)",
]

generic_lock_test = pytest.mark.parametrize(
    "lock_factory",
    lock_factories,
    ids=lock_factory_names,
)

LockLike: TypeAlias = CapacityLimiter
LockFactory: TypeAlias = Callable[[], LockLike]


# Spawn a bunch of workers that take a lock and then yield; make sure that
# only one worker is ever in the critical section at a time.
@generic_lock_test
async def test_generic_lock_exclusion(lock_factory: LockFactory) -> None:
    LOOPS = 10
    WORKERS = 5
    in_critical_section = False
    acquires = 0

    async def worker(lock_like: LockLike) -> None:
        nonlocal in_critical_section, acquires
        for _ in range(LOOPS):
            async with lock_like:
                acquires += 1
                assert not in_critical_section
                in_critical_section = True
                await _core.checkpoint()
                await _core.checkpoint()
                assert in_critical_section
                in_critical_section = False

    async with _core.open_nursery() as nursery:
        lock_like = lock_factory()
        for _ in range(WORKERS):
            nursery.start_soon(worker, lock_like)
    assert not in_critical_section
    assert acquires == LOOPS * WORKERS


# Several workers queue on the same lock; make sure they each get it, in
# order.
@generic_lock_test
async def test_generic_lock_fifo_fairness(lock_factory: LockFactory) -> None:
    initial_order = []
    record = []
    LOOPS = 5

    async def loopy(name: int, lock_like: LockLike) -> None:
        # Record the order each task was initially scheduled in
        initial_order.append(name)
        for _ in range(LOOPS):
            async with lock_like:
                record.append(name)

    lock_like = lock_factory()
    async with _core.open_nursery() as nursery:
        nursery.start_soon(loopy, 1, lock_like)
        nursery.start_soon(loopy, 2, lock_like)
        nursery.start_soon(loopy, 3, lock_like)
    # The first three could be in any order due to scheduling randomness,
    # but after that they should repeat in the same order
    for i in range(LOOPS):
        assert record[3 * i : 3 * (i + 1)] == initial_order


@generic_lock_test
async def test_generic_lock_acquire_nowait_blocks_acquire(
    lock_factory: LockFactory,
) -> None:
    lock_like = lock_factory()

    record = []

    async def lock_taker() -> None:
        record.append("started")
        async with lock_like:
            pass
        record.append("finished")

    async with _core.open_nursery() as nursery:
        lock_like.acquire_nowait()
        nursery.start_soon(lock_taker)
        await wait_all_tasks_blocked()
        assert record == ["started"]
        lock_like.release()
