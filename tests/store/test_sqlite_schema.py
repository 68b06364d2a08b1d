"""SqliteStore: opening, schema versions and migrations, read-only mode, lifetime and arguments."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import trio

from sluiceway._errors import StoreError, StoreSchemaError
from sluiceway.store import EntityStatus, EntityStore, SqliteStore, SqliteStoreStatistics
from sluiceway.store import _sqlite_schema as sqlite_module
from tests.store.helpers import assert_integrity, new, raw_query

TABLES = {
    "meta",
    "entities",
    "edges",
    "envelopes",
    "messages",
    "waits",
    "runtimes",
    "capacity_units",
    "capacity_wants",
}


#: The schema version this sluiceway writes, and the next two (for migrations added in tests).
LATEST = len(sqlite_module.MIGRATIONS)
NEXT, AFTER = LATEST + 1, LATEST + 2


def tables(path: Path) -> set[str]:
    rows = raw_query(path, "SELECT name FROM sqlite_master WHERE type = 'table'")
    return {name for (name,) in rows} - {"sqlite_sequence"}


# -- creating and reopening --------------------------------------------------------------------


async def test_a_new_file_gets_the_schema(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        assert isinstance(store, EntityStore)
        assert store.path == str(db_path)
        assert repr(store) == f"<SqliteStore {str(db_path)!r} open>"
    assert tables(db_path) == TABLES
    assert raw_query(db_path, "PRAGMA user_version") == [(LATEST,)]
    assert raw_query(db_path, "SELECT key, value FROM meta") == [
        ("application", "sluiceway-entity-store")
    ]
    assert raw_query(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert_integrity(db_path)


async def test_an_empty_file_gets_the_schema(db_path: Path) -> None:
    await trio.Path(db_path).touch()
    async with SqliteStore(db_path):
        pass
    assert tables(db_path) == TABLES


async def test_reopening_keeps_everything(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        await store.create_entity(new("root", data={"n": 1}))
        await store.claim("root", "a", now=1.0, expires=5.0, started={"kind": "STARTED"})
    async with SqliteStore(str(db_path)) as store:
        record = await store.get_entity("root")
        assert record.data == {"n": 1}
        assert record.status is EntityStatus.IN_PROGRESS
        assert [e.body for e in await store.read_envelopes("root")] == [{"kind": "STARTED"}]
    assert raw_query(db_path, "PRAGMA user_version") == [(LATEST,)]


async def test_pending_migrations_run_in_order_on_open(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SqliteStore(db_path) as store:
        await store.create_entity(new("root"))
    monkeypatch.setattr(
        sqlite_module,
        "MIGRATIONS",
        [
            *sqlite_module.MIGRATIONS,
            (NEXT, ["CREATE TABLE extra (x INTEGER)", "INSERT INTO extra VALUES (2)"]),
            (AFTER, ["ALTER TABLE extra ADD COLUMN y TEXT", "UPDATE extra SET y = 'three'"]),
        ],
    )
    async with SqliteStore(db_path) as store:
        assert (await store.get_entity("root")).name == "root"
    assert raw_query(db_path, "PRAGMA user_version") == [(AFTER,)]
    assert raw_query(db_path, "SELECT x, y FROM extra") == [(2, "three")]
    # Opening again applies nothing twice.
    async with SqliteStore(db_path):
        pass
    assert raw_query(db_path, "SELECT x, y FROM extra") == [(2, "three")]
    assert_integrity(db_path)


async def test_a_new_store_runs_every_migration(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        sqlite_module, "MIGRATIONS", [*sqlite_module.MIGRATIONS, (NEXT, ["CREATE TABLE extra (x)"])]
    )
    async with SqliteStore(db_path):
        pass
    assert raw_query(db_path, "PRAGMA user_version") == [(NEXT,)]
    assert tables(db_path) == TABLES | {"extra"}


async def test_a_failing_migration_changes_nothing(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SqliteStore(db_path):
        pass
    monkeypatch.setattr(
        sqlite_module,
        "MIGRATIONS",
        [*sqlite_module.MIGRATIONS, (NEXT, ["CREATE TABLE extra (x)", "THIS IS NOT SQL"])],
    )
    with pytest.raises(StoreError, match="cannot open the entity store") as caught:
        async with SqliteStore(db_path):
            pass  # pragma: no cover
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    assert raw_query(db_path, "PRAGMA user_version") == [(LATEST,)]
    assert "extra" not in tables(db_path)


async def test_migrations_must_be_numbered_in_order(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", [*sqlite_module.MIGRATIONS, (AFTER, [])])
    with pytest.raises(RuntimeError, match="numbered 1, 2, 3"):
        async with SqliteStore(db_path):
            pass  # pragma: no cover


# -- what is not ours --------------------------------------------------------------------------


async def test_a_store_from_a_newer_sluiceway_is_refused(db_path: Path) -> None:
    async with SqliteStore(db_path):
        pass
    raw_query(db_path, "PRAGMA user_version = 7")
    for read_only in (False, True):
        with pytest.raises(StoreSchemaError, match="newer sluiceway") as caught:
            async with SqliteStore(db_path, read_only=read_only):
                pass  # pragma: no cover
        assert "version 7" in str(caught.value)
    assert raw_query(db_path, "PRAGMA user_version") == [(7,)]


@pytest.mark.parametrize(
    "statements",
    [
        ["CREATE TABLE accounts (id INTEGER PRIMARY KEY)"],
        ["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)", "PRAGMA user_version = 1"],
        [
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
            "INSERT INTO meta VALUES ('application', 'someone-else')",
            "PRAGMA user_version = 1",
        ],
        ["PRAGMA user_version = 3"],
    ],
    ids=["other-tables", "meta-without-application", "other-application", "version-only"],
)
async def test_a_foreign_database_is_refused(db_path: Path, statements: list[str]) -> None:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    before = raw_query(db_path, "SELECT name FROM sqlite_master")
    for read_only in (False, True):
        with pytest.raises(StoreSchemaError, match="is not a sluiceway entity store") as caught:
            async with SqliteStore(db_path, read_only=read_only):
                pass  # pragma: no cover
        assert str(db_path) in str(caught.value)
    assert raw_query(db_path, "SELECT name FROM sqlite_master") == before


async def test_a_file_that_is_not_sqlite_is_refused(db_path: Path) -> None:
    content = b"these are my holiday notes, not a database\n" * 100
    await trio.Path(db_path).write_bytes(content)
    for read_only in (False, True):
        with pytest.raises(StoreSchemaError, match="not an SQLite database") as caught:
            async with SqliteStore(db_path, read_only=read_only):
                pass  # pragma: no cover
        assert str(db_path) in str(caught.value)
        assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    assert await trio.Path(db_path).read_bytes() == content


async def test_a_missing_directory_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "entities.db"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        async with SqliteStore(path):
            pass  # pragma: no cover


async def test_an_old_sqlite_is_refused(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(RuntimeError, match=r"needs SQLite 3\.35\.0 or newer.*3\.31\.1"):
        async with SqliteStore(db_path):
            pass  # pragma: no cover
    assert not await trio.Path(db_path).exists()


# -- read-only -----------------------------------------------------------------------------------


async def test_read_only_on_a_missing_file_raises_file_not_found(db_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"entities\.db") as caught:
        async with SqliteStore(db_path, read_only=True):
            pass  # pragma: no cover
    assert caught.value.filename == str(db_path)
    assert not await trio.Path(db_path).exists()


async def test_read_only_on_an_empty_database_is_refused(db_path: Path) -> None:
    await trio.Path(db_path).touch()
    with pytest.raises(StoreSchemaError, match="empty database"):
        async with SqliteStore(db_path, read_only=True):
            pass  # pragma: no cover
    assert await trio.Path(db_path).read_bytes() == b""


async def test_read_only_reads_and_refuses_writes(db_path: Path) -> None:
    async with SqliteStore(db_path) as writer:
        await writer.create_entity(new("root", data={"k": "v"}))
        await writer.create_entity(new("child", parent="root"))
    async with SqliteStore(db_path, read_only=True) as store:
        assert store.read_only
        assert "read-only" in repr(store)
        assert (await store.get_entity("root")).data == {"k": "v"}
        assert [c.id for c in await store.children("root")] == ["child"]
        assert await store.last_seq() == 0
        refused = [
            store.create_entity(new("other")),
            store.update_data("root", None, {"x": 1}, now=2.0),
            store.claim("root", "a", now=1.0, expires=2.0, started={}),
            store.renew_leases("a", expires=3.0),
            store.release("root", "a"),
            store.cancel("root", now=1.0, envelope={}),
            store.add_edge("root", "child", "Uses", now=1.0),
            store.send_message("root", "hello", None, now=1.0),
            store.append_envelopes("a", [("root", 1.0, {})]),
        ]
        for call in refused:
            with pytest.raises(RuntimeError, match="opened read-only"):
                await call
        assert store.statistics().writes == 0
    assert raw_query(db_path, "SELECT id FROM entities ORDER BY id") == [("child",), ("root",)]


async def test_read_only_follows_a_writer_in_another_store(db_path: Path) -> None:
    async with SqliteStore(db_path) as writer:
        await writer.create_entity(new("root"))
        async with SqliteStore(db_path, read_only=True) as reader:
            assert await reader.find_entity(None, "later") is None
            await writer.create_entity(new("later"))
            assert (await reader.find_entity(None, "later")) is not None


async def test_read_only_refuses_a_store_that_needs_migrating(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SqliteStore(db_path):
        pass
    monkeypatch.setattr(
        sqlite_module, "MIGRATIONS", [*sqlite_module.MIGRATIONS, (NEXT, ["CREATE TABLE extra (x)"])]
    )
    with pytest.raises(StoreSchemaError, match=f"needs migrating to version {NEXT}"):
        async with SqliteStore(db_path, read_only=True):
            pass  # pragma: no cover
    assert raw_query(db_path, "PRAGMA user_version") == [(LATEST,)]


# -- lifetime ------------------------------------------------------------------------------------


async def test_methods_need_the_store_open(db_path: Path) -> None:
    store = SqliteStore(db_path)
    with pytest.raises(RuntimeError, match="is not open; use it inside `async with"):
        await store.get_entity("x")
    with pytest.raises(RuntimeError, match="is not open; use it inside `async with"):
        await store.create_entity(new("x"))
    async with store:
        await store.create_entity(new("x"))
    with pytest.raises(RuntimeError, match="is closed; use it inside `async with"):
        await store.get_entity("x")
    with pytest.raises(RuntimeError, match="is closed; use it inside `async with"):
        await store.renew_leases("a", expires=1.0)
    assert repr(store).endswith("closed>")


async def test_a_store_is_entered_once(db_path: Path) -> None:
    store = SqliteStore(db_path)
    async with store:
        with pytest.raises(RuntimeError, match="entered only once"):
            await store.__aenter__()
        await store.create_entity(new("x"))
    with pytest.raises(RuntimeError, match="entered only once"):
        await store.__aenter__()


async def test_a_store_that_failed_to_open_cannot_be_used(db_path: Path) -> None:
    await trio.Path(db_path).write_bytes(b"x" * 4096)
    store = SqliteStore(db_path)
    with pytest.raises(StoreSchemaError):
        await store.__aenter__()
    with pytest.raises(RuntimeError, match="is closed"):
        await store.get_entity("x")


async def test_an_error_in_the_block_propagates_and_writes_are_kept(db_path: Path) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with SqliteStore(db_path) as store:
            await store.create_entity(new("x"))
            raise Boom
    assert raw_query(db_path, "SELECT id FROM entities") == [("x",)]
    assert_integrity(db_path)


async def test_cancelled_while_opening_leaves_nothing_open(db_path: Path) -> None:
    store = SqliteStore(db_path)
    with trio.move_on_after(0):
        async with store:
            await store.create_entity(new("x"))  # pragma: no cover
    with pytest.raises(RuntimeError, match="is closed"):
        await store.get_entity("x")
    async with SqliteStore(db_path) as store:
        assert await store.find_entity(None, "x") is None


async def test_a_cancelled_block_still_closes_cleanly(db_path: Path) -> None:
    with trio.CancelScope() as scope:
        async with SqliteStore(db_path) as store:
            await store.create_entity(new("x"))
            scope.cancel()
            await store.create_entity(new("y"))  # cancelled before it is queued
    assert scope.cancelled_caught
    assert raw_query(db_path, "SELECT id FROM entities") == [("x",)]
    assert_integrity(db_path)


async def test_statistics_start_at_zero(db_path: Path) -> None:
    store = SqliteStore(db_path)
    assert store.statistics() == SqliteStoreStatistics(
        writes=0, batches=0, largest_batch=0, reads=0
    )
    async with store:
        await store.create_entity(new("x"))
        await store.get_entity("x")
    assert store.statistics() == SqliteStoreStatistics(
        writes=1, batches=1, largest_batch=1, reads=1
    )


# -- arguments -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"synchronous": "SOMETIMES"}, ValueError, "synchronous must be one of"),
        ({"synchronous": 1}, ValueError, "synchronous must be one of"),
        ({"busy_timeout": -1}, ValueError, "busy_timeout"),
        ({"busy_timeout": float("inf")}, ValueError, "busy_timeout"),
        ({"busy_timeout": "5"}, ValueError, "busy_timeout"),
        ({"busy_timeout": True}, ValueError, "busy_timeout"),
        ({"max_batch": 0}, ValueError, "max_batch must be an int >= 1"),
        ({"max_batch": 2.5}, ValueError, "max_batch must be an int >= 1"),
        ({"readers": 0}, ValueError, "readers must be an int >= 1"),
        ({"readers": True}, ValueError, "readers must be an int >= 1"),
        ({"read_only": "yes"}, TypeError, "read_only must be a bool"),
    ],
)
def test_bad_arguments_are_refused(
    db_path: Path, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        SqliteStore(db_path, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["", ":memory:", "file::memory:?cache=shared"])
def test_an_in_memory_database_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="needs a database file"):
        SqliteStore(path)


def test_a_path_must_be_a_string_or_path() -> None:
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
        SqliteStore(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
        SqliteStore(b"entities.db")  # type: ignore[arg-type]

    class BytesPath:
        def __fspath__(self) -> bytes:
            return b"entities.db"

    with pytest.raises(TypeError, match="must name a file as str"):
        SqliteStore(BytesPath())  # type: ignore[arg-type]


@pytest.mark.parametrize("synchronous", ["full", "OFF", "Extra"])
async def test_synchronous_is_applied(db_path: Path, synchronous: str) -> None:
    async with SqliteStore(db_path, synchronous=synchronous, readers=1, max_batch=1) as store:
        await store.create_entity(new("x"))
        assert store._db._write_conn is not None
        level = store._db._write_conn.execute("PRAGMA synchronous").fetchone()[0]
    assert level == ["OFF", "NORMAL", "FULL", "EXTRA"].index(synchronous.upper())


async def test_a_version_1_store_is_migrated_and_its_abandoned_runs_become_due(
    db_path: Path,
) -> None:
    """Version 1 had no claim loop: a run left IN_PROGRESS was resumed by recover(). After the
    migration the topmost of each such run is due, so any claim loop takes it over."""
    with sqlite3.connect(db_path) as db:
        for statement in sqlite_module.MIGRATIONS[0][1]:
            db.execute(statement)
        db.execute("PRAGMA user_version = 1")
        rows = [
            ("root", None, "IN_PROGRESS", "host:1:x"),
            ("child", "root", "IN_PROGRESS", "host:1:x"),  # its parent resumes it
            ("idle", None, "PENDING", None),
            ("done", None, "COMPLETED", None),
            ("waiter", None, "WAITING", None),
        ]
        for entity_id, parent, status, owner in rows:
            db.execute(
                "INSERT INTO entities (id, parent_id, name, type, general_type, status, data,"
                " lease_owner, lease_expires, created_at, modified_at)"
                " VALUES (?, ?, ?, 'T', 'T', ?, '{}', ?, ?, 1.0, 7.0)",
                (entity_id, parent, entity_id, status, owner, 9.0 if owner else None),
            )
    async with SqliteStore(db_path) as store:
        due = {record.id: record.runnable_at for record in await store.runnable(now=100.0)}
        record = await store.get_entity("root")
        assert (record.abandoned, record.emitted, record.parked_on) == (0, 0, None)
    assert due == {"root": 7.0, "waiter": 7.0}
    assert raw_query(db_path, "PRAGMA user_version") == [(LATEST,)]
    assert tables(db_path) == TABLES
    assert_integrity(db_path)
