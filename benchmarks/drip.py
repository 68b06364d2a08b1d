"""Scenario L: the campaign engine at scale. 100,000 enrollments launched into a drip with
waits, against an asyncio + sqlite3 baseline that implements seed 001's own design (a
``campaign_contacts`` table polled by ``processNextSteps``).

The drip (:data:`DRIP`, the same steps on both sides)::

    wait-1     wait 1 day
    welcome    email
    wait-2     wait 2 days
    follow-up  email (the end)

Its first step is a wait, so that the two measured phases do different things: the launch
enrolls every contact and starts its wait (no email), and the wake-up after the clock jump
does the emails. What is measured, on both sides, in a fresh interpreter per repetition
(``python -m benchmarks.drip run SIDE STORE N NOTIFY_URL SERVICE_PID``, one JSON line out):

* **launch, enrollments/s**: N / the time from the launch call until every enrollment has
  started its first wait (sluiceway: every enrollment parked on its timer, the campaign's run
  parked on its children, nothing due, no run under way; baseline: ``launchCampaign``
  returned: the rows created and ``processNextSteps`` has done every enrollment's wait step);
* **RSS with all waiting**: ``VmRSS`` of the process after ``gc.collect()`` (also its growth
  since just before the launch, per enrollment, and the peak, ``VmHWM`` reset before the
  launch);
* **wake, steps/s**: once all wait, each side's clock jumps one day: 2N / the time from the
  jump until every enrollment has sent its ``welcome`` email and started ``wait-2`` (two
  steps each; sluiceway: all parked again, nothing due, no run under way; baseline: the
  polling loop finds nothing ready and every row is at ``follow-up``, two days ahead). The
  last email is not reached: one jump, one wave of N emails.

Sends go to a real notification service (``python -m sluiceway.apps.notification``, a fresh
SQLite file per repetition) in another process, started by the driver, so its CPU is not
counted against either side; its CPU during the wake is measured separately (from
``/proc/PID/stat``). Both sides send at most :data:`SEND_LIMIT` emails at once (sluiceway:
``EngineConfig(per_campaign=16, global_limit=16)``; baseline: ``asyncio.Semaphore(16)``),
through ``httpx.AsyncClient`` with the same counting transport (:class:`CountingTransport`),
which checks that the limit holds. A failed send is tried again (three tries, 0.2 s then
0.4 s apart, for a transport error, 429 or a 5xx) on both sides: sluiceway's engine does it
(``post_with_retries``), the baseline does the same; the idempotency key makes it safe.

Contacts are imported once per side and scenario run (``prepare``: sluiceway through the
engine application's ``contacts/import``, the baseline with one ``executemany``) into a
template store file that every repetition copies: importing 100,000 contacts through the
application takes about a minute, and it is not what is measured.

sluiceway side: ``open_runtime(SqliteStore(path), app.types, clock=...)`` with its defaults
(``max_runs`` 100, ``claim_batch`` 50, ``park_after`` 10 s, ``poll_interval`` 0.5 s), the
engine application (:func:`sluiceway.apps.engine.create_app`) entered on it and its
endpoints called in process (``EndpointContext(runtime, state)``): ``segments/create`` (the
contacts tagged ``drip``), ``engine/campaigns/create`` (the drip), ``engine/campaigns/launch``.
The clock is ``time.time() + offset``; the jump grows the offset and wakes the claim loop.

Baseline (:class:`SeedEngine`): seed 001's ``CampaignExecutionEngine`` on stdlib ``sqlite3``
(one connection owned by a single-thread executor, WAL, ``synchronous=NORMAL``): tables
``contacts``, ``segments``, ``campaigns``, ``campaign_steps`` and ``campaign_contacts`` with
the index ``(campaign_id, status, next_email_scheduled_at)``. ``launchCampaign`` reads the
segment's contacts, ``enrollContacts`` inserts every enrollment in one ``executemany``
(``createMany``), the campaign becomes active and ``processNextSteps`` runs once;
``processNextSteps`` selects the ready enrollments (``next_email_scheduled_at <= now``) and
processes each: a wait step schedules the next step after the wait, an email step reads the
contact, renders the email (the engine's own ``TemplatePersonalizer``), sends it with the
idempotency key ``enrollment-<id>-<step>`` and moves the enrollment on (its row and the
step's ``emails_sent`` in one transaction). A background loop calls ``processNextSteps``
again at once after a pass that did something, else after 0.5 s or when woken (the jump wakes
it, as the jump wakes sluiceway's claim loop). See :class:`SeedEngine` for the liberties taken.

Checks on every repetition of both sides: at the moment all wait (before the jump), N
enrollments, one per contact of the segment, each at its first wait until one day after the
wait began, no email sent yet (the service's ``/stats``); sluiceway: every enrollment
``WAITING``, parked on its timer, no lease, its trail ``[wait-1 waited]``, the campaign's run
parked on its children, fewer than 50 live trio tasks. After the wake: each enrollment moved
exactly two steps (sluiceway: its trail ``[wait-1 waited, welcome sent, wait-2 waited]``, two
timer waits, the first elapsed and the second waiting until two days after its email, parked,
no lease; baseline: at ``follow-up`` two days ahead, ``steps_completed`` 3, the step's
``emails_sent`` N); ``PRAGMA integrity_check`` ok. The notification service's ``sends`` table
(read by the driver after the service stopped): exactly N emails, one per enrollment, for the
campaign's ``welcome`` step, to each contact once, each with the key
``enrollment-<enrollment id>-welcome``; no request failed. The sends in flight never exceeded
the limit.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

from sluiceway import Runtime, SqliteStore, open_runtime
from sluiceway.apps.campaigns import TemplatePersonalizer
from sluiceway.apps.campaigns._personalize import PersonalizationRequest
from sluiceway.apps.engine import EngineConfig, EngineServices, create_app
from sluiceway.server import EndpointContext

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
from .memory import MemoryProbe, current_rss_bytes

T = TypeVar("T")

DAY = 86_400.0
#: The drip, as the engine takes it (the baseline stores the same steps in its tables).
DRIP: list[dict[str, Any]] = [
    {"id": "wait-1", "step_order": 1, "type": "wait", "wait": {"value": 1, "unit": "days"}},
    {"id": "welcome", "step_order": 2, "type": "email",
     "subject": "Welcome {{ first_name }}", "content": "<p>Hello {{ full_name }}</p>"},
    {"id": "wait-2", "step_order": 3, "type": "wait", "wait": {"value": 2, "unit": "days"}},
    {"id": "follow-up", "step_order": 4, "type": "email", "end": True,
     "subject": "Still there, {{ first_name }}?", "content": "<p>A follow-up</p>"},
]  # fmt: skip
WAIT_1, WAIT_2 = DAY, 2 * DAY
EMAIL_STEP = "welcome"
#: The tag every imported contact has, and the segment selects.
TAG = "drip"
#: Sends at once, on both sides (sluiceway: per campaign and global; baseline: a semaphore).
SEND_LIMIT = 16
#: Enrollments processed at once by the baseline (sluiceway's claim loop: ``max_runs``).
MAX_IN_FLIGHT = 100
#: How often the baseline's background job polls when nothing was ready (sluiceway's
#: claim loop: ``poll_interval``).
POLL_INTERVAL = 0.5
#: Tries per email, and the pause before the first retry (the engine's defaults).
SEND_ATTEMPTS, RETRY_DELAY = 3, 0.2
#: The most live trio tasks allowed while every enrollment is parked.
MAX_TASKS_PARKED = 50
#: The target: sluiceway's process with every enrollment waiting, at full size.
TARGET_RSS_MB = 200.0
CAMPAIGN = "drip"
STORE_FILE = "engine.db"
NOTIFY_FILE = "notify.db"
ROOT = Path(__file__).resolve().parents[1]
MB = 1e6


def contact_row(i: int) -> dict[str, Any]:
    """Contact ``i``, the same on both sides."""
    return {"first_name": f"F{i}", "last_name": f"L{i}", "email": f"c{i}@example.com"}


def send_key(enrollment_id: str, step_id: str) -> str:
    """The idempotency key of an enrollment's email (the engine's shape, first visit)."""
    return f"enrollment-{enrollment_id}-{step_id}"


def _deadline(n: int) -> float:
    """A bound on each phase, so that a run that never ends fails instead of hanging."""
    return 120.0 + n * 0.03


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> float:
    """CPU seconds the whole machine has been busy so far (every core, every process), from
    ``/proc/stat``: what else ran during a phase is this minus the side's and the service's."""
    fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _peak_bytes() -> int | None:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def _rss_report(rss_before: int, n: int) -> dict[str, Any]:
    gc.collect()
    rss = current_rss_bytes()
    if rss is None:
        raise BenchmarkError("scenario L reads the RSS from /proc/self/status (Linux)")
    return {
        "rss_before_bytes": rss_before,
        "rss_waiting_bytes": rss,
        "rss_growth_bytes": rss - rss_before,
        "rss_per_enrollment_bytes": (rss - rss_before) / n,
        "rss_peak_bytes": _peak_bytes(),
    }


# -- the sends, counted identically on both sides ----------------------------------------------


class CountingTransport(httpx.AsyncBaseTransport):
    """httpx's own transport, counting the ``POST /send/email`` requests in flight (from the
    request until its answer's headers): their peak must not exceed the send limit."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.active = 0
        self.peak = 0
        self.sends = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/send/email":
            return await self._inner.handle_async_request(request)
        self.sends += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            return await self._inner.handle_async_request(request)
        finally:
            self.active -= 1

    async def aclose(self) -> None:
        await self._inner.aclose()

    def report(self) -> dict[str, Any]:
        if self.peak > SEND_LIMIT:
            raise BenchmarkError(
                f"{self.peak} emails were in flight at once, above the limit {SEND_LIMIT}"
            )
        return {"send_requests": self.sends, "peak_sends": self.peak}


