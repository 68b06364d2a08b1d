"""A visible fan-out: two campaigns share a global send limit, progress printed as it arrives.

Run it with ``python -m sluiceway.demos.fanout`` (``nox -s demo``). Campaign A (12 recipients) and
campaign B (8 recipients, starting a little later) may each send 3 emails at a time, and together
at most 5 (seed 000's configuration). Every send streams two progress updates and a result; one
address bounces, which is reported and does not stop the others.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import trio

from .. import (
    CapacitySource,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    SourceFromIterable,
    TaskSpec,
)


class BounceError(Exception):
    """The (simulated) mail server refused an address."""


def recipients(campaign: str, count: int, rng: random.Random) -> Iterator[TaskSpec[str, str]]:
    """One send task per recipient, created lazily as capacity frees up."""
    for number in range(1, count + 1):
        address = f"{campaign.lower()}{number}@example.com"
        seconds = rng.uniform(0.2, 0.6)

        async def send(emit: Any, address: str = address, seconds: float = seconds) -> str:
            await emit(f"personalising for {address}")
            await trio.sleep(seconds / 2)
            if address.startswith("b7@"):
                raise BounceError(f"{address} bounced")
            await emit(f"sending to {address}")
            await trio.sleep(seconds / 2)
            return f"sent to {address}"

        yield TaskSpec(send, key=address)


async def run_campaign(
    name: str,
    count: int,
    *,
    capacity: CapacitySource,
    glob: CapacitySource,
    rng: random.Random,
    out: Callable[[str], None],
    start: float,
) -> dict[str, int]:
    """Run one campaign and print each envelope as it arrives; returns its tally."""
    runner = HierarchicalTaskPoolRunner(
        f"campaign-{name}", SourceFromIterable(recipients(name, count, rng)), capacity
    )
    tally = {"sent": 0, "failed": 0}
    async with runner.run_tasks(stop_on_error=False) as envelopes:
        async for envelope in envelopes:
            elapsed = trio.current_time() - start
            usage = f"[{name} {capacity.borrowed_tokens}/3 | global {glob.borrowed_tokens}/5]"
            if envelope.kind is EnvelopeKind.INTERMEDIATE:
                line = f"  … {envelope.value}"
            elif envelope.kind is EnvelopeKind.FINAL:
                tally["sent"] += 1
                line = f"  ✓ {envelope.value} ({tally['sent']}/{count})"
            else:
                tally["failed"] += 1
                line = f"  ✗ {envelope.key}: {envelope.error}"
            out(f"{elapsed:5.2f}s {usage:32} #{envelope.task_id:<2} {line}")
    return tally


async def main(seed: int = 7, out: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run both campaigns; returns their tallies and the global pool's final statistics."""
    write = out if out is not None else _printer(sys.stdout)
    rng = random.Random(seed)
    glob = CapacitySource(5, name="global sends")
    start = trio.current_time()
    results: dict[str, Any] = {}

    async def campaign(name: str, count: int, delay: float) -> None:
        await trio.sleep(delay)
        write(f"{trio.current_time() - start:5.2f}s campaign {name}: {count} recipients")
        cap = CapacitySource(3, glob, name=f"campaign {name}")
        results[name] = await run_campaign(
            name, count, capacity=cap, glob=glob, rng=rng, out=write, start=start
        )
        write(f"{trio.current_time() - start:5.2f}s campaign {name} done: {results[name]}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(campaign, "A", 12, 0.0)
        nursery.start_soon(campaign, "B", 8, 0.3)
    results["global"] = glob.statistics()
    return results


def _printer(stream: TextIO) -> Callable[[str], None]:
    def write(line: str) -> None:
        print(line, file=stream, flush=True)

    return write


def cli(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=7, help="seed for the simulated send times")
    args = parser.parse_args(argv)
    results = trio.run(main, args.seed)
    stats = results["global"]
    print(
        f"\ncampaign A: {results['A']}, campaign B: {results['B']}; global pool: "
        f"{stats.borrowed_tokens} of {stats.total_tokens} units held at the end (nothing leaked)"
    )
    return 0 if stats.borrowed_tokens == 0 else 1


if __name__ == "__main__":
    raise SystemExit(cli())
