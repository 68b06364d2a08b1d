"""Merge several async iterators: completion order, round robin, and ``all``/``race``/``any``.

:class:`AsyncIteratorCombiner` is the structured-concurrency version of the original's
``AsyncIteratorCombiner``. Its machinery:

* Each source gets one *slot* and one *pump* task in the combiner's nursery. A slot is in one of
  four states: ``IDLE`` (nothing asked of it), ``PULLING`` (exactly one ``__anext__`` is
  outstanding), ``READY`` (exactly one result is buffered: a value, the end of the source, or its
  error) and ``DONE`` (ended, failed or closed: no longer active).
* Pulls happen only on demand: a consumer moves ``IDLE`` slots to ``PULLING`` and the pump runs
  one ``__anext__``. The result is buffered in the slot and the slot joins ``_ready``, an
  insertion-ordered dict, so buffered results are kept in completion order.
* Consumers (the stream channels, :meth:`~AsyncIteratorCombiner.race`,
  :meth:`~AsyncIteratorCombiner.any`, :meth:`~AsyncIteratorCombiner.all`) take results out of the
  slots synchronously; when they have to wait they park on one parking lot that every pump
  unparks after settling. So no result can be lost between an ``await`` and the consumer.
* A pump ends with its source (end or error) and then ``aclose()``\\ s it, shielded from
  cancellation so the source's ``finally:`` cleanup can finish; cancelling a pump (early exit,
  stream error, combiner exit) closes the source the same way. A pull that is in flight when its
  pump is cancelled receives ``Cancelled`` inside the source, as any trio code would.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any, Generic, Literal, NoReturn, Self, TypeAlias, TypeVar, cast, overload

import trio

from .._util import open_owned_nursery, raise_saving_context, raise_single, type_name
from ._tasks import Final, aclose_shielded

T = TypeVar("T")
_X = TypeVar("_X")

#: What the stream methods return: ``async with ... as channel: async for item in channel``.
_Stream: TypeAlias = AbstractAsyncContextManager[trio.abc.ReceiveChannel[_X]]


class _State(enum.Enum):
    IDLE = "idle"
    PULLING = "pulling"
    READY = "ready"
    DONE = "done"


class _Phase(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class _Value:
    """A source produced an item."""

    __slots__ = ("item",)

    def __init__(self, item: object) -> None:
        self.item = item


class _End:
    """A source ended; ``value`` is its final value (``None`` without one)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


