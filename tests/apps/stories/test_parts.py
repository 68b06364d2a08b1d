"""The story application's local services and pure parts: the request, the template writer,
the word-list safety check and the page."""

from __future__ import annotations

import html

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from sluiceway.apps.stories import (
    MAX_ILLUSTRATIONS,
    STYLES,
    Customization,
    ImagePrompt,
    InlineImage,
    InvalidStoryRequest,
    SafetyChecker,
    StoryConfig,
    StoryRequest,
    TemplateWriter,
    WordListSafetyChecker,
    Writer,
    WrittenStory,
    placeholder,
    story_html,
)


def test_customization_defaults_are_the_originals() -> None:
    assert Customization.from_json(None) == Customization(
        illustration_style="storybook", image_quality="medium", aspect_ratio="3:2",
        num_illustrations=5,
    )  # fmt: skip
    assert Customization.from_json({"num_illustrations": 2}).num_illustrations == 2


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("watercolor", "an object"),
        ({"illustration_style": "crayon"}, "'crayon' is not one of"),
        ({"num_illustrations": True}, "num_illustrations"),
        ({"num_illustrations": MAX_ILLUSTRATIONS + 1}, "from 1 to 10"),
        ({"size": 3}, "customization.size: unknown"),
    ],
)
def test_a_bad_customization_is_named(value: object, needle: str) -> None:
    with pytest.raises(InvalidStoryRequest, match=needle):
        Customization.from_json(value)


def test_a_request_lists_all_its_problems() -> None:
    with pytest.raises(InvalidStoryRequest) as raised:
        StoryRequest.parse("x" * 501, {"image_quality": "best", "aspect_ratio": "1:2"})
    assert len(raised.value.problems) == 3
    with pytest.raises(InvalidStoryRequest, match="control characters"):
        StoryRequest.parse("a\x00b")
    with pytest.raises(InvalidStoryRequest, match="image placeholder"):
        StoryRequest.parse("a cat called {{image_1}}")
    with pytest.raises(InvalidStoryRequest, match="a string"):
        StoryRequest.parse(42)
    request = StoryRequest.parse("  a brave kitten  ")
    assert StoryRequest.from_data(request.to_json()) == request
    assert request.topic == "a brave kitten"


async def test_the_template_writer_is_deterministic_and_uses_the_style() -> None:
    writer = TemplateWriter()
    assert isinstance(writer, Writer)
    request = StoryRequest.parse("a brave kitten", {"illustration_style": "pixel-art"})
    story = await writer.write(request)
    assert story == await writer.write(request)
    assert story.title == "The Tale of Brave Kitten"
    assert [p.placeholder for p in story.image_prompts] == [placeholder(n) for n in range(1, 6)]
    assert all(p.prompt.startswith(STYLES["pixel-art"]) for p in story.image_prompts)
    assert all("a brave kitten" in p.prompt for p in story.image_prompts)
    assert story.problems(5) == []
    assert WrittenStory.from_json(story.to_json()) == story
    other = await writer.write(StoryRequest.parse("a lost robot"))
    assert other.paragraphs != story.paragraphs


@given(
    topic=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=80).filter(
        str.strip
    ),
    count=st.integers(1, MAX_ILLUSTRATIONS),
)
def test_every_written_story_fits_its_request(topic: str, count: int) -> None:
    request = StoryRequest.parse(topic, {"num_illustrations": count})
    story = trio.run(TemplateWriter().write, request)
    assert len(story.image_prompts) == count
    assert story.problems(count) == []


