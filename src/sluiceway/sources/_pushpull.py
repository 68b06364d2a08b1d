"""PushPullBuffer: a memory-channel pair with look-ahead, error forwarding and a bound policy."""

from __future__ import annotations

import enum
import math
from collections import deque
from typing import Generic, TypeVar

import attrs
import trio

from .._util import NOTHING, Nothing, type_name, wait_until_ready
from ._base import PeekableSource

T = TypeVar("T")


class OverflowPolicy(enum.Enum):
    """What a bounded :class:`PushPullBuffer` does with an item sent while it is full."""

    #: The sender waits for room (``send_nowait`` raises ``trio.WouldBlock``).
    BLOCK = "block"
    #: The oldest buffered item is dropped to make room.
    DROP_OLDEST = "drop_oldest"
    #: The new item is dropped.
    DROP_NEWEST = "drop_newest"


@attrs.frozen
class PushPullStatistics:
    """A snapshot of a :class:`PushPullBuffer`."""

    buffered: int
    max_size: int | float
    dropped: int
    sent: int
    received: int
    open_sinks: int
    open_sources: int
    tasks_waiting_send: int


class _State(Generic[T]):
    __slots__ = (
        "buffer",
        "dropped",
        "failure",
        "max_size",
        "open_sinks",
        "open_sources",
        "overflow",
        "received",
        "senders",
        "sent",
        "sources",
    )

    def __init__(self, max_size: int | float, overflow: OverflowPolicy) -> None:
        self.buffer: deque[T] = deque()
        self.max_size = max_size
        self.overflow = overflow
        self.failure: BaseException | None = None
        self.open_sinks = 0
        self.open_sources = 0
        self.senders = trio.lowlevel.ParkingLot()
        self.sources: list[PushPullSource[T]] = []
        self.dropped = 0
        self.sent = 0
        self.received = 0

    @property
    def ended(self) -> bool:
        return self.open_sinks == 0 or self.failure is not None

    def notify_sources(self) -> None:
        for source in tuple(self.sources):
            source._notify()


