"""Scenario F: the entity fan-out of scenario E, SIGKILLed part-way and resumed.

The workload is scenario E's (``entities.py``): a parent entity, 10,000 children through
``parallel_calls`` at concurrency 100, each child one RUNNING status envelope and a small
result; the asyncio side is E's baseline. Every run here is a fresh interpreter
(``python -m benchmarks.entities_resume MODE SIDE STORE N CONCURRENCY [KILL_AT]``), which prints
one JSON line.

The kill (deterministic, :class:`~benchmarks.entities.Killer`): children ``KILL_AT`` and above
stop after their RUNNING envelope; the parent's consumer, on the ``KILL_AT``-th result, waits
until the children that took capacity meanwhile (100) have all stopped there, and SIGKILLs the
process. The store then holds exactly ``KILL_AT`` COMPLETED children, 100 interrupted ones
(STARTED and RUNNING, attempt 1, leased by the dead process) and the parent IN_PROGRESS; the
driver checks that state.

The resume, in a fresh process: sluiceway opens the same store and calls ``runtime.recover()``
(the dead process's leases are taken over at once: its pid no longer exists); the parent runs
again, its ``parallel_calls`` finds the children it created (one query), COMPLETED children
return their stored result without running, interrupted ones run again (attempt 2), the rest
are created and run. The asyncio baseline re-runs the fan-out: it loads the parent's row, claims
it again, loads all its children in one ``SELECT`` (a bulk load, not a query per child), delivers
the stored result of each COMPLETED child to the consumer at once without spawning a task,
claims and re-runs the interrupted ones, and creates and runs the rest.

Measured in the resuming process: the **resume time** (from just before ``recover()``, or the
baseline's first query, until the parent's run has returned); the **skip time**, from the same
start until the first child that is not COMPLETED starts running. That moment is taken by an
instrumented child body (:class:`~benchmarks.entities.ChildLog`: ``perf_counter()`` when the
first child body of the process starts, after its claim), because it is what "starts running"
means for a workflow, is monotonic, and is the same point on both sides; the raw results also
hold the same moment read from the store (the ``ts`` of the first STARTED envelope written after
the resume began, wall clock) as a cross-check. Resume time per remaining child is the resume
time divided by ``N - KILL_AT``; skip time per completed child is the skip time divided by
``KILL_AT``.

Each side is killed once per kill point per scenario run: the store files as the SIGKILL left
them (database, ``-wal`` and ``-shm``) are kept as an image, and every repetition resumes a
fresh copy of that image in a fresh process. The killed state is deterministic and verified, and
the kill itself is not measured; killing again in every repetition would add 15,000 children of
unmeasured work per side and repetition. The uninterrupted per-child time that the resumes are
compared with is measured in every repetition, just before them: an uninterrupted run of all N
children in a fresh process (the same worker, no kill), so each repetition's ratios are paired.

After every resume (both sides) the store is checked as in E, and more: every child exists once
and is COMPLETED exactly once with the right result; children completed before the kill still
have attempt 1 and a single STARTED envelope (they did not run again); interrupted ones have
attempt 2 and STARTED twice (STARTED count == attempt), their RUNNING envelope once on
sluiceway's side (the re-run replays ``run_impl`` and does not store again what the first run
stored) and twice on the baseline's (it stores it again); every other child exactly its
4 envelopes; the parent ran twice; no lease held; ``PRAGMA integrity_check`` ok. In the resuming
process: exactly the children ``KILL_AT .. N-1`` ran, each once, within the limit; every result
reached the consumer once; the capacity node (semaphore) is idle afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sluiceway import SqliteStore, open_runtime

from .entities import (
    ENTITY_TYPES,
    PARENT,
    AsyncioDb,
    BenchParent,
    Killer,
    asyncio_create_root,
    asyncio_parent,
    check_pool_idle,
    check_semaphore_idle,
    child_name,
    new_asyncio_run,
    new_trio_run,
    parent_result,
    run_entity,
    set_run,
    store_dir,
    verify_store,
)
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
    run_asyncio,
    run_trio,
)

#: The issue's targets: resume time per remaining child within this factor of the
#: uninterrupted per-child time at every kill point ...
TOLERANCE = 1.5
#: ... and skipping the children completed before a kill at 50 % in under this many seconds.
SKIP_LIMIT_SECONDS = 1.0
#: Where the kills happen, as fractions of N.
KILL_POINTS = (0.25, 0.5, 0.75)
STORE_FILE = "entities.db"
ROOT = Path(__file__).resolve().parents[1]


def _label(fraction: float) -> str:
    return f"{round(fraction * 100)}"


# -- the worker (a fresh interpreter per run) ------------------------------------------------------


def worker_sluiceway(mode: str, path: str, n: int, limit: int, kill_at: int) -> dict[str, Any]:
    out: dict[str, Any] = {}

    async def main() -> float:
        killer = Killer(kill_at, n, limit, time.perf_counter()) if mode == "kill" else None
        run = new_trio_run(n, limit, killer)
        store = SqliteStore(path)
        opening = time.perf_counter()
        try:
            async with open_runtime(store, ENTITY_TYPES) as runtime:
                out["open_seconds"] = time.perf_counter() - opening
                if mode == "resume":
                    out["wall_start"] = time.time()
                    start = time.perf_counter()
                    recovered = await run_entity(runtime.recover)
                    elapsed = time.perf_counter() - start
                    if [(r.entity_name, r.error) for r in recovered] != [(PARENT, None)]:
                        raise BenchmarkError(
                            f"recover() resumed {recovered!r}, expected the parent"
                        )
                    result = recovered[0].result
                else:
                    root = await runtime.create(BenchParent, {"n": n}, name=PARENT)
                    if killer is not None:
                        killer.started = time.perf_counter()
                    start = time.perf_counter()
                    result = await run_entity(lambda: runtime.run(root.id))
                    elapsed = time.perf_counter() - start
                stats = store.statistics()
        finally:
            set_run(None)
        if result != parent_result(n):
            raise BenchmarkError(f"the parent returned {result!r}")
        ran = range(kill_at, n) if mode == "resume" else range(n)
        out.update(run.results.verify(), **run.log.verify(ran), **check_pool_idle(run.pool))
        out["first_start"] = None if run.log.first_start is None else run.log.first_start - start
        out["store_batches"], out["store_writes"] = stats.batches, stats.writes
        return elapsed

    out["seconds"], out["wall_seconds"] = run_trio(main)
    return out


def worker_asyncio(mode: str, path: str, n: int, limit: int, kill_at: int) -> dict[str, Any]:
    out: dict[str, Any] = {}

    async def main() -> float:
        killer = Killer(kill_at, n, limit, time.perf_counter()) if mode == "kill" else None
        run = new_asyncio_run(n, limit, killer)
        db = AsyncioDb(path)
        opening = time.perf_counter()
        await db.open()
        out["open_seconds"] = time.perf_counter() - opening
        try:
            if mode == "resume":
                out["wall_start"] = time.time()
                start = time.perf_counter()
                root = await db.root()
                if root is None or root.status == "COMPLETED":
                    raise BenchmarkError(f"nothing to resume: the parent is {root!r}")
                result = await asyncio_parent(db, run, root.id, resume=True)
                elapsed = time.perf_counter() - start
            else:
                root_id = await asyncio_create_root(db, n)
                if killer is not None:
                    killer.started = time.perf_counter()
                start = time.perf_counter()
                result = await asyncio_parent(db, run, root_id, resume=False)
                elapsed = time.perf_counter() - start
        finally:
            await db.close()
        if result != parent_result(n):
            raise BenchmarkError(f"the parent returned {result!r}")
        ran = range(kill_at, n) if mode == "resume" else range(n)
        out.update(
            run.results.verify(),
            **run.log.verify(ran),
            **check_semaphore_idle(run.semaphore, limit),
        )
        out["first_start"] = None if run.log.first_start is None else run.log.first_start - start
        out["store_batches"] = out["store_writes"] = db.transactions
        return elapsed

    out["seconds"], out["wall_seconds"] = run_asyncio(main)
    return out


def worker_main(argv: list[str]) -> int:
    """``python -m benchmarks.entities_resume MODE SIDE STORE N CONCURRENCY [KILL_AT]``.

    MODE is ``full`` (create and run the parent to the end), ``kill`` (the same, SIGKILLed at
    KILL_AT: it prints a line about the killed run first, and never returns) or ``resume``
    (open the store and resume the killed run). Prints one JSON line.
    """
    mode, side, path, n, limit = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    kill_at = int(argv[5]) if len(argv) > 5 else 0
    if mode not in ("full", "kill", "resume"):
        raise SystemExit(f"unknown mode {mode!r}")
    work = {SLUICEWAY: worker_sluiceway, ASYNCIO: worker_asyncio}[side]
    try:
        report = work(mode, path, n, limit, kill_at)
    except BaseException as exc:  # report it to the driver, which fails the suite loudly
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise
    print(json.dumps(report))
    return 0


# -- the driver ----------------------------------------------------------------------------------


def _spawn(mode: str, side: str, path: str, params: Params, kill_at: int = 0) -> dict[str, Any]:
    """Run the worker (checking its exit status: killed or 0); return the last JSON line it
    printed."""
    n, limit = params["n"], params["concurrency"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "benchmarks.entities_resume",
        mode,
        side,
        path,
        str(n),
        str(limit),
        str(kill_at),
    ]
    where = f"{side} {mode} run" + (f" (kill at {kill_at:,})" if mode != "full" else "")
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60 + n * 0.01,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"{where} timed out after {exc.timeout:.0f} s") from exc
    expected = -signal.SIGKILL if mode == "kill" else 0
    if done.returncode != expected:
        raise BenchmarkError(
            f"{where} ended with exit status {done.returncode}, expected {expected}:\n"
            f"{done.stderr.strip()[-2000:]}"
        )
    try:
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise BenchmarkError(f"{where} printed no report: {done.stdout!r}") from exc
    return report


def check_killed_store(path: str, n: int, limit: int, kill_at: int) -> dict[str, Any]:
    """The store as the kill left it: exactly ``kill_at`` COMPLETED children (0 .. kill_at-1),
    the next ``min(limit, n - kill_at)`` interrupted (IN_PROGRESS, attempt 1, leased, STARTED
    and RUNNING only), no other child, and the parent IN_PROGRESS."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT e.name, e.parent_id IS NULL, e.status, e.attempt, e.lease_owner,"
            " (SELECT count(*) FROM envelopes AS v WHERE v.entity_id = e.id) FROM entities AS e"
        ).fetchall()
    finally:
        conn.close()
    stopped = min(limit, n - kill_at)
    expected: dict[str, tuple[bool, str, int, bool, int]] = {
        PARENT: (True, "IN_PROGRESS", 1, True, 1)
    }
    for i in range(kill_at):
        expected[child_name(i)] = (False, "COMPLETED", 1, False, 4)
    for i in range(kill_at, kill_at + stopped):
        expected[child_name(i)] = (False, "IN_PROGRESS", 1, True, 2)
    found = {
        name: (bool(root), status, attempt, owner is not None, envelopes)
        for name, root, status, attempt, owner, envelopes in rows
    }
    if len(rows) != len(found) or found != expected:
        wrong = [
            name
            for name in sorted(set(found) | set(expected))
            if found.get(name) != expected.get(name)
        ]
        raise BenchmarkError(
            f"after the kill at {kill_at:,}: {len(rows)} entities, expected {len(expected)}; "
            f"differing: {[(name, found.get(name), expected.get(name)) for name in wrong[:5]]}"
        )
    return {"completed_at_kill": kill_at, "interrupted_at_kill": stopped}


