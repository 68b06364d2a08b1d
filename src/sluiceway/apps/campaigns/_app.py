"""The campaign application: its lifespan and endpoints."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import httpx

from ..._errors import DataConflictError, DuplicateEntityError
from ...capacity import CapacitySource
from ...entities import Runtime
from ...server import Application, EndpointContext, EndpointError
from .._endpoints import fetch_entity, parse_body
from ..notification._validation import is_email
from ._config import CampaignConfig, CampaignServices, services_of
from ._contacts import RESERVED, ContactChange, change_contact
from ._entities import (
    CONTACT_LIST,
    TYPES,
    Campaign,
    Contact,
    ContactList,
    EmailTemplate,
    now_iso,
)
from ._personalize import (
    FIELDS,
    Personalizer,
    TemplatePersonalizer,
    malformed_placeholders,
    unknown_placeholders,
)

# -- request bodies ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class NewContact:
    first_name: str
    last_name: str
    email: str
    company: str | None = None
    tags: list[str] = attrs.field(factory=list)
    attributes: dict[str, Any] = attrs.field(factory=dict)
    lead_score: float | None = None


@attrs.frozen(kw_only=True)
class UpdateContact:
    contact_id: str
    attributes: dict[str, Any] = attrs.field(factory=dict)
    add_tags: list[str] = attrs.field(factory=list)
    remove_tags: list[str] = attrs.field(factory=list)
    lead_score: float | None = None
    lead_score_delta: float = 0


@attrs.frozen(kw_only=True)
class ImportContacts:
    contacts: list[NewContact]


@attrs.frozen(kw_only=True)
class ListContacts:
    tag: str | None = None


@attrs.frozen(kw_only=True)
class NewTemplate:
    name: str
    subject_template: str
    body_html: str


@attrs.frozen(kw_only=True)
class TemplateRef:
    template_id: str


@attrs.frozen(kw_only=True)
class RejectTemplate:
    template_id: str
    reason: str | None = None


@attrs.frozen(kw_only=True)
class NewCampaign:
    name: str
    template_id: str
    tag_filter: list[str]
    description: str = ""
    actor_id: str | None = None


@attrs.frozen(kw_only=True)
class ExecuteCampaign:
    campaign_id: str
    actor_id: str | None = None


def _check_contact(contact: NewContact, where: str = "") -> dict[str, Any]:
    problems = []
    for field in ("first_name", "last_name"):
        if not getattr(contact, field).strip():
            problems.append(f"{where}{field}: must not be empty")
    if not is_email(contact.email):
        problems.append(f"{where}email: not an email address: {contact.email!r}")
    for index, tag in enumerate(contact.tags):
        if not tag.strip():
            problems.append(f"{where}tags[{index}]: a tag must not be empty")
    problems.extend(_attribute_problems(contact.attributes, where, removing=False))
    problems.extend(_score_problems(contact.lead_score, f"{where}lead_score"))
    if problems:
        raise EndpointError("invalid_contact", "; ".join(problems), problems)
    return {
        "first_name": contact.first_name.strip(),
        "last_name": contact.last_name.strip(),
        "email": contact.email.lower(),
        "company": contact.company,
        "tags": sorted({tag.strip() for tag in contact.tags}),
        "attributes": dict(contact.attributes),
        "lead_score": contact.lead_score,
        "created_at": now_iso(),
    }


def _attribute_problems(attributes: dict[str, Any], where: str, *, removing: bool) -> list[str]:
    """What is wrong with custom attributes: a reserved or empty name, a value that is not
    a string, number, boolean or list of those (``None`` only when ``removing``)."""
    problems = []
    for name, value in attributes.items():
        if not name.strip() or name in RESERVED:
            problems.append(f"{where}attributes: {name!r} cannot be an attribute's name")
        elif value is None:
            if not removing:
                problems.append(f"{where}attributes.{name}: must not be null")
        elif not _attribute_value(value):
            problems.append(
                f"{where}attributes.{name}: a string, number, boolean or a list of those, "
                f"not {value!r}"
            )
    return problems


def _attribute_value(value: Any) -> bool:
    if isinstance(value, list):
        return all(_attribute_value(item) and not isinstance(item, list) for item in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | int | bool)


def _score_problems(score: float | None, where: str) -> list[str]:
    if score is not None and not math.isfinite(score):
        return [f"{where}: must be a finite number"]
    return []


def _contact_json(record_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": record_id,
        **{key: data.get(key) for key in ("first_name", "last_name")},
        "email": data.get("email"),
        "company": data.get("company"),
        "tags": data.get("tags", []),
        "attributes": data.get("attributes") or {},
        "lead_score": data.get("lead_score"),
    }


# -- endpoints -----------------------------------------------------------------------------------


async def create_contact(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``contacts/create``: ``{first_name, last_name, email, company?, tags?}`` → the contact.
    Errors: ``invalid_body``, ``invalid_contact``, ``contact_exists`` (the address is taken)."""
    contact = parse_body(body, NewContact, "contacts/create")
    data = _check_contact(contact)
    try:
        record = await ctx.runtime.create(
            Contact,
            data,
            name=data["email"],
            parent_id=services_of(ctx).contact_list_id,
            edge_type="HasContact",
        )
    except DuplicateEntityError:
        raise EndpointError(
            "contact_exists", f"a contact with the address {data['email']} exists"
        ) from None
    return _contact_json(record.id, record.data)


