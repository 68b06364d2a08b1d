"""What both entity stores share: the columns and the records made of rows, the checks of
arguments and the rules that are the same in every database (the crash-loop guard's pause and
probation, ``expect`` checks)."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._errors import DataConflictError, EntityNotFoundError
from ._json import encode_json, encode_object
from ._protocol import CrashFailure
from ._records import (
    JSON,
    EdgeRecord,
    EntityRecord,
    EntityStatus,
    MessageRecord,
    WaitKind,
    WaitRecord,
    WaitState,
)

ENTITY_COLUMNS = (
    "id, parent_id, name, type, general_type, status, data, result, error, attempt,"
    " lease_owner, lease_expires, created_at, modified_at, last_entity_seq,"
    " runnable_at, parked_on, abandoned, emitted"
)
ENTITY_COLUMNS_E = ", ".join(f"e.{column.strip()}" for column in ENTITY_COLUMNS.split(","))
SELECT_ENTITY = f"SELECT {ENTITY_COLUMNS} FROM entities"
EDGE_COLUMNS = "id, from_id, to_id, type, position, data, created_at"
MESSAGE_COLUMNS = "id, entity_id, message, data, sent_at, consumed_by"


ACTIVE = (EntityStatus.IN_PROGRESS.value, EntityStatus.WAITING.value)
TERMINAL = (EntityStatus.COMPLETED.value, EntityStatus.CANCELLED.value)


def entity_from_row(row: Sequence[Any]) -> EntityRecord:
    (
        entity_id,
        parent_id,
        name,
        type_,
        general_type,
        status,
        data,
        result,
        error,
        attempt,
        lease_owner,
        lease_expires,
        created_at,
        modified_at,
        last_entity_seq,
        runnable_at,
        parked_on,
        abandoned,
        emitted,
    ) = row
    return EntityRecord(
        id=entity_id,
        parent_id=parent_id,
        name=name,
        type=type_,
        general_type=general_type,
        status=EntityStatus(status),
        data=json.loads(data),
        result=None if result is None else json.loads(result),
        error=None if error is None else json.loads(error),
        attempt=attempt,
        lease_owner=lease_owner,
        lease_expires=lease_expires,
        created_at=created_at,
        modified_at=modified_at,
        last_entity_seq=last_entity_seq,
        runnable_at=runnable_at,
        parked_on=parked_on,
        abandoned=abandoned,
        emitted=emitted,
    )


def edge_from_row(row: Sequence[Any]) -> EdgeRecord:
    edge_id, from_id, to_id, edge_type, position, data, created_at = row
    return EdgeRecord(
        id=edge_id,
        from_id=from_id,
        to_id=to_id,
        type=edge_type,
        position=position,
        data=json.loads(data),
        created_at=created_at,
    )


def message_from_row(row: Sequence[Any]) -> MessageRecord:
    message_id, entity_id, message, data, sent_at, consumed_by = row
    return MessageRecord(
        id=message_id,
        entity_id=entity_id,
        message=message,
        data=json.loads(data),
        sent_at=sent_at,
        consumed_by=consumed_by,
    )


def not_found(entity_id: str) -> EntityNotFoundError:
    return EntityNotFoundError(f"no entity has the id {entity_id!r}")


def check_index(index: int) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or index < 1:
        raise ValueError(f"a wait index is an int >= 1 (waits are numbered from 1), got {index!r}")


class Refusal(enum.Enum):
    """Why :func:`claim` did not claim an entity."""

    ENDED = "ended"  # COMPLETED or CANCELLED
    HELD = "held"  # another owner's live lease
    CRASH_LOOP = "crash_loop"  # failed by the crash-loop guard instead
    BACKING_OFF = "backing_off"  # taken over again after dying: due after a pause
    SUSPECT = "suspect"  # it must run alone in its process, and the caller runs others


def is_suspect(abandoned: int, crash_limit: int | None) -> bool:
    """Whether an entity abandoned ``abandoned`` times in a row is one death away from the
    crash limit: it runs on probation, alone in its process."""
    return crash_limit is not None and crash_limit >= 2 and abandoned >= crash_limit - 1


def crash_pause(abandoned: int) -> float:
    """How long the claim loop waits before running again an entity whose runs were abandoned
    ``abandoned`` times in a row: not at all the first time (a process died: take over at
    once), then 1 s, 2 s, 4 s... up to a minute. A process killed again and again from outside
    then rarely takes its runs down with it twice more, while a run that kills every process
    still reaches the crash limit."""
    return 0.0 if abandoned < 2 else min(2.0 ** (abandoned - 2), 60.0)


def check_expected(record: EntityRecord, expect: Mapping[str, Any]) -> None:
    """Raise :class:`~sluiceway.DataConflictError` unless each key of ``expect`` has that
    value in the entity's data (a missing key matches ``None``)."""
    _check_expected(f"{record.type} {record.name!r} ({record.id})", record.data, expect)


def check_expected_data(entity_id: str, data: Mapping[str, Any], expect: Mapping[str, Any]) -> None:
    """:func:`check_expected` on the data of the entity ``entity_id``."""
    _check_expected(f"entity {entity_id}", data, expect)


