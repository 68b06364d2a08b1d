"""Pause, resume and complete; A/B tests; optimized send times across a DST change; triggered
campaigns; actions. On virtual time, with the real notification service."""

from __future__ import annotations

import collections
import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import trio
import trio.testing

from sluiceway.server import EndpointError
from tests.apps.engine.engine_stack import Engine, engine_stack
from tests.apps.engine.test_drip import drip_campaign, emails, people
from tests.entities.virtual import DAY, now
from tests.helpers import eventually


async def enrollments(engine: Engine, campaign: str) -> list[Any]:
    return [c for c in await engine.runtime.children(campaign) if c.type == "Enrollment"]


async def statuses(engine: Engine, campaign: str) -> collections.Counter[str]:
    return collections.Counter(e.data.get("status") for e in await enrollments(engine, campaign))


async def test_pause_holds_every_enrollment_in_place_and_resume_continues_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_stack(tmp_path) as engine:
        await engine.contacts(people(50))
        campaign = await drip_campaign(engine)
        launched = now()
        await engine.call("engine/campaigns/launch", {"campaign_id": campaign})

        async def all_waiting() -> bool:
            return (await statuses(engine, campaign)) == {"waiting": 50}

        await eventually(all_waiting)  # each sent its welcome and waits its day
        await engine.call("engine/campaigns/pause", {"campaign_id": campaign})
        with pytest.raises(EndpointError, match="only an active campaign can be paused"):
            await engine.call("engine/campaigns/pause", {"campaign_id": campaign})
        # Ten days pass: each wakes after its day, finds the campaign paused, and holds
        # before its condition, parked on a message (no lease, nothing in memory).
        await trio.sleep(10 * DAY)
        held = await enrollments(engine, campaign)
        assert {(e.data["status"], e.data["current_step"]) for e in held} == {("held", "opened?")}
        assert {(e.parked_on, e.lease_owner) for e in held} == {("message", None)}
        assert len(await emails(engine, campaign)) == 50  # nothing more was sent
        resumed = now()
        answer = await engine.call("engine/campaigns/resume", {"campaign_id": campaign})
        assert answer["released"] == 50
        result = await engine.runtime.wait(campaign)
        assert result["ended"] == {"completed": 50}
        rows = await emails(engine, campaign)
        assert collections.Counter(r["step"] for r in rows) == {
            "welcome": 50, "nudge": 50, "last-chance": 50,
        }  # fmt: skip
        for enrollment in await enrollments(engine, campaign):
            sent = {e["step"]: e["at"] for e in enrollment.data["trail"] if e["event"] == "sent"}
            # Nothing was sent while paused: the nudge went out on resume, and the last
            # chance three days after it.
            assert sent["welcome"] - launched < 60
            assert 0 <= sent["nudge"] - resumed < 60
            assert 3 * DAY <= sent["last-chance"] - sent["nudge"] < 3 * DAY + 60
            events = [e["event"] for e in enrollment.data["trail"]]
            assert events.count("held") == 1


