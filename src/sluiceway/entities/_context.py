"""RunContext: what an entity's ``run_impl`` uses to report progress and to call children."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._errors import LeaseLostError, RunParked
from ..store import (
    EdgeRecord,
    EntityRecord,
    NewEntity,
    ParkReason,
)
from ..store._json import check_text
from ._child_tasks import ChildTasks, check_child_type, parked_not_due
from ._entity import CALLS, RunnableEntity
from ._envelope import EntityEnvelope, EnvelopeType, check_json
from ._live import check_runnable
from ._waits import CapacityHolder, DurableWaits

if TYPE_CHECKING:
    from ._executor import Executor
    from ._live import LiveRun

#: STATUS values only the runtime emits.
_RESERVED_STATUSES = frozenset({"STARTED", "COMPLETED", "FAILED", "CANCELLED", "WAITING"})
#: Envelope types only the runtime emits.
_RESERVED_TYPES = frozenset({"WAITING", "ERROR", "MESSAGE"})


@attrs.frozen(eq=False)
class ChildCall:
    """A child an entity created (or found again) with ``append_call`` or
    ``append_or_retrieve_call``: its stored record, whether this call created it, and
    :meth:`run`."""

    record: EntityRecord
    created: bool
    _ctx: RunContext

    @property
    def id(self) -> str:
        """The child's id."""
        return self.record.id

    @property
    def name(self) -> str:
        """The child's name (unique under its parent)."""
        return self.record.name

    @property
    def type_name(self) -> str:
        """The child's entity type."""
        return self.record.type

    async def run(self) -> Any:
        """Run the child (or return its stored result if it is COMPLETED) and return its result.

        Raises:
            EntityFailedError: the child failed (its error is stored with it).
            EntityCancelledError: the child was cancelled.
            EntityBusyError: another runtime holds the child's lease.
            LeaseLostError: this run lost its own lease (it may start nothing more).
        """
        ctx = self._ctx
        record = self.record
        if parked_not_due(record, ctx.runtime.clock()):
            raise RunParked(f"{record.type} {record.name!r} ({record.id}) is parked")
        return await ctx.runtime._execute(record, holder=ctx._holder, fence=ctx.id)


