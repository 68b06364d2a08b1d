"""The SQL of the entity stores: each function runs inside the caller's transaction (a
:class:`Tx`, in the writer's or a reader's worker thread) and turns rows into records.

The statements are written once for both databases: ``%s`` placeholders (the SQLite store
turns them into ``?``), ``RETURNING``, ``ON CONFLICT``, ``CASE`` rather than SQLite's scalar
``max``/``min`` or PostgreSQL's ``greatest``/``least``. What differs is behind :class:`Tx`:
how envelopes get their store-wide ``seq``, the column that keeps creation order, and which
error a duplicate key raises.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Container, Sequence
from typing import Any, Protocol

import attrs

from .._errors import DuplicateEntityError, EntityNotFoundError, LeaseLostError
from ._json import encode_envelopes, encode_object
from ._protocol import CrashFailure
from ._records import (
    EdgeRecord,
    EntityRecord,
    EntityStatus,
    NewEntity,
    ParkReason,
    UnitHold,
    WaitRecord,
)
from ._rows import (
    EDGE_COLUMNS,
    ENTITY_COLUMNS,
    SELECT_ENTITY,
    TERMINAL,
    WAIT_COLUMNS,
    Refusal,
    crash_pause,
    edge_from_row,
    entity_from_row,
    is_suspect,
    not_found,
    wait_from_row,
)


@attrs.define
class Notes:
    """What a write changed that other processes sharing the store want to hear of (see
    :class:`~sluiceway.store.StoreChange`): envelopes appended, runs made due, messages sent to
    and cancellations of these entities."""

    envelopes: bool = False
    due: bool = False
    messages: set[str] = attrs.Factory(set)
    cancelled: set[str] = attrs.Factory(set)
    units: bool = False
    units_wanted: bool = False

    def merge(self, other: Notes) -> None:
        self.envelopes |= other.envelopes
        self.due |= other.due
        self.messages |= other.messages
        self.cancelled |= other.cancelled
        self.units |= other.units
        self.units_wanted |= other.units_wanted

    def __bool__(self) -> bool:
        return (
            self.envelopes
            or self.due
            or self.units
            or self.units_wanted
            or bool(self.messages)
            or bool(self.cancelled)
        )


class Tx(Protocol):
    """One operation's view of a transaction (see the module documentation)."""

    #: What the operation changed, for the store's notification (PostgreSQL) or nobody.
    notes: Notes
    #: The column that orders entities of equal ``created_at`` by creation.
    creation_order: str
    #: What a ``SELECT`` of a row about to be updated ends with, so that concurrent
    #: transactions take turns on it (``FOR UPDATE``; empty where writers take turns anyway).
    for_update: str
    #: What a ``SELECT`` of rows to update ends with so that concurrent transactions skip
    #: each other's rows (``FOR UPDATE SKIP LOCKED``; empty where writers take turns anyway).
    skip_locked: str
    #: Put before a column to keep the planner off its indexes, where it would choose one that
    #: reads more than the query's range (SQLite: ``+``; PostgreSQL weighs the ranges: empty).
    unindexed: str

    def execute(self, query: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; returns a cursor (``fetchone``, ``fetchall``, iteration,
        ``rowcount``)."""
        ...

    def insert_envelopes(self, rows: Sequence[tuple[str, int, float, str]]) -> list[int]:
        """Insert ``(entity_id, entity_seq, ts, body)`` envelopes in order; returns their
        store-wide ``seq`` numbers: a list that may be filled in only when the transaction
        commits (PostgreSQL hands seqs out then, in commit order), so read it after the
        write, not inside it."""
        ...

    def is_duplicate(self, error: BaseException) -> bool:
        """Whether ``error`` is the database's unique-key violation."""
        ...


SELECT_WAIT = (
    f"SELECT {WAIT_COLUMNS} FROM waits AS w LEFT JOIN messages AS m ON m.id = w.message_id"
    " WHERE w.entity_id = %s AND w.idx = %s"
)


# -- rows ----------------------------------------------------------------------------------------


def require_entity(tx: Tx, entity_id: str) -> EntityRecord:
    row = tx.execute(f"{SELECT_ENTITY} WHERE id = %s", (entity_id,)).fetchone()
    if row is None:
        raise not_found(entity_id)
    return entity_from_row(row)


def lock_entity(tx: Tx, entity_id: str) -> EntityRecord:
    """:func:`require_entity`, its row locked for the rest of the transaction (a write that
    reads it first and then changes it)."""
    row = tx.execute(f"{SELECT_ENTITY} WHERE id = %s{tx.for_update}", (entity_id,)).fetchone()
    if row is None:
        raise not_found(entity_id)
    return entity_from_row(row)


def find_entity(tx: Tx, parent_id: str | None, name: str) -> EntityRecord | None:
    if parent_id is None:
        row = tx.execute(
            f"{SELECT_ENTITY} WHERE parent_id IS NULL AND name = %s", (name,)
        ).fetchone()
    else:
        row = tx.execute(
            f"{SELECT_ENTITY} WHERE parent_id = %s AND name = %s", (parent_id, name)
        ).fetchone()
    return None if row is None else entity_from_row(row)


def fence(tx: Tx, entity_id: str, owner: str, what: str) -> tuple[Any, ...]:
    """``(lease_owner, data, abandoned)`` of the entity if ``owner`` holds its lease; raises
    otherwise."""
    row = tx.execute(
        f"SELECT lease_owner, data, abandoned FROM entities WHERE id = %s{tx.for_update}",
        (entity_id,),
    ).fetchone()
    if row is None:
        raise not_found(entity_id)
    if row[0] != owner:
        holder = "nobody holds it" if row[0] is None else f"{row[0]!r} holds it"
        raise LeaseLostError(
            f"{owner!r} no longer holds the lease of entity {entity_id!r} ({holder}); "
            f"its {what} write was refused"
        )
    return tuple(row)


def fence_progress(tx: Tx, entity_id: str, owner: str, what: str) -> None:
    """:func:`fence` for a run that does something (starts a child): its crash-loop count
    starts again (written only if it was set)."""
    if fence(tx, entity_id, owner, what)[2]:
        tx.execute("UPDATE entities SET abandoned = 0 WHERE id = %s", (entity_id,))


def next_entity_seq(tx: Tx, entity_id: str) -> int:
    """Reserve the entity's next sequence number (for one envelope)."""
    row = tx.execute(
        "UPDATE entities SET last_entity_seq = last_entity_seq + 1 WHERE id = %s"
        " RETURNING last_entity_seq",
        (entity_id,),
    ).fetchone()
    if row is None:
        raise not_found(entity_id)
    return int(row[0])


def append(tx: Tx, entity_id: str, ts: float, body: str) -> None:
    """Append one envelope to the entity (not fenced: the caller fenced the write)."""
    tx.notes.envelopes = True
    tx.insert_envelopes([(entity_id, next_entity_seq(tx, entity_id), ts, body)])


def add_edge(
    tx: Tx, from_id: str, to_id: str, edge_type: str, *, now: float, data: str
) -> EdgeRecord:
    row = tx.execute(
        f"SELECT {EDGE_COLUMNS} FROM edges WHERE from_id = %s AND type = %s AND to_id = %s",
        (from_id, edge_type, to_id),
    ).fetchone()
    if row is not None:
        return edge_from_row(row)
    row = tx.execute(
        "INSERT INTO edges (from_id, to_id, type, position, data, created_at)"
        " VALUES (%s, %s, %s, (SELECT coalesce(max(position), 0) + 1 FROM edges"
        " WHERE from_id = %s AND type = %s), %s, %s)"
        f" RETURNING {EDGE_COLUMNS}",
        (from_id, to_id, edge_type, from_id, edge_type, data, now),
    ).fetchone()
    return edge_from_row(row)


def claim(
    tx: Tx,
    entity_id: str,
    owner: str,
    *,
    now: float,
    expires: float,
    started: Callable[[int], str],
    steal_from: Container[str] = (),
    own_run: bool = False,
    crash_limit: int | None = None,
    crash_failure: CrashFailure | None = None,
    back_off: bool = False,
    alone: bool | None = None,
    tick: int | None = None,
    row: Sequence[Any] | None = None,
) -> EntityRecord | Refusal:
    """Claim the entity for ``owner`` if it can run and nobody else holds it (see
    ``EntityStore.claim``); else why not.

    The claim loop passes ``back_off`` and ``alone``: a run taken over from a dying process
    for the second time in a row or more is not claimed now but made due after a pause
    (:func:`crash_pause`); and a suspect (one more abandonment would fail it) is claimed only
    if the caller runs nothing else (``alone``), so that its next death can be blamed on it.
    ``row`` is the entity's :data:`CLAIM_COLUMNS`, if the caller read (and locked) them."""
    if row is None:
        row = tx.execute(
            f"SELECT {CLAIM_COLUMNS} FROM entities WHERE id = %s{tx.for_update}", (entity_id,)
        ).fetchone()
    if row is None:
        raise not_found(entity_id)
    status, holder, holder_expires, parked_on, abandoned, parent_id, attempt, claimed_at = row
    if status in TERMINAL:
        return Refusal.ENDED
    free = (
        holder is None
        or holder == owner
        or holder in steal_from
        or holder_expires is None
        or holder_expires <= now
    )
    if not free:
        return Refusal.HELD
    # A lease another owner did not give back: its process died (or stopped renewing). If
    # that process started nothing and served nothing after it (its tick did not move), the
    # run may well be what took it down: count it.
    if (
        claimed_at is not None  # a run of its own (a child inside its parent's run is not)
        and holder is not None
        and holder != owner
        and owner_tick(tx, holder) == claimed_at
    ):
        abandoned += 1
        if crash_limit is not None and abandoned >= crash_limit:
            assert crash_failure is not None
            fail_crash_loop(
                tx, entity_id, parent_id, abandoned, now=now, crash_failure=crash_failure
            )
            return Refusal.CRASH_LOOP
    if alone is False and is_suspect(abandoned, crash_limit):
        return Refusal.SUSPECT  # it must run alone: not now (nothing is written)
    if holder is not None and holder != owner:
        pause = crash_pause(abandoned)
        if back_off and pause:
            tx.execute(
                "UPDATE entities SET lease_owner = NULL, lease_expires = NULL, abandoned = %s,"
                " runnable_at = %s WHERE id = %s",
                (abandoned, now + pause, entity_id),
            )
            tx.notes.due = True
            return Refusal.BACKING_OFF
    waiting = status == EntityStatus.WAITING.value and parked_on in (None, "message")
    new_status = EntityStatus.WAITING.value if waiting else EntityStatus.IN_PROGRESS.value
    if own_run and tick is None:
        tick = advance_tick(tx, owner)
    # One statement: the claim, the STARTED envelope's entity sequence number, the record.
    record = entity_from_row(
        tx.execute(
            "UPDATE entities SET lease_owner = %s, lease_expires = %s, status = %s,"
            " attempt = attempt + 1, error = NULL, parked_on = NULL, abandoned = %s,"
            " runnable_at = CASE WHEN %s THEN coalesce(runnable_at, %s) ELSE runnable_at END,"
            " claim_tick = %s, modified_at = %s, last_entity_seq = last_entity_seq + 1"
            f" WHERE id = %s RETURNING {ENTITY_COLUMNS}",
            (
                owner,
                expires,
                new_status,
                abandoned,
                own_run,
                now,
                tick if own_run else None,
                now,
                entity_id,
            ),
        ).fetchone()
    )
    tx.notes.envelopes = True
    tx.insert_envelopes([(entity_id, record.last_entity_seq, now, started(attempt + 1))])
    return record


#: What :func:`claim` reads of an entity to decide.
CLAIM_COLUMNS = (
    "status, lease_owner, lease_expires, parked_on, abandoned, parent_id, attempt, claim_tick"
)


def advance_tick(tx: Tx, owner: str) -> int:
    """Move ``owner``'s tick (it starts runs, or writes from outside any run); returns it."""
    row = tx.execute(
        "INSERT INTO runtimes (owner, tick) VALUES (%s, 1)"
        " ON CONFLICT (owner) DO UPDATE SET tick = runtimes.tick + 1 RETURNING tick",
        (owner,),
    ).fetchone()
    return int(row[0])


def owner_tick(tx: Tx, owner: str) -> int | None:
    """``owner``'s tick (``None`` if it never moved)."""
    row = tx.execute("SELECT tick FROM runtimes WHERE owner = %s", (owner,)).fetchone()
    return None if row is None else int(row[0])


def due_ids(
    tx: Tx,
    now: float,
    limit: int,
    steal_from: Sequence[str],
    types: Sequence[str] | None,
) -> list[str]:
    """The entities the claim loop may take now, earliest first: runnable by now, not ended,
    with no live lease (free, expired, or held by one of ``steal_from``), and of one of
    ``types`` (if given: a runtime claims only the types it can run)."""
    return [row[0] for row in due_rows(tx, now, limit, steal_from, types, columns="id")]


def due_rows(
    tx: Tx,
    now: float,
    limit: int,
    steal_from: Sequence[str],
    types: Sequence[str] | None,
    *,
    columns: str,
) -> list[Sequence[Any]]:
    """``columns`` of the entities :func:`due_ids` gives, earliest first; in a write, their
    rows are locked (and rows another transaction locked are skipped)."""
    dead = f" OR lease_owner IN ({_marks(steal_from)})" if steal_from else ""
    if types is not None and not types:
        return []  # a runtime that runs no type claims nothing
    typed = "" if types is None else f" AND type IN ({_marks(types)})"
    rows = tx.execute(
        f"SELECT {columns} FROM entities WHERE runnable_at IS NOT NULL AND runnable_at <= %s"
        f" AND status NOT IN ('COMPLETED', 'CANCELLED'){typed}"
        f" AND (lease_owner IS NULL OR lease_expires <= %s{dead})"
        f" ORDER BY runnable_at, {tx.creation_order} LIMIT %s{tx.skip_locked}",
        (now, *(types or ()), now, *steal_from, limit),
    )
    return list(rows)


def _marks(values: Sequence[object]) -> str:
    return ", ".join("%s" for _ in values)


def fail_crash_loop(
    tx: Tx,
    entity_id: str,
    parent_id: str | None,
    count: int,
    *,
    now: float,
    crash_failure: CrashFailure,
) -> None:
    """Fail an entity whose runs died with their processes ``count`` times in a row."""
    error, envelopes = crash_failure(count)
    bodies = encode_envelopes(envelopes, entity_id)
    row = tx.execute(
        "UPDATE entities SET status = 'FAILED', error = %s, lease_owner = NULL,"
        " lease_expires = NULL, runnable_at = NULL, parked_on = NULL, abandoned = %s,"
        " last_entity_seq = last_entity_seq + %s, modified_at = %s WHERE id = %s"
        " RETURNING last_entity_seq",
        (
            encode_object(error, f"the error of entity {entity_id!r}"),
            count,
            len(bodies),
            now,
            entity_id,
        ),
    ).fetchone()
    insert_envelopes(tx, entity_id, row[0], now, bodies)
    wake_parent(tx, parent_id, now)


def wake_parent(tx: Tx, parent_id: str | None, now: float) -> bool:
    """A child ended: make its parent runnable if it is parked on its children and none of
    them is pending any more (parked, submitted, or running on its own). Returns whether it
    did."""
    if parent_id is None:
        return False
    # The parent's row first: a parent parking on its children and its last two children
    # ending at once in other transactions take turns on it, so one of them sees the others.
    tx.execute(f"SELECT 1 FROM entities WHERE id = %s{tx.for_update}", (parent_id,))
    cursor = tx.execute(
        "UPDATE entities SET runnable_at = %s WHERE id = %s AND parked_on = 'children'"
        " AND lease_owner IS NULL AND runnable_at IS NULL"
        f" AND NOT EXISTS ({PENDING_CHILD})",
        (now, parent_id, parent_id),
    )
    woken = bool(cursor.rowcount > 0)
    tx.notes.due |= woken
    return woken


#: A pending child of the entity ``%s``: parked, or runnable (submitted, woken, running on its
#: own). The condition is the one of the partial index ``entities_pending``.
PENDING_CHILD = (
    "SELECT 1 FROM entities WHERE parent_id = %s"
    " AND (runnable_at IS NOT NULL OR parked_on IS NOT NULL)"
)


def park(
    tx: Tx,
    entity_id: str,
    owner: str,
    *,
    now: float,
    reason: ParkReason,
    wake_at: float | None,
    body: str | None,
) -> EntityRecord:
    """End a run by parking it (see ``EntityStore.park``)."""
    fence(tx, entity_id, owner, "park")
    due = wake_at
    if reason is ParkReason.MESSAGE:
        unread = tx.execute(
            "SELECT 1 FROM messages WHERE entity_id = %s AND consumed_by IS NULL LIMIT 1",
            (entity_id,),
        ).fetchone()
        if unread is not None:
            due = now  # it arrived while the run was deciding to park
    elif (
        reason is ParkReason.CHILDREN and tx.execute(PENDING_CHILD, (entity_id,)).fetchone() is None
    ):
        due = now  # they all ended meanwhile
    tx.execute(
        "UPDATE entities SET status = 'WAITING', lease_owner = NULL, lease_expires = NULL,"
        " parked_on = %s, runnable_at = %s, abandoned = 0, modified_at = %s WHERE id = %s",
        (reason.value, due, now, entity_id),
    )
    tx.notes.due |= due is not None
    if body is not None:
        append(tx, entity_id, now, body)
    return require_entity(tx, entity_id)


def insert_claimed(
    tx: Tx,
    new: NewEntity,
    *,
    data: str,
    edge_data: str,
    owner: str,
    now: float,
    expires: float,
    body: str,
) -> EntityRecord:
    """Insert ``new`` already claimed by ``owner`` (attempt 1, its STARTED envelope as entity
    sequence number 1), with its edge from its parent: three statements, no re-read."""
    try:
        tx.execute(
            f"INSERT INTO entities ({ENTITY_COLUMNS}) VALUES"
            " (%s, %s, %s, %s, %s, %s, %s, NULL, NULL, 1, %s, %s, %s, %s, 1, NULL, NULL, 0, 0)",
            (
                new.id,
                new.parent_id,
                new.name,
                new.type,
                new.general_type,
                EntityStatus.IN_PROGRESS.value,
                data,
                owner,
                expires,
                new.created_at,
                now,
            ),
        )
    except Exception as exc:
        if tx.is_duplicate(exc):
            raise DuplicateEntityError(f"the entity id {new.id!r} is taken") from exc
        raise
    if new.parent_id is not None:
        tx.execute(
            "INSERT INTO edges (from_id, to_id, type, position, data, created_at)"
            " VALUES (%s, %s, %s, (SELECT coalesce(max(position), 0) + 1 FROM edges"
            " WHERE from_id = %s AND type = %s), %s, %s)",
            (
                new.parent_id,
                new.id,
                new.edge_type,
                new.parent_id,
                new.edge_type,
                edge_data,
                new.created_at,
            ),
        )
    tx.insert_envelopes([(new.id, 1, now, body)])
    tx.notes.envelopes = True
    return EntityRecord(
        id=new.id,
        parent_id=new.parent_id,
        name=new.name,
        type=new.type,
        general_type=new.general_type,
        status=EntityStatus.IN_PROGRESS,
        data=json.loads(data),
        result=None,
        error=None,
        attempt=1,
        lease_owner=owner,
        lease_expires=expires,
        created_at=new.created_at,
        modified_at=now,
        last_entity_seq=1,
    )


def bump_seq(
    tx: Tx,
    entity_id: str,
    owner: str,
    count: int,
    what: str,
    *,
    emitted: int = 0,
) -> int:
    """Reserve ``count`` entity sequence numbers for a fenced write; returns the last one.
    ``emitted`` (if higher) becomes the entity's count of emitted envelopes. A run that writes
    something new has made progress: its crash-loop count starts again. Raises (through
    :func:`fence`) if ``owner`` does not hold the lease."""
    row = tx.execute(
        "UPDATE entities SET last_entity_seq = last_entity_seq + %s,"
        " emitted = CASE WHEN emitted > %s THEN emitted ELSE %s END, abandoned = 0"
        " WHERE id = %s AND lease_owner = %s RETURNING last_entity_seq",
        (count, emitted, emitted, entity_id, owner),
    ).fetchone()
    if row is None:
        fence(tx, entity_id, owner, what)  # raises: not found, or the lease is lost
        raise AssertionError("unreachable")  # pragma: no cover
    return int(row[0])


def insert_envelopes(
    tx: Tx, entity_id: str, last: int, ts: float, bodies: Sequence[str]
) -> list[int]:
    """Insert ``bodies`` numbered up to ``last`` (reserved by :func:`bump_seq`)."""
    if not bodies:
        return []
    first = last - len(bodies) + 1
    tx.notes.envelopes = True
    return tx.insert_envelopes(
        [(entity_id, first + offset, ts, body) for offset, body in enumerate(bodies)]
    )


def create_entity(
    tx: Tx, new: NewEntity, data: str, edge_data: str, strict: bool
) -> tuple[EntityRecord, bool]:
    if new.parent_id is not None:
        # Locked: children of one parent are created (and their edges numbered) in turn.
        parent = tx.execute(
            f"SELECT 1 FROM entities WHERE id = %s{tx.for_update}", (new.parent_id,)
        ).fetchone()
        if parent is None:
            raise EntityNotFoundError(
                f"no entity has the id {new.parent_id!r} (the parent of {new.name!r})"
            )
    existing = find_entity(tx, new.parent_id, new.name)
    if existing is not None:
        if strict:
            where = "among the roots" if new.parent_id is None else f"under {new.parent_id!r}"
            raise DuplicateEntityError(
                f"an entity called {new.name!r} exists {where} already ({existing.id})"
            )
        return existing, False
    if tx.execute("SELECT 1 FROM entities WHERE id = %s", (new.id,)).fetchone() is not None:
        raise DuplicateEntityError(f"the entity id {new.id!r} is taken")
    tx.execute(
        f"INSERT INTO entities ({ENTITY_COLUMNS}) VALUES"
        " (%s, %s, %s, %s, %s, %s, %s, NULL, NULL, 0, NULL, NULL, %s, %s, 0, %s, NULL, 0, 0)",
        (
            new.id,
            new.parent_id,
            new.name,
            new.type,
            new.general_type,
            EntityStatus.PENDING.value,
            data,
            new.created_at,
            new.created_at,
            new.created_at if new.submit else None,
        ),
    )
    tx.notes.due |= new.submit
    if new.parent_id is not None:
        add_edge(tx, new.parent_id, new.id, new.edge_type, now=new.created_at, data=edge_data)
    return require_entity(tx, new.id), True


def get_wait(tx: Tx, entity_id: str, index: int) -> WaitRecord | None:
    row = tx.execute(SELECT_WAIT, (entity_id, index)).fetchone()
    if row is None:
        return None
    return wait_from_row(row)


def require_wait(tx: Tx, entity_id: str, index: int) -> WaitRecord:
    wait = get_wait(tx, entity_id, index)
    if wait is None:
        raise EntityNotFoundError(f"entity {entity_id!r} has no wait {index}")
    return wait


# -- global limits -------------------------------------------------------------------------------


def hold_units(
    tx: Tx,
    limit: str,
    owner: str,
    *,
    total: int,
    target: int,
    now: float,
    expires: float,
    dead: Sequence[str],
) -> UnitHold:
    """Make ``owner`` hold ``target`` units of the global limit ``limit`` (``total`` units in
    all), or as many as are free; returns how many it holds, and how many live processes hold
    or want units of it (see ``EntityStore.hold_units``). A unit is free when nobody holds it,
    or its holder's runtime is not alive at ``now`` (its ``runtimes.expires`` passed, or it is
    one of ``dead``). A process left short records what it wants (``capacity_wants``), so
    that the others can hold no more than their share."""
    tx.execute(
        "INSERT INTO runtimes (owner, tick, expires) VALUES (%s, 0, %s)"
        " ON CONFLICT (owner) DO UPDATE SET expires = excluded.expires",
        (owner, expires),
    )
    (have,) = tx.execute(
        "SELECT count(*) FROM capacity_units WHERE limit_name = %s", (limit,)
    ).fetchone()
    if have < total:
        tx.execute(
            "WITH RECURSIVE numbers (n) AS ("
            " SELECT CAST(%s AS INTEGER) UNION ALL SELECT n + 1 FROM numbers WHERE n < %s)"
            " INSERT INTO capacity_units (limit_name, unit) SELECT %s, n FROM numbers WHERE true"
            " ON CONFLICT (limit_name, unit) DO NOTHING",
            (have + 1, total, limit),
        )
    held = [
        unit
        for (unit,) in tx.execute(
            "SELECT unit FROM capacity_units WHERE limit_name = %s AND holder = %s"
            f" ORDER BY unit{tx.for_update}",
            (limit, owner),
        )
    ]
    keep = [unit for unit in held if unit <= total][:target]
    surplus = [unit for unit in held if unit not in keep]
    if surplus:
        tx.execute(
            "UPDATE capacity_units SET holder = NULL, since = NULL WHERE limit_name = %s"
            f" AND holder = %s AND unit IN ({_marks(surplus)})",
            (limit, owner, *surplus),
        )
        tx.notes.units = True
    wanted = target - len(keep)
    if wanted > 0:
        gone = f" OR holder IN ({_marks(dead)})" if dead else ""
        free = [
            unit
            for (unit,) in tx.execute(
                "SELECT unit FROM capacity_units AS u WHERE limit_name = %s AND unit <= %s"
                f" AND (holder IS NULL{gone} OR NOT EXISTS (SELECT 1 FROM runtimes AS r"
                " WHERE r.owner = u.holder AND r.expires > %s))"
                f" ORDER BY unit LIMIT %s{tx.skip_locked}",
                (limit, total, *dead, now, wanted),
            )
        ]
        if free:
            tx.execute(
                "UPDATE capacity_units SET holder = %s, since = %s WHERE limit_name = %s"
                f" AND unit IN ({_marks(free)})",
                (owner, now, limit, *free),
            )
            keep += free
    short = target - len(keep)
    if short > 0:
        tx.notes.units_wanted = True  # processes holding units they do not use give them back
        tx.execute(
            "INSERT INTO capacity_wants (limit_name, owner, wanted) VALUES (%s, %s, %s)"
            " ON CONFLICT (limit_name, owner) DO UPDATE SET wanted = excluded.wanted",
            (limit, owner, short),
        )
    else:
        tx.execute(
            "DELETE FROM capacity_wants WHERE limit_name = %s AND owner = %s", (limit, owner)
        )
    (sharing,) = tx.execute(
        "SELECT count(*) FROM runtimes WHERE expires > %s AND owner IN ("
        " SELECT holder FROM capacity_units WHERE limit_name = %s AND holder IS NOT NULL"
        " UNION SELECT owner FROM capacity_wants WHERE limit_name = %s)",
        (now, limit, limit),
    ).fetchone()
    (wanting,) = tx.execute(
        "SELECT count(*) FROM capacity_wants AS w JOIN runtimes AS r ON r.owner = w.owner"
        " WHERE w.limit_name = %s AND w.owner <> %s AND r.expires > %s",
        (limit, owner, now),
    ).fetchone()
    return UnitHold(len(keep), int(sharing), int(wanting))


def unit_holders(tx: Tx, limit: str, now: float) -> dict[str, int]:
    """How many units of ``limit`` each live holder holds."""
    rows = tx.execute(
        "SELECT u.holder, count(*) FROM capacity_units AS u JOIN runtimes AS r"
        " ON r.owner = u.holder WHERE u.limit_name = %s AND r.expires > %s GROUP BY u.holder",
        (limit, now),
    )
    return {holder: int(count) for holder, count in rows}