async def test_complete_stops_every_enrollment_before_its_next_step(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_stack(tmp_path) as engine:
        await engine.contacts(people(20))
        campaign = await drip_campaign(engine)
        await engine.call("engine/campaigns/launch", {"campaign_id": campaign})

        async def all_waiting() -> bool:
            return (await statuses(engine, campaign)) == {"waiting": 20}

        await eventually(all_waiting)
        await engine.call("engine/campaigns/pause", {"campaign_id": campaign})
        await trio.sleep(2 * DAY)  # they hold
        await engine.call("engine/campaigns/complete", {"campaign_id": campaign})
        result = await engine.runtime.wait(campaign)
        assert result["ended"] == {"exited": 20}
        assert len(await emails(engine, campaign)) == 20
        with pytest.raises(EndpointError, match="only a paused campaign can be resumed"):
            await engine.call("engine/campaigns/resume", {"campaign_id": campaign})


AB_STEPS = [
    {"id": "pitch", "step_order": 1, "type": "email", "subject": "-", "content": "-"},
    {"id": "wait", "step_order": 2, "type": "wait", "wait": {"value": 2, "unit": "days"}},
    {"id": "follow-up", "step_order": 3, "type": "email", "subject": "Again", "content": "-"},
]
AB = {
    "step": "pitch",
    "variants": [
        {"id": "A", "subject": "Plain {{ first_name }}", "content": "<p>A</p>"},
        {"id": "B", "subject": "Bold {{ first_name }}!", "content": "<p>B</p>"},
    ],
    "test_fraction": 0.3,
    "test_period": {"value": 1, "unit": "days"},
}


async def test_an_ab_test_sends_the_variant_the_opens_imply_to_the_rest(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_stack(tmp_path) as engine:
        contacts = await engine.contacts(people(400))
        segment = await engine.call("segments/create", {"name": "all", "tags": ["drip"]})
        made = await engine.call(
            "engine/campaigns/create",
            {"name": "ab", "campaign_type": "ab_test", "segment_id": segment["segment_id"],
             "steps": AB_STEPS, "ab_test": AB},
        )  # fmt: skip
        campaign = made["campaign_id"]
        launched = now()
        await engine.call("engine/campaigns/launch", {"campaign_id": campaign})
        await trio.sleep(3600)
        tested = await emails(engine, campaign)
        assert 80 <= len(tested) <= 160  # about 30% of 400
        variants = collections.Counter()
        for enrollment in await enrollments(engine, campaign):
            variants[enrollment.data["variant"]] += 1
        assert set(variants) == {"A", "B"}
        # B's recipients open twice as often as A's.
        by_contact = {e.data["contact_id"]: e.data["variant"]
                      for e in await enrollments(engine, campaign)}  # fmt: skip
        seen = collections.Counter()
        for row in tested:
            variant = by_contact[row["contact"]]
            seen[variant] += 1
            if seen[variant] % (2 if variant == "B" else 4) == 0:
                await engine.open_email(row["email_id"], now())
        result = await engine.runtime.wait(campaign)
        record = await engine.runtime.get(campaign)
        assert record.data["ab_winner"] == "B"
        assert result["ended"] == {"completed": 400}
        rows = await emails(engine, campaign)
        pitches = [r for r in rows if r["step"] == "pitch"]
        assert len(pitches) == 400
        assert sorted(r["contact"] for r in pitches) == sorted(contacts)
        final = {e.data["contact_id"]: e for e in await enrollments(engine, campaign)}
        rest = [c for c in contacts if c not in {r["contact"] for r in tested}]
        for contact in rest:
            enrollment = final[contact]
            assert enrollment.data["variant"] == "B"
            pitch = next(e for e in enrollment.data["trail"] if e["step"] == "pitch")
            assert DAY <= pitch["at"] - launched < DAY + 60  # after the test period
        summary = (
            await engine.http.get("/v1/engagement/summary", params={"campaign": campaign})
        ).json()
        pitch_variants = {r["variant"]: r["sent"] for r in summary if r["step"] == "pitch"}
        assert pitch_variants["A"] == variants["A"]
        assert pitch_variants["B"] == 400 - variants["A"]


async def test_optimized_sends_land_at_the_contacts_open_hour_across_a_dst_change(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    zone = ZoneInfo("America/New_York")
    async with engine_stack(tmp_path) as engine:
        contacts = await engine.contacts(people(3, tag="history"))
        # Each contact opened earlier emails at its own hour (local time, in winter).
        seg = await engine.call("segments/create", {"name": "h", "tags": ["history"]})
        first = await engine.call(
            "engine/campaigns/create",
            {"name": "history", "campaign_type": "broadcast", "segment_id": seg["segment_id"],
             "steps": [{"id": "hello", "step_order": 1, "type": "email", "subject": "Hi",
                        "content": "-"}]},
        )  # fmt: skip
        await engine.call("engine/campaigns/launch", {"campaign_id": first["campaign_id"]})
        await engine.runtime.wait(first["campaign_id"])
        hours = {contacts[0]: 7, contacts[1]: 13, contacts[2]: 22}
        for row in await emails(engine, first["campaign_id"]):
            hour = hours[row["contact"]]
            for day in (1, 2, 3):
                local = datetime.datetime(2027, 1, day, hour, 15, tzinfo=zone)
                await engine.open_email(row["email_id"], local.timestamp())
        # A campaign launched the day before the clocks go forward (2027-03-14 in New
        # York), one minute to midnight local: tomorrow is the DST day.
        eve = datetime.datetime(2027, 3, 13, 23, 59, tzinfo=zone).timestamp()
        await trio.sleep(eve - now())
        made = await engine.call(
            "engine/campaigns/create",
            {"name": "optimized", "campaign_type": "broadcast",
             "segment_id": seg["segment_id"], "send_strategy": "optimized",
             "timezone": "America/New_York",
             "steps": [{"id": "offer", "step_order": 1, "type": "email", "subject": "Offer",
                        "content": "-"}]},
        )  # fmt: skip
        await engine.call("engine/campaigns/launch", {"campaign_id": made["campaign_id"]})
        await engine.runtime.wait(made["campaign_id"])
        for enrollment in await enrollments(engine, made["campaign_id"]):
            sent = next(e for e in enrollment.data["trail"] if e["event"] == "sent")
            local = datetime.datetime.fromtimestamp(sent["at"], zone)
            assert (local.date(), local.hour, local.minute) == (
                datetime.date(2027, 3, 14),
                hours[enrollment.data["contact_id"]],
                0,
            )
            assert local.utcoffset() == datetime.timedelta(hours=-4)  # EDT


async def test_a_triggered_campaign_enrolls_contacts_as_they_come_once_each(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_stack(tmp_path) as engine:
        made = await engine.call(
            "engine/campaigns/create",
            {"name": "welcome-vip", "campaign_type": "triggered",
             "trigger": {"event": "tag_added", "tag": "vip"},
             "steps": [{"id": "hi", "step_order": 1, "type": "email", "subject": "VIP",
                        "content": "-"}]},
        )  # fmt: skip
        campaign = made["campaign_id"]
        ids = await engine.contacts(people(3, tag="lead"))
        await engine.call("engine/campaigns/launch", {"campaign_id": campaign})
        # Created with the tag: enrolled; tagged later: enrolled; tagged again: not twice.
        (vip,) = await engine.contacts(
            [{"first_name": "V", "last_name": "I", "email": "v@example.com", "tags": ["vip"]}]
        )
        await engine.call("contacts/update", {"contact_id": ids[0], "add_tags": ["vip"]})
        await engine.call("contacts/update", {"contact_id": ids[0], "remove_tags": ["vip"]})
        await engine.call("contacts/update", {"contact_id": ids[0], "add_tags": ["vip"]})
        answer = await engine.call("engine/events", {"event": "tag_added", "contact_id": ids[1],
                                                     "tag": "other"})  # fmt: skip
        assert answer == {"enrolled": []}

        async def two_sent() -> bool:
            return len(await emails(engine, campaign)) == 2

        await eventually(two_sent)
        await trio.sleep(DAY)
        assert sorted(r["contact"] for r in await emails(engine, campaign)) == sorted([vip, ids[0]])


async def test_actions_change_the_contact_once_even_when_replayed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    steps = [
        {"id": "score", "step_order": 1, "type": "action",
         "action": {"type": "change_lead_score", "delta": 10}},
        {"id": "tag", "step_order": 2, "type": "action",
         "action": {"type": "add_tag", "tag": "nurtured"}},
        {"id": "wait", "step_order": 3, "type": "wait", "wait": {"value": 1, "unit": "days"}},
        {"id": "hot?", "step_order": 4, "type": "condition",
         "condition": {"type": "lead_score", "threshold": 15}, "true_next": "attr"},
        {"id": "attr", "step_order": 5, "type": "action",
         "action": {"type": "set_attribute", "attribute": "stage", "value": "hot"}},
    ]  # fmt: skip
    async with engine_stack(tmp_path) as engine:
        rows = people(2)
        rows[0]["lead_score"] = 10
        ids = await engine.contacts(rows)
        seg = await engine.call("segments/create", {"name": "s", "tags": ["drip"]})
        made = await engine.call(
            "engine/campaigns/create",
            {"name": "score", "campaign_type": "drip", "segment_id": seg["segment_id"],
             "steps": steps},
        )  # fmt: skip
        await engine.call("engine/campaigns/launch", {"campaign_id": made["campaign_id"]})
        await engine.runtime.wait(made["campaign_id"])
        first = (await engine.runtime.get(ids[0])).data
        second = (await engine.runtime.get(ids[1])).data
        # Replayed after its one-day park, each action was still made once.
        assert (first["lead_score"], second["lead_score"]) == (20, 10)
        assert "nurtured" in first["tags"]
        assert "nurtured" in second["tags"]
        assert first["attributes"] == {"stage": "hot"}
        assert second["attributes"] == {}
        assert len(first["applied_changes"]) == 3
        assert len(second["applied_changes"]) == 2
