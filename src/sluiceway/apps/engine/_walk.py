"""An enrollment's walk through its campaign's step graph, durably.

The seed keeps an enrollment as a row (``currentStepId``, ``nextEmailScheduledAt``) that a
polling loop advances. Here an enrollment is an entity whose run walks the graph, and whose
data keeps a **trail**: one entry per thing it decided or did, appended (in one write each)
before the run goes on::

    {"step": "welcome", "event": "scheduled", "at": 1800003600.0}   # a send time ahead
    {"step": "welcome", "event": "sent", "email_id": "...", "at": ...}
    {"step": "pause", "event": "waited", "until": 1800090000.0}
    {"step": "opened?", "event": "branched", "outcome": true}
    {"step": "tag", "event": "acted", "applied": true}
    {"step": "nudge", "event": "held", "hold": 1}                    # the campaign was paused
    {"step": "nudge", "event": "failed", "error": "..."}
    {"step": "nudge", "event": "exited"}                             # the campaign was completed

A run starts from the top of the graph and **replays** the trail: each entry makes the same
durable call it made the first time (a wait returns at once, a hold receives the message it
received), and the decisions it records are taken from it rather than made again (a condition
is not evaluated twice, an email is not sent twice). Past the trail the walk goes on for real.
This is what makes a run deterministic given what the store remembers (the entities guide,
"Writing run_impl for re-runs"), however many times the enrollment parked, and whatever the
campaign, the contact or the notification service say by then. An effect that happened but
was not recorded yet (a crash in between) happens again with the same idempotency key: the
notification service and :func:`~sluiceway.apps.campaigns.change_contact` make it once.
"""

from __future__ import annotations

import collections
from typing import Any

from ...entities import RunContext, Runtime
from ...store import EntityRecord
from .._requests import SendError, post_with_retries, request_with_retries
from ..campaigns._contacts import ContactChange, change_contact
from ..campaigns._personalize import PersonalizationRequest
from ._conditions import Engagement, contact_attributes
from ._services import EngineServices
from ._steps import ActionType, Step, StepGraph, StepType
from ._timing import next_send_time, wait_until

#: Trail events that end a step and move the enrollment on (or end it).
_STEP_DONE = frozenset({"sent", "waited", "branched", "acted"})


class StepFailed(Exception):
    """A step could not be done (an email refused, a webhook that kept failing)."""


