"""The application ``sluiceway serve`` serves in the client command tests."""

from __future__ import annotations

from typing import Any

from sluiceway import RunContext, RunnableEntity
from sluiceway.server import Application, EndpointContext, EndpointError
from tests.entities.workflows import ALL_TYPES, Asker, FanOut


class Outcome(RunnableEntity):
    """Completes with ``{"status": data["status"]}`` (and ``data["error"]``, if any): the
    application's verdict, as a campaign's result says ``failed``."""

    async def run_impl(self, ctx: RunContext) -> Any:
        await ctx.status("RUNNING", f"deciding {self.data['status']}")
        return {key: self.data[key] for key in ("status", "error") if key in self.data}


class Guarded(RunnableEntity):
    """Started only by its endpoint (``guarded``), as a campaign by ``campaigns/execute``."""

    async def run_impl(self, ctx: RunContext) -> Any:
        return {"guarded": True}


app = Application("cli-test", types=[*ALL_TYPES, Outcome, Guarded], startable=[*ALL_TYPES, Outcome])


@app.endpoint("guarded")
async def guarded(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """A Guarded entity, started if ``body["start"]``."""
    record = await ctx.runtime.create(Guarded, {})
    if body.get("start"):
        await ctx.start(record.id)
    return {"entity_id": record.id}


@app.endpoint("outcome")
async def outcome(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """An Outcome entity (not started) whose result says ``body``."""
    record = await ctx.runtime.create(Outcome, body)
    return {"entity_id": record.id}


@app.endpoint("fanout")
async def fanout(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """A FanOut of ``count`` children (not started)."""
    record = await ctx.runtime.create(
        FanOut, {"count": body["count"], "per_parent": 3, "failing": body.get("failing", [])}
    )
    return {"entity_id": record.id}


@app.endpoint("ask")
async def ask(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """An Asker, started: it waits for a message."""
    record = await ctx.runtime.create(Asker, {})
    await ctx.start(record.id)
    return {"entity_id": record.id}


@app.endpoint("refuse")
async def refuse(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    raise EndpointError("refused", "this endpoint refuses everything", {"body": body})
