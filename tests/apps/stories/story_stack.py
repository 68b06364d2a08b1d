"""The story application on real components, on virtual time: a SQLite runtime, the real image
service (its SQLite file and its rendering on the trio thread) reached in process through
httpx's ASGI transport, and a real blob directory, so that the seed's ten-second images take
ten virtual seconds and every timestamp is exact."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from sluiceway import EntityRecord, Runtime
from sluiceway.apps.imagegen import FileBlobStore, ImageFaults, ImageService
from sluiceway.apps.stories import StoryConfig, create_app
from sluiceway.server import Application, EndpointContext
from tests.entities.virtual import virtual_runtime

#: Where the application believes the image service is (the ASGI transport answers).
IMAGE_URL = "http://images.test"


@attrs.define
class Stories:
    app: Application
    runtime: Runtime
    state: Any
    service: ImageService
    blobs: FileBlobStore

    async def call(self, endpoint: str, body: dict[str, Any]) -> Any:
        """Call an endpoint of the story application as the server would."""
        handler = self.app.endpoints[endpoint]
        return await handler(EndpointContext(self.runtime, self.state), body)

    async def create(self, topic: str, name: str, **extra: Any) -> str:
        """Create a story (approved in advance unless ``require_approval`` is passed)."""
        extra.setdefault("require_approval", False)
        answer = await self.call("stories/create", {"topic": topic, "name": name, **extra})
        story_id: str = answer["story_id"]
        return story_id

    async def images(self, story_id: str) -> dict[str, EntityRecord]:
        """The story's image entities by placeholder."""
        return {
            child.data["placeholder"]: child
            for child in await self.runtime.children(story_id)
            if child.type == "ImageGeneration"
        }


@contextlib.asynccontextmanager
async def story_stack(
    tmp_path: Path, *, faults: ImageFaults | None = None, writer: Any = None, **config: Any
) -> AsyncIterator[Stories]:
    """The story application running on a virtual-time runtime over ``tmp_path``, with the
    image service's ``faults`` (default: every image takes 10 s, as in the seed)."""
    await trio.Path(tmp_path).mkdir(parents=True, exist_ok=True)
    blobs = FileBlobStore(tmp_path / "blobs", threads=False)
    service = ImageService(
        tmp_path / "images.db", blobs, faults=faults or ImageFaults(latency=10.0), threads=False
    )
    async with service:

        def transport() -> httpx.AsyncBaseTransport:
            return httpx.ASGITransport(app=service)

        config.setdefault("retry_delay", 1.0)
        app = create_app(
            StoryConfig(image_url=IMAGE_URL, blob_dir=str(tmp_path / "blobs"), **config),
            blobs=blobs,
            transport=transport,
            writer=writer,
        )
        async with (
            virtual_runtime(tmp_path / "stories.db", app.types) as runtime,
            app.running(runtime) as state,
        ):
            yield Stories(app, runtime, state, service, blobs)
