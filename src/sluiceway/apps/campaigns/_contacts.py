"""Changing a contact: attributes, tags and lead score, as one compare-and-set, so that
concurrent changes (an endpoint, the actions of several campaigns) lose nothing, and a
change made under an idempotency key is made once."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from ..._errors import DataConflictError
from ...entities import Runtime

#: Contact fields a change may not set as attributes (they have their own endpoints).
RESERVED = frozenset(
    {"first_name", "last_name", "email", "company", "tags", "lead_score", "attributes"}
)


@attrs.frozen(kw_only=True)
class ContactChange:
    """What to change on a contact.

    Attributes:
        attributes: custom attributes to set (``None`` removes one).
        add_tags: tags to add.
        remove_tags: tags to remove.
        lead_score: the lead score to set.
        lead_score_delta: how much to add to the lead score (a missing score counts as 0).
    """

    attributes: Mapping[str, Any] = attrs.field(factory=dict)
    add_tags: tuple[str, ...] = ()
    remove_tags: tuple[str, ...] = ()
    lead_score: float | None = None
    lead_score_delta: float = 0

    def apply(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The fields of ``data`` (a contact's) this change rewrites, with their new values."""
        changed: dict[str, Any] = {}
        if self.attributes:
            attributes = dict(data.get("attributes") or {})
            for name, value in self.attributes.items():
                if value is None:
                    attributes.pop(name, None)
                else:
                    attributes[name] = value
            changed["attributes"] = attributes
        if self.add_tags or self.remove_tags:
            tags = set(data.get("tags") or [])
            tags.update(self.add_tags)
            tags.difference_update(self.remove_tags)
            changed["tags"] = sorted(tags)
        if self.lead_score is not None or self.lead_score_delta:
            base = self.lead_score if self.lead_score is not None else data.get("lead_score")
            score = (base if isinstance(base, int | float) else 0) + self.lead_score_delta
            if not math.isfinite(score):
                raise ValueError(f"the lead score would be {score}")
            changed["lead_score"] = score
        return changed


@attrs.frozen
class ContactChanged:
    """What :func:`change_contact` did: the contact's data afterwards, whether this call
    changed it (``False``: its key was applied before), and the tags it added."""

    data: dict[str, Any]
    applied: bool
    added_tags: tuple[str, ...]


async def change_contact(
    runtime: Runtime, contact_id: str, change: ContactChange, *, key: str | None = None
) -> ContactChanged:
    """Apply ``change`` to the contact ``contact_id``: read it, compute the new fields, and
    write them if nobody changed them meanwhile (else read again). With ``key``, the change
    is applied once: the key is kept in the contact's ``applied_changes`` in the same write,
    and a change whose key is there is not made again (a replayed action step).

    Raises:
        EntityNotFoundError: no such contact.
        ValueError: the change cannot be made (a lead score that would not be finite).
    """
    while True:
        record = await runtime.get(contact_id)
        data = record.data
        applied = dict(data.get("applied_changes") or {})
        if key is not None and key in applied:
            return ContactChanged(data, False, ())
        changed = change.apply(data)
        expect = {field: data.get(field) for field in changed}
        if key is not None:
            expect["applied_changes"] = data.get("applied_changes")
            applied[key] = runtime.clock()
            changed["applied_changes"] = applied
        before = set(data.get("tags") or [])
        try:
            new = await runtime.update_data_if(contact_id, expect, changed)
        except DataConflictError:
            continue
        added = tuple(sorted(set(new.get("tags") or []) - before))
        return ContactChanged(new, True, added)
