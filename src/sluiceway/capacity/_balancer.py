"""HierarchicalBalancer: grow busy children and shrink idle ones, with hysteresis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Literal

import attrs
import trio

from .._util import open_owned_nursery, type_name
from ._amounts import Amount, Vector, amount, public, public_vector, vector
from ._faces import BaseCapacity, CapacitySource, amount_seconds


def _bounds(value: object, face: BaseCapacity, what: str) -> Vector:
    if isinstance(face, CapacitySource) and not isinstance(value, Mapping):
        return {face.resource: amount(value, what=what, allow_inf=True)}
    return vector(value, what=what, allow_inf=True)


@attrs.frozen
class BalancedChild:
    """One child managed by a :class:`HierarchicalBalancer`.

    ``min`` and ``max`` bound its limits; for a :class:`CapacitySource` they may be plain numbers.
    ``increment`` is the step per adjustment (default: 1 for every bounded resource).
    """

    capacity: BaseCapacity
    min: Mapping[str, float] | float
    max: Mapping[str, float] | float
    increment: Mapping[str, float] | float | None = None


@attrs.frozen
class BalancerAdjustment:
    """One limit change made by a balancer pass."""

    capacity: BaseCapacity
    kind: Literal["grow", "shrink"]
    before: dict[str, int | float]
    after: dict[str, int | float]
    at: float


class _Tracked:
    __slots__ = ("busy_since", "face", "high", "idle_since", "low", "step")

    def __init__(self, face: BaseCapacity, low: Vector, high: Vector, step: Vector) -> None:
        self.face = face
        self.low = low
        self.high = high
        self.step = step
        self.idle_since: float | None = None
        self.busy_since: float | None = None


class HierarchicalBalancer:
    """Adjust the limits of sibling nodes to their observed load.

    A child is *idle* when every limited resource's utilisation is below ``idle_threshold`` and
    *busy* when any is above ``busy_threshold``. After it has been idle for ``idle_time``
    seconds its limits shrink by one increment (not below ``min``); after ``busy_time`` seconds of
    being busy they grow by one increment (not above ``max``). Each change restarts that child's
    clock, so steps are spaced by a full threshold period; the gap between the two thresholds is
    the hysteresis band. The parent still enforces the real ceiling.

    Run it with ``async with balancer.running():`` (one timer task owned by that block), or call
    :meth:`check` yourself. Times come from trio's clock.
    """

    def __init__(
        self,
        children: Sequence[BalancedChild],
        *,
        check_interval: float = 1.0,
        idle_time: float = 5.0,
        busy_time: float = 5.0,
        idle_threshold: float = 0.3,
        busy_threshold: float = 0.85,
    ) -> None:
        self.check_interval = amount_seconds(check_interval)
        self.idle_time = float(amount(idle_time, what="idle_time"))
        self.busy_time = float(amount(busy_time, what="busy_time"))
        self.idle_threshold = float(amount(idle_threshold, what="idle_threshold"))
        self.busy_threshold = float(amount(busy_threshold, what="busy_threshold"))
        if self.idle_threshold >= self.busy_threshold:
            raise ValueError(
                f"idle_threshold ({self.idle_threshold}) must be below busy_threshold "
                f"({self.busy_threshold}) to leave a hysteresis band"
            )
        self._children: list[_Tracked] = []
        for child in children:
            if not isinstance(child, BalancedChild):
                raise TypeError(
                    f"children must be BalancedChild, got {child!r} ({type_name(child)})"
                )
            face = child.capacity
            if not isinstance(face, BaseCapacity):
                raise TypeError(f"BalancedChild.capacity must be a capacity face, got {face!r}")
            low = _bounds(child.min, face, "min")
            high = _bounds(child.max, face, "max")
            for key in low.keys() | high.keys():
                if key not in face._node.limits:
                    raise ValueError(f"min/max name {key!r}, which {face!r} does not limit")
                if low.get(key, 0) > high.get(key, low.get(key, 0)):
                    raise ValueError(f"min {public(low[key])} > max for {key!r} of {face!r}")
            if child.increment is None:
                step: Vector = dict.fromkeys(low.keys() | high.keys(), 1)
            else:
                step = _bounds(child.increment, face, "increment")
            self._children.append(_Tracked(face, low, high, step))
        self._running = False

    @property
    def is_running(self) -> bool:
        """Whether a :meth:`running` block is active."""
        return self._running

    def check(self) -> list[BalancerAdjustment]:
        """Run one balancing pass now and return the changes it made."""
        now = trio.current_time()
        changes: list[BalancerAdjustment] = []
        for tracked in self._children:
            utilization = tracked.face.utilization
            values = [utilization[key] for key in tracked.face._node.limits]
            idle = all(value < self.idle_threshold for value in values)
            busy = any(value > self.busy_threshold for value in values)
            if not idle:
                tracked.idle_since = None
            elif tracked.idle_since is None:
                tracked.idle_since = now
            if not busy:
                tracked.busy_since = None
            elif tracked.busy_since is None:
                tracked.busy_since = now
            if tracked.idle_since is not None and now - tracked.idle_since >= self.idle_time:
                change = self._step(tracked, -1, now)
                tracked.idle_since = now
            elif tracked.busy_since is not None and now - tracked.busy_since >= self.busy_time:
                change = self._step(tracked, +1, now)
                tracked.busy_since = now
            else:
                change = None
            if change is not None:
                changes.append(change)
        return changes

    def _step(self, tracked: _Tracked, direction: int, now: float) -> BalancerAdjustment | None:
        node = tracked.face._node
        before = dict(node.limits)
        new: Vector = {}
        for key, step in tracked.step.items():
            current = node.limits[key]
            target: Amount = current + direction * step
            if direction < 0:
                target = max(target, tracked.low.get(key, 0))
            else:
                target = min(target, tracked.high.get(key, current))
            if target != current:
                new[key] = target
        if not new:
            return None
        tracked.face._set_limits(new)
        return BalancerAdjustment(
            capacity=tracked.face,
            kind="shrink" if direction < 0 else "grow",
            before=public_vector(before),
            after=public_vector(node.limits),
            at=now,
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[HierarchicalBalancer]:
        """Run :meth:`check` on entry and then every ``check_interval`` seconds while the block
        runs.

        Raises:
            RuntimeError: if this balancer is already running.
        """
        if self._running:
            raise RuntimeError("this HierarchicalBalancer is already running")
        self._running = True
        try:
            async with open_owned_nursery() as nursery:
                nursery.start_soon(self._loop)
                yield self
                nursery.cancel_scope.cancel("balancer block exited")
        finally:
            self._running = False

    async def _loop(self) -> None:
        deadline = trio.current_time()
        while True:
            self.check()  # the first sample is taken on entry
            deadline += self.check_interval
            await trio.sleep_until(deadline)
