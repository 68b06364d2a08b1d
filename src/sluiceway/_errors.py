"""Exceptions raised by sluiceway.

Errors that are specific to sluiceway (capacity accounting, what happened to a task) derive from
:class:`SluicewayError`, and also from the builtin exception a Python programmer would expect for
that kind of mistake (``ValueError`` for an impossible cost, ``RuntimeError`` for an
over-release), so ``except ValueError`` keeps working. Plain misuse (a wrong type, a bad value, a
runner entered twice) raises the plain builtin ``TypeError``, ``ValueError`` or
``RuntimeError``, with a message that says what was wrong.
"""

from __future__ import annotations


class SluicewayError(Exception):
    """Base class of every exception sluiceway raises on purpose."""


class CapacityError(SluicewayError):
    """Base class of capacity accounting and admission errors."""


class ImpossibleCostError(CapacityError, ValueError):
    """A cost can never be admitted: some amount exceeds a limit at some level of the tree.

    Raised when the request is submitted (never after a silent wait), and delivered to requests
    that were already waiting when a limit change made them impossible.
    """


class UnknownResourceError(CapacityError, ValueError):
    """A cost names a resource that no level of the capacity chain tracks.

    The original treated such keys as free, which silently made pools unbounded.
    """


class OverReleaseError(CapacityError, RuntimeError):
    """More was released than is held, at some level of the capacity tree."""


class TaskError(SluicewayError):
    """Base class of errors that describe what happened to one task of a runner."""


class TaskCancelledError(TaskError):
    """The task was cancelled through ``runner.cancel()`` before it finished."""


class TaskTimeoutError(TaskError, TimeoutError):
    """The task did not finish within its per-task timeout."""


class RemoteTaskError(TaskError):
    """An error rebuilt from its JSON form (type name and message).

    Exception objects do not survive serialisation; this keeps what does: the qualified type
    name in :attr:`type_name` and the message.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message


class DependencyError(SluicewayError, ValueError):
    """A dependency graph was given something it cannot accept (unknown key, duplicate, cycle)."""


class CycleError(DependencyError):
    """Adding these nodes would create a cycle; the graph was left unchanged.

    ``cycle`` lists the keys of one cycle found, first key repeated at the end.
    """

    def __init__(self, message: str, cycle: list[object]) -> None:
        super().__init__(message)
        self.cycle = cycle


class InvalidTransitionError(SluicewayError, RuntimeError):
    """A graph node was asked to move to a state it cannot reach from its current one."""


class TaskAbortedError(TaskError):
    """The task was aborted: its node (or one it depends on) was aborted, or the run shut down."""


class MissingTaskError(SluicewayError, LookupError):
    """A dependency source reached a ready key for which it has no task."""
