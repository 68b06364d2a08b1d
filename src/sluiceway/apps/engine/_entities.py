"""The campaign engine's entities: segments, campaigns with a step graph, and one enrollment
per contact and campaign that walks the graph (:mod:`._walk`)."""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ...entities import DataEntity, RunContext, RunnableEntity, Runtime, WaitableEntity
from ...store import EntityRecord, EntityStatus
from ..campaigns import Contact
from ._conditions import Condition, ab_variant, ab_winner, contact_attributes
from ._services import EngineServices, engine_services
from ._timing import WaitDuration
from ._walk import Walk

#: Names of the books every segment and every engine campaign is filed under.
SEGMENT_BOOK = "segments"
CAMPAIGN_BOOK = "step-campaigns"

#: How many enrollments a campaign starts per batch (its progress is stored per batch), and
#: how many of them at once (their writes share transactions).
ENROLL_BATCH = 500
ENROLL_TASKS = 32


class Segment(DataEntity, type_name="Segment"):
    """A saved filter over contacts: ``tags`` (any of them; none: every contact) and
    ``conditions`` (``contact_attribute`` and ``lead_score`` conditions, all of them),
    evaluated when a campaign is launched."""


class SegmentBook(
    DataEntity, type_name="SegmentBook", allowed_connections={"HasSegment": [Segment]}
):
    """Every segment, named by its name."""


