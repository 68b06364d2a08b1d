"""``sluiceway worker``: worker processes on a SQLite file run what the test submits to it.

The workers run ``tests.cli.worker_app:app`` in child processes (``python -m sluiceway
worker``); the test submits jobs with a runtime of its own that runs nothing (``work=False``)
and reads what the jobs did from their ledger (see worker_app.py). Usage errors are checked
in-process, with ``main()``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from sluiceway import EntityRecord, EntityStatus, open_runtime
from sluiceway.cli import main
from tests.cli.worker_app import TYPES, Job
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.cli.worker_app:app"
TIMEOUT = 60  # seconds for anything a test waits for

_logs = itertools.count(1)  # numbers the workers' logs


class Worker:
    """A ``sluiceway worker`` process; what it prints on stderr goes to ``log``."""

    def __init__(self, process: trio.Process, log: Path) -> None:
        self.process, self.log = process, log
        self.owner = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def printed(self) -> str:
        return self.log.read_text()

    async def started(self) -> str:
        """Wait for the line it prints once it works; returns that line."""

        async def working() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the worker exited {self.process.returncode}:\n{self.printed()}"
                )
            return "sluiceway worker: working for " in self.printed()

        with trio.fail_after(TIMEOUT):
            await eventually(working, interval=0.02)
        line = self.printed().splitlines()[0]
        self.owner = line.rpartition("(owner ")[2].rstrip(")")
        return line

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` and wait for the exit code."""
        self.process.send_signal(signum)
        with trio.fail_after(TIMEOUT):
            return await self.process.wait()


