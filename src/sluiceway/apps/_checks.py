"""Request checks the services share (the notification service, the image service): the bad
fields of a body collected in order, JSON objects, query strings, and the ``POST
/admin/faults`` settings every fault switch has (``fail_rate``, ``latency``, ``jitter``,
``fail_status``, ``seed``). Each check answers with :class:`~._http.ValidationFailed`."""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from ._http import ValidationFailed

__all__ = [
    "CONTROL_CHARACTERS",
    "LONE_SURROGATE",
    "MAX_LATENCY",
    "Problems",
    "fault_changes",
    "finite_number",
    "json_object",
    "query_pairs",
    "status_problem",
]

#: The most seconds a fault switch may wait (``latency``, ``jitter``).
MAX_LATENCY = 3600.0

#: A lone surrogate: valid in JSON text as an escape (``"\\ud800"``), but no UTF-8 can carry
#: it, so it can be neither stored nor answered.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")

#: The C0 controls but tab, DEL, the C1 controls (NEL among them) and the Unicode line and
#: paragraph separators: what must not reach a header, a log line or a key (where a line break
#: starts something new).
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


class Problems:
    """The bad fields of a body, in the order found: call it with a field and a message."""

    def __init__(self) -> None:
        self.details: list[dict[str, str]] = []

    def __call__(self, field: str, message: str) -> None:
        self.details.append({"field": field, "message": message})

    def accept(
        self, changes: dict[str, Any], name: str, value: object, problem: str | None
    ) -> None:
        """Report ``problem`` for ``name``, or (with none) take ``value`` into ``changes``."""
        if problem is not None:
            self(name, problem)
        else:
            changes[name] = value

    def raise_any(self) -> None:
        """Raise :class:`ValidationFailed` naming every problem found, if any."""
        if self.details:
            raise ValidationFailed(self.details)


def json_object(body: object) -> Mapping[str, Any]:
    """``body`` (a decoded JSON document) if it is an object; else :class:`ValidationFailed`
    for the field ``body``."""
    if not isinstance(body, Mapping):
        raise ValidationFailed([{"field": "body", "message": "must be a JSON object"}])
    return body


def query_pairs(query: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs of a query string, in order (blank values kept); a query
    that is not UTF-8 is :class:`ValidationFailed` for the field ``query``."""
    try:
        return urllib.parse.parse_qsl(
            query, keep_blank_values=True, strict_parsing=False, errors="strict"
        )
    except UnicodeDecodeError:
        raise ValidationFailed([{"field": "query", "message": "must be UTF-8"}]) from None


def finite_number(value: object) -> float | None:
    """``value`` as a finite float, or ``None`` when it is not a finite number (a boolean is
    not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def status_problem(value: object) -> str | None:
    """What is wrong with a fault's HTTP status (``None``: nothing)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        return "must be an integer HTTP error status (400-599)"
    return None


#: A fault switch's check of one of its own settings: ``(name, value, changes, bad)`` puts the
#: valid value in ``changes`` or reports it to ``bad``; ``False`` for a name it does not know.
OwnSetting = Callable[[str, object, dict[str, Any], Problems], bool]


def fault_changes(body: object, own: OwnSetting) -> dict[str, Any]:
    """Validate a (partial) ``POST /admin/faults`` body: the settings every switch has here,
    the others by ``own``, anything else an unknown setting. Returns the changes for the
    switch's ``evolve``; raises :class:`ValidationFailed` naming every bad field, in the
    body's order."""
    changes: dict[str, Any] = {}
    bad = Problems()
    for name, value in json_object(body).items():
        if name in ("fail_rate", "latency", "jitter"):
            number = finite_number(value)
            upper = 1.0 if name == "fail_rate" else MAX_LATENCY
            if number is None or not 0.0 <= number <= upper:
                bad(name, f"must be a number between 0 and {upper:g}")
            else:
                changes[name] = number
        elif name == "fail_status":
            bad.accept(changes, name, value, status_problem(value))
        elif name == "seed":
            valid = value is None or (isinstance(value, int) and not isinstance(value, bool))
            bad.accept(changes, name, value, None if valid else "must be an integer or null")
        elif not own(name, value, changes, bad):
            bad(str(name), "unknown setting")
    bad.raise_any()
    return changes
