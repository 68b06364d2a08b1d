"""A process for the 10,000-sleepers test: ``python -m tests.entities.sleepers_worker STORE
COUNT OFFSET MODE``. Its runtime's clock is ``time.time() + OFFSET`` (so a later process can
live three days later). Modes:

* ``park``: create and start the sleepers that do not exist yet (each sleeps three days),
  wait until every one is parked, print a JSON report (live tasks, RSS growth);
* ``idle``: run the claim loop for a second (nothing is due: the test kills it meanwhile);
* ``finish``: wait until every sleeper completed, print a report.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from typing import Any

import trio

from sluiceway import RunContext, RunnableEntity, SqliteStore, open_runtime
from tests.helpers import eventually

DAY = 86_400.0


class Sleeper(RunnableEntity):
    async def run_impl(self, ctx: RunContext) -> Any:
        await ctx.sleep(3 * DAY)
        return {"name": self.name}


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def count(path: str, where: str) -> int:
    with sqlite3.connect(path) as db:
        (n,) = db.execute(f"SELECT count(*) FROM entities WHERE {where}").fetchone()
    return int(n)


async def main(path: str, total: int, offset: float, mode: str) -> None:
    clock = lambda: time.time() + offset  # noqa: E731
    async with open_runtime(SqliteStore(path), [Sleeper], clock=clock, poll_interval=0.2) as rt:
        rss_before = rss_mb()
        peak_tasks = 0
        print("ready", flush=True)

        async def sample_tasks() -> None:
            nonlocal peak_tasks
            while True:
                peak_tasks = max(peak_tasks, trio.lowlevel.current_statistics().tasks_living)
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_tasks)
            if mode == "park":

                async def make(first: int) -> None:
                    for n in range(first, total, 20):
                        record = await rt.create(Sleeper, name=f"s{n:05}", exist_ok=True)
                        if record.status.value == "PENDING" and record.runnable_at is None:
                            await rt.start(record.id)
                        print(f"progress {n}", flush=True)

                async with trio.open_nursery() as makers:
                    for first in range(20):
                        makers.start_soon(make, first)
                where = "parked_on = 'timer' AND lease_owner IS NULL"
            elif mode == "idle":
                await trio.sleep(1)
                where = "parked_on = 'timer' AND lease_owner IS NULL"
            else:
                where = "status = 'COMPLETED'"

            async def all_done() -> bool:
                return await trio.to_thread.run_sync(count, path, where) >= total

            with trio.fail_after(300):
                await eventually(all_done, interval=0.1)
            report = {
                "mode": mode,
                "done": await trio.to_thread.run_sync(count, path, where),
                "tasks_now": trio.lowlevel.current_statistics().tasks_living,
                "tasks_peak": peak_tasks,
                "rss_growth_mb": rss_mb() - rss_before,
            }
            nursery.cancel_scope.cancel()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    store, total, offset, mode = sys.argv[1:]
    trio.run(main, store, int(total), float(offset), mode)
