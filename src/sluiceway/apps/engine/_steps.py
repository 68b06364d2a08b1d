"""A campaign's step graph: email, wait, condition and action steps, and their validation.

The seed keeps steps as rows (``stepOrder``, ``stepType``, ``trueNextStepId``,
``falseNextStepId``) and finds its way through them at run time: a condition whose rules it
does not know sends the contact down the false branch, a reference to a missing step fails
when a contact reaches it, days or weeks later, and a loop of steps that never waits spins.
Here a campaign's steps are checked once, when the campaign is created: every problem is
refused with an error naming the step, so an enrollment never meets one.

Steps are JSON objects (a campaign's data), by type::

    {"id": "welcome", "step_order": 1, "type": "email", "template_id": "tpl-1"}
    {"id": "pause", "step_order": 2, "type": "wait", "wait": {"value": 3, "unit": "days"}}
    {"id": "opened?", "step_order": 3, "type": "condition",
     "condition": {"type": "email_opened"}, "true_next": "thanks", "false_next": "nudge"}
    {"id": "tag", "step_order": 4, "type": "action",
     "action": {"type": "add_tag", "tag": "engaged"}}

An email step names a ``template_id`` or carries its own ``subject`` and ``content``. Email,
wait and action steps end the enrollment with ``"end": true``; else they go on to ``next``
if given, else to the step with the next
``step_order`` (the seed's ``getNextStep``), else the enrollment ends; a condition goes to
``true_next`` or ``false_next`` (at least one), and ends the enrollment where the branch it
takes is absent.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs

from ._conditions import Condition
from ._timing import WaitDuration


class StepType(enum.Enum):
    """What a step does."""

    EMAIL = "email"
    WAIT = "wait"
    CONDITION = "condition"
    ACTION = "action"


class ActionType(enum.Enum):
    """What an action step changes: a contact attribute, a tag, the lead score, or a webhook
    called (with the step's idempotency key)."""

    SET_ATTRIBUTE = "set_attribute"
    ADD_TAG = "add_tag"
    REMOVE_TAG = "remove_tag"
    CHANGE_LEAD_SCORE = "change_lead_score"
    WEBHOOK = "webhook"


#: The keys each action type takes (besides ``type``).
_ACTION_KEYS: dict[ActionType, frozenset[str]] = {
    ActionType.SET_ATTRIBUTE: frozenset({"attribute", "value"}),
    ActionType.ADD_TAG: frozenset({"tag"}),
    ActionType.REMOVE_TAG: frozenset({"tag"}),
    ActionType.CHANGE_LEAD_SCORE: frozenset({"delta"}),
    ActionType.WEBHOOK: frozenset({"url"}),
}

#: The most steps a campaign may have (the loop check walks them recursively).
MAX_STEPS = 500

#: The keys every step takes, and those of each type.
_COMMON_KEYS = frozenset({"id", "step_order", "type", "name"})
_TYPE_KEYS: dict[StepType, frozenset[str]] = {
    StepType.EMAIL: frozenset({"template_id", "subject", "content", "next", "end"}),
    StepType.WAIT: frozenset({"wait", "next", "end"}),
    StepType.CONDITION: frozenset({"condition", "true_next", "false_next"}),
    StepType.ACTION: frozenset({"action", "next", "end"}),
}


@attrs.frozen
class Action:
    """An action step's change (see :class:`ActionType`); ``args`` are its other keys."""

    type: ActionType
    args: Mapping[str, Any]

    @classmethod
    def parse(cls, obj: object, *, step: str) -> Action:
        """The action ``obj`` describes.

        Raises:
            ValueError: naming ``step``, for an unknown type or missing, extra or mistyped
                keys.
        """
        if not isinstance(obj, Mapping):
            raise ValueError(f"step {step!r}: an action is an object, got {obj!r}")
        try:
            kind = ActionType(obj.get("type"))
        except ValueError:
            known = ", ".join(kind.value for kind in ActionType)
            raise ValueError(
                f"step {step!r}: unknown action type {obj.get('type')!r} (one of {known})"
            ) from None
        args = {key: value for key, value in obj.items() if key != "type"}
        _exact_keys(args, _ACTION_KEYS[kind], f"step {step!r}: {kind.value} actions")
        if kind is ActionType.SET_ATTRIBUTE:
            _text(args["attribute"], f"step {step!r}: the attribute")
        elif kind in (ActionType.ADD_TAG, ActionType.REMOVE_TAG):
            _text(args["tag"], f"step {step!r}: the tag")
        elif kind is ActionType.CHANGE_LEAD_SCORE:
            delta = args["delta"]
            if isinstance(delta, bool) or not isinstance(delta, int | float):
                raise ValueError(f"step {step!r}: the lead score delta must be a number")
            if not math.isfinite(delta):
                raise ValueError(f"step {step!r}: the lead score delta must be finite")
        else:
            url = _text(args["url"], f"step {step!r}: the webhook url")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"step {step!r}: the webhook url must be http(s), got {url!r}")
        return cls(kind, args)


