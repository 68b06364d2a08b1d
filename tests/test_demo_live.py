"""The main job: the campaign application served in a child process, killed mid-campaign with
SIGKILL and restarted; the campaigns finish and no email is sent twice."""

from __future__ import annotations

import io
import json
from pathlib import Path

from sluiceway.cli._progress import display_console
from sluiceway.demos import live


async def test_the_demo_survives_a_killed_server_and_sends_each_email_once(
    tmp_path: Path,
) -> None:
    out = io.StringIO()
    console = display_console(file=out)  # as when piped: nothing wrapped
    outcome = await live.main(
        workdir=tmp_path, count=24, kill_after=6, latency=0.05, console=console
    )
    spring, vip = outcome["results"]["spring"], outcome["results"]["vip"]
    # 24 contacts in spring (one of them bounces), every third in vip.
    assert spring["total_recipients"] == 24
    assert spring["status"] == "completed_with_errors"
    assert (spring["sent_count"], spring["failed_count"]) == (23, 1)
    assert vip == {**vip, "status": "completed", "sent_count": 8, "failed_count": 0}
    stats = outcome["stats"]
    assert stats["sends"] == 23 + 8  # one per recipient sent to, whatever ran twice
    # The bounce is refused each time it is asked: once, or twice if its recipient was in
    # flight at the kill (a refusal is not stored, so the re-run asks again).
    assert stats["failures"] in (1, 2)
    assert outcome["reconnections"] == 1  # the client resumed after the kill
    text = out.getvalue()
    assert "server killed (SIGKILL)" in text
    assert "server restarted" in text
    # The bounce is explained, and counted as the failure it is, the same everywhere.
    assert live.BOUNCE_NOTE in text
    assert f"1 failed: {live.BOUNCING} bounced" in text
    assert "CampaignRecipient        0        0         23       1" in text
    assert "24/24 children finished" in text
    assert "sent 23/24 emails (1 failed)" in text
    # Results are JSON, one line each, however narrow the console.
    [line] = [line for line in text.splitlines() if line.startswith("campaign spring: {")]
    assert json.loads(line.removeprefix("campaign spring: ")) == spring
    assert "store:" not in text  # the demo prints no path of a store it would delete


def test_the_demo_contacts() -> None:
    rows = live.contacts(90)
    assert len({row["email"] for row in rows}) == 90
    assert sum("vip" in row["tags"] for row in rows) == 30
    assert live.BOUNCING in {row["email"] for row in rows[:24]}
