"""Group commit: one writer task applies the writes of concurrent callers in shared
transactions. Both stores use it: the SQLite store over its write connection, the PostgreSQL
store over its own.

A write is a function of the transaction (``fn(tx)``), queued by :meth:`GroupCommit.write`.
The writer task takes up to ``max_batch`` queued writes at once and hands them to the store's
``apply_batch``, which runs them in one transaction (in a worker thread, or on the trio thread
with ``threads=False``) and leaves each write's result or error on it. A caller waits for its
write uncancellably: it always learns how its write ended (applied or refused exactly once),
and a cancellation is delivered at its next checkpoint.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import trio

from .._errors import StoreError
from .._util import open_owned_nursery, type_name

T = TypeVar("T")
Tx = TypeVar("Tx")


class Op(Generic[Tx, T]):
    """One queued write: ``fn`` runs in the writer's transaction; ``task`` waits
    (uncancellably) until the writer reschedules it."""

    __slots__ = ("error", "fn", "result", "task")

    def __init__(self, fn: Callable[[Tx], T], task: trio.lowlevel.Task) -> None:
        self.fn = fn
        self.task = task
        self.result: T | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[Tx]):
    """The write queue and writer task of one store (see the module documentation).

    ``apply_batch(ops)`` runs the ops in one transaction and sets each op's ``result`` or
    ``error``; it must not raise (what it raises fails the whole batch).
    """

    def __init__(
        self,
        apply_batch: Callable[[Sequence[Op[Tx, Any]]], None],
        *,
        max_batch: int,
        threads: bool,
        name: str,
    ) -> None:
        self._apply_batch = apply_batch
        self._max_batch = max_batch
        self._threads = threads
        self._name = name
        self._limiter = trio.CapacityLimiter(1)
        self._queue: collections.deque[Op[Tx, Any]] = collections.deque()
        self._work = trio.Event()
        self._closing = False
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self.writes = 0
        self.batches = 0
        self.largest_batch = 0

    async def start(self) -> None:
        """Start the writer task (in a nursery of its own, closed by :meth:`stop`)."""
        nursery_cm = open_owned_nursery()
        nursery = await nursery_cm.__aenter__()
        self._nursery_cm = nursery_cm
        nursery.start_soon(self._writer, name=f"writer of {self._name}")

    async def stop(self) -> None:
        """Apply the writes still queued and stop the writer (a no-op if it never started)."""
        nursery_cm, self._nursery_cm = self._nursery_cm, None
        if nursery_cm is None:
            return
        # The writer task is shielded: it drains the queue and returns even if the
        # surroundings are cancelled, so this wait always ends with the queue applied.
        # (The nursery must be exited outside any cancel scope opened here.)
        self._closing = True
        self._work.set()
        await nursery_cm.__aexit__(None, None, None)

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a write transaction (grouped with other writes) and return its result;
        what it raised is raised here (and only its own changes are rolled back)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        op: Op[Tx, T] = Op(fn, trio.lowlevel.current_task())
        self._queue.append(op)
        self._work.set()
        # Not cancellable (cheaper than a shielded scope): the caller always learns how its
        # write ended; a cancellation is delivered at its next checkpoint.
        await trio.lowlevel.wait_task_rescheduled(_not_abortable)
        error = op.error
        if error is not None:
            op.error = None
            try:
                raise error
            finally:
                del error
        return op.result  # type: ignore[return-value]  # set unless error

    async def _writer(self) -> None:
        # Shielded: queued writers wait shielded for their op, so the writer must apply every
        # op it is given even while the store's surroundings are cancelled. It stops when the
        # store closes and the queue is empty.
        with trio.CancelScope(shield=True):
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._work = trio.Event()
                    await self._work.wait()
                    continue
                count = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(count)]
                try:
                    if self._threads:
                        await trio.to_thread.run_sync(
                            self._apply_batch, batch, limiter=self._limiter
                        )
                    else:
                        self._apply_batch(batch)
                except Exception as exc:  # pragma: no cover - apply_batch catches everything
                    fail_batch(batch, exc)
                self.writes += count
                self.batches += 1
                self.largest_batch = max(self.largest_batch, count)
                for op in batch:
                    trio.lowlevel.reschedule(op.task)
                if not self._threads:
                    await trio.lowlevel.checkpoint()  # let the writers that were served go on


def fail_batch(ops: Iterable[Op[Any, Any]], cause: BaseException) -> None:
    """Give every op of a batch that failed as a whole a :class:`StoreError` naming why."""
    ops = list(ops)
    for op in ops:
        error = StoreError(
            f"a write transaction of {len(ops)} operation(s) failed and was rolled back: "
            f"{type_name(cause)}: {cause}"
        )
        error.__cause__ = cause
        op.result = None
        op.error = error


def _not_abortable(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED
