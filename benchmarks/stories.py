"""Scenario M: seed 002's story pipeline at scale. 100 stories of 5 images each, all created at
once, under a global limit of 10 images at once and 3 per story, against a real image service
with a fixed latency: the makespan against the work-conserving bound and against an asyncio
baseline (``asyncio.gather`` under two semaphores, the idiomatic way), and the distribution of
the stories' latencies (how fairly the stories share the 10 slots).

What each story does, the same on both sides: its request is checked (the application's own
:class:`~sluiceway.apps.stories.WordListSafetyChecker`), the story is written (its own
:class:`~sluiceway.apps.stories.TemplateWriter`: 5 ``{{IMAGE_n}}`` placeholders with a prompt
each), its 5 images are generated, each a ``POST /v1/images/generate`` to the image service with
its own idempotency key (``ImageGeneration:<image id>:generate``) and its bytes read back from
the blob directory the service writes into (their SHA-256 checked against the key), and one
HTML page is assembled with the images inline (the application's
:func:`~sluiceway.apps.stories.story_html`) and stored in the same blob directory (written to
a temporary file, ``fsync``-ed, renamed). Topics are distinct (``story_topic``), so every
prompt, image and page is distinct.

The image service (``python -m sluiceway.apps.imagegen --db ... --blobs ... --latency L``) runs
in a process of its own, started by the driver for every repetition of each side on fresh files,
so that its CPU (Pillow renders every image) is not counted against either side; it waits
``L`` seconds per new image, then renders it (``quality: low``, a 256x171 JPEG, about 3 ms of
CPU), stores it and records it in its SQLite file. One generation request is sent before the
worker starts (not timed, its key outside the checked prefix), so that the service's first
render (font loading) is not in anybody's makespan.

**The work-conserving bound.** With S stories of I images, at most G images at once in all and
P per story, each image taking L: a scheduler that never leaves a slot idle while an image could
start needs at least ``max(ceil(S*I/G), ceil(I/P)) * L``; here ``ceil(500/10) * 0.2 s = 10 s``
(the per-story term, ``ceil(5/3) * L``, matters only with few stories). The real time per image
is L plus the service's render, store and answer and the client's request and blob read, so
no side reaches 1.00x; the mean number of images in flight over the makespan (the requests'
total time / the makespan, at most 10) shows how well each side keeps the 10 slots busy.

sluiceway side, in a fresh interpreter per repetition (``python -m benchmarks.stories run
sluiceway DIR N QUALITY URL PID``, one JSON line out): ``open_runtime(SqliteStore(path),
app.types, work=False)`` with the runtime's defaults (100 runs at once, claimed 50 at a time),
the story application (:func:`sluiceway.apps.stories.create_app` with ``StoryConfig(image_url,
blob_dir, per_story=3, global_limit=10)`` and a :class:`~sluiceway.apps.imagegen.FileBlobStore`)
entered on it, then its claim loop. A task per story calls the ``stories/create`` endpoint in
process (``EndpointContext(runtime, state)``, ``require_approval: False``), which creates the
``StoryPipeline`` entity and submits it; the claim loop runs it; the task then waits for it
(``runtime.wait``). Each pipeline runs its safety check and its writer as child entities, then
its images as ``ImageGeneration`` children through ``ctx.parallel_calls`` and a
``HierarchicalTaskPoolRunner`` under ``CapacitySource(3, services.global_capacity)`` (the
process-wide ``CapacitySource(10)``), and stores its page.

Baseline, "the idiomatic way", in a fresh interpreter too: ``asyncio.run``, one
``httpx.AsyncClient`` to the same kind of service, a task per story in an ``asyncio.TaskGroup``
doing the same stages with the same functions, its images gathered with ``asyncio.gather``,
each under ``async with story_sem, global_sem`` (``asyncio.Semaphore(3)`` per story,
``asyncio.Semaphore(10)`` for all), the request retried as the application's
``request_with_retries`` does (3 tries, for a transport error, 429 or a 5xx, 0.5 s then
doubling, ``Retry-After`` honoured), the blob read back and checked as ``FileBlobStore.get``
does (in ``asyncio.to_thread``), the page stored as ``FileBlobStore.put`` does. Its durable
state: stdlib ``sqlite3`` on one connection owned by a single-thread executor (WAL,
``synchronous=NORMAL``, foreign keys on; tables ``stories`` and ``images``), one transaction
(``with conn:``) at each of these points: the story created (its row, stage ``created``); each
stage change (``safety_check``; ``writing`` with the safety verdict; ``generating_images`` with
the title, the written story and the image count; ``assembling``); each image started (its row,
``running``, when it holds both semaphores) and each image done (its row ``completed`` with its
result, and the story's ``images_generated`` + 1, in one transaction, before it lets go of the
semaphores); the story completed (stage, status, page key, result). 16 transactions per story.

What the baseline does not do that sluiceway does (both keep the same durable facts at the same
points, but): sluiceway records the safety check and the writer as child entities, with their
results, and every step as a progress envelope (a story's subtree holds 44 envelopes);
every run holds a lease, renewed by a heartbeat and checked by every write (fencing); a crash
resumes every unfinished story from what it stored without generating a finished image again
(the baseline's rows say where a story was, but nothing runs it again); the page is assembled
from the blob store (each image's bytes read a second time), where the baseline keeps the bytes
it read in memory. sluiceway's writes are grouped into transactions by its writer task.

What is measured, in the worker: the **makespan**, from just before the first story is created
until the last one has completed (``time.perf_counter``); the **CPU time of the process** over
the same span (``time.process_time``: every thread, the SQLite and file threads included); each
story's **latency**, from just before its creation to its completion, and their distribution
(min, p50, p90, max and the spread max / min); the image service's CPU over the same span
(``/proc/PID/stat``). The image requests are counted by the same httpx transport on both sides
(:class:`GenerationCounter`): in flight at once (overall and per story), their durations. From
the stores after the run: how long each story took to complete after the stored end of its last
image (``tail_after_last_image_*``), and how long each image held its slot beyond its request
(``hold_outside_request_ms``: the stored start-to-end time less the request's).

Checks on every repetition of both sides: every story completed with its 5 images and its page
(sluiceway: the pipeline ``COMPLETED`` with status ``completed``, its safety check, writer and 5
image children each ``COMPLETED`` at attempt 1, no lease left, the pipeline at stage
``completed``; the baseline: its rows); each page holds exactly the story's 5 images inline,
byte for byte the blobs its image records name, and no missing-image placeholder; the image
service's counts (read before it stops) hold **exactly the 500 keys** the store names, **each
generated once** (and its ``/stats`` 500 generations plus the warm-up, no failure); **no more
than 10 images in flight at once and no more than 3 of one story**, counted three ways: the
requests in flight at the transport, the intervals between each image's start and end stored
by each side (sluiceway: the ``ImageGeneration`` child's STARTED and COMPLETED envelopes; the
baseline: its image row's ``started_at`` and ``finished_at``), and inside every request the
global limiter's own count of held units (sluiceway: the global ``CapacitySource``'s
``borrowed_tokens``; the baseline: the semaphore's value), which must be between 1 and 10;
the limiter idle at the end; ``PRAGMA integrity_check`` ok.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

from sluiceway import SqliteStore, open_runtime
from sluiceway.apps.imagegen import FileBlobStore
from sluiceway.apps.stories import (
    ImagePrompt,
    InlineImage,
    StoryConfig,
    StoryRequest,
    TemplateWriter,
    WordListSafetyChecker,
    WrittenStory,
    create_app,
    story_html,
)
from sluiceway.server import EndpointContext

from .fanout import capacity_probe, semaphore_probe
from .harness import (
    ASYNCIO,
    SLUICEWAY,
    BenchmarkError,
    Metric,
    Params,
    Sample,
    Scenario,
    Summary,
    Target,
    child_env,
    ratio,
    run_worker,
)

T = TypeVar("T")

#: The issue's sizes: stories, images per story, images at once in all and per story.
STORIES, IMAGES, GLOBAL_LIMIT, PER_STORY = 100, 5, 10, 3
#: Seconds the image service waits per new image (full run; ``--quick``: 20 stories and 0.05 s).
LATENCY, QUICK_STORIES, QUICK_LATENCY = 0.2, 20, 0.05
#: The image quality every story asks for (``low``: a 256-pixel JPEG, about 3 ms to render).
QUALITY = "low"
#: The suite's target (as scenario B's): sluiceway's makespan within 10 % of the bound.
TARGET_BOUND_RATIO = 1.10
#: What the application's ``StoryConfig`` defaults to, and the baseline does the same.
IMAGE_ATTEMPTS, RETRY_DELAY, REQUEST_TIMEOUT = 3, 0.5, 120.0
TRANSIENT = frozenset({429, 500, 502, 503, 504})
GENERATE_PATH = "/v1/images/generate"
KEY_PREFIX = "ImageGeneration:"
WARM_UP_KEY = "bench-warm-up"
STORE_FILE, IMAGES_FILE, BLOB_DIR = "stories.db", "images.db", "blobs"
ROOT = Path(__file__).resolve().parents[1]
_IMG = re.compile(r'<img src="data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)"')


# -- the workload, the same on both sides -------------------------------------------------------


def story_slug(i: int) -> str:
    """Story ``i``'s name (its pipeline entity is ``story-pipeline-<slug>``)."""
    return f"story-{i:04d}"


