"""Gauges: the capacity nodes a runtime shows (the web page's gauges, the ``capacity``
operation of the server).

A node is shown once it is watched (``runtime.gauges.watch(node)``) until it is forgotten, or
for a node made for one run (a story's 3 slots), while the run uses it (``with
runtime.gauges.watching(node):``). The registry holds nodes weakly (a node nobody uses any more
goes away by itself), and watching costs nothing on the nodes' hot path: a snapshot reads them
only when asked.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from ._faces import BaseCapacity

N = TypeVar("N", bound=BaseCapacity)


class CapacityGauges:
    """The watched capacity nodes of one runtime, in the order they were watched."""

    def __init__(self) -> None:
        # node -> (the order it was watched in, the name it is shown under)
        self._nodes: weakref.WeakKeyDictionary[BaseCapacity, tuple[int, str | None]] = (
            weakref.WeakKeyDictionary()
        )
        self._next = 0

    def watch(self, node: N, *, name: str | None = None) -> N:
        """Show ``node`` (named ``name``, else its own name, else its place) while it lives;
        returns it, so ``CapacitySource(3, parent)`` can be watched where it is made."""
        if not isinstance(node, BaseCapacity):
            raise TypeError(f"only capacity nodes can be watched, got {node!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"a gauge's name is a non-empty string, got {name!r}")
        order = self._nodes[node][0] if node in self._nodes else self._next
        self._nodes[node] = (order, name)
        self._next += 1
        return node

    def forget(self, node: BaseCapacity) -> None:
        """Stop showing ``node`` (nothing happens if it was not shown)."""
        self._nodes.pop(node, None)

    @contextmanager
    def watching(self, node: N, *, name: str | None = None) -> Iterator[N]:
        """Show ``node`` inside the ``with`` block only."""
        self.watch(node, name=name)
        try:
            yield node
        finally:
            self.forget(node)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every watched node alive now: ``{"name", "parent", "limits", "in_use", "waiting",
        "waiting_in_subtree"}`` (``parent``: the name of its parent if the parent is watched
        too), in the order they were watched."""
        nodes = sorted(self._nodes.items(), key=lambda item: item[1][0])
        names = {id(node): name or _name(node, order) for node, (order, name) in nodes}
        out = []
        for node, _ in nodes:
            stats = node.capacity_statistics()
            parent = node.parent
            out.append(
                {
                    "name": names[id(node)],
                    "parent": None if parent is None else names.get(id(parent)),
                    "limits": _finite(stats.limits),
                    "in_use": _finite(stats.in_use),
                    "waiting": stats.waiting,
                    "waiting_in_subtree": stats.waiting_in_subtree,
                }
            )
        return out

    def __len__(self) -> int:
        return len(self._nodes)


def _name(node: BaseCapacity, order: int) -> str:
    return node.name if isinstance(node.name, str) and node.name else f"node {order + 1}"


def _finite(vector: dict[str, int | float]) -> dict[str, Any]:
    """A vector as JSON: an unlimited value as ``null``."""
    return {key: (None if value == float("inf") else value) for key, value in vector.items()}
