"""The notification service's SQLite state: one connection, used from worker threads one call at a
time (a :class:`trio.Lock`), WAL journal, every write in one ``BEGIN IMMEDIATE`` transaction."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import trio

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sends (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    result TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value)
    VALUES ('requests', 0), ('repeats', 0), ('failures', 0);
"""

#: The schema version this code writes (``PRAGMA user_version``). Version 0 is the original
#: ``sends`` and ``counters`` tables; each later version has a migration in ``_MIGRATIONS``.
SCHEMA_VERSION = 1

#: The engagement events an email can record, and the ``engagement`` column of each.
EVENTS = ("opened", "clicked", "replied")


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    """Version 1: engagement. ``sends`` gains the campaign, contact and step an email belongs
    to (from its ``metadata``: ``campaign_id``, ``contact_id``, ``step_id``), filled in for
    the rows already there; ``engagement`` holds one row per email and event."""
    for column in ("campaign_id", "contact_id", "step_id"):
        conn.execute(f"ALTER TABLE sends ADD COLUMN {column} TEXT")
    rows = conn.execute("SELECT key, message FROM sends").fetchall()
    for key, message in rows:
        campaign, contact, step = metadata_refs(_loads(message).get("metadata"))
        conn.execute(
            "UPDATE sends SET campaign_id = ?, contact_id = ?, step_id = ? WHERE key = ?",
            (campaign, contact, step, key),
        )
    conn.execute("CREATE INDEX sends_campaign_contact ON sends (campaign_id, contact_id)")
    conn.execute("CREATE INDEX sends_contact ON sends (contact_id)")
    conn.execute(
        """CREATE TABLE engagement (
            email_id TEXT NOT NULL,
            event TEXT NOT NULL,
            first_at REAL NOT NULL,
            last_at REAL NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (email_id, event)
        )"""
    )


_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_to_1}


