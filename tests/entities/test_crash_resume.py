"""Crash-resume, proven: the campaign workflow is SIGKILLed at many points of its store writes
(before a write batch, in the middle of one, right after its commit), restarted, recovered,
and checked after every run.

After each trial: every child exists once; no COMPLETED child ran again; each idempotency key
had its side effect once; the result equals an uninterrupted run; the database passes
``PRAGMA integrity_check``; no lease or capacity is left held.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
GROUPS, PER_GROUP = 4, 50
TRIALS = 8
KILLS_PER_TRIAL = 3
SEED = 20261121


def run_worker(store: Path, effects: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.entities.crash_worker", str(store), str(effects), *args],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def finish(store: Path, effects: Path) -> dict[str, Any]:
    done = run_worker(store, effects)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def check_store(store: Path, effects: Path) -> None:
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute(
            "SELECT id, parent_id, name, type, status, attempt, lease_owner FROM entities"
        ).fetchall()
        envelopes = db.execute("SELECT entity_id, body FROM envelopes").fetchall()
    by_type = Counter(row[3] for row in rows)
    assert by_type == {"Campaign": 1, "Group": GROUPS, "Recipient": GROUPS * PER_GROUP}
    assert Counter((row[1], row[2]) for row in rows).most_common(1)[0][1] == 1  # once each
    assert {row[4] for row in rows} == {"COMPLETED"}
    assert {row[6] for row in rows} == {None}  # no lease left held
    started: Counter[str] = Counter()
    completed: Counter[str] = Counter()
    for entity_id, body in envelopes:
        status = json.loads(body).get("status")
        if status == "STARTED":
            started[entity_id] += 1
        elif status == "COMPLETED":
            completed[entity_id] += 1
    attempts = {row[0]: row[5] for row in rows}
    for entity_id, attempt in attempts.items():
        assert started[entity_id] == attempt  # every claim announced itself once
        assert completed[entity_id] == 1  # completed exactly once, never re-run after
    with sqlite3.connect(effects) as service:
        effect_keys = dict(service.execute("SELECT key, entity_id FROM effects").fetchall())
        executions = service.execute("SELECT entity_id, attempt FROM executions").fetchall()
    recipients = {row[0] for row in rows if row[3] == "Recipient"}
    # One effect per recipient, under the key derived from its identity.
    assert effect_keys == {f"Recipient:{rid}:send": rid for rid in recipients}
    # Each attempt of a child executed at most once, and only up to its completing attempt.
    assert len(set(executions)) == len(executions)
    for entity_id, attempt in executions:
        assert 1 <= attempt <= attempts[entity_id]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run: its result and how many write batches it took."""
    path = tmp_path_factory.mktemp("reference")
    report = finish(path / "store.db", path / "effects.db")
    check_store(path / "store.db", path / "effects.db")
    return report


def test_uninterrupted_run(reference: dict[str, Any]) -> None:
    assert reference["result"]["sent"] == GROUPS * PER_GROUP
    assert reference["recovered"] == []
    assert reference["global_idle"]


def test_kill_anywhere_and_resume(
    reference: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(SEED)
    batches = reference["batches"]
    killed: list[tuple[int, int, str]] = []
    for trial in range(TRIALS):
        store, effects = tmp_path / f"store-{trial}.db", tmp_path / f"effects-{trial}.db"
        left = batches
        for _ in range(KILLS_PER_TRIAL):
            batch = rng.randint(1, max(left, 1))
            phase = rng.choice(["before", "middle", "after"])
            run = run_worker(store, effects, "--kill-batch", str(batch), "--kill-phase", phase)
            if run.returncode == -9:
                killed.append((trial, batch, phase))
                left = max(left - batch, 1)
            else:  # it finished before reaching that batch
                assert run.returncode == 0, run.stderr
        report = finish(store, effects)
        assert report["result"] == reference["result"]
        assert report["global_idle"]
        check_store(store, effects)
    with capsys.disabled():
        phases = Counter(phase for _, _, phase in killed)
        print(
            f"\ncrash-resume: {len(killed)} kill points exercised over {TRIALS} trials "
            f"({dict(sorted(phases.items()))}; reference run: {batches} write batches)"
        )
    assert len(killed) >= TRIALS * KILLS_PER_TRIAL // 2
    assert set(phases) == {"before", "middle", "after"}
