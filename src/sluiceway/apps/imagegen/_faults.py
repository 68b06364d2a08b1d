"""The image service's fault switch: latency, random failures and rules aimed at some requests."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from .._checks import MAX_LATENCY, Problems, fault_changes, finite_number, status_problem

MAX_RULES = 100

#: What a fault code must look like (it is answered in JSON and logged).
_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_RULE_FIELDS = ("match", "latency", "fail_status", "fail_code")


def _seconds_problem(value: object) -> str | None:
    number = finite_number(value)
    if number is None or not 0.0 <= number <= MAX_LATENCY:
        return f"must be a number of seconds between 0 and {MAX_LATENCY:g}"
    return None


def _fraction_problem(value: object) -> str | None:
    number = finite_number(value)
    if number is None or not 0.0 <= number <= 1.0:
        return "must be a number between 0 and 1"
    return None


def _code_problem(value: object) -> str | None:
    if not isinstance(value, str) or _CODE.fullmatch(value) is None:
        return "must be 1 to 64 letters, digits or _ . : -"
    return None


def _match_problem(value: object) -> str | None:
    if (
        not isinstance(value, tuple)
        or not value
        or not all(isinstance(s, str) and s for s in value)
    ):
        return "must be a non-empty list of non-empty strings"
    return None


_Problem = Callable[[object], str | None]
_Validator = Callable[[object, "attrs.Attribute[Any]", Any], None]


def _validator(problem: _Problem) -> _Validator:
    """An attrs validator raising :class:`ValueError` with ``problem(value)``'s message."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        message = problem(value)
        if message is not None:
            raise ValueError(f"{attribute.name} {message}, not {value!r}")

    return check


def _optional(problem: _Problem) -> _Validator:
    return _validator(lambda value: None if value is None else problem(value))


def _strings(value: str | Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen
class FaultRule:
    """Faults for some requests: the rule *applies* to a request when every string of
    ``match`` occurs in the request's text (its idempotency key, its prompt and its metadata
    values, one per line). Then ``latency`` (if set) replaces the switch's latency (its
    ``jitter`` still adds up to that much more), and
    ``fail_status`` (if set) makes the generation fail with that status and ``fail_code``
    (default: the switch's ``fail_code``). A 4xx tells the client not to retry; a 5xx or 429
    that another try may succeed. ``match`` may be given as a single string."""

    match: tuple[str, ...] = attrs.field(converter=_strings, validator=_validator(_match_problem))
    latency: float | None = attrs.field(default=None, validator=_optional(_seconds_problem))
    fail_status: int | None = attrs.field(default=None, validator=_optional(status_problem))
    fail_code: str | None = attrs.field(default=None, validator=_optional(_code_problem))

    def __attrs_post_init__(self) -> None:
        if self.latency is None and self.fail_status is None:
            raise ValueError("a fault rule sets a latency, a fail_status or both")
        if self.fail_code is not None and self.fail_status is None:
            raise ValueError("a fault rule's fail_code needs its fail_status")

    def applies(self, text: str) -> bool:
        """Whether every string of ``match`` occurs in ``text``."""
        return all(part in text for part in self.match)

    def to_json(self) -> dict[str, Any]:
        """The rule as ``GET /admin/faults`` shows it (unset fields left out)."""
        rule: dict[str, Any] = {"match": list(self.match)}
        for name in ("latency", "fail_status", "fail_code"):
            if (value := getattr(self, name)) is not None:
                rule[name] = value
        return rule


def _rules(value: Iterable[FaultRule | Mapping[str, Any]]) -> tuple[FaultRule, ...]:
    if isinstance(value, FaultRule | Mapping | str):
        raise TypeError("rules must be a sequence of FaultRule (or of their JSON objects)")
    return tuple(rule if isinstance(rule, FaultRule) else FaultRule(**rule) for rule in value)


@attrs.frozen(kw_only=True)
class ImageFaults:
    """The image service's fault switch (immutable; change it with :meth:`evolve`).

    For a *new* generation, in this order: the service waits ``latency`` (or the first
    applying rule's) plus a uniform random ``0..jitter`` seconds, the time the "model" takes;
    then the first applying rule with a ``fail_status`` fails the request; otherwise the
    request fails with probability ``fail_rate``, answering ``fail_status`` with ``fail_code``
    (a failing backend still takes its time). A failure stores nothing. A request whose key was
    generated already never gets this far: it is answered from the store at once. Random draws
    come from an RNG seeded with ``seed`` (``None``: from the OS), so a run with a seed is
    reproducible.
    """

    latency: float = attrs.field(default=0.0, validator=_validator(_seconds_problem))
    jitter: float = attrs.field(default=0.0, validator=_validator(_seconds_problem))
    fail_rate: float = attrs.field(default=0.0, validator=_validator(_fraction_problem))
    fail_status: int = attrs.field(default=503, validator=_validator(status_problem))
    fail_code: str = attrs.field(default="GENERATION_FAILED", validator=_validator(_code_problem))
    seed: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(int))
    )
    rules: tuple[FaultRule, ...] = attrs.field(default=(), converter=_rules)

    def evolve(self, **changes: Any) -> ImageFaults:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return attrs.evolve(self, **changes)

    def rule_for(self, text: str) -> FaultRule | None:
        """The first rule that applies to a request with this text, if any."""
        return next((rule for rule in self.rules if rule.applies(text)), None)

    def to_json(self) -> dict[str, Any]:
        """The settings as the admin endpoint shows them."""
        return {
            "latency": self.latency,
            "jitter": self.jitter,
            "fail_rate": self.fail_rate,
            "fail_status": self.fail_status,
            "fail_code": self.fail_code,
            "seed": self.seed,
            "rules": [rule.to_json() for rule in self.rules],
        }

    @classmethod
    def from_json(cls, body: object) -> ImageFaults:
        """Settings from a JSON object like :meth:`to_json`'s (missing ones: the defaults);
        raises :class:`ValidationFailed` naming every bad field."""
        return cls().evolve(**faults_changes(body))


