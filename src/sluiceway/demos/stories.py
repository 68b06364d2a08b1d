"""The main job's third part: seed 002's illustrated stories, live, crashed and resumed.

``python -m sluiceway.demos.stories`` (run by ``nox -s demo`` after the campaign demos) starts,
on 127.0.0.1:

* the image service (SQLite, de-duplicating by idempotency key, rendering real pictures with
  Pillow into a content-addressed blob directory, each taking about a second and a half; the
  fourth image of the lighthouse story always fails),
* ``sluiceway serve --app sluiceway.apps.stories:app`` as a separate process, on the embedded
  SQLite store,

then, as a client over WebSockets, asks for four stories with their own customizations. One
needs a reviewer's approval: it waits for it, parked, and the demo approves it a moment later.
The stories' images are generated 3 per story and 10 at a time in all; their progress is shown
live. Once a few images are done the server is killed with SIGKILL and a new one is started on
the same store and port: it resumes every story without generating a finished image again. The
pages are written as HTML files (the failed image's placeholder left in its place) and the image
service's counts show one generation per image.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import trio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..apps.imagegen import FaultRule, ImageFaults, serve_images
from ..apps.stories import FINAL_STAGES
from ..cli._progress import display_console
from ..client import Client, ConnectionLostError, connect
from .live import ServerProcess

#: The stories asked for: (name, topic, customization, whether a reviewer must approve it).
STORIES: list[tuple[str, str, dict[str, Any], bool]] = [
    ("brave-kitten", "a brave kitten who learns to swim", {}, True),
    ("lighthouse", "a lighthouse keeper and the great storm",
     {"illustration_style": "watercolor", "num_illustrations": 6}, False),
    ("lost-robot", "a lost robot who finds a secret garden",
     {"illustration_style": "pixel-art", "image_quality": "low", "aspect_ratio": "16:9",
      "num_illustrations": 4}, False),
    ("owl-library", "an owl who runs a night library",
     {"illustration_style": "paper-cut", "aspect_ratio": "1:1"}, False),
]  # fmt: skip

#: The image that always fails (the service answers 500 for it; its placeholder stays).
BROKEN = FaultRule(match=("story-pipeline-lighthouse", "{{IMAGE_4}}"), fail_status=500)


def _table(status: dict[str, dict[str, Any]], in_flight: int) -> Table:
    table = Table(title=f"stories (images generating now: {in_flight}, at most 10)")
    for column in ("story", "stage", "images", "failed"):
        table.add_column(column)
    for name, *_ in STORIES:
        s = status.get(name, {})
        total = s.get("images_total") or "?"
        table.add_row(
            name,
            str(s.get("stage", "...")),
            f"{s.get('images_generated', 0)}/{total}",
            str(s.get("images_failed", 0)),
        )
    return table


async def main(
    *,
    workdir: Path,
    latency: float = 1.5,
    kill_after: int | None = 6,
    approve_after: float = 2.0,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the demo in ``workdir``; returns the stories' final status, the pages' paths and
    the image service's counts. ``kill_after``: SIGKILL the server once this many images are
    done in all (``None``: never)."""
    console = console or display_console()
    faults = ImageFaults(latency=latency * 2 / 3, jitter=latency * 2 / 3, seed=2, rules=(BROKEN,))
    blobs = workdir / "blobs"
    events: list[str] = []
    status: dict[str, dict[str, Any]] = {}
    in_flight = 0

    async with trio.open_nursery() as nursery:
        image_url = await nursery.start(
            functools.partial(serve_images, workdir / "images.db", blobs, faults=faults)
        )
        server = ServerProcess(
            workdir / "stories.db",
            image_url,
            workdir / "server.log",
            app="sluiceway.apps.stories:app",
            env={"SLUICEWAY_IMAGE_URL": image_url, "SLUICEWAY_BLOB_DIR": str(blobs)},
        )
        url = await server.start(nursery)
        console.print(f"image service on {image_url}; story server on {url}")
        async with (
            httpx.AsyncClient(base_url=image_url) as http,
            connect(url, reconnect_timeout=60) as client,
        ):
            ids = await _create(client)
            console.print(
                f"follow one from another terminal: sluiceway run {ids['lighthouse']} --url {url}"
            )

            def render() -> Group:
                lines = [Text(event, style="yellow") for event in events]
                return Group(_table(status, in_flight), *lines)

            approved = killed = False
            with Live(render(), console=console, get_renderable=render, refresh_per_second=4):
                while True:
                    with contextlib.suppress(ConnectionLostError):  # while it restarts
                        for name, story_id in ids.items():
                            status[name] = await client.call(
                                "stories/status", {"story_id": story_id}
                            )
                    in_flight = (await http.get("/stats")).json()["inFlight"]
                    if all(s["stage"] in FINAL_STAGES for s in status.values()):
                        break
                    kitten = status.get("brave-kitten", {})
                    if not approved and kitten.get("stage") == "awaiting_approval":
                        approved = True
                        events.append("brave-kitten awaits a reviewer's approval (parked)")
                        await trio.sleep(approve_after)
                        await client.call(
                            "stories/approve",
                            {"story_id": ids["brave-kitten"], "reviewer": "the demo"},
                        )
                        events.append("brave-kitten approved: its images start")
                    done = sum(s.get("images_generated", 0) for s in status.values())
                    if kill_after is not None and not killed and done >= kill_after:
                        killed = True
                        await server.kill()
                        events.append(
                            f"server killed (SIGKILL) with {done} images done and "
                            f"{in_flight} generating"
                        )
                        await server.start(nursery)
                        events.append(f"server restarted on port {server.port}: it resumes")
                    await trio.sleep(0.3)
            console.print()
            pages = await _write_pages(client, ids, workdir)
            counts = (await http.get("/v1/images/counts")).json()["keys"]
            stats = (await http.get("/stats")).json()
        await server.stop()
        nursery.cancel_scope.cancel()
    twice = sum(1 for c in counts.values() if c["generations"] > 1)
    for name, s in status.items():
        console.print(
            f"{name}: {s['status']}, {s['images_generated']}/{s['images_total']} images "
            f"({s['images_failed']} failed) -> {pages[name]}"
        )
    console.print(
        f"the image service generated {stats['generations']} images for {len(counts)} keys, "
        f"{twice} of them twice; it answered {stats['repeats']} repeated requests from the "
        f"stories it had already made (in flight at the kill) and {stats['failures']} failures"
    )
    return {"status": status, "pages": pages, "counts": counts, "stats": stats}


