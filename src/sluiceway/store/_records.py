"""What an entity store keeps: entities, edges, envelopes, messages and durable waits.

Records are frozen snapshots: reading one again gives the current state. Times are wall-clock
seconds since the epoch (``time.time()`` unless the runtime was given another clock): they must
mean the same thing in every process sharing the store, which trio's clock does not.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

import attrs

#: A JSON value as the stores keep it (what ``json.loads`` returns).
JSON = Any


class EntityStatus(enum.Enum):
    """The lifecycle state of an entity.

    ``PENDING`` (created, never started), ``IN_PROGRESS`` (running, or abandoned by a process
    that stopped; also while it sleeps durably), ``WAITING`` (waiting for a message),
    ``COMPLETED`` (its result is stored; it never runs again), ``FAILED`` (its error is stored;
    running it again re-runs it), ``CANCELLED`` (cancelled on request; it does not run again).

    :meth:`parse` also accepts the spellings the original used in different places
    (``"InProgress"``, ``"Running"``, ``"Created"``, ``"Error"``...).
    """

    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    WAITING = "WAITING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        """COMPLETED or CANCELLED: the entity does not run again by itself."""
        return self in (EntityStatus.COMPLETED, EntityStatus.CANCELLED)

    @property
    def is_active(self) -> bool:
        """IN_PROGRESS or WAITING: a run has started and not finished."""
        return self in (EntityStatus.IN_PROGRESS, EntityStatus.WAITING)

    @classmethod
    def parse(cls, value: str | EntityStatus) -> EntityStatus:
        """The status named by ``value``, accepting the original's aliases and any case."""
        if isinstance(value, EntityStatus):
            return value
        if not isinstance(value, str):
            raise TypeError(f"an entity status is a string, got {value!r}")
        key = value.strip().replace("-", "").replace("_", "").replace(" ", "").lower()
        status = _ALIASES.get(key)
        if status is None:
            names = ", ".join(member.value for member in cls)
            raise ValueError(f"unknown entity status {value!r}; expected one of {names}")
        return status


_ALIASES: dict[str, EntityStatus] = {
    "pending": EntityStatus.PENDING,
    "created": EntityStatus.PENDING,
    "inprogress": EntityStatus.IN_PROGRESS,
    "running": EntityStatus.IN_PROGRESS,
    "started": EntityStatus.IN_PROGRESS,
    "waiting": EntityStatus.WAITING,
    "paused": EntityStatus.WAITING,
    "completed": EntityStatus.COMPLETED,
    "complete": EntityStatus.COMPLETED,
    "done": EntityStatus.COMPLETED,
    "failed": EntityStatus.FAILED,
    "error": EntityStatus.FAILED,
    "cancelled": EntityStatus.CANCELLED,
    "canceled": EntityStatus.CANCELLED,
}


@attrs.frozen
class NewEntity:
    """An entity to create.

    ``parent_id`` is ``None`` for a root. A child is created together with the edge
    ``edge_type`` (``"Calls"`` by default) from its parent, in the same transaction. With
    ``submit``, it is created submitted (runnable at ``created_at``): a claim loop runs it, and
    no crash can leave it created but never started.
    """

    id: str
    name: str
    type: str
    general_type: str
    data: Mapping[str, JSON]
    created_at: float
    parent_id: str | None = None
    edge_type: str = "Calls"
    edge_data: Mapping[str, JSON] = attrs.field(factory=dict)
    submit: bool = False


@attrs.frozen
class EntityRecord:
    """One entity as stored.

    ``attempt`` counts the runs that started (claims); ``lease_owner`` / ``lease_expires`` are
    set while a runtime holds it. ``result`` is set once COMPLETED, ``error``
    (``{"type", "message"}``) once FAILED. ``last_entity_seq`` is the entity sequence number of
    its latest envelope (0 before any).

    ``runnable_at`` is when the claim loop of any runtime may run it (``None``: it does not run
    by itself): set by a submission, kept while a run of its own holds it, and set by parking
    to the wake-up time (or left ``None`` until a message or its children wake it).
    ``parked_on`` says what a parked entity waits for (a :class:`ParkReason` value).
    ``abandoned`` counts its runs abandoned by dying processes in a row, and ``emitted`` the
    envelopes its ``run_impl`` emitted, by position (a replay stores only those past it).
    """

    id: str
    parent_id: str | None
    name: str
    type: str
    general_type: str
    status: EntityStatus
    data: dict[str, JSON]
    result: JSON
    error: dict[str, str] | None
    attempt: int
    lease_owner: str | None
    lease_expires: float | None
    created_at: float
    modified_at: float
    last_entity_seq: int = 0
    runnable_at: float | None = None
    parked_on: str | None = None
    abandoned: int = 0
    emitted: int = 0

    @property
    def parked(self) -> bool:
        """Whether it is parked: waiting durably with no run in any process."""
        return self.parked_on is not None and self.lease_owner is None


