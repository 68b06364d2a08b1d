"""The command line: ``python -m sluiceway.apps.imagegen --db PATH --blobs DIR``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TextIO

from .._cli_runner import add_serving_arguments, fault_settings, parse_arguments, serve_until_signal
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
    add_serving_arguments(parser, max_body_bytes=DEFAULT_MAX_BODY_BYTES)
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


def _faults(args: argparse.Namespace) -> ImageFaults:
    rules = [FaultRule((text,), fail_status=500) for text in args.fail_match]
    return ImageFaults(**fault_settings(args), rules=rules)


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the service until SIGINT or SIGTERM; returns the exit status (0 after a signal, 1
    when it cannot serve; a bad argument exits with 2)."""
    args, faults = parse_arguments(_parser(), argv, _faults)
    try:  # the blob directory is made on the first image; refuse an unusable one at once
        os.makedirs(args.blobs, exist_ok=True)
    except OSError as error:
        print(f"cannot use {args.blobs}: {error}", file=sys.stderr)
        return 1
    serve = partial(serve_images, args.db, args.blobs, faults=faults)
    details = f"db {args.db}, blobs {args.blobs}"
    return serve_until_signal(serve, args, what="image service", details=details, out=out)
