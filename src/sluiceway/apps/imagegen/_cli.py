"""The command line: ``python -m sluiceway.apps.imagegen --db PATH --blobs DIR``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TextIO

import trio

from ._faults import FaultRule, ImageFaults
from ._service import DEFAULT_MAX_BODY_BYTES, serve_images


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sluiceway.apps.imagegen",
        description=(
            "The image generation service: POST /v1/images/generate renders a picture for a "
            "prompt, de-duplicated by idempotency key, state in SQLite, images in a blob "
            "directory. Prints the base URL, then serves until SIGINT or SIGTERM. Faults can "
            "be changed later with POST /admin/faults."
        ),
    )
    parser.add_argument("--db", type=Path, required=True, help="SQLite file (created if needed)")
    parser.add_argument(
        "--blobs", type=Path, required=True, help="directory of the images (created if needed)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: 0, a free one)")
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="answer 413 past this body size (default: %(default)s)",
    )
    faults = parser.add_argument_group("faults")
    faults.add_argument("--latency", type=float, default=0.0, help="seconds per generation")
    faults.add_argument("--jitter", type=float, default=0.0, help="up to this much more")
    faults.add_argument("--fail-rate", type=float, default=0.0, help="0..1 (default: 0)")
    faults.add_argument("--fail-status", type=int, default=503, help="(default: 503)")
    faults.add_argument(
        "--fail-code", default="GENERATION_FAILED", help="(default: GENERATION_FAILED)"
    )
    faults.add_argument(
        "--fail-match",
        action="append",
        default=[],
        metavar="TEXT",
        help="requests whose key, prompt or metadata contain TEXT fail with 500 (repeatable)",
    )
    faults.add_argument("--seed", type=int, default=None, help="seed of the fault RNG")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every generation")
    return parser


async def _run(args: argparse.Namespace, faults: ImageFaults, out: TextIO) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                partial(
                    serve_images,
                    args.db,
                    args.blobs,
                    host=args.host,
                    port=args.port,
                    faults=faults,
                    max_body_bytes=args.max_body_bytes,
                )
            )
            print(
                f"image service listening on {url} (db {args.db}, blobs {args.blobs})",
                file=out,
                flush=True,
            )
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: stopping", file=out, flush=True)
                break
            nursery.cancel_scope.cancel()


def _leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the service until SIGINT or SIGTERM; returns the exit status (0 after a signal, 1
    when it cannot serve; a bad argument exits with 2)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        faults = ImageFaults(
            latency=args.latency,
            jitter=args.jitter,
            fail_rate=args.fail_rate,
            fail_status=args.fail_status,
            fail_code=args.fail_code,
            seed=args.seed,
            rules=[FaultRule((text,), fail_status=500) for text in args.fail_match],
        )
    except ValueError as error:
        parser.error(str(error))
    if args.max_body_bytes < 1:
        parser.error("--max-body-bytes must be positive")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:  # the blob directory is made on the first image; refuse an unusable one at once
        os.makedirs(args.blobs, exist_ok=True)
    except OSError as error:
        print(f"cannot use {args.blobs}: {error}", file=sys.stderr)
        return 1
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
