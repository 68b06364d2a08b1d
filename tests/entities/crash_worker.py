"""The workflow the crash-resume tests kill and restart, run as its own process.

``python -m tests.entities.crash_worker STORE EFFECTS [--kill-batch N --kill-phase PHASE]``

A campaign fans out ``groups`` groups concurrently; each group fans out ``per_group``
recipients through a task pool (3 per group under a process-wide 5). Each recipient performs a
side effect on an idempotent "service" (a separate SQLite file): it records its execution, and
sends with an idempotency key derived from its identity; the service keeps the first request of
each key (the effect) and counts repeats.

With ``--kill-batch N`` the process SIGKILLs itself during the N-th write batch of the entity
store: ``before`` it starts, in the ``middle`` of it (statements executed, nothing committed)
or ``after`` its commit. Without, it runs (or resumes) the campaign to the end and prints one
line of JSON: the campaign's result and what the process saw at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

import trio

from sluiceway import (
    CapacitySource,
    EntityStatus,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    RunContext,
    RunnableEntity,
    SqliteStore,
    open_runtime,
)

GLOBAL = CapacitySource(5)


class Service:
    """An idempotent side-effect service: the first request of a key is its effect."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, entity_id TEXT NOT NULL)"
        )
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS requests (key TEXT NOT NULL, entity_id TEXT NOT NULL)"
        )
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS executions "
            "(entity_id TEXT NOT NULL, name TEXT NOT NULL, attempt INTEGER NOT NULL)"
        )
        self.lock = trio.Lock()

    async def executed(self, entity_id: str, name: str, attempt: int) -> None:
        await self._run("INSERT INTO executions VALUES (?, ?, ?)", (entity_id, name, attempt))

    async def send(self, key: str, entity_id: str) -> None:
        await self._run("INSERT INTO requests VALUES (?, ?)", (key, entity_id))
        await self._run("INSERT OR IGNORE INTO effects VALUES (?, ?)", (key, entity_id))

    async def _run(self, sql: str, args: tuple[Any, ...]) -> None:
        async with self.lock:
            await trio.to_thread.run_sync(self.conn.execute, sql, args)


class Recipient(RunnableEntity):
    #: The service of this process (set by main).
    service: Service

    async def run_impl(self, ctx: RunContext) -> Any:
        await self.service.executed(self.id, self.name, self.attempt)
        await ctx.status("RUNNING", f"sending to {self.data['email']}")
        await self.service.send(ctx.idempotency_key("send"), self.id)
        return {"email": self.data["email"], "status": "sent"}


class Group(RunnableEntity, allowed_connections={"Calls": [Recipient]}):
    async def run_impl(self, ctx: RunContext) -> Any:
        group, count = self.data["group"], self.data["count"]
        items = [(f"recipient-{i}", {"email": f"g{group}-r{i}@example.com"}) for i in range(count)]
        pool = CapacitySource(3, GLOBAL)
        runner = HierarchicalTaskPoolRunner("send", ctx.parallel_calls(Recipient, items), pool)
        sent: list[str] = []
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                if envelope.kind is EnvelopeKind.FINAL:
                    sent.append(envelope.value["email"])
                    await ctx.status("RUNNING", f"sent {len(sent)}/{count}")
                elif envelope.kind is EnvelopeKind.ERROR:
                    raise envelope.error  # type: ignore[misc]
        await ctx.update_data(sent=len(sent))
        return {"group": group, "sent": len(sent), "emails": sorted(sent)}


class Campaign(RunnableEntity, allowed_connections={"Calls": [Group]}):
    async def run_impl(self, ctx: RunContext) -> Any:
        groups, per_group = self.data["groups"], self.data["per_group"]
        items = [(f"group-{g}", {"group": g, "count": per_group}) for g in range(groups)]
        runner = HierarchicalTaskPoolRunner(
            "groups", ctx.parallel_calls(Group, items), CapacitySource(groups)
        )
        results: list[Any] = []
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                if envelope.kind is EnvelopeKind.FINAL:
                    results.append(envelope.value)
                elif envelope.kind is EnvelopeKind.ERROR:
                    raise envelope.error  # type: ignore[misc]
        results.sort(key=lambda result: result["group"])
        return {"sent": sum(r["sent"] for r in results), "groups": results}


TYPES: list[type[RunnableEntity]] = [Campaign, Group, Recipient]


def install_kill(store: SqliteStore, batch: int, phase: str) -> None:
    """SIGKILL this process during the store's ``batch``-th write batch."""
    original = store._db._apply_batch
    seen = 0

    def die() -> None:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def apply(ops: Sequence[Any]) -> None:
        nonlocal seen
        seen += 1
        if seen != batch:
            original(ops)
            return
        if phase == "before":
            die()
        if phase == "middle":
            op = ops[len(ops) // 2]
            fn = op.fn

            def then_die(conn: sqlite3.Connection) -> Any:
                fn(conn)  # its statements ran inside the open transaction
                die()

            op.fn = then_die
        original(ops)
        die()  # "after": committed, but nobody heard back

    store._db._apply_batch = apply  # type: ignore[method-assign]


async def main(args: argparse.Namespace) -> None:
    Recipient.service = Service(args.effects)
    store = SqliteStore(args.store)
    if args.kill_batch:
        install_kill(store, args.kill_batch, args.kill_phase)
    # Each trial kills the same run three times at arbitrary write batches, often before the
    # resumed run gets past what it did before: to the crash-loop guard that is exactly a run
    # dying three times in a row without progress. This test is about resuming, not about
    # giving up, so the guard is off (tests/entities/test_crash_loop.py tests it).
    async with open_runtime(store, TYPES, lease_seconds=10, crash_limit=None) as runtime:
        root = await store.find_entity(None, "campaign")
        if root is None:
            root = await runtime.create(
                Campaign, {"groups": args.groups, "per_group": args.per_group}, name="campaign"
            )
        recovered: list[str] = []
        if root.status is EntityStatus.PENDING:
            result = await runtime.run(root.id)
        else:
            for run in await runtime.recover():
                recovered.append(run.entity_name)
                if run.error is not None:
                    raise run.error
            result = await runtime.run(root.id)  # COMPLETED now: the stored result
        report = {
            "result": result,
            "recovered": recovered,
            "batches": store.statistics().batches,
            "global_idle": GLOBAL.borrowed_tokens == 0,
        }
    print(json.dumps(report), flush=True)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("effects")
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--per-group", type=int, default=50)
    parser.add_argument("--kill-batch", type=int, default=0)
    parser.add_argument("--kill-phase", choices=["before", "middle", "after"], default="middle")
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse())
