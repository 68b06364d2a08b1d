"""The campaign engine under ``sluiceway serve``, SIGKILLed again and again: a drip (the
welcome, its one-day wait, the branch on whether it was opened, then thanks, or a nudge, a
three-day wait and a last chance) and an A/B test (a test group, the decision after the test
period, the winner's variant to the rest, a two-day wait and a follow-up) run on real time
shortened by ``SLUICEWAY_ENGINE_TIME_SCALE``, against the real notification service, while the
server process is killed more than twenty times: while the welcome emails go out, while the
enrollments are parked on their waits, right around their wake-ups, and around the end of the
test period (just before the ``ABDecision``, and once the winner is stored while the rest are
enrolled and sent their pitch). Each time a new server is started on the same store and port,
and nothing else is done: it goes on by itself. At the end every enrollment has ended once,
completed, with the trail of its branch and nothing twice in it, and the notification service
holds each email of each enrollment's branch exactly once, under its key per enrollment and
step."""

from __future__ import annotations

import collections
import random
import sqlite3
import time
from functools import partial
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import trio
import trio.testing

from sluiceway import EntityStatus, open_runtime
from sluiceway.apps.engine import EngineConfig, ab_variant
from sluiceway.apps.engine import app as engine_app
from sluiceway.apps.notification import Faults, serve_notifications
from sluiceway.client import Client, connect
from sluiceway.demos.live import ServerProcess
from tests.apps.engine.crash_stack import Kill, Plan, lifetime, observe, open_when_sent
from tests.apps.engine.engine_stack import engine_stack
from tests.apps.engine.test_drip import DRIP, drip_campaign, people
from tests.apps.engine.test_lifecycle import AB, AB_STEPS, enrollments, statuses
from tests.helpers import eventually

#: A day lasts 15 s: longer than the server's ``park_after`` (10 s), so that the drip's
#: one-day and three-day waits, the A/B test period and its two-day wait all park (the
#: enrollment's run ends, nothing of it stays in the process) until they wake.
SCALE = 0.000174
DAY = 86_400 * SCALE
#: The server's leases, renewed every second. Each server lives at least
#: ``crash_stack.MIN_ALIVE`` (a second) after it listens, through a heartbeat: a run it held
#: that the heartbeat renewed is not blamed for its death. Killed within a second of every
#: start, a server would be in a crash loop for the runtime, which fails a run abandoned by
#: three dying processes in a row if those processes started nothing after it: one of the up
#: to 100 enrollments a server claims at once, waiting for the campaign's 3 send slots, could
#: be failed though it did nothing wrong.
LEASE_SECONDS = 3.0
DRIP_CONTACTS = 150
AB_CONTACTS = 150
MIN_KILLS = 20
SEED = 20261207

DRIP_OPENED = [("welcome", "sent"), ("wait-1", "waited"), ("opened?", "branched"),
               ("thanks", "sent")]  # fmt: skip
DRIP_UNOPENED = [("welcome", "sent"), ("wait-1", "waited"), ("opened?", "branched"),
                 ("nudge", "sent"), ("wait-3", "waited"), ("last-chance", "sent")]  # fmt: skip
AB_TRAIL = [("pitch", "sent"), ("wait", "waited"), ("follow-up", "sent")]
VARIANTS = [variant["id"] for variant in cast(list[dict[str, str]], AB["variants"])]
TEST_FRACTION = cast(float, AB["test_fraction"])


def rows(prefix: str, count: int) -> list[dict[str, Any]]:
    return [
        {"first_name": f"{prefix.upper()}{n}", "last_name": f"L{n}",
         "email": f"{prefix}{n}@example.com", "tags": [prefix]}
        for n in range(count)
    ]  # fmt: skip


