"""Task sources: what runners pull work from.

Sluiceway's sources are trio ``ReceiveChannel`` objects with a synchronous look-ahead
(``peek``/``take``/``exhausted``/``subscribe``) so runners can check capacity and take an item in
one step. Any other ``trio.abc.ReceiveChannel`` or (async) iterable is accepted wherever a source
is; see :func:`as_task_source`.
"""

from ._base import LazySource, PeekableSource
from ._buffer import BufferMode, SourceBuffer
from ._dependency import DependencySource, PriorityDependencySource
from ._graph import DependencyGraph, NodeState
from ._iterable import ChannelSource, SourceFromIterable, as_task_source
from ._priority import PrioritySource
from ._pushpull import (
    OverflowPolicy,
    PushPullBuffer,
    PushPullSink,
    PushPullSource,
    PushPullStatistics,
)

__all__ = [
    "BufferMode",
    "ChannelSource",
    "DependencyGraph",
    "DependencySource",
    "LazySource",
    "NodeState",
    "OverflowPolicy",
    "PeekableSource",
    "PriorityDependencySource",
    "PrioritySource",
    "PushPullBuffer",
    "PushPullSink",
    "PushPullSource",
    "PushPullStatistics",
    "SourceBuffer",
    "SourceFromIterable",
    "as_task_source",
]
