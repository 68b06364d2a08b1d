"""``python -m benchmarks.instructions``: the arithmetic, the output and the errors, with the
cachegrind runs replaced by counts given here (the tool itself is a development aid)."""

from __future__ import annotations

import pytest
from benchmarks import instructions


def fake_counter(counts: dict[tuple[str, str, int], int]) -> instructions.Counter:
    def counter(variant: str, source: str, n: int) -> int:
        return counts[variant, source, n]

    return counter


COUNTS = {
    ("envelopes", "list", 10_000): 1_000_000_000,
    ("envelopes", "list", 30_000): 1_000_000_000 + 20_000 * 86_342,
    ("pool", "agen", 10_000): 700_000_000,
    ("pool", "agen", 30_000): 700_000_000 + 20_000 * 43_227 + 7_000,
}


def test_one_more_task_is_the_difference_over_twenty_thousand() -> None:
    counter = fake_counter(COUNTS)
    assert instructions.per_task("envelopes", "list", counter) == 86_342
    assert instructions.per_task("pool", "agen", counter) == 43_227  # 43,227.35, rounded


def test_a_line_per_pair(capsys: pytest.CaptureFixture[str]) -> None:
    status = instructions.main(["envelopes", "list", "pool", "agen"], fake_counter(COUNTS))
    assert status == 0
    assert capsys.readouterr().out == (
        "envelopes list: 86,342 instructions a task\npool agen: 43,227 instructions a task\n"
    )


@pytest.mark.parametrize("argv", [[], ["envelopes"], ["nothing", "list"], ["envelopes", "tuple"]])
def test_bad_arguments_are_refused_before_anything_runs(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    def never(variant: str, source: str, n: int) -> int:
        raise AssertionError("nothing may run")

    assert instructions.main(argv, never) == 2
    assert capsys.readouterr().err


def test_without_valgrind_it_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(instructions.shutil, "which", lambda name: None)
    assert instructions.main(["envelopes", "list"]) == 1
    assert capsys.readouterr().err == (
        "error: valgrind is not installed (the Debian package `valgrind`)\n"
    )
