"""Seed 000's entities: contacts, templates, campaigns, their recipients and email drafts."""

from __future__ import annotations

import datetime
from typing import Any

from ..._errors import EntityFailedError
from ...capacity import CapacitySource
from ...entities import DataEntity, RunContext, RunnableEntity
from ...runners import EnvelopeKind, HierarchicalTaskPoolRunner, TaskEnvelope
from .._requests import SendError, post_with_retries
from ._config import CampaignServices, services_of
from ._personalize import PersonalizationRequest

#: The name of the address book every contact is filed under.
CONTACT_LIST = "contacts"


def now_iso() -> str:
    """The current UTC time as ISO 8601."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class Contact(DataEntity, type_name="Contact"):
    """A contact: ``first_name``, ``last_name``, ``email``, ``company`` and ``tags``."""


class ContactList(
    DataEntity, type_name="ContactList", allowed_connections={"HasContact": [Contact]}
):
    """The address book: every contact is its child (a ``HasContact`` edge), named by its
    address, so an address is there once."""


class EmailTemplate(DataEntity, type_name="EmailTemplate"):
    """A template: ``name``, ``subject_template``, ``body_html`` and ``status`` (``draft``,
    then ``approved`` or ``rejected``)."""


class EmailDraft(RunnableEntity, type_name="EmailDraft"):
    """One personalized email: runs the application's personalizer and keeps its result."""

    async def run_impl(self, ctx: RunContext) -> Any:
        services = services_of(ctx)
        d = ctx.data
        await ctx.status("RUNNING", f"personalizing for {d.get('contact_name')}")
        request = PersonalizationRequest(
            subject_template=d["subject_template"],
            body_html_template=d["body_html_template"],
            contact=d["contact"],
        )
        personalization = await services.personalizer.personalize(request)
        await ctx.update_data(
            subject=personalization.subject,
            body_html=personalization.body_html,
            personalization_notes=personalization.notes,
            status="ready",
        )
        return personalization.to_dict()


class CampaignRecipient(
    RunnableEntity, type_name="CampaignRecipient", allowed_connections={"Calls": [EmailDraft]}
):
    """One contact of a campaign: personalize (an :class:`EmailDraft` child), then send with the
    idempotency key ``campaign-<campaign>-<contact>``. A failure is this recipient's alone: it
    returns ``status: failed`` with the reason, and the campaign goes on."""

    async def run_impl(self, ctx: RunContext) -> Any:
        services = services_of(ctx)
        d = ctx.data
        result: dict[str, Any] = {
            "contact_id": d["contact_id"],
            "contact_email": d["contact_email"],
            "draft_id": None,
            "status": "failed",
            "notification_id": None,
            "error": None,
        }
        await ctx.status("RUNNING", f"personalizing email for {d['contact_name']}")
        try:
            draft = await ctx.append_or_retrieve_call(
                EmailDraft,
                "personalize-draft",
                {
                    "contact_id": d["contact_id"],
                    "contact_name": d["contact_name"],
                    "contact": d["contact"],
                    "template_id": d["template_id"],
                    "subject_template": d["subject_template"],
                    "body_html_template": d["body_html_template"],
                    "subject": None,
                    "body_html": None,
                    "status": "generating",
                    "created_at": now_iso(),
                },
            )
            result["draft_id"] = draft.id
            email = await draft.run()
            await ctx.status("RUNNING", f"sending email to {d['contact_email']}")
            sent = await _send(ctx, services, d, email, draft.id)
        except (EntityFailedError, SendError) as exc:
            result["error"] = str(exc)
            await ctx.update_data(
                status="failed", error_message=str(exc), draft_id=draft_id(result)
            )
            return result
        result.update(status="sent", notification_id=sent.get("id"))
        await ctx.update_data(status="sent", sent_at=now_iso(), draft_id=draft_id(result))
        return result


def draft_id(result: dict[str, Any]) -> str | None:
    """The recipient result's draft id."""
    value = result.get("draft_id")
    return value if isinstance(value, str) else None


async def _send(
    ctx: RunContext,
    services: CampaignServices,
    d: dict[str, Any],
    email: dict[str, Any],
    draft: str,
) -> dict[str, Any]:
    config = services.config
    body = {
        "to": [d["contact_email"]],
        "subject": email["subject"],
        "html": email["body_html"],
        "idempotencyKey": f"campaign-{d['campaign_id']}-{d['contact_id']}",
        "metadata": {
            "draft_id": draft,
            "contact_id": d["contact_id"],
            "campaign_id": d["campaign_id"],
            "template_id": d["template_id"],
        },
    }
    if d.get("actor_id"):
        body["from"] = d["actor_id"]

    async def retrying(problem: str) -> None:
        await ctx.status("RUNNING", f"retrying {d['contact_email']}: {problem}")

    return await post_with_retries(
        services.http,
        "/send/email",
        body,
        attempts=config.send_attempts,
        retry_delay=config.retry_delay,
        what="the notification service",
        on_retry=retrying,
    )


