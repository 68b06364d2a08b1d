"""Validation of ``POST /v1/images/generate`` bodies and ``GET /v1/images/counts`` queries."""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import attrs

from .._http import ValidationFailed
from ._render import ASPECT_RATIOS, QUALITIES

MAX_PROMPT_LENGTH = 4000
MAX_KEY_LENGTH = 256
MAX_METADATA_ENTRIES = 50
MAX_METADATA_KEY_LENGTH = 256
MAX_METADATA_VALUE_LENGTH = 4000

DEFAULT_QUALITY = "medium"
DEFAULT_ASPECT_RATIO = "3:2"

FIELDS = ("prompt", "quality", "aspect_ratio", "idempotency_key", "metadata")

#: A lone surrogate: valid in JSON text as an escape (``"\\ud800"``), but no UTF-8 can carry
#: it, so it could be neither stored nor answered.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Control characters (tab aside) and the Unicode line separators: not in a key, which ends up
#: in logs, URLs and other services' requests.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")

MetadataValue = str | int | float | bool


@attrs.frozen
class GenerateRequest:
    """A validated ``POST /v1/images/generate`` body."""

    prompt: str
    quality: str = DEFAULT_QUALITY
    aspect_ratio: str = DEFAULT_ASPECT_RATIO
    idempotency_key: str | None = None
    metadata: Mapping[str, MetadataValue] = attrs.field(factory=dict)

    def fault_text(self) -> str:
        """What the fault rules match against: the key, the prompt and the metadata values
        (strings as they are, numbers and booleans as JSON writes them), one per line."""
        values = [v if isinstance(v, str) else json.dumps(v) for v in self.metadata.values()]
        parts = [self.idempotency_key or "", self.prompt, *values]
        return "\n".join(parts)


def _text_problem(value: str) -> str | None:
    if _SURROGATE.search(value):
        return "must not contain a lone surrogate (U+D800 to U+DFFF): UTF-8 cannot carry it"
    return None


def key_problem(value: object) -> str | None:
    """What is wrong with an idempotency key (``None``: nothing)."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEY_LENGTH:
        return f"must be a string of 1 to {MAX_KEY_LENGTH} characters"
    if _CONTROL.search(value):
        return "must not contain line breaks or other control characters"
    return _text_problem(value)


def valid_key(body: object) -> str | None:
    """The body's ``idempotency_key`` if it is a valid one (for counting a request that failed
    validation against its key), else ``None``."""
    if isinstance(body, Mapping):
        key = body.get("idempotency_key")
        if isinstance(key, str) and key_problem(key) is None:
            return key
    return None


def parse_generate_request(body: object) -> GenerateRequest:
    """Validate a decoded JSON body; raises :class:`ValidationFailed` naming every bad field
    (unknown fields included)."""
    if not isinstance(body, Mapping):
        raise ValidationFailed([{"field": "body", "message": "must be a JSON object"}])
    details: list[dict[str, str]] = []

    def bad(field: str, message: str) -> None:
        details.append({"field": field, "message": message})

    for name in body:
        if name not in FIELDS:
            bad(str(name), f"unknown field (known: {', '.join(FIELDS)})")

    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        bad("prompt", "must be a non-empty string")
    elif len(prompt) > MAX_PROMPT_LENGTH:
        bad("prompt", f"must be at most {MAX_PROMPT_LENGTH} characters")
    elif (problem := _text_problem(prompt)) is not None:
        bad("prompt", problem)

    quality = body.get("quality", DEFAULT_QUALITY)
    if not isinstance(quality, str) or quality not in QUALITIES:
        bad("quality", f"must be one of {', '.join(QUALITIES)}")

    aspect_ratio = body.get("aspect_ratio", DEFAULT_ASPECT_RATIO)
    if not isinstance(aspect_ratio, str) or aspect_ratio not in ASPECT_RATIOS:
        bad("aspect_ratio", f"must be one of {', '.join(ASPECT_RATIOS)}")

    key = body.get("idempotency_key")
    if key is not None and (problem := key_problem(key)) is not None:
        bad("idempotency_key", problem)

    metadata = body.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, Mapping):
        bad("metadata", "must be an object of strings, numbers and booleans")
    else:
        for problem_field, problem in _metadata_problems(metadata):
            bad(problem_field, problem)

    if details:
        raise ValidationFailed(details)
    # Checked above; the asserts tell the type checker.
    assert isinstance(prompt, str)
    assert isinstance(quality, str)
    assert isinstance(aspect_ratio, str)
    assert key is None or isinstance(key, str)
    return GenerateRequest(prompt, quality, aspect_ratio, key, dict(metadata))


def _metadata_problems(metadata: Mapping[Any, Any]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if len(metadata) > MAX_METADATA_ENTRIES:
        problems.append(("metadata", f"must have at most {MAX_METADATA_ENTRIES} entries"))
    for name, value in metadata.items():
        field = f"metadata.{name}"
        if not 1 <= len(name) <= MAX_METADATA_KEY_LENGTH:
            problems.append((field, f"names must be 1 to {MAX_METADATA_KEY_LENGTH} characters"))
            continue
        if (problem := _text_problem(name)) is not None:
            problems.append((f"metadata[{json.dumps(name)}]", problem))
            continue
        if isinstance(value, str):
            if len(value) > MAX_METADATA_VALUE_LENGTH:
                message = f"must be at most {MAX_METADATA_VALUE_LENGTH} characters"
                problems.append((field, message))
            elif (problem := _text_problem(value)) is not None:
                problems.append((field, problem))
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append((field, "must be a finite number"))
        elif not isinstance(value, int | float | bool):
            problems.append((field, "must be a string, a number or a boolean"))
    return problems


def parse_counts_query(query: str) -> str | None:
    """The ``prefix`` of a ``GET /v1/images/counts`` query string (``None``: every key);
    raises :class:`ValidationFailed` for another parameter or a repeated one."""
    try:
        pairs = urllib.parse.parse_qsl(
            query, keep_blank_values=True, strict_parsing=False, errors="strict"
        )
    except UnicodeDecodeError:
        raise ValidationFailed([{"field": "query", "message": "must be UTF-8"}]) from None
    details: list[dict[str, str]] = []
    prefix: str | None = None
    for name, value in pairs:
        if name != "prefix":
            details.append({"field": name, "message": "unknown parameter (known: prefix)"})
        elif prefix is not None:
            details.append({"field": name, "message": "must be given once"})
        else:
            prefix = value
    if details:
        raise ValidationFailed(details)
    return prefix
