"""The scale-out demo, as ``nox -s scaleout`` runs it: three worker processes on PostgreSQL
share a campaign, the one holding the campaign is SIGKILLed mid-way, the others finish it, and
every recipient gets exactly one email. It runs on the session's PostgreSQL server, in a
schema of its own that it drops."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPIENTS = 60


@pytest.mark.slow
def test_the_demo_kills_the_campaigns_worker_and_sends_each_email_once(pg_dsn: str) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("SLUICEWAY_DB", "COLUMNS", "LINES")
    }
    env["SLUICEWAY_DEMO_PG_DSN"] = pg_dsn
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    began = time.monotonic()
    command = [sys.executable, "-m", "sluiceway.demos.scaleout", "--recipients", str(RECIPIENTS)]
    command += ["--batch-size", "10", "--latency", "0.1"]
    done = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
        check=False,
    )
    took = time.monotonic() - began
    out = done.stdout
    assert done.returncode == 0, out
    lines = [line.strip() for line in out.splitlines()]
    assert "PostgreSQL server: dsn: PostgreSQL" in out
    assert f"emails sent: {RECIPIENTS} for {RECIPIENTS} recipients" in lines
    assert "duplicates: 0" in lines
    assert f"campaign: completed, {RECIPIENTS} sent, 0 failed, in 6 batches" in lines
    assert "verification passed: every recipient got exactly one email" in lines
    # The kill: the worker running the campaign, after a third of the sends.
    killed = re.search(r"SIGKILL (worker-\d) \(pid \d+\) after (\d+) of 60 emails", out)
    assert killed is not None, out
    assert int(killed.group(2)) >= RECIPIENTS // 3
    # Who sent how many: the killed worker is marked, and the counts add up.
    [per_worker] = [line for line in lines if line.startswith("sent per worker: ")]
    counts = dict(re.findall(r"(worker-\d) (\d+)", per_worker))
    assert sorted(counts) == ["worker-1", "worker-2", "worker-3"]
    assert sum(map(int, counts.values())) == RECIPIENTS
    assert f"{killed.group(1)} {counts[killed.group(1)]} (killed)" in per_worker
    # Another worker took the campaign over: a dead process of this machine is seen by its
    # pid, long before its 10 s lease would expire.
    takeover = re.search(
        r"takeover: (worker-\d) ran the campaign again ([\d.]+) s after (worker-\d) was killed",
        out,
    )
    assert takeover is not None, out
    assert takeover.group(1) != takeover.group(3) == killed.group(1)
    assert float(takeover.group(2)) < 5
    most = re.search(r"most sends at once: (\d+) \(global limit 5\)", out)
    assert most is not None
    assert int(most.group(1)) <= 5
    assert re.search(r"the demo took [\d.]+ s", out)
    assert took < 60, out
    # Its schema is gone.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        schemas = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'sluiceway_demo_%'"
        ).fetchall()
    assert schemas == []