# -- checking the stores -----------------------------------------------------------------------


def _read_only(path: str) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)


def _trail(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(entry.get("step"), entry.get("event")) for entry in data.get("trail") or []]


WAITING_TRAIL = [("wait-1", "waited")]
ADVANCED_TRAIL = [("wait-1", "waited"), ("welcome", "sent"), ("wait-2", "waited")]


def check_sluiceway(
    path: str,
    n: int,
    campaign_id: str,
    trail: list[tuple[str, str]],
    wait: float,
    low: float,
    high: float,
    *,
    final: bool = False,
) -> dict[str, Any]:
    """sluiceway's store with every enrollment waiting: N enrollments of the campaign, one
    per contact tagged ``drip``, each parked on its timer with no lease, its trail ``trail``,
    due ``wait`` seconds after the moment its last wait began (within ``low`` .. ``high``);
    the campaign's run parked on its children. ``final``: the timer waits and the
    integrity check too (after the run)."""
    conn = _read_only(path)
    try:
        if final:
            integrity = conn.execute("PRAGMA integrity_check").fetchall()
            if integrity != [("ok",)]:
                raise BenchmarkError(f"PRAGMA integrity_check: {integrity[:5]}")
        contacts = {
            entity_id
            for entity_id, data in conn.execute(
                "SELECT id, data FROM entities WHERE type = 'Contact'"
            )
            if TAG in json.loads(data).get("tags", [])
        }
        rows = conn.execute(
            "SELECT id, parent_id, name, status, parked_on, runnable_at, lease_owner, data"
            " FROM entities WHERE type = 'Enrollment'"
        ).fetchall()
        campaign = conn.execute(
            "SELECT status, parked_on, data FROM entities WHERE id = ?", (campaign_id,)
        ).fetchone()
        waits: dict[str, list[tuple[int, str, str]]] = {}
        if final:
            for entity_id, idx, kind, state in conn.execute(
                "SELECT w.entity_id, w.idx, w.kind, w.state FROM waits w"
                " JOIN entities e ON e.id = w.entity_id WHERE e.type = 'Enrollment'"
                " ORDER BY w.entity_id, w.idx"
            ):
                waits.setdefault(entity_id, []).append((idx, kind, state))
    finally:
        conn.close()
    if len(contacts) != n:
        raise BenchmarkError(f"{len(contacts)} contacts tagged {TAG!r} stored, expected {n}")
    enrolled = [json.loads(row[7])["contact_id"] for row in rows]
    if len(rows) != n or set(enrolled) != contacts or len(set(enrolled)) != n:
        raise BenchmarkError(
            f"{len(rows)} enrollments of {len(set(enrolled))} contacts, expected one for each "
            f"of the {n} contacts"
        )
    bad: list[str] = []
    for entity_id, parent_id, name, status, parked_on, runnable_at, lease, text in rows:
        data = json.loads(text)
        expected_at = None
        entries = data.get("trail") or []
        if entries and entries[-1].get("event") == "waited":
            expected_at = entries[-1].get("until")
        if (
            parent_id != campaign_id
            or name != f"contact:{data['contact_id']}"
            or status != "WAITING"
            or parked_on != "timer"
            or lease is not None
            or _trail(data) != trail
            or data.get("status") != "waiting"
            or data.get("current_step") != trail[-1][0]
            or data.get("steps_completed") != len(trail)
            or runnable_at is None
            or expected_at is None
            or not math.isclose(runnable_at, expected_at, abs_tol=1e-6)
            or not low + wait <= runnable_at <= high + wait
        ):
            bad.append(f"{name}: {status} {parked_on} {runnable_at} {_trail(data)}")
        if final:
            sent = [e for e in entries if e.get("event") == "sent"]
            if len(sent) != 1 or not sent[0].get("email_id"):
                bad.append(f"{name}: sent entries {sent}")
            if waits.get(entity_id) != [(1, "timer", "elapsed"), (2, "timer", "waiting")]:
                bad.append(f"{name}: waits {waits.get(entity_id)}")
    if bad:
        raise BenchmarkError(f"{len(bad)} enrollments are not as expected: {bad[:3]}")
    if campaign is None or campaign[:2] != ("WAITING", "children"):
        raise BenchmarkError(f"the campaign's run is {campaign and campaign[:2]}, not parked")
    data = json.loads(campaign[2])
    if data.get("status") != "active" or data.get("enrolled_count") != n:
        raise BenchmarkError(
            f"the campaign is {data.get('status')} with {data.get('enrolled_count')} enrolled"
        )
    return {"checked_enrollments": n}