class RunContext(DurableWaits):
    """What ``run_impl(self, ctx)`` gets: progress, data, children, edges, keys and waits.

    One context exists per run of an entity. Its methods write through the runtime's store on
    behalf of the entity's lease; if the lease was lost (the entity was cancelled, or another
    runtime took it over), they raise :class:`~sluiceway.LeaseLostError` and the run ends.
    """

    def __init__(
        self,
        runtime: Executor,
        entity: RunnableEntity,
        live: LiveRun,
        holder: CapacityHolder | None,
    ) -> None:
        self.runtime = runtime
        self.entity = entity
        self._live = live
        self._holder = holder
        self._waits = 0
        self._emits = 0  # envelopes emitted by run_impl in this run, by position
        self._replayed = live.record.emitted  # positions stored by earlier runs
        # What the run parks on, once a wait decided to park (read by the runtime).
        self._parking: tuple[ParkReason, float | None] | None = None

    # -- identity ------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The running entity's id."""
        return self.entity.id

    @property
    def name(self) -> str:
        """The running entity's name."""
        return self.entity.name

    @property
    def data(self) -> dict[str, Any]:
        """The entity's data (as of the last ``update_data``)."""
        return self.entity.data

    @property
    def state(self) -> Any:
        """The application's state (``runtime.state``): the services runs share, such as an
        HTTP client or a process-wide capacity source."""
        return self.runtime.state

    @property
    def attempt(self) -> int:
        """Which run of the entity this is (1 for the first)."""
        return self.entity.attempt

    def check_lease(self) -> None:
        """Raise :class:`~sluiceway.LeaseLostError` unless this run surely still holds its
        lease: call it right before a side effect. The store refuses every write of a run
        whose lease was taken over, but a process that was frozen (or cut off from the
        store) longer than its lease does not know yet that it lost it: this stops such a
        run once its runtime has missed a heartbeat (its lease may be running out), before it
        does anything. Keys from :meth:`idempotency_key` keep the rare effect that slips
        through from happening twice at a service that honours them.
        """
        runtime = self.runtime
        live = self._live
        if live.lease_lost or live.cancelled:
            raise LeaseLostError(
                f"{self.entity.type_name} {self.name!r} ({self.id}) lost its lease; "
                "it does nothing more"
            )
        deadline = max(live.record.lease_expires or -math.inf, runtime.renewed_until)
        if runtime.clock() > deadline - runtime.lease_seconds / 3:
            raise LeaseLostError(
                f"{self.entity.type_name} {self.name!r} ({self.id}): runtime "
                f"{runtime.owner!r} has not renewed its leases in time (it may have been "
                "frozen, or cut off from the store); another runtime may run this entity "
                "now, so it does nothing more"
            )

    def idempotency_key(self, *parts: str | int) -> str:
        """A key for an external side effect, stable across re-runs and restarts.

        It is derived from the entity's id (fixed when the entity was created) and ``parts``,
        so the same call in a re-run gives the same key, and no other entity gets it: pass it
        to a service that de-duplicates requests (``idempotency_key("send", contact_id)``).
        """
        for part in parts:
            if isinstance(part, bool) or not isinstance(part, str | int):
                raise TypeError(f"idempotency key parts must be str or int, got {part!r}")
        return ":".join([self.entity.type_name, self.entity.id, *map(str, parts)])

    # -- progress --------------------------------------------------------------------------------

    async def status(
        self, status: str, message: str | None = None, **metadata: Any
    ) -> EntityEnvelope:
        """Emit a STATUS envelope (``await ctx.status("RUNNING", "Sent 3/15")``).

        STARTED, WAITING, COMPLETED, FAILED and CANCELLED are emitted by the runtime itself.
        """
        return await self.emit(
            EnvelopeType.STATUS, status=status, message=message, metadata=metadata
        )

    async def emit(
        self,
        type: str | EnvelopeType,
        *,
        status: str | None = None,
        message: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        value: Any = None,
        data: Any = None,
        sub_type: str | None = None,
    ) -> EntityEnvelope:
        """Store an envelope in this entity's log (and so in every stream that covers it) and
        return it with its sequence numbers.

        A run that starts again (after parking, or after a crash) replays ``run_impl`` from
        the top: the envelopes it emits up to where the earlier run got are stored once only
        (counted by position), and returned without sequence numbers (``seq`` 0). So a
        subscriber sees each step once, provided ``run_impl`` emits the same envelopes in the
        same order when it runs again (see the entities guide on determinism).

        ``type`` is INTERNAL_UPDATE, VALUE, STATUS or a type of the application's own
        (``"BOT_PROGRESS"``); WAITING, ERROR and MESSAGE envelopes, a VALUE with
        ``sub_type="return"`` and the lifecycle statuses are produced by the runtime.
        """
        kind = type.value if isinstance(type, EnvelopeType) else type
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"an envelope type is a non-empty string, got {type!r}")
        if kind in _RESERVED_TYPES:
            raise ValueError(f"{kind} envelopes are emitted by the runtime, not by run_impl")
        if kind == "STATUS":
            if not isinstance(status, str) or not status:
                raise ValueError("a STATUS envelope needs a status, e.g. ctx.status('RUNNING')")
            if status in _RESERVED_STATUSES:
                raise ValueError(
                    f"STATUS {status} is emitted by the runtime; use another status "
                    "(e.g. RUNNING) for progress"
                )
        if kind == "VALUE" and sub_type == "return":
            raise ValueError("the VALUE 'return' envelope is emitted when run_impl returns")
        if message is not None and not isinstance(message, str):
            raise TypeError(f"message must be a string, got {message!r}")
        meta = dict(metadata or {})  # JSON is checked when the store encodes it
        envelope = self.runtime._envelope(
            self.entity,
            kind,
            status=status,
            message=message,
            metadata=meta,
            value=value,
            data=data,
            sub_type=sub_type,
        )
        self._emits += 1
        if self._emits <= self._replayed:
            # A re-run replaying what an earlier run emitted here: stored once already.
            check_json(envelope.body(), f"an envelope of {self.entity.type_name}")
            await trio.lowlevel.checkpoint()
            return envelope
        [stored] = await self.runtime._append(self.entity, [envelope], emitted=self._emits)
        return stored

    async def update_data(self, **partial: Any) -> dict[str, Any]:
        """Merge ``partial`` into the entity's stored data atomically (each key replaced, the
        others kept; no read-modify-write race) and return the new data."""
        check_json(partial, "entity data")
        runtime = self.runtime
        new = await runtime.store.update_data(
            self.entity.id, runtime.owner, partial, now=runtime.clock()
        )
        self.entity.data = new
        return new

    # -- children and edges ------------------------------------------------------------------------

    async def append_call(
        self,
        entity_type: type[RunnableEntity] | str,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        edge_type: str = CALLS,
    ) -> ChildCall:
        """Create the child ``name`` (with a Calls edge, or ``edge_type``); raise if the name
        exists.

        Raises:
            DuplicateEntityError: this entity already has a child called ``name``. A re-run
                makes the same call again, so this is rarely what a workflow wants:
                :meth:`append_or_retrieve_call` is.
        """
        return await self._child(entity_type, name, data, edge_type, strict=True)

    async def append_or_retrieve_call(
        self,
        entity_type: type[RunnableEntity] | str,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        edge_type: str = CALLS,
    ) -> ChildCall:
        """The child ``name`` of this entity, created (with ``data`` and a Calls edge) if it
        does not exist. ``data`` is stored only when the child is created; a re-run finds the
        same child, whatever ``data`` it passes then.

        ``edge_type`` names the edge from this entity to the child (``"HasRecipient"``
        instead of ``"Calls"``); this type's ``allowed_connections`` must list the child's
        type under it.

        Raises:
            UnknownEntityTypeError: ``entity_type`` is not registered.
            ConnectionNotAllowedError: this type does not allow the edge to it.
        """
        return await self._child(entity_type, name, data, edge_type, strict=False)

    async def start_child(
        self,
        entity_type: type[RunnableEntity] | str,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        edge_type: str = CALLS,
    ) -> tuple[EntityRecord, bool]:
        """Create the child ``name`` submitted, to run on its own, not in this run: a claim
        loop (of any runtime on the store) runs it, as it runs an entity that
        :meth:`Runtime.start <sluiceway.Runtime.start>` submitted. It is created and
        submitted in one transaction, so a crash cannot leave it created and never started;
        a re-run finds it (whatever it is doing by then) and submits nothing. Returns
        ``(record, created)``. Start many children from a nursery of a few tasks: their
        writes share transactions. :meth:`wait_for_children` waits for their end.

        Raises:
            UnknownEntityTypeError: ``entity_type`` is not registered.
            ConnectionNotAllowedError: this type does not allow the edge to it.
            EntityNotRunnableError: the type is a DataEntity.
        """
        cls = self._child_type(entity_type, edge_type)
        check_runnable(cls.runnable, cls.type_name, name, "(new)")
        new = attrs.evolve(self._new_child(cls, name, data, edge_type), submit=True)
        record, created = await self.runtime.store.create_entity(new, owner=self.runtime.owner)
        if not created:
            check_child_type(self.entity, record, cls)
        else:
            self.runtime._work_due()
        return record, created

    async def call(
        self,
        entity_type: type[RunnableEntity] | str,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        edge_type: str = CALLS,
    ) -> Any:
        """Create or find the child ``name``, run it and return its result.

        A COMPLETED child returns its stored result at once; any other child runs (again).
        Its envelopes are stored under it, so a stream of this entity shows them as they
        happen.

        Raises:
            EntityFailedError: the child failed; catch it to go on without it.
            EntityCancelledError: the child was cancelled.
            EntityBusyError: another runtime holds the child's lease.
        """
        child = await self.append_or_retrieve_call(entity_type, name, data, edge_type=edge_type)
        return await child.run()

    def parallel_calls(
        self,
        entity_type: type[RunnableEntity] | str,
        items: Iterable[tuple[str, Mapping[str, Any] | None] | Mapping[str, Any]],
        *,
        edge_type: str = CALLS,
        spread: bool = False,
    ) -> ChildTasks:
        """A source of child tasks for a task pool runner.

        ``items`` gives each child's ``(name, data)`` (or ``{"name": ..., "data": ...}``).
        Each task, when the runner starts it, creates its child (or finds the one a run before
        created), runs it and returns its result (a COMPLETED child returns its stored one at
        once). Children are created only as their tasks start, that is when the runner has
        capacity for them. The items are read one ahead, so the runner knows the source's
        end without holding capacity: its stream ends as soon as its last task does, however
        busy its capacity's other users are. Tasks carry the child's name as their key::

            runner = HierarchicalTaskPoolRunner(
                "send", ctx.parallel_calls(Recipient, items), CapacitySource(3, GLOBAL)
            )
            async with runner.run_tasks() as envelopes:
                async for envelope in envelopes:
                    ...  # FINAL: a child's result; ERROR: EntityFailedError

        A child that waits (``wait_for_message``, ``sleep``) gives its task's capacity back
        while it waits; one that parks ends its task with no envelope, and once the runner has
        nothing else to do, iterating its envelopes raises :class:`~sluiceway.RunParked`:
        this run parks too, and the end of its last pending child wakes it (it replays, and
        gets every child's result then). ``edge_type`` names the edge to each new child, as
        for :meth:`append_or_retrieve_call`.

        With ``spread=True`` the children are not run here but handed to every runtime that
        shares the store (and knows their type): each task creates and submits its child, then
        waits for it to end, wherever it runs, and returns its result (see
        :mod:`~sluiceway.entities._spread`). The runner's capacity is then how many children are
        in flight at once in the whole cluster; limit the work itself inside the children
        (with a :meth:`~sluiceway.Runtime.global_limit`, say). A task that has waited
        ``park_after`` seconds parks, as a parked child does.

        Raises:
            UnknownEntityTypeError, ConnectionNotAllowedError: at once.
            ValueError, TypeError: a malformed item, or a name already used, ends the source
                with that error (after the tasks of the items before it).
            EntityError: from a task whose child exists with another type.
        """
        cls = self._child_type(entity_type, edge_type)
        if not isinstance(spread, bool):
            raise TypeError(f"spread must be a bool, got {spread!r}")
        return ChildTasks(self, cls, items, edge_type, spread)

    async def _child(
        self,
        entity_type: type[RunnableEntity] | str,
        name: str,
        data: Mapping[str, Any] | None,
        edge_type: str,
        *,
        strict: bool,
    ) -> ChildCall:
        cls = self._child_type(entity_type, edge_type)
        return await self._create(cls, name, data, edge_type, strict=strict)

    def _child_type(
        self, entity_type: type[RunnableEntity] | str, edge_type: str
    ) -> type[RunnableEntity]:
        check_text(edge_type, "an edge type")
        registry = self.runtime.registry
        cls = registry.get(entity_type, context=f"{self.entity.type_name} {self.entity.name!r}")
        registry.check_connection(self.entity.type_name, edge_type, cls.type_name)
        return cls

    async def _create(
        self,
        cls: type[RunnableEntity],
        name: str,
        data: Mapping[str, Any] | None,
        edge_type: str,
        *,
        strict: bool,
    ) -> ChildCall:
        new = self._new_child(cls, name, data, edge_type)
        record, created = await self.runtime.store.create_entity(
            new, strict=strict, owner=self.runtime.owner
        )
        if not created:
            check_child_type(self.entity, record, cls)
        return ChildCall(record, created, self)

    def _new_child(
        self,
        cls: type[RunnableEntity],
        name: str,
        data: Mapping[str, Any] | None,
        edge_type: str = CALLS,
    ) -> NewEntity:
        check_text(name, "a child's name")
        payload = dict(data or {})  # JSON is checked when the store encodes it
        return NewEntity(
            id=str(uuid.uuid4()),
            name=name,
            type=cls.type_name,
            general_type=cls.general_type,
            data=payload,
            created_at=self.runtime.clock(),
            parent_id=self.id,
            edge_type=edge_type,
        )

    async def connect(
        self,
        edge_type: str,
        other: str | EntityRecord | ChildCall,
        *,
        data: Mapping[str, Any] | None = None,
    ) -> EdgeRecord:
        """Add a typed edge from this entity to ``other`` (an id, a record or a child).

        The edge type must list ``other``'s type in this type's ``allowed_connections``.
        Adding the same edge again returns it unchanged. Edges of one type are numbered in
        the order they were added (``position``).

        Raises:
            ConnectionNotAllowedError: naming both types and the edge type.
            EntityNotFoundError: ``other`` does not exist.
        """
        check_text(edge_type, "an edge type")
        if isinstance(other, ChildCall):
            target = other.record
        elif isinstance(other, EntityRecord):
            target = other
        elif isinstance(other, str):
            target = await self.runtime.store.get_entity(other)
        else:
            raise TypeError(f"connect() takes an entity id, record or child, got {other!r}")
        self.runtime.registry.check_connection(self.entity.type_name, edge_type, target.type)
        payload = dict(data or {})
        check_json(payload, "edge data")
        return await self.runtime.store.add_edge(
            self.id,
            target.id,
            edge_type,
            now=self.runtime.clock(),
            data=payload,
            owner=self.runtime.owner,
        )

    def __repr__(self) -> str:
        return f"<RunContext of {self.entity!r} attempt {self.entity.attempt}>"
