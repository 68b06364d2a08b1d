"""The step graph of seed 001's campaigns: parsing, where each step goes, and what is refused
at creation (with the step named)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway.apps.engine._steps import ActionType, StepGraph, StepType

WELCOME = {"id": "welcome", "step_order": 1, "type": "email", "template_id": "tpl-welcome"}
WAIT_1 = {"id": "wait-1", "step_order": 2, "type": "wait", "wait": {"value": 1, "unit": "days"}}
OPENED = {
    "id": "opened?",
    "step_order": 3,
    "type": "condition",
    "condition": {"type": "email_opened"},
    "true_next": "thanks",
    "false_next": "nudge",
}
THANKS = {
    "id": "thanks",
    "step_order": 4,
    "type": "email",
    "subject": "Thanks, {{firstName}}",
    "content": "Glad you read it.",
    "next": "tag",
}
NUDGE = {"id": "nudge", "step_order": 5, "type": "email", "template_id": "tpl-nudge"}
TAG = {"id": "tag", "step_order": 6, "type": "action", "action": {"type": "add_tag", "tag": "warm"}}
DRIP = [WELCOME, WAIT_1, OPENED, THANKS, NUDGE, TAG]


def graph(*steps: dict[str, Any]) -> StepGraph:
    return StepGraph.parse(list(steps))


def test_a_drip_parses_and_each_step_goes_where_it_says() -> None:
    drip = StepGraph.parse(DRIP)
    assert [step.id for step in drip] == ["welcome", "wait-1", "opened?", "thanks", "nudge", "tag"]
    assert drip.first.id == "welcome"
    welcome, wait, opened, thanks, nudge, tag = drip
    assert (welcome.type, wait.type, opened.type, tag.type) == (
        StepType.EMAIL,
        StepType.WAIT,
        StepType.CONDITION,
        StepType.ACTION,
    )
    assert drip.after(welcome) is wait  # the next step_order
    assert drip.after(wait) is opened
    assert drip.after(opened, outcome=True) is thanks
    assert drip.after(opened, outcome=False) is nudge
    assert drip.after(thanks) is tag  # its explicit next
    assert drip.after(nudge) is tag  # the next step_order
    assert drip.after(tag) is None  # the last: the enrollment ends
    assert thanks.subject == "Thanks, {{firstName}}"
    assert tag.action is not None
    assert (tag.action.type, dict(tag.action.args)) == (ActionType.ADD_TAG, {"tag": "warm"})


def test_steps_are_ordered_by_step_order_not_by_position() -> None:
    drip = StepGraph.parse(list(reversed(DRIP)))
    assert drip.first.id == "welcome"
    assert [step.order for step in drip] == [1, 2, 3, 4, 5, 6]


def test_a_condition_without_the_branch_it_takes_ends_the_enrollment() -> None:
    only_true = {**OPENED, "false_next": None}
    del only_true["false_next"]
    drip = graph(WELCOME, only_true, {**THANKS, "next": None})
    condition = drip["opened?"]
    assert drip.after(condition, outcome=False) is None
    assert drip.after(condition, outcome=True) is drip["thanks"]
    with pytest.raises(ValueError, match="condition: pass its outcome"):
        drip.after(condition)


def test_a_loop_with_a_wait_is_a_recurring_sequence() -> None:
    again = {**WAIT_1, "next": "welcome"}
    drip = graph(WELCOME, again)
    assert drip.after(drip["wait-1"]) is drip["welcome"]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "at least one step"),
        ("steps", "are a list"),
        ([{**WELCOME, "next": "welcome"}], "step 'welcome': it is in a loop with no wait"),
        (
            [WELCOME, {**NUDGE, "step_order": 2, "next": "welcome"}],
            r"step 'welcome': it is in a loop with no wait \('welcome', 'nudge'\)",
        ),
        (
            [WELCOME, {**OPENED, "step_order": 2, "true_next": "welcome", "false_next": None}],
            "step 'welcome': it is in a loop with no wait",
        ),
        ([WELCOME, {**WELCOME, "step_order": 2}], "step 'welcome': two steps have this id"),
        ([WELCOME, {**NUDGE, "step_order": 1}], "step 'nudge': step_order 1 is step 'welcome'"),
        ([{**WELCOME, "next": "nowhere"}], "step 'welcome': it goes to 'nowhere', and no step is"),
        ([{**OPENED, "true_next": "nowhere"}], "step 'opened\\?': it goes to 'nowhere'"),
        (
            [{k: v for k, v in OPENED.items() if k not in ("true_next", "false_next")}],
            r"step 'opened\?': a condition needs a branch",
        ),
        ([{**WAIT_1, "wait": {"value": -1, "unit": "days"}}], "wait-1"),
        ([{**WAIT_1, "wait": {"value": 1, "unit": "fortnights"}}], "wait-1"),
        ([{**WAIT_1, "wait": None}], "wait-1"),
        ([{k: v for k, v in WAIT_1.items() if k != "wait"}], "step 'wait-1': a wait step needs"),
        ([{**OPENED, "condition": {"type": "telepathy"}}], "opened"),
        ([{**WELCOME, "type": "sms"}], "step 'welcome': unknown step type 'sms'"),
        ([{**WELCOME, "step_order": "1"}], "step 'welcome': step_order must be an integer"),
        ([{**WELCOME, "step_order": True}], "step 'welcome': step_order must be an integer"),
        ([{**WELCOME, "id": ""}], "id must be a non-empty string"),
        (
            [{**WELCOME, "wait": {"value": 1, "unit": "days"}}],
            "step 'welcome': email steps take no \\['wait'\\]",
        ),
        ([{**WELCOME, "subject": "Hi"}], "not both"),
        (
            [{k: v for k, v in THANKS.items() if k != "content"} | {"next": None}],
            "needs a template_id, or a subject and content",
        ),
        ([{**TAG, "action": {"type": "delete_contact"}}], "unknown action type 'delete_contact'"),
        ([{**TAG, "action": {"type": "add_tag"}}], r"step 'tag': add_tag actions need \['tag'\]"),
        (
            [{**TAG, "action": {"type": "add_tag", "tag": "x", "color": "red"}}],
            r"step 'tag': add_tag actions take no \['color'\]",
        ),
        (
            [{**TAG, "action": {"type": "change_lead_score", "delta": True}}],
            "delta must be a number",
        ),
        (
            [{**TAG, "action": {"type": "change_lead_score", "delta": float("inf")}}],
            "delta must be finite",
        ),
        (
            [{**TAG, "action": {"type": "webhook", "url": "ftp://example.org/hook"}}],
            "webhook url must be http",
        ),
        ([7], "a step is an object"),
        (
            [
                WELCOME,
                {**OPENED, "condition": {"type": "email_opened", "step": "nowhere"}},
                THANKS,
                NUDGE,
                TAG,
            ],
            "step 'opened\\?': its condition looks at the email of step 'nowhere'",
        ),
        (
            [
                WAIT_1,
                {**OPENED, "condition": {"type": "email_opened", "step": "wait-1"}},
                THANKS,
                NUDGE,
                TAG,
            ],
            "and no email step is",
        ),
    ],
)
def test_bad_steps_are_refused_naming_the_step(steps: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StepGraph.parse(steps)


def test_a_condition_may_look_at_one_email_step() -> None:
    one = {**OPENED, "condition": {"type": "email_opened", "step": "welcome"}}
    drip = graph(WELCOME, WAIT_1, one, THANKS, NUDGE, TAG)
    condition = drip["opened?"].condition
    assert condition is not None
    assert condition.email_step == "welcome"


def test_actions_of_every_type_parse() -> None:
    actions = [
        {"type": "set_attribute", "attribute": "stage", "value": "customer"},
        {"type": "add_tag", "tag": "warm"},
        {"type": "remove_tag", "tag": "cold"},
        {"type": "change_lead_score", "delta": -5},
        {"type": "webhook", "url": "https://example.org/hook"},
    ]
    steps = [
        {"id": f"a{n}", "step_order": n, "type": "action", "action": action}
        for n, action in enumerate(actions)
    ]
    parsed = StepGraph.parse(steps)
    assert [step.action.type.value for step in parsed if step.action] == [
        action["type"] for action in actions
    ]


@given(st.integers(min_value=2, max_value=30), st.data())
def test_a_chain_of_emails_ends_after_the_last(length: int, data: st.DataObject) -> None:
    orders = data.draw(st.permutations(range(length)))
    steps = [
        {"id": f"s{order}", "step_order": order, "type": "email", "template_id": "t"}
        for order in orders
    ]
    chain = StepGraph.parse(steps)
    step = chain.first
    seen = [step.id]
    while (following := chain.after(step)) is not None:
        step = following
        seen.append(step.id)
    assert seen == [f"s{order}" for order in range(length)]
