"""Durable entity workflows: entities that run, call children, wait, and resume after a crash.

See :func:`open_runtime` for the entry point, :class:`RunnableEntity` for the programming model
and :class:`RunContext` for what a run can do.
"""

from ._claims import ClaimLoop
from ._context import ChildCall, RunContext
from ._entity import CALLS, DataEntity, RunnableEntity, TypeRegistry, WaitableEntity
from ._envelope import EntityEnvelope, EnvelopeType
from ._live import RecoveredRun
from ._runtime import Runtime, open_runtime
from ._tail import EnvelopeSample
from ._waits import CapacityHolder, Message

__all__ = [
    "CALLS",
    "CapacityHolder",
    "ChildCall",
    "ClaimLoop",
    "DataEntity",
    "EntityEnvelope",
    "EnvelopeSample",
    "EnvelopeType",
    "Message",
    "RecoveredRun",
    "RunContext",
    "RunnableEntity",
    "Runtime",
    "TypeRegistry",
    "WaitableEntity",
    "open_runtime",
]