def _settled_query(conn: sqlite3.Connection, now: float, n: int) -> bool:
    """Nothing due in sluiceway's store, and N enrollments parked on their timer."""
    due = conn.execute(
        "SELECT count(*) FROM entities WHERE runnable_at IS NOT NULL AND runnable_at <= ?", (now,)
    ).fetchone()[0]
    if due:
        return False
    parked = conn.execute(
        "SELECT count(*) FROM entities WHERE type = 'Enrollment' AND status = 'WAITING'"
        " AND parked_on = 'timer'"
    ).fetchone()[0]
    return bool(parked == n)


def check_sends(notify_path: str, enrollments: dict[str, str], campaign_id: str) -> dict[str, Any]:
    """The notification service's file after the run: exactly one ``welcome`` email per
    enrollment (``enrollments``: enrollment id -> contact id), for the campaign, to its
    contact, with its key; nothing else, and no failed request."""
    conn = _read_only(notify_path)
    try:
        rows = conn.execute(
            "SELECT key, campaign_id, contact_id, step_id, message FROM sends"
        ).fetchall()
        counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    finally:
        conn.close()
    seen: set[str] = set()
    bad: list[str] = []
    for key, campaign, contact, step, message in rows:
        enrollment = json.loads(message).get("metadata", {}).get("enrollment_id")
        if (
            campaign != campaign_id
            or step != EMAIL_STEP
            or enrollment not in enrollments
            or enrollments[enrollment] != contact
            or key != send_key(enrollment, EMAIL_STEP)
            or enrollment in seen
        ):
            bad.append(f"{key}: campaign {campaign}, contact {contact}, step {step}")
        seen.add(enrollment)
    if bad or len(rows) != len(enrollments) or len(seen) != len(enrollments):
        raise BenchmarkError(
            f"{len(rows)} emails stored for {len(enrollments)} enrollments "
            f"({len(seen)} distinct); not as expected: {bad[:3]}"
        )
    if counters.get("failures"):
        raise BenchmarkError(f"the notification service refused {counters['failures']} requests")
    return {
        "emails_stored": len(rows),
        "service_requests": counters.get("requests"),
        "service_repeats": counters.get("repeats"),
    }


def stored_enrollments(side: str, path: str) -> dict[str, str]:
    """enrollment id -> contact id, from the side's store file."""
    conn = _read_only(path)
    try:
        if side == SLUICEWAY:
            return {
                entity_id: json.loads(data)["contact_id"]
                for entity_id, data in conn.execute(
                    "SELECT id, data FROM entities WHERE type = 'Enrollment'"
                )
            }
        return dict(conn.execute("SELECT id, contact_id FROM campaign_contacts"))
    finally:
        conn.close()


# -- sluiceway ---------------------------------------------------------------------------------


def _engine_app(url: str, transport: CountingTransport | None) -> Any:
    config = EngineConfig(notify_url=url, per_campaign=SEND_LIMIT, global_limit=SEND_LIMIT)
    return create_app(config, transport=None if transport is None else lambda: transport)


async def _call(app: Any, runtime: Runtime, state: EngineServices, endpoint: str, body: Any) -> Any:
    """Call an endpoint of the engine application as the server would."""
    return await app.endpoints[endpoint](EndpointContext(runtime, state), body)


def prepare_sluiceway(path: str, n: int) -> dict[str, Any]:
    """The template store: N contacts imported through the engine's ``contacts/import``."""
    chunk, tasks = 1_000, 8

    async def main() -> float:
        app = _engine_app("http://127.0.0.1:9", None)
        async with (
            open_runtime(SqliteStore(path), app.types, work=False) as runtime,
            app.running(runtime) as state,
        ):
            handler = app.endpoints["contacts/import"]
            ctx = EndpointContext(runtime, state)
            chunks: Iterator[int] = iter(range(0, n, chunk))
            start = time.perf_counter()

            async def importer() -> None:
                for first in chunks:
                    rows = [
                        {**contact_row(i), "tags": [TAG]}
                        for i in range(first, min(first + chunk, n))
                    ]
                    answer = await handler(ctx, {"contacts": rows})
                    if answer["created"] != len(rows):
                        raise BenchmarkError(f"contacts/import created {answer['created']}")

            async with trio.open_nursery() as nursery:
                for _ in range(tasks):
                    nursery.start_soon(importer)
            return time.perf_counter() - start

    seconds = trio.run(main)
    return {"import_seconds": seconds}


async def _settled(claims: Any, check: Callable[[], bool], deadline: float) -> tuple[float, int]:
    """Until the claim loop has no run and ``check()`` (in a thread) says all wait; returns
    when it was first seen so (``perf_counter``) and how many checks it took."""
    checks = 0
    with trio.fail_after(deadline):
        while True:
            await claims.idle()
            if not claims.running:
                checks += 1
                if await trio.to_thread.run_sync(check):
                    return time.perf_counter(), checks
            await trio.sleep(0.02)


