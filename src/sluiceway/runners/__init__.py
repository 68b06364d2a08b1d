"""Runners: pull tasks from a source under a capacity node and stream their envelopes."""

from ._channel import EnvelopeChannel
from ._combiner import AsyncIteratorCombiner
from ._envelopes import (
    EnvelopeKind,
    TaskEnvelope,
    converter,
    envelope_from_dict,
    envelope_to_dict,
    json_safe,
)
from ._hierarchical import DEFAULT_BUFFER_SIZE, HierarchicalTaskPoolRunner
from ._job import Emitter
from ._runner import TaskPoolRunner
from ._scheduled import ScheduledTaskPoolRunner
from ._stats import RunnerStatistics, WaitStatistics
from ._tasks import (
    Final,
    RetryPolicy,
    RetryScheduled,
    ScheduledTask,
    TaskFunction,
    TaskSpec,
    oneshot,
    streaming,
)

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "AsyncIteratorCombiner",
    "Emitter",
    "EnvelopeChannel",
    "EnvelopeKind",
    "Final",
    "HierarchicalTaskPoolRunner",
    "RetryPolicy",
    "RetryScheduled",
    "RunnerStatistics",
    "ScheduledTask",
    "ScheduledTaskPoolRunner",
    "TaskEnvelope",
    "TaskFunction",
    "TaskPoolRunner",
    "TaskSpec",
    "WaitStatistics",
    "converter",
    "envelope_from_dict",
    "envelope_to_dict",
    "json_safe",
    "oneshot",
    "streaming",
]
