"""``sluiceway graph --db postgresql://...``: every command reads a PostgreSQL store as it
reads a SQLite file (the store built by the same runs, on the session's test server)."""

from __future__ import annotations

import json

import pytest
import trio

from sluiceway import PostgresStore, open_runtime
from sluiceway.demos._pgserver import schema_url
from tests.cli.test_graph_cli import (
    BATCH_SIZE,
    PIPELINE,
    PIPELINE_TREE,
    TYPES,
    Batch,
    Item,
    Job,
    failure,
    ok,
)
from tests.pg_server import schema_dsn


async def build(dsn: str) -> None:
    async with open_runtime(PostgresStore(dsn), TYPES) as runtime:
        pipeline = await runtime.create(Job, PIPELINE, name="pipeline")
        await runtime.run(pipeline.id)
        batch = await runtime.create(Batch, {"count": BATCH_SIZE, "failing": [3]}, name="batch")
        await runtime.run(batch.id)
        await runtime.create(Item, {"value": 5}, name="idle")


@pytest.fixture
def url(pg_dsn: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("SLUICEWAY_DB", raising=False)
    trio.run(build, schema_dsn(pg_dsn, pg_schema))
    return schema_url(pg_dsn, pg_schema)


def test_every_command_reads_a_postgres_store(capsys: pytest.CaptureFixture[str], url: str) -> None:
    assert ok(capsys, "graph", "--db", url, "tree", "pipeline") == PIPELINE_TREE
    assert json.loads(ok(capsys, "graph", "--db", url, "node", "pipeline"))["status"] == (
        "COMPLETED"
    )
    edges = json.loads(ok(capsys, "graph", "--db", url, "edges", "pipeline"))
    assert {edge["type"] for edge in edges["outgoing"]} == {"Calls", "Audits"}
    progress = ok(capsys, "graph", "--db", url, "progress", "batch", "--limit", "100000")
    statuses = [json.loads(line).get("status") for line in progress.splitlines()]
    assert statuses.count("FAILED") == 1
    assert statuses.count("COMPLETED") == BATCH_SIZE  # the children that did, and the batch
    io = json.loads(ok(capsys, "graph", "--db", url, "io", "idle"))
    assert io == {"input": {"value": 5}, "output": None, "error": None, "status": "PENDING"}
    assert "no entity" in failure(capsys, "graph", "--db", url, "node", "nowhere")
