"""An application with no entity types: a ``sluiceway serve`` process that runs nothing,
only serves what the workers on its store write (tests/scaleout/test_serve.py)."""

from __future__ import annotations

from sluiceway.server import Application

app = Application("scaleout-observer", types=[])
