"""Entity types shared by the entity tests (and the crash-resume worker)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import trio

from sluiceway import (
    CapacitySource,
    EntityFailedError,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    RunContext,
    RunnableEntity,
    WaitableEntity,
)

#: How many times each entity name's run_impl started (reset by the tests' autouse fixture).
EXECUTIONS: Counter[str] = Counter()
#: Events the tests set to let a "gate" leaf finish, by name.
GATES: dict[str, trio.Event] = {}
#: Set when an entity name's run_impl starts for the n-th time: (name, n) -> event.
STARTS: dict[tuple[str, int], trio.Event] = {}


def executed(name: str) -> None:
    """Count a start of ``name``'s run_impl and wake whoever waits for it."""
    EXECUTIONS[name] += 1
    started(name, EXECUTIONS[name]).set()


def open_gate(name: str) -> None:
    """Let ``name``'s gated leaf finish, whether or not it has reached its gate yet (a leaf is
    counted as started before it gets there: a status write comes first)."""
    GATES.setdefault(name, trio.Event()).set()


def started(name: str, count: int = 1) -> trio.Event:
    """The event set when ``name``'s run_impl starts for the ``count``-th time."""
    return STARTS.setdefault((name, count), trio.Event())


class Leaf(RunnableEntity):
    """Doubles ``data["value"]``; fails if ``data["fail"]``; waits for ``GATES[name]`` if
    ``data["gate"]``."""

    async def run_impl(self, ctx: RunContext) -> Any:
        executed(self.name)
        await ctx.status("RUNNING", f"working on {self.name}")
        if self.data.get("gate"):
            await GATES.setdefault(self.name, trio.Event()).wait()
        if self.data.get("fail"):
            raise RuntimeError(f"{self.name} failed on purpose")
        return {"name": self.name, "value": self.data.get("value", 0) * 2}


class Chain(RunnableEntity, allowed_connections={"Calls": ["Leaf", "Chain"]}):
    """Calls each child in ``data["children"]`` in order; a failed child is recorded and the
    others go on (error isolation); returns the results."""

    async def run_impl(self, ctx: RunContext) -> Any:
        executed(self.name)
        results: list[Any] = []
        for child in self.data.get("children", []):
            kind = child.get("type", "Leaf")
            try:
                results.append(await ctx.call(kind, child["name"], child.get("data", {})))
            except EntityFailedError as exc:
                results.append({"failed": child["name"], "error": exc.error["message"]})
        await ctx.update_data(done=len(results))
        return results


#: The process-wide pool every FanOut shares (like the campaign's global 5).
GLOBAL = CapacitySource(5)


class FanOut(RunnableEntity, allowed_connections={"Calls": ["Leaf", "Asker"]}):
    """Runs ``data["count"]`` children of ``data["child_type"]`` through a task pool (per-parent
    capacity ``data["per_parent"]`` under ``GLOBAL``), counting successes and failures."""

    async def run_impl(self, ctx: RunContext) -> Any:
        executed(self.name)
        count = self.data["count"]
        items = [
            (f"child-{i}", {"value": i, "fail": i in self.data.get("failing", [])})
            for i in range(count)
        ]
        pool = CapacitySource(self.data.get("per_parent", 3), GLOBAL)
        runner = HierarchicalTaskPoolRunner(
            "children", ctx.parallel_calls(self.data.get("child_type", "Leaf"), items), pool
        )
        ok = failed = 0
        total = 0
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                if envelope.kind is EnvelopeKind.FINAL:
                    ok += 1
                    total += envelope.value["value"]
                    await ctx.status("RUNNING", f"{ok + failed}/{count} done")
                elif envelope.kind is EnvelopeKind.ERROR:
                    failed += 1
        status = "completed" if not failed else ("failed" if not ok else "completed_with_errors")
        await ctx.update_data(status=status, ok=ok, failed=failed)
        return {"ok": ok, "failed": failed, "total": total, "status": status}


class Asker(WaitableEntity):
    """Asks for approval; returns what it was told (or "timed out")."""

    async def run_impl(self, ctx: RunContext) -> Any:
        executed(self.name)
        timeout = self.data.get("timeout")
        try:
            message = await ctx.wait_for_message(
                f"approve {self.name}?", {"choices": ["yes", "no"]}, timeout=timeout
            )
        except TimeoutError:
            return {"name": self.name, "value": -1, "answer": "timed out"}
        return {"name": self.name, "value": 1, "answer": message.message, "data": message.data}


class Sleeper(RunnableEntity):
    """Sleeps durably for ``data["seconds"]`` and reports when it woke."""

    async def run_impl(self, ctx: RunContext) -> Any:
        executed(self.name)
        await ctx.sleep(self.data["seconds"])
        return {"woke": ctx.runtime.clock()}


ALL_TYPES: list[type[RunnableEntity]] = [Leaf, Chain, FanOut, Asker, Sleeper]
