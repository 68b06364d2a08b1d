"""What must hold after a scale-out run, read from the store and the ledger."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

from sluiceway.entities._live import owner_is_dead
from tests.scaleout.cluster import peak, query


def check_store(dsn: str) -> dict[str, int]:
    """Each ``(parent, name)`` exists once, each entity completed once and never started again
    after it completed, and every recipient's effect happened exactly once. Returns counts
    (attempts, duplicate sends) for the report."""
    assert (
        query(
            dsn, "SELECT parent_id, name FROM entities GROUP BY parent_id, name HAVING count(*) > 1"
        )
        == []
    )
    statuses: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for entity_id, seq, body in query(dsn, "SELECT entity_id, seq, body FROM envelopes"):
        status = json.loads(body).get("status")
        if status in ("STARTED", "COMPLETED"):
            statuses[entity_id].append((seq, status))
    entities = query(dsn, "SELECT id, type, status, attempt FROM entities")
    for entity_id, type_name, status, attempt in entities:
        assert status == "COMPLETED", (entity_id, type_name, status)
        seen = sorted(statuses[entity_id])
        completed = [seq for seq, kind in seen if kind == "COMPLETED"]
        assert len(completed) == 1, (entity_id, seen)  # completed once
        assert all(seq < completed[0] for seq, kind in seen if kind == "STARTED"), seen
        assert sum(kind == "STARTED" for _, kind in seen) == attempt  # each claim announced
    recipients = {
        entity_id for entity_id, type_name, _, _ in entities if type_name in ("Recipient", "Job")
    }
    effects = dict(query(dsn, "SELECT key, pid FROM effects"))
    expected = {
        f"{kind}:{entity_id}:send" for entity_id, kind, _, _ in entities if entity_id in recipients
    }
    assert set(effects) == expected  # exactly one effect per idempotency key
    done = Counter(key for (key,) in query(dsn, "SELECT key FROM sends WHERE ended IS NOT NULL"))
    return {
        "entities": len(entities),
        "attempts": sum(attempt for _, _, _, attempt in entities),
        "sends_repeated": sum(count - 1 for count in done.values()),
    }


def send_peak(dsn: str) -> int:
    """The most sends done at once, on the database's clock (a send a process did not finish,
    killed or stopped by its lease check, did nothing)."""
    intervals = query(
        dsn, "SELECT started, ended FROM sends WHERE ended IS NOT NULL AND NOT fenced"
    )
    return peak([(float(start), float(end)) for start, end in intervals])


def live_units(dsn: str) -> dict[str, int]:
    """The units of global limits held by a runtime that is alive: its heartbeat has not
    expired, and it is not a process of this machine that is gone (a SIGKILLed worker's units
    are free for any process here at once, and for the others when its lease expires)."""
    rows = query(
        dsn,
        "SELECT u.holder, count(*) FROM capacity_units AS u JOIN runtimes AS r"
        " ON r.owner = u.holder WHERE r.expires > extract(epoch FROM clock_timestamp())"
        " GROUP BY u.holder",
    )
    return {holder: int(count) for holder, count in rows if not owner_is_dead(holder)}


def utilization(dsn: str, *, step: float = 0.005, bucket: float = 0.05) -> list[float]:
    """How many sends were under way on average in each ``bucket`` seconds from the first
    one's start (sampled every ``step`` seconds on the database's clock)."""
    rows = query(dsn, "SELECT started, ended FROM sends WHERE ended IS NOT NULL AND NOT fenced")
    intervals = [(float(start), float(end)) for start, end in rows]
    first = min(start for start, _ in intervals)
    last = max(end for _, end in intervals)
    samples = [first + index * step for index in range(int((last - first) / step) + 1)]
    busy = [sum(start <= when < end for start, end in intervals) for when in samples]
    per = round(bucket / step)
    return [sum(busy[index : index + per]) / per for index in range(0, len(busy), per)]
