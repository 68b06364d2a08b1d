"""The protocol's operations for looking around and for a page's actions: ``list`` (the
runs), ``capacity`` (the watched capacity nodes) and ``retry`` (a FAILED entity run again)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..store import EntityRecord, EntityStatus
from ._protocol import (
    CapacityRequest,
    EncodedResult,
    ErrorCode,
    ListRequest,
    ProtocolError,
    RetryRequest,
    encoded,
)

if TYPE_CHECKING:
    from ._server import RuntimeServer

#: The most runs one ``list`` answers with.
MAX_LIST = 200


async def list_runs(server: RuntimeServer, body: ListRequest) -> EncodedResult:
    """The ``list`` operation: root entities, newest first, a page at a time."""
    if not 1 <= body.limit <= MAX_LIST:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"limit must be from 1 to {MAX_LIST}, got {body.limit}"
        )
    status = None
    if body.status is not None:
        try:
            status = EntityStatus(body.status)
        except ValueError:
            known = ", ".join(s.value for s in EntityStatus)
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST, f"unknown status {body.status!r}; known: {known}"
            ) from None
    before = None if body.cursor is None else _parse_cursor(body.cursor)

    async def read() -> EncodedResult:
        # One more than asked for: whether there is a next page, without another query.
        records = await server.runtime.store.list_roots(
            status=status, type=body.type, name=body.name, before=before, limit=body.limit + 1
        )
        page = records[: body.limit]
        cursor = _cursor(page[-1]) if len(records) > body.limit else None
        return encoded({"runs": [run_summary(record) for record in page], "cursor": cursor})

    key = ("list", body.status, body.type, body.name, body.limit, body.cursor)
    answer: EncodedResult = await server.reads.get(key, read)
    return answer


def run_summary(record: EntityRecord) -> dict[str, Any]:
    """What a list of runs shows of one (its data and result are left to ``get``)."""
    return {
        "id": record.id,
        "name": record.name,
        "type": record.type,
        "status": record.status.value,
        "attempt": record.attempt,
        "parked_on": record.parked_on,
        "created_at": record.created_at,
        "modified_at": record.modified_at,
        "error": record.error,
    }


def _cursor(record: EntityRecord) -> str:
    return f"{record.created_at!r}/{record.id}"


def _parse_cursor(text: str) -> tuple[float, str]:
    created, sep, entity_id = text.partition("/")
    try:
        at = float(created)
    except ValueError:
        at = math.nan
    if not sep or not entity_id or not math.isfinite(at):
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, "cursor: pass back the cursor a list answered with"
        )
    return at, entity_id


async def capacity(server: RuntimeServer, body: CapacityRequest) -> dict[str, Any]:
    """The ``capacity`` operation: the runtime's watched capacity nodes, now."""
    del body  # no fields
    return {"nodes": server.runtime.gauges.snapshot()}


async def retry(server: RuntimeServer, body: RetryRequest) -> dict[str, Any]:
    """The ``retry`` operation: a FAILED entity submitted again (it runs from the top; its
    COMPLETED children keep their results), if the application lets the protocol start it
    (its ``startable``, as for ``start``)."""
    record = await server.resolve(body.entity_id)
    if record.status is not EntityStatus.FAILED:
        raise ProtocolError(
            ErrorCode.NOT_FAILED,
            f"{record.type} {record.name!r} is {record.status.value}: only a FAILED entity is "
            "retried",
        )
    return await server.start(record.id, generic=True)
