"""``ctx.check_lease()``: a run stops itself before a side effect once its runtime has missed
a heartbeat (a frozen process waking up does not know yet that its lease was taken over)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from sluiceway import LeaseLostError, RunContext, RunnableEntity, SqliteStore, open_runtime
from tests.entities.virtual import BASE

#: How far the wall clock is ahead of trio's (a process frozen for that long).
FROZEN = [0.0]
#: What the run saw at each check.
CHECKS: list[str] = []


def clock() -> float:
    return BASE + trio.current_time() + FROZEN[0]


class Careful(RunnableEntity):
    async def run_impl(self, ctx: RunContext) -> Any:
        for _ in range(3):
            try:
                ctx.check_lease()
            except LeaseLostError:
                CHECKS.append("lost")
                raise
            CHECKS.append("ok")
            await trio.sleep(5.0)
            if len(CHECKS) == 2:
                FROZEN[0] = 20.0  # the process "was frozen" for 20 s, longer than the lease
        return "done"


async def test_a_run_stops_once_its_runtime_missed_a_heartbeat(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    CHECKS.clear()
    FROZEN[0] = 0.0
    store = SqliteStore(tmp_path / "entities.db", threads=False)
    async with open_runtime(store, [Careful], clock=clock, lease_seconds=9.0) as runtime:
        record = await runtime.create(Careful, name="careful")
        try:
            await runtime.run(record.id)
        except Exception as exc:  # the run's end, as the runtime reports it
            error = exc
        else:
            error = None
    # Two checks passed while heartbeats came (every 3 s; the run slept 5 s between
    # checks), the third came after the clock jumped past the lease: refused.
    assert CHECKS == ["ok", "ok", "lost"]
    assert isinstance(error, LeaseLostError), error
