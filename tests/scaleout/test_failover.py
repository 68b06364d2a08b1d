"""Failover: worker processes on one PostgreSQL database share a fan-out under a global
limit; the worker holding the root's lease is SIGKILLed mid-way (again and again), and the
others finish it, each effect happening once."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from sluiceway import PostgresStore, open_runtime
from tests.helpers import eventually
from tests.scaleout.app import TYPES, Fanout
from tests.scaleout.checks import check_store, live_units, send_peak
from tests.scaleout.cluster import Cluster, cluster, db_now, query
from tests.scaleout.conftest import Schema

LEASE = 3.0
POLL = 0.5  # the workers' claim interval (poll_interval)
GLOBAL = 5
GROUPS, RECIPIENTS, WORK = 4, 50, 0.08
RESULT = {"sent": GROUPS * RECIPIENTS, "groups": GROUPS}
#: Trials and kills per trial: at least 20 kill points in all.
TRIALS = int(os.environ.get("SLUICEWAY_FAILOVER_TRIALS", "8"))
KILLS = 3


async def submit(url: str) -> str:
    async with open_runtime(PostgresStore(url), TYPES, work=False) as runtime:
        root = await runtime.create(
            Fanout, {"groups": GROUPS, "recipients": RECIPIENTS, "work": WORK}, name="fanout"
        )
        await runtime.start(root.id)
        return root.id


async def result(url: str, root_id: str) -> Any:
    async with open_runtime(PostgresStore(url), TYPES, work=False, poll_interval=0.1) as runtime:
        with trio.fail_after(120):
            return await runtime.wait(root_id)


def sent(schema: Schema) -> int:
    return int(query(schema.dsn, "SELECT count(*) FROM effects")[0][0])


def started_at(schema: Schema, root_id: str, attempt: int) -> float | None:
    """When (database clock) the root's attempt ``attempt`` started, if it did."""
    rows = query(
        schema.dsn,
        "SELECT ts, body FROM envelopes WHERE entity_id = %s ORDER BY seq",
        (root_id,),
    )
    for ts, body in rows:
        data = json.loads(body)
        if data.get("status") == "STARTED" and data["metadata"]["attempt"] == attempt:
            return float(ts)
    return None


async def kill_root_holder(group: Cluster, schema: Schema, root_id: str) -> float | None:
    """SIGKILL the worker holding the root's lease, start a new worker in its place, and
    return how long (database clock) until another worker started the root again; None if
    the root had ended."""
    holder = None
    with trio.fail_after(30):
        while holder is None:
            ((status, attempt),) = query(
                schema.dsn, "SELECT status, attempt FROM entities WHERE id = %s", (root_id,)
            )
            if status == "COMPLETED":
                return None
            holder = group.holder(root_id)
            if holder is None:
                await trio.sleep(0.01)
    killed_at = db_now(schema.dsn)
    holder.kill()
    await holder.process.wait()
    replacement = (await group.start(1))[0]
    assert replacement.owner

    async def taken_over() -> bool:
        return (
            started_at(schema, root_id, attempt + 1) is not None
            or query(schema.dsn, "SELECT status FROM entities WHERE id = %s", (root_id,))[0][0]
            == "COMPLETED"
        )

    with trio.fail_after(30):
        await eventually(taken_over, interval=0.02)
    again = started_at(schema, root_id, attempt + 1)
    return None if again is None else again - killed_at


async def finish(group: Cluster, schema: Schema, root_id: str) -> dict[str, int]:
    assert await result(schema.url, root_id) == RESULT
    counts = check_store(schema.dsn)
    assert send_peak(schema.dsn) <= GLOBAL
    await group.stop()
    # Every live worker gave its leases and units back when it stopped; the killed ones'
    # units are not held by anyone alive.
    assert query(schema.dsn, "SELECT count(*) FROM entities WHERE lease_owner IS NOT NULL") == [
        (0,)
    ]
    assert live_units(schema.dsn) == {}
    return counts


async def test_an_uninterrupted_run_across_three_workers(
    new_schema: Callable[[], Schema], tmp_path: Path
) -> None:
    schema = new_schema()
    # Two runs at a time per worker: whichever runs the root cannot take all four groups as
    # well, however slowly the others start on a loaded machine.
    async with cluster(
        schema.url, schema.dsn, tmp_path, SCALEOUT_GLOBAL=str(GLOBAL), MAX_RUNS="2"
    ) as group:
        await group.start(3)
        root_id = await submit(schema.url)
        counts = await finish(group, schema, root_id)
    assert counts["attempts"] == counts["entities"]  # nothing ran twice
    # The groups were spread: more than one process sent.
    assert len(query(schema.dsn, "SELECT DISTINCT pid FROM effects")) >= 2


@pytest.mark.slow
async def test_the_root_holder_killed_again_and_again(
    new_schema: Callable[[], Schema], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(20261207)
    takeovers: list[float] = []
    for trial in range(TRIALS):
        schema = new_schema()
        trial_path = tmp_path / f"trial-{trial}"
        trial_path.mkdir()
        async with cluster(
            schema.url, schema.dsn, trial_path, SCALEOUT_GLOBAL=str(GLOBAL), LEASE=str(LEASE)
        ) as group:
            await group.start(3)
            root_id = await submit(schema.url)
            for threshold in sorted(rng.sample(range(60, 170), KILLS)):

                async def reached(threshold: int = threshold, schema: Schema = schema) -> bool:
                    return sent(schema) >= threshold

                with trio.fail_after(60):
                    await eventually(reached, interval=0.01)
                took = await kill_root_holder(group, schema, root_id)
                if took is not None:
                    takeovers.append(took)
                    assert took <= LEASE + 2 * POLL
            await finish(group, schema, root_id)
    with capsys.disabled():
        print(
            f"\nfailover: {len(takeovers)} kills of the root's holder over {TRIALS} trials;"
            f" takeover (kill -> the root started again) max {max(takeovers):.2f} s,"
            f" median {sorted(takeovers)[len(takeovers) // 2]:.2f} s (lease {LEASE:g} s)"
        )
    assert len(takeovers) >= (20 if TRIALS >= 8 else TRIALS)
