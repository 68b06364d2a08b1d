"""A global limit across worker processes on PostgreSQL: at most ``total`` sends at once in
the whole cluster (measured on the database's clock), close to the work-conserving makespan,
and the units of a killed process come back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from sluiceway import PostgresStore, open_runtime
from tests.helpers import eventually
from tests.scaleout.app import TYPES, Job
from tests.scaleout.checks import check_store, live_units, send_peak, utilization
from tests.scaleout.cluster import cluster, query
from tests.scaleout.conftest import Schema

GLOBAL, LOCAL, JOBS, WORK = 4, 10, 200, 0.02


async def submit_jobs(url: str) -> list[str]:
    """Create the jobs, then submit them all at once (a few grouped transactions), as a
    program handing a batch of work to the cluster does."""
    async with open_runtime(PostgresStore(url), TYPES, work=False) as runtime:
        ids: list[str] = []

        async def create(n: int) -> None:
            ids.append((await runtime.create(Job, {"work": WORK}, name=f"job-{n}")).id)

        async with trio.open_nursery() as nursery:
            for n in range(JOBS):
                nursery.start_soon(create, n)
        async with trio.open_nursery() as nursery:
            for entity_id in ids:
                nursery.start_soon(runtime.start, entity_id)
        return ids


async def all_done(schema: Schema) -> None:
    async def done() -> bool:
        rows = query(schema.dsn, "SELECT count(*) FROM entities WHERE status = 'COMPLETED'")
        return int(rows[0][0]) == JOBS

    with trio.fail_after(120):
        await eventually(done, interval=0.05)


def makespan(schema: Schema) -> tuple[float, float]:
    """The time from the first send's start to the last one's end, and the work-conserving
    bound: the sends' total duration over the limit (database clock)."""
    rows = query(
        schema.dsn, "SELECT started, ended FROM sends WHERE ended IS NOT NULL AND NOT fenced"
    )
    span = max(end for _, end in rows) - min(start for start, _ in rows)
    return span, sum(end - start for start, end in rows) / GLOBAL


async def test_three_processes_share_a_global_limit_of_four(
    new_schema: Callable[[], Schema], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = new_schema()
    async with cluster(
        schema.url,
        schema.dsn,
        tmp_path,
        SCALEOUT_GLOBAL=str(GLOBAL),
        SCALEOUT_LOCAL=str(LOCAL),
    ) as group:
        await group.start(3)
        await submit_jobs(schema.url)
        await all_done(schema)
        peak = send_peak(schema.dsn)
        span, bound = makespan(schema)
        profile = utilization(schema.dsn)
        processes = query(schema.dsn, "SELECT count(DISTINCT pid) FROM effects")[0][0]

        check_store(schema.dsn)
        await group.stop()
    with capsys.disabled():
        print(
            f"\nglobal limit: peak {peak} of {GLOBAL} in {processes} processes; makespan"
            f" {span:.3f} s, work-conserving bound {bound:.3f} s ({span / bound:.2f}x);"
            f" units busy per 50 ms: {' '.join(f'{busy:.1f}' for busy in profile)}"
        )
    assert peak == GLOBAL  # never more, and all of it used
    assert processes == 3
    # Measured 1.12x to 1.33x on 2 cores (3 workers, the server and this test on them): the
    # first sends start while the jobs are still being claimed and submitted, and a unit is
    # idle for a moment between one job and the next of its process (3.6 of 4 busy at steady
    # state). This bound catches units that stop moving between processes.
    assert span <= 2.0 * bound
    assert live_units(schema.dsn) == {}


async def test_a_killed_process_leaks_no_unit(
    new_schema: Callable[[], Schema], tmp_path: Path
) -> None:
    schema = new_schema()
    async with cluster(
        schema.url, schema.dsn, tmp_path, SCALEOUT_GLOBAL=str(GLOBAL), SCALEOUT_LOCAL=str(LOCAL)
    ) as group:
        first, *_ = await group.start(3)
        await submit_jobs(schema.url)

        async def busy() -> bool:
            return int(query(schema.dsn, "SELECT count(*) FROM effects")[0][0]) >= JOBS // 4

        with trio.fail_after(60):
            await eventually(busy, interval=0.01)
        first.kill()
        await first.process.wait()
        await all_done(schema)
        assert send_peak(schema.dsn) <= GLOBAL
        check_store(schema.dsn)
        # The units the killed process held were taken by the others (it never gave them
        # back): none is held by anyone alive once the others stop.
        await group.stop()
    assert live_units(schema.dsn) == {}
    rows = query(schema.dsn, "SELECT count(*) FROM entities WHERE lease_owner IS NOT NULL")
    assert rows == [(0,)]