async def create_campaigns(client: Client) -> tuple[list[str], list[str], str, str]:
    """The drip's contacts and the A/B test's, and the two campaigns (drafts)."""
    drip_ids = (await client.call("contacts/import", {"contacts": rows("d", DRIP_CONTACTS)}))["ids"]
    ab_ids = (await client.call("contacts/import", {"contacts": rows("a", AB_CONTACTS)}))["ids"]
    campaigns = []
    for name, tag, extra in (
        ("drip", "d", {"campaign_type": "drip", "steps": DRIP}),
        ("ab", "a", {"campaign_type": "ab_test", "steps": AB_STEPS, "ab_test": AB}),
    ):
        segment = await client.call("segments/create", {"name": f"{name}-people", "tags": [tag]})
        made = await client.call(
            "engine/campaigns/create",
            {"name": name, "segment_id": segment["segment_id"], **extra},
        )
        campaigns.append(made["campaign_id"])
    drip, ab = campaigns
    return drip_ids, ab_ids, drip, ab


async def crash_until_done(
    server: ServerProcess,
    nursery: trio.Nursery,
    http: httpx.AsyncClient,
    plan: Plan,
    t0: float,
    url: str,
) -> list[Kill]:
    """Kill the server (listening on ``url`` since the drip's launch at ``t0``) again and
    again, starting a new one each time, until a server sees both campaigns completed. The A/B
    test is launched half a day into the drip, so that its test period ends half-way between
    the drip's wake-ups. Returns the kills."""
    rng = random.Random(SEED)
    kills: list[Kill] = []
    wakes = [t0 + DAY, t0 + 4 * DAY]  # the drip's, then the A/B test's too
    decision = float("inf")  # when the A/B test period ends
    launched = False
    started = t0
    restart = 1.0  # the longest a server took to start listening, and a margin
    while True:
        async with connect(url) as client:
            if not launched and started >= t0 + DAY / 2:
                await client.call("engine/campaigns/launch", {"campaign_id": plan.ab})
                launched = True
                decision = float((await client.get(plan.ab))["data"]["launched_at"]) + DAY
                wakes += [decision + DAY, decision + 2 * DAY]  # the test group's, the rest's
            alive = lifetime(rng, started, [*wakes, decision], restart=restart)
            await trio.sleep(max(0.0, started + alive - time.time()))
            last = await observe(client, http, (plan.drip, plan.ab))
        if last.done(plan.drip, plan.ab):
            return kills  # this server ran them to the end
        await server.kill()
        labels = plan.labels(last, wakes, decision)
        kills.append(Kill(at=last.at - t0, alive=time.time() - started, labels=labels))
        url = await server.start(nursery)
        restart = max(restart, time.time() - last.at + 0.3)
        started = time.time()


