"""A process for the crash-loop test: it opens a runtime on the store given, submits a
``Killer`` (which SIGKILLs the process running it) and a ``Steady`` on its first run, then
waits for both and prints how each ended as JSON. A run that dies prints nothing."""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import trio

from sluiceway import EntityFailedError, RunContext, RunnableEntity, open_runtime


class Killer(RunnableEntity):
    """Kills the process that runs it: a poison pill."""

    async def run_impl(self, ctx: RunContext) -> Any:
        await ctx.status("RUNNING", "about to take the process down")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        await trio.sleep_forever()  # pragma: no cover


class Steady(RunnableEntity):
    """Completes at once: the process running it is healthy."""

    async def run_impl(self, ctx: RunContext) -> Any:
        return "steady"


async def outcome(runtime: Any, entity_id: str) -> dict[str, Any]:
    try:
        return {"result": await runtime.wait(entity_id)}
    except EntityFailedError as exc:
        return {"error": exc.error}


async def main(path: str) -> None:
    # The entities are made before the claim loop starts, so that the process does nothing
    # after it takes the killer over (as a server restarted on its own).
    async with open_runtime(path, [Killer, Steady], lease_seconds=30, work=False) as runtime:
        killer = await runtime.create(Killer, name="killer", exist_ok=True)
        steady = await runtime.create(Steady, name="steady", exist_ok=True)
        if killer.status.value == "PENDING" and killer.runnable_at is None:
            await runtime.start(killer.id)
        async with runtime.working():
            with trio.fail_after(20):
                report = {
                    "killer": await outcome(runtime, killer.id),
                    "steady": await runtime.run(steady.id),
                }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
