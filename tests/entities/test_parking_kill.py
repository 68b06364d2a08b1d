"""Ten thousand entities parked on a three-day durable sleep, across processes: a process
killed while it parks them, one that holds them all (live tasks bounded by a constant, RSS
growth under 50 MB), one killed in the middle of the three days, and one three days later
that completes every one, exactly once."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COUNT = 10_000
DAY = 86_400.0


def worker(store: Path, offset: float, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "tests.entities.sleepers_worker"),
            *(str(store), str(COUNT), str(offset), mode),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)  # reads and closes its pipes
    assert process.returncode == -signal.SIGKILL


def report(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_ten_thousand_three_day_sleepers_survive_kills_and_complete_once(
    tmp_path: Path,
) -> None:
    store = tmp_path / "sleepers.db"
    # A first process is killed while it creates and parks them.
    first = worker(store, 0, "park")
    assert first.stdout is not None
    for line in first.stdout:
        if line.startswith("progress") and int(line.split()[1]) >= COUNT // 3:
            break
    kill(first)
    # The next one finishes the job: every one parked, none held in memory.
    parked = report(worker(store, 0, "park"))
    assert parked["done"] == COUNT
    assert parked["tasks_now"] < 20
    assert parked["tasks_peak"] < 200  # bounded by max_runs, not by 10,000
    assert parked["rss_growth_mb"] < 50
    # One in the middle of the three days: nothing is due; it is killed too.
    middle = worker(store, 1.5 * DAY, "idle")
    assert middle.stdout is not None
    assert middle.stdout.readline() == "ready\n"  # its runtime is open, its claim loop runs
    kill(middle)
    # Three days later every one wakes and completes.
    finished = report(worker(store, 3 * DAY + 1, "finish"))
    assert finished["done"] == COUNT
    assert finished["tasks_peak"] < 200
    with sqlite3.connect(store) as db:
        rows = db.execute(
            "SELECT status, count(*), max(lease_owner), min(runnable_at) FROM entities"
            " GROUP BY status"
        ).fetchall()
        completions = db.execute(
            "SELECT count(*), count(DISTINCT entity_id) FROM envelopes"
            " WHERE body LIKE '%\"COMPLETED\"%'"
        ).fetchone()
    assert rows == [("COMPLETED", COUNT, None, None)]
    assert completions == (COUNT, COUNT)  # each completed exactly once
