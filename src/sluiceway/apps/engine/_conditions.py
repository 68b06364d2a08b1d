"""Conditions of condition steps, and A/B test splits: the engine's pure decision logic.

What seed 001 does: a condition step reads ``step.conditionRules`` (typed ``any``) and switches on
``rules.type``. ``email_opened``, ``email_clicked`` and ``email_replied`` are
``emailHistory.some(e => e.opened)`` (and so on) over the emails of this campaign to the contact;
``contact_attribute`` defers to an attribute comparison; ``lead_score`` is
``contact.leadScore >= rules.threshold``; and ``default: return false``. The rules are never
checked, so a misspelt type (``"email_open"``), an unknown operator or a threshold stored as a
string is not an error anywhere: every contact silently takes the false branch, for the life of
the campaign.

What this module fixes: :meth:`Condition.parse` checks the rules when the step is created, and
refuses anything it does not understand (unknown type or operator, a missing or extra key, a value
of the wrong type) with a :class:`ValueError` naming the step, so that a condition that is accepted
is one whose every outcome is meant. :meth:`Condition.evaluate` keeps the seed's semantics, and
states what the seed leaves open (comparisons with a missing or non-numeric attribute, a contact
without a lead score).

The seed's A/B campaigns need two more decisions, which live here too: which contacts are in the
test group and which variant each receives (:func:`ab_variant`, a deterministic hash, so that a
restarted engine assigns every contact as before), and which variant won (:func:`ab_winner`).
Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any, Final, TypeGuard

import attrs

__all__ = [
    "ATTRIBUTE_OPERATORS",
    "CONDITION_TYPES",
    "Condition",
    "Engagement",
    "ab_variant",
    "ab_winner",
    "contact_attributes",
]

#: The condition types of seed 001, the values of the ``"type"`` key.
CONDITION_TYPES: Final = frozenset(
    {"email_opened", "email_clicked", "email_replied", "contact_attribute", "lead_score"}
)

#: The operators of a ``contact_attribute`` condition.
ATTRIBUTE_OPERATORS: Final = frozenset(
    {
        "equals",
        "not_equals",
        "contains",
        "not_contains",
        "greater_than",
        "less_than",
        "exists",
        "not_exists",
    }
)

_ENGAGEMENT_TYPES: Final = frozenset({"email_opened", "email_clicked", "email_replied"})
_VALUELESS_OPERATORS: Final = frozenset({"exists", "not_exists"})
_NUMERIC_OPERATORS: Final = frozenset({"greater_than", "less_than"})


@attrs.frozen
class Engagement:
    """What the notification service recorded for one email of this campaign to the contact.

    ``step_id`` is the campaign's email step that sent it; the times are seconds (the engine's
    clock); ``opened_at``, ``clicked_at`` and ``replied_at`` are ``None`` until the recipient
    opens, clicks or replies (the first time it does).
    """

    step_id: str
    sent_at: float
    opened_at: float | None = None
    clicked_at: float | None = None
    replied_at: float | None = None

    @property
    def opened(self) -> bool:
        """Whether the email was opened (the seed's ``e.opened``)."""
        return self.opened_at is not None

    @property
    def clicked(self) -> bool:
        """Whether a link in the email was clicked (the seed's ``e.clicked``)."""
        return self.clicked_at is not None

    @property
    def replied(self) -> bool:
        """Whether the recipient replied to the email (the seed's ``e.replied``)."""
        return self.replied_at is not None


def _is_number(value: object) -> TypeGuard[int | float]:
    """An ``int`` or ``float`` that is not a ``bool`` (JSON's numbers)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: object) -> bool:
    """A JSON string, number or boolean (not ``null``, not a list or an object)."""
    return isinstance(value, str | bool) or _is_number(value)


def _same(left: object, right: object) -> bool:
    """Equality as JSON (and JavaScript's ``===``) sees it: a boolean equals only a boolean, a
    number only a number (``1 == 1.0``), a string only the identical string."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if _is_number(left) and _is_number(right):
        return bool(left == right)
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    return False


def _contains(container: object, value: object) -> bool:
    """A string contains a substring; a list (or tuple) contains an item equal to ``value`` by
    :func:`_same`; anything else contains nothing."""
    if isinstance(container, str):
        return isinstance(value, str) and value in container
    if isinstance(container, list | tuple):
        return any(_same(item, value) for item in container)
    return False


@attrs.frozen
class Condition:
    """The condition of one condition step, checked: build it with :meth:`parse`.

    ``kind`` is the rules' ``"type"`` (one of :data:`CONDITION_TYPES`). ``email_step`` (engagement
    types only) limits the condition to the email sent by that step, ``None`` meaning any email of
    the campaign (the seed's behaviour); the step graph's validation checks that it names an email
    step. ``attribute``, ``operator`` and ``value`` belong to ``contact_attribute``, ``threshold``
    to ``lead_score``; the fields a kind does not use are ``None``.
    """

    kind: str
    email_step: str | None = None
    attribute: str | None = None
    operator: str | None = None
    value: str | int | float | bool | None = None
    threshold: int | float | None = None

    @classmethod
    def parse(cls, obj: object, *, step: str) -> Condition:
        """Check the JSON rules ``obj`` of the condition step ``step`` and return the condition.

        Accepted shapes, and no other keys::

            {"type": "email_opened"}                 (also "email_clicked", "email_replied")
            {"type": "email_opened", "step": "s1"}   (only the email sent by step s1)
            {"type": "contact_attribute", "attribute": "industry", "operator": "equals",
             "value": "SaaS"}
            {"type": "contact_attribute", "attribute": "phone", "operator": "exists"}
            {"type": "lead_score", "threshold": 50}

        ``value`` is a string, number or boolean for ``equals``, ``not_equals``, ``contains`` and
        ``not_contains`` (a non-empty string for the ``contains`` operators when it is a string),
        a finite number for ``greater_than`` and ``less_than``, and absent for ``exists`` and
        ``not_exists``; ``threshold`` is a finite number (not a boolean).

        Raises :class:`ValueError` naming ``step`` for anything else. The seed's
        ``default: return false`` would instead send every contact down the false branch.
        """

        def refuse(reason: str) -> ValueError:
            return ValueError(f"condition step {step!r}: {reason}")

        if not isinstance(obj, Mapping):
            raise refuse(f"the condition must be a JSON object, not {type(obj).__name__}")
        if not all(isinstance(key, str) for key in obj):
            raise refuse("the condition's keys must be strings")
        kind = obj.get("type")
        if kind is None:
            raise refuse("the condition has no 'type'")
        if not isinstance(kind, str) or kind not in CONDITION_TYPES:
            raise refuse(
                f"unknown condition type {kind!r} (known: {', '.join(sorted(CONDITION_TYPES))})"
            )

        def keys(required: set[str], optional: frozenset[str] = frozenset()) -> None:
            present = set(obj)
            missing = required - present
            if missing:
                raise refuse(f"a {kind} condition needs {', '.join(map(repr, sorted(missing)))}")
            extra = present - required - optional
            if extra:
                raise refuse(f"a {kind} condition has no key {', '.join(map(repr, sorted(extra)))}")

        if kind in _ENGAGEMENT_TYPES:
            keys({"type"}, frozenset({"step"}))
            email_step = obj.get("step")
            if email_step is not None and (not isinstance(email_step, str) or not email_step):
                raise refuse(f"'step' must be an email step id, not {email_step!r}")
            if "step" in obj and email_step is None:
                raise refuse("'step' must be an email step id, not None")
            return cls(kind, email_step=email_step)

        if kind == "lead_score":
            keys({"type", "threshold"})
            threshold = obj["threshold"]
            if not _is_number(threshold) or not math.isfinite(threshold):
                raise refuse(f"'threshold' must be a finite number, not {threshold!r}")
            return cls(kind, threshold=threshold)

        # contact_attribute
        operator = obj.get("operator")
        if operator is None:
            raise refuse("a contact_attribute condition needs 'operator'")
        if not isinstance(operator, str) or operator not in ATTRIBUTE_OPERATORS:
            raise refuse(
                f"unknown operator {operator!r} (known: {', '.join(sorted(ATTRIBUTE_OPERATORS))})"
            )
        if operator in _VALUELESS_OPERATORS:
            keys({"type", "attribute", "operator"})
        else:
            keys({"type", "attribute", "operator", "value"})
        attribute = obj["attribute"]
        if not isinstance(attribute, str) or not attribute:
            raise refuse(f"'attribute' must be a non-empty string, not {attribute!r}")
        value = obj.get("value")
        if operator in _NUMERIC_OPERATORS:
            if not _is_number(value) or not math.isfinite(value):
                raise refuse(f"{operator} needs a finite number as 'value', not {value!r}")
        elif operator not in _VALUELESS_OPERATORS:
            if not _is_scalar(value):
                raise refuse(f"{operator} needs a string, number or boolean, not {value!r}")
            if _is_number(value) and not math.isfinite(value):
                raise refuse(f"{operator} needs a finite number, not {value!r}")
            if operator in {"contains", "not_contains"} and value == "":
                raise refuse(f"{operator} with an empty string does not depend on the contact")
        return cls(kind, attribute=attribute, operator=operator, value=value)

    def to_json(self) -> dict[str, Any]:
        """The condition as the JSON :meth:`parse` accepts (``parse(c.to_json()) == c``)."""
        result: dict[str, Any] = {"type": self.kind}
        if self.kind in _ENGAGEMENT_TYPES:
            if self.email_step is not None:
                result["step"] = self.email_step
        elif self.kind == "lead_score":
            result["threshold"] = self.threshold
        else:
            result["attribute"] = self.attribute
            result["operator"] = self.operator
            if self.operator not in _VALUELESS_OPERATORS:
                result["value"] = self.value
        return result

    def evaluate(
        self,
        *,
        engagement: Sequence[Engagement],
        attributes: Mapping[str, Any],
        lead_score: float | int | None,
    ) -> bool:
        """Whether the contact takes the true branch.

        ``engagement`` is what was recorded for this campaign's emails to the contact,
        ``attributes`` the contact's fields and custom attributes as one mapping, ``lead_score``
        its lead score (``None`` when it has none).

        * ``email_opened`` / ``email_clicked`` / ``email_replied``: some email (of ``email_step``
          when set) was opened / clicked / replied to, as the seed's ``some(e => e.opened)``. Each
          is read on its own: a click does not count as an open.
        * ``contact_attribute``: ``equals`` compares as JSON does (a boolean equals only a boolean,
          ``1`` equals ``1.0``, strings exactly, case-sensitively); ``contains`` is a substring of
          a string attribute or an equal item of a list attribute; ``not_equals`` and
          ``not_contains`` are their negations, so they hold for a missing attribute.
          ``greater_than`` and ``less_than`` hold only for a numeric attribute (a ``bool`` or a
          numeric string is not one): a missing or non-numeric attribute is false for both.
          ``exists`` means present and not ``None``; ``not_exists`` is its negation.
        * ``lead_score``: ``lead_score >= threshold``; a missing lead score is below any
          threshold.
        """
        if self.kind in _ENGAGEMENT_TYPES:
            emails = [
                e for e in engagement if self.email_step is None or e.step_id == self.email_step
            ]
            if self.kind == "email_opened":
                return any(e.opened for e in emails)
            if self.kind == "email_clicked":
                return any(e.clicked for e in emails)
            return any(e.replied for e in emails)
        if self.kind == "lead_score":
            assert self.threshold is not None
            return lead_score is not None and lead_score >= self.threshold
        assert self.attribute is not None
        actual = attributes.get(self.attribute)
        present = actual is not None
        match self.operator:
            case "exists":
                return present
            case "not_exists":
                return not present
            case "equals":
                return _same(actual, self.value)
            case "not_equals":
                return not _same(actual, self.value)
            case "contains":
                return _contains(actual, self.value)
            case "not_contains":
                return not _contains(actual, self.value)
            case "greater_than":
                return _is_number(actual) and _is_number(self.value) and actual > self.value
            case "less_than":
                return _is_number(actual) and _is_number(self.value) and actual < self.value
        raise AssertionError(f"unchecked operator {self.operator!r}")  # parse refuses it


def contact_attributes(contact: Mapping[str, Any]) -> dict[str, Any]:
    """A contact's data as conditions read it: its fields (``first_name``, ``company``,
    ``tags``...) and its custom ``attributes`` as one mapping (an attribute hides a field of
    the same name)."""
    fields = {k: v for k, v in contact.items() if k not in ("attributes", "applied_changes")}
    return {**fields, **(contact.get("attributes") or {})}


def _digest(campaign_id: str, contact_id: str) -> bytes:
    """sha256 of the two ids, encoded unambiguously (a JSON array, ASCII-escaped)."""
    return hashlib.sha256(json.dumps([campaign_id, contact_id]).encode("ascii")).digest()


def ab_variant(
    contact_id: str, *, campaign_id: str, variants: Sequence[str], test_fraction: float
) -> str | None:
    """The A/B variant that ``contact_id`` receives in the test group, or ``None`` when the
    contact is not in it and waits for the winner.

    Deterministic across processes and restarts: it hashes the campaign and contact ids with
    sha256 (never Python's ``hash``, which is salted per process). The digest's first 8 bytes put
    the contact in the test group with probability ``test_fraction``; the next 8 bytes, which are
    independent of them, pick one of ``variants`` uniformly. So about ``test_fraction`` of the
    contacts are tested, split evenly between the variants, and a contact's variant does not
    depend on the test fraction.

    Raises :class:`ValueError` for no variants, repeated variants, or a test fraction outside
    ``[0, 1]``.
    """
    if not variants:
        raise ValueError("an A/B test needs at least one variant")
    if len(set(variants)) != len(variants):
        raise ValueError(f"the A/B variants must be distinct, not {list(variants)!r}")
    if (
        not _is_number(test_fraction)
        or not math.isfinite(test_fraction)
        or not 0 <= test_fraction <= 1
    ):
        raise ValueError(f"the A/B test fraction must be in [0, 1], not {test_fraction!r}")
    digest = _digest(campaign_id, contact_id)
    position = int.from_bytes(digest[:8], "big")  # uniform in [0, 2**64)
    numerator, denominator = test_fraction.as_integer_ratio()  # exact, as is the comparison
    if position * denominator >= numerator * 2**64:  # position / 2**64 >= test_fraction
        return None
    return variants[int.from_bytes(digest[8:16], "big") % len(variants)]


def ab_winner(results: Mapping[str, tuple[int, int]]) -> str:
    """The variant with the highest open rate, given ``{variant: (sent, opened)}``.

    The open rate is ``opened / sent``, compared exactly (as fractions); a variant that sent
    nothing has rate 0. Ties, including all variants at zero opens, go to the variant that comes
    first in ``results`` (the order in which the campaign lists its variants), so the campaign's
    first variant (its control) wins unless another does strictly better.

    Raises :class:`ValueError` for an empty mapping, or counts that are not integers with
    ``0 <= opened <= sent``.
    """
    if not results:
        raise ValueError("an A/B test without variants has no winner")
    best: str | None = None
    best_rate = Fraction(-1)
    for variant, counts in results.items():
        if not isinstance(counts, tuple) or len(counts) != 2:
            raise ValueError(f"variant {variant!r}: expected (sent, opened), not {counts!r}")
        sent, opened = counts
        if not (
            isinstance(sent, int)
            and isinstance(opened, int)
            and not isinstance(sent, bool)
            and not isinstance(opened, bool)
            and 0 <= opened <= sent
        ):
            raise ValueError(
                f"variant {variant!r}: expected counts with 0 <= opened <= sent, not {counts!r}"
            )
        rate = Fraction(opened, sent) if sent else Fraction(0)
        if rate > best_rate:
            best, best_rate = variant, rate
    assert best is not None
    return best
