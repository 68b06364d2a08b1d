"""The entity store's operations, written once for both databases.

:class:`StoreOperations` implements the :class:`~sluiceway.store.EntityStore` protocol over a
``_db`` (:class:`Database`): each operation checks its arguments, then hands a function of
one transaction (its SQL in ``_sql``, written for both SQLite and PostgreSQL) to the
database's writer (group commit) or readers. This module holds the entity graph's operations
(entities, envelopes, edges, messages and waits); the runs' side (claims, submissions,
parking, leases, the ends of runs) is in ``_store_runs``. :class:`~sluiceway.SqliteStore` and
:class:`~sluiceway.PostgresStore` add their connections and lifetime.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar

import trio

from .._errors import EntityNotWaitingError
from .._util import aclose_after
from . import _rows as shared
from . import _sql as sql
from ._json import encode_json, encode_object
from ._records import (
    JSON,
    EdgeRecord,
    EntityRecord,
    EntityStatus,
    EnvelopeRow,
    EnvelopeTail,
    MessageRecord,
    NewEntity,
    StoredEnvelope,
    WaitKind,
    WaitRecord,
    WaitState,
)
from ._rows import State
from ._sql import Tx
from ._store_runs import StoreRuns

T = TypeVar("T")

#: ``read_envelopes`` of a subtree walks up from the entities that stored after the cursor
#: (cheap near the newest, whatever the subtree's size) over this many seqs at least; past
#: them, if fewer than one in ``_DENSE`` was the subtree's, down from the subtree's root
#: (cheap for a small subtree, whatever the store's size).
_UPWARD_SPAN = 4000
_DENSE = 4


class Database(Protocol):
    """What the operations need of a store's connections."""

    state: State

    async def close(self) -> None: ...

    def check_open(self) -> None: ...

    def check_writable(self) -> None: ...

    async def write(self, fn: Callable[[Tx], T]) -> T: ...

    async def read(self, fn: Callable[[Tx], T]) -> T: ...


