"""The main job's second part: a drip campaign of the campaign engine, live, on a short day.

``python -m sluiceway.demos.drip`` (run by ``nox -s demo`` after the campaign application's
demo) starts, on 127.0.0.1:

* the notification service (SQLite, de-duplicating by idempotency key, with some latency),
* ``sluiceway serve --app sluiceway.apps.engine:app`` as a separate process, on the embedded
  SQLite store, with ``SLUICEWAY_ENGINE_TIME_SCALE`` making a day last ``--day-seconds``
  seconds (3 by default),

then, as a client over WebSockets, imports contacts, creates a segment and a three-email drip
(a welcome, a day's wait, a branch on whether the welcome was opened: a thank-you, or a nudge
and three days later a last chance), launches it, and shows it live as ``sluiceway run`` does:
the enrollments by status (``WAITING`` while they are parked on their waits) and each step
they take. Every other contact opens its welcome email, as a recipient's mail client would
report it. At the end it prints the campaign's analytics.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import trio
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from ..apps.notification import Faults, serve_notifications
from ..cli._progress import RunProgress, display_console
from ..cli._remote import final_counts
from ..client import Client, ConnectionLostError, connect
from .live import ServerProcess, contacts

DAY = 86_400

#: The drip: seven steps, two branches (two emails if the welcome was opened, else three).
STEPS: list[dict[str, Any]] = [
    {"id": "welcome", "step_order": 1, "type": "email",
     "subject": "Welcome, {{ first_name }}", "content": "<p>Glad you joined, {{ full_name }}.</p>"},
    {"id": "wait-1", "step_order": 2, "type": "wait", "wait": {"value": 1, "unit": "days"}},
    {"id": "opened?", "step_order": 3, "type": "condition",
     "condition": {"type": "email_opened", "step": "welcome"},
     "true_next": "thanks", "false_next": "nudge"},
    {"id": "nudge", "step_order": 4, "type": "email",
     "subject": "Did you see this, {{ first_name }}?", "content": "<p>A nudge.</p>"},
    {"id": "wait-3", "step_order": 5, "type": "wait", "wait": {"value": 3, "unit": "days"}},
    {"id": "last-chance", "step_order": 6, "type": "email", "end": True,
     "subject": "Last chance, {{ first_name }}", "content": "<p>Last chance.</p>"},
    {"id": "thanks", "step_order": 7, "type": "email",
     "subject": "Thanks for reading", "content": "<p>Thank you, {{ first_name }}.</p>"},
]  # fmt: skip


async def setup(client: Client, count: int) -> tuple[str, list[str]]:
    """Contacts, a segment of all of them and the drip (a draft); returns the campaign's id
    and the contacts' ids."""
    imported = await client.call("contacts/import", {"contacts": contacts(count)})
    segment = await client.call("segments/create", {"name": "spring", "tags": ["spring"]})
    made = await client.call(
        "engine/campaigns/create",
        {
            "name": "onboarding",
            "campaign_type": "drip",
            "segment_id": segment["segment_id"],
            "steps": STEPS,
        },
    )
    return made["campaign_id"], imported["ids"]


