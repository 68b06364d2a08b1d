"""``python -m sluiceway.apps.notification``: run the notification service."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
