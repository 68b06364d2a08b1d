"""The engine's endpoints refuse bad input with a clear error (naming the step where there is
one), and write nothing when they do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import EntityRecord, EntityStatus
from sluiceway.apps.engine import EngineConfig, create_app
from sluiceway.server import EndpointError
from tests.apps.engine.engine_stack import Engine, engine_stack
from tests.apps.engine.test_drip import DRIP, people


async def refused(engine: Engine, endpoint: str, body: dict[str, Any]) -> EndpointError:
    with pytest.raises(EndpointError) as error:
        await engine.call(endpoint, body)
    return error.value


def drip_with(*changes: tuple[int, dict[str, Any]]) -> list[dict[str, Any]]:
    steps = [dict(step) for step in DRIP]
    for index, change in changes:
        steps[index] = {**steps[index], **change}
        for key in [k for k, v in change.items() if v is None]:
            del steps[index][key]
    return steps


@pytest.mark.parametrize(
    ("steps", "fragment"),
    [
        # A loop with no wait in it: nudge -> opened? -> nudge.
        (drip_with((3, {"next": "opened?"})), "loop"),
        (drip_with((3, {"next": "nowhere"})), "step 'nudge': it goes to 'nowhere', and no step is"),
        (drip_with((2, {"true_next": None, "false_next": None})), "step 'opened?'"),
        (drip_with((1, {"wait": {"value": -1, "unit": "days"}})), "step 'wait-1'"),
        (drip_with((1, {"wait": {"value": 1, "unit": "fortnights"}})), "step 'wait-1'"),
        (drip_with((2, {"condition": {"type": "email_open"}})), "step 'opened?'"),
        (drip_with((0, {"type": "sms"})), "step 'welcome': unknown step type 'sms'"),
        (drip_with((6, {"step_order": 1})), "step_order 1"),
        (drip_with((5, {"next": "thanks"})), "no next"),
        ([], "at least one step"),
    ],
)
async def test_a_bad_step_graph_is_refused_naming_the_step(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, steps: Any, fragment: str
) -> None:
    async with engine_stack(tmp_path) as engine:
        segment = await engine.call("segments/create", {"name": "s"})
        body = {"name": "c", "campaign_type": "drip", "segment_id": segment["segment_id"]}
        error = await refused(engine, "engine/campaigns/create", {**body, "steps": steps})
        assert error.code == "invalid_campaign"
        assert fragment in str(error)
        book = engine.state.campaign_book_id
        assert await engine.runtime.children(book) == []


async def test_campaign_rules(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with engine_stack(tmp_path) as engine:
        await engine.contacts(people(3))
        segment = (await engine.call("segments/create", {"name": "s", "tags": ["drip"]}))[
            "segment_id"
        ]
        base = {"name": "c", "campaign_type": "drip", "segment_id": segment, "steps": DRIP}

        async def code(endpoint: str, body: dict[str, Any]) -> str:
            return (await refused(engine, endpoint, body)).code

        assert await code("engine/campaigns/create", {**base, "campaign_type": "spam"}) == (
            "invalid_campaign"
        )
        assert await code("engine/campaigns/create", {**base, "send_strategy": "soon"}) == (
            "invalid_campaign"
        )
        assert await code("engine/campaigns/create", {**base, "timezone": "Mars/Olympus"}) == (
            "invalid_campaign"
        )
        assert await code("engine/campaigns/create", {**base, "steps": "welcome"}) == (
            "invalid_body"
        )
        assert await code("engine/campaigns/create", {**base, "segment_id": "nope"}) == (
            "segment_not_found"
        )
        no_segment = {k: v for k, v in base.items() if k != "segment_id"}
        assert await code("engine/campaigns/create", no_segment) == "invalid_campaign"
        assert await code("engine/campaigns/create", {**base, "campaign_type": "triggered"}) == (
            "invalid_campaign"  # no trigger
        )
        assert await code("engine/campaigns/create", {**base, "campaign_type": "ab_test"}) == (
            "invalid_campaign"  # no ab_test
        )
        templated = [{**DRIP[0], "subject": None, "content": None, "template_id": "nope"}]
        templated = [{k: v for k, v in templated[0].items() if v is not None}]
        assert await code("engine/campaigns/create", {**base, "steps": templated}) == (
            "template_not_found"
        )
        template = await engine.call(
            "templates/create",
            {"name": "t", "subject_template": "Hi {{ first_name }}", "body_html": "<p>x</p>"},
        )
        templated[0]["template_id"] = template["template_id"]
        assert await code("engine/campaigns/create", {**base, "steps": templated}) == (
            "template_not_approved"
        )

        made = await engine.call("engine/campaigns/create", base)
        assert made["status"] == "draft"
        campaign = made["campaign_id"]
        assert await code("engine/campaigns/create", base) == "campaign_exists"
        for action in ("pause", "resume", "complete"):
            assert await code(f"engine/campaigns/{action}", {"campaign_id": campaign}) == (
                "campaign_wrong_status"
            )
        assert await code("engine/campaigns/launch", {"campaign_id": "nope"}) == (
            "campaign_not_found"
        )
        assert await code("engine/campaigns/launch", {"campaign_id": segment}) == (
            "campaign_not_found"  # a segment is not a campaign
        )
        assert await code("engine/campaigns/launch", {}) == "invalid_body"

        # Two launches at once: one wins.
        outcomes: list[str] = []

        async def launch() -> None:
            try:
                await engine.call("engine/campaigns/launch", {"campaign_id": campaign})
                outcomes.append("launched")
            except EndpointError as error:
                outcomes.append(error.code)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(launch)
        assert sorted(outcomes) == ["campaign_wrong_status", "campaign_wrong_status", "launched"]
        result = await engine.runtime.wait(campaign)
        assert result["enrolled"] == 3


async def test_segments_events_and_contact_updates_are_checked(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_stack(tmp_path) as engine:
        (contact,) = await engine.contacts(people(1))

        async def code(endpoint: str, body: dict[str, Any]) -> str:
            return (await refused(engine, endpoint, body)).code

        assert await code("segments/create", {"name": ""}) == "invalid_segment"
        assert await code(
            "segments/create", {"name": "s", "conditions": [{"type": "email_opened"}]}
        ) == ("invalid_segment")
        assert await code(
            "segments/create",
            {"name": "s", "conditions": [{"type": "lead_score", "threshold": "high"}]},
        ) == ("invalid_segment")
        made = await engine.call(
            "segments/create",
            {"name": "hot", "conditions": [{"type": "lead_score", "threshold": 5}]},
        )
        assert made["size"] == 0
        assert await code("segments/create", {"name": "hot"}) == "segment_exists"

        assert await code("engine/events", {"event": "clicked", "contact_id": contact}) == (
            "invalid_event"
        )
        assert await code("engine/events", {"event": "contact_created", "contact_id": "x"}) == (
            "contact_not_found"
        )
        assert await engine.call(
            "engine/events", {"event": "contact_created", "contact_id": contact}
        ) == {"enrolled": []}

        assert await code("contacts/update", {"contact_id": "x"}) == "contact_not_found"
        for bad in (
            {"attributes": {"email": "x"}},
            {"attributes": {"": 1}},
            {"attributes": {"deep": {"a": 1}}},
            {"add_tags": [" "]},
            {"lead_score": float("inf")},
        ):
            assert await code("contacts/update", {"contact_id": contact, **bad}) == (
                "invalid_contact"
            ), bad
        changed = await engine.call(
            "contacts/update",
            {"contact_id": contact, "attributes": {"plan": "pro", "seats": 3},
             "add_tags": ["vip"], "lead_score_delta": 7},
        )  # fmt: skip
        assert changed["attributes"] == {"plan": "pro", "seats": 3}
        assert changed["lead_score"] == 7
        assert changed["added_tags"] == ["vip"]
        changed = await engine.call(
            "contacts/update", {"contact_id": contact, "attributes": {"seats": None}}
        )
        assert changed["attributes"] == {"plan": "pro"}
        segment = await engine.call(
            "segments/create",
            {"name": "pro", "conditions": [
                {"type": "contact_attribute", "attribute": "plan", "operator": "equals",
                 "value": "pro"},
                {"type": "lead_score", "threshold": 5}]},
        )  # fmt: skip
        assert segment["size"] == 1


async def test_concurrent_contact_updates_lose_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_stack(tmp_path) as engine:
        (contact,) = await engine.contacts(people(1))
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(
                    engine.call,
                    "contacts/update",
                    {"contact_id": contact, "lead_score_delta": 1, "add_tags": [f"t{n}"]},
                )
        data = (await engine.runtime.get(contact)).data
        assert data["lead_score"] == 20
        assert len(data["tags"]) == 21


def test_campaigns_are_started_by_their_endpoints_only() -> None:
    """The protocol's start (sluiceway run) may not begin a campaign's run: launch (and, for
    the campaign application's campaigns, execute) does, once it checked it."""
    app = create_app(EngineConfig(notify_url="http://notify.test"))

    def record(entity_type: str) -> EntityRecord:
        return EntityRecord(
            *("id", None, "name", entity_type, entity_type, EntityStatus.PENDING, {}, None),
            *(None, 0, None, None, 0.0, 0.0),
        )

    assert not app.may_start(record("StepCampaign"))
    assert not app.may_start(record("Campaign"))
    assert app.may_start(record("Enrollment"))
