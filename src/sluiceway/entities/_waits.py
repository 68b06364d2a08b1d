"""The durable waits of a run: sleeps, message waits and the wait for its children, each
surviving a restart (a re-run finds what the earlier runs waited for), parking the run when it
would wait longer than the runtime's ``park_after``."""

from __future__ import annotations

import contextlib
import datetime
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import attrs
import trio

from .._errors import EntityError, RunParked, WaitTimeoutError
from ..store import ParkReason, WaitKind, WaitRecord, WaitState
from ..store._json import check_text
from ._envelope import EnvelopeType, check_finite, check_json

if TYPE_CHECKING:
    from ._entity import RunnableEntity
    from ._executor import Executor
    from ._live import LiveRun


class CapacityHolder(Protocol):
    """Something holding capacity that it can give back while waiting (a runner task's
    :class:`~sluiceway.Emitter`)."""

    def released(self) -> contextlib.AbstractAsyncContextManager[None]: ...


@attrs.frozen
class Message:
    """A message an entity received while waiting: ``message`` (a short label such as
    ``"approved"``), ``data`` (any JSON), when it was sent and its id in the store."""

    message: str
    data: Any
    sent_at: float
    id: int


class DurableWaits:
    """The durable waits of :class:`~sluiceway.RunContext` (a base class of it, which sets
    these attributes up)."""

    runtime: Executor
    entity: RunnableEntity
    _live: LiveRun
    _holder: CapacityHolder | None
    _waits: int
    # What the run parks on, once a wait decided to park (read by the runtime).
    _parking: tuple[ParkReason, float | None] | None

    async def wait_for_children(self) -> None:
        """Wait until no child of this entity is pending (submitted, running or parked):
        the children it started with :meth:`start_child` (or that others started) have all
        ended. Returns at once when none is. While a claim loop runs, the run parks here
        (``parked_on="children"``: :class:`~sluiceway.RunParked` ends it, let it through)
        and the end of the last pending child wakes it; a re-run finds none pending and goes
        on. Without a claim loop, it checks every ``poll_interval``."""
        runtime = self.runtime
        while await runtime.store.pending_children(self.entity.id):
            if runtime.can_park:
                self._park_on(ParkReason.CHILDREN, None)
            async with self._released():
                await trio.sleep(runtime.poll_interval)

    async def sleep(self, seconds: float) -> None:
        """Sleep durably: the deadline (now + ``seconds``, fixed by the first run that gets
        here) survives a restart, so a re-run sleeps only what is left. A sleep shorter than
        the runtime's ``park_after`` is spent in memory, with the runner task's capacity
        given back; a longer one parks: the run ends here (:class:`~sluiceway.RunParked`
        goes up through ``run_impl``: let it) and the entity runs again, replaying, when the
        deadline comes."""
        seconds = check_finite(seconds, "sleep seconds")
        if seconds < 0:
            raise ValueError(f"sleep seconds must be >= 0, got {seconds}")
        await self._timer(lambda now: now + seconds)

    async def sleep_until(self, when: float | datetime.datetime) -> None:
        """Sleep durably until ``when``: a wall-clock timestamp (seconds since the epoch, as
        ``time.time()``, on the runtime's clock) or an aware ``datetime``."""
        if isinstance(when, datetime.datetime):
            if when.tzinfo is None:
                raise ValueError("sleep_until needs an aware datetime (with a tzinfo)")
            deadline = when.timestamp()
        else:
            deadline = check_finite(when, "sleep_until time")
        await self._timer(lambda now: deadline)

    async def _timer(self, deadline_from_now: Any) -> None:
        runtime = self.runtime
        index = self._next_wait()
        now = runtime.clock()
        wait = await runtime.store.begin_wait(
            self.entity.id,
            runtime.owner,
            index,
            WaitKind.TIMER,
            now=now,
            deadline=deadline_from_now(now),
        )
        _check_wait_kind(wait, WaitKind.TIMER, index)
        if wait.state is not WaitState.WAITING:
            return
        assert wait.deadline is not None
        left = wait.deadline - runtime.clock()
        if left > 0:
            if runtime.can_park and left > runtime.park_after:
                self._park_on(ParkReason.TIMER, wait.deadline)
            async with self._released():
                await trio.sleep(left)
        await runtime.store.end_wait(
            self.entity.id, runtime.owner, index, WaitState.ELAPSED, now=runtime.clock()
        )

    def _park_on(self, reason: ParkReason, wake_at: float | None) -> NoReturn:
        """End the run here: it parks until ``wake_at`` or what ``reason`` says comes."""
        self._parking = (reason, wake_at)
        raise RunParked(f"{self.entity.type_name} {self.entity.name!r} parks on {reason.value}")

    async def wait_for_message(
        self,
        prompt: str | None = None,
        data: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - durable: a cancel scope is not
    ) -> Message:
        """Wait durably for a message (``runtime.send_message``) and return it.

        The first time a run gets here, a WAITING envelope (``prompt`` as its message,
        ``data``) is stored and the entity's status becomes WAITING; messages are received
        oldest first. A message sent while no process runs the entity is kept and delivered
        when it runs again; a re-run that gets here again receives the message this wait
        received before, without waiting. The entity gives its runner task's capacity back
        while it waits; once it has waited the runtime's ``park_after`` seconds, it parks:
        the run ends here (:class:`~sluiceway.RunParked`: let it through) and the message, or
        the timeout, wakes it. ``timeout`` (seconds, fixed the first time) still applies
        after a restart.

        Raises:
            WaitTimeoutError: the timeout passed without a message.
            TypeError: the entity's type is not a :class:`~sluiceway.WaitableEntity`.
        """
        if not self.entity.waitable:
            raise TypeError(
                f"{self.entity.type_name} cannot wait for messages: derive it from WaitableEntity"
            )
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a string, got {prompt!r}")
            if prompt:
                check_text(prompt, "a wait's prompt")
        check_json(data, "the data of a wait")
        if timeout is not None:
            timeout = check_finite(timeout, "timeout")
            if timeout < 0:
                raise ValueError(f"timeout must be >= 0, got {timeout}")
        runtime = self.runtime
        store = runtime.store
        index = self._next_wait()
        now = runtime.clock()
        waiting = runtime._envelope(
            self.entity,
            EnvelopeType.WAITING.value,
            message=prompt,
            data=data,
            metadata={"wait": index, **({"timeout": timeout} if timeout is not None else {})},
        )
        wait = await store.begin_wait(
            self.entity.id,
            runtime.owner,
            index,
            WaitKind.MESSAGE,
            now=now,
            prompt=prompt,
            data=data,
            deadline=None if timeout is None else now + timeout,
            envelope=waiting.body(),
        )
        runtime._changed()
        _check_wait_kind(wait, WaitKind.MESSAGE, index)
        fresh = wait.state is WaitState.WAITING
        if fresh:
            wait = await store.take_message(
                self.entity.id, runtime.owner, index, now=runtime.clock()
            )
        if wait.state is WaitState.WAITING:
            async with self._released():
                wait = await self._await_message(index, wait)
        if wait.state is WaitState.TIMED_OUT:
            raise WaitTimeoutError(
                f"{self.entity.type_name} {self.entity.name!r} got no message for wait "
                f"{index} ({prompt!r}) before its timeout"
            )
        message = wait.message
        assert message is not None
        if fresh:
            received = runtime._envelope(
                self.entity,
                EnvelopeType.MESSAGE.value,
                message=message.message,
                data=message.data,
                metadata={"wait": index, "message_id": message.id},
            )
            await runtime._append(self.entity, [received])
        return Message(message.message, message.data, message.sent_at, message.id)

    async def _await_message(self, index: int, wait: WaitRecord) -> WaitRecord:
        """Poll the store for a message (woken at once by ``send_message`` in this runtime)
        until one arrives or the wait's deadline passes; park once it has waited
        ``park_after`` seconds (if parking is on), counted from when the wait began, in
        whichever run: a run that starts again (after a crash) and finds the wait long begun
        parks at once, rather than holding its lease for another ``park_after``."""
        runtime = self.runtime
        store = runtime.store
        while wait.state is WaitState.WAITING:
            wakeup = self._live.wakeup
            now = runtime.clock()
            if wait.deadline is not None and now >= wait.deadline:
                return await store.end_wait(
                    self.entity.id, runtime.owner, index, WaitState.TIMED_OUT, now=now
                )
            pause = runtime.poll_interval
            if wait.deadline is not None:
                pause = min(pause, wait.deadline - now)
            if runtime.can_park:
                left = runtime.park_after - (now - wait.created_at)
                if left <= 0:
                    self._park_on(ParkReason.MESSAGE, wait.deadline)
                pause = min(pause, left)
            with trio.move_on_after(max(pause, 0)):
                await wakeup.wait()
            wait = await store.take_message(
                self.entity.id, runtime.owner, index, now=runtime.clock()
            )
        return wait

    def _next_wait(self) -> int:
        self._waits += 1
        return self._waits

    def _released(self) -> contextlib.AbstractAsyncContextManager[None]:
        if self._holder is None:
            return contextlib.nullcontext()
        return self._holder.released()


def _check_wait_kind(wait: WaitRecord, kind: WaitKind, index: int) -> None:
    if wait.kind is not kind:
        raise EntityError(
            f"wait {index} of this entity was a {wait.kind.value} wait in an earlier run and is "
            f"a {kind.value} wait now: run_impl must make the same waits in the same order "
            "every time it runs"
        )