@pytest.mark.slow
async def test_a_drip_and_an_ab_test_survive_repeated_sigkills_sending_each_email_once(
    tmp_path: Path,
) -> None:
    notify_db, store = tmp_path / "notifications.db", tmp_path / "engine.db"
    # Each send takes 80-120 ms, 3 at a time per campaign: the welcome emails take seconds,
    # and so do the A/B test's pitches to the rest once the winner is known.
    faults = Faults(latency=0.08, jitter=0.04, seed=1)
    drip_openers: set[str] = set()
    ab_openers: set[str] = set()
    with trio.fail_after(300):  # a safety net only
        async with trio.open_nursery() as nursery:
            notify_url = await nursery.start(partial(serve_notifications, notify_db, faults=faults))
            server = ServerProcess(
                store,
                notify_url,
                tmp_path / "server.log",
                app="sluiceway.apps.engine:app",
                env={"SLUICEWAY_ENGINE_TIME_SCALE": repr(SCALE)},
                lease_seconds=LEASE_SECONDS,
            )
            async with httpx.AsyncClient(base_url=notify_url, timeout=30) as http:
                url = await server.start(nursery)
                async with connect(url) as client:
                    drip_ids, ab_ids, drip, ab = await create_campaigns(client)
                    await client.call("engine/campaigns/launch", {"campaign_id": drip})
                    t0 = float((await client.get(drip))["data"]["launched_at"])

                # Half the drip's contacts open their welcome email; in the A/B test group,
                # everyone who got variant B opens it and nobody who got A: B wins.
                drip_opening = set(drip_ids[::2])
                tested = {
                    contact: ab_variant(
                        contact, campaign_id=ab, variants=VARIANTS, test_fraction=TEST_FRACTION
                    )
                    for contact in ab_ids
                }
                tested_b = {c for c, v in tested.items() if v == "B"}
                test_group = {c for c, v in tested.items() if v is not None}
                assert tested_b  # both variants are tested
                assert test_group - tested_b
                nursery.start_soon(
                    open_when_sent, http, drip, "welcome", drip_opening, drip_openers
                )
                nursery.start_soon(open_when_sent, http, ab, "pitch", tested_b, ab_openers)

                plan = Plan(
                    drip=drip,
                    ab=ab,
                    drip_contacts=DRIP_CONTACTS,
                    ab_contacts=AB_CONTACTS,
                    test_group=len(test_group),
                )
                kills = await crash_until_done(server, nursery, http, plan, t0, url)
                stats = (await http.get("/stats")).json()
                summary = (await http.get("/v1/engagement/summary", params={"campaign": ab})).json()
            await server.stop()
            nursery.cancel_scope.cancel()

    by_label = collections.Counter(label for kill in kills for label in kill.labels)
    # Runs the runtime's crash-loop guard suspected (two deaths in a row while holding them).
    suspected = (tmp_path / "server.log").read_text().count("abandoned by dying processes")
    print(f"{len(kills)} kills, {dict(by_label)}; {stats}; {suspected} suspected runs")
    for kill in kills:
        print(f"  at {kill.at:6.2f} s (alive {kill.alive:4.2f} s): {', '.join(kill.labels)}")
    assert len(kills) >= MIN_KILLS
    for label in ("welcome", "parked", "wake", "ab-deciding", "ab-decided"):
        assert by_label[label] >= 1, (label, by_label)

    # The service: every email of every branch, each once under its key per enrollment and
    # step (a send repeated after a kill, sent but not yet in the trail, was answered from
    # the key: a repeat, never a second email).
    with sqlite3.connect(notify_db) as conn:
        sends = conn.execute(
            "SELECT key, id, campaign_id, contact_id, step_id,"
            " json_extract(message, '$.metadata.enrollment_id'),"
            " json_extract(message, '$.metadata.variant') FROM sends"
        ).fetchall()
    expected = len(drip_opening) * 2 + (DRIP_CONTACTS - len(drip_opening)) * 3 + AB_CONTACTS * 2
    assert len(sends) == stats["sends"] == expected
    assert stats["failures"] == 0
    assert stats["requests"] == stats["sends"] + stats["repeats"]
    # At most the sends going out at each kill (the global limit) and as many sent but not
    # yet recorded: a replay does not send again what its trail says was sent.
    assert stats["repeats"] <= 2 * EngineConfig().global_limit * len(kills)
    assert set(collections.Counter((r[2], r[3], r[4]) for r in sends).values()) == {1}
    by_key = {key: row for key, *row in sends}  # id, campaign, contact, step, enrollment, variant
    for key, (_, campaign, _, step, enrollment, _) in by_key.items():
        assert key == f"enrollment-{enrollment}-{step}"
        assert campaign in (drip, ab)

    async with open_runtime(store, engine_app.types, work=False) as runtime:
        enrollments: dict[str, list[Any]] = {}
        for campaign, contacts in ((drip, drip_ids), (ab, ab_ids)):
            # Each campaign ran to the end, every enrollment completed.
            record = await runtime.get(campaign)
            assert record.status is EntityStatus.COMPLETED
            assert record.data["status"] == "completed"
            assert record.result == {
                "campaign_id": campaign,
                "enrolled": len(contacts),
                "ended": {"completed": len(contacts)},
            }
            enrollments[campaign] = [
                c for c in await runtime.children(campaign) if c.type == "Enrollment"
            ]
            # One enrollment per contact, never two.
            assert sorted(e.name for e in enrollments[campaign]) == sorted(
                f"contact:{contact}" for contact in contacts
            )
            assert sorted(e.data["contact_id"] for e in enrollments[campaign]) == sorted(contacts)
        decisions = [c for c in await runtime.children(ab) if c.type == "ABDecision"]
        ab_record = await runtime.get(ab)

    # The drip: each enrollment's trail is its branch, each step once, and each email it sent
    # is the one the service stored under its key.
    assert drip_openers == drip_opening
    for enrollment in enrollments[drip]:
        contact = enrollment.data["contact_id"]
        opened = contact in drip_opening
        assert trail(enrollment) == (DRIP_OPENED if opened else DRIP_UNOPENED), contact
        branched = next(e for e in enrollment.data["trail"] if e["event"] == "branched")
        assert branched["outcome"] is opened
        check_ended(enrollment, by_key)

    # The A/B test: one decision, B; the test group got its own variants, the rest B.
    assert ab_openers == tested_b
    assert len(decisions) == 1
    assert decisions[0].status is EntityStatus.COMPLETED
    assert decisions[0].result == {
        "winner": "B",
        "results": {
            "A": {"sent": len(test_group - tested_b), "opened": 0},
            "B": {"sent": len(tested_b), "opened": len(tested_b)},
        },
    }
    assert ab_record.data["ab_winner"] == "B"
    pitched = {row[2]: row[5] for row in by_key.values() if row[1] == ab and row[3] == "pitch"}
    assert len(pitched) == AB_CONTACTS
    for enrollment in enrollments[ab]:
        contact = enrollment.data["contact_id"]
        assert enrollment.data["variant"] == (tested[contact] or "B")
        assert pitched[contact] == enrollment.data["variant"]
        assert trail(enrollment) == AB_TRAIL
        check_ended(enrollment, by_key)
    assert {row["variant"]: row["sent"] for row in summary if row["step"] == "pitch"} == {
        "A": len(test_group - tested_b),
        "B": len(tested_b) + AB_CONTACTS - len(test_group),
    }


