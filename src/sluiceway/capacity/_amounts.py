"""Exact arithmetic for limits and costs.

Accounting must return to exactly zero once every acquisition has been released, whatever the
order. Binary floats cannot promise that (``0.1 + 0.2 - 0.1 - 0.2 != 0``), so amounts are kept as
``int`` when they are whole and as :class:`fractions.Fraction` otherwise; only an unlimited limit is
the float ``math.inf``. Public accessors report plain numbers again (see :func:`public`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction
from typing import TypeAlias

from .._util import type_name

#: An exact internal amount: ``int``, ``Fraction`` or (limits only) ``math.inf``.
Amount: TypeAlias = int | Fraction | float
#: A normalised cost or limit vector.
Vector: TypeAlias = dict[str, Amount]

_DENOMINATOR_LIMIT = 10**9


def amount(value: object, *, what: str, allow_inf: bool = False) -> Amount:
    """Validate and normalise one amount; ``what`` names it in error messages."""
    if isinstance(value, bool) or not isinstance(value, int | float | Fraction | Decimal):
        raise TypeError(f"{what} must be a number, got {value!r} ({type_name(value)})")
    if isinstance(value, float | Decimal):
        if value.is_nan() if isinstance(value, Decimal) else math.isnan(value):
            raise ValueError(f"{what} must be a number, got NaN")
        if value in (math.inf, -math.inf):
            if value > 0 and allow_inf:
                return math.inf
            raise ValueError(f"{what} must be finite, got {value}")
        exact = Fraction(value)
        if isinstance(value, float):
            exact = exact.limit_denominator(_DENOMINATOR_LIMIT)
        value = exact
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {public(value)}")
    if isinstance(value, Fraction) and value.denominator == 1:
        return int(value)
    return value


def vector(
    values: object, *, what: str, allow_inf: bool = False, drop_zero: bool = False
) -> Vector:
    """Validate a mapping of resource name to amount."""
    if not isinstance(values, Mapping):
        raise TypeError(
            f"{what} must be a mapping of resource name to amount, got {values!r} "
            f"({type_name(values)})"
        )
    out: Vector = {}
    for key, raw in values.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{what}: resource names must be non-empty strings, got {key!r}")
        value = amount(raw, what=f"{what}[{key!r}]", allow_inf=allow_inf)
        if value or not drop_zero:
            out[key] = value
    return out


def public(value: Amount) -> int | float:
    """An amount as a plain ``int`` or ``float`` for reporting."""
    if isinstance(value, Fraction):
        return value.numerator if value.denominator == 1 else float(value)
    return value


def public_vector(values: Mapping[str, Amount]) -> dict[str, int | float]:
    """A vector of amounts as plain numbers, for reporting."""
    return {key: public(value) for key, value in values.items()}


def describe(values: Mapping[str, Amount]) -> str:
    """``{'cpu': 2, 'mem': 0.5}`` style text for error messages."""
    inner = ", ".join(f"{key!r}: {public(value)}" for key, value in values.items())
    return "{" + inner + "}"
