"""A subscription's envelopes on their way to its connection: every one as it comes, or
sampled (at most one event per interval, holding the newest few) for a page that shows a
run too busy for anyone to read every envelope of."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio

from ..entities import EntityEnvelope, EnvelopeSample

#: What a stream hands over: every envelope, or a sample.
Found = list[EntityEnvelope] | EnvelopeSample

#: Queues a subscription's envelopes (their JSON) for its client, with the count of those
#: since the previous ones that it leaves out (``Connection.emit_envelopes``).
Emit = Callable[[list[str], int], Awaitable[None]]


class SubscriptionRelay:
    """Hands one subscription's batches of envelopes to its connection's ``emit``, each
    envelope's JSON made by ``encode``.

    With neither ``interval`` nor ``keep``, every batch goes as it comes (the connection's
    writer still joins what waits into as few frames as it can). With ``interval``, what
    comes meanwhile waits until ``interval`` seconds after the previous event; with ``keep``,
    an event holds the newest ``keep`` envelopes of what came since the previous one, and
    the newest ``keep`` of the older notable ones (errors, prompts, answers); the
    others are counted in its ``skipped``. The first event, and the one after the stream's
    end, go at once.

    ``last`` is the seq of the last envelope handed to the connection: where the client
    resumes from, with nothing missed silently and nothing twice.
    """

    def __init__(
        self,
        emit: Emit,
        encode: Callable[[EntityEnvelope], str],
        *,
        after_seq: int,
        interval: float = 0.0,
        keep: int | None = None,
    ) -> None:
        self.emit = emit
        self.encode = encode
        self.last = after_seq
        self.interval = interval
        self.keep = keep

    async def relay(
        self,
        batches: trio.abc.ReceiveChannel[list[EntityEnvelope]]
        | trio.abc.ReceiveChannel[EnvelopeSample],
    ) -> None:
        """Relay until the stream ends (its last envelopes sent). The stream comes as lists
        (every envelope), or as samples already cut to ``keep`` by the runtime (which then
        never even looks at what it skips): either way, several that come within an
        interval are joined, and cut again to ``keep``."""
        if not self.interval and self.keep is None:
            async for batch in batches:
                await self._send(batch if isinstance(batch, list) else batch.envelopes, 0)
            return
        keep = self.keep
        waiting: list[EntityEnvelope] = []  # since the last event, in seq order
        skipped = 0  # since the last event, not in waiting
        due = trio.current_time()
        while True:
            if waiting and trio.current_time() >= due:
                await self._send_cut(waiting, skipped)
                waiting = []
                skipped = 0
                due = trio.current_time() + self.interval
            # A memory channel's receive loses nothing when cancelled: the deadline only
            # ends the wait for more.
            with trio.move_on_at(due if waiting else math.inf):
                try:
                    item = await batches.receive()
                except trio.EndOfChannel:
                    break
                if isinstance(item, EnvelopeSample):
                    skipped += item.skipped  # (older than anything it kept)
                    item = item.envelopes
                waiting.extend(item)
                if keep is not None and len(waiting) > 4 * keep:
                    # Cut what waits now (a sample of a sample is the sample of the whole):
                    # it stays a few times keep, however much comes within an interval.
                    found = EnvelopeSample.of(waiting, keep)
                    waiting, skipped = found.envelopes, skipped + found.skipped
        if waiting:
            await self._send_cut(waiting, skipped)

    async def _send_cut(self, waiting: list[EntityEnvelope], skipped: int) -> None:
        """Send what waits, cut to ``keep`` if set (``skipped`` were left out before it)."""
        keep = self.keep
        found = EnvelopeSample(waiting) if keep is None else EnvelopeSample.of(waiting, keep)
        await self._send(found.envelopes, skipped + found.skipped)

    async def _send(self, batch: list[EntityEnvelope], skipped: int) -> None:
        if not batch:
            return
        encode = self.encode
        await self.emit([encode(envelope) for envelope in batch], skipped)
        self.last = batch[-1].seq
