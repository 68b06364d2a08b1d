"""What the commands share: the entity store they are given (``--db PATH|URL``, else
``$SLUICEWAY_DB``) and how to print it without its password, loading an application
(``--app MODULE:OBJECT``), and the error a command reports without a traceback."""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse

from .._errors import SluicewayError
from ..server import Application, load_app
from ..store._open import is_postgres_url

#: The environment variable that names the store when ``--db`` is not given.
ENV_VAR = "SLUICEWAY_DB"

#: The metavar of ``--db``: a SQLite file, or a PostgreSQL URL.
DB_METAVAR = "PATH|URL"

#: What replaces a password in what the commands print.
HIDDEN = "***"


class CommandError(Exception):
    """An error reported as ``sluiceway <command>: <message>`` (exit code 1)."""


#: The help of ``--db``.
DB_HELP = (
    "the entity store: a SQLite file, or a PostgreSQL URL (postgresql://USER@HOST/DB) "
    f"(default: ${ENV_VAR})"
)


def store_target(given: str | None, parser: argparse.ArgumentParser) -> str:
    """The store that ``--db`` names, else ``$SLUICEWAY_DB`` (a usage error if neither does):
    a PostgreSQL URL as it is, a path with ``~`` expanded."""
    target = given or os.environ.get(ENV_VAR)
    if not target:
        parser.error(f"no entity store given: pass --db {DB_METAVAR} or set {ENV_VAR}")
    return target if is_postgres_url(target) else os.path.expanduser(target)


# -- printing a store --------------------------------------------------------------------------
#
# A PostgreSQL URL may carry a password, in its user information (``postgresql://me:pw@host``)
# or as a parameter (``?password=pw``); what a command prints shows neither. The user
# information ends at the URL's last ``@`` (not at the first ``/``, ``?`` or ``#`` as
# ``urlsplit`` has it), so that a password that holds one of those characters unencoded is
# hidden whole: when in doubt, more is hidden, never less.


def redact(target: str) -> str:
    """``target`` as a command prints it: a PostgreSQL URL with its password replaced by
    ``***``, anything else (a path) unchanged."""
    if not is_postgres_url(target):
        return target
    scheme, _, rest = target.partition("://")
    userinfo, at, hostinfo = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.partition(':')[0]}:{HIDDEN}@{hostinfo}"
    base, question, query = rest.partition("?")
    if question:
        query = "&".join(_redact_parameter(item) for item in query.split("&"))
    return f"{scheme}://{base}{question}{query}"


def _redact_parameter(item: str) -> str:
    key, equals, _ = item.partition("=")
    if equals and urllib.parse.unquote_plus(key).strip() == "password":
        return f"{key}={HIDDEN}"
    return item


def _passwords(target: str) -> set[str]:
    """The passwords in a PostgreSQL URL, as written and decoded."""
    if not is_postgres_url(target):
        return set()
    found = []
    rest = target.partition("://")[2]
    userinfo, at, _ = rest.rpartition("@")
    if at and ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    for item in rest.partition("?")[2].split("&"):
        key, equals, value = item.partition("=")
        if equals and urllib.parse.unquote_plus(key).strip() == "password":
            found.append(value)
    decoded = [urllib.parse.unquote(password) for password in found]
    return {password for password in found + decoded if password}


def scrub(text: str, target: str) -> str:
    """``text`` (an error message that may quote the store) on one line, with the store's
    password replaced by ``***`` wherever it appears."""
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if not is_postgres_url(target):
        return text
    text = text.replace(target, redact(target))
    for password in sorted(_passwords(target), key=len, reverse=True):
        text = text.replace(password, HIDDEN)
    return text


def reported_errors(target: str) -> tuple[type[Exception], ...]:
    """What a command that opens the store ``target`` reports as an error (exit code 1)
    instead of a traceback: sluiceway's errors, OS errors, a driver that is not installed and
    the driver's errors (see :func:`driver_errors`). Evaluate it in the ``except`` clause, once
    the driver is imported."""
    return (SluicewayError, OSError, CommandError, ImportError, *driver_errors(target))


def driver_errors(target: str) -> tuple[type[Exception], ...]:
    """The errors of the database driver behind ``target`` that a command reports rather
    than showing a traceback: psycopg's, for a PostgreSQL URL, once psycopg is imported."""
    module = sys.modules.get("psycopg") if is_postgres_url(target) else None
    error = getattr(module, "Error", None)
    if isinstance(error, type) and issubclass(error, Exception):
        return (error,)
    return ()


# -- the application ---------------------------------------------------------------------------


def load_application(spec: str) -> Application:
    """The application ``--app`` names (``MODULE:OBJECT``). Like ``python -m``, its module is
    found in the working directory too (the console script does not put it on the import
    path).

    Raises:
        CommandError: the module cannot be imported, or the object is not an application.
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return load_app(spec)
    except ImportError as exc:
        raise CommandError(f"cannot import the application {spec}: {exc}") from None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
