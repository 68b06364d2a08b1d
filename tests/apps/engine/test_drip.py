"""A three-email drip over 1,000 contacts on virtual time: waits of one and three days and a
branch on whether the welcome email was opened; every contact gets exactly the emails of its
branch, once each, at the times the immediate strategy implies."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import trio
import trio.testing

from tests.apps.engine.engine_stack import Engine, engine_stack
from tests.entities.virtual import DAY, now
from tests.helpers import eventually

DRIP = [
    {"id": "welcome", "step_order": 1, "type": "email",
     "subject": "Welcome {{ first_name }}", "content": "<p>Hello {{ full_name }}</p>"},
    {"id": "wait-1", "step_order": 2, "type": "wait", "wait": {"value": 1, "unit": "days"}},
    {"id": "opened?", "step_order": 3, "type": "condition",
     "condition": {"type": "email_opened", "step": "welcome"},
     "true_next": "thanks", "false_next": "nudge"},
    {"id": "nudge", "step_order": 4, "type": "email",
     "subject": "Did you see this, {{ first_name }}?", "content": "<p>A nudge</p>"},
    {"id": "wait-3", "step_order": 5, "type": "wait", "wait": {"value": 3, "unit": "days"}},
    {"id": "last-chance", "step_order": 6, "type": "email", "end": True,
     "subject": "Last chance", "content": "<p>Last chance, {{ first_name }}</p>"},
    {"id": "thanks", "step_order": 7, "type": "email",
     "subject": "Thanks for reading", "content": "<p>Thanks {{ first_name }}</p>"},
]  # fmt: skip


def people(count: int, tag: str = "drip") -> list[dict[str, Any]]:
    return [
        {"first_name": f"F{n}", "last_name": f"L{n}", "email": f"c{n}@example.com",
         "tags": [tag]}
        for n in range(count)
    ]  # fmt: skip


async def drip_campaign(engine: Engine, name: str = "drip", **extra: Any) -> str:
    segment = await engine.call("segments/create", {"name": f"{name}-people", "tags": ["drip"]})
    made = await engine.call(
        "engine/campaigns/create",
        {"name": name, "campaign_type": "drip", "segment_id": segment["segment_id"],
         "steps": DRIP, **extra},
    )  # fmt: skip
    campaign_id: str = made["campaign_id"]
    return campaign_id


async def emails(engine: Engine, campaign_id: str) -> list[dict[str, Any]]:
    response = await engine.http.get("/v1/engagement", params={"campaign": campaign_id})
    rows: list[dict[str, Any]] = response.json()
    return rows


async def test_a_drip_over_1000_contacts_sends_what_each_branch_implies(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_stack(tmp_path) as engine:
        contacts = await engine.contacts(people(1000))
        campaign = await drip_campaign(engine)
        launched = now()
        assert (await engine.call("engine/campaigns/launch", {"campaign_id": campaign}))[
            "status"
        ] == "active"

        # Every welcome goes out at once; then half the contacts open theirs within the hour.
        async def all_welcomed() -> bool:
            return len(await emails(engine, campaign)) == 1000

        await eventually(all_welcomed)
        assert now() - launched < 60
        sent = await emails(engine, campaign)
        openers = set(contacts[::2])
        for row in sent:
            if row["contact"] in openers:
                await engine.open_email(row["email_id"], now())
        result = await engine.runtime.wait(campaign)
        assert result["enrolled"] == 1000
        assert result["ended"] == {"completed": 1000}
        finished = now()

        rows = await emails(engine, campaign)
        by_contact: dict[str, list[str]] = collections.defaultdict(list)
        for row in rows:
            by_contact[row["contact"]].append(row["step"])
        for contact in contacts:
            expected = (
                ["welcome", "thanks"] if contact in openers
                else ["welcome", "nudge", "last-chance"]
            )  # fmt: skip
            assert by_contact[contact] == expected, contact
        assert len(rows) == 500 * 2 + 500 * 3
        # Each email once: the service saw no repeat either.
        assert (await engine.http.get("/stats")).json()["repeats"] == 0

        # When: welcome at launch, thanks and nudge one day later, last chance three days
        # after the nudge (the enrollments' trails hold the send times, on the virtual clock).
        enrollments = [c for c in await engine.runtime.children(campaign) if c.type == "Enrollment"]
        assert len(enrollments) == 1000
        for enrollment in enrollments:
            sent_at = {
                e["step"]: e["at"] - launched for e in enrollment.data["trail"]
                if e["event"] == "sent"
            }  # fmt: skip
            assert sent_at["welcome"] < 60
            if enrollment.data["contact_id"] in openers:
                assert set(sent_at) == {"welcome", "thanks"}
                assert DAY <= sent_at["thanks"] < DAY + 60
            else:
                assert DAY <= sent_at["nudge"] < DAY + 60
                assert 4 * DAY <= sent_at["last-chance"] < 4 * DAY + 60
            assert enrollment.data["status"] == "completed"
        assert 4 * DAY <= finished - launched < 4 * DAY + 120

        analytics = await engine.call("engine/campaigns/analytics", {"campaign_id": campaign})
        assert analytics["campaign"]["enrolled"] == 1000
        assert analytics["campaign"]["completed"] == 1000
        assert analytics["campaign"]["emails_sent"] == 2500
        assert analytics["campaign"]["emails_opened"] == 500
        steps = analytics["steps"]
        assert [steps[s]["sent"] for s in ("welcome", "nudge", "last-chance", "thanks")] == [
            1000, 500, 500, 500,
        ]  # fmt: skip
        assert steps["welcome"]["opened"] == 500
        assert steps["opened?"]["completed"] == 1000
        assert (await engine.runtime.get(campaign)).data["status"] == "completed"
