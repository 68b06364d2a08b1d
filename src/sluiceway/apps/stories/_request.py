"""What a story is asked for: its topic and its customization (illustration style, image
quality, aspect ratio, number of illustrations), checked once, when the story is created, and
kept in the pipeline's data from then on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..imagegen import ASPECT_RATIOS, QUALITIES

#: Illustration styles, each with the words it adds to every image prompt.
STYLES: dict[str, str] = {
    "storybook": "a classic children's storybook illustration",
    "watercolor": "a soft watercolor illustration",
    "cartoon": "a bright, bold cartoon illustration",
    "pencil-sketch": "a detailed pencil sketch",
    "paper-cut": "a layered paper-cut collage",
    "pixel-art": "a retro pixel-art scene",
}

#: The most illustrations a story may ask for.
MAX_ILLUSTRATIONS = 10

#: The longest topic accepted, in characters.
MAX_TOPIC_LENGTH = 500


class InvalidStoryRequest(ValueError):
    """A story request that cannot be served; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@attrs.frozen(kw_only=True)
class Customization:
    """How a story is illustrated (the original's defaults: medium quality, 3:2).

    Attributes:
        illustration_style: one of :data:`STYLES`.
        image_quality: ``low``, ``medium`` or ``high`` (the image service's
            :data:`~sluiceway.apps.imagegen.QUALITIES`).
        aspect_ratio: ``1:1``, ``3:2``, ``16:9``... (the image service's
            :data:`~sluiceway.apps.imagegen.ASPECT_RATIOS`).
        num_illustrations: how many images the story has, 1 to :data:`MAX_ILLUSTRATIONS`.
    """

    illustration_style: str = "storybook"
    image_quality: str = "medium"
    aspect_ratio: str = "3:2"
    num_illustrations: int = 5

    @classmethod
    def from_json(cls, value: object) -> Customization:
        """The customization a request's ``customization`` object asks for (missing keys take
        their defaults).

        Raises:
            InvalidStoryRequest: listing every unknown key and every value not allowed.
        """
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise InvalidStoryRequest([f"customization: an object, not {value!r}"])
        problems = [
            f"customization.{key}: unknown (known: {', '.join(_FIELDS)})"
            for key in value
            if key not in _FIELDS
        ]
        chosen = {key: value[key] for key in _FIELDS if key in value}
        for key, allowed in (
            ("illustration_style", tuple(STYLES)),
            ("image_quality", tuple(QUALITIES)),
            ("aspect_ratio", tuple(ASPECT_RATIOS)),
        ):
            if key in chosen and chosen[key] not in allowed:
                problems.append(
                    f"customization.{key}: {chosen[key]!r} is not one of {', '.join(allowed)}"
                )
        count = chosen.get("num_illustrations", 5)
        if (
            isinstance(count, bool)
            or not isinstance(count, int)
            or not 1 <= count <= MAX_ILLUSTRATIONS
        ):
            problems.append(
                f"customization.num_illustrations: an integer from 1 to {MAX_ILLUSTRATIONS}, "
                f"not {count!r}"
            )
        if problems:
            raise InvalidStoryRequest(problems)
        return cls(**chosen)

    def to_json(self) -> dict[str, Any]:
        """The customization as JSON (what :meth:`from_json` reads back)."""
        return attrs.asdict(self)

    @property
    def style_words(self) -> str:
        """What the style adds to an image prompt."""
        return STYLES[self.illustration_style]


_FIELDS = tuple(field.name for field in attrs.fields(Customization))


@attrs.frozen(kw_only=True)
class StoryRequest:
    """A story to write and illustrate: its ``topic`` and :class:`Customization`."""

    topic: str
    customization: Customization = attrs.field(factory=Customization)

    @classmethod
    def parse(cls, topic: object, customization: object = None) -> StoryRequest:
        """Check a request's topic and customization together.

        Raises:
            InvalidStoryRequest: listing every problem of both.
        """
        problems = []
        text = topic.strip() if isinstance(topic, str) else None
        if text is None:
            problems.append(f"topic: a string, not {topic!r}")
        elif not text:
            problems.append("topic: must not be empty")
        elif len(text) > MAX_TOPIC_LENGTH:
            problems.append(f"topic: at most {MAX_TOPIC_LENGTH} characters, got {len(text)}")
        elif any(ord(c) < 32 and c not in "\t\n" for c in text) or "\x00" in text:
            problems.append("topic: must not contain control characters")
        elif "{{IMAGE_" in text.upper():
            # The writer's placeholders mark where images go: one in the topic would be
            # taken for an image of the story.
            problems.append("topic: must not contain an image placeholder ({{IMAGE_...}})")
        try:
            chosen = Customization.from_json(customization)
        except InvalidStoryRequest as error:
            problems.extend(error.problems)
            chosen = Customization()
        if problems:
            raise InvalidStoryRequest(problems)
        assert text is not None
        return cls(topic=text, customization=chosen)

    def to_json(self) -> dict[str, Any]:
        """The request as it is kept in the pipeline's data."""
        return {"topic": self.topic, "customization": self.customization.to_json()}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> StoryRequest:
        """The request kept in a pipeline's data (see :meth:`to_json`)."""
        return cls.parse(data.get("topic"), data.get("customization"))
