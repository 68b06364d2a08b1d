"""The task-source protocol and the base class of sluiceway's own sources.

A task source is anything the runners pull work from. Sluiceway's own sources are trio
``ReceiveChannel`` objects (so ``async for item in source`` works anywhere) that add a synchronous
look-ahead, so a cost-aware runner can peek, check capacity and take in one step with no ``await``
in between:

* ``peek()`` returns the next item or :data:`~sluiceway.NOTHING` if none is available right now;
* ``take()`` removes and returns exactly the item the last ``peek()`` returned;
* ``exhausted`` is true when no item is available and none will ever come; ``failure`` is the
  error that ended the source, if one did;
* ``subscribe(callback)`` registers a synchronous callback run whenever an item becomes available
  or the source ends (this is how a runner learns that it has work again, with no polling);
* ``await wait()`` returns once ``peek()`` has an item or the source is exhausted.

A *lazy* source (``lazy = True``, e.g. :class:`SourceFromIterable`) cannot know its next item
without producing it, so it offers ``await produce()`` instead, and runners call it only once they
hold capacity for the task it will produce.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

from .._util import NOTHING, Nothing, wait_until_ready

T = TypeVar("T")


class PeekableSource(trio.abc.ReceiveChannel[T], Generic[T]):
    """Base class of sluiceway's task sources; see the module documentation for the protocol."""

    #: ``True`` for sources that produce items on demand (``await produce()``) instead of peeking.
    lazy = False
    #: Number of items a feeder task keeps ready; ``0`` when the source needs no feeder.
    lookahead = 0

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []
        self._receivers = trio.lowlevel.ParkingLot()
        self._receive_closed = False

    # -- what a subclass provides ------------------------------------------------------------

    @abc.abstractmethod
    def _peek(self) -> T | Nothing:
        """The next item, or NOTHING."""

    @abc.abstractmethod
    def _take(self) -> T:
        """Remove and return the item ``_peek`` returned; only called right after it did."""

    @abc.abstractmethod
    def _is_exhausted(self) -> bool:
        """No item now and none will come."""

    def _on_receive_closed(self) -> None:
        """Hook: the receive side was closed (drop items, break senders...)."""

    # -- the look-ahead protocol -------------------------------------------------------------

    def peek(self) -> T | Nothing:
        """The next item without removing it, or ``NOTHING`` if none is available now."""
        if self._receive_closed:
            raise trio.ClosedResourceError("this source was closed")
        return self._peek()

    def take(self) -> T:
        """Remove and return the next item.

        Raises:
            trio.WouldBlock: if no item is available now.
        """
        if self._receive_closed:
            raise trio.ClosedResourceError("this source was closed")
        if self._peek() is NOTHING:
            raise trio.WouldBlock
        return self._take()

    @property
    def exhausted(self) -> bool:
        """True when no item is available and none will ever come (or the source was closed)."""
        return self._receive_closed or self._is_exhausted()

    @property
    def failure(self) -> BaseException | None:
        """The error that ended this source, if it ended with one."""
        return None

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` synchronously whenever an item arrives or the source ends.

        Returns a function that unsubscribes. Callbacks must not raise.
        """
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    def _notify(self) -> None:
        """Subclasses call this after an item was added or the source ended."""
        if self._receivers:  # a ParkingLot is falsy when nobody is parked (the common case)
            self._receivers.unpark_all()
        listeners = self._listeners
        if len(listeners) == 1:
            listeners[0]()  # the usual single runner: no copy of the list
            return
        for callback in tuple(listeners):
            callback()

    async def wait(self) -> None:
        """Wait until an item is available or the source is exhausted (always checkpoints)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.exhausted or self._peek() is not NOTHING:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        while not self.exhausted and self._peek() is NOTHING:
            await self._receivers.park()

    # -- ReceiveChannel ----------------------------------------------------------------------

    def receive_nowait(self) -> T:
        """Take the next item now.

        Raises:
            trio.WouldBlock: nothing is available yet.
            trio.EndOfChannel: the source is exhausted.
            trio.ClosedResourceError: this source was closed.
        """
        if self._receive_closed:
            raise trio.ClosedResourceError("this source was closed")
        if self._peek() is not NOTHING:
            return self._take()
        self._raise_if_ended()
        raise trio.WouldBlock

    def _raise_if_ended(self) -> None:
        """Raise ``EndOfChannel`` (or the source's failure) if the source is exhausted."""
        if self._is_exhausted():
            failure = self.failure
            if failure is not None:
                raise failure
            raise trio.EndOfChannel

    async def receive(self) -> T:
        """Wait for the next item; raises ``trio.EndOfChannel`` at the end (or the source's
        ``failure``, after every item that came before it)."""
        return await wait_until_ready(self.receive_nowait, self._receivers.park)

    def close(self) -> None:
        """Close the receive side: later receives raise ``trio.ClosedResourceError``."""
        if self._receive_closed:
            return
        self._receive_closed = True
        self._on_receive_closed()
        self._notify()

    async def aclose(self) -> None:
        """Close the receive side (see :meth:`close`); always checkpoints."""
        self.close()
        await trio.lowlevel.checkpoint()

    def __enter__(self) -> PeekableSource[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LazySource(PeekableSource[T]):
    """A source whose next item is produced on demand with ``await produce()``."""

    lazy = True

    @abc.abstractmethod
    async def produce(self) -> T:
        """Produce the next item; raises ``trio.EndOfChannel`` when there is none."""

    def _peek(self) -> T | Nothing:
        return NOTHING

    def _take(self) -> T:  # pragma: no cover - _peek never offers an item
        raise trio.WouldBlock

    def receive_nowait(self) -> T:
        """A lazy source cannot deliver without producing; always raises ``trio.WouldBlock``
        (or ``EndOfChannel``/the failure once exhausted)."""
        if self._receive_closed:
            raise trio.ClosedResourceError("this source was closed")
        self._raise_if_ended()
        raise trio.WouldBlock

    async def receive(self) -> T:
        """Produce and return the next item."""
        if self._receive_closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("this source was closed")
        return await self.produce()
