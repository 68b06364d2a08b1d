"""The story application's configuration and the services its runs share."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx

from ...capacity import CapacitySource
from .._validators import fields_from_env, positive_float, positive_int
from ..imagegen import DEFAULT_IMAGE_URL, BlobStore
from ._safety import SafetyChecker
from ._writer import Writer

#: Where images are kept unless configured (shared with the image service).
DEFAULT_BLOB_DIR = "sluiceway-blobs"


@attrs.frozen(kw_only=True)
class StoryConfig:
    """How stories run.

    Attributes:
        image_url: the image service's base URL (``POST {image_url}/v1/images/generate``).
        blob_dir: the directory of the blob store the image service writes images into (and
            where the finished pages are kept).
        per_story: images of one story generated at once (the original: 3).
        global_limit: images generated at once by every story of the process (the original:
            10); stories running together share it.
        image_attempts: tries per image when the service fails transiently (a transport
            error, 429 or 5xx); the idempotency key makes a retry safe. A 4xx is not retried.
        retry_delay: seconds before the first retry (doubling after each).
        request_timeout: seconds for one request to the image service.
        model_pool: the model pool named in each image's data and request (the original's
            ``IMAGE_MODEL_POOL``); the local service records it.
    """

    image_url: str = DEFAULT_IMAGE_URL
    blob_dir: str = DEFAULT_BLOB_DIR
    per_story: int = attrs.field(default=3, validator=positive_int("per_story"))
    global_limit: int = attrs.field(default=10, validator=positive_int("global_limit"))
    image_attempts: int = attrs.field(default=3, validator=positive_int("image_attempts"))
    retry_delay: float = attrs.field(default=0.5, validator=positive_float("retry_delay"))
    request_timeout: float = attrs.field(default=120.0, validator=positive_float("timeout"))
    model_pool: str = "local-image-gen"

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.image_url, str) or not self.image_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(f"image_url must be an http(s) URL, got {self.image_url!r}")
        if not isinstance(self.blob_dir, str) or not self.blob_dir:
            raise ValueError(f"blob_dir must be a directory's path, got {self.blob_dir!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StoryConfig:
        """The configuration from ``SLUICEWAY_IMAGE_URL``, ``SLUICEWAY_BLOB_DIR``,
        ``SLUICEWAY_STORY_IMAGE_CONCURRENCY``, ``SLUICEWAY_GLOBAL_IMAGE_CONCURRENCY``,
        ``SLUICEWAY_IMAGE_ATTEMPTS`` and ``SLUICEWAY_IMAGE_MODEL_POOL`` (defaults for those
        unset).

        Raises:
            ValueError: a variable is set to something invalid (naming it).
        """
        env = os.environ if environ is None else environ
        fields = fields_from_env(
            env,
            urls={"SLUICEWAY_IMAGE_URL": "image_url"},
            strings={
                "SLUICEWAY_BLOB_DIR": "blob_dir",
                "SLUICEWAY_IMAGE_MODEL_POOL": "model_pool",
            },
            integers={
                "SLUICEWAY_STORY_IMAGE_CONCURRENCY": "per_story",
                "SLUICEWAY_GLOBAL_IMAGE_CONCURRENCY": "global_limit",
                "SLUICEWAY_IMAGE_ATTEMPTS": "image_attempts",
            },
        )
        return cls(**fields)

    @property
    def blob_path(self) -> Path:
        """:attr:`blob_dir` as a path."""
        return Path(self.blob_dir)


@attrs.define(eq=False)
class StoryServices:
    """What the application's lifespan yields (``ctx.state`` in runs and endpoints): the
    configuration, the HTTP client of the image service, the process-wide image capacity
    (the original's module-level ``GLOBAL_IMAGE_CAPACITY``), the blob store, the writer and
    the safety checker."""

    config: StoryConfig
    http: httpx.AsyncClient
    global_capacity: CapacitySource
    blobs: BlobStore
    writer: Writer
    safety: SafetyChecker


def services_of(ctx: Any) -> StoryServices:
    """The application's services from a run's or an endpoint's ``ctx.state``.

    Raises:
        RuntimeError: it runs outside the story application.
    """
    state = ctx.state
    if not isinstance(state, StoryServices):
        raise RuntimeError(
            "story entities run inside the story application (ctx.state holds its services): "
            "serve it with `sluiceway serve --app sluiceway.apps.stories:app`, or enter "
            "`app.running(runtime)` around the runs"
        )
    return state
