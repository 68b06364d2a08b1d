"""Worker processes on one PostgreSQL schema, for the scale-out tests: start them, find the
one holding an entity's lease, kill or freeze it, and read what the cluster did."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import trio

from sluiceway.demos._pgserver import schema_url
from tests.helpers import eventually
from tests.scaleout.app import LEDGER_TABLES

__all__ = [
    "APP",
    "ROOT",
    "Cluster",
    "Worker",
    "cluster",
    "create_ledger",
    "db_now",
    "peak",
    "query",
    "schema_url",  # the URL --db takes for a DSN and a schema
]

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.scaleout.app:app"
TIMEOUT = 60.0


def query(dsn: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def create_ledger(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in LEDGER_TABLES:
            conn.execute(statement)  # type: ignore[arg-type]


class Worker:
    def __init__(self, process: trio.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self.owner = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def printed(self) -> str:
        return self.log.read_text()

    async def working(self) -> None:
        async def started() -> bool:
            if self.process.returncode is not None:
                raise AssertionError(f"worker {self.pid} exited:\n{self.printed()}")
            return "working for" in self.printed()

        with trio.fail_after(TIMEOUT):
            await eventually(started, interval=0.02)
        line = next(line for line in self.printed().splitlines() if "working for" in line)
        self.owner = line.rpartition("(owner ")[2].rstrip(")")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(TIMEOUT):
            return await self.process.wait()


class Cluster:
    """Workers on the store at ``url`` (see :func:`cluster`)."""

    def __init__(self, url: str, dsn: str, tmp_path: Path, options: dict[str, str]) -> None:
        self.url = url
        self.dsn = dsn
        self.tmp_path = tmp_path
        self.options = options
        self.workers: list[Worker] = []

    async def start(self, count: int = 1) -> list[Worker]:
        started = [await self._spawn() for _ in range(count)]
        for worker in started:
            await worker.working()
        return started

    async def _spawn(self) -> Worker:
        log = self.tmp_path / f"worker-{len(self.workers)}.log"
        env = {key: value for key, value in os.environ.items() if key != "SLUICEWAY_DB"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["SCALEOUT_LEDGER_DSN"] = self.dsn
        env.update(self.options)
        argv = [sys.executable, "-m", "sluiceway", "worker", "--app", APP, "--db", self.url]
        argv += ["--lease-seconds", self.options.get("LEASE", "3"), "--grace", "0"]
        if "MAX_RUNS" in self.options:
            argv += ["--max-runs", self.options["MAX_RUNS"]]
        with log.open("w") as stderr:
            process = await trio.lowlevel.open_process(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        worker = Worker(process, log)
        self.workers.append(worker)
        return worker

    def holder(self, entity_id: str) -> Worker | None:
        """The worker holding the entity's lease now, if any."""
        rows = query(self.dsn, "SELECT lease_owner FROM entities WHERE id = %s", (entity_id,))
        owner = rows[0][0] if rows else None
        return next((worker for worker in self.workers if worker.owner == owner), None)

    async def stop(self) -> None:
        for worker in self.workers:
            if worker.process.returncode is None:
                worker.process.send_signal(signal.SIGCONT)  # in case it is frozen
                await worker.stop()


@contextlib.asynccontextmanager
async def cluster(url: str, dsn: str, tmp_path: Path, **options: str) -> AsyncIterator[Cluster]:
    """A cluster of workers on ``url``, every one stopped (killed if need be) when the block
    ends. ``options`` go into the workers' environment (``SCALEOUT_GLOBAL``...); ``LEASE``
    and ``MAX_RUNS`` also set their ``--lease-seconds`` and ``--max-runs``."""
    group = Cluster(url, dsn, tmp_path, options)
    try:
        yield group
    finally:
        with trio.CancelScope(shield=True):
            for worker in group.workers:
                if worker.process.returncode is None:
                    worker.process.send_signal(signal.SIGCONT)
                    worker.process.kill()
                    await worker.process.wait()


def db_now(dsn: str) -> float:
    return float(query(dsn, "SELECT extract(epoch FROM clock_timestamp())::float8")[0][0])


def peak(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals open at once."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most
