"""Durable campaigns: seed 000's fan-out as entities on the embedded SQLite store, interrupted
halfway and resumed.

Run it with ``python -m sluiceway.demos.campaigns`` (``nox -s demo``). Two campaigns (A with 12
recipients, B with 8) each fan out one child entity per recipient, 3 at a time per campaign and
5 at a time overall. Every recipient reports its progress, then sends through a (simulated)
mail service with an idempotency key; one address bounces and its recipient fails without
stopping the others. Their progress is streamed from the store as it is written.

Halfway through, the process "crashes": the runs are stopped where they are. A new runtime on
the same file then recovers them: finished recipients are not run again, the interrupted ones
are, and the mail service, which de-duplicates by idempotency key, sends each email once.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from .. import (
    CapacitySource,
    EntityEnvelope,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    RunContext,
    RunnableEntity,
    Runtime,
    open_runtime,
)

#: At most 5 sends at once across all campaigns (seed 000's global limit).
GLOBAL = CapacitySource(5)


class BounceError(Exception):
    """The (simulated) mail server refused an address."""


class MailService:
    """A mail service that de-duplicates by idempotency key, as seed 000's does: a repeated
    key gets the stored result and sends nothing."""

    def __init__(self, stop_after: int) -> None:
        self.sent: dict[str, str] = {}
        self.requests: Counter[str] = Counter()
        self.stop_after = stop_after
        self.enough = trio.Event()  # set once stop_after emails were sent
        if stop_after <= 0:
            self.enough.set()

    async def send(self, key: str, address: str, seconds: float) -> str:
        self.requests[key] += 1
        if key in self.sent:
            return self.sent[key]
        await trio.sleep(seconds)
        if address.startswith("b7@"):
            raise BounceError(f"{address} bounced")
        self.sent[key] = f"message-{len(self.sent) + 1}"
        if len(self.sent) >= self.stop_after:
            self.enough.set()
        return self.sent[key]


class Recipient(RunnableEntity, type_name="CampaignRecipient"):
    """Personalises and sends one email; a bounce fails this recipient only."""

    #: The mail service of this process (set by :func:`main`).
    service: MailService

    async def run_impl(self, ctx: RunContext) -> Any:
        address, seconds = self.data["email"], self.data["seconds"]
        await ctx.status("RUNNING", f"personalising for {address}")
        await trio.sleep(seconds / 2)
        await ctx.status("RUNNING", f"sending to {address}")
        key = ctx.idempotency_key("send")  # the same in every run of this recipient
        message_id = await self.service.send(key, address, seconds / 2)
        return {"email": address, "status": "sent", "message_id": message_id}


class Campaign(RunnableEntity, allowed_connections={"Calls": [Recipient]}):
    """Fans out its recipients (3 at a time, under the global 5) and tallies them."""

    async def run_impl(self, ctx: RunContext) -> Any:
        recipients = self.data["recipients"]
        items = [(f"recipient-{r['email']}", r) for r in recipients]
        runner = HierarchicalTaskPoolRunner(
            "send", ctx.parallel_calls(Recipient, items), CapacitySource(3, GLOBAL)
        )
        sent = failed = 0
        async with runner.run_tasks() as envelopes:
            async for envelope in envelopes:
                if envelope.kind is EnvelopeKind.FINAL:
                    sent += 1
                elif envelope.kind is EnvelopeKind.ERROR:
                    failed += 1
                await ctx.update_data(sent_count=sent, failed_count=failed)
                await ctx.status("RUNNING", f"{sent + failed}/{len(recipients)} done")
        status = "completed" if not failed else ("failed" if not sent else "completed_with_errors")
        await ctx.update_data(status=status)
        return {"status": status, "total": len(recipients), "sent": sent, "failed": failed}


TYPES: list[type[RunnableEntity]] = [Campaign, Recipient]


def campaign_data(name: str, count: int, rng: random.Random) -> dict[str, Any]:
    recipients = [
        {"email": f"{name.lower()}{n}@example.com", "seconds": round(rng.uniform(0.2, 0.6), 3)}
        for n in range(1, count + 1)
    ]
    return {"name": name, "recipients": recipients}


def describe(envelope: EntityEnvelope) -> str | None:
    """One line for the envelopes worth showing."""
    who = envelope.entity_name.removeprefix("recipient-")
    if envelope.type == "STATUS" and envelope.status == "STARTED":
        attempt = envelope.metadata.get("attempt", 1)
        return f"started {who}" + (f" (run {attempt})" if attempt > 1 else "")
    if envelope.type == "STATUS" and envelope.status == "RUNNING":
        return f"… {envelope.message}"
    if envelope.type == "VALUE" and envelope.entity_type == "CampaignRecipient":
        return f"✓ sent to {envelope.value['email']} ({envelope.value['message_id']})"
    if envelope.type == "ERROR":
        return f"✗ {who}: {(envelope.error or {}).get('message')}"
    if envelope.type == "STATUS" and envelope.status in ("COMPLETED", "FAILED"):
        return f"{envelope.entity_type} {who} {envelope.status}"
    return None


class Printer:
    """Prints campaigns' envelopes as they are stored, remembering where each one stopped."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.start = trio.current_time()
        self.cursors: dict[str, int] = {}

    async def follow(self, runtime: Runtime, campaign: str, label: str) -> None:
        """Print the campaign's subtree from where the last follower of it stopped."""
        after = self.cursors.get(campaign, 0)
        async with runtime.stream(campaign, after_seq=after) as envelopes:
            async for envelope in envelopes:
                self.cursors[campaign] = envelope.seq
                line = describe(envelope)
                if line is not None:
                    elapsed = trio.current_time() - self.start
                    usage = f"[{label} | global {GLOBAL.borrowed_tokens}/5]"
                    self.out(f"{elapsed:5.2f}s {usage} {line}")