async def import_contacts(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``contacts/import``: ``{contacts: [contact, ...]}`` → ``{created, existing, ids,
    created_ids}``; all
    are checked before any is created, and an address already there is kept as it is."""
    batch = parse_body(body, ImportContacts, "contacts/import")
    rows = [_check_contact(c, f"contacts[{i}].") for i, c in enumerate(batch.contacts)]
    created = existing = 0
    ids = []
    created_ids = []
    list_id = services_of(ctx).contact_list_id
    for data in rows:
        record = await ctx.runtime.store.find_entity(list_id, data["email"])
        if record is None:
            record = await ctx.runtime.create(
                Contact, data, name=data["email"], parent_id=list_id, edge_type="HasContact"
            )
            created += 1
            created_ids.append(record.id)
        else:
            existing += 1
        ids.append(record.id)
    return {"created": created, "existing": existing, "ids": ids, "created_ids": created_ids}


async def update_contact(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``contacts/update``: ``{contact_id, attributes?, add_tags?, remove_tags?,
    lead_score?, lead_score_delta?}`` → the contact. Attributes are merged (``null`` removes
    one); the change is one compare-and-set, so concurrent changes all land. Errors:
    ``invalid_body``, ``invalid_contact``, ``contact_not_found``."""
    update = parse_body(body, UpdateContact, "contacts/update")
    problems = _attribute_problems(update.attributes, "", removing=True)
    problems.extend(_score_problems(update.lead_score, "lead_score"))
    problems.extend(_score_problems(update.lead_score_delta, "lead_score_delta"))
    for field in ("add_tags", "remove_tags"):
        for index, tag in enumerate(getattr(update, field)):
            if not tag.strip():
                problems.append(f"{field}[{index}]: a tag must not be empty")
    if problems:
        raise EndpointError("invalid_contact", "; ".join(problems), problems)
    await fetch_entity(ctx, update.contact_id, Contact.type_name, "contact")
    change = ContactChange(
        attributes=update.attributes,
        add_tags=tuple(tag.strip() for tag in update.add_tags),
        remove_tags=tuple(tag.strip() for tag in update.remove_tags),
        lead_score=update.lead_score,
        lead_score_delta=update.lead_score_delta,
    )
    try:
        changed = await change_contact(ctx.runtime, update.contact_id, change)
    except ValueError as exc:
        raise EndpointError("invalid_contact", str(exc)) from None
    return {
        **_contact_json(update.contact_id, changed.data),
        "added_tags": list(changed.added_tags),
    }


async def list_contacts(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``contacts/list``: ``{tag?}`` → ``{contacts: [...]}`` (those with the tag, or all)."""
    query = parse_body(body, ListContacts, "contacts/list")
    contacts = await _contacts(ctx)
    if query.tag is not None:
        contacts = [c for c in contacts if query.tag in c["tags"]]
    return {"contacts": contacts}


async def _contacts(ctx: EndpointContext) -> list[dict[str, Any]]:
    children = await ctx.runtime.children(services_of(ctx).contact_list_id)
    return [_contact_json(r.id, r.data) for r in children if r.type == Contact.type_name]


async def create_template(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``templates/create``: ``{name, subject_template, body_html}`` → ``{template_id, status:
    "draft"}``. Errors: ``invalid_template`` (empty parts, unbalanced or malformed
    placeholders, saying where; a placeholder that names no contact field),
    ``template_exists``."""
    new = parse_body(body, NewTemplate, "templates/create")
    problems = [
        f"{f}: must not be empty"
        for f in ("name", "subject_template", "body_html")
        if not getattr(new, f).strip()
    ]
    for part in ("subject_template", "body_html"):  # each alone: a placeholder is in one
        problems.extend(malformed_placeholders(part, getattr(new, part)))
    unknown = sorted(
        {*unknown_placeholders(new.subject_template), *unknown_placeholders(new.body_html)}
    )
    if unknown:
        problems.append(f"unknown placeholders {unknown}; the fields are {list(FIELDS)}")
    if problems:
        raise EndpointError("invalid_template", "; ".join(problems), problems)
    data = {
        "name": new.name,
        "subject_template": new.subject_template,
        "body_html": new.body_html,
        "status": "draft",
        "created_at": now_iso(),
    }
    try:
        record = await ctx.runtime.create(EmailTemplate, data, name=f"template:{new.name}")
    except DuplicateEntityError:
        raise EndpointError("template_exists", f"a template is named {new.name!r}") from None
    return {"template_id": record.id, "status": "draft"}


async def _review(ctx: EndpointContext, template_id: str, status: str, **extra: Any) -> Any:
    record = await fetch_entity(ctx, template_id, EmailTemplate.type_name, "template")
    current = record.data.get("status")
    if current != "draft":
        raise EndpointError(
            "template_not_draft",
            f"template {record.data.get('name')!r} is {current}; only a draft is reviewed",
        )
    await ctx.runtime.update_data(record.id, status=status, reviewed_at=now_iso(), **extra)
    return {"template_id": record.id, "status": status}


async def approve_template(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``templates/approve``: ``{template_id}`` (a draft) → ``{template_id, status}``."""
    ref = parse_body(body, TemplateRef, "templates/approve")
    return await _review(ctx, ref.template_id, "approved")


async def reject_template(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``templates/reject``: ``{template_id, reason?}`` (a draft) → ``{template_id, status}``."""
    ref = parse_body(body, RejectTemplate, "templates/reject")
    return await _review(ctx, ref.template_id, "rejected", rejection_reason=ref.reason)


async def create_campaign(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``campaigns/create``: ``{name, template_id, tag_filter, description?, actor_id?}`` →
    ``{campaign_id, status: "draft"}``, with a ``UsesTemplate`` edge to the template.
    Errors: ``invalid_campaign``, ``template_not_found``, ``campaign_exists``."""
    new = parse_body(body, NewCampaign, "campaigns/create")
    tags = sorted({tag.strip() for tag in new.tag_filter if tag.strip()})
    problems = []
    if not new.name.strip():
        problems.append("name: must not be empty")
    if not tags:
        problems.append("tag_filter: name at least one tag")
    if problems:
        raise EndpointError("invalid_campaign", "; ".join(problems), problems)
    template = await fetch_entity(ctx, new.template_id, EmailTemplate.type_name, "template")
    data = {
        "name": new.name,
        "description": new.description,
        "template_id": template.id,
        "status": "draft",
        "tag_filter": tags,
        "total_recipients": 0,
        "sent_count": 0,
        "failed_count": 0,
        "actor_id": new.actor_id,
        "created_at": now_iso(),
        "updated_at": now_iso(),
    }
    try:
        record = await ctx.runtime.create(Campaign, data, name=f"campaign:{new.name}")
    except DuplicateEntityError:
        raise EndpointError("campaign_exists", f"a campaign is named {new.name!r}") from None
    await ctx.runtime.connect(record.id, "UsesTemplate", template.id)
    return {"campaign_id": record.id, "entity_id": record.id, "status": "draft"}


async def execute_campaign(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``campaigns/execute``: ``{campaign_id, actor_id?}``. Checks that the campaign is a draft
    and its template approved, snapshots the matching contacts and the template onto the
    campaign (``_contacts``, ``_template``), marks it ``executing`` and starts its run.
    Errors: ``campaign_not_found``, ``campaign_not_draft``, ``template_not_found``,
    ``template_not_approved``, ``no_recipients``."""
    request = parse_body(body, ExecuteCampaign, "campaigns/execute")
    campaign = await fetch_entity(ctx, request.campaign_id, Campaign.type_name, "campaign")
    data = campaign.data
    if data.get("status") != "draft":
        raise _not_draft(data)
    template = await fetch_entity(ctx, data["template_id"], EmailTemplate.type_name, "template")
    if template.data.get("status") != "approved":
        raise EndpointError(
            "template_not_approved",
            f"template {template.data.get('name')!r} is not approved "
            f"(status: {template.data.get('status')})",
        )
    tags = set(data.get("tag_filter") or [])
    matching = [c for c in await _contacts(ctx) if tags.intersection(c["tags"])]
    if not matching:
        raise EndpointError("no_recipients", f"no contact has any of the tags {sorted(tags)}")
    snapshot = [
        {key: c[key] for key in ("id", "first_name", "last_name", "email", "company")}
        for c in matching
    ]
    # One transaction: the campaign is still a draft, it becomes executing with its snapshot,
    # and its run is submitted. Two executes of one draft: one wins. A crash before it leaves
    # a draft (execute again); a crash after it, a run that the next server resumes.
    try:
        await ctx.start(
            campaign.id,
            expect={"status": "draft"},
            data={
                "status": "executing",
                "total_recipients": len(snapshot),
                "actor_id": request.actor_id or data.get("actor_id"),
                "updated_at": now_iso(),
                "_contacts": snapshot,
                "_template": {
                    "subject_template": template.data["subject_template"],
                    "body_html": template.data["body_html"],
                },
            },
        )
    except DataConflictError:
        raise _not_draft((await ctx.runtime.get(campaign.id)).data) from None
    return {
        "campaign_id": campaign.id,
        "entity_id": campaign.id,
        "status": "executing",
        "total_recipients": len(snapshot),
        "message": f"campaign execution started: follow it with `sluiceway run {campaign.id}`",
    }


def _not_draft(data: dict[str, Any]) -> EndpointError:
    return EndpointError(
        "campaign_not_draft",
        f"campaign {data.get('name')!r} cannot be executed (status: {data.get('status')})",
    )


async def campaign_status(ctx: EndpointContext, body: dict[str, Any]) -> Any:
    """``campaigns/status``: ``{campaign_id}`` → its status and counts."""
    ref = parse_body(body, ExecuteCampaign, "campaigns/status")
    record = await fetch_entity(ctx, ref.campaign_id, Campaign.type_name, "campaign")
    d = record.data
    return {
        "campaign_id": record.id,
        "name": d.get("name"),
        "status": d.get("status"),
        "run": record.status.value,
        "total_recipients": d.get("total_recipients", 0),
        "sent_count": d.get("sent_count", 0),
        "failed_count": d.get("failed_count", 0),
    }


ENDPOINTS = {
    "contacts/create": create_contact,
    "contacts/import": import_contacts,
    "contacts/update": update_contact,
    "contacts/list": list_contacts,
    "templates/create": create_template,
    "templates/approve": approve_template,
    "templates/reject": reject_template,
    "campaigns/create": create_campaign,
    "campaigns/execute": execute_campaign,
    "campaigns/status": campaign_status,
}


def create_app(
    config: CampaignConfig | None = None,
    *,
    personalizer: Personalizer | None = None,
    transport: Callable[[], httpx.AsyncBaseTransport] | None = None,
) -> Application:
    """The campaign application (seed 000), to serve with a
    :class:`~sluiceway.server.RuntimeServer` or ``sluiceway serve --app
    sluiceway.apps.campaigns:app``.

    Args:
        config: how campaigns run (default: :meth:`CampaignConfig.from_env`, read when the
            server starts).
        personalizer: makes each email (default: :class:`TemplatePersonalizer`).
        transport: makes the HTTP transport of the notification client (default: httpx's).
    """
    if personalizer is not None and not isinstance(personalizer, Personalizer):
        raise TypeError(
            f"personalizer must have an async personalize(request), got {personalizer!r}"
        )

    @contextlib.asynccontextmanager
    async def lifespan(runtime: Runtime) -> AsyncIterator[CampaignServices]:
        settings = config if config is not None else CampaignConfig.from_env()
        async with httpx.AsyncClient(
            base_url=settings.notify_url,
            timeout=settings.send_timeout,
            transport=None if transport is None else transport(),
        ) as http:
            book = await runtime.create(ContactList, {}, name=CONTACT_LIST, exist_ok=True)
            yield CampaignServices(
                config=settings,
                http=http,
                global_capacity=runtime.gauges.watch(
                    CapacitySource(settings.global_limit), name="sends"
                ),
                personalizer=personalizer or TemplatePersonalizer(),
                contact_list_id=book.id,
            )

    return Application(
        "campaigns",
        types=TYPES,
        endpoints=dict(ENDPOINTS),
        lifespan=lifespan,
        # A campaign runs once campaigns/execute checked it and stored its recipients.
        startable=[cls for cls in TYPES if cls is not Campaign],
    )
