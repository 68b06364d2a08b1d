"""``sluiceway graph``: read the entities of an entity store from the command line.

``sluiceway graph [--db PATH|URL] <command> <entity> [options]`` opens the store (a SQLite
file, or a PostgreSQL URL) read-only (it never writes to it) and prints one entity (``node``),
its edges (``edges``), its input and output (``io``), its call tree (``tree``) or the envelope
log of its subtree (``progress``). ``<entity>`` is an entity id, or the name of a root entity.

Output is made for pipes: ``node``, ``edges`` and ``io`` print one compact JSON document on one
line (``--pretty`` indents it), ``progress`` one compact JSON envelope per line (NDJSON), and
``tree`` one line of text per entity. Errors go to stderr as ``sluiceway graph: <message>``,
with exit code 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import textwrap
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._errors import EntityNotFoundError, StoreError
from ..entities import EntityEnvelope
from ..store import EdgeRecord, EntityRecord, EntityStatus, EntityStore, open_store
from ..store._open import is_postgres_url
from ._common import DB_HELP, DB_METAVAR, ENV_VAR, driver_errors, redact, scrub, store_target

#: How many envelopes ``progress`` reads from the store at a time.
PAGE_SIZE = 1000

#: How many children ``tree`` lists under each entity unless ``--max-children`` says otherwise.
DEFAULT_MAX_CHILDREN = 20

#: What a command does once the store is open and its entity found.
_Show = Callable[[EntityStore, EntityRecord, argparse.Namespace], Awaitable[None]]


class GraphError(Exception):
    """An error reported as ``sluiceway graph: <message>`` (exit code 1), without a traceback."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``graph`` command and its subcommands to the ``sluiceway`` parser's
    ``commands``."""
    graph = commands.add_parser(
        "graph",
        help="inspect the entities of an entity store (read-only)",
        usage=f"%(prog)s [-h] [--db {DB_METAVAR}] <command> <entity> [options]",
        description=textwrap.dedent(
            """\
            Read the entities of a sluiceway entity store: one entity, its edges, its input
            and output, its call tree, or the envelope log of its subtree. The store is opened
            read-only and never written.
            """
        ),
        epilog=textwrap.dedent(
            f"""\
            <entity> is an entity id, or the name of a root entity.

            node, edges and io print one compact JSON document on one line (--pretty indents
            it); progress prints one compact JSON envelope per line (NDJSON); tree prints one
            line of text per entity. For example:

              sluiceway graph --db app.db tree campaign-7 --max-children 5
              sluiceway graph --db app.db progress campaign-7 | jq -c 'select(.type == "ERROR")'

            The store is --db PATH|URL (a SQLite file, or a PostgreSQL URL such as
            postgresql://USER@HOST/DB), or ${ENV_VAR}. Errors are printed on stderr as
            "sluiceway graph: <message>" with exit code 1; usage errors exit with 2.
            """
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    graph.add_argument("--db", metavar=DB_METAVAR, default=None, help=DB_HELP)
    graph.set_defaults(handler=functools.partial(_run, parser=graph))
    subcommands = graph.add_subparsers(
        title="commands", dest="graph_command", metavar="<command>", required=True
    )

    # Every subcommand takes the entity, and --db after the subcommand too.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "entity", metavar="<entity>", help="an entity id, or the name of a root entity"
    )
    common.add_argument("--db", metavar=DB_METAVAR, default=argparse.SUPPRESS, help=DB_HELP)
    pretty = argparse.ArgumentParser(add_help=False)
    pretty.add_argument(
        "--pretty", action="store_true", help="indent the JSON (default: compact, on one line)"
    )

    node = subcommands.add_parser(
        "node",
        prog=f"{graph.prog} node",
        parents=[common, pretty],
        help="the entity as a JSON object",
        description=(
            "Print the entity as one JSON object: id, parent_id, name, type, general_type, "
            "status, data, result, error, attempt, lease_owner, lease_expires, created_at, "
            "modified_at and last_entity_seq."
        ),
    )
    node.set_defaults(show=_show_node)

    edges = subcommands.add_parser(
        "edges",
        prog=f"{graph.prog} edges",
        parents=[common, pretty],
        help="its outgoing and incoming edges, as JSON",
        description=(
            'Print the entity\'s edges as {"outgoing": [...], "incoming": [...]}, each by '
            "type, then position. An edge is {id, type, from_id, to_id, position, data, "
            "created_at}."
        ),
    )
    edges.set_defaults(show=_show_edges)

    tree = subcommands.add_parser(
        "tree",
        prog=f"{graph.prog} tree",
        parents=[common],
        help="its call tree, one indented line per entity",
        description=(
            "Print the entity's call tree, one line per entity, indented by two spaces per "
            "level: 'Type (name) STATUS', followed for an entity with children by their count "
            "by status, e.g. '[12 children: 10 COMPLETED, 2 FAILED]'. Children are listed "
            "oldest first, at most --max-children per entity (then '... N more')."
        ),
    )
    tree.add_argument(
        "--depth",
        metavar="N",
        type=_non_negative,
        default=None,
        help="show N levels of descendants (0: the entity alone; default: all)",
    )
    tree.add_argument(
        "--max-children",
        metavar="N",
        type=_non_negative,
        default=DEFAULT_MAX_CHILDREN,
        help=f"list at most N children of each entity (default: {DEFAULT_MAX_CHILDREN})",
    )
    tree.add_argument("--ids", action="store_true", help="end each line with the entity's id")
    tree.set_defaults(show=_show_tree)

    progress = subcommands.add_parser(
        "progress",
        prog=f"{graph.prog} progress",
        parents=[common],
        help="the envelope log of its subtree, one JSON envelope per line",
        description=(
            "Print the envelopes of the entity and all its descendants (or of the entity "
            "alone, with --own) in seq order, one compact JSON object per line. To read the "
            "log in pages, pass the seq of the last envelope printed as --after."
        ),
    )
    progress.add_argument(
        "--after",
        metavar="N",
        type=_non_negative,
        default=0,
        help="only the envelopes whose seq is above N (default: 0, from the start)",
    )
    progress.add_argument(
        "--own", action="store_true", help="only the entity's own envelopes, not its subtree's"
    )
    progress.add_argument(
        "--limit",
        metavar="N",
        type=_non_negative,
        default=None,
        help="print at most N envelopes (default: all)",
    )
    progress.set_defaults(show=_show_progress)

    io = subcommands.add_parser(
        "io",
        prog=f"{graph.prog} io",
        parents=[common, pretty],
        help="its input, output, error and status, as JSON",
        description=(
            'Print {"input": data, "output": result, "error": error, "status": status} of the '
            "entity as one JSON object."
        ),
    )
    io.set_defaults(show=_show_io)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


# -- running ---------------------------------------------------------------------------------------


def _run(args: argparse.Namespace, *, parser: argparse.ArgumentParser) -> int:
    """Open the store named by ``--db`` or ``$SLUICEWAY_DB``, find the entity and show it."""
    target = store_target(args.db, parser)
    try:
        if not is_postgres_url(target) and os.path.isdir(target):
            raise GraphError(f"{target!r} is a directory, not an entity store")
        trio.run(_query, target, args.entity, args.show, args)
    except GraphError as exc:
        print(f"sluiceway graph: {scrub(str(exc), target)}", file=sys.stderr)
        return 1
    return 0


async def _query(target: str, ref: str, show: _Show, args: argparse.Namespace) -> None:
    """Open the store (a SQLite file, or a PostgreSQL URL) read-only, find the entity and
    show it; what goes wrong is a :class:`GraphError` (the store printed without password)."""
    shown = redact(target)
    try:
        async with open_store(target, read_only=True) as store:
            entity = await _resolve(store, ref, shown)
            await show(store, entity, args)
    except BrokenPipeError:
        raise  # stdout was closed: main() ends quietly
    except FileNotFoundError as exc:
        if is_postgres_url(target):
            raise GraphError(f"cannot read the entity store {shown!r}: {exc}") from None
        raise GraphError(f"no entity store at {target!r}: the file does not exist") from None
    except StoreError as exc:  # not a store, a newer store, unreadable, unreachable...
        raise GraphError(str(exc)) from None
    except OSError as exc:
        raise GraphError(f"cannot read the entity store {shown!r}: {exc}") from None
    except ImportError as exc:  # a PostgreSQL URL without psycopg
        raise GraphError(f"cannot open the entity store {shown!r}: {exc}") from None
    except driver_errors(target) as exc:
        raise GraphError(f"cannot read the entity store {shown!r}: {exc}") from None


async def _resolve(store: EntityStore, ref: str, shown: str) -> EntityRecord:
    """The entity whose id is ``ref``, else the root entity called ``ref``."""
    try:
        return await store.get_entity(ref)
    except EntityNotFoundError:
        pass
    found = await store.find_entity(None, ref)
    if found is None:
        raise GraphError(f"no entity has the id or root name {ref!r} in {shown}")
    return found


def _write(line: str) -> None:
    sys.stdout.write(line + "\n")


def _dump(value: Any, *, pretty: bool = False) -> str:
    if pretty:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# -- the commands ----------------------------------------------------------------------------------


def entity_to_dict(record: EntityRecord) -> dict[str, Any]:
    """An entity as ``node`` prints it (a JSON-safe dict; ``status`` is its value)."""
    return {
        "id": record.id,
        "parent_id": record.parent_id,
        "name": record.name,
        "type": record.type,
        "general_type": record.general_type,
        "status": record.status.value,
        "data": record.data,
        "result": record.result,
        "error": record.error,
        "attempt": record.attempt,
        "lease_owner": record.lease_owner,
        "lease_expires": record.lease_expires,
        "created_at": record.created_at,
        "modified_at": record.modified_at,
        "last_entity_seq": record.last_entity_seq,
    }


def edge_to_dict(edge: EdgeRecord) -> dict[str, Any]:
    """An edge as ``edges`` prints it (a JSON-safe dict)."""
    return {
        "id": edge.id,
        "type": edge.type,
        "from_id": edge.from_id,
        "to_id": edge.to_id,
        "position": edge.position,
        "data": edge.data,
        "created_at": edge.created_at,
    }


def tree_line(record: EntityRecord, counts: dict[EntityStatus, int]) -> str:
    """``Type (name) STATUS``, then ``[N children: n1 STATUS1, n2 STATUS2]`` if it has
    children (statuses in lifecycle order)."""
    line = f"{record.type} ({record.name}) {record.status.value}"
    total = sum(counts.values())
    if total:
        noun = "child" if total == 1 else "children"
        parts = ", ".join(
            f"{counts[status]} {status.value}" for status in EntityStatus if counts.get(status)
        )
        line += f" [{total} {noun}: {parts}]"
    return line


async def _show_node(store: EntityStore, entity: EntityRecord, args: argparse.Namespace) -> None:
    _write(_dump(entity_to_dict(entity), pretty=args.pretty))


async def _show_edges(store: EntityStore, entity: EntityRecord, args: argparse.Namespace) -> None:
    outgoing, incoming = await store.edges(entity.id)
    value = {
        "outgoing": [edge_to_dict(edge) for edge in outgoing],
        "incoming": [edge_to_dict(edge) for edge in incoming],
    }
    _write(_dump(value, pretty=args.pretty))


async def _show_io(store: EntityStore, entity: EntityRecord, args: argparse.Namespace) -> None:
    value = {
        "input": entity.data,
        "output": entity.result,
        "error": entity.error,
        "status": entity.status.value,
    }
    _write(_dump(value, pretty=args.pretty))


async def _show_tree(store: EntityStore, entity: EntityRecord, args: argparse.Namespace) -> None:
    """Depth-first, one line per entity as it is reached. Each entity printed costs one count
    query, and one children query if its children are printed too: the children of entities
    that are not printed (past ``--max-children`` or ``--depth``) are never loaded."""
    depth: int | None = args.depth
    max_children: int = args.max_children
    # (level, entity to print) or (level, how many children were left out).
    stack: list[tuple[int, EntityRecord | int]] = [(0, entity)]
    while stack:
        level, item = stack.pop()
        indent = "  " * level
        if isinstance(item, int):
            _write(f"{indent}... {item} more")
            continue
        counts = await store.count_children(item.id)
        line = indent + tree_line(item, counts)
        _write(f"{line} {item.id}" if args.ids else line)
        total = sum(counts.values())
        if not total or (depth is not None and level >= depth):
            continue
        if max_children == 0:
            stack.append((level + 1, total))
            continue
        children = await store.children(item.id)
        shown = children[:max_children]
        if len(children) > len(shown):
            stack.append((level + 1, len(children) - len(shown)))
        stack.extend((level + 1, child) for child in reversed(shown))


async def _show_progress(
    store: EntityStore, entity: EntityRecord, args: argparse.Namespace
) -> None:
    """Page through the log with ``read_envelopes``, ``PAGE_SIZE`` envelopes at a time."""
    after: int = args.after
    remaining: int | None = args.limit
    while remaining is None or remaining > 0:
        size = PAGE_SIZE if remaining is None else min(PAGE_SIZE, remaining)
        page = await store.read_envelopes(
            entity.id, after_seq=after, limit=size, subtree=not args.own
        )
        for stored in page:
            try:
                envelope = EntityEnvelope.from_stored(stored)
            except (TypeError, ValueError) as exc:
                raise GraphError(
                    f"envelope {stored.seq} (of entity {stored.entity_id}) cannot be read: {exc}"
                ) from None
            _write(_dump(envelope.to_dict()))
        if remaining is not None:
            remaining -= len(page)
        if len(page) < size:
            return
        after = page[-1].seq
