"""The bounded envelope channel between a run's workers and its consumer."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from .._errors import RunParked
from .._util import WaitQueue, wait_until_ready
from ._envelopes import TaskEnvelope


class EnvelopeChannel(trio.abc.ReceiveChannel[TaskEnvelope[Any, Any]]):
    """The receive side a runner hands its consumer: ``async for envelope in channel``.

    It holds up to ``buffer_size`` envelopes. Once it is full the run starts no new task until the
    consumer has drained it to half (hysteresis, so a slow consumer and fast tasks do not
    ping-pong one envelope at a time), and a task's ``await emit(...)`` waits for room; a task that
    finishes still deposits its one final envelope (so capacity is never held waiting for the
    consumer), which means at most ``buffer_size`` plus the number of running tasks are ever
    buffered.

    When the run ends the channel ends (``EndOfChannel``), or, if the source failed, raises the
    source's error after the last envelope. A run whose tasks parked ends by raising
    :class:`~sluiceway.RunParked` (with the parked tasks' ``keys``) after the last envelope;
    unlike an error, it is not raised from the ``run_tasks()`` block when the consumer leaves
    before reaching it.

    A consumer that can take envelopes in groups iterates :meth:`batches` instead: each batch is
    everything buffered at that moment (up to a bound), for one schedule point per batch rather
    than one per envelope.
    """

    def __init__(self, buffer_size: int, on_space: Callable[[], None]) -> None:
        self._items: deque[TaskEnvelope[Any, Any]] = deque()
        self._limit = buffer_size
        self._low_water = buffer_size // 2
        #: Whether the run must start nothing new: the buffer filled up and has not yet been
        #: drained to half, or the consumer closed the channel. An attribute, not a property:
        #: the run reads it for every task it admits.
        self.blocked = False
        self._on_space = on_space
        self._receivers = WaitQueue()
        self._senders = WaitQueue()
        self._ended = False
        self._error: BaseException | None = None
        self._error_delivered = False
        self._closed = False
        self._closed_reason = "this envelope channel was closed"
        self.peak = 0

    @property
    def full(self) -> bool:
        """Whether the buffer is at (or over) its bound."""
        return len(self._items) >= self._limit

    @property
    def closed(self) -> bool:
        """Whether the consumer closed the channel."""
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    # -- producer side (the run) -------------------------------------------------------------

    def put(self, envelope: TaskEnvelope[Any, Any]) -> None:
        """Deposit an envelope without waiting (final envelopes; see the class docstring)."""
        if self._closed:
            return
        items = self._items
        items.append(envelope)
        size = len(items)
        if size >= self._limit:
            self.blocked = True
        if size > self.peak:  # noqa: PLR1730 - cheaper than max() on this path
            self.peak = size
        if self._receivers.tasks:
            self._receivers.wake_one()

    async def put_wait(self, envelope: TaskEnvelope[Any, Any]) -> None:
        """Deposit an envelope, first waiting while the buffer is full."""
        await wait_until_ready(lambda: self._put_if_room(envelope), self._senders.park)

    def _put_if_room(self, envelope: TaskEnvelope[Any, Any]) -> None:
        if not self._closed and len(self._items) >= self._limit:
            raise trio.WouldBlock
        self.put(envelope)

    def end(self, error: BaseException | None = None) -> None:
        """No more envelopes; ``error`` (if any) is raised to the consumer after the last one."""
        self._ended = True
        self._error = error
        self._receivers.wake_all()

    def undelivered_error(self) -> BaseException | None:
        """The ending error if the consumer has not received it yet (never ``RunParked``: a
        consumer that left early has no use for it)."""
        error = self._error
        if error is not None and not self._error_delivered and not isinstance(error, RunParked):
            return error
        return None

    # -- ReceiveChannel ----------------------------------------------------------------------

    def receive_nowait(self) -> TaskEnvelope[Any, Any]:
        """Take the next envelope now, or raise ``WouldBlock``/``EndOfChannel``/the error."""
        if self._closed:
            raise trio.ClosedResourceError(self._closed_reason)
        items = self._items
        if items:
            envelope = items.popleft()
            if self._senders.tasks and len(items) < self._limit:
                self._senders.wake_all()
            if self.blocked and len(items) <= self._low_water:
                self.blocked = False
                self._on_space()
            return envelope
        if self._ended:
            error = self._error
            if error is not None:
                self._error_delivered = True
                if type(error) is RunParked:
                    # A new one at each receive: it is a signal, raised afresh each time.
                    raise RunParked(str(error), keys=error.keys)
                raise error
            raise trio.EndOfChannel
        raise trio.WouldBlock

    def receive_batch_nowait(self, max_size: int) -> list[TaskEnvelope[Any, Any]]:
        """Take up to ``max_size`` buffered envelopes now (at least one), or raise
        ``WouldBlock``/``EndOfChannel``/the error exactly as :meth:`receive_nowait` does."""
        if self._closed:
            raise trio.ClosedResourceError(self._closed_reason)
        items = self._items
        if not items:
            return [self.receive_nowait()]  # raises: WouldBlock, EndOfChannel or the error
        if len(items) <= max_size:
            batch = list(items)
            items.clear()
        else:
            popleft = items.popleft
            batch = [popleft() for _ in range(max_size)]
        # The same bookkeeping as receive_nowait, once for the whole batch.
        if self._senders.tasks and len(items) < self._limit:
            self._senders.wake_all()
        if self.blocked and len(items) <= self._low_water:
            self.blocked = False
            self._on_space()
        return batch

    def batches(self, max_size: int = 256) -> AsyncIterator[list[TaskEnvelope[Any, Any]]]:
        """Iterate over the envelopes in batches: ``async for batch in envelopes.batches():``.

        Each batch is a non-empty list of the envelopes buffered when it is taken, oldest first,
        at most ``max_size`` of them; when none is buffered the iteration waits for the next
        one. It takes one schedule point per batch (per envelope, ``async for`` over the
        channel takes one each), so a consumer that handles envelopes in groups lets the run's
        tasks go on with far fewer task switches.

        Everything else is as for per-envelope iteration, which it may be mixed with (both
        take from the same buffer, in order): backpressure is the same (the buffer is drained
        by what the batches take), the iteration ends when the run is over, and a source's
        error (or :class:`~sluiceway.RunParked`) is raised from it after the last batch.

        Raises:
            ValueError: ``max_size`` is not an int of at least 1.
        """
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be an int >= 1, got {max_size!r}")
        return _Batches(self, max_size)

    async def receive(self) -> TaskEnvelope[Any, Any]:
        """The next envelope, in completion order; ``EndOfChannel`` when the run is over."""
        return await wait_until_ready(self.receive_nowait, self._receivers.park)

    async def __anext__(self) -> TaskEnvelope[Any, Any]:
        # ``async for`` is the common way to consume, once per envelope: the wait idiom is
        # inlined here (no helper coroutine, no bound methods) because this is the hottest path.
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            try:
                envelope = self.receive_nowait()
            except trio.WouldBlock:
                return await wait_until_ready(self.receive_nowait, self._receivers.park)
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        await trio.lowlevel.cancel_shielded_checkpoint()
        return envelope

    def close(self, reason: str | None = None) -> None:
        """Stop consuming: buffered envelopes are dropped and the run starts no new task."""
        if self._closed:
            return
        if reason is not None:
            self._closed_reason = reason
        self._closed = True
        self.blocked = True  # for good
        self._items.clear()
        self._senders.wake_all()
        self._receivers.wake_all()
        self._on_space()

    async def aclose(self) -> None:
        """See :meth:`close`; always checkpoints."""
        self.close()
        await trio.lowlevel.checkpoint()


class _Batches:
    """The iterator :meth:`EnvelopeChannel.batches` returns (a class rather than an async
    generator: nothing to finalize when the consumer leaves the loop early)."""

    __slots__ = ("_channel", "_max_size")

    def __init__(self, channel: EnvelopeChannel, max_size: int) -> None:
        self._channel = channel
        self._max_size = max_size

    def __aiter__(self) -> _Batches:
        return self

    async def __anext__(self) -> list[TaskEnvelope[Any, Any]]:
        channel = self._channel
        max_size = self._max_size
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            try:
                batch = channel.receive_batch_nowait(max_size)
            except trio.WouldBlock:
                # Parking is this batch's schedule point; once woken, whatever was deposited
                # meanwhile goes into the batch.
                return await wait_until_ready(
                    lambda: channel.receive_batch_nowait(max_size), channel._receivers.park
                )
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        await trio.lowlevel.cancel_shielded_checkpoint()
        return batch
