"""PrioritySource: highest effective priority first, with capped aging and FIFO among equals."""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Generic, TypeVar

import trio

from .._util import NOTHING, Nothing, type_name
from ._base import PeekableSource

T = TypeVar("T")


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number, got {value!r} ({type_name(value)})")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return float(value)


def _clock() -> float | None:
    try:
        return trio.current_time()
    except RuntimeError:
        return None


class _Entry(Generic[T]):
    __slots__ = ("base", "cap_at", "capped", "item", "key", "live", "seq")

    def __init__(self, item: T, base: float, key: float, cap_at: float, seq: int) -> None:
        self.item = item
        self.base = base
        self.key = key  # base - rate * enqueued_at: orders uncapped entries at any time
        self.cap_at = cap_at  # when the age boost reaches its cap
        self.seq = seq
        self.capped = False
        self.live = True


class PrioritySource(PeekableSource[T]):
    """Serve the item with the highest *effective* priority; ties go to the earliest enqueued.

    ``effective = priority + min(aging_rate * age, max_age_boost)``, with ``age`` in seconds since
    the item was enqueued (trio's clock). The original took its rate per millisecond: its
    ``agingRate: 0.005`` is ``aging_rate=5.0`` here.

    Because every uncapped item ages at the same rate, their order never changes, and an item's
    boost is capped at a time fixed at enqueue; two heaps and a FIFO of cap times therefore give
    ``O(log n)`` peeks and takes instead of a rescan. ``take()`` returns exactly the item the last
    ``peek()`` returned, even though priorities move with time.

    The source waits for more items when empty until :meth:`close_input` is called.
    """

    def __init__(self, *, aging_rate: float = 0.0, max_age_boost: float = math.inf) -> None:
        super().__init__()
        if isinstance(aging_rate, bool) or not isinstance(aging_rate, int | float):
            raise TypeError(f"aging_rate must be a number, got {aging_rate!r}")
        if not aging_rate >= 0 or aging_rate == math.inf:
            raise ValueError(f"aging_rate must be finite and >= 0, got {aging_rate}")
        if isinstance(max_age_boost, bool) or not isinstance(max_age_boost, int | float):
            raise TypeError(f"max_age_boost must be a number, got {max_age_boost!r}")
        if not max_age_boost >= 0:
            raise ValueError(f"max_age_boost must be >= 0, got {max_age_boost}")
        self.aging_rate = float(aging_rate)
        self.max_age_boost = float(max_age_boost)
        self._uncapped: list[tuple[float, int, _Entry[T]]] = []  # (-key, seq, entry)
        self._capped: list[tuple[float, int, _Entry[T]]] = []  # (-(base + cap), seq, entry)
        self._cap_order: deque[_Entry[T]] = deque()  # entries in enqueue order = cap-time order
        self._count = 0
        self._seq = 0
        self._input_closed = False
        self._peeked: _Entry[T] | None = None
        self._early: list[tuple[T, float, int]] = []  # enqueued before a trio run started

    def __len__(self) -> int:
        return self._count

    @property
    def closed(self) -> bool:
        """Whether :meth:`close_input` was called."""
        return self._input_closed

    def effective_priority(self, priority: float, age: float) -> float:
        """``priority + min(aging_rate * age, max_age_boost)``."""
        return priority + min(self.aging_rate * age, self.max_age_boost)

    def enqueue(self, item: T, priority: float = 0.0) -> None:
        """Add ``item`` with a base ``priority`` (higher is served first).

        Raises:
            trio.ClosedResourceError: after :meth:`close_input`.
        """
        base = _finite(priority, "priority")
        if self._input_closed or self._receive_closed:
            raise trio.ClosedResourceError("this PrioritySource accepts no more items")
        self._enqueue_at(item, base, _clock())
        self._notify()

    def _enqueue_at(self, item: T, base: float, now: float | None) -> None:
        """Queue ``item`` as if enqueued at time ``now`` (it ages from then); no notification.

        ``now`` is ``None`` outside a trio run: such items age from the first time the source
        is used inside one.
        """
        self._seq += 1
        if now is None:
            self._early.append((item, base, self._seq))  # keeps its place among equals
            self._count += 1
            return
        self._insert(item, base, now, self._seq)

    def _insert(self, item: T, base: float, now: float, seq: int) -> None:
        rate = self.aging_rate
        if rate and self.max_age_boost < math.inf:
            cap_at = now + self.max_age_boost / rate
        else:
            cap_at = math.inf
        entry = _Entry(item, base, base - rate * now, cap_at, seq)
        heapq.heappush(self._uncapped, (-entry.key, entry.seq, entry))
        if cap_at < math.inf:
            self._cap_order.append(entry)
        self._count += 1
        self._peeked = None

    def close_input(self) -> None:
        """No more items: the source is exhausted once drained."""
        if not self._input_closed:
            self._input_closed = True
            self._notify()

    def _advance(self, now: float) -> None:
        """Move entries whose boost has reached its cap to the capped heap."""
        order = self._cap_order
        while order and (order[0].cap_at <= now or not order[0].live):
            entry = order.popleft()
            if entry.live:
                entry.capped = True
                heapq.heappush(self._capped, (-(entry.base + self.max_age_boost), entry.seq, entry))

    def _best(self) -> _Entry[T] | None:
        now = trio.current_time()
        if self._early:
            early, self._early = self._early, []
            self._count -= len(early)  # _insert counts them again
            for item, base, seq in early:
                self._insert(item, base, now, seq)
        self._advance(now)
        uncapped, capped = self._uncapped, self._capped
        while uncapped and (not uncapped[0][2].live or uncapped[0][2].capped):
            heapq.heappop(uncapped)
        while capped and not capped[0][2].live:
            heapq.heappop(capped)
        if not uncapped:
            return capped[0][2] if capped else None
        first = uncapped[0][2]
        if not capped:
            return first
        other = capped[0][2]
        first_value = first.key + self.aging_rate * now
        other_value = other.base + self.max_age_boost
        if other_value > first_value or (other_value == first_value and other.seq < first.seq):
            return other
        return first

    def peek_priority(self) -> float | None:
        """The effective priority of the item :meth:`peek` would return, or ``None``."""
        entry = self._best()
        if entry is None:
            return None
        if entry.capped:
            return entry.base + self.max_age_boost
        return entry.key + self.aging_rate * trio.current_time()

    def _peek(self) -> T | Nothing:
        entry = self._best()
        self._peeked = entry
        return NOTHING if entry is None else entry.item

    def _take(self) -> T:
        entry = self._peeked if self._peeked is not None and self._peeked.live else self._best()
        assert entry is not None
        entry.live = False
        self._peeked = None
        self._count -= 1
        return entry.item

    def _is_exhausted(self) -> bool:
        return self._input_closed and self._count == 0

    def _on_receive_closed(self) -> None:
        self._early.clear()
        self._uncapped.clear()
        self._capped.clear()
        self._cap_order.clear()
        self._count = 0
