"""Fixtures for the entity tests: a fresh SQLite file per test and clean shared counters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.entities import workflows


@pytest.fixture(autouse=True)
def _reset_workflows() -> Iterator[None]:
    workflows.EXECUTIONS.clear()
    workflows.GATES.clear()
    workflows.STARTS.clear()
    yield
    workflows.EXECUTIONS.clear()
    workflows.GATES.clear()
    workflows.STARTS.clear()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """The path of a new (not yet created) SQLite store file."""
    return tmp_path / "entities.db"
