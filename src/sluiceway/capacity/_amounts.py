"""Exact arithmetic for limits and costs.

Accounting must return to exactly zero once every acquisition has been released, whatever the
order. Binary floats cannot promise that (``0.1 + 0.2 - 0.1 - 0.2 != 0``), so amounts are kept as
``int`` when they are whole and as :class:`fractions.Fraction` otherwise; only an unlimited limit is
the float ``math.inf``. Public accessors report plain numbers again (see :func:`public`).

How a float becomes an exact amount (:func:`exact_float`): a whole float is its integer, any other
finite float is the decimal number its ``repr`` shows (``0.1`` is exactly ``1/10``). Nothing is
rounded away: distinct floats stay distinct, so ``4.0000000001`` does not fit under a limit of 4.
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


def exact_float(value: float) -> int | Fraction:
    """The exact amount a finite float stands for: its integer if it is whole, else the decimal
    number ``repr(value)`` shows, as a fraction.

    Why the decimal ``repr`` and not the binary value ``Fraction(value)`` (which is also exact):

    * ``repr`` gives the shortest decimal that rounds back to the float, so the mapping is
      one-to-one and keeps order: ``x < y`` exactly when ``exact_float(x) < exact_float(y)``, and a
      whole float compares with an int as Python compares them. No float is rounded into another
      (the old ``limit_denominator(10**9)`` let ``{"cpu": 4.0000000001}`` fit under a limit of 4).
    * Amounts add up as they were written: ten costs of ``0.1`` fill a limit of ``1`` exactly and
      release back to exactly zero. With binary values, ``10 * Fraction(0.1)`` is slightly more
      than 1, so the tenth tenth would never fit.

    Whole floats keep their binary value (``float(2**60)`` is ``2**60``, not the 17-digit decimal
    its ``repr`` rounds to); every float ``>= 2**52`` is whole, and a non-whole float still orders
    correctly against every whole one, since a decimal that rounds to it cannot cross an integer
    the float itself does not cross.
    """
    if value.is_integer():
        return int(value)
    return Fraction(repr(value))


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
        value = exact_float(value) if isinstance(value, float) else Fraction(value)
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
    if type(value) is int:  # the usual amount; isinstance() against Fraction, an ABC, is slow
        return value
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
