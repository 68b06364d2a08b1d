"""The live display of a run (``sluiceway run``, the demos): counts that agree at every refresh,
a clock that stops when the run ends, results that say failed counted as failed."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from sluiceway import EntityEnvelope
from sluiceway.cli import _progress
from sluiceway.cli._progress import RunProgress, display_console, failed_result

ROOT = "root-id"
SEQ = iter(range(1, 10_000))


def envelope(entity: str, kind: str, ts: float = 0.0, **fields: Any) -> EntityEnvelope:
    entity_type = "Campaign" if entity == ROOT else "Recipient"
    return EntityEnvelope(
        kind,
        entity,
        entity_type,
        entity if entity != ROOT else "spring",
        seq=next(SEQ),
        ts=ts,
        **fields,
    )


def status(entity: str, step: str, ts: float = 0.0, **fields: Any) -> EntityEnvelope:
    return envelope(entity, "STATUS", ts, status=step, **fields)


def result(entity: str, value: Any) -> EntityEnvelope:
    return envelope(entity, "VALUE", sub_type="return", value=value)


def shown(progress: RunProgress) -> str:
    out = io.StringIO()
    Console(file=out, width=100).print(progress.render())
    return out.getvalue()


def test_a_completed_run_whose_result_says_failed_counts_as_failed() -> None:
    progress = RunProgress(ROOT)
    progress.add(status(ROOT, "STARTED"))
    for child, outcome in (("a", "sent"), ("b", "failed")):
        progress.add(status(child, "STARTED"))
        progress.add(result(child, {"status": outcome}))
        progress.add(status(child, "COMPLETED"))
    assert progress.by_type() == {"Recipient": {"completed": 1, "failed": 1}}
    progress.add(result(ROOT, {"status": "failed", "error": "every send failed"}))
    progress.add(status(ROOT, "COMPLETED"))
    assert progress.root_state == "failed"
    assert progress.summary() == (
        "Campaign spring FAILED: 2/2 children finished (Recipient: 1 completed 1 failed)"
    )
    assert "COMPLETED" not in shown(progress)
    assert failed_result({"status": "failed"})
    assert not failed_result({"status": "completed_with_errors"})
    assert not failed_result("failed")


def test_every_count_shown_is_of_the_last_refresh() -> None:
    """Between two refreshes (the store's counts), envelopes are taken in but not shown: the
    table, the bar and the messages move together."""
    progress = RunProgress(ROOT)
    progress.add(status(ROOT, "STARTED"))
    progress.add(status(ROOT, "RUNNING", message="sent 0/2", metadata={"total": 2}))
    progress.add(status("a", "STARTED"))
    progress.set_children({"IN_PROGRESS": 1})
    before = shown(progress)
    assert "0/2 children finished" in before
    assert "sent 0/2" in before
    progress.add(status("a", "COMPLETED"))
    progress.add(status(ROOT, "RUNNING", message="sent 1/2", metadata={"total": 2}))
    assert shown(progress).replace(" ", "") == before.replace(" ", "")  # the clock aside
    progress.set_children({"COMPLETED": 1})
    after = shown(progress)
    assert "1/2 children finished" in after
    assert "sent 1/2" in after
    assert "Recipient        0        0          1" in after


def test_the_clock_stops_when_the_run_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(_progress.time, "monotonic", lambda: now[0])
    followed = RunProgress(ROOT)
    attached = RunProgress(ROOT)
    now[0] = 103.0
    assert followed.elapsed() == 3.0
    # Seen from its start: its own times, once it ended.
    followed.add(status(ROOT, "STARTED", ts=1000.0))
    followed.add(status(ROOT, "COMPLETED", ts=1002.5))
    # Attached after its start: the time followed.
    attached.add(status(ROOT, "COMPLETED", ts=1002.5))
    now[0] = 160.0
    assert (followed.elapsed(), attached.elapsed()) == (2.5, 3.0)
    assert "2.5s" in shown(followed)
    # Run again (after a failure): the clock runs again.
    followed.add(status(ROOT, "STARTED", ts=1100.0))
    assert followed.elapsed() == 60.0


def test_written_to_a_file_nothing_is_wrapped_or_cut() -> None:
    out = io.StringIO()
    console = display_console(file=out)
    line = '{"campaign_id": "' + "x" * 120 + '"}'
    console.print(line)
    progress = RunProgress(ROOT)
    progress.add(status(ROOT, "RUNNING", message="m" * 150))
    console.print(progress.render())
    assert line + "\n" in out.getvalue()
    assert f"spring: {'m' * 150}\n" in out.getvalue()
