"""EnvelopeRow: a tail read's row, its body decoded only when taken."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sluiceway.store import EnvelopeRow, StoredEnvelope
from sluiceway.store._json import encode_json


def row(body: str) -> EnvelopeRow:
    return EnvelopeRow(7, "e", 3, 1.5, body, "Leaf", "a-leaf")


def test_the_type_is_read_from_the_text_and_the_body_decoded_when_taken() -> None:
    taken = row('{"type":"ERROR","error":{"message":"no"}}')
    assert taken.envelope_type() == "ERROR"
    assert taken.stored() == StoredEnvelope(
        seq=7,
        entity_id="e",
        entity_seq=3,
        ts=1.5,
        body={"type": "ERROR", "error": {"message": "no"}},
        entity_type="Leaf",
        entity_name="a-leaf",
    )


def test_a_body_whose_type_is_not_first_or_missing_is_decoded_to_find_it() -> None:
    assert row('{"data":{"type":"ERROR"},"type":"VALUE"}').envelope_type() == "VALUE"
    assert row('{"n":1}').envelope_type() == ""
    assert row('{"type":7}').envelope_type() == ""
    assert row('{"type":"WAIT\\"ING"}').envelope_type() == 'WAIT"ING'


@given(
    kind=st.text(max_size=12),
    others=st.dictionaries(st.text(max_size=6), st.text(max_size=6) | st.integers(), max_size=3),
    type_first=st.booleans(),
)
def test_the_type_read_is_the_decoded_bodys(
    kind: str, others: dict[str, Any], type_first: bool
) -> None:
    others.pop("type", None)
    body = {"type": kind, **others} if type_first else {**others, "type": kind}
    taken = row(encode_json(body, "a body"))
    assert taken.envelope_type() == kind
    assert taken.stored().body == body
