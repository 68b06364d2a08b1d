"""Helpers of the entity store tests."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sluiceway.store import NewEntity, SqliteStore


def new(
    entity_id: str,
    *,
    parent: str | None = None,
    name: str | None = None,
    data: Mapping[str, Any] | None = None,
    created_at: float = 1.0,
    entity_type: str = "Task",
    edge_type: str = "Calls",
    edge_data: Mapping[str, Any] | None = None,
) -> NewEntity:
    """A NewEntity called ``entity_id`` unless ``name`` says otherwise."""
    return NewEntity(
        id=entity_id,
        name=entity_id if name is None else name,
        type=entity_type,
        general_type="Workflow" if parent is None else "Step",
        data={} if data is None else data,
        created_at=created_at,
        parent_id=parent,
        edge_type=edge_type,
        edge_data={} if edge_data is None else edge_data,
    )


def raw_query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run ``sql`` on its own plain connection (as another program would)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, params).fetchall()


def assert_integrity(path: Path) -> None:
    """SQLite finds the file sound and every foreign key points somewhere."""
    assert raw_query(path, "PRAGMA integrity_check") == [("ok",)]
    assert raw_query(path, "PRAGMA foreign_key_check") == []


async def claimed(
    store: SqliteStore,
    entity_id: str,
    owner: str = "owner-a",
    *,
    parent: str | None = None,
    now: float = 10.0,
    expires: float = 100.0,
) -> None:
    """Create ``entity_id`` (if needed) and claim it for ``owner``."""
    await store.create_entity(new(entity_id, parent=parent))
    record = await store.claim(
        entity_id, owner, now=now, expires=expires, started={"kind": "STARTED"}
    )
    assert record is not None
    assert record.lease_owner == owner
