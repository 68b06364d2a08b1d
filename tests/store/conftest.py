"""Fixtures of the entity store tests: real SQLite files in ``tmp_path``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sluiceway.store import SqliteStore
from tests.store.helpers import assert_integrity


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "entities.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(db_path) as opened:
        yield opened
    assert_integrity(db_path)
