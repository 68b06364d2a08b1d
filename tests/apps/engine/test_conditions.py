"""Conditions of condition steps and A/B splits (seed 001): parsing refuses what the seed would
silently send down the false branch, evaluation keeps the seed's semantics, the A/B split is
deterministic and respects its fractions, and the winner rule is the documented one."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway.apps.engine._conditions import (
    ATTRIBUTE_OPERATORS,
    Condition,
    Engagement,
    ab_variant,
    ab_winner,
)

STEP = "check-industry"


def parse(obj: object) -> Condition:
    return Condition.parse(obj, step=STEP)


def refused(obj: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=STEP) as info:
        parse(obj)
    assert fragment in str(info.value), str(info.value)


def check(condition: Condition, attributes: dict[str, Any] | None = None, **kw: Any) -> bool:
    return condition.evaluate(
        engagement=kw.get("engagement", []),
        attributes=attributes or {},
        lead_score=kw.get("lead_score"),
    )


def attr(operator: str, value: Any = ..., attribute: str = "x") -> Condition:
    obj: dict[str, Any] = {"type": "contact_attribute", "attribute": attribute}
    obj["operator"] = operator
    if value is not ...:
        obj["value"] = value
    return parse(obj)


# ---------------------------------------------------------------------------------------------
# Engagement


def test_engagement_flags() -> None:
    sent = Engagement("e1", 10.0)
    assert (sent.opened, sent.clicked, sent.replied) == (False, False, False)
    full = Engagement("e1", 10.0, opened_at=11.0, clicked_at=12.0, replied_at=13.0)
    assert (full.opened, full.clicked, full.replied) == (True, True, True)
    # An open at time 0 is an open (None, not falsiness, means "not yet").
    assert Engagement("e1", 0.0, opened_at=0.0).opened


# ---------------------------------------------------------------------------------------------
# Parsing: every accepted shape


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"type": "email_opened"}, Condition("email_opened")),
        ({"type": "email_clicked"}, Condition("email_clicked")),
        ({"type": "email_replied"}, Condition("email_replied")),
        ({"type": "email_opened", "step": "e2"}, Condition("email_opened", email_step="e2")),
        ({"type": "lead_score", "threshold": 50}, Condition("lead_score", threshold=50)),
        ({"type": "lead_score", "threshold": -2.5}, Condition("lead_score", threshold=-2.5)),
        (
            {
                "type": "contact_attribute",
                "attribute": "industry",
                "operator": "equals",
                "value": "SaaS",
            },
            Condition("contact_attribute", attribute="industry", operator="equals", value="SaaS"),
        ),
        (
            {"type": "contact_attribute", "attribute": "phone", "operator": "exists"},
            Condition("contact_attribute", attribute="phone", operator="exists"),
        ),
        (
            {
                "type": "contact_attribute",
                "attribute": "vip",
                "operator": "not_equals",
                "value": True,
            },
            Condition("contact_attribute", attribute="vip", operator="not_equals", value=True),
        ),
    ],
)
def test_parse_accepts(obj: dict[str, Any], expected: Condition) -> None:
    condition = parse(obj)
    assert condition == expected
    assert condition.to_json() == obj
    assert parse(condition.to_json()) == condition


@pytest.mark.parametrize("operator", sorted(ATTRIBUTE_OPERATORS))
def test_parse_accepts_every_operator(operator: str) -> None:
    value: Any = ... if operator in {"exists", "not_exists"} else 3
    condition = attr(operator, value)
    assert condition.operator == operator
    assert parse(condition.to_json()) == condition


# ---------------------------------------------------------------------------------------------
# Parsing: every refusal names the step


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        # the shape
        (None, "must be a JSON object"),
        ("email_opened", "must be a JSON object"),
        ([{"type": "email_opened"}], "must be a JSON object"),
        ({1: "x", "type": "email_opened"}, "keys must be strings"),
        ({}, "has no 'type'"),
        ({"type": None}, "has no 'type'"),
        # the type: the seed's `default: return false`
        ({"type": "email_open"}, "unknown condition type 'email_open'"),
        ({"type": "EMAIL_OPENED"}, "unknown condition type"),
        ({"type": 3}, "unknown condition type 3"),
        ({"type": ["email_opened"]}, "unknown condition type"),
        # engagement conditions
        ({"type": "email_opened", "within": {"value": 2, "unit": "days"}}, "no key 'within'"),
        ({"type": "email_clicked", "step": 3}, "'step' must be an email step id"),
        ({"type": "email_clicked", "step": ""}, "'step' must be an email step id"),
        ({"type": "email_replied", "step": None}, "'step' must be an email step id"),
        # lead score
        ({"type": "lead_score"}, "needs 'threshold'"),
        ({"type": "lead_score", "threshold": True}, "'threshold' must be a finite number"),
        ({"type": "lead_score", "threshold": "50"}, "'threshold' must be a finite number"),
        ({"type": "lead_score", "threshold": None}, "'threshold' must be a finite number"),
        ({"type": "lead_score", "threshold": math.inf}, "'threshold' must be a finite number"),
        ({"type": "lead_score", "threshold": math.nan}, "'threshold' must be a finite number"),
        ({"type": "lead_score", "threshold": 5, "operator": "gte"}, "no key 'operator'"),
        # contact attribute: operator
        ({"type": "contact_attribute", "attribute": "a", "value": 1}, "needs 'operator'"),
        (
            {"type": "contact_attribute", "attribute": "a", "operator": "eq", "value": 1},
            "unknown operator 'eq'",
        ),
        (
            {"type": "contact_attribute", "attribute": "a", "operator": "Equals", "value": 1},
            "unknown operator 'Equals'",
        ),
        (
            {"type": "contact_attribute", "attribute": "a", "operator": 1, "value": 1},
            "unknown operator 1",
        ),
        # contact attribute: keys
        ({"type": "contact_attribute", "operator": "exists"}, "needs 'attribute'"),
        ({"type": "contact_attribute", "attribute": "a", "operator": "equals"}, "needs 'value'"),
        (
            {"type": "contact_attribute", "attribute": "a", "operator": "exists", "value": 1},
            "no key 'value'",
        ),
        (
            {
                "type": "contact_attribute",
                "attribute": "a",
                "operator": "not_exists",
                "value": None,
            },
            "no key 'value'",
        ),
        (
            {
                "type": "contact_attribute",
                "attribute": "a",
                "operator": "equals",
                "value": 1,
                "x": 2,
            },
            "no key 'x'",
        ),
        # contact attribute: attribute
        (
            {"type": "contact_attribute", "attribute": "", "operator": "exists"},
            "'attribute' must be a non-empty string",
        ),
        (
            {"type": "contact_attribute", "attribute": 7, "operator": "exists"},
            "'attribute' must be a non-empty string",
        ),
        # contact attribute: value types
        (
            {
                "type": "contact_attribute",
                "attribute": "a",
                "operator": "greater_than",
                "value": "5",
            },
            "greater_than needs a finite number",
        ),
        (
            {"type": "contact_attribute", "attribute": "a", "operator": "less_than", "value": True},
            "less_than needs a finite number",
        ),
        (
            {"type": "contact_attribute", "attribute": "a", "operator": "less_than", "value": None},
            "less_than needs a finite number",
        ),
        (
            {
                "type": "contact_attribute",
                "attribute": "a",
                "operator": "greater_than",
                "value": math.nan,
            },
            "greater_than needs a finite number",
        ),
        (
            {"type": "contact_attribute", "attribute": "a", "operator": "equals", "value": None},
            "equals needs a string, number or boolean",
        ),
        (
            {"type": "contact_attribute", "attribute": "a", "operator": "equals", "value": [1]},
            "equals needs a string, number or boolean",
        ),
        (
            {
                "type": "contact_attribute",
                "attribute": "a",
                "operator": "contains",
                "value": {"k": 1},
            },
            "contains needs a string, number or boolean",
        ),
        (
            {
                "type": "contact_attribute",
                "attribute": "a",
                "operator": "not_equals",
                "value": math.inf,
            },
            "not_equals needs a finite number",
        ),
        (
            {"type": "contact_attribute", "attribute": "a", "operator": "contains", "value": ""},
            "does not depend on the contact",
        ),
        (
            {
                "type": "contact_attribute",
                "attribute": "a",
                "operator": "not_contains",
                "value": "",
            },
            "does not depend on the contact",
        ),
    ],
)
def test_parse_refuses(obj: object, fragment: str) -> None:
    refused(obj, fragment)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
KEYS = st.sampled_from(["type", "step", "attribute", "operator", "value", "threshold", "within"])
WORDS = [*sorted(ATTRIBUTE_OPERATORS), "email_opened", "email_clicked", "email_replied"]
VALUES = st.sampled_from([*WORDS, "contact_attribute", "lead_score", "industry", "e1", ""]) | JSON
RULES = st.dictionaries(KEYS, VALUES, max_size=5) | JSON


@settings(max_examples=500)
@given(RULES)
def test_parse_accepts_or_refuses_with_value_error_naming_the_step(obj: object) -> None:
    """Whatever the JSON: a condition that round-trips, or a ValueError naming the step."""
    message = None
    try:
        condition = parse(obj)
    except ValueError as error:
        message = str(error)
    if message is not None:
        assert STEP in message
    else:
        assert parse(condition.to_json()) == condition
        assert condition.to_json() == obj


SCALARS = st.text(min_size=1, max_size=5) | st.integers() | st.booleans() | st.floats(-1e9, 1e9)
NUMBERS = st.integers() | st.floats(allow_nan=False, allow_infinity=False)
VALID = st.one_of(
    st.builds(
        lambda kind, step: {"type": kind} | ({} if step is None else {"step": step}),
        st.sampled_from(["email_opened", "email_clicked", "email_replied"]),
        st.none() | st.text(min_size=1, max_size=5),
    ),
    st.builds(lambda t: {"type": "lead_score", "threshold": t}, NUMBERS),
    st.builds(
        lambda a, o: {"type": "contact_attribute", "attribute": a, "operator": o},
        st.text(min_size=1, max_size=5),
        st.sampled_from(["exists", "not_exists"]),
    ),
    st.builds(
        lambda a, o, v: {"type": "contact_attribute", "attribute": a, "operator": o, "value": v},
        st.text(min_size=1, max_size=5),
        st.sampled_from(["equals", "not_equals", "contains", "not_contains"]),
        SCALARS,
    ),
    st.builds(
        lambda a, o, v: {"type": "contact_attribute", "attribute": a, "operator": o, "value": v},
        st.text(min_size=1, max_size=5),
        st.sampled_from(["greater_than", "less_than"]),
        NUMBERS,
    ),
)


@given(VALID, st.dictionaries(st.text(max_size=3), JSON, max_size=4), st.none() | NUMBERS)
def test_valid_conditions_round_trip_and_evaluate(
    obj: dict[str, Any], attributes: dict[str, Any], score: float | None
) -> None:
    """Every valid shape parses, round-trips, and evaluates to a bool on any contact."""
    condition = parse(obj)
    assert condition.to_json() == obj
    assert parse(condition.to_json()) == condition
    history = [Engagement("e1", 1.0, opened_at=2.0)]
    result = condition.evaluate(engagement=history, attributes=attributes, lead_score=score)
    assert isinstance(result, bool)


# ---------------------------------------------------------------------------------------------
# Evaluation: engagement (the seed's `emailHistory.some(e => e.opened)`)

OPENED = parse({"type": "email_opened"})
CLICKED = parse({"type": "email_clicked"})
REPLIED = parse({"type": "email_replied"})


def test_no_email_meets_no_engagement_condition() -> None:
    for condition in (OPENED, CLICKED, REPLIED):
        assert not check(condition)
        assert not check(condition, engagement=[Engagement("e1", 1.0), Engagement("e2", 2.0)])


def test_some_email_opened_is_enough() -> None:
    history = [Engagement("e1", 1.0), Engagement("e2", 2.0, opened_at=5.0), Engagement("e3", 3.0)]
    assert check(OPENED, engagement=history)
    assert not check(CLICKED, engagement=history)
    assert not check(REPLIED, engagement=history)


def test_each_engagement_kind_reads_its_own_field() -> None:
    clicked_only = [Engagement("e1", 1.0, clicked_at=2.0)]
    assert check(CLICKED, engagement=clicked_only)
    assert not check(OPENED, engagement=clicked_only)  # a click is not counted as an open
    replied_only = [Engagement("e1", 1.0, replied_at=2.0)]
    assert check(REPLIED, engagement=replied_only)
    assert not check(OPENED, engagement=replied_only)
    assert not check(CLICKED, engagement=replied_only)


def test_step_limits_the_condition_to_one_email() -> None:
    history = [Engagement("e1", 1.0, opened_at=2.0), Engagement("e2", 3.0)]
    assert check(parse({"type": "email_opened", "step": "e1"}), engagement=history)
    assert not check(parse({"type": "email_opened", "step": "e2"}), engagement=history)
    assert not check(parse({"type": "email_opened", "step": "e9"}), engagement=history)
    assert check(OPENED, engagement=history)


def test_engagement_conditions_ignore_attributes_and_score() -> None:
    assert not check(OPENED, {"opened": True}, lead_score=100)


@given(
    st.lists(st.tuples(st.sampled_from(["e1", "e2"]), st.booleans(), st.booleans(), st.booleans()))
)
def test_engagement_matches_the_seed(rows: list[tuple[str, bool, bool, bool]]) -> None:
    history = [
        Engagement(step, 1.0, 2.0 if o else None, 3.0 if c else None, 4.0 if r else None)
        for step, o, c, r in rows
    ]
    assert check(OPENED, engagement=history) == any(o for _, o, _, _ in rows)
    assert check(CLICKED, engagement=history) == any(c for _, _, c, _ in rows)
    assert check(REPLIED, engagement=history) == any(r for _, _, _, r in rows)
    one = parse({"type": "email_opened", "step": "e2"})
    assert check(one, engagement=history) == any(o for s, o, _, _ in rows if s == "e2")


# ---------------------------------------------------------------------------------------------
# Evaluation: contact attributes

MISSING = object()


@pytest.mark.parametrize(
    ("operator", "value", "actual", "expected"),
    [
        ("equals", "SaaS", "SaaS", True),
        ("equals", "SaaS", "saas", False),  # case-sensitive
        ("equals", "SaaS", "SaaS ", False),
        ("equals", "SaaS", MISSING, False),
        ("equals", "SaaS", None, False),
        ("equals", 1, 1.0, True),
        ("equals", 1, "1", False),
        ("equals", 1, True, False),  # a boolean is not a number
        ("equals", True, 1, False),
        ("equals", True, True, True),
        ("equals", False, False, True),
        ("equals", False, 0, False),
        ("equals", "a", ["a"], False),
        ("not_equals", "SaaS", "SaaS", False),
        ("not_equals", "SaaS", "Retail", True),
        ("not_equals", "SaaS", MISSING, True),
        ("not_equals", 1, True, True),
        ("contains", "Saa", "SaaS", True),
        ("contains", "saa", "SaaS", False),
        ("contains", "vip", ["new", "vip"], True),  # list membership
        ("contains", "vi", ["new", "vip"], False),  # items compare whole
        ("contains", 3, [1, 2, 3.0], True),
        ("contains", 1, [True], False),
        ("contains", 3, "123", False),  # a number is not a substring
        ("contains", "1", 123, False),  # nor is a number a string
        ("contains", "vip", MISSING, False),
        ("contains", "vip", None, False),
        ("contains", "vip", {"vip": 1}, False),  # an object is not a list
        ("not_contains", "vip", ["new", "vip"], False),
        ("not_contains", "vip", ["new"], True),
        ("not_contains", "Saa", "SaaS", False),
        ("not_contains", "vip", MISSING, True),
        ("greater_than", 10, 11, True),
        ("greater_than", 10, 10, False),
        ("greater_than", 10, 10.5, True),
        ("greater_than", 10, MISSING, False),  # missing: false
        ("greater_than", 10, None, False),
        ("greater_than", 10, "11", False),  # a numeric string is not a number
        ("greater_than", 0, True, False),  # nor is a boolean
        ("greater_than", 10, [11], False),
        ("greater_than", 10, math.nan, False),
        ("greater_than", 10, math.inf, True),
        ("less_than", 10, 9, True),
        ("less_than", 10, 10, False),
        ("less_than", -1.5, -2, True),
        ("less_than", 10, MISSING, False),  # missing: false for both directions
        ("less_than", 10, "9", False),
        ("less_than", 1, False, False),
        ("exists", ..., "x", True),
        ("exists", ..., "", True),  # present, even if empty
        ("exists", ..., 0, True),
        ("exists", ..., False, True),
        ("exists", ..., [], True),
        ("exists", ..., None, False),  # null counts as absent
        ("exists", ..., MISSING, False),
        ("not_exists", ..., "x", False),
        ("not_exists", ..., None, True),
        ("not_exists", ..., MISSING, True),
    ],
)
def test_attribute_operators(operator: str, value: Any, actual: Any, expected: bool) -> None:
    attributes = {"other": "SaaS"} if actual is MISSING else {"x": actual, "other": 1}
    assert check(attr(operator, value), attributes) is expected


def test_attribute_conditions_ignore_engagement_and_score() -> None:
    condition = attr("exists")
    assert not check(condition, {}, engagement=[Engagement("x", 1.0, 2.0, 3.0, 4.0)], lead_score=9)


@given(
    st.sampled_from(["equals", "contains"]),
    st.one_of(st.text(min_size=1, max_size=3), st.integers(-3, 3), st.booleans()),
    JSON | st.just(MISSING),
)
def test_negated_operators_are_negations(operator: str, value: Any, actual: Any) -> None:
    attributes = {} if actual is MISSING else {"x": actual}
    assert check(attr(f"not_{operator}", value), attributes) is not check(
        attr(operator, value), attributes
    )
    assert check(attr("not_exists"), attributes) is not check(attr("exists"), attributes)


@given(st.floats(allow_nan=False, allow_infinity=False), JSON | st.just(MISSING))
def test_greater_and_less_never_both_hold(bound: float, actual: Any) -> None:
    attributes = {} if actual is MISSING else {"x": actual}
    greater = check(attr("greater_than", bound), attributes)
    less = check(attr("less_than", bound), attributes)
    assert not (greater and less)
    numeric = isinstance(actual, int | float) and not isinstance(actual, bool)
    if greater or less:
        assert numeric


# ---------------------------------------------------------------------------------------------
# Evaluation: lead score (the seed's `contact.leadScore >= rules.threshold`)


@pytest.mark.parametrize(
    ("threshold", "score", "expected"),
    [
        (50, 50, True),  # >=, not >
        (50, 51, True),
        (50, 49, False),
        (50, 49.999, False),
        (50, 50.0, True),
        (0.5, 1, True),
        (-10, -10, True),
        (0, None, False),  # no lead score: below any threshold
        (-1000, None, False),
    ],
)
def test_lead_score(threshold: float, score: float | None, expected: bool) -> None:
    condition = parse({"type": "lead_score", "threshold": threshold})
    assert check(condition, {"lead_score": 100}, lead_score=score) is expected


# ---------------------------------------------------------------------------------------------
# A/B split

IDS = [f"contact-{i}" for i in range(10_000)]


def test_ab_variant_is_pinned() -> None:
    """The assignment is sha256 of the ids: the same in every process, and in every version (a
    restarted engine must assign every contact as before). These values must never change."""
    got = [
        ab_variant(f"c{i}", campaign_id="camp-1", variants=["A", "B", "C"], test_fraction=0.5)
        for i in range(16)
    ]
    assert got == [
        *("A", None, None, None, "B", None, "A", None),
        *("B", None, None, None, "C", "A", None, "B"),
    ]


@given(
    st.text(max_size=20),
    st.text(max_size=20),
    st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=5, unique=True),
    st.floats(0, 1),
)
def test_ab_variant_is_deterministic(
    contact: str, campaign: str, variants: list[str], fraction: float
) -> None:
    first = ab_variant(contact, campaign_id=campaign, variants=variants, test_fraction=fraction)
    again = ab_variant(
        contact, campaign_id=campaign, variants=tuple(variants), test_fraction=fraction
    )
    assert first == again
    assert first is None or first in variants
    # In the test group at some fraction: also at every larger fraction, with the same variant.
    if first is not None:
        assert (
            ab_variant(contact, campaign_id=campaign, variants=variants, test_fraction=1.0) == first
        )


def test_ab_variant_fraction_edges() -> None:
    assert all(
        ab_variant(i, campaign_id="c", variants=["A", "B"], test_fraction=0) is None
        for i in IDS[:500]
    )
    assert all(
        ab_variant(i, campaign_id="c", variants=["A", "B"], test_fraction=1) is not None
        for i in IDS[:500]
    )
    assert {
        ab_variant(i, campaign_id="c", variants=["only"], test_fraction=1.0) for i in IDS[:100]
    } == {"only"}


def test_ab_variant_depends_on_the_campaign() -> None:
    one = [
        ab_variant(i, campaign_id="c1", variants=["A", "B"], test_fraction=0.5) for i in IDS[:1000]
    ]
    two = [
        ab_variant(i, campaign_id="c2", variants=["A", "B"], test_fraction=0.5) for i in IDS[:1000]
    ]
    assert one != two
    # Ids are not concatenated ambiguously: ("ab", "c") and ("a", "bc") are different inputs.
    pairs = [("ab" * k, "c" * k) for k in range(1, 40)]
    split = [(a[:-1], a[-1] + b) for a, b in pairs]
    left = [ab_variant(b, campaign_id=a, variants=["A", "B"], test_fraction=0.5) for a, b in pairs]
    right = [ab_variant(b, campaign_id=a, variants=["A", "B"], test_fraction=0.5) for a, b in split]
    assert left != right


@settings(max_examples=15, deadline=None)
@given(
    st.text(max_size=10),
    st.floats(0.05, 1.0),
    st.lists(st.sampled_from("ABCDE"), min_size=1, max_size=5, unique=True),
)
def test_ab_variant_respects_fraction_and_balance(
    campaign: str, fraction: float, variants: list[str]
) -> None:
    """Over 10,000 contacts, the test group is ``fraction`` of them and its variants are even (a
    tolerance of about five standard deviations of the binomial)."""
    counts = Counter(
        ab_variant(i, campaign_id=campaign, variants=variants, test_fraction=fraction) for i in IDS
    )
    tested = len(IDS) - counts[None]
    assert (
        abs(tested / len(IDS) - fraction)
        <= 5 * math.sqrt(fraction * (1 - fraction) / len(IDS)) + 1e-9
    )
    share = 1 / len(variants)
    for variant in variants:
        assert (
            abs(counts[variant] / tested - share)
            <= 5 * math.sqrt(share * (1 - share) / tested) + 1e-9
        )


@pytest.mark.parametrize(
    ("variants", "fraction", "fragment"),
    [
        ([], 0.5, "at least one variant"),
        (["A", "A"], 0.5, "distinct"),
        (["A", "B"], -0.1, "test fraction"),
        (["A", "B"], 1.01, "test fraction"),
        (["A", "B"], math.nan, "test fraction"),
        (["A", "B"], math.inf, "test fraction"),
        (["A", "B"], True, "test fraction"),
    ],
)
def test_ab_variant_refuses(variants: list[str], fraction: float, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ab_variant("c1", campaign_id="camp", variants=variants, test_fraction=fraction)


# ---------------------------------------------------------------------------------------------
# A/B winner


@pytest.mark.parametrize(
    ("results", "winner"),
    [
        ({"A": (100, 20), "B": (100, 30)}, "B"),
        ({"A": (100, 30), "B": (100, 20)}, "A"),
        ({"A": (3, 1), "B": (1000, 333)}, "A"),  # 1/3 > 0.333, compared exactly
        ({"A": (1000, 333), "B": (3, 1)}, "B"),
        ({"A": (10, 5), "B": (1000, 499)}, "A"),  # rate, not count
        ({"A": (100, 20), "B": (50, 10)}, "A"),  # tie: the first listed
        ({"B": (50, 10), "A": (100, 20)}, "B"),  # order of the mapping, not of the names
        ({"A": (100, 0), "B": (100, 0), "C": (100, 0)}, "A"),  # zero opens: the first
        ({"A": (0, 0), "B": (100, 0)}, "A"),  # nothing sent: rate 0, still a tie
        ({"A": (0, 0), "B": (100, 1)}, "B"),
        ({"C": (0, 0)}, "C"),
        ({"A": (10, 1), "B": (10, 2), "C": (10, 2)}, "B"),
    ],
)
def test_ab_winner(results: dict[str, tuple[int, int]], winner: str) -> None:
    assert ab_winner(results) == winner


@pytest.mark.parametrize(
    ("results", "fragment"),
    [
        ({}, "without variants"),
        ({"A": (10, 11)}, "0 <= opened <= sent"),
        ({"A": (-1, 0)}, "0 <= opened <= sent"),
        ({"A": (10, -1)}, "0 <= opened <= sent"),
        ({"A": (10.0, 1)}, "0 <= opened <= sent"),
        ({"A": (True, False)}, "0 <= opened <= sent"),
        ({"A": (10, 1), "B": [10, 1]}, "expected (sent, opened)"),
        ({"A": (10,)}, "expected (sent, opened)"),
    ],
)
def test_ab_winner_refuses(results: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        ab_winner(results)


@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.integers(0, 50)).map(lambda t: (max(t), min(t))),
        min_size=1,
        max_size=6,
    )
)
def test_ab_winner_rule(counts: list[tuple[int, int]]) -> None:
    """The winner has the highest rate, and is the first listed among those that have it."""
    results = {f"v{i}": c for i, c in enumerate(counts)}
    rates = [o / s if s else 0.0 for s, o in counts]
    best = max(rates)
    first_best = next(i for i, rate in enumerate(rates) if math.isclose(rate, best, rel_tol=1e-12))
    assert ab_winner(results) == f"v{first_best}"
