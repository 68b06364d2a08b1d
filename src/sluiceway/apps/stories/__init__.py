"""Seed 002's illustrated story pipeline as an application: a story per request, checked for
content safety, written with ``{{IMAGE_n}}`` placeholders, approved by a reviewer (a durable
wait that costs nothing while nobody answers), its images generated in parallel as child
entities (3 per story under 10 across the process) by the image service, and assembled into
one HTML page with the images inline; a failed image keeps its placeholder, and a crash
resumes the story without generating any finished image again.

Serve it with ``sluiceway serve --app sluiceway.apps.stories:app --db stories.db`` next to the
image service (``python -m sluiceway.apps.imagegen``; ``SLUICEWAY_IMAGE_URL`` and
``SLUICEWAY_BLOB_DIR`` say where it is), or build one with :func:`create_app`. Its endpoints
are listed in :data:`ENDPOINTS`.
"""

from ._app import ENDPOINTS, create_app
from ._config import DEFAULT_BLOB_DIR, StoryConfig, StoryServices
from ._entities import (
    FINAL_STAGES,
    STAGES,
    TYPES,
    ContentSafetyCheck,
    ImageGeneration,
    StoryPipeline,
    StoryWriter,
)
from ._html import InlineImage, story_html
from ._request import (
    MAX_ILLUSTRATIONS,
    STYLES,
    Customization,
    InvalidStoryRequest,
    StoryRequest,
)
from ._safety import DEFAULT_BLOCKED_WORDS, SafetyChecker, SafetyVerdict, WordListSafetyChecker
from ._writer import ImagePrompt, TemplateWriter, Writer, WrittenStory, placeholder

#: The application with its configuration from the environment (read when the server starts).
app = create_app()

__all__ = [
    "DEFAULT_BLOB_DIR",
    "DEFAULT_BLOCKED_WORDS",
    "ENDPOINTS",
    "FINAL_STAGES",
    "MAX_ILLUSTRATIONS",
    "STAGES",
    "STYLES",
    "TYPES",
    "ContentSafetyCheck",
    "Customization",
    "ImageGeneration",
    "ImagePrompt",
    "InlineImage",
    "InvalidStoryRequest",
    "SafetyChecker",
    "SafetyVerdict",
    "StoryConfig",
    "StoryPipeline",
    "StoryRequest",
    "StoryServices",
    "StoryWriter",
    "TemplateWriter",
    "WordListSafetyChecker",
    "Writer",
    "WrittenStory",
    "app",
    "create_app",
    "placeholder",
    "story_html",
]
