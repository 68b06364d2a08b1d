"""The application the scale-out tests run in ``sluiceway worker`` processes on PostgreSQL.

``Fanout`` spreads its groups over the cluster (``parallel_calls(..., spread=True)``); each
``Group`` sends to its recipients through a task pool whose capacity sits under the global
limit ``sends`` (``$SCALEOUT_GLOBAL`` units in the whole cluster); each ``Recipient``
"sends" (sleeps ``data["work"]`` seconds) and records its one side effect under its
idempotency key. ``Job`` is a root of its own that does the same, under a local limit
(``$SCALEOUT_LOCAL``) below the global one.

Every send is recorded in the ledger (tables in the test's schema, created by the test): when
it started and ended on the database's clock, its process and attempt, and whether its run
stopped itself because its lease was in doubt (``ctx.check_lease()``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

import attrs
import psycopg
import trio

from sluiceway import (
    CapacitySource,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    LeaseLostError,
    RunContext,
    RunnableEntity,
    Runtime,
)
from sluiceway.server import Application

LEDGER_TABLES = [
    """
    CREATE TABLE sends (
        id bigserial PRIMARY KEY,
        key text NOT NULL,
        entity_id text NOT NULL,
        attempt integer NOT NULL,
        pid integer NOT NULL,
        started double precision NOT NULL,
        ended double precision,
        fenced boolean NOT NULL DEFAULT false
    )
    """,
    "CREATE TABLE effects (key text PRIMARY KEY, pid integer NOT NULL, at double precision)",
]
NOW = "extract(epoch FROM clock_timestamp())::float8"


class Ledger:
    """The sends and effects of this process, written on one connection (in threads)."""

    def __init__(self, dsn: str) -> None:
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._conn.close()

    def begin(self, key: str, entity_id: str, attempt: int) -> int:
        with self._lock:
            (row,) = self._conn.execute(
                "INSERT INTO sends (key, entity_id, attempt, pid, started)"
                f" VALUES (%s, %s, %s, %s, {NOW}) RETURNING id",
                (key, entity_id, attempt, os.getpid()),
            ).fetchone()  # type: ignore[misc]
        return int(row)

    def end(self, row: int, key: str) -> None:
        with self._lock, self._conn.transaction():
            self._conn.execute(f"UPDATE sends SET ended = {NOW} WHERE id = %s", (row,))
            self._conn.execute(
                f"INSERT INTO effects (key, pid, at) VALUES (%s, %s, {NOW})"
                " ON CONFLICT (key) DO NOTHING",
                (key, os.getpid()),
            )

    def fenced(self, row: int) -> None:
        with self._lock:
            self._conn.execute("UPDATE sends SET fenced = true WHERE id = %s", (row,))


@attrs.frozen
class State:
    ledger: Ledger
    sends: CapacitySource  # the global limit's local root
    local: CapacitySource  # a local limit under it (for Job)


async def send(ctx: RunContext, entity: RunnableEntity) -> None:
    """One send: recorded, "done" for ``data["work"]`` seconds, then its effect, unless the
    run's lease is in doubt by then."""
    state: State = ctx.state
    key = ctx.idempotency_key("send")
    row = await trio.to_thread.run_sync(state.ledger.begin, key, entity.id, ctx.attempt)
    await trio.sleep(entity.data["work"])
    try:
        ctx.check_lease()
    except LeaseLostError:
        await trio.to_thread.run_sync(state.ledger.fenced, row)
        raise
    await trio.to_thread.run_sync(state.ledger.end, row, key)


class Recipient(RunnableEntity):
    async def run_impl(self, ctx: RunContext) -> Any:
        await send(ctx, self)
        return 1


class Group(RunnableEntity, allowed_connections={"Calls": ["Recipient"]}):
    async def run_impl(self, ctx: RunContext) -> Any:
        state: State = ctx.state
        items = [
            (f"recipient-{n}", {"work": self.data["work"]}) for n in range(self.data["recipients"])
        ]
        runner = HierarchicalTaskPoolRunner(
            "recipients",
            ctx.parallel_calls(Recipient, items),
            CapacitySource(10, parent=state.sends),
        )
        sent = 0
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                if envelope.kind is EnvelopeKind.FINAL:
                    sent += envelope.value
        return {"sent": sent}


class Fanout(RunnableEntity, allowed_connections={"Calls": ["Group"]}):
    async def run_impl(self, ctx: RunContext) -> Any:
        groups = self.data["groups"]
        items = [
            (f"group-{n}", {"recipients": self.data["recipients"], "work": self.data["work"]})
            for n in range(groups)
        ]
        runner = HierarchicalTaskPoolRunner(
            "groups", ctx.parallel_calls(Group, items, spread=True), CapacitySource(groups)
        )
        sent = 0
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                if envelope.kind is EnvelopeKind.FINAL:
                    sent += envelope.value["sent"]
        return {"sent": sent, "groups": groups}


class Job(RunnableEntity):
    async def run_impl(self, ctx: RunContext) -> Any:
        state: State = ctx.state
        async with state.local:
            await send(ctx, self)
        return 1


@contextlib.asynccontextmanager
async def lifespan(runtime: Runtime) -> AsyncIterator[State]:
    total = int(os.environ.get("SCALEOUT_GLOBAL", "5"))
    ledger = await trio.to_thread.run_sync(Ledger, os.environ["SCALEOUT_LEDGER_DSN"])
    try:
        async with runtime.global_limit("sends", total) as sends:
            local = CapacitySource(int(os.environ.get("SCALEOUT_LOCAL", "10")), parent=sends)
            yield State(ledger, sends, local)
    finally:
        ledger.close()


TYPES: list[type[RunnableEntity]] = [Fanout, Group, Recipient, Job]

app = Application("scaleout-test", types=TYPES, lifespan=lifespan)
