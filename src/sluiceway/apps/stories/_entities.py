"""Seed 002's entities: the story pipeline, its safety check, its writer and one entity per
image.

A :class:`StoryPipeline` checks its request (a :class:`ContentSafetyCheck` child), writes the
story (a :class:`StoryWriter` child), waits for a reviewer's approval (a durable message wait,
parked while nobody answers), generates every image as its own :class:`ImageGeneration` child
through ``ctx.parallel_calls`` and a task pool runner under a per-story capacity inside the
process-wide one, and assembles the page. A re-run (after a crash) finds every child it made
before: finished ones return their stored results, so no image is generated twice.
"""

from __future__ import annotations

import datetime
from typing import Any

from ..._errors import EntityFailedError
from ...capacity import CapacitySource
from ...entities import RunContext, RunnableEntity, WaitableEntity
from ...runners import EnvelopeKind, HierarchicalTaskPoolRunner, TaskEnvelope
from .._requests import SendError, post_with_retries
from ..imagegen import BlobCorruptError, BlobNotFoundError
from ._config import services_of
from ._html import InlineImage, story_html
from ._request import StoryRequest
from ._writer import WrittenStory

#: The pipeline's stages, in order (``stage`` in its data; it never goes back).
STAGES = (
    "created",
    "safety_check",
    "writing",
    "awaiting_approval",
    "generating_images",
    "assembling",
)

#: Stages that end a pipeline: ``completed``, ``rejected`` by the safety check, ``declined``
#: by the reviewer.
FINAL_STAGES = ("completed", "rejected", "declined")

_RANK = {**{stage: rank for rank, stage in enumerate(STAGES)}, **dict.fromkeys(FINAL_STAGES, 99)}


