"""The pieces of the engine's crash test (``test_engine_crash``): what the test sees of the
engine just before each kill, what it calls the kill by that, when it kills, and the readers
who open their emails."""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import httpx
import trio

from sluiceway.client import Client

#: Each server lives at least this long after it listens (see the crash test's module).
MIN_ALIVE = 1.0


@attrs.frozen
class Snapshot:
    """What the test saw of the engine just before a kill."""

    at: float  # epoch seconds, the clock of the server's runtime
    status: dict[str, dict[str, Any]]  # engine/campaigns/status, by campaign id
    sent: dict[str, collections.Counter[str]]  # the service's sends by step, by campaign id

    def done(self, *campaigns: str) -> bool:
        """Whether the runs of these campaigns have completed."""
        return all(self.status[c]["run"] == "COMPLETED" for c in campaigns)

    def enrollment_statuses(self, *campaigns: str) -> set[str]:
        return {
            status
            for campaign in campaigns
            for status, count in self.status[campaign]["enrollments"].items()
            if count
        }


@attrs.frozen
class Kill:
    at: float  # seconds after the first launch
    alive: float  # seconds between the server's listening and its kill
    labels: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Plan:
    """The campaigns of the crash test, as its kills need them."""

    drip: str
    ab: str
    drip_contacts: int
    ab_contacts: int
    test_group: int  # contacts in the A/B test group

    def labels(self, last: Snapshot, wakes: Sequence[float], decision: float) -> tuple[str, ...]:
        """What the engine was doing when it was killed (``wakes``, ``decision``: when the
        enrollments wake up, when the A/B test period ends)."""
        found = []
        if 0 < last.sent[self.drip]["welcome"] < self.drip_contacts:
            found.append("welcome")
        pitched = last.sent[self.ab]["pitch"]
        if 0 < pitched < self.test_group:
            found.append("ab-test-pitches")
        statuses = last.enrollment_statuses(self.drip, self.ab)
        if "waiting" in statuses and statuses <= {"waiting", "completed"}:
            found.append("parked")  # every enrollment parked on a wait, or done
        if any(t - 1 <= last.at <= t + 3 for t in wakes):
            found.append("wake")
        winner = last.status[self.ab]["ab_winner"]
        if winner is None and last.at >= decision - 1:
            found.append("ab-deciding")  # the test period is over, or nearly: no winner yet
        if winner is not None and pitched < self.ab_contacts:
            found.append("ab-decided")  # the winner is stored, the rest not all sent to yet
        return tuple(found) or ("other",)


def lifetime(rng: random.Random, now: float, targets: Iterable[float], *, restart: float) -> float:
    """How long the server that listens from ``now`` lives: from one to two seconds. A
    wake-up (one of ``targets``) before the next server could be killed (``restart``: how
    long one takes to start) is aimed at: this server dies just before it, or early enough
    for the next one to die just before it; the server after that takes it."""
    alive = rng.uniform(MIN_ALIVE, 2 * MIN_ALIVE)
    before = rng.uniform(0.0, 0.6)
    horizon = now + alive + restart + MIN_ALIVE + before
    ahead = sorted(t for t in targets if now + MIN_ALIVE < t < horizon)
    if ahead:
        early = ahead[0] - now - restart - MIN_ALIVE - before
        alive = early if early >= MIN_ALIVE else max(MIN_ALIVE, ahead[0] - now - before)
    return alive


async def observe(client: Client, http: httpx.AsyncClient, campaigns: Iterable[str]) -> Snapshot:
    status: dict[str, dict[str, Any]] = {}
    sent: dict[str, collections.Counter[str]] = {}
    for campaign in campaigns:
        status[campaign] = await client.call("engine/campaigns/status", {"campaign_id": campaign})
        summary = (await http.get("/v1/engagement/summary", params={"campaign": campaign})).json()
        sent[campaign] = collections.Counter()
        for row in summary:
            sent[campaign][row["step"]] += row["sent"]
    return Snapshot(at=time.time(), status=status, sent=sent)


async def open_when_sent(
    http: httpx.AsyncClient, campaign: str, step: str, contacts: set[str], opened: set[str]
) -> None:
    """Open the ``step`` email of each of ``contacts`` as soon as the service has sent it (as
    their readers would, within moments), until all of them are opened."""
    while opened != contacts:
        answer = await http.get("/v1/engagement", params={"campaign": campaign, "step": step})
        for row in answer.json():
            if row["contact"] in contacts and row["contact"] not in opened:
                response = await http.post(
                    f"/v1/emails/{row['email_id']}/opened", json={"at": time.time()}
                )
                response.raise_for_status()
                opened.add(row["contact"])
        await trio.sleep(0.1)
