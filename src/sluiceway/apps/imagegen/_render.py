"""The "model": a cheap, deterministic picture for a prompt, drawn with Pillow.

Everything in the picture comes from the SHA-256 of the prompt (the quality and aspect ratio
set its size and encoding): a palette, a banded sky, a sun or moon, hills on a horizon, a few
shapes, and the prompt's first words in a caption. The same inputs give the same bytes (with
one build of Pillow and zlib); flat shapes keep it fast and the files small.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
from collections.abc import Callable, Iterator

import attrs
from PIL import Image, ImageDraw, ImageFont

__all__ = ["ASPECT_RATIOS", "QUALITIES", "RenderedImage", "image_size", "render_image"]

#: The qualities, and the long side of the image each gives, in pixels.
QUALITIES: dict[str, int] = {"low": 256, "medium": 512, "high": 1024}

#: The aspect ratios (width:height) an image may have.
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1),
    "3:2": (3, 2),
    "2:3": (2, 3),
    "4:3": (4, 3),
    "3:4": (3, 4),
    "16:9": (16, 9),
    "9:16": (9, 16),
}

#: ``low`` is a JPEG at this quality; the others are PNGs at this zlib level. Both fixed, so
#: that the bytes depend on the inputs only.
_JPEG_QUALITY = 80
_PNG_COMPRESS_LEVEL = 6
#: How many words of the prompt the caption shows.
_CAPTION_WORDS = 14
_CAPTION_LINES = 3

_Color = tuple[int, int, int]


@attrs.frozen
class RenderedImage:
    """An encoded image: its bytes, ``format`` (``"png"`` or ``"jpeg"``, also the blob
    extension), content type and size in pixels."""

    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")
    format: str
    content_type: str
    width: int
    height: int


def _choice_error(what: str, value: object, allowed: dict[str, object]) -> ValueError:
    return ValueError(f"unknown {what} {value!r} (allowed: {', '.join(allowed)})")


def image_size(quality: str, aspect_ratio: str) -> tuple[int, int]:
    """``(width, height)`` in pixels for a quality and an aspect ratio: the long side is the
    quality's (:data:`QUALITIES`). Raises :class:`ValueError` for an unknown one."""
    if quality not in QUALITIES:
        raise _choice_error("quality", quality, dict(QUALITIES))
    if aspect_ratio not in ASPECT_RATIOS:
        raise _choice_error("aspect ratio", aspect_ratio, dict(ASPECT_RATIOS))
    long_side = QUALITIES[quality]
    across, down = ASPECT_RATIOS[aspect_ratio]
    if across >= down:
        return long_side, round(long_side * down / across)
    return round(long_side * across / down), long_side