def now_iso() -> str:
    """The current UTC time as ISO 8601."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class ContentSafetyCheck(RunnableEntity, type_name="ContentSafetyCheck"):
    """Checks the request's ``text`` with the application's safety checker and returns the
    verdict ``{"safe", "categories", "reasons"}``."""

    async def run_impl(self, ctx: RunContext) -> Any:
        verdict = await services_of(ctx).safety.check(ctx.data["text"])
        await ctx.update_data(safe=verdict.safe, reasons=list(verdict.reasons))
        return verdict.to_json()


class StoryWriter(RunnableEntity, type_name="StoryWriter"):
    """Writes the story of its request (``topic``, ``customization``) with the application's
    writer and returns it (title, paragraphs, image prompts). A story that does not fit the
    request (a prompt without its placeholder, too many images...) fails it, naming why."""

    async def run_impl(self, ctx: RunContext) -> Any:
        request = StoryRequest.from_data(ctx.data)
        await ctx.status("RUNNING", f"Writing a story about {request.topic}")
        story = await services_of(ctx).writer.write(request)
        problems = story.problems(request.customization.num_illustrations)
        if problems:
            raise ValueError("the writer's story is unusable: " + "; ".join(problems))
        await ctx.update_data(title=story.title, images=len(story.image_prompts))
        return story.to_json()


class ImageGeneration(RunnableEntity, type_name="ImageGeneration"):
    """Generates one image: asks the image service for its ``prompt`` (with the
    ``image_quality`` and ``aspect_ratio`` of its data) under an idempotency key of its own,
    reads the bytes back from the blob store to check them, and returns where they are. A
    failure is kept in its data (``error``) and fails this entity alone."""

    async def run_impl(self, ctx: RunContext) -> Any:
        services = services_of(ctx)
        config = services.config
        d = ctx.data
        name = d["placeholder"]
        await ctx.status("RUNNING", f"Generating image for {name}")

        async def retrying(problem: str) -> None:
            await ctx.status("RUNNING", f"Retrying {name}: {problem}")

        body = {
            "prompt": d["prompt"],
            "quality": d["image_quality"],
            "aspect_ratio": d["aspect_ratio"],
            "idempotency_key": ctx.idempotency_key("generate"),
            "metadata": {
                "story": d["story"],
                "placeholder": name,
                "model_pool": d["model_pool"],
            },
        }
        try:
            image = await post_with_retries(
                services.http,
                "/v1/images/generate",
                body,
                attempts=config.image_attempts,
                retry_delay=config.retry_delay,
                what="the image service",
                on_retry=retrying,
            )
            object_key = image.get("object_key")
            if not isinstance(object_key, str):
                raise SendError(f"the image service returned no object_key for {name}")
            await ctx.status("RUNNING", f"Retrieving {name} from storage")
            data = await services.blobs.get(object_key)
        except (SendError, BlobNotFoundError, BlobCorruptError) as exc:
            await ctx.update_data(status="failed", error=str(exc))
            raise
        result = {
            "placeholder": name,
            "object_key": object_key,
            "content_type": image.get("content_type") or _content_type(object_key),
            "alt_text": d["alt_text"],
            "width": image.get("width", 0),
            "height": image.get("height", 0),
            "bytes": len(data),
        }
        await ctx.update_data(status="completed", image=result)
        return result


def _content_type(object_key: str) -> str:
    return "image/png" if object_key.endswith(".png") else "image/jpeg"


class StoryPipeline(
    WaitableEntity,
    type_name="StoryPipeline",
    allowed_connections={"Calls": [ContentSafetyCheck, StoryWriter, ImageGeneration]},
):
    """One illustrated story, from request to page (see the module's description). Its data
    says where it is: ``stage`` (:data:`STAGES`, then one of :data:`FINAL_STAGES`),
    ``images_total``, ``images_generated``, ``images_failed``; when it completes,
    ``html_key`` (the page in the blob store) and ``status`` (``completed``, or
    ``completed_with_errors`` when some image failed and its placeholder was kept)."""

    async def run_impl(self, ctx: RunContext) -> Any:
        request = StoryRequest.from_data(ctx.data)
        await _advance(ctx, "safety_check")
        await ctx.status("RUNNING", "Checking the request's content safety")
        check = await ctx.append_or_retrieve_call(
            ContentSafetyCheck, "safety-check", {"text": request.topic}
        )
        verdict = await check.run()
        if not verdict["safe"]:
            reasons = list(verdict["reasons"])
            await _advance(ctx, "rejected", status="rejected", reasons=reasons)
            await ctx.status("RUNNING", "The request was rejected: " + "; ".join(reasons))
            return _outcome(ctx, "rejected", reasons=reasons)

        await _advance(ctx, "writing")
        await ctx.status("RUNNING", "Writing the story")
        writer = await ctx.append_or_retrieve_call(StoryWriter, "story-writer", request.to_json())
        try:
            story = WrittenStory.from_json(await writer.run())
        except EntityFailedError as exc:
            # Without a story there is nothing to illustrate: the pipeline fails, saying why.
            await ctx.update_data(status="failed", error=str(exc))
            raise

        if ctx.data.get("require_approval", True):
            await _advance(ctx, "awaiting_approval", title=story.title)
            message = await ctx.wait_for_message(
                "Approve the story to generate its images",
                {"title": story.title, "images": len(story.image_prompts)},
            )
            decision = message.data if isinstance(message.data, dict) else {}
            # stories/approve sends its decision as the data; a bare message (`sluiceway send
            # <id> approved`) decides by its name.
            if decision.get("approved", message.message == "approved") is not True:
                reason = decision.get("reason")
                await _advance(ctx, "declined", status="declined", reason=reason)
                await ctx.status("RUNNING", f"The reviewer declined the story: {reason}")
                return _outcome(ctx, "declined", reason=reason)

        generated, failures = await self._generate_images(ctx, request, story)
        await _advance(ctx, "assembling")
        html_key = await _assemble(ctx, story, generated, failures)
        status = "completed_with_errors" if failures else "completed"
        total = len(story.image_prompts)
        await _advance(
            ctx,
            "completed",
            status=status,
            title=story.title,
            html_key=html_key,
            completed_at=now_iso(),
        )
        await ctx.status("RUNNING", f"The story is ready: {len(generated)}/{total} images")
        return _outcome(
            ctx,
            status,
            title=story.title,
            html_key=html_key,
            images_total=total,
            images_generated=len(generated),
            images_failed=len(failures),
            failed_images=failures,
        )

    async def _generate_images(
        self, ctx: RunContext, request: StoryRequest, story: WrittenStory
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Stage 3 of the original: every image as a child entity, ``per_story`` at once
        under the global capacity; returns the generated images' results and the failed
        ones' errors, by placeholder."""
        services = services_of(ctx)
        custom = request.customization
        total = len(story.image_prompts)
        await _advance(
            ctx,
            "generating_images",
            title=story.title,
            images_total=total,
            images_generated=0,
            images_failed=0,
        )
        await ctx.status("RUNNING", f"Generating {total} images")
        items = [
            (
                f"image-{prompt.placeholder}",
                {
                    "placeholder": prompt.placeholder,
                    "prompt": prompt.prompt,
                    "alt_text": prompt.alt_text,
                    "model_pool": services.config.model_pool,
                    "image_quality": custom.image_quality,
                    "aspect_ratio": custom.aspect_ratio,
                    "story": ctx.name,
                    "status": "pending",
                },
            )
            for prompt in story.image_prompts
        ]
        capacity = CapacitySource(services.config.per_story, services.global_capacity)
        runner = HierarchicalTaskPoolRunner(
            "image-gen", ctx.parallel_calls(ImageGeneration, items), capacity
        )
        generated: dict[str, dict[str, Any]] = {}
        failures: dict[str, str] = {}
        # The story's slots are shown (the server's capacity operation, the page's gauges)
        # while its images generate.
        with ctx.runtime.gauges.watching(capacity, name=f"{ctx.name} images"):
            await self._follow(ctx, runner, total, generated, failures)
        return generated, failures

    async def _follow(
        self,
        ctx: RunContext,
        runner: HierarchicalTaskPoolRunner[Any, Any],
        total: int,
        generated: dict[str, dict[str, Any]],
        failures: dict[str, str],
    ) -> None:
        """Collect the images' results as they complete, counting them in the data."""
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                if envelope.kind is EnvelopeKind.FINAL and envelope.value:
                    generated[envelope.value["placeholder"]] = envelope.value
                    await _count(ctx, "images_generated", len(generated))
                    await ctx.status("RUNNING", f"Generated {len(generated)}/{total} images")
                elif envelope.kind is EnvelopeKind.ERROR:
                    placeholder, error = _failure(envelope)
                    failures[placeholder] = error
                    await _count(ctx, "images_failed", len(failures))
                    # The image's entity keeps its error; the story goes on without it.
                    await ctx.status(
                        "RUNNING", f"Image {placeholder} failed: {error}", placeholder=placeholder
                    )


def _failure(envelope: TaskEnvelope[Any, Any]) -> tuple[str, str]:
    """The placeholder of a failed image's task (its key is the child's name) and why."""
    name = str(envelope.key)
    placeholder = name.removeprefix("image-")
    error = envelope.error
    if isinstance(error, EntityFailedError):
        return placeholder, error.error.get("message") or str(error)
    return placeholder, f"{type(error).__name__}: {error}"


async def _assemble(
    ctx: RunContext,
    story: WrittenStory,
    generated: dict[str, dict[str, Any]],
    failures: dict[str, str],
) -> str:
    """Build the page from the images in the blob store and keep it there; returns its key
    (the same page, so the same key, when a re-run assembles it again)."""
    blobs = services_of(ctx).blobs
    images = {}
    for placeholder, image in generated.items():
        images[placeholder] = InlineImage(
            data=await blobs.get(image["object_key"]),
            content_type=image["content_type"],
            alt_text=image["alt_text"],
            width=image["width"],
            height=image["height"],
        )
    page = story_html(story, images, failures)
    return await blobs.put(page.encode(), extension="html")


async def _advance(ctx: RunContext, stage: str, **data: Any) -> None:
    """Record ``stage`` (with ``data``) unless the pipeline is there or past it already: a
    re-run replaying its earlier stages does not move the stage back."""
    if _RANK[stage] > _RANK.get(ctx.data.get("stage", "created"), 0):
        await ctx.update_data(stage=stage, **data)


async def _count(ctx: RunContext, key: str, value: int) -> None:
    """Record a count that only grows (a re-run counts its images again from 0)."""
    if value > ctx.data.get(key, 0):
        await ctx.update_data(**{key: value})


def _outcome(ctx: RunContext, status: str, **extra: Any) -> dict[str, Any]:
    return {"story_id": ctx.id, "name": ctx.name, "status": status, **extra}


#: Every entity type of the application.
TYPES: list[type[RunnableEntity]] = [
    StoryPipeline,
    ContentSafetyCheck,
    StoryWriter,
    ImageGeneration,
]
