"""``python -m benchmarks`` without its dependencies: one line saying how to get them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("missing", ["sluiceway", "websockets", "psycopg", "psycopg_pool"])
def test_a_missing_dependency_is_one_line_and_exit_2(missing: str) -> None:
    # As if the module were not installed: importing it raises ModuleNotFoundError.
    code = (
        f"import runpy, sys; sys.modules[{missing!r}] = None; "
        "runpy.run_module('benchmarks', run_name='__main__', alter_sys=True)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"python -m benchmarks: {missing} is not installed: the benchmarks need sluiceway and its "
        "bench extra: run `nox -s bench`, or `python -m pip install -e '.[bench]'` first\n"
    )


def test_with_its_dependencies_it_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("A  ")
