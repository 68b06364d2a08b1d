"""The story application under ``sluiceway serve``, SIGKILLed again and again while its images
generate: six stories (one of 8 images, high quality and 16:9, one of 7, one that waits for a
reviewer), created one after the other against the real image service, where each new image
takes about a second, while the server process is killed some fifteen times: just as a
story's first images are in flight, with some of a story's images done and others in flight,
just as a story has its last image and assembles its page, while the reviewed story waits in
a server's run, once it is parked (a server lived long enough for its wait to park), and just
after it is approved. Each time a new server is started on the same store and port, and
nothing else is done: it goes on by itself. At the end every story has its page with every
image inline, the image service generated each image once under its entity's key and nothing
else, and an image entity seen finished at a kill, or at any look of the test, was never
asked for again: a finished image is not requested again, whatever the service's
de-duplication would have answered."""

from __future__ import annotations

import base64
import collections
import json
import re
import sqlite3
import time
from functools import partial
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from sluiceway import EntityStatus, Runtime, open_runtime
from sluiceway.apps.imagegen import FaultRule, FileBlobStore, ImageFaults, serve_images
from sluiceway.apps.stories import TYPES
from sluiceway.client import Client, connect
from sluiceway.demos.live import ServerProcess
from tests.apps.engine.crash_stack import MIN_ALIVE, Kill
from tests.apps.stories.crash_helpers import (
    APPROVED,
    ASSEMBLING,
    AWAITING,
    MIXED,
    PARKED,
    STARTING,
    Snapshot,
    StorySpec,
    image_key,
    observe,
    read_store,
    watch_for_assembly,
)

#: The server's leases, renewed every second, as in the engine's crash test: each server
#: lives at least ``MIN_ALIVE`` (a second) after it listens, through a heartbeat, so that the
#: runtime's crash-loop guard (a run abandoned by three dying processes in a row, none of
#: which did anything after starting it, is failed) never blames a story for the kills.
LEASE_SECONDS = 3.0
#: A server not killed at the moment it was meant for by then is killed anyway.
MAX_ALIVE = 2.5
#: How often the test looks at the stories and the service while a server lives.
LOOK = 0.03
#: How soon after the approval its kill comes.
AFTER_APPROVAL = 0.05
MIN_KILLS = 10
#: A message wait parks once it has waited this long in one run (``open_runtime``'s default
#: ``park_after``, which ``sluiceway serve`` keeps): only a server living that long sees the
#: reviewed story park; before, each new server takes its wait up again in a run.
PARK_AFTER = 10.0
SEED = 20260302
#: Each new image takes 1 to 1.3 s (the high-quality story's 1.2 to 1.5 s), so that a batch of
#: a story's images started as a server starts is still in flight when it has lived a second,
#: and its last image comes just after; a repeat of a key is answered at once. (A request in
#: flight at a kill goes on in the service: the next server's repeat finds its image.)
FAULTS = ImageFaults(
    latency=1.0,
    jitter=0.3,
    seed=SEED,
    rules=(FaultRule(match="story-pipeline-otter", latency=1.2),),
)

APPROVAL = "owl"
STORIES = {
    spec.name: spec
    for spec in (
        StorySpec(name="fox", topic="a brave fox who wanted to see the sea"),
        StorySpec(
            name=APPROVAL,
            topic="a sleepy owl learning to read",
            customization={"illustration_style": "pencil-sketch"},
            require_approval=True,
        ),
        StorySpec(
            name="otter",
            topic="an otter building a raft",
            customization={
                "illustration_style": "watercolor",
                "image_quality": "high",
                "aspect_ratio": "16:9",
                "num_illustrations": 8,
            },
        ),
        StorySpec(
            name="heron",
            topic="a heron who collects lost buttons",
            customization={"illustration_style": "cartoon", "image_quality": "low"},
        ),
        StorySpec(
            name="lynx",
            topic="a lynx under the northern lights",
            customization={
                "illustration_style": "paper-cut",
                "aspect_ratio": "4:3",
                "num_illustrations": 7,
            },
        ),
        StorySpec(
            name="badger",
            topic="a badger who bakes bread",
            customization={"illustration_style": "pixel-art", "aspect_ratio": "9:16"},
        ),
    )
}