def _copy_store(source: Path, target: Path) -> None:
    """Copy the store's files (database, ``-wal``, ``-shm``) as they are."""
    target.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        file = source / f"{STORE_FILE}{suffix}"
        if file.exists():
            shutil.copy2(file, target / file.name)


class _Images:
    """One side's killed stores, one per kill point (made once per scenario run)."""

    def __init__(self, side: str, params: Params) -> None:
        n, limit = params["n"], params["concurrency"]
        self.directory = store_dir("F")
        self.kills: dict[int, dict[str, Any]] = {}
        try:
            for kill_at in kill_points(params):
                with store_dir("F") as tmp:
                    path = str(Path(tmp) / STORE_FILE)
                    report = _spawn("kill", side, path, params, kill_at)
                    _copy_store(Path(tmp), self.image(kill_at))  # before anything opens it
                    report.update(check_killed_store(path, n, limit, kill_at))
                self.kills[kill_at] = report
        except BaseException:
            self.directory.cleanup()
            raise

    def image(self, kill_at: int) -> Path:
        return Path(self.directory.name) / str(kill_at)


def _uninterrupted(side: str, params: Params) -> dict[str, Any]:
    """An uninterrupted run of all N children in a fresh process (the same worker, no kill)."""
    with store_dir("F") as tmp:
        path = str(Path(tmp) / STORE_FILE)
        report = _spawn("full", side, path, params)
        report.update(verify_store(path, params["n"]))
    return report


