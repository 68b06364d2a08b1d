"""Kill the server (SIGKILL) in the middle of a 500-recipient campaign and start it again: the
campaign resumes by itself and the notification service records exactly one send per
recipient."""

from __future__ import annotations

import sqlite3
from functools import partial
from pathlib import Path

import httpx
import trio

from sluiceway import EntityStatus, open_runtime
from sluiceway.apps.campaigns import TYPES
from sluiceway.apps.notification import Faults, serve_notifications
from sluiceway.client import connect
from sluiceway.demos.live import ServerProcess

RECIPIENTS = 500


async def test_a_killed_server_resumes_the_campaign_and_sends_each_email_once(
    tmp_path: Path,
) -> None:
    faults = Faults(latency=0.01, jitter=0.01, seed=1)
    notify_db, store = tmp_path / "notifications.db", tmp_path / "campaigns.db"
    async with trio.open_nursery() as nursery:
        notify_url = await nursery.start(partial(serve_notifications, notify_db, faults=faults))
        server = ServerProcess(store, notify_url, tmp_path / "server.log")
        url = await server.start(nursery)
        async with (
            httpx.AsyncClient(base_url=notify_url, timeout=10) as http,
            connect(url, reconnect_timeout=120) as client,
        ):
            rows = [
                {"first_name": f"F{n}", "last_name": f"L{n}", "email": f"r{n}@example.com"}
                | {"tags": ["all"]}
                for n in range(RECIPIENTS)
            ]
            imported = await client.call("contacts/import", {"contacts": rows})
            assert imported["created"] == RECIPIENTS
            template = await client.call(
                "templates/create",
                {"name": "t", "subject_template": "Hi {{first_name}}", "body_html": "<p>x</p>"},
            )
            await client.call("templates/approve", {"template_id": template["template_id"]})
            campaign = (
                await client.call(
                    "campaigns/create",
                    {"name": "big", "template_id": template["template_id"], "tag_filter": ["all"]},
                )
            )["campaign_id"]
            await client.call("campaigns/execute", {"campaign_id": campaign})

            with trio.fail_after(120):
                while True:  # polled: the service is watched from outside, as an operator would
                    sent_before = (await http.get("/stats")).json()["sends"]
                    if sent_before >= 150:
                        break
                    await trio.sleep(0.02)
            await server.kill()
            sends_at_kill = (await http.get("/stats")).json()["sends"]
            assert sends_at_kill < RECIPIENTS  # really in the middle
            assert sends_at_kill >= sent_before

            await server.start(nursery)  # nothing else: it resumes the campaign by itself
            with trio.fail_after(180):
                while True:
                    record = await client.get(campaign)
                    if record["status"] == "COMPLETED":
                        break
                    await trio.sleep(0.1)
            stats = (await http.get("/stats")).json()
        await server.stop()
        nursery.cancel_scope.cancel()

    assert record["result"]["sent_count"] == RECIPIENTS
    assert record["result"]["failed_count"] == 0
    assert record["result"]["status"] == "completed"
    assert stats["sends"] == RECIPIENTS
    with sqlite3.connect(notify_db) as conn:
        keys = [row[0] for row in conn.execute("SELECT key FROM sends")]
    assert len(keys) == len(set(keys)) == RECIPIENTS
    assert all(key.startswith(f"campaign-{campaign}-") for key in keys)

    async with open_runtime(store, TYPES) as runtime:
        assert (await runtime.get(campaign)).attempt == 2  # the restarted server ran it again
        recipients = await runtime.children(campaign)
    assert len(recipients) == RECIPIENTS
    assert all(r.status is EntityStatus.COMPLETED for r in recipients)
    assert all(r.result["status"] == "sent" for r in recipients)
    # Those in flight at the kill ran again (at most the campaign's 3); they asked again with
    # the same key and were answered from the service's store.
    again = [r for r in recipients if r.attempt > 1]
    assert len(again) <= 3
    assert stats["repeats"] <= len(again)