@attrs.frozen
class Step:
    """One step of a campaign (see the module documentation)."""

    id: str
    order: int
    type: StepType
    name: str | None = None
    template_id: str | None = None
    subject: str | None = None
    content: str | None = None
    wait: WaitDuration | None = None
    condition: Condition | None = None
    action: Action | None = None
    next: str | None = None
    true_next: str | None = None
    false_next: str | None = None
    end: bool = False

    @classmethod
    def parse(cls, obj: object) -> Step:
        """The step ``obj`` describes, its own fields checked (references are checked by
        :class:`StepGraph`).

        Raises:
            ValueError: naming the step, for a missing, extra or mistyped key.
        """
        if not isinstance(obj, Mapping):
            raise ValueError(f"a step is an object, got {obj!r}")
        step_id = obj.get("id")
        if not isinstance(step_id, str) or not step_id:
            raise ValueError(f"a step's id must be a non-empty string, got {step_id!r}")
        where = f"step {step_id!r}"
        try:
            kind = StepType(obj.get("type"))
        except ValueError:
            known = ", ".join(kind.value for kind in StepType)
            raise ValueError(
                f"{where}: unknown step type {obj.get('type')!r} (one of {known})"
            ) from None
        extra = set(obj) - _COMMON_KEYS - _TYPE_KEYS[kind]
        if extra:
            raise ValueError(f"{where}: {kind.value} steps take no {sorted(extra)}")
        order = obj.get("step_order")
        if isinstance(order, bool) or not isinstance(order, int):
            raise ValueError(f"{where}: step_order must be an integer, got {order!r}")
        fields: dict[str, Any] = {"id": step_id, "order": order, "type": kind}
        if obj.get("name") is not None:
            fields["name"] = _text(obj["name"], f"{where}: the name")
        for key in ("next", "true_next", "false_next"):
            if obj.get(key) is not None:
                fields[key] = _text(obj[key], f"{where}: {key}")
        if "end" in obj:
            if not isinstance(obj["end"], bool):
                raise ValueError(f"{where}: end must be true or false, got {obj['end']!r}")
            if obj["end"] and "next" in fields:
                raise ValueError(f"{where}: a step that ends the enrollment has no next")
            fields["end"] = obj["end"]
        if kind is StepType.EMAIL:
            fields.update(_email_fields(obj, where))
        elif kind is StepType.WAIT:
            if "wait" not in obj:
                raise ValueError(f"{where}: a wait step needs wait: {{value, unit}}")
            fields["wait"] = WaitDuration.parse(obj["wait"], step=step_id)
        elif kind is StepType.CONDITION:
            if "condition" not in obj:
                raise ValueError(f"{where}: a condition step needs its condition")
            fields["condition"] = Condition.parse(obj["condition"], step=step_id)
            if "true_next" not in fields and "false_next" not in fields:
                raise ValueError(
                    f"{where}: a condition needs a branch (true_next, false_next or both)"
                )
        else:
            if "action" not in obj:
                raise ValueError(f"{where}: an action step needs its action")
            fields["action"] = Action.parse(obj["action"], step=step_id)
        return cls(**fields)

    def successors(self) -> list[str | None]:
        """Where the step may go: its explicit references (``None`` for the default next
        step, resolved by :class:`StepGraph`)."""
        if self.type is StepType.CONDITION:
            return [branch for branch in (self.true_next, self.false_next) if branch]
        return [] if self.end else [self.next]


