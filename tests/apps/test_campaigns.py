"""Seed 000's campaign application end to end: real notification service over HTTP, real
SQLite runtime, real WebSocket server and client on 127.0.0.1."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from sluiceway import EntityNotRunnableError, open_runtime
from sluiceway.apps.campaigns import (
    TYPES,
    Campaign,
    CampaignConfig,
    Personalization,
    PersonalizationRequest,
    create_app,
)
from sluiceway.apps.notification import Faults
from sluiceway.client import ServerError

from .campaign_stack import CountingTransport, campaign_stack


async def test_a_campaign_personalizes_and_sends_once_per_matching_contact(
    tmp_path: Path,
) -> None:
    async with campaign_stack(tmp_path) as stack:
        await stack.contacts(5, ["spring"])
        await stack.contacts(3, ["autumn"], prefix="q")
        template = await stack.template()
        campaign = await stack.campaign("spring", template, ["spring"])
        result, seen = await stack.execute_and_wait(campaign)
        assert result == {
            "campaign_id": campaign,
            "status": "completed",
            "total_recipients": 5,
            "sent_count": 5,
            "failed_count": 0,
        }
        stats = await stack.stats()
        assert stats["sends"] == 5
        assert stats["repeats"] == 0

        # Progress messages as the seed shows them, one per finished recipient, in order.
        progress = [
            e.message
            for e in seen
            if e.entity_id == campaign and e.status == "RUNNING" and "emails" in (e.message or "")
        ]
        assert progress == [f"sent {n}/5 emails (0 failed)" for n in range(1, 6)]
        seqs = [e.seq for e in seen]
        assert seqs == sorted(set(seqs))

        # The graph: HasRecipient and UsesTemplate from the campaign, a draft under each.
        outgoing, _ = await stack.runtime.edges(campaign)
        kinds = sorted(edge.type for edge in outgoing)
        assert kinds == ["HasRecipient"] * 5 + ["UsesTemplate"]
        stored = await stack.runtime.get(campaign)
        assert stored.data["status"] == "completed"
        assert stored.data["sent_count"] == 5
        assert [c["email"] for c in stored.data["_contacts"]] == [
            f"p{n}@example.com" for n in range(5)
        ]
        for recipient in await stack.runtime.children(campaign):
            assert recipient.type == "CampaignRecipient"
            assert recipient.data["status"] == "sent"
            [draft] = await stack.runtime.children(recipient.id)
            assert draft.type == "EmailDraft"
            assert draft.data["status"] == "ready"
            n = recipient.data["contact_email"][1:].split("@")[0]
            assert draft.result["subject"] == f"Hi First{n}"
            assert draft.result["body_html"] == f"<p>First{n} Last{n} at Co {n}</p>"
            assert recipient.result["draft_id"] == draft.id
            assert recipient.result["notification_id"]

    # The service stored one email per key, with seed 000's key.
    with sqlite3.connect(stack.notify_db) as conn:
        keys = sorted(row[0] for row in conn.execute("SELECT key FROM sends"))
    contacts = [c["id"] for c in stored.data["_contacts"]]
    assert keys == sorted(f"campaign-{campaign}-{contact}" for contact in contacts)


async def test_bounces_fail_their_recipient_only(tmp_path: Path) -> None:
    faults = Faults(fail_recipients=("p1@example.com", "p3@example.com"))
    async with campaign_stack(tmp_path, faults=faults) as stack:
        await stack.contacts(5, ["x"])
        template = await stack.template()
        result, _ = await stack.execute_and_wait(await stack.campaign("c", template, ["x"]))
        assert result["status"] == "completed_with_errors"
        assert (result["sent_count"], result["failed_count"]) == (3, 2)
        stats = await stack.stats()
        # INVALID_RECIPIENT is permanent: one request each, no retries.
        assert stats["sends"] == 3
        assert stats["failures"] == 2
        failed = [
            r for r in await stack.runtime.children(result["campaign_id"]) if r.result["error"]
        ]
        assert sorted(r.data["contact_email"] for r in failed) == [
            "p1@example.com",
            "p3@example.com",
        ]
        assert all("INVALID_RECIPIENT" in r.result["error"] for r in failed)
        assert all(r.data["status"] == "failed" for r in failed)


async def test_a_campaign_whose_every_send_fails_is_failed(tmp_path: Path) -> None:
    faults = Faults(fail_rate=1.0, fail_status=400, fail_code="REFUSED")
    async with campaign_stack(tmp_path, faults=faults) as stack:
        await stack.contacts(3, ["x"])
        template = await stack.template()
        result, _ = await stack.execute_and_wait(await stack.campaign("c", template, ["x"]))
        assert result["status"] == "failed"
        assert (result["sent_count"], result["failed_count"]) == (0, 3)
        assert (await stack.stats())["requests"] == 3  # a 4xx is not retried


async def test_transient_failures_are_retried_with_the_same_key(tmp_path: Path) -> None:
    faults = Faults(fail_rate=0.5, fail_status=503, fail_code="UNAVAILABLE", seed=3)
    async with campaign_stack(tmp_path, faults=faults, send_attempts=12) as stack:
        await stack.contacts(8, ["x"])
        template = await stack.template()
        result, seen = await stack.execute_and_wait(await stack.campaign("c", template, ["x"]))
        assert result["status"] == "completed"
        stats = await stack.stats()
        assert stats["sends"] == 8
        assert stats["failures"] > 0  # the seed makes some fail first
        assert stats["requests"] == 8 + stats["failures"]
        assert any("retrying" in (e.message or "") for e in seen)


async def test_two_campaigns_share_the_global_limit(tmp_path: Path) -> None:
    transport = CountingTransport()
    faults = Faults(latency=0.05)
    async with campaign_stack(
        tmp_path, faults=faults, transport=lambda: transport, per_campaign=3, global_limit=5
    ) as stack:
        await stack.contacts(12, ["a"], prefix="a")
        await stack.contacts(12, ["b"], prefix="b")
        template = await stack.template()
        first = await stack.campaign("A", template, ["a"])
        second = await stack.campaign("B", template, ["b"])
        for campaign in (first, second):
            await stack.client.call("campaigns/execute", {"campaign_id": campaign})
        results = [(await stack.wait(c))[0] for c in (first, second)]
    assert [r["sent_count"] for r in results] == [12, 12]
    assert transport.peak == 5  # together they fill the global pool, never more
    assert max(transport.peak_by_campaign.values()) == 3
    assert set(transport.peak_by_campaign) == {first, second}


async def test_the_limits_are_configurable(tmp_path: Path) -> None:
    transport = CountingTransport()
    async with campaign_stack(
        tmp_path,
        faults=Faults(latency=0.05),
        transport=lambda: transport,
        per_campaign=2,
        global_limit=2,
    ) as stack:
        await stack.contacts(6, ["a"])
        template = await stack.template()
        await stack.execute_and_wait(await stack.campaign("A", template, ["a"]))
    assert transport.peak == 2


class Shouting:
    """A personalizer of the test's own."""

    async def personalize(self, request: PersonalizationRequest) -> Personalization:
        await trio.lowlevel.checkpoint()
        return Personalization(
            subject=f"HELLO {request.values['first_name'].upper()}",
            body_html="<p>!</p>",
            notes="shouted",
        )