def metadata_refs(metadata: object) -> tuple[str | None, str | None, str | None]:
    """``(campaign_id, contact_id, step_id)`` from a send's ``metadata`` (string values only)."""
    if not isinstance(metadata, dict):
        return None, None, None
    refs = [metadata.get(name) for name in ("campaign_id", "contact_id", "step_id")]
    campaign, contact, step = (value if isinstance(value, str) else None for value in refs)
    return campaign, contact, step


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the file to :data:`SCHEMA_VERSION`, one version per transaction (``BEGIN
    IMMEDIATE``, the version read inside it: processes opening one file together migrate it
    once). A file written by a newer version is refused."""
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the notification store has schema version {version}; "
                    f"this code knows versions up to {SCHEMA_VERSION}"
                )
            if version < SCHEMA_VERSION:
                _MIGRATIONS[version + 1](conn)
                conn.execute(f"PRAGMA user_version = {int(version) + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if version + 1 >= SCHEMA_VERSION:
            return


class Store:
    """The ``sends`` table (one row per idempotency key) and the request counters."""

    def __init__(self, path: str | os.PathLike[str], *, threads: bool = True) -> None:
        self.path = os.fspath(path)
        # Without threads the file is used on the trio thread (for tests on virtual time,
        # where a wait on a worker thread lets the mock clock jump).
        self.threads = threads
        self._conn: sqlite3.Connection | None = None
        self._lock = trio.Lock()

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` ran and :meth:`close` did not."""
        return self._conn is not None

    async def open(self) -> None:
        """Open (creating if needed) the database file."""
        async with self._lock:
            if self._conn is None:
                self._conn = await trio.to_thread.run_sync(self._connect)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Close the connection (safe to call twice; completes even when cancelled)."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                conn, self._conn = self._conn, None
                if conn is not None:
                    await trio.to_thread.run_sync(conn.close)

    async def _run(self, func: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError("the notification store is not open")
            begin = "BEGIN IMMEDIATE" if write else "BEGIN"
            if not self.threads:
                await trio.lowlevel.checkpoint()
                return _transaction(conn, begin, func)
            return await trio.to_thread.run_sync(_transaction, conn, begin, func)

    async def repeat(self, key: str) -> dict[str, Any] | None:
        """The stored result for ``key``, counting the request as a repeat; ``None`` (and nothing
        counted) when the key was never sent."""

        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT result FROM sends WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            _count(conn, "repeats")
            return _loads(row[0])

        return await self._run(run)

    async def record(
        self, key: str, result: dict[str, Any], message: dict[str, Any]
    ) -> tuple[bool, dict[str, Any]]:
        """Record ``result`` as the send for ``key`` unless the key already has one (a unique
        constraint, not a check-then-insert). Returns ``(True, result)`` for a new send,
        ``(False, stored)`` (counted as a repeat) when another writer got there first."""

        campaign, contact, step = metadata_refs(message.get("metadata"))

        def run(conn: sqlite3.Connection) -> tuple[bool, dict[str, Any]]:
            cursor = conn.execute(
                "INSERT INTO sends (key, id, result, message, created_at, campaign_id,"
                " contact_id, step_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO NOTHING",
                (
                    key,
                    result["id"],
                    _dumps(result),
                    _dumps(message),
                    result["timestamp"],
                    campaign,
                    contact,
                    step,
                ),
            )
            if cursor.rowcount == 1:
                _count(conn)
                return True, result
            row = conn.execute("SELECT result FROM sends WHERE key = ?", (key,)).fetchone()
            _count(conn, "repeats")
            return False, _loads(row[0])

        return await self._run(run)

    async def count_failure(self) -> None:
        """Count a request answered with an error."""
        await self._run(lambda conn: _count(conn, "failures"))

    async def by_id(self, notification_id: str) -> dict[str, Any] | None:
        """The stored result with this ``id``, or ``None``."""

        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT result FROM sends WHERE id = ?", (notification_id,)
            ).fetchone()
            return None if row is None else _loads(row[0])

        return await self._run(run, write=False)

    async def engage(self, email_id: str, event: str, at: float) -> dict[str, Any] | None:
        """Record that ``event`` (one of :data:`EVENTS`) happened to the email ``email_id`` at
        ``at`` (seconds since the epoch): the first report creates the record, a repeat counts
        one more and keeps the earliest time. Returns the email's engagement
        (:meth:`engagement`'s shape), or ``None`` for an unknown email (nothing recorded)."""
        if event not in EVENTS:
            raise ValueError(f"unknown engagement event {event!r}")

        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            if conn.execute("SELECT 1 FROM sends WHERE id = ?", (email_id,)).fetchone() is None:
                return None
            conn.execute(
                "INSERT INTO engagement (email_id, event, first_at, last_at, count)"
                " VALUES (?, ?, ?, ?, 1) ON CONFLICT (email_id, event) DO UPDATE SET"
                " first_at = MIN(first_at, excluded.first_at),"
                " last_at = MAX(last_at, excluded.last_at), count = count + 1",
                (email_id, event, at, at),
            )
            rows = _engagement_rows(conn, "s.id = ?", (email_id,))
            return rows[0]

        return await self._run(run)

    async def engagement(
        self, *, campaign: str | None = None, contact: str | None = None, step: str | None = None
    ) -> list[dict[str, Any]]:
        """The emails sent with these ``metadata`` references (``None``: any), oldest first,
        each ``{email_id, campaign, contact, step, sent_at, opened_at, clicked_at, replied_at,
        opens, clicks, replies}`` (times in seconds since the epoch, ``None`` for an event not
        yet recorded; the counts are how many times each was reported)."""
        where = ["1"]
        args: list[str] = []
        for column, value in (
            ("campaign_id", campaign),
            ("contact_id", contact),
            ("step_id", step),
        ):
            if value is not None:
                where.append(f"s.{column} = ?")
                args.append(value)

        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return _engagement_rows(conn, " AND ".join(where), tuple(args))

        return await self._run(run, write=False)

    async def engagement_summary(self, campaign: str) -> list[dict[str, Any]]:
        """Per step (and A/B ``variant``, from the send's ``metadata``) of ``campaign``:
        ``{step, variant, sent, opened, clicked, replied}``, counting emails (an email opened
        three times is one open), ordered by step then variant."""

        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT s.step_id, json_extract(s.message, '$.metadata.variant') AS variant,"
                " count(DISTINCT s.id),"
                " count(DISTINCT CASE WHEN e.event = 'opened' THEN s.id END),"
                " count(DISTINCT CASE WHEN e.event = 'clicked' THEN s.id END),"
                " count(DISTINCT CASE WHEN e.event = 'replied' THEN s.id END)"
                " FROM sends s LEFT JOIN engagement e ON e.email_id = s.id"
                " WHERE s.campaign_id = ? GROUP BY s.step_id, variant"
                " ORDER BY s.step_id, variant",
                (campaign,),
            ).fetchall()
            return [
                {
                    "step": step,
                    "variant": variant if isinstance(variant, str) else None,
                    "sent": sent,
                    "opened": opened,
                    "clicked": clicked,
                    "replied": replied,
                }
                for step, variant, sent, opened, clicked, replied in rows
            ]

        return await self._run(run, write=False)

    async def stats(self) -> dict[str, int]:
        """``{"sends", "requests", "repeats", "failures"}`` (persisted with the sends)."""

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
            (sends,) = conn.execute("SELECT COUNT(*) FROM sends").fetchone()
            return {
                "sends": int(sends),
                "requests": int(counters["requests"]),
                "repeats": int(counters["repeats"]),
                "failures": int(counters["failures"]),
            }

        return await self._run(run, write=False)


