"""Streams of envelopes: a subtree's stored envelopes replayed from a cursor, then followed
live, with one shared reader per followed subtree."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import trio

from .._util import open_owned_nursery
from ..store import EntityStatus, EntityStore
from ._envelope import EntityEnvelope

#: Envelopes read from the store per query while streaming.
_PAGE = 500
#: The latest envelopes of a followed subtree kept in memory for its streams.
_WINDOW = 4096


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
        # One shared reader per followed subtree (see _Tail).
        self._tails: dict[tuple[str, bool], _Tail] = {}

    async def envelopes(
        self, entity_id: str, *, after_seq: int = 0, subtree: bool = True
    ) -> list[EntityEnvelope]:
        """The stored envelopes of the entity (and its descendants, with ``subtree``) after
        ``after_seq``, in order."""
        out: list[EntityEnvelope] = []
        while True:
            page = await self._store.read_envelopes(
                entity_id, after_seq=after_seq, limit=_PAGE, subtree=subtree
            )
            out.extend(EntityEnvelope.from_stored(stored) for stored in page)
            if len(page) < _PAGE:
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
        await self._store.get_entity(entity_id)
        if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
            raise ValueError(f"after_seq must be an int >= 0, got {after_seq!r}")
        send, receive = trio.open_memory_channel[EntityEnvelope](buffer)

        async def deliver(batch: list[EntityEnvelope]) -> None:
            for envelope in batch:
                await send.send(envelope)

        async with open_owned_nursery() as nursery:
            nursery.start_soon(
                self._pump, entity_id, after_seq, send, deliver, name=f"stream {entity_id}"
            )
            with receive:
                try:
                    yield receive
                finally:
                    nursery.cancel_scope.cancel()

    @contextlib.asynccontextmanager
    async def stream_batches(
        self, entity_id: str, *, after_seq: int = 0, buffer: int = 16, subtree: bool = True
    ) -> AsyncIterator[trio.MemoryReceiveChannel[list[EntityEnvelope]]]:
        """:meth:`stream`, the envelopes in lists: each list holds what was ready together
        (a page replayed from the store, what a step of the run stored), in ``seq`` order. A
        server sending to many subscribers takes them this way: fewer hand-overs, larger
        frames. At most ``buffer`` lists wait for a slow reader. With ``subtree=False``, the
        entity's own envelopes only (read as such from the store: a run of many children
        costs no more to follow than a run of none).

        Raises:
            EntityNotFoundError: at once, for an unknown id.
        """
        await self._store.get_entity(entity_id)
        if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
            raise ValueError(f"after_seq must be an int >= 0, got {after_seq!r}")
        send, receive = trio.open_memory_channel[list[EntityEnvelope]](buffer)

        async def deliver(batch: list[EntityEnvelope]) -> None:
            if batch:
                await send.send(batch)

        async with open_owned_nursery() as nursery:
            nursery.start_soon(
                partial(self._pump, entity_id, after_seq, send, deliver, subtree=subtree),
                name=f"stream {entity_id}",
            )
            with receive:
                try:
                    yield receive
                finally:
                    nursery.cancel_scope.cancel()

    async def _pump(
        self,
        entity_id: str,
        after_seq: int,
        send: trio.MemorySendChannel[Any],
        deliver: Callable[[list[EntityEnvelope]], Awaitable[None]],
        *,
        subtree: bool = True,
    ) -> None:
        key = (entity_id, subtree)
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tails[key] = _Tail(
                entity_id, base=await self._store.last_seq(), subtree=subtree
            )
        tail.users += 1
        try:
            with send:
                await self._follow(tail, after_seq, deliver)
        finally:
            tail.users -= 1
            if not tail.users and self._tails.get(key) is tail:
                del self._tails[key]

    async def _follow(
        self,
        tail: _Tail,
        after_seq: int,
        deliver: Callable[[list[EntityEnvelope]], Awaitable[None]],
    ) -> None:
        """Deliver the entity's subtree after ``after_seq``: from the store while behind the
        shared tail's window, from the window after that, ending once the run has ended and
        everything before its end was delivered."""
        position = after_seq  # every envelope of the subtree up to here was delivered
        while True:
            if position < tail.base:
                # Behind the window: replay from the store. Everything up to the highest seq
                # stored before the read is in it, if the page is not full.
                highest = await self._store.last_seq()
                page = await self._store.read_envelopes(
                    tail.entity_id, after_seq=position, limit=_PAGE, subtree=tail.subtree
                )
                await deliver([EntityEnvelope.from_stored(stored) for stored in page])
                if page:
                    position = page[-1].seq
                if len(page) < _PAGE:
                    position = max(position, highest)  # (the page may go beyond it)
                continue
            if not tail.version:  # nobody has read the tail yet
                await tail.advance(self._store, 0, self._current_changes)
                continue
            # Take the window's content, its end, its version and the wake-up event of its
            # last read together, before delivering (which waits for the reader): whatever is
            # stored since that read began sets this event, or moves this version, so the wait
            # below returns at once instead of missing it until the next change or poll.
            changes, version = tail.changes, tail.version
            ended, last, envelopes = tail.ended, tail.last, tail.after(position)
            await deliver(envelopes)
            position = max(position, last)
            if ended and not self._is_running(tail.entity_id):
                return
            if tail.version == version:  # else another stream read more meanwhile: take it
                with trio.move_on_after(self._poll_interval):
                    await changes.wait()
            await tail.advance(self._store, version, self._current_changes)

    def _current_changes(self) -> trio.Event:
        return self.changes

    def changed(self) -> None:
        """Wake the streams of this runtime (and whoever waits for a change): something was
        stored."""
        self.changes.set()
        self.changes = trio.Event()


class _Tail:
    """The latest envelopes of one entity's subtree, read once for all its streams.

    Every envelope of the subtree with a seq in ``(base, last]`` is in ``window`` (older ones
    drop out of it and move ``base``); ``ended`` says whether the entity's run had ended when
    ``last`` was read. A stream behind ``base`` replays from the store, then joins the window.
    """

    def __init__(
        self, entity_id: str, *, base: int, size: int | None = None, subtree: bool = True
    ) -> None:
        self.entity_id = entity_id
        self.subtree = subtree  # the whole subtree, or the entity's own envelopes
        self.base = base
        self.last = base
        self.window: deque[EntityEnvelope] = deque()
        self.size = _WINDOW if size is None else size
        self.ended = False
        self.version = 0  # advanced this many times
        # The runtime's wake-up event as it was when the last read began: anything stored
        # since sets it.
        self.changes = trio.Event()
        self.users = 0
        self.lock = trio.Lock()

    def after(self, position: int) -> list[EntityEnvelope]:
        """The envelopes of the window with a seq above ``position``: looked for from the
        newest, since a following stream is usually a step behind (not the whole window)."""
        window = self.window
        if not window or window[-1].seq <= position:
            return []
        if window[0].seq > position:
            return list(window)
        newer = []
        for envelope in reversed(window):
            if envelope.seq <= position:
                break
            newer.append(envelope)
        newer.reverse()
        return newer

    async def advance(
        self, store: EntityStore, version: int, changes: Callable[[], trio.Event]
    ) -> None:
        """Read what was stored since ``last`` (unless another stream did it since
        ``version``). ``changes()`` is the runtime's wake-up event of now: it is taken before
        the read begins, so that a change the read misses sets it."""
        async with self.lock:
            if self.version != version:
                return
            event = changes()
            # The entity first: if its run had ended then, its last envelopes are in the read.
            record = await store.get_entity(self.entity_id)
            while True:
                highest = await store.last_seq()
                page = await store.read_envelopes(
                    self.entity_id, after_seq=self.last, limit=_PAGE, subtree=self.subtree
                )
                for stored in page:
                    self.window.append(EntityEnvelope.from_stored(stored))
                if page:
                    self.last = page[-1].seq
                if len(page) < _PAGE:
                    self.last = max(self.last, highest)  # (the page may go beyond it)
                    break
            while len(self.window) > self.size:
                self.base = self.window.popleft().seq
            self.ended = record.status in (
                EntityStatus.COMPLETED,
                EntityStatus.FAILED,
                EntityStatus.CANCELLED,
            )
            self.changes = event
            self.version += 1
