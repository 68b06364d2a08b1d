"""What the applications' configurations share: attrs validators, and reading fields from
the environment."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs


def positive_int(name: str) -> Any:
    """An attrs validator: the value is an ``int`` >= 1 (not a bool)."""

    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    return check


def positive_float(name: str) -> Any:
    """An attrs validator: the value is a number > 0 (not NaN, not a bool)."""

    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or math.isnan(value)
            or value <= 0
        ):
            raise ValueError(f"{name} must be a number > 0, got {value!r}")

    return check


def fields_from_env(
    env: Mapping[str, str],
    *,
    urls: Mapping[str, str] = {},
    strings: Mapping[str, str] = {},
    integers: Mapping[str, str] = {},
) -> dict[str, Any]:
    """The configuration fields set by the variables of ``env`` that are set and not empty:
    each mapping goes from a variable's name to its field's; a URL loses its trailing
    slashes, an integer is parsed.

    Raises:
        ValueError: an integer variable is not an integer (naming it).
    """
    fields: dict[str, Any] = {}
    for variable, field in urls.items():
        if env.get(variable):
            fields[field] = env[variable].rstrip("/")
    for variable, field in strings.items():
        if env.get(variable):
            fields[field] = env[variable]
    for variable, field in integers.items():
        text = env.get(variable)
        if text:
            try:
                fields[field] = int(text)
            except ValueError:
                raise ValueError(f"{variable} must be an integer, got {text!r}") from None
    return fields