def _transaction(
    conn: sqlite3.Connection, begin: str, func: Callable[[sqlite3.Connection], T]
) -> T:
    conn.execute(begin)
    try:
        value = func(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return value


def _engagement_rows(
    conn: sqlite3.Connection, where: str, args: tuple[str, ...]
) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT s.id, s.campaign_id, s.contact_id, s.step_id, s.created_at,"
        " o.first_at, o.count, c.first_at, c.count, r.first_at, r.count FROM sends s"
        " LEFT JOIN engagement o ON o.email_id = s.id AND o.event = 'opened'"
        " LEFT JOIN engagement c ON c.email_id = s.id AND c.event = 'clicked'"
        " LEFT JOIN engagement r ON r.email_id = s.id AND r.event = 'replied'"
        f" WHERE {where} ORDER BY s.created_at, s.id",
        args,
    ).fetchall()
    return [
        {
            "email_id": email_id,
            "campaign": campaign,
            "contact": contact,
            "step": step,
            "sent_at": _epoch(created_at),
            "opened_at": opened_at,
            "clicked_at": clicked_at,
            "replied_at": replied_at,
            "opens": opens or 0,
            "clicks": clicks or 0,
            "replies": replies or 0,
        }
        for (
            email_id,
            campaign,
            contact,
            step,
            created_at,
            opened_at,
            opens,
            clicked_at,
            clicks,
            replied_at,
            replies,
        ) in rows
    ]


def _epoch(timestamp: str) -> float:
    """An ISO 8601 timestamp (``2026-01-01T09:00:00.000Z``) as seconds since the epoch."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _count(conn: sqlite3.Connection, outcome: str | None = None) -> None:
    names = ("requests",) if outcome is None else ("requests", outcome)
    conn.execute(
        f"UPDATE counters SET value = value + 1 WHERE name IN ({', '.join('?' * len(names))})",
        names,
    )


def _dumps(value: object) -> str:
    # Never Infinity or NaN in a stored document: JSON has neither.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _loads(text: str) -> dict[str, Any]:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value