class StoreOperations(StoreRuns):
    """The :class:`~sluiceway.store.EntityStore` operations over ``_db`` (see the module
    documentation)."""

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Apply the writes still queued, stop the writer and close every connection.

        An exception raised by the block is never hidden: it propagates unchanged (together
        with the closing error in a group, should closing fail as well).
        """
        if self._db.state is not State.OPEN:
            raise RuntimeError(f"this {type(self).__name__} is {self._db.state.value}, not open")
        await aclose_after(self._db.close, exc)

    # -- entities ------------------------------------------------------------------------------

    async def create_entity(
        self, new: NewEntity, *, strict: bool = False, owner: str | None = None
    ) -> tuple[EntityRecord, bool]:
        self._db.check_writable()
        if not isinstance(new, NewEntity):
            raise TypeError(f"create_entity() takes a NewEntity, got {new!r}")
        data = encode_object(new.data, f"entity data of {new.name!r}")
        edge_data = encode_object(new.edge_data, f"edge data of {new.name!r}")

        def write(tx: Tx) -> tuple[EntityRecord, bool]:
            if owner is not None and new.parent_id is not None:
                sql.fence(tx, new.parent_id, owner, f"create child {new.name!r}")
            else:
                self._outside(tx)
            return sql.create_entity(tx, new, data, edge_data, strict)

        return await self._db.write(write)

    async def get_entity(self, entity_id: str) -> EntityRecord:
        shared.known_id(entity_id)
        return await self._db.read(lambda tx: sql.require_entity(tx, entity_id))

    async def find_entity(self, parent_id: str | None, name: str) -> EntityRecord | None:
        if not shared.storable(name) or (parent_id is not None and not shared.storable(parent_id)):
            await trio.lowlevel.checkpoint()
            return None  # no stored name or id is like that
        return await self._db.read(lambda tx: sql.find_entity(tx, parent_id, name))

    async def children(self, parent_id: str, *, limit: int | None = None) -> list[EntityRecord]:
        if not shared.storable(parent_id):
            await trio.lowlevel.checkpoint()
            return []
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise TypeError(f"limit must be an integer or None, got {limit!r}")

        def read(tx: Tx) -> list[EntityRecord]:
            query = (
                f"{shared.SELECT_ENTITY} WHERE parent_id = %s ORDER BY created_at, "
                + tx.creation_order
            )
            args: tuple[Any, ...] = (parent_id,)
            if limit is not None:
                query += " LIMIT %s"
                args += (max(limit, 0),)
            rows = tx.execute(query, args)
            return [shared.entity_from_row(row) for row in rows]

        return await self._db.read(read)

    async def count_children(self, parent_id: str) -> dict[EntityStatus, int]:
        if not shared.storable(parent_id):
            await trio.lowlevel.checkpoint()
            return {}

        def read(tx: Tx) -> dict[EntityStatus, int]:
            rows = tx.execute(
                "SELECT status, count(*) FROM entities WHERE parent_id = %s GROUP BY status",
                (parent_id,),
            )
            return {EntityStatus(status): count for status, count in rows}

        return await self._db.read(read)

    async def list_roots(
        self,
        *,
        status: EntityStatus | None = None,
        type: str | None = None,
        name: str | None = None,
        before: tuple[float, str] | None = None,
        limit: int = 50,
    ) -> list[EntityRecord]:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        if not all(shared.storable(text) for text in (type, name) if text is not None) or (
            before is not None and not shared.storable(before[1])
        ):
            await trio.lowlevel.checkpoint()
            return []  # no stored type or name is like that
        where = ["parent_id IS NULL"]
        args: list[Any] = []
        if status is not None:
            where.append("status = %s")
            args.append(EntityStatus(status).value)
        if type is not None:
            where.append("type = %s")
            args.append(type)
        if name:
            # LIKE with its wildcards escaped: a substring, ASCII letters in any case.
            escaped = name.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("lower(name) LIKE %s ESCAPE '\\'")
            args.append(f"%{escaped}%")
        if before is not None:
            where.append("(created_at < %s OR (created_at = %s AND id < %s))")
            args.extend([before[0], before[0], before[1]])
        query = (
            f"{shared.SELECT_ENTITY} WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, id DESC LIMIT %s"
        )
        args.append(limit)

        def read(tx: Tx) -> list[EntityRecord]:
            return [shared.entity_from_row(row) for row in tx.execute(query, tuple(args))]

        return await self._db.read(read)

    async def pending_children(self, parent_id: str) -> int:
        if not shared.storable(parent_id):
            await trio.lowlevel.checkpoint()
            return 0

        def read(tx: Tx) -> int:
            query = sql.PENDING_CHILD.replace("SELECT 1", "SELECT count(*)", 1)
            (count,) = tx.execute(query, (parent_id,)).fetchone()
            return int(count)

        return await self._db.read(read)

    async def update_data(
        self,
        entity_id: str,
        owner: str | None,
        partial: Mapping[str, JSON],
        *,
        now: float,
        expect: Mapping[str, JSON] | None = None,
    ) -> dict[str, JSON]:
        shared.known_id(entity_id)
        self._db.check_writable()
        encode_object(partial, f"the data update of entity {entity_id!r}")
        if expect is not None:
            encode_object(expect, f"the data expected of entity {entity_id!r}")
        patch = dict(partial)

        def write(tx: Tx) -> dict[str, JSON]:
            if owner is None:
                self._outside(tx)
                row = tx.execute(
                    f"SELECT data FROM entities WHERE id = %s{tx.for_update}", (entity_id,)
                ).fetchone()
                if row is None:
                    raise shared.not_found(entity_id)
                data_json = row[0]
            else:
                data_json = sql.fence(tx, entity_id, owner, "data")[1]
            data: dict[str, JSON] = json.loads(data_json)
            if expect is not None:
                shared.check_expected_data(entity_id, data, expect)
            data.update(patch)
            tx.execute(
                "UPDATE entities SET data = %s, modified_at = %s WHERE id = %s",
                (encode_json(data, f"entity data of {entity_id!r}"), now, entity_id),
            )
            return data

        return await self._db.write(write)

    # -- envelopes -----------------------------------------------------------------------------

    async def append_envelopes(
        self,
        owner: str,
        items: Sequence[tuple[str, float, Mapping[str, JSON]]],
        *,
        emitted: int = 0,
    ) -> list[int]:
        self._db.check_writable()
        prepared = shared.prepare_envelopes(items, emitted)
        if not prepared:
            await trio.lowlevel.checkpoint()
            return []

        def write(tx: Tx) -> list[int]:
            entities = dict.fromkeys(entity_id for entity_id, _, _ in prepared)
            if len(entities) == 1:  # the common case: the envelopes of one entity
                entity_id = prepared[0][0]
                last = sql.bump_seq(
                    tx, entity_id, owner, len(prepared), "envelopes", emitted=emitted
                )
                first = last - len(prepared) + 1
                tx.notes.envelopes = True
                return tx.insert_envelopes(
                    [
                        (entity_id, first + offset, ts, body)
                        for offset, (_, ts, body) in enumerate(prepared)
                    ]
                )
            for entity_id in entities:
                sql.fence(tx, entity_id, owner, "envelopes")
            tx.notes.envelopes = True
            return tx.insert_envelopes(
                [
                    (entity_id, sql.next_entity_seq(tx, entity_id), ts, body)
                    for entity_id, ts, body in prepared
                ]
            )

        return await self._db.write(write)

    async def read_envelopes(
        self,
        entity_id: str,
        *,
        after_seq: int = 0,
        limit: int = 1000,
        subtree: bool = True,
    ) -> list[StoredEnvelope]:
        shared.known_id(entity_id)
        _check_limit("read_envelopes", limit)

        def read(tx: Tx) -> list[StoredEnvelope]:
            if tx.execute("SELECT 1 FROM entities WHERE id = %s", (entity_id,)).fetchone() is None:
                raise shared.not_found(entity_id)
            return _envelopes_after(tx, entity_id, after_seq, limit, subtree)

        return await self._db.read(read)

    async def read_tail(
        self, entity_id: str, *, after_seq: int, limit: int = 1000, subtree: bool = True
    ) -> EnvelopeTail:
        shared.known_id(entity_id)
        _check_limit("read_tail", limit)

        def read(tx: Tx) -> EnvelopeTail:
            record = sql.require_entity(tx, entity_id)
            highest = _highest_seq(tx)
            rows = _envelope_rows(tx, entity_id, after_seq, limit, subtree)
            return EnvelopeTail(record, highest, list(map(EnvelopeRow._make, rows)))

        return await self._db.read(read)

    async def last_seq(self) -> int:
        return await self._db.read(_highest_seq)

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
        self._db.check_writable()
        data_json = encode_object(
            {} if data is None else data, f"the data of edge {from_id!r} -{edge_type}-> {to_id!r}"
        )

        def write(tx: Tx) -> EdgeRecord:
            for end, lock in ((from_id, tx.for_update), (to_id, "")):
                # from_id's row locked: its edges are numbered in turn.
                query = f"SELECT 1 FROM entities WHERE id = %s{lock}"
                if tx.execute(query, (end,)).fetchone() is None:
                    raise shared.not_found(end)
            if owner is not None:
                sql.fence(tx, from_id, owner, f"{edge_type} edge")
            else:
                self._outside(tx)
            return sql.add_edge(tx, from_id, to_id, edge_type, now=now, data=data_json)

        return await self._db.write(write)

    async def edges(self, entity_id: str) -> tuple[list[EdgeRecord], list[EdgeRecord]]:
        shared.known_id(entity_id)

        def read(tx: Tx) -> tuple[list[EdgeRecord], list[EdgeRecord]]:
            outgoing = tx.execute(
                f"SELECT {shared.EDGE_COLUMNS} FROM edges WHERE from_id = %s"
                " ORDER BY type, position",
                (entity_id,),
            )
            out = [shared.edge_from_row(row) for row in outgoing]
            incoming = tx.execute(
                f"SELECT {shared.EDGE_COLUMNS} FROM edges WHERE to_id = %s"
                " ORDER BY type, position, id",
                (entity_id,),
            )
            return out, [shared.edge_from_row(row) for row in incoming]

        return await self._db.read(read)

    # -- messages and durable waits ------------------------------------------------------------

    async def send_message(
        self, entity_id: str, message: str, data: JSON, *, now: float
    ) -> MessageRecord:
        shared.known_id(entity_id)
        self._db.check_writable()
        if not isinstance(message, str):
            raise TypeError(f"send_message() message must be a str, got {message!r}")
        data_json = encode_json(data, f"the data of message {message!r} to entity {entity_id!r}")

        def write(tx: Tx) -> MessageRecord:
            self._outside(tx)
            row = tx.execute(
                f"SELECT status FROM entities WHERE id = %s{tx.for_update}", (entity_id,)
            ).fetchone()
            if row is None:
                raise shared.not_found(entity_id)
            if row[0] in shared.TERMINAL:
                raise EntityNotWaitingError(
                    f"entity {entity_id!r} is {row[0]}; it cannot receive message {message!r}"
                )
            (message_id,) = tx.execute(
                "INSERT INTO messages (entity_id, message, data, sent_at) VALUES (%s, %s, %s, %s)"
                " RETURNING id",
                (entity_id, message, data_json, now),
            ).fetchone()
            # A run parked on a message wait runs again now.
            tx.execute(
                "UPDATE entities SET runnable_at = %s WHERE id = %s AND parked_on = 'message'"
                " AND lease_owner IS NULL AND (runnable_at IS NULL OR runnable_at > %s)",
                (now, entity_id, now),
            )
            tx.notes.messages.add(entity_id)
            return MessageRecord(
                id=message_id,
                entity_id=entity_id,
                message=message,
                data=json.loads(data_json),
                sent_at=now,
                consumed_by=None,
            )

        return await self._db.write(write)

    async def messages(self, entity_id: str) -> list[MessageRecord]:
        shared.known_id(entity_id)

        def read(tx: Tx) -> list[MessageRecord]:
            rows = tx.execute(
                f"SELECT {shared.MESSAGE_COLUMNS} FROM messages WHERE entity_id = %s ORDER BY id",
                (entity_id,),
            )
            return [shared.message_from_row(row) for row in rows]

        return await self._db.read(read)

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
        self._db.check_writable()
        shared.check_index(index)
        if not isinstance(kind, WaitKind):
            raise TypeError(f"begin_wait() kind must be a WaitKind, got {kind!r}")
        data_json = encode_json(data, f"the data of wait {index} of entity {entity_id!r}")
        body = (
            None
            if envelope is None
            else encode_object(envelope, f"the waiting envelope of entity {entity_id!r}")
        )

        def write(tx: Tx) -> WaitRecord:
            sql.fence(tx, entity_id, owner, "wait")
            existing = sql.get_wait(tx, entity_id, index)
            if existing is not None:
                return existing
            tx.execute(
                "INSERT INTO waits (entity_id, idx, kind, prompt, data, deadline, state,"
                " created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    entity_id,
                    index,
                    kind.value,
                    prompt,
                    data_json,
                    deadline,
                    WaitState.WAITING.value,
                    now,
                ),
            )
            if kind is WaitKind.MESSAGE:
                tx.execute(
                    "UPDATE entities SET status = %s, modified_at = %s WHERE id = %s",
                    (EntityStatus.WAITING.value, now, entity_id),
                )
                if body is not None:
                    sql.append(tx, entity_id, now, body)
            wait = sql.get_wait(tx, entity_id, index)
            assert wait is not None
            return wait

        return await self._db.write(write)

    async def take_message(
        self, entity_id: str, owner: str, index: int, *, now: float
    ) -> WaitRecord:
        self._db.check_writable()

        def write(tx: Tx) -> WaitRecord:
            sql.fence(tx, entity_id, owner, "message")
            wait = sql.require_wait(tx, entity_id, index)
            if (
                wait.state is not WaitState.WAITING
                or wait.kind is not WaitKind.MESSAGE
                or wait.message is not None
            ):
                return wait
            row = tx.execute(
                "SELECT id FROM messages WHERE entity_id = %s AND consumed_by IS NULL"
                " ORDER BY id LIMIT 1",
                (entity_id,),
            ).fetchone()
            if row is None:
                return wait
            tx.execute("UPDATE messages SET consumed_by = %s WHERE id = %s", (index, row[0]))
            tx.execute(
                "UPDATE waits SET state = %s, message_id = %s WHERE entity_id = %s AND idx = %s",
                (WaitState.ANSWERED.value, row[0], entity_id, index),
            )
            tx.execute(
                "UPDATE entities SET status = %s, modified_at = %s WHERE id = %s",
                (EntityStatus.IN_PROGRESS.value, now, entity_id),
            )
            return sql.require_wait(tx, entity_id, index)

        return await self._db.write(write)

    async def end_wait(
        self, entity_id: str, owner: str, index: int, state: WaitState, *, now: float
    ) -> WaitRecord:
        self._db.check_writable()
        if state is not WaitState.TIMED_OUT and state is not WaitState.ELAPSED:
            raise ValueError(f"end_wait() closes a wait as TIMED_OUT or ELAPSED, not {state!r}")

        def write(tx: Tx) -> WaitRecord:
            sql.fence(tx, entity_id, owner, "wait")
            wait = sql.require_wait(tx, entity_id, index)
            if wait.state is not WaitState.WAITING:
                return wait
            tx.execute(
                "UPDATE waits SET state = %s WHERE entity_id = %s AND idx = %s",
                (state.value, entity_id, index),
            )
            tx.execute(
                "UPDATE entities SET status = %s, modified_at = %s WHERE id = %s",
                (EntityStatus.IN_PROGRESS.value, now, entity_id),
            )
            return sql.require_wait(tx, entity_id, index)

        return await self._db.write(write)

    async def get_wait(self, entity_id: str, index: int) -> WaitRecord | None:
        return await self._db.read(lambda tx: sql.get_wait(tx, entity_id, index))


def _highest_seq(tx: Tx) -> int:
    """The highest seq stored (0 if none)."""
    value = tx.execute("SELECT max(seq) FROM envelopes").fetchone()[0]
    return 0 if value is None else int(value)


def _check_limit(operation: str, limit: object) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"{operation}() limit must be an int >= 0, got {limit!r}")


def _envelopes_after(
    tx: Tx, entity_id: str, after_seq: int, limit: int, subtree: bool
) -> list[StoredEnvelope]:
    """The envelopes of an entity (and its subtree) with ``seq > after_seq``, in order, at
    most ``limit``; the entity exists."""
    rows = _envelope_rows(tx, entity_id, after_seq, limit, subtree)
    return [EnvelopeRow._make(row).stored() for row in rows]


def _envelope_rows(
    tx: Tx, entity_id: str, after_seq: int, limit: int, subtree: bool
) -> list[tuple[Any, ...]]:
    """:func:`_envelopes_after`'s rows: seq, entity id, entity seq, ts, the body's JSON text,
    the entity's type and name."""
    if not subtree:
        return tx.execute(  # type: ignore[no-any-return]
            "SELECT v.seq, v.entity_id, v.entity_seq, v.ts, v.body, e.type, e.name"
            " FROM envelopes AS v JOIN entities AS e ON e.id = v.entity_id"
            " WHERE v.entity_id = %s AND v.seq > %s ORDER BY v.seq LIMIT %s",
            (entity_id, after_seq, limit),
        ).fetchall()
    # Near the newest envelopes (a stream's tail), walk up from the few entities that stored
    # there to see which are in the subtree, rather than down the whole subtree (a run of
    # 10,000 children: 0.4 ms against 28). A span of seqs at a time, from a page's worth on
    # and doubling, so that a page costs the span it covers, not all that follows it (a
    # stream catching up on thousands reads page after page). Once past _UPWARD_SPAN with
    # few of the subtree's envelopes found (a small subtree in a busy store), walk down.
    highest = _highest_seq(tx)
    rows: list[tuple[Any, ...]] = []
    low, span = after_seq, max(limit, 1)
    while len(rows) < limit and low < highest:
        scanned = low - after_seq
        if scanned > _UPWARD_SPAN and len(rows) * _DENSE <= scanned:
            rows += tx.execute(
                """
                WITH RECURSIVE subtree (id) AS (
                    SELECT CAST(%s AS TEXT)
                    UNION ALL
                    SELECT e.id FROM entities AS e JOIN subtree ON e.parent_id = subtree.id
                )
                SELECT v.seq, v.entity_id, v.entity_seq, v.ts, v.body, e.type, e.name
                FROM envelopes AS v JOIN entities AS e ON e.id = v.entity_id
                WHERE v.seq > %s AND v.entity_id IN (SELECT id FROM subtree)
                ORDER BY v.seq LIMIT %s
                """,
                (entity_id, low, limit - len(rows)),
            ).fetchall()
            break
        high = min(highest, low + span)
        # By seq, then membership: on the entity index instead, SQLite would read every
        # envelope of each member (the root of a fan-out has thousands) for every page.
        rows += tx.execute(
            f"""
            WITH RECURSIVE up (start, id) AS (
                SELECT DISTINCT entity_id, entity_id FROM envelopes
                WHERE seq > %s AND seq <= %s
                UNION
                SELECT up.start, e.parent_id FROM up JOIN entities AS e ON e.id = up.id
                WHERE e.parent_id IS NOT NULL AND up.id <> %s
            )
            SELECT v.seq, v.entity_id, v.entity_seq, v.ts, v.body, e.type, e.name
            FROM envelopes AS v JOIN entities AS e ON e.id = v.entity_id
            WHERE v.seq > %s AND v.seq <= %s
              AND {tx.unindexed}v.entity_id IN (SELECT start FROM up WHERE id = %s)
            ORDER BY v.seq LIMIT %s
            """,
            (low, high, entity_id, low, high, entity_id, limit - len(rows)),
        ).fetchall()
        low, span = high, span * 2
    return rows
