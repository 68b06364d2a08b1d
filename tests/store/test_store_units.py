"""The units of global limits (``hold_units``, ``unit_holders``), on both stores."""

from __future__ import annotations

import pytest

from sluiceway.store import EntityStore, UnitHold


async def hold(
    store: EntityStore,
    owner: str,
    target: int,
    *,
    total: int = 3,
    now: float = 10.0,
    lease: float = 30.0,
    dead: tuple[str, ...] = (),
) -> int:
    hold = await store.hold_units(
        "images", owner, total=total, target=target, now=now, expires=now + lease, dead=dead
    )
    return hold.held


async def test_units_are_shared_up_to_the_total(store: EntityStore) -> None:
    assert await hold(store, "a", 2) == 2
    assert await hold(store, "b", 2) == 1  # one left
    assert await hold(store, "c", 1) == 0
    assert await store.unit_holders("images", now=10.0) == {"a": 2, "b": 1}
    # Each limit has its own units.
    other = await store.hold_units("other", "c", total=1, target=1, now=10.0, expires=40.0)
    assert other == UnitHold(held=1, sharing=1, wanting=0)


async def test_giving_back_frees_units_for_others(store: EntityStore) -> None:
    await hold(store, "a", 3)
    assert await hold(store, "a", 1) == 1
    assert await hold(store, "b", 3) == 2
    assert await hold(store, "a", 0) == 0
    assert await hold(store, "b", 3) == 3
    assert await store.unit_holders("images", now=10.0) == {"b": 3}


async def test_a_holder_whose_lease_expired_holds_nothing(store: EntityStore) -> None:
    await hold(store, "a", 3, now=10.0, lease=5.0)
    assert await hold(store, "b", 3, now=14.0) == 0  # a is alive until 15
    assert await store.unit_holders("images", now=15.0) == {}
    assert await hold(store, "b", 3, now=15.0) == 3  # a's units came back with its lease
    # a wakes up (a frozen process resuming): it holds what nobody took, here nothing.
    assert await hold(store, "a", 3, now=16.0) == 0


async def test_renewing_leases_keeps_the_units(store: EntityStore) -> None:
    await hold(store, "a", 2, now=10.0, lease=5.0)
    await store.renew_leases("a", expires=40.0)
    assert await hold(store, "b", 3, now=20.0) == 1
    assert await store.unit_holders("images", now=20.0) == {"a": 2, "b": 1}


async def test_units_of_a_known_dead_owner_are_free_at_once(store: EntityStore) -> None:
    await hold(store, "a", 3)
    assert await hold(store, "b", 3, dead=("a",)) == 3


async def test_a_lower_total_takes_units_past_it_back(store: EntityStore) -> None:
    assert await hold(store, "a", 3, total=3) == 3
    assert await hold(store, "a", 3, total=2) == 2
    assert await hold(store, "b", 1, total=2) == 0
    assert await store.unit_holders("images", now=10.0) == {"a": 2}


@pytest.mark.parametrize(
    ("limit", "total", "target"),
    [("", 3, 1), ("images", 0, 1), ("images", 3, -1), ("images", True, 1), ("\ud800", 3, 1)],
)
async def test_bad_arguments_are_refused(
    store: EntityStore, limit: str, total: int, target: int
) -> None:
    with pytest.raises(ValueError, match="hold_units"):
        await store.hold_units(limit, "a", total=total, target=target, now=1.0, expires=2.0)
    assert await store.unit_holders("images", now=1.0) == {}


async def test_a_process_left_short_is_counted_as_wanting(store: EntityStore) -> None:
    first = await store.hold_units("images", "a", total=4, target=4, now=10.0, expires=40.0)
    assert first == UnitHold(held=4, sharing=1, wanting=0)
    short = await store.hold_units("images", "b", total=4, target=3, now=10.0, expires=40.0)
    assert short == UnitHold(held=0, sharing=2, wanting=0)  # nobody else wants
    # a learns that b is short: its fair share is 2 of 4.
    again = await store.hold_units("images", "a", total=4, target=2, now=10.0, expires=40.0)
    assert again == UnitHold(held=2, sharing=2, wanting=1)
    served = await store.hold_units("images", "b", total=4, target=2, now=10.0, expires=40.0)
    assert served == UnitHold(held=2, sharing=2, wanting=0)
    # b is served: nobody wants any more.
    last = await store.hold_units("images", "a", total=4, target=2, now=10.0, expires=40.0)
    assert last.wanting == 0
    # A process that wants and then dies is not counted once its lease is over.
    await store.hold_units("images", "c", total=4, target=1, now=10.0, expires=20.0)
    later = await store.hold_units("images", "a", total=4, target=2, now=21.0, expires=60.0)
    assert (later.sharing, later.wanting) == (2, 0)  # a and b hold; c is gone
