"""The idiomatic trio worker pool of scenario A: the trio-side peer that issue 14's table measured
at 26.6-30.8 µs a task, now measured in the same run as sluiceway.

A producer sends the bodies into a memory channel bounded to C, C workers take them with
``async for`` and send each result into a second memory channel bounded like sluiceway's
envelope buffer, which the consumer reads with ``async for``. Every send and receive is a trio
checkpoint, as trio's own channels promise; that is what such a pool costs per task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import trio

from sluiceway.runners import DEFAULT_BUFFER_SIZE

from .harness import Results

Body = Callable[[], Awaitable[int]]


async def trio_pool_fanout(
    bodies: Iterable[Body], workers: int, results: Results, busy: list[int]
) -> None:
    """Run every body of ``bodies`` on ``workers`` trio tasks fed through memory channels;
    ``busy[0]`` counts the workers running a body (the pool's "units held")."""
    work_send, work_receive = trio.open_memory_channel[Body](workers)
    out_send, out_receive = trio.open_memory_channel[int](DEFAULT_BUFFER_SIZE)

    async def producer() -> None:
        async with work_send:
            for body in bodies:
                await work_send.send(body)

    async def worker(
        work: trio.MemoryReceiveChannel[Body], out: trio.MemorySendChannel[int]
    ) -> None:
        async with work, out:
            async for body in work:
                busy[0] += 1
                value = await body()
                busy[0] -= 1
                await out.send(value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        with work_receive, out_send:  # the workers hold clones; these close at once
            for _ in range(workers):
                nursery.start_soon(worker, work_receive.clone(), out_send.clone())
        async with out_receive:
            async for value in out_receive:
                results.add(value)
