"""CapacitySource: the unit-cost face and trio's limiter interface."""

from __future__ import annotations

import functools
import math
import threading

import pytest
import trio
import trio.testing

from sluiceway import CapacitySource, OverReleaseError, ResourceCapacitySource
from tests.helpers import assert_idle, assert_no_lost_wakeup


async def test_acquire_release_and_statistics() -> None:
    cap = CapacitySource(2, name="pool")
    await cap.acquire()
    assert cap.borrowed_tokens == 1
    assert cap.available_tokens == 1
    stats = cap.statistics()
    assert stats.borrowed_tokens == 1
    assert stats.total_tokens == 2
    assert stats.borrowers == [trio.lowlevel.current_task()]
    assert stats.tasks_waiting == 0
    cap.release()
    assert cap.borrowed_tokens == 0
    assert "pool" in repr(cap)
    assert_idle(cap)


async def test_async_with_and_checkpoints() -> None:
    cap = CapacitySource(1)
    with trio.testing.assert_checkpoints():
        async with cap:
            assert cap.borrowed_tokens == 1
    assert cap.borrowed_tokens == 0


async def test_borrower_rules_match_trio() -> None:
    cap = CapacitySource(3)
    await cap.acquire()
    with pytest.raises(RuntimeError, match="already holding"):
        await cap.acquire()
    with pytest.raises(RuntimeError, match="already holding"):
        cap.acquire_nowait()
    cap.release()
    with pytest.raises(RuntimeError, match="isn't holding"):
        cap.release()
    with pytest.raises(OverReleaseError):
        cap.release_on_behalf_of("nobody")
    token = object()
    cap.acquire_on_behalf_of_nowait(token)
    assert cap.statistics().borrowers == [token]
    cap.release_on_behalf_of(token)
    assert_idle(cap)


async def test_acquire_nowait_would_block() -> None:
    cap = CapacitySource(1)
    cap.acquire_on_behalf_of_nowait("a")
    with pytest.raises(trio.WouldBlock):
        cap.acquire_on_behalf_of_nowait("b")
    cap.release_on_behalf_of("a")
    cap.acquire_on_behalf_of_nowait("b")
    cap.release_on_behalf_of("b")


async def test_fifo_within_a_node_and_no_barging() -> None:
    cap = CapacitySource(1)
    order: list[int] = []
    cap.acquire_on_behalf_of_nowait("holder")

    async def waiter(i: int) -> None:
        await cap.acquire_on_behalf_of(i)
        order.append(i)
        cap.release_on_behalf_of(i)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(waiter, i)
            await trio.testing.wait_all_tasks_blocked()
        # A newcomer may not overtake the queue even when a unit is free for an instant.
        cap.release_on_behalf_of("holder")
        with pytest.raises(trio.WouldBlock):
            cap.acquire_on_behalf_of_nowait("newcomer")
    assert order == [0, 1, 2, 3, 4]
    assert_idle(cap)


async def test_cancelled_waiter_holds_nothing() -> None:
    cap = CapacitySource(1)
    cap.acquire_on_behalf_of_nowait("holder")
    with trio.move_on_after(1) as scope:
        await cap.acquire()
    assert scope.cancelled_caught
    assert cap.statistics().tasks_waiting == 0
    cap.release_on_behalf_of("holder")
    assert_idle(cap)


