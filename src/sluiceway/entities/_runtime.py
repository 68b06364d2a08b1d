"""The entity runtime: runs entities under leases, streams their envelopes, recovers them."""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn

import attrs
import trio

from .._errors import (
    EntityBusyError,
    EntityCancelledError,
    EntityError,
    EntityFailedError,
    EntityNotRunnableError,
    LeaseLostError,
)
from .._util import open_owned_nursery
from ..runners._envelopes import error_to_dict
from ..store import (
    EdgeRecord,
    EntityRecord,
    EntityStatus,
    EntityStore,
    MessageRecord,
    NewEntity,
    SqliteStore,
)
from ._context import CapacityHolder, RunContext
from ._entity import CALLS, RunnableEntity, TypeRegistry
from ._envelope import EntityEnvelope, EnvelopeType, check_finite, check_json

#: Envelopes read from the store per query while streaming.
_PAGE = 500
#: The latest envelopes of a followed subtree kept in memory for its streams.
_WINDOW = 4096


@attrs.frozen
class RecoveredRun:
    """What :meth:`Runtime.recover` did with one abandoned run: its entity, and its result or
    the error that ended it."""

    entity_id: str
    entity_type: str
    entity_name: str
    result: Any = None
    error: BaseException | None = None


class LiveRun:
    """A run of an entity in this runtime: how to cancel it, wake it, and wait for it."""

    def __init__(self, record: EntityRecord) -> None:
        self.record = record
        self.scope: trio.CancelScope | None = None
        self.cancelled = False  # cancelled on request (runtime.cancel, here or elsewhere)
        self.lease_lost = False  # another runtime took the entity over
        self.done = trio.Event()
        self.claimed = False  # it holds the entity's lease (set once its claim succeeded)
        self.ran = False  # it claimed the entity and ran (result or error is its outcome)
        self.result: Any = None
        self.error: BaseException | None = None
        self.wakeup = trio.Event()  # set (and replaced) when a message arrives

    def wake(self) -> None:
        self.wakeup.set()
        self.wakeup = trio.Event()

    def cancel(self, *, lease_lost: bool = False) -> None:
        if lease_lost:
            self.lease_lost = True
        else:
            self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()

    def outcome(self) -> Any:
        """The ended run's result, or (a copy of) what ended it."""
        if self.error is not None:
            raise _copy_error(self.error)
        return self.result


