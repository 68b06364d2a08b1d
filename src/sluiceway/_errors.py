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


# -- entity store ------------------------------------------------------------------------------


class StoreError(SluicewayError):
    """Base class of errors raised by an entity store."""


class StoreSchemaError(StoreError):
    """The database is not an entity store this version understands.

    Raised for a file that is not a database, a database that belongs to something else, or one
    written by a newer version of sluiceway (its schema version is above the highest known).
    """


class EntityNotFoundError(StoreError, LookupError):
    """No entity has this id (or, for a lookup by name, this name under this parent)."""


class DuplicateEntityError(StoreError, ValueError):
    """An entity with this name already exists under this parent (``append_call`` is strict)."""


class DataConflictError(StoreError):
    """An entity's data did not hold what a conditional write expected (another request
    changed it first), so nothing was written. ``key``, ``expected`` and ``actual`` say
    where."""

    def __init__(self, message: str, *, key: str, expected: object, actual: object) -> None:
        super().__init__(message)
        self.key = key
        self.expected = expected
        self.actual = actual


class LeaseLostError(StoreError):
    """This runtime no longer holds the lease of the entity it tried to write for.

    Another runtime took the entity over after the lease expired, or the entity was cancelled.
    The write was refused, so nothing this runtime did afterwards is recorded.
    """


# -- entities ----------------------------------------------------------------------------------


class EntityError(SluicewayError):
    """Base class of errors about entity types, connections and runs."""


class UnknownEntityTypeError(EntityError, LookupError):
    """An entity type that is not registered with the runtime."""


class ConnectionNotAllowedError(EntityError, ValueError):
    """An edge whose target type the source type does not allow (``allowed_connections``)."""


class EntityFailedError(EntityError):
    """An entity's run raised; the entity is FAILED.

    ``entity_id``, ``entity_type`` and ``entity_name`` name it; ``error`` is the stored
    ``{"type", "message"}`` of what it raised. In the process that ran it, the original
    exception is the ``__cause__``.
    """

    def __init__(
        self, entity_id: str, entity_type: str, entity_name: str, error: dict[str, str]
    ) -> None:
        super().__init__(
            f"{entity_type} {entity_name!r} ({entity_id}) failed: "
            f"{error.get('type', 'Exception')}: {error.get('message', '')}"
        )
        self.entity_id = entity_id
        self.entity_type = entity_type
        self.entity_name = entity_name
        self.error = error


class EntityCancelledError(EntityError):
    """The entity was cancelled (``runtime.cancel()``); it does not run again by itself."""

    def __init__(self, entity_id: str, entity_type: str, entity_name: str) -> None:
        super().__init__(f"{entity_type} {entity_name!r} ({entity_id}) was cancelled")
        self.entity_id = entity_id
        self.entity_type = entity_type
        self.entity_name = entity_name


class EntityBusyError(EntityError):
    """Another runtime holds the entity's lease: it is running there (or its lease has not
    expired yet). Follow it with ``runtime.stream()``, or ``recover()`` it once it expired."""


class EntityNotRunnableError(EntityError, TypeError):
    """The entity's type is a :class:`~sluiceway.DataEntity`: it holds data and edges and is
    never run."""


class EntityNotWaitingError(EntityError, RuntimeError):
    """A message was sent to an entity that will not run again (COMPLETED or CANCELLED).

    A PENDING or FAILED entity takes messages: they wait for its next run."""


class WaitTimeoutError(EntityError, TimeoutError):
    """``wait_for_message`` reached its timeout without a message (also after a restart)."""


# -- parking -----------------------------------------------------------------------------------


class RunParked(BaseException):
    """The run of an entity parked: it waits durably (a long sleep, a message, children that
    wait) and its task ends, giving back its lease, its capacity and its memory. The store
    wakes it later and it runs again from the top of ``run_impl``, replaying what it did.

    It is raised *through* ``run_impl`` and the task pools that run children, like
    ``trio.Cancelled``, and derives from ``BaseException`` for the same reason: ``except
    Exception`` does not catch it. Never swallow it; code that catches ``BaseException`` must
    re-raise it.

    A task pool treats a task that raises it as parked: it reports no envelope for it, and
    once everything else has been reported, iterating the envelopes raises ``RunParked``
    (so the parent parks too, instead of going on with a partial view of its children).
    ``keys`` holds the keys of the parked tasks, when a pool raises it.
    """

    def __init__(self, message: str = "the run parked", keys: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.keys = keys
