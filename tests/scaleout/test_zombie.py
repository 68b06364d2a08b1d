"""A zombie: a worker is frozen (SIGSTOP) for three times its lease while it sends, then
resumed. The others take its runs and its units over meanwhile;
when it wakes, its stale runs stop themselves (``ctx.check_lease()``) or are refused by the
store (``LeaseLostError``), and nothing they did after waking is recorded."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.helpers import eventually
from tests.scaleout.checks import check_store, live_units, send_peak
from tests.scaleout.cluster import Worker, cluster, db_now, query
from tests.scaleout.conftest import Schema
from tests.scaleout.test_failover import GLOBAL, RESULT, result, started_at, submit

LEASE = 2.0


def in_flight(schema: Schema, worker: Worker) -> int:
    rows = query(
        schema.dsn, "SELECT count(*) FROM sends WHERE pid = %s AND ended IS NULL", (worker.pid,)
    )
    return int(rows[0][0])


@pytest.mark.slow
async def test_a_frozen_worker_wakes_up_fenced_out(
    new_schema: Callable[[], Schema], tmp_path: Path
) -> None:
    schema = new_schema()
    async with cluster(
        schema.url, schema.dsn, tmp_path, SCALEOUT_GLOBAL=str(GLOBAL), LEASE=str(LEASE)
    ) as group:
        await group.start(3)
        root_id = await submit(schema.url)

        async def sending() -> bool:
            return int(query(schema.dsn, "SELECT count(*) FROM effects")[0][0]) >= 40

        with trio.fail_after(60):
            await eventually(sending, interval=0.005)
        # The worker with the most sends under way, and the groups it runs.
        zombie = max(group.workers, key=lambda worker: in_flight(schema, worker))
        held = query(
            schema.dsn,
            "SELECT id, attempt FROM entities WHERE lease_owner = %s AND type = 'Group'",
            (zombie.owner,),
        )
        assert held
        zombie.process.send_signal(signal.SIGSTOP)
        frozen_at = trio.current_time()
        # When each group's lease ran out (database clock). A renewal already on its way
        # when the signal came may still push one later; that only makes the check below
        # weaker, never wrong.
        expires = dict(
            query(
                schema.dsn,
                "SELECT id, lease_expires FROM entities WHERE id = ANY(%s)",
                ([group_id for group_id, _ in held],),
            )
        )

        async def taken_over() -> bool:
            return all(
                started_at(schema, group_id, attempt + 1) is not None for group_id, attempt in held
            )

        # The others take its groups over once their leases expire (the zombie's process is
        # alive, so nothing but the lease tells), and its units come back. How soon depends
        # on the others' free run slots and on the machine's load, so only the order is
        # checked: never before the lease ran out.
        with trio.fail_after(60):
            await eventually(taken_over, interval=0.05)
        for group_id, attempt in held:
            again = started_at(schema, group_id, attempt + 1)
            assert again is not None
            assert again >= expires[group_id], (again, expires[group_id])
        await trio.sleep_until(frozen_at + 3 * LEASE)
        assert zombie.owner not in live_units(schema.dsn)
        stale = query(
            schema.dsn,
            "SELECT id FROM sends WHERE pid = %s AND ended IS NULL",
            (zombie.pid,),
        )
        assert stale  # it froze in the middle of sends
        zombie.process.send_signal(signal.SIGCONT)
        woke_at = db_now(schema.dsn)
        assert await result(schema.url, root_id) == RESULT
        # What the zombie was doing when it froze was not recorded after it woke: each of
        # those sends stopped itself (its lease was in doubt) or never ended.
        rows = query(
            schema.dsn,
            "SELECT fenced, ended FROM sends WHERE id = ANY(%s)",
            ([row[0] for row in stale],),
        )
        assert all(fenced or ended is None or ended < woke_at for fenced, ended in rows)
        assert any(fenced for fenced, _ in rows)  # LeaseLostError, from ctx.check_lease()
        check_store(schema.dsn)
        assert send_peak(schema.dsn) <= GLOBAL
        await group.stop()
    assert live_units(schema.dsn) == {}
    assert query(schema.dsn, "SELECT count(*) FROM entities WHERE lease_owner IS NOT NULL") == [
        (0,)
    ]
