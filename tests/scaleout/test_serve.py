"""``sluiceway serve`` and ``sluiceway worker`` processes on one PostgreSQL database: a
subscriber of a server that runs nothing sees, live and in order, every envelope the workers
write, with nothing missed and nothing twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from sluiceway.client import connect
from tests.scaleout.cluster import ROOT, cluster, query
from tests.scaleout.conftest import Schema
from tests.scaleout.test_failover import GLOBAL, RESULT, result, submit


async def serve(nursery: trio.Nursery, url: str) -> tuple[trio.Process, str]:
    """A ``sluiceway serve`` of the observer application on ``url``; its address."""
    command = [
        *(sys.executable, "-m", "sluiceway", "serve"),
        *("--app", "tests.scaleout.observer_app:app", "--db", url, "--port", "0"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            check=False,
            cwd=ROOT,
        )
    )
    assert process.stdout is not None
    line = b""
    with trio.fail_after(60):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            assert chunk, "the server exited before it listened"
            line += chunk
    address = line.decode().split(" on ", 1)[1].split(" ", 1)[0]
    return process, address


async def test_a_server_streams_what_workers_on_other_processes_write(
    new_schema: Callable[[], Schema], tmp_path: Path
) -> None:
    schema = new_schema()
    async with (
        cluster(schema.url, schema.dsn, tmp_path, SCALEOUT_GLOBAL=str(GLOBAL)) as group,
        trio.open_nursery() as nursery,
    ):
        server, address = await serve(nursery, schema.url)
        try:
            await group.start(2)
            root_id = await submit(schema.url)
            seen = []
            async with connect(address) as client, client.subscribe(root_id) as envelopes:
                with trio.fail_after(120):
                    async for envelope in envelopes:
                        seen.append(envelope)
                        if (
                            envelope.entity_id == root_id
                            and envelope.body().get("status") == "COMPLETED"
                        ):
                            break
            assert await result(schema.url, root_id) == RESULT
        finally:
            server.terminate()
        await group.stop()
    # Everything the subtree stored up to the root's end, in seq order, each once.
    stored = query(
        schema.dsn,
        "SELECT seq, body FROM envelopes WHERE seq <= %s ORDER BY seq",
        (seen[-1].seq,),
    )
    assert [envelope.seq for envelope in seen] == [seq for seq, _ in stored]
    assert [envelope.body() for envelope in seen] == [json.loads(body) for _, body in stored]
    # Written by the workers, not by the server: it runs nothing.
    assert len(query(schema.dsn, "SELECT DISTINCT pid FROM effects")) >= 1
