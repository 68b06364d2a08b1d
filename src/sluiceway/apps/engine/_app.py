"""The campaign engine application: seed 000's contacts and templates, plus segments, engine
campaigns and their lifecycle (launch, pause, resume, complete), triggers, and analytics."""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import attrs
import httpx

from ..._errors import DataConflictError, DuplicateEntityError
from ...capacity import CapacitySource
from ...entities import Runtime
from ...server import Application, EndpointContext, EndpointError
from ...store import EntityRecord
from .._endpoints import fetch_entity, parse_body
from ..campaigns import CONTACT_LIST, Campaign, ContactList, TemplatePersonalizer
from ..campaigns import ENDPOINTS as CAMPAIGN_ENDPOINTS
from ..campaigns import TYPES as CAMPAIGN_TYPES
from ..campaigns._personalize import Personalizer
from ._conditions import Condition
from ._entities import (
    CAMPAIGN_BOOK,
    SEGMENT_BOOK,
    TYPES,
    CampaignBook,
    Enrollment,
    Segment,
    SegmentBook,
    StepCampaign,
    enrollment_data,
    enrollment_status,
    segment_filter,
    segment_members,
)
from ._services import EngineConfig, EngineServices, engine_services
from ._steps import StepGraph, StepType
from ._timing import SendStrategy, WaitDuration, _zone

#: Campaign types and the events a triggered campaign can enroll on.
CAMPAIGN_TYPES_ = ("broadcast", "drip", "triggered", "ab_test")
TRIGGER_EVENTS = ("contact_created", "tag_added")


@attrs.frozen(kw_only=True)
class NewSegment:
    name: str
    tags: list[str] = attrs.field(factory=list)
    conditions: list[dict[str, Any]] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class NewCampaign:
    name: str
    campaign_type: str
    steps: list[dict[str, Any]]
    segment_id: str | None = None
    send_strategy: str = "immediate"
    timezone: str = "UTC"
    start_at: float | None = None
    from_email: str | None = None
    from_name: str | None = None
    ab_test: dict[str, Any] | None = None
    trigger: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class CampaignRef:
    campaign_id: str


@attrs.frozen(kw_only=True)
class Event:
    event: str
    contact_id: str
    tag: str | None = None


# -- segments ------------------------------------------------------------------------------------


