"""Entity stores: where entities, their edges, envelopes, messages and waits are kept.

:class:`EntityStore` is the protocol the runtime uses; :class:`SqliteStore` is the embedded
default, :class:`PostgresStore` the one many processes on many machines share (it needs
``psycopg``: ``pip install 'sluiceway[postgres]'``, so it is imported when first used).
"""

from typing import TYPE_CHECKING, Any

from ._open import open_store
from ._protocol import EntityStore
from ._records import (
    JSON,
    ClaimBatch,
    EdgeRecord,
    EntityRecord,
    EntityStatus,
    EnvelopeRow,
    EnvelopeTail,
    MessageRecord,
    NewEntity,
    ParkReason,
    StoreChange,
    StoredEnvelope,
    UnitHold,
    WaitKind,
    WaitRecord,
    WaitState,
)
from ._sqlite import SqliteStore
from ._sqlite_db import SqliteStoreStatistics

if TYPE_CHECKING:
    from ._postgres import PostgresStore
    from ._postgres_db import PostgresStoreStatistics


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        from ._postgres import PostgresStore  # noqa: PLC0415  # psycopg is optional

        return PostgresStore
    if name == "PostgresStoreStatistics":
        from ._postgres_db import PostgresStoreStatistics  # noqa: PLC0415

        return PostgresStoreStatistics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PostgresStore",
    "PostgresStoreStatistics",
    "StoreChange",
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
    "EnvelopeRow",
    "EnvelopeTail",
    "StoredEnvelope",
    "UnitHold",
    "WaitKind",
    "WaitRecord",
    "WaitState",
    "open_store",
]