@attrs.frozen(kw_only=True)
class Life:
    """One server's life: the stories the test creates ``create_at`` seconds after the server
    listens, whether it approves the reviewed story (once the server lived ``MIN_ALIVE``, and
    kills it ``AFTER_APPROVAL`` later), the moment it kills the server at otherwise (``aim``,
    one of the labels of :meth:`Snapshot.labels`), and how long the server lives at most."""

    aim: str
    create: tuple[str, ...] = ()
    create_at: float = 0.0
    approve: bool = False
    max_alive: float = MAX_ALIVE


#: The server's lives, each ending in a kill (but the last one's, if every story has its page
#: first). A story created 0.7 s into a life has its first images in flight, none done, when
#: the server has lived a second; a life aimed at the assembly kills as soon as the last image
#: entity of a story completes (the 5-image stories' last images start as the next server
#: starts, and end a second or so later); the life aimed at the parked story lasts until it
#: parks, ``PARK_AFTER`` seconds into it.
PLAN = (
    Life(aim=MIXED, create=("fox", APPROVAL)),
    Life(aim=ASSEMBLING),
    Life(aim=STARTING, create=("otter",), create_at=0.7),
    Life(aim=MIXED),
    Life(aim=MIXED),
    Life(aim=STARTING, create=("heron",), create_at=0.7),
    Life(aim=ASSEMBLING),
    Life(aim=PARKED, max_alive=PARK_AFTER + 5.0),
    Life(aim=APPROVED, approve=True),
    Life(aim=ASSEMBLING),
    Life(aim=STARTING, create=("lynx",), create_at=0.7),
    Life(aim=MIXED),
    Life(aim=ASSEMBLING),
    Life(aim=STARTING, create=("badger",), create_at=0.7),
    Life(aim=ASSEMBLING),
)


@attrs.frozen(kw_only=True)
class KillPoint:
    kill: Kill
    before: Snapshot  # the test's last look through the server, just before the kill
    after: Snapshot  # the store (read once the server was dead) and the service's counts then


@attrs.define
class Crashes:
    """The server's lives and kills, and what they left to check."""

    server: ServerProcess
    store: Path
    http: httpx.AsyncClient
    t0: float = attrs.field(factory=time.time)
    ids: dict[str, str] = attrs.field(factory=dict)  # story ids by name
    points: list[KillPoint] = attrs.field(factory=list)
    last: Snapshot = attrs.field(init=False)  # the last look
    # Each image entity seen COMPLETED, and its key's requests at the first such look.
    first_seen: dict[str, int] = attrs.field(factory=dict)

    def all_done(self, snapshot: Snapshot) -> bool:
        return len(self.ids) == len(STORIES) and snapshot.done(STORIES)

    async def look(self, client: Client) -> Snapshot:
        snapshot = await observe(client, self.http, self.ids)
        for entity_id, requests in snapshot.completed().items():
            self.first_seen.setdefault(entity_id, requests)
        return snapshot

    async def live(self, client: Client, life: Life, started: float) -> KillPoint | None:
        """Live through one server's ``life`` (it listens since ``started``) and kill it at
        the moment it aims at (never before it lived ``MIN_ALIVE``), or once it lived its
        ``max_alive``; returns the kill, or ``None`` (and no kill) if every story has its
        page first."""
        await trio.sleep(max(0.0, started + life.create_at - now()))
        for name in life.create:
            answer = await client.call("stories/create", STORIES[name].body())
            self.ids[name] = answer["story_id"]
        async with trio.open_nursery() as watchers:
            self.last = await self.look(client)
            assembling = trio.Event()
            if life.aim == ASSEMBLING:
                for name in self.last.generating():
                    total = self.last.status[name]["images_total"]
                    watchers.start_soon(
                        partial(
                            watch_for_assembly,
                            client,
                            self.ids[name],
                            total,
                            not_before=started + MIN_ALIVE,
                            ready=assembling,
                        )
                    )
            # A story that has its last image assembles its page in moments: the kill comes
            # at once, in the middle of a look if need be (the last look stands for it).
            due = ASSEMBLING
            with trio.CancelScope() as waiting:
                watchers.start_soon(cancel_when, assembling, waiting)
                due = await self.until_due(client, life, started)
            if due is None:
                watchers.cancel_scope.cancel()
                return None
            await self.server.kill()
            alive = now() - started
            watchers.cancel_scope.cancel()
        # The store as the kill left it, and the service's counts right after it.
        after = Snapshot(at=now(), status=read_store(self.store), counts=await counts(self.http))
        labels = after.labels(APPROVAL) + ((APPROVED,) if due == APPROVED else ())
        kill = Kill(at=after.at - self.t0, alive=alive, labels=labels or ("other",))
        return KillPoint(kill=kill, before=self.last, after=after)

    async def until_due(self, client: Client, life: Life, started: float) -> str | None:
        """Look until the server is to be killed: returns :data:`APPROVED` once the
        reviewed story was approved, else the label of the moment (or ``"max_alive"``);
        ``None`` if every story has its page first."""
        while not self.all_done(self.last):
            alive = now() - started
            if alive >= MIN_ALIVE:
                if life.approve:
                    await client.call("stories/approve", {"story_id": self.ids[APPROVAL]})
                    await trio.sleep(AFTER_APPROVAL)
                    return APPROVED
                if life.aim != ASSEMBLING and life.aim in self.last.labels(APPROVAL):
                    return life.aim
                if alive >= life.max_alive:
                    return "max_alive"
            await trio.sleep(LOOK)
            self.last = await self.look(client)
        return None


