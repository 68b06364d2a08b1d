"""The main job's stories: four stories served in a child process, the server SIGKILLed while
their images generate; every story completes, each image generated once, the failed image's
placeholder kept in its page."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import trio
from rich.console import Console

from sluiceway.demos import stories


async def test_the_stories_demo_survives_its_kill_and_generates_each_image_once(
    tmp_path: Path,
) -> None:
    out = io.StringIO()
    outcome = await stories.main(
        workdir=tmp_path, latency=0.3, kill_after=4, approve_after=0.2, console=Console(file=out)
    )
    status = outcome["status"]
    assert {name: s["stage"] for name, s in status.items()} == dict.fromkeys(
        ["brave-kitten", "lighthouse", "lost-robot", "owl-library"], "completed"
    )
    assert status["lighthouse"]["status"] == "completed_with_errors"
    assert [(s["images_generated"], s["images_failed"]) for s in status.values()] == [
        (5, 0), (5, 1), (4, 0), (5, 0),
    ]  # fmt: skip
    counts = outcome["counts"]
    assert len(counts) == 20
    assert sorted(c["generations"] for c in counts.values()) == [0] + [1] * 19
    page = await trio.Path(outcome["pages"]["lighthouse"]).read_text(encoding="utf-8")
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 5
    assert '<div class="placeholder">{{IMAGE_4}}</div>' in page
    text = out.getvalue()
    assert "server killed (SIGKILL)" in text
    assert "brave-kitten approved" in text
    assert "generated 19 images for 20 keys, 0 of them twice" in text


def test_the_stories_demo_refuses_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "stories.db").touch()
    for argv in (["--latency", "-1"], ["--dir", str(tmp_path)]):
        with pytest.raises(SystemExit):
            stories.cli(argv)
