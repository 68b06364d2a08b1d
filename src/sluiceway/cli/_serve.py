"""``sluiceway serve``: serve an application's runtime over WebSockets.

``sluiceway serve --app MODULE:OBJECT --db PATH|URL [--host 127.0.0.1] [--port 8765] [--token T]
[--allow-origin ORIGIN]...``
opens the runtime on the entity store (a SQLite file, or a PostgreSQL URL), enters the
application's lifespan and serves until
Ctrl-C or SIGTERM. Then it stops taking connections and work, lets the runs it started finish
for ``--grace`` seconds and stops the others cleanly: their leases are given back and nothing
is half written, so the next server on the store resumes them by itself.

Once listening it prints ``sluiceway serve: serving <app> on ws://HOST:PORT`` on stdout.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import textwrap
import urllib.parse
from collections.abc import Sequence

import trio

from ..entities import open_runtime
from ..server import Application, RuntimeServer, ServerLimits
from ..server._origin import check_origin
from ._common import (
    DB_HELP,
    DB_METAVAR,
    CommandError,
    load_application,
    redact,
    reported_errors,
    scrub,
    store_target,
)

#: The default port of ``serve`` and the default URL of the client commands.
DEFAULT_PORT = 8765
#: The environment variables of the token and the store.
TOKEN_VAR = "SLUICEWAY_TOKEN"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` command to the ``sluiceway`` parser's ``commands``."""
    serve = commands.add_parser(
        "serve",
        help="serve an application's entity runtime over WebSockets",
        description=textwrap.dedent(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--app",
        required=True,
        metavar="MODULE:OBJECT",
        help="the application, e.g. sluiceway.apps.campaigns:app",
    )
    serve.add_argument("--db", metavar=DB_METAVAR, default=None, help=DB_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"the port (default {DEFAULT_PORT})"
    )
    serve.add_argument(
        "--token",
        default=None,
        help=f"require this bearer token from clients (default: ${TOKEN_VAR}; none if unset)",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=5.0,
        help="seconds runs get to finish on shutdown before they are stopped (default 5)",
    )
    serve.add_argument(
        "--lease-seconds",
        type=float,
        default=30.0,
        help="lease of a run without a heartbeat (default 30)",
    )
    serve.add_argument(
        "--max-frame-bytes", type=int, default=ServerLimits().max_frame_bytes, help="frame limit"
    )
    serve.add_argument(
        "--queue-frames",
        type=int,
        default=ServerLimits().queue_frames,
        help="frames queued per connection before its subscriptions wait for it to read",
    )
    serve.add_argument(
        "--allow-origin",
        dest="allow_origins",
        action="append",
        type=_origin,
        metavar="ORIGIN",
        help="let browser pages of this origin connect (e.g. https://app.example.com; '*': "
        "every origin); repeatable. Programs, and pages of the server's own address, need none",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log the server's events")
    serve.set_defaults(handler=functools.partial(_main, parser=serve))


def _origin(value: str) -> str:
    try:
        return check_origin(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _main(args: argparse.Namespace, *, parser: argparse.ArgumentParser) -> int:
    db = store_target(args.db, parser)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0..65535, got {args.port}")
    if args.grace < 0 or args.lease_seconds <= 0:
        parser.error("--grace must be >= 0 and --lease-seconds > 0")
    token = (args.token if args.token is not None else os.environ.get(TOKEN_VAR)) or None
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        app = load_application(args.app)
        limits = ServerLimits(max_frame_bytes=args.max_frame_bytes, queue_frames=args.queue_frames)
    except (CommandError, ValueError) as exc:
        print(f"sluiceway serve: {exc}", file=sys.stderr)
        return 1
    try:
        trio.run(
            functools.partial(
                serve,
                app=app,
                db=db,
                host=args.host,
                port=args.port,
                token=token,
                grace=args.grace,
                lease_seconds=args.lease_seconds,
                limits=limits,
                allow_origins=args.allow_origins,
            )
        )
    except reported_errors(db) as exc:
        print(f"sluiceway serve: {scrub(str(exc), db)}", file=sys.stderr)
        return 1
    return 0


async def serve(
    *,
    app: Application,
    db: str,
    host: str,
    port: int,
    token: str | None,
    grace: float,
    lease_seconds: float,
    limits: ServerLimits,
    allow_origins: Sequence[str] | None = None,
) -> None:
    """Serve ``app`` on the store ``db`` (a SQLite file, or a PostgreSQL URL) until SIGINT or
    SIGTERM, then shut down."""
    async with (
        # The claim loop runs inside the application's lifespan (the server enters it), so
        # that runs start with its state and stop before it is left.
        open_runtime(db, app.types, lease_seconds=lease_seconds, work=False) as runtime,
        app.running(runtime) as state,
        trio.open_nursery() as nursery,
    ):
        server = RuntimeServer(
            runtime, app, state=state, token=token, limits=limits, allow_origins=allow_origins
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            try:
                address = await nursery.start(
                    functools.partial(server.run, host, port, grace=grace)
                )
            except OSError as exc:
                raise CommandError(f"cannot listen on {host}:{port}: {exc}") from None
            auth = "with a bearer token" if token else "without authentication"
            print(
                f"sluiceway serve: serving {app.name} on {address.url} ({auth}; "
                f"store {redact(db)})",
                flush=True,
            )
            # The token goes in the fragment: the browser keeps it (the page reads it) and
            # never sends it to the server in a request line, so no log ever holds it.
            fragment = f"#token={urllib.parse.quote(token, safe='')}" if token else ""
            page = f"http://{address.host}:{address.port}/{fragment}"
            print(f"sluiceway serve: the page: {page}", flush=True)
            async for signum in signals:
                name = signal.Signals(signum).name
                print(
                    f"sluiceway serve: {name}: shutting down (runs get {grace:g} s to finish)",
                    file=sys.stderr,
                    flush=True,
                )
                server.shutdown()
                break
