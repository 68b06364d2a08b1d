"""Task shapes: what a source yields and how a runner calls it."""

from __future__ import annotations

import inspect
import math
from collections.abc import AsyncIterable, Awaitable, Callable, Hashable, Mapping
from functools import partial
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar

import attrs
import trio

from .._util import aclose_after, type_name
from ..capacity import CostVector, normalize_cost

if TYPE_CHECKING:
    from ._job import Emitter

I = TypeVar("I")  # noqa: E741 - intermediate values, as in the original's generics
O = TypeVar("O")  # noqa: E741 - final value
T = TypeVar("T")
P = ParamSpec("P")


@attrs.frozen
class Final(Generic[T]):
    """Marks the final value of a stream: ``yield Final(value)``.

    Python async generators cannot ``return`` a value, so a streaming task or a combined source
    yields ``Final(value)`` instead; whoever drives the stream stops pulling there and closes it.
    A hand-written async iterator may also raise ``StopAsyncIteration(value)``. For a streaming
    task without either, the final value is the last item it yielded (see
    :class:`~sluiceway.TaskFunction`).
    """

    value: T


class TaskFunction(Protocol[I, O]):
    """``async def task(emit) -> result``: the shape of every task a runner calls.

    ``await emit(value)`` streams ``value`` as an ``INTERMEDIATE`` envelope; the return value
    becomes the ``FINAL`` envelope.

    **Streamed tasks.** A task may instead give an async iterator (an async generator, or any
    async iterable): returned by the function itself (``def task(emit): return gen()``, or an
    async generator function taking ``emit``), or returned by its coroutine (``async def
    task(emit): return entity.start()``, the original's pattern). The runner then drives it:

    * each item it yields is emitted as an ``INTERMEDIATE`` envelope, through ``emit`` (so it
      waits while the envelope buffer is full);
    * the final value is ``value`` of the first ``Final(value)`` item, where pulling stops; else
      the value of ``StopAsyncIteration(value)`` raised by a hand-written iterator; else the
      last item yielded (which was also emitted); ``None`` if it yielded nothing;
    * an error raised by the iterator is the task's error;
    * the iterator is closed (``aclose()``, shielded from cancellation so its ``finally:`` can
      finish) however the task ends: its end, a ``Final``, an error, a timeout or a
      cancellation. An error raised while closing is the task's error too, never one that
      replaces another.
    """

    def __call__(self, emit: Emitter[I], /) -> Awaitable[O] | AsyncIterable[I | Final[O]]: ...


