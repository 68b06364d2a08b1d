"""The claim loop: how a runtime takes the work that is due in its store and runs it.

Work is due when its ``runnable_at`` has come and no live lease holds it: a submission
(``runtime.start``), a run whose process died (its lease expired, or its process of this
machine is gone), a run given back on shutdown, and a parked entity whose time, message or
children came. The loop claims it in bounded batches, at most ``max_runs`` runs at a time,
each run in a task of the loop's nursery. It sleeps until the next timer it knows of, a wake-up
from this process (a submission, a message, a run that parked or ended), or ``poll_interval``
for what other processes write.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import trio

from .._errors import EntityError, LeaseLostError, RunParked, StoreError
from .._util import open_owned_nursery
from ..store import EntityRecord

if TYPE_CHECKING:
    from ._live import LiveRun
    from ._runtime import Runtime

log = logging.getLogger("sluiceway.entities")


class ClaimLoop:
    """Claims due work for one runtime and runs it (see the module documentation).

    Made by :meth:`Runtime.working` (``open_runtime`` enters it unless ``work=False``). While
    it runs, long waits may park: the loop is what wakes them.
    """

    def __init__(self, runtime: Runtime, *, max_runs: int, batch: int) -> None:
        self.runtime = runtime
        self.max_runs = max_runs
        self.batch = batch
        self.running = 0  # runs started by the loop that have not ended
        self.paused = False
        self._wakeup = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._nursery: trio.Nursery | None = None
        self._failures = 0  # store failures in a row (logged, then retried after a pause)

    # -- control -------------------------------------------------------------------------------

    def wake(self) -> None:
        """Look for due work now (something was submitted, woken, or a run ended)."""
        self._wakeup.set()

    def pause(self) -> None:
        """Claim nothing more (shutting down); the runs under way go on."""
        self.paused = True
        self.wake()

    async def idle(self) -> None:
        """Wait until no run of the loop is under way."""
        await self._idle.wait()

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Claim and run due work until cancelled (then the runs are stopped: their leases
        are given back and they are due again at once, for the next runtime)."""
        async with open_owned_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await self._loop()
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    async def _loop(self) -> None:
        runtime = self.runtime
        while True:
            self._wakeup = trio.Event()  # wake-ups from now on are seen by the wait below
            wakeup = self._wakeup
            pause = runtime.poll_interval
            if not self.paused and self.running < self.max_runs:
                try:
                    full = await self._claim()
                    if full:
                        await trio.lowlevel.checkpoint()
                        continue  # more may be due: claim again at once
                    pause = await self._until_next_due(pause)
                    self._failures = 0
                except StoreError:
                    # The store failed (locked, disk full...): say so, and try again later.
                    self._failures += 1
                    if self._failures in (1, 10) or not self._failures % 100:
                        log.exception("the claim loop could not read its store; retrying")
                    pause = min(runtime.poll_interval * self._failures, 30.0)
            with trio.move_on_after(max(pause, 0.0)):
                await wakeup.wait()

    async def _claim(self) -> bool:
        """One claim; returns whether it took a full batch (more may be due)."""
        runtime = self.runtime
        limit = min(self.batch, self.max_runs - self.running)
        now = runtime.clock()
        claimed, failed = await runtime.store.claim_due(
            runtime.owner,
            now=now,
            expires=now + runtime.lease_seconds,
            limit=limit,
            started=runtime._started,
            steal_from=await runtime._dead_owners(),
            types=runtime.registry.runnable_names(),
            crash_limit=runtime.crash_limit,
            crash_failure=runtime._crash_failure,
        )
        for entity_id in failed:
            log.error(
                "entity %s failed: its runs were abandoned by dying processes %s times in a "
                "row (crash_limit)",
                entity_id,
                runtime.crash_limit,
            )
        if failed:
            runtime._changed()
        for record in claimed:
            self._start(record)
        if claimed:
            runtime._changed()
        return len(claimed) + len(failed) >= limit

    async def _until_next_due(self, pause: float) -> float:
        runtime = self.runtime
        now = runtime.clock()
        due = await runtime.store.next_due(after=now)
        if due is None:
            return pause
        return min(pause, due - now)

    def _start(self, record: EntityRecord) -> None:
        nursery = self._nursery
        live = None if nursery is None else self.runtime._adopt(record)
        if nursery is None or live is None:
            return  # another path of this runtime runs it (it registered first)
        self.running += 1
        if self.running == 1:
            self._idle = trio.Event()
        nursery.start_soon(self._run, live, name=f"run {record.type} {record.name}")

    async def _run(self, live: LiveRun) -> None:
        record = live.record
        try:
            await self.runtime._run_adopted(live)
        except RunParked:
            pass  # the store wakes it
        except (EntityError, LeaseLostError) as exc:  # its outcome is stored
            log.info("the run of %s %r ended: %s", record.type, record.name, exc)
        except Exception:
            log.exception("the run of %s %r failed in the runtime", record.type, record.name)
        finally:
            self.running -= 1
            if not self.running:
                self._idle.set()
            self.wake()  # a slot is free


def check_loop_settings(max_runs: object, batch: object, park_after: object) -> None:
    """Raise a clear error for claim-loop settings that cannot work."""
    for name, value in (("max_runs", max_runs), ("claim_batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if (
        isinstance(park_after, bool)
        or not isinstance(park_after, int | float)
        or math.isnan(park_after)
        or park_after < 0
    ):
        raise ValueError(
            f"park_after must be a number of seconds >= 0 (or inf), got {park_after!r}"
        )