def pipeline_name(i: int) -> str:
    return f"story-pipeline-{story_slug(i)}"


def story_topic(i: int) -> str:
    """Story ``i``'s topic: distinct per story, so its prompts, images and page are too."""
    return f"the lighthouse keeper's cat number {i}"


def customization(quality: str) -> dict[str, Any]:
    return {"image_quality": quality, "num_illustrations": IMAGES}


def image_key(image_id: str) -> str:
    """An image's idempotency key: the application's ``ctx.idempotency_key("generate")``."""
    return f"{KEY_PREFIX}{image_id}:generate"


def work_conserving_bound(
    stories: int, images: int, global_limit: int, per_story: int, latency: float
) -> float:
    """The least makespan any scheduler can reach: ``max(ceil(S*I/G), ceil(I/P)) * L``."""
    return max(math.ceil(stories * images / global_limit), math.ceil(images / per_story)) * latency


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.9: the smallest value with at least 90 % of
    the values at or below it)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def latency_figures(latencies: Sequence[float]) -> dict[str, float]:
    low, high = min(latencies), max(latencies)
    return {
        "latency_min": low,
        "latency_p50": percentile(latencies, 0.5),
        "latency_p90": percentile(latencies, 0.9),
        "latency_max": high,
        "latency_mean": sum(latencies) / len(latencies),
        "latency_spread": high / low if low > 0 else math.inf,
    }