class Runtime:
    """Runs entities stored in an :class:`~sluiceway.EntityStore`; made by
    :func:`open_runtime`.

    Every run holds a lease on its entity (renewed by a heartbeat), so two runtimes sharing a
    store never run the same entity at once; an entity whose runtime stopped is taken over by
    :meth:`recover`. Children run in their parent's run (``ctx.call``) or in a task pool
    (``ctx.parallel_calls``); their envelopes are stored once, under them, and a stream of any
    entity covers its whole subtree.

    ``state`` is the application's own: services its runs use (an HTTP client, capacity
    sources shared by every run of the process, configuration). Runs read it as
    ``ctx.state``; an :class:`~sluiceway.server.Application` sets it to what its lifespan
    yields while it is entered.
    """

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
    ) -> None:
        self.store = store
        self.registry = registry
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.poll_interval = poll_interval
        self._live: dict[str, LiveRun] = {}
        self._changes = trio.Event()
        # One shared reader per followed subtree (see _Tail).
        self._tails: dict[tuple[str, bool], _Tail] = {}

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
    ) -> EntityRecord:
        """Create an entity (PENDING: nothing runs until :meth:`run`): a root, or with
        ``parent_id`` a child of that entity, connected to it by an ``edge_type`` edge (which
        the parent's type must allow), as a contact is filed under its address book.

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
        if parent_id is not None:
            parent = await self.store.get_entity(parent_id)
            self.registry.check_connection(parent.type, edge_type, cls.type_name)
        payload = dict(data or {})
        check_json(payload, "entity data")
        entity_id = str(uuid.uuid4())
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"an entity name must be a non-empty string, got {name!r}")
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
            ),
            strict=not exist_ok,
        )
        if not created and record.type != cls.type_name:
            where = "a root" if parent_id is None else "an entity"
            raise EntityError(
                f"{where} named {record.name!r} exists with type {record.type}, not {cls.type_name}"
            )
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
        if not isinstance(edge_type, str) or not edge_type:
            raise TypeError(f"an edge type is a non-empty string, got {edge_type!r}")
        source = await self.store.get_entity(from_id)
        target = await self.store.get_entity(to_id)
        self.registry.check_connection(source.type, edge_type, target.type)
        payload = dict(data or {})
        check_json(payload, "edge data")
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

    async def run(self, entity_id: str) -> Any:
        """Run the entity and return its result.

        A COMPLETED entity returns its stored result at once. A PENDING, FAILED or abandoned
        one runs (again) from the top of ``run_impl``; children it created before are found
        again, and COMPLETED ones are not run again. If the entity is running in this runtime
        already, this waits for that run.

        Raises:
            EntityFailedError: ``run_impl`` raised (the entity is FAILED, the error stored).
            EntityCancelledError: the entity was cancelled.
            EntityBusyError: another runtime holds its lease.
            EntityNotFoundError, UnknownEntityTypeError.
        """
        record = await self.store.get_entity(entity_id)
        return await self._execute(record, holder=None)

    async def send_message(self, entity_id: str, message: str, data: Any = None) -> MessageRecord:
        """Send a message to an entity: it is stored and delivered to the entity's next wait
        (now if it is waiting in this runtime, else when it waits or runs again).

        Raises:
            EntityNotFoundError.
            EntityNotWaitingError: the entity is COMPLETED or CANCELLED.
        """
        if not isinstance(message, str) or not message:
            raise TypeError(f"a message is a non-empty string, got {message!r}")
        check_json(data, "message data")
        record = await self.store.send_message(entity_id, message, data, now=self.clock())
        live = self._live.get(entity_id)
        if live is not None:
            live.wake()
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
        for cancelled_id in cancelled:
            live = self._live.get(cancelled_id)
            if live is not None:
                live.cancel()
        return cancelled

    async def abandoned(self) -> list[EntityRecord]:
        """The runs to resume now: entities left IN_PROGRESS or WAITING whose lease has
        expired, is free, or belongs to a process of this machine that no longer exists; the
        topmost of each run only (a parent resumes its children), and not those interrupted
        together with a parent that failed or was cancelled (they resume when it does)."""
        return [record for record, _ in await self._abandoned()]

    async def _abandoned(self) -> list[tuple[EntityRecord, str | None]]:
        now = self.clock()
        candidates: list[tuple[EntityRecord, str | None]] = []
        for record in await self.store.active():
            if record.id in self._live:
                continue
            if record.parent_id is not None:
                parent = await self.store.get_entity(record.parent_id)
                if parent.status in (EntityStatus.FAILED, EntityStatus.CANCELLED):
                    continue  # interrupted with its parent: it resumes when the parent runs
            steal: str | None = None
            if record.lease_owner is None or (record.lease_expires or 0.0) <= now:
                pass
            elif record.lease_owner != self.owner and owner_is_dead(record.lease_owner):
                steal = record.lease_owner
            else:
                continue  # a live runtime holds it
            candidates.append((record, steal))
        return candidates

    async def recover(self) -> list[RecoveredRun]:
        """Resume every abandoned run (see :meth:`abandoned`) and wait for them. Returns what
        each resumed run ended with."""
        candidates = await self._abandoned()
        outcomes: list[RecoveredRun] = []

        async def resume(record: EntityRecord, steal: str | None) -> None:
            try:
                result = await self._execute(record, holder=None, steal_from=steal)
            except (EntityError, LeaseLostError) as exc:
                outcomes.append(RecoveredRun(record.id, record.type, record.name, error=exc))
            else:
                outcomes.append(RecoveredRun(record.id, record.type, record.name, result=result))

        async with open_owned_nursery() as nursery:
            for record, steal in candidates:
                nursery.start_soon(resume, record, steal, name=f"recover {record.name}")
        return outcomes

    def held_elsewhere(self, record: EntityRecord) -> bool:
        """Whether another runtime, alive as far as this one can tell, holds the unfinished
        entity's lease (running it would raise :class:`~sluiceway.EntityBusyError`)."""
        if record.status not in (EntityStatus.IN_PROGRESS, EntityStatus.WAITING):
            return False
        owner, expires = record.lease_owner, record.lease_expires
        if owner is None or owner == self.owner or (expires or 0.0) <= self.clock():
            return False
        return not owner_is_dead(owner)

    def is_running(self, entity_id: str) -> bool:
        """Whether the entity is running in this runtime now."""
        return entity_id in self._live

    # -- envelopes ---------------------------------------------------------------------------

    async def envelopes(
        self, entity_id: str, *, after_seq: int = 0, subtree: bool = True
    ) -> list[EntityEnvelope]:
        """The stored envelopes of the entity (and its descendants, with ``subtree``) after
        ``after_seq``, in order."""
        out: list[EntityEnvelope] = []
        while True:
            page = await self.store.read_envelopes(
                entity_id, after_seq=after_seq, limit=_PAGE, subtree=subtree
            )
            out.extend(EntityEnvelope.from_stored(stored) for stored in page)
            if len(page) < _PAGE:
                return out
            after_seq = page[-1].seq

    @contextlib.asynccontextmanager
    async def stream(
        self, entity_id: str, *, after_seq: int = 0, buffer: int = 256
    ) -> AsyncIterator[trio.MemoryReceiveChannel[EntityEnvelope]]:
        """Follow the envelopes of an entity's subtree: ``async with runtime.stream(id) as
        envelopes: async for envelope in envelopes``.

        It replays the stored envelopes after ``after_seq``, in ``seq`` order, then follows
        new ones as they are stored, and ends after the entity's run has ended (its
        COMPLETED, FAILED or CANCELLED status envelope) and everything before it was
        delivered. A subscriber that reconnects with the ``seq`` of the last envelope it got
        misses nothing and sees nothing twice. Envelopes stored by another process sharing
        the store are picked up within ``poll_interval``. At most ``buffer`` envelopes wait
        for a slow reader; the reading from the store waits meanwhile.

        Raises:
            EntityNotFoundError: at once, for an unknown id.
        """
        await self.store.get_entity(entity_id)
        if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
            raise ValueError(f"after_seq must be an int >= 0, got {after_seq!r}")
        send, receive = trio.open_memory_channel[EntityEnvelope](buffer)

        async def deliver(batch: list[EntityEnvelope]) -> None:
            for envelope in batch:
                await send.send(envelope)

        async with open_owned_nursery() as nursery:
            nursery.start_soon(
                self._pump, entity_id, after_seq, send, deliver, name=f"stream {entity_id}"
            )
            with receive:
                try:
                    yield receive
                finally:
                    nursery.cancel_scope.cancel()

    @contextlib.asynccontextmanager
    async def stream_batches(
        self, entity_id: str, *, after_seq: int = 0, buffer: int = 16
    ) -> AsyncIterator[trio.MemoryReceiveChannel[list[EntityEnvelope]]]:
        """:meth:`stream`, the envelopes in lists: each list holds what was ready together
        (a page replayed from the store, what a step of the run stored), in ``seq`` order. A
        server sending to many subscribers takes them this way: fewer hand-overs, larger
        frames. At most ``buffer`` lists wait for a slow reader.

        Raises:
            EntityNotFoundError: at once, for an unknown id.
        """
        await self.store.get_entity(entity_id)
        if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
            raise ValueError(f"after_seq must be an int >= 0, got {after_seq!r}")
        send, receive = trio.open_memory_channel[list[EntityEnvelope]](buffer)

        async def deliver(batch: list[EntityEnvelope]) -> None:
            if batch:
                await send.send(batch)

        async with open_owned_nursery() as nursery:
            nursery.start_soon(
                self._pump, entity_id, after_seq, send, deliver, name=f"stream {entity_id}"
            )
            with receive:
                try:
                    yield receive
                finally:
                    nursery.cancel_scope.cancel()

    async def _pump(
        self,
        entity_id: str,
        after_seq: int,
        send: trio.MemorySendChannel[Any],
        deliver: Callable[[list[EntityEnvelope]], Awaitable[None]],
    ) -> None:
        key = (entity_id, True)
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tails[key] = _Tail(entity_id, base=await self.store.last_seq())
        tail.users += 1
        try:
            with send:
                await self._follow(tail, after_seq, deliver)
        finally:
            tail.users -= 1
            if not tail.users and self._tails.get(key) is tail:
                del self._tails[key]

    async def _follow(
        self,
        tail: _Tail,
        after_seq: int,
        deliver: Callable[[list[EntityEnvelope]], Awaitable[None]],
    ) -> None:
        """Deliver the entity's subtree after ``after_seq``: from the store while behind the
        shared tail's window, from the window after that, ending once the run has ended and
        everything before its end was delivered."""
        position = after_seq  # every envelope of the subtree up to here was delivered
        while True:
            if position < tail.base:
                # Behind the window: replay from the store. Everything up to the highest seq
                # stored before the read is in it, if the page is not full.
                highest = await self.store.last_seq()
                page = await self.store.read_envelopes(
                    tail.entity_id, after_seq=position, limit=_PAGE
                )
                await deliver([EntityEnvelope.from_stored(stored) for stored in page])
                if page:
                    position = page[-1].seq
                if len(page) < _PAGE:
                    position = max(position, highest)  # (the page may go beyond it)
                continue
            if not tail.version:  # nobody has read the tail yet
                await tail.advance(self.store, 0)
                continue
            # Take the window's content, its end, its version and the wake-up event together,
            # before delivering (which waits for the reader): whatever is stored or read into
            # the window meanwhile sets this event, or moves this version, so the wait below
            # returns at once instead of missing it until the next change or poll.
            changes, version = self._changes, tail.version
            ended, last, envelopes = tail.ended, tail.last, tail.after(position)
            await deliver(envelopes)
            position = max(position, last)
            if ended and not self.is_running(tail.entity_id):
                return
            if tail.version == version:  # else another stream read more meanwhile: take it
                with trio.move_on_after(self.poll_interval):
                    await changes.wait()
            await tail.advance(self.store, version)

    def _changed(self) -> None:
        """Wake the streams of this runtime: something was stored."""
        self._changes.set()
        self._changes = trio.Event()

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
        self, entity: RunnableEntity, envelopes: Sequence[EntityEnvelope]
    ) -> list[EntityEnvelope]:
        seqs = await self.store.append_envelopes(
            self.owner, [(entity.id, envelope.ts, envelope.body()) for envelope in envelopes]
        )
        self._changed()
        return [
            attrs.evolve(envelope, seq=seq) for envelope, seq in zip(envelopes, seqs, strict=True)
        ]

    # -- running -------------------------------------------------------------------------------

    async def _execute(
        self,
        record: EntityRecord,
        *,
        holder: CapacityHolder | None,
        steal_from: str | None = None,
        fence: str | None = None,
    ) -> Any:
        """Run one entity to its end (or return its stored result); see :meth:`run`.

        ``fence`` is the parent whose run starts it: the claim is refused (LeaseLostError) if
        this runtime no longer holds that parent's lease."""
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
        _check_runnable(cls, record.name, record.id)
        started = self._started(record.attempt + 1)
        live = self._live[record.id] = LiveRun(record)  # before claiming: callers attach
        try:
            now = self.clock()
            claimed = await self.store.claim(
                record.id,
                self.owner,
                now=now,
                expires=now + self.lease_seconds,
                started=started,
                steal_from=steal_from,
                fence=fence,
            )
            if claimed is None:
                claimed = await self._claim_from_dead_owner(record.id, started, fence)
        except BaseException as exc:
            self._settle(live, record, None, exc)
            raise
        if claimed is None:
            del self._live[record.id]
            live.done.set()  # attachers look again (the entity is done or busy)
            return await self._not_claimed(record)
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
        _check_runnable(cls, new.name, new.id)
        started = self._started(1)
        now = self.clock()
        record, _, claimed = await self.store.create_and_claim(
            new, self.owner, now=now, expires=now + self.lease_seconds, started=started
        )
        if not claimed or record.id in self._live:
            # It existed already: the usual way.
            return await self._execute(record, holder=holder, fence=new.parent_id)
        live = self._live[record.id] = LiveRun(record)
        return await self._run_live(cls, record, live, holder)

    async def _claim_from_dead_owner(
        self, entity_id: str, started: dict[str, Any], fence: str | None
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
            started=started,
            steal_from=owner,
            fence=fence,
        )

    @staticmethod
    def _started(attempt: int) -> dict[str, Any]:
        """The body of the STATUS STARTED envelope of a run."""
        return {
            "type": EnvelopeType.STATUS.value,
            "status": "STARTED",
            "metadata": {"attempt": attempt},
        }

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
        if error is not None and not isinstance(error, Exception):
            error = EntityError(f"the run of {record.type} {record.name!r} was interrupted")
        live.result, live.error, live.ran = result, error, True
        if self._live.get(record.id) is live:
            del self._live[record.id]
        live.done.set()

    async def _not_claimed(self, record: EntityRecord) -> Any:
        fresh = await self.store.get_entity(record.id)
        if fresh.status is EntityStatus.COMPLETED:
            return fresh.result
        if fresh.status is EntityStatus.CANCELLED:
            raise EntityCancelledError(fresh.id, fresh.type, fresh.name)
        raise EntityBusyError(
            f"{fresh.type} {fresh.name!r} ({fresh.id}) is held by {fresh.lease_owner} until "
            f"{fresh.lease_expires}: it is running elsewhere (follow it with stream()), or its "
            "lease has not expired yet (recover() takes it over then)"
        )

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
                check_json(result, f"the result of {record.type} {record.name!r}")
        except LeaseLostError:
            await self._after_lost_lease(record, live)
            raise
        except Exception as exc:
            if live.cancelled or live.lease_lost:
                # Raised while the run was being stopped: report why it was stopped.
                await self._after_lost_lease(record, live)
                raise EntityCancelledError(record.id, record.type, record.name) from exc
            await self._fail(record, live, exc)
        except BaseException:
            # Cancelled from outside (the runtime or the caller is leaving), or interrupted:
            # give the lease back without finishing, so the entity runs again later.
            with trio.CancelScope(shield=True), contextlib.suppress(LeaseLostError):
                await self.store.release(record.id, self.owner)
            raise
        if scope.cancelled_caught:
            await self._after_lost_lease(record, live)
            raise EntityCancelledError(record.id, record.type, record.name)
        now = self.clock()
        envelopes = [
            self._envelope(record, EnvelopeType.VALUE.value, sub_type="return", value=result),
            self._envelope(record, EnvelopeType.STATUS.value, status="COMPLETED"),
        ]
        try:
            with trio.CancelScope(shield=True):
                await self.store.finish(
                    record.id,
                    self.owner,
                    EntityStatus.COMPLETED,
                    now=now,
                    result=result,
                    envelopes=[envelope.body() for envelope in envelopes],
                )
        except LeaseLostError:
            await self._after_lost_lease(record, live)  # cancelled or taken over meanwhile
            raise
        self._changed()
        return result

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

    async def _fail(self, record: EntityRecord, live: LiveRun, exc: BaseException) -> NoReturn:
        error = error_to_dict(exc)
        envelopes = [
            self._envelope(record, EnvelopeType.ERROR.value, error=error),
            self._envelope(record, EnvelopeType.STATUS.value, status="FAILED", message=str(exc)),
        ]
        try:
            with trio.CancelScope(shield=True):
                await self.store.finish(
                    record.id,
                    self.owner,
                    EntityStatus.FAILED,
                    now=self.clock(),
                    error=error,
                    envelopes=[envelope.body() for envelope in envelopes],
                )
        except LeaseLostError:
            await self._after_lost_lease(record, live)  # cancelled or taken over meanwhile
            raise
        self._changed()
        raise EntityFailedError(record.id, record.type, record.name, error) from exc

    # -- leases --------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Renew this runtime's leases every third of their duration, and stop the runs whose
        lease was lost (cancelled or taken over elsewhere)."""
        while True:
            await trio.sleep(self.lease_seconds / 3)
            held = [live for live in self._live.values() if live.claimed]
            if not held:
                continue
            renewed = await self.store.renew_leases(
                self.owner, expires=self.clock() + self.lease_seconds
            )
            if renewed >= len(held):
                continue
            for live in held:
                if not live.claimed or self._live.get(live.record.id) is not live:
                    continue  # it ended meanwhile
                fresh = await self.store.get_entity(live.record.id)
                if fresh.lease_owner == self.owner:
                    continue
                live.cancel(lease_lost=fresh.status is not EntityStatus.CANCELLED)


class _Tail:
    """The latest envelopes of one entity's subtree, read once for all its streams.

    Every envelope of the subtree with a seq in ``(base, last]`` is in ``window`` (older ones
    drop out of it and move ``base``); ``ended`` says whether the entity's run had ended when
    ``last`` was read. A stream behind ``base`` replays from the store, then joins the window.
    """

    def __init__(self, entity_id: str, *, base: int, size: int | None = None) -> None:
        self.entity_id = entity_id
        self.base = base
        self.last = base
        self.window: deque[EntityEnvelope] = deque()
        self.size = _WINDOW if size is None else size
        self.ended = False
        self.version = 0  # advanced this many times
        self.users = 0
        self.lock = trio.Lock()

    def after(self, position: int) -> list[EntityEnvelope]:
        """The envelopes of the window with a seq above ``position``."""
        if not self.window or self.window[-1].seq <= position:
            return []
        return [envelope for envelope in self.window if envelope.seq > position]

    async def advance(self, store: EntityStore, version: int) -> None:
        """Read what was stored since ``last`` (unless another stream did it since
        ``version``)."""
        async with self.lock:
            if self.version != version:
                return
            # The entity first: if its run had ended then, its last envelopes are in the read.
            record = await store.get_entity(self.entity_id)
            while True:
                highest = await store.last_seq()
                page = await store.read_envelopes(self.entity_id, after_seq=self.last, limit=_PAGE)
                for stored in page:
                    self.window.append(EntityEnvelope.from_stored(stored))
                if page:
                    self.last = page[-1].seq
                if len(page) < _PAGE:
                    self.last = max(self.last, highest)  # (the page may go beyond it)
                    break
            while len(self.window) > self.size:
                self.base = self.window.popleft().seq
            self.ended = record.status in (
                EntityStatus.COMPLETED,
                EntityStatus.FAILED,
                EntityStatus.CANCELLED,
            )
            self.version += 1


def _copy_error(error: BaseException) -> BaseException:
    """A fresh exception equal to ``error`` for another waiter (one object is raised once)."""
    if isinstance(error, EntityFailedError):
        copy: BaseException = EntityFailedError(
            error.entity_id, error.entity_type, error.entity_name, error.error
        )
    elif isinstance(error, EntityCancelledError):
        copy = EntityCancelledError(error.entity_id, error.entity_type, error.entity_name)
    else:
        copy = EntityError(str(error))
    copy.__cause__ = error
    return copy


def _check_runnable(cls: type[RunnableEntity], name: str, entity_id: str) -> None:
    if not cls.runnable:
        raise EntityNotRunnableError(
            f"{cls.type_name} {name!r} ({entity_id}) is a DataEntity: it holds data and is "
            "never run"
        )


def owner_is_dead(owner: str) -> bool:
    """Whether ``owner`` names a process of this machine that no longer exists.

    Owners are ``host:pid:random``. Only processes of this host can be checked; any other
    owner counts as alive (its lease must expire).
    """
    host, _, rest = owner.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # another runtime of this process: it releases its leases when it stops
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def new_owner() -> str:
    """A new owner id: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def open_runtime(
    store: EntityStore | str | os.PathLike[str],
    types: Sequence[type[RunnableEntity]],
    *,
    lease_seconds: float = 30.0,
    poll_interval: float = 0.5,
    clock: Callable[[], float] = time.time,
    owner: str | None = None,
) -> AsyncIterator[Runtime]:
    """Open a runtime over ``store`` for the entity ``types``:
    ``async with open_runtime(store="app.db", types=[Campaign, Recipient]) as runtime:``.

    Args:
        store: an entity store (opened and closed by the runtime), or the path of a SQLite
            file (a :class:`~sluiceway.SqliteStore`).
        types: the entity classes this runtime can run. Their ``allowed_connections`` must
            name registered types.
        lease_seconds: how long a run's lease lasts without a heartbeat (renewed every third
            of it). A crashed process's runs are taken over by :meth:`Runtime.recover` once
            their lease expires (at once for a dead process of this machine).
        poll_interval: how often waits and streams look for messages and envelopes stored by
            other processes (those of this runtime wake them at once).
        clock: the wall clock for leases and durable deadlines (``time.time``); it must agree
            across the processes sharing the store.
        owner: this runtime's lease owner id (default ``host:pid:random``).
    """
    lease_seconds = check_finite(lease_seconds, "lease_seconds")
    poll_interval = check_finite(poll_interval, "poll_interval")
    if lease_seconds <= 0 or poll_interval <= 0:
        raise ValueError("lease_seconds and poll_interval must be > 0")
    if not callable(clock):
        raise TypeError(f"clock must be callable, got {clock!r}")
    registry = TypeRegistry(types)
    if isinstance(store, str | os.PathLike):
        store = SqliteStore(store)
    if not isinstance(store, EntityStore):
        raise TypeError(f"store must be an EntityStore or a path, got {store!r}")
    async with store:
        runtime = Runtime(
            store,
            registry,
            owner=new_owner() if owner is None else owner,
            lease_seconds=lease_seconds,
            clock=clock,
            poll_interval=poll_interval,
        )
        async with open_owned_nursery() as nursery:
            nursery.start_soon(runtime._heartbeat, name="lease heartbeat")
            try:
                yield runtime
            finally:
                nursery.cancel_scope.cancel()