async def test_personalization_is_pluggable(tmp_path: Path) -> None:
    async with campaign_stack(tmp_path, personalizer=Shouting()) as stack:
        await stack.contacts(2, ["x"])
        template = await stack.template()
        campaign = await stack.campaign("c", template, ["x"])
        await stack.execute_and_wait(campaign)
        for recipient in await stack.runtime.children(campaign):
            [draft] = await stack.runtime.children(recipient.id)
            assert draft.result["subject"].startswith("HELLO FIRST")
            assert draft.data["personalization_notes"] == "shouted"
    with pytest.raises(TypeError, match="personalize"):
        create_app(personalizer=object())  # type: ignore[arg-type]


class Broken:
    async def personalize(self, request: PersonalizationRequest) -> Personalization:
        raise RuntimeError("the model is down")


async def test_a_failing_personalizer_fails_the_recipient_not_the_campaign(
    tmp_path: Path,
) -> None:
    async with campaign_stack(tmp_path, personalizer=Broken()) as stack:
        await stack.contacts(2, ["x"])
        template = await stack.template()
        result, _ = await stack.execute_and_wait(await stack.campaign("c", template, ["x"]))
        assert result["status"] == "failed"
        assert result["failed_count"] == 2
        assert (await stack.stats())["requests"] == 0
        for recipient in await stack.runtime.children(result["campaign_id"]):
            assert "the model is down" in recipient.result["error"]


