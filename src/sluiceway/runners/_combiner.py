"""Merge several async iterators: completion order, round robin, and ``all``/``race``/``any``.

:class:`AsyncIteratorCombiner` is the structured-concurrency version of the original's
``AsyncIteratorCombiner``. Its machinery:

* Each source gets one *slot* and one *pump* task in the combiner's nursery. A slot is in one of
  four states: ``IDLE`` (nothing asked of it), ``PULLING`` (exactly one ``__anext__`` is
  outstanding), ``READY`` (exactly one result is buffered: a value, the end of the source, or its
  error) and ``DONE`` (ended, failed or closed: no longer active).
* Pulls happen only on demand: a consumer moves ``IDLE`` slots to ``PULLING`` and the pump runs
  one ``__anext__``. The result is buffered in the slot and the slot joins ``ready``, an
  insertion-ordered dict, so buffered results are kept in completion order.
* Consumers (the stream channels, :meth:`~AsyncIteratorCombiner.race`,
  :meth:`~AsyncIteratorCombiner.any`, :meth:`~AsyncIteratorCombiner.all`) take results out of the
  slots synchronously; when they have to wait they park on one parking lot that every pump
  unparks after settling. So no result can be lost between an ``await`` and the consumer.
* A pump ends with its source (end or error) and then ``aclose()``\\ s it, shielded from
  cancellation so the source's ``finally:`` cleanup can finish; cancelling a pump (early exit,
  stream error, combiner exit) closes the source the same way. A pull that is in flight when its
  pump is cancelled receives ``Cancelled`` inside the source, as any trio code would.

The machinery is in three modules. This one holds the combiner: its lifetime (the nursery), when
a stream may open, and the one-shot calls. ``_combiner_sources.py`` holds the slots, their
bookkeeping, the pumps and the one-consumer rule; ``_combiner_streams.py`` holds the stream
channel and its block.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeAlias, TypeVar, cast, overload

import trio

from .._util import open_owned_nursery, raise_saving_context, type_name
from ._combiner_sources import (
    Checkpoint,
    End,
    Error,
    Slot,
    SlotState,
    Sources,
    Value,
    raise_all,
    raise_together,
)
from ._combiner_streams import CombinedChannel
from ._tasks import Final

T = TypeVar("T")
_X = TypeVar("_X")

#: What the stream methods return: ``async with ... as channel: async for item in channel``.
_Stream: TypeAlias = AbstractAsyncContextManager[trio.abc.ReceiveChannel[_X]]


class _Phase(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


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
        self._sources = Sources(iterators)
        self._phase = _Phase.NEW
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None
        self._suppressed: list[tuple[int, Exception]] = []

    # -- properties ----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of sources that are still active (not yet exhausted, failed or closed).

        A source whose end or error has been pulled but not yet taken by a consumer still counts:
        it leaves when a call takes that result (as the original's ``check_close`` does).
        """
        return len(self._sources.slots) - self._sources.done

    @property
    def suppressed_errors(self) -> list[tuple[int, Exception]]:
        """Errors that :meth:`any` collected but did not raise because another source succeeded.

        A list of ``(source_index, exception)`` in the order :meth:`any` met them, so that no
        error disappears without a trace. A copy: clearing it is up to the caller.
        """
        return list(self._suppressed)

    def __repr__(self) -> str:
        consumer = self._sources.consumer
        return (
            f"<AsyncIteratorCombiner {self._phase.value} "
            f"size={self.size}/{len(self._sources.slots)}"
            f"{' consumer=' + consumer if consumer else ''}>"
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
        self._sources.start_pumps(nursery)
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
        pending = self._sources.undelivered_errors()
        self._phase = _Phase.CLOSED
        self._sources.close_all()
        nursery.cancel_scope.cancel("AsyncIteratorCombiner exited")
        try:
            suppressed = await nursery_cm.__aexit__(exc_type, exc, tb)
        except BaseException as error:
            if isinstance(exc, BaseExceptionGroup) and _leaves(error) == _leaves(exc):
                error = exc  # the block raised a group: do not nest it in the nursery's
            if pending:
                raise_together(error, pending)
            if error is exc:
                raise_saving_context(error)
            raise
        finally:
            self._nursery_cm = self._nursery = None
        if pending:
            if exc is not None and not suppressed:
                raise_together(exc, pending)
            raise_all(pending)
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
        channel = CombinedChannel(self._sources, name, round_robin, yield_final_values, with_source)
        if self._phase is _Phase.NEW:
            async with self, channel.block(owned=True):
                yield channel
        else:
            self._require_open(name)
            async with channel.block(owned=False):
                yield channel

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
        with self._sources.consuming("all()"):
            await trio.lowlevel.checkpoint_if_cancelled()
            sources = self._sources
            checkpoint = Checkpoint()
            while True:
                failed = sources.first_error()
                if failed is not None:
                    result = sources.take(failed)
                    await checkpoint.finish()
                    assert isinstance(result, Error)
                    raise_saving_context(result.error)
                active = [slot for slot in sources.slots if slot.state is not SlotState.DONE]
                if all(slot.state is SlotState.READY for slot in active):
                    break
                sources.request_idle()
                await checkpoint.park(sources.wakeup)
            items: list[Any] = []
            for slot in active:
                result = sources.take(slot)
                assert not isinstance(result, Error)  # errors were raised above
                if isinstance(result, Value) or yield_final_values:
                    items.append(result.delivered())
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
        with self._sources.consuming("race()"):
            await trio.lowlevel.checkpoint_if_cancelled()
            checkpoint = Checkpoint()
            got = await self._sources.next_in_race(checkpoint, skip_ends=not yield_final_values)
            if discard_round:
                self._sources.discard_round()
            await checkpoint.finish()
            if got is None:
                raise trio.EndOfChannel("race(): every source of the combiner is exhausted")
            _, result = got
            if isinstance(result, Error):
                raise_saving_context(result.error)
            return result.delivered()

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
        with self._sources.consuming("any()"):
            await trio.lowlevel.checkpoint_if_cancelled()
            sources = self._sources
            checkpoint = Checkpoint()
            failures: list[tuple[Slot, Error]] = []
            winner: Value | End | None = None
            try:
                while True:
                    got = await sources.next_in_race(checkpoint, skip_ends=not yield_final_values)
                    if got is None:
                        break
                    index, result = got
                    if isinstance(result, Error):
                        failures.append((sources.slots[index], result))
                        continue
                    winner = result
                    break
            except BaseException:
                sources.restore(failures)
                raise
            if discard_round:
                sources.discard_round()
            await checkpoint.finish()
            errors = [failure.error for _, failure in failures]
            if winner is None:
                if errors:
                    raise ExceptionGroup(
                        f"any(): no source produced an item; {len(errors)} failed", errors
                    )
                raise trio.EndOfChannel("any(): every source of the combiner is exhausted")
            self._suppressed.extend((slot.index, failure.error) for slot, failure in failures)
            return winner.delivered()

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


def _leaves(error: BaseException) -> list[int]:
    """The ids of the non-group exceptions inside ``error``, in order."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [id(error)]