def worker_sluiceway(path: str, n: int, url: str, service_pid: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    offset = [0.0]

    def clock() -> float:
        return time.time() + offset[0]

    async def main() -> None:
        transport = CountingTransport()
        app = _engine_app(url, transport)
        store = SqliteStore(path)
        reader = _read_only(path)
        async with (
            open_runtime(store, app.types, clock=clock, work=False) as runtime,
            app.running(runtime) as state,
            runtime.working() as claims,
        ):
            segment = await _call(
                app, runtime, state, "segments/create", {"name": "all", "tags": [TAG]}
            )
            if segment["size"] != n:
                raise BenchmarkError(f"the segment has {segment['size']} contacts, not {n}")
            made = await _call(
                app,
                runtime,
                state,
                "engine/campaigns/create",
                {
                    "name": CAMPAIGN,
                    "campaign_type": "drip",
                    "segment_id": segment["segment_id"],
                    "steps": DRIP,
                },
            )
            campaign_id = out["campaign_id"] = made["campaign_id"]
            tasks_idle = trio.lowlevel.current_statistics().tasks_living
            probe = MemoryProbe()
            probe.start()
            rss_before = probe.before

            # The launch: until every enrollment waits (parked), and the campaign's run too.
            launched_from = clock()
            machine, cpu, start = _machine_cpu(), time.process_time(), time.perf_counter()
            await _call(
                app, runtime, state, "engine/campaigns/launch", {"campaign_id": campaign_id}
            )
            end, checks = await _settled(
                claims, lambda: _settled_query(reader, clock(), n), _deadline(n)
            )
            out["launch_seconds"] = end - start
            out["launch_cpu_seconds"] = time.process_time() - cpu
            out["launch_machine_cpu_seconds"] = _machine_cpu() - machine
            out["launch_checks"] = checks
            launched_until = clock()
            out["tasks_living_waiting"] = trio.lowlevel.current_statistics().tasks_living
            out["tasks_living_idle"] = tasks_idle
            out.update(_rss_report(rss_before, n))
            if out["tasks_living_waiting"] >= MAX_TASKS_PARKED:
                raise BenchmarkError(
                    f"{out['tasks_living_waiting']} trio tasks alive with all {n:,} "
                    f"enrollments parked (expected fewer than {MAX_TASKS_PARKED})"
                )
            out.update(
                await trio.to_thread.run_sync(
                    lambda: check_sluiceway(
                        path, n, campaign_id, WAITING_TRAIL, WAIT_1, launched_from, launched_until
                    )
                )
            )
            stats = (await state.http.get("/stats")).json()
            if stats["sends"] or transport.sends:
                raise BenchmarkError(f"{stats['sends']} emails sent before the clock jump")

            # The jump: a day passes; every enrollment's wait is over.
            offset[0] += WAIT_1
            jumped_from = clock()
            service_cpu, machine = _cpu_of(service_pid), _machine_cpu()
            cpu, start = time.process_time(), time.perf_counter()
            claims.wake()
            end, checks = await _settled(
                claims, lambda: _settled_query(reader, clock(), n), _deadline(n)
            )
            out["wake_seconds"] = end - start
            out["wake_cpu_seconds"] = time.process_time() - cpu
            out["service_cpu_seconds"] = _cpu_of(service_pid) - service_cpu
            out["wake_machine_cpu_seconds"] = _machine_cpu() - machine
            out["wake_checks"] = checks
            jumped_until = clock()
            stats = store.statistics()
            out["store_writes"], out["store_batches"] = stats.writes, stats.batches
            out.update(transport.report())
            out["send_retries"] = transport.sends - n  # post_with_retries's further tries
        reader.close()
        out.update(
            check_sluiceway(
                path, n, campaign_id, ADVANCED_TRAIL, WAIT_2, jumped_from, jumped_until, final=True
            )
        )

    gc.collect()
    wall = time.perf_counter()
    trio.run(main)
    out["wall_seconds"] = time.perf_counter() - wall
    return out


# -- the asyncio baseline: seed 001's engine on sqlite3 ----------------------------------------

SCHEMA = """
CREATE TABLE contacts (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    company TEXT,
    tags TEXT NOT NULL,
    lead_score REAL,
    created_at REAL NOT NULL
);
CREATE TABLE segments (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, tags TEXT NOT NULL);
CREATE TABLE campaigns (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    campaign_type TEXT NOT NULL,
    status TEXT NOT NULL,
    segment_id TEXT NOT NULL REFERENCES segments (id),
    send_strategy TEXT NOT NULL,
    from_email TEXT,
    from_name TEXT,
    total_contacts INTEGER NOT NULL DEFAULT 0,
    launched_at REAL
);
CREATE TABLE campaign_steps (
    id TEXT NOT NULL,
    campaign_id TEXT NOT NULL REFERENCES campaigns (id),
    step_order INTEGER NOT NULL,
    step_type TEXT NOT NULL,
    subject_line TEXT,
    email_content TEXT,
    wait_seconds REAL,
    emails_sent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, id)
);
CREATE TABLE campaign_contacts (
    id TEXT PRIMARY KEY,
    campaign_id TEXT NOT NULL REFERENCES campaigns (id),
    contact_id TEXT NOT NULL REFERENCES contacts (id),
    status TEXT NOT NULL,
    current_step_id TEXT,
    steps_completed INTEGER NOT NULL DEFAULT 0,
    enrolled_at REAL NOT NULL,
    last_email_sent_at REAL,
    next_email_scheduled_at REAL,
    completed_at REAL,
    UNIQUE (campaign_id, contact_id)
);
CREATE INDEX campaign_contacts_ready
    ON campaign_contacts (campaign_id, status, next_email_scheduled_at);
"""


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def prepare_asyncio(path: str, n: int) -> dict[str, Any]:
    """The template store: the schema and N contacts, in one ``executemany``."""
    conn = _connect(path)
    try:
        start = time.perf_counter()
        with conn:
            conn.executescript(SCHEMA)
        with conn:
            now = time.time()
            conn.executemany(
                "INSERT INTO contacts (id, email, first_name, last_name, tags, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (str(uuid.uuid4()), row["email"], row["first_name"], row["last_name"],
                     json.dumps([TAG]), now)
                    for row in map(contact_row, range(n))
                ),
            )  # fmt: skip
        return {"import_seconds": time.perf_counter() - start}
    finally:
        conn.close()


