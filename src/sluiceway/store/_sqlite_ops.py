"""The SQL of the SQLite entity store: each function runs inside the caller's transaction, in
the writer's (or a reader's) worker thread, and turns rows into records."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Container, Sequence
from typing import Any

from .._errors import DuplicateEntityError, EntityNotFoundError, LeaseLostError
from ._json import encode_envelopes, encode_object
from ._protocol import CrashFailure
from ._records import EdgeRecord, EntityRecord, EntityStatus, NewEntity, ParkReason, WaitRecord
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

SELECT_WAIT = (
    f"SELECT {WAIT_COLUMNS} FROM waits AS w LEFT JOIN messages AS m ON m.id = w.message_id"
    " WHERE w.entity_id = ? AND w.idx = ?"
)


# -- rows ----------------------------------------------------------------------------------------


def require_entity(conn: sqlite3.Connection, entity_id: str) -> EntityRecord:
    row = conn.execute(f"{SELECT_ENTITY} WHERE id = ?", (entity_id,)).fetchone()
    if row is None:
        raise not_found(entity_id)
    return entity_from_row(row)


def find_entity(conn: sqlite3.Connection, parent_id: str | None, name: str) -> EntityRecord | None:
    if parent_id is None:
        row = conn.execute(
            f"{SELECT_ENTITY} WHERE parent_id IS NULL AND name = ?", (name,)
        ).fetchone()
    else:
        row = conn.execute(
            f"{SELECT_ENTITY} WHERE parent_id = ? AND name = ?", (parent_id, name)
        ).fetchone()
    return None if row is None else entity_from_row(row)


def fence(conn: sqlite3.Connection, entity_id: str, owner: str, what: str) -> tuple[Any, ...]:
    """``(lease_owner, data, abandoned)`` of the entity if ``owner`` holds its lease; raises
    otherwise."""
    row = conn.execute(
        "SELECT lease_owner, data, abandoned FROM entities WHERE id = ?", (entity_id,)
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


def fence_progress(conn: sqlite3.Connection, entity_id: str, owner: str, what: str) -> None:
    """:func:`fence` for a run that does something (starts a child): its crash-loop count
    starts again (written only if it was set)."""
    if fence(conn, entity_id, owner, what)[2]:
        conn.execute("UPDATE entities SET abandoned = 0 WHERE id = ?", (entity_id,))


def append(conn: sqlite3.Connection, entity_id: str, ts: float, body: str) -> int:
    row = conn.execute(
        "UPDATE entities SET last_entity_seq = last_entity_seq + 1 WHERE id = ?"
        " RETURNING last_entity_seq",
        (entity_id,),
    ).fetchone()
    if row is None:
        raise not_found(entity_id)
    cursor = conn.execute(
        "INSERT INTO envelopes (entity_id, entity_seq, ts, body) VALUES (?, ?, ?, ?)",
        (entity_id, row[0], ts, body),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def add_edge(
    conn: sqlite3.Connection, from_id: str, to_id: str, edge_type: str, *, now: float, data: str
) -> EdgeRecord:
    row = conn.execute(
        f"SELECT {EDGE_COLUMNS} FROM edges WHERE from_id = ? AND type = ? AND to_id = ?",
        (from_id, edge_type, to_id),
    ).fetchone()
    if row is not None:
        return edge_from_row(row)
    row = conn.execute(
        "INSERT INTO edges (from_id, to_id, type, position, data, created_at)"
        " VALUES (?, ?, ?, (SELECT coalesce(max(position), 0) + 1 FROM edges"
        " WHERE from_id = ? AND type = ?), ?, ?)"
        f" RETURNING {EDGE_COLUMNS}",
        (from_id, to_id, edge_type, from_id, edge_type, data, now),
    ).fetchone()
    return edge_from_row(row)


def claim(
    conn: sqlite3.Connection,
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
) -> EntityRecord | Refusal:
    """Claim the entity for ``owner`` if it can run and nobody else holds it (see
    ``EntityStore.claim``); else why not.

    The claim loop passes ``back_off`` and ``alone``: a run taken over from a dying process
    for the second time in a row or more is not claimed now but made due after a pause
    (:func:`crash_pause`); and a suspect (one more abandonment would fail it) is claimed only
    if the caller runs nothing else (``alone``), so that its next death can be blamed on it."""
    row = conn.execute(
        "SELECT status, lease_owner, lease_expires, parked_on, abandoned, parent_id, attempt,"
        " claim_tick FROM entities WHERE id = ?",
        (entity_id,),
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
        and owner_tick(conn, holder) == claimed_at
    ):
        abandoned += 1
        if crash_limit is not None and abandoned >= crash_limit:
            assert crash_failure is not None
            fail_crash_loop(
                conn, entity_id, parent_id, abandoned, now=now, crash_failure=crash_failure
            )
            return Refusal.CRASH_LOOP
    if alone is False and is_suspect(abandoned, crash_limit):
        return Refusal.SUSPECT  # it must run alone: not now (nothing is written)
    if holder is not None and holder != owner:
        pause = crash_pause(abandoned)
        if back_off and pause:
            conn.execute(
                "UPDATE entities SET lease_owner = NULL, lease_expires = NULL, abandoned = ?,"
                " runnable_at = ? WHERE id = ?",
                (abandoned, now + pause, entity_id),
            )
            return Refusal.BACKING_OFF
    waiting = status == EntityStatus.WAITING.value and parked_on in (None, "message")
    new_status = EntityStatus.WAITING.value if waiting else EntityStatus.IN_PROGRESS.value
    if own_run and tick is None:
        tick = advance_tick(conn, owner)
    conn.execute(
        "UPDATE entities SET lease_owner = ?, lease_expires = ?, status = ?,"
        " attempt = attempt + 1, error = NULL, parked_on = NULL, abandoned = ?,"
        " runnable_at = CASE WHEN ? THEN coalesce(runnable_at, ?) ELSE runnable_at END,"
        " claim_tick = ?, modified_at = ? WHERE id = ?",
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
    )
    append(conn, entity_id, now, started(attempt + 1))
    return require_entity(conn, entity_id)


def advance_tick(conn: sqlite3.Connection, owner: str) -> int:
    """Move ``owner``'s tick (it starts runs, or writes from outside any run); returns it."""
    row = conn.execute(
        "INSERT INTO runtimes (owner, tick) VALUES (?, 1)"
        " ON CONFLICT (owner) DO UPDATE SET tick = tick + 1 RETURNING tick",
        (owner,),
    ).fetchone()
    return int(row[0])


