"""SourceBuffer: a FIFO or LIFO buffer of items, one-shot or open."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from typing import TypeVar

import trio

from .._util import NOTHING, Nothing
from ._base import PeekableSource

T = TypeVar("T")


class BufferMode(enum.Enum):
    """Which end of a :class:`SourceBuffer` items are taken from."""

    #: First in, first out: take the oldest item.
    FIFO = "FIFO"
    #: Last in, first out: take the newest item.
    LIFO = "LIFO"


class SourceBuffer(PeekableSource[T]):
    """A buffer of items served in FIFO or LIFO order.

    A *one-shot* buffer (the default) holds exactly the items it was built with and is exhausted
    once they are taken, which is the shape runners expect for a fixed list of tasks. An *open*
    buffer (``one_shot=False``) accepts :meth:`append`/:meth:`extend` at any time and waits for
    more when empty, until :meth:`close_input` says no more will come.

    The original exposed its array as a public, shared, mutable field; here the items are private
    and every append notifies the runners waiting on this source.
    """

    def __init__(
        self,
        items: Iterable[T] = (),
        *,
        mode: BufferMode = BufferMode.FIFO,
        one_shot: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(mode, BufferMode):
            raise TypeError(f"mode must be a BufferMode, got {mode!r}")
        self._items: deque[T] = deque(items)
        self.mode = mode
        self._fifo = mode is BufferMode.FIFO
        self._input_closed = one_shot

    @property
    def one_shot(self) -> bool:
        """Whether the buffer accepts no more items (built one-shot, or input closed)."""
        return self._input_closed

    def __len__(self) -> int:
        return len(self._items)

    def append(self, item: T) -> None:
        """Add one item.

        Raises:
            trio.ClosedResourceError: the buffer is one-shot or its input was closed (the original
                silently never delivered such items).
        """
        if self._input_closed or self._receive_closed:
            raise trio.ClosedResourceError("this SourceBuffer accepts no more items")
        self._items.append(item)
        self._notify()

    def extend(self, items: Iterable[T]) -> None:
        """Add several items (see :meth:`append`)."""
        if self._input_closed or self._receive_closed:
            raise trio.ClosedResourceError("this SourceBuffer accepts no more items")
        before = len(self._items)
        self._items.extend(items)
        if len(self._items) != before:
            self._notify()

    def close_input(self) -> None:
        """No more items will be added: the buffer is exhausted once drained."""
        if not self._input_closed:
            self._input_closed = True
            self._notify()

    # peek() and take() as the base class defines them, in one step each: runners call them for
    # every task they admit. (A subclass that overrides _peek or _take overrides these too.)

    def peek(self) -> T | Nothing:
        """The next item without removing it, or ``NOTHING`` if none is available now."""
        if self._receive_closed:
            raise trio.ClosedResourceError("this source was closed")
        items = self._items
        if not items:
            return NOTHING
        return items[0] if self._fifo else items[-1]

    def take(self) -> T:
        """Remove and return the next item.

        Raises:
            trio.WouldBlock: if no item is available now.
        """
        if self._receive_closed:
            raise trio.ClosedResourceError("this source was closed")
        items = self._items
        if not items:
            raise trio.WouldBlock
        return items.popleft() if self._fifo else items.pop()

    def _peek(self) -> T | Nothing:
        items = self._items
        if not items:
            return NOTHING
        return items[0] if self._fifo else items[-1]

    def _take(self) -> T:
        return self._items.popleft() if self._fifo else self._items.pop()

    def _is_exhausted(self) -> bool:
        return self._input_closed and not self._items

    def _on_receive_closed(self) -> None:
        self._items.clear()
