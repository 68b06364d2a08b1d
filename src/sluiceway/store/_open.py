"""Open the entity store a string names: a PostgreSQL URL, or the path of a SQLite file."""

from __future__ import annotations

import os

from ._protocol import EntityStore
from ._sqlite import SqliteStore

#: What a PostgreSQL connection URL starts with (libpq's two spellings).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(target: object) -> bool:
    """Whether ``target`` is a PostgreSQL connection URL (``postgresql://...``)."""
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def open_store(target: str | os.PathLike[str], *, read_only: bool = False) -> EntityStore:
    """The store ``target`` names, not opened yet (enter it with ``async with``): a
    :class:`~sluiceway.PostgresStore` for a ``postgresql://`` (or ``postgres://``) URL, else a
    :class:`~sluiceway.SqliteStore` for the file at that path.

    Raises:
        TypeError: ``target`` is neither a string nor a path.
        ImportError: a PostgreSQL URL, and psycopg is not installed (``pip install
            'sluiceway[postgres]'``).
    """
    if is_postgres_url(target):
        from ._postgres import PostgresStore  # noqa: PLC0415  # psycopg is optional

        assert isinstance(target, str)
        store: EntityStore = PostgresStore(target, read_only=read_only)
        return store
    if not isinstance(target, str | os.PathLike):
        raise TypeError(f"a store is a PostgreSQL URL or a file path, got {target!r}")
    return SqliteStore(target, read_only=read_only)
