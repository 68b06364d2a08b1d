"""The application ``sluiceway worker`` runs in tests/cli/test_worker.py.

Its lifespan opens the ledger (a SQLite file named by ``$SLUICEWAY_TEST_LEDGER``), records
that it was entered and left (with the process id), and yields it as the runs' state. A
``Job`` records each attempt (its process, when it started and ended), sleeps, then does its
one side effect: a row under its idempotency key. ``data["work"]`` is how long it sleeps, or a
list: the n-th attempt sleeps the n-th number (the last one for the attempts after), so a job
can be slow the first time only.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import trio

from sluiceway import RunContext, RunnableEntity, Runtime
from sluiceway.server import Application


class Ledger:
    """What the jobs and the lifespan write, in a SQLite file every process shares."""

    def __init__(self, path: str) -> None:
        self.path = path
        with contextlib.closing(self.connect()) as db:
            db.execute("CREATE TABLE IF NOT EXISTS events (event TEXT, pid INTEGER)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS attempts "
                "(id INTEGER PRIMARY KEY, key TEXT, pid INTEGER, started REAL, ended REAL)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, pid INTEGER)")

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def event(self, event: str) -> None:
        with contextlib.closing(self.connect()) as db:
            db.execute("INSERT INTO events VALUES (?, ?)", (event, os.getpid()))

    def begin(self, key: str) -> tuple[int, int]:
        """Record an attempt; returns its row id and how many attempts of ``key`` came
        before it."""
        with contextlib.closing(self.connect()) as db:
            (before,) = db.execute("SELECT count(*) FROM attempts WHERE key = ?", (key,)).fetchone()
            row = db.execute(
                "INSERT INTO attempts (key, pid, started) VALUES (?, ?, ?)",
                (key, os.getpid(), time.time()),
            ).lastrowid
        assert row is not None
        return row, int(before)

    def end(self, row: int, key: str) -> None:
        with contextlib.closing(self.connect()) as db:
            db.execute("UPDATE attempts SET ended = ? WHERE id = ?", (time.time(), row))
            db.execute("INSERT OR IGNORE INTO effects VALUES (?, ?)", (key, os.getpid()))


class Job(RunnableEntity):
    async def run_impl(self, ctx: RunContext) -> Any:
        ledger: Ledger = ctx.state
        key = ctx.idempotency_key("effect")
        row, before = await trio.to_thread.run_sync(ledger.begin, key)
        work = self.data.get("work", 0)
        if isinstance(work, list):
            work = work[min(before, len(work) - 1)]
        await trio.sleep(work)
        await trio.to_thread.run_sync(ledger.end, row, key)
        return {"name": self.name, "key": key, "pid": os.getpid()}


@contextlib.asynccontextmanager
async def lifespan(runtime: Runtime) -> AsyncIterator[Ledger]:
    ledger = await trio.to_thread.run_sync(Ledger, os.environ["SLUICEWAY_TEST_LEDGER"])
    await trio.to_thread.run_sync(ledger.event, "enter")
    try:
        yield ledger
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(ledger.event, "exit")


TYPES: list[type[RunnableEntity]] = [Job]

app = Application("worker-test", types=TYPES, lifespan=lifespan)
