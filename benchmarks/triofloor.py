"""The trio floor of scenarios A and D: what a fan-out with sluiceway's per-task semantics costs
on trio with no engine at all. A reference point, not a competitor: it tells how much of
sluiceway's cost per envelope is the engine and how much is trio's.

What it keeps of sluiceway's semantics, each at its cheapest:

- a limit of C bodies running at once (an int count of the units held), and C worker tasks;
- a lazy source advanced only by a worker holding the unit of the item it produces, one
  ``__anext__`` at a time (a list source is a deque of bodies made before the timer);
- a real :class:`~sluiceway.TaskEnvelope` per task, with its start and end times read from
  trio's clock, in a buffer of ``DEFAULT_BUFFER_SIZE`` envelopes: when it is full the workers
  stop until the consumer has drained it to half, as a run does;
- a consumer that takes the envelopes one at a time, with one schedule point each (the
  checkpoint of ``EnvelopeChannel.__anext__``: ``checkpoint_if_cancelled`` then
  ``cancel_shielded_checkpoint``), or as batches of all that is buffered, one schedule point
  per batch;
- a worker yields to the scheduler after 16 bodies in a row, as sluiceway's workers do.

What it leaves out is the engine: the capacity tree (its fairness, its accounting), the job
record and the ``Emitter``, the cancel scope per task, timeouts, retries, statistics, errors.
Every body here succeeds; a failure raises out of the run and fails the benchmark.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from sluiceway import EnvelopeKind, TaskEnvelope
from sluiceway.runners import DEFAULT_BUFFER_SIZE
from sluiceway.runners._envelopes import make_envelope

from .harness import Results

Body = Callable[[], Awaitable[int]]

#: Bodies a worker runs back to back before it yields (sluiceway's ``YIELD_EVERY``).
YIELD_EVERY = 16


class _Floor:
    """One fan-out: the shared state of its workers and its consumer."""

    def __init__(
        self, bodies: deque[Body] | AsyncIterator[Body], limit: int, held: list[int]
    ) -> None:
        self.list = bodies if isinstance(bodies, deque) else None
        self.stream = None if isinstance(bodies, deque) else bodies
        self.limit = limit
        self.held = held  # [units held]: bodies running, or the source's next one produced
        self.exhausted = False
        self.producing = False  # one __anext__ at a time
        self.buffer: deque[TaskEnvelope[Any, int]] = deque()
        self.blocked = False  # the buffer filled up and is not yet drained to half
        self.idle: list[trio.lowlevel.Task] = []
        self.consumer: trio.lowlevel.Task | None = None
        self.running = 0  # workers not yet returned

    async def _wait(self, queue: list[trio.lowlevel.Task]) -> None:
        queue.append(trio.lowlevel.current_task())

        def abort(_: object) -> trio.lowlevel.Abort:
            queue.remove(trio.lowlevel.current_task())
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _wake_workers(self) -> None:
        idle, self.idle = self.idle, []
        for task in idle:
            trio.lowlevel.reschedule(task)

    def _wake_consumer(self) -> None:
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            trio.lowlevel.reschedule(consumer)

    async def _next_body(self) -> Body | None:
        """The next body, its unit taken; ``None`` once the source is exhausted."""
        while True:
            if self.exhausted:
                return None
            if self.blocked or self.held[0] >= self.limit or self.producing:
                await self._wait(self.idle)
                continue
            if self.list is not None:
                if not self.list:
                    self.exhausted = True
                    continue
                self.held[0] += 1
                return self.list.popleft()
            assert self.stream is not None
            self.held[0] += 1
            self.producing = True
            try:
                body = await self.stream.__anext__()
            except StopAsyncIteration:
                self.held[0] -= 1
                self.exhausted = True
                self._wake_workers()
                continue
            finally:
                self.producing = False
            if self.idle:
                trio.lowlevel.reschedule(self.idle.pop())  # it may produce the next one
            return body

    async def worker(self) -> None:
        now = trio.current_time
        streak = 0
        try:
            while (body := await self._next_body()) is not None:
                started = now()
                value = await body()
                self.held[0] -= 1
                self.buffer.append(
                    make_envelope(0, EnvelopeKind.FINAL, value, None, None, started, now())
                )
                if len(self.buffer) >= DEFAULT_BUFFER_SIZE:
                    self.blocked = True
                self._wake_consumer()
                streak += 1
                if streak >= YIELD_EVERY:
                    streak = 0
                    await trio.lowlevel.checkpoint()
        finally:
            self.running -= 1
            self._wake_consumer()

    async def _until_buffered(self) -> bool:
        """Wait for an envelope; ``False`` once every worker has returned and none is left."""
        while not self.buffer:
            if not self.running:
                return False
            self.consumer = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self.consumer = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        return True

    def _drained(self) -> None:
        if self.blocked and len(self.buffer) <= DEFAULT_BUFFER_SIZE // 2:
            self.blocked = False
            self._wake_workers()

    async def consume(self, results: Results, *, batches: bool) -> None:
        add = results.add
        buffer = self.buffer
        while True:
            await trio.lowlevel.checkpoint_if_cancelled()
            if not await self._until_buffered():
                return
            if batches:
                batch = list(buffer)
                buffer.clear()
                self._drained()
                await trio.lowlevel.cancel_shielded_checkpoint()
                for envelope in batch:
                    add(envelope.value)
            else:
                envelope = buffer.popleft()
                self._drained()
                await trio.lowlevel.cancel_shielded_checkpoint()
                add(envelope.value)


async def trio_floor_fanout(
    bodies: deque[Body] | AsyncIterator[Body],
    limit: int,
    results: Results,
    held: list[int],
    *,
    batches: bool,
) -> None:
    """Run every body of ``bodies`` (a deque, or a lazy async iterator) ``limit`` at a time,
    delivering each result to ``results`` through a bounded envelope buffer (see the module
    docstring); ``batches`` takes them as batches rather than one at a time. ``held[0]``
    counts the units held (what the tracker checks)."""
    floor = _Floor(bodies, limit, held)
    async with trio.open_nursery() as nursery:
        floor.running = limit
        for _ in range(limit):
            nursery.start_soon(floor.worker)
        await floor.consume(results, batches=batches)
    if held[0]:
        raise AssertionError(f"{held[0]} units still held after the fan-out")