def check_seconds(value: object, what: str, *, positive: bool) -> None:
    """Refuse a timeout or deadline that is not a (positive, for timeouts) finite number."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, got {value!r} ({type_name(value)})")
    if not math.isfinite(value) or (positive and not value > 0):
        kind = "a positive, finite" if positive else "a finite"
        raise ValueError(f"{what} must be {kind} number, got {value!r}")


@attrs.frozen
class TaskSpec(Generic[I, O]):
    """A task with an identity and options: what to call, a ``key``, a timeout or a deadline.

    Sources may yield bare task functions or ``TaskSpec`` objects. ``key`` travels in every
    envelope of the task and can be passed to ``runner.cancel(key=...)``. ``timeout`` (seconds
    from the start) overrides the runner's per-task timeout; ``deadline`` is an absolute trio
    clock time (``trio.current_time()``); the earlier of the two applies.
    """

    fn: TaskFunction[I, O]
    key: Hashable | None = None
    timeout: float | None = None
    deadline: float | None = None

    def __attrs_post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"TaskSpec.fn must be callable, got {self.fn!r} ({type_name(self.fn)})")
        check_seconds(self.timeout, "TaskSpec.timeout", positive=True)
        check_seconds(self.deadline, "TaskSpec.deadline", positive=False)


#: A completion callback: ``on_complete(key, result)``; it may be a coroutine function.
CompleteCallback = Callable[[Any, Any], object]
#: An error callback: ``on_error(key, error)``; it may be a coroutine function.
ErrorCallback = Callable[[Any, BaseException], object]


@attrs.frozen(eq=False)
class ScheduledTask(Generic[I, O]):
    """A task for :class:`~sluiceway.ScheduledTaskPoolRunner`: a key, what to run, what it costs.

    Args:
        key: the task's identity (its node's key in a dependency source); in every envelope.
        runner: the task function, ``async def task(emit) -> result`` (see
            :class:`~sluiceway.TaskFunction`); as in the original, it may also return an async
            iterator, directly or from its coroutine (a streamed task).
        cost: the resources it holds while it runs, e.g. ``{"memory_gb": 4, "cpu": 2}``. Without
            one, the runner's ``default_cost`` applies (there is no silent default: a task with
            neither is reported as an error).
        on_complete: ``on_complete(key, result)``, called (and awaited, if it returns an
            awaitable) once the task succeeded (its capacity is already released) and *before*
            its node completes: what the callback records is there before any dependent
            starts. Its dependents become ready when it returns, before the consumer sees the
            ``FINAL`` envelope.
        on_error: ``on_error(key, error)``, called when an attempt that ran ends in an error
            that is not retried: its last failure, a timeout, a cancellation or an abort while
            running. It runs before the consumer sees the ``ERROR`` envelope (in a dependency
            graph, after the node and its dependents were aborted). A task reported without
            ever running (aborted while waiting, shut out by a shutdown, rejected for its
            cost) gets no callback.
        timeout: seconds from the start of each attempt; ``deadline``: an absolute trio time.
        retry: overrides the runner's :class:`~sluiceway.RetryPolicy` for this task.

    An exception raised by a callback is not swallowed: the task is reported as ``ERROR`` with
    that exception (the ``FINAL`` value, if any, stays in the envelope's ``value``). When
    ``on_complete`` raises, the task is not retried (it did succeed) and in a dependency graph
    its node and every dependent are aborted, since the dependents may rely on what the
    callback failed to do; ``on_error`` is not called for it.
    """

    key: Hashable
    runner: TaskFunction[I, O]
    cost: Mapping[str, float] | None = None
    on_complete: CompleteCallback | None = None
    on_error: ErrorCallback | None = None
    timeout: float | None = None
    deadline: float | None = None
    retry: RetryPolicy | None = None
    #: The cost, validated and normalised once (exact amounts; zero entries dropped).
    normalized_cost: CostVector | None = attrs.field(init=False, default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.cost is not None:
            normalised = normalize_cost(self.cost, what=f"ScheduledTask {self.key!r} cost")
            if not normalised:
                raise ValueError(
                    f"ScheduledTask {self.key!r}: cost {self.cost!r} uses no resource; a task "
                    "that uses nothing would run unbounded"
                )
            object.__setattr__(self, "normalized_cost", normalised)
        if not callable(self.runner):
            raise TypeError(
                f"ScheduledTask {self.key!r}: runner must be callable, got {self.runner!r}"
            )
        for name in ("on_complete", "on_error"):
            callback = getattr(self, name)
            if callback is not None and not callable(callback):
                raise TypeError(f"ScheduledTask {self.key!r}: {name} must be callable")
        check_seconds(self.timeout, f"ScheduledTask {self.key!r} timeout", positive=True)
        check_seconds(self.deadline, f"ScheduledTask {self.key!r} deadline", positive=False)
        if self.retry is not None and not isinstance(self.retry, RetryPolicy):
            raise TypeError(f"ScheduledTask {self.key!r}: retry must be a RetryPolicy")


def _retry_on(value: object) -> tuple[type[BaseException], ...] | Callable[[BaseException], bool]:
    if isinstance(value, type) and issubclass(value, BaseException):
        return (value,)
    if (
        isinstance(value, tuple)
        and value
        and all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in value)
    ):
        return value
    if callable(value):
        return value
    raise TypeError(
        f"retry_on must be an exception type, a tuple of them, or a predicate, got {value!r}"
    )


@attrs.frozen
class RetryPolicy:
    """When and how often a failed task is tried again.

    An attempt that raises an error matched by ``retry_on`` is retried until ``attempts``
    attempts in total have been made; the wait before attempt ``n + 1`` is
    ``min(backoff * multiplier ** (n - 1), max_backoff)``, spread by ``jitter`` (a fraction:
    ``0.1`` draws the delay uniformly within +-10 %). While it waits the task holds no capacity
    and does not block the tasks behind it: with a dependency source its node is not ready
    until then (and then queues like any ready node); with any other source the run keeps it
    aside and, once due, starts it ahead of the tasks still in the source. Every attempt keeps
    the task's id, and each retry is announced by an ``INTERMEDIATE`` envelope carrying a
    :class:`~sluiceway.RetryScheduled`. Cancellation, aborts and shutdowns are never retried
    (a retry still waiting when the run shuts down is reported with
    :class:`~sluiceway.TaskAbortedError`). After the last attempt the task is reported as
    failed, and in a dependency graph its node and every dependent are aborted.

    The original's documented pattern (3 attempts in total, waiting 100 ms after the first
    failure and 200 ms after the second) is ``RetryPolicy(attempts=3, backoff=0.1)``.
    """

    attempts: int = 3
    backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 60.0
    jitter: float = 0.0
    retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool] = attrs.field(
        default=(Exception,), converter=_retry_on
    )

    def __attrs_post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"attempts must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(
                f"attempts must be >= 1 (the first attempt counts), got {self.attempts}"
            )
        for name in ("backoff", "multiplier", "max_backoff", "jitter"):
            check_seconds(getattr(self, name), name, positive=False)
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.jitter > 1:
            raise ValueError(f"jitter is a fraction of the delay, at most 1, got {self.jitter}")

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1-based), which raised ``error``, is retried."""
        if attempt >= self.attempts:
            return False
        retry_on = self.retry_on
        if isinstance(retry_on, tuple):
            return isinstance(error, retry_on)
        return bool(retry_on(error))

    def delay(self, attempt: int, random_value: float = 0.5) -> float:
        """Seconds to wait after failed attempt ``attempt``; ``random_value`` in [0, 1) drives the
        jitter (0.5 gives the undisturbed delay)."""
        base = min(self.backoff * self.multiplier ** (attempt - 1), self.max_backoff)
        return max(0.0, base * (1 + self.jitter * (2 * random_value - 1)))


