"""The fault switch: injected failures, latency and a disabled channel, drawn from a seeded RNG."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

import attrs

from .._checks import MAX_LATENCY, Problems, fault_changes
from ._validation import text_problem

#: The provider error codes of the original service (any other non-empty code is accepted too).
PROVIDER_ERROR_CODES = (
    "AUTHENTICATION_FAILED",
    "RATE_LIMITED",
    "INVALID_RECIPIENT",
    "PROVIDER_ERROR",
)


def _patterns(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _check_fraction(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, not {value!r}")


def _check_seconds(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= MAX_LATENCY:
        raise ValueError(f"{attribute.name} must be between 0 and {MAX_LATENCY:g} s, not {value!r}")


def _check_status(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 400 <= value <= 599:
        raise ValueError(f"{attribute.name} must be an HTTP error status (400-599), not {value!r}")


def _check_code(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value or len(value) > 64:
        raise ValueError(f"{attribute.name} must be a non-empty string of at most 64 characters")


@attrs.frozen(kw_only=True)
class Faults:
    """The notification service's fault switch (immutable; change it with :meth:`evolve`).

    For a *new* send, in this order: a disabled channel answers 422 ``CHANNEL_DISABLED``; then
    the service waits ``latency`` plus a uniform random ``0..jitter`` seconds (the "provider
    call"); then a recipient (``to``, ``cc`` or ``bcc``) matching one of ``fail_recipients``
    (exact addresses or :mod:`fnmatch` globs such as ``"*@bounce.test"``, case-insensitive)
    fails with 502 ``INVALID_RECIPIENT``; then the send fails with probability ``fail_rate``,
    answering ``fail_status`` with ``fail_code``. A repeated key never reaches the provider and
    is answered from the store whatever the faults. Random draws come from an RNG seeded with
    ``seed`` (``None``: from the OS), so a run with a seed is reproducible.
    """

    fail_rate: float = attrs.field(default=0.0, validator=_check_fraction)
    fail_status: int = attrs.field(default=502, validator=_check_status)
    fail_code: str = attrs.field(default="PROVIDER_ERROR", validator=_check_code)
    latency: float = attrs.field(default=0.0, validator=_check_seconds)
    jitter: float = attrs.field(default=0.0, validator=_check_seconds)
    fail_recipients: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    channel_enabled: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    seed: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(int))
    )

    def evolve(self, **changes: Any) -> Faults:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return attrs.evolve(self, **changes)

    def rejects(self, address: str) -> bool:
        """Whether ``address`` matches a ``fail_recipients`` pattern (case-insensitive)."""
        address = address.lower()
        return any(fnmatch.fnmatchcase(address, p.lower()) for p in self.fail_recipients)

    def to_json(self) -> dict[str, Any]:
        """The settings as the admin endpoint shows them."""
        return {
            "fail_rate": self.fail_rate,
            "fail_status": self.fail_status,
            "fail_code": self.fail_code,
            "latency": self.latency,
            "jitter": self.jitter,
            "fail_recipients": list(self.fail_recipients),
            "channel_enabled": self.channel_enabled,
            "seed": self.seed,
        }


def faults_changes(body: object) -> dict[str, Any]:
    """Validate a (partial) ``POST /admin/faults`` body; returns the changes for
    :meth:`Faults.evolve`. Raises :class:`ValidationFailed` naming every bad field."""
    return fault_changes(body, _own_change)


def _own_change(name: str, value: object, changes: dict[str, Any], bad: Problems) -> bool:
    """The settings only this switch has (see :func:`~sluiceway.apps._checks.fault_changes`)."""
    if name == "fail_code":
        if not isinstance(value, str) or not 1 <= len(value) <= 64:
            bad(name, "must be a non-empty string of at most 64 characters")
        elif (problem := text_problem(value, header=True)) is not None:
            bad(name, problem)
        else:
            changes[name] = value
    elif name == "fail_recipients":
        if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
            bad(name, "must be a list of non-empty strings (addresses or glob patterns)")
        elif problems := [
            (i, problem)
            for i, pattern in enumerate(value)
            if (problem := text_problem(pattern, header=True)) is not None
        ]:
            for index, problem in problems:
                bad(f"{name}[{index}]", problem)
        else:
            changes[name] = tuple(value)
    elif name == "channel_enabled":
        bad.accept(changes, name, value, None if isinstance(value, bool) else "must be a boolean")
    else:
        return False
    return True
