"""The client commands: ``sluiceway run``, ``call``, ``send`` and ``cancel``.

They talk to a ``sluiceway serve`` server at ``--url`` (default ``$SLUICEWAY_URL``, else
``ws://127.0.0.1:8765``) with the bearer token ``--token`` (default ``$SLUICEWAY_TOKEN``).
Results are printed as JSON on stdout; errors as one line, ``sluiceway <command>:
<message>``, on stderr with exit code 1 (2 for usage errors: a ``--url`` that is not a
``ws://`` URL, a ``--body`` that is not JSON...).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from rich.console import Console
from rich.live import Live

from ..client import (
    Client,
    ConnectionLostError,
    ConnectionRefusedByServerError,
    ServerError,
    connect,
)
from ..client._client import check_url
from ._progress import RunProgress, display_console, failed_result
from ._serve import DEFAULT_PORT, TOKEN_VAR

#: The environment variable of the server's URL.
URL_VAR = "SLUICEWAY_URL"
DEFAULT_URL = f"ws://127.0.0.1:{DEFAULT_PORT}"

_Action = Callable[[Client, argparse.Namespace], Awaitable[int]]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run``, ``call``, ``send`` and ``cancel`` to the ``sluiceway`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=None, help=f"the server (default: ${URL_VAR}, else {DEFAULT_URL})"
    )
    common.add_argument("--token", default=None, help=f"bearer token (default: ${TOKEN_VAR})")
    common.add_argument(
        "--reconnect-timeout",
        type=float,
        default=30.0,
        help="seconds to keep reconnecting after the connection drops (default 30)",
    )
    common.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for the server to accept connections, as one just started "
        "in the background does (default 0: fail at once)",
    )

    run = commands.add_parser(
        "run",
        parents=[common],
        help="start or attach to a run and follow it live",
        description=(
            "Start the entity's run in the server (or attach to it if it runs already) and "
            "follow its subtree live: counts by type and status, a bar of the children "
            "finished and the latest messages. With --json, print one envelope per line "
            "instead. If the connection drops, the command reconnects and resumes from the "
            "last envelope it printed: nothing is missed or printed twice. Exits 0 when the "
            "entity completed, 1 when it failed or was cancelled."
        ),
    )
    run.add_argument("entity", metavar="<entity_id>", help="the entity to run and follow")
    run.add_argument("--after", type=int, default=0, metavar="N", help="only envelopes after seq N")
    run.add_argument("--json", action="store_true", help="one JSON envelope per line")
    run.add_argument("--no-start", action="store_true", help="follow only: do not start the run")
    run.set_defaults(handler=functools.partial(_main, action=_run, name="run"))

    call = commands.add_parser(
        "call",
        parents=[common],
        help="call one of the application's endpoints",
        description="Call an application endpoint with a JSON body; print its JSON result.",
    )
    call.add_argument("endpoint", metavar="ENDPOINT", help="e.g. campaigns/execute")
    call.add_argument("--body", default="{}", help="the JSON object to send (default {})")
    call.set_defaults(handler=functools.partial(_main, action=_call, name="call"))

    send = commands.add_parser(
        "send",
        parents=[common],
        help="send a message to an entity",
        description="Send a message (and optional JSON data) to an entity's wait.",
    )
    send.add_argument("entity", metavar="<entity_id>")
    send.add_argument("message", metavar="MESSAGE")
    send.add_argument("--data", default=None, help="JSON data carried by the message")
    send.set_defaults(handler=functools.partial(_main, action=_send, name="send"))

    ls = commands.add_parser(
        "ls",
        parents=[common],
        help="list the runs (root entities), newest first",
        description=(
            "List the runs the server's store holds (its root entities), newest first: id, "
            "status, type, name and when each was created. Filter them by --status, --type "
            "and a part of their --name; --limit N at a time (the command says how to see the "
            "next ones), --all for every one, --json for one JSON object per line."
        ),
    )
    ls.add_argument("--status", default=None, help="PENDING, IN_PROGRESS, WAITING, COMPLETED...")
    ls.add_argument("--type", default=None, help="only runs of this entity type")
    ls.add_argument("--name", default=None, help="only runs whose name contains this")
    ls.add_argument("--limit", type=int, default=20, help="runs per page, 1 to 200 (default 20)")
    ls.add_argument("--cursor", default=None, help="start after this cursor (from a last page)")
    ls.add_argument("--all", action="store_true", help="every run, page after page")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(handler=functools.partial(_main, action=_ls, name="ls"))

    cancel = commands.add_parser(
        "cancel",
        parents=[common],
        help="cancel an entity and its unfinished descendants",
        description="Cancel an entity and its unfinished descendants; print the ids cancelled.",
    )
    cancel.add_argument("entity", metavar="<entity_id>")
    cancel.set_defaults(handler=functools.partial(_main, action=_cancel, name="cancel"))


class _UsageError(Exception):
    pass


def _main(args: argparse.Namespace, *, action: _Action, name: str) -> int:
    url = args.url or os.environ.get(URL_VAR) or DEFAULT_URL
    token = (args.token if args.token is not None else os.environ.get(TOKEN_VAR)) or None
    for option in ("reconnect_timeout", "wait"):
        value = getattr(args, option)
        if not value >= 0:  # NaN too
            print(f"sluiceway {name}: --{option.replace('_', '-')} must be >= 0", file=sys.stderr)
            return 2
    try:
        check_url(url)
    except ValueError as exc:
        where = "--url" if args.url else f"${URL_VAR}" if os.environ.get(URL_VAR) else "the URL"
        print(f"sluiceway {name}: {where}: {exc}", file=sys.stderr)
        return 2
    try:
        return trio.run(_session, url, token, args, action)
    except _UsageError as exc:
        print(f"sluiceway {name}: {exc}", file=sys.stderr)
        return 2
    except ServerError as exc:
        print(f"sluiceway {name}: {exc}", file=sys.stderr)
        return 1
    except ConnectionRefusedByServerError as exc:
        print(f"sluiceway {name}: {_refusal(exc, token)}", file=sys.stderr)
        return 1
    except ConnectionLostError as exc:
        print(f"sluiceway {name}: {exc}", file=sys.stderr)
        return 1


def _refusal(exc: ConnectionRefusedByServerError, token: str | None) -> str:
    """One line on a refused connection, saying what to do about a token."""
    if exc.status == 401:
        what = "requires a token" if token is None else "refused the token"
        return (
            f"the server at {exc.url} {what} (401 unauthorized): give its token with --token "
            f"or ${TOKEN_VAR}"
        )
    return str(exc)


async def _session(url: str, token: str | None, args: argparse.Namespace, action: _Action) -> int:
    deadline = trio.current_time() + args.wait
    while True:
        connected = False
        try:
            async with connect(url, token=token, reconnect_timeout=args.reconnect_timeout) as c:
                connected = True
                return await action(c, args)
        except ConnectionLostError as exc:
            # --wait: a server that is starting does not listen yet (connection refused)
            refused = isinstance(exc.__cause__, OSError)
            if connected or not refused or trio.current_time() >= deadline:
                raise
        await trio.sleep(min(0.1, max(deadline - trio.current_time(), 0)))


def _json_arg(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _UsageError(f"{option} is not JSON: {exc}") from None


def _print(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
    sys.stdout.flush()


async def _call(client: Client, args: argparse.Namespace) -> int:
    body = _json_arg(args.body, "--body")
    if not isinstance(body, dict):
        raise _UsageError("--body must be a JSON object")
    _print(await client.call(args.endpoint, body))
    return 0


async def _send(client: Client, args: argparse.Namespace) -> int:
    data = None if args.data is None else _json_arg(args.data, "--data")
    _print({"message_id": await client.send_message(args.entity, args.message, data)})
    return 0


async def _ls(client: Client, args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 200:
        raise _UsageError("--limit must be from 1 to 200")
    cursor = args.cursor
    shown = 0
    while True:
        page = await client.list_runs(
            status=args.status, type=args.type, name=args.name, limit=args.limit, cursor=cursor
        )
        for run in page["runs"]:
            if args.json:
                _print(run)
            else:
                created = datetime.datetime.fromtimestamp(run["created_at"], datetime.UTC)
                sys.stdout.write(
                    f"{run['id']}  {run['status']:<11}  {run['type']:<16}  "
                    f"{created:%Y-%m-%d %H:%M:%S}  {run['name']}\n"
                )
        shown += len(page["runs"])
        cursor = page["cursor"]
        if cursor is None or not args.all:
            break
    sys.stdout.flush()
    if cursor is not None and not args.json:
        print(f"(more: sluiceway ls --cursor '{cursor}' ...)", file=sys.stderr)
    if not shown and not args.json:
        print("no run matches", file=sys.stderr)
    return 0


async def _cancel(client: Client, args: argparse.Namespace) -> int:
    _print({"cancelled": await client.cancel(args.entity)})
    return 0


async def _run(client: Client, args: argparse.Namespace) -> int:
    if args.after < 0:
        raise _UsageError("--after must be >= 0")
    entity = await client.get(args.entity)
    if not args.no_start:
        await client.start(entity["id"])
    if args.json:
        async with client.subscribe(entity["id"], after_seq=args.after) as envelopes:
            async for envelope in envelopes:
                _print(envelope.to_dict())
    else:
        await follow(client, entity["id"], after_seq=args.after)
    final = await client.get(entity["id"])
    status = final["status"]
    who = f"{final['type']} {final['name']}"
    if status == "COMPLETED":
        result = final["result"]
        if not args.json:
            _print(result)
        if not failed_result(result):
            return 0
        reason = result.get("error") or ""
        print(
            f"sluiceway run: {who} failed: its run completed with status 'failed'"
            + (f": {reason}" if reason else ""),
            file=sys.stderr,
        )
        return 1
    reason = (final.get("error") or {}).get("message") or ""
    print(f"sluiceway run: {who} is {status}" + (f": {reason}" if reason else ""), file=sys.stderr)
    return 1


async def follow(
    client: Client,
    entity_id: str,
    *,
    after_seq: int = 0,
    console: Console | None = None,
    refresh_every: float = 0.5,
) -> RunProgress:
    """Follow a run with the live display until it ends; returns what was seen. The store's
    counts of the root's children are refreshed every ``refresh_every`` seconds."""
    progress = RunProgress(entity_id)
    console = console or display_console(stderr=True)

    async def refresh_counts() -> None:
        while True:
            try:
                tree = await client.tree(entity_id, depth=0, max_children=0)
                progress.set_children(tree["children_by_status"])
            except ConnectionLostError:
                pass  # reconnecting: the next refresh will do
            await trio.sleep(refresh_every)

    with Live(
        progress.render(),
        console=console,
        refresh_per_second=4,
        get_renderable=progress.render,
        transient=False,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refresh_counts)
            async with client.subscribe(entity_id, after_seq=after_seq) as envelopes:
                async for envelope in envelopes:
                    progress.add(envelope)
            nursery.cancel_scope.cancel()
        # The last frame, once no refresh of the run's counts is under way (the answer of one
        # sent before the end could otherwise land after these counts).
        progress.set_children(await final_counts(client, entity_id))
    console.print(progress.summary())
    return progress


#: The statuses of a child that has finished.
_FINISHED = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


async def final_counts(
    client: Client, entity_id: str, *, patience: float = 1.5, pause: float = 0.1
) -> dict[str, int]:
    """The store's counts of an ended run's children by status, for the display's last
    frame. A server shares its ``tree`` answers among clients for a moment, so the first
    answer after the end may be a little older than the end: while it shows children that
    have not finished, ask again, for up to ``patience`` seconds (a run may also end with
    children that never finish: then the last answer is the one)."""
    deadline = trio.current_time() + patience
    while True:
        tree = await client.tree(entity_id, depth=0, max_children=0)
        counts: dict[str, int] = tree["children_by_status"]
        settled = all(status in _FINISHED for status, count in counts.items() if count)
        if settled or trio.current_time() >= deadline:
            return counts
        await trio.sleep(pause)
