"""Parked tasks: how a run recognises them and the ``RunParked`` it ends with.

A task *parks* by raising :class:`~sluiceway.RunParked` (its entity's run waits durably and will
continue later, elsewhere). The run reports nothing for it: no ``FINAL``, no ``ERROR``, no
callback, no retry. Its capacity is released as for any finished task, and its key is kept. Once
nothing else can happen in the run, the envelope channel raises a new ``RunParked`` carrying the
keys of every parked task, after the envelopes deposited before (see ``Run._maybe_finish``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import trio

from .._errors import RunParked


def is_parked(error: BaseException) -> bool:
    """Whether a task that raised ``error`` parked: ``RunParked`` (or a subclass), or a group
    of them (a task whose own nursery had a child park), possibly with ``Cancelled`` beside
    them (its other children, cancelled meanwhile).

    Dropping those ``Cancelled`` is safe: trio's cancellation is level-triggered, so whoever
    was cancelling gets ``Cancelled`` again at the task's next checkpoint.
    """
    if isinstance(error, RunParked):
        return True
    if not isinstance(error, BaseExceptionGroup):
        return False
    parked = False
    stack: list[BaseException] = list(error.exceptions)
    while stack:
        inner = stack.pop()
        if isinstance(inner, BaseExceptionGroup):
            stack.extend(inner.exceptions)
        elif isinstance(inner, RunParked):
            parked = True
        elif not isinstance(inner, trio.Cancelled):
            return False
    return parked


def parked_error(runner: str, keys: Sequence[Hashable | None]) -> RunParked:
    """The ``RunParked`` a run ends with once its ``keys`` parked and nothing else can happen."""
    count = len(keys)
    tasks = "1 task" if count == 1 else f"{count} tasks"
    shown = ", ".join(repr(key) for key in keys[:5]) + (", ..." if count > 5 else "")
    return RunParked(
        f"{tasks} of runner {runner!r} parked (keys: {shown}); their work continues later",
        keys=tuple(keys),
    )


def note_parked(error: BaseException, runner: str, keys: Sequence[Hashable | None]) -> None:
    """Record on the error a run ends with that some of its tasks had parked as well."""
    error.add_note(f"besides, {parked_error(runner, keys)}")
