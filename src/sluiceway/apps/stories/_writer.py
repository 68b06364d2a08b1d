"""Writing a story: the :class:`Writer` interface, what it returns (a title, paragraphs with
``{{IMAGE_n}}`` placeholders, and a prompt per placeholder), and a deterministic local writer
built from templates, so the application runs with no model behind it. An LLM-backed writer
implements the same one method."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

from ._request import StoryRequest

#: A placeholder, as the writer puts it in the text and the image's entity is named after.
PLACEHOLDER = re.compile(r"\{\{IMAGE_([1-9][0-9]*)\}\}")


def placeholder(n: int) -> str:
    """The ``n``-th placeholder (from 1): ``{{IMAGE_n}}``."""
    return f"{{{{IMAGE_{n}}}}}"


@attrs.frozen(kw_only=True)
class ImagePrompt:
    """One illustration to generate: its ``placeholder`` in the text, the ``prompt`` sent to
    the image service and the ``alt_text`` of the image in the HTML."""

    placeholder: str
    prompt: str
    alt_text: str


@attrs.frozen(kw_only=True)
class WrittenStory:
    """A writer's story: a ``title``, ``paragraphs`` (a paragraph that is a placeholder alone
    is where its image goes) and one :class:`ImagePrompt` per placeholder, in order."""

    title: str
    paragraphs: tuple[str, ...]
    image_prompts: tuple[ImagePrompt, ...]

    def problems(self, illustrations: int) -> list[str]:
        """What makes this story unusable for a request of ``illustrations`` images: an
        empty title or text, a prompt without its placeholder in the text (or twice), a
        placeholder in the text without a prompt, more prompts than asked for."""
        found: list[str] = []
        if not self.title.strip():
            found.append("the title is empty")
        if not any(p.strip() for p in self.paragraphs):
            found.append("the story has no text")
        text = "\n".join(self.paragraphs)
        in_text = {m.group(0) for m in PLACEHOLDER.finditer(text)}
        seen: set[str] = set()
        for prompt in self.image_prompts:
            if not PLACEHOLDER.fullmatch(prompt.placeholder):
                found.append(f"{prompt.placeholder!r} is not a placeholder like {{{{IMAGE_1}}}}")
            elif prompt.placeholder in seen:
                found.append(f"{prompt.placeholder} has two prompts")
            elif prompt.placeholder not in in_text:
                found.append(f"{prompt.placeholder} is not in the story's text")
            if not prompt.prompt.strip():
                found.append(f"{prompt.placeholder} has an empty prompt")
            seen.add(prompt.placeholder)
        found.extend(f"{p} is in the text but has no prompt" for p in sorted(in_text - seen))
        if len(self.image_prompts) > illustrations:
            found.append(f"{len(self.image_prompts)} images, {illustrations} were asked for")
        return found

    def to_json(self) -> dict[str, Any]:
        """The story as the writer's entity returns it."""
        return {
            "title": self.title,
            "paragraphs": list(self.paragraphs),
            "image_prompts": [attrs.asdict(p) for p in self.image_prompts],
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> WrittenStory:
        """Read back :meth:`to_json`'s form."""
        return cls(
            title=value["title"],
            paragraphs=tuple(value["paragraphs"]),
            image_prompts=tuple(ImagePrompt(**p) for p in value["image_prompts"]),
        )


@runtime_checkable
class Writer(Protocol):
    """Writes a story for a request: ``num_illustrations`` placeholders, each with a prompt
    in the request's illustration style. It must be deterministic enough to be run again
    after a crash (the pipeline keeps its first result and never asks twice)."""

    async def write(self, request: StoryRequest) -> WrittenStory:
        """The story for ``request``."""
        ...


# Each beat: (a line of the story, the scene its illustration shows). ``{topic}`` is the
# request's topic. The first and the last are always told; the middle ones are chosen by the
# topic's hash, in the order of this list, so a story has an arc whatever its length.
_OPENING = (
    "Once upon a time there was {topic}.",
    "{topic} at home on a quiet, sunny morning",
)
_MIDDLE = (
    ("One morning a strange map blew in through the window.", "{topic} finding an old map"),
    ("The path led into a forest where the trees whispered.", "{topic} in a whispering forest"),
    ("By the river, a shy new friend said hello.", "{topic} meeting a shy new friend by a river"),
    ("Then the sky grew dark and a storm rolled in.", "{topic} sheltering from a storm"),
    ("A tall mountain stood in the way.", "{topic} at the foot of a tall mountain"),
    ("A clever idea made everyone smile.", "{topic} having a clever idea"),
    ("At the top, the whole valley glowed in the sunset.", "{topic} above a glowing valley"),
    ("Everyone gathered for a feast under lanterns.", "{topic} at a lantern-lit feast"),
)
_ENDING = (
    "And at night, under the stars, {topic} dreamed of the next adventure. The end.",
    "{topic} asleep under a sky full of stars",
)


class TemplateWriter:
    """The local default :class:`Writer`: a short story about the topic from templates (an
    opening, middle beats chosen by the topic's hash, an ending), a placeholder after each
    illustrated beat. The same request always gives the same story."""

    async def write(self, request: StoryRequest) -> WrittenStory:
        """The story for ``request`` (no I/O: it is computed at once)."""
        topic = request.topic
        count = request.customization.num_illustrations
        beats = [_OPENING, *_middle_beats(topic, max(count - 2, 0)), _ENDING][:count]
        if count == 1:
            beats = [_OPENING]
        paragraphs: list[str] = []
        prompts: list[ImagePrompt] = []
        for n, (line, scene) in enumerate(beats, start=1):
            paragraphs.append(_sentence(line.format(topic=topic)))
            paragraphs.append(placeholder(n))
            shown = scene.format(topic=topic)
            prompts.append(
                ImagePrompt(
                    placeholder=placeholder(n),
                    prompt=f"{request.customization.style_words} of {shown}",
                    alt_text=_sentence(shown).rstrip("."),
                )
            )
        if count == 1:
            paragraphs.append(_sentence(_ENDING[0].format(topic=topic)))
        return WrittenStory(
            title=_title(topic), paragraphs=tuple(paragraphs), image_prompts=tuple(prompts)
        )


def _middle_beats(topic: str, count: int) -> list[tuple[str, str]]:
    # count <= len(_MIDDLE): a story has at most MAX_ILLUSTRATIONS = len(_MIDDLE) + 2 images.
    digest = hashlib.sha256(topic.encode()).digest()
    ranked = sorted(range(len(_MIDDLE)), key=lambda i: (digest[i], i))
    return [_MIDDLE[i] for i in sorted(ranked[:count])]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _title(topic: str) -> str:
    words = topic.split()
    if words and words[0].lower() in {"a", "an", "the"}:
        words = words[1:]
    short = " ".join(words[:8]) or topic
    return "The Tale of " + " ".join(w[:1].upper() + w[1:] for w in short.split())