async def main(
    *,
    db: Path,
    seed: int = 0,
    interrupt_after: int = 8,
    out: Callable[[str], None] = print,
    keep: bool = False,
) -> dict[str, Any]:
    """Run the demo on the store at ``db``; returns the campaigns' results and what the mail
    service saw."""
    rng = random.Random(seed)
    Recipient.service = service = MailService(stop_after=interrupt_after)
    printer = Printer(out)

    out(f"store: {db}")
    # No claim loop here: the stopped runs must stay stopped until phase 2's runtime.
    async with open_runtime(db, TYPES, work=False) as runtime:
        a = await runtime.create(Campaign, campaign_data("A", 12, rng), name="campaign-A")
        b = await runtime.create(Campaign, campaign_data("B", 8, rng), name="campaign-B")
        ids = {"A": a.id, "B": b.id}
        out(f"phase 1: running both campaigns; the process stops after {interrupt_after} sends")
        async with trio.open_nursery() as nursery:

            async def run_both() -> None:
                async with trio.open_nursery() as runs:
                    for entity_id in ids.values():
                        runs.start_soon(runtime.run, entity_id)
                service.enough.set()  # both finished before the interruption point

            nursery.start_soon(run_both)
            for label, entity_id in ids.items():
                nursery.start_soon(printer.follow, runtime, entity_id, label)
            await service.enough.wait()
            nursery.cancel_scope.cancel()  # the "crash": every run stops where it is
        statuses = {label: (await runtime.get(i)).status.value for label, i in ids.items()}
        out(f"--- stopped: campaigns {statuses}, {len(service.sent)} emails sent so far ---")

    out("phase 2: a new runtime on the same store recovers the interrupted runs")
    results: dict[str, Any] = {}
    async with open_runtime(db, TYPES) as runtime:
        async with trio.open_nursery() as nursery:
            for label, entity_id in ids.items():
                nursery.start_soon(printer.follow, runtime, entity_id, label)
            recovered = await runtime.recover()
            out(f"recovered: {sorted(run.entity_name for run in recovered)}")
            for label, entity_id in ids.items():
                # The stored result now; a campaign stopped before it even started runs here.
                results[label] = await runtime.run(entity_id)
        for label, entity_id in ids.items():
            runs = Counter(c.attempt for c in await runtime.children(entity_id))
            out(
                f"campaign {label}: {results.get(label)}; recipients by number of runs: "
                f"{dict(sorted(runs.items()))}"
            )
    repeats = sum(count - 1 for count in service.requests.values())
    again = "1 repeated request" if repeats == 1 else f"{repeats} repeated requests"
    out(
        f"mail service: {sum(service.requests.values())} requests, {len(service.sent)} emails "
        f"sent ({again} of interrupted sends, answered from the idempotency key without "
        "sending again)"
    )
    if keep:
        out(f"inspect it: python -m sluiceway graph --db {db} tree campaign-A")
    else:
        out("(run with --db PATH to keep the store and inspect it with `sluiceway graph`)")
    return {
        "results": results,
        "sent": dict(service.sent),
        "requests": dict(service.requests),
        "global": GLOBAL,
    }


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m sluiceway.demos.campaigns [--db PATH] [--seed N] [--interrupt-after N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="the SQLite store (default: a new temporary file)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the send times")
    parser.add_argument(
        "--interrupt-after", type=int, default=8, help="stop phase 1 after this many sends"
    )
    args = parser.parse_args(argv)
    if args.interrupt_after < 0:
        parser.error("--interrupt-after must be >= 0")
    with tempfile.TemporaryDirectory() as scratch:
        db = args.db if args.db is not None else Path(scratch) / "campaigns.db"
        if db.exists():
            parser.error(f"{db} exists already: the demo starts from a new store")
        trio.run(
            lambda: main(
                db=db,
                seed=args.seed,
                interrupt_after=args.interrupt_after,
                keep=args.db is not None,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(cli())
