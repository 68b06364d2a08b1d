"""JSON as the stores keep it: one strict encoding, checked at the door.

Everything a store writes (entity data, results, errors, envelope bodies, message and wait
data, edge data) goes through :func:`encode_json`. A value is accepted only if reading it back
gives the same value: so a tuple (read back as a list), a dict with a non-``str`` key (``1``
and ``"1"`` would collide), ``NaN`` or infinity, a lone surrogate (not valid Unicode, so not
storable as UTF-8) and nesting deeper than :data:`MAX_JSON_DEPTH` are refused with an error
naming where the problem is, instead of being stored changed, or stored and then unreadable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from .._util import type_name

#: The deepest nesting of lists and objects a stored JSON value may have (a scalar is depth 0,
#: ``{"a": [1]}`` is depth 2). Deeper documents are refused when they are written, so whatever
#: was stored can always be read, sent and re-encoded.
MAX_JSON_DEPTH = 64


def _default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type_name(value)} {value!r} is not JSON serializable")


_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_default
)


def encode_json(value: object, what: str) -> str:
    """``value`` as compact JSON, or a ``TypeError``/``ValueError`` naming ``what`` and the
    place in it that cannot be stored (see the module documentation)."""
    if _plain(value, 0):
        # The common case, checked in one pass: it reads back as it is, in ASCII.
        try:
            return _encoder.encode(value)
        except (TypeError, ValueError):  # NaN or infinity: the careful path says where
            pass
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        problem = json_problem(value)
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        raise kind(f"{what} is not JSON: {problem or exc}") from None
    # Cheap filters first: the round trip and the depth walk run only when needed.
    if _might_be_deep(text) or not _round_trips(text, value):
        problem = json_problem(value)
        if problem is not None:
            kind = ValueError if "deeper" in problem or "surrogate" in problem else TypeError
            raise kind(f"{what} is not JSON: {problem}")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{what} is not JSON: {json_problem(value)}") from None
    return text


def _plain(value: Any, depth: int) -> bool:
    """Whether ``value`` is plainly storable: dicts with ASCII ``str`` keys, lists, ASCII
    strings, ints, bools, ``None`` and floats, nested at most :data:`MAX_JSON_DEPTH` deep. Such
    a value reads back exactly as it is (a finite float is checked by the encoder). Anything
    else (a tuple, a mapping that is not a dict, non-ASCII text...) takes the careful path.
    (Written flat: it runs for every value stored.)"""
    kind = type(value)
    if kind is dict:
        if depth >= MAX_JSON_DEPTH:
            return False
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                return False
            kind = type(item)
            if kind is str:
                if not item.isascii():
                    return False
            elif not (kind is int or item is None or kind is bool or kind is float) and not _plain(
                item, depth + 1
            ):
                return False
        return True
    if kind is list:
        if depth >= MAX_JSON_DEPTH:
            return False
        for item in value:
            kind = type(item)
            if kind is str:
                if not item.isascii():
                    return False
            elif not (kind is int or item is None or kind is bool or kind is float) and not _plain(
                item, depth + 1
            ):
                return False
        return True
    if kind is str:
        return bool(value.isascii())
    return kind is int or value is None or kind is bool or kind is float


def encode_object(value: object, what: str) -> str:
    """:func:`encode_json` for a value that must be a mapping (a JSON object)."""
    if type(value) is dict and not value:
        return "{}"  # the most common edge data and metadata
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping (a JSON object), got {type_name(value)}")
    return encode_json(value if type(value) is dict else dict(value), what)


def encode_envelopes(envelopes: Iterable[Mapping[str, Any]], entity_id: str) -> list[str]:
    """The JSON of each envelope body of an entity."""
    return [encode_object(body, f"an envelope of entity {entity_id!r}") for body in envelopes]


def check_text(value: object, what: str) -> str:
    """``value`` if it is a non-empty ``str`` that can be stored (no lone surrogate)."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} must be a non-empty string, got {value!r}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{what} {value!r} contains a lone surrogate ({value[exc.start]!r} at "
                f"position {exc.start}): it is not valid Unicode text"
            ) from None
    return value


def _might_be_deep(text: str) -> bool:
    # Every level of nesting opens a bracket; brackets inside strings only over-count.
    return text.count("[") + text.count("{") > MAX_JSON_DEPTH


def _round_trips(text: str, value: object) -> bool:
    try:
        return bool(json.loads(text) == value)
    except Exception:  # an odd __eq__: let the walk decide
        return False


def json_problem(value: object) -> str | None:
    """Where ``value`` cannot be stored as JSON, said in words (``None`` if it can)."""
    stack: list[tuple[object, str, int]] = [(value, "", 0)]
    seen: set[int] = set()
    while stack:
        item, path, depth = stack.pop()
        at = f" at {path}" if path else ""
        if item is None or isinstance(item, bool | int):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return f"{item!r}{at} is not a finite number"
            continue
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError as exc:
                    return (
                        f"the string{at} contains a lone surrogate ({item[exc.start]!r}): it "
                        "is not valid Unicode text"
                    )
            continue
        if isinstance(item, tuple):
            return f"a tuple{at} would be stored as a list: pass a list"
        if not isinstance(item, list | Mapping):
            kinds = "dict, list, str, number, bool, None"
            return f"{type_name(item)} {item!r}{at} is not JSON ({kinds})"
        if depth + 1 > MAX_JSON_DEPTH:
            return f"it is nested deeper than {MAX_JSON_DEPTH} levels{at}"
        if id(item) in seen:
            return f"it contains itself{at}"
        seen.add(id(item))
        if isinstance(item, list):
            for index, element in enumerate(item):
                stack.append((element, f"{path}[{index}]", depth + 1))
            continue
        for key, element in item.items():
            if not isinstance(key, str):
                return (
                    f"the key {key!r}{at} is not a str but {type_name(key)} (it would be "
                    "stored as a string, and could collide with another key)"
                )
            problem = None if key.isascii() else json_problem(key)
            if problem is not None:
                return f"a key{at}: {problem}"
            stack.append((element, f"{path}[{key!r}]", depth + 1))
    return None