def _email_fields(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    template = obj.get("template_id")
    subject, content = obj.get("subject"), obj.get("content")
    if template is not None:
        if subject is not None or content is not None:
            raise ValueError(
                f"{where}: an email step names a template_id or has its own subject and "
                "content, not both"
            )
        return {"template_id": _text(template, f"{where}: template_id")}
    if subject is None or content is None:
        raise ValueError(f"{where}: an email step needs a template_id, or a subject and content")
    return {
        "subject": _text(subject, f"{where}: the subject"),
        "content": _text(content, f"{where}: the content"),
    }


@attrs.frozen
class StepGraph:
    """A campaign's checked steps, in ``step_order``: where an enrollment starts, and where
    it goes from each step."""

    steps: tuple[Step, ...]

    @classmethod
    def parse(cls, objs: object) -> StepGraph:
        """The graph of the steps ``objs`` (a list of step objects) describes.

        Raises:
            ValueError: naming the step, for a step that is not valid (see
                :meth:`Step.parse`), a duplicate id or ``step_order``, a reference to no step,
                or a loop of steps with no wait in it (an enrollment would spin through it);
                or no steps at all.
        """
        if isinstance(objs, str | bytes) or not isinstance(objs, Sequence):
            raise ValueError(f"a campaign's steps are a list, got {objs!r}")
        if not objs:
            raise ValueError("a campaign needs at least one step")
        if len(objs) > MAX_STEPS:
            raise ValueError(f"a campaign has at most {MAX_STEPS} steps, got {len(objs)}")
        steps = sorted((Step.parse(obj) for obj in objs), key=lambda step: step.order)
        ids: set[str] = set()
        orders: dict[int, str] = {}
        for step in steps:
            if step.id in ids:
                raise ValueError(f"step {step.id!r}: two steps have this id")
            ids.add(step.id)
            if step.order in orders:
                raise ValueError(
                    f"step {step.id!r}: step_order {step.order} is step {orders[step.order]!r}'s"
                )
            orders[step.order] = step.id
        emails = {step.id for step in steps if step.type is StepType.EMAIL}
        for step in steps:
            for target in (step.next, step.true_next, step.false_next):
                if target is not None and target not in ids:
                    raise ValueError(f"step {step.id!r}: it goes to {target!r}, and no step is")
            looked_at = None if step.condition is None else step.condition.email_step
            if looked_at is not None and looked_at not in emails:
                raise ValueError(
                    f"step {step.id!r}: its condition looks at the email of step "
                    f"{looked_at!r}, and no email step is"
                )
        graph = cls(tuple(steps))
        graph._check_loops()
        return graph

    @property
    def first(self) -> Step:
        """Where every enrollment starts: the step with the lowest ``step_order``."""
        return self.steps[0]

    def __getitem__(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def after(self, step: Step, *, outcome: bool | None = None) -> Step | None:
        """The step that follows ``step`` (for a condition, on ``outcome``), or ``None``: the
        enrollment ends."""
        if step.type is StepType.CONDITION:
            if outcome is None:
                raise ValueError(f"step {step.id!r} is a condition: pass its outcome")
            target = step.true_next if outcome else step.false_next
            return None if target is None else self[target]
        if step.end:
            return None
        if step.next is not None:
            return self[step.next]
        index = self.steps.index(step)
        return self.steps[index + 1] if index + 1 < len(self.steps) else None

    def _edges(self, step: Step) -> list[Step]:
        if step.type is StepType.CONDITION:
            return [self[target] for target in (step.true_next, step.false_next) if target]
        following = self.after(step)
        return [] if following is None else [following]

    def _check_loops(self) -> None:
        """Refuse a loop of steps none of which waits (Tarjan's strongly connected
        components; a loop with a wait in it is a legitimate recurring sequence)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[Step] = []
        on_stack: set[str] = set()
        counter = 0

        def visit(step: Step) -> None:
            nonlocal counter
            index[step.id] = low[step.id] = counter
            counter += 1
            stack.append(step)
            on_stack.add(step.id)
            for target in self._edges(step):
                if target.id not in index:
                    visit(target)
                    low[step.id] = min(low[step.id], low[target.id])
                elif target.id in on_stack:
                    low[step.id] = min(low[step.id], index[target.id])
            if low[step.id] == index[step.id]:
                component: list[Step] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member.id)
                    component.append(member)
                    if member is step:
                        break
                looping = len(component) > 1 or step in self._edges(step)
                if looping and not any(member.type is StepType.WAIT for member in component):
                    first = min(component, key=lambda member: member.order)
                    names = ", ".join(
                        repr(member.id) for member in sorted(component, key=lambda m: m.order)
                    )
                    raise ValueError(
                        f"step {first.id!r}: it is in a loop with no wait ({names}): an "
                        "enrollment would go round it without end"
                    )

        for step in self.steps:
            if step.id not in index:
                visit(step)


def _exact_keys(obj: Mapping[str, Any], keys: frozenset[str], what: str) -> None:
    missing, extra = keys - set(obj), set(obj) - keys
    if missing:
        raise ValueError(f"{what} need {sorted(missing)}")
    if extra:
        raise ValueError(f"{what} take no {sorted(extra)}")


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value
