"""Validation of ``POST /v1/images/generate`` bodies and ``GET /v1/images/counts`` queries."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import attrs

from .._checks import CONTROL_CHARACTERS, LONE_SURROGATE, Problems, json_object, query_pairs
from ._render import ASPECT_RATIOS, QUALITIES

MAX_PROMPT_LENGTH = 4000
MAX_KEY_LENGTH = 256
MAX_METADATA_ENTRIES = 50
MAX_METADATA_KEY_LENGTH = 256
MAX_METADATA_VALUE_LENGTH = 4000

DEFAULT_QUALITY = "medium"
DEFAULT_ASPECT_RATIO = "3:2"

FIELDS = ("prompt", "quality", "aspect_ratio", "idempotency_key", "metadata")

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
    if LONE_SURROGATE.search(value):
        return "must not contain a lone surrogate (U+D800 to U+DFFF): UTF-8 cannot carry it"
    return None


def key_problem(value: object) -> str | None:
    """What is wrong with an idempotency key (``None``: nothing)."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEY_LENGTH:
        return f"must be a string of 1 to {MAX_KEY_LENGTH} characters"
    if CONTROL_CHARACTERS.search(value):  # a key ends up in logs, URLs, others' requests
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
    body = json_object(body)
    bad = Problems()
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

    bad.raise_any()
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
    bad = Problems()
    prefix: str | None = None
    for name, value in query_pairs(query):
        if name != "prefix":
            bad(name, "unknown parameter (known: prefix)")
        elif prefix is not None:
            bad(name, "must be given once")
        else:
            prefix = value
    bad.raise_any()
    return prefix