class SeedEngine:
    """Seed 001's ``CampaignExecutionEngine`` (``launchCampaign``, ``enrollContacts``,
    ``processNextSteps``, ``processContactStep``, ``sendCampaignEmail``), in asyncio over
    ``sqlite3`` on one connection owned by a single-thread executor.

    Liberties taken with the seed, each noted where it is done: enrollments are created
    ``active`` (the seed creates them ``enrolled`` and then selects ``active`` ones, so they
    would never run); the seed does not show ``processWaitStep``: here it moves the enrollment
    to the next step, due when the wait is over; a ready enrollment's email goes straight to the
    notification service (the seed puts it on a queue) with the engine's key; the campaign and
    its steps are read once per pass (the seed reads them per enrollment); ready enrollments
    are processed :data:`MAX_IN_FLIGHT` at a time with at most :data:`SEND_LIMIT` sends at once
    (the seed awaits one after the other), and a send that fails transiently is tried again
    as the engine does."""

    def __init__(self, path: str, http: httpx.AsyncClient, clock: Callable[[], float]) -> None:
        self.path = path
        self.http = http
        self.clock = clock
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.conn: sqlite3.Connection | None = None
        self.sends = asyncio.Semaphore(SEND_LIMIT)
        self.personalizer = TemplatePersonalizer()
        self.transactions = 0
        self.retries = 0
        self.wakeup = asyncio.Event()
        self.passes: list[int] = []
        self.quiet = asyncio.Event()  # set after a pass that found nothing ready

    async def db(self, func: Callable[[sqlite3.Connection], T]) -> T:
        conn = self.conn
        assert conn is not None
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, conn)

    async def write(self, func: Callable[[sqlite3.Connection], T]) -> T:
        """``func`` in one transaction."""

        def run(conn: sqlite3.Connection) -> T:
            with conn:
                return func(conn)

        result = await self.db(run)
        self.transactions += 1
        return result

    async def open(self) -> None:
        self.conn = await asyncio.get_running_loop().run_in_executor(
            self.executor, _connect, self.path
        )

    async def close(self) -> None:
        if self.conn is not None:
            await self.db(lambda conn: conn.close())
            self.conn = None
        self.executor.shutdown()

    # -- setting up (not timed) -----------------------------------------------------------------

    async def create_campaign(self, name: str, steps: Sequence[dict[str, Any]]) -> str:
        segment_id, campaign_id = str(uuid.uuid4()), str(uuid.uuid4())

        def create(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO segments (id, name, tags) VALUES (?, ?, ?)",
                (segment_id, f"{name}-people", json.dumps([TAG])),
            )
            conn.execute(
                "INSERT INTO campaigns (id, name, campaign_type, status, segment_id,"
                " send_strategy) VALUES (?, ?, 'drip', 'draft', ?, 'immediate')",
                (campaign_id, name, segment_id),
            )
            conn.executemany(
                "INSERT INTO campaign_steps (id, campaign_id, step_order, step_type,"
                " subject_line, email_content, wait_seconds) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        step["id"],
                        campaign_id,
                        step["step_order"],
                        step["type"],
                        step.get("subject"),
                        step.get("content"),
                        _wait_seconds(step.get("wait")),
                    )
                    for step in steps
                ],
            )

        await self.write(create)
        return campaign_id

    # -- launchCampaign, enrollContacts -------------------------------------------------------

    async def launch_campaign(self, campaign_id: str) -> int:
        campaign = await self.db(
            lambda conn: conn.execute(
                "SELECT status, segment_id FROM campaigns WHERE id = ?", (campaign_id,)
            ).fetchone()
        )
        if campaign[0] not in ("draft", "scheduled"):
            raise BenchmarkError("Campaign must be in draft or scheduled status to launch")
        # 1. Get contacts from segment.
        contacts = await self.db(lambda conn: _segment_contacts(conn, campaign[1]))
        # 2. Enroll contacts in campaign.
        await self.enroll_contacts(campaign_id, contacts)
        # 3. Update campaign status.
        now = self.clock()
        await self.write(
            lambda conn: conn.execute(
                "UPDATE campaigns SET status = 'active', launched_at = ? WHERE id = ?",
                (now, campaign_id),
            )
        )
        # 4. Start processing first step.
        await self.process_next_steps(campaign_id)
        return len(contacts)

    async def enroll_contacts(self, campaign_id: str, contacts: list[str]) -> None:
        now = self.clock()

        def create_many(conn: sqlite3.Connection) -> None:
            first = conn.execute(
                "SELECT id FROM campaign_steps WHERE campaign_id = ? ORDER BY step_order LIMIT 1",
                (campaign_id,),
            ).fetchone()[0]
            # ``active``, not the seed's ``enrolled``: processNextSteps selects active ones.
            # calculateNextSendTime: the immediate strategy sends now.
            conn.executemany(
                "INSERT INTO campaign_contacts (id, campaign_id, contact_id, status,"
                " current_step_id, enrolled_at, next_email_scheduled_at)"
                " VALUES (?, ?, ?, 'active', ?, ?, ?)",
                ((str(uuid.uuid4()), campaign_id, contact, first, now, now)
                 for contact in contacts),
            )  # fmt: skip
            conn.execute(
                "UPDATE campaigns SET total_contacts = ? WHERE id = ?", (len(contacts), campaign_id)
            )

        await self.write(create_many)

    # -- processNextSteps ---------------------------------------------------------------------

    async def process_next_steps(self, campaign_id: str) -> int:
        """One pass: every enrollment ready now, processed; returns how many."""
        now = self.clock()
        ready = await self.db(
            lambda conn: conn.execute(
                "SELECT id, contact_id, current_step_id, steps_completed FROM campaign_contacts"
                " WHERE campaign_id = ? AND status = 'active' AND next_email_scheduled_at <= ?",
                (campaign_id, now),
            ).fetchall()
        )
        if not ready:
            return 0
        steps = await self.db(lambda conn: _steps(conn, campaign_id))
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def process(enrollment: tuple[str, str, str, int]) -> None:
            try:
                await self.process_contact_step(campaign_id, enrollment, steps)
            finally:
                slots.release()

        async with asyncio.TaskGroup() as group:
            for enrollment in ready:
                await slots.acquire()
                group.create_task(process(enrollment))
        return len(ready)

    async def process_contact_step(
        self,
        campaign_id: str,
        enrollment: tuple[str, str, str, int],
        steps: dict[str, dict[str, Any]],
    ) -> None:
        step = steps[enrollment[2]]
        if step["type"] == "email":
            await self.send_campaign_email(campaign_id, enrollment, step, steps)
        elif step["type"] == "wait":
            await self.process_wait_step(enrollment, step, steps)
        else:
            raise BenchmarkError(f"the drip has no {step['type']} step")

    async def process_wait_step(
        self,
        enrollment: tuple[str, str, str, int],
        step: dict[str, Any],
        steps: dict[str, dict[str, Any]],
    ) -> None:
        """Not in the seed: the enrollment moves to the next step, due when the wait is
        over."""
        enrollment_id, _, _, completed = enrollment
        following = steps.get(step["next"]) if step["next"] else None
        due = self.clock() + step["wait_seconds"]
        await self.write(
            lambda conn: conn.execute(
                "UPDATE campaign_contacts SET current_step_id = ?, steps_completed = ?,"
                " next_email_scheduled_at = ?, status = ?, completed_at = ? WHERE id = ?",
                (
                    following and following["id"],
                    completed + 1,
                    due if following else None,
                    "active" if following else "completed",
                    None if following else due,
                    enrollment_id,
                ),
            )
        )

    async def send_campaign_email(
        self,
        campaign_id: str,
        enrollment: tuple[str, str, str, int],
        step: dict[str, Any],
        steps: dict[str, dict[str, Any]],
    ) -> None:
        enrollment_id, contact_id, _, completed = enrollment
        row = await self.db(
            lambda conn: conn.execute(
                "SELECT email, first_name, last_name, company FROM contacts WHERE id = ?",
                (contact_id,),
            ).fetchone()
        )
        contact = dict(zip(("email", "first_name", "last_name", "company"), row, strict=True))
        # 1. Render email with personalization.
        email = await self.personalizer.personalize(
            PersonalizationRequest(
                subject_template=step["subject"],
                body_html_template=step["content"],
                contact=contact,
            )
        )
        # 2. Send it (the seed queues it), keyed as the engine keys it.
        body = {
            "to": [contact["email"]],
            "subject": email.subject,
            "html": email.body_html,
            "idempotencyKey": send_key(enrollment_id, step["id"]),
            "metadata": {
                "campaign_id": campaign_id,
                "contact_id": contact_id,
                "step_id": step["id"],
                "enrollment_id": enrollment_id,
            },
        }
        async with self.sends:
            await self.post(body)
        # 3. Update enrollment progress; 4. update step analytics.
        following = steps.get(step["next"]) if step["next"] else None
        now = self.clock()

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE campaign_contacts SET current_step_id = ?, steps_completed = ?,"
                " last_email_sent_at = ?, next_email_scheduled_at = ?, status = ?,"
                " completed_at = ? WHERE id = ?",
                (
                    following and following["id"],
                    completed + 1,
                    now,
                    now if following else None,  # calculateNextStepTime: the next step now
                    "active" if following else "completed",
                    None if following else now,
                    enrollment_id,
                ),
            )
            conn.execute(
                "UPDATE campaign_steps SET emails_sent = emails_sent + 1"
                " WHERE campaign_id = ? AND id = ?",
                (campaign_id, step["id"]),
            )

        await self.write(update)

    async def post(self, body: dict[str, Any]) -> None:
        """``POST /send/email``, tried up to :data:`SEND_ATTEMPTS` times while the failure is
        transient (a transport error, 429, a 5xx), as the engine's ``post_with_retries`` does:
        the idempotency key makes a retry safe."""
        delay, problem = RETRY_DELAY, ""
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                response = await self.http.post("/send/email", json=body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code in (200, 202):
                    return
                problem = f"the notification service answered {response.status_code}"
                if response.status_code not in (429, 500, 502, 503, 504):
                    break
            if attempt < SEND_ATTEMPTS:
                self.retries += 1
                await asyncio.sleep(delay)
                delay *= 2
        raise BenchmarkError(f"an email could not be sent: {problem}")

    # -- the background job -------------------------------------------------------------------

    async def poll(self, campaign_id: str) -> None:
        """``processNextSteps`` again and again: at once after a pass that did something,
        else after :data:`POLL_INTERVAL` or when woken."""
        while True:
            self.wakeup = asyncio.Event()
            done = await self.process_next_steps(campaign_id)
            self.passes.append(done)
            if done:
                continue
            self.quiet.set()
            try:
                async with asyncio.timeout(POLL_INTERVAL):
                    await self.wakeup.wait()
            except TimeoutError:
                pass


def _wait_seconds(wait: dict[str, Any] | None) -> float | None:
    if wait is None:
        return None
    return float(wait["value"]) * {"days": DAY, "hours": 3600.0, "minutes": 60.0}[wait["unit"]]


def _segment_contacts(conn: sqlite3.Connection, segment_id: str) -> list[str]:
    (tags,) = conn.execute("SELECT tags FROM segments WHERE id = ?", (segment_id,)).fetchone()
    return [
        contact_id
        for (contact_id,) in conn.execute(
            "SELECT id FROM contacts c WHERE EXISTS (SELECT 1 FROM json_each(c.tags) t"
            " WHERE t.value IN (SELECT value FROM json_each(?))) ORDER BY created_at, rowid",
            (tags,),
        )
    ]


def _steps(conn: sqlite3.Connection, campaign_id: str) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, step_type, subject_line, email_content, wait_seconds FROM campaign_steps"
        " WHERE campaign_id = ? ORDER BY step_order",
        (campaign_id,),
    ).fetchall()
    steps = {}
    for index, (step_id, kind, subject, content, wait) in enumerate(rows):
        steps[step_id] = {
            "id": step_id,
            "type": kind,
            "subject": subject,
            "content": content,
            "wait_seconds": wait,
            "next": rows[index + 1][0] if index + 1 < len(rows) else None,  # getNextStep
        }
    return steps


