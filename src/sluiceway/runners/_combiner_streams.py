"""The channel of a combiner's stream blocks: ``race_stream()`` and ``round_robin_stream()``.

:class:`CombinedChannel` is what ``async with combiner.race_stream() as channel`` hands out. Its
``receive()`` takes results from the combiner's :class:`~._combiner_sources.Sources`, in completion
order or, for round robin, in turn; :meth:`CombinedChannel.block` is the stream block itself: it
makes the sources fail fast while the block runs and, when the block ends, raises every error
that no ``receive()`` took.

It is apart from ``_combiner.py`` because it is the output side: what a stream does once it is
open. The combiner decides how it opens: a block on a combiner not entered yet enters it for the
block's duration, one on an open combiner leaves what is still in flight to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from .._util import raise_saving_context
from ._combiner_sources import (
    Checkpoint,
    End,
    Error,
    Result,
    Slot,
    SlotState,
    Sources,
    raise_all,
    raise_together,
)


class CombinedChannel(trio.abc.ReceiveChannel[Any]):
    """The channel of a :meth:`~AsyncIteratorCombiner.race_stream` or round-robin block."""

    def __init__(
        self,
        sources: Sources,
        name: str,
        round_robin: bool,
        yield_final_values: bool,
        with_source: bool,
    ) -> None:
        self._sources = sources
        self.name = name
        self.round_robin = round_robin
        self.yield_final_values = yield_final_values
        self.with_source = with_source
        #: Round robin: the index of the source whose turn it is.
        self.cursor = 0
        self.failure: BaseException | None = None
        self._closed = False

    async def receive(self) -> Any:
        """The next item; :exc:`trio.EndOfChannel` once every source is exhausted."""
        if self._closed:
            raise trio.ClosedResourceError(f"the {self.name} channel is closed")
        if self.failure is not None:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError(
                f"the {self.name} channel failed: a source raised {self.failure!r}"
            ) from self.failure
        return await self._receive()

    def close(self) -> None:
        """Stop receiving (the block's exit does this)."""
        self._closed = True

    async def aclose(self) -> None:
        """See :meth:`close`; always checkpoints."""
        self.close()
        await trio.lowlevel.checkpoint()

    @asynccontextmanager
    async def block(self, *, owned: bool) -> AsyncIterator[None]:
        """The stream block: it consumes the sources from start to end.

        ``owned``: the block entered the combiner and its exit leaves it, which closes every
        source, so there is nothing to wait for here.
        """
        sources = self._sources
        with sources.consuming(self.name):
            sources.fail_fast = True
            if any(isinstance(slot.result, Error) for slot in sources.ready.values()):
                sources.shutdown()  # an error buffered before the stream opened fails it too
            try:
                yield
            except BaseException as exc:
                self.close()
                sources.fail_fast = False
                pending = sources.undelivered_errors()
                if sources.shut_down and not owned:
                    await sources.wait_closed()
                if pending:
                    raise_together(exc, pending)
                raise
            self.close()
            sources.fail_fast = False
            if not owned:
                # Before taking pending errors: if this checkpoint is cancelled, they stay
                # buffered and the combiner's exit raises them.
                if sources.shut_down:
                    await sources.wait_closed()
                else:
                    await trio.lowlevel.checkpoint()
            pending = sources.undelivered_errors()
            if pending:
                raise_all(pending)

    async def _receive(self) -> Any:
        """The next item of the stream (see :meth:`~AsyncIteratorCombiner.race_stream`)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        checkpoint = Checkpoint()
        skip_ends = not self.yield_final_values
        if self.round_robin:
            got = await self._next_in_turn(checkpoint, skip_ends=skip_ends)
        else:
            got = await self._sources.next_in_race(checkpoint, skip_ends=skip_ends)
        await checkpoint.finish()
        if got is None:
            raise trio.EndOfChannel
        index, result = got
        if isinstance(result, Error):
            self.failure = result.error
            raise_saving_context(result.error)
        item = result.delivered()
        return (index, item) if self.with_source else item

    async def _next_in_turn(
        self, checkpoint: Checkpoint, *, skip_ends: bool
    ) -> tuple[int, Result] | None:
        """Take the result of the source whose turn it is; an error of any source comes first."""
        sources = self._sources
        slots = sources.slots
        while True:
            failed = sources.first_error()
            if failed is not None:
                return failed.index, sources.take(failed)
            slot: Slot | None = None
            for offset in range(len(slots)):
                candidate = slots[(self.cursor + offset) % len(slots)]
                if candidate.state is not SlotState.DONE:
                    slot = candidate
                    break
            if slot is None:
                return None
            if slot.state is SlotState.READY:
                self.cursor = slot.index + 1
                result = sources.take(slot)
                if skip_ends and isinstance(result, End):
                    continue
                return slot.index, result
            sources.request_idle()
            await checkpoint.park(sources.wakeup)
