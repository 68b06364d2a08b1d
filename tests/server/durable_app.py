"""The application ``sluiceway serve`` serves in the durable-submission tests.

A ``Job`` does a little work, then its one side effect: a row in the ledger (a SQLite file
named by ``$SLUICEWAY_TEST_LEDGER``) under its idempotency key; every attempt is counted too.
``jobs/execute`` starts a draft job and marks it executing, in one transaction, as the
campaign application's ``campaigns/execute`` does. A ``Crasher`` raises ``SystemExit``.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

import trio

from sluiceway import DataConflictError, RunContext, RunnableEntity
from sluiceway.server import Application, EndpointContext, EndpointError


def ledger() -> sqlite3.Connection:
    db = sqlite3.connect(os.environ["SLUICEWAY_TEST_LEDGER"], timeout=30, isolation_level=None)
    db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY)")
    db.execute("CREATE TABLE IF NOT EXISTS attempts (key TEXT)")
    return db


def apply_effect(key: str) -> None:
    with ledger() as db:
        db.execute("INSERT INTO attempts VALUES (?)", (key,))
        db.execute("INSERT OR IGNORE INTO effects VALUES (?)", (key,))


class Job(RunnableEntity):
    async def run_impl(self, ctx: RunContext) -> Any:
        await ctx.status("RUNNING", "working")
        await trio.sleep(self.data.get("work", 0))
        key = ctx.idempotency_key("effect")
        await trio.to_thread.run_sync(apply_effect, key)
        return {"key": key}


class Crasher(RunnableEntity):
    async def run_impl(self, ctx: RunContext) -> Any:
        await ctx.status("RUNNING", "about to exit")
        raise SystemExit("the entity asked the process to exit")


app = Application("durable-test", types=[Job, Crasher])


@app.endpoint("jobs/execute")
async def execute(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    job_id = body["job_id"]
    try:
        answer = await ctx.start(job_id, expect={"status": "draft"}, data={"status": "executing"})
    except DataConflictError:
        raise EndpointError("job_not_draft", f"job {job_id} is not a draft") from None
    return {"job_id": job_id, "status": "executing", "state": answer["state"]}