async def test_cancelled_head_unblocks_the_next_waiter() -> None:
    cap = CapacitySource(1)
    got: list[str] = []

    async def take(name: str, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await cap.acquire_on_behalf_of(name)
            got.append(name)
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        cap.acquire_on_behalf_of_nowait("holder")
        first = await nursery.start(take, "first")
        await trio.testing.wait_all_tasks_blocked()
        second = await nursery.start(take, "second")
        await trio.testing.wait_all_tasks_blocked()
        cap.release_on_behalf_of("holder")
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["first"]
        first.cancel()
        await trio.testing.wait_all_tasks_blocked()
        cap.release_on_behalf_of("first")
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["first", "second"]
        second.cancel()
    cap.release_on_behalf_of("second")
    assert_idle(cap)


async def test_total_tokens_runtime_changes() -> None:
    cap = CapacitySource(2)
    woken: list[int] = []

    async def worker(i: int) -> None:
        async with cap:
            woken.append(i)
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(worker, i)
        await trio.testing.wait_all_tasks_blocked()
        assert len(woken) == 2
        cap.total_tokens = 4  # raising serves waiters at once
        await trio.testing.wait_all_tasks_blocked()
        assert len(woken) == 4
        cap.total_tokens = 1  # lowering keeps the debt: 4 in use, limit 1
        assert cap.available_tokens == -3
        assert_no_lost_wakeup(cap)
        cap.total_tokens = 0  # pause
        cap.total_tokens = math.inf
        await trio.testing.wait_all_tasks_blocked()
        assert len(woken) == 5
        nursery.cancel_scope.cancel()
    assert_idle(cap)


async def test_lowered_total_admits_nothing_until_paid_back() -> None:
    cap = CapacitySource(3)
    for name in "abc":
        cap.acquire_on_behalf_of_nowait(name)
    cap.total_tokens = 1
    cap.release_on_behalf_of("a")
    with pytest.raises(trio.WouldBlock):
        cap.acquire_on_behalf_of_nowait("d")  # 2 in use, limit 1
    cap.release_on_behalf_of("b")
    with pytest.raises(trio.WouldBlock):
        cap.acquire_on_behalf_of_nowait("d")  # 1 in use, limit 1
    cap.release_on_behalf_of("c")
    cap.acquire_on_behalf_of_nowait("d")
    cap.release_on_behalf_of("d")


async def test_zero_total_pauses_then_resumes() -> None:
    cap = CapacitySource(0)
    done = trio.Event()

    async def worker() -> None:
        async with cap:
            done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        cap.total_tokens = 1
    assert done.is_set()


def test_bad_totals_are_refused() -> None:
    with pytest.raises(TypeError, match=r"int or math\.inf"):
        CapacitySource(2.5)
    with pytest.raises(TypeError, match=r"int or math\.inf"):
        CapacitySource("3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"int or math\.inf"):
        CapacitySource(True)
    with pytest.raises(ValueError, match=">= 0"):
        CapacitySource(-1)
    cap = CapacitySource(1)
    with pytest.raises(ValueError, match=">= 0"):
        cap.total_tokens = -2
    with pytest.raises(TypeError):
        CapacitySource(1, parent="global")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="non-empty string"):
        CapacitySource(1, resource="")


async def test_works_as_trio_thread_limiter() -> None:
    cap = CapacitySource(2)
    lock = threading.Lock()
    running = 0
    peak = 0
    release = threading.Event()
    two_inside = threading.Event()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            if running == 2:
                two_inside.set()
        release.wait(10)
        with lock:
            running -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(functools.partial(trio.to_thread.run_sync, work, limiter=cap))  # type: ignore[arg-type]
        # Threads block until released; only two may ever hold a unit.
        assert await trio.to_thread.run_sync(two_inside.wait, 10)
        assert cap.borrowed_tokens == 2
        assert cap.statistics().tasks_waiting == 4
        release.set()
    assert peak == 2
    stats = cap.statistics()
    assert stats.granted == 6
    assert stats.released == 6
    assert_idle(cap)


async def test_unit_node_under_resource_parent_shares_a_resource() -> None:
    parent = ResourceCapacitySource({"slots": 2, "mem": 10})
    child = CapacitySource(5, parent)
    other = CapacitySource(5, parent)
    child.acquire_on_behalf_of_nowait("a")
    other.acquire_on_behalf_of_nowait("b")
    with pytest.raises(trio.WouldBlock):
        child.acquire_on_behalf_of_nowait("c")  # the parent's 2 slots are taken
    assert parent.in_use == {"slots": 2}
    child.release_on_behalf_of("a")
    other.release_on_behalf_of("b")
    assert_idle(parent, child, other)


async def test_unit_node_with_own_resource_name() -> None:
    parent = ResourceCapacitySource({"requests": 1})
    child = CapacitySource(2, parent, resource="requests")
    assert child.resource == "requests"
    child.acquire_on_behalf_of_nowait("a")
    with pytest.raises(trio.WouldBlock):
        child.acquire_on_behalf_of_nowait("b")
    child.release_on_behalf_of("a")


async def test_a_raised_parent_total_grants_tree_waiters_at_once_and_fairly() -> None:
    """trio's synchronous hand-over, with the tree's rules: raising a parent's total grants
    the waiters of its children in the same step (borrowers recorded before they wake), split
    max-min fair across the children, FIFO within each; a cancelled waiter leaves no trace."""
    root = CapacitySource(0)
    a = CapacitySource(5, root)
    b = CapacitySource(5, root)
    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(a.acquire_on_behalf_of, f"a{i}")
            await trio.testing.wait_all_tasks_blocked()
        for i in range(3):
            nursery.start_soon(b.acquire_on_behalf_of, f"b{i}")
            await trio.testing.wait_all_tasks_blocked()
        assert root.statistics().waiting_in_subtree == 6
        root.total_tokens = 4  # no await: granted now
        assert set(a.statistics().borrowers) == {"a0", "a1"}
        assert set(b.statistics().borrowers) == {"b0", "b1"}
        assert root.borrowed_tokens == 4
        a.total_tokens = 1  # a is over its new total: only b may take the next unit
        root.total_tokens = 5
        assert set(b.statistics().borrowers) == {"b0", "b1", "b2"}
        assert a.statistics().tasks_waiting == 1
        nursery.cancel_scope.cancel()
    assert a._pending_borrowers == {}
    assert b._pending_borrowers == {}
    for borrower in ("a0", "a1"):
        a.release_on_behalf_of(borrower)
    for borrower in ("b0", "b1", "b2"):
        b.release_on_behalf_of(borrower)
    assert_idle(root, a, b)
