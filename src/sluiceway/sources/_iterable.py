"""SourceFromIterable (lazy) and the adapters that turn any channel or iterable into a source."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, TypeVar, cast

import trio

from .._util import NOTHING, Nothing, type_name
from ._base import LazySource, PeekableSource
from ._buffer import SourceBuffer
from ._pushpull import PushPullBuffer

T = TypeVar("T")


class SourceFromIterable(LazySource[T]):
    """A task source over a sync or async iterable, advanced only on demand.

    The iterable is advanced by one step each time a runner is about to start a task: a runner
    first obtains capacity, then advances it. Side effects of producing an item (creating a child
    entity, reading a file) therefore happen only when there is capacity to run it, as in the
    original. A synchronous iterable is advanced in the same synchronous step as the grant, like a
    peek. An asynchronous one is advanced by a worker holding the unit of the item it will produce,
    and a runner lets at most one unit wait on it that way; for a producer that mostly *waits* on
    the outside world, push items into a :class:`~sluiceway.PushPullBuffer` instead, which
    runners watch without holding anything. A grant that finds the iterable ended is refunded
    (a quota gets it back too).

    Production is serialised (one ``__anext__`` at a time). An error raised by the iterable ends the
    source with that error, and runners raise it (it is a failure of the source, not of a task).
    A ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``, ...)
    ends it the same way, and also propagates at once from wherever the iterable was advanced; a
    runner raises it once, and gives back the capacity it had granted for the item.
    :meth:`aclose` closes the underlying generator.
    """

    def __init__(self, iterable: Iterable[T] | AsyncIterable[T]) -> None:
        super().__init__()
        if isinstance(iterable, str | bytes | bytearray):
            raise TypeError(
                f"SourceFromIterable got a {type_name(iterable)}; iterating it would yield "
                "characters, not tasks"
            )
        self._sync: Iterator[T] | None = None
        self._async: AsyncIterator[T] | None = None
        if isinstance(iterable, AsyncIterable):
            self._async = aiter(iterable)
        elif isinstance(iterable, Iterable):
            self._sync = iter(iterable)
        else:
            raise TypeError(
                f"SourceFromIterable needs an iterable or async iterable, got {iterable!r} "
                f"({type_name(iterable)})"
            )
        self._busy = False
        self._turn = trio.lowlevel.ParkingLot()  # tasks waiting to produce, while one does
        self._queued = 0  # how many
        self._ended = False
        self._failure: BaseException | None = None
        self.produced = 0

    @property
    def can_produce_nowait(self) -> bool:
        """Whether :meth:`produce_nowait` works (the iterable is synchronous)."""
        return self._sync is not None

    @property
    def failure(self) -> BaseException | None:
        """The error the iterable raised, if it ended with one."""
        return self._failure

    def _is_exhausted(self) -> bool:
        return self._ended

    def _end(self, failure: BaseException | None) -> None:
        self._ended = True
        if failure is not None and self._failure is None:
            self._failure = failure
        self._notify()

    def _check_can_produce(self) -> None:
        if self._receive_closed:
            raise trio.ClosedResourceError("this source was closed")
        if self._ended:
            if self._failure is not None:
                raise self._failure
            raise trio.EndOfChannel

    def produce_nowait(self) -> T:
        """Advance a synchronous iterable by one step.

        Raises:
            trio.WouldBlock: the iterable is asynchronous (use :meth:`produce`).
            trio.EndOfChannel: the iterable is exhausted.
        """
        self._check_can_produce()
        if self._sync is None:
            raise trio.WouldBlock
        try:
            item = next(self._sync)
        except StopIteration:
            self._end(None)
            raise trio.EndOfChannel from None
        except BaseException as exc:  # KeyboardInterrupt too: a generator that raised is over
            self._end(exc)
            raise
        self.produced += 1
        return item

    async def produce(self) -> T:
        """Advance the iterable by one step and return the item.

        Raises:
            trio.EndOfChannel: the iterable is exhausted.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        item = self.produce_nowait() if self._sync is not None else await self.advance()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return item

    async def advance(self) -> T:
        """:meth:`produce` without its own checkpoint (runners use it: they checkpoint anyway).

        It waits only if another task is producing, or if the iterable itself waits. Production
        is serialised: one ``__anext__`` at a time.
        """
        if self._sync is not None:
            return self.produce_nowait()
        while self._busy:
            self._queued += 1
            try:
                await self._turn.park()
            finally:
                self._queued -= 1
        if self._receive_closed or self._ended:
            self._check_can_produce()  # raises
        assert self._async is not None
        self._busy = True
        try:
            item = await anext(self._async)
        except StopAsyncIteration:
            self._end(None)
            raise trio.EndOfChannel from None
        except trio.Cancelled:
            self._end(
                RuntimeError("the iterable was interrupted by cancellation while producing an item")
            )
            raise
        except BaseException as exc:  # KeyboardInterrupt too: a generator that raised is over
            self._end(exc)
            raise
        finally:
            self._busy = False
            if self._queued:  # counted here: cheaper than asking the ParkingLot (a call)
                self._turn.unpark()
        self.produced += 1
        return item

    def _on_receive_closed(self) -> None:
        self._ended = True
        if self._sync is not None:
            close = getattr(self._sync, "close", None)
            if close is not None:
                close()

    async def aclose(self) -> None:
        """Close the source and the underlying (async) generator."""
        self.close()
        closer = getattr(self._async, "aclose", None)
        if closer is not None:
            await closer()
        else:
            await trio.lowlevel.checkpoint()


