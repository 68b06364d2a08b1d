"""Streams of envelopes: a subtree's stored envelopes replayed from a cursor, then followed
live, with one shared reader per followed subtree."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import trio

from .._util import open_owned_nursery
from ..store import EntityStore
from . import _tail as tail_module
from ._envelope import EntityEnvelope
from ._tail import PAGE, EnvelopeSample, Tail, sample

T = TypeVar("T")

#: Hands what a stream found to its reader (see ``StreamHub._follow``).
Deliver = Callable[[EnvelopeSample], Awaitable[None]]


class StreamHub:
    """The streams of one runtime: the shared tails of the subtrees followed, and the event
    that wakes them when the runtime stores something (:meth:`changed`); envelopes stored by
    other processes are picked up every ``poll_interval``. :class:`~sluiceway.Runtime`
    documents the public methods."""

    def __init__(
        self, store: EntityStore, *, poll_interval: float, is_running: Callable[[str], bool]
    ) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._is_running = is_running
        self.changes = trio.Event()
        # One shared reader per followed subtree (see Tail).
        self._tails: dict[tuple[str, bool], Tail] = {}

    async def envelopes(
        self, entity_id: str, *, after_seq: int = 0, subtree: bool = True
    ) -> list[EntityEnvelope]:
        """The stored envelopes of the entity (and its descendants, with ``subtree``) after
        ``after_seq``, in order."""
        out: list[EntityEnvelope] = []
        while True:
            page = await self._store.read_envelopes(
                entity_id, after_seq=after_seq, limit=PAGE, subtree=subtree
            )
            out.extend(EntityEnvelope.from_stored(stored) for stored in page)
            if len(page) < PAGE:
                return out
            after_seq = page[-1].seq

    @contextlib.asynccontextmanager
    async def stream(
        self, entity_id: str, *, after_seq: int = 0, buffer: int = 256
    ) -> AsyncIterator[trio.MemoryReceiveChannel[EntityEnvelope]]:
        """Follow the envelopes of an entity's subtree: ``async with runtime.stream(id) as
        envelopes: async for envelope in envelopes``.

        It replays the stored envelopes after ``after_seq``, in ``seq`` order, then follows
        new ones as they are stored, and ends after the entity's run has ended (its
        COMPLETED, FAILED or CANCELLED status envelope) and everything before it was
        delivered. A subscriber that reconnects with the ``seq`` of the last envelope it got
        misses nothing and sees nothing twice. Envelopes stored by another process sharing
        the store are picked up within ``poll_interval``. At most ``buffer`` envelopes wait
        for a slow reader; the reading from the store waits meanwhile.

        Raises:
            EntityNotFoundError: at once, for an unknown id.
        """
        send, receive = trio.open_memory_channel[EntityEnvelope](buffer)

        async def deliver(found: EnvelopeSample) -> None:
            for envelope in found.envelopes:
                await send.send(envelope)

        async with self._streaming(entity_id, after_seq, send, deliver):
            with receive:
                yield receive

    @contextlib.asynccontextmanager
    async def stream_batches(
        self,
        entity_id: str,
        *,
        after_seq: int = 0,
        buffer: int = 16,
        subtree: bool = True,
        pace: float = 0.0,
    ) -> AsyncIterator[trio.MemoryReceiveChannel[list[EntityEnvelope]]]:
        """:meth:`stream`, the envelopes in lists: each list holds what was ready together
        (a page replayed from the store, what a step of the run stored), in ``seq`` order. A
        server sending to many subscribers takes them this way: fewer hand-overs, larger
        frames. At most ``buffer`` lists wait for a slow reader. With ``subtree=False``, the
        entity's own envelopes only (read as such from the store: a run of many children
        costs no more to follow than a run of none). With ``pace`` (seconds), a list of what
        was stored meanwhile comes at most that often once the stream has caught up: a
        reader that samples a busy run is woken a few times a second rather than at every
        step of it.

        Raises:
            EntityNotFoundError: at once, for an unknown id.
        """
        send, receive = trio.open_memory_channel[list[EntityEnvelope]](buffer)

        async def deliver(found: EnvelopeSample) -> None:
            if found.envelopes:
                await send.send(found.envelopes)

        async with (
            self._streaming(entity_id, after_seq, send, deliver, subtree=subtree, pace=pace),
            receive,
        ):
            yield receive

    @contextlib.asynccontextmanager
    async def stream_samples(
        self,
        entity_id: str,
        *,
        keep: int,
        after_seq: int = 0,
        buffer: int = 16,
        subtree: bool = True,
        pace: float = 0.0,
    ) -> AsyncIterator[trio.MemoryReceiveChannel[EnvelopeSample]]:
        """:meth:`stream_batches`, sampled: each :class:`EnvelopeSample` holds the newest
        ``keep`` of what came since the previous one (plus the newest ``keep`` of the older
        ``ERROR``, ``WAITING`` and ``MESSAGE`` envelopes) and counts the others in its
        ``skipped``. What it passes over is not even looked at: a page showing a run of
        thousands of children costs the runtime its few kept envelopes, not the run's.

        Raises:
            EntityNotFoundError: at once, for an unknown id.
        """
        most = tail_module.WINDOW // 2
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= most:
            raise ValueError(f"keep must be an int from 1 to {most}, got {keep!r}")
        send, receive = trio.open_memory_channel[EnvelopeSample](buffer)

        async def deliver(found: EnvelopeSample) -> None:
            if found.envelopes:
                await send.send(found)

        async with (
            self._streaming(
                entity_id, after_seq, send, deliver, subtree=subtree, pace=pace, keep=keep
            ),
            receive,
        ):
            yield receive

    @contextlib.asynccontextmanager
    async def _streaming(
        self,
        entity_id: str,
        after_seq: int,
        send: trio.MemorySendChannel[T],
        deliver: Deliver,
        *,
        subtree: bool = True,
        pace: float = 0.0,
        keep: int | None = None,
    ) -> AsyncIterator[None]:
        """Run the stream's pump in a nursery of its own while the caller reads; closing the
        stream stops it."""
        await self._store.get_entity(entity_id)
        if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
            raise ValueError(f"after_seq must be an int >= 0, got {after_seq!r}")
        if not 0 <= pace < math.inf:
            raise ValueError(f"pace must be a number of seconds >= 0, got {pace!r}")
        async with open_owned_nursery() as nursery:
            nursery.start_soon(
                partial(
                    self._pump,
                    entity_id,
                    after_seq,
                    send,
                    deliver,
                    subtree=subtree,
                    pace=pace,
                    keep=keep,
                ),
                name=f"stream {entity_id}",
            )
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    async def _pump(
        self,
        entity_id: str,
        after_seq: int,
        send: trio.MemorySendChannel[Any],
        deliver: Deliver,
        *,
        subtree: bool,
        pace: float,
        keep: int | None,
    ) -> None:
        key = (entity_id, subtree)
        tail = self._tails.get(key)
        if tail is None:
            base = await self._store.last_seq()
            tail = self._tails.get(key)  # another stream may have begun it meanwhile
            if tail is None:
                tail = self._tails[key] = Tail(entity_id, base=base, subtree=subtree)
        tail.users += 1
        try:
            with send:
                await self._follow(tail, after_seq, deliver, pace, keep)
        finally:
            tail.users -= 1
            if not tail.users and self._tails.get(key) is tail:
                del self._tails[key]

    async def _follow(
        self, tail: Tail, after_seq: int, deliver: Deliver, pace: float, keep: int | None
    ) -> None:
        """Deliver the entity's subtree after ``after_seq`` (all of it, or samples of
        ``keep``): from the store while behind the shared tail's window, from the window
        after that, ending once the run has ended and everything before its end was
        delivered; from the window, at most every ``pace`` seconds."""
        position = after_seq  # every envelope of the subtree up to here was delivered
        delivered_at = -math.inf  # when the last list was delivered
        took_at = -math.inf  # when it last took from the window
        # A sampled stream, once it has taken from the window: how many of the tail's
        # envelopes it has passed. Left behind by the window, it counts what it missed as
        # skipped instead of replaying from the store what it would mostly skip.
        taken: int | None = None
        at_beat = False  # a paced stream has read the tail at its beat: it takes it now
        while True:
            if position < tail.base and taken is None:
                # Behind the window: replay from the store. Everything up to the highest seq
                # stored before the read is in it, if the page is not full.
                highest = await self._store.last_seq()
                page = await self._store.read_envelopes(
                    tail.entity_id, after_seq=position, limit=PAGE, subtree=tail.subtree
                )
                envelopes = [EntityEnvelope.from_stored(stored) for stored in page]
                await deliver(
                    EnvelopeSample(envelopes) if keep is None else sample(envelopes, keep)
                )
                if page:
                    position = page[-1].seq
                    delivered_at = took_at = trio.current_time()
                if len(page) < PAGE:
                    position = max(position, highest)  # (the page may go beyond it)
                continue
            if not tail.version:  # nobody has read the tail yet
                await tail.advance(self._store, 0, self._current_changes)
                continue
            over = tail.ended and not self._is_running(tail.entity_id)
            if pace and delivered_at > -math.inf and not at_beat and not over:
                # At most one list per pace: what is stored meanwhile is read at the beat
                # (once for every stream of it) and joins it. (A stream the window leaves
                # behind replays from the store, as any other.) The streams of one pace take
                # theirs on the same beat (multiples of the pace on trio's clock): they take
                # the same envelopes, which a server then encodes once for all of them.
                # (The beat after the last take, not the last delivery: a take that found
                # nothing waits for the next beat too, rather than reading again at once.)
                # Once the run is over, what is left comes at once, and the stream ends.
                beat = math.ceil((took_at + pace) / pace) * pace
                if trio.current_time() < beat:
                    await trio.sleep_until(beat)
                await tail.advance_since(self._store, beat, self._current_changes)
                at_beat = True
                continue  # the window may have left this stream behind meanwhile
            at_beat = False
            # Take the window's content, its end, its version and the wake-up event of its
            # last read together, before delivering (which waits for the reader): whatever is
            # stored since that read began sets this event, or moves this version, so the wait
            # below returns at once instead of missing it until the next change or poll.
            changes, version = tail.changes, tail.version
            took_at = trio.current_time()
            ended, last = tail.ended, tail.last
            if keep is None:
                found = EnvelopeSample(tail.after(position))
            elif taken is None:
                found = tail.sample_after(position, keep)
            else:
                found = tail.sample_since(taken, position, keep)
            if keep is not None:
                taken = tail.taken()
            await deliver(found)
            if found.envelopes:
                delivered_at = trio.current_time()
            position = max(position, last)
            if ended and not self._is_running(tail.entity_id):
                return
            if tail.version == version:  # else another stream read more meanwhile: take it
                with trio.move_on_after(self._poll_interval):
                    await changes.wait()
            if not (pace and delivered_at > -math.inf):  # (a paced one reads at its beat)
                await tail.advance(self._store, version, self._current_changes)

    def _current_changes(self) -> trio.Event:
        return self.changes

    def changed(self) -> None:
        """Wake the streams of this runtime (and whoever waits for a change): something was
        stored."""
        self.changes.set()
        self.changes = trio.Event()
