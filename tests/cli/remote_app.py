"""The application ``sluiceway serve`` serves in the client command tests."""

from __future__ import annotations

from typing import Any

from sluiceway.server import Application, EndpointContext, EndpointError
from tests.entities.workflows import ALL_TYPES, Asker, FanOut

app = Application("cli-test", types=ALL_TYPES)


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
