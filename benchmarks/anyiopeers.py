"""The anyio-based peers of scenario A that issue 14's table measured (75, 61 and 77 µs a task),
now measured in the same run as sluiceway: anyio's own idiom on trio, and aiometer on asyncio
and on trio.

- **anyio, gated spawn** (on trio): the spawner takes a unit of an ``anyio.Semaphore(C)`` before
  it starts each body's task in a task group, so at most C tasks exist at once; each task gives
  its unit back when its body returns, then sends the result into a memory object stream bounded
  like sluiceway's envelope buffer, which the consumer reads with ``async for``.
- **aiometer** (on asyncio and on trio): ``aiometer.amap(fn, bodies, max_at_once=C)``, the
  results read with ``async for`` as they complete.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import aiometer
import anyio

from sluiceway.runners import DEFAULT_BUFFER_SIZE

from .harness import Results

Body = Callable[[], Awaitable[int]]


async def anyio_gated_spawn_fanout(
    bodies: Sequence[Body], limit: int, results: Results, semaphore: anyio.Semaphore
) -> None:
    """Run every body of ``bodies``, ``limit`` at a time, under ``semaphore`` (of ``limit``
    units: the caller reads how many are held); see the module docstring."""
    send, receive = anyio.create_memory_object_stream[int](DEFAULT_BUFFER_SIZE)

    async def run_one(body: Body, out: anyio.abc.ObjectSendStream[int]) -> None:
        async with out:
            try:
                value = await body()
            finally:
                semaphore.release()
            await out.send(value)

    async def consume() -> None:
        async with receive:
            async for value in receive:
                results.add(value)

    async with anyio.create_task_group() as outer:
        outer.start_soon(consume)
        async with send, anyio.create_task_group() as spawned:
            for body in bodies:
                await semaphore.acquire()
                spawned.start_soon(run_one, body, send.clone())


async def aiometer_fanout(
    bodies: Sequence[Body], limit: int, results: Results, busy: list[int]
) -> None:
    """Run every body of ``bodies`` through ``aiometer.amap`` with ``max_at_once=limit``;
    ``busy[0]`` counts the bodies running (aiometer's "units held")."""

    async def call(body: Body) -> int:
        busy[0] += 1
        try:
            return await body()
        finally:
            busy[0] -= 1

    async with aiometer.amap(call, bodies, max_at_once=limit) as values:
        async for value in values:
            results.add(value)
