"""The crash-loop guard, with real SIGKILLs: an entity that takes down every process running
it is failed after ``crash_limit`` (3) abandoned runs in a row, and the next process serves on."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_worker(store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.entities.crash_loop_worker", str(store)],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_poison_pill_is_failed_after_three_deaths(tmp_path: Path) -> None:
    store = tmp_path / "poison.db"
    for death in range(1, 4):
        run = run_worker(store)
        assert run.returncode == -9, (death, run.stdout, run.stderr)  # SIGKILLed by its entity
        with sqlite3.connect(store) as db:
            (abandoned,) = db.execute(
                "SELECT abandoned FROM entities WHERE name = 'killer'"
            ).fetchone()
        assert abandoned == death - 1  # counted when the next process takes it over
    survivor = run_worker(store)
    assert survivor.returncode == 0, survivor.stderr
    report = json.loads(survivor.stdout.strip().splitlines()[-1])
    assert report["steady"] == "steady"
    error = report["killer"]["error"]
    assert error["type"] == "sluiceway.CrashLoop"
    assert "abandoned by dying processes 3 times in a row" in error["message"]
    with sqlite3.connect(store) as db:
        rows = db.execute(
            "SELECT status, attempt, lease_owner, runnable_at FROM entities WHERE name = 'killer'"
        ).fetchall()
        statuses = [
            json.loads(body).get("status")
            for (body,) in db.execute(
                "SELECT v.body FROM envelopes AS v JOIN entities AS e ON e.id = v.entity_id"
                " WHERE e.name = 'killer' ORDER BY v.seq"
            )
        ]
    assert rows == [("FAILED", 3, None, None)]  # three runs, no fourth
    assert statuses == ["STARTED", "RUNNING", "STARTED", "STARTED", None, "FAILED"]
