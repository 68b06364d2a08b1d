"""The campaign engine on real components, on virtual time: a SQLite runtime and the real
notification service (its SQLite file on the trio thread), reached in process through httpx's
ASGI transport, so that days of waits pass in moments and every timestamp is exact."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx

from sluiceway import Runtime
from sluiceway.apps.engine import EngineConfig, create_app
from sluiceway.apps.notification import NotificationService
from sluiceway.server import Application, EndpointContext
from tests.entities.virtual import virtual_runtime

#: Where the engine believes the notification service is (the ASGI transport answers).
NOTIFY_URL = "http://notify.test"


@attrs.define
class Engine:
    app: Application
    runtime: Runtime
    state: Any
    service: NotificationService
    http: httpx.AsyncClient  # to the notification service

    async def call(self, endpoint: str, body: dict[str, Any]) -> Any:
        """Call an endpoint of the engine application as the server would."""
        handler = self.app.endpoints[endpoint]
        return await handler(EndpointContext(self.runtime, self.state), body)

    async def contacts(self, rows: list[dict[str, Any]]) -> list[str]:
        answer = await self.call("contacts/import", {"contacts": rows})
        ids: list[str] = answer["ids"]
        return ids

    async def open_email(self, email_id: str, at: float) -> None:
        response = await self.http.post(f"/v1/emails/{email_id}/opened", json={"at": at})
        response.raise_for_status()


@contextlib.asynccontextmanager
async def engine_stack(tmp_path: Path, **config: Any) -> AsyncIterator[Engine]:
    """The engine application running on a virtual-time runtime over ``tmp_path``."""
    service = NotificationService(tmp_path / "notify.db", threads=False)
    async with service:

        def transport() -> httpx.AsyncBaseTransport:
            return httpx.ASGITransport(app=service)

        app = create_app(EngineConfig(notify_url=NOTIFY_URL, **config), transport=transport)
        async with (
            virtual_runtime(tmp_path / "engine.db", app.types) as runtime,
            app.running(runtime) as state,
            httpx.AsyncClient(base_url=NOTIFY_URL, transport=transport()) as http,
        ):
            yield Engine(app, runtime, state, service, http)
