"""Entity stores: where entities, their edges, envelopes, messages and waits are kept.

:class:`EntityStore` is the protocol the runtime uses; :class:`SqliteStore` is the embedded
default.
"""

from ._protocol import EntityStore
from ._records import (
    JSON,
    ClaimBatch,
    EdgeRecord,
    EntityRecord,
    EntityStatus,
    MessageRecord,
    NewEntity,
    ParkReason,
    StoredEnvelope,
    WaitKind,
    WaitRecord,
    WaitState,
)
from ._sqlite import SqliteStore
from ._sqlite_db import SqliteStoreStatistics

__all__ = [
    "JSON",
    "ClaimBatch",
    "EdgeRecord",
    "EntityRecord",
    "EntityStatus",
    "EntityStore",
    "MessageRecord",
    "NewEntity",
    "ParkReason",
    "SqliteStore",
    "SqliteStoreStatistics",
    "StoredEnvelope",
    "WaitKind",
    "WaitRecord",
    "WaitState",
]
