"""How a runtime runs one entity: claim its lease, call ``run_impl``, and record how the run
ended (completed, failed, parked, given back, or fenced out), with the heartbeat that keeps
its leases.

:class:`Executor` is the base of :class:`~sluiceway.Runtime`: the runtime's public methods are
there, the machinery of a run is here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import trio

from .._errors import (
    EntityBusyError,
    EntityCancelledError,
    EntityError,
    EntityFailedError,
    LeaseLostError,
    RunParked,
)
from ..capacity import CapacityGauges
from ..runners._envelopes import error_to_dict
from ..store import (
    EntityRecord,
    EntityStatus,
    EntityStore,
    NewEntity,
    ParkReason,
    StoreChange,
)
from ._context import RunContext
from ._entity import RunnableEntity, TypeRegistry
from ._envelope import EntityEnvelope, EnvelopeType, check_json
from ._live import (
    LiveRun,
    check_runnable,
    from_a_signal,
    is_cancellation,
    only_parked,
    owner_is_dead,
)
from ._streams import StreamHub
from ._waits import CapacityHolder

if TYPE_CHECKING:
    from ._claims import ClaimLoop
    from ._global_limits import GlobalLimitBroker

#: The error type stored for an entity failed by the crash-loop guard.
CRASH_LOOP = "sluiceway.CrashLoop"


class Executor:
    """The machinery of runs (see the module documentation)."""

    #: The application's state, for runs as ``ctx.state`` (``None`` until set).
    state: Any = None

    def __init__(
        self,
        store: EntityStore,
        registry: TypeRegistry,
        *,
        owner: str,
        lease_seconds: float,
        clock: Callable[[], float],
        poll_interval: float,
        park_after: float = math.inf,
        crash_limit: int | None = None,
        max_runs: int = 100,
        claim_batch: int = 50,
    ) -> None:
        self.store = store
        self.registry = registry
        #: The capacity nodes this runtime shows (the server's ``capacity`` operation).
        self.gauges = CapacityGauges()
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.poll_interval = poll_interval
        self.park_after = park_after
        self.crash_limit = crash_limit
        self.max_runs = max_runs
        self.claim_batch = claim_batch
        self._live: dict[str, LiveRun] = {}
        self._streams = StreamHub(store, poll_interval=poll_interval, is_running=self.is_running)
        self._claims: ClaimLoop | None = None
        self._dead: list[str] = []
        self._dead_checked = -math.inf
        self._dead_lock = trio.Lock()
        # Until when (runtime clock) the last heartbeat renewed every lease this runtime held.
        self.renewed_until = -math.inf
        # The brokers of the global limits open in this runtime (woken when units come back).
        self._brokers: set[GlobalLimitBroker] = set()
        # Called with each run the claim loop adopts (recover() follows them).
        self._adoption_watchers: list[Callable[[LiveRun], None]] = []

    def is_running(self, entity_id: str) -> bool:
        """Whether the entity is running in this runtime now."""
        return entity_id in self._live

    @property
    def can_park(self) -> bool:
        """Whether long waits park now: a claim loop is there to wake them, and ``park_after``
        is finite."""
        return self._claims is not None and math.isfinite(self.park_after)

    # -- notifications ---------------------------------------------------------------------------

    def _changed(self) -> None:
        """Wake the streams and waiters of this runtime: something was stored."""
        self._streams.changed()

    def _work_due(self) -> None:
        """Something may have become due: let the claim loop look now."""
        if self._claims is not None:
            self._claims.wake()

    def _store_changed(self, change: StoreChange) -> None:
        """Another process committed something to the store (``store.watch``): wake what
        waits for it here at once, instead of at its next poll."""
        if change.envelopes or change.everything:
            self._changed()
        if change.due or change.messages or change.everything:
            self._work_due()
        woken = (
            self._live.values()
            if change.everything
            else (live for entity_id in change.messages if (live := self._live.get(entity_id)))
        )
        for live in list(woken):
            live.wake()  # a message may be there: its wait looks again
        for entity_id in change.cancelled:
            live = self._live.get(entity_id)
            if live is not None:
                live.cancel()
        if change.units or change.units_wanted or change.everything:
            for broker in self._brokers:
                broker.wake(wanted=change.units_wanted or change.everything)

    # -- envelopes -------------------------------------------------------------------------------

    def _envelope(
        self,
        entity: RunnableEntity | EntityRecord,
        kind: str,
        **fields: Any,
    ) -> EntityEnvelope:
        if isinstance(entity, EntityRecord):
            ident, type_name, name = entity.id, entity.type, entity.name
        else:
            ident, type_name, name = entity.id, entity.type_name, entity.name
        return EntityEnvelope(
            type=kind,
            entity_id=ident,
            entity_type=type_name,
            entity_name=name,
            ts=self.clock(),
            **{key: value for key, value in fields.items() if value is not None},
        )

    async def _append(
        self, entity: RunnableEntity, envelopes: Sequence[EntityEnvelope], *, emitted: int = 0
    ) -> list[EntityEnvelope]:
        seqs = await self.store.append_envelopes(
            self.owner,
            [(entity.id, envelope.ts, envelope.body()) for envelope in envelopes],
            emitted=emitted,
        )
        self._changed()
        return [
            attrs.evolve(envelope, seq=seq) for envelope, seq in zip(envelopes, seqs, strict=True)
        ]

    @staticmethod
    def _started(attempt: int) -> dict[str, Any]:
        """The body of the STATUS STARTED envelope of a run."""
        return {
            "type": EnvelopeType.STATUS.value,
            "status": "STARTED",
            "metadata": {"attempt": attempt},
        }

    def _crash_failure(self, count: int) -> tuple[dict[str, str], list[dict[str, Any]]]:
        """What the crash-loop guard stores for an entity abandoned ``count`` times in a row."""
        error = {
            "type": CRASH_LOOP,
            "message": (
                f"its runs were abandoned by dying processes {count} times in a row "
                f"(crash_limit={self.crash_limit}), so it was failed instead of being run "
                "again; fix the cause and run it again"
            ),
        }
        return error, [
            {"type": EnvelopeType.ERROR.value, "error": error},
            {"type": EnvelopeType.STATUS.value, "status": "FAILED", "message": error["message"]},
        ]

    def _suspect(self, record: EntityRecord) -> bool:
        """Whether the claimed entity runs on probation: one more abandoned run would reach
        the crash limit."""
        limit = self.crash_limit
        return limit is not None and limit >= 2 and record.abandoned >= limit - 1

    def _claim_rules(self) -> dict[str, Any]:
        return {"crash_limit": self.crash_limit, "crash_failure": self._crash_failure}

    # -- claiming --------------------------------------------------------------------------------

    async def _execute(
        self,
        record: EntityRecord,
        *,
        holder: CapacityHolder | None,
        steal_from: str | None = None,
        fence: str | None = None,
        own_run: bool = False,
    ) -> Any:
        """Run one entity to its end (or return its stored result); see :meth:`run`.

        ``fence`` is the parent whose run starts it: the claim is refused (LeaseLostError) if
        this runtime no longer holds that parent's lease, and a child held elsewhere makes
        the parent wait for it (RunParked) instead of failing. ``own_run``: it runs on its own
        (not inside a parent's run)."""
        if record.status is EntityStatus.COMPLETED:
            await trio.lowlevel.checkpoint()
            return record.result
        if record.status is EntityStatus.CANCELLED:
            await trio.lowlevel.checkpoint()
            raise EntityCancelledError(record.id, record.type, record.name)
        live = self._live.get(record.id)
        if live is not None:
            return await self._attach(live, holder)  # running here already: wait for that run
        cls = self.registry.get(record.type, context=f"entity {record.name!r} ({record.id})")
        check_runnable(cls.runnable, record.type, record.name, record.id)
        live = self._live[record.id] = LiveRun(record, own_run=own_run)  # before claiming
        try:
            now = self.clock()
            claimed = await self.store.claim(
                record.id,
                self.owner,
                now=now,
                expires=now + self.lease_seconds,
                started=self._started,
                steal_from=steal_from,
                fence=fence,
                own_run=own_run,
                **self._claim_rules(),
            )
            if claimed is None:
                claimed = await self._claim_from_dead_owner(record.id, fence, own_run)
        except BaseException as exc:
            self._settle(live, record, None, exc)
            raise
        if claimed is None:
            del self._live[record.id]
            live.done.set()  # attachers look again (the entity is done or busy)
            return await self._not_claimed(record, fence)
        return await self._run_live(cls, claimed, live, holder)

    async def _attach(self, live: LiveRun, holder: CapacityHolder | None) -> Any:
        """Wait for a run of this runtime and end as it ends (or, if it could not claim the
        entity after all, try again as a new caller would)."""
        await live.done.wait()
        if live.ran:
            return live.outcome()
        record = await self.store.get_entity(live.record.id)
        return await self._execute(record, holder=holder)

    async def _execute_new(
        self, cls: type[RunnableEntity], new: NewEntity, *, holder: CapacityHolder | None
    ) -> Any:
        """Create a child and run it at once, claiming it in the same transaction (a task
        pool starting a child it creates)."""
        check_runnable(cls.runnable, cls.type_name, new.name, new.id)
        now = self.clock()
        record, _, claimed = await self.store.create_and_claim(
            new, self.owner, now=now, expires=now + self.lease_seconds, started=self._started(1)
        )
        if not claimed or record.id in self._live:
            # It existed already: the usual way.
            return await self._execute(record, holder=holder, fence=new.parent_id)
        live = self._live[record.id] = LiveRun(record)
        return await self._run_live(cls, record, live, holder)

    async def _claim_from_dead_owner(
        self, entity_id: str, fence: str | None, own_run: bool
    ) -> EntityRecord | None:
        """Claim an entity whose lease a dead process of this machine holds (a child of the
        run being resumed, typically), without waiting for the lease to expire."""
        fresh = await self.store.get_entity(entity_id)
        owner = fresh.lease_owner
        if not fresh.status.is_active or owner is None or owner == self.owner:
            return None
        if not owner_is_dead(owner):
            return None
        now = self.clock()
        return await self.store.claim(
            entity_id,
            self.owner,
            now=now,
            expires=now + self.lease_seconds,
            started=self._started,
            steal_from=owner,
            fence=fence,
            own_run=own_run,
            **self._claim_rules(),
        )

    async def _not_claimed(self, record: EntityRecord, fence: str | None) -> Any:
        fresh = await self.store.get_entity(record.id)
        if fresh.status is EntityStatus.COMPLETED:
            return fresh.result
        if fresh.status is EntityStatus.CANCELLED:
            raise EntityCancelledError(fresh.id, fresh.type, fresh.name)
        held = fresh.lease_owner is not None and fresh.lease_owner != self.owner
        if not held and fresh.status is EntityStatus.FAILED:  # the crash-loop guard failed it
            raise EntityFailedError(fresh.id, fresh.type, fresh.name, fresh.error or {})
        if fence is not None:
            # A child running on its own elsewhere: its parent waits for it durably.
            raise RunParked(f"{fresh.type} {fresh.name!r} ({fresh.id}) runs in another runtime")
        raise EntityBusyError(
            f"{fresh.type} {fresh.name!r} ({fresh.id}) is held by {fresh.lease_owner} until "
            f"{fresh.lease_expires}: it is running elsewhere (follow it with stream(), or wait()"
            " for it), or its lease has not expired yet (a claim loop takes it over then)"
        )

    def _adopt(self, record: EntityRecord) -> LiveRun | None:
        """Register a run the claim loop (or ``recover``) claimed for this runtime; ``None``
        if another path of this runtime registered it first (it runs it: the lease is this
        runtime's either way)."""
        if record.id in self._live:
            return None
        live = LiveRun(record, own_run=True)
        live.from_loop = True
        self._live[record.id] = live
        for watcher in self._adoption_watchers:
            watcher(live)
        return live

    async def _run_adopted(self, live: LiveRun) -> Any:
        """Run an adopted claim (see :meth:`_adopt`)."""
        record = live.record
        try:
            cls = self.registry.get(record.type, context=f"entity {record.name!r} ({record.id})")
        except BaseException as exc:
            self._settle(live, record, None, exc)
            raise
        return await self._run_live(cls, record, live, None)

    async def _dead_owners(self) -> list[str]:
        """The lease owners that are dead processes of this machine (looked up at most once per
        ``poll_interval``; a caller that comes during a lookup waits for its answer)."""
        async with self._dead_lock:
            if trio.current_time() - self._dead_checked >= self.poll_interval:
                owners = await self.store.lease_owners()
                self._dead = [o for o in owners if o != self.owner and owner_is_dead(o)]
                self._dead_checked = trio.current_time()
        return self._dead

    # -- running ---------------------------------------------------------------------------------

    async def _run_live(
        self,
        cls: type[RunnableEntity],
        claimed: EntityRecord,
        live: LiveRun,
        holder: CapacityHolder | None,
    ) -> Any:
        """Run a claimed entity registered as ``live``; record how it ended for attachers."""
        self._changed()
        live.record = claimed
        live.claimed = True
        try:
            result = await self._run_claimed(cls, claimed, live, holder)
        except BaseException as exc:
            self._settle(live, claimed, None, exc)
            raise
        self._settle(live, claimed, result, None)
        return result

    def _settle(
        self, live: LiveRun, record: EntityRecord, result: Any, error: BaseException | None
    ) -> None:
        if isinstance(error, RunParked):
            live.parked, error = True, None
        elif error is not None and not isinstance(error, Exception):
            error = EntityError(f"the run of {record.type} {record.name!r} was interrupted")
        live.result, live.error, live.ran = result, error, True
        if self._live.get(record.id) is live:
            del self._live[record.id]
        live.done.set()

    async def _run_claimed(
        self,
        cls: type[RunnableEntity],
        record: EntityRecord,
        live: LiveRun,
        holder: CapacityHolder | None,
    ) -> Any:
        entity = cls()
        entity._bind(record)
        ctx = RunContext(self, entity, live, holder)
        try:
            with trio.CancelScope() as scope:
                live.scope = scope
                if live.cancelled or live.lease_lost:
                    scope.cancel()
                result = await entity.run_impl(ctx)
        except LeaseLostError:
            await self._after_lost_lease(record, live)
            raise
        except RunParked:
            await self._park(record, live, ctx)
        except Exception as exc:
            await self._fail_or_stop(record, live, exc)
        except BaseException as exc:
            if is_cancellation(exc) or from_a_signal(exc):
                # Cancelled from outside (the runtime or the caller is leaving), or a real
                # Ctrl-C: give the lease back without finishing; the entity runs again later.
                await self._give_back(record, live)
                raise
            if only_parked(exc) is not None:  # the tasks of a nursery of run_impl parked
                await self._park(record, live, ctx)
            # SystemExit, KeyboardInterrupt or another BaseException raised by the entity's
            # own code: that entity fails; the process goes on serving the others.
            await self._fail_or_stop(record, live, exc)
        if scope.cancelled_caught:
            await self._after_lost_lease(record, live)
            raise EntityCancelledError(record.id, record.type, record.name)
        try:
            await self._finish(
                record,
                live,
                EntityStatus.COMPLETED,
                [
                    self._envelope(
                        record, EnvelopeType.VALUE.value, sub_type="return", value=result
                    ),
                    self._envelope(record, EnvelopeType.STATUS.value, status="COMPLETED"),
                ],
                result=result,
            )
        except (TypeError, ValueError) as exc:
            # The result cannot be stored as it is (the store checks it, nothing was written):
            # the run fails with that error.
            await self._fail(record, live, exc)
        return result

    async def _finish(
        self,
        record: EntityRecord,
        live: LiveRun,
        status: EntityStatus,
        envelopes: list[EntityEnvelope],
        *,
        result: Any = None,
        error: dict[str, str] | None = None,
    ) -> None:
        """Store how the run ended (shielded: it is recorded once, or not at all if the lease
        was lost meanwhile), and wake whoever that concerns."""
        # A parent running here (and not parking) is not waiting for this child: the store
        # need not look whether to wake it.
        parent = None if record.parent_id is None else self._live.get(record.parent_id)
        try:
            with trio.CancelScope(shield=True):
                woke = await self.store.finish(
                    record.id,
                    self.owner,
                    status,
                    now=self.clock(),
                    result=result,
                    error=error,
                    envelopes=[envelope.body() for envelope in envelopes],
                    wake_parent=parent is None or parent.parking,
                )
        except LeaseLostError:
            await self._after_lost_lease(record, live)  # cancelled or taken over meanwhile
            raise
        self._changed()
        if woke:
            self._work_due()  # the parent was waiting for this child

    async def _give_back(self, record: EntityRecord, live: LiveRun) -> None:
        """Release the lease of an interrupted run: a run of its own is due again at once,
        a child inside its parent's run is run again by the parent."""
        resubmit = self.clock() if live.own_run else None
        with trio.CancelScope(shield=True), contextlib.suppress(LeaseLostError):
            await self.store.release(record.id, self.owner, resubmit_at=resubmit)
        if resubmit is not None:
            self._work_due()

    async def _park(self, record: EntityRecord, live: LiveRun, ctx: RunContext) -> NoReturn:
        """End the run by parking it (what the context decided to wait for, else its
        children); raises RunParked for whoever ran it."""
        if live.cancelled or live.lease_lost:
            await self._after_lost_lease(record, live)
            raise EntityCancelledError(record.id, record.type, record.name)
        reason, wake_at = ctx._parking or (ParkReason.CHILDREN, None)
        live.parking = True  # from now on, its children's ends must look at it (_finish)
        try:
            with trio.CancelScope(shield=True):
                parked = await self.store.park(
                    record.id, self.owner, now=self.clock(), reason=reason, wake_at=wake_at
                )
        except LeaseLostError:
            await self._after_lost_lease(record, live)
            raise
        self._changed()
        if parked.runnable_at is not None and self._claims is not None:
            self._claims.due_at(parked.runnable_at)  # its timer, or now if it came meanwhile
        raise RunParked(f"{record.type} {record.name!r} ({record.id}) parked on {reason.value}")

    async def _after_lost_lease(self, record: EntityRecord, live: LiveRun) -> None:
        """The run lost its lease: cancelled (report that) or taken over (say so)."""
        fresh = await self.store.get_entity(record.id)
        if fresh.status is EntityStatus.CANCELLED:
            live.cancelled = True
            raise EntityCancelledError(record.id, record.type, record.name)
        if live.lease_lost or fresh.lease_owner != self.owner:
            held = f", held by {fresh.lease_owner}" if fresh.lease_owner else ""
            raise LeaseLostError(
                f"{record.type} {record.name!r} ({record.id}) lost its lease to another runtime "
                f"(it is {fresh.status.value} now{held}); this run stopped without recording "
                "anything more"
            )

    async def _fail_or_stop(
        self, record: EntityRecord, live: LiveRun, exc: BaseException
    ) -> NoReturn:
        if live.cancelled or live.lease_lost:
            # Raised while the run was being stopped: report why it was stopped.
            await self._after_lost_lease(record, live)
            raise EntityCancelledError(record.id, record.type, record.name) from exc
        await self._fail(record, live, exc)

    async def _fail(self, record: EntityRecord, live: LiveRun, exc: BaseException) -> NoReturn:
        error = error_to_dict(exc)
        envelopes = [
            self._envelope(record, EnvelopeType.ERROR.value, error=error),
            self._envelope(record, EnvelopeType.STATUS.value, status="FAILED", message=str(exc)),
        ]
        await self._finish(record, live, EntityStatus.FAILED, envelopes, error=error)
        raise EntityFailedError(record.id, record.type, record.name, error) from exc

    # -- leases ----------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Renew this runtime's leases every third of their duration, and stop the runs whose
        lease was lost (cancelled or taken over elsewhere)."""
        while True:
            await trio.sleep(self.lease_seconds / 3)
            held = [live for live in self._live.values() if live.claimed]
            if not held:
                continue
            expires = self.clock() + self.lease_seconds
            renewed = await self.store.renew_leases(self.owner, expires=expires)
            if renewed < len(held):
                for live in held:
                    if not live.claimed or self._live.get(live.record.id) is not live:
                        continue  # it ended meanwhile
                    fresh = await self.store.get_entity(live.record.id)
                    if fresh.lease_owner == self.owner:
                        continue
                    live.cancel(lease_lost=fresh.status is not EntityStatus.CANCELLED)
            # Only now (the runs that lost theirs are stopped): RunContext.check_lease.
            self.renewed_until = expires


def check_data(data: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """``data`` as a new dict, if it is a mapping of storable JSON."""
    payload = dict(data or {})
    check_json(payload, what)
    return payload
