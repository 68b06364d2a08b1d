"""The issue's virtual-time scenarios, run through HierarchicalTaskPoolRunner."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import trio
import trio.testing

from sluiceway import CapacitySource, HierarchicalTaskPoolRunner, SourceFromIterable
from tests.helpers import assert_idle


class Timeline:
    """Records when each task starts and ends, and samples in-use counts on demand."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []

    def task(self, job: str, seconds: float) -> Any:
        async def body(emit: Any) -> str:
            self.events.append((trio.current_time(), "start", job))
            await trio.sleep(seconds)
            self.events.append((trio.current_time(), "end", job))
            return job

        return body

    def starts_at(self, at: float) -> Counter[str]:
        return Counter(job for t, kind, job in self.events if t == at and kind == "start")


async def _run(runner: HierarchicalTaskPoolRunner[Any, Any], done: dict[str, float]) -> None:
    async with runner.run_tasks() as envelopes:
        async for _ in envelopes:
            pass
    done[runner.name] = trio.current_time()


async def test_seed_campaign_table(autojump_clock: object) -> None:
    """Seed 000: campaigns A and B (3 slots each) under a global pool of 5.

    | t | Campaign A | Campaign B | Global |
    | 0 | starts 3 sends | - | 3/5 |
    | 1 | 3 running | starts 2 sends | 5/5 |
    | 2 | 3 running | 2 running, wants a 3rd | blocked (global full) |
    | 3 | 1 completes, 2 running | gets its 3rd slot | 5/5 |
    """
    glob = CapacitySource(5, name="global")
    campaign_a = CapacitySource(3, glob, name="A")
    campaign_b = CapacitySource(3, glob, name="B")
    timeline = Timeline()
    table: dict[int, tuple[int, int, int]] = {}

    async def sample() -> None:
        for t in range(4):
            await trio.sleep_until(t + 0.5)
            table[t] = (
                campaign_a.borrowed_tokens,
                campaign_b.borrowed_tokens,
                glob.borrowed_tokens,
            )

    a_tasks = [timeline.task("A", seconds) for seconds in (3, 4, 4)]
    b_tasks = [timeline.task("B", 3) for _ in range(3)]
    done: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        nursery.start_soon(_run, HierarchicalTaskPoolRunner("A", a_tasks, campaign_a), done)
        await trio.sleep(1)
        runner_b = HierarchicalTaskPoolRunner("B", b_tasks, campaign_b)
        nursery.start_soon(_run, runner_b, done)
        await trio.sleep(1.5)
        # t = 2.5: B has a third recipient waiting, blocked by the global pool alone.
        assert campaign_b.statistics().waiting_in_subtree == 1
        assert campaign_b.available_tokens == 1
    assert table == {0: (3, 0, 3), 1: (3, 2, 5), 2: (3, 2, 5), 3: (2, 3, 5)}
    assert timeline.starts_at(3) == Counter({"B": 1})
    assert_idle(glob, campaign_a, campaign_b)


async def test_five_stories_share_freed_slots_fairly(autojump_clock: object) -> None:
    """Five stories of 5 images (10 s each), per-story 3 under a global 10.

    The pool stays full while 10 or more images remain, and when the first ten finish (t = 10 s)
    the freed slots go two to each story; the original kept its A3 B3 C3 D1 E0 skew.
    """
    glob = CapacitySource(10, name="global")
    timeline = Timeline()
    stories = {name: CapacitySource(3, glob, name=name) for name in "ABCDE"}
    full_samples: list[int] = []

    async def watch() -> None:
        while True:
            await trio.testing.wait_all_tasks_blocked()
            remaining = 25 - sum(1 for _, kind, _ in timeline.events if kind == "end")
            if remaining < 10:
                return
            full_samples.append(glob.borrowed_tokens)
            await trio.sleep(1)

    done: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        for name, cap in stories.items():
            images = SourceFromIterable(_images(timeline, name))
            nursery.start_soon(_run, HierarchicalTaskPoolRunner(name, images, cap), done)
    assert full_samples
    assert set(full_samples) == {10}
    assert sum(timeline.starts_at(0).values()) == 10
    assert timeline.starts_at(10) == Counter(dict.fromkeys("ABCDE", 2))
    assert trio.current_time() == 30
    assert_idle(glob, *stories.values())


def _images(timeline: Timeline, story: str) -> Iterator[Any]:
    for _ in range(5):
        yield timeline.task(story, 10)


async def test_work_conserving_hierarchy_with_runners(autojump_clock: object) -> None:
    """Global 10; A: 200 x 1 s with limit 2, queued first; B: 200 x 1 s with limit 50.

    Exactly 100 s with B done by 25 s; naively nested trio limiters take 116-118 s.
    """
    glob = CapacitySource(10)
    cap_a = CapacitySource(2, glob)
    cap_b = CapacitySource(50, glob)
    timeline = Timeline()
    done: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        runner_a = HierarchicalTaskPoolRunner("A", [timeline.task("A", 1)] * 200, cap_a)
        nursery.start_soon(_run, runner_a, done)
        await trio.testing.wait_all_tasks_blocked()
        runner_b = HierarchicalTaskPoolRunner("B", [timeline.task("B", 1)] * 200, cap_b)
        nursery.start_soon(_run, runner_b, done)
    assert done == {"A": 100, "B": 25}
    assert_idle(glob, cap_a, cap_b)
