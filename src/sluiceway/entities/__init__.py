"""Durable entity workflows: entities that run, call children, wait, and resume after a crash.

See :func:`open_runtime` for the entry point, :class:`RunnableEntity` for the programming model
and :class:`RunContext` for what a run can do.
"""

from ._context import CapacityHolder, ChildCall, Message, RunContext
from ._entity import CALLS, DataEntity, RunnableEntity, TypeRegistry, WaitableEntity
from ._envelope import EntityEnvelope, EnvelopeType
from ._runtime import RecoveredRun, Runtime, open_runtime

__all__ = [
    "CALLS",
    "CapacityHolder",
    "ChildCall",
    "DataEntity",
    "EntityEnvelope",
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
