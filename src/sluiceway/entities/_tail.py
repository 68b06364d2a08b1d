"""The shared tail of a followed subtree: its latest envelopes, read once from the store for
every stream following it, and what a stream takes of them (all, or a sample)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import ClassVar

import attrs
import trio

from ..store import EntityStatus, EntityStore, EnvelopeRow
from ._envelope import EntityEnvelope

#: Envelopes read from the store per query while streaming.
PAGE = 500
#: The latest envelopes of a followed subtree kept in memory for its streams.
WINDOW = 4096
#: Envelopes the shared tail reads per query: more than a page, as it keeps them as rows
#: (decoded when taken), and a paced beat may find thousands.
TAIL_PAGE = WINDOW // 2
#: Envelope types a sample keeps even when they are not among the newest: errors, the
#: prompts of waits and the messages answering them (what a person watching must not miss).
NOTABLE_TYPES = frozenset({"ERROR", "WAITING", "MESSAGE"})

_ENDED = (EntityStatus.COMPLETED, EntityStatus.FAILED, EntityStatus.CANCELLED)


@attrs.frozen
class EnvelopeSample:
    """Part of a stream's envelopes (:meth:`~sluiceway.Runtime.stream_samples`): the newest
    of what came since the previous sample, plus the newest of the older notable ones
    (``ERROR``, ``WAITING``, ``MESSAGE``), in ``seq`` order; ``skipped`` counts the others.

    Attributes:
        envelopes: the envelopes kept, in ``seq`` order; the last is the newest that came.
        skipped: how many envelopes since the previous sample are not in ``envelopes``.
    """

    envelopes: list[EntityEnvelope]
    skipped: int = 0

    #: The envelope types a sample keeps even when they are not among the newest.
    NOTABLE_TYPES: ClassVar[frozenset[str]] = NOTABLE_TYPES

    @classmethod
    def of(cls, envelopes: list[EntityEnvelope], keep: int) -> EnvelopeSample:
        """The sample of ``envelopes`` (in ``seq`` order) that keeps ``keep``."""
        return sample(envelopes, keep)


def sample(envelopes: list[EntityEnvelope], keep: int) -> EnvelopeSample:
    """The newest ``keep`` of ``envelopes`` (in ``seq`` order), plus the newest ``keep`` of
    the older notable ones."""
    if len(envelopes) <= keep:
        return EnvelopeSample(envelopes)
    older = [e for e in envelopes[:-keep] if e.type in NOTABLE_TYPES][-keep:]
    kept = older + envelopes[-keep:]
    return EnvelopeSample(kept, len(envelopes) - len(kept))


class Tail:
    """The latest envelopes of one entity's subtree, read once for all its streams.

    Every envelope of the subtree with a seq in ``(base, last]`` is in ``window``, in
    ``seq`` order (older ones drop out of it and move ``base``), with its seq at the same
    index of ``seqs``; the last ``size`` notable ones (in the window or older) are in
    ``notable``: a stream finds what it has not seen by bisection, and a sample of thousands
    costs no more than its few kept envelopes. The window holds the rows as read, their
    bodies decoded when a stream first takes them (the notable ones at once): what every
    stream only samples is never decoded.
    ``ended`` says whether the entity's run had ended when ``last`` was read. A stream
    behind ``base`` replays from the store, then joins the window.
    """

    def __init__(
        self, entity_id: str, *, base: int, size: int | None = None, subtree: bool = True
    ) -> None:
        self.entity_id = entity_id
        self.subtree = subtree  # the whole subtree, or the entity's own envelopes
        self.base = base
        self.last = base
        self.window: list[EntityEnvelope | EnvelopeRow] = []
        self.seqs: list[int] = []
        self.notable: list[EntityEnvelope] = []
        self.notable_seqs: list[int] = []
        self.size = WINDOW if size is None else size
        self.dropped = 0  # envelopes that left the window since this tail began
        self.ended = False
        self.version = 0  # advanced this many times
        self.read_began = -math.inf  # when the last read began (trio's clock)
        # The runtime's wake-up event as it was when the last read began: anything stored
        # since sets it.
        self.changes = trio.Event()
        self.users = 0
        self.lock = trio.Lock()

    def after(self, position: int) -> list[EntityEnvelope]:
        """The envelopes of the window with a seq above ``position``."""
        return self._decoded(bisect.bisect_right(self.seqs, position))

    def sample_after(self, position: int, keep: int) -> EnvelopeSample:
        """:func:`sample` of :meth:`after`, without going through what it skips."""
        start = bisect.bisect_right(self.seqs, position)
        count = len(self.window) - start
        if count <= keep:
            return EnvelopeSample(self._decoded(start))
        newest = self._decoded(len(self.window) - keep)
        first = bisect.bisect_right(self.notable_seqs, position)
        end = bisect.bisect_left(self.notable_seqs, newest[0].seq, lo=first)
        older = self.notable[max(first, end - keep) : end]
        return EnvelopeSample(older + newest, count - len(older) - keep)

    def taken(self) -> int:
        """How many envelopes this tail has read since it began: a sampled stream that took
        everything up to ``last`` keeps it, to count what it missed if the window leaves it
        behind (:meth:`sample_since`)."""
        return self.dropped + len(self.window)

    def sample_since(self, taken: int, position: int, keep: int) -> EnvelopeSample:
        """:meth:`sample_after` for a stream that has passed the first ``taken`` envelopes
        this tail read (up to the seq ``position``): if the window has dropped some it had
        not passed, they are counted as skipped, and the notable ones among them are still
        kept (the notable envelopes are kept longer than the window: the last ``size``). A
        sampled stream never goes back to the store for what it would skip anyway. With
        ``keep`` at most half the window's size, the sample is exact."""
        missed = max(0, self.dropped - taken)
        found = self.sample_after(position, keep)
        return EnvelopeSample(found.envelopes, found.skipped + missed) if missed else found

    async def advance(
        self, store: EntityStore, version: int, changes: Callable[[], trio.Event]
    ) -> None:
        """Read what was stored since ``last`` (unless another stream did it since
        ``version``). ``changes()`` is the runtime's wake-up event of now: it is taken before
        the read begins, so that a change the read misses sets it."""
        async with self.lock:
            if self.version == version:
                await self._read(store, changes)

    async def advance_since(
        self, store: EntityStore, since: float, changes: Callable[[], trio.Event]
    ) -> None:
        """:meth:`advance`, unless a read began at ``since`` or later: the paced streams of
        a beat read once for all of them (and wait for that read, if it is under way)."""
        async with self.lock:
            if self.read_began < since:
                await self._read(store, changes)

    async def _read(self, store: EntityStore, changes: Callable[[], trio.Event]) -> None:
        """Read what was stored since ``last``; the caller holds the lock."""
        self.read_began = trio.current_time()
        event = changes()
        ended = None
        while True:
            # One read: the entity first (if its run had ended then, its last envelopes
            # are in this read), then the highest seq, then the envelopes.
            read = await store.read_tail(
                self.entity_id, after_seq=self.last, limit=TAIL_PAGE, subtree=self.subtree
            )
            if ended is None:
                ended = read.record.status in _ENDED
            page = read.envelopes
            self._append(page)
            if page:
                self.last = page[-1].seq
            if len(page) < TAIL_PAGE:
                self.last = max(self.last, read.highest)  # (the page may go beyond it)
                break
        self._trim()
        self.ended = ended
        self.changes = event
        self.version += 1

    def _decoded(self, start: int) -> list[EntityEnvelope]:
        """The window from ``start`` on, decoded (in place: once for every stream)."""
        window = self.window
        for index in range(start, len(window)):
            item = window[index]
            if isinstance(item, EnvelopeRow):
                window[index] = EntityEnvelope.from_stored(item.stored())
        return window[start:]  # type: ignore[return-value]  # all decoded just above

    def _append(self, page: list[EnvelopeRow]) -> None:
        window, seqs = self.window, self.seqs
        for row in page:
            seqs.append(row.seq)
            if row.envelope_type() in NOTABLE_TYPES:
                envelope = EntityEnvelope.from_stored(row.stored())
                window.append(envelope)
                self.notable.append(envelope)
                self.notable_seqs.append(envelope.seq)
            else:
                window.append(row)

    def _trim(self) -> None:
        """Drop what is beyond the window's size (once per read, not per envelope)."""
        excess = len(self.window) - self.size
        if excess <= 0:
            return
        self.base = self.seqs[excess - 1]
        self.dropped += excess
        del self.window[:excess], self.seqs[:excess]
        gone = len(self.notable) - self.size  # the last size notable ones, in or before it
        if gone > 0:
            del self.notable[:gone], self.notable_seqs[:gone]