async def call_error(stack: Any, endpoint: str, body: dict[str, Any]) -> ServerError:
    with pytest.raises(ServerError) as caught:
        await stack.client.call(endpoint, body)
    assert caught.value.code == "endpoint_error"
    return caught.value


async def test_every_rule_has_a_clear_error(tmp_path: Path) -> None:
    async with campaign_stack(tmp_path) as stack:
        client = stack.client

        async def code(endpoint: str, body: dict[str, Any]) -> str:
            error = await call_error(stack, endpoint, body)
            value: str = error.details["code"]
            return value

        contact = {"first_name": "A", "last_name": "B", "email": "a@example.com", "tags": ["t"]}
        assert await code("contacts/create", {}) == "invalid_body"
        assert await code("contacts/create", {**contact, "tags": "t"}) == "invalid_body"
        assert await code("contacts/create", {**contact, "extra": 1}) == "invalid_body"
        assert await code("contacts/create", {**contact, "email": "nope"}) == "invalid_contact"
        assert await code("contacts/create", {**contact, "first_name": " "}) == "invalid_contact"
        made = await client.call("contacts/create", contact)
        assert made["tags"] == ["t"]
        assert await code("contacts/create", {**contact, "email": "A@example.com"}) == (
            "contact_exists"
        )
        again = await client.call("contacts/import", {"contacts": [contact]})
        assert (again["created"], again["existing"], again["ids"]) == (0, 1, [made["id"]])
        listed = await client.call("contacts/list", {"tag": "t"})
        assert [c["email"] for c in listed["contacts"]] == ["a@example.com"]
        assert (await client.call("contacts/list", {"tag": "zzz"}))["contacts"] == []

        template = {"name": "t", "subject_template": "Hi {{ first_name }}", "body_html": "x"}
        bad = {**template, "body_html": "{{ shoe_size }}"}
        error = await call_error(stack, "templates/create", bad)
        assert error.details["code"] == "invalid_template"
        assert "shoe_size" in error.message
        assert await code("templates/create", {**template, "name": ""}) == "invalid_template"
        made_template = await client.call("templates/create", template)
        template_id = made_template["template_id"]
        assert await code("templates/create", template) == "template_exists"
        assert await code("templates/approve", {"template_id": "missing"}) == ("template_not_found")
        assert await code("templates/approve", {"template_id": made["id"]}) == (
            "template_not_found"  # a contact is not a template
        )

        campaign = {"name": "c", "template_id": template_id, "tag_filter": ["t"]}
        assert await code("campaigns/create", {**campaign, "tag_filter": []}) == (
            "invalid_campaign"
        )
        assert await code("campaigns/create", {**campaign, "template_id": "x"}) == (
            "template_not_found"
        )
        made_campaign = await client.call("campaigns/create", campaign)
        campaign_id = made_campaign["campaign_id"]
        assert await code("campaigns/create", campaign) == "campaign_exists"
        nobody = await client.call(
            "campaigns/create", {**campaign, "name": "nobody", "tag_filter": ["none"]}
        )

        execute = {"campaign_id": campaign_id}
        assert await code("campaigns/execute", {"campaign_id": "x"}) == "campaign_not_found"
        assert await code("campaigns/execute", execute) == "template_not_approved"
        rejected = await client.call(
            "templates/reject", {"template_id": template_id, "reason": "tone"}
        )
        assert rejected["status"] == "rejected"
        assert await code("templates/approve", {"template_id": template_id}) == (
            "template_not_draft"
        )
        assert await code("campaigns/execute", execute) == "template_not_approved"

        approved = await client.call("templates/create", {**template, "name": "t2"})
        await client.call("templates/approve", {"template_id": approved["template_id"]})
        second = await client.call(
            "campaigns/create",
            {"name": "c2", "template_id": approved["template_id"], "tag_filter": ["t"]},
        )
        nobody2 = await client.call(
            "campaigns/create",
            {"name": "n2", "template_id": approved["template_id"], "tag_filter": ["none"]},
        )
        assert await code("campaigns/execute", {"campaign_id": nobody2["campaign_id"]}) == (
            "no_recipients"
        )
        assert nobody["status"] == "draft"
        started = await client.call("campaigns/execute", {"campaign_id": second["campaign_id"]})
        assert started["status"] == "executing"
        assert started["total_recipients"] == 1
        assert await code("campaigns/execute", {"campaign_id": second["campaign_id"]}) == (
            "campaign_not_draft"
        )
        await stack.wait(second["campaign_id"])
        status = await client.call("campaigns/status", {"campaign_id": second["campaign_id"]})
        assert status["status"] == "completed"
        assert status["run"] == "COMPLETED"
        assert status["sent_count"] == 1

        # A contact holds data: it does not run.
        with pytest.raises(ServerError) as caught:
            await client.start(made["id"])
        assert caught.value.code == "not_runnable"


