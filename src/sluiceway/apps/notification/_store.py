"""The notification service's SQLite state: one connection, used from worker threads one call at a
time (a :class:`trio.Lock`), WAL journal, every write in one ``BEGIN IMMEDIATE`` transaction
(the plumbing is :class:`~sluiceway.apps._sqlite_file.SqliteFile`'s)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

from .._sqlite_file import (
    COUNTERS_SCHEMA,
    SqliteFile,
    count_requests,
    dump_json,
    load_object,
    request_totals,
    schema_version,
    transaction,
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS sends (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    result TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at TEXT NOT NULL
);
{COUNTERS_SCHEMA}
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
        campaign, contact, step = metadata_refs(load_object(message).get("metadata"))
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

    def step(conn: sqlite3.Connection) -> int:
        version = schema_version(conn, known=SCHEMA_VERSION, what="the notification store")
        if version < SCHEMA_VERSION:
            _MIGRATIONS[version + 1](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
        return version

    version = -1
    while version + 1 < SCHEMA_VERSION:
        version = transaction(conn, "BEGIN IMMEDIATE", step)


class Store(SqliteFile):
    """The ``sends`` table (one row per idempotency key) and the request counters."""

    what = "notification store"

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        _migrate(conn)

    async def repeat(self, key: str) -> dict[str, Any] | None:
        """The stored result for ``key``, counting the request as a repeat; ``None`` (and nothing
        counted) when the key was never sent."""

        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT result FROM sends WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            _count(conn, "repeats")
            return load_object(row[0])

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
                    dump_json(result),
                    dump_json(message),
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
            return False, load_object(row[0])

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
            return None if row is None else load_object(row[0])

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
        totals = partial(request_totals, stored="sends", table="sends")
        return await self._run(totals, write=False)


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
    count_requests(conn, ("requests",) if outcome is None else ("requests", outcome))
