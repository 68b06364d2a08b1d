"""``list_roots``: the runs of a store, newest first, filtered and paged (both stores)."""

from __future__ import annotations

import pytest

from sluiceway.store import EntityStatus, SqliteStore
from tests.store.helpers import new


async def test_roots_newest_first_filtered_and_paged(store: SqliteStore) -> None:
    for n in range(7):
        kind = "Campaign" if n % 2 else "Story"
        await store.create_entity(
            new(f"r{n}", name=f"Spring_{n}%", created_at=float(n // 2), entity_type=kind)
        )
    await store.create_entity(new("c1", parent="r0", name="child"))
    claimed = await store.claim("r6", "owner-a", now=10.0, expires=100.0, started={"k": 1})
    assert claimed is not None
    roots = await store.list_roots()
    # By creation time, newest first; ties by id, highest first. Children are not roots.
    assert [r.id for r in roots] == ["r6", "r5", "r4", "r3", "r2", "r1", "r0"]
    assert [r.id for r in await store.list_roots(type="Campaign")] == ["r5", "r3", "r1"]
    running = await store.list_roots(status=EntityStatus.IN_PROGRESS)
    assert [r.id for r in running] == ["r6"]
    assert [r.id for r in await store.list_roots(name="SPRING_3")] == ["r3"]
    # The wildcards of LIKE are matched as themselves.
    assert [r.id for r in await store.list_roots(name="_1%")] == ["r1"]
    assert await store.list_roots(name="ring__") == []
    page = await store.list_roots(limit=3)
    assert [r.id for r in page] == ["r6", "r5", "r4"]
    last = page[-1]
    page = await store.list_roots(limit=3, before=(last.created_at, last.id))
    assert [r.id for r in page] == ["r3", "r2", "r1"]
    page = await store.list_roots(limit=3, before=(page[-1].created_at, page[-1].id))
    assert [r.id for r in page] == ["r0"]
    assert await store.list_roots(type="Nothing\udc80") == []
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        await store.list_roots(limit=0)