def peak_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals ``(start, end)`` open at one moment (one that ends when another
    starts does not overlap it)."""
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda event: (event[0], event[1]),
    )
    active = peak = 0
    for _, step in events:
        active += step
        peak = max(peak, active)
    return peak


def check_overlaps(by_story: dict[str, list[tuple[float, float]]], where: str) -> dict[str, Any]:
    """No more than :data:`GLOBAL_LIMIT` images between their stored start and end at once, and
    no more than :data:`PER_STORY` of one story."""
    every = [interval for intervals in by_story.values() for interval in intervals]
    bad = [interval for interval in every if not interval[0] <= interval[1]]
    if bad:
        raise BenchmarkError(f"{where}: images that ended before they started: {bad[:3]}")
    overall = peak_overlap(every)
    per_story = max(peak_overlap(intervals) for intervals in by_story.values())
    if overall > GLOBAL_LIMIT or per_story > PER_STORY:
        raise BenchmarkError(
            f"{where}: {overall} images generating at once (limit {GLOBAL_LIMIT}), "
            f"{per_story} of one story (limit {PER_STORY})"
        )
    return {
        "stored_peak": overall,
        "stored_peak_per_story": per_story,
        "stored_seconds_total": sum(end - start for start, end in every),
    }


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> float:
    """CPU seconds the whole machine has been busy so far (every core), from ``/proc/stat``."""
    fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# -- the image requests, counted identically on both sides -------------------------------------


class GenerationCounter(httpx.AsyncBaseTransport):
    """httpx's own transport, counting the ``POST /v1/images/generate`` requests in flight (from
    the request until its answer's headers, which the service sends once the image is stored),
    overall and per story (the request's ``metadata.story``), and timing them. ``probe``
    (set once the limiter exists) returns the global limiter's held units, read as each
    request starts: it must be between 1 and the limit."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.active = 0
        self.peak = 0
        self.requests = 0
        self.per_story: Counter[str] = Counter()
        self.peak_per_story = 0
        self.busy = 0.0
        self.durations: list[float] = []
        self.probe: Callable[[], float] | None = None
        self.held_min: float = math.inf
        self.held_max: float = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != GENERATE_PATH:
            return await self._inner.handle_async_request(request)
        story = str(json.loads(request.content)["metadata"]["story"])
        if self.probe is not None:
            held = self.probe()
            self.held_min, self.held_max = min(self.held_min, held), max(self.held_max, held)
        self.requests += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.per_story[story] += 1
        self.peak_per_story = max(self.peak_per_story, self.per_story[story])
        start = time.perf_counter()
        try:
            return await self._inner.handle_async_request(request)
        finally:
            took = time.perf_counter() - start
            self.busy += took
            self.durations.append(took)
            self.active -= 1
            self.per_story[story] -= 1

    async def aclose(self) -> None:
        await self._inner.aclose()

    def report(self, expected: int) -> dict[str, Any]:
        if self.active:
            raise BenchmarkError(f"{self.active} image requests still in flight at the end")
        if self.peak > GLOBAL_LIMIT or self.peak_per_story > PER_STORY:
            raise BenchmarkError(
                f"{self.peak} image requests in flight at once (limit {GLOBAL_LIMIT}), "
                f"{self.peak_per_story} of one story (limit {PER_STORY})"
            )
        if self.requests < expected:
            raise BenchmarkError(f"{self.requests} image requests sent, expected {expected}")
        if self.probe is None or not 1 <= self.held_min <= self.held_max <= GLOBAL_LIMIT:
            raise BenchmarkError(
                f"the global limiter held {self.held_min}..{self.held_max} units while images "
                f"were requested (expected 1..{GLOBAL_LIMIT})"
            )
        durations = sorted(self.durations)
        return {
            "image_requests": self.requests,
            "peak_in_flight": self.peak,
            "peak_in_flight_per_story": self.peak_per_story,
            "limiter_held_min": self.held_min,
            "limiter_held_max": self.held_max,
            "request_seconds_total": self.busy,
            "request_seconds_median": durations[len(durations) // 2],
            "request_seconds_max": durations[-1],
        }


def _timed_report(
    out: dict[str, Any],
    start: float,
    end: float,
    cpu: float,
    service: tuple[int, float],
    machine: float,
    latencies: Sequence[float],
) -> None:
    out["makespan_seconds"] = end - start
    out["cpu_seconds"] = time.process_time() - cpu
    out["service_cpu_seconds"] = _cpu_of(service[0]) - service[1]
    out["machine_cpu_seconds"] = _machine_cpu() - machine
    out["latencies"] = [round(value, 5) for value in latencies]


# -- sluiceway ----------------------------------------------------------------------------------


def worker_sluiceway(
    directory: str, n: int, quality: str, url: str, service_pid: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    path = str(Path(directory) / STORE_FILE)
    blob_dir = str(Path(directory) / BLOB_DIR)

    async def main() -> None:
        transport = GenerationCounter()
        config = StoryConfig(
            image_url=url, blob_dir=blob_dir, per_story=PER_STORY, global_limit=GLOBAL_LIMIT
        )
        app = create_app(config, blobs=FileBlobStore(blob_dir), transport=lambda: transport)
        store = SqliteStore(path)
        async with (
            open_runtime(store, app.types, work=False) as runtime,
            app.running(runtime) as state,
            runtime.working(),
        ):
            capacity = state.global_capacity
            transport.probe = capacity_probe(capacity)
            create = app.endpoints["stories/create"]
            ctx = EndpointContext(runtime, state)
            latencies = [math.nan] * n
            outcomes: list[Any] = [None] * n

            async def story(i: int) -> None:
                began = time.perf_counter()
                answer = await create(
                    ctx,
                    {
                        "topic": story_topic(i),
                        "name": story_slug(i),
                        "customization": customization(quality),
                        "require_approval": False,
                    },
                )
                outcomes[i] = await runtime.wait(answer["story_id"])
                latencies[i] = time.perf_counter() - began

            machine, service = _machine_cpu(), (service_pid, _cpu_of(service_pid))
            cpu, start = time.process_time(), time.perf_counter()
            with trio.fail_after(_deadline(n)):
                async with trio.open_nursery() as nursery:
                    for i in range(n):
                        nursery.start_soon(story, i)
            end = time.perf_counter()
            _timed_report(out, start, end, cpu, service, machine, latencies)
            for i, outcome in enumerate(outcomes):
                if (
                    not isinstance(outcome, dict)
                    or outcome.get("status") != "completed"
                    or outcome.get("name") != pipeline_name(i)
                    or (outcome.get("images_generated"), outcome.get("images_failed"))
                    != (IMAGES, 0)
                ):
                    raise BenchmarkError(f"story {i} ended with {outcome!r}")
            if capacity.borrowed_tokens != 0:
                raise BenchmarkError(
                    f"the global capacity holds {capacity.borrowed_tokens} units at the end"
                )
            stats = store.statistics()
            out["store_writes"], out["store_transactions"] = stats.writes, stats.batches
            out.update(transport.report(n * IMAGES))

    trio.run(main)
    return out


# -- the asyncio baseline -----------------------------------------------------------------------

SCHEMA = """
CREATE TABLE stories (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    customization TEXT NOT NULL,
    stage TEXT NOT NULL,
    status TEXT NOT NULL,
    title TEXT,
    safety TEXT,
    story TEXT,
    images_total INTEGER NOT NULL DEFAULT 0,
    images_generated INTEGER NOT NULL DEFAULT 0,
    images_failed INTEGER NOT NULL DEFAULT 0,
    html_key TEXT,
    result TEXT,
    created_at REAL NOT NULL,
    modified_at REAL NOT NULL,
    completed_at REAL
);
CREATE TABLE images (
    id TEXT PRIMARY KEY,
    story_id TEXT NOT NULL REFERENCES stories (id),
    placeholder TEXT NOT NULL,
    prompt TEXT NOT NULL,
    alt_text TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    result TEXT,
    error TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    UNIQUE (story_id, placeholder)
);
CREATE INDEX images_story ON images (story_id);
"""


class StoryDb:
    """The baseline's durable state: ``sqlite3`` on one connection owned by a single-thread
    executor, one transaction per :meth:`write`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stories-db")
        self.conn: sqlite3.Connection | None = None
        self.transactions = 0

    async def _call(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            with conn:
                conn.executescript(SCHEMA)
            return conn

        self.conn = await self._call(connect)

    async def close(self) -> None:
        if self.conn is not None:
            await self._call(self.conn.close)
            self.conn = None
        self.executor.shutdown()

    async def write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """``statements`` in one transaction."""
        conn = self.conn
        assert conn is not None

        def run() -> None:
            with conn:
                for sql, args in statements:
                    conn.execute(sql, args)

        await self._call(run)
        self.transactions += 1


def _stage(story_id: str, stage: str, **columns: Any) -> tuple[str, Sequence[Any]]:
    """The statement recording a story's ``stage`` (and ``columns``)."""
    names = ["stage", "modified_at", *columns]
    sets = ", ".join(f"{name} = ?" for name in names)
    return (
        f"UPDATE stories SET {sets} WHERE id = ?",
        [stage, time.time(), *columns.values(), story_id],
    )


def _read_blob(path: Path, key: str) -> bytes:
    """What ``FileBlobStore.get`` does: the file's bytes, checked against the key's digest."""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != key.partition(".")[0]:
        raise BenchmarkError(f"blob {key} is corrupt")
    return data


def _write_blob(path: Path, data: bytes) -> None:
    """What ``FileBlobStore.put`` does: a temporary file in the same directory, flushed to disk,
    then renamed (nothing written when a file of that size is there already)."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size == len(data):
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


async def post_image(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/images/generate`` with the application's retry policy
    (``request_with_retries``): up to 3 tries for a transport error, 429 or a 5xx, 0.5 s and
    then twice as long between them, ``Retry-After`` (at most 30 s) honoured."""
    delay, problem = RETRY_DELAY, ""
    for attempt in range(1, IMAGE_ATTEMPTS + 1):
        try:
            response = await http.post(GENERATE_PATH, json=body)
        except httpx.TransportError as exc:
            problem = f"the image service is unreachable: {type(exc).__name__}: {exc}"
        else:
            if 200 <= response.status_code < 300:
                answer = response.json()
                return answer if isinstance(answer, dict) else {}
            problem = f"the image service answered {response.status_code}: {response.text}"
            if response.status_code not in TRANSIENT:
                break
            retry_after = response.headers.get("retry-after", "")
            if retry_after.isdigit():
                delay = max(delay, min(float(retry_after), 30.0))
        if attempt < IMAGE_ATTEMPTS:
            await asyncio.sleep(delay)
            delay *= 2
    raise BenchmarkError(f"an image could not be generated: {problem}")


def worker_asyncio(
    directory: str, n: int, quality: str, url: str, service_pid: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    path = str(Path(directory) / STORE_FILE)
    blobs = FileBlobStore(Path(directory) / BLOB_DIR)  # its paths only: its I/O is trio's
    safety, writer = WordListSafetyChecker(), TemplateWriter()

    async def main() -> None:
        transport = GenerationCounter()
        db = StoryDb(path)
        await db.open()
        try:
            async with httpx.AsyncClient(
                base_url=url, timeout=REQUEST_TIMEOUT, transport=transport
            ) as http:
                await run(db, http, transport)
        finally:
            await db.close()

    async def run(db: StoryDb, http: httpx.AsyncClient, transport: GenerationCounter) -> None:
        global_sem = asyncio.Semaphore(GLOBAL_LIMIT)
        transport.probe = semaphore_probe(global_sem, GLOBAL_LIMIT)
        latencies = [math.nan] * n

        async def image(
            story_id: str, name: str, story_sem: asyncio.Semaphore, prompt: ImagePrompt
        ) -> tuple[str, dict[str, Any], bytes]:
            async with story_sem, global_sem:
                image_id = str(uuid.uuid4())
                key = image_key(image_id)
                await db.write(
                    [
                        (
                            "INSERT INTO images (id, story_id, placeholder, prompt, alt_text,"
                            " idempotency_key, status, started_at)"
                            " VALUES (?, ?, ?, ?, ?, ?, 'running', ?)",
                            (image_id, story_id, prompt.placeholder, prompt.prompt,
                             prompt.alt_text, key, time.time()),
                        )
                    ]
                )  # fmt: skip
                answer = await post_image(
                    http,
                    {
                        "prompt": prompt.prompt,
                        "quality": quality,
                        "aspect_ratio": "3:2",
                        "idempotency_key": key,
                        "metadata": {
                            "story": name,
                            "placeholder": prompt.placeholder,
                            "model_pool": "local-image-gen",
                        },
                    },
                )
                object_key = answer.get("object_key")
                if not isinstance(object_key, str):
                    raise BenchmarkError(f"the image service returned no object_key: {answer}")
                data = await asyncio.to_thread(_read_blob, blobs.path_of(object_key), object_key)
                result = {
                    "placeholder": prompt.placeholder,
                    "object_key": object_key,
                    "content_type": answer.get("content_type") or "image/jpeg",
                    "alt_text": prompt.alt_text,
                    "width": answer.get("width", 0),
                    "height": answer.get("height", 0),
                    "bytes": len(data),
                }
                await db.write(
                    [
                        (
                            "UPDATE images SET status = 'completed', result = ?,"
                            " finished_at = ? WHERE id = ?",
                            (json.dumps(result), time.time(), image_id),
                        ),
                        (
                            "UPDATE stories SET images_generated = images_generated + 1,"
                            " modified_at = ? WHERE id = ?",
                            (time.time(), story_id),
                        ),
                    ]
                )
            return prompt.placeholder, result, data

        async def story(i: int) -> None:
            began = time.perf_counter()
            request = StoryRequest.parse(story_topic(i), customization(quality))
            story_id, name = str(uuid.uuid4()), pipeline_name(i)
            now = time.time()
            await db.write(
                [
                    (
                        "INSERT INTO stories (id, name, topic, customization, stage, status,"
                        " created_at, modified_at) VALUES (?, ?, ?, ?, 'created', 'running', ?, ?)",
                        (story_id, name, request.topic,
                         json.dumps(request.customization.to_json()), now, now),
                    )
                ]
            )  # fmt: skip
            await db.write([_stage(story_id, "safety_check")])
            verdict = await safety.check(request.topic)
            if not verdict.safe:
                raise BenchmarkError(f"story {i}'s topic was rejected: {verdict.reasons}")
            await db.write([_stage(story_id, "writing", safety=json.dumps(verdict.to_json()))])
            written: WrittenStory = await writer.write(request)
            problems = written.problems(request.customization.num_illustrations)
            if problems:
                raise BenchmarkError(f"story {i}'s text is unusable: {problems}")
            total = len(written.image_prompts)
            await db.write(
                [
                    _stage(
                        story_id,
                        "generating_images",
                        title=written.title,
                        story=json.dumps(written.to_json()),
                        images_total=total,
                    )
                ]
            )
            story_sem = asyncio.Semaphore(PER_STORY)
            generated = await asyncio.gather(
                *(image(story_id, name, story_sem, prompt) for prompt in written.image_prompts)
            )
            await db.write([_stage(story_id, "assembling")])
            images = {
                placeholder: InlineImage(
                    data=data,
                    content_type=result["content_type"],
                    alt_text=result["alt_text"],
                    width=result["width"],
                    height=result["height"],
                )
                for placeholder, result, data in generated
            }
            page = story_html(written, images, {}).encode()
            html_key = FileBlobStore.key_for(page, extension="html")
            await asyncio.to_thread(_write_blob, blobs.path_of(html_key), page)
            outcome = {
                "story_id": story_id,
                "name": name,
                "status": "completed",
                "title": written.title,
                "html_key": html_key,
                "images_total": total,
                "images_generated": len(generated),
                "images_failed": 0,
                "failed_images": {},
            }
            await db.write(
                [
                    _stage(
                        story_id,
                        "completed",
                        status="completed",
                        html_key=html_key,
                        result=json.dumps(outcome),
                        completed_at=time.time(),
                    )
                ]
            )
            latencies[i] = time.perf_counter() - began

        machine, service = _machine_cpu(), (service_pid, _cpu_of(service_pid))
        cpu, start = time.process_time(), time.perf_counter()
        async with asyncio.timeout(_deadline(n)), asyncio.TaskGroup() as group:
            for i in range(n):
                group.create_task(story(i))
        end = time.perf_counter()
        _timed_report(out, start, end, cpu, service, machine, latencies)
        if global_sem._value != GLOBAL_LIMIT:
            raise BenchmarkError(f"the global semaphore is at {global_sem._value} at the end")
        out["store_writes"] = out["store_transactions"] = db.transactions
        out.update(transport.report(n * IMAGES))

    asyncio.run(main())
    return out


def _deadline(n: int) -> float:
    """A bound on a run, so that one that never ends fails instead of hanging."""
    return 120.0 + n * IMAGES * 2.0


# -- the worker process -------------------------------------------------------------------------


def worker_main(argv: list[str]) -> int:
    """``python -m benchmarks.stories run SIDE DIR N QUALITY URL SERVICE_PID``: one JSON line
    out."""
    _, side, directory, n, quality, url, pid = argv
    work = {SLUICEWAY: worker_sluiceway, ASYNCIO: worker_asyncio}[side]
    try:
        report = work(directory, int(n), quality, url, int(pid))
    except BaseException as exc:  # report it to the driver, which fails the suite loudly
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise
    print(json.dumps(report))
    return 0


# -- the driver: the image service, the checks --------------------------------------------------


class ImageProcess:
    """``python -m sluiceway.apps.imagegen`` on fresh files, in a process of its own."""

    def __init__(self, directory: str, latency: float) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sluiceway.apps.imagegen",
                "--db",
                str(Path(directory) / IMAGES_FILE),
                "--blobs",
                str(Path(directory) / BLOB_DIR),
                "--latency",
                repr(latency),
            ],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening on " not in line:
            self.stop()
            raise BenchmarkError(f"the image service did not start: {line!r}")
        self.url = line.split("listening on ", 1)[1].split()[0]
        self.pid = self.process.pid

    def warm_up(self, quality: str) -> None:
        """One image (font loading, the render threads), before the run and outside its keys."""
        answer = httpx.post(
            self.url + GENERATE_PATH,
            json={"prompt": "a warm-up", "quality": quality, "idempotency_key": WARM_UP_KEY},
            timeout=60.0,
        )
        if answer.status_code != 201:
            raise BenchmarkError(f"the image service's warm-up answered {answer.status_code}")

    def counts(self) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
        """Its per-key counts (the run's prefix) and its ``/stats``."""
        keys = httpx.get(
            self.url + "/v1/images/counts", params={"prefix": KEY_PREFIX}, timeout=60.0
        ).json()["keys"]
        stats = httpx.get(self.url + "/stats", timeout=60.0).json()
        return keys, stats

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def _spawn(args: Sequence[str], timeout: float, what: str) -> dict[str, Any]:
    return run_worker("benchmarks.stories", args, timeout=timeout, what=what)


def _read_only(path: str) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


#: What a story's page is checked against: its name -> (page key, its images' blob keys).
Pages = dict[str, tuple[str, list[str]]]


def _tail(stories: Iterable[tuple[float, float]]) -> dict[str, float]:
    """From each story's (completion, end of its last image), as stored: how long a story took
    to complete after its last image (assembling and storing its page, recording the end)."""
    tails = sorted(completed - last_image for completed, last_image in stories)
    return {
        "tail_after_last_image_p50": percentile(tails, 0.5),
        "tail_after_last_image_max": tails[-1],
    }


def check_sluiceway_store(path: str, n: int) -> tuple[Pages, set[str], dict[str, Any]]:
    """sluiceway's store after the run: N pipelines COMPLETED at stage ``completed``, each with
    its safety check, its writer and 5 images as children, every one COMPLETED at attempt 1,
    no lease anywhere; the images' stored intervals within the limits. Returns the pages to
    check, the image keys and the figures."""
    conn = _read_only(path)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        rows = conn.execute(
            "SELECT id, parent_id, name, type, status, attempt, lease_owner, data, result"
            " FROM entities"
        ).fetchall()
        marks = conn.execute(
            "SELECT v.entity_id, v.ts, json_extract(v.body, '$.status') FROM envelopes v"
            " JOIN entities e ON e.id = v.entity_id"
            " WHERE e.type IN ('ImageGeneration', 'StoryPipeline')"
            " AND json_extract(v.body, '$.type') = 'STATUS'"
            " AND json_extract(v.body, '$.status') IN ('STARTED', 'COMPLETED')"
        ).fetchall()
        (envelopes,) = conn.execute("SELECT count(*) FROM envelopes").fetchone()
    finally:
        conn.close()
    if integrity != [("ok",)]:
        raise BenchmarkError(f"PRAGMA integrity_check: {integrity[:5]}")
    pipelines = {row[0]: row for row in rows if row[3] == "StoryPipeline"}
    children: dict[str, list[tuple[Any, ...]]] = {story_id: [] for story_id in pipelines}
    bad: list[str] = []
    for row in rows:
        entity_id, parent_id, name, kind, status, attempt, lease = row[:7]
        if status != "COMPLETED" or attempt != 1 or lease is not None:
            bad.append(f"{kind} {name}: {status}, attempt {attempt}, lease {lease}")
        if kind != "StoryPipeline":
            if parent_id not in children:
                bad.append(f"{kind} {name} has no story ({parent_id})")
            else:
                children[parent_id].append(row)
    names = sorted(row[2] for row in pipelines.values())
    if names != sorted(pipeline_name(i) for i in range(n)):
        raise BenchmarkError(f"{len(names)} stories stored, expected {n}: {names[:3]}...")
    pages: Pages = {}
    keys: set[str] = set()
    for story_id, row in pipelines.items():
        data, result = json.loads(row[7]), json.loads(row[8] or "null")
        kinds = Counter(child[3] for child in children[story_id])
        if kinds != {"ContentSafetyCheck": 1, "StoryWriter": 1, "ImageGeneration": IMAGES}:
            bad.append(f"{row[2]}: children {dict(kinds)}")
        if (
            data.get("stage") != "completed"
            or data.get("status") != "completed"
            or data.get("images_generated") != IMAGES
            or not isinstance(result, dict)
            or result.get("status") != "completed"
            or result.get("html_key") != data.get("html_key")
        ):
            bad.append(f"{row[2]}: stage {data.get('stage')}, result {result}")
        images = [child for child in children[story_id] if child[3] == "ImageGeneration"]
        pages[row[2]] = (
            data.get("html_key"),
            [json.loads(child[8] or "{}").get("object_key") for child in images],
        )
        keys.update(image_key(child[0]) for child in images)
    if bad:
        raise BenchmarkError(f"{len(bad)} entities are not as expected: {bad[:3]}")
    span: dict[str, dict[str, float]] = {}
    for entity_id, ts, status in marks:
        if status in span.setdefault(entity_id, {}):
            raise BenchmarkError(f"entity {entity_id} has two {status} envelopes")
        span[entity_id][status] = ts
    by_story: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row[3] == "ImageGeneration":
            marks_of = span.get(row[0], {})
            if set(marks_of) != {"STARTED", "COMPLETED"}:
                raise BenchmarkError(f"image {row[0]} has the envelopes {sorted(marks_of)}")
            by_story.setdefault(row[1], []).append((marks_of["STARTED"], marks_of["COMPLETED"]))
    figures = check_overlaps(by_story, "the stored STARTED..COMPLETED of the images")
    figures.update(entities=len(rows), envelopes=envelopes)
    figures.update(
        _tail(
            (span[story_id]["COMPLETED"], max(end for _, end in intervals))
            for story_id, intervals in by_story.items()
        )
    )
    return pages, keys, figures


def check_asyncio_store(path: str, n: int) -> tuple[Pages, set[str], dict[str, Any]]:
    """The baseline's rows after the run: N stories completed with their page and 5 images
    each, every image completed with its result; the stored intervals within the limits."""
    conn = _read_only(path)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        stories = conn.execute(
            "SELECT id, name, stage, status, images_total, images_generated, html_key, result,"
            " completed_at FROM stories"
        ).fetchall()
        images = conn.execute(
            "SELECT story_id, id, idempotency_key, status, result, started_at, finished_at"
            " FROM images"
        ).fetchall()
    finally:
        conn.close()
    if integrity != [("ok",)]:
        raise BenchmarkError(f"PRAGMA integrity_check: {integrity[:5]}")
    names = sorted(row[1] for row in stories)
    if names != sorted(pipeline_name(i) for i in range(n)):
        raise BenchmarkError(f"{len(names)} stories stored, expected {n}: {names[:3]}...")
    by_story: dict[str, list[tuple[Any, ...]]] = {row[0]: [] for row in stories}
    for row in images:
        by_story[row[0]].append(row)
    bad: list[str] = []
    pages: Pages = {}
    for story_id, name, stage, status, total, generated, html_key, text, _ in stories:
        result = json.loads(text or "null")
        mine = by_story[story_id]
        if (
            (stage, status, total, generated) != ("completed", "completed", IMAGES, IMAGES)
            or len(mine) != IMAGES
            or not isinstance(result, dict)
            or result.get("html_key") != html_key
        ):
            bad.append(f"{name}: {stage} {status} {generated}/{total}, {len(mine)} images")
        bad.extend(
            f"{name}: image {image[1]} {image[3]}"
            for image in mine
            if image[3] != "completed" or image[2] != image_key(image[1]) or image[6] is None
        )
        pages[name] = (html_key, [json.loads(image[4] or "{}").get("object_key") for image in mine])
    if bad:
        raise BenchmarkError(f"{len(bad)} rows are not as expected: {bad[:3]}")
    intervals = {
        story_id: [(row[5], row[6]) for row in rows] for story_id, rows in by_story.items()
    }
    figures = check_overlaps(intervals, "the stored started_at..finished_at of the images")
    figures.update(story_rows=len(stories), image_rows=len(images))
    figures.update(_tail((row[8], max(end for _, end in intervals[row[0]])) for row in stories))
    return pages, {row[2] for row in images}, figures


def check_pages(blob_dir: str, pages: Pages) -> dict[str, Any]:
    """Each story's page, from the blob directory: exactly its 5 images inline, byte for byte
    the blobs its image records name, and no missing-image placeholder."""
    blobs = FileBlobStore(blob_dir)
    seen_images: set[str] = set()
    for name, (html_key, object_keys) in pages.items():
        if not isinstance(html_key, str) or any(not isinstance(k, str) for k in object_keys):
            raise BenchmarkError(f"{name}: page {html_key!r}, images {object_keys}")
        page = blobs.path_of(html_key).read_bytes()
        if hashlib.sha256(page).hexdigest() != html_key.partition(".")[0]:
            raise BenchmarkError(f"{name}: its page {html_key} is corrupt")
        text = page.decode()
        inline = Counter(
            hashlib.sha256(base64.b64decode(data)).hexdigest() for _, data in _IMG.findall(text)
        )
        expected = Counter(
            hashlib.sha256(blobs.path_of(key).read_bytes()).hexdigest() for key in object_keys
        )
        if inline != expected or len(object_keys) != IMAGES or 'class="image-missing"' in text:
            raise BenchmarkError(
                f"{name}: its page's images inline (sha256 {sorted(inline.elements())}) are not "
                f"its {len(object_keys)} images ({sorted(expected.elements())})"
            )
        seen_images.update(object_keys)
    return {"pages_checked": len(pages), "distinct_images": len(seen_images)}


def check_counts(
    keys: set[str], counts: dict[str, dict[str, int]], stats: dict[str, int], n: int
) -> dict[str, Any]:
    """The image service's counts: exactly the run's image keys, each generated once; its
    totals those images plus the warm-up, and no failed request."""
    if len(keys) != n * IMAGES or set(counts) != keys:
        raise BenchmarkError(
            f"the service counted {len(counts)} keys, the store names {len(keys)} "
            f"(expected {n * IMAGES}); {len(set(counts) ^ keys)} differ"
        )
    twice = {key: count for key, count in counts.items() if count["generations"] != 1}
    if twice:
        raise BenchmarkError(f"{len(twice)} keys not generated exactly once: {list(twice)[:3]}")
    if stats.get("generations") != n * IMAGES + 1 or stats.get("failures"):
        raise BenchmarkError(f"the image service's stats: {stats}")
    return {
        "service_keys": len(counts),
        "service_requests": sum(count["requests"] for count in counts.values()),
        "service_stats": stats,
    }


class StoryImages(Scenario):
    key = "M"
    title = (
        "story pipeline: many stories, their images under global and per-story limits (seed 002)"
    )
    baseline = (
        f"a task per story (asyncio.TaskGroup), its images asyncio.gather-ed, each under "
        f"`async with story_sem, global_sem` (Semaphore({PER_STORY}) per story, "
        f"Semaphore({GLOBAL_LIMIT}) for all); httpx; the same safety check, writer and page; "
        "stdlib sqlite3 in a single-thread executor, one transaction per stage, image start, "
        "image end"
    )
    metrics = (
        Metric("makespan", "makespan", "s", 2),
        Metric("makespan_over_bound", "makespan / work-conserving bound", "x", 3),
        Metric("cpu_seconds", "CPU of the process, makespan", "s", 2),
        Metric("latency_min", "story latency, min", "s", 2),
        Metric("latency_p50", "story latency, p50", "s", 2),
        Metric("latency_p90", "story latency, p90", "s", 2),
        Metric("latency_max", "story latency, max", "s", 2),
        Metric("latency_spread", "story latency spread, max / min", "x", 2),
        Metric("tail_p50", "story completed after its last image, p50", "s", 3),
        Metric("mean_in_flight", "images in flight, mean over the makespan", "count", 2),
        Metric("request_ms", "image request, median", "ms", 1),
        Metric("service_cpu_seconds", "image service CPU, makespan", "s", 2),
    )
    warm_up = False  # every run is a fresh interpreter and a fresh service anyway

    def params(self, quick: bool) -> dict[str, Any]:
        stories = QUICK_STORIES if quick else STORIES
        latency = QUICK_LATENCY if quick else LATENCY
        return {
            "stories": stories,
            "images": IMAGES,
            "global_limit": GLOBAL_LIMIT,
            "per_story": PER_STORY,
            "latency": latency,
            "quality": QUALITY,
            "bound": work_conserving_bound(stories, IMAGES, GLOBAL_LIMIT, PER_STORY, latency),
        }

    def warm_up_params(self) -> dict[str, Any]:
        return self.params(quick=True)

    def describe(self, params: Params) -> str:
        return (
            f"{params['stories']} stories x {params['images']} images created at once, "
            f"{params['global_limit']} images at once in all and {params['per_story']} per "
            f"story, {params['latency']:g} s per image at a real image service in its own "
            f"process (quality {params['quality']}); work-conserving bound "
            f"ceil({params['stories'] * params['images']}/{params['global_limit']}) x "
            f"{params['latency']:g} s = {params['bound']:g} s; a fresh process per run"
        )

    def run(self, side: str, params: Params) -> Sample:
        n = params["stories"]
        with tempfile.TemporaryDirectory(prefix="sluiceway-bench-M-") as tmp:
            service = ImageProcess(tmp, params["latency"])
            try:
                service.warm_up(params["quality"])
                report = _spawn(
                    ["run", side, tmp, str(n), params["quality"], service.url, str(service.pid)],
                    _deadline(n) + 60.0,
                    f"{side} worker",
                )
                counts, stats = service.counts()
            finally:
                service.stop()
            path = str(Path(tmp) / STORE_FILE)
            check = check_sluiceway_store if side == SLUICEWAY else check_asyncio_store
            pages, keys, figures = check(path, n)
            report.update(figures)
            report.update(check_pages(str(Path(tmp) / BLOB_DIR), pages))
            report.update(check_counts(keys, counts, stats, n))
        latencies = report.pop("latencies")
        if len(latencies) != n or any(math.isnan(value) for value in latencies):
            raise BenchmarkError(f"{len(latencies)} story latencies measured, expected {n}")
        # The distribution in the raw results: min, p10, ..., p90, max.
        report["latency_deciles"] = [round(percentile(latencies, k / 10), 4) for k in range(11)]
        makespan = report["makespan_seconds"]
        report["other_cores"] = (
            report.pop("machine_cpu_seconds")
            - report["cpu_seconds"]
            - report["service_cpu_seconds"]
        ) / makespan
        metrics = {
            "makespan": makespan,
            "makespan_over_bound": makespan / params["bound"],
            "cpu_seconds": report["cpu_seconds"],
            **latency_figures(latencies),
            "tail_p50": report["tail_after_last_image_p50"],
            "mean_in_flight": report["request_seconds_total"] / makespan,
            "request_ms": report["request_seconds_median"] * 1e3,
            "service_cpu_seconds": report["service_cpu_seconds"],
        }
        report["latency_mean"] = metrics.pop("latency_mean")
        # A slot's time outside its request (sluiceway: from the child's STARTED to its
        # COMPLETED; the baseline: its row's started_at to finished_at), per image.
        report["hold_outside_request_ms"] = (
            (report["stored_seconds_total"] - report["request_seconds_total"]) / (n * IMAGES) * 1e3
        )
        warnings = []
        if report["peak_in_flight"] < GLOBAL_LIMIT:
            warnings.append(
                f"at most {report['peak_in_flight']} images were in flight at once: the global "
                f"limit ({GLOBAL_LIMIT}) was never reached"
            )
        if report["service_requests"] != n * IMAGES:
            warnings.append(
                f"{report['service_requests'] - n * IMAGES} image requests were retries "
                "(each key was still generated once)"
            )
        if warnings:
            report["warnings"] = warnings
        return Sample(metrics, report)

    def target(self, summary: Summary, params: Params) -> Target:
        ours = summary["makespan_over_bound"][SLUICEWAY].median
        theirs = summary["makespan_over_bound"][ASYNCIO].median
        return Target(
            f"sluiceway's makespan within {TARGET_BOUND_RATIO:.2f}x the work-conserving bound "
            f"({params['bound']:g} s)",
            f"{ours:.3f}x the bound (asyncio {theirs:.3f}x; images in flight on average "
            f"{summary['mean_in_flight'][SLUICEWAY].median:.2f} and "
            f"{summary['mean_in_flight'][ASYNCIO].median:.2f} of {GLOBAL_LIMIT}); makespan "
            f"{ratio(summary, 'makespan'):.2f}x asyncio's, CPU "
            f"{ratio(summary, 'cpu_seconds'):.2f}x; story latency p50 "
            f"{summary['latency_p50'][SLUICEWAY].median:.2f} s (asyncio "
            f"{summary['latency_p50'][ASYNCIO].median:.2f} s), spread "
            f"{summary['latency_spread'][SLUICEWAY].median:.2f} (asyncio "
            f"{summary['latency_spread'][ASYNCIO].median:.2f})",
            ours <= TARGET_BOUND_RATIO,
        )


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
