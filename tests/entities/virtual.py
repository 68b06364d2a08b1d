"""Runtimes on virtual time: the store on the trio thread, the wall clock following trio's
(``MockClock(autojump_threshold=0)``, pytest-trio's ``autojump_clock`` fixture), so days of
durable waits pass in moments and every timestamp is exact."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import trio

from sluiceway import RunnableEntity, Runtime, SqliteStore, open_runtime

#: The wall-clock time at virtual time 0 (any fixed date).
BASE = 1_800_000_000.0
DAY = 86_400.0


def now() -> float:
    """The virtual wall clock: BASE plus trio's (virtual) time."""
    return BASE + trio.current_time()


def virtual_runtime(
    db: Path, types: Sequence[type[RunnableEntity]], **options: Any
) -> AbstractAsyncContextManager[Runtime]:
    """``open_runtime`` on ``db`` with the store on the trio thread and the virtual clock;
    ``poll_interval`` defaults to an hour (one process: nothing to poll for)."""
    options.setdefault("poll_interval", 3600.0)
    return open_runtime(SqliteStore(db, threads=False), types, clock=now, **options)
