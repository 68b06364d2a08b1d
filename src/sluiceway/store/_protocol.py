"""The entity store protocol: everything the runtime asks of a database.

SQL, transactions and locking stay behind this protocol: the embedded
:class:`~sluiceway.SqliteStore` implements it, and a PostgreSQL store will. Every method is
async and is **atomic**: it either happens entirely or not at all, and readers never see half
of it. Methods that write on behalf of a running entity take the runtime's ``owner`` id and are
**fenced**: if ``owner`` no longer holds the entity's lease (another runtime took it over, or it
was cancelled), they change nothing and raise :class:`~sluiceway.LeaseLostError`.

A store is an async context manager: ``async with store:`` opens it (creating or migrating the
schema), and leaving the block finishes pending writes and closes it. Methods may only be called
while it is open. Times are passed in by the caller (wall-clock seconds); a store never reads a
clock itself.

Writes are committed when the method returns (durable against a crash of the process; against
power loss as far as the store's settings make them), and are applied in the order they were
called.
Stores are free to group the writes of concurrent callers into one transaction (group commit).

Every value a store keeps as JSON (data, results, errors, envelope bodies, message and wait
data) is checked before anything is written: a method given a value that would not read back
exactly as it is (a tuple, a non-``str`` key, ``NaN``, a lone surrogate, nesting deeper than
64 levels) raises ``TypeError`` or ``ValueError`` naming the place, and writes nothing.

**Runs.** An entity with ``runnable_at`` set (and not ended) is taken by the claim loop of any
runtime once that time has come and no live lease holds it (:meth:`claim_due`). Submissions
set it (:meth:`submit`); a run of its own keeps it while it holds the lease, so a run whose
process dies is claimed again once its lease expires; parking sets it to the wake-up time, or
leaves it unset until a message (:meth:`send_message`) or the end of the last pending child
(:meth:`finish`, :meth:`cancel`) sets it. A child running inside its parent's run does not set
it: its parent runs it again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import NoReturn, Protocol, runtime_checkable

from ._records import (
    JSON,
    ClaimBatch,
    EdgeRecord,
    EntityRecord,
    EntityStatus,
    EnvelopeTail,
    MessageRecord,
    NewEntity,
    ParkReason,
    StoreChange,
    StoredEnvelope,
    UnitHold,
    WaitKind,
    WaitRecord,
    WaitState,
)

#: What the crash-loop guard records when an entity's runs were abandoned ``count`` times in a
#: row: ``crash_failure(count)`` gives the stored error and the envelopes appended.
CrashFailure = Callable[[int], tuple[Mapping[str, str], Sequence[Mapping[str, JSON]]]]


@runtime_checkable
class EntityStore(Protocol):
    """What the entity runtime needs from a database (see the module documentation)."""

    async def __aenter__(self) -> EntityStore: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def bind_owner(self, owner: str) -> None:
        """Tell the store which runtime uses it (one runtime per store object). Writes made
        from outside any run (creating, submitting, messaging: serving requests) then count
        as that runtime's activity, which the crash-loop guard of :meth:`claim` reads.

        Raises:
            RuntimeError: another owner was bound already.
        """
        ...

    async def watch(self, on_change: Callable[[StoreChange], None]) -> NoReturn:
        """Call ``on_change`` with what other processes commit to this store, as they commit
        it, until cancelled (a runtime runs it for its lifetime to wake its streams, waits and
        claim loop at once). A store that cannot tell waits forever: the runtime then polls.
        """
        ...

    # -- entities --------------------------------------------------------------------------

    async def create_entity(
        self, new: NewEntity, *, strict: bool = False, owner: str | None = None
    ) -> tuple[EntityRecord, bool]:
        """Create ``new`` unless an entity with its name exists under its parent.

        Returns ``(record, created)``. If the name is taken, the existing entity is returned
        unchanged (its data is *not* updated) and ``created`` is ``False``; with
        ``strict=True`` that raises :class:`~sluiceway.DuplicateEntityError` instead. A child
        is created with the edge ``new.edge_type`` from its parent in the same transaction.
        Names are unique per parent, and among roots. With ``owner`` (a run creating its
        child), the write is fenced by the parent's lease.

        Raises:
            EntityNotFoundError: ``new.parent_id`` names no entity.
            DuplicateEntityError: ``strict`` and the name is taken, or ``new.id`` is taken.
            LeaseLostError: ``owner`` was given and does not hold the parent's lease.
        """
        ...

    async def get_entity(self, entity_id: str) -> EntityRecord:
        """The entity with this id.

        Raises:
            EntityNotFoundError: there is none.
        """
        ...

    async def find_entity(self, parent_id: str | None, name: str) -> EntityRecord | None:
        """The child of ``parent_id`` (a root if ``None``) called ``name``, if any."""
        ...

    async def children(self, parent_id: str, *, limit: int | None = None) -> list[EntityRecord]:
        """The children of ``parent_id`` (created with it as parent), oldest first (by
        ``created_at``, then creation order), the first ``limit`` of them if given; empty if
        there is no such entity."""
        ...

    async def count_children(self, parent_id: str) -> dict[EntityStatus, int]:
        """How many children of ``parent_id`` are in each status (absent statuses omitted)."""
        ...

    async def list_roots(
        self,
        *,
        status: EntityStatus | None = None,
        type: str | None = None,
        name: str | None = None,
        before: tuple[float, str] | None = None,
        limit: int = 50,
    ) -> list[EntityRecord]:
        """Root entities (no parent), newest first (by ``created_at``, then id), at most
        ``limit``: those in ``status``, of ``type``, whose name contains ``name`` (ignoring
        the case of ASCII letters), created before ``before`` (the ``(created_at, id)`` of
        the last root of the previous page)."""
        ...

    async def pending_children(self, parent_id: str) -> int:
        """How many children of ``parent_id`` are pending: submitted, running or parked (the
        ones whose end a parent parked on its children waits for)."""
        ...

    async def update_data(
        self,
        entity_id: str,
        owner: str | None,
        partial: Mapping[str, JSON],
        *,
        now: float,
        expect: Mapping[str, JSON] | None = None,
    ) -> dict[str, JSON]:
        """Merge ``partial`` into the entity's data (top-level keys are replaced, others kept)
        atomically, and return the new data. Fenced unless ``owner`` is ``None`` (an update
        from outside any run). With ``expect``, only if each of its keys has exactly that
        value in the data (a missing key matches ``None``): a compare-and-set.

        Raises:
            EntityNotFoundError, LeaseLostError.
            DataConflictError: the data did not hold what ``expect`` says (nothing written).
        """
        ...

    # -- runs and leases ---------------------------------------------------------------------

    async def claim(
        self,
        entity_id: str,
        owner: str,
        *,
        now: float,
        expires: float,
        started: Mapping[str, JSON] | Callable[[int], Mapping[str, JSON]],
        steal_from: str | None = None,
        fence: str | None = None,
        own_run: bool = False,
        crash_limit: int | None = None,
        crash_failure: CrashFailure | None = None,
    ) -> EntityRecord | None:
        """Take the entity's lease to run it, if nobody else holds it.

        The claim succeeds if the entity is PENDING, IN_PROGRESS, WAITING or FAILED, and its
        lease is free, expired (``lease_expires <= now``), already ``owner``'s, or held by
        ``steal_from`` (an owner the caller knows to be dead). It then sets the lease
        (``owner``, ``expires``), the status IN_PROGRESS (a WAITING entity not parked on a
        timer or its children stays WAITING), adds 1 to ``attempt``, clears ``error`` and
        ``parked_on``, and appends the envelope ``started`` (a mapping, or a function of the
        new attempt number) at ``now``, all in one transaction, and returns the updated
        record. With ``own_run`` (a run of its own, not inside its parent's run) it also sets
        ``runnable_at`` if unset, so that the run is resumed if it dies. Otherwise
        (COMPLETED, CANCELLED, or leased by someone else) it changes nothing and returns
        ``None``. With ``fence`` (the id of the parent whose run starts this entity),
        ``owner`` must also hold that entity's lease.

        Taking over the lease of a run of its own that another owner did not give back counts
        one more run abandoned by a dying process (``abandoned``), if that owner started
        nothing and wrote nothing from outside any run after it (see :meth:`bind_owner`):
        then the run may be what took its process down. With ``crash_limit``, reaching it
        fails the entity instead: FAILED with the error and envelopes ``crash_failure(count)``
        gives, its parent woken if it waits for it, and ``None`` is returned.

        Raises:
            EntityNotFoundError.
            LeaseLostError: ``fence`` was given and ``owner`` does not hold its lease.
        """
        ...

    async def claim_due(
        self,
        owner: str,
        *,
        now: float,
        expires: float,
        limit: int,
        started: Callable[[int], Mapping[str, JSON]],
        steal_from: Sequence[str] = (),
        types: Sequence[str] | None = None,
        crash_limit: int | None = None,
        crash_failure: CrashFailure | None = None,
        idle: bool = True,
    ) -> ClaimBatch:
        """The claim loop's step: claim (as :meth:`claim` with ``own_run``) up to ``limit``
        entities that are due, earliest ``runnable_at`` first, in one transaction. Due means
        ``runnable_at <= now``, not COMPLETED or CANCELLED, of one of ``types`` if given (the
        types the runtime can run), and no live lease (free, expired, or held by one of
        ``steal_from``, owners known to be dead). Returns the records claimed, and the ids
        the crash-loop guard failed instead (:class:`ClaimBatch`).

        Two rules keep a process killed from outside again and again from failing the runs it
        happened to hold, while a run that kills every process running it still reaches
        ``crash_limit``. A run taken over from a dying process for the second time in a row
        or more is not claimed at once: it is made due again after a pause (1 s, then 2 s,
        4 s... up to a minute). And a *suspect*, one abandonment away from the limit, runs on
        probation, alone in its process: it is claimed only when the caller runs nothing
        (``idle``) and ends the batch; else it is left due and ``suspect_waiting`` says so
        (the caller then claims nothing more until it is idle). A run that makes progress (a
        new envelope, a child started, a heartbeat) starts its count again.

        A store shared by several processes claims so that two callers never get the same
        entity (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's single writer here).
        """
        ...

    async def runnable(
        self,
        *,
        now: float,
        steal_from: Sequence[str] = (),
        types: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> list[EntityRecord]:
        """What :meth:`claim_due` would claim now (reading only), earliest first."""
        ...

    async def next_due(self, *, after: float) -> float | None:
        """The earliest ``runnable_at`` later than ``after`` of an entity no lease holds (the
        next timer of a parked entity), if any: when the claim loop should look again."""
        ...

    async def lease_owners(self) -> list[str]:
        """Every owner holding a lease now (live or expired), for the claim loop to find the
        dead processes among them."""
        ...

    async def submit(
        self,
        entity_id: str,
        *,
        now: float,
        data: Mapping[str, JSON] | None = None,
        expect: Mapping[str, JSON] | None = None,
    ) -> EntityRecord:
        """Submit the entity for a run, durably: in one transaction, check ``expect`` (each
        key must have exactly that value in the entity's data; a missing key matches
        ``None``), merge ``data`` into its data, and make it runnable now (``runnable_at``;
        a running entity keeps running). Returns the record as it is then. A COMPLETED or
        CANCELLED entity is returned unchanged, with nothing written.

        Raises:
            EntityNotFoundError.
            DataConflictError: the data did not hold what ``expect`` says (nothing written).
        """
        ...

    async def park(
        self,
        entity_id: str,
        owner: str,
        *,
        now: float,
        reason: ParkReason,
        wake_at: float | None = None,
        envelope: Mapping[str, JSON] | None = None,
    ) -> EntityRecord:
        """End a run by parking the entity: status WAITING, lease given up, ``parked_on`` set
        to ``reason`` and ``runnable_at`` to ``wake_at`` (a timer's time, a message wait's
        timeout, or ``None``), ``envelope`` appended if given, atomically. If what it waits
        for is already there (an unread message; no pending child left), it is runnable at
        once instead. Returns the record. Fenced.

        Raises:
            ValueError: a TIMER park without ``wake_at``.
            EntityNotFoundError, LeaseLostError.
        """
        ...

    async def create_and_claim(
        self,
        new: NewEntity,
        owner: str,
        *,
        now: float,
        expires: float,
        started: Mapping[str, JSON],
    ) -> tuple[EntityRecord, bool, bool]:
        """:meth:`create_entity` (not strict) then :meth:`claim`, in one transaction: the
        entity ``new`` describes, created if its name is free under its parent, then claimed
        for ``owner`` (a task pool starting a child it creates does both at once).

        Returns ``(record, created, claimed)``: the record as it is afterwards, whether it was
        created, and whether ``owner`` holds its lease now. Fenced by the parent's lease.

        Raises:
            EntityNotFoundError: ``new.parent_id`` names no entity.
            DuplicateEntityError: ``new.id`` is taken by another entity.
            LeaseLostError: ``owner`` does not hold the parent's lease.
        """
        ...

    async def renew_leases(self, owner: str, *, expires: float) -> int:
        """Extend every lease ``owner`` holds to ``expires`` (a heartbeat); returns how many.
        A run alive at a heartbeat survived its start: its ``abandoned`` count goes to 0."""
        ...

    async def release(
        self, entity_id: str, owner: str, *, resubmit_at: float | None = None
    ) -> bool:
        """Give up the lease without finishing (the run was interrupted): the status stays as
        it is, and ``runnable_at`` becomes ``resubmit_at``: a time for a run of its own (the
        claim loop runs it again), ``None`` for a child interrupted with its parent's run
        (the parent runs it again). Returns ``False`` (changing nothing) if ``owner`` did not
        hold it."""
        ...

    async def set_status(
        self,
        entity_id: str,
        owner: str,
        status: EntityStatus,
        *,
        now: float,
        envelope: Mapping[str, JSON] | None = None,
    ) -> None:
        """Move a running entity between IN_PROGRESS and WAITING, appending ``envelope`` if
        given, atomically. Fenced.

        Raises:
            ValueError: ``status`` is neither IN_PROGRESS nor WAITING.
            EntityNotFoundError, LeaseLostError.
        """
        ...

    async def finish(
        self,
        entity_id: str,
        owner: str,
        status: EntityStatus,
        *,
        now: float,
        result: JSON = None,
        error: Mapping[str, str] | None = None,
        envelopes: Sequence[Mapping[str, JSON]] = (),
        wake_parent: bool = True,
    ) -> bool:
        """End a run: set the status (COMPLETED with ``result``, or FAILED with ``error``),
        clear the lease and ``runnable_at``, append ``envelopes`` (at ``now``), and (unless
        ``wake_parent`` is false: the caller knows the parent is running, so not parked) wake
        the parent if it is parked on its children and none is pending any more, in one
        transaction. Returns whether it woke the parent. Fenced.

        Raises:
            ValueError: ``status`` is neither COMPLETED nor FAILED.
            EntityNotFoundError, LeaseLostError.
        """
        ...

    async def cancel(
        self, entity_id: str, *, now: float, envelope: Mapping[str, JSON]
    ) -> list[str]:
        """Cancel the entity and every descendant that is not COMPLETED or CANCELLED already:
        set CANCELLED, clear their leases (fencing out their runs) and ``runnable_at``, append
        ``envelope`` to each, and wake the entity's parent if it waits for it, in one
        transaction. Returns the ids cancelled, the entity first (empty if it was
        already COMPLETED or CANCELLED).

        Raises:
            EntityNotFoundError.
        """
        ...

    async def active(self) -> list[EntityRecord]:
        """The IN_PROGRESS or WAITING entities, whoever holds their lease (held, expired or
        free), topmost only: an entity whose parent is also IN_PROGRESS or WAITING is left out,
        because running the parent runs it again. The runtime decides which of them are
        abandoned (lease free or expired, or held by an owner it knows is dead)."""
        ...

    # -- envelopes -----------------------------------------------------------------------------

    async def append_envelopes(
        self,
        owner: str,
        items: Sequence[tuple[str, float, Mapping[str, JSON]]],
        *,
        emitted: int = 0,
    ) -> list[int]:
        """Append ``(entity_id, ts, body)`` envelopes in order; returns their ``seq`` numbers.
        Fenced per entity: if ``owner`` does not hold the lease of any of them, nothing is
        appended. ``emitted`` (envelopes of one entity only) raises the entity's ``emitted``
        count to it if higher: how far ``run_impl``'s emitted envelopes are stored, so that a
        replay stores only those past it. A run that appends has made progress: its
        ``abandoned`` count goes to 0.

        Raises:
            EntityNotFoundError, LeaseLostError.
        """
        ...

    async def read_envelopes(
        self,
        entity_id: str,
        *,
        after_seq: int = 0,
        limit: int = 1000,
        subtree: bool = True,
    ) -> list[StoredEnvelope]:
        """Envelopes with ``seq > after_seq`` in ``seq`` order, at most ``limit``: of the entity
        and all its descendants (``subtree=True``) or of the entity alone; each with the id,
        type and name of the entity that emitted it.

        Raises:
            EntityNotFoundError.
        """
        ...

    async def read_tail(
        self, entity_id: str, *, after_seq: int, limit: int = 1000, subtree: bool = True
    ) -> EnvelopeTail:
        """In one read, in this order: the entity, the highest ``seq`` stored, and
        :meth:`read_envelopes` after ``after_seq``. A stream's shared reader polls this way:
        if the entity's run had ended when it was read, its last envelopes are in the
        envelopes, and every envelope up to ``highest`` is (if fewer than ``limit`` came).

        Raises:
            EntityNotFoundError.
        """
        ...

    async def last_seq(self) -> int:
        """The highest ``seq`` stored (0 if none)."""
        ...

    # -- edges ---------------------------------------------------------------------------------

    async def add_edge(
        self,
        from_id: str,
        to_id: str,
        edge_type: str,
        *,
        now: float,
        data: Mapping[str, JSON] | None = None,
        owner: str | None = None,
    ) -> EdgeRecord:
        """Add the edge, or return it unchanged if ``(from_id, edge_type, to_id)`` exists.
        Its ``position`` is one more than the highest of ``(from_id, edge_type)``. With
        ``owner`` (a run connecting its entity), fenced by ``from_id``'s lease.

        Raises:
            EntityNotFoundError: either end names no entity.
            LeaseLostError: ``owner`` was given and does not hold ``from_id``'s lease.
        """
        ...

    async def edges(self, entity_id: str) -> tuple[list[EdgeRecord], list[EdgeRecord]]:
        """``(outgoing, incoming)`` edges of the entity, each by type, then position."""
        ...

    # -- messages and durable waits ---------------------------------------------------------------

    async def send_message(
        self, entity_id: str, message: str, data: JSON, *, now: float
    ) -> MessageRecord:
        """Store a message for the entity; it is kept until a wait receives it. An entity
        parked on a message wait becomes runnable now.

        Raises:
            EntityNotFoundError.
            EntityNotWaitingError: the entity is COMPLETED or CANCELLED.
        """
        ...

    async def messages(self, entity_id: str) -> list[MessageRecord]:
        """Every message sent to the entity, oldest first."""
        ...

    async def begin_wait(
        self,
        entity_id: str,
        owner: str,
        index: int,
        kind: WaitKind,
        *,
        now: float,
        prompt: str | None = None,
        data: JSON = None,
        deadline: float | None = None,
        envelope: Mapping[str, JSON] | None = None,
    ) -> WaitRecord:
        """Start wait ``index`` of the entity, or return it as stored if it exists (a re-run
        reaching a wait it made before: nothing else changes then).

        A new wait is stored with state WAITING; for a message wait the entity's status
        becomes WAITING and ``envelope`` (the WAITING envelope) is appended, in the same
        transaction. Fenced.

        Raises:
            EntityNotFoundError, LeaseLostError.
        """
        ...

    async def take_message(
        self, entity_id: str, owner: str, index: int, *, now: float
    ) -> WaitRecord:
        """Give wait ``index`` the oldest unread message, if it has none yet and one is
        stored: the message is marked read by it, the wait ANSWERED, and the entity
        IN_PROGRESS again, atomically. Returns the wait as it is then (still WAITING if there
        was no message). Fenced.

        Raises:
            EntityNotFoundError: the entity, or its wait ``index``, does not exist.
            LeaseLostError.
        """
        ...

    async def end_wait(
        self, entity_id: str, owner: str, index: int, state: WaitState, *, now: float
    ) -> WaitRecord:
        """Close a wait that is still WAITING as TIMED_OUT or ELAPSED (the entity becomes
        IN_PROGRESS again); a wait that is no longer WAITING is returned unchanged (a message
        may have arrived first). Fenced.

        Raises:
            ValueError: ``state`` is WAITING or ANSWERED.
            EntityNotFoundError, LeaseLostError.
        """
        ...

    async def get_wait(self, entity_id: str, index: int) -> WaitRecord | None:
        """Wait ``index`` of the entity, if it was made."""
        ...

    # -- global limits ---------------------------------------------------------------------------

    async def hold_units(
        self,
        limit: str,
        owner: str,
        *,
        total: int,
        target: int,
        now: float,
        expires: float,
        dead: Sequence[str] = (),
    ) -> UnitHold:
        """Make ``owner`` hold ``target`` of the ``total`` units of the global limit ``limit``
        (any name), or as many as are free, in one transaction; returns how many it holds
        now, and how many live processes share the limit (hold or want units of it), so that
        the caller can keep to its fair share while others want units (:class:`UnitHold`).
        Units past ``target`` (or past ``total``) are given back; a caller left short is
        recorded as wanting the rest. A unit is free when nobody holds it, or its holder is
        not alive: its runtime's ``expires`` (set here, and
        by :meth:`renew_leases`) has passed at ``now``, or it is one of ``dead`` (owners known
        to be dead). So the units of a process that dies come back when its lease would have
        expired, never earlier, and a process that stopped and resumed finds how many it
        still holds. Since the units are rows, the holders can never exceed ``total``.

        Raises:
            ValueError: ``total`` < 1, or ``target`` < 0.
        """
        ...

    async def unit_holders(self, limit: str, *, now: float) -> dict[str, int]:
        """How many units of the global limit ``limit`` each live holder holds at ``now``."""
        ...
