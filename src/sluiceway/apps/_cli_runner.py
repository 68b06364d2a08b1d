"""What the services' command lines share (``python -m sluiceway.apps.notification``, ``python
-m sluiceway.apps.imagegen``): the serving arguments, the fault settings both switches take,
parsing with its usage errors and the logging set-up, and running a service until SIGINT or
SIGTERM with its errors as one line and an exit status."""

from __future__ import annotations

import argparse
import logging
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TextIO, TypeVar

import trio

__all__ = ["add_serving_arguments", "fault_settings", "parse_arguments", "serve_until_signal"]

FaultsT = TypeVar("FaultsT")

#: A service's serve function with its own arguments bound (``serve_notifications`` and the
#: file, say), for ``nursery.start``: it reports the base URL through its ``task_status`` once
#: the socket listens.
Serve = Callable[..., Awaitable[object]]


def add_serving_arguments(parser: argparse.ArgumentParser, *, max_body_bytes: int) -> None:
    """``--host``, ``--port`` and ``--max-body-bytes`` (default ``max_body_bytes``)."""
    parser.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: 0, a free one)")
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=max_body_bytes,
        help="answer 413 past this body size (default: %(default)s)",
    )


def fault_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings every fault switch has, from the options of the same names (``--latency``,
    ``--jitter``, ``--fail-rate``, ``--fail-status``, ``--fail-code``, ``--seed``), for the
    switch's constructor."""
    names = ("latency", "jitter", "fail_rate", "fail_status", "fail_code", "seed")
    return {name: getattr(args, name) for name in names}


def parse_arguments(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    faults_of: Callable[[argparse.Namespace], FaultsT],
) -> tuple[argparse.Namespace, FaultsT]:
    """The arguments and the fault settings ``faults_of`` makes of them. A setting it refuses
    (a :class:`ValueError`) or a ``--max-body-bytes`` below 1 is a usage error
    (``parser.error``: exit status 2). Then logging shows warnings, or every INFO line with
    ``-v``."""
    args = parser.parse_args(argv)
    try:
        faults = faults_of(args)
    except ValueError as error:
        parser.error(str(error))
    if args.max_body_bytes < 1:
        parser.error("--max-body-bytes must be positive")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args, faults


def serve_until_signal(
    serve: Serve, args: argparse.Namespace, *, what: str, details: str, out: TextIO | None
) -> int:
    """Run ``serve`` (given ``host``, ``port`` and ``max_body_bytes`` from the arguments
    :func:`add_serving_arguments` added) in a new trio run until SIGINT or SIGTERM, printing
    ``"<what> listening on <url> (<details>)"`` to ``out`` (default: standard output) once it
    listens and ``"SIGTERM: stopping"`` at the signal. Returns the exit status: 0 after a
    signal, 1 when it cannot serve on the host and port (an :class:`OSError`) or cannot use
    the SQLite file ``args.db`` (a :class:`sqlite3.Error`), said in one line on standard
    error."""
    serving = partial(serve, host=args.host, port=args.port, max_body_bytes=args.max_body_bytes)
    stream = sys.stdout if out is None else out
    failure: str | None = None
    try:
        trio.run(_serve_until_signal, serving, what, details, stream)
    except* OSError as group:
        failure = f"cannot serve on {args.host}:{args.port}: {_leaf(group)}"
    except* sqlite3.Error as group:
        failure = f"cannot use {args.db}: {_leaf(group)}"
    if failure is not None:
        print(failure, file=sys.stderr)
        return 1
    return 0


async def _serve_until_signal(serve: Serve, what: str, details: str, out: TextIO) -> None:
    # The receiver opens before the service starts: a signal during startup waits for it,
    # then stops it.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve)
            print(f"{what} listening on {url} ({details})", file=out, flush=True)
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: stopping", file=out, flush=True)
                break
            nursery.cancel_scope.cancel()


def _leaf(error: BaseException) -> BaseException:
    """The first error that is not a group: what the one-line message shows (trio wraps a
    startup error in the nursery's exception groups)."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