def trail(enrollment: Any) -> list[tuple[str, str]]:
    return [(e["step"], e["event"]) for e in enrollment.data["trail"]]


def check_ended(enrollment: Any, by_key: dict[str, list[Any]]) -> None:
    """The enrollment completed, and each email in its trail is the one stored under its
    key."""
    assert enrollment.status is EntityStatus.COMPLETED
    assert enrollment.data["status"] == "completed"
    assert enrollment.data["current_step"] is None
    sent = [e for e in enrollment.data["trail"] if e["event"] == "sent"]
    assert enrollment.result["status"] == "completed"
    assert enrollment.result["emails_sent"] == len(sent)
    for entry in sent:
        assert by_key[f"enrollment-{enrollment.id}-{entry['step']}"][0] == entry["email_id"]


async def test_an_enrollment_the_runtime_ended_is_not_counted_as_going_on(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An enrollment whose run the runtime ended without its walk (here cancelled; under
    repeated kills, failed by the crash-loop guard) keeps the status its data had then
    (``waiting``): the campaign counts it as ended, not as still waiting."""
    async with engine_stack(tmp_path) as engine:
        await engine.contacts(people(3))
        campaign = await drip_campaign(engine)
        await engine.call("engine/campaigns/launch", {"campaign_id": campaign})

        async def all_waiting() -> bool:
            return (await statuses(engine, campaign)) == {"waiting": 3}

        await eventually(all_waiting)
        first = (await enrollments(engine, campaign))[0]
        await engine.runtime.cancel(first.id)
        result = await engine.runtime.wait(campaign)
        assert result["ended"] == {"completed": 2, "cancelled": 1}
        assert (await engine.runtime.get(first.id)).data["status"] == "waiting"
        status = await engine.call("engine/campaigns/status", {"campaign_id": campaign})
        assert status["enrollments"] == {"cancelled": 1, "completed": 2}
        analytics = await engine.call("engine/campaigns/analytics", {"campaign_id": campaign})
        assert analytics["campaign"]["waiting"] == 0
        assert analytics["campaign"]["completed"] == 2