def check_asyncio(
    conn: sqlite3.Connection,
    n: int,
    campaign_id: str,
    step: str,
    completed: int,
    wait: float,
    low: float,
    high: float,
    *,
    final: bool = False,
) -> dict[str, Any]:
    """The baseline's rows with every enrollment waiting: N, one per contact, each active at
    ``step`` after ``completed`` steps, due ``wait`` after its last step (within ``low`` ..
    ``high``)."""
    if final:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        if integrity != [("ok",)]:
            raise BenchmarkError(f"PRAGMA integrity_check: {integrity[:5]}")
    contacts = {row[0] for row in conn.execute("SELECT id FROM contacts")}
    rows = conn.execute(
        "SELECT contact_id, status, current_step_id, steps_completed, next_email_scheduled_at,"
        " last_email_sent_at FROM campaign_contacts WHERE campaign_id = ?",
        (campaign_id,),
    ).fetchall()
    if len(rows) != n or len(contacts) != n or {row[0] for row in rows} != contacts:
        raise BenchmarkError(f"{len(rows)} enrollments for {len(contacts)} contacts, expected {n}")
    bad = [
        row
        for row in rows
        if row[1:4] != ("active", step, completed)
        or row[4] is None
        or not low + wait <= row[4] <= high + wait
        or (final and (row[5] is None or not low <= row[5] <= high))
    ]
    if bad:
        raise BenchmarkError(f"{len(bad)} enrollments are not as expected: {bad[:3]}")
    if final:
        sent = conn.execute(
            "SELECT emails_sent FROM campaign_steps WHERE campaign_id = ? AND id = ?",
            (campaign_id, EMAIL_STEP),
        ).fetchone()[0]
        if sent != n:
            raise BenchmarkError(f"the welcome step counts {sent} emails sent, not {n}")
    return {"checked_enrollments": n}