def _check_expected(what: str, data: Mapping[str, Any], expect: Mapping[str, Any]) -> None:
    for key, value in expect.items():
        current = data.get(key)
        if current != value or type(current) is not type(value):
            raise DataConflictError(
                f"{what} has {key}={current!r}, not "
                f"{value!r}: it changed meanwhile, so nothing was written",
                key=key,
                expected=value,
                actual=current,
            )


def storable(text: object) -> bool:
    """Whether ``text`` is a string SQLite can store (no lone surrogate)."""
    if not isinstance(text, str):
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def known_id(entity_id: object) -> None:
    """Refuse at once an id no stored entity can have (not a string, or not valid Unicode)."""
    if not storable(entity_id):
        raise EntityNotFoundError(f"no entity has the id {entity_id!r}")


WAIT_COLUMNS = (
    "w.entity_id, w.idx, w.kind, w.prompt, w.data, w.deadline, w.state, w.created_at,"
    " m.id, m.entity_id, m.message, m.data, m.sent_at, m.consumed_by"
)


def wait_from_row(row: Sequence[Any]) -> WaitRecord:
    """A wait from the :data:`WAIT_COLUMNS` of a row (the message's columns are NULL if none
    answered it)."""
    (wait_entity, idx, kind, prompt, data, deadline, state, created_at, *message) = row
    return WaitRecord(
        entity_id=wait_entity,
        index=idx,
        kind=WaitKind(kind),
        prompt=prompt,
        data=json.loads(data),
        deadline=deadline,
        state=WaitState(state),
        message=None if message[0] is None else message_from_row(message),
        created_at=created_at,
    )


# -- arguments ---------------------------------------------------------------------------------


def check_crash_rules(limit: int | None, failure: CrashFailure | None) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"crash_limit must be an int >= 1 or None, got {limit!r}")
    if failure is None:
        raise TypeError("crash_limit needs crash_failure (what to record when it is reached)")


def started_encoder(
    started: Mapping[str, JSON] | Callable[[int], Mapping[str, JSON]], what: str
) -> Callable[[int], str]:
    """The JSON of the STARTED envelope of a claim, by attempt."""
    if callable(started):
        return lambda attempt: encode_object(
            started(attempt), f"the started envelope of attempt {attempt} ({what})"
        )
    body = encode_object(started, f"the started envelope of entity {what!r}")
    return lambda attempt: body


def check_text_arg(value: object, what: str) -> None:
    """Refuse anything but a non-empty string that can be stored."""
    if not storable(value) or not value:
        raise ValueError(f"{what} must be a non-empty string of valid Unicode, got {value!r}")


def check_limit(limit: object, what: str) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"{what} limit must be an int >= 1, got {limit!r}")


def encode_outcome(
    entity_id: str, status: EntityStatus, result: JSON, error: Mapping[str, str] | None
) -> tuple[str | None, str | None]:
    """The JSON of the result and the error of a run that ends (``finish``), checked."""
    if status is EntityStatus.COMPLETED:
        if error is not None:
            raise ValueError(f"finish() got an error for COMPLETED entity {entity_id!r}")
        return encode_json(result, f"the result of entity {entity_id!r}"), None
    if status is EntityStatus.FAILED:
        if result is not None:
            raise ValueError(f"finish() got a result for FAILED entity {entity_id!r}")
        if error is None:
            return None, None
        if not isinstance(error, Mapping) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in error.items()
        ):
            raise TypeError(f"finish() error must map str to str (type, message), got {error!r}")
        return None, encode_json(dict(error), f"the error of entity {entity_id!r}")
    raise ValueError(
        f"finish() ends a run as COMPLETED or FAILED, not {status!r}; "
        "use cancel() to cancel an entity"
    )


def check_status_move(status: EntityStatus) -> None:
    if status is not EntityStatus.IN_PROGRESS and status is not EntityStatus.WAITING:
        raise ValueError(
            f"set_status() moves an entity to IN_PROGRESS or WAITING, not {status!r}; "
            "use finish() or cancel() to end it"
        )


def prepare_envelopes(
    items: Sequence[tuple[str, float, Mapping[str, JSON]]], emitted: int
) -> list[tuple[str, float, str]]:
    """The checked ``(entity_id, ts, body JSON)`` of ``append_envelopes``."""
    if isinstance(emitted, bool) or not isinstance(emitted, int) or emitted < 0:
        raise ValueError(f"append_envelopes() emitted must be an int >= 0, got {emitted!r}")
    prepared: list[tuple[str, float, str]] = []
    for item in items:
        if not isinstance(item, tuple) or len(item) != 3:
            raise TypeError(
                f"append_envelopes() items are (entity_id, ts, body) tuples, got {item!r}"
            )
        entity_id, ts, body = item
        prepared.append(
            (entity_id, ts, encode_object(body, f"an envelope of entity {entity_id!r}"))
        )
    if emitted and len({entity_id for entity_id, _, _ in prepared}) > 1:
        raise ValueError("append_envelopes() counts emitted envelopes of one entity only")
    return prepared


class State(enum.Enum):
    """Where a database is in its life."""

    NEW = "new"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