async def main(
    *,
    workdir: Path,
    count: int = 30,
    day_seconds: float = 3.0,
    latency: float = 0.05,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the demo in ``workdir``; returns the campaign's result, the emails each step sent,
    and its analytics."""
    console = console or display_console()
    faults = Faults(latency=latency, jitter=latency, seed=11)
    events: list[str] = []
    sent_by_step: collections.Counter[str] = collections.Counter()

    async with trio.open_nursery() as nursery:
        notify_url = await nursery.start(
            functools.partial(serve_notifications, workdir / "notifications.db", faults=faults)
        )
        server = ServerProcess(
            workdir / "engine.db",
            notify_url,
            workdir / "server.log",
            app="sluiceway.apps.engine:app",
            env={"SLUICEWAY_ENGINE_TIME_SCALE": repr(day_seconds / DAY)},
        )
        url = await server.start(nursery)
        console.print(f"notification service on {notify_url}; engine server on {url}")
        console.print(f"a day lasts {day_seconds:g} s (SLUICEWAY_ENGINE_TIME_SCALE)")
        async with (
            httpx.AsyncClient(base_url=notify_url) as http,
            connect(url, reconnect_timeout=60) as client,
        ):
            campaign_id, contact_ids = await setup(client, count)
            openers = set(contact_ids[::2])
            await client.call("engine/campaigns/launch", {"campaign_id": campaign_id})
            console.print(
                f"follow it from another terminal: sluiceway run {campaign_id} --url {url}"
            )
            progress = RunProgress(campaign_id, messages=6)

            def render() -> Group:
                sent = ", ".join(f"{step} {n}" for step, n in sorted(sent_by_step.items()))
                lines = [Text(f"emails sent: {sent or 'none yet'}", style="bold")]
                lines += [Text(event, style="yellow") for event in events]
                return Group(*lines, progress.render())

            async def recipients() -> None:
                """Every other contact opens its welcome email; count what was sent."""
                opened: set[str] = set()
                while True:
                    rows = (
                        await http.get("/v1/engagement", params={"campaign": campaign_id})
                    ).json()
                    sent_by_step.clear()
                    sent_by_step.update(row["step"] for row in rows)
                    for row in rows:
                        first = row["step"] == "welcome" and row["email_id"] not in opened
                        if first and row["contact"] in openers:
                            await http.post(f"/v1/emails/{row['email_id']}/opened")
                            opened.add(row["email_id"])
                    if len(opened) == len(openers) and len(events) < 1:
                        events.append(f"{len(opened)} contacts opened their welcome email")
                    with contextlib.suppress(ConnectionLostError):
                        tree = await client.tree(campaign_id, depth=0, max_children=0)
                        progress.set_children(tree["children_by_status"])
                    await trio.sleep(0.2)

            with Live(render(), console=console, get_renderable=render, refresh_per_second=4):
                async with trio.open_nursery() as watchers:
                    watchers.start_soon(recipients)
                    async with client.subscribe(campaign_id) as envelopes:
                        async for envelope in envelopes:
                            progress.add(envelope)
                    watchers.cancel_scope.cancel()
                # The last frame: the counts once the run ended, with its last envelopes.
                rows = (await http.get("/v1/engagement", params={"campaign": campaign_id})).json()
                sent_by_step.clear()
                sent_by_step.update(row["step"] for row in rows)
                progress.set_children(await final_counts(client, campaign_id))
            result = (await client.get(campaign_id))["result"]
            analytics = await client.call(
                "engine/campaigns/analytics", {"campaign_id": campaign_id}
            )
            stats = (await http.get("/stats")).json()
        await server.stop()
        nursery.cancel_scope.cancel()
    totals = analytics["campaign"]
    console.print(f"campaign onboarding: {json.dumps(result)}")
    console.print(
        "emails per step: " + ", ".join(f"{s} {n}" for s, n in sorted(sent_by_step.items()))
    )
    console.print(
        f"analytics: {totals['enrolled']} enrolled, {totals['completed']} completed, "
        f"{totals['emails_sent']} emails sent, {totals['emails_opened']} opened; "
        f"the notification service sent {stats['sends']} for as many keys"
    )
    return {
        "result": result,
        "sent_by_step": dict(sent_by_step),
        "analytics": analytics,
        "stats": stats,
        "openers": len(openers),
    }


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m sluiceway.demos.drip [--dir PATH] [--contacts N] [--day-seconds S]``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dir", type=Path, help="keep the stores here (default: a temp dir)")
    parser.add_argument("--contacts", type=int, default=30, help="contacts to enroll (>= 2)")
    parser.add_argument(
        "--day-seconds",
        type=float,
        default=3.0,
        help="how long a day of the campaign lasts, in seconds (default 3; 86400: real time)",
    )
    args = parser.parse_args(argv)
    if args.contacts < 2:
        parser.error("--contacts must be >= 2")
    if not 0 < args.day_seconds <= DAY:
        parser.error(f"--day-seconds must be in (0, {DAY}]")
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.dir if args.dir is not None else Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        if (workdir / "engine.db").exists():
            parser.error(f"{workdir} holds an engine.db already: the demo starts afresh")
        trio.run(lambda: main(workdir=workdir, count=args.contacts, day_seconds=args.day_seconds))
        if args.dir is not None:
            print(f"inspect it: sluiceway graph --db {workdir / 'engine.db'} tree onboarding")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