def owner_tick(conn: sqlite3.Connection, owner: str) -> int | None:
    """``owner``'s tick (``None`` if it never moved)."""
    row = conn.execute("SELECT tick FROM runtimes WHERE owner = ?", (owner,)).fetchone()
    return None if row is None else int(row[0])


def due_ids(
    conn: sqlite3.Connection,
    now: float,
    limit: int,
    steal_from: Sequence[str],
    types: Sequence[str] | None,
) -> list[str]:
    """The entities the claim loop may take now, earliest first: runnable by now, not ended,
    with no live lease (free, expired, or held by one of ``steal_from``), and of one of
    ``types`` (if given: a runtime claims only the types it can run)."""
    dead = f" OR lease_owner IN ({_marks(steal_from)})" if steal_from else ""
    typed = "" if types is None else f" AND type IN ({_marks(types)})"
    rows = conn.execute(
        "SELECT id FROM entities WHERE runnable_at IS NOT NULL AND runnable_at <= ?"
        f" AND status NOT IN ('COMPLETED', 'CANCELLED'){typed}"
        f" AND (lease_owner IS NULL OR lease_expires <= ?{dead})"
        " ORDER BY runnable_at, rowid LIMIT ?",
        (now, *(types or ()), now, *steal_from, limit),
    )
    return [entity_id for (entity_id,) in rows]


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" for _ in values)


