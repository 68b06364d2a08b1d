"""The story application: its lifespan and endpoints."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import httpx

from ..._errors import DataConflictError, DuplicateEntityError
from ...capacity import CapacitySource
from ...entities import Runtime
from ...server import Application, EndpointContext, EndpointError
from .._endpoints import fetch_entity, parse_body
from ..imagegen import BlobStore, FileBlobStore
from ._config import StoryConfig, StoryServices, services_of
from ._entities import FINAL_STAGES, TYPES, StoryPipeline, now_iso
from ._request import InvalidStoryRequest, StoryRequest
from ._safety import SafetyChecker, WordListSafetyChecker
from ._writer import TemplateWriter, Writer

#: A story's own name: lowercase letters, digits and dashes (it names its pipeline entity
#: ``story-pipeline-<name>``).
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,58}[a-z0-9])?")

_ADJECTIVES = ("brave", "sleepy", "curious", "gentle", "clever", "merry", "quiet", "bold")
_ANIMALS = ("kitten", "otter", "fox", "owl", "badger", "heron", "lynx", "hedgehog")


@attrs.frozen(kw_only=True)
class NewStory:
    topic: str
    customization: dict[str, Any] | None = None
    name: str | None = None
    require_approval: bool = True


@attrs.frozen(kw_only=True)
class Approval:
    story_id: str
    approved: bool = True
    reason: str | None = None
    reviewer: str | None = None


@attrs.frozen(kw_only=True)
class StoryRef:
    story_id: str


async def create_story(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``stories/create``: ``{topic, customization?, name?, require_approval?}`` → the new
    story, its pipeline already submitted. ``customization`` takes ``illustration_style``,
    ``image_quality``, ``aspect_ratio`` and ``num_illustrations``; ``name`` (a slug; default:
    a random one like ``brave-kitten-3f2a``) names the pipeline ``story-pipeline-<name>``.
    With ``require_approval`` (the default) the pipeline waits for ``stories/approve``
    before it generates images. Errors: ``invalid_body``, ``invalid_story`` (every problem
    listed), ``story_exists``."""
    new = parse_body(body, NewStory, "stories/create")
    problems = []
    try:
        request = StoryRequest.parse(new.topic, new.customization)
    except InvalidStoryRequest as error:
        problems.extend(error.problems)
    if new.name is not None and not _NAME.fullmatch(new.name):
        problems.append(
            f"name: lowercase letters, digits and inner dashes, at most 60, not {new.name!r}"
        )
    if problems:
        raise EndpointError("invalid_story", "; ".join(problems), problems)
    name = new.name or _random_name()
    data = {
        **request.to_json(),
        "require_approval": new.require_approval,
        "stage": "created",
        "status": "running",
        "images_total": 0,
        "images_generated": 0,
        "images_failed": 0,
        "created_at": now_iso(),
    }
    try:
        record = await ctx.runtime.create(
            StoryPipeline, data, name=f"story-pipeline-{name}", start=True
        )
    except DuplicateEntityError:
        raise EndpointError("story_exists", f"a story is named {name!r}") from None
    return {
        "story_id": record.id,
        "entity_id": record.id,
        "name": record.name,
        "stage": "created",
        "message": f"the story's pipeline started: follow it with `sluiceway run {record.id}`",
    }


def _random_name() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_ANIMALS)}-{secrets.token_hex(2)}"


