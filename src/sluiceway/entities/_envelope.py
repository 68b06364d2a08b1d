"""Entity envelopes: the progress records of entity runs, in the original's shape.

An envelope is emitted by one entity and stored once, in that entity's log. ``seq`` orders every
envelope of the store (it is a stream's cursor), ``entity_seq`` numbers the envelopes of one
entity from 1 and ``ts`` is when it was emitted (wall-clock seconds).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any

import attrs

from ..store import StoredEnvelope
from ..store._json import encode_json

#: Keys of an envelope that the store keeps in its own columns (or with the entity), not in
#: the body.
_COLUMNS = ("seq", "entity_seq", "ts", "entity_id", "entity_type", "entity_name")


class EnvelopeType(enum.Enum):
    """The envelope types the runtime itself produces (a run may ``emit`` others too)."""

    #: A lifecycle or progress step: ``status`` is STARTED, RUNNING (or another progress status
    #: of the application), COMPLETED, FAILED or CANCELLED; ``message`` says more.
    STATUS = "STATUS"
    #: Progress details an entity emits: ``message`` and ``metadata``.
    INTERNAL_UPDATE = "INTERNAL_UPDATE"
    #: A value: ``sub_type="return"`` carries the run's result in ``value``.
    VALUE = "VALUE"
    #: The entity waits for a message: ``message`` is the prompt, ``data`` the context.
    WAITING = "WAITING"
    #: The run failed: ``error`` is ``{"type", "message"}``.
    ERROR = "ERROR"
    #: A message the entity received while waiting: ``message`` and ``data``.
    MESSAGE = "MESSAGE"


#: Statuses of STATUS envelopes that end a run.
TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


@attrs.frozen
class EntityEnvelope:
    """One progress record of an entity run.

    Attributes:
        type: ``STATUS``, ``INTERNAL_UPDATE``, ``VALUE``, ``WAITING``, ``ERROR``, ``MESSAGE``
            (see :class:`EnvelopeType`) or a type of the application's own.
        entity_id, entity_type, entity_name: the entity that emitted it.
        seq: its position among all the envelopes of the store (a stream's cursor).
        entity_seq: its position among the envelopes of its entity, from 1.
        ts: when it was emitted (wall-clock seconds since the epoch).
        status: on STATUS envelopes, the step (``"STARTED"``, ``"RUNNING"``...).
        message: a human-readable line (a WAITING prompt, a status message...).
        sub_type: on VALUE envelopes, ``"return"`` for a run's result.
        value: a VALUE's value.
        data: a WAITING or MESSAGE envelope's data.
        metadata: anything else worth showing (counts, stage, the attempt number...).
        error: an ERROR envelope's ``{"type", "message"}``.
    """

    type: str
    entity_id: str
    entity_type: str
    entity_name: str
    seq: int = 0
    entity_seq: int = 0
    ts: float = 0.0
    status: str | None = None
    message: str | None = None
    sub_type: str | None = None
    value: Any = None
    data: Any = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
    error: dict[str, str] | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether this is the STATUS envelope that ends a run (COMPLETED, FAILED, CANCELLED)."""
        return self.type == "STATUS" and self.status in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a JSON-safe dict (fields that are ``None`` or empty are left out,
        except the identity and position fields)."""
        out: dict[str, Any] = {
            "type": self.type,
            "entity_id": self.entity_id,
            "entity_type": self.entity_type,
            "entity_name": self.entity_name,
            "seq": self.seq,
            "entity_seq": self.entity_seq,
            "ts": self.ts,
        }
        for key in ("status", "message", "sub_type", "value", "data", "error"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.metadata:
            out["metadata"] = self.metadata
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EntityEnvelope:
        """Rebuild an envelope from :meth:`to_dict`'s form (unknown keys are refused)."""
        unknown = data.keys() - _FIELDS
        if unknown:
            raise ValueError(f"unknown envelope fields: {sorted(unknown)}")
        for key in ("type", "entity_id", "entity_type", "entity_name"):
            if not isinstance(data.get(key), str):
                raise ValueError(f"an envelope needs a string {key!r}, got {data.get(key)!r}")
        return cls(**data)

    @classmethod
    def from_stored(cls, stored: StoredEnvelope) -> EntityEnvelope:
        """The envelope a store returned: its body, the positions the store assigned and the
        entity that emitted it."""
        return cls.from_dict(
            {
                **stored.body,
                "entity_id": stored.entity_id,
                "entity_type": stored.entity_type,
                "entity_name": stored.entity_name,
                "seq": stored.seq,
                "entity_seq": stored.entity_seq,
                "ts": stored.ts,
            }
        )

    def body(self) -> dict[str, Any]:
        """What a store keeps in the envelope's body: everything but the positions and the
        entity's identity, which the store keeps once."""
        out = self.to_dict()
        for key in _COLUMNS:
            out.pop(key, None)
        return out


def check_json(value: object, what: str) -> None:
    """Raise a clear ``TypeError`` / ``ValueError`` if ``value`` cannot be stored as JSON
    exactly as it is (the stores' rule: see :func:`~sluiceway.store._json.encode_json`)."""
    encode_json(value, what)


def check_finite(value: float, what: str) -> float:
    """``value`` as a float, if it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return float(value)


#: The fields of an envelope (``from_dict`` refuses any other key).
_FIELDS = frozenset(field.name for field in attrs.fields(EntityEnvelope))