class PushPullSink(trio.abc.SendChannel[T], Generic[T]):
    """The push side of a :class:`PushPullBuffer`: a trio ``SendChannel``.

    Closing every clone of the sink ends the stream once the buffered items are consumed.
    :meth:`throw` ends it with an error, which the consumer receives after the items sent before.
    """

    def __init__(self, state: _State[T]) -> None:
        self._state = state
        self._closed = False
        state.open_sinks += 1

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this sink was closed")
        state = self._state
        if state.failure is not None:
            raise trio.BrokenResourceError("the stream was ended by throw()")
        if state.open_sources == 0:
            raise trio.BrokenResourceError("every source of this PushPullBuffer was closed")

    def send_nowait(self, value: T) -> None:
        """Send ``value`` without blocking.

        Raises:
            trio.WouldBlock: the buffer is full and the policy is ``BLOCK``.
            trio.BrokenResourceError: every source was closed, or the stream was thrown into.
            trio.ClosedResourceError: this sink was closed.
        """
        self._check_open()
        state = self._state
        buffer = state.buffer
        if len(buffer) >= state.max_size:
            if state.overflow is OverflowPolicy.BLOCK:
                raise trio.WouldBlock
            state.dropped += 1
            if state.overflow is OverflowPolicy.DROP_NEWEST:
                return
            buffer.popleft()
        buffer.append(value)
        state.sent += 1
        state.notify_sources()

    async def send(self, value: T) -> None:
        """Send ``value``, waiting for room while a ``BLOCK`` buffer is full."""
        await wait_until_ready(lambda: self.send_nowait(value), self._state.senders.park)

    def throw(self, error: BaseException) -> None:
        """End the stream with ``error``: the consumer gets every item sent before, then
        ``error`` is raised from its ``receive``. Closes this sink."""
        if not isinstance(error, BaseException):
            raise TypeError(f"throw() needs an exception, got {error!r} ({type_name(error)})")
        if self._closed:
            raise trio.ClosedResourceError("this sink was closed")
        state = self._state
        if state.failure is None:
            state.failure = error
        self.close()
        state.notify_sources()
        state.senders.unpark_all()

    def clone(self) -> PushPullSink[T]:
        """Another sink on the same stream; the stream ends when every clone is closed."""
        if self._closed:
            raise trio.ClosedResourceError("this sink was closed")
        return PushPullSink(self._state)

    def close(self) -> None:
        """Close this sink (synchronously; safe on error paths)."""
        if self._closed:
            return
        self._closed = True
        state = self._state
        state.open_sinks -= 1
        if state.open_sinks == 0:
            state.notify_sources()
            state.senders.unpark_all()

    async def aclose(self) -> None:
        """Close this sink; always checkpoints."""
        self.close()
        await trio.lowlevel.checkpoint()

    def __enter__(self) -> PushPullSink[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PushPullSource(PeekableSource[T]):
    """The pull side of a :class:`PushPullBuffer`: a task source and trio ``ReceiveChannel``."""

    def __init__(self, state: _State[T]) -> None:
        super().__init__()
        self._state = state
        state.open_sources += 1
        state.sources.append(self)

    def _peek(self) -> T | Nothing:
        buffer = self._state.buffer
        return buffer[0] if buffer else NOTHING

    def _take(self) -> T:
        state = self._state
        item = state.buffer.popleft()
        state.received += 1
        if state.senders:
            state.senders.unpark()
        return item

    def _is_exhausted(self) -> bool:
        state = self._state
        return not state.buffer and state.ended

    @property
    def failure(self) -> BaseException | None:
        """The error thrown into the sink, once every item sent before it has been taken."""
        state = self._state
        return state.failure if not state.buffer else None

    def clone(self) -> PushPullSource[T]:
        """Another consumer of the same stream (each item goes to exactly one of them)."""
        if self._receive_closed:
            raise trio.ClosedResourceError("this source was closed")
        return PushPullSource(self._state)

    def __len__(self) -> int:
        return len(self._state.buffer)

    def _on_receive_closed(self) -> None:
        state = self._state
        state.open_sources -= 1
        state.sources.remove(self)
        if state.open_sources == 0:
            state.buffer.clear()
            state.senders.unpark_all()


class PushPullBuffer(Generic[T]):
    """A push→pull bridge: a memory-channel pair whose receive side is a task source.

    ``buffer.sink`` is a trio ``SendChannel`` for producers, ``buffer.source`` a ``ReceiveChannel``
    with the look-ahead protocol that runners use. Closing the sink (every clone of it) ends the
    stream after the buffered items; ``sink.throw(error)`` ends it with ``error``, which reaches the
    consumer after the items sent before it (the original turned it into a silent close).

    Args:
        max_size: the bound (``math.inf`` for none, the original's only mode). ``0`` is not
            allowed: a runner needs to see an item before it can admit it.
        overflow: what a send into a full buffer does (see :class:`OverflowPolicy`).
    """

    def __init__(
        self, max_size: int | float = math.inf, *, overflow: OverflowPolicy = OverflowPolicy.BLOCK
    ) -> None:
        if isinstance(max_size, bool) or not (isinstance(max_size, int) or max_size == math.inf):
            raise TypeError(f"max_size must be an int or math.inf, got {max_size!r}")
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if not isinstance(overflow, OverflowPolicy):
            raise TypeError(f"overflow must be an OverflowPolicy, got {overflow!r}")
        self._state: _State[T] = _State(max_size, overflow)
        self.sink: PushPullSink[T] = PushPullSink(self._state)
        self.source: PushPullSource[T] = PushPullSource(self._state)

    def __len__(self) -> int:
        return len(self._state.buffer)

    def statistics(self) -> PushPullStatistics:
        """A snapshot: buffered items, drops, totals and open ends."""
        state = self._state
        return PushPullStatistics(
            buffered=len(state.buffer),
            max_size=state.max_size,
            dropped=state.dropped,
            sent=state.sent,
            received=state.received,
            open_sinks=state.open_sinks,
            open_sources=state.open_sources,
            tasks_waiting_send=len(state.senders),
        )
