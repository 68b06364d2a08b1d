"""``python -m sluiceway``: the ``sluiceway`` command line (see :mod:`sluiceway.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
