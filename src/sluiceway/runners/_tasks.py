"""Task shapes: what a source yields and how a runner calls it."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Awaitable, Callable, Hashable
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar

import attrs

from .._util import aclose_after, type_name

if TYPE_CHECKING:
    from ._engine import Emitter

I = TypeVar("I")  # noqa: E741 - intermediate values, as in the original's generics
O = TypeVar("O")  # noqa: E741 - final value
T = TypeVar("T")
P = ParamSpec("P")


@attrs.frozen
class Final(Generic[T]):
    """Marks the final value of a stream.

    Python async generators cannot ``return`` a value, so a streaming task or a combined source
    yields ``Final(value)`` as its last item instead. A hand-written async iterator may also raise
    ``StopAsyncIteration(value)``.
    """

    value: T


class TaskFunction(Protocol[I, O]):
    """``async def task(emit) -> result``: the shape of every task a runner calls.

    ``await emit(value)`` streams ``value`` as an ``INTERMEDIATE`` envelope; the return value
    becomes the ``FINAL`` envelope. A task may instead return an async iterator: each item is
    emitted, and a last ``Final(value)`` item (if any) becomes the final value.
    """

    def __call__(self, emit: Emitter[I], /) -> Awaitable[O] | AsyncIterable[I | Final[O]]: ...


@attrs.frozen
class TaskSpec(Generic[I, O]):
    """A task with an identity and options: what to call, a ``key`` and an optional timeout.

    Sources may yield bare task functions or ``TaskSpec`` objects. ``key`` travels in every
    envelope of the task and can be passed to ``runner.cancel(key=...)``; ``timeout`` (seconds)
    overrides the runner's per-task timeout.
    """

    fn: TaskFunction[I, O]
    key: Hashable | None = None
    timeout: float | None = None

    def __attrs_post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"TaskSpec.fn must be callable, got {self.fn!r} ({type_name(self.fn)})")
        if self.timeout is not None and (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, int | float)
            or not self.timeout > 0
        ):
            raise ValueError(f"TaskSpec.timeout must be a positive number, got {self.timeout!r}")


def oneshot(
    fn: Callable[P, Awaitable[O]], /, *args: P.args, **kwargs: P.kwargs
) -> TaskFunction[Any, O]:
    """Wrap a plain coroutine function as a task: ``oneshot(fetch, url)``.

    The result of ``await fn(*args, **kwargs)`` becomes the task's final value.
    """
    if not callable(fn):
        raise TypeError(f"oneshot() needs a callable, got {fn!r} ({type_name(fn)})")

    async def task(emit: Emitter[Any]) -> O:
        return await fn(*args, **kwargs)

    task.__qualname__ = f"oneshot({getattr(fn, '__qualname__', repr(fn))})"
    return task


def streaming(
    fn: Callable[P, AsyncIterable[I | Final[O]]], /, *args: P.args, **kwargs: P.kwargs
) -> TaskFunction[I, O | None]:
    """Wrap an async generator function as a streaming task: ``streaming(child.start)``.

    Each item it yields is emitted as an ``INTERMEDIATE`` envelope; a last ``Final(value)`` item
    becomes the final value (``None`` without one).
    """
    if not callable(fn):
        raise TypeError(f"streaming() needs a callable, got {fn!r} ({type_name(fn)})")

    def task(emit: Emitter[I]) -> AsyncIterable[I | Final[O]]:
        return fn(*args, **kwargs)

    task.__qualname__ = f"streaming({getattr(fn, '__qualname__', repr(fn))})"
    return task  # type: ignore[return-value]


async def call_task(fn: object, emit: Emitter[Any]) -> Any:
    """Call a task function and drive what it returns to its final value."""
    if not callable(fn):
        raise TypeError(
            f"a task must be callable as task(emit), got {fn!r} ({type_name(fn)}); wrap plain "
            "values or coroutine functions with sluiceway.oneshot()"
        )
    return await finish(fn, fn(emit), emit)


async def finish(fn: object, result: object, emit: Emitter[Any]) -> Any:
    """Drive what a task function returned (an awaitable or an async iterator) to its value."""
    if type(result) is CoroutineType or inspect.isawaitable(result):
        return await result
    if hasattr(result, "__anext__"):
        return await drive_stream(result, emit)
    if hasattr(result, "__aiter__"):
        return await drive_stream(aiter(result), emit)
    if inspect.iscoroutinefunction(result):
        raise TypeError(
            f"task {fn!r} returned the coroutine function {result!r} instead of calling it"
        )
    raise TypeError(
        f"task {fn!r} returned {result!r} ({type_name(result)}); a task must return an "
        "awaitable or an async iterator (did you pass a sync function?)"
    )


async def drive_stream(iterator: Any, emit: Emitter[Any]) -> Any:
    """Emit every item of an async iterator until it ends; return its final value.

    The final value is the value of a ``Final`` item (pulling stops there and the iterator is
    closed, as :class:`~sluiceway.AsyncIteratorCombiner` does) or of ``StopAsyncIteration``;
    ``None`` without either.
    """
    closer = getattr(iterator, "aclose", None)
    try:
        while True:
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration as stop:
                return stop.args[0] if stop.args else None
            if isinstance(item, Final):
                break
            await emit(item)
    except BaseException as error:
        if closer is not None:
            await aclose_after(closer, error)
        raise
    if closer is not None:
        await closer()
    return item.value