class Campaign(
    RunnableEntity,
    type_name="Campaign",
    allowed_connections={"HasRecipient": [CampaignRecipient], "UsesTemplate": [EmailTemplate]},
):
    """Sends one email per contact of its snapshot: one :class:`CampaignRecipient` child each
    (a ``HasRecipient`` edge), ``per_campaign`` at a time under the process-wide
    ``global_limit``. It ends ``completed``, ``completed_with_errors`` or ``failed`` with the
    sent and failed counts."""

    async def run_impl(self, ctx: RunContext) -> Any:
        services = services_of(ctx)
        d = ctx.data
        contacts = d.get("_contacts")
        template = d.get("_template")
        if not isinstance(contacts, list) or not isinstance(template, dict):
            message = "campaign data missing: _contacts and _template are set by campaigns/execute"
            await ctx.update_data(status="failed", error=message)
            return _outcome(ctx.id, "failed", 0, 0, 0, error=message)
        total = len(contacts)
        await ctx.update_data(stage="sending")
        await ctx.status("RUNNING", f"sending to {total} contacts")
        items = [
            (
                f"recipient-{contact['id']}",
                {
                    "contact_id": contact["id"],
                    "campaign_id": ctx.id,
                    "template_id": d["template_id"],
                    "contact_name": f"{contact['first_name']} {contact['last_name']}".strip(),
                    "contact_email": contact["email"],
                    "contact": contact,
                    "subject_template": template["subject_template"],
                    "body_html_template": template["body_html"],
                    "actor_id": d.get("actor_id"),
                    "status": "pending",
                },
            )
            for contact in contacts
        ]
        capacity = CapacitySource(services.config.per_campaign, services.global_capacity)
        runner = HierarchicalTaskPoolRunner(
            "campaign-send",
            ctx.parallel_calls(CampaignRecipient, items, edge_type="HasRecipient"),
            capacity,
        )
        # The campaign's send slots are shown (the capacity operation, the page's gauges).
        with ctx.runtime.gauges.watching(capacity, name=f"{ctx.name} sends"):
            sent, failed = await _send_all(ctx, runner, total)
        status = "completed" if not failed else ("failed" if not sent else "completed_with_errors")
        await ctx.update_data(
            status=status,
            sent_count=sent,
            failed_count=failed,
            stage="completed",
            updated_at=now_iso(),
        )
        return _outcome(ctx.id, status, total, sent, failed)


async def _send_all(
    ctx: RunContext, runner: HierarchicalTaskPoolRunner[Any, Any], total: int
) -> tuple[int, int]:
    """Follow the recipients' tasks to the end, counting in the campaign's data and progress
    what was sent and what failed; returns both counts."""
    sent = failed = 0
    async with runner.run_tasks() as envelopes:
        async for envelope in envelopes:
            outcome = recipient_outcome(envelope)
            if outcome is None:
                continue
            sent += outcome == "sent"
            failed += outcome == "failed"
            await ctx.update_data(sent_count=sent, failed_count=failed)
            await ctx.status(
                "RUNNING",
                f"sent {sent}/{total} emails ({failed} failed)",
                sent=sent,
                failed=failed,
                total=total,
            )
    return sent, failed


def recipient_outcome(envelope: TaskEnvelope[Any, Any]) -> str | None:
    """``"sent"`` or ``"failed"`` for the end of a :class:`CampaignRecipient` task (its
    result, or the error that ended it); ``None`` for its progress."""
    if envelope.kind is EnvelopeKind.FINAL:
        return "sent" if (envelope.value or {}).get("status") == "sent" else "failed"
    if envelope.kind is EnvelopeKind.ERROR:
        return "failed"
    return None


def _outcome(
    campaign_id: str, status: str, total: int, sent: int, failed: int, *, error: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "campaign_id": campaign_id,
        "status": status,
        "total_recipients": total,
        "sent_count": sent,
        "failed_count": failed,
    }
    if error is not None:
        out["error"] = error
    return out


#: Every entity type of the application.
TYPES: list[type[RunnableEntity]] = [
    ContactList,
    Contact,
    EmailTemplate,
    EmailDraft,
    CampaignRecipient,
    Campaign,
]
