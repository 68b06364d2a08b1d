"""The per-source side of :class:`~sluiceway.runners.AsyncIteratorCombiner`: slots and pumps.

Each source of a combiner has one :class:`Slot` (its state and at most one buffered result) and
one pump task that pulls it one item per request. :class:`Sources` holds the slots and keeps the
rest in step with them: the ready buffer (buffered results in completion order), the idle set and
the counters. Everything here but the pump and the waits is synchronous, so a consumer takes a
result out of a slot with no ``await`` in between and no result can be lost.

It is apart from ``_combiner.py`` so that this state machine, whose counters must agree with the
slots after every step, reads in one place; the combiner keeps its public API (lifetime, streams
and the one-shot calls) and the stream channel is in ``_combiner_streams.py``.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeAlias

import trio

from .._util import raise_saving_context, raise_single
from ._tasks import Final, aclose_shielded


class SlotState(enum.Enum):
    IDLE = "idle"
    PULLING = "pulling"
    READY = "ready"
    DONE = "done"


class Value:
    """A source produced an item."""

    __slots__ = ("item",)

    def __init__(self, item: object) -> None:
        self.item = item

    def delivered(self) -> object:
        """What a consumer receives for it: the item."""
        return self.item


class End:
    """A source ended; ``value`` is its final value (``None`` without one)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def delivered(self) -> Final[object]:
        """What a consumer receives for it, when ends are delivered: ``Final(value)``."""
        return Final(self.value)


class Error:
    """A source raised ``error`` from ``__anext__``."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


Result: TypeAlias = Value | End | Error


class Slot:
    """One source, its pump's cancel scope, and at most one buffered result."""

    __slots__ = (
        "closed",
        "closer",
        "discard",
        "index",
        "iterator",
        "lot",
        "result",
        "scope",
        "state",
    )

    def __init__(
        self,
        index: int,
        iterator: AsyncIterator[Any],
        closer: Callable[[], Awaitable[object]] | None,
    ) -> None:
        self.index = index
        self.iterator = iterator
        self.closer = closer
        self.state = SlotState.IDLE
        self.result: Result | None = None
        #: The outstanding pull belongs to a round that ``discard_round=True`` gave up on.
        self.discard = False
        #: The combiner stopped wanting anything from this source; its pump is cancelled.
        self.closed = False
        self.scope = trio.CancelScope()
        #: The pump parks here while the slot is not ``PULLING``.
        self.lot = trio.lowlevel.ParkingLot()


class Checkpoint:
    """Tracks whether an API call has already passed a full checkpoint (a park)."""

    __slots__ = ("parked",)

    def __init__(self) -> None:
        self.parked = False

    async def park(self, lot: trio.lowlevel.ParkingLot) -> None:
        await lot.park()
        self.parked = True

    async def finish(self) -> None:
        """Yield once if the call never parked (``cancel_shielded``: the result is taken)."""
        if not self.parked:
            self.parked = True
            await trio.lowlevel.cancel_shielded_checkpoint()