def kill_points(params: Params) -> list[int]:
    return [round(params["n"] * fraction) for fraction in params["kill_points"]]


def first_started_after(path: str, wall_start: float) -> float | None:
    """The wall-clock ``ts`` of the first STARTED envelope of a child written at or after
    ``wall_start``."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute(
            "SELECT min(v.ts) FROM envelopes AS v JOIN entities AS e ON e.id = v.entity_id"
            " WHERE e.parent_id IS NOT NULL AND v.ts >= ? AND v.body LIKE '%\"STARTED\"%'",
            (wall_start,),
        ).fetchone()
    finally:
        conn.close()
    return None if row[0] is None else float(row[0])


def _resume(side: str, params: Params, images: _Images, kill_at: int) -> dict[str, Any]:
    n, limit = params["n"], params["concurrency"]
    with store_dir("F") as tmp:
        _copy_store(images.image(kill_at), Path(tmp))
        path = str(Path(tmp) / STORE_FILE)
        report = _spawn("resume", side, path, params, kill_at)
        interrupted = range(kill_at, kill_at + min(limit, n - kill_at))
        report.update(
            verify_store(
                path,
                n,
                attempts=dict.fromkeys(interrupted, 2),
                parent_attempts=2,
                replay=side == SLUICEWAY,
            )
        )
        started = first_started_after(path, report["wall_start"])
    report["skip_seconds_from_store"] = None if started is None else started - report["wall_start"]
    if report["first_start"] is None:
        raise BenchmarkError(f"{side}: no child ran after the kill at {kill_at:,}")
    return report


def _kill_point_metrics(label: str) -> tuple[Metric, ...]:
    at = f"@{label}%"
    return (
        Metric(f"resume_{label}", f"{at} resume time", "s"),
        Metric(f"skip_{label}", f"{at}   skip of the completed", "s"),
        Metric(f"remaining_{label}", f"{at}   remaining work", "s"),
        Metric(f"per_remaining_{label}", f"{at} resume per remaining child", "us", 1),
        Metric(f"x_full_{label}", f"{at}   / uninterrupted per child", "x", 2),
        Metric(f"skip_us_{label}", f"{at} skip per completed child", "us", 1),
    )


class EntityResume(Scenario):
    key = "F"
    title = "entity fan-out killed (SIGKILL) and resumed, concurrency 100"
    baseline = (
        "scenario E's asyncio + sqlite3 implementation, killed the same way, resumed by "
        "re-running the fan-out: one bulk SELECT of the parent's children, COMPLETED ones "
        "delivered from their stored result without a task, the others (re)claimed and run"
    )
    metrics: tuple[Metric, ...] = (
        Metric("full_us", "uninterrupted run, per child", "us", 1),
        *(metric for fraction in KILL_POINTS for metric in _kill_point_metrics(_label(fraction))),
        Metric("growth", "per remaining child, max/min over kill points", "x", 2),
    )
    warm_up = False  # every run is a fresh interpreter anyway

    def __init__(self) -> None:
        self._images: dict[tuple[str, str], _Images] = {}

    def params(self, quick: bool) -> dict[str, Any]:
        return {"n": 1_000 if quick else 10_000, "concurrency": 100, "kill_points": KILL_POINTS}

    def warm_up_params(self) -> dict[str, Any]:
        return {**self.params(quick=True), "n": 200}

    def describe(self, params: Params) -> str:
        points = ", ".join(
            f"{_label(f)}% ({k:,})"
            for f, k in zip(params["kill_points"], kill_points(params), strict=True)
        )
        return (
            f"E's fan-out of {params['n']:,} children (concurrency {params['concurrency']}) in a "
            f"subprocess, SIGKILLed once {points} children are COMPLETED, resumed in a fresh "
            "process; each side killed once per kill point, every repetition resumes a copy of "
            "each killed store and runs an uninterrupted reference"
        )

    def _images_for(self, side: str, params: Params) -> _Images:
        key = (side, json.dumps(params, sort_keys=True))
        if key not in self._images:
            self._images[key] = _Images(side, params)
        return self._images[key]

    def run(self, side: str, params: Params) -> Sample:
        n = params["n"]
        images = self._images_for(side, params)
        reference = _uninterrupted(side, params)
        full_us = reference["seconds"] / n * 1e6
        metrics: dict[str, float] = {"full_us": full_us}
        info: dict[str, Any] = {
            "uninterrupted": reference,
            "kills": {str(k): report for k, report in images.kills.items()},
            "resumes": {},
        }
        per_remaining: list[float] = []
        for fraction, kill_at in zip(params["kill_points"], kill_points(params), strict=True):
            label = _label(fraction)
            report = _resume(side, params, images, kill_at)
            seconds, skip = report["seconds"], report["first_start"]
            remaining = n - kill_at
            metrics[f"resume_{label}"] = seconds
            metrics[f"per_remaining_{label}"] = seconds / remaining * 1e6
            metrics[f"x_full_{label}"] = seconds / remaining * 1e6 / full_us
            metrics[f"skip_{label}"] = skip
            metrics[f"remaining_{label}"] = seconds - skip
            metrics[f"skip_us_{label}"] = skip / kill_at * 1e6 if kill_at else 0.0
            report["remaining_us_per_child"] = (seconds - skip) / remaining * 1e6
            per_remaining.append(seconds / remaining)
            info["resumes"][label] = report
        metrics["growth"] = max(per_remaining) / min(per_remaining)
        if metrics["growth"] > TOLERANCE:
            info["warnings"] = [
                f"resume time per remaining child varies {metrics['growth']:.2f}x over the kill "
                "points: resuming does not scale with the remaining work alone"
            ]
        return Sample(metrics, info)

    def target(self, summary: Summary, params: Params) -> Target:
        for images in self._images.values():  # the scenario is over: drop the killed stores
            images.directory.cleanup()
        self._images.clear()
        labels = [_label(f) for f in params["kill_points"]]
        ours = {label: summary[f"x_full_{label}"][SLUICEWAY].median for label in labels}
        theirs = {label: summary[f"x_full_{label}"][ASYNCIO].median for label in labels}
        middle = _label(0.5) if 0.5 in params["kill_points"] else labels[len(labels) // 2]
        skip = summary[f"skip_{middle}"][SLUICEWAY].median
        skipped = round(params["n"] * int(middle) / 100)
        growth = summary["growth"][SLUICEWAY].median
        worst = max(ours.values())
        return Target(
            f"sluiceway resume per remaining child <= {TOLERANCE:g}x uninterrupted at every kill "
            f"point, and skip of the {skipped:,} completed children (kill at {middle}%) < "
            f"{SKIP_LIMIT_SECONDS:g} s",
            ", ".join(f"@{label}% {ours[label]:.2f}x" for label in labels)
            + f"; skip {skip:.3f} s; per-remaining-child growth (max/min) {growth:.2f}x "
            + "(asyncio: "
            + ", ".join(f"@{label}% {theirs[label]:.2f}x" for label in labels)
            + f", skip {summary[f'skip_{middle}'][ASYNCIO].median:.3f} s)",
            worst <= TOLERANCE and skip < SKIP_LIMIT_SECONDS,
        )


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
