"""The embedded entity store: one SQLite file, shared safely by several processes.

:class:`SqliteStore` implements the :class:`~sluiceway.store.EntityStore` protocol: each
operation is a function of one transaction (its SQL is in ``_sqlite_ops``), handed to the
file's writer or readers (``_sqlite_db``: group commit, a reader pool). This module holds the
entity graph's operations (entities, envelopes, edges, messages and waits); the runs' side
(claims, submissions, parking, leases, the ends of runs) is in ``_sqlite_runs``; the schema
and its migrations are in ``_sqlite_schema``.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Mapping, Sequence
from types import TracebackType

import trio

from .._errors import EntityNotWaitingError
from .._util import aclose_after
from . import _rows as shared
from . import _sqlite_ops as ops
from ._json import encode_json, encode_object
from ._protocol import EntityStore
from ._records import (
    JSON,
    EdgeRecord,
    EntityRecord,
    EntityStatus,
    MessageRecord,
    NewEntity,
    StoredEnvelope,
    WaitKind,
    WaitRecord,
    WaitState,
)
from ._sqlite_db import SqliteDatabase, SqliteStoreStatistics, State
from ._sqlite_runs import SqliteRuns

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class SqliteStore(SqliteRuns, EntityStore):
    """An :class:`~sluiceway.store.EntityStore` in one SQLite file.

    Several stores (in one process or several) may share a file: every write transaction starts
    with ``BEGIN IMMEDIATE``, so they are serialised by SQLite's lock, and the database runs in
    WAL mode so that readers never block the writer. Within one store, concurrent writes are
    grouped into one transaction by a writer task (group commit), each in its own savepoint:
    a refused write is rolled back alone and raised in its caller. A write waits for its
    transaction shielded from cancellation, so a cancelled caller never leaves a write
    half-known: it is applied (or refused) exactly once either way.

    Use it as an async context manager, once::

        async with SqliteStore("entities.db") as store:
            record, created = await store.create_entity(new)

    Args:
        path: The database file. It is created (with the schema) if it does not exist; a store
            written by an older sluiceway is migrated when opened.
        read_only: Open an existing store for reading only (no schema creation or migration;
            every write method raises ``RuntimeError``).
        synchronous: SQLite's ``synchronous`` setting: ``"NORMAL"`` (the default: in WAL mode
            a committed write survives a crash of the process, but the last transactions may be
            lost on power loss), ``"FULL"`` (they survive power loss too), ``"EXTRA"`` or
            ``"OFF"``.
        busy_timeout: How long (seconds) a transaction waits for another process's lock before
            it fails.
        max_batch: The most writes grouped into one transaction.
        readers: How many read connections (and concurrent reads) the store uses.
        threads: Run SQLite in worker threads (the default), or on the trio thread
            (``False``): for tests under ``trio.testing.MockClock(autojump_threshold=0)``,
            where virtual time must not jump while a write is under way. Each call then blocks
            the trio thread for as long as SQLite takes (usually well under a millisecond).

    Raises:
        TypeError, ValueError: an argument is invalid.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        synchronous: str = "NORMAL",
        busy_timeout: float = 30.0,
        max_batch: int = 1000,
        readers: int = 4,
        threads: bool = True,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"SqliteStore() path must be a str or os.PathLike, got {path!r}")
        fspath = os.fspath(path)
        if not isinstance(fspath, str):
            raise TypeError(f"SqliteStore() path must name a file as str, got {fspath!r}")
        if fspath in ("", ":memory:") or fspath.startswith("file::memory:"):
            raise ValueError(
                "SqliteStore() needs a database file (several connections share it); for a "
                f"throwaway store use a file in a temporary directory, not {fspath!r}"
            )
        for flag, given in (("read_only", read_only), ("threads", threads)):
            if not isinstance(given, bool):
                raise TypeError(f"SqliteStore() {flag} must be a bool, got {given!r}")
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(
                f"SqliteStore() synchronous must be one of {', '.join(_SYNCHRONOUS)}, "
                f"got {synchronous!r}"
            )
        if (
            isinstance(busy_timeout, bool)
            or not isinstance(busy_timeout, int | float)
            or not math.isfinite(busy_timeout)
            or busy_timeout < 0
        ):
            raise ValueError(
                "SqliteStore() busy_timeout must be a finite number of seconds >= 0, "
                f"got {busy_timeout!r}"
            )
        for name, value in (("max_batch", max_batch), ("readers", readers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SqliteStore() {name} must be an int >= 1, got {value!r}")
        self._db = SqliteDatabase(
            fspath,
            read_only=read_only,
            synchronous=synchronous.upper(),
            busy_timeout=float(busy_timeout),
            max_batch=max_batch,
            readers=readers,
            threads=threads,
        )
        self._owner: str | None = None

    @property
    def path(self) -> str:
        """The database file, as given."""
        return self._db.path

    @property
    def read_only(self) -> bool:
        """Whether the store was opened for reading only."""
        return self._db.read_only

    def __repr__(self) -> str:
        mode = " read-only" if self.read_only else ""
        return f"<SqliteStore {self.path!r}{mode} {self._db.state.value}>"

    def statistics(self) -> SqliteStoreStatistics:
        """How many writes, write transactions and reads the store has done (see
        :class:`SqliteStoreStatistics`)."""
        return self._db.statistics()

    # -- lifetime ------------------------------------------------------------------------------

    async def __aenter__(self) -> SqliteStore:
        """Open the connections, create or migrate the schema and start the writer task.

        Raises:
            RuntimeError: the store was already entered (a store can be entered once), or
                SQLite is older than 3.35.
            FileNotFoundError: ``read_only`` and there is no file at ``path``, or the directory
                of ``path`` does not exist.
            StoreSchemaError: the file is not a database, not a sluiceway entity store, was
                written by a newer sluiceway, or (``read_only``) needs a migration.
            StoreError: the database could not be opened (locked for longer than
                ``busy_timeout``, unreadable...).
        """
        await self._db.open()
        return self

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
            raise RuntimeError(f"this SqliteStore is {self._db.state.value}, not open")
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

        def write(conn: sqlite3.Connection) -> tuple[EntityRecord, bool]:
            if owner is not None and new.parent_id is not None:
                ops.fence(conn, new.parent_id, owner, f"create child {new.name!r}")
            else:
                self._outside(conn)
            return ops.create_entity(conn, new, data, edge_data, strict)

        return await self._db.write(write)

    async def get_entity(self, entity_id: str) -> EntityRecord:
        shared.known_id(entity_id)
        return await self._db.read(lambda conn: ops.require_entity(conn, entity_id))

    async def find_entity(self, parent_id: str | None, name: str) -> EntityRecord | None:
        if not shared.storable(name) or (parent_id is not None and not shared.storable(parent_id)):
            await trio.lowlevel.checkpoint()
            return None  # no stored name or id is like that
        return await self._db.read(lambda conn: ops.find_entity(conn, parent_id, name))

    async def children(self, parent_id: str) -> list[EntityRecord]:
        if not shared.storable(parent_id):
            await trio.lowlevel.checkpoint()
            return []

        def read(conn: sqlite3.Connection) -> list[EntityRecord]:
            rows = conn.execute(
                f"{shared.SELECT_ENTITY} WHERE parent_id = ? ORDER BY created_at, rowid",
                (parent_id,),
            )
            return [shared.entity_from_row(row) for row in rows]

        return await self._db.read(read)

    async def count_children(self, parent_id: str) -> dict[EntityStatus, int]:
        if not shared.storable(parent_id):
            await trio.lowlevel.checkpoint()
            return {}

        def read(conn: sqlite3.Connection) -> dict[EntityStatus, int]:
            rows = conn.execute(
                "SELECT status, count(*) FROM entities WHERE parent_id = ? GROUP BY status",
                (parent_id,),
            )
            return {EntityStatus(status): count for status, count in rows}

        return await self._db.read(read)

    async def update_data(
        self, entity_id: str, owner: str | None, partial: Mapping[str, JSON], *, now: float
    ) -> dict[str, JSON]:
        shared.known_id(entity_id)
        self._db.check_writable()
        encode_object(partial, f"the data update of entity {entity_id!r}")
        patch = dict(partial)

        def write(conn: sqlite3.Connection) -> dict[str, JSON]:
            if owner is None:
                self._outside(conn)
                row = conn.execute(
                    "SELECT data FROM entities WHERE id = ?", (entity_id,)
                ).fetchone()
                if row is None:
                    raise shared.not_found(entity_id)
                data_json = row[0]
            else:
                data_json = ops.fence(conn, entity_id, owner, "data")[1]
            data: dict[str, JSON] = json.loads(data_json)
            data.update(patch)
            conn.execute(
                "UPDATE entities SET data = ?, modified_at = ? WHERE id = ?",
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

        def write(conn: sqlite3.Connection) -> list[int]:
            entities = dict.fromkeys(entity_id for entity_id, _, _ in prepared)
            if len(entities) == 1:  # the common case: the envelopes of one entity
                entity_id = prepared[0][0]
                last = ops.bump_seq(
                    conn, entity_id, owner, len(prepared), "envelopes", emitted=emitted
                )
                first = last - len(prepared) + 1
                return [
                    ops.insert_envelope(conn, entity_id, first + offset, ts, body)
                    for offset, (_, ts, body) in enumerate(prepared)
                ]
            for entity_id in entities:
                ops.fence(conn, entity_id, owner, "envelopes")
            return [ops.append(conn, entity_id, ts, body) for entity_id, ts, body in prepared]

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
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"read_envelopes() limit must be an int >= 0, got {limit!r}")

        def read(conn: sqlite3.Connection) -> list[StoredEnvelope]:
            if conn.execute("SELECT 1 FROM entities WHERE id = ?", (entity_id,)).fetchone() is None:
                raise shared.not_found(entity_id)
            if subtree:
                rows = conn.execute(
                    """
                    WITH RECURSIVE subtree (id) AS (
                        SELECT ?
                        UNION ALL
                        SELECT e.id FROM entities AS e JOIN subtree ON e.parent_id = subtree.id
                    )
                    SELECT v.seq, v.entity_id, v.entity_seq, v.ts, v.body, e.type, e.name
                    FROM envelopes AS v JOIN entities AS e ON e.id = v.entity_id
                    WHERE v.seq > ? AND v.entity_id IN subtree
                    ORDER BY v.seq LIMIT ?
                    """,
                    (entity_id, after_seq, limit),
                )
            else:
                rows = conn.execute(
                    "SELECT v.seq, v.entity_id, v.entity_seq, v.ts, v.body, e.type, e.name"
                    " FROM envelopes AS v JOIN entities AS e ON e.id = v.entity_id"
                    " WHERE v.entity_id = ? AND v.seq > ? ORDER BY v.seq LIMIT ?",
                    (entity_id, after_seq, limit),
                )
            return [
                StoredEnvelope(
                    seq=seq,
                    entity_id=owner_id,
                    entity_seq=entity_seq,
                    ts=ts,
                    body=json.loads(body),
                    entity_type=type_name,
                    entity_name=name,
                )
                for seq, owner_id, entity_seq, ts, body, type_name, name in rows
            ]

        return await self._db.read(read)

    async def last_seq(self) -> int:

        def read(conn: sqlite3.Connection) -> int:
            value = conn.execute("SELECT max(seq) FROM envelopes").fetchone()[0]
            return 0 if value is None else int(value)

        return await self._db.read(read)

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

        def write(conn: sqlite3.Connection) -> EdgeRecord:
            for end in (from_id, to_id):
                if conn.execute("SELECT 1 FROM entities WHERE id = ?", (end,)).fetchone() is None:
                    raise shared.not_found(end)
            if owner is not None:
                ops.fence(conn, from_id, owner, f"{edge_type} edge")
            else:
                self._outside(conn)
            return ops.add_edge(conn, from_id, to_id, edge_type, now=now, data=data_json)

        return await self._db.write(write)

    async def edges(self, entity_id: str) -> tuple[list[EdgeRecord], list[EdgeRecord]]:
        shared.known_id(entity_id)

        def read(conn: sqlite3.Connection) -> tuple[list[EdgeRecord], list[EdgeRecord]]:
            outgoing = conn.execute(
                f"SELECT {shared.EDGE_COLUMNS} FROM edges WHERE from_id = ?"
                " ORDER BY type, position",
                (entity_id,),
            )
            out = [shared.edge_from_row(row) for row in outgoing]
            incoming = conn.execute(
                f"SELECT {shared.EDGE_COLUMNS} FROM edges WHERE to_id = ?"
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

        def write(conn: sqlite3.Connection) -> MessageRecord:
            self._outside(conn)
            row = conn.execute("SELECT status FROM entities WHERE id = ?", (entity_id,)).fetchone()
            if row is None:
                raise shared.not_found(entity_id)
            if row[0] in shared.TERMINAL:
                raise EntityNotWaitingError(
                    f"entity {entity_id!r} is {row[0]}; it cannot receive message {message!r}"
                )
            cursor = conn.execute(
                "INSERT INTO messages (entity_id, message, data, sent_at) VALUES (?, ?, ?, ?)",
                (entity_id, message, data_json, now),
            )
            # A run parked on a message wait runs again now.
            conn.execute(
                "UPDATE entities SET runnable_at = ? WHERE id = ? AND parked_on = 'message'"
                " AND lease_owner IS NULL AND (runnable_at IS NULL OR runnable_at > ?)",
                (now, entity_id, now),
            )
            assert cursor.lastrowid is not None
            return MessageRecord(
                id=cursor.lastrowid,
                entity_id=entity_id,
                message=message,
                data=json.loads(data_json),
                sent_at=now,
                consumed_by=None,
            )

        return await self._db.write(write)

    async def messages(self, entity_id: str) -> list[MessageRecord]:
        shared.known_id(entity_id)

        def read(conn: sqlite3.Connection) -> list[MessageRecord]:
            rows = conn.execute(
                f"SELECT {shared.MESSAGE_COLUMNS} FROM messages WHERE entity_id = ? ORDER BY id",
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

        def write(conn: sqlite3.Connection) -> WaitRecord:
            ops.fence(conn, entity_id, owner, "wait")
            existing = ops.get_wait(conn, entity_id, index)
            if existing is not None:
                return existing
            conn.execute(
                "INSERT INTO waits (entity_id, idx, kind, prompt, data, deadline, state,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
                conn.execute(
                    "UPDATE entities SET status = ?, modified_at = ? WHERE id = ?",
                    (EntityStatus.WAITING.value, now, entity_id),
                )
                if body is not None:
                    ops.append(conn, entity_id, now, body)
            wait = ops.get_wait(conn, entity_id, index)
            assert wait is not None
            return wait

        return await self._db.write(write)

    async def take_message(
        self, entity_id: str, owner: str, index: int, *, now: float
    ) -> WaitRecord:
        self._db.check_writable()

        def write(conn: sqlite3.Connection) -> WaitRecord:
            ops.fence(conn, entity_id, owner, "message")
            wait = ops.require_wait(conn, entity_id, index)
            if (
                wait.state is not WaitState.WAITING
                or wait.kind is not WaitKind.MESSAGE
                or wait.message is not None
            ):
                return wait
            row = conn.execute(
                "SELECT id FROM messages WHERE entity_id = ? AND consumed_by IS NULL"
                " ORDER BY id LIMIT 1",
                (entity_id,),
            ).fetchone()
            if row is None:
                return wait
            conn.execute("UPDATE messages SET consumed_by = ? WHERE id = ?", (index, row[0]))
            conn.execute(
                "UPDATE waits SET state = ?, message_id = ? WHERE entity_id = ? AND idx = ?",
                (WaitState.ANSWERED.value, row[0], entity_id, index),
            )
            conn.execute(
                "UPDATE entities SET status = ?, modified_at = ? WHERE id = ?",
                (EntityStatus.IN_PROGRESS.value, now, entity_id),
            )
            return ops.require_wait(conn, entity_id, index)

        return await self._db.write(write)

    async def end_wait(
        self, entity_id: str, owner: str, index: int, state: WaitState, *, now: float
    ) -> WaitRecord:
        self._db.check_writable()
        if state is not WaitState.TIMED_OUT and state is not WaitState.ELAPSED:
            raise ValueError(f"end_wait() closes a wait as TIMED_OUT or ELAPSED, not {state!r}")

        def write(conn: sqlite3.Connection) -> WaitRecord:
            ops.fence(conn, entity_id, owner, "wait")
            wait = ops.require_wait(conn, entity_id, index)
            if wait.state is not WaitState.WAITING:
                return wait
            conn.execute(
                "UPDATE waits SET state = ? WHERE entity_id = ? AND idx = ?",
                (state.value, entity_id, index),
            )
            conn.execute(
                "UPDATE entities SET status = ?, modified_at = ? WHERE id = ?",
                (EntityStatus.IN_PROGRESS.value, now, entity_id),
            )
            return ops.require_wait(conn, entity_id, index)

        return await self._db.write(write)

    async def get_wait(self, entity_id: str, index: int) -> WaitRecord | None:
        return await self._db.read(lambda conn: ops.get_wait(conn, entity_id, index))