def test_a_story_that_does_not_fit_is_described() -> None:
    story = WrittenStory(
        title=" ",
        paragraphs=("Once.", "{{IMAGE_1}}", "{{IMAGE_7}}"),
        image_prompts=(
            ImagePrompt(placeholder="{{IMAGE_1}}", prompt="a", alt_text="a"),
            ImagePrompt(placeholder="{{IMAGE_1}}", prompt="b", alt_text="b"),
            ImagePrompt(placeholder="{{IMAGE_2}}", prompt=" ", alt_text="c"),
            ImagePrompt(placeholder="IMAGE_3", prompt="d", alt_text="d"),
        ),
    )
    assert story.problems(2) == [
        "the title is empty",
        "{{IMAGE_1}} has two prompts",
        "{{IMAGE_2}} is not in the story's text",
        "{{IMAGE_2}} has an empty prompt",
        "'IMAGE_3' is not a placeholder like {{IMAGE_1}}",
        "{{IMAGE_7}} is in the text but has no prompt",
        "4 images, 2 were asked for",
    ]


async def test_the_word_list_checker_names_each_blocked_word() -> None:
    checker = WordListSafetyChecker()
    assert isinstance(checker, SafetyChecker)
    assert (await checker.check("a kitten who learns to swim")).safe
    verdict = await checker.check("Guns, guns and a BOMB; bloodhound is fine")
    assert not verdict.safe
    assert verdict.categories == ("weapons",)
    assert verdict.reasons == ("'guns' is not allowed (weapons)", "'bomb' is not allowed (weapons)")
    custom = WordListSafetyChecker({"food": ["broccoli"]})
    assert not (await custom.check("Broccoli!")).safe
    assert (await custom.check("a gun")).safe
    with pytest.raises(ValueError, match="lowercase letters"):
        WordListSafetyChecker({"x": ["two words"]})


def test_the_page_inlines_images_escapes_text_and_keeps_missing_placeholders() -> None:
    story = WrittenStory(
        title="Cats & <Dogs>",
        paragraphs=(
            "It was <b>late</b>.",
            "{{IMAGE_1}}",
            "Then {{IMAGE_2}} inline.",
            "{{IMAGE_3}}",
        ),
        image_prompts=tuple(
            ImagePrompt(placeholder=placeholder(n), prompt="p", alt_text=f'alt "{n}"')
            for n in (1, 2, 3)
        ),
    )
    png = InlineImage(
        data=b"\x89PNG", content_type="image/png", alt_text='alt "1"', width=3, height=2
    )
    page = story_html(
        story, {"{{IMAGE_1}}": png, "{{IMAGE_2}}": png}, {"{{IMAGE_3}}": "503 <busy>"}
    )
    assert "<title>Cats &amp; &lt;Dogs&gt;</title>" in page
    assert "<p>It was &lt;b&gt;late&lt;/b&gt;.</p>" in page
    assert page.count('<img src="data:image/png;base64,iVBORw==" alt="alt &quot;1&quot;"') == 2
    assert '<div class="placeholder">{{IMAGE_3}}</div>' in page
    assert html.escape("503 <busy>") in page
    assert "{{IMAGE_1}}" not in page
    assert "{{IMAGE_2}}" not in page


def test_the_configuration_comes_from_the_environment() -> None:
    config = StoryConfig.from_env(
        {
            "SLUICEWAY_IMAGE_URL": "http://127.0.0.1:9000/",
            "SLUICEWAY_BLOB_DIR": "/tmp/blobs",
            "SLUICEWAY_STORY_IMAGE_CONCURRENCY": "2",
            "SLUICEWAY_GLOBAL_IMAGE_CONCURRENCY": "",  # empty: the default
        }
    )
    assert (config.image_url, config.blob_dir) == ("http://127.0.0.1:9000", "/tmp/blobs")
    assert (config.per_story, config.global_limit) == (2, 10)
    with pytest.raises(ValueError, match="SLUICEWAY_IMAGE_ATTEMPTS must be an integer"):
        StoryConfig.from_env({"SLUICEWAY_IMAGE_ATTEMPTS": "three"})
    with pytest.raises(ValueError, match="per_story must be an integer >= 1"):
        StoryConfig.from_env({"SLUICEWAY_STORY_IMAGE_CONCURRENCY": "0"})
    with pytest.raises(ValueError, match="image_url must be an http"):
        StoryConfig(image_url="ftp://x")
