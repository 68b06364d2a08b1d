"""Validators the applications' configurations share."""

from __future__ import annotations

import math
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
