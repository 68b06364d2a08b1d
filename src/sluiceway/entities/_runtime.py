"""The entity runtime: creates entities, runs them under leases, claims the work that is due,
parks long waits, streams envelopes."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import trio

from .._errors import (
    EntityCancelledError,
    EntityError,
    EntityFailedError,
    LeaseLostError,
    RunParked,
)
from .._util import open_owned_nursery
from ..capacity import CapacitySource
from ..store import (
    EdgeRecord,
    EntityRecord,
    EntityStatus,
    EntityStore,
    MessageRecord,
    NewEntity,
    open_store,
)
from ..store._json import check_text
from ._claims import ClaimLoop, check_loop_settings
from ._entity import CALLS, RunnableEntity, TypeRegistry
from ._envelope import EntityEnvelope, EnvelopeType, check_finite, check_json
from ._executor import Executor, check_data
from ._global_limits import GlobalLimitBroker
from ._live import LiveRun, RecoveredRun, check_runnable, new_owner, owner_is_dead
from ._tail import EnvelopeSample

__all__ = ["RecoveredRun", "Runtime", "open_runtime", "owner_is_dead"]


class Runtime(Executor):
    """Runs entities stored in an :class:`~sluiceway.EntityStore`; made by
    :func:`open_runtime`.

    Every run holds a lease on its entity (renewed by a heartbeat), so two runtimes sharing a
    store never run the same entity at once. Work is submitted durably (:meth:`start`), and
    the runtime's claim loop (:meth:`working`) runs what is due: submissions, runs whose
    process died, parked entities whose time or message came. Children run in their parent's
    run (``ctx.call``) or in a task pool (``ctx.parallel_calls``); their envelopes are stored
    once, under them, and a stream of any entity covers its whole subtree.

    ``state`` is the application's own: services its runs use (an HTTP client, capacity
    sources shared by every run of the process, configuration). Runs read it as
    ``ctx.state``; an :class:`~sluiceway.server.Application` sets it to what its lifespan
    yields while it is entered.
    """

    #: The application's state, for runs as ``ctx.state`` (``None`` until set).
    state: Any = None

    # -- entities ----------------------------------------------------------------------------

    async def create(
        self,
        entity_type: type[RunnableEntity] | str,
        data: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        exist_ok: bool = False,
        parent_id: str | None = None,
        edge_type: str = CALLS,
        start: bool = False,
    ) -> EntityRecord:
        """Create an entity (PENDING: nothing runs until :meth:`run`): a root, or with
        ``parent_id`` a child of that entity, connected to it by an ``edge_type`` edge (which
        the parent's type must allow), as a contact is filed under its address book. With
        ``start=True`` it is created submitted, in the same transaction, as :meth:`start`
        would submit it (an existing one found with ``exist_ok`` is returned as it is).

        ``name`` (default: the new id) is unique among roots, or among the parent's children.
        With ``exist_ok=True`` an existing entity of that name and type is returned unchanged
        (its data is not updated).

        Raises:
            UnknownEntityTypeError: the type is not registered.
            DuplicateEntityError: the name is taken (and not ``exist_ok``).
            EntityNotFoundError: ``parent_id`` names no entity.
            ConnectionNotAllowedError: the parent's type does not allow the edge.
        """
        cls = self.registry.get(entity_type)
        if start:
            check_runnable(cls.runnable, cls.type_name, name or "(new)", "(new)")
        if name is not None:
            check_text(name, "an entity name")
        check_text(edge_type, "an edge type")
        if parent_id is not None:
            parent = await self.store.get_entity(parent_id)
            self.registry.check_connection(parent.type, edge_type, cls.type_name)
        payload = check_data(data, "entity data")
        entity_id = str(uuid.uuid4())
        record, created = await self.store.create_entity(
            NewEntity(
                id=entity_id,
                name=entity_id if name is None else name,
                type=cls.type_name,
                general_type=cls.general_type,
                data=payload,
                created_at=self.clock(),
                parent_id=parent_id,
                edge_type=edge_type,
                submit=start,
            ),
            strict=not exist_ok,
        )
        if not created and record.type != cls.type_name:
            where = "a root" if parent_id is None else "an entity"
            raise EntityError(
                f"{where} named {record.name!r} exists with type {record.type}, not {cls.type_name}"
            )
        if created and start:
            self._work_due()
        return record

    async def update_data(self, entity_id: str, **partial: Any) -> dict[str, Any]:
        """Merge ``partial`` into the entity's stored data atomically, from outside any run
        (an endpoint approving a template), and return the new data. A running entity updates
        its own data with ``ctx.update_data`` instead.

        Raises:
            EntityNotFoundError.
        """
        check_json(partial, "entity data")
        return await self.store.update_data(entity_id, None, partial, now=self.clock())

    async def update_data_if(
        self, entity_id: str, expect: Mapping[str, Any], data: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge ``data`` into the entity's stored data only if each key of ``expect`` has
        exactly that value there (a missing key matches ``None``), atomically: a
        compare-and-set, for read-modify-write updates that concurrent writers must not lose
        (read, compute, ``update_data_if(id, {"score": old}, {"score": new})``, and on
        :class:`~sluiceway.DataConflictError` read again). Returns the new data.

        Raises:
            EntityNotFoundError.
            DataConflictError: the data did not hold what ``expect`` says (nothing written).
        """
        payload = check_data(data, "entity data")
        wanted = check_data(expect, "the data an update expects")
        return await self.store.update_data(
            entity_id, None, payload, now=self.clock(), expect=wanted
        )

    async def connect(
        self,
        from_id: str,
        edge_type: str,
        to_id: str,
        *,
        data: Mapping[str, Any] | None = None,
    ) -> EdgeRecord:
        """Add a typed edge between two entities from outside any run (a run connects its own
        entity with ``ctx.connect``). The source's type must allow ``edge_type`` to the
        target's. Adding the same edge again returns it unchanged.

        Raises:
            EntityNotFoundError, ConnectionNotAllowedError.
        """
        check_text(edge_type, "an edge type")
        source = await self.store.get_entity(from_id)
        target = await self.store.get_entity(to_id)
        self.registry.check_connection(source.type, edge_type, target.type)
        payload = check_data(data, "edge data")
        return await self.store.add_edge(
            source.id, target.id, edge_type, now=self.clock(), data=payload
        )

    async def edges(self, entity_id: str) -> tuple[list[EdgeRecord], list[EdgeRecord]]:
        """``(outgoing, incoming)`` edges of the entity, each by type, then position."""
        return await self.store.edges(entity_id)

    async def get(self, entity_id: str) -> EntityRecord:
        """The entity as stored now (status, data, result or error, lease).

        Raises:
            EntityNotFoundError.
        """
        return await self.store.get_entity(entity_id)

    async def children(self, entity_id: str) -> list[EntityRecord]:
        """The entity's children, oldest first."""
        return await self.store.children(entity_id)

    # -- runs --------------------------------------------------------------------------------

    async def run(self, entity_id: str) -> Any:
        """Run the entity here and return its result.

        A COMPLETED entity returns its stored result at once. A PENDING, FAILED or abandoned
        one runs (again) from the top of ``run_impl``; children it created before are found
        again, and COMPLETED ones are not run again. If the entity is running in this runtime
        already, this waits for that run. If the run parks (a long durable wait), this waits
        until the entity ends, wherever it runs then (see :meth:`wait`). Leaving early (a
        cancellation) stops the run without ending it: it is due again, and the claim loop
        of any runtime on the store resumes it.

        Raises:
            EntityFailedError: ``run_impl`` raised (the entity is FAILED, the error stored).
            EntityCancelledError: the entity was cancelled.
            EntityBusyError: another runtime holds its lease.
            EntityNotFoundError, UnknownEntityTypeError.
        """
        record = await self.store.get_entity(entity_id)
        try:
            return await self._execute(record, holder=None, own_run=True)
        except RunParked:
            return await self.wait(entity_id)

    async def start(
        self,
        entity_id: str,
        *,
        data: Mapping[str, Any] | None = None,
        expect: Mapping[str, Any] | None = None,
    ) -> EntityRecord:
        """Submit the entity for a run, durably, and return without waiting for it.

        When this returns, the submission is committed: the claim loop of this runtime, or of
        any runtime sharing the store (the next one, after a crash), runs the entity. With
        ``data``, that data is merged into the entity's in the same transaction (a campaign's
        ``status="executing"`` is never stored without its run, nor the run without it); with
        ``expect``, the submission happens only if each key of the entity's data has exactly
        that value (``expect={"status": "draft"}``: two requests cannot both start it).

        Returns the entity as it is then: COMPLETED (with its result: nothing was submitted),
        running, or due. Follow it with :meth:`stream`, or wait for it with :meth:`wait`.

        Raises:
            EntityNotFoundError, UnknownEntityTypeError.
            EntityCancelledError: the entity was cancelled.
            EntityNotRunnableError: the entity is a DataEntity.
            DataConflictError: ``expect`` did not hold (nothing was written).
        """
        record = await self.store.get_entity(entity_id)
        cls = self.registry.get(record.type, context=f"entity {record.name!r} ({record.id})")
        check_runnable(cls.runnable, record.type, record.name, record.id)
        payload = None if data is None else check_data(data, "the data of a start")
        wanted = None if expect is None else check_data(expect, "the data a start expects")
        submitted = await self.store.submit(
            record.id, now=self.clock(), data=payload, expect=wanted
        )
        if submitted.status is EntityStatus.CANCELLED:
            raise EntityCancelledError(submitted.id, submitted.type, submitted.name)
        self._work_due()
        return submitted

    async def wait(self, entity_id: str) -> Any:
        """Wait until the entity's run ends, wherever it runs, and return its result.

        It returns at once for a COMPLETED entity. A run of this runtime wakes it at once;
        one of another process within ``poll_interval``. Only a started entity ends: waiting
        for one that nothing runs waits until something does.

        Raises:
            EntityFailedError: the run failed (and no new run is due).
            EntityCancelledError: the entity was cancelled.
            EntityNotFoundError.
        """
        while True:
            live = self._live.get(entity_id)
            if live is not None:
                await live.done.wait()
                continue
            changes = self._streams.changes
            record = await self.store.get_entity(entity_id)
            if record.status is EntityStatus.COMPLETED:
                return record.result
            if record.status is EntityStatus.CANCELLED:
                raise EntityCancelledError(record.id, record.type, record.name)
            if record.status is EntityStatus.FAILED and record.runnable_at is None:
                raise EntityFailedError(record.id, record.type, record.name, record.error or {})
            with trio.move_on_after(self.poll_interval):
                await changes.wait()

    async def send_message(self, entity_id: str, message: str, data: Any = None) -> MessageRecord:
        """Send a message to an entity: it is stored and delivered to the entity's next wait
        (now if it is waiting in this runtime, else when it waits or runs again).

        Raises:
            EntityNotFoundError.
            EntityNotWaitingError: the entity is COMPLETED or CANCELLED.
        """
        check_text(message, "a message")
        check_json(data, "message data")
        record = await self.store.send_message(entity_id, message, data, now=self.clock())
        live = self._live.get(entity_id)
        if live is not None:
            live.wake()
        else:
            self._work_due()  # it may be parked on a message wait
        return record

    async def cancel(self, entity_id: str) -> list[str]:
        """Cancel the entity and its unfinished descendants: they become CANCELLED (with a
        STATUS CANCELLED envelope each) and their runs stop, here at once, in another runtime
        at its next heartbeat or write. Returns the ids cancelled. A cancelled entity does
        not run again; :meth:`run` raises :class:`~sluiceway.EntityCancelledError` for it.

        Raises:
            EntityNotFoundError.
        """
        record = await self.store.get_entity(entity_id)
        envelope = {
            "type": EnvelopeType.STATUS.value,
            "status": "CANCELLED",
            "message": "cancelled on request",
        }
        cancelled = await self.store.cancel(record.id, now=self.clock(), envelope=envelope)
        self._changed()
        self._work_due()  # its parent may have waited for it
        for cancelled_id in cancelled:
            live = self._live.get(cancelled_id)
            if live is not None:
                live.cancel()
        return cancelled

    # -- the claim loop ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def global_limit(
        self, name: str, total: int, *, linger: float = 0.05
    ) -> AsyncIterator[CapacitySource]:
        """A capacity node whose limit holds across every process sharing the store:
        ``async with runtime.global_limit("image-generation", 10) as images:``.

        At most ``total`` units of the limit ``name`` are held at once in all the processes
        together (each runtime that opens it must pass the same ``total``). The block gives
        a :class:`~sluiceway.CapacitySource` to acquire units from (``async with images:``),
        or to use as the ``parent`` of in-process capacity nodes, so that admission within
        this process stays atomic and max-min fair. Its ``total_tokens`` is how many units
        this process holds now: a broker task takes units from the store as this process's
        tasks wait for them, and gives back those it has not needed for ``linger`` seconds,
        at once if another process is short of units; while one is, each process keeps no
        more than its fair share (see :mod:`~sluiceway.entities._global_limits`). The units of
        a process that dies come back when its lease expires (at once for a dead process of
        this machine). Leaving the block gives every unit back.

        Raises:
            ValueError: ``name`` is empty, ``total`` is not an int >= 1, or ``linger`` is
                not a finite number >= 0.
        """
        check_text(name, "a global limit's name")
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"a global limit's total must be an int >= 1, got {total!r}")
        linger = check_finite(linger, "linger")
        if linger < 0:
            raise ValueError(f"linger must be >= 0, got {linger!r}")
        broker = GlobalLimitBroker(self, name, total, linger=linger)
        self._brokers.add(broker)
        try:
            async with open_owned_nursery() as nursery:
                await nursery.start(broker.run, name=f"global limit {name!r}")
                try:
                    yield broker.source
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._brokers.discard(broker)

    @contextlib.asynccontextmanager
    async def working(self) -> AsyncIterator[ClaimLoop]:
        """Run the claim loop while the block runs (see :mod:`~sluiceway.entities._claims`):
        it takes the work that is due in the store and runs it, up to ``max_runs`` runs at a
        time, and makes long waits park. Leaving the block stops its runs: their leases are
        given back and they are due again at once, for the next runtime. To let them finish
        first, for a while, ``await loop.wind_down(grace)`` before leaving it
        (:meth:`~sluiceway.entities.ClaimLoop.wind_down`), as a server and ``sluiceway
        worker`` do on shutdown.

        :func:`open_runtime` enters it for the runtime's lifetime unless ``work=False``; a
        server enters it itself, inside its application's lifespan (so that runs start with
        the application's state and stop before it is left).

        Raises:
            RuntimeError: the runtime is working already.
        """
        if self._claims is not None:
            raise RuntimeError("this runtime's claim loop is running already")
        loop = ClaimLoop(self, max_runs=self.max_runs, batch=self.claim_batch)
        async with open_owned_nursery() as nursery:
            await nursery.start(loop.run)
            self._claims = loop
            try:
                yield loop
            finally:
                self._claims = None
                nursery.cancel_scope.cancel()

    async def _run_quietly(self, live: LiveRun) -> None:
        """Run an adopted claim; how it ended is in ``live`` (for recover())."""
        with contextlib.suppress(EntityError, LeaseLostError, RunParked):
            await self._run_adopted(live)

    @property
    def claims(self) -> ClaimLoop | None:
        """The claim loop, while the runtime is :meth:`working` (else ``None``)."""
        return self._claims

    async def abandoned(self) -> list[EntityRecord]:
        """The runs to resume now: entities left IN_PROGRESS or WAITING (not parked) whose
        lease has expired, is free, or belongs to a process of this machine that no longer
        exists, and which are due (the topmost of each run: its children resume with it)."""
        due = await self.store.runnable(
            now=self.clock(),
            steal_from=await self._dead_owners(),
            types=self.registry.runnable_names(),
        )
        return [
            record
            for record in due
            if record.status.is_active and record.parked_on is None and record.id not in self._live
        ]

    async def recover(self) -> list[RecoveredRun]:
        """Run everything that is due now (abandoned runs, submissions, parked entities whose
        time came) and wait for it, with the runs the claim loop took already. Returns how
        each of those runs ended. The claim loop does this continuously; this is for a
        program that wants to wait for it."""
        outcomes: list[RecoveredRun] = []

        async def follow(live: LiveRun) -> None:
            await live.done.wait()
            outcomes.append(_outcome(live))

        async with open_owned_nursery() as nursery:

            def watch(live: LiveRun) -> None:
                if live.from_loop:
                    nursery.start_soon(follow, live)

            for live in list(self._live.values()):
                watch(live)
            self._adoption_watchers.append(watch)  # the claim loop's runs, and our own
            loop = self._claims
            try:
                # A claim of the loop under way ends (its runs adopted, so watched) before
                # ours begins.
                async with contextlib.nullcontext() if loop is None else loop.claiming:
                    outcomes.extend(await self._claim_all(nursery))
            finally:
                self._adoption_watchers.remove(watch)
        self._changed()
        return outcomes

    async def _claim_all(self, nursery: trio.Nursery) -> list[RecoveredRun]:
        """Claim everything due now, batch after batch, starting each run in ``nursery``;
        returns the entities the crash-loop guard failed instead."""
        failures: list[RecoveredRun] = []
        while True:
            now = self.clock()
            batch = await self.store.claim_due(
                self.owner,
                now=now,
                expires=now + self.lease_seconds,
                limit=self.claim_batch,
                started=self._started,
                steal_from=await self._dead_owners(),
                types=self.registry.runnable_names(),
                **self._claim_rules(),
            )
            for entity_id in batch.failed:
                record = await self.store.get_entity(entity_id)
                error = EntityFailedError(record.id, record.type, record.name, record.error or {})
                failures.append(RecoveredRun(record.id, record.type, record.name, error=error))
            for record in batch.claimed:
                adopted = self._adopt(record)  # followed by watch()
                if adopted is not None:
                    nursery.start_soon(self._run_quietly, adopted)
            if len(batch.claimed) + len(batch.failed) < self.claim_batch:
                return failures

    def held_elsewhere(self, record: EntityRecord) -> bool:
        """Whether another runtime, alive as far as this one can tell, holds the unfinished
        entity's lease (running it would raise :class:`~sluiceway.EntityBusyError`)."""
        if record.status not in (EntityStatus.IN_PROGRESS, EntityStatus.WAITING):
            return False
        owner, expires = record.lease_owner, record.lease_expires
        if owner is None or owner == self.owner or (expires or 0.0) <= self.clock():
            return False
        return not owner_is_dead(owner)

    # -- envelopes -----------------------------------------------------------------------------

    async def envelopes(
        self, entity_id: str, *, after_seq: int = 0, subtree: bool = True
    ) -> list[EntityEnvelope]:
        """The stored envelopes of the entity (and its descendants, with ``subtree``) after
        ``after_seq``, in order."""
        return await self._streams.envelopes(entity_id, after_seq=after_seq, subtree=subtree)

    def stream(
        self, entity_id: str, *, after_seq: int = 0, buffer: int = 256
    ) -> contextlib.AbstractAsyncContextManager[trio.MemoryReceiveChannel[EntityEnvelope]]:
        """Follow the envelopes of an entity's subtree: ``async with runtime.stream(id) as
        envelopes: async for envelope in envelopes``.

        It replays the stored envelopes after ``after_seq``, in ``seq`` order, then follows
        new ones as they are stored, and ends after the entity's run has ended (its
        COMPLETED, FAILED or CANCELLED status envelope) and everything before it was
        delivered. A parked entity has not ended: its stream waits for it. A subscriber that
        reconnects with the ``seq`` of the last envelope it got misses nothing and sees
        nothing twice. Envelopes stored by another process sharing the store are picked up
        within ``poll_interval``. At most ``buffer`` envelopes wait for a slow reader; the
        reading from the store waits meanwhile.

        Raises:
            EntityNotFoundError: at once, for an unknown id.
        """
        return self._streams.stream(entity_id, after_seq=after_seq, buffer=buffer)

    def stream_batches(
        self,
        entity_id: str,
        *,
        after_seq: int = 0,
        buffer: int = 16,
        subtree: bool = True,
        pace: float = 0.0,
    ) -> contextlib.AbstractAsyncContextManager[trio.MemoryReceiveChannel[list[EntityEnvelope]]]:
        """:meth:`stream`, the envelopes in lists: each list holds what was ready together
        (a page replayed from the store, what a step of the run stored), in ``seq`` order. A
        server sending to many subscribers takes them this way: fewer hand-overs, larger
        frames. At most ``buffer`` lists wait for a slow reader. With ``subtree=False``, the
        entity's own envelopes only (its children's are not even read). With ``pace``
        (seconds), once caught up, a list of what was stored meanwhile comes at most that
        often (a reader sampling a busy run is not woken at every step of it).

        Raises:
            EntityNotFoundError: at once, for an unknown id.
            ValueError: ``after_seq`` or ``pace`` out of range.
        """
        return self._streams.stream_batches(
            entity_id, after_seq=after_seq, buffer=buffer, subtree=subtree, pace=pace
        )

    def stream_samples(
        self,
        entity_id: str,
        *,
        keep: int,
        after_seq: int = 0,
        buffer: int = 16,
        subtree: bool = True,
        pace: float = 0.0,
    ) -> contextlib.AbstractAsyncContextManager[trio.MemoryReceiveChannel[EnvelopeSample]]:
        """:meth:`stream_batches`, sampled for a person watching a busy run: each
        :class:`~sluiceway.EnvelopeSample` holds the newest ``keep`` envelopes of what was
        stored since the previous one, plus the newest ``keep`` of the older ``ERROR``,
        ``WAITING`` and ``MESSAGE`` envelopes, and counts the others in its ``skipped``;
        with ``pace`` (seconds), at most one sample that often once caught up. Nothing is
        left out unannounced and nothing comes twice: resuming from the ``seq`` of the last
        envelope received goes on where the stream was. The envelopes a sample passes over
        cost nothing: a run of thousands of children costs a watcher a few envelopes a
        second.

        ``keep`` is at most half the window of recent envelopes the runtime keeps per
        followed subtree (2,048): a sample left behind by that window while it waits for its
        pace is then still exact (what it missed is counted, and the notable ones among them
        are kept longer than the window).

        Raises:
            EntityNotFoundError: at once, for an unknown id.
            ValueError: ``keep``, ``after_seq`` or ``pace`` out of range.
        """
        return self._streams.stream_samples(
            entity_id, keep=keep, after_seq=after_seq, buffer=buffer, subtree=subtree, pace=pace
        )


