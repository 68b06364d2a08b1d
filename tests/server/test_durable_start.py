"""Acknowledged work is never lost: ``sluiceway serve`` is SIGKILLed at random points right
after it answered a ``start`` or a ``campaigns/execute``-like endpoint, again and again, and
every acknowledged run completes, each side effect once per idempotency key, with no client
action. And one entity raising ``SystemExit`` does not take the server down."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from sluiceway.client import connect
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[2]
KILLS = 50
SEED = 20261207


class Server:
    """``sluiceway serve --app tests.server.durable_app:app`` in a child process."""

    def __init__(self, db: Path, ledger: Path) -> None:
        self.db, self.ledger = db, ledger
        self.process: trio.Process | None = None

    async def start(self, nursery: trio.Nursery) -> str:
        command = [
            *(sys.executable, "-m", "sluiceway", "serve", "--app", "tests.server.durable_app:app"),
            *("--db", str(self.db), "--port", "0", "--lease-seconds", "10"),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SLUICEWAY_TEST_LEDGER": str(self.ledger)}
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
        self.process = process
        assert process.stdout is not None
        line = b""
        with trio.fail_after(60):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the server exited before it listened"
                line += chunk
        return line.decode().split(" on ", 1)[1].split(" ", 1)[0]

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            return await self.process.wait()


async def has_status(client: Any, entity_id: str, status: str) -> bool:
    return bool((await client.get(entity_id))["status"] == status)


@pytest.mark.slow
async def test_every_acknowledged_run_completes_despite_sigkills(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    server = Server(tmp_path / "store.db", tmp_path / "ledger.db")
    acknowledged: dict[str, str] = {}  # entity id -> how it was started
    async with trio.open_nursery() as nursery:
        for kill in range(KILLS):
            url = await server.start(nursery)
            async with connect(url, reconnect_timeout=0) as client:
                job = await client.create("Job", {"status": "draft"}, name=f"job-{kill}")
                if kill % 2:
                    answer = await client.start(job["id"])
                    assert answer["state"] in ("started", "running", "completed")
                    acknowledged[job["id"]] = "start"
                else:
                    answer = await client.call("jobs/execute", {"job_id": job["id"]})
                    assert answer["status"] == "executing"
                    acknowledged[job["id"]] = "execute"
                # Anywhere between the answer and the run's claim (or a little after).
                await trio.sleep(rng.choice([0, 0, 0.001, 0.002, 0.005]))
            await server.kill()
        url = await server.start(nursery)  # a last server, never killed: no client action
        async with connect(url, reconnect_timeout=0) as client:
            with trio.fail_after(120):
                for entity_id in acknowledged:
                    await eventually(partial(has_status, client, entity_id, "COMPLETED"))
            executed = [await client.get(entity_id) for entity_id in acknowledged]
        assert await server.stop() == 0
    assert len(acknowledged) == KILLS
    assert all(record["data"]["status"] == "draft" for record in executed[1::2])  # started
    assert all(record["data"]["status"] == "executing" for record in executed[::2])
    keys = {record["result"]["key"] for record in executed}
    with sqlite3.connect(tmp_path / "ledger.db") as ledger:
        effects = [key for (key,) in ledger.execute("SELECT key FROM effects")]
        attempts = ledger.execute("SELECT count(*) FROM attempts").fetchone()[0]
    assert sorted(effects) == sorted(keys)  # one effect per acknowledged run, none lost
    assert attempts >= len(keys)


async def test_an_entity_raising_system_exit_fails_alone_and_the_server_goes_on(
    tmp_path: Path,
) -> None:
    server = Server(tmp_path / "store.db", tmp_path / "ledger.db")
    async with trio.open_nursery() as nursery:
        url = await server.start(nursery)
        async with connect(url, reconnect_timeout=0) as client:
            crasher = await client.create("Crasher", {}, name="crasher")
            await client.start(crasher["id"])
            with trio.fail_after(30):
                await eventually(partial(has_status, client, crasher["id"], "FAILED"))
            job = await client.create("Job", {}, name="after")
            await client.start(job["id"])
            with trio.fail_after(30):
                await eventually(partial(has_status, client, job["id"], "COMPLETED"))
            assert await client.request("ping") == {"pong": True}
            failed = await client.get(crasher["id"])
        assert server.process is not None
        assert server.process.returncode is None
        assert await server.stop() == 0  # a clean shutdown still works
        url = await server.start(nursery)  # and a clean restart: the entity is not run again
        async with connect(url, reconnect_timeout=0) as client:
            await trio.sleep(0.2)
            assert await client.get(crasher["id"]) == failed
            assert await client.request("ping") == {"pong": True}
        assert await server.stop() == 0
    error: dict[str, Any] = failed["error"]
    assert error == {"type": "SystemExit", "message": "the entity asked the process to exit"}
