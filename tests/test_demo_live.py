"""The main job: the campaign application served in a child process, killed mid-campaign with
SIGKILL and restarted; the campaigns finish and no email is sent twice."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from sluiceway.demos import live


async def test_the_demo_survives_a_killed_server_and_sends_each_email_once(
    tmp_path: Path,
) -> None:
    out = io.StringIO()
    outcome = await live.main(
        workdir=tmp_path, count=24, kill_after=6, latency=0.05, console=Console(file=out)
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


def test_the_demo_contacts() -> None:
    rows = live.contacts(90)
    assert len({row["email"] for row in rows}) == 90
    assert sum("vip" in row["tags"] for row in rows) == 30
    assert live.BOUNCING in {row["email"] for row in rows[:24]}