def fail_crash_loop(
    conn: sqlite3.Connection,
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
    row = conn.execute(
        "UPDATE entities SET status = 'FAILED', error = ?, lease_owner = NULL,"
        " lease_expires = NULL, runnable_at = NULL, parked_on = NULL, abandoned = ?,"
        " last_entity_seq = last_entity_seq + ?, modified_at = ? WHERE id = ?"
        " RETURNING last_entity_seq",
        (
            encode_object(error, f"the error of entity {entity_id!r}"),
            count,
            len(bodies),
            now,
            entity_id,
        ),
    ).fetchone()
    insert_envelopes(conn, entity_id, row[0], now, bodies)
    wake_parent(conn, parent_id, now)


def wake_parent(conn: sqlite3.Connection, parent_id: str | None, now: float) -> bool:
    """A child ended: make its parent runnable if it is parked on its children and none of
    them is pending any more (parked, submitted, or running on its own). Returns whether it
    did."""
    if parent_id is None:
        return False
    cursor = conn.execute(
        "UPDATE entities SET runnable_at = ? WHERE id = ? AND parked_on = 'children'"
        " AND lease_owner IS NULL AND runnable_at IS NULL"
        f" AND NOT EXISTS ({PENDING_CHILD})",
        (now, parent_id, parent_id),
    )
    return cursor.rowcount > 0


#: A pending child of the entity ``?``: parked, or runnable (submitted, woken, running on its
#: own). The condition is the one of the partial index ``entities_pending``.
PENDING_CHILD = (
    "SELECT 1 FROM entities WHERE parent_id = ?"
    " AND (runnable_at IS NOT NULL OR parked_on IS NOT NULL)"
)


def park(
    conn: sqlite3.Connection,
    entity_id: str,
    owner: str,
    *,
    now: float,
    reason: ParkReason,
    wake_at: float | None,
    body: str | None,
) -> EntityRecord:
    """End a run by parking it (see ``EntityStore.park``)."""
    fence(conn, entity_id, owner, "park")
    due = wake_at
    if reason is ParkReason.MESSAGE:
        unread = conn.execute(
            "SELECT 1 FROM messages WHERE entity_id = ? AND consumed_by IS NULL LIMIT 1",
            (entity_id,),
        ).fetchone()
        if unread is not None:
            due = now  # it arrived while the run was deciding to park
    elif (
        reason is ParkReason.CHILDREN
        and conn.execute(PENDING_CHILD, (entity_id,)).fetchone() is None
    ):
        due = now  # they all ended meanwhile
    conn.execute(
        "UPDATE entities SET status = 'WAITING', lease_owner = NULL, lease_expires = NULL,"
        " parked_on = ?, runnable_at = ?, abandoned = 0, modified_at = ? WHERE id = ?",
        (reason.value, due, now, entity_id),
    )
    if body is not None:
        append(conn, entity_id, now, body)
    return require_entity(conn, entity_id)


def insert_claimed(
    conn: sqlite3.Connection,
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
        conn.execute(
            f"INSERT INTO entities ({ENTITY_COLUMNS}) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, NULL, NULL, 1, ?, ?, ?, ?, 1, NULL, NULL, 0, 0)",
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
    except sqlite3.IntegrityError as exc:
        raise DuplicateEntityError(f"the entity id {new.id!r} is taken") from exc
    if new.parent_id is not None:
        conn.execute(
            "INSERT INTO edges (from_id, to_id, type, position, data, created_at)"
            " VALUES (?, ?, ?, (SELECT coalesce(max(position), 0) + 1 FROM edges"
            " WHERE from_id = ? AND type = ?), ?, ?)",
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
    conn.execute(
        "INSERT INTO envelopes (entity_id, entity_seq, ts, body) VALUES (?, 1, ?, ?)",
        (new.id, now, body),
    )
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
    conn: sqlite3.Connection,
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
    row = conn.execute(
        "UPDATE entities SET last_entity_seq = last_entity_seq + ?,"
        " emitted = max(emitted, ?), abandoned = 0"
        " WHERE id = ? AND lease_owner = ? RETURNING last_entity_seq",
        (count, emitted, entity_id, owner),
    ).fetchone()
    if row is None:
        fence(conn, entity_id, owner, what)  # raises: not found, or the lease is lost
        raise AssertionError("unreachable")  # pragma: no cover
    return int(row[0])


def insert_envelope(
    conn: sqlite3.Connection, entity_id: str, entity_seq: int, ts: float, body: str
) -> int:
    """Insert one envelope with its reserved entity sequence number; returns its seq."""
    cursor = conn.execute(
        "INSERT INTO envelopes (entity_id, entity_seq, ts, body) VALUES (?, ?, ?, ?)",
        (entity_id, entity_seq, ts, body),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def insert_envelopes(
    conn: sqlite3.Connection, entity_id: str, last: int, ts: float, bodies: Sequence[str]
) -> list[int]:
    """Insert ``bodies`` numbered up to ``last`` (reserved by :func:`bump_seq`)."""
    seqs = []
    first = last - len(bodies) + 1
    for offset, body in enumerate(bodies):
        cursor = conn.execute(
            "INSERT INTO envelopes (entity_id, entity_seq, ts, body) VALUES (?, ?, ?, ?)",
            (entity_id, first + offset, ts, body),
        )
        assert cursor.lastrowid is not None
        seqs.append(cursor.lastrowid)
    return seqs


def create_entity(
    conn: sqlite3.Connection, new: NewEntity, data: str, edge_data: str, strict: bool
) -> tuple[EntityRecord, bool]:
    if new.parent_id is not None:
        parent = conn.execute("SELECT 1 FROM entities WHERE id = ?", (new.parent_id,)).fetchone()
        if parent is None:
            raise EntityNotFoundError(
                f"no entity has the id {new.parent_id!r} (the parent of {new.name!r})"
            )
    existing = find_entity(conn, new.parent_id, new.name)
    if existing is not None:
        if strict:
            where = "among the roots" if new.parent_id is None else f"under {new.parent_id!r}"
            raise DuplicateEntityError(
                f"an entity called {new.name!r} exists {where} already ({existing.id})"
            )
        return existing, False
    if conn.execute("SELECT 1 FROM entities WHERE id = ?", (new.id,)).fetchone() is not None:
        raise DuplicateEntityError(f"the entity id {new.id!r} is taken")
    conn.execute(
        f"INSERT INTO entities ({ENTITY_COLUMNS}) VALUES"
        " (?, ?, ?, ?, ?, ?, ?, NULL, NULL, 0, NULL, NULL, ?, ?, 0, NULL, NULL, 0, 0)",
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
        ),
    )
    if new.parent_id is not None:
        add_edge(conn, new.parent_id, new.id, new.edge_type, now=new.created_at, data=edge_data)
    return require_entity(conn, new.id), True


def get_wait(conn: sqlite3.Connection, entity_id: str, index: int) -> WaitRecord | None:
    row = conn.execute(SELECT_WAIT, (entity_id, index)).fetchone()
    if row is None:
        return None
    return wait_from_row(row)


def require_wait(conn: sqlite3.Connection, entity_id: str, index: int) -> WaitRecord:
    wait = get_wait(conn, entity_id, index)
    if wait is None:
        raise EntityNotFoundError(f"entity {entity_id!r} has no wait {index}")
    return wait
