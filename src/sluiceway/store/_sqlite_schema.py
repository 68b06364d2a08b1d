"""The schema of the SQLite entity store: numbered migrations, and the check that opens a file
as a store (creating, migrating or refusing it)."""

from __future__ import annotations

import sqlite3

from .._errors import StoreSchemaError

#: What ``meta.application`` holds in every sluiceway entity store.
APPLICATION = "sluiceway-entity-store"

#: The oldest SQLite this store works with (``RETURNING`` arrived in 3.35).
MIN_SQLITE_VERSION = (3, 35, 0)

#: The schema, as numbered migrations applied in order: ``(version, statements)``. Version 1 is
#: the initial schema; version 2 adds the columns of submissions, parked waits and the crash-loop
#: guard; version 3 the units of global limits. To change the schema, append ``(4, [...])``: a
#: store at version 3 runs those statements (in the same transaction as the version bump) the
#: next time it is opened writable, and an older sluiceway refuses a store at version 4.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            f"INSERT INTO meta (key, value) VALUES ('application', '{APPLICATION}')",
            """
            CREATE TABLE entities (
                id TEXT PRIMARY KEY,
                parent_id TEXT REFERENCES entities (id),
                name TEXT NOT NULL,
                type TEXT NOT NULL,
                general_type TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN (
                    'PENDING', 'IN_PROGRESS', 'WAITING', 'COMPLETED', 'FAILED', 'CANCELLED'
                )),
                data TEXT NOT NULL,
                result TEXT,
                error TEXT,
                attempt INTEGER NOT NULL DEFAULT 0,
                lease_owner TEXT,
                lease_expires REAL,
                created_at REAL NOT NULL,
                modified_at REAL NOT NULL,
                last_entity_seq INTEGER NOT NULL DEFAULT 0
            )
            """,
            # Names are unique per parent and among roots. Two partial indexes rather than one
            # on (coalesce(parent_id, ''), name), so that an entity whose id is '' cannot
            # collide with the roots.
            "CREATE UNIQUE INDEX entities_child_name ON entities (parent_id, name)"
            " WHERE parent_id IS NOT NULL",
            "CREATE UNIQUE INDEX entities_root_name ON entities (name) WHERE parent_id IS NULL",
            # Children oldest first: index entries are ordered by (parent_id, created_at, rowid).
            "CREATE INDEX entities_parent ON entities (parent_id, created_at)",
            "CREATE INDEX entities_status ON entities (status)",
            # Heartbeats renew every lease of one owner.
            "CREATE INDEX entities_lease_owner ON entities (lease_owner)"
            " WHERE lease_owner IS NOT NULL",
            """
            CREATE TABLE edges (
                id INTEGER PRIMARY KEY,
                from_id TEXT NOT NULL REFERENCES entities (id),
                to_id TEXT NOT NULL REFERENCES entities (id),
                type TEXT NOT NULL,
                position INTEGER NOT NULL,
                data TEXT NOT NULL,
                created_at REAL NOT NULL,
                UNIQUE (from_id, type, to_id),
                UNIQUE (from_id, type, position)
            )
            """,
            "CREATE INDEX edges_to ON edges (to_id)",
            """
            CREATE TABLE envelopes (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                entity_id TEXT NOT NULL REFERENCES entities (id),
                entity_seq INTEGER NOT NULL,
                ts REAL NOT NULL,
                body TEXT NOT NULL,
                UNIQUE (entity_id, entity_seq)
            )
            """,
            """
            CREATE TABLE messages (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                entity_id TEXT NOT NULL REFERENCES entities (id),
                message TEXT NOT NULL,
                data TEXT NOT NULL,
                sent_at REAL NOT NULL,
                consumed_by INTEGER
            )
            """,
            "CREATE INDEX messages_entity ON messages (entity_id, consumed_by)",
            """
            CREATE TABLE waits (
                entity_id TEXT NOT NULL REFERENCES entities (id),
                idx INTEGER NOT NULL,
                kind TEXT NOT NULL,
                prompt TEXT,
                data TEXT NOT NULL,
                deadline REAL,
                state TEXT NOT NULL,
                message_id INTEGER REFERENCES messages (id),
                created_at REAL NOT NULL,
                PRIMARY KEY (entity_id, idx)
            )
            """,
        ],
    ),
    (
        2,
        [
            # When the claim loop may run the entity (NULL: it does not run by itself). Set by
            # a submission, kept while a run of its own holds the lease (so that a run that
            # dies is resumed), and by parking: the wake-up time of a timer, or NULL until
            # the awaited message arrives or the awaited children have ended.
            "ALTER TABLE entities ADD COLUMN runnable_at REAL",
            "ALTER TABLE entities ADD COLUMN parked_on TEXT"
            " CHECK (parked_on IN ('timer', 'message', 'children'))",
            # Runs abandoned by dying processes in a row (the crash-loop guard).
            "ALTER TABLE entities ADD COLUMN abandoned INTEGER NOT NULL DEFAULT 0",
            # How many envelopes run_impl emitted, by position: a replay stores only the new.
            "ALTER TABLE entities ADD COLUMN emitted INTEGER NOT NULL DEFAULT 0",
            # The tick of its runtime when a run of its own claimed it (see runtimes).
            "ALTER TABLE entities ADD COLUMN claim_tick INTEGER",
            # Each runtime's tick: it moves when the runtime starts runs of their own or writes
            # from outside any run (serving a request). A run whose process died before its
            # tick moved again was the last thing that process started: the crash-loop guard
            # counts such deaths only.
            "CREATE TABLE runtimes (owner TEXT PRIMARY KEY, tick INTEGER NOT NULL)",
            "CREATE INDEX entities_runnable ON entities (runnable_at)"
            " WHERE runnable_at IS NOT NULL",
            # A parked parent wakes once none of its children is pending (parked, submitted,
            # or running on its own): both kinds of rows are in this small index.
            "CREATE INDEX entities_pending ON entities (parent_id)"
            " WHERE runnable_at IS NOT NULL OR parked_on IS NOT NULL",
            # Runs abandoned before this version were resumed by recover(): the claim loop
            # takes them over now (the topmost of each run, as recover() did).
            """
            UPDATE entities SET runnable_at = modified_at
            WHERE status IN ('IN_PROGRESS', 'WAITING')
              AND (parent_id IS NULL OR parent_id NOT IN (
                  SELECT id FROM entities
                  WHERE status IN ('IN_PROGRESS', 'WAITING', 'FAILED', 'CANCELLED')))
            """,
        ],
    ),
    (
        3,
        [
            # When each runtime's last heartbeat says it is alive until: the units of global
            # limits it holds are free once that time has passed.
            "ALTER TABLE runtimes ADD COLUMN expires REAL",
            # One row per unit of each global limit (see EntityStore.hold_units): a unit is
            # free when nobody holds it or its holder is no longer alive.
            """
            CREATE TABLE capacity_units (
                limit_name TEXT NOT NULL,
                unit INTEGER NOT NULL,
                holder TEXT,
                since REAL,
                PRIMARY KEY (limit_name, unit)
            )
            """,
            "CREATE INDEX capacity_units_holder ON capacity_units (holder)"
            " WHERE holder IS NOT NULL",
            # What the processes left short of units of each limit want (fair shares).
            """
            CREATE TABLE capacity_wants (
                limit_name TEXT NOT NULL,
                owner TEXT NOT NULL,
                wanted INTEGER NOT NULL,
                PRIMARY KEY (limit_name, owner)
            )
            """,
        ],
    ),
]