def segment_filter(segment: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    """Whether a contact (its data) is in ``segment`` (a segment's data)."""
    tags = set(segment.get("tags") or [])
    conditions = [Condition.parse(rule, step="segment") for rule in segment.get("conditions") or []]

    def matches(contact: dict[str, Any]) -> bool:
        if tags and not tags.intersection(contact.get("tags") or []):
            return False
        attributes = contact_attributes(contact)
        return all(
            condition.evaluate(
                engagement=(), attributes=attributes, lead_score=contact.get("lead_score")
            )
            for condition in conditions
        )

    return matches


async def segment_members(runtime: Runtime, services: EngineServices, segment_id: str) -> list[str]:
    """The ids of the contacts in the segment now, oldest first."""
    matches = segment_filter((await runtime.get(segment_id)).data)
    contacts = await runtime.children(services.contact_list_id)
    return [c.id for c in contacts if c.type == Contact.type_name and matches(c.data)]


class SegmentSnapshot(RunnableEntity, type_name="SegmentSnapshot"):
    """The members of a segment when a campaign launched (its result, kept once: a campaign
    that runs again enrolls the same contacts)."""

    async def run_impl(self, ctx: RunContext) -> Any:
        services = engine_services(ctx)
        runtime = _runtime(ctx)
        return {"contacts": await segment_members(runtime, services, ctx.data["segment_id"])}


class ABDecision(RunnableEntity, type_name="ABDecision"):
    """Which variant of an A/B test won, from the opens of the test group's emails (the
    notification service's summary); its result is kept, so the decision is taken once."""

    async def run_impl(self, ctx: RunContext) -> Any:
        services = engine_services(ctx)
        d = ctx.data
        response = await services.http.get(
            "/v1/engagement/summary", params={"campaign": d["campaign_id"]}
        )
        response.raise_for_status()
        counts = {variant: [0, 0] for variant in d["variants"]}
        for row in response.json():
            if row.get("step") == d["step"] and row.get("variant") in counts:
                counts[row["variant"]][0] += row["sent"]
                counts[row["variant"]][1] += row["opened"]
        results = {variant: (sent, opened) for variant, (sent, opened) in counts.items()}
        return {
            "winner": ab_winner(results),
            "results": {v: {"sent": s, "opened": o} for v, (s, o) in results.items()},
        }


class Enrollment(WaitableEntity, type_name="Enrollment"):
    """One contact in one campaign: walks the campaign's steps (:class:`~._walk.Walk`), parked
    while it waits, held while the campaign is paused. Its data: ``campaign_id``,
    ``contact_id``, ``variant`` (A/B), and as it goes ``status`` (``active``, ``waiting``,
    ``held``, then ``completed``, ``failed`` or ``exited``), ``current_step``,
    ``steps_completed`` and the ``trail``."""

    async def run_impl(self, ctx: RunContext) -> Any:
        services = engine_services(ctx)
        runtime = _runtime(ctx)
        campaign = await runtime.get(ctx.data["campaign_id"])
        graph = services.graph(campaign.id, campaign.data["steps"])
        return await Walk(ctx, services, campaign, graph).run()


class StepCampaign(
    RunnableEntity,
    type_name="StepCampaign",
    allowed_connections={
        "HasEnrollment": [Enrollment],
        "Calls": [SegmentSnapshot, ABDecision],
    },
):
    """A campaign of the engine (see the engine guide). Its run, started by ``launch``,
    enrolls the segment's contacts (an A/B test: the test group first, the rest with the
    winner once the test period is over), waits until every enrollment has ended, and marks
    the campaign ``completed``. A triggered campaign has no run: events enroll contacts."""

    async def run_impl(self, ctx: RunContext) -> Any:
        d = ctx.data
        members = (
            await ctx.call(SegmentSnapshot, "segment-snapshot", {"segment_id": d["segment_id"]})
        )["contacts"]
        ab = d.get("ab_test")
        if not ab:
            await _enroll(ctx, [(contact, None) for contact in members], "enrolled")
        else:
            variants = [variant["id"] for variant in ab["variants"]]
            assigned = [
                (
                    contact,
                    ab_variant(
                        contact,
                        campaign_id=ctx.id,
                        variants=variants,
                        test_fraction=ab["test_fraction"],
                    ),
                )
                for contact in members
            ]
            tested = [(c, v) for c, v in assigned if v is not None]
            await _enroll(ctx, tested, "tested")
            period = WaitDuration.parse(ab["test_period"], step=ab["step"])
            scale = engine_services(ctx).engine.time_scale
            await ctx.sleep_until(d["launched_at"] + period.seconds * scale)
            decision = await ctx.call(
                ABDecision,
                "ab-decision",
                {"campaign_id": ctx.id, "step": ab["step"], "variants": variants},
            )
            await ctx.update_data(ab_winner=decision["winner"], ab_results=decision["results"])
            await ctx.status("RUNNING", f"variant {decision['winner']!r} won", **decision)
            rest = [(c, decision["winner"]) for c, v in assigned if v is None]
            await _enroll(ctx, rest, "rest")
        await ctx.wait_for_children()
        ended = collections.Counter(
            enrollment_status(child)
            for child in await _runtime(ctx).children(ctx.id)
            if child.type == Enrollment.type_name
        )
        await ctx.update_data(status="completed", completed_at=ctx.runtime.clock())
        return {"campaign_id": ctx.id, "enrolled": len(members), "ended": dict(ended)}


async def _enroll(ctx: RunContext, members: Sequence[tuple[str, str | None]], stage: str) -> None:
    """Start one enrollment per member (``(contact_id, variant)``), in batches; the count
    done is kept in the campaign's data, so a re-run skips the batches it started (starting
    an enrollment again would find it anyway) and says the same progress."""
    done_key = f"{stage}_count"
    done = ctx.data.get(done_key) or 0
    total = len(members)
    for start in range(0, total, ENROLL_BATCH):
        batch = members[start : start + ENROLL_BATCH]
        if start + len(batch) > done:
            if await _completed(ctx):
                return  # completed meanwhile: enroll nobody more
            await _start_batch(ctx, batch)
            await ctx.update_data(**{done_key: start + len(batch)})
        await ctx.status(
            "RUNNING", f"{stage}: {start + len(batch)}/{total}", stage=stage, total=total
        )


async def _completed(ctx: RunContext) -> bool:
    return (await _runtime(ctx).get(ctx.id)).data.get("status") == "completed"


async def _start_batch(ctx: RunContext, batch: Sequence[tuple[str, str | None]]) -> None:
    queue = iter(batch)
    now = ctx.runtime.clock()

    async def worker() -> None:
        for contact, variant in queue:
            await ctx.start_child(
                Enrollment,
                f"contact:{contact}",
                enrollment_data(ctx.id, contact, variant, now),
                edge_type="HasEnrollment",
            )

    async with trio.open_nursery() as nursery:
        for _ in range(ENROLL_TASKS):
            nursery.start_soon(worker)


def enrollment_status(record: EntityRecord) -> Any:
    """An enrollment's status: its data's, unless the runtime ended its run without the walk
    (``failed``: the crash-loop guard failed it after processes died running it, or its run
    raised; ``cancelled``). Its data then still says what it was doing (``active``,
    ``waiting``), which it will never do: a campaign that ended would count it as going on."""
    if record.status is EntityStatus.FAILED:
        return "failed"
    if record.status is EntityStatus.CANCELLED:
        return "cancelled"
    return record.data.get("status")


def enrollment_data(
    campaign_id: str, contact_id: str, variant: str | None, now: float
) -> dict[str, Any]:
    """A new enrollment's data."""
    return {
        "campaign_id": campaign_id,
        "contact_id": contact_id,
        "variant": variant,
        "status": "active",
        "enrolled_at": now,
        "steps_completed": 0,
        "trail": [],
    }


def _runtime(ctx: RunContext) -> Runtime:
    runtime = ctx.runtime
    if not isinstance(runtime, Runtime):
        raise TypeError(f"the engine's entities run in a Runtime, not {runtime!r}")
    return runtime


class CampaignBook(
    DataEntity, type_name="CampaignBook", allowed_connections={"HasCampaign": [StepCampaign]}
):
    """Every engine campaign, named by its name."""


#: Every entity type of the engine (seed 000's are added by the application).
TYPES: list[type[RunnableEntity]] = [
    Segment,
    SegmentBook,
    SegmentSnapshot,
    ABDecision,
    Enrollment,
    StepCampaign,
    CampaignBook,
]
