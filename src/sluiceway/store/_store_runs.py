"""The runs side of the entity stores: claims (one, or the claim loop's batches), submissions,
parking, leases and the ends of runs. :class:`~sluiceway.store._store.StoreOperations`
inherits it; the methods' contracts are the :class:`~sluiceway.store.EntityStore`
protocol's."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from . import _rows as shared
from . import _sql as sql
from ._json import encode_envelopes, encode_json, encode_object
from ._protocol import CrashFailure
from ._records import (
    JSON,
    ClaimBatch,
    EntityRecord,
    EntityStatus,
    NewEntity,
    ParkReason,
    UnitHold,
)
from ._sql import Tx

if TYPE_CHECKING:
    from ._store import Database


class StoreRuns:
    """Runs and leases over a :class:`~sluiceway.store._store.Database` (``_db``), for the
    runtime bound with :meth:`bind_owner` (``_owner``)."""

    _db: Database
    _owner: str | None

    def bind_owner(self, owner: str) -> None:
        if not isinstance(owner, str) or not owner:
            raise TypeError(f"bind_owner() takes a non-empty owner id, got {owner!r}")
        if self._owner is not None and self._owner != owner:
            raise RuntimeError(
                f"this {type(self).__name__} belongs to the runtime {self._owner!r} already: "
                "open one store per runtime"
            )
        self._owner = owner

    def _outside(self, tx: Tx) -> None:
        """A write from outside any run (a request being served): the bound runtime's tick
        moves (see ``bind_owner``)."""
        if self._owner is not None:
            sql.advance_tick(tx, self._owner)

    # -- runs and leases -----------------------------------------------------------------------

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
        self._db.check_writable()
        shared.check_crash_rules(crash_limit, crash_failure)
        encode_started = shared.started_encoder(started, entity_id)

        def write(tx: Tx) -> EntityRecord | None:
            if fence is not None:
                sql.fence_progress(tx, fence, owner, f"start child {entity_id!r}")
            claimed = sql.claim(
                tx,
                entity_id,
                owner,
                now=now,
                expires=expires,
                started=encode_started,
                steal_from=() if steal_from is None else (steal_from,),
                own_run=own_run,
                crash_limit=crash_limit,
                crash_failure=crash_failure,
            )
            return claimed if isinstance(claimed, EntityRecord) else None

        return await self._db.write(write)

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
        self._db.check_writable()
        shared.check_limit(limit, "claim_due()")
        shared.check_crash_rules(crash_limit, crash_failure)
        encode_started = shared.started_encoder(started, "claimed by the claim loop")
        dead = tuple(steal_from)
        kinds = None if types is None else tuple(types)

        def write(tx: Tx) -> ClaimBatch:
            claimed: list[EntityRecord] = []
            failed: list[str] = []
            waiting = False
            tick: int | None = None  # one tick for the batch: its runs started together
            # Read and locked in one statement; then one statement per claim.
            due = sql.due_rows(tx, now, limit, dead, kinds, columns=f"id, {sql.CLAIM_COLUMNS}")
            for entity_id, *row in due:
                if tick is None:
                    tick = sql.advance_tick(tx, owner)
                record = sql.claim(
                    tx,
                    entity_id,
                    owner,
                    now=now,
                    expires=expires,
                    started=encode_started,
                    steal_from=dead,
                    own_run=True,
                    crash_limit=crash_limit,
                    crash_failure=crash_failure,
                    back_off=True,
                    alone=idle and not claimed,
                    tick=tick,
                    row=row,
                )
                if isinstance(record, EntityRecord):
                    claimed.append(record)
                    if shared.is_suspect(record.abandoned, crash_limit):
                        break  # on probation: it runs alone
                elif record is shared.Refusal.CRASH_LOOP:
                    failed.append(entity_id)
                elif record is shared.Refusal.SUSPECT:
                    waiting = True
            return ClaimBatch(claimed, failed, waiting)

        return await self._db.write(write)

    async def runnable(
        self,
        *,
        now: float,
        steal_from: Sequence[str] = (),
        types: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> list[EntityRecord]:
        dead = tuple(steal_from)
        kinds = None if types is None else tuple(types)

        def read(tx: Tx) -> list[EntityRecord]:
            return [
                sql.require_entity(tx, entity_id)
                for entity_id in sql.due_ids(tx, now, limit, dead, kinds)
            ]

        return await self._db.read(read)

    async def next_due(self, *, after: float) -> float | None:
        def read(tx: Tx) -> float | None:
            row = tx.execute(
                "SELECT min(runnable_at) FROM entities WHERE runnable_at IS NOT NULL"
                " AND runnable_at > %s AND lease_owner IS NULL",
                (after,),
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self._db.read(read)

    async def lease_owners(self) -> list[str]:
        def read(tx: Tx) -> list[str]:
            rows = tx.execute(
                "SELECT DISTINCT lease_owner FROM entities WHERE lease_owner IS NOT NULL"
            )
            return [owner for (owner,) in rows]

        return await self._db.read(read)

    async def submit(
        self,
        entity_id: str,
        *,
        now: float,
        data: Mapping[str, JSON] | None = None,
        expect: Mapping[str, JSON] | None = None,
    ) -> EntityRecord:
        shared.known_id(entity_id)
        self._db.check_writable()
        patch = None
        if data is not None:
            encode_object(data, f"the data submitted with entity {entity_id!r}")
            patch = dict(data)
        if expect is not None:
            encode_object(expect, f"the data expected of entity {entity_id!r}")

        def write(tx: Tx) -> EntityRecord:
            self._outside(tx)
            record = sql.lock_entity(tx, entity_id)
            if record.status.is_terminal:
                return record
            if expect is not None:
                shared.check_expected(record, expect)
            if patch:
                merged = {**record.data, **patch}
                tx.execute(
                    "UPDATE entities SET data = %s, modified_at = %s WHERE id = %s",
                    (encode_json(merged, f"entity data of {entity_id!r}"), now, entity_id),
                )
            # Runnable now, unless it is (or is to be) running already.
            tx.execute(
                "UPDATE entities SET runnable_at = CASE"
                " WHEN lease_owner IS NOT NULL AND lease_expires > %s"
                " THEN coalesce(runnable_at, %s)"
                " WHEN runnable_at IS NULL OR runnable_at > %s THEN %s ELSE runnable_at END"
                " WHERE id = %s",
                (now, now, now, now, entity_id),
            )
            tx.notes.due = True
            return sql.require_entity(tx, entity_id)

        return await self._db.write(write)

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
        self._db.check_writable()
        if not isinstance(reason, ParkReason):
            raise TypeError(f"park() reason must be a ParkReason, got {reason!r}")
        if reason is ParkReason.TIMER and wake_at is None:
            raise ValueError("park() on a timer needs wake_at")
        body = (
            None
            if envelope is None
            else encode_object(envelope, f"the parking envelope of entity {entity_id!r}")
        )
        return await self._db.write(
            lambda tx: sql.park(
                tx, entity_id, owner, now=now, reason=reason, wake_at=wake_at, body=body
            )
        )

    async def create_and_claim(
        self,
        new: NewEntity,
        owner: str,
        *,
        now: float,
        expires: float,
        started: Mapping[str, JSON],
    ) -> tuple[EntityRecord, bool, bool]:
        self._db.check_writable()
        if not isinstance(new, NewEntity):
            raise TypeError(f"create_and_claim() takes a NewEntity, got {new!r}")
        data = encode_object(new.data, f"entity data of {new.name!r}")
        edge_data = encode_object(new.edge_data, f"edge data of {new.name!r}")
        body = encode_object(started, f"the started envelope of entity {new.name!r}")

        def write(tx: Tx) -> tuple[EntityRecord, bool, bool]:
            if new.parent_id is not None:
                sql.fence_progress(tx, new.parent_id, owner, f"create child {new.name!r}")
            existing = sql.find_entity(tx, new.parent_id, new.name)
            if existing is not None:
                return existing, False, False
            record = sql.insert_claimed(
                tx,
                new,
                data=data,
                edge_data=edge_data,
                owner=owner,
                now=now,
                expires=expires,
                body=body,
            )
            return record, True, True

        return await self._db.write(write)

    async def renew_leases(self, owner: str, *, expires: float) -> int:
        def write(tx: Tx) -> int:
            # The runtime is alive until then: the units of global limits it holds too.
            tx.execute(
                "UPDATE runtimes SET expires = %s WHERE owner = %s AND expires IS NOT NULL",
                (expires, owner),
            )
            # A run alive at a heartbeat survived its start: its crash-loop count starts again.
            cursor = tx.execute(
                "UPDATE entities SET lease_expires = %s, abandoned = 0 WHERE lease_owner = %s",
                (expires, owner),
            )
            return int(cursor.rowcount)

        return await self._db.write(write)

    async def release(
        self, entity_id: str, owner: str, *, resubmit_at: float | None = None
    ) -> bool:
        def write(tx: Tx) -> bool:
            cursor = tx.execute(
                "UPDATE entities SET lease_owner = NULL, lease_expires = NULL, abandoned = 0,"
                " runnable_at = %s WHERE id = %s AND lease_owner = %s",
                (resubmit_at, entity_id, owner),
            )
            tx.notes.due |= resubmit_at is not None
            return bool(cursor.rowcount == 1)

        return await self._db.write(write)

    async def set_status(
        self,
        entity_id: str,
        owner: str,
        status: EntityStatus,
        *,
        now: float,
        envelope: Mapping[str, JSON] | None = None,
    ) -> None:
        self._db.check_writable()
        shared.check_status_move(status)
        body = (
            None
            if envelope is None
            else encode_object(envelope, f"the envelope of entity {entity_id!r}")
        )

        def write(tx: Tx) -> None:
            sql.fence(tx, entity_id, owner, "status")
            tx.execute(
                "UPDATE entities SET status = %s, modified_at = %s WHERE id = %s",
                (status.value, now, entity_id),
            )
            if body is not None:
                sql.append(tx, entity_id, now, body)

        await self._db.write(write)

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
        self._db.check_writable()
        result_json, error_json = shared.encode_outcome(entity_id, status, result, error)
        bodies = encode_envelopes(envelopes, entity_id)

        def write(tx: Tx) -> bool:
            last = sql.bump_seq(tx, entity_id, owner, len(bodies), "finish")
            (parent_id,) = tx.execute(
                "UPDATE entities SET status = %s, result = %s, error = %s, lease_owner = NULL,"
                " lease_expires = NULL, runnable_at = NULL, parked_on = NULL,"
                " modified_at = %s WHERE id = %s RETURNING parent_id",
                (status.value, result_json, error_json, now, entity_id),
            ).fetchone()
            sql.insert_envelopes(tx, entity_id, last, now, bodies)
            return wake_parent and sql.wake_parent(tx, parent_id, now)

        return await self._db.write(write)

    async def cancel(
        self, entity_id: str, *, now: float, envelope: Mapping[str, JSON]
    ) -> list[str]:
        shared.known_id(entity_id)
        self._db.check_writable()
        body = encode_object(envelope, f"the cancel envelope of entity {entity_id!r}")

        def write(tx: Tx) -> list[str]:
            self._outside(tx)
            row = tx.execute(
                f"SELECT status, parent_id FROM entities WHERE id = %s{tx.for_update}",
                (entity_id,),
            ).fetchone()
            if row is None:
                raise shared.not_found(entity_id)
            if row[0] in shared.TERMINAL:
                return []
            parent_id = row[1]
            rows = tx.execute(
                f"""
                WITH RECURSIVE subtree (id, depth) AS (
                    SELECT CAST(%s AS TEXT), 0
                    UNION ALL
                    SELECT e.id, subtree.depth + 1
                    FROM entities AS e JOIN subtree ON e.parent_id = subtree.id
                )
                SELECT e.id FROM subtree JOIN entities AS e ON e.id = subtree.id
                WHERE e.status NOT IN (%s, %s)
                ORDER BY subtree.depth, e.created_at, e.{tx.creation_order}
                """,
                (entity_id, *shared.TERMINAL),
            ).fetchall()
            ids = []
            for (candidate,) in rows:
                # Not if it ended meanwhile (completed in another transaction).
                cursor = tx.execute(
                    "UPDATE entities SET status = %s, lease_owner = NULL, lease_expires = NULL,"
                    " runnable_at = NULL, parked_on = NULL, modified_at = %s"
                    " WHERE id = %s AND status NOT IN ('COMPLETED', 'CANCELLED')",
                    (EntityStatus.CANCELLED.value, now, candidate),
                )
                if cursor.rowcount:
                    ids.append(candidate)
                    sql.append(tx, candidate, now, body)
            sql.wake_parent(tx, parent_id, now)  # it ended, for a parent waiting on it
            tx.notes.cancelled.update(ids)
            return ids

        return await self._db.write(write)

    async def active(self) -> list[EntityRecord]:

        def read(tx: Tx) -> list[EntityRecord]:
            rows = tx.execute(
                f"SELECT {shared.ENTITY_COLUMNS_E} FROM entities AS e"
                " LEFT JOIN entities AS p ON p.id = e.parent_id"
                " WHERE e.status IN (%s, %s) AND (p.id IS NULL OR p.status NOT IN (%s, %s))"
                f" ORDER BY e.created_at, e.{tx.creation_order}",
                (*shared.ACTIVE, *shared.ACTIVE),
            )
            return [shared.entity_from_row(row) for row in rows]

        return await self._db.read(read)

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
        self._db.check_writable()
        shared.check_text_arg(limit, "hold_units() limit")
        shared.check_text_arg(owner, "hold_units() owner")
        shared.check_limit(total, "hold_units() total")
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise ValueError(f"hold_units() target must be an int >= 0, got {target!r}")
        gone = tuple(dead)
        return await self._db.write(
            lambda tx: sql.hold_units(
                tx,
                limit,
                owner,
                total=total,
                target=target,
                now=now,
                expires=expires,
                dead=gone,
            )
        )

    async def unit_holders(self, limit: str, *, now: float) -> dict[str, int]:
        shared.check_text_arg(limit, "unit_holders() limit")
        return await self._db.read(lambda tx: sql.unit_holders(tx, limit, now))