async def _create(client: Client) -> dict[str, str]:
    ids = {}
    for name, topic, customization, approval in STORIES:
        made = await client.call(
            "stories/create",
            {
                "topic": topic,
                "name": name,
                "customization": customization,
                "require_approval": approval,
            },
        )
        ids[name] = made["story_id"]
    return ids


async def _write_pages(client: Client, ids: dict[str, str], workdir: Path) -> dict[str, str]:
    pages = {}
    for name, story_id in ids.items():
        page = await client.call("stories/html", {"story_id": story_id})
        path = trio.Path(workdir / f"{name}.html")
        await path.write_text(page["html"], encoding="utf-8")
        pages[name] = str(path)
    return pages


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m sluiceway.demos.stories [--dir PATH] [--latency S] [--kill-after N]``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--dir",
        type=Path,
        help="where the stores and pages go (default: a new temporary directory, kept)",
    )
    parser.add_argument(
        "--latency", type=float, default=1.5, help="mean seconds per image (default 1.5)"
    )
    parser.add_argument(
        "--kill-after",
        type=int,
        default=6,
        help="SIGKILL the server once this many images are done (default 6; -1: never)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.latency <= 60:
        parser.error("--latency must be in [0, 60]")
    kill_after = None if args.kill_after < 0 else args.kill_after
    # The pages are the point: they stay where they were written (a new directory by default).
    workdir = args.dir if args.dir is not None else Path(tempfile.mkdtemp(prefix="stories-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "stories.db").exists():
        parser.error(f"{workdir} holds a stories.db already: the demo starts afresh")
    trio.run(lambda: main(workdir=workdir, latency=args.latency, kill_after=kill_after))
    print(f"the pages are in {workdir}; the entity graph of one story:")
    print(f"  sluiceway graph --db {workdir / 'stories.db'} tree story-pipeline-lighthouse")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
