"""``python -m benchmarks``: run the benchmark suite (see ``benchmarks/README.md``).

The suite needs sluiceway and the ``bench`` extra (websockets, psycopg...): without them it
says so in one line and exits with 2.
"""

import sys

#: What to do about a missing module.
INSTALL = "run `nox -s bench`, or `python -m pip install -e '.[bench]'` first"

try:
    from benchmarks.cli import main
except ModuleNotFoundError as missing:
    package = (missing.name or "").partition(".")[0]
    if package in ("", "benchmarks"):
        raise  # a bug of the suite, not a missing dependency
    print(
        f"python -m benchmarks: {package} is not installed: the benchmarks need sluiceway and "
        f"its bench extra: {INSTALL}",
        file=sys.stderr,
    )
    raise SystemExit(2) from None

raise SystemExit(main())
