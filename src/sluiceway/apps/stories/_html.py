"""The finished story as one self-contained HTML page: its images inline (base64 ``data:``
URLs with their content type and alt text), and where an image could not be generated, its
``{{IMAGE_n}}`` placeholder left visible, as the original does."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping

import attrs

from ._writer import PLACEHOLDER, WrittenStory


@attrs.frozen(kw_only=True)
class InlineImage:
    """A generated image to inline: its bytes, ``content_type``, ``alt_text`` and size."""

    data: bytes
    content_type: str
    alt_text: str
    width: int
    height: int


_STYLE = """
body { font-family: Georgia, serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.6; color: #222; }
figure { margin: 1.5rem 0; text-align: center; }
figure img { max-width: 100%; height: auto; border-radius: 6px; }
figcaption { font-size: 0.9rem; color: #555; }
.image-missing .placeholder { padding: 3rem 1rem; border: 2px dashed #b55; color: #b55;
       font-family: monospace; }
""".strip()


def story_html(
    story: WrittenStory,
    images: Mapping[str, InlineImage],
    missing: Mapping[str, str] | None = None,
) -> str:
    """The page for ``story``: each placeholder replaced by its image from ``images``; a
    placeholder without one keeps its text, in a visible box (``missing`` gives the reason
    shown with it, e.g. the image's error). All the story's text is escaped."""
    alt = {p.placeholder: p.alt_text for p in story.image_prompts}
    reasons = dict(missing or {})

    def figure(token: str) -> str:
        image = images.get(token)
        if image is not None:
            caption = html.escape(image.alt_text)
            return f"<figure>{_img(image)}<figcaption>{caption}</figcaption></figure>"
        reason = reasons.get(token, "no image was generated")
        return (
            f'<figure class="image-missing" data-placeholder="{token}">'
            f'<div class="placeholder">{token}</div>'
            f"<figcaption>{html.escape(alt.get(token, ''))} (image unavailable: "
            f"{html.escape(reason)})</figcaption></figure>"
        )

    def inline(match: re.Match[str]) -> str:
        image = images.get(match.group(0))
        return _img(image) if image is not None else match.group(0)

    body = []
    for paragraph in story.paragraphs:
        text = paragraph.strip()
        if not text:
            continue
        if PLACEHOLDER.fullmatch(text):
            body.append(figure(text))
        else:
            # Escaping leaves a placeholder as it is (it has no character to escape).
            body.append(f"<p>{PLACEHOLDER.sub(inline, html.escape(text))}</p>")
    title = html.escape(story.title)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>\n{_STYLE}\n</style>\n</head>\n<body>\n"
        f"<article>\n<h1>{title}</h1>\n" + "\n".join(body) + "\n</article>\n</body>\n</html>\n"
    )


def _img(image: InlineImage) -> str:
    encoded = base64.b64encode(image.data).decode("ascii")
    return (
        f'<img src="data:{html.escape(image.content_type)};base64,{encoded}" '
        f'alt="{html.escape(image.alt_text)}" width="{image.width}" height="{image.height}">'
    )
