"""The pieces of the story application's crash test (``test_story_crash``): the stories it
asks for, what it sees of them and of the image service at each look (the pipelines through
``stories/status``, the service through its per-key counts), what it calls a kill by that,
and how it waits, inside one server's life, for the moment it means to kill at."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from sluiceway.client import Client

#: The lifetime moments the test aims its kills at (see :meth:`Snapshot.labels`).
STARTING = "images-starting"  # a story's first images in flight, none of them done yet
MIXED = "images-mixed"  # a story with images done and others in flight
ASSEMBLING = "assembling"  # a story with every image done and no page yet
AWAITING = "awaiting-approval"  # the story waiting for its reviewer in a server's run
PARKED = "parked"  # the story waiting for its reviewer, parked: no run holds it
APPROVED = "approved"  # moments after the approval (set by the test: it approved)


def image_key(entity_id: str) -> str:
    """The idempotency key an image entity generates its image under."""
    return f"ImageGeneration:{entity_id}:generate"


@attrs.frozen(kw_only=True)
class StorySpec:
    """A story the test asks for (``stories/create``)."""

    name: str
    topic: str
    customization: dict[str, Any] | None = None
    require_approval: bool = False

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "topic": self.topic,
            "name": self.name,
            "require_approval": self.require_approval,
        }
        if self.customization is not None:
            body["customization"] = self.customization
        return body

    @property
    def images(self) -> int:
        """How many images the story has (the customization's, or the default 5)."""
        return int((self.customization or {}).get("num_illustrations", 5))


@attrs.frozen
class Snapshot:
    """What the test saw at one look (or in the store just after a kill): each story's
    ``stories/status`` (by story name), then the image service's counts (by idempotency key).
    The counts are read after the statuses:
    an image entity COMPLETED in ``status`` had its image answered before, so its key's
    ``requests`` here are all it was ever to have."""

    at: float  # epoch seconds
    status: dict[str, dict[str, Any]]
    counts: dict[str, dict[str, int]]

    def images(self, story: str, status: str) -> list[dict[str, Any]]:
        """The story's image entities (``stories/status``'s ``images``) with this status."""
        return [image for image in self.status[story]["images"] if image["status"] == status]

    def completed(self) -> dict[str, int]:
        """The COMPLETED image entities, each with its key's ``requests`` at this look."""
        return {
            image["entity_id"]: self.counts[image_key(image["entity_id"])]["requests"]
            for story in self.status
            for image in self.images(story, "COMPLETED")
        }

    def generating(self) -> list[str]:
        """The stories generating their images (not all done yet)."""
        return [
            story
            for story, status in self.status.items()
            if status["stage"] == "generating_images"
            and len(self.images(story, "COMPLETED")) < status["images_total"]
        ]

    def done(self, stories: Mapping[str, object]) -> bool:
        """Whether each of these stories has its page and its run has ended (the stage is
        recorded ``completed`` just before the run returns). For the looks through the
        server only (they have ``run``)."""
        return all(
            story in self.status
            and self.status[story]["stage"] == "completed"
            and self.status[story]["run"] == "COMPLETED"
            for story in stories
        )

    def summary(self) -> str:
        """Each story in a few characters: its stage's first letters, then its images done,
        in progress, and in all (``gen 2+3/5``)."""
        parts = []
        for story, status in self.status.items():
            done = len(self.images(story, "COMPLETED"))
            running = len(self.images(story, "IN_PROGRESS"))
            stage = str(status["stage"])[:5]
            parts.append(f"{story} {stage} {done}+{running}/{status['images_total']}")
        return "; ".join(parts)

    def labels(self, approval: str) -> tuple[str, ...]:
        """What the stories were doing at this look (``approval``: the story a reviewer
        approves): the moments of :data:`STARTING`, :data:`MIXED`, :data:`ASSEMBLING`,
        :data:`AWAITING` and :data:`PARKED` it shows."""
        found = []
        for story, status in self.status.items():
            done = len(self.images(story, "COMPLETED"))
            running = len(self.images(story, "IN_PROGRESS"))
            total = status["images_total"]
            if status["stage"] == "generating_images" and running and not done:
                found.append(STARTING)
            if running and done:
                found.append(MIXED)
            if status["stage"] in ("generating_images", "assembling") and 0 < total == done:
                found.append(ASSEMBLING)
        reviewed = self.status.get(approval, {})
        if reviewed.get("stage") == "awaiting_approval":
            found.append(PARKED if reviewed["parked"] else AWAITING)
        return tuple(sorted(set(found)))


async def observe(client: Client, http: httpx.AsyncClient, stories: Mapping[str, str]) -> Snapshot:
    """One look at ``stories`` (story ids by name) and at the service's counts. A story
    awaiting approval is also looked up as an entity: ``parked`` says whether its wait is
    parked (no run holds it: it waits in the store alone)."""
    status = {}
    for name, story_id in stories.items():
        status[name] = await client.call("stories/status", {"story_id": story_id})
        status[name]["parked"] = False
        if status[name]["stage"] == "awaiting_approval":
            record = await client.get(story_id)
            status[name]["parked"] = parked(record["parked_on"], record["lease_owner"])
    answer = await http.get("/v1/images/counts")
    answer.raise_for_status()
    return Snapshot(at=time.time(), status=status, counts=answer.json()["keys"])


def parked(parked_on: str | None, lease_owner: str | None) -> bool:
    """Whether an entity waiting for a message is parked on it, its run ended."""
    return parked_on == "message" and lease_owner is None


def read_store(db: Path) -> dict[str, dict[str, Any]]:
    """The stories as the store holds them, read from its SQLite file (read-only, while no
    server runs: just after a kill, this is how they were at the kill), in the shape of
    ``stories/status`` (``stage``, ``images_total``, ``images``, and :func:`observe`'s
    ``parked``), by story name."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT id, parent_id, name, type, status, data, parked_on, lease_owner"
            " FROM entities WHERE type IN ('StoryPipeline', 'ImageGeneration')"
            " ORDER BY type DESC, created_at"
        ).fetchall()
    stories: dict[str, dict[str, Any]] = {}
    by_id: dict[str, dict[str, Any]] = {}
    for entity_id, parent, name, kind, status, data, parked_on, lease_owner in rows:
        d = json.loads(data)
        if kind == "StoryPipeline":  # the pipelines first, then their images
            story = {
                "stage": d.get("stage"),
                "images_total": d.get("images_total", 0),
                "images": [],
                "parked": parked(parked_on, lease_owner),
            }
            stories[name.removeprefix("story-pipeline-")] = by_id[entity_id] = story
        else:
            image = {"entity_id": entity_id, "status": status, "placeholder": d["placeholder"]}
            by_id[parent]["images"].append(image)
    return stories


async def watch_for_assembly(
    client: Client, story_id: str, total: int, *, not_before: float, ready: trio.Event
) -> None:
    """Follow a story's envelopes (its images' too) and, when the last of its ``total`` image
    entities completes (the story has every image: it assembles its page now) at
    ``not_before`` (epoch seconds) or later, set ``ready``."""
    finished: set[str] = set()
    async with client.subscribe(story_id) as envelopes:
        async for envelope in envelopes:
            if envelope.entity_type == "ImageGeneration" and envelope.status == "COMPLETED":
                finished.add(envelope.entity_id)
                if len(finished) == total:
                    if time.time() >= not_before:
                        ready.set()
                    return