class Walk:
    """One run of an enrollment through the step graph (see the module documentation)."""

    def __init__(
        self,
        ctx: RunContext,
        services: EngineServices,
        campaign: EntityRecord,
        graph: StepGraph,
    ) -> None:
        if not isinstance(ctx.runtime, Runtime):
            raise TypeError(f"an enrollment runs in a Runtime, not {ctx.runtime!r}")
        self.ctx = ctx
        self.runtime = ctx.runtime
        self.services = services
        self.campaign = campaign
        self.graph = graph
        self.trail: list[dict[str, Any]] = list(ctx.data.get("trail") or [])
        self.position = 0  # the next trail entry to replay
        self.done: collections.Counter[str] = collections.Counter()  # steps done, by id
        self.holds = 0
        # The campaign as read when the run started: its status serves the first look, unless
        # the run waited since (so a wake-up reads the campaign once).
        self._unread_record: EntityRecord | None = campaign

    # -- the trail -------------------------------------------------------------------------

    def _replaying(self) -> dict[str, Any] | None:
        """The next recorded entry, if the walk has not gone past the trail yet."""
        return self.trail[self.position] if self.position < len(self.trail) else None

    async def _take(self) -> dict[str, Any]:
        """Replay the next recorded entry: say it again (an envelope already stored is not
        stored twice) and return it."""
        entry = self.trail[self.position]
        self.position += 1
        await self._say(entry)
        return entry

    async def _say(self, entry: dict[str, Any]) -> None:
        """The progress envelope of a trail entry, the same in the run that recorded it and
        in every replay (so the envelopes of later runs keep their positions)."""
        step, event = entry["step"], entry["event"]
        message = {
            "scheduled": f"{step!r} goes out at {entry.get('at', 0):.0f}",
            "sent": f"sent {step!r}",
            "waited": f"waiting at {step!r} until {entry.get('until', 0):.0f}",
            "branched": f"{step!r} is {str(entry.get('outcome')).lower()}",
            "acted": f"did {step!r}",
            "held": f"held before {step!r}: the campaign is paused",
            "failed": f"{step!r} failed: {entry.get('error')}",
            "exited": f"stopped before {step!r}: the campaign was completed",
        }.get(event, f"{event} {step!r}")
        await self.ctx.status("RUNNING", message, step=step, event=event)

    async def _record(self, step: Step, event: str, **fields: Any) -> dict[str, Any]:
        """Append an entry to the trail (one write, with the enrollment's visible state),
        and say it."""
        entry = {"step": step.id, "event": event, **fields}
        self.trail.append(entry)
        self.position += 1
        state = {
            "held": "held",
            "scheduled": "waiting",
            "waited": "waiting",
            "failed": "failed",
            "exited": "exited",
        }.get(event, "active")
        await self.ctx.update_data(
            trail=self.trail,
            status=state,
            current_step=step.id,
            steps_completed=sum(1 for e in self.trail if e["event"] in _STEP_DONE),
        )
        await self._say(entry)
        return entry

    # -- the walk --------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Walk from the first step to the end; the enrollment's result."""
        step: Step | None = self.graph.first
        while step is not None:
            if not await self._may_go_on(step):
                return await self._end("exited")
            try:
                if step.type is StepType.EMAIL:
                    await self._email(step)
                    following = self.graph.after(step)
                elif step.type is StepType.WAIT:
                    await self._wait(step)
                    following = self.graph.after(step)
                elif step.type is StepType.CONDITION:
                    outcome = await self._condition(step)
                    following = self.graph.after(step, outcome=outcome)
                else:
                    await self._action(step)
                    following = self.graph.after(step)
            except _Exit:
                return await self._end("exited")
            except StepFailed as exc:
                return await self._end("failed", error=str(exc), step=step.id)
            self.done[step.id] += 1
            step = following
        return await self._end("completed")

    async def _end(self, status: str, **fields: Any) -> dict[str, Any]:
        ctx = self.ctx
        sent = sum(1 for e in self.trail if e["event"] == "sent")
        await ctx.update_data(
            status=status,
            current_step=None,
            ended_at=ctx.runtime.clock(),
            **{key: value for key, value in fields.items() if key == "error"},
        )
        await ctx.status("RUNNING", f"{status} after {len(self.trail)} events ({sent} emails)")
        return {
            "status": status,
            "contact_id": ctx.data["contact_id"],
            "emails_sent": sent,
            "steps": [e["step"] for e in self.trail if e["event"] in _STEP_DONE],
            **fields,
        }

    # -- pause, resume, complete -----------------------------------------------------------

    async def _may_go_on(self, step: Step) -> bool:
        """Before each step: go on while the campaign is active, hold while it is paused
        (durably, holding nothing, until a resume message), stop once it is completed."""
        while True:
            entry = self._replaying()
            if entry is not None:
                if entry["event"] == "held":
                    await self._take()
                    self.holds = entry["hold"]
                    await self._await_resume(entry["hold"])
                    continue
                return bool(entry["event"] != "exited")
            status = await self._campaign_status()
            if status == "paused":
                await self._hold(step)
                continue
            if status == "completed":
                await self._record(step, "exited")
                return False
            return True

    async def _sleep_until(self, when: float) -> None:
        if when > self.runtime.clock():
            self._unread_record = None  # it will wait: the campaign may change meanwhile
        await self.ctx.sleep_until(when)

    async def _campaign_status(self) -> str:
        record, self._unread_record = self._unread_record, None
        if record is None:
            record = await self.runtime.get(self.campaign.id)
        status = record.data.get("status")
        return status if isinstance(status, str) else "active"

    async def _hold(self, step: Step) -> None:
        ctx = self.ctx
        self.holds += 1
        number = self.holds
        await self._record(step, "held", hold=number)
        await ctx.update_data(held=number)
        # A resume that read the enrollments before this hold was stored sent it nothing:
        # look again now that it is stored, and resume ourselves if it happened.
        if await self._campaign_status() != "paused":
            await self.runtime.send_message(ctx.id, "resume", {"hold": number})
        await self._await_resume(number)
        await ctx.update_data(held=None, status="active")

    async def _await_resume(self, number: int) -> None:
        """Until the resume message of hold ``number`` (an older hold's is skipped)."""
        while True:
            self._unread_record = None  # a hold may wait: the campaign may change meanwhile
            message = await self.ctx.wait_for_message(
                "paused: waiting for the campaign to resume", {"hold": number}
            )
            if isinstance(message.data, dict) and message.data.get("hold") == number:
                return

    # -- steps -------------------------------------------------------------------------------

    async def _email(self, step: Step) -> None:
        ctx = self.ctx
        entry = self._replaying()
        if entry is None:
            at = await self._send_time()
            if at > ctx.runtime.clock():
                entry = await self._record(step, "scheduled", at=at)
                await self._sleep_until(at)
                if not await self._may_go_on(step):
                    raise _Exit
        elif entry["event"] == "scheduled":
            await self._take()
            await self._sleep_until(entry["at"])
            if not await self._may_go_on(step):
                raise _Exit
        if await self._replayed_outcome():
            return
        try:
            email_id = await self._send(step)
        except SendError as exc:
            await self._record(step, "failed", error=str(exc))
            raise StepFailed(str(exc)) from None
        await self._record(step, "sent", email_id=email_id, at=ctx.runtime.clock())

    async def _send_time(self) -> float:
        campaign = self.campaign.data
        now = self.ctx.runtime.clock()
        strategy = campaign.get("send_strategy", "immediate")
        open_times: list[float] = []
        if strategy == "optimized":
            rows = await self._engagement({"contact": self.ctx.data["contact_id"]})
            open_times = [row["opened_at"] for row in rows if row.get("opened_at") is not None]
        at = next_send_time(
            strategy,
            now=now,
            timezone=campaign.get("timezone", "UTC"),
            start_at=campaign.get("start_at"),
            open_times=open_times,
            follow_up=any(e["event"] == "sent" for e in self.trail),
        )
        return now + (at - now) * self.services.engine.time_scale

    async def _send(self, step: Step) -> str | None:
        """Render the step's email for the contact and send it, keyed by enrollment, step
        and visit."""
        ctx = self.ctx
        services = self.services
        campaign = self.campaign.data
        contact = (await self.runtime.get(ctx.data["contact_id"])).data
        subject, content = await self._content(step)
        email = await services.personalizer.personalize(
            PersonalizationRequest(
                subject_template=subject, body_html_template=content, contact=contact
            )
        )
        visit = self.done[step.id] + 1
        key = f"enrollment-{ctx.id}-{step.id}" + (f"-{visit}" if visit > 1 else "")
        metadata = {
            "campaign_id": self.campaign.id,
            "contact_id": ctx.data["contact_id"],
            "step_id": step.id,
            "enrollment_id": ctx.id,
        }
        if ctx.data.get("variant") is not None and step.id == _ab_step(campaign):
            metadata["variant"] = ctx.data["variant"]
        body: dict[str, Any] = {
            "to": [contact["email"]],
            "subject": email.subject,
            "html": email.body_html,
            "idempotencyKey": key,
            "metadata": metadata,
        }
        if campaign.get("from_email"):
            name = campaign.get("from_name")
            body["from"] = f"{name} <{campaign['from_email']}>" if name else campaign["from_email"]
        ctx.check_lease()
        async with services.send_capacity(self.campaign.id):
            answer = await post_with_retries(
                services.http,
                "/send/email",
                body,
                attempts=services.config.send_attempts,
                retry_delay=services.config.retry_delay,
                what="the notification service",
            )
        email_id = answer.get("id")
        return email_id if isinstance(email_id, str) else None

    async def _content(self, step: Step) -> tuple[str, str]:
        """The subject and body templates of an email step: the A/B variant's at the tested
        step, the step's own, or its template's."""
        variant = self.ctx.data.get("variant")
        ab = self.campaign.data.get("ab_test") or {}
        source: dict[str, Any] = {"subject": step.subject, "content": step.content}
        if step.template_id is not None:
            source = {"template_id": step.template_id}
        if variant is not None and step.id == ab.get("step"):
            for candidate in ab.get("variants", []):
                if candidate.get("id") == variant:
                    source = candidate
        if source.get("template_id"):
            template = (await self.runtime.get(source["template_id"])).data
            return template["subject_template"], template["body_html"]
        return source["subject"], source["content"]

    async def _wait(self, step: Step) -> None:
        ctx = self.ctx
        entry = self._replaying()
        if entry is None:
            assert step.wait is not None
            now = ctx.runtime.clock()
            end = wait_until(now, step.wait, timezone=self.campaign.data.get("timezone"))
            until = now + (end - now) * self.services.engine.time_scale
            await self._record(step, "waited", until=until)
        else:
            until = (await self._take())["until"]
        await self._sleep_until(until)

    async def _condition(self, step: Step) -> bool:
        entry = self._replaying()
        if entry is not None:
            return (await self._take())["outcome"] is True
        assert step.condition is not None
        ctx = self.ctx
        contact = (await self.runtime.get(ctx.data["contact_id"])).data
        engagement: list[Engagement] = []
        if step.condition.kind.startswith("email_"):
            rows = await self._engagement(
                {"campaign": self.campaign.id, "contact": ctx.data["contact_id"]}
            )
            engagement = [
                Engagement(
                    step_id=row.get("step") or "",
                    sent_at=row["sent_at"],
                    opened_at=row.get("opened_at"),
                    clicked_at=row.get("clicked_at"),
                    replied_at=row.get("replied_at"),
                )
                for row in rows
            ]
        outcome = step.condition.evaluate(
            engagement=engagement,
            attributes=contact_attributes(contact),
            lead_score=contact.get("lead_score"),
        )
        await self._record(step, "branched", outcome=outcome)
        return outcome

    async def _engagement(self, query: dict[str, str]) -> list[dict[str, Any]]:
        """The notification service's engagement records for ``query``."""
        config = self.services.config
        try:
            rows = await request_with_retries(
                self.services.http,
                "GET",
                "/v1/engagement",
                params=query,
                attempts=config.send_attempts,
                retry_delay=config.retry_delay,
                what="the notification service",
            )
        except SendError as exc:
            raise StepFailed(f"could not read the engagement of the contact: {exc}") from None
        if not isinstance(rows, list):
            raise StepFailed(f"the notification service's engagement is not a list: {rows!r}")
        return rows

    async def _replayed_outcome(self) -> bool:
        """Replay the recorded outcome of an email or action step, if there is one: whether
        there was (a recorded failure raises it again)."""
        entry = self._replaying()
        if entry is None:
            return False
        await self._take()
        if entry["event"] == "failed":
            raise StepFailed(entry["error"])
        return True

    async def _action(self, step: Step) -> None:
        if await self._replayed_outcome():
            return
        assert step.action is not None
        ctx = self.ctx
        action = step.action
        visit = self.done[step.id] + 1
        key = f"enrollment-{ctx.id}-{step.id}-{visit}"
        args = action.args
        try:
            if action.type is ActionType.WEBHOOK:
                ctx.check_lease()
                await post_with_retries(
                    self.services.http,
                    args["url"],
                    {
                        "campaign_id": self.campaign.id,
                        "enrollment_id": ctx.id,
                        "contact_id": ctx.data["contact_id"],
                        "step_id": step.id,
                    },
                    attempts=self.services.config.send_attempts,
                    retry_delay=self.services.config.retry_delay,
                    what=f"the webhook {args['url']}",
                    headers={"Idempotency-Key": key},
                )
                applied = True
            else:
                change = {
                    ActionType.SET_ATTRIBUTE: lambda: ContactChange(
                        attributes={args["attribute"]: args["value"]}
                    ),
                    ActionType.ADD_TAG: lambda: ContactChange(add_tags=(args["tag"],)),
                    ActionType.REMOVE_TAG: lambda: ContactChange(remove_tags=(args["tag"],)),
                    ActionType.CHANGE_LEAD_SCORE: lambda: ContactChange(
                        lead_score_delta=args["delta"]
                    ),
                }[action.type]()
                changed = await change_contact(
                    self.runtime, ctx.data["contact_id"], change, key=key
                )
                applied = changed.applied
        except (SendError, ValueError) as exc:
            await self._record(step, "failed", error=str(exc))
            raise StepFailed(str(exc)) from None
        await self._record(step, "acted", applied=applied)


class _Exit(Exception):
    """The campaign was completed while an email waited for its send time."""


def _ab_step(campaign: dict[str, Any]) -> str | None:
    ab = campaign.get("ab_test")
    return ab.get("step") if isinstance(ab, dict) else None