def _parse_rule(value: object, where: str, bad: Problems) -> FaultRule | None:
    if not isinstance(value, Mapping):
        bad(where, "must be an object with match and latency and/or fail_status")
        return None
    before = len(bad.details)
    for name in value:
        if name not in _RULE_FIELDS:
            bad(f"{where}.{name}", f"unknown field (known: {', '.join(_RULE_FIELDS)})")
    match = value.get("match")
    match = (match,) if isinstance(match, str) else tuple(match) if isinstance(match, list) else ()
    if (problem := _match_problem(match)) is not None:
        bad(f"{where}.match", problem)
    for name, check in (
        ("latency", _seconds_problem),
        ("fail_status", status_problem),
        ("fail_code", _code_problem),
    ):
        field = value.get(name)
        if field is not None and (problem := check(field)) is not None:
            bad(f"{where}.{name}", problem)
    if len(bad.details) > before:
        return None
    try:
        return FaultRule(
            match,
            latency=finite_number(value.get("latency")),
            fail_status=value.get("fail_status"),
            fail_code=value.get("fail_code"),
        )
    except ValueError as error:  # a rule that does nothing, or a code without a status
        bad(where, str(error))
        return None


def faults_changes(body: object) -> dict[str, Any]:
    """Validate a (partial) ``POST /admin/faults`` body; returns the changes for
    :meth:`ImageFaults.evolve`. Raises :class:`ValidationFailed` naming every bad field."""
    return fault_changes(body, _own_change)


def _own_change(name: str, value: object, changes: dict[str, Any], bad: Problems) -> bool:
    """The settings only this switch has (see :func:`~sluiceway.apps._checks.fault_changes`)."""
    if name == "fail_code":
        bad.accept(changes, name, value, _code_problem(value))
    elif name == "rules":
        if not isinstance(value, list) or len(value) > MAX_RULES:
            bad(name, f"must be a list of at most {MAX_RULES} rules")
        else:
            rules = [_parse_rule(rule, f"rules[{i}]", bad) for i, rule in enumerate(value)]
            changes[name] = tuple(rule for rule in rules if rule is not None)
    else:
        return False
    return True