class _Error:
    """A source raised ``error`` from ``__anext__``."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


_Result: TypeAlias = _Value | _End | _Error


class _Slot:
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
        self.state = _State.IDLE
        self.result: _Result | None = None
        #: The outstanding pull belongs to a round that ``discard_round=True`` gave up on.
        self.discard = False
        #: The combiner stopped wanting anything from this source; its pump is cancelled.
        self.closed = False
        self.scope = trio.CancelScope()
        #: The pump parks here while the slot is not ``PULLING``.
        self.lot = trio.lowlevel.ParkingLot()


class _Checkpoint:
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


class AsyncIteratorCombiner(Generic[T]):
    """Merges several async iterators, with one pump task per source.

    The trio port of the original ``AsyncIteratorCombiner``, made structured: the combiner is an
    async context manager that owns a nursery with exactly one pump task per source. Each source
    has at most one outstanding ``__anext__`` and at most one buffered result; a source is pulled
    only when a consumer needs its next item (lazily), and a result that has resolved is never
    lost: it stays buffered until some call takes it.

    =============================================  =============================================
    Original                                       sluiceway
    =============================================  =============================================
    ``new AsyncIteratorCombiner(...iterators)``    ``AsyncIteratorCombiner(*sources)``
    ``size``                                       :attr:`size`
    ``race_generator(yield_final_values)``         ``async with`` :meth:`race_stream` ``as ch``
    ``round_robin_generator(yield_final_values)``  ``async with`` :meth:`round_robin_stream`
    ``all(yield_final_values)``                    ``await`` :meth:`all`
    ``race(yield_final_values, discard_round)``    ``await`` :meth:`race`
    ``any(yield_final_values, discard_round)``     ``await`` :meth:`any`
    ``check_close(outcome)``                       internal (exhausted sources are dropped)
    =============================================  =============================================

    The original's generators become context managers that hand out a
    :class:`trio.abc.ReceiveChannel` (never ``yield`` inside a nursery, :pep:`789`)::

        async with AsyncIteratorCombiner(child_a.start(), child_b.start()).race_stream() as ch:
            async for progress in ch:
                ...

    A stream opened on a combiner that is not entered yet enters it for the duration of the block.
    :meth:`race`, :meth:`any` and :meth:`all` leave pulls running after they return (the other
    sources of the round), so they need an entered combiner::

        async with AsyncIteratorCombiner(a, b, c) as combiner:
            first = await combiner.race()
            rest = await combiner.all()

    **Final values.** Python async generators cannot ``return`` a value, so a source marks its
    final value by yielding ``Final(value)`` (:class:`~sluiceway.Final`) as its last item (the
    combiner stops pulling it there and closes it), or, for a hand-written iterator, by raising
    ``StopAsyncIteration(value)``. With ``yield_final_values=True`` the end of every source is
    delivered as a ``Final(value)`` item (``Final(None)`` if it ended without one); with the
    default ``False`` final values are dropped and an ended source simply disappears.

    **Closing.** Leaving the combiner's ``async with`` (normally, by an error or by cancellation)
    cancels every outstanding pull and ``aclose()``\\ s every source iterator that has an
    ``aclose`` method; a source that ends is closed at once. A source that was idle (suspended
    between items) is closed by an ``aclose()`` shielded from cancellation, so its ``finally:``
    block can complete an async cleanup (it must not block forever); a source whose pull was in
    flight gets ``Cancelled`` inside that pull and runs its ``finally:`` under the cancellation,
    as any trio code does. Only the iterators are closed: for an iterable whose ``__aiter__``
    returns a new iterator, the iterable itself is left alone. An error raised while a source is
    being closed is raised from the ``async with``.

    **Errors.** An error raised by a source is delivered to the consumer as that source's result
    and the source is dropped. Streams fail fast: the first error cancels every other pull, closes
    every source and is raised (bare, never a one-member exception group) from the channel's
    ``receive()`` and then from the ``async with``. :meth:`race` and :meth:`all` raise it;
    :meth:`any` collects it. An error that no call received is raised when the stream block or the
    combiner exits, so none is ever lost.

    **One consumer at a time.** A stream block, or a call to :meth:`race`, :meth:`any` or
    :meth:`all`, consumes the combiner; starting another one while it runs raises
    :exc:`trio.BusyResourceError`. Several tasks may receive from one stream channel.

    Args:
        *sources: the async iterators (or async iterables, whose ``__aiter__`` is called once,
            here) to merge, in *source order*: the order of :meth:`all` and
            :meth:`round_robin_stream`, and the ``source_index`` reported by ``with_source``.

    Raises:
        TypeError: if a source is neither an async iterable nor an async iterator.
        ValueError: if the same iterator is given twice (two pumps cannot share it).
    """

    def __init__(self, *sources: AsyncIterable[T] | AsyncIterator[T]) -> None:
        iterators = [_as_iterator(source, position) for position, source in enumerate(sources)]
        seen: dict[int, int] = {}
        for position, iterator in enumerate(iterators):
            first = seen.setdefault(id(iterator), position)
            if first != position:
                raise ValueError(
                    f"AsyncIteratorCombiner() got the same async iterator as sources {first} and "
                    f"{position}; each source needs its own iterator"
                )
        self._slots = [
            _Slot(index, iterator, _closer_of(iterator)) for index, iterator in enumerate(iterators)
        ]
        self._ready: dict[int, _Slot] = {}
        self._idle: dict[int, _Slot] = {slot.index: slot for slot in self._slots}
        self._pulling = 0
        self._done = 0
        self._wakeup = trio.lowlevel.ParkingLot()
        self._phase = _Phase.NEW
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None
        self._consumer: str | None = None
        self._fail_fast = False
        self._shut_down = False
        self._live_pumps = 0
        self._pumps_done = trio.Event()
        self._suppressed: list[tuple[int, Exception]] = []

    # -- properties ----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of sources that are still active (not yet exhausted, failed or closed).

        A source whose end or error has been pulled but not yet taken by a consumer still counts:
        it leaves when a call takes that result (as the original's ``check_close`` does).
        """
        return len(self._slots) - self._done

    @property
    def suppressed_errors(self) -> list[tuple[int, Exception]]:
        """Errors that :meth:`any` collected but did not raise because another source succeeded.

        A list of ``(source_index, exception)`` in the order :meth:`any` met them, so that no
        error disappears without a trace. A copy: clearing it is up to the caller.
        """
        return list(self._suppressed)

    def __repr__(self) -> str:
        return (
            f"<AsyncIteratorCombiner {self._phase.value} size={self.size}/{len(self._slots)}"
            f"{' consumer=' + self._consumer if self._consumer else ''}>"
        )

    # -- lifetime ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open the nursery and start one pump task per source; nothing is pulled yet.

        Raises:
            RuntimeError: if the combiner was already entered (it can be entered once).
        """
        if self._phase is not _Phase.NEW:
            raise RuntimeError(
                f"this AsyncIteratorCombiner is {self._phase.value}; a combiner can be entered "
                "only once"
            )
        await trio.lowlevel.checkpoint()
        nursery_cm = open_owned_nursery()
        nursery = await nursery_cm.__aenter__()
        self._nursery_cm = nursery_cm
        self._nursery = nursery
        self._phase = _Phase.OPEN
        for slot in self._slots:
            self._live_pumps += 1
            nursery.start_soon(self._pump, slot, name=f"AsyncIteratorCombiner pump #{slot.index}")
        if not self._slots:
            self._pumps_done.set()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Cancel every outstanding pull, close every source and wait for the pumps.

        An error that a source raised but no call received is raised here (together with the
        block's own error, if any, as an exception group; a lone real error escapes bare).
        """
        nursery_cm, nursery = self._nursery_cm, self._nursery
        assert nursery_cm is not None
        assert nursery is not None
        pending = self._undelivered_errors()
        self._phase = _Phase.CLOSED
        self._close_all()
        nursery.cancel_scope.cancel("AsyncIteratorCombiner exited")
        try:
            suppressed = await nursery_cm.__aexit__(exc_type, exc, tb)
        except BaseException as error:
            if isinstance(exc, BaseExceptionGroup) and _leaves(error) == _leaves(exc):
                error = exc  # the block raised a group: do not nest it in the nursery's
            if pending:
                _raise_together(error, pending)
            if error is exc:
                raise_saving_context(error)
            raise
        finally:
            self._nursery_cm = self._nursery = None
        if pending:
            if exc is not None and not suppressed:
                _raise_together(exc, pending)
            _raise_all(pending)
        return suppressed

    # -- streams -------------------------------------------------------------------------------

    @overload
    def race_stream(
        self, *, yield_final_values: Literal[False] = False, with_source: Literal[False] = False
    ) -> _Stream[T]: ...
    @overload
    def race_stream(
        self, *, yield_final_values: Literal[True], with_source: Literal[False] = False
    ) -> _Stream[T | Final[Any]]: ...
    @overload
    def race_stream(
        self, *, yield_final_values: Literal[False] = False, with_source: Literal[True]
    ) -> _Stream[tuple[int, T]]: ...
    @overload
    def race_stream(
        self, *, yield_final_values: Literal[True], with_source: Literal[True]
    ) -> _Stream[tuple[int, T | Final[Any]]]: ...
    @overload
    def race_stream(
        self, *, yield_final_values: bool = False, with_source: bool = False
    ) -> _Stream[Any]: ...
    def race_stream(
        self, *, yield_final_values: bool = False, with_source: bool = False
    ) -> _Stream[Any]:
        """Every item of every source, in completion order (the original's ``race_generator``).

        ``async with combiner.race_stream() as channel: async for item in channel: ...``. Each
        ``receive()`` takes the oldest buffered result, or else asks every idle active source for
        its next item (all of them are pulled concurrently) and waits for the first to resolve.
        Exhausted sources are dropped; the channel ends (:exc:`trio.EndOfChannel`) when every
        source is exhausted.

        If the combiner is not entered yet, the block enters it, and leaving the block (early,
        by an error or by cancellation) cancels the outstanding pulls and closes every source. On
        a combiner that is already open, leaving the block early leaves outstanding pulls to the
        combiner: their results stay buffered for the next call.

        The first error of a source cancels the other pulls and closes every source; results that
        resolved before it are still delivered, then ``receive()`` raises the error (bare), and
        so does the ``async with`` if it was not received. After that the channel raises
        :exc:`trio.BrokenResourceError`.

        Args:
            yield_final_values: deliver the end of each source as a ``Final(value)`` item
                (``Final(None)`` if it ended without a final value); ``False`` drops them.
            with_source: deliver ``(source_index, item)`` tuples, ``source_index`` being the
                position of the source in the constructor.

        Returns:
            An async context manager whose value is a :class:`trio.abc.ReceiveChannel`.

        Raises:
            RuntimeError: (on entering) if the combiner is closed.
            trio.BusyResourceError: (on entering) if another call is consuming the combiner.
        """
        return self._stream(
            "race_stream()",
            round_robin=False,
            yield_final_values=yield_final_values,
            with_source=with_source,
        )

    @overload
    def round_robin_stream(
        self, *, yield_final_values: Literal[False] = False, with_source: Literal[False] = False
    ) -> _Stream[T]: ...
    @overload
    def round_robin_stream(
        self, *, yield_final_values: Literal[True], with_source: Literal[False] = False
    ) -> _Stream[T | Final[Any]]: ...
    @overload
    def round_robin_stream(
        self, *, yield_final_values: Literal[False] = False, with_source: Literal[True]
    ) -> _Stream[tuple[int, T]]: ...
    @overload
    def round_robin_stream(
        self, *, yield_final_values: Literal[True], with_source: Literal[True]
    ) -> _Stream[tuple[int, T | Final[Any]]]: ...
    @overload
    def round_robin_stream(
        self, *, yield_final_values: bool = False, with_source: bool = False
    ) -> _Stream[Any]: ...
    def round_robin_stream(
        self, *, yield_final_values: bool = False, with_source: bool = False
    ) -> _Stream[Any]:
        """One item from each active source in turn (the original's ``round_robin_generator``).

        Sources take turns in source order, skipping exhausted ones: with sources yielding
        ``a1 a2 a3``, ``b1`` and ``c1 c2`` the channel delivers ``a1 b1 c1 a2 c2 a3``. While it
        waits for the source whose turn it is, every other idle active source is asked for its
        next item too (a prefetch of at most one item per source), so slow sources overlap.

        Block, combiner-entering, closing and error behaviour are those of :meth:`race_stream`,
        except that a source error is raised by the next ``receive()`` whatever the turn (items
        of the other sources that were prefetched but not delivered are dropped with the stream).

        Args:
            yield_final_values: when a source's turn finds it ended, deliver ``Final(value)``
                (``Final(None)`` without a final value) instead of skipping to the next source.
            with_source: deliver ``(source_index, item)`` tuples.

        Returns:
            An async context manager whose value is a :class:`trio.abc.ReceiveChannel`.

        Raises:
            RuntimeError: (on entering) if the combiner is closed.
            trio.BusyResourceError: (on entering) if another call is consuming the combiner.
        """
        return self._stream(
            "round_robin_stream()",
            round_robin=True,
            yield_final_values=yield_final_values,
            with_source=with_source,
        )

    @asynccontextmanager
    async def _stream(
        self, name: str, *, round_robin: bool, yield_final_values: bool, with_source: bool
    ) -> AsyncIterator[trio.abc.ReceiveChannel[Any]]:
        channel = _CombinedChannel(self, name, round_robin, yield_final_values, with_source)
        if self._phase is _Phase.NEW:
            async with self, self._view(channel, owned=True):
                yield channel
        else:
            self._require_open(name)
            async with self._view(channel, owned=False):
                yield channel

    @asynccontextmanager
    async def _view(self, channel: _CombinedChannel, *, owned: bool) -> AsyncIterator[None]:
        with self._consuming(channel.name):
            self._fail_fast = True
            if any(isinstance(slot.result, _Error) for slot in self._ready.values()):
                self._shutdown()  # an error buffered before the stream opened fails it too
            try:
                yield
            except BaseException as exc:
                channel.close()
                self._fail_fast = False
                pending = self._undelivered_errors()
                if self._shut_down and not owned:
                    await self._wait_closed()
                if pending:
                    _raise_together(exc, pending)
                raise
            channel.close()
            self._fail_fast = False
            if not owned:
                # Before taking pending errors: if this checkpoint is cancelled, they stay
                # buffered and the combiner's exit raises them.
                if self._shut_down:
                    await self._wait_closed()
                else:
                    await trio.lowlevel.checkpoint()
            pending = self._undelivered_errors()
            if pending:
                _raise_all(pending)

    async def _wait_closed(self) -> None:
        """After a stream failed on a combiner it does not own: wait until every source is closed.

        Shielded, because it runs while an error propagates: a cancellation arriving here must
        not replace that error (DESIGN rule 4). The pumps are all cancelled by then.
        """
        with trio.CancelScope(shield=True):
            await self._pumps_done.wait()

    async def _receive(self, channel: _CombinedChannel) -> Any:
        """The next item of a stream channel (see :meth:`race_stream`)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        checkpoint = _Checkpoint()
        skip_ends = not channel.yield_final_values
        if channel.round_robin:
            got = await self._next_in_turn(channel, checkpoint, skip_ends=skip_ends)
        else:
            got = await self._next_in_race(checkpoint, skip_ends=skip_ends)
        await checkpoint.finish()
        if got is None:
            raise trio.EndOfChannel
        index, result = got
        if isinstance(result, _Error):
            channel.failure = result.error
            raise_saving_context(result.error)
        item = result.item if isinstance(result, _Value) else Final(result.value)
        return (index, item) if channel.with_source else item

    # -- one-shot calls ------------------------------------------------------------------------

    @overload
    async def all(self, *, yield_final_values: Literal[False] = False) -> list[T]: ...
    @overload
    async def all(self, *, yield_final_values: bool) -> list[T | Final[Any]]: ...
    async def all(self, *, yield_final_values: bool = False) -> list[Any]:
        """One item from every active source, in source order (the original's ``all``).

        Like ``Promise.all`` over one round, or one step of ``zip``: every active source that has
        no buffered result is pulled, all concurrently, and the call returns once each active
        source has a result. A source whose result is its end is dropped and contributes nothing
        with ``yield_final_values=False``, or ``Final(value)`` (``Final(None)`` without a final
        value) at its position with ``True``. So the list is shorter than :attr:`size` was when
        sources ended, and ``[]`` once no source is active.

        If a source fails, its error is raised as soon as it arrives (the first in completion
        order) and that source is dropped; the results of the other sources of the round stay
        buffered and are used by the next call.

        Args:
            yield_final_values: see above.

        Returns:
            The items, in source order.

        Raises:
            RuntimeError: if the combiner is not entered (``async with combiner:``) or closed.
            trio.BusyResourceError: if another call is consuming the combiner.
        """
        self._require_open("all()")
        with self._consuming("all()"):
            await trio.lowlevel.checkpoint_if_cancelled()
            checkpoint = _Checkpoint()
            while True:
                failed = self._first_error()
                if failed is not None:
                    result = self._take(failed)
                    await checkpoint.finish()
                    assert isinstance(result, _Error)
                    raise_saving_context(result.error)
                active = [slot for slot in self._slots if slot.state is not _State.DONE]
                if all(slot.state is _State.READY for slot in active):
                    break
                self._request_idle()
                await checkpoint.park(self._wakeup)
            items: list[Any] = []
            for slot in active:
                result = self._take(slot)
                if isinstance(result, _Value):
                    items.append(result.item)
                elif yield_final_values:
                    assert isinstance(result, _End)
                    items.append(Final(result.value))
            await checkpoint.finish()
            return items

    @overload
    async def race(
        self, *, yield_final_values: Literal[False] = False, discard_round: bool = False
    ) -> T: ...
    @overload
    async def race(
        self, *, yield_final_values: bool, discard_round: bool = False
    ) -> T | Final[Any]: ...
    async def race(self, *, yield_final_values: bool = False, discard_round: bool = False) -> Any:
        """The first result of any source (the original's ``race``, like ``Promise.race``).

        Results already buffered are served first, oldest first, without pulling anything;
        otherwise every idle active source is pulled concurrently and the first to settle wins.
        If that is the end of a source and ``yield_final_values`` is ``False``, the source is
        dropped and the race goes on over the others. If it is an error, the error is raised and
        the source dropped.

        Args:
            yield_final_values: an ending source wins with ``Final(value)`` (``Final(None)``
                without a final value) instead of being skipped.
            discard_round: ``False`` keeps the results of the other sources, including pulls
                still in flight, for later calls (served first, in completion order). ``True``
                throws away every other result that is buffered or still in flight when the call
                returns (those sources are pulled afresh next time); an *error* among them is
                never thrown away: it stays buffered for the next call.

        Returns:
            The winning item.

        Raises:
            trio.EndOfChannel: if every source is exhausted.
            RuntimeError: if the combiner is not entered (``async with combiner:``) or closed.
            trio.BusyResourceError: if another call is consuming the combiner.
        """
        self._require_open("race()")
        with self._consuming("race()"):
            await trio.lowlevel.checkpoint_if_cancelled()
            checkpoint = _Checkpoint()
            got = await self._next_in_race(checkpoint, skip_ends=not yield_final_values)
            if discard_round:
                self._discard_round()
            await checkpoint.finish()
            if got is None:
                raise trio.EndOfChannel("race(): every source of the combiner is exhausted")
            _, result = got
            if isinstance(result, _Error):
                raise_saving_context(result.error)
            return result.item if isinstance(result, _Value) else Final(result.value)

    @overload
    async def any(
        self, *, yield_final_values: Literal[False] = False, discard_round: bool = False
    ) -> T: ...
    @overload
    async def any(
        self, *, yield_final_values: bool, discard_round: bool = False
    ) -> T | Final[Any]: ...
    async def any(self, *, yield_final_values: bool = False, discard_round: bool = False) -> Any:
        """The first successful result of any source (the original's ``any``, ``Promise.any``).

        Like :meth:`race`, but a source's error does not end the call: the source is dropped, its
        error collected, and the race goes on over the others until one succeeds. The errors
        collected by a call that succeeds are recorded in :attr:`suppressed_errors`. If the call
        is cancelled, the errors it collected go back into the buffer, to be met again.

        Args:
            yield_final_values: as for :meth:`race`.
            discard_round: as for :meth:`race`.

        Returns:
            The winning item.

        Raises:
            ExceptionGroup: if no source produced an item and at least one failed: all the errors
                collected by this call, in completion order (always a group, even of one error,
                as ``Promise.any`` always rejects with an ``AggregateError``).
            trio.EndOfChannel: if every source is exhausted and none failed.
            RuntimeError: if the combiner is not entered (``async with combiner:``) or closed.
            trio.BusyResourceError: if another call is consuming the combiner.
        """
        self._require_open("any()")
        with self._consuming("any()"):
            await trio.lowlevel.checkpoint_if_cancelled()
            checkpoint = _Checkpoint()
            failures: list[tuple[_Slot, _Error]] = []
            winner: _Value | _End | None = None
            try:
                while True:
                    got = await self._next_in_race(checkpoint, skip_ends=not yield_final_values)
                    if got is None:
                        break
                    index, result = got
                    if isinstance(result, _Error):
                        failures.append((self._slots[index], result))
                        continue
                    winner = result
                    break
            except BaseException:
                self._restore(failures)
                raise
            if discard_round:
                self._discard_round()
            await checkpoint.finish()
            errors = [failure.error for _, failure in failures]
            if winner is None:
                if errors:
                    raise ExceptionGroup(
                        f"any(): no source produced an item; {len(errors)} failed", errors
                    )
                raise trio.EndOfChannel("any(): every source of the combiner is exhausted")
            self._suppressed.extend((slot.index, failure.error) for slot, failure in failures)
            return winner.item if isinstance(winner, _Value) else Final(winner.value)

    # -- consumers' core -----------------------------------------------------------------------

    async def _next_in_race(
        self, checkpoint: _Checkpoint, *, skip_ends: bool
    ) -> tuple[int, _Result] | None:
        """Take the oldest result (waiting for one if needed); ``None`` once nothing is active."""
        while True:
            slot = next(iter(self._ready.values()), None)
            if slot is None:
                if not self._request_idle():
                    return None
                await checkpoint.park(self._wakeup)
                continue
            result = self._take(slot)
            if skip_ends and isinstance(result, _End):
                continue
            return slot.index, result

    async def _next_in_turn(
        self, channel: _CombinedChannel, checkpoint: _Checkpoint, *, skip_ends: bool
    ) -> tuple[int, _Result] | None:
        """Take the result of the source whose turn it is; an error of any source comes first."""
        slots = self._slots
        while True:
            failed = self._first_error()
            if failed is not None:
                return failed.index, self._take(failed)
            slot = None
            for offset in range(len(slots)):
                candidate = slots[(channel.cursor + offset) % len(slots)]
                if candidate.state is not _State.DONE:
                    slot = candidate
                    break
            if slot is None:
                return None
            if slot.state is _State.READY:
                channel.cursor = slot.index + 1
                result = self._take(slot)
                if skip_ends and isinstance(result, _End):
                    continue
                return slot.index, result
            self._request_idle()
            await checkpoint.park(self._wakeup)

    # -- slot bookkeeping (all synchronous) ----------------------------------------------------

    def _request_idle(self) -> bool:
        """Ask every idle source for its next item; return whether any pull is outstanding."""
        idle = self._idle
        if idle:
            for slot in idle.values():
                slot.state = _State.PULLING
                slot.lot.unpark()
            self._pulling += len(idle)
            idle.clear()
        return self._pulling > 0

    def _set_state(self, slot: _Slot, state: _State) -> None:
        """Move ``slot`` to ``state``, keeping the idle set and the counters in step."""
        old = slot.state
        if old is state:
            return
        if old is _State.IDLE:
            del self._idle[slot.index]
        elif old is _State.PULLING:
            self._pulling -= 1
        elif old is _State.DONE:
            self._done -= 1
        if state is _State.IDLE:
            self._idle[slot.index] = slot
        elif state is _State.PULLING:
            self._pulling += 1
        elif state is _State.DONE:
            self._done += 1
        slot.state = state

    def _settle(self, slot: _Slot, result: _Result) -> None:
        """A pump's pull finished with ``result``."""
        discard, slot.discard = slot.discard, False
        if slot.closed:
            self._set_state(slot, _State.DONE)  # nobody wants it (errors were re-raised)
        elif discard and not isinstance(result, _Error):
            self._set_state(slot, _State.IDLE if isinstance(result, _Value) else _State.DONE)
        else:
            self._set_state(slot, _State.READY)
            slot.result = result
            self._ready[slot.index] = slot
            if self._fail_fast and isinstance(result, _Error):
                self._shutdown()
        self._wakeup.unpark_all()

    def _take(self, slot: _Slot) -> _Result:
        """Remove ``slot``'s buffered result; an end or error drops the source."""
        del self._ready[slot.index]
        result = slot.result
        assert result is not None
        slot.result = None
        if isinstance(result, _Value) and not slot.closed:
            self._set_state(slot, _State.IDLE)
        else:
            self._set_state(slot, _State.DONE)
        return result

    def _restore(self, failures: list[tuple[_Slot, _Error]]) -> None:
        """Put taken error results back at the head of the buffer, in their order."""
        if not failures:
            return
        ready = self._ready
        self._ready = {}
        for slot, failure in failures:
            self._set_state(slot, _State.READY)
            slot.result = failure
            self._ready[slot.index] = slot
        self._ready.update(ready)

    def _first_error(self) -> _Slot | None:
        for slot in self._ready.values():
            if isinstance(slot.result, _Error):
                return slot
        return None

    def _undelivered_errors(self) -> list[Exception]:
        """Take every buffered error (to raise it rather than lose it)."""
        errors: list[Exception] = []
        while (slot := self._first_error()) is not None:
            result = self._take(slot)
            assert isinstance(result, _Error)
            errors.append(result.error)
        return errors

    def _discard_round(self) -> None:
        """``discard_round=True``: drop every buffered or in-flight result except errors."""
        for slot in list(self._ready.values()):
            if not isinstance(slot.result, _Error):
                self._take(slot)
        for slot in self._slots:
            if slot.state is _State.PULLING:
                slot.discard = True

    def _shutdown(self) -> None:
        """A stream failed: cancel every pull and close every source.

        Buffered results stay deliverable (the error among them); everything else is dropped.
        """
        self._shut_down = True
        for slot in self._slots:
            if slot.state is _State.DONE or slot.closed:
                continue
            slot.closed = True
            slot.scope.cancel("AsyncIteratorCombiner stream failed")
            if slot.state is not _State.READY:
                self._set_state(slot, _State.DONE)
        self._wakeup.unpark_all()

    def _close_all(self) -> None:
        for slot in self._slots:
            slot.closed = True
            self._set_state(slot, _State.DONE)
            slot.result = None
            slot.scope.cancel("AsyncIteratorCombiner exited")
        self._ready.clear()
        self._wakeup.unpark_all()

    def _require_open(self, name: str) -> None:
        if self._phase is _Phase.OPEN:
            return
        if self._phase is _Phase.NEW:
            raise RuntimeError(
                f"AsyncIteratorCombiner.{name} needs an entered combiner: use "
                f"`async with combiner: ... await combiner.{name[:-2]}()`, because the pulls it "
                "leaves running need an owning nursery"
            )
        raise RuntimeError(f"AsyncIteratorCombiner.{name} called on a closed combiner")

    @contextmanager
    def _consuming(self, name: str) -> Iterator[None]:
        if self._consumer is not None:
            raise trio.BusyResourceError(
                f"AsyncIteratorCombiner.{name} called while {self._consumer} is consuming it; "
                "one consumer at a time"
            )
        self._consumer = name
        try:
            yield
        finally:
            self._consumer = None

    # -- pumps ---------------------------------------------------------------------------------

    async def _pump(self, slot: _Slot) -> None:
        """Pull ``slot``'s source one item per request; close it when it ends or is cancelled."""
        try:
            with slot.scope:
                while True:
                    while slot.state is not _State.PULLING:
                        await slot.lot.park()
                    try:
                        item = await slot.iterator.__anext__()
                    except StopAsyncIteration as stop:
                        result: _Result = _End(stop.args[0] if stop.args else None)
                    except Exception as error:
                        if slot.closed:
                            raise  # failed while being closed: the nursery reports it
                        result = _Error(error)
                    else:
                        result = _End(item.value) if isinstance(item, Final) else _Value(item)
                    self._settle(slot, result)
                    if slot.closed or not isinstance(result, _Value):
                        return
        finally:
            try:
                if slot.closer is not None:
                    await aclose_shielded(slot.closer)
            finally:
                self._live_pumps -= 1
                if self._live_pumps == 0:
                    self._pumps_done.set()


class _CombinedChannel(trio.abc.ReceiveChannel[Any]):
    """The channel of a :meth:`~AsyncIteratorCombiner.race_stream` or round-robin block."""

    def __init__(
        self,
        combiner: AsyncIteratorCombiner[Any],
        name: str,
        round_robin: bool,
        yield_final_values: bool,
        with_source: bool,
    ) -> None:
        self._combiner = combiner
        self.name = name
        self.round_robin = round_robin
        self.yield_final_values = yield_final_values
        self.with_source = with_source
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
        return await self._combiner._receive(self)

    def close(self) -> None:
        """Stop receiving (the block's exit does this)."""
        self._closed = True

    async def aclose(self) -> None:
        """See :meth:`close`; always checkpoints."""
        self.close()
        await trio.lowlevel.checkpoint()


def _as_iterator(source: object, position: int) -> AsyncIterator[Any]:
    if hasattr(source, "__aiter__"):
        iterator = source.__aiter__()
        if not hasattr(iterator, "__anext__"):
            raise TypeError(
                f"AsyncIteratorCombiner() source {position}: __aiter__() of {source!r} returned "
                f"{iterator!r} ({type_name(iterator)}), which is not an async iterator"
            )
        return cast(AsyncIterator[Any], iterator)
    if hasattr(source, "__anext__"):
        return cast(AsyncIterator[Any], source)
    if inspect.isasyncgenfunction(source) or inspect.iscoroutinefunction(source):
        hint = "; did you forget to call it?"
    elif hasattr(source, "__iter__"):
        hint = "; it is a synchronous iterable (wrap it in an async generator)"
    elif inspect.isawaitable(source):
        hint = "; it is awaitable, not async-iterable"
    else:
        hint = ""
    raise TypeError(
        f"AsyncIteratorCombiner() source {position} must be an async iterable or async iterator, "
        f"got {source!r} ({type_name(source)}){hint}"
    )


def _closer_of(iterator: object) -> Callable[[], Awaitable[object]] | None:
    closer = getattr(iterator, "aclose", None)
    return closer if callable(closer) else None


def _leaves(error: BaseException) -> list[int]:
    """The ids of the non-group exceptions inside ``error``, in order."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [id(error)]


def _raise_all(errors: list[Exception]) -> NoReturn:
    if len(errors) == 1:
        raise_saving_context(errors[0])
    raise ExceptionGroup("AsyncIteratorCombiner: errors of several sources", errors)


def _raise_together(error: BaseException, pending: list[Exception]) -> NoReturn:
    raise_single(
        BaseExceptionGroup(
            "AsyncIteratorCombiner: an error escaped while sources had failed", [error, *pending]
        )
    )