@attrs.frozen
class RetryScheduled:
    """The value of the ``INTERMEDIATE`` envelope a runner emits when an attempt will be retried.

    ``attempt`` is the attempt that failed (1-based), ``error`` why, ``retry_at`` the trio time
    from which the next attempt may start.
    """

    attempt: int
    error: BaseException
    retry_at: float


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

    Each item it yields is emitted as an ``INTERMEDIATE`` envelope; a ``Final(value)`` item
    ends it with that final value, otherwise the last item yielded is the final value (``None``
    if there was none). See :class:`~sluiceway.TaskFunction` for the whole rule.
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
    """Drive what a task function returned to its final value: await an awaitable (and stream
    the async iterator it may return), or stream an async iterator."""
    if type(result) is CoroutineType or inspect.isawaitable(result):
        return await streamed(fn, await result, emit)
    iterator = async_iterator(fn, result)
    if iterator is not None:
        return await drive_stream(iterator, emit)
    if inspect.iscoroutinefunction(result):
        raise TypeError(
            f"task {fn!r} returned the coroutine function {result!r} instead of calling it"
        )
    raise TypeError(
        f"task {fn!r} returned {result!r} ({type_name(result)}); a task must return an "
        "awaitable or an async iterator (did you pass a sync function?)"
    )


#: For each type a task's coroutine returned, whether its values are async iterators or
#: iterables (then the runner streams them, ``return entity.start()``). Asked for every task
#: that returns a value, and two failing ``hasattr`` on a type cost more than the rest of
#: reporting the task, so the answer is kept per type. Bounded, for programs that make classes
#: on the fly. (A class given ``__aiter__`` after its first value was returned is not seen.)
STREAM_TYPES: dict[type, bool] = {}
_STREAM_TYPES_MAX = 1024


def is_stream_type(kind: type) -> bool:
    """Whether values of ``kind`` are async iterators or async iterables (see STREAM_TYPES)."""
    streams = STREAM_TYPES.get(kind)
    if streams is None:
        streams = hasattr(kind, "__aiter__") or hasattr(kind, "__anext__")
        if len(STREAM_TYPES) >= _STREAM_TYPES_MAX:
            STREAM_TYPES.clear()
        STREAM_TYPES[kind] = streams
    return streams


def async_iterator(fn: object, value: Any) -> Any:
    """The async iterator to drive for ``value`` if it is one (or an async iterable), else
    ``None``. The protocol is looked up on the type, as ``async for`` does."""
    kind = type(value)
    if hasattr(kind, "__anext__"):
        return value
    if hasattr(kind, "__aiter__"):
        iterator = aiter(value)
        if not hasattr(type(iterator), "__anext__"):
            raise TypeError(
                f"task {fn!r} gave {value!r}, whose __aiter__() returned {iterator!r} "
                f"({type_name(iterator)}), which is not an async iterator"
            )
        return iterator
    return None


async def streamed(fn: object, value: Any, emit: Emitter[Any]) -> Any:
    """The final value of a task ``fn`` whose coroutine returned ``value``: ``value`` itself,
    or, if it is an async iterator (``return entity.start()``), what driving it gives."""
    if not is_stream_type(type(value)):
        return value
    iterator = async_iterator(fn, value)
    if iterator is None:
        return value
    return await drive_stream(iterator, emit)


async def drive_stream(iterator: Any, emit: Emitter[Any]) -> Any:
    """Emit every item of an async iterator until it ends; return its final value.

    The final value is the value of the first ``Final`` item (pulling stops there, as
    :class:`~sluiceway.AsyncIteratorCombiner` does), else of ``StopAsyncIteration(value)``,
    else the last item yielded (``None`` if none). The iterator is closed however this ends,
    shielded from cancellation (DESIGN rule 2: it is closed here, by its one consumer); a
    failure to close is raised, alongside the error that ended the stream if there was one.
    """
    closer = getattr(iterator, "aclose", None)
    if not callable(closer):
        closer = None
    last: Any = None
    try:
        while True:
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration as stop:
                value = stop.args[0] if stop.args else last
                break
            if isinstance(item, Final):
                value = item.value
                break
            await emit(item)
            last = item
    except BaseException as error:
        if closer is not None:
            # Never lets a Cancelled (or the close's own failure) replace ``error`` (rule 4).
            await aclose_after(partial(aclose_shielded, closer), error)
        raise
    if closer is not None:
        await aclose_shielded(closer)
    return value


async def aclose_shielded(closer: Callable[[], Awaitable[object]]) -> None:
    """``aclose()`` an async iterator, shielded from cancellation so its ``finally:`` cleanup
    can finish (it must not block forever). A ``GeneratorExit`` that a nursery inside an async
    generator wrapped in a group is dropped: it is how the generator was closed."""
    with trio.CancelScope(shield=True):
        try:
            await closer()
        except BaseExceptionGroup as group:
            _, rest = group.split(GeneratorExit)
            if rest is not None:
                raise rest from None