class _Draws:
    """A stream of numbers drawn from a digest (SHAKE-256 of it), stable across Python versions
    (unlike :mod:`random`'s derived methods)."""

    def __init__(self, digest: bytes) -> None:
        self._bytes = _stream(digest)

    def unit(self) -> float:
        """A number in [0, 1)."""
        value = int.from_bytes(bytes(next(self._bytes) for _ in range(4)), "big")
        return value / 2**32

    def between(self, low: float, high: float) -> float:
        return low + (high - low) * self.unit()

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high]."""
        return min(high, low + int((high - low + 1) * self.unit()))


def _stream(digest: bytes) -> Iterator[int]:
    block = 0
    while True:
        yield from hashlib.shake_256(digest + block.to_bytes(4, "big")).digest(256)
        block += 1


def _palette(draws: _Draws) -> list[_Color]:
    """Five colours around a random hue (an analogous scheme with one complement)."""
    hue = draws.unit()
    offsets = (0.0, 0.06, -0.07, 0.5, 0.12)
    colors = []
    for offset in offsets:
        lightness = draws.between(0.25, 0.75)
        saturation = draws.between(0.35, 0.85)
        red, green, blue = colorsys.hls_to_rgb((hue + offset) % 1.0, lightness, saturation)
        colors.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colors


def _mix(a: _Color, b: _Color, t: float) -> _Color:
    red, green, blue = (round(x + (y - x) * t) for x, y in zip(a, b, strict=True))
    return red, green, blue


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:  # Pillow's bundled Aileron at this size (needs FreeType)
        return ImageFont.load_default(size)
    except (OSError, ImportError):  # pragma: no cover - Pillow built without FreeType
        return ImageFont.load_default()


def render_image(
    prompt: str, *, quality: str = "medium", aspect_ratio: str = "3:2"
) -> RenderedImage:
    """A picture for ``prompt``: ``quality`` (:data:`QUALITIES`: ``low`` is a 256-pixel JPEG,
    ``medium`` a 512-pixel and ``high`` a 1024-pixel PNG, long side) at ``aspect_ratio``
    (:data:`ASPECT_RATIOS`). Deterministic: the same arguments give the same bytes. Raises
    :class:`ValueError` for an unknown quality or aspect ratio."""
    width, height = image_size(quality, aspect_ratio)
    # The scene depends on the prompt alone (the quality and aspect ratio only size it), so
    # the renditions of one prompt are one picture.
    draws = _Draws(hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest())
    colors = _palette(draws)
    image = Image.new("RGB", (width, height), colors[0])
    canvas = ImageDraw.Draw(image)
    unit = min(width, height)

    # The sky: flat bands from one colour to another (bands compress far better than a
    # smooth gradient).
    horizon = round(height * draws.between(0.55, 0.75))
    bands = 12
    for band in range(bands):
        top = horizon * band // bands
        bottom = horizon * (band + 1) // bands
        canvas.rectangle((0, top, width, bottom), fill=_mix(colors[1], colors[2], band / bands))

    # A sun or a moon above the horizon.
    radius = unit * draws.between(0.07, 0.16)
    sun_x = width * draws.between(0.15, 0.85)
    sun_y = horizon * draws.between(0.2, 0.6)
    canvas.ellipse((sun_x - radius, sun_y - radius, sun_x + radius, sun_y + radius), fill=colors[3])

    # Two ranges of hills: polygons along the horizon, the nearer one darker.
    for layer, color in enumerate((_mix(colors[4], colors[0], 0.3), colors[0])):
        peaks = draws.integer(3, 6)
        points = [(0.0, float(height))]
        for index in range(peaks + 1):
            x = width * index / peaks
            y = horizon - unit * draws.between(0.02, 0.18) + layer * unit * 0.08
            points.append((x, y))
        points.append((float(width), float(height)))
        canvas.polygon(points, fill=color)

    # A handful of shapes: circles and triangles in the palette's colours.
    for _ in range(draws.integer(2, 5)):
        x, y = width * draws.unit(), height * draws.between(0.1, 0.9)
        size = unit * draws.between(0.03, 0.09)
        color = colors[draws.integer(1, 4)]
        if draws.unit() < 0.5:
            canvas.ellipse((x - size, y - size, x + size, y + size), fill=color)
        else:
            canvas.polygon([(x, y - size), (x + size, y + size), (x - size, y + size)], fill=color)

    _caption(canvas, prompt, width, height, unit)
    return _encode(image, quality)


def _caption(canvas: ImageDraw.ImageDraw, prompt: str, width: int, height: int, unit: int) -> None:
    """The prompt's first words, wrapped, on a dark strip along the bottom."""
    # The bundled font covers ASCII and a few symbols; other characters would draw as boxes.
    text = " ".join(prompt.split()[:_CAPTION_WORDS]).encode("ascii", "replace").decode("ascii")
    if not text:
        return
    font = _font(max(8, unit // 22))
    margin = max(4, unit // 40)
    lines = _wrap(text.split(), lambda line: canvas.textlength(line, font=font), width - 2 * margin)
    line_height = font.getbbox("Hg")[3] + max(2, unit // 100) if lines else 0
    strip = len(lines) * line_height + 2 * margin
    canvas.rectangle((0, height - strip, width, height), fill=(16, 16, 20))
    for index, line in enumerate(lines):
        y = height - strip + margin + index * line_height
        canvas.text((margin, y), line, fill=(240, 240, 240), font=font)


def _wrap(words: list[str], measure: Callable[[str], float], room: float) -> list[str]:
    """Up to three lines of ``words``, each as many as fit in ``room`` (a word too long for a
    line gets a line of its own, cut by the image's edge)."""
    lines: list[str] = []
    for word in words:
        if lines and measure(f"{lines[-1]} {word}") <= room:
            lines[-1] = f"{lines[-1]} {word}"
        elif len(lines) == _CAPTION_LINES:
            break
        else:
            lines.append(word)
    return lines


def _encode(image: Image.Image, quality: str) -> RenderedImage:
    buffer = io.BytesIO()
    if quality == "low":
        image.save(buffer, format="JPEG", quality=_JPEG_QUALITY, optimize=False, subsampling=2)
        kind, content_type = "jpeg", "image/jpeg"
    else:
        # No text chunks, no time: Pillow writes neither unless asked.
        image.save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL, optimize=False)
        kind, content_type = "png", "image/png"
    return RenderedImage(buffer.getvalue(), kind, content_type, image.width, image.height)