@attrs.frozen
class ClaimBatch:
    """What one ``claim_due`` did: the entities it claimed, the ids it failed instead (the
    crash-loop guard), and whether a suspect waits to run alone (see ``claim_due``)."""

    claimed: list[EntityRecord]
    failed: list[str]
    suspect_waiting: bool = False


class ParkReason(enum.Enum):
    """What a parked entity waits for: the time of a durable sleep (or of a message wait's
    timeout), a message, or its children that are still pending."""

    TIMER = "timer"
    MESSAGE = "message"
    CHILDREN = "children"


@attrs.frozen
class EdgeRecord:
    """A directed, typed edge. ``position`` numbers the edges of one ``(from_id, type)`` from 1
    in creation order."""

    id: int
    from_id: str
    to_id: str
    type: str
    position: int
    data: dict[str, JSON]
    created_at: float


@attrs.frozen
class StoredEnvelope:
    """An envelope as stored: ``seq`` orders every envelope of the store (it is the cursor of a
    stream), ``entity_seq`` numbers the envelopes of one entity from 1, ``ts`` is when it was
    emitted, ``body`` the envelope's other fields. The entity's type and name are not repeated
    in each body: reads return them with the envelope."""

    seq: int
    entity_id: str
    entity_seq: int
    ts: float
    body: dict[str, JSON]
    entity_type: str = ""
    entity_name: str = ""


#: How a stored body begins when its first key is the envelope's type (as the runtime
#: writes them): ``{"type":"VALUE",...``.
_TYPE_FIRST = '{"type":"'


class EnvelopeRow(NamedTuple):
    """A stored envelope as :meth:`EntityStore.read_tail` returns it: the row, its body still
    the stored JSON text. A stream's reader keeps thousands of these and decodes only those
    it hands on (:meth:`stored`): a sample of a busy run costs its few kept envelopes."""

    seq: int
    entity_id: str
    entity_seq: int
    ts: float
    body: str
    entity_type: str
    entity_name: str

    def envelope_type(self) -> str:
        """The envelope's ``type``, read from the body's text when it comes first (as the
        runtime writes bodies), else from the decoded body."""
        body = self.body
        if body.startswith(_TYPE_FIRST):
            end = body.find('"', len(_TYPE_FIRST))
            kind = body[len(_TYPE_FIRST) : end]
            if end > 0 and "\\" not in kind:
                return kind
        kind = json.loads(body).get("type")
        return kind if isinstance(kind, str) else ""

    def stored(self) -> StoredEnvelope:
        """The envelope, its body decoded."""
        return StoredEnvelope(
            seq=self.seq,
            entity_id=self.entity_id,
            entity_seq=self.entity_seq,
            ts=self.ts,
            body=json.loads(self.body),
            entity_type=self.entity_type,
            entity_name=self.entity_name,
        )


@attrs.frozen
class EnvelopeTail:
    """What :meth:`EntityStore.read_tail` read in one go: the followed entity as it was
    first, then the highest ``seq`` stored, then the envelopes after the cursor (their
    bodies not yet decoded)."""

    record: EntityRecord
    highest: int
    envelopes: list[EnvelopeRow]


@attrs.frozen
class MessageRecord:
    """A message sent to an entity. ``consumed_by`` is the index of the wait that received it
    (``None`` while it is unread)."""

    id: int
    entity_id: str
    message: str
    data: JSON
    sent_at: float
    consumed_by: int | None


class WaitKind(enum.Enum):
    """What a durable wait waits for."""

    MESSAGE = "message"
    TIMER = "timer"


class WaitState(enum.Enum):
    """Where a durable wait is: still waiting, answered by a message, timed out, or (a timer)
    elapsed."""

    WAITING = "waiting"
    ANSWERED = "answered"
    TIMED_OUT = "timed_out"
    ELAPSED = "elapsed"


@attrs.frozen
class WaitRecord:
    """A durable wait of an entity, identified by its index: the n-th wait its ``run_impl``
    makes (1-based). A re-run makes the same waits in the same order, so index n finds what
    wait n already received instead of waiting again."""

    entity_id: str
    index: int
    kind: WaitKind
    prompt: str | None
    data: JSON
    deadline: float | None
    state: WaitState
    message: MessageRecord | None
    created_at: float


@attrs.frozen
class StoreChange:
    """What another process committed to a shared store, as :meth:`EntityStore.watch` tells
    it: envelopes appended, runs made due (submitted, woken, given back), messages sent to
    these entities, these entities cancelled, units of global limits given back (``units``)
    or wanted by a process short of them (``units_wanted``); ``everything`` when it is not
    known what (after the store's notification connection was opened again, or for a very
    large change)."""

    envelopes: bool = False
    due: bool = False
    messages: frozenset[str] = frozenset()
    cancelled: frozenset[str] = frozenset()
    units: bool = False
    units_wanted: bool = False
    everything: bool = False


@attrs.frozen
class UnitHold:
    """What ``hold_units`` did: how many units of the global limit the caller holds now, how
    many live processes hold or want units of it (the caller included if it does: its fair
    share is ``ceil(total / sharing)``), and how many other processes are short of units."""

    held: int
    sharing: int
    wanting: int