class Sources:
    """The slots of one combiner, its buffer of results in completion order, and its pumps.

    ``slots`` is in source order. ``ready`` holds the ``READY`` slots, insertion-ordered, so its
    first slot has the oldest result; ``idle`` holds the ``IDLE`` ones; ``pulling`` and ``done``
    count the ``PULLING`` and ``DONE`` ones. Consumers park on ``wakeup``, which every pump
    unparks after settling, and take turns through :meth:`consuming`.
    """

    def __init__(self, iterators: list[AsyncIterator[Any]]) -> None:
        self.slots = [
            Slot(index, iterator, _closer_of(iterator)) for index, iterator in enumerate(iterators)
        ]
        self.ready: dict[int, Slot] = {}
        self.idle: dict[int, Slot] = {slot.index: slot for slot in self.slots}
        self.pulling = 0
        self.done = 0
        self.wakeup = trio.lowlevel.ParkingLot()
        #: A stream is open: the first error to settle shuts every source down.
        self.fail_fast = False
        #: A stream failed and :meth:`shutdown` closed every source.
        self.shut_down = False
        self._live_pumps = 0
        self._pumps_done = trio.Event()
        #: The stream block or one-shot call taking results now (its name), if any.
        self.consumer: str | None = None

    @contextmanager
    def consuming(self, name: str) -> Iterator[None]:
        """One consumer at a time: ``name`` (a stream block or a one-shot call) takes results."""
        if self.consumer is not None:
            raise trio.BusyResourceError(
                f"AsyncIteratorCombiner.{name} called while {self.consumer} is consuming it; "
                "one consumer at a time"
            )
        self.consumer = name
        try:
            yield
        finally:
            self.consumer = None

    # -- taking results ------------------------------------------------------------------------

    async def next_in_race(
        self, checkpoint: Checkpoint, *, skip_ends: bool
    ) -> tuple[int, Result] | None:
        """Take the oldest result (waiting for one if needed); ``None`` once nothing is active."""
        while True:
            slot = next(iter(self.ready.values()), None)
            if slot is None:
                if not self.request_idle():
                    return None
                await checkpoint.park(self.wakeup)
                continue
            result = self.take(slot)
            if skip_ends and isinstance(result, End):
                continue
            return slot.index, result

    # -- slot bookkeeping (all synchronous) ----------------------------------------------------

    def request_idle(self) -> bool:
        """Ask every idle source for its next item; return whether any pull is outstanding."""
        idle = self.idle
        if idle:
            for slot in idle.values():
                slot.state = SlotState.PULLING
                slot.lot.unpark()
            self.pulling += len(idle)
            idle.clear()
        return self.pulling > 0

    def set_state(self, slot: Slot, state: SlotState) -> None:
        """Move ``slot`` to ``state``, keeping the idle set and the counters in step."""
        old = slot.state
        if old is state:
            return
        if old is SlotState.IDLE:
            del self.idle[slot.index]
        elif old is SlotState.PULLING:
            self.pulling -= 1
        elif old is SlotState.DONE:
            self.done -= 1
        if state is SlotState.IDLE:
            self.idle[slot.index] = slot
        elif state is SlotState.PULLING:
            self.pulling += 1
        elif state is SlotState.DONE:
            self.done += 1
        slot.state = state

    def settle(self, slot: Slot, result: Result) -> None:
        """A pump's pull finished with ``result``."""
        discard, slot.discard = slot.discard, False
        if slot.closed:
            self.set_state(slot, SlotState.DONE)  # nobody wants it (errors were re-raised)
        elif discard and not isinstance(result, Error):
            self.set_state(slot, SlotState.IDLE if isinstance(result, Value) else SlotState.DONE)
        else:
            self.set_state(slot, SlotState.READY)
            slot.result = result
            self.ready[slot.index] = slot
            if self.fail_fast and isinstance(result, Error):
                self.shutdown()
        self.wakeup.unpark_all()

    def take(self, slot: Slot) -> Result:
        """Remove ``slot``'s buffered result; an end or error drops the source."""
        del self.ready[slot.index]
        result = slot.result
        assert result is not None
        slot.result = None
        if isinstance(result, Value) and not slot.closed:
            self.set_state(slot, SlotState.IDLE)
        else:
            self.set_state(slot, SlotState.DONE)
        return result

    def restore(self, failures: list[tuple[Slot, Error]]) -> None:
        """Put taken error results back at the head of the buffer, in their order."""
        if not failures:
            return
        ready = self.ready
        self.ready = {}
        for slot, failure in failures:
            self.set_state(slot, SlotState.READY)
            slot.result = failure
            self.ready[slot.index] = slot
        self.ready.update(ready)

    def first_error(self) -> Slot | None:
        for slot in self.ready.values():
            if isinstance(slot.result, Error):
                return slot
        return None

    def undelivered_errors(self) -> list[Exception]:
        """Take every buffered error (to raise it rather than lose it)."""
        errors: list[Exception] = []
        while (slot := self.first_error()) is not None:
            result = self.take(slot)
            assert isinstance(result, Error)
            errors.append(result.error)
        return errors

    def discard_round(self) -> None:
        """``discard_round=True``: drop every buffered or in-flight result except errors."""
        for slot in list(self.ready.values()):
            if not isinstance(slot.result, Error):
                self.take(slot)
        for slot in self.slots:
            if slot.state is SlotState.PULLING:
                slot.discard = True

    def shutdown(self) -> None:
        """A stream failed: cancel every pull and close every source.

        Buffered results stay deliverable (the error among them); everything else is dropped.
        """
        self.shut_down = True
        for slot in self.slots:
            if slot.state is SlotState.DONE or slot.closed:
                continue
            slot.closed = True
            slot.scope.cancel("AsyncIteratorCombiner stream failed")
            if slot.state is not SlotState.READY:
                self.set_state(slot, SlotState.DONE)
        self.wakeup.unpark_all()

    def close_all(self) -> None:
        for slot in self.slots:
            slot.closed = True
            self.set_state(slot, SlotState.DONE)
            slot.result = None
            slot.scope.cancel("AsyncIteratorCombiner exited")
        self.ready.clear()
        self.wakeup.unpark_all()

    # -- pumps ---------------------------------------------------------------------------------

    def start_pumps(self, nursery: trio.Nursery) -> None:
        """Start one pump task per source in the combiner's ``nursery``; nothing is pulled yet."""
        for slot in self.slots:
            self._live_pumps += 1
            nursery.start_soon(self._pump, slot, name=f"AsyncIteratorCombiner pump #{slot.index}")
        if not self.slots:
            self._pumps_done.set()

    async def wait_closed(self) -> None:
        """After a stream failed on a combiner it does not own: wait until every source is closed.

        Shielded, because it runs while an error propagates: a cancellation arriving here must
        not replace that error (DESIGN rule 4). The pumps are all cancelled by then.
        """
        with trio.CancelScope(shield=True):
            await self._pumps_done.wait()

    async def _pump(self, slot: Slot) -> None:
        """Pull ``slot``'s source one item per request; close it when it ends or is cancelled."""
        try:
            with slot.scope:
                while True:
                    while slot.state is not SlotState.PULLING:
                        await slot.lot.park()
                    try:
                        item = await slot.iterator.__anext__()
                    except StopAsyncIteration as stop:
                        result: Result = End(stop.args[0] if stop.args else None)
                    except Exception as error:
                        if slot.closed:
                            raise  # failed while being closed: the nursery reports it
                        result = Error(error)
                    else:
                        result = End(item.value) if isinstance(item, Final) else Value(item)
                    self.settle(slot, result)
                    if slot.closed or not isinstance(result, Value):
                        return
        finally:
            try:
                if slot.closer is not None:
                    await aclose_shielded(slot.closer)
            finally:
                self._live_pumps -= 1
                if self._live_pumps == 0:
                    self._pumps_done.set()


def _closer_of(iterator: object) -> Callable[[], Awaitable[object]] | None:
    closer = getattr(iterator, "aclose", None)
    return closer if callable(closer) else None


# -- raising the errors of sources -------------------------------------------------------------


def raise_all(errors: list[Exception]) -> NoReturn:
    if len(errors) == 1:
        raise_saving_context(errors[0])
    raise ExceptionGroup("AsyncIteratorCombiner: errors of several sources", errors)


def raise_together(error: BaseException, pending: list[Exception]) -> NoReturn:
    raise_single(
        BaseExceptionGroup(
            "AsyncIteratorCombiner: an error escaped while sources had failed", [error, *pending]
        )
    )
