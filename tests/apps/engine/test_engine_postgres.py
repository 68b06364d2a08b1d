"""The campaign engine on PostgreSQL: a drip over 40 contacts, its days lasting half a second,
with two runtimes sharing one schema (either's claim loop may run an enrollment when it
wakes), and the real notification service; each contact gets exactly the emails of its
branch, and no lease is left."""

from __future__ import annotations

import collections
from pathlib import Path

import httpx
import trio

from sluiceway import open_runtime
from sluiceway.apps.engine import EngineConfig, create_app
from sluiceway.apps.notification import NotificationService
from sluiceway.server import EndpointContext
from sluiceway.store import PostgresStore
from tests.apps.engine.test_drip import DRIP, people
from tests.pg_server import schema_dsn

DAY = 86_400


async def test_a_drip_on_postgresql_shared_by_two_runtimes(
    tmp_path: Path, pg_dsn: str, pg_schema: str
) -> None:
    dsn = schema_dsn(pg_dsn, pg_schema)
    service = NotificationService(tmp_path / "notify.db")
    async with service:

        def transport() -> httpx.AsyncBaseTransport:
            return httpx.ASGITransport(app=service)

        config = EngineConfig(notify_url="http://notify.test", time_scale=0.5 / DAY)
        app = create_app(config, transport=transport)
        with trio.fail_after(120):
            async with (
                open_runtime(PostgresStore(dsn), app.types, poll_interval=0.1) as first,
                open_runtime(PostgresStore(dsn), app.types, poll_interval=0.1) as second,
                app.running(first) as state,
                app.running(second),
                httpx.AsyncClient(base_url="http://notify.test", transport=transport()) as http,
            ):
                ctx = EndpointContext(first, state)
                endpoints = app.endpoints
                imported = await endpoints["contacts/import"](ctx, {"contacts": people(40)})
                segment = await endpoints["segments/create"](ctx, {"name": "s", "tags": ["drip"]})
                made = await endpoints["engine/campaigns/create"](
                    ctx,
                    {"name": "pg", "campaign_type": "drip",
                     "segment_id": segment["segment_id"], "steps": DRIP},
                )  # fmt: skip
                campaign = made["campaign_id"]
                await endpoints["engine/campaigns/launch"](ctx, {"campaign_id": campaign})
                openers = set(imported["ids"][::4])
                while True:
                    rows = (await http.get("/v1/engagement", params={"campaign": campaign})).json()
                    if len(rows) == 40:
                        break
                    await trio.sleep(0.05)
                for row in rows:
                    if row["contact"] in openers:
                        await http.post(f"/v1/emails/{row['email_id']}/opened")
                result = await second.wait(campaign)
                assert result["ended"] == {"completed": 40}
                rows = (await http.get("/v1/engagement", params={"campaign": campaign})).json()
                owners = {e.lease_owner for e in await first.children(campaign)}
        received = collections.defaultdict(list)
        for row in rows:
            received[row["contact"]].append(row["step"])
        for contact in imported["ids"]:
            if contact in openers:
                assert received[contact] == ["welcome", "thanks"]
            else:
                assert received[contact] == ["welcome", "nudge", "last-chance"]
        assert owners == {None}