def _advanced_query(conn: sqlite3.Connection, *, campaign_id: str, now: float, n: int) -> bool:
    """Every enrollment of the campaign at ``follow-up``, due after ``now``."""
    advanced = conn.execute(
        "SELECT count(*) FROM campaign_contacts WHERE campaign_id = ? AND status = 'active'"
        " AND current_step_id = 'follow-up' AND next_email_scheduled_at > ?",
        (campaign_id, now),
    ).fetchone()[0]
    return bool(advanced == n)


class ShiftedClock:
    """The baseline's wall clock: ``time.time() + offset``."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def worker_asyncio(path: str, n: int, url: str, service_pid: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    clock = ShiftedClock()

    async def main() -> None:
        transport = CountingTransport()
        async with httpx.AsyncClient(base_url=url, timeout=10.0, transport=transport) as http:
            engine = SeedEngine(path, http, clock)
            await engine.open()
            try:
                await run(engine, http, transport)
            finally:
                await engine.close()

    async def run(engine: SeedEngine, http: httpx.AsyncClient, transport: Any) -> None:
        campaign_id = out["campaign_id"] = await engine.create_campaign(CAMPAIGN, DRIP)
        probe = MemoryProbe()
        probe.start()
        rss_before = probe.before

        launched_from = clock()
        machine, cpu, start = _machine_cpu(), time.process_time(), time.perf_counter()
        async with asyncio.timeout(_deadline(n)):
            enrolled = await engine.launch_campaign(campaign_id)
        out["launch_seconds"] = time.perf_counter() - start
        out["launch_cpu_seconds"] = time.process_time() - cpu
        out["launch_machine_cpu_seconds"] = _machine_cpu() - machine
        launched_until = clock()
        if enrolled != n:
            raise BenchmarkError(f"{enrolled} contacts enrolled, not {n}")
        out["tasks_living_waiting"] = len(asyncio.all_tasks())
        out.update(_rss_report(rss_before, n))
        out.update(
            await engine.db(
                lambda conn: check_asyncio(
                    conn, n, campaign_id, EMAIL_STEP, 1, WAIT_1, launched_from, launched_until
                )
            )
        )
        stats = (await http.get("/stats")).json()
        if stats["sends"] or transport.sends:
            raise BenchmarkError(f"{stats['sends']} emails sent before the clock jump")

        async with asyncio.TaskGroup() as group:
            poller = group.create_task(engine.poll(campaign_id))
            await engine.quiet.wait()  # the background job runs (nothing is ready)
            # The jump: a day passes; every enrollment's wait is over.
            clock.offset += WAIT_1
            jumped_from = clock()
            service_cpu, machine = _cpu_of(service_pid), _machine_cpu()
            transactions = engine.transactions
            cpu, start = time.process_time(), time.perf_counter()
            engine.quiet.clear()
            engine.wakeup.set()
            async with asyncio.timeout(_deadline(n)):
                while True:
                    await engine.quiet.wait()
                    engine.quiet.clear()
                    check = partial(_advanced_query, campaign_id=campaign_id, now=clock(), n=n)
                    if await engine.db(check):
                        break
            out["wake_seconds"] = time.perf_counter() - start
            out["wake_cpu_seconds"] = time.process_time() - cpu
            out["service_cpu_seconds"] = _cpu_of(service_pid) - service_cpu
            out["wake_machine_cpu_seconds"] = _machine_cpu() - machine
            out["wake_transactions"] = engine.transactions - transactions
            jumped_until = clock()
            poller.cancel()
        out["passes"] = [done for done in engine.passes if done]
        out["store_writes"] = out["store_batches"] = engine.transactions
        out["send_retries"] = engine.retries
        out.update(transport.report())
        out.update(
            await engine.db(
                lambda conn: check_asyncio(
                    conn,
                    n,
                    campaign_id,
                    "follow-up",
                    3,
                    WAIT_2,
                    jumped_from,
                    jumped_until,
                    final=True,
                )
            )
        )

    gc.collect()
    wall = time.perf_counter()
    asyncio.run(main())
    out["wall_seconds"] = time.perf_counter() - wall
    return out


# -- the worker process ------------------------------------------------------------------------


def worker_main(argv: list[str]) -> int:
    """``python -m benchmarks.drip prepare SIDE STORE N`` or ``... run SIDE STORE N URL PID``:
    one JSON line out."""
    mode, side, path, n = argv[0], argv[1], argv[2], int(argv[3])
    try:
        if mode == "prepare":
            prepare = {SLUICEWAY: prepare_sluiceway, ASYNCIO: prepare_asyncio}[side]
            report = prepare(path, n)
        else:
            work = {SLUICEWAY: worker_sluiceway, ASYNCIO: worker_asyncio}[side]
            report = work(path, n, argv[4], int(argv[5]))
    except BaseException as exc:  # report it to the driver, which fails the suite loudly
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise
    print(json.dumps(report))
    return 0


# -- the driver --------------------------------------------------------------------------------


def _spawn(args: Sequence[str], timeout: float, what: str) -> dict[str, Any]:
    return run_worker("benchmarks.drip", args, timeout=timeout, what=what)


class NotificationProcess:
    """``python -m sluiceway.apps.notification`` on a fresh file, in a process of its own."""

    def __init__(self, db_path: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sluiceway.apps.notification", "--db", db_path],
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
            raise BenchmarkError(f"the notification service did not start: {line!r}")
        self.url = line.split("listening on ", 1)[1].split()[0]

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


class _Template:
    """One side's store with the contacts imported, copied by every repetition."""

    def __init__(self, side: str, n: int) -> None:
        self.directory = tempfile.TemporaryDirectory(prefix=f"sluiceway-bench-L-{side}-")
        self.path = str(Path(self.directory.name) / STORE_FILE)
        self.report = _spawn(["prepare", side, self.path, str(n)], 600 + n * 0.02, f"{side} import")

    def copy_to(self, directory: str) -> str:
        target = str(Path(directory) / STORE_FILE)
        for suffix in ("", "-wal", "-shm"):
            if Path(self.path + suffix).exists():
                shutil.copyfile(self.path + suffix, target + suffix)
        return target


