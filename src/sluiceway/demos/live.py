"""The main job: seed 000's campaign application, served live, crashed and resumed.

``python -m sluiceway.demos.live`` (``nox -s demo``) starts, on 127.0.0.1:

* the notification service (SQLite, de-duplicating by idempotency key, with latency and one
  address that bounces),
* ``sluiceway serve --app sluiceway.apps.campaigns:app`` as a separate process, on the embedded
  SQLite store,

then, as a client over WebSockets, imports contacts, creates and approves a template, creates
two campaigns from tag filters and executes both: they send 3 at a time each and 5 at a time
together. Their progress is shown live. Partway through, the server process is killed with
SIGKILL; a new one is started on the same store and port. It resumes the campaigns by itself,
the client reconnects and resumes its subscriptions where they stopped, and the notification
service shows one send per recipient: nothing was sent twice. One address bounces on purpose
(:data:`BOUNCING`): its recipient fails alone, and the campaign goes on.

The stores stay in the directory the demo prints at the end (``--dir``, else a new temporary
directory), to be read with ``sluiceway graph``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
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

_FIRST = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jun"]
_LAST = ["Lee", "Ray", "Oh", "Park", "Diaz", "Khan", "Novak", "Ito"]
#: The address the notification service refuses (its recipient fails; the campaign goes on).
BOUNCING = "eve.lee@example.com"
#: How the demo explains it.
BOUNCE_NOTE = (
    f"{BOUNCING} bounces: the notification service refuses it on purpose, to show a failure. "
    "Its recipient fails alone (counted as failed), and the campaign goes on"
)


def contacts(count: int) -> list[dict[str, Any]]:
    """``count`` contacts: every one tagged ``spring``, every third also ``vip``."""
    out = []
    for n in range(count):
        first, last = _FIRST[n % len(_FIRST)], _LAST[(n // len(_FIRST)) % len(_LAST)]
        email = f"{first}.{last}".lower() + ("" if n < 80 else str(n)) + "@example.com"
        tags = ["spring"] + (["vip"] if n % 3 == 0 else [])
        out.append(
            {
                "first_name": first,
                "last_name": last,
                "email": email,
                "company": f"Company {n % 7}",
                "tags": tags,
            }
        )
    return out


class ServerProcess:
    """``sluiceway serve`` in a child process, killed and restarted at will."""

    def __init__(
        self,
        db: Path,
        notify_url: str,
        log: Path,
        *,
        app: str = "sluiceway.apps.campaigns:app",
        env: Mapping[str, str] | None = None,
        lease_seconds: float = 10.0,
    ) -> None:
        """``app``: the application to serve (``module:name``); ``env``: more environment
        variables for it (``SLUICEWAY_ENGINE_TIME_SCALE``); ``lease_seconds``: its
        ``--lease-seconds`` (its runs' leases are renewed every third of it)."""
        self.db, self.notify_url, self.log = db, notify_url, log
        self.app = app
        self.env = dict(env or {})
        self.lease_seconds = lease_seconds
        self.port = 0
        self.process: trio.Process | None = None

    async def start(self, nursery: trio.Nursery) -> str:
        """Start it (on the port of the last one, if any) and return its URL."""
        env = {**os.environ, "SLUICEWAY_NOTIFY_URL": self.notify_url, **self.env}
        command = [
            sys.executable, "-m", "sluiceway", "serve",
            "--app", self.app,
            "--db", str(self.db), "--port", str(self.port),
            "--lease-seconds", str(self.lease_seconds),
        ]  # fmt: skip
        with self.log.open("ab") as log:
            process: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    command,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env=env,
                    check=False,
                )
            )
        self.process = process
        assert process.stdout is not None
        line = b""
        with trio.fail_after(60):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                if not chunk:
                    raise RuntimeError(f"the server exited early; see {self.log}")
                line += chunk
        url = line.decode().split(" on ", 1)[1].split(" ", 1)[0]
        self.port = int(url.rsplit(":", 1)[1])
        return url

    async def kill(self) -> None:
        """SIGKILL: the process stops mid-write, with its leases held."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM, and wait for the clean shutdown."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(30):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


async def setup(client: Client, count: int) -> dict[str, str]:
    """Contacts, an approved template and two draft campaigns; returns the campaigns' ids."""
    await client.call("contacts/import", {"contacts": contacts(count)})
    template = await client.call(
        "templates/create",
        {
            "name": "spring-offer",
            "subject_template": "{{ first_name }}, our spring offer",
            "body_html": "<p>Dear {{ full_name }} at {{ company }}: spring is here.</p>",
        },
    )
    await client.call("templates/approve", {"template_id": template["template_id"]})
    ids = {}
    for label, tag in (("spring", "spring"), ("vip", "vip")):
        made = await client.call(
            "campaigns/create",
            {"name": label, "template_id": template["template_id"], "tag_filter": [tag]},
        )
        ids[label] = made["campaign_id"]
    return ids