def check_schema(conn: sqlite3.Connection, path: str, *, migrate: bool) -> None:
    """Create, migrate (``migrate``) or just verify the schema of an opened database."""
    versions = [version for version, _ in MIGRATIONS]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"MIGRATIONS must be numbered 1, 2, 3... in order, got {versions}")
    latest = versions[-1]
    if migrate:
        conn.execute("BEGIN IMMEDIATE")
    else:
        conn.execute("BEGIN")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if objects == 0 and version == 0:
            if not migrate:
                raise StoreSchemaError(
                    f"{path!r} is not a sluiceway entity store (it is an empty database)"
                )
        else:
            has_meta = (
                conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
                ).fetchone()
                is not None
            )
            application = None
            if has_meta:
                row = conn.execute("SELECT value FROM meta WHERE key = 'application'").fetchone()
                application = None if row is None else row[0]
            if application != APPLICATION or version < 1:
                raise StoreSchemaError(
                    f"{path!r} is not a sluiceway entity store (it is an SQLite database "
                    "that something else wrote)"
                )
            if version > latest:
                raise StoreSchemaError(
                    f"the entity store {path!r} was written by a newer sluiceway (schema "
                    f"version {version}; this sluiceway knows versions up to {latest}); "
                    "upgrade sluiceway to open it"
                )
            if version < latest and not migrate:
                raise StoreSchemaError(
                    f"the entity store {path!r} has schema version {version} and needs "
                    f"migrating to version {latest}; open it once without read_only to "
                    "migrate it"
                )
        for number, statements in MIGRATIONS:
            if number <= version:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(number)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