class EngineDrip(Scenario):
    key = "L"
    title = "campaign engine: a drip launched to many contacts (seed 001)"
    baseline = (
        "seed 001's own design in asyncio + stdlib sqlite3: enrollContacts = one executemany "
        "into campaign_contacts, processNextSteps polling (campaign_id, status, "
        f"next_email_scheduled_at), {MAX_IN_FLIGHT} enrollments at once, one transaction per "
        f"step; sends through httpx under asyncio.Semaphore({SEND_LIMIT})"
    )
    metrics = (
        Metric("launch_per_s", "enrollments launched and waiting/s (higher is better)", "1/s", 0),
        Metric("wake_steps_per_s", "steps/s after the jump (higher is better)", "1/s", 0),
        Metric("rss_waiting_mb", "RSS of the process with all waiting", "MB", 1),
        Metric("rss_per_enrollment", "RSS growth per waiting enrollment", "bytes", 0),
        Metric("launch_seconds", "launch until all wait", "s", 2),
        Metric("wake_seconds", "jump until all advanced two steps", "s", 2),
        Metric("launch_cpu_us", "CPU per enrollment, launch", "us", 0),
        Metric("wake_cpu_us", "CPU per enrollment, wake (email + wait)", "us", 0),
        Metric("service_cpu_us", "notification service CPU per email", "us", 0),
        Metric("rss_peak_mb", "RSS peak", "MB", 1),
        Metric("peak_sends", "emails in flight, peak", "count", 0),
        Metric("tasks_living", "live tasks with all waiting", "count", 0),
    )
    warm_up = False  # every run is a fresh interpreter anyway
    #: A repetition of both sides takes about 15 minutes at full size.
    full_repeat = 2

    def __init__(self) -> None:
        self._templates: dict[tuple[str, int], _Template] = {}

    def params(self, quick: bool) -> dict[str, Any]:
        return {
            "n": 2_000 if quick else 100_000,
            "send_limit": SEND_LIMIT,
            "steps": [step["id"] for step in DRIP],
        }

    def warm_up_params(self) -> dict[str, Any]:
        return {**self.params(quick=True), "n": 100}

    def describe(self, params: Params) -> str:
        return (
            f"{params['n']:,} contacts launched into a drip (wait 1 day, email, wait 2 days, "
            f"email); the clock jumps a day and all wake at once: an email and a wait each, "
            f"sends capped at {params['send_limit']} at once, to a notification service in "
            "its own process; a fresh process per run"
        )

    def _template(self, side: str, n: int) -> _Template:
        if (side, n) not in self._templates:
            self._templates[side, n] = _Template(side, n)
        return self._templates[side, n]

    def run(self, side: str, params: Params) -> Sample:
        n = params["n"]
        template = self._template(side, n)
        with tempfile.TemporaryDirectory(prefix="sluiceway-bench-L-") as tmp:
            path = template.copy_to(tmp)
            notify_path = str(Path(tmp) / NOTIFY_FILE)
            service = NotificationProcess(notify_path)
            try:
                report = _spawn(
                    ["run", side, path, str(n), service.url, str(service.process.pid)],
                    3 * _deadline(n),
                    f"{side} worker",
                )
            finally:
                service.stop()
            report["import"] = template.report
            report.update(
                check_sends(notify_path, stored_enrollments(side, path), report["campaign_id"])
            )
        # What else ran on the machine meanwhile (other processes), in cores on average.
        report["other_cores_launch"] = (
            report["launch_machine_cpu_seconds"] - report["launch_cpu_seconds"]
        ) / report["launch_seconds"]
        report["other_cores_wake"] = (
            report["wake_machine_cpu_seconds"]
            - report["wake_cpu_seconds"]
            - report["service_cpu_seconds"]
        ) / report["wake_seconds"]
        report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        metrics = {
            "launch_per_s": n / report["launch_seconds"],
            "wake_steps_per_s": 2 * n / report["wake_seconds"],
            "rss_waiting_mb": report["rss_waiting_bytes"] / MB,
            "rss_per_enrollment": report["rss_per_enrollment_bytes"],
            "launch_seconds": report["launch_seconds"],
            "wake_seconds": report["wake_seconds"],
            "launch_cpu_us": report["launch_cpu_seconds"] / n * 1e6,
            "wake_cpu_us": report["wake_cpu_seconds"] / n * 1e6,
            "service_cpu_us": report["service_cpu_seconds"] / n * 1e6,
            "rss_peak_mb": (report["rss_peak_bytes"] or math.nan) / MB,
            "peak_sends": report["peak_sends"],
            "tasks_living": report["tasks_living_waiting"],
        }
        if report["send_retries"]:
            report.setdefault("warnings", []).append(
                f"{report['send_retries']} emails were tried again (a transport error or a "
                "5xx; the idempotency key made each retry safe)"
            )
        if report["peak_sends"] < SEND_LIMIT:
            report.setdefault("warnings", []).append(
                f"at most {report['peak_sends']} emails were in flight at once: the send "
                f"limit ({SEND_LIMIT}) was never reached"
            )
        return Sample(metrics, report)

    def target(self, summary: Summary, params: Params) -> Target:
        for template in self._templates.values():  # the scenario is over
            template.directory.cleanup()
        self._templates.clear()
        rss = summary["rss_waiting_mb"][SLUICEWAY]
        n = params["n"]
        return Target(
            f"the process holding {n:,} waiting enrollments under {TARGET_RSS_MB:g} MB of RSS "
            "in every run (sluiceway)",
            f"max {rss.high:.1f} MB, median {rss.median:.1f} MB (asyncio "
            f"{summary['rss_waiting_mb'][ASYNCIO].median:.1f} MB); launch/s "
            f"{ratio(summary, 'launch_per_s'):.2f}x, wake steps/s "
            f"{ratio(summary, 'wake_steps_per_s'):.2f}x asyncio",
            rss.high < TARGET_RSS_MB,
        )


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
