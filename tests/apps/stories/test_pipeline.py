"""The story pipeline end to end on virtual time: error isolation, the approval wait, the
safety check, customization reaching every image, the page, the endpoints' errors, and a
restart that finds the finished images."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import trio
import trio.testing

from sluiceway import EntityFailedError
from sluiceway.apps.imagegen import FaultRule, ImageFaults
from sluiceway.apps.stories import ImagePrompt, StoryRequest, WrittenStory
from sluiceway.server import EndpointError
from tests.apps.stories.story_stack import Stories, story_stack
from tests.helpers import eventually

IMG = re.compile(r'<img src="data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)" alt="([^"]*)"')


async def stage(stories: Stories, story_id: str) -> str:
    value: str = (await stories.runtime.get(story_id)).data["stage"]
    return value


async def test_a_failed_image_keeps_its_placeholder_and_fails_alone(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    broken = FaultRule(match=("{{IMAGE_3}}",), fail_status=500)
    async with story_stack(tmp_path, faults=ImageFaults(latency=10.0, rules=(broken,))) as stories:
        story = await stories.create("a brave kitten", "brave-kitten")
        result = await stories.runtime.wait(story)
        assert result["status"] == "completed_with_errors"
        assert (result["images_generated"], result["images_failed"]) == (4, 1)
        record = await stories.runtime.get(story)
        assert record.status.value == "COMPLETED"
        assert record.data["stage"] == "completed"
        assert record.data["images_failed"] == 1

        images = await stories.images(story)
        assert {p: r.status.value for p, r in images.items()} == {
            "{{IMAGE_1}}": "COMPLETED", "{{IMAGE_2}}": "COMPLETED", "{{IMAGE_3}}": "FAILED",
            "{{IMAGE_4}}": "COMPLETED", "{{IMAGE_5}}": "COMPLETED",
        }  # fmt: skip
        failed = images["{{IMAGE_3}}"]
        assert failed.name == "image-{{IMAGE_3}}"
        assert "GENERATION_FAILED" in failed.data["error"]
        assert failed.error is not None
        assert "GENERATION_FAILED" in failed.error["message"]

        envelopes = await stories.runtime.envelopes(story)
        errors = [e for e in envelopes if e.type == "ERROR"]
        assert [e.entity_name for e in errors] == ["image-{{IMAGE_3}}"]
        assert any(
            e.entity_id == story and "Image {{IMAGE_3}} failed" in (e.message or "")
            for e in envelopes
        )

        page = (await stories.call("stories/html", {"story_id": story}))["html"]
        inline = IMG.findall(page)
        assert len(inline) == 4
        by_alt = {alt: base64.b64decode(data) for _, data, alt in inline}
        for placeholder, image in images.items():
            if placeholder != "{{IMAGE_3}}":
                blob = await stories.blobs.get(image.data["image"]["object_key"])
                assert by_alt[image.data["alt_text"]] == blob
        # The failed image's placeholder stays, visible, with its error.
        missing = re.search(
            r'<figure class="image-missing" data-placeholder="([^"]+)">(.*?)</figure>', page
        )
        assert missing is not None
        assert missing.group(1) == "{{IMAGE_3}}"
        assert '<div class="placeholder">{{IMAGE_3}}</div>' in missing.group(2)
        assert "GENERATION_FAILED" in missing.group(2)
        for n in (1, 2, 4, 5):
            assert f"{{{{IMAGE_{n}}}}}" not in page

        status = await stories.call("stories/status", {"story_id": story})
        assert status["stage"] == "completed"
        assert status["status"] == "completed_with_errors"
        assert [i["placeholder"] for i in status["images"] if i["status"] == "FAILED"] == [
            "{{IMAGE_3}}"
        ]
        assert "GENERATION_FAILED" in status["images"][2]["error"]


async def test_the_pipeline_parks_until_approved_and_generates_nothing_before(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with story_stack(tmp_path) as stories:
        story = await stories.create("a lighthouse keeper", "keeper", require_approval=True)

        async def awaiting() -> bool:
            return await stage(stories, story) == "awaiting_approval"

        await eventually(awaiting)
        await trio.sleep(3600)  # nobody answers for an hour: the run parks, holding nothing
        record = await stories.runtime.get(story)
        assert (record.parked_on, record.lease_owner) == ("message", None)
        assert record.data["title"] == "The Tale of Lighthouse Keeper"
        assert (await stories.service.stats())["generations"] == 0
        assert await stories.images(story) == {}

        answer = await stories.call(
            "stories/approve", {"story_id": story, "reviewer": "editor@example.com"}
        )
        assert answer["decision"]["approved"] is True
        with pytest.raises(EndpointError, match="was decided already: approved by editor"):
            await stories.call("stories/approve", {"story_id": story, "approved": False})
        result = await stories.runtime.wait(story)
        assert result["status"] == "completed"
        assert (await stories.service.stats())["generations"] == 5
        with pytest.raises(EndpointError) as raised:
            await stories.call("stories/approve", {"story_id": story})
        assert raised.value.code == "story_already_decided"


async def test_a_declined_story_generates_no_image_and_has_no_page(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with story_stack(tmp_path) as stories:
        story = await stories.create("a lighthouse keeper", "keeper", require_approval=True)
        with pytest.raises(EndpointError) as early:
            await stories.call("stories/html", {"story_id": story})
        assert early.value.code == "story_not_ready"

        async def awaiting() -> bool:
            return await stage(stories, story) == "awaiting_approval"

        await eventually(awaiting)
        await stories.call(
            "stories/approve", {"story_id": story, "approved": False, "reason": "too dark"}
        )
        result = await stories.runtime.wait(story)
        assert result == {
            "story_id": story, "name": "story-pipeline-keeper", "status": "declined",
            "reason": "too dark",
        }  # fmt: skip
        assert await stage(stories, story) == "declined"
        assert (await stories.service.stats())["requests"] == 0
        with pytest.raises(EndpointError, match="stage: declined"):
            await stories.call("stories/html", {"story_id": story})


async def test_an_unsafe_request_is_rejected_before_anything_is_written(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with story_stack(tmp_path) as stories:
        story = await stories.create("a pirate with a gun and a lot of BLOOD", "pirate")
        result = await stories.runtime.wait(story)
        assert result["status"] == "rejected"
        assert result["reasons"] == [
            "'gun' is not allowed (weapons)", "'blood' is not allowed (violence)",
        ]  # fmt: skip
        children = await stories.runtime.children(story)
        assert [(c.name, c.type) for c in children] == [("safety-check", "ContentSafetyCheck")]
        status = await stories.call("stories/status", {"story_id": story})
        assert (status["stage"], status["run"]) == ("rejected", "COMPLETED")


async def test_customization_reaches_every_image(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    custom = {
        "illustration_style": "watercolor",
        "image_quality": "low",
        "aspect_ratio": "16:9",
        "num_illustrations": 3,
    }
    async with story_stack(tmp_path) as stories:
        story = await stories.create("an otter who bakes bread", "otter", customization=custom)
        result = await stories.runtime.wait(story)
        assert result["images_total"] == 3
        images = await stories.images(story)
        assert sorted(images) == ["{{IMAGE_1}}", "{{IMAGE_2}}", "{{IMAGE_3}}"]
        for image in images.values():
            assert image.data["image_quality"] == "low"
            assert image.data["aspect_ratio"] == "16:9"
            assert image.data["prompt"].startswith("a soft watercolor illustration of ")
            made = image.data["image"]
            assert made["content_type"] == "image/jpeg"
            assert made["width"] * 9 == made["height"] * 16
        page = (await stories.call("stories/html", {"story_id": story}))["html"]
        assert [kind for kind, _, _ in IMG.findall(page)] == ["image/jpeg"] * 3


async def test_bad_requests_get_every_problem_named(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with story_stack(tmp_path) as stories:
        with pytest.raises(EndpointError) as raised:
            await stories.call(
                "stories/create",
                {
                    "topic": " ",
                    "name": "Not A Slug",
                    "customization": {
                        "image_quality": "ultra", "aspect_ratio": "5:4",
                        "num_illustrations": 0, "font": "serif",
                    },
                },
            )  # fmt: skip
        assert raised.value.code == "invalid_story"
        problems = raised.value.details
        assert len(problems) == 6
        for needle in ("topic", "ultra", "5:4", "num_illustrations", "font", "name"):
            assert any(needle in p for p in problems), needle
        with pytest.raises(EndpointError) as raised:
            await stories.call("stories/create", {"topic": "x", "colour": "red"})
        assert raised.value.code == "invalid_body"
        await stories.create("a fox", "fox")
        with pytest.raises(EndpointError) as raised:
            await stories.create("another fox", "fox")
        assert raised.value.code == "story_exists"
        with pytest.raises(EndpointError) as raised:
            await stories.call("stories/status", {"story_id": "no-such-story"})
        assert raised.value.code == "story_not_found"


async def test_a_restarted_runtime_finishes_the_story_without_generating_an_image_twice(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    slow = ImageFaults(latency=10.0, rules=(FaultRule(match=("{{IMAGE_5}}",), latency=40),))
    async with story_stack(tmp_path, faults=slow) as stories:
        story = await stories.create("a sleepy owl", "owl")
        await trio.sleep(25)  # images 1-4 done, image 5 generating: the process stops here
        done = {
            p for p, r in (await stories.images(story)).items() if r.status.value == "COMPLETED"
        }
        assert done == {"{{IMAGE_1}}", "{{IMAGE_2}}", "{{IMAGE_3}}", "{{IMAGE_4}}"}
    async with story_stack(tmp_path, faults=slow) as stories:
        result = await stories.runtime.wait(story)  # its lease expires, and this runtime resumes it
        assert (result["status"], result["images_generated"]) == ("completed", 5)
        counts = await stories.service.counts()
        assert len(counts) == 5
        assert all(count["generations"] == 1 for count in counts.values())
        images = await stories.images(story)
        for placeholder in done:
            key = f"ImageGeneration:{images[placeholder].id}:generate"
            assert counts[key]["requests"] == 1  # a finished image was not asked for again


async def test_a_bare_message_decides_by_its_name(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with story_stack(tmp_path) as stories:
        ids = [
            await stories.create("a quiet heron", name, require_approval=True)
            for name in ("yes", "no")
        ]

        async def awaiting() -> bool:
            return {await stage(stories, i) for i in ids} == {"awaiting_approval"}

        await eventually(awaiting)
        await stories.runtime.send_message(ids[0], "approved")  # `sluiceway send <id> approved`
        await stories.runtime.send_message(ids[1], "declined")
        assert (await stories.runtime.wait(ids[0]))["status"] == "completed"
        assert (await stories.runtime.wait(ids[1]))["status"] == "declined"


class _BrokenWriter:
    async def write(self, request: StoryRequest) -> WrittenStory:
        return WrittenStory(title="Oops", paragraphs=("No placeholder here.",), image_prompts=(
            ImagePrompt(placeholder="{{IMAGE_1}}", prompt="a cat", alt_text="a cat"),
        ))  # fmt: skip


async def test_a_writer_whose_story_does_not_fit_fails_the_pipeline_saying_why(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with story_stack(tmp_path, writer=_BrokenWriter()) as stories:
        story = await stories.create("a cat", "cat")
        with pytest.raises(EntityFailedError, match="is not in the story's text"):
            await stories.runtime.wait(story)
        status = await stories.call("stories/status", {"story_id": story})
        assert (status["stage"], status["status"], status["run"]) == ("writing", "failed", "FAILED")
        assert (await stories.service.stats())["requests"] == 0
