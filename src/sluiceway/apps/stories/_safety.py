"""The content-safety check of a story request: the :class:`SafetyChecker` interface, its
verdict, and a deterministic local checker built on a word list. An LLM-backed checker (a
moderation model) implements the same one method."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

#: Words the local checker refuses in a children's story request, by category.
DEFAULT_BLOCKED_WORDS: Mapping[str, tuple[str, ...]] = {
    "violence": ("kill", "killing", "murder", "gore", "gory", "blood", "bloody", "stab", "torture"),
    "weapons": ("gun", "guns", "rifle", "bomb", "grenade"),
    "adult": ("nude", "naked", "sex", "sexy", "porn"),
    "substances": ("drugs", "cocaine", "heroin", "meth", "drunk"),
    "hate": ("slur", "nazi"),
    "self-harm": ("suicide", "self-harm"),
}

_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


@attrs.frozen(kw_only=True)
class SafetyVerdict:
    """The answer of a safety check: ``safe``, and when not, the ``categories`` it falls in
    and the ``reasons`` (one line each)."""

    safe: bool
    categories: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The verdict as the check's entity returns it."""
        return {
            "safe": self.safe,
            "categories": list(self.categories),
            "reasons": list(self.reasons),
        }


@runtime_checkable
class SafetyChecker(Protocol):
    """Decides whether a request's text is fit for an illustrated children's story."""

    async def check(self, text: str) -> SafetyVerdict:
        """The verdict on ``text``."""
        ...


class WordListSafetyChecker:
    """The local default :class:`SafetyChecker`: refuses a text that contains a blocked word
    (whole words, case-insensitive), naming each word and its category."""

    def __init__(self, blocked: Mapping[str, Iterable[str]] | None = None) -> None:
        source = DEFAULT_BLOCKED_WORDS if blocked is None else blocked
        self._category: dict[str, str] = {}
        for category, words in source.items():
            for word in words:
                if not isinstance(word, str) or not _WORD.fullmatch(word.lower()):
                    raise ValueError(f"a blocked word is lowercase letters, got {word!r}")
                self._category[word.lower()] = category

    async def check(self, text: str) -> SafetyVerdict:
        """The verdict on ``text`` (no I/O: it is computed at once)."""
        hits = dict.fromkeys(w for w in _WORD.findall(text.lower()) if w in self._category)
        if not hits:
            return SafetyVerdict(safe=True)
        categories = tuple(dict.fromkeys(self._category[w] for w in hits))
        reasons = tuple(f"{w!r} is not allowed ({self._category[w]})" for w in hits)
        return SafetyVerdict(safe=False, categories=categories, reasons=reasons)