async def test_two_executes_of_one_draft_start_it_once(tmp_path: Path) -> None:
    async with campaign_stack(tmp_path) as stack:
        await stack.contacts(3, ["x"])
        campaign = await stack.campaign("c", await stack.template(), ["x"])
        outcomes: list[Any] = []

        async def execute() -> None:
            try:
                outcomes.append(
                    await stack.client.call("campaigns/execute", {"campaign_id": campaign})
                )
            except ServerError as exc:
                outcomes.append(exc.details["code"])

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(execute)
        assert sorted(str(o) for o in outcomes if isinstance(o, str)) == ["campaign_not_draft"] * 3
        result, _ = await stack.wait(campaign)
        assert result["sent_count"] == 3
        assert (await stack.stats())["requests"] == 3


async def test_start_does_not_run_a_draft_campaign_and_follows_an_executed_one(
    tmp_path: Path,
) -> None:
    """The protocol's start (sluiceway run) leaves a draft alone: run, it would find no
    recipients and end failed for good. Once campaigns/execute started it, start follows it."""
    async with campaign_stack(tmp_path) as stack:
        await stack.contacts(2, ["x"])
        campaign = await stack.campaign("c", await stack.template(), ["x"])
        with pytest.raises(ServerError) as refused:
            await stack.client.start(campaign)
        assert (refused.value.code, refused.value.details) == ("not_runnable", {"startable": False})
        status = await stack.client.call("campaigns/status", {"campaign_id": campaign})
        assert (status["status"], status["run"]) == ("draft", "PENDING")
        await stack.client.call("campaigns/execute", {"campaign_id": campaign})
        assert (await stack.client.start(campaign))["state"] in ("running", "completed")
        result, _ = await stack.wait(campaign)
        assert (result["status"], result["sent_count"]) == ("completed", 2)
        assert (await stack.client.start(campaign))["state"] == "completed"
        assert (await stack.stats())["requests"] == 2


async def test_a_campaign_without_its_snapshot_fails_cleanly(tmp_path: Path) -> None:
    async with campaign_stack(tmp_path) as stack:
        record = await stack.runtime.create(Campaign, {"name": "raw", "template_id": "x"})
        result = await stack.runtime.run(record.id)
        assert result["status"] == "failed"
        assert "_contacts" in result["error"]


async def test_campaign_entities_need_the_application(tmp_path: Path) -> None:
    async with open_runtime(tmp_path / "bare.db", TYPES) as runtime:
        record = await runtime.create(Campaign, {"name": "raw"})
        with pytest.raises(Exception, match="campaigns application"):
            await runtime.run(record.id)
        contact = await runtime.create("Contact", {"email": "a@example.com"})
        with pytest.raises(EntityNotRunnableError, match="never run"):
            await runtime.run(contact.id)


def test_configuration_from_the_environment() -> None:
    config = CampaignConfig.from_env(
        {
            "SLUICEWAY_NOTIFY_URL": "http://127.0.0.1:9/",
            "SLUICEWAY_CAMPAIGN_CONCURRENCY": "4",
            "SLUICEWAY_GLOBAL_SEND_CONCURRENCY": "9",
            "SLUICEWAY_SEND_ATTEMPTS": "2",
        }
    )
    assert config == CampaignConfig(
        notify_url="http://127.0.0.1:9", per_campaign=4, global_limit=9, send_attempts=2
    )
    assert CampaignConfig.from_env({}) == CampaignConfig()
    with pytest.raises(ValueError, match="SLUICEWAY_CAMPAIGN_CONCURRENCY"):
        CampaignConfig.from_env({"SLUICEWAY_CAMPAIGN_CONCURRENCY": "three"})
    with pytest.raises(ValueError, match="global_limit"):
        CampaignConfig(global_limit=0)
    with pytest.raises(ValueError, match="notify_url"):
        CampaignConfig(notify_url="ftp://x")
    with pytest.raises(ValueError, match="retry_delay"):
        CampaignConfig(retry_delay=float("nan"))