async def main(
    *,
    workdir: Path,
    count: int = 60,
    kill_after: int | None = 20,
    latency: float = 0.3,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the demo in ``workdir``; returns the campaigns' results and the service's stats.

    ``kill_after``: SIGKILL the server once this many emails were sent (``None``: never).
    """
    console = console or display_console()
    faults = Faults(latency=latency, jitter=latency, fail_recipients=(BOUNCING,), seed=7)
    progress: dict[str, RunProgress] = {}
    events: list[str] = []
    stats: dict[str, Any] = {}

    def render() -> Group:
        lines = [Text(f"notification service: {_stats_line(stats)}", style="bold")]
        lines += [Text(event, style="yellow") for event in events]
        return Group(*lines, *(p.render() for p in progress.values()))

    async with trio.open_nursery() as nursery:
        notify_url = await nursery.start(
            functools.partial(serve_notifications, workdir / "notifications.db", faults=faults)
        )
        server = ServerProcess(workdir / "campaigns.db", notify_url, workdir / "server.log")
        url = await server.start(nursery)
        console.print(f"notification service on {notify_url}; campaign server on {url}")
        async with (
            httpx.AsyncClient(base_url=notify_url) as http,
            connect(url, reconnect_timeout=60) as client,
        ):
            ids = await setup(client, count)
            events.append(BOUNCE_NOTE)
            for label, campaign_id in ids.items():
                answer = await client.call("campaigns/execute", {"campaign_id": campaign_id})
                events.append(f"campaign {label}: {answer['total_recipients']} recipients")
                progress[label] = RunProgress(campaign_id, messages=4)
            killed = trio.Event()

            async def refresh_counts() -> None:
                for label, campaign_id in ids.items():
                    tree = await client.tree(campaign_id, depth=0, max_children=0)
                    progress[label].set_children(tree["children_by_status"])

            async def last_counts() -> None:
                for label, campaign_id in ids.items():
                    progress[label].set_children(await final_counts(client, campaign_id))

            async def watch_stats() -> None:
                while True:
                    stats.update((await http.get("/stats")).json())
                    with contextlib.suppress(ConnectionLostError):  # while it restarts
                        await refresh_counts()
                    due = kill_after is not None and stats["sends"] >= kill_after
                    if due and not killed.is_set():
                        killed.set()
                        await server.kill()
                        events.append(
                            f"server killed (SIGKILL) after {stats['sends']} sends; "
                            "starting a new one on the same store"
                        )
                        await server.start(nursery)
                        events.append(f"server restarted on port {server.port}")
                    await trio.sleep(0.1)

            async def follow(label: str) -> None:
                async with client.subscribe(ids[label]) as envelopes:
                    async for envelope in envelopes:
                        progress[label].add(envelope)

            with Live(render(), console=console, get_renderable=render, refresh_per_second=4):
                async with trio.open_nursery() as watchers:
                    watchers.start_soon(watch_stats)
                    async with trio.open_nursery() as followers:
                        for label in ids:
                            followers.start_soon(follow, label)
                    watchers.cancel_scope.cancel()
                # The last frame: the counts once the runs ended, with the last envelopes.
                stats.update((await http.get("/stats")).json())
                await last_counts()
            results = {label: (await client.get(i))["result"] for label, i in ids.items()}
            children = {
                label: (await client.tree(i, depth=0))["children_by_status"]
                for label, i in ids.items()
            }
        await server.stop()
        nursery.cancel_scope.cancel()
    for label, result in results.items():
        console.print(f"campaign {label}: {json.dumps(result)}", soft_wrap=True)
        if result.get("failed_count"):
            console.print(
                f"  {result['failed_count']} failed: {BOUNCING} bounced (refused on purpose)",
                soft_wrap=True,
            )
    console.print(
        f"notification service: {stats['sends']} emails sent for "
        f"{sum(r['sent_count'] for r in results.values())} recipients sent to, "
        f"{stats['repeats']} repeated requests answered from the idempotency key, "
        f"{stats['failures']} refused ({BOUNCING})",
        soft_wrap=True,
    )
    console.print(f"client reconnections: {client.reconnections}")
    return {
        "results": results,
        "children": children,
        "stats": dict(stats),
        "reconnections": client.reconnections,
    }


def _stats_line(stats: Mapping[str, Any]) -> str:
    if not stats:
        return "starting"
    return (
        f"{stats.get('sends', 0)} emails sent, {stats.get('failures', 0)} refused, "
        f"{stats.get('repeats', 0)} repeated requests, {stats.get('inFlight', 0)} in flight"
    )


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m sluiceway.demos.live [--dir PATH] [--contacts N] [--kill-after N]``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--dir",
        type=Path,
        help="where the stores go (default: a new temporary directory, kept)",
    )
    parser.add_argument("--contacts", type=int, default=60, help="contacts to import (>= 10)")
    parser.add_argument(
        "--kill-after",
        type=int,
        default=20,
        help="SIGKILL the server after this many sends; -1 never (default 20)",
    )
    args = parser.parse_args(argv)
    if args.contacts < 10:
        parser.error("--contacts must be >= 10")
    kill_after = None if args.kill_after < 0 else args.kill_after
    # The stores stay where they were written (a new directory by default), to be inspected.
    workdir = args.dir if args.dir is not None else Path(tempfile.mkdtemp(prefix="campaigns-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "campaigns.db").exists():
        parser.error(f"{workdir} holds a campaigns.db already: the demo starts afresh")
    trio.run(lambda: main(workdir=workdir, count=args.contacts, kill_after=kill_after))
    print(f"the stores are in {workdir}; the entity graph of a campaign:")
    print(f"  sluiceway graph --db {workdir / 'campaigns.db'} tree campaign:vip")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
