"""Who is served next in a capacity tree: the selection rules behind ``_tree.dispatch``.

:func:`select` picks, within a node's subtree, the one waiting request to grant next:

* within a node, requests are served first-in first-out (strict head of line: a later request never
  passes the head unless the node was built with ``backfill=True`` and the later request uses none
  of the resources the head is short of);
* across the children of a node, the freed capacity goes to the child (among those with a request
  that fits below this node) holding the smallest share of the node's limits, ties to the request
  that has waited longest (max-min fairness). A node's own queue competes as one more child.

:func:`fits`, the check of a cost against one level's limits, is here too: the rules are built on
it, and ``Node.fits_chain`` uses it for every level of a chain.

It is apart from ``_tree.py`` because it is the policy, read on its own: the tree keeps the state
(nodes, queues, what is held) and the steps that change it (grant, release, dispatch). Like the
tree, it is synchronous and never awaits.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ._amounts import Amount, Vector

if TYPE_CHECKING:
    from ._tree import Node, Request


def fits(level: Node, cost: Vector) -> bool:
    """Whether ``cost`` fits right now at ``level`` alone (its ancestors are not looked at)."""
    limits = level.limits
    usage = level.usage
    for resource, value in cost.items():
        limit = limits.get(resource)
        if limit is not None and usage.get(resource, 0) + value > limit:
            return False
    return True


def _normaliser(node: Node, resource: str) -> Amount:
    for level in node.chain:
        limit = level.limits.get(resource)
        if limit is not None and 0 < limit < math.inf:
            return limit
    return 1


def _share(held: Vector, node: Node) -> Amount:
    """The dominant share of ``node``'s limits that ``held`` represents (max-min fairness key)."""
    share: Amount = 0
    for resource, value in held.items():
        if value:
            part = value / _normaliser(node, resource)
            share = max(share, part)
    return share


def _own_head(node: Node) -> tuple[Request, Vector] | None:
    """The first request of the node's own queue that wants something (strict FIFO).

    Demands with nothing to start are skipped. A validated request whose cost can never fit is
    failed here instead of blocking the queue forever.
    """
    queue = node.queue
    while queue:
        restart = False
        for request in queue:
            cost = request.current_cost()
            if cost is None:
                continue
            if request.validated and not node.fits_chain(cost):
                error = node.impossible(cost)
                if error is not None:
                    request.on_impossible(cost, error)  # may change the queue
                    restart = True
                    break
            return request, cost
        if not restart:
            return None
    return None


def _own_wanting(node: Node) -> list[tuple[Request, Vector]]:
    """Every request of the node's own queue that wants something, in FIFO order (backfill)."""
    found: list[tuple[Request, Vector]] = []
    head = _own_head(node)
    if head is None:
        return found
    found.append(head)
    seen = False
    for request in node.queue:
        if request is head[0]:
            seen = True
            continue
        if seen:
            cost = request.current_cost()
            if cost is not None:
                found.append((request, cost))
    return found


def select(node: Node) -> tuple[Request, Vector] | None:
    """The request to grant next within ``node``'s subtree, or ``None`` if nothing can be granted.

    The returned request fits at every level from its own node up to ``node``.
    """
    children = node.active_children
    if not children and not node.backfill:
        # Fast path: only this node's own queue.
        head = _own_head(node) if node.queue else None
        if head is None or not fits(node, head[1]):
            return None
        return head
    candidates: list[tuple[Amount, int, Request, Vector]] = []
    if node.queue:
        if node.backfill:
            own = _own_wanting(node)
        else:
            first = _own_head(node)
            own = [] if first is None else [first]
        if own:
            share = _share(node.own_held, node)
            candidates.extend((share, request.seq, request, cost) for request, cost in own)
    for child in list(children):
        found = select(child)
        if found is not None:
            candidates.append((_share(child.held, node), found[0].seq, found[0], found[1]))
    if not candidates:
        return None
    if len(candidates) > 1:
        candidates.sort(key=lambda item: (item[0], item[1]))
    _, _, head_request, head_cost = candidates[0]
    if fits(node, head_cost):
        return head_request, head_cost
    if not node.backfill or len(candidates) == 1:
        return None
    # Backfill: a later candidate may pass only if it uses none of the resources the head is
    # short of here, so granting it cannot delay the head.
    short = {
        resource
        for resource, value in head_cost.items()
        if resource in node.limits and node.usage.get(resource, 0) + value > node.limits[resource]
    }
    for _, _, request, cost in candidates[1:]:
        if not any(cost.get(resource) for resource in short) and fits(node, cost):
            return request, cost
    return None
