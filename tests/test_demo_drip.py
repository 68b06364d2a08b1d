"""The main job's drip: the campaign engine served in a child process on a short day; every
contact gets the emails of its branch, each once."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from sluiceway.demos import drip


async def test_the_drip_demo_sends_what_each_branch_implies(tmp_path: Path) -> None:
    out = io.StringIO()
    outcome = await drip.main(
        workdir=tmp_path, count=10, day_seconds=1.0, latency=0.01, console=Console(file=out)
    )
    assert outcome["result"]["ended"] == {"completed": 10}
    # Every other contact opened its welcome: 5 thank-yous, 5 nudges and 5 last chances.
    assert outcome["sent_by_step"] == {"welcome": 10, "thanks": 5, "nudge": 5, "last-chance": 5}
    assert outcome["stats"]["sends"] == 25
    totals = outcome["analytics"]["campaign"]
    assert (totals["completed"], totals["emails_sent"], totals["emails_opened"]) == (10, 25, 5)
    text = out.getvalue()
    assert "follow it from another terminal: sluiceway run" in text
    assert "analytics: 10 enrolled, 10 completed, 25 emails sent, 5 opened" in text


def test_the_drip_demo_refuses_bad_arguments(tmp_path: Path) -> None:
    for argv in (["--contacts", "1"], ["--day-seconds", "0"]):
        with pytest.raises(SystemExit):
            drip.cli(argv)
