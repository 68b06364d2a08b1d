"""``sluiceway worker``: run an application's entities from a store, without a server.

``sluiceway worker --app MODULE:OBJECT --db PATH|URL [--lease-seconds 30] [--max-runs 100]
[--grace 5] [-v]``
opens the runtime on the entity store (a SQLite file, or a PostgreSQL URL), enters the
application's lifespan and runs its claim loop: the entities submitted to the store (by a
server, a program, another worker), the runs of processes that died and the parked entities
whose time came, at most ``--max-runs`` runs at a time. It serves nothing: start several
workers on one store to share its work, beside ``sluiceway serve`` or without it.

It runs until Ctrl-C or SIGTERM. Then it stops claiming work, lets the runs under way finish
for ``--grace`` seconds and stops the others cleanly: their leases are given back and nothing
is half written, so another worker on the store resumes them at once. A second signal ends
the grace period at once.

It prints ``sluiceway worker: working for <app> on <store> (owner <owner>)`` on stderr once
it works, and one line when it shuts down.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import textwrap
from collections.abc import AsyncIterator

import trio

from .._util import open_owned_nursery
from ..entities import open_runtime
from ..server import Application
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


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``worker`` command to the ``sluiceway`` parser's ``commands``."""
    worker = commands.add_parser(
        "worker",
        help="run an application's entities from a store, without a server",
        description=textwrap.dedent(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument(
        "--app",
        required=True,
        metavar="MODULE:OBJECT",
        help="the application, e.g. sluiceway.apps.campaigns:app",
    )
    worker.add_argument("--db", metavar=DB_METAVAR, default=None, help=DB_HELP)
    worker.add_argument(
        "--lease-seconds",
        type=float,
        default=30.0,
        metavar="S",
        help="lease of a run without a heartbeat (default 30)",
    )
    worker.add_argument(
        "--max-runs",
        type=int,
        default=100,
        metavar="N",
        help="the most runs at a time (children run inside them; default 100)",
    )
    worker.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds runs get to finish on shutdown before they are stopped (default 5)",
    )
    worker.add_argument("-v", "--verbose", action="store_true", help="log the runtime's events")
    worker.set_defaults(handler=functools.partial(_main, parser=worker))


def _main(args: argparse.Namespace, *, parser: argparse.ArgumentParser) -> int:
    db = store_target(args.db, parser)
    if not args.grace >= 0 or not args.lease_seconds > 0:  # NaN is neither
        parser.error("--grace must be >= 0 and --lease-seconds > 0")
    if args.max_runs < 1:
        parser.error(f"--max-runs must be >= 1, got {args.max_runs}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        app = load_application(args.app)
    except CommandError as exc:
        print(f"sluiceway worker: {exc}", file=sys.stderr)
        return 1
    try:
        trio.run(
            functools.partial(
                work,
                app=app,
                db=db,
                lease_seconds=args.lease_seconds,
                max_runs=args.max_runs,
                grace=args.grace,
            )
        )
    except reported_errors(db) as exc:
        print(f"sluiceway worker: {scrub(str(exc), db)}", file=sys.stderr)
        return 1
    return 0


async def work(
    *,
    app: Application,
    db: str,
    lease_seconds: float = 30.0,
    max_runs: int = 100,
    grace: float = 5.0,
) -> None:
    """Run ``app``'s entities from the store ``db`` (a SQLite file, or a PostgreSQL URL) until
    SIGINT or SIGTERM, then shut down: the runs under way get ``grace`` seconds to finish
    (a second signal ends the grace period), and those still going are stopped, their leases
    given back."""
    async with (
        open_runtime(
            db, app.types, lease_seconds=lease_seconds, max_runs=max_runs, work=False
        ) as runtime,
        # The claim loop runs inside the application's lifespan, as in a server: runs start
        # with its state, and stop before it is left.
        app.running(runtime),
        runtime.working() as loop,
    ):
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            print(
                f"sluiceway worker: working for {app.name} on {redact(db)} (owner {runtime.owner})",
                file=sys.stderr,
                flush=True,
            )
            name = signal.Signals(await _next(signals)).name
            print(
                f"sluiceway worker: {name}: shutting down (runs get {grace:g} s to finish)",
                file=sys.stderr,
                flush=True,
            )
            async with open_owned_nursery() as nursery:

                async def cut_short() -> None:
                    await _next(signals)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(cut_short)
                await loop.wind_down(grace)
                nursery.cancel_scope.cancel()
        # Leaving runtime.working() stops the runs still going: their leases are given back.


async def _next(signals: AsyncIterator[int]) -> int:
    """The next signal that ``trio.open_signal_receiver`` delivers."""
    return await anext(signals)
