"""Helpers shared by the tests: capacity-tree invariants checked on the real core, and a
poll for state no event announces."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator

import pytest
import trio

from sluiceway.capacity import BaseCapacity, _tree


def assert_idle(*faces: BaseCapacity) -> None:
    """Every unit of every resource is back and nobody waits, at each given node."""
    for face in faces:
        node = face._node
        leftover = {key: value for key, value in node.held.items() if value}
        assert not leftover, f"{face!r} still holds {leftover}"
        own = {key: value for key, value in node.own_held.items() if value}
        assert not own, f"{face!r} still holds {own} itself"
        assert node.waiting == 0, f"{face!r} still has {node.waiting} waiting requests"


def assert_no_lost_wakeup(face: BaseCapacity) -> None:
    """A dispatch now must grant nothing: if it did, a waiter was left blocked while it fit."""
    tree = face._node.tree
    before = _count_grants(tree.root)
    _tree.dispatch(tree)
    after = _count_grants(tree.root)
    assert before == after, "a waiting request fitted but had not been granted (lost wake-up)"


def _count_grants(root: _tree.Node) -> int:
    seen = 0
    stack = [root]
    while stack:
        node = stack.pop()
        seen += node.granted_count
        stack.extend(node.active_children)
    return seen


@contextlib.contextmanager
def grants_never_exceed_limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Check, at every single grant anywhere, that no level ends up over a limit.

    Yields a one-element list counting the grants checked.
    """
    checked = [0]
    original = _tree.take

    def checked_take(node: _tree.Node, cost: _tree.Vector) -> None:
        original(node, cost)
        checked[0] += 1
        for level in node.chain:
            for resource in cost:
                limit = level.limits.get(resource)
                if limit is not None:
                    used = level.usage.get(resource, 0)
                    assert used <= limit, (
                        f"grant of {cost} put {resource!r} at {used} over its limit {limit}"
                    )

    monkeypatch.setattr(_tree, "take", checked_take)
    yield checked


async def eventually(condition: Callable[[], Awaitable[bool]], *, interval: float = 0.01) -> None:
    """Wait until ``await condition()`` holds, looking every ``interval`` seconds: for state
    another process (or the store) changes, which no event of this process announces."""
    while True:
        if await condition():
            return
        await trio.sleep(interval)