async def create_segment(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``segments/create``: ``{name, tags?, conditions?}`` → ``{segment_id, size}``. A contact
    is in the segment if it has any of ``tags`` (none: every contact) and every condition
    (``contact_attribute`` or ``lead_score``) holds. Errors: ``invalid_segment``,
    ``segment_exists``."""
    new = parse_body(body, NewSegment, "segments/create")
    problems = [] if new.name.strip() else ["name: must not be empty"]
    for index, rule in enumerate(new.conditions):
        try:
            condition = Condition.parse(rule, step=f"conditions[{index}]")
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if condition.kind not in ("contact_attribute", "lead_score"):
            problems.append(
                f"conditions[{index}]: a segment filters on contact attributes "
                f"and lead score, not {condition.kind}"
            )
    if problems:
        raise EndpointError("invalid_segment", "; ".join(problems), problems)
    services = engine_services(ctx)
    data = {
        "name": new.name,
        "tags": sorted({tag.strip() for tag in new.tags if tag.strip()}),
        "conditions": new.conditions,
    }
    try:
        record = await ctx.runtime.create(
            Segment,
            data,
            name=new.name,
            parent_id=services.segment_book_id,
            edge_type="HasSegment",
        )
    except DuplicateEntityError:
        raise EndpointError("segment_exists", f"a segment is named {new.name!r}") from None
    size = len(await segment_members(ctx.runtime, services, record.id))
    return {"segment_id": record.id, "size": size}


# -- campaigns -----------------------------------------------------------------------------------


def _check_campaign(new: NewCampaign) -> tuple[list[str], StepGraph | None]:
    problems: list[str] = []
    if not new.name.strip():
        problems.append("name: must not be empty")
    if new.campaign_type not in CAMPAIGN_TYPES_:
        problems.append(
            f"campaign_type: one of {', '.join(CAMPAIGN_TYPES_)}, not {new.campaign_type!r}"
        )
    try:
        SendStrategy(new.send_strategy)
    except ValueError:
        problems.append(
            f"send_strategy: one of immediate, scheduled, optimized, not {new.send_strategy!r}"
        )
    try:
        _zone(new.timezone)
    except ValueError as exc:
        problems.append(f"timezone: {exc}")
    if new.start_at is not None and not math.isfinite(new.start_at):
        problems.append("start_at: must be a finite number of epoch seconds")
    graph = None
    try:
        graph = StepGraph.parse(new.steps)
    except ValueError as exc:
        problems.append(str(exc))
    if new.campaign_type == "triggered":
        trigger = new.trigger or {}
        if trigger.get("event") not in TRIGGER_EVENTS:
            problems.append(
                f"trigger: a triggered campaign needs trigger.event, one of "
                f"{', '.join(TRIGGER_EVENTS)}"
            )
        elif trigger["event"] == "tag_added" and not isinstance(trigger.get("tag"), str):
            problems.append("trigger: a tag_added trigger names its tag")
    elif new.trigger is not None:
        problems.append("trigger: only a triggered campaign has one")
    if new.campaign_type != "triggered" and new.segment_id is None:
        problems.append("segment_id: a campaign enrolls the contacts of a segment")
    if new.campaign_type == "ab_test":
        problems.extend(_ab_problems(new.ab_test, graph))
    elif new.ab_test is not None:
        problems.append("ab_test: only an ab_test campaign has one")
    return problems, graph


def _ab_problems(ab: dict[str, Any] | None, graph: StepGraph | None) -> list[str]:
    if not isinstance(ab, dict):
        return ["ab_test: {step, variants, test_fraction, test_period} is required"]
    problems = []
    step = ab.get("step")
    if graph is not None:
        emails = {s.id for s in graph if s.type is StepType.EMAIL}
        if step not in emails:
            problems.append(f"ab_test.step: {step!r} is not an email step")
    variants = ab.get("variants")
    if not isinstance(variants, list) or len(variants) < 2:
        problems.append("ab_test.variants: at least two")
    else:
        ids = [v.get("id") if isinstance(v, dict) else None for v in variants]
        if len(set(ids)) != len(ids) or not all(isinstance(i, str) and i for i in ids):
            problems.append("ab_test.variants: each has a distinct id")
        for v in variants:
            if isinstance(v, dict) and not (
                isinstance(v.get("template_id"), str)
                or (isinstance(v.get("subject"), str) and isinstance(v.get("content"), str))
            ):
                problems.append(
                    f"ab_test.variants: {v.get('id')!r} needs a template_id, "
                    "or a subject and content"
                )
    fraction = ab.get("test_fraction")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        problems.append("ab_test.test_fraction: a number between 0 and 1")
    try:
        WaitDuration.parse(ab.get("test_period"), step=str(step))
    except ValueError as exc:
        problems.append(f"ab_test.test_period: {exc}")
    return problems


async def create_campaign(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``engine/campaigns/create``: a campaign with its steps (the engine guide shows them)
    → ``{campaign_id, status}`` (``draft``, or ``scheduled`` with a ``start_at``). Everything
    is checked first, each error naming its step. Errors: ``invalid_campaign``,
    ``segment_not_found``, ``template_not_found``, ``campaign_exists``."""
    new = parse_body(body, NewCampaign, "engine/campaigns/create")
    problems, graph = _check_campaign(new)
    if problems:
        raise EndpointError("invalid_campaign", "; ".join(problems), problems)
    assert graph is not None
    if new.segment_id is not None:
        await fetch_entity(ctx, new.segment_id, Segment.type_name, "segment")
    templates = {s.template_id for s in graph if s.template_id}
    for variant in (new.ab_test or {}).get("variants", []):
        if variant.get("template_id"):
            templates.add(variant["template_id"])
    for template_id in sorted(templates):
        template = await fetch_entity(ctx, template_id, "EmailTemplate", "template")
        if template.data.get("status") != "approved":
            raise EndpointError(
                "template_not_approved", f"template {template.data.get('name')!r} is not approved"
            )
    data = {
        **attrs.asdict(new),
        "status": "draft" if new.start_at is None else "scheduled",
        "created_at": ctx.runtime.clock(),
    }
    try:
        record = await ctx.runtime.create(
            StepCampaign,
            data,
            name=new.name,
            parent_id=engine_services(ctx).campaign_book_id,
            edge_type="HasCampaign",
        )
    except DuplicateEntityError:
        raise EndpointError("campaign_exists", f"a campaign is named {new.name!r}") from None
    return {"campaign_id": record.id, "status": data["status"]}


async def _campaign(ctx: EndpointContext, body: dict[str, Any], endpoint: str) -> Any:
    ref = parse_body(body, CampaignRef, endpoint)
    return await fetch_entity(ctx, ref.campaign_id, StepCampaign.type_name, "campaign")


def _wrong_status(record: Any, action: str, allowed: str) -> EndpointError:
    return EndpointError(
        "campaign_wrong_status",
        f"campaign {record.data.get('name')!r} is {record.data.get('status')}: "
        f"only {'an' if allowed[0] in 'aeiou' else 'a'} {allowed} campaign can be {action}",
    )


async def launch_campaign(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``engine/campaigns/launch``: ``{campaign_id}``, a draft or scheduled campaign →
    ``active``, and its run started in the same write (it enrolls every contact of the
    segment once); a triggered campaign starts enrolling on its events. Errors:
    ``campaign_not_found``, ``campaign_wrong_status``."""
    record = await _campaign(ctx, body, "engine/campaigns/launch")
    status = record.data.get("status")
    if status not in ("draft", "scheduled"):
        raise _wrong_status(record, "launched", "draft or scheduled")
    change = {"status": "active", "launched_at": ctx.runtime.clock()}
    try:
        if record.data.get("campaign_type") == "triggered":
            await ctx.runtime.update_data_if(record.id, {"status": status}, change)
        else:
            # The runtime's start (not the server's): the engine's endpoints also run
            # without a server, on virtual time in tests.
            await ctx.runtime.start(record.id, expect={"status": status}, data=change)
    except DataConflictError:
        raise _wrong_status(
            await ctx.runtime.get(record.id), "launched", "draft or scheduled"
        ) from None
    return {"campaign_id": record.id, "status": "active"}


async def pause_campaign(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``engine/campaigns/pause``: an active campaign → ``paused``: each enrollment holds
    before its next step (parked, holding nothing) until ``resume``."""
    record = await _campaign(ctx, body, "engine/campaigns/pause")
    try:
        await ctx.runtime.update_data_if(record.id, {"status": "active"}, {"status": "paused"})
    except DataConflictError:
        raise _wrong_status(await ctx.runtime.get(record.id), "paused", "active") from None
    return {"campaign_id": record.id, "status": "paused"}


async def resume_campaign(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``engine/campaigns/resume``: a paused campaign → ``active``; every held enrollment
    goes on from where it held."""
    record = await _campaign(ctx, body, "engine/campaigns/resume")
    try:
        await ctx.runtime.update_data_if(record.id, {"status": "paused"}, {"status": "active"})
    except DataConflictError:
        raise _wrong_status(await ctx.runtime.get(record.id), "resumed", "paused") from None
    released = await _release_held(ctx.runtime, record.id)
    return {"campaign_id": record.id, "status": "active", "released": released}


async def complete_campaign(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``engine/campaigns/complete``: an active or paused campaign → ``completed``: it
    enrolls nobody more, and each enrollment stops (``exited``) before its next step."""
    record = await _campaign(ctx, body, "engine/campaigns/complete")
    status = record.data.get("status")
    if status not in ("active", "paused"):
        raise _wrong_status(record, "completed", "active or paused")
    try:
        await ctx.runtime.update_data_if(
            record.id,
            {"status": status},
            {"status": "completed", "completed_at": ctx.runtime.clock()},
        )
    except DataConflictError:
        raise _wrong_status(await ctx.runtime.get(record.id), "completed", "active") from None
    await _release_held(ctx.runtime, record.id)
    return {"campaign_id": record.id, "status": "completed"}


async def _release_held(runtime: Runtime, campaign_id: str) -> int:
    """Send each held enrollment of the campaign the message that ends its hold."""
    released = 0
    for child in await runtime.children(campaign_id):
        held = child.data.get("held")
        if child.type == Enrollment.type_name and isinstance(held, int):
            await runtime.send_message(child.id, "resume", {"hold": held})
            released += 1
    return released


async def campaign_status(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``engine/campaigns/status``: ``{campaign_id}`` → its status and enrollment counts."""
    record = await _campaign(ctx, body, "engine/campaigns/status")
    counts = collections.Counter(
        enrollment_status(child)
        for child in await ctx.runtime.children(record.id)
        if child.type == Enrollment.type_name
    )
    return {
        "campaign_id": record.id,
        "name": record.data.get("name"),
        "status": record.data.get("status"),
        "run": record.status.value,
        "enrollments": dict(sorted(counts.items())),
        "ab_winner": record.data.get("ab_winner"),
    }


async def campaign_analytics(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``engine/campaigns/analytics``: ``{campaign_id}`` → the campaign's and each step's
    counts: enrolled, active, waiting, held, completed, failed, exited; per step entered,
    emails sent, opens, clicks, replies and failures (from the enrollments' trails and the
    notification service's summary). Also kept on the campaign as ``analytics``."""
    record = await _campaign(ctx, body, "engine/campaigns/analytics")
    services = engine_services(ctx)
    enrollments = [
        c for c in await ctx.runtime.children(record.id) if c.type == Enrollment.type_name
    ]
    statuses = collections.Counter(enrollment_status(c) for c in enrollments)
    graph = services.graph(record.id, record.data["steps"])
    steps: dict[str, dict[str, int]] = {
        step.id: dict.fromkeys(
            ("entered", "completed", "sent", "failed", "opened", "clicked", "replied"), 0
        )
        for step in graph
    }
    for enrollment in enrollments:
        for entry in enrollment.data.get("trail") or []:
            counts = steps.get(entry.get("step"))
            if counts is None:
                continue
            event = entry.get("event")
            if event in ("sent", "failed"):
                counts[event] += 1
            if event in ("sent", "waited", "branched", "acted"):
                counts["completed"] += 1
        current = enrollment.data.get("current_step")
        if current in steps:
            steps[current]["entered"] += 1
    try:
        response = await services.http.get("/v1/engagement/summary", params={"campaign": record.id})
        summary = response.json() if response.status_code == 200 else []
    except httpx.TransportError:
        summary = []
    for row in summary:
        counts = steps.get(row.get("step"))
        if counts is not None:
            for field in ("opened", "clicked", "replied"):
                counts[field] += row.get(field, 0)
    totals = {
        "enrolled": len(enrollments),
        **{
            s: statuses.get(s, 0)
            for s in ("active", "waiting", "held", "completed", "failed", "exited")
        },
        **{
            f"emails_{f}": sum(c[f] for c in steps.values())
            for f in ("sent", "failed", "opened", "clicked", "replied")
        },
    }
    analytics = {"campaign": totals, "steps": steps, "at": ctx.runtime.clock()}
    await ctx.runtime.update_data(record.id, analytics=analytics)
    return {"campaign_id": record.id, **analytics}


# -- triggers ------------------------------------------------------------------------------------


async def fire(
    runtime: Runtime,
    services: EngineServices,
    event: str,
    contact_id: str,
    *,
    tags: tuple[str, ...] = (),
    campaigns: Sequence[EntityRecord] | None = None,
) -> list[str]:
    """Enroll the contact in every active triggered campaign whose trigger is ``event`` (for
    ``tag_added``, one of ``tags``) and whose segment, if it has one, the contact is in.
    Created and started in one write per campaign; a contact is enrolled once per campaign.
    Returns the ids of the campaigns it was enrolled in now. ``campaigns``: the active
    triggered campaigns, when the caller fires for many contacts (else they are read)."""
    if campaigns is None:
        campaigns = await triggered_campaigns(runtime, services)
    if not campaigns:
        return []
    contact = (await runtime.get(contact_id)).data
    enrolled = []
    for campaign in campaigns:
        d = campaign.data
        trigger = d.get("trigger") or {}
        if trigger.get("event") != event:
            continue
        if event == "tag_added" and trigger.get("tag") not in tags:
            continue
        if d.get("segment_id"):
            segment = (await runtime.get(d["segment_id"])).data
            if not segment_filter(segment)(contact):
                continue
        name = f"contact:{contact_id}"
        if await runtime.store.find_entity(campaign.id, name) is not None:
            continue  # enrolled once per campaign
        await runtime.create(
            Enrollment,
            enrollment_data(campaign.id, contact_id, None, runtime.clock()),
            name=name,
            parent_id=campaign.id,
            edge_type="HasEnrollment",
            exist_ok=True,
            start=True,
        )
        enrolled.append(campaign.id)
    return enrolled


async def triggered_campaigns(runtime: Runtime, services: EngineServices) -> list[EntityRecord]:
    """The triggered campaigns that are active now."""
    return [
        campaign
        for campaign in await runtime.children(services.campaign_book_id)
        if campaign.data.get("campaign_type") == "triggered"
        and campaign.data.get("status") == "active"
    ]


async def post_event(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``engine/events``: ``{event, contact_id, tag?}`` (``contact_created``, ``tag_added``)
    → ``{enrolled: [campaign ids]}``, as a contact created or tagged elsewhere would."""
    event = parse_body(body, Event, "engine/events")
    if event.event not in TRIGGER_EVENTS:
        raise EndpointError("invalid_event", f"event: one of {', '.join(TRIGGER_EVENTS)}")
    await fetch_entity(ctx, event.contact_id, "Contact", "contact")
    tags = (event.tag,) if event.tag else ()
    enrolled = await fire(
        ctx.runtime, engine_services(ctx), event.event, event.contact_id, tags=tags
    )
    return {"enrolled": enrolled}


def _firing(
    endpoint: Callable[[EndpointContext, dict[str, Any]], Awaitable[Any]],
) -> Callable[[EndpointContext, dict[str, Any]], Awaitable[Any]]:
    """A seed 000 contact endpoint that also fires the triggers of what it did."""

    async def wrapped(ctx: EndpointContext, body: dict[str, Any]) -> Any:
        result = await endpoint(ctx, body)
        services = engine_services(ctx)
        campaigns = await triggered_campaigns(ctx.runtime, services)
        if not campaigns:
            return result  # nothing to fire (an import of 100,000 contacts reads this once)
        if "added_tags" in result:  # contacts/update
            if result["added_tags"]:
                await fire(
                    ctx.runtime,
                    services,
                    "tag_added",
                    result["id"],
                    tags=tuple(result["added_tags"]),
                    campaigns=campaigns,
                )
        elif "created_ids" in result:  # contacts/import
            for contact_id in result["created_ids"]:
                await _fire_created(ctx.runtime, services, contact_id, campaigns)
        else:  # contacts/create
            await _fire_created(ctx.runtime, services, result["id"], campaigns)
        return result

    wrapped.__doc__ = (endpoint.__doc__ or "") + " Fires the engine's triggers."
    return wrapped


async def _fire_created(
    runtime: Runtime,
    services: EngineServices,
    contact_id: str,
    campaigns: Sequence[EntityRecord],
) -> None:
    contact = (await runtime.get(contact_id)).data
    await fire(runtime, services, "contact_created", contact_id, campaigns=campaigns)
    if contact.get("tags"):
        await fire(
            runtime,
            services,
            "tag_added",
            contact_id,
            tags=tuple(contact["tags"]),
            campaigns=campaigns,
        )


ENDPOINTS = {
    "segments/create": create_segment,
    "engine/campaigns/create": create_campaign,
    "engine/campaigns/launch": launch_campaign,
    "engine/campaigns/pause": pause_campaign,
    "engine/campaigns/resume": resume_campaign,
    "engine/campaigns/complete": complete_campaign,
    "engine/campaigns/status": campaign_status,
    "engine/campaigns/analytics": campaign_analytics,
    "engine/events": post_event,
}


def create_app(
    config: EngineConfig | None = None,
    *,
    personalizer: Personalizer | None = None,
    transport: Callable[[], httpx.AsyncBaseTransport] | None = None,
) -> Application:
    """The campaign engine application (seed 001, with seed 000's contacts and templates),
    to serve with ``sluiceway serve --app sluiceway.apps.engine:app``.

    Args:
        config: how it runs (default: :meth:`EngineConfig.from_env`, read when the server
            starts).
        personalizer: makes each email (default: the template personalizer).
        transport: makes the HTTP transport of the notification client (default: httpx's).
    """

    @contextlib.asynccontextmanager
    async def lifespan(runtime: Runtime) -> AsyncIterator[EngineServices]:
        settings = config if config is not None else EngineConfig.from_env()
        async with httpx.AsyncClient(
            base_url=settings.notify_url,
            timeout=settings.send_timeout,
            transport=None if transport is None else transport(),
        ) as http:
            book = await runtime.create(ContactList, {}, name=CONTACT_LIST, exist_ok=True)
            segments = await runtime.create(SegmentBook, {}, name=SEGMENT_BOOK, exist_ok=True)
            campaigns = await runtime.create(CampaignBook, {}, name=CAMPAIGN_BOOK, exist_ok=True)
            yield EngineServices(
                config=settings,
                engine=settings,
                http=http,
                global_capacity=runtime.gauges.watch(
                    CapacitySource(settings.global_limit), name="sends"
                ),
                personalizer=personalizer or TemplatePersonalizer(),
                contact_list_id=book.id,
                segment_book_id=segments.id,
                campaign_book_id=campaigns.id,
            )

    endpoints: dict[str, Callable[[EndpointContext, dict[str, Any]], Awaitable[Any]]] = {
        **CAMPAIGN_ENDPOINTS,
        **ENDPOINTS,
    }
    for name in ("contacts/create", "contacts/import", "contacts/update"):
        endpoints[name] = _firing(CAMPAIGN_ENDPOINTS[name])
    types = [*CAMPAIGN_TYPES, *TYPES]
    return Application(
        "campaign-engine",
        types=types,
        endpoints=endpoints,
        lifespan=lifespan,
        # Campaigns run once their endpoint (campaigns/execute, engine/campaigns/launch)
        # checked them and changed their status.
        startable=[cls for cls in types if cls not in (Campaign, StepCampaign)],
    )
