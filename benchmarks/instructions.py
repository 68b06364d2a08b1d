"""Instructions per task of one per-task run (scenarios A and D), counted rather than timed.

``python -m benchmarks.instructions VARIANT SOURCE [VARIANT SOURCE ...]`` runs
``python -m benchmarks.pertask VARIANT SOURCE N 100`` under ``valgrind --tool=cachegrind`` for
N = 10,000 and N = 30,000 and prints, for each pair, the difference in user-space instructions
divided by 20,000: what one more task costs, without the interpreter's start-up, the imports and
the setup, which both runs share.

The CPU time of a sample moves by tens of percent on a shared VM; an instruction count moves not
at all between runs (``PYTHONHASHSEED=0`` fixes the one source of variation), so it tells the
effect of a change on the per-task path at once. It is a development aid, not a claim: it counts
neither the time the kernel spends in the event loop's system calls nor cache misses, so the
ratios it gives are not the CPU-time ratios the suite reports. Needs ``valgrind`` on the PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable

from .fanout import LIST, STREAM, VARIANTS

SMALL, LARGE = 10_000, 30_000
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")

#: ``count(variant, source, n)``: the user-space instructions of one run (see :func:`count`).
Counter = Callable[[str, str, int], int]


def count(variant: str, source: str, n: int) -> int:
    """The instructions cachegrind counts for ``python -m benchmarks.pertask VARIANT SOURCE N
    100``, start-up included."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not installed (the Debian package `valgrind`)")
    done = subprocess.run(
        [
            valgrind,
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "benchmarks.pertask",
            variant,
            source,
            str(n),
            "100",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        check=False,
    )
    found = _REFS.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(
            f"{variant} {source} under valgrind failed (exit status {done.returncode}): "
            f"{done.stderr.strip()[-500:]}"
        )
    return int(found.group(1).replace(",", ""))


def per_task(variant: str, source: str, counter: Counter = count) -> int:
    """Instructions per task of ``variant`` over ``source``: (count at 30,000 - count at
    10,000) / 20,000, rounded."""
    more = counter(variant, source, LARGE) - counter(variant, source, SMALL)
    return round(more / (LARGE - SMALL))


def main(argv: list[str], counter: Counter = count) -> int:
    """``python -m benchmarks.instructions VARIANT SOURCE [...]``: a line per pair."""
    if not argv or len(argv) % 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    pairs = list(zip(argv[::2], argv[1::2], strict=True))
    for variant, source in pairs:
        if variant not in VARIANTS or source not in (LIST, STREAM):
            print(
                f"unknown variant {variant!r} or source {source!r} (variants: "
                f"{', '.join(VARIANTS)}; sources: {LIST}, {STREAM})",
                file=sys.stderr,
            )
            return 2
    try:
        for variant, source in pairs:
            print(f"{variant} {source}: {per_task(variant, source, counter):,} instructions a task")
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