async def cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def now() -> float:
    return time.time()


async def counts(http: httpx.AsyncClient) -> dict[str, dict[str, int]]:
    answer = await http.get("/v1/images/counts")
    answer.raise_for_status()
    keys: dict[str, dict[str, int]] = answer.json()["keys"]
    return keys


async def crash_as_planned(crashes: Crashes, nursery: trio.Nursery, url: str) -> str:
    """Live through :data:`PLAN`, killing the server at the end of each life and starting a
    new one on the same store and port; returns the URL of the last one, which is left to
    finish the stories."""
    started = crashes.t0 = now()
    for life in PLAN:
        async with connect(url) as client:
            point = await crashes.live(client, life, started)
        if point is None:
            break  # every story has its page: nothing left to kill it for
        crashes.points.append(point)
        url = await crashes.server.start(nursery)
        started = now()
    return url


async def wait_until_done(client: Client, crashes: Crashes) -> Snapshot:
    """Look until every story has its page and its run has ended; returns the last look."""
    while True:
        snapshot = await crashes.look(client)
        if snapshot.done(STORIES):
            return snapshot
        await trio.sleep(0.1)


@pytest.mark.slow
async def test_stories_survive_repeated_sigkills_while_their_images_generate_each_once(
    tmp_path: Path,
) -> None:
    images_db, blob_dir, store = tmp_path / "images.db", tmp_path / "blobs", tmp_path / "stories.db"
    log = tmp_path / "server.log"
    with trio.fail_after(240):  # a safety net only
        async with trio.open_nursery() as nursery:
            image_url = await nursery.start(
                partial(serve_images, images_db, blob_dir, faults=FAULTS)
            )
            server = ServerProcess(
                store,
                image_url,  # SLUICEWAY_NOTIFY_URL, which the story application does not read
                log,
                app="sluiceway.apps.stories:app",
                env={"SLUICEWAY_IMAGE_URL": image_url, "SLUICEWAY_BLOB_DIR": str(blob_dir)},
                lease_seconds=LEASE_SECONDS,
            )
            async with httpx.AsyncClient(base_url=image_url, timeout=30) as http:
                crashes = Crashes(server, store, http)
                url = await server.start(nursery)
                url = await crash_as_planned(crashes, nursery, url)
                async with connect(url) as client:
                    with trio.fail_after(120):
                        final = await wait_until_done(client, crashes)
                    pages = {
                        name: await client.call("stories/html", {"story_id": story_id})
                        for name, story_id in crashes.ids.items()
                    }
                keys = await counts(http)
                stats = (await http.get("/stats")).json()
            await server.stop()
            nursery.cancel_scope.cancel()

    points = crashes.points
    by_label = collections.Counter(label for p in points for label in p.kill.labels)
    suspected = log.read_text().count("abandoned by dying processes")
    print(f"{len(points)} kills, {dict(by_label)}; {stats}; {suspected} suspected runs")
    for p in points:
        kill = p.kill
        print(f"  at {kill.at:6.2f} s (alive {kill.alive:4.2f} s): {', '.join(kill.labels)}")
        print(f"    {p.after.summary()}")
    # At least ten kills while images generated (a story's images in flight, or its page
    # being assembled), covering a story's first images in flight, images in flight next to
    # finished ones, and the reviewed story waiting in a run, parked, and just approved.
    generating = [p for p in points if {STARTING, MIXED, ASSEMBLING} & set(p.kill.labels)]
    assert len(generating) >= MIN_KILLS, by_label
    for label in (STARTING, MIXED, AWAITING, PARKED, APPROVED):
        assert by_label[label] >= 1, (label, by_label)
    # Kills that left finished images in a story still to finish: its next run found them.
    finished_left = sum(
        1
        for p in points
        for name, status in p.after.status.items()
        for image in status["images"]
        if image["status"] == "COMPLETED" and status["stage"] != "completed"
    )
    assert finished_left > 0

    # The stories: each completed, every image generated and inline in its page.
    for name, spec in STORIES.items():
        status = final.status[name]
        assert status["stage"] == "completed", status
        assert status["status"] == "completed", status
        assert status["run"] == "COMPLETED", status
        assert status["images_total"] == spec.images
        assert status["images_generated"] == spec.images
        assert status["images_failed"] == 0
        assert [image["status"] for image in status["images"]] == ["COMPLETED"] * spec.images
        page = pages[name]["html"]
        assert "{{IMAGE_" not in page
        assert len(re.findall(r'<img src="data:image/[a-z]+;base64,', page)) == spec.images

    # The service: one image per image entity under its key, none for anything else.
    entities = {
        image["entity_id"]: name for name, s in final.status.items() for image in s["images"]
    }
    assert len(entities) == sum(spec.images for spec in STORIES.values())
    assert set(keys) == {image_key(entity_id) for entity_id in entities}
    assert all(count["generations"] == 1 for count in keys.values()), keys
    assert stats["generations"] == len(entities)
    assert stats["failures"] == 0

    # A finished image is never asked for again: at every kill (the last look before it, and
    # the store as the kill left it), and at every look of the test, each image entity
    # COMPLETED then has as many requests under its key as it has now.
    for p in points:
        for snapshot in (p.before, p.after):
            for entity_id, requests in snapshot.completed().items():
                assert keys[image_key(entity_id)]["requests"] == requests, (p.kill, entity_id)
    assert set(crashes.first_seen) == set(entities)
    for entity_id, requests in crashes.first_seen.items():
        assert keys[image_key(entity_id)]["requests"] == requests, entity_id

    # The store: each pipeline and each image ran to completion once; each image's bytes are
    # in the blob store under the key the service recorded for it, and inline in its page.
    with sqlite3.connect(images_db) as conn:
        recorded = {
            key: json.loads(result)
            for key, result in conn.execute("SELECT key, result FROM images").fetchall()
        }
    blobs = FileBlobStore(blob_dir)
    attempts: dict[str, int] = {}
    async with open_runtime(store, TYPES, work=False) as runtime:
        for name, story_id in crashes.ids.items():
            pipeline = await runtime.get(story_id)
            assert pipeline.status is EntityStatus.COMPLETED
            assert pipeline.result["status"] == "completed"
            assert pipeline.result["images_generated"] == STORIES[name].images
            await ran_once(runtime, story_id)
            attempts[name] = pipeline.attempt
            images = sorted(
                (c for c in await runtime.children(story_id) if c.type == "ImageGeneration"),
                key=lambda c: int(c.data["placeholder"].strip("{}").removeprefix("IMAGE_")),
            )
            inline = []
            for image in images:
                assert image.status is EntityStatus.COMPLETED
                assert image.name == f"image-{image.data['placeholder']}"
                await ran_once(runtime, image.id)
                object_key = image.result["object_key"]
                assert recorded[image_key(image.id)]["object_key"] == object_key
                data = await blobs.get(object_key)  # checks the bytes against the key's hash
                assert len(data) == image.result["bytes"]
                inline.append(data)
            shown = re.findall(r'<img src="data:image/[a-z]+;base64,([^"]+)"', pages[name]["html"])
            assert [base64.b64decode(b) for b in shown] == inline
    print(f"runs of each story's pipeline: {attempts}")


async def ran_once(runtime: Runtime, entity_id: str) -> None:
    """The entity's run ended once, COMPLETED, returning its result once."""
    envelopes = await runtime.envelopes(entity_id, subtree=False)
    ends = [e.status for e in envelopes if e.is_terminal]
    returns = [e for e in envelopes if e.type == "VALUE" and e.sub_type == "return"]
    assert ends == ["COMPLETED"], (entity_id, ends)
    assert len(returns) == 1, entity_id
