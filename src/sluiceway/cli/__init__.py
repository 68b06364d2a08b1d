"""The ``sluiceway`` command line: ``sluiceway <command> ...``.

Each command lives in its own module, which exposes ``register(commands)``: it adds the
command's parser to ``commands`` (the top-level subparsers) and sets the parser's ``handler``
default, a function that takes the parsed arguments and returns the exit code. Adding a command
is adding its module to :data:`_COMMANDS`.

:func:`main` returns the exit code instead of exiting, so it can be called in-process; the
``sluiceway`` console script and ``python -m sluiceway`` pass it to :func:`sys.exit`.

Exit codes: 0 on success, 1 for an error the command reports (on stderr, as
``sluiceway <command>: <message>``), 2 for a usage error, 130 when interrupted (Ctrl-C), and 141
when standard output was closed early (piped into ``head``), like a tool ended by ``SIGPIPE``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from . import _graph, _remote, _serve, _worker

#: The modules' ``register`` functions, in the order ``sluiceway --help`` lists the commands.
_COMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _serve.register,
    _worker.register,
    _remote.register,
    _graph.register,
)

#: What a shell reports for a process ended by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141
#: What a shell reports for a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``sluiceway`` command line, with every command registered."""
    parser = argparse.ArgumentParser(
        prog="sluiceway",
        description="Command line tools for sluiceway.",
        epilog="Run 'sluiceway <command> --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"sluiceway {__version__}")
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="<command>", required=True
    )
    for register in _COMMANDS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sluiceway`` command line on ``argv`` (default: ``sys.argv[1:]``) and return
    its exit code (see the module documentation); it never calls :func:`sys.exit` itself."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        code = handler(args)
        sys.stdout.flush()
    except SystemExit as exc:  # --help, --version or a usage error, printed by argparse
        return _exit_code(exc.code)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1


def _silence_stdout() -> None:
    """Point standard output at the null device, so that the interpreter's last flush of what
    is still buffered does not fail again on the closed pipe (and print a traceback)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a file
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
