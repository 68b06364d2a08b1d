"""Small internal helpers shared by every layer."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final, NoReturn, TypeVar

import trio

T = TypeVar("T")


class _Nothing(enum.Enum):
    NOTHING = "NOTHING"

    def __repr__(self) -> str:
        return "NOTHING"

    def __bool__(self) -> bool:
        return False


#: Returned by ``peek()`` when no item is available right now. A private sentinel rather than
#: ``None`` so that ``None`` can be a legitimate item.
NOTHING: Final = _Nothing.NOTHING
Nothing = _Nothing


def raise_saving_context(exc: BaseException) -> NoReturn:
    """Re-raise ``exc`` keeping its own ``__context__`` (not the group it came out of)."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


def raise_single(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise the one meaningful exception of a nursery's group, or the group itself.

    * ``KeyboardInterrupt``/``SystemExit`` anywhere wins, chained to the group.
    * Exactly one non-``Cancelled`` leaf: raise it bare (DESIGN rule 4: never a one-member group).
    * Only ``Cancelled``: raise the first one, so the enclosing cancel scope can catch it.
    * Several real errors: raise the group unchanged, so none is lost.
    """
    leaves: list[BaseException] = []
    _flatten(group, leaves)
    for exc in leaves:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise type(exc)(*exc.args) from group
    real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    if len(real) == 1:
        raise_saving_context(real[0])
    if not real:
        raise_saving_context(leaves[0])
    raise group


def _flatten(exc: BaseException, into: list[BaseException]) -> None:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            _flatten(inner, into)
    else:
        into.append(exc)


async def aclose_after(close: Callable[[], Awaitable[object]], error: BaseException | None) -> None:
    """Await ``close()`` while ``error`` (if any) propagates, never letting it replace ``error``.

    DESIGN rule 4's trap: an ``await`` on an error path is a checkpoint, and a ``Cancelled`` raised
    there would replace the real error. Here, if ``close()`` raises while ``error`` propagates,
    ``error`` is raised instead of a ``Cancelled`` (the cancellation is delivered again at the next
    checkpoint), and together with a real close error in a group, so neither is lost. If
    ``close()`` succeeds this returns and the caller re-raises ``error`` itself.
    """
    if error is None:
        await close()
        return
    try:
        await close()
    except BaseException as close_error:
        raise_single(
            BaseExceptionGroup(
                "closing failed while another error propagated", [error, close_error]
            )
        )


@asynccontextmanager
async def open_owned_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery whose single error escapes bare instead of as a one-member group."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        raise_single(group)


class WaitQueue:
    """Tasks parked until another task wakes them (a lean ``ParkingLot``).

    Hot paths may test ``queue.tasks`` directly; a cancelled task leaves the queue by itself.
    """

    __slots__ = ("tasks",)

    def __init__(self) -> None:
        self.tasks: deque[trio.lowlevel.Task] = deque()

    def __len__(self) -> int:
        return len(self.tasks)

    async def park(self) -> None:
        """Block the current task until :meth:`wake_one` or :meth:`wake_all` picks it."""
        task = trio.lowlevel.current_task()
        self.tasks.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            if task in self.tasks:
                self.tasks.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def wake_one(self, *, newest: bool = False) -> bool:
        """Wake the task parked longest (or most recently, with ``newest``); False if none."""
        if not self.tasks:
            return False
        trio.lowlevel.reschedule(self.tasks.pop() if newest else self.tasks.popleft())
        return True

    def wake_all(self) -> int:
        """Wake every parked task; returns how many."""
        count = len(self.tasks)
        while self.tasks:
            trio.lowlevel.reschedule(self.tasks.popleft())
        return count


async def wait_until_ready(nowait: Callable[[], T], park: Callable[[], Awaitable[object]]) -> T:
    """trio's idiom for a blocking operation with a ``*_nowait`` twin.

    Checkpoint for cancellation, try ``nowait()``; if it succeeds take a schedule point and return
    its value; if it raises ``trio.WouldBlock``, ``park()`` until woken and retry. Any other
    error from ``nowait()`` propagates.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        value = nowait()
    except trio.WouldBlock:
        pass
    else:
        await trio.lowlevel.cancel_shielded_checkpoint()
        return value
    while True:
        await park()
        try:
            return nowait()
        except trio.WouldBlock:
            continue


def type_name(value: object) -> str:
    """A short, readable name of ``value``'s type for error messages."""
    return type(value).__name__