def _outcome(live: LiveRun) -> RecoveredRun:
    """What a run that ended ended with."""
    record = live.record
    if live.parked:
        return RecoveredRun(record.id, record.type, record.name, parked=True)
    return RecoveredRun(record.id, record.type, record.name, result=live.result, error=live.error)


@contextlib.asynccontextmanager
async def open_runtime(
    store: EntityStore | str | os.PathLike[str],
    types: Sequence[type[RunnableEntity]],
    *,
    lease_seconds: float = 30.0,
    poll_interval: float = 0.5,
    clock: Callable[[], float] | None = None,
    owner: str | None = None,
    work: bool = True,
    park_after: float = 10.0,
    crash_limit: int | None = 3,
    max_runs: int = 100,
    claim_batch: int = 50,
) -> AsyncIterator[Runtime]:
    """Open a runtime over ``store`` for the entity ``types``:
    ``async with open_runtime(store="app.db", types=[Campaign, Recipient]) as runtime:``.

    Args:
        store: an entity store (opened and closed by the runtime), or what names one (see
            :func:`~sluiceway.open_store`): a PostgreSQL URL (``"postgresql://app@db/app"``,
            a ``PostgresStore``: psycopg must be installed), else the path of a SQLite file
            (a :class:`~sluiceway.SqliteStore`).
        types: the entity classes this runtime can run. Their ``allowed_connections`` must
            name registered types.
        lease_seconds: how long a run's lease lasts without a heartbeat (renewed every third
            of it). A crashed process's runs are taken over by a claim loop once their lease
            expires (at once for a dead process of this machine).
        poll_interval: how often the claim loop, waits and streams look for what other
            processes stored (what this runtime stores wakes them at once).
        clock: the wall clock for leases, durable deadlines and wake-up times; it must agree
            across the processes sharing the store. By default the store's ``clock()`` if it
            has one (a :class:`~sluiceway.PostgresStore` keeps the database server's time, so
            that machines whose clocks disagree still agree on leases), else ``time.time``.
            Tests pass one that follows trio's clock (``lambda: BASE + trio.current_time()``)
            to run days of waits in virtual time.
        owner: this runtime's lease owner id (default ``host:pid:random``).
        work: run the claim loop (:meth:`Runtime.working`) for the runtime's lifetime. A
            program that must enter something first (a server entering its application's
            lifespan) passes ``False`` and enters ``runtime.working()`` itself.
        park_after: a durable wait longer than this many seconds parks: the run ends and
            gives everything back, and the claim loop runs the entity again when the wait is
            over (a message wait parks once it has waited this long). ``0`` parks every wait
            that is not over yet; ``math.inf`` never parks. Waits park only while the claim
            loop runs.
        crash_limit: an entity whose runs were abandoned by dying processes this many times
            in a row (each dying before its first heartbeat or new step) is FAILED instead of
            being run again; ``None`` never gives up.
        max_runs: the most runs the claim loop holds at once (children run inside them).
        claim_batch: the most entities the claim loop claims in one transaction.

    Raises:
        ImportError: ``store`` is a PostgreSQL URL, and psycopg is not installed.
    """
    lease_seconds = check_finite(lease_seconds, "lease_seconds")
    poll_interval = check_finite(poll_interval, "poll_interval")
    if lease_seconds <= 0 or poll_interval <= 0:
        raise ValueError("lease_seconds and poll_interval must be > 0")
    if clock is not None and not callable(clock):
        raise TypeError(f"clock must be callable, got {clock!r}")
    check_loop_settings(max_runs, claim_batch, park_after)
    if crash_limit is not None and (
        isinstance(crash_limit, bool) or not isinstance(crash_limit, int) or crash_limit < 1
    ):
        raise ValueError(f"crash_limit must be an int >= 1 or None, got {crash_limit!r}")
    if not isinstance(work, bool):
        raise TypeError(f"work must be a bool, got {work!r}")
    registry = TypeRegistry(types)
    if isinstance(store, str | os.PathLike):
        store = open_store(store)
    if not isinstance(store, EntityStore):
        raise TypeError(f"store must be an EntityStore, a PostgreSQL URL or a path, got {store!r}")
    async with store:
        owner = new_owner() if owner is None else owner
        store.bind_owner(owner)
        runtime = Runtime(
            store,
            registry,
            owner=owner,
            lease_seconds=lease_seconds,
            clock=getattr(store, "clock", time.time) if clock is None else clock,
            poll_interval=poll_interval,
            park_after=float(park_after),
            crash_limit=crash_limit,
            max_runs=max_runs,
            claim_batch=claim_batch,
        )
        async with open_owned_nursery() as nursery:
            nursery.start_soon(runtime._heartbeat, name="lease heartbeat")
            # What other processes commit wakes this runtime's streams, waits and claim loop
            # at once (on a store that can tell; polling finds it otherwise).
            nursery.start_soon(store.watch, runtime._store_changed, name="store notifications")
            try:
                if work:
                    async with runtime.working():
                        yield runtime
                else:
                    yield runtime
            finally:
                nursery.cancel_scope.cancel()
