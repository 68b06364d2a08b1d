"""The command line: ``python -m sluiceway.apps.notification --db PATH --port N``."""

from __future__ import annotations

import argparse
import logging
import signal
import sqlite3
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TextIO

import trio

from ._faults import Faults
from ._service import DEFAULT_MAX_BODY_BYTES, serve_notifications


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sluiceway.apps.notification",
        description=(
            "Seed 000's notification service: POST /send/email, de-duplicated by idempotency "
            "key, state in SQLite. Prints the base URL, then serves until SIGINT or SIGTERM. "
            "Faults can be changed later with POST /admin/faults."
        ),
    )
    parser.add_argument("--db", type=Path, required=True, help="SQLite file (created if needed)")
    parser.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: 0, a free one)")
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="answer 413 past this body size (default: %(default)s)",
    )
    faults = parser.add_argument_group("faults")
    faults.add_argument("--fail-rate", type=float, default=0.0, help="0..1 (default: 0)")
    faults.add_argument("--fail-status", type=int, default=502, help="(default: 502)")
    faults.add_argument("--fail-code", default="PROVIDER_ERROR", help="(default: PROVIDER_ERROR)")
    faults.add_argument("--latency", type=float, default=0.0, help="seconds per send")
    faults.add_argument("--jitter", type=float, default=0.0, help="up to this much more")
    faults.add_argument(
        "--fail-recipient",
        action="append",
        default=[],
        metavar="PATTERN",
        help="an address or glob that always fails with 502 INVALID_RECIPIENT (repeatable)",
    )
    faults.add_argument(
        "--channel-disabled", action="store_true", help="answer 422 CHANNEL_DISABLED"
    )
    faults.add_argument("--seed", type=int, default=None, help="seed of the fault RNG")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every send")
    return parser


async def _run(args: argparse.Namespace, faults: Faults, out: TextIO) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                partial(
                    serve_notifications,
                    args.db,
                    host=args.host,
                    port=args.port,
                    faults=faults,
                    max_body_bytes=args.max_body_bytes,
                )
            )
            print(f"notification service listening on {url} (db {args.db})", file=out, flush=True)
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: stopping", file=out, flush=True)
                break
            nursery.cancel_scope.cancel()


def _leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the service until SIGINT or SIGTERM; returns the exit status (0 after a signal)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        faults = Faults(
            fail_rate=args.fail_rate,
            fail_status=args.fail_status,
            fail_code=args.fail_code,
            latency=args.latency,
            jitter=args.jitter,
            fail_recipients=args.fail_recipient,
            channel_enabled=not args.channel_disabled,
            seed=args.seed,
        )
    except ValueError as error:
        parser.error(str(error))
    if args.max_body_bytes < 1:
        parser.error("--max-body-bytes must be positive")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stream = sys.stdout if out is None else out
    failure: str | None = None
    try:
        trio.run(_run, args, faults, stream)
    except* OSError as group:
        failure = f"cannot serve on {args.host}:{args.port}: {_leaf(group)}"
    except* sqlite3.Error as group:
        failure = f"cannot use {args.db}: {_leaf(group)}"
    if failure is not None:
        print(failure, file=sys.stderr)
        return 1
    return 0
