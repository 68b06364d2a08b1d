"""``sluiceway graph``: the read-only entity store command line, on stores built by the runtime.

The tests call ``main([...])`` in-process (plain ``def`` tests: ``main`` runs trio itself) and
read what it printed with ``capsys``; one runs ``python -m sluiceway`` in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from sluiceway import (
    CapacitySource,
    EntityEnvelope,
    EntityFailedError,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    RunContext,
    RunnableEntity,
    open_runtime,
)
from sluiceway.cli import _graph, main
from sluiceway.store import EntityRecord, NewEntity, SqliteStore

# -- entity types ----------------------------------------------------------------------------------


class Item(RunnableEntity):
    """Doubles ``data["value"]``; fails if ``data["fail"]``."""

    async def run_impl(self, ctx: RunContext) -> Any:
        await ctx.status("RUNNING", f"working on {self.name}")
        if self.data.get("fail"):
            raise RuntimeError(f"{self.name} failed on purpose")
        return {"name": self.name, "value": self.data.get("value", 0) * 2}


class Job(RunnableEntity, allowed_connections={"Calls": ["Item", "Job"], "Audits": ["Item"]}):
    """Calls each child of ``data["children"]`` in order (a failed child is recorded and the
    others go on), adding an ``Audits`` edge to the children marked ``audit``."""

    async def run_impl(self, ctx: RunContext) -> Any:
        results: list[Any] = []
        for spec in self.data.get("children", []):
            child = await ctx.append_or_retrieve_call(
                spec.get("type", "Item"), spec["name"], spec.get("data", {})
            )
            if spec.get("audit"):
                await ctx.connect("Audits", child, data={"reason": "sampled"})
            try:
                results.append(await child.run())
            except EntityFailedError:
                results.append({"failed": spec["name"]})
        return results


class Batch(RunnableEntity, allowed_connections={"Calls": ["Item"]}):
    """Runs ``data["count"]`` Item children through a task pool; those in ``data["failing"]``
    fail."""

    async def run_impl(self, ctx: RunContext) -> Any:
        failing = set(self.data.get("failing", []))
        items = [
            (f"child-{i:03}", {"value": i, "fail": i in failing}) for i in range(self.data["count"])
        ]
        runner = HierarchicalTaskPoolRunner(
            "children", ctx.parallel_calls(Item, items), CapacitySource(25)
        )
        ok = failed = 0
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                if envelope.kind is EnvelopeKind.FINAL:
                    ok += 1
                elif envelope.kind is EnvelopeKind.ERROR:
                    failed += 1
        return {"ok": ok, "failed": failed}


TYPES: list[type[RunnableEntity]] = [Item, Job, Batch]

PIPELINE = {
    "children": [
        {"name": "a", "data": {"value": 1}, "audit": True},
        {"name": "b", "data": {"fail": True}},
        {
            "name": "sub",
            "type": "Job",
            "data": {"children": [{"name": "c", "data": {"value": 3}}, {"name": "d"}]},
        },
    ]
}
BATCH_SIZE = 300
BATCH_FAILING = [0, 50, 100, 150, 200, 250]

PIPELINE_TREE = """\
Job (pipeline) COMPLETED [3 children: 2 COMPLETED, 1 FAILED]
  Item (a) COMPLETED
  Item (b) FAILED
  Job (sub) COMPLETED [2 children: 2 COMPLETED]
    Item (c) COMPLETED
    Item (d) COMPLETED
