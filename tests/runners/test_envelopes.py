"""TaskEnvelope and its JSON-safe form."""

from __future__ import annotations

import datetime
import enum
import json
import math
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway import (
    EnvelopeKind,
    RemoteTaskError,
    TaskEnvelope,
    TaskTimeoutError,
    converter,
    envelope_from_dict,
    envelope_to_dict,
)
from sluiceway.runners import json_safe


class Colour(enum.Enum):
    RED = "red"


@attrs.frozen
class Draft:
    subject: str
    tags: tuple[str, ...]


def test_envelopes_are_frozen() -> None:
    envelope = TaskEnvelope(1, EnvelopeKind.FINAL, value=3)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        envelope.value = 4  # type: ignore[misc]
    assert envelope.is_final
    assert not TaskEnvelope(1, EnvelopeKind.INTERMEDIATE).is_final
    assert "FINAL" in repr(envelope)


def test_errors_become_type_and_message() -> None:
    envelope = TaskEnvelope(
        7, EnvelopeKind.ERROR, error=ValueError("bad input"), key="doc-7", started_at=1, at=2.5
    )
    data = envelope_to_dict(envelope)
    assert data == {
        "task_id": 7,
        "kind": "ERROR",
        "key": "doc-7",
        "value": None,
        "error": {"type": "ValueError", "message": "bad input"},
        "started_at": 1,
        "at": 2.5,
    }
    timeout = envelope_to_dict(TaskEnvelope(1, EnvelopeKind.ERROR, error=TaskTimeoutError("late")))
    assert timeout["error"] == {"type": "sluiceway.TaskTimeoutError", "message": "late"}


def test_round_trip_through_json() -> None:
    envelope = TaskEnvelope(
        3, EnvelopeKind.ERROR, error=KeyError("x"), key=("campaign", 3), started_at=0.5, at=1.0
    )
    back = envelope_from_dict(json.loads(json.dumps(envelope_to_dict(envelope))))
    assert back.task_id == 3
    assert back.kind is EnvelopeKind.ERROR
    assert back.key == ["campaign", 3]
    assert isinstance(back.error, RemoteTaskError)
    assert back.error.type_name == "KeyError"
    assert back.error.message == "'x'"
    assert str(back.error) == "KeyError: 'x'"
    # A rebuilt error serialises back to the same type and message.
    assert envelope_to_dict(back)["error"] == {"type": "KeyError", "message": "'x'"}
    rebuilt = converter.structure(converter.unstructure(envelope), TaskEnvelope)
    assert envelope_to_dict(rebuilt) == envelope_to_dict(back)


def test_values_are_made_json_safe() -> None:
    value: Any = {
        "draft": Draft("Hello", ("a", "b")),
        "colour": Colour.RED,
        "when": datetime.date(2026, 11, 21),
        "raw": b"\x00\x01",
        1: {1, 2},
        "floats": [math.inf, -math.inf, math.nan, 0.5],
        "other": object(),
    }
    safe = json_safe(value)
    json.dumps(safe)  # does not raise
    assert safe["draft"] == {"subject": "Hello", "tags": ["a", "b"]}
    assert safe["colour"] == "red"
    assert safe["when"] == "2026-11-21"
    assert safe["raw"] == "AAE="
    assert sorted(safe["1"]) == [1, 2]
    assert safe["floats"] == ["inf", "-inf", "nan", 0.5]
    assert safe["other"].startswith("<object object")


def test_structure_refuses_garbage() -> None:
    with pytest.raises(TypeError, match="mapping"):
        envelope_from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="BOGUS"):
        envelope_from_dict({"task_id": 1, "kind": "BOGUS"})
    with pytest.raises(KeyError):
        envelope_from_dict({"kind": "FINAL"})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(json_values, st.integers(1, 10**6), st.sampled_from(list(EnvelopeKind)))
def test_json_values_round_trip_unchanged(value: Any, task_id: int, kind: EnvelopeKind) -> None:
    envelope = TaskEnvelope(task_id, kind, value=value)
    data = json.loads(json.dumps(envelope_to_dict(envelope)))
    back = envelope_from_dict(data)
    expected = json_safe(value)
    assert back.value == expected
    assert (back.task_id, back.kind) == (task_id, kind)
