"""What the connections of both stores share: where they are in their life, the checks made
before each call, and closing (the writer drained, then the readers waited for)."""

from __future__ import annotations

import abc
from typing import Any

import trio

from ._group_commit import GroupCommit
from ._rows import State


class Lifetime(abc.ABC):
    """The life of a store's connections. A subclass sets ``kind`` (the store's class name),
    ``where`` (the file or database, for messages), ``read_only``, ``_writer``,
    ``_read_limiter`` and ``_readers``, and closes its connections in
    :meth:`_close_connections_async`."""

    kind = "store"
    state: State
    where: str
    read_only: bool
    _writer: GroupCommit[Any]
    _read_limiter: trio.CapacityLimiter
    _readers: int

    def check_open(self) -> None:
        if self.state is not State.OPEN:
            problem = "is not open" if self.state in (State.NEW, State.OPENING) else "is closed"
            raise RuntimeError(
                f"this {self.kind} {problem}; use it inside `async with {self.kind}(...) as store:`"
            )

    def check_writable(self) -> None:
        self.check_open()
        if self.read_only:
            raise RuntimeError(
                f"this {self.kind} ({self.where}) was opened read-only; it cannot write"
            )

    async def close(self) -> None:
        """Apply the writes still queued, stop the writer and close every connection."""
        if self.state is not State.OPEN:
            raise RuntimeError(f"this {self.kind} is {self.state.value}, not open")
        self.state = State.CLOSING
        try:
            await self._writer.stop()
        finally:
            with trio.CancelScope(shield=True):
                # Reads abandoned by a cancelled caller may still run in their threads: the
                # limiter is released only when a thread ends, so holding every token means
                # that no read uses a connection any more.
                tokens = [object() for _ in range(self._readers)]
                for token in tokens:
                    await self._read_limiter.acquire_on_behalf_of(token)
                try:
                    await self._close_connections_async()
                finally:
                    for token in tokens:
                        self._read_limiter.release_on_behalf_of(token)
                    self.state = State.CLOSED
        # Everything above ran shielded: deliver a cancellation now that the store is closed.
        await trio.lowlevel.checkpoint_if_cancelled()

    @abc.abstractmethod
    async def _close_connections_async(self) -> None:
        """Close every connection (the writer has stopped and no read is under way)."""