class ChannelSource(PeekableSource[T]):
    """Adapts a foreign ``trio.abc.ReceiveChannel``: a feeder task keeps ``lookahead`` items ready.

    Runners start :meth:`run_feeder` in their own nursery, so the channel is received from without
    holding any capacity, and the items are then peeked and taken like any other source.
    """

    def __init__(self, channel: trio.abc.ReceiveChannel[T], lookahead: int = 1) -> None:
        super().__init__()
        if lookahead < 1:
            raise ValueError("lookahead must be >= 1")
        self.lookahead = lookahead
        self._channel = channel
        self._ready: deque[T] = deque()
        self._space = trio.lowlevel.ParkingLot()
        self._ended = False
        self._failure: BaseException | None = None

    @property
    def failure(self) -> BaseException | None:
        """The error the channel raised, once the items received before it are taken."""
        return self._failure if not self._ready else None

    def _peek(self) -> T | Nothing:
        return self._ready[0] if self._ready else NOTHING

    def _take(self) -> T:
        item = self._ready.popleft()
        self._space.unpark()
        return item

    def _is_exhausted(self) -> bool:
        return self._ended and not self._ready

    def _stopped(self) -> bool:
        return self._receive_closed or self._ended

    async def run_feeder(self) -> None:
        """Receive from the channel into the look-ahead buffer until the channel ends."""
        failure: BaseException | None = None
        try:
            while not self._stopped():
                while len(self._ready) >= self.lookahead:
                    await self._space.park()
                    if self._stopped():
                        return
                try:
                    item = await self._channel.receive()
                except trio.EndOfChannel:
                    return
                self._ready.append(item)
                self._notify()
        except Exception as exc:
            failure = exc
        finally:
            self._ended = True
            if failure is not None:
                self._failure = failure
            self._notify()

    def _on_receive_closed(self) -> None:
        self._ready.clear()
        self._space.unpark_all()

    async def aclose(self) -> None:
        """Close this adapter and the channel it reads."""
        self.close()
        await self._channel.aclose()


class _ProducerChannel(trio.abc.ReceiveChannel[T]):
    """A :class:`SourceFromIterable` read as a channel (each receive produces one item)."""

    def __init__(self, source: SourceFromIterable[T]) -> None:
        self._source = source

    async def receive(self) -> T:
        return await self._source.produce()

    async def aclose(self) -> None:
        await self._source.aclose()


def read_ahead(source: SourceFromIterable[T]) -> ChannelSource[T]:
    """A peekable source over ``source`` that reads one item ahead (a feeder task produces it).

    Runners that price each task by its own cost need to see a task before they admit it; a
    lazy source's items exist only once capacity is held. The item read ahead waits without
    holding any capacity.
    """
    return ChannelSource(_ProducerChannel(source))


def as_task_source(source: object) -> PeekableSource[Any]:
    """Turn anything runners accept into a :class:`PeekableSource`.

    * sluiceway sources are used as they are (a :class:`PushPullBuffer` means its ``source``);
    * any other ``trio.abc.ReceiveChannel`` gets a feeder with one item of look-ahead;
    * a sequence (a list or tuple of tasks) becomes a one-shot :class:`SourceBuffer`: its items
      exist already, so nothing is gained by advancing it lazily, and its end is known without
      asking for capacity (which matters under a quota);
    * any other iterable or async iterable becomes a lazy :class:`SourceFromIterable`.
    """
    if isinstance(source, PeekableSource):
        return source
    if isinstance(source, PushPullBuffer):
        return cast(PeekableSource[Any], source.source)
    if isinstance(source, trio.abc.ReceiveChannel):
        return ChannelSource(source)
    if isinstance(source, Sequence) and not isinstance(source, str | bytes | bytearray):
        return SourceBuffer(source)
    if isinstance(source, AsyncIterable | Iterable) and not isinstance(
        source, str | bytes | bytearray
    ):
        return SourceFromIterable(source)
    raise TypeError(
        f"{source!r} ({type_name(source)}) is not a task source: pass a sluiceway source, a "
        "trio ReceiveChannel, or a (sync or async) iterable of tasks"
    )
