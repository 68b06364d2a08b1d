"""The campaign application on real components: the notification service over HTTP, a
SQLite runtime, a WebSocket server on 127.0.0.1 and a client."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from sluiceway import Runtime, open_runtime
from sluiceway.apps.campaigns import CampaignConfig, Personalizer, create_app
from sluiceway.apps.notification import Faults, serve_notifications
from sluiceway.client import Client, connect
from sluiceway.server import RuntimeServer


@attrs.define
class Stack:
    client: Client
    runtime: Runtime
    http: httpx.AsyncClient  # to the notification service
    notify_db: Path
    url: str = ""  # the server's

    async def stats(self) -> dict[str, int]:
        result: dict[str, int] = (await self.http.get("/stats")).json()
        return result

    async def contacts(self, count: int, tags: list[str], prefix: str = "p") -> list[str]:
        rows = [
            {
                "first_name": f"First{n}",
                "last_name": f"Last{n}",
                "email": f"{prefix}{n}@example.com",
                "company": f"Co {n}",
                "tags": tags,
            }
            for n in range(count)
        ]
        answer = await self.client.call("contacts/import", {"contacts": rows})
        ids: list[str] = answer["ids"]
        return ids

    async def template(self, name: str = "t", *, approve: bool = True) -> str:
        made = await self.client.call(
            "templates/create",
            {
                "name": name,
                "subject_template": "Hi {{ first_name }}",
                "body_html": "<p>{{ full_name }} at {{ company }}</p>",
            },
        )
        if approve:
            await self.client.call("templates/approve", {"template_id": made["template_id"]})
        template_id: str = made["template_id"]
        return template_id

    async def campaign(self, name: str, template_id: str, tags: list[str]) -> str:
        made = await self.client.call(
            "campaigns/create", {"name": name, "template_id": template_id, "tag_filter": tags}
        )
        campaign_id: str = made["campaign_id"]
        return campaign_id

    async def execute_and_wait(self, campaign_id: str) -> tuple[dict[str, Any], list[Any]]:
        """Execute, follow to the end; returns the result and the envelopes seen."""
        await self.client.call("campaigns/execute", {"campaign_id": campaign_id})
        return await self.wait(campaign_id)

    async def wait(self, campaign_id: str) -> tuple[dict[str, Any], list[Any]]:
        seen = []
        with trio.fail_after(60):
            async with self.client.subscribe(campaign_id) as envelopes:
                async for envelope in envelopes:
                    seen.append(envelope)
        record = await self.client.get(campaign_id)
        assert record["status"] == "COMPLETED", record
        result: dict[str, Any] = record["result"]
        return result, seen


@contextlib.asynccontextmanager
async def campaign_stack(
    tmp_path: Path,
    *,
    faults: Faults | None = None,
    personalizer: Personalizer | None = None,
    transport: Any = None,
    **config: Any,
) -> AsyncIterator[Stack]:
    """Everything up on 127.0.0.1 for the duration of the block."""
    notify_db = tmp_path / "notifications.db"
    async with trio.open_nursery() as services:
        notify_url = await services.start(partial(serve_notifications, notify_db, faults=faults))
        settings = CampaignConfig(notify_url=notify_url, retry_delay=0.01, **config)
        app = create_app(settings, personalizer=personalizer, transport=transport)
        async with (
            open_runtime(tmp_path / "campaigns.db", app.types, work=False) as runtime,
            app.running(runtime) as state,
            trio.open_nursery() as serving,
        ):
            server = RuntimeServer(runtime, app, state=state)
            address = await serving.start(server.run)
            async with (
                connect(address.url) as client,
                httpx.AsyncClient(base_url=notify_url, timeout=10) as http,
            ):
                yield Stack(client, runtime, http, notify_db, address.url)
            server.shutdown()
        services.cancel_scope.cancel()


class CountingTransport(httpx.AsyncBaseTransport):
    """httpx's own transport, counting the sends in flight (all and per campaign) on the way:
    every request still goes to the real notification service."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.in_flight = 0
        self.peak = 0
        self.by_campaign: dict[str, int] = {}
        self.peak_by_campaign: dict[str, int] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        campaign = json.loads(request.content)["metadata"]["campaign_id"]
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.by_campaign[campaign] = self.by_campaign.get(campaign, 0) + 1
        self.peak_by_campaign[campaign] = max(
            self.peak_by_campaign.get(campaign, 0), self.by_campaign[campaign]
        )
        try:
            response = await self.inner.handle_async_request(request)
            await response.aread()
            return response
        finally:
            self.in_flight -= 1
            self.by_campaign[campaign] -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()
