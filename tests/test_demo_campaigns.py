"""The durable campaigns demo: interrupted halfway, recovered, every email sent once."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluiceway.demos import campaigns
from tests.helpers import assert_idle


async def test_campaigns_resume_and_send_each_email_once(
    tmp_path: Path, autojump_clock: object
) -> None:
    lines: list[str] = []
    outcome = await campaigns.main(db=tmp_path / "demo.db", seed=3, out=lines.append)
    results = outcome["results"]
    assert results["A"] == {"status": "completed", "total": 12, "sent": 12, "failed": 0}
    assert results["B"] == {
        "status": "completed_with_errors",
        "total": 8,
        "sent": 7,
        "failed": 1,
    }
    # 19 emails, each sent once, whatever was interrupted and run again.
    assert len(outcome["sent"]) == 19
    assert len(set(outcome["sent"].values())) == 19
    assert any("stopped: campaigns" in line for line in lines)
    assert any("b7@example.com bounced" in line for line in lines)
    assert any("(run 2)" in line for line in lines)  # something was resumed
    assert_idle(outcome["global"])


def test_campaigns_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "kept.db"
    assert campaigns.cli(["--db", str(db), "--interrupt-after", "3"]) == 0
    out = capsys.readouterr().out
    assert f"graph --db {db} tree campaign-A" in out
    assert db.exists()
    with pytest.raises(SystemExit):
        campaigns.cli(["--db", str(db)])  # refuses to reuse a store
