"""The command line: ``python -m sluiceway.apps.notification --db PATH --port N``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TextIO

from .._cli_runner import add_serving_arguments, fault_settings, parse_arguments, serve_until_signal
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
    add_serving_arguments(parser, max_body_bytes=DEFAULT_MAX_BODY_BYTES)
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


def _faults(args: argparse.Namespace) -> Faults:
    return Faults(
        **fault_settings(args),
        fail_recipients=args.fail_recipient,
        channel_enabled=not args.channel_disabled,
    )


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the service until SIGINT or SIGTERM; returns the exit status (0 after a signal)."""
    args, faults = parse_arguments(_parser(), argv, _faults)
    serve = partial(serve_notifications, args.db, faults=faults)
    details = f"db {args.db}"
    return serve_until_signal(serve, args, what="notification service", details=details, out=out)