"""

# -- stores ----------------------------------------------------------------------------------------


async def build_store(path: Path) -> None:
    """Roots: ``pipeline`` (a Job with a failed child and a nested Job), ``batch`` (300 children
    through a task pool, 6 failed) and ``idle`` (never run)."""
    async with open_runtime(path, TYPES) as runtime:
        pipeline = await runtime.create(Job, PIPELINE, name="pipeline")
        await runtime.run(pipeline.id)
        batch = await runtime.create(
            Batch, {"count": BATCH_SIZE, "failing": BATCH_FAILING}, name="batch"
        )
        await runtime.run(batch.id)
        await runtime.create(Item, {"value": 5}, name="idle")


def read_store(path: Path) -> dict[str, Any]:
    """What the store holds, read directly: every entity by name path ("pipeline/sub/c") and
    the full envelope log of every entity (subtree and own)."""

    async def read() -> dict[str, Any]:
        entities: dict[str, EntityRecord] = {}
        async with SqliteStore(path, read_only=True) as store:

            async def walk(record: EntityRecord, prefix: str) -> None:
                entities[prefix] = record
                for child in await store.children(record.id):
                    await walk(child, f"{prefix}/{child.name}")

            for root in ("pipeline", "batch", "idle"):
                record = await store.find_entity(None, root)
                assert record is not None
                await walk(record, root)
            logs = {}
            for key in ("pipeline", "pipeline/sub", "idle"):
                for subtree in (True, False):
                    stored = await store.read_envelopes(
                        entities[key].id, limit=100_000, subtree=subtree
                    )
                    logs[key, subtree] = [EntityEnvelope.from_stored(s).to_dict() for s in stored]
        return {"entities": entities, "logs": logs}

    return trio.run(read)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("graph") / "entities.db"
    trio.run(build_store, path)
    return path


@pytest.fixture(scope="module")
def stored(store_path: Path) -> dict[str, Any]:
    return read_store(store_path)


@pytest.fixture
def db(store_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The built store's path, with ``SLUICEWAY_DB`` unset."""
    monkeypatch.delenv("SLUICEWAY_DB", raising=False)
    return str(store_path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` and what it printed: ``(exit code, stdout, stderr)``."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The stdout of a successful ``main(argv)``."""
    code, out, err = run(capsys, *argv)
    assert (code, err) == (0, "")
    return out


def failure(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The error message of a ``main(argv)`` that fails cleanly (exit 1, nothing on stdout)."""
    code, out, err = run(capsys, *argv)
    assert (code, out) == (1, "")
    assert err.startswith("sluiceway graph: ")
    assert err.endswith("\n")
    assert err.count("\n") == 1  # one line, no traceback
    return err[len("sluiceway graph: ") : -1]


def ndjson(out: str) -> list[dict[str, Any]]:
    lines = out.splitlines()
    assert all(line == line.strip() and line.startswith("{") for line in lines)
    return [json.loads(line) for line in lines]


# -- node, io, edges -------------------------------------------------------------------------------

NODE_KEYS = [
    "id",
    "parent_id",
    "name",
    "type",
    "general_type",
    "status",
    "data",
    "result",
    "error",
    "attempt",
    "lease_owner",
    "lease_expires",
    "created_at",
    "modified_at",
    "last_entity_seq",
]


def test_node_by_root_name_and_by_id(
    capsys: pytest.CaptureFixture[str], db: str, stored: dict[str, Any]
) -> None:
    pipeline = stored["entities"]["pipeline"]
    out = ok(capsys, "graph", "--db", db, "node", "pipeline")
    assert out.count("\n") == 1  # compact: one line
    node = json.loads(out)
    assert list(node) == NODE_KEYS
    assert node == {
        "id": pipeline.id,
        "parent_id": None,
        "name": "pipeline",
        "type": "Job",
        "general_type": "Job",
        "status": "COMPLETED",
        "data": PIPELINE,
        "result": [
            {"name": "a", "value": 2},
            {"failed": "b"},
            [{"name": "c", "value": 6}, {"name": "d", "value": 0}],
        ],
        "error": None,
        "attempt": 1,
        "lease_owner": None,
        "lease_expires": None,
        "created_at": pipeline.created_at,
        "modified_at": pipeline.modified_at,
        "last_entity_seq": pipeline.last_entity_seq,
    }
    assert json.loads(ok(capsys, "graph", "--db", db, "node", pipeline.id)) == node

    c = stored["entities"]["pipeline/sub/c"]
    node = json.loads(ok(capsys, "graph", "--db", db, "node", c.id))
    assert (node["name"], node["parent_id"]) == ("c", stored["entities"]["pipeline/sub"].id)
    assert (node["status"], node["result"]) == ("COMPLETED", {"name": "c", "value": 6})


def test_node_pretty_is_indented_and_the_same_json(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    compact = ok(capsys, "graph", "--db", db, "node", "idle")
    pretty = ok(capsys, "graph", "--db", db, "node", "idle", "--pretty")
    assert pretty.startswith('{\n  "id": ')
    assert json.loads(pretty) == json.loads(compact)
    node = json.loads(compact)
    assert (node["status"], node["attempt"], node["data"]) == ("PENDING", 0, {"value": 5})


def test_io(capsys: pytest.CaptureFixture[str], db: str, stored: dict[str, Any]) -> None:
    entities = stored["entities"]
    assert json.loads(ok(capsys, "graph", "--db", db, "io", entities["pipeline/a"].id)) == {
        "input": {"value": 1},
        "output": {"name": "a", "value": 2},
        "error": None,
        "status": "COMPLETED",
    }
    assert json.loads(ok(capsys, "graph", "--db", db, "io", entities["pipeline/b"].id)) == {
        "input": {"fail": True},
        "output": None,
        "error": {"type": "RuntimeError", "message": "b failed on purpose"},
        "status": "FAILED",
    }
    out = ok(capsys, "graph", "--db", db, "io", "idle", "--pretty")
    assert out == (
        '{\n  "input": {\n    "value": 5\n  },\n  "output": null,\n  "error": null,\n'
        '  "status": "PENDING"\n}\n'
    )


def test_edges(capsys: pytest.CaptureFixture[str], db: str, stored: dict[str, Any]) -> None:
    entities = stored["entities"]
    pipeline, a = entities["pipeline"], entities["pipeline/a"]
    out = ok(capsys, "graph", "--db", db, "edges", "pipeline")
    assert out.count("\n") == 1
    edges = json.loads(out)
    assert list(edges) == ["outgoing", "incoming"]
    assert edges["incoming"] == []
    outgoing = edges["outgoing"]
    assert [list(edge) for edge in outgoing] == [
        ["id", "type", "from_id", "to_id", "position", "data", "created_at"]
    ] * 4
    names = {record.id: name for name, record in entities.items()}
    assert [
        (e["type"], e["from_id"], names[e["to_id"]], e["position"], e["data"]) for e in outgoing
    ] == [
        ("Audits", pipeline.id, "pipeline/a", 1, {"reason": "sampled"}),
        ("Calls", pipeline.id, "pipeline/a", 1, {}),
        ("Calls", pipeline.id, "pipeline/b", 2, {}),
        ("Calls", pipeline.id, "pipeline/sub", 3, {}),
    ]
    assert all(isinstance(e["id"], int) and isinstance(e["created_at"], float) for e in outgoing)

    incoming = json.loads(ok(capsys, "graph", "--db", db, "edges", a.id, "--pretty"))
    assert incoming["outgoing"] == []
    assert [(e["type"], e["from_id"], e["to_id"]) for e in incoming["incoming"]] == [
        ("Audits", pipeline.id, a.id),
        ("Calls", pipeline.id, a.id),
    ]


# -- tree ------------------------------------------------------------------------------------------


def test_tree(capsys: pytest.CaptureFixture[str], db: str, stored: dict[str, Any]) -> None:
    assert ok(capsys, "graph", "--db", db, "tree", "pipeline") == PIPELINE_TREE
    sub = stored["entities"]["pipeline/sub"]
    assert ok(capsys, "graph", "--db", db, "tree", sub.id) == (
        "Job (sub) COMPLETED [2 children: 2 COMPLETED]\n"
        "  Item (c) COMPLETED\n"
        "  Item (d) COMPLETED\n"
    )
    assert ok(capsys, "graph", "--db", db, "tree", "idle") == "Item (idle) PENDING\n"


def test_tree_depth(capsys: pytest.CaptureFixture[str], db: str) -> None:
    assert ok(capsys, "graph", "--db", db, "tree", "pipeline", "--depth", "0") == (
        "Job (pipeline) COMPLETED [3 children: 2 COMPLETED, 1 FAILED]\n"
    )
    # The last level shown still counts its children.
    assert ok(capsys, "graph", "--db", db, "tree", "pipeline", "--depth", "1") == (
        "Job (pipeline) COMPLETED [3 children: 2 COMPLETED, 1 FAILED]\n"
        "  Item (a) COMPLETED\n"
        "  Item (b) FAILED\n"
        "  Job (sub) COMPLETED [2 children: 2 COMPLETED]\n"
    )
    assert ok(capsys, "graph", "--db", db, "tree", "pipeline", "--depth", "2") == PIPELINE_TREE


def batch_line(i: int) -> str:
    status = "FAILED" if i in BATCH_FAILING else "COMPLETED"
    return f"  Item (child-{i:03}) {status}\n"


BATCH_HEADER = "Batch (batch) COMPLETED [300 children: 294 COMPLETED, 6 FAILED]\n"


def test_tree_max_children(capsys: pytest.CaptureFixture[str], db: str) -> None:
    default = ok(capsys, "graph", "--db", db, "tree", "batch")
    assert default == BATCH_HEADER + "".join(map(batch_line, range(20))) + "  ... 280 more\n"
    five = ok(capsys, "graph", "--db", db, "tree", "batch", "--max-children", "5")
    assert five == BATCH_HEADER + "".join(map(batch_line, range(5))) + "  ... 295 more\n"
    none = ok(capsys, "graph", "--db", db, "tree", "batch", "--max-children", "0")
    assert none == BATCH_HEADER + "  ... 300 more\n"
    everything = ok(capsys, "graph", "--db", db, "tree", "batch", "--max-children", "300")
    assert everything == BATCH_HEADER + "".join(map(batch_line, range(300)))
    # Under a nested parent the "more" line is indented like the children it stands for.
    assert ok(capsys, "graph", "--db", db, "tree", "pipeline", "--max-children", "1") == (
        "Job (pipeline) COMPLETED [3 children: 2 COMPLETED, 1 FAILED]\n"
        "  Item (a) COMPLETED\n"
        "  ... 2 more\n"
    )


def test_tree_ids(capsys: pytest.CaptureFixture[str], db: str, stored: dict[str, Any]) -> None:
    entities = stored["entities"]
    out = ok(capsys, "graph", "--db", db, "tree", "pipeline", "--ids")
    expected = [
        line + " " + entities[key].id
        for line, key in zip(
            PIPELINE_TREE.splitlines(),
            [
                "pipeline",
                "pipeline/a",
                "pipeline/b",
                "pipeline/sub",
                "pipeline/sub/c",
                "pipeline/sub/d",
            ],
            strict=True,
        )
    ]
    assert out.splitlines() == expected


def test_tree_of_a_10000_child_parent_loads_only_what_it_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "wide.db"

    async def build() -> None:
        async with SqliteStore(path) as store:

            async def create(entity_id: str, parent: str | None, name: str, at: float) -> None:
                await store.create_entity(
                    NewEntity(
                        id=entity_id,
                        name=name,
                        type="Task",
                        general_type="Task",
                        data={"payload": "x" * 100},
                        created_at=at,
                        parent_id=parent,
                    )
                )

            await create("root", None, "wide", 0.0)
            async with trio.open_nursery() as nursery:
                for i in range(10_000):
                    nursery.start_soon(create, f"k{i}", "root", f"kid-{i:05}", 1.0 + i)
            # Grandchildren under a kid that is printed and one that is not.
            for parent in ("k1", "k9999"):
                for j in range(3):
                    await create(f"{parent}-g{j}", parent, f"grandkid-{j}", 20_000.0 + j)

    trio.run(build)
    children_of: list[str] = []
    counted: list[str] = []
    real_children, real_count = SqliteStore.children, SqliteStore.count_children

    async def children(self: SqliteStore, parent_id: str) -> list[EntityRecord]:
        children_of.append(parent_id)
        return await real_children(self, parent_id)

    async def count_children(self: SqliteStore, parent_id: str) -> Any:
        counted.append(parent_id)
        return await real_count(self, parent_id)

    monkeypatch.setattr(SqliteStore, "children", children)
    monkeypatch.setattr(SqliteStore, "count_children", count_children)

    out = ok(capsys, "graph", "--db", str(path), "tree", "wide", "--max-children", "3")
    assert out == (
        "Task (wide) PENDING [10000 children: 10000 PENDING]\n"
        "  Task (kid-00000) PENDING\n"
        "  Task (kid-00001) PENDING [3 children: 3 PENDING]\n"
        "    Task (grandkid-0) PENDING\n"
        "    Task (grandkid-1) PENDING\n"
        "    Task (grandkid-2) PENDING\n"
        "  Task (kid-00002) PENDING\n"
        "  ... 9997 more\n"
    )
    # Children are loaded only for the entities whose children are printed, and counted only
    # for the entities printed.
    assert children_of == ["root", "k1"]
    assert counted == ["root", "k0", "k1", "k1-g0", "k1-g1", "k1-g2", "k2"]

    children_of.clear()
    assert ok(capsys, "graph", "--db", str(path), "tree", "wide", "--max-children", "0") == (
        "Task (wide) PENDING [10000 children: 10000 PENDING]\n  ... 10000 more\n"
    )
    assert children_of == []


# -- progress --------------------------------------------------------------------------------------


def test_progress_is_the_subtree_log_as_ndjson(
    capsys: pytest.CaptureFixture[str], db: str, stored: dict[str, Any]
) -> None:
    out = ok(capsys, "graph", "--db", db, "progress", "pipeline")
    envelopes = ndjson(out)
    assert envelopes == stored["logs"]["pipeline", True]
    assert {e["entity_name"] for e in envelopes} == {"pipeline", "a", "b", "sub", "c", "d"}
    seqs = [e["seq"] for e in envelopes]
    assert seqs == sorted(set(seqs))
    assert [(e["entity_name"], e["type"], e.get("status")) for e in envelopes[:3]] == [
        ("pipeline", "STATUS", "STARTED"),
        ("a", "STATUS", "STARTED"),
        ("a", "STATUS", "RUNNING"),
    ]
    errors = [e for e in envelopes if e["type"] == "ERROR"]
    assert [(e["entity_name"], e["error"]) for e in errors] == [
        ("b", {"type": "RuntimeError", "message": "b failed on purpose"})
    ]
    sub = stored["entities"]["pipeline/sub"]
    assert (
        ndjson(ok(capsys, "graph", "--db", db, "progress", sub.id))
        == stored["logs"]["pipeline/sub", True]
    )


def test_progress_own(capsys: pytest.CaptureFixture[str], db: str, stored: dict[str, Any]) -> None:
    own = ndjson(ok(capsys, "graph", "--db", db, "progress", "pipeline", "--own"))
    assert own == stored["logs"]["pipeline", False]
    assert {e["entity_name"] for e in own} == {"pipeline"}
    assert [e["entity_seq"] for e in own] == list(range(1, len(own) + 1))
    assert [(e["type"], e.get("status")) for e in own] == [
        ("STATUS", "STARTED"),
        ("VALUE", None),
        ("STATUS", "COMPLETED"),
    ]
    assert ok(capsys, "graph", "--db", db, "progress", "idle", "--own") == ""


def test_progress_pages_with_after_and_limit(
    capsys: pytest.CaptureFixture[str], db: str, stored: dict[str, Any]
) -> None:
    full = stored["logs"]["pipeline", True]
    assert len(full) > 12
    pages: list[list[dict[str, Any]]] = []
    after = 0
    while True:
        page = ndjson(
            ok(
                capsys,
                "graph",
                "--db",
                db,
                "progress",
                "pipeline",
                "--after",
                str(after),
                "--limit",
                "5",
            )
        )
        if not page:
            break
        assert len(page) <= 5
        pages.append(page)
        after = page[-1]["seq"]
    assert [len(page) for page in pages[:-1]] == [5] * (len(pages) - 1)
    assert [e for page in pages for e in page] == full

    middle = full[6]["seq"]
    assert ndjson(
        ok(capsys, "graph", "--db", db, "progress", "pipeline", "--after", str(middle))
    ) == [e for e in full if e["seq"] > middle]
    last = full[-1]["seq"]
    assert ok(capsys, "graph", "--db", db, "progress", "pipeline", "--after", str(last)) == ""
    assert ok(capsys, "graph", "--db", db, "progress", "pipeline", "--limit", "0") == ""


def test_progress_reads_the_log_in_pages(
    capsys: pytest.CaptureFixture[str],
    db: str,
    stored: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[tuple[int, int]] = []
    real = SqliteStore.read_envelopes

    async def read_envelopes(self: SqliteStore, entity_id: str, **kwargs: Any) -> Any:
        reads.append((kwargs["after_seq"], kwargs["limit"]))
        return await real(self, entity_id, **kwargs)

    monkeypatch.setattr(SqliteStore, "read_envelopes", read_envelopes)
    monkeypatch.setattr(_graph, "PAGE_SIZE", 7)
    full = stored["logs"]["pipeline", True]
    assert ndjson(ok(capsys, "graph", "--db", db, "progress", "pipeline")) == full
    assert all(limit == 7 for _, limit in reads)
    assert len(reads) == len(full) // 7 + 1
    assert [after for after, _ in reads] == [0] + [
        full[i * 7 - 1]["seq"] for i in range(1, len(reads))
    ]

    reads.clear()
    assert (
        ndjson(ok(capsys, "graph", "--db", db, "progress", "pipeline", "--limit", "10"))
        == full[:10]
    )
    assert [limit for _, limit in reads] == [7, 3]


def test_progress_of_a_large_subtree(capsys: pytest.CaptureFixture[str], db: str) -> None:
    envelopes = ndjson(ok(capsys, "graph", "--db", db, "progress", "batch"))
    assert len(envelopes) > _graph.PAGE_SIZE  # more than one page
    seqs = [e["seq"] for e in envelopes]
    assert seqs == sorted(set(seqs))
    finished = [
        e for e in envelopes if e["type"] == "STATUS" and e["status"] in ("COMPLETED", "FAILED")
    ]
    assert len(finished) == BATCH_SIZE + 1
    assert sum(e["status"] == "FAILED" for e in finished) == len(BATCH_FAILING)


# -- the store and the entity ----------------------------------------------------------------------


def test_the_store_comes_from_sluiceway_db(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICEWAY_DB", db)
    assert ok(capsys, "graph", "tree", "pipeline") == PIPELINE_TREE
    # --db wins over the environment, before or after the subcommand.
    monkeypatch.setenv("SLUICEWAY_DB", str(tmp_path / "missing.db"))
    assert ok(capsys, "graph", "--db", db, "tree", "pipeline") == PIPELINE_TREE
    assert ok(capsys, "graph", "tree", "pipeline", "--db", db) == PIPELINE_TREE
    assert "the file does not exist" in failure(capsys, "graph", "tree", "pipeline")


def test_no_store_is_a_usage_error(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, out, err = run(capsys, "graph", "tree", "pipeline")
    assert (code, out) == (2, "")
    assert err.startswith("usage: sluiceway graph ")
    assert err.endswith(
        "sluiceway graph: error: no entity store given: pass --db PATH|URL or set SLUICEWAY_DB\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["graph"],
        ["graph", "--db", "x.db"],
        ["graph", "--db", "x.db", "tree"],
        ["graph", "--db", "x.db", "walk", "pipeline"],
        ["graph", "--db", "x.db", "tree", "pipeline", "--depth", "-1"],
        ["graph", "--db", "x.db", "tree", "pipeline", "--max-children", "many"],
        ["graph", "--db", "x.db", "progress", "pipeline", "--after", "1.5"],
        ["graph", "--db", "x.db", "node", "pipeline", "--depth", "1"],
        ["serve"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("usage: sluiceway")
    assert "error: " in err
    assert "Traceback" not in err


def test_an_unknown_entity(
    capsys: pytest.CaptureFixture[str], db: str, stored: dict[str, Any]
) -> None:
    for command in ("node", "edges", "tree", "progress", "io"):
        assert failure(capsys, "graph", "--db", db, command, "nope") == (
            f"no entity has the id or root name 'nope' in {db}"
        )
    # A child is found by its id, not by its name (names are unique only under a parent).
    assert failure(capsys, "graph", "--db", db, "node", "a") == (
        f"no entity has the id or root name 'a' in {db}"
    )


def test_a_missing_database_is_not_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "missing.db"
    assert failure(capsys, "graph", "--db", str(path), "tree", "root") == (
        f"no entity store at {str(path)!r}: the file does not exist"
    )
    assert list(tmp_path.iterdir()) == []
    missing_dir = tmp_path / "nowhere" / "entities.db"
    assert "the file does not exist" in failure(
        capsys, "graph", "--db", str(missing_dir), "node", "x"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert failure(capsys, "graph", "--db", str(tmp_path), "tree", "x") == (
        f"{str(tmp_path)!r} is a directory, not an entity store"
    )


def test_a_foreign_sqlite_database(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE people (name TEXT)")
    conn.close()
    assert failure(capsys, "graph", "--db", str(path), "node", "x") == (
        f"{str(path)!r} is not a sluiceway entity store (it is an SQLite database that "
        "something else wrote)"
    )
    empty = tmp_path / "empty.db"
    empty.touch()
    assert failure(capsys, "graph", "--db", str(empty), "node", "x") == (
        f"{str(empty)!r} is not a sluiceway entity store (it is an empty database)"
    )


def test_a_file_that_is_not_sqlite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not the entities you are looking for\n" * 200)
    before = path.read_bytes()
    assert failure(capsys, "graph", "--db", str(path), "tree", "x") == (
        f"{str(path)!r} is not an SQLite database, so not a sluiceway entity store"
    )
    assert path.read_bytes() == before


def test_a_store_from_a_newer_sluiceway(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "newer.db"

    async def create() -> None:
        async with SqliteStore(path):
            pass

    trio.run(create)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    message = failure(capsys, "graph", "--db", str(path), "node", "x")
    assert message.startswith(f"the entity store {str(path)!r} was written by a newer sluiceway")
    assert "schema version 99" in message


def test_the_store_is_never_written(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, stored: dict[str, Any], store_path: Path
) -> None:
    path = tmp_path / "copy.db"
    path.write_bytes(store_path.read_bytes())

    before = hashlib.sha256(path.read_bytes()).hexdigest()
    a = stored["entities"]["pipeline/a"].id
    for argv in (
        ["node", "pipeline"],
        ["edges", a],
        ["io", a],
        ["tree", "batch"],
        ["progress", "pipeline"],
        ["node", "missing"],
    ):
        main(["graph", "--db", str(path), *argv])
    capsys.readouterr()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    # Reading a WAL database leaves its (empty) write-ahead log and shared-memory index
    # behind; nothing was written to the log.
    wal = tmp_path / "copy.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    os.chmod(path, 0o444)  # a store the user may only read
    try:
        assert ok(capsys, "graph", "--db", str(path), "tree", "pipeline") == PIPELINE_TREE
    finally:
        os.chmod(path, 0o644)


# -- the command line as a program ----------------------------------------------------------------


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: sluiceway ")
    assert "graph     inspect the entities of an entity store (read-only)" in out
    code, out, err = run(capsys, "graph", "--help")
    assert (code, err) == (0, "")
    assert out.startswith(
        "usage: sluiceway graph [-h] [--db PATH|URL] <command> <entity> [options]\n"
    )
    for command in ("node", "edges", "tree", "progress", "io"):
        assert f"\n    {command} " in out
    assert "$SLUICEWAY_DB" in out
    code, out, err = run(capsys, "graph", "tree", "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: sluiceway graph tree ")
    assert "--max-children N" in out


def test_a_closed_stdout_ends_quietly(
    capsys: pytest.CaptureFixture[str], db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["graph", "--db", db, "progress", "batch"]) == 141
    monkeypatch.undo()
    assert capsys.readouterr() == ("", "")


def python_m_sluiceway(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    env = {key: value for key, value in os.environ.items() if key != "SLUICEWAY_DB"}
    return subprocess.run(
        [sys.executable, "-m", "sluiceway", *argv], env=env, timeout=60, check=False, **kwargs
    )


def test_python_m_sluiceway(store_path: Path) -> None:
    done = python_m_sluiceway(
        "graph", "--db", str(store_path), "tree", "pipeline", capture_output=True
    )
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout.decode() == PIPELINE_TREE

    done = python_m_sluiceway("graph", "--db", str(store_path), "node", "nope", capture_output=True)
    assert (done.returncode, done.stdout) == (1, b"")
    assert done.stderr.decode() == (
        f"sluiceway graph: no entity has the id or root name 'nope' in {store_path}\n"
    )


def test_python_m_sluiceway_into_a_closed_pipe(store_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has already exited
    try:
        done = python_m_sluiceway(
            "graph",
            "--db",
            str(store_path),
            "progress",
            "batch",
            stdout=write_end,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, b"")