@contextlib.asynccontextmanager
async def worker(
    tmp_path: Path, db: Path | None, *extra: str, env: dict[str, str] | None = None
) -> AsyncIterator[Worker]:
    """A worker on ``db`` (none: ``--db`` is not passed), killed if the block leaves it running."""
    log = tmp_path / f"worker-{next(_logs)}.log"
    environment = {key: value for key, value in os.environ.items() if key != "SLUICEWAY_DB"}
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    environment.update({"PYTHONPATH": path, "SLUICEWAY_TEST_LEDGER": str(tmp_path / "ledger.db")})
    environment.update(env or {})
    argv = [sys.executable, "-m", "sluiceway", "worker", "--app", APP]
    if db is not None:
        argv += ["--db", str(db)]
    with log.open("w") as stderr:
        process = await trio.lowlevel.open_process(
            [*argv, *extra],
            cwd=ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        yield Worker(process, log)
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


async def submit(db: Path, jobs: dict[str, Any]) -> dict[str, str]:
    """Create a Job per name (its ``work``) and submit it; returns the ids by name."""
    ids = {}
    async with open_runtime(db, TYPES, work=False) as runtime:
        for name, work in jobs.items():
            record = await runtime.create(Job, {"work": work}, name=name)
            await runtime.start(record.id)
            ids[name] = record.id
    return ids


async def results(db: Path, ids: dict[str, str]) -> dict[str, Any]:
    """Wait until every job completed, wherever it ran; returns the results by name."""
    async with open_runtime(db, TYPES, work=False, poll_interval=0.05) as runtime:
        with trio.fail_after(TIMEOUT):
            return {name: await runtime.wait(entity_id) for name, entity_id in ids.items()}


async def record(db: Path, entity_id: str) -> EntityRecord:
    async with open_runtime(db, TYPES, work=False) as runtime:
        return await runtime.get(entity_id)


def ledger(tmp_path: Path, query: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(tmp_path / "ledger.db")) as db:
        return db.execute(query).fetchall()


def attempts(tmp_path: Path) -> list[tuple[str, int, float, float | None]]:
    """Every attempt of a job: ``(key, pid, started, ended)`` (``ended``: None if stopped)."""
    return [
        (key, pid, started, ended)
        for key, pid, started, ended in ledger(
            tmp_path, "SELECT key, pid, started, ended FROM attempts ORDER BY id"
        )
    ]


async def attempted(tmp_path: Path, count: int = 1) -> None:
    """Wait until ``count`` attempts began."""

    async def begun() -> bool:
        if not (tmp_path / "ledger.db").exists():
            return False
        return len(attempts(tmp_path)) >= count

    with trio.fail_after(TIMEOUT):
        await eventually(begun, interval=0.02)


def most_at_once(intervals: Sequence[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


# -- running the work of a store -------------------------------------------------------------


async def test_a_worker_runs_the_jobs_submitted_before_and_after_it_started(
    tmp_path: Path,
) -> None:
    db = tmp_path / "store.db"
    ids = await submit(db, {f"early-{n}": 0 for n in range(3)})
    async with worker(tmp_path, None, env={"SLUICEWAY_DB": str(db)}) as running:
        line = await running.started()
        assert line.startswith(f"sluiceway worker: working for worker-test on {db} (owner ")
        assert running.owner.split(":")[1] == str(running.pid)
        ids |= await submit(db, {f"late-{n}": 0 for n in range(3)})
        done = await results(db, ids)
        assert await running.stop() == 0
    assert sorted(done) == sorted(ids)
    assert {result["pid"] for result in done.values()} == {running.pid}
    assert {result["name"] for result in done.values()} == set(ids)
    # One attempt and one effect per job; the lifespan was entered, and left at the end.
    keys = [key for key, *_ in attempts(tmp_path)]
    assert sorted(keys) == sorted(result["key"] for result in done.values())
    assert ledger(tmp_path, "SELECT count(*) FROM effects") == [(6,)]
    assert ledger(tmp_path, "SELECT event, pid FROM events") == [
        ("enter", running.pid),
        ("exit", running.pid),
    ]
    assert running.printed().splitlines()[1:] == [
        "sluiceway worker: SIGTERM: shutting down (runs get 5 s to finish)"
    ]


@pytest.mark.slow
async def test_two_workers_share_the_work_and_run_each_job_once(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    async with (
        worker(tmp_path, db, "--max-runs", "2") as first,
        worker(tmp_path, db, "--max-runs", "2") as second,
    ):
        await first.started()
        await second.started()
        ids = await submit(db, {f"job-{n:02}": 0.3 for n in range(24)})
        done = await results(db, ids)
        assert await first.stop() == 0
        assert await second.stop() == 0
    tried = attempts(tmp_path)
    # Each job ran once, in one of the two processes, and did its effect once.
    assert sorted(key for key, *_ in tried) == sorted(result["key"] for result in done.values())
    assert ledger(tmp_path, "SELECT count(*) FROM effects") == [(24,)]
    by_pid = {
        pid: [(started, ended) for _, p, started, ended in tried if p == pid]
        for pid in (first.pid, second.pid)
    }
    assert all(by_pid.values()), {pid: len(runs) for pid, runs in by_pid.items()}
    assert sum(len(runs) for runs in by_pid.values()) == 24
    # --max-runs 2: never more than two runs at once in a process.
    assert all(most_at_once(runs) <= 2 for runs in by_pid.values())
    for entity_id in ids.values():
        assert (await record(db, entity_id)).status is EntityStatus.COMPLETED


# -- shutting down ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_stops_it_promptly_and_the_run_is_given_back(
    tmp_path: Path, signum: int
) -> None:
    db = tmp_path / "store.db"
    async with worker(tmp_path, db, "--grace", "0.5") as running:
        await running.started()
        ids = await submit(db, {"slow": [60, 0]})  # slow the first time only
        await attempted(tmp_path)
        before = trio.current_time()
        assert await running.stop(signum) == 0
        assert trio.current_time() - before < 15
    name = signal.Signals(signum).name
    assert running.printed().splitlines()[1:] == [
        f"sluiceway worker: {name}: shutting down (runs get 0.5 s to finish)"
    ]
    # Stopped where it was, its lease given back: due again at once, and nothing done.
    stopped = await record(db, ids["slow"])
    assert stopped.lease_owner is None
    assert stopped.runnable_at is not None
    assert stopped.status is not EntityStatus.COMPLETED
    assert ledger(tmp_path, "SELECT count(*) FROM effects") == [(0,)]
    assert [event for event, _ in ledger(tmp_path, "SELECT event, pid FROM events")] == [
        "enter",
        "exit",
    ]
    # The next worker resumes it.
    async with worker(tmp_path, db) as resuming:
        await resuming.started()
        done = await results(db, ids)
        assert await resuming.stop() == 0
    assert done["slow"]["pid"] == resuming.pid
    assert [pid for _, pid, *_ in attempts(tmp_path)] == [running.pid, resuming.pid]
    assert ledger(tmp_path, "SELECT count(*) FROM effects") == [(1,)]


async def test_runs_under_way_finish_within_the_grace_period(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    async with worker(tmp_path, db, "--grace", "30") as running:
        await running.started()
        ids = await submit(db, {"short": 1.5})
        await attempted(tmp_path)
        before = trio.current_time()
        assert await running.stop() == 0
        assert trio.current_time() - before < 20
    finished = await record(db, ids["short"])
    assert finished.status is EntityStatus.COMPLETED
    assert finished.result["pid"] == running.pid
    [(_, pid, _, ended)] = attempts(tmp_path)
    assert (pid, ended is not None) == (running.pid, True)


async def test_a_second_signal_ends_the_grace_period(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    async with worker(tmp_path, db, "--grace", "600") as running:
        await running.started()
        ids = await submit(db, {"slow": 600})
        await attempted(tmp_path)
        running.process.send_signal(signal.SIGTERM)

        async def shutting_down() -> bool:
            return "shutting down" in running.printed()

        with trio.fail_after(TIMEOUT):
            await eventually(shutting_down, interval=0.02)
        before = trio.current_time()
        assert await running.stop(signal.SIGINT) == 0
        assert trio.current_time() - before < 15
    stopped = await record(db, ids["slow"])
    assert (stopped.lease_owner, stopped.status is EntityStatus.COMPLETED) == (None, False)
    assert stopped.runnable_at is not None


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "message"),
    [
        (
            "no_such_module:app",
            "cannot import the application no_such_module:app: No module named 'no_such_module'",
        ),
        (
            "tests.cli.worker_app:nothing",
            "module 'tests.cli.worker_app' has no attribute 'nothing'",
        ),
        (
            "json:dumps",
            "json:dumps is neither an Application nor a function without arguments that "
            "returns one",
        ),
        ("nocolon", "an application is named MODULE:NAME (e.g. myapp.crm:app), got 'nocolon'"),
    ],
)
def test_an_application_that_cannot_be_loaded_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], app: str, message: str
) -> None:
    db = tmp_path / "store.db"
    assert main(["worker", "--app", app, "--db", str(db)]) == 1
    assert capsys.readouterr() == ("", f"sluiceway worker: {message}\n")
    assert not db.exists()  # nothing was opened


def test_a_store_that_cannot_be_opened_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n" * 100)
    assert main(["worker", "--app", APP, "--db", str(notes)]) == 1
    assert capsys.readouterr() == (
        "",
        f"sluiceway worker: {str(notes)!r} is not an SQLite database, so not a sluiceway "
        "entity store\n",
    )


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        ([], "no entity store given: pass --db PATH|URL or set SLUICEWAY_DB"),
        (["--db", "x.db", "--max-runs", "0"], "--max-runs must be >= 1, got 0"),
        (["--db", "x.db", "--grace", "-1"], "--grace must be >= 0 and --lease-seconds > 0"),
        (["--db", "x.db", "--lease-seconds", "0"], "--grace must be >= 0 and --lease-seconds > 0"),
        (["--db", "x.db", "--grace", "nan"], "--grace must be >= 0 and --lease-seconds > 0"),
        (["--db", "x.db", "--max-runs", "many"], "argument --max-runs: invalid int value: 'many'"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    error: str,
) -> None:
    monkeypatch.delenv("SLUICEWAY_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["worker", "--app", APP, *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: sluiceway worker ")
    assert err.endswith(f"sluiceway worker: error: {error}\n")
    assert list(tmp_path.iterdir()) == []
    assert main(["worker", "--db", "x.db"]) == 2  # --app is required
    assert "the following arguments are required: --app" in capsys.readouterr().err
