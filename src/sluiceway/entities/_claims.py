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
        # A suspect (one death from the crash limit) waits to run alone: claim nothing more
        # until the runs under way end (for a while: a loop never idle gives up draining and
        # the suspect waits until it is, as a restarted process is). While one runs on
        # probation, claim nothing either.
        self.draining = False
        self._drain_until = -math.inf  # trio time
        self._no_drain_before = -math.inf
        self.probation: LiveRun | None = None
        self._wakeup = trio.Event()
        # When the loop looks again by itself (runtime clock); while it is looking, infinity:
        # whatever becomes due meanwhile makes it look once more.
        self._next_look = math.inf
        self._idle = trio.Event()
        self._idle.set()
        self._nursery: trio.Nursery | None = None
        # Held while a claim is under way, until its runs are adopted: recover() takes it too,
        # so that it sees every run the loop claimed before it looked.
        self.claiming = trio.Lock()
        self._failures = 0  # store failures in a row (logged, then retried after a pause)

    # -- control -------------------------------------------------------------------------------

    def wake(self) -> None:
        """Look for due work now (something was submitted, woken, or a run ended)."""
        self._wakeup.set()

    def due_at(self, when: float) -> None:
        """Something becomes due at ``when`` (runtime clock): look then, if that is before
        the loop meant to look again."""
        if when < self._next_look:
            self._wakeup.set()

    def pause(self) -> None:
        """Claim nothing more (shutting down); the runs under way go on."""
        self.paused = True
        self.wake()

    async def idle(self) -> None:
        """Wait until no run of the loop is under way."""
        await self._idle.wait()

    async def wind_down(self, grace: float) -> bool:
        """Shut down gently: claim nothing more (:meth:`pause`) and wait up to ``grace``
        seconds for the runs under way to end. Returns whether they all did. The runs still
        going are stopped when :meth:`~sluiceway.Runtime.working` is left (their leases are
        given back: they are due again at once, for the next runtime)."""
        self.pause()
        with trio.move_on_after(grace):
            await self.idle()
        return not self.running

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
            if not self.paused and self.running < self.max_runs and self._may_claim():
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
            self._next_look = runtime.clock() + pause
            with trio.move_on_after(max(pause, 0.0)):
                await wakeup.wait()
            self._next_look = math.inf

    def _may_claim(self) -> bool:
        if self.probation is not None:
            if not self.probation.done.is_set() and not self.probation.proven:
                return False  # the suspect runs alone until it ends or proves itself
            self.probation = None
        if self.draining and self.running:
            if trio.current_time() < self._drain_until:
                return False
            self.draining = False  # the runs under way last: go on without the suspect
        return True

    def _suspect_waits(self) -> None:
        """A suspect waits to run alone: stop claiming for a third of a lease period, unless
        the loop drained for it lately already."""
        now = trio.current_time()
        if now >= self._no_drain_before:
            self.draining = True
            self._drain_until = now + self.runtime.lease_seconds / 3
            self._no_drain_before = now + self.runtime.lease_seconds

    async def _claim(self) -> bool:
        """One claim; returns whether it took a full batch (more may be due)."""
        async with self.claiming:
            return await self._claim_batch()

    async def _claim_batch(self) -> bool:
        runtime = self.runtime
        limit = min(self.batch, self.max_runs - self.running)
        now = runtime.clock()
        batch = await runtime.store.claim_due(
            runtime.owner,
            now=now,
            expires=now + runtime.lease_seconds,
            limit=limit,
            started=runtime._started,
            steal_from=await runtime._dead_owners(),
            types=runtime.registry.runnable_names(),
            crash_limit=runtime.crash_limit,
            crash_failure=runtime._crash_failure,
            idle=self.running == 0,
        )
        claimed, failed = batch.claimed, batch.failed
        if batch.suspect_waiting:
            self._suspect_waits()
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
            live = self._start(record)
            if live is not None and runtime._suspect(record):
                self.probation = live
                assert self._nursery is not None  # _start succeeded
                self._nursery.start_soon(self._prove, live)
                log.warning(
                    "%s %r was abandoned by dying processes %s times in a row: it runs alone "
                    "now; if this process dies running it, it is failed",
                    record.type,
                    record.name,
                    record.abandoned,
                )
        if claimed:
            runtime._changed()
        return len(claimed) + len(failed) >= limit and self.probation is None

    async def _prove(self, live: LiveRun) -> None:
        """A run on probation that lives through a heartbeat period has proven itself (its
        count starts again at the heartbeat): the loop claims other work again."""
        with trio.move_on_after(self.runtime.lease_seconds / 3):
            await live.done.wait()
        live.proven = True
        self.wake()

    async def _until_next_due(self, pause: float) -> float:
        runtime = self.runtime
        now = runtime.clock()
        due = await runtime.store.next_due(after=now)
        if due is None:
            return pause
        return min(pause, due - now)

    def _start(self, record: EntityRecord) -> LiveRun | None:
        nursery = self._nursery
        live = None if nursery is None else self.runtime._adopt(record)
        if nursery is None or live is None:
            return None  # another path of this runtime runs it (it registered first)
        self.running += 1
        if self.running == 1:
            self._idle = trio.Event()
        nursery.start_soon(self._run, live, name=f"run {record.type} {record.name}")
        return live

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
