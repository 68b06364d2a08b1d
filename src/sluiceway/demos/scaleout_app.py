"""The campaign application spread over a cluster: what the scale-out demo's workers run.

``sluiceway worker --app sluiceway.demos.scaleout_app:app --db postgresql://...`` runs it. It
reuses the campaign application's entities (:mod:`sluiceway.apps.campaigns`) and spreads the
work over every worker sharing the database:

* a :class:`SpreadCampaign` splits its contacts into batches and hands them to the cluster
  (``ctx.parallel_calls(..., spread=True)``): any worker runs a batch, and the campaign waits
  for them wherever they run (it parks if that takes long);
* a :class:`CampaignBatch` runs one :class:`~sluiceway.apps.campaigns.CampaignRecipient` per
  contact (personalize, then send through the notification service with the idempotency key
  ``campaign-<campaign>-<contact>``), ``per_campaign`` at a time in its process, under the
  global limit ``email``: at most ``global_limit`` (5) sends at once in the whole cluster.

Its configuration is the campaign application's (``SLUICEWAY_NOTIFY_URL``,
``SLUICEWAY_CAMPAIGN_CONCURRENCY``, ``SLUICEWAY_GLOBAL_SEND_CONCURRENCY``, see
:class:`~sluiceway.apps.campaigns.CampaignConfig`). Every request to the notification service
carries the header ``X-Sluiceway-Worker``: ``$SLUICEWAY_DEMO_WORKER``, or ``pid-<pid>``, so
the demo can tell which worker sent what.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ..apps.campaigns import (
    CampaignConfig,
    CampaignRecipient,
    CampaignServices,
    EmailDraft,
    EmailTemplate,
)
from ..apps.campaigns._config import services_of
from ..apps.campaigns._entities import recipient_outcome
from ..capacity import CapacitySource
from ..entities import RunContext, RunnableEntity, Runtime
from ..runners import EnvelopeKind, HierarchicalTaskPoolRunner
from ..server import Application

#: The header naming the worker that sent a request to the notification service.
WORKER_HEADER = "x-sluiceway-worker"
#: The global limit the sends of every worker share.
EMAIL_LIMIT = "email"


def worker_name() -> str:
    """This process's name in the demo: ``$SLUICEWAY_DEMO_WORKER``, or ``pid-<pid>``."""
    return os.environ.get("SLUICEWAY_DEMO_WORKER") or f"pid-{os.getpid()}"


def recipient_data(campaign_id: str, campaign: dict[str, Any], contact: dict[str, Any]) -> Any:
    """The data of a contact's :class:`CampaignRecipient`, as the campaign application's own
    ``Campaign`` makes it."""
    template = campaign["_template"]
    return {
        "contact_id": contact["id"],
        "campaign_id": campaign_id,
        "template_id": campaign["template_id"],
        "contact_name": f"{contact['first_name']} {contact['last_name']}".strip(),
        "contact_email": contact["email"],
        "contact": contact,
        "subject_template": template["subject_template"],
        "body_html_template": template["body_html"],
        "actor_id": campaign.get("actor_id"),
        "status": "pending",
    }


class CampaignBatch(
    RunnableEntity,
    type_name="CampaignBatch",
    allowed_connections={"HasRecipient": [CampaignRecipient]},
):
    """Some of a campaign's contacts: one :class:`CampaignRecipient` child each, run in this
    process, ``per_campaign`` at a time under the global ``email`` limit. Returns the sent and
    failed counts and the worker that ran it."""

    async def run_impl(self, ctx: RunContext) -> Any:
        services = services_of(ctx)
        recipients = ctx.data["recipients"]
        items = [(f"recipient-{data['contact_id']}", data) for data in recipients]
        runner = HierarchicalTaskPoolRunner(
            "batch-send",
            ctx.parallel_calls(CampaignRecipient, items, edge_type="HasRecipient"),
            CapacitySource(services.config.per_campaign, services.global_capacity),
        )
        sent = failed = 0
        await ctx.status("RUNNING", f"sending to {len(items)} contacts on {worker_name()}")
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                outcome = recipient_outcome(envelope)
                sent += outcome == "sent"
                failed += outcome == "failed"
        return {"batch": ctx.data["batch"], "sent": sent, "failed": failed, "worker": worker_name()}


class SpreadCampaign(
    RunnableEntity,
    type_name="SpreadCampaign",
    allowed_connections={"HasBatch": [CampaignBatch], "UsesTemplate": [EmailTemplate]},
):
    """A campaign whose contacts (``_contacts``, with the ``_template`` and ``template_id``, as
    ``campaigns/execute`` snapshots them) are sent in batches of ``batch_size``, each batch a
    :class:`CampaignBatch` child that any worker of the cluster may run. It ends
    ``completed``, ``completed_with_errors`` or ``failed`` with the counts."""

    async def run_impl(self, ctx: RunContext) -> Any:
        d = ctx.data
        contacts = d["_contacts"]
        size = int(d.get("batch_size") or 15)
        chunks = [contacts[start : start + size] for start in range(0, len(contacts), size)]
        items: list[tuple[str, dict[str, Any]]] = [
            (
                f"batch-{number}",
                {
                    "batch": number,
                    "recipients": [recipient_data(ctx.id, d, contact) for contact in chunk],
                },
            )
            for number, chunk in enumerate(chunks)
        ]
        sizes = {name: len(data["recipients"]) for name, data in items}
        await ctx.status("RUNNING", f"{len(contacts)} contacts in {len(items)} batches")
        runner = HierarchicalTaskPoolRunner(
            "campaign-batches",
            ctx.parallel_calls(CampaignBatch, items, edge_type="HasBatch", spread=True),
            CapacitySource(max(len(items), 1)),  # every batch in flight at once, cluster-wide
        )
        sent = failed = done = 0
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                if envelope.kind is EnvelopeKind.FINAL:
                    sent += envelope.value["sent"]
                    failed += envelope.value["failed"]
                elif envelope.kind is EnvelopeKind.ERROR:
                    # A failed batch: its contacts count as failed, the other batches go on.
                    failed += sizes.get(str(envelope.key), 0)
                else:
                    continue
                done += 1
                await ctx.status(
                    "RUNNING",
                    f"{done}/{len(items)} batches: sent {sent}, failed {failed}",
                    sent=sent,
                    failed=failed,
                )
        status = "completed" if not failed else ("failed" if not sent else "completed_with_errors")
        return {
            "campaign_id": ctx.id,
            "status": status,
            "total_recipients": len(contacts),
            "batches": len(items),
            "sent_count": sent,
            "failed_count": failed,
        }


@contextlib.asynccontextmanager
async def lifespan(runtime: Runtime) -> AsyncIterator[CampaignServices]:
    """The campaign application's services, with the global ``email`` limit (shared by every
    worker) as the send capacity."""
    config = CampaignConfig.from_env()
    async with (
        httpx.AsyncClient(
            base_url=config.notify_url,
            timeout=config.send_timeout,
            headers={WORKER_HEADER: worker_name()},
        ) as http,
        runtime.global_limit(EMAIL_LIMIT, config.global_limit) as email,
    ):
        yield CampaignServices(config=config, http=http, global_capacity=email)


#: Every entity type of the application.
TYPES: list[type[RunnableEntity]] = [
    EmailTemplate,
    EmailDraft,
    CampaignRecipient,
    CampaignBatch,
    SpreadCampaign,
]

#: The application the demo's workers run.
app = Application("spread-campaigns", types=TYPES, lifespan=lifespan)
