"""Global limits: a capacity node whose limit holds across every process sharing the store.

The units of a global limit are rows of the store (``EntityStore.hold_units``); a unit is held
by one runtime, and is free again when that runtime gives it back or stops being alive (its
heartbeat expired, or it is a dead process of this machine). In each process a broker task
holds as many units as the process needs (the units its tasks hold plus those they wait
for), and feeds the count in as the ``total_tokens`` of a local
:class:`~sluiceway.CapacitySource`: the root of any in-process capacity tree. So admission
inside a process stays atomic and max-min fair, and the store is written only when the
process's need changes, not once per task.

A unit the process no longer needs is given back after ``linger`` seconds (work that comes
in bursts keeps its units between tasks), or at once when another process is short of units
(on a store that notifies: PostgreSQL); processes waiting for units hear that some came back
at once on such a store, within ``poll_interval`` otherwise. While other processes are short,
a process keeps no more than its fair share (the total over the processes sharing the limit)
as its tasks end: the units are shared max-min fairly between processes as well. A process
that was frozen for longer than its lease finds, at its next refresh, how many units it
still holds, and its local limit shrinks to that.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import trio

from .._errors import StoreError
from ..capacity import CapacitySource
from ._live import owner_is_dead

if TYPE_CHECKING:
    from ._executor import Executor


class GlobalLimitBroker:
    """Holds the units one process needs of one global limit (see the module documentation).

    Its :attr:`source` is the local root node; :meth:`run` keeps it fed until cancelled, and
    gives every unit back when it ends.
    """

    def __init__(self, runtime: Executor, name: str, total: int, *, linger: float) -> None:
        self.runtime = runtime
        self.name = name
        self.total = total
        self.linger = linger
        self.source = CapacitySource(0, name=f"global limit {name!r}")
        self.held = 0
        # As the store last said: processes sharing the limit, and others short of units.
        self.sharing = 1
        self.wanting = 0
        self._recheck = False  # another process said it is short: learn the shares again
        self._wakeup = trio.Event()
        self._wanted_at = -math.inf  # when another process last said it is short of units
        self._dead: tuple[str, ...] = ()
        self._dead_checked = -math.inf

    def wake(self, *, wanted: bool = False) -> None:
        """Look again now: units may have been given back elsewhere, or (``wanted``) another
        process is short of units, so those this one does not use go back at once."""
        if wanted:
            self._wanted_at = trio.current_time()
            self._recheck = True
        self._wakeup.set()

    def demand(self) -> tuple[int, bool]:
        """How many units this process needs now: those its tasks hold and wait for, but no
        more than its fair share while other processes are short of units (and no fewer than
        its tasks hold: units in use are never taken back); and whether the share held it
        back."""
        stats = self.source.statistics()
        need = int(min(stats.borrowed_tokens + stats.waiting_in_subtree, self.total))
        if self.wanting and self.sharing > 1:
            share = -(-self.total // self.sharing)
            capped = min(need, max(share, int(stats.borrowed_tokens)))
            return capped, capped < need
        return need, False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        runtime = self.runtime
        # Renew well within the lease: the units are this runtime's while it is alive.
        refresh_every = runtime.lease_seconds / 3
        # A process short of units asks again this often (and at once when units come back
        # on a store that notifies).
        retry_every = min(runtime.poll_interval, 0.05)
        # How often a process holding no units and needing none looks for new local demand.
        look_every = 0.01
        refresh_at = -math.inf  # when the units must be renewed next
        renewed_at = trio.current_time()  # when they last were
        ask_at = renewed_at  # when a process held back by its share may look again
        release_at: float | None = None  # when units not needed since then go back
        task_status.started()
        try:
            while True:
                # Deadlines are absolute: under a mock clock, a pause computed as a difference
                # can round to nothing and never let the clock move.
                now = trio.current_time()
                need, held_back = self.demand()
                target = need
                if need < self.held:
                    if release_at is None:
                        release_at = now + self.linger
                    # A process short of units says so at each of its tries (every
                    # retry_every): while one was heard lately, nothing is kept back.
                    wanted = now - self._wanted_at <= 3 * retry_every or self.wanting > 0
                    if now < release_at and not wanted:
                        target = self.held  # keep them a little: more work may come
                else:
                    release_at = None
                # Learn the shares again when another process said it is short, and, while
                # the share holds this process back, as often as a short process asks.
                recheck, self._recheck = self._recheck, False
                recheck = (recheck and self.held > 0) or (held_back and now >= ask_at)
                if target != self.held or now >= refresh_at or recheck:
                    try:
                        await self._hold(target)
                    except StoreError:
                        # The store is out of reach for now: try again soon. The units
                        # stay this runtime's until its lease would expire; past two
                        # thirds of it, none is used any more (another process may get
                        # them once it has expired).
                        if trio.current_time() >= renewed_at + 2 * refresh_every:
                            self.held = 0
                            self.source.total_tokens = 0
                        refresh_at = trio.current_time() + retry_every
                    else:
                        renewed_at = trio.current_time()
                        refresh_at = renewed_at + refresh_every
                        ask_at = renewed_at + retry_every
                        if self.held <= need:
                            release_at = None  # nothing left over (any more)
                now = trio.current_time()
                if need > self.held or held_back:
                    wake_at = now + retry_every
                elif release_at is not None:
                    wake_at = release_at
                else:
                    wake_at = now + look_every
                self._wakeup = trio.Event()
                with trio.move_on_at(min(wake_at, refresh_at)):
                    await self._wakeup.wait()
        finally:
            with trio.CancelScope(shield=True):
                self.source.total_tokens = 0
                if self.held:
                    # Given back now; if the store is out of reach, they come back when
                    # this runtime's lease expires.
                    with contextlib.suppress(StoreError):
                        await self._hold(0)

    async def _hold(self, target: int) -> None:
        runtime = self.runtime
        if target < self.held:
            # Shrink here before the units go back: no task of this process may take one of
            # them once another process can (target >= what the tasks hold: see run()).
            self.source.total_tokens = target
        now = runtime.clock()
        hold = await runtime.store.hold_units(
            self.name,
            runtime.owner,
            total=self.total,
            target=target,
            now=now,
            expires=now + runtime.lease_seconds,
            dead=await self._dead_holders(target),
        )
        self.held, self.sharing, self.wanting = hold.held, hold.sharing, hold.wanting
        self.source.total_tokens = self.held

    async def _dead_holders(self, target: int) -> tuple[str, ...]:
        """Holders that are dead processes of this machine (their units are free before their
        lease expires), looked up at most once per ``poll_interval``, and only while this
        process is short of units."""
        runtime = self.runtime
        if target <= self.held:
            return ()
        if trio.current_time() - self._dead_checked >= runtime.poll_interval:
            holders = await runtime.store.unit_holders(self.name, now=runtime.clock())
            self._dead = tuple(
                owner for owner in holders if owner != runtime.owner and owner_is_dead(owner)
            )
            self._dead_checked = trio.current_time()
        return self._dead