async def approve_story(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``stories/approve``: ``{story_id, approved?, reason?, reviewer?}`` → the decision.
    ``approved`` (default true) lets the pipeline generate its images; false ends it
    ``declined``. A story is decided once: the decision is recorded on the pipeline (a
    compare-and-set) before it is sent, so two reviewers cannot both decide; the same call
    again is answered as the first was. Errors:
    ``story_not_found``, ``story_not_awaiting_approval``, ``story_already_decided``."""
    approval = parse_body(body, Approval, "stories/approve")
    record = await fetch_entity(ctx, approval.story_id, StoryPipeline.type_name, "story")
    decision = {
        "approved": approval.approved,
        "reason": approval.reason,
        "reviewer": approval.reviewer,
        "decided_at": now_iso(),
    }
    runtime = ctx.runtime
    try:
        await runtime.update_data_if(
            record.id, {"stage": "awaiting_approval", "decision": None}, {"decision": decision}
        )
    except DataConflictError:
        data = (await runtime.get(record.id)).data
        earlier = data.get("decision")
        if earlier is None:
            raise EndpointError(
                "story_not_awaiting_approval",
                f"story {record.name!r} is not awaiting approval (stage: {data.get('stage')})",
            ) from None
        same = all(earlier.get(k) == decision[k] for k in ("approved", "reason", "reviewer"))
        if data.get("stage") != "awaiting_approval" or not same:
            raise EndpointError(
                "story_already_decided",
                f"story {record.name!r} was decided already: {_decided(earlier)}",
                earlier,
            ) from None
        # The same decision again, and the pipeline has not got it yet: a retry of a call
        # that may have stopped between recording the decision and sending it. Send it (the
        # pipeline takes the first message only, so a second copy is harmless).
        decision = earlier
    await runtime.send_message(
        record.id, "approved" if decision["approved"] else "declined", decision
    )
    return {"story_id": record.id, "decision": decision}


def _decided(decision: dict[str, Any]) -> str:
    verdict = "approved" if decision.get("approved") else "declined"
    by = f" by {decision['reviewer']}" if decision.get("reviewer") else ""
    return f"{verdict}{by} at {decision.get('decided_at')}"


async def story_status(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``stories/status``: ``{story_id}`` → its stage, counts and each image's entity (its
    status and, for a failed one, its error)."""
    ref = parse_body(body, StoryRef, "stories/status")
    record = await fetch_entity(ctx, ref.story_id, StoryPipeline.type_name, "story")
    d = record.data
    images = []
    for child in await ctx.runtime.children(record.id):
        if child.type != "ImageGeneration":
            continue
        image: dict[str, Any] = {
            "placeholder": child.data.get("placeholder"),
            "entity_id": child.id,
            "name": child.name,
            "status": child.status.value,
        }
        if child.error or child.data.get("error"):
            image["error"] = child.data.get("error") or (child.error or {}).get("message")
        images.append(image)
    return {
        "story_id": record.id,
        "name": record.name,
        "topic": d.get("topic"),
        "title": d.get("title"),
        "customization": d.get("customization"),
        "stage": d.get("stage"),
        "status": d.get("status"),
        "run": record.status.value,
        "images_total": d.get("images_total", 0),
        "images_generated": d.get("images_generated", 0),
        "images_failed": d.get("images_failed", 0),
        "images": images,
        "decision": d.get("decision"),
        "reasons": d.get("reasons"),
        "html_key": d.get("html_key"),
    }


async def story_html(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``stories/html``: ``{story_id}`` → ``{story_id, title, html}``, the page with its
    images inline. Errors: ``story_not_found``, ``story_not_ready`` (not completed yet, or
    rejected or declined)."""
    ref = parse_body(body, StoryRef, "stories/html")
    record = await fetch_entity(ctx, ref.story_id, StoryPipeline.type_name, "story")
    d = record.data
    key = d.get("html_key")
    if d.get("stage") not in FINAL_STAGES or not isinstance(key, str):
        raise EndpointError(
            "story_not_ready",
            f"story {record.name!r} has no page (stage: {d.get('stage')}, "
            f"status: {d.get('status')})",
        )
    page = await services_of(ctx).blobs.get(key)
    return {"story_id": record.id, "title": d.get("title"), "html": page.decode()}


ENDPOINTS = {
    "stories/create": create_story,
    "stories/approve": approve_story,
    "stories/status": story_status,
    "stories/html": story_html,
}


def create_app(
    config: StoryConfig | None = None,
    *,
    writer: Writer | None = None,
    safety: SafetyChecker | None = None,
    blobs: BlobStore | None = None,
    transport: Callable[[], httpx.AsyncBaseTransport] | None = None,
) -> Application:
    """The story application (seed 002), to serve with a
    :class:`~sluiceway.server.RuntimeServer` or ``sluiceway serve --app
    sluiceway.apps.stories:app``.

    Args:
        config: how stories run (default: :meth:`StoryConfig.from_env`, read when the server
            starts).
        writer: writes each story (default: :class:`TemplateWriter`).
        safety: checks each request (default: :class:`WordListSafetyChecker`).
        blobs: where images are read and pages kept (default: a
            :class:`~sluiceway.apps.imagegen.FileBlobStore` on ``config.blob_dir``).
        transport: makes the HTTP transport of the image service's client (default: httpx's).
    """
    if writer is not None and not isinstance(writer, Writer):
        raise TypeError(f"writer must have an async write(request), got {writer!r}")
    if safety is not None and not isinstance(safety, SafetyChecker):
        raise TypeError(f"safety must have an async check(text), got {safety!r}")
    if blobs is not None and not isinstance(blobs, BlobStore):
        raise TypeError(f"blobs must have async put(data, extension=) and get(key), got {blobs!r}")

    @contextlib.asynccontextmanager
    async def lifespan(runtime: Runtime) -> AsyncIterator[StoryServices]:
        settings = config if config is not None else StoryConfig.from_env()
        async with httpx.AsyncClient(
            base_url=settings.image_url,
            timeout=settings.request_timeout,
            transport=None if transport is None else transport(),
        ) as http:
            images = runtime.gauges.watch(CapacitySource(settings.global_limit), name="images")
            yield StoryServices(
                config=settings,
                http=http,
                global_capacity=images,
                blobs=blobs if blobs is not None else FileBlobStore(settings.blob_path),
                writer=writer or TemplateWriter(),
                safety=safety or WordListSafetyChecker(),
            )

    return Application("stories", types=TYPES, endpoints=dict(ENDPOINTS), lifespan=lifespan)
