"""ScheduledTaskPoolRunner: dependencies, resource costs, retry, abort, shutdown, deadlines."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    DependencyGraph,
    DependencySource,
    EnvelopeKind,
    Final,
    HierarchicalTaskPoolRunner,
    ImpossibleCostError,
    InvalidTransitionError,
    NodeState,
    PriorityDependencySource,
    PrioritySource,
    QuotaCapacitySource,
    ResourceCapacitySource,
    RetryPolicy,
    RetryScheduled,
    ScheduledTask,
    ScheduledTaskPoolRunner,
    SourceBuffer,
    TaskAbortedError,
    TaskCancelledError,
    TaskEnvelope,
    TaskTimeoutError,
    UnknownResourceError,
)
from tests.helpers import assert_idle

Envelope = TaskEnvelope[Any, Any]


class Log:
    """Records task starts and ends in virtual time, and the peak use of each resource."""

    def __init__(self, pool: ResourceCapacitySource | None = None) -> None:
        self.events: list[tuple[float, str, Any]] = []
        self.pool = pool
        self.peak: dict[str, float] = defaultdict(float)

    def task(self, key: Any, seconds: float = 1.0, fails: int = 0, result: Any = None) -> Any:
        attempts = 0

        async def body(emit: Any) -> Any:
            nonlocal attempts
            attempts += 1
            self.events.append((trio.current_time(), "start", key))
            if self.pool is not None:
                for resource, value in self.pool.in_use.items():
                    self.peak[resource] = max(self.peak[resource], value)
            await trio.sleep(seconds)
            self.events.append((trio.current_time(), "end", key))
            if attempts <= fails:
                raise ConnectionError(f"{key} attempt {attempts} failed")
            return key if result is None else result

        return body

    def started(self, key: Any) -> list[float]:
        return [t for t, kind, k in self.events if kind == "start" and k == key]


async def collect(runner: ScheduledTaskPoolRunner[Any, Any], **kwargs: Any) -> list[Envelope]:
    async with runner.run_tasks(**kwargs) as envelopes:
        return [envelope async for envelope in envelopes]


def finals(envelopes: list[Envelope]) -> dict[Any, Envelope]:
    out: dict[Any, Envelope] = {}
    for envelope in envelopes:
        if envelope.is_final:
            assert envelope.key not in out, f"two final envelopes for {envelope.key!r}"
            out[envelope.key] = envelope
    return out


def diamond(log: Log, pool: ResourceCapacitySource, fail: str | None = None) -> Any:
    graph: DependencyGraph[str] = DependencyGraph()
    source: DependencySource[str, Any] = DependencySource(graph)
    runner = ScheduledTaskPoolRunner("diamond", source, pool, default_cost={"slots": 1})
    for key, deps in [("A", []), ("B", ["A"]), ("C", ["A"]), ("D", ["B", "C"])]:
        runner.add_task(ScheduledTask(key, log.task(key, fails=9 if key == fail else 0)), deps)
    return graph, runner


async def test_diamond_runs_in_dependency_order(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"slots": 4})
    log = Log()
    graph, runner = diamond(log, pool)
    results = finals(await collect(runner))
    assert {key: e.kind for key, e in results.items()} == dict.fromkeys("ABCD", EnvelopeKind.FINAL)
    assert log.started("A") == [0]
    assert log.started("B") == log.started("C") == [1]
    assert log.started("D") == [2]
    assert graph.is_done
    assert_idle(pool)


async def test_diamond_failure_aborts_only_its_branch(autojump_clock: object) -> None:
    # Abort C -> C and D are aborted; B still completes (the original's documented example).
    pool = ResourceCapacitySource({"slots": 4})
    log = Log()
    graph, runner = diamond(log, pool, fail="C")
    results = finals(await collect(runner))
    assert results["A"].kind is results["B"].kind is EnvelopeKind.FINAL
    assert isinstance(results["C"].error, ConnectionError)
    assert isinstance(results["D"].error, TaskAbortedError)
    assert log.started("D") == []
    assert graph.get_state("C") is graph.get_state("D") is NodeState.ABORTED
    assert graph.get_state("B") is NodeState.COMPLETED
    assert graph.is_done
    assert runner.statistics().aborted == 1
    assert_idle(pool)


async def test_etl_pipeline_with_memory_and_cpu(autojump_clock: object) -> None:
    """Extract two sources (1 GB, 1 CPU), transform each (4 GB / 6 GB, 2 CPU), load (2 GB, 1).

    Under 8 GB and 4 CPUs the 4 GB and 6 GB transforms cannot run together; they run one after
    the other in the order they became ready, and the load waits for both.
    """
    pool = ResourceCapacitySource({"memory_gb": 8, "cpu": 4})
    log = Log(pool)
    source: DependencySource[str, Any] = DependencySource(DependencyGraph())
    runner = ScheduledTaskPoolRunner("etl", source, pool)
    stages = [
        ("extract-a", [], {"memory_gb": 1, "cpu": 1}, 1),
        ("extract-b", [], {"memory_gb": 1, "cpu": 1}, 1.5),
        ("transform-a", ["extract-a"], {"memory_gb": 4, "cpu": 2}, 2),
        ("transform-b", ["extract-b"], {"memory_gb": 6, "cpu": 2}, 2),
        ("load", ["transform-a", "transform-b"], {"memory_gb": 2, "cpu": 1}, 1),
    ]
    for key, deps, cost, seconds in stages:
        runner.add_task(ScheduledTask(key, log.task(key, seconds), cost=cost), deps)
    results = finals(await collect(runner))
    assert all(e.kind is EnvelopeKind.FINAL for e in results.values())
    assert log.started("transform-a") == [1]
    assert log.started("transform-b") == [3]  # ready at 1.5, but 4 + 6 > 8: waits for it
    assert log.started("load") == [5]
    assert log.peak["memory_gb"] <= 8
    assert log.peak["cpu"] <= 4
    assert_idle(pool)


async def test_retry_waits_without_holding_capacity(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"slots": 1})
    log = Log()
    source: DependencySource[str, Any] = DependencySource(DependencyGraph())
    runner = ScheduledTaskPoolRunner(
        "retry",
        source,
        pool,
        default_cost={"slots": 1},
        retry=RetryPolicy(attempts=3, backoff=10, multiplier=2),
    )
    runner.add_task(ScheduledTask("flaky", log.task("flaky", seconds=1, fails=2)))
    for i in range(4):
        runner.add_task(ScheduledTask(f"other{i}", log.task(f"other{i}", seconds=1)))
    envelopes = await collect(runner)
    by_key: dict[Any, list[Envelope]] = defaultdict(list)
    for envelope in envelopes:
        by_key[envelope.key].append(envelope)
    flaky = by_key["flaky"]
    # Attempt 1 at 0, failed at 1, retry at 11; attempt 2 at 11, failed at 12, retry at 32.
    assert log.started("flaky") == [0, 11, 32]
    retries = [e.value for e in flaky if e.kind is EnvelopeKind.INTERMEDIATE]
    assert all(isinstance(r, RetryScheduled) for r in retries)
    assert [(r.attempt, r.retry_at) for r in retries] == [(1, 11), (2, 32)]
    assert flaky[-1].kind is EnvelopeKind.FINAL
    assert len({e.task_id for e in flaky}) == 1  # one task id across its attempts
    # While flaky waited, the one slot served the others at once (not blocked, not held).
    assert [log.started(f"other{i}")[0] for i in range(4)] == [1, 2, 3, 4]
    stats = runner.statistics()
    assert (stats.retried, stats.started, stats.finished, stats.failed) == (2, 7, 5, 0)
    assert_idle(pool)


async def test_retries_from_a_plain_source(autojump_clock: object) -> None:
    """Without a graph the run keeps the retried task itself: no capacity is held while it
    waits, it keeps its task id, and once due it starts ahead of the tasks still queued."""
    pool = ResourceCapacitySource({"slots": 1})
    log = Log()
    tasks = [ScheduledTask("flaky", log.task("flaky", seconds=1, fails=2))]
    tasks += [ScheduledTask(f"other{i}", log.task(f"other{i}", seconds=4)) for i in range(5)]
    runner = ScheduledTaskPoolRunner(
        "plain-retry",
        tasks,
        pool,
        default_cost={"slots": 1},
        retry=RetryPolicy(attempts=3, backoff=2, multiplier=1.5),
    )
    by_key: dict[Any, list[Envelope]] = defaultdict(list)
    for envelope in await collect(runner):
        by_key[envelope.key].append(envelope)
    # Attempt 1 at 0-1 (retry due at 3); other0 runs 1-5, so attempt 2 runs 5-6, ahead of
    # other1 (retry due at 9); other1 runs 6-10, attempt 3 runs 10-11; then the rest.
    assert log.started("flaky") == [0, 5, 10]
    assert [log.started(f"other{i}")[0] for i in range(5)] == [1, 6, 11, 15, 19]
    flaky = by_key["flaky"]
    retries = [e.value for e in flaky if e.kind is EnvelopeKind.INTERMEDIATE]
    assert [(r.attempt, r.retry_at) for r in retries] == [(1, 3), (2, 9)]
    assert (flaky[-1].kind, flaky[-1].value, flaky[-1].at) == (EnvelopeKind.FINAL, "flaky", 11)
    assert len({e.task_id for e in flaky}) == 1
    assert all(len(by_key[f"other{i}"]) == 1 for i in range(5))
    stats = runner.statistics()
    assert (stats.retried, stats.started, stats.finished, stats.failed) == (2, 8, 6, 0)
    assert_idle(pool)


async def test_retries_after_a_lazy_source_ended(autojump_clock: object) -> None:
    """The source is exhausted while a retry waits: the run waits for it, then asks the
    capacity tree again; the last attempt's error is the one reported."""
    pool = ResourceCapacitySource({"slots": 1})
    log = Log()

    async def tasks() -> AsyncIterator[ScheduledTask[Any, Any]]:
        yield ScheduledTask("doomed", log.task("doomed", fails=9))
        yield ScheduledTask("fine", log.task("fine"))

    runner = ScheduledTaskPoolRunner(
        "lazy-retry",
        tasks(),
        pool,
        default_cost={"slots": 1},
        retry=RetryPolicy(attempts=3, backoff=5, multiplier=1),
    )
    results = finals(await collect(runner))
    assert log.started("doomed") == [0, 6, 12]
    assert log.started("fine") == [1]
    assert isinstance(results["doomed"].error, ConnectionError)
    assert "attempt 3" in str(results["doomed"].error)
    assert results["fine"].kind is EnvelopeKind.FINAL
    assert_idle(pool)


async def test_tasks_from_an_iterable_are_admitted_for_their_own_costs(
    autojump_clock: object,
) -> None:
    """An (async) iterable of scheduled tasks is read one task ahead, so each is priced by its
    own cost before it is admitted; the task read ahead holds nothing; the iterable's failure
    still ends the run."""
    pool = ResourceCapacitySource({"mem": 8})
    log = Log(pool)
    produced: list[tuple[float, str]] = []

    async def tasks() -> AsyncIterator[ScheduledTask[Any, Any]]:
        for name, mem in [("big", 6), ("small", 2), ("bigger", 8), ("tiny", 1)]:
            produced.append((trio.current_time(), name))
            yield ScheduledTask(name, log.task(name, seconds=10), cost={"mem": mem})

    runner = ScheduledTaskPoolRunner("costs", tasks(), pool)  # no default cost needed
    results = finals(await collect(runner))
    assert sorted(results) == ["big", "bigger", "small", "tiny"]
    assert [log.started(k)[0] for k in ("big", "small", "bigger", "tiny")] == [0, 0, 10, 20]
    assert log.peak["mem"] == 8
    # "bigger" was read ahead at 0 and waited for its memory without holding any.
    assert produced == [(0, "big"), (0, "small"), (0, "bigger"), (10, "tiny")]

    def broken() -> Any:
        yield ScheduledTask("ok", log.task("ok"), cost={"mem": 1})
        raise OSError("the task list could not be read")

    with pytest.raises(OSError, match="could not be read"):
        await collect(ScheduledTaskPoolRunner("broken", broken(), pool))
    assert log.started("ok") == [30]
    assert_idle(pool)


async def test_runner_retry_applies_to_plain_callables(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"slots": 2})
    log = Log()
    runner: ScheduledTaskPoolRunner[Any, Any] = ScheduledTaskPoolRunner(
        "callables",
        [log.task("a", fails=1), log.task("b")],
        pool,
        default_cost={"slots": 1},
        retry=RetryPolicy(attempts=2, backoff=1),
    )
    envelopes = await collect(runner)
    assert log.started("a") == [0, 2]
    assert [e.value for e in envelopes if e.is_final] == ["b", "a"]
    with pytest.raises(ConnectionError, match="attempt 2"):
        # Under stop_on_error only the last attempt's failure stops the run.
        await collect(
            ScheduledTaskPoolRunner(
                "strict",
                [log.task("c", fails=5)],
                pool,
                default_cost={"slots": 1},
                retry=RetryPolicy(attempts=2, backoff=1),
            ),
            stop_on_error=True,
        )
    assert log.started("c") == [3, 5]
    assert_idle(pool)


async def test_shutdown_reports_waiting_retries(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"slots": 2})
    log = Log()
    tasks = [
        ScheduledTask("flaky", log.task("flaky", fails=9)),
        ScheduledTask("slow", log.task("slow", seconds=20)),
    ]
    runner = ScheduledTaskPoolRunner(
        "sd-retry",
        tasks,
        pool,
        default_cost={"slots": 1},
        retry=RetryPolicy(attempts=5, backoff=10),
    )
    async with runner.run_tasks() as envelopes:
        await trio.sleep(2)  # flaky failed at 1 and waits for its retry at 11
        runner.shutdown("drain")
        flaky = [e async for e in envelopes if e.key == "flaky"]
    assert [e.kind for e in flaky] == [EnvelopeKind.INTERMEDIATE, EnvelopeKind.ERROR]
    assert isinstance(flaky[-1].error, TaskAbortedError)
    assert "retrying" in str(flaky[-1].error)
    assert flaky[0].task_id == flaky[1].task_id
    assert log.started("flaky") == [0]
    assert trio.current_time() == 20  # drained: slow finished, flaky never ran again
    assert runner.statistics().aborted == 1
    assert_idle(pool)


async def test_after_the_last_attempt_the_node_and_dependents_are_aborted(
    autojump_clock: object,
) -> None:
    pool = ResourceCapacitySource({"slots": 2})
    log = Log()
    graph: DependencyGraph[str] = DependencyGraph()
    errors: list[tuple[Any, BaseException]] = []
    runner = ScheduledTaskPoolRunner(
        "giveup",
        DependencySource(graph),
        pool,
        default_cost={"slots": 1},
        retry=RetryPolicy(attempts=2, backoff=1),
    )
    runner.add_task(
        ScheduledTask(
            "fetch",
            log.task("fetch", fails=5),
            on_error=lambda key, error: errors.append((key, error)),
        )
    )
    runner.add_task(ScheduledTask("parse", log.task("parse")), ["fetch"])
    runner.add_task(ScheduledTask("store", log.task("store")), ["parse"])
    results = finals(await collect(runner))
    assert log.started("fetch") == [0, 2]
    assert isinstance(results["fetch"].error, ConnectionError)
    assert isinstance(results["parse"].error, TaskAbortedError)
    assert isinstance(results["store"].error, TaskAbortedError)
    assert [key for key, _ in errors] == ["fetch"]  # on_error for the task that failed
    assert graph.is_done
    assert_idle(pool)


async def test_retry_on_decides_what_is_retried(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"slots": 1})
    log = Log()
    policy = RetryPolicy(attempts=5, backoff=1, retry_on=TimeoutError)
    runner = ScheduledTaskPoolRunner(
        "only-timeouts", DependencySource(DependencyGraph()), pool, default_cost={"slots": 1}
    )
    runner.add_task(ScheduledTask("x", log.task("x", fails=9), retry=policy))
    results = finals(await collect(runner))
    assert log.started("x") == [0]  # ConnectionError is not a TimeoutError: no retry
    assert isinstance(results["x"].error, ConnectionError)
    assert policy.delay(1) == 1
    assert policy.delay(3) == 4
    assert RetryPolicy(backoff=1, jitter=0.5).delay(1, 0.0) == 0.5
    assert RetryPolicy(backoff=10, max_backoff=15).delay(4) == 15


async def test_on_complete_runs_before_dependents_and_before_the_envelope(
    autojump_clock: object,
) -> None:
    """What on_complete records is there before any dependent starts (the callback may take
    time), and the dependents are queued before the consumer sees the FINAL envelope."""
    pool = ResourceCapacitySource({"slots": 2})
    graph: DependencyGraph[str] = DependencyGraph()
    store: dict[str, Any] = {}
    seen_by_callback: list[tuple[str, Any, NodeState]] = []

    async def on_complete(key: str, result: Any) -> None:
        await trio.sleep(5)  # callbacks may be async, and slow
        seen_by_callback.append((key, result, graph.get_state("child")))
        store[key] = result

    async def child(emit: Any) -> str:
        return f"child of {store['parent']}"  # relies on what the parent's callback stored

    runner = ScheduledTaskPoolRunner("cb", DependencySource(graph), pool, default_cost={"slots": 1})
    runner.add_task(ScheduledTask("parent", Log().task("parent"), on_complete=on_complete))
    runner.add_task(ScheduledTask("child", child), ["parent"])
    async with runner.run_tasks() as envelopes:
        async for envelope in envelopes:
            if envelope.key == "parent":
                [(key, result, state)] = seen_by_callback
                assert (key, result) == ("parent", "parent")
                assert state is NodeState.PENDING  # the node completes after its callback
                assert envelope.at == 6
                # The dependent is queued (or already started) before we see this envelope.
                assert graph.get_state("child") is not NodeState.PENDING
            else:
                assert (envelope.kind, envelope.value) == (EnvelopeKind.FINAL, "child of parent")
    assert_idle(pool)


async def test_a_failing_on_complete_fails_the_node_without_retrying(
    autojump_clock: object,
) -> None:
    pool = ResourceCapacitySource({"slots": 1})
    log = Log()
    graph: DependencyGraph[str] = DependencyGraph()
    errors: list[Any] = []

    def on_complete(key: str, result: Any) -> None:
        raise LookupError("could not record the result")

    runner = ScheduledTaskPoolRunner(
        "cb-fails",
        DependencySource(graph),
        pool,
        default_cost={"slots": 1},
        retry=RetryPolicy(attempts=3, backoff=1),
    )
    runner.add_task(
        ScheduledTask(
            "a", log.task("a"), on_complete=on_complete, on_error=lambda k, e: errors.append(k)
        )
    )
    runner.add_task(ScheduledTask("b", log.task("b")), ["a"])
    results = finals(await collect(runner))
    assert log.started("a") == [0]  # the task itself succeeded: it is not run again
    assert isinstance(results["a"].error, LookupError)
    assert results["a"].value == "a"
    assert isinstance(results["b"].error, TaskAbortedError)
    assert log.started("b") == []
    assert errors == []  # on_error is for the task's own failure
    assert graph.get_state("a") is NodeState.ABORTED
    assert_idle(pool)


async def test_the_originals_bridge_callback_gets_a_clear_error(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"slots": 1})
    source: DependencySource[str, Any] = DependencySource(DependencyGraph())
    runner = ScheduledTaskPoolRunner("bridge", source, pool, default_cost={"slots": 1})
    runner.add_task(
        ScheduledTask("a", Log().task("a"), on_complete=lambda key, _: source.complete(key))
    )
    [envelope] = await collect(runner)
    assert isinstance(envelope.error, InvalidTransitionError)
    assert "do not complete() or fail() them from a callback" in str(envelope.error)


async def test_aborting_a_node_while_its_on_complete_runs(autojump_clock: object) -> None:
    """The task finished: it is reported once, as it ended; its dependents are aborted."""
    pool = ResourceCapacitySource({"slots": 1})
    graph: DependencyGraph[str] = DependencyGraph()
    log = Log()
    callback_started = trio.Event()

    async def on_complete(key: str, result: Any) -> None:
        callback_started.set()
        await trio.sleep(10)

    runner = ScheduledTaskPoolRunner(
        "abort-settling", DependencySource(graph), pool, default_cost={"slots": 1}
    )
    runner.add_task(ScheduledTask("a", log.task("a"), on_complete=on_complete))
    runner.add_task(ScheduledTask("b", log.task("b")), ["a"])
    async with runner.run_tasks() as envelopes:
        await callback_started.wait()
        assert sorted(runner.abort("a")) == ["a", "b"]
        envelopes_seen = [envelope async for envelope in envelopes]
    results = finals(envelopes_seen)
    assert (results["a"].kind, results["a"].value, results["a"].at) == (EnvelopeKind.FINAL, "a", 11)
    assert isinstance(results["b"].error, TaskAbortedError)
    assert log.started("b") == []
    assert_idle(pool)


async def test_a_callback_exception_is_reported_not_swallowed(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"slots": 1})

    def bad_callback(key: str, result: Any) -> None:
        raise LookupError(f"bookkeeping for {key} failed")

    runner = ScheduledTaskPoolRunner("cb-error", SourceBuffer([]), pool, default_cost={"slots": 1})
    tasks = [ScheduledTask("x", Log().task("x", result=42), on_complete=bad_callback)]
    runner = ScheduledTaskPoolRunner("cb-error", tasks, pool, default_cost={"slots": 1})
    [envelope] = await collect(runner)
    assert envelope.kind is EnvelopeKind.ERROR
    assert isinstance(envelope.error, LookupError)
    assert envelope.value == 42  # the task's own result is kept
    with pytest.raises(LookupError, match="bookkeeping"):
        await collect(
            ScheduledTaskPoolRunner("strict", list(tasks), pool, default_cost={"slots": 1}),
            stop_on_error=True,
        )
    assert_idle(pool)


async def test_aborting_a_running_task_cancels_it_and_frees_its_resources(
    autojump_clock: object,
) -> None:
    pool = ResourceCapacitySource({"mem": 8})
    log = Log()
    graph: DependencyGraph[str] = DependencyGraph()
    runner = ScheduledTaskPoolRunner("abort", DependencySource(graph), pool)
    runner.add_task(ScheduledTask("big", log.task("big", seconds=100), cost={"mem": 8}))
    runner.add_task(ScheduledTask("after-big", log.task("after-big"), cost={"mem": 1}), ["big"])
    runner.add_task(ScheduledTask("waiting", log.task("waiting"), cost={"mem": 4}))
    async with runner.run_tasks() as envelopes:
        await trio.sleep(5)
        assert pool.in_use == {"mem": 8}
        assert sorted(runner.abort("big")) == ["after-big", "big"]
        results = finals([envelope async for envelope in envelopes])
    assert isinstance(results["big"].error, TaskAbortedError)
    assert results["big"].at == 5
    assert isinstance(results["after-big"].error, TaskAbortedError)
    assert log.started("waiting") == [5]  # its memory was free at once
    assert_idle(pool)


@pytest.mark.parametrize("mode", ["drain", "cancel"])
async def test_shutdown(autojump_clock: object, mode: str) -> None:
    pool = ResourceCapacitySource({"slots": 2})
    log = Log()
    graph: DependencyGraph[str] = DependencyGraph()
    runner = ScheduledTaskPoolRunner("sd", DependencySource(graph), pool, default_cost={"slots": 1})
    for i in range(6):
        runner.add_task(ScheduledTask(f"t{i}", log.task(f"t{i}", seconds=10)))
    runner.add_task(ScheduledTask("after", log.task("after")), ["t0"])
    async with runner.run_tasks() as envelopes:
        await trio.sleep(1)
        runner.shutdown(mode)  # type: ignore[arg-type]
        results = finals([envelope async for envelope in envelopes])
    assert len(results) == 7  # every task reported once
    running = {"t0", "t1"}
    for key, envelope in results.items():
        if key in running:
            if mode == "drain":
                assert envelope.kind is EnvelopeKind.FINAL
            else:
                assert isinstance(envelope.error, TaskCancelledError)
        else:
            assert isinstance(envelope.error, TaskAbortedError)
    assert trio.current_time() == (10 if mode == "drain" else 1)
    assert graph.is_done
    with pytest.raises(ValueError, match="drain"):
        runner.shutdown("now")  # type: ignore[arg-type]
    assert_idle(pool)


async def test_deadlines_and_timeouts(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"slots": 3})
    tasks = [
        ScheduledTask("by-deadline", Log().task("a", 100), deadline=5),
        ScheduledTask("by-timeout", Log().task("b", 100), timeout=3),
        ScheduledTask("both", Log().task("c", 100), timeout=50, deadline=7),
    ]
    runner = ScheduledTaskPoolRunner("dl", tasks, pool, default_cost={"slots": 1})
    results = finals(await collect(runner))
    assert {key: e.at for key, e in results.items()} == {
        "by-deadline": 5,
        "by-timeout": 3,
        "both": 7,
    }
    assert all(isinstance(e.error, TaskTimeoutError) for e in results.values())
    assert runner.statistics().timed_out == 3
    assert_idle(pool)


async def test_impossible_and_unknown_costs_are_rejected(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"mem": 8, "cpu": 4})
    source: DependencySource[str, Any] = DependencySource(DependencyGraph())
    runner = ScheduledTaskPoolRunner("costs", source, pool)
    with pytest.raises(ImpossibleCostError, match="'mem' needs 16 but this node is limited to 8"):
        runner.add_task(ScheduledTask("huge", Log().task("huge"), cost={"mem": 16}))
    with pytest.raises(UnknownResourceError, match="'gpu'"):
        runner.add_task(ScheduledTask("gpu", Log().task("gpu"), cost={"gpu": 1}))
    assert "huge" not in source.graph
    # Reaching the runner another way: reported, and the run never waits for it.
    graph: DependencyGraph[str] = DependencyGraph()
    direct: DependencySource[str, Any] = DependencySource(graph)
    direct.add_task("huge", ScheduledTask("huge", Log().task("huge"), cost={"mem": 16}))
    direct.add_task("needs-huge", ScheduledTask("needs-huge", Log().task("n")), ["huge"])
    direct.add_task("no-cost", ScheduledTask("no-cost", Log().task("x")))
    direct.add_task("fine", ScheduledTask("fine", Log().task("fine"), cost={"mem": 1}))
    results = finals(await collect(ScheduledTaskPoolRunner("direct", direct, pool)))
    assert isinstance(results["huge"].error, ImpossibleCostError)
    assert "limited to 8" in str(results["huge"].error)
    assert isinstance(results["needs-huge"].error, TaskAbortedError)
    assert isinstance(results["no-cost"].error, TypeError)
    assert "default_cost" in str(results["no-cost"].error)
    assert results["fine"].kind is EnvelopeKind.FINAL
    assert graph.is_done
    assert_idle(pool)


async def test_tasks_added_while_running(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"slots": 2})
    graph: DependencyGraph[str] = DependencyGraph()
    source: DependencySource[str, Any] = DependencySource(graph)
    runner = ScheduledTaskPoolRunner("grow", source, pool, default_cost={"slots": 1})
    log = Log()

    def spawn_children(key: str, result: Any) -> None:
        if key == "root":
            for i in range(3):
                runner.add_task(ScheduledTask(f"child{i}", log.task(f"child{i}")), ["root"])

    runner.add_task(ScheduledTask("root", log.task("root"), on_complete=spawn_children))
    results = finals(await collect(runner))
    assert sorted(results) == ["child0", "child1", "child2", "root"]
    assert sorted(t for i in range(3) for t in log.started(f"child{i}")) == [1, 1, 2]
    assert_idle(pool)


async def test_streaming_scheduled_tasks(autojump_clock: object) -> None:
    pool = ResourceCapacitySource({"slots": 1})

    async def stream(emit: Any) -> AsyncIterator[Any]:
        yield "one"
        await trio.sleep(1)
        yield Final("done")

    runner = ScheduledTaskPoolRunner(
        "stream", [ScheduledTask("s", stream)], pool, default_cost={"slots": 1}
    )
    envelopes = await collect(runner)
    assert [(e.kind, e.value) for e in envelopes] == [
        (EnvelopeKind.INTERMEDIATE, "one"),
        (EnvelopeKind.FINAL, "done"),
    ]


async def test_priority_dependency_source_with_aging(autojump_clock: object) -> None:
    """The reference's aging numbers, through the runner: base 10, 5 per s (0.005 per ms), cap
    45. At t=9 a free-tier task waiting since t=0 is capped at 55; a standard (50) task queued at
    t=8 has aged to 55 too: the tie goes to the earlier one. A premium (100) task wins."""
    pool = ResourceCapacitySource({"slots": 1})
    graph: DependencyGraph[str] = DependencyGraph()
    tiers = {"free": 10, "standard": 50, "premium": 100, "blocker": 1000}
    source: PriorityDependencySource[str, Any] = PriorityDependencySource(
        graph, priority=lambda key, task: tiers[key.split("-")[0]], aging_rate=5, max_age_boost=45
    )
    runner = ScheduledTaskPoolRunner("prio", source, pool, default_cost={"slots": 1})
    log = Log()
    runner.add_task(ScheduledTask("blocker", log.task("blocker", seconds=9)))
    # The queued tasks take no time, so all three are served at t=9, when the tie holds (one
    # second later standard-1 would have aged to 60 while free-1 stays capped at 55).
    runner.add_task(ScheduledTask("free-1", log.task("free-1", seconds=0)))
    order: list[str] = []
    async with runner.run_tasks() as envelopes:
        await trio.sleep(8)  # free-1 has aged to 10 + 40 = 50; the slot frees at t=9
        runner.add_task(ScheduledTask("standard-1", log.task("standard-1", seconds=0)))
        runner.add_task(ScheduledTask("premium-1", log.task("premium-1", seconds=0)))
        async for envelope in envelopes:
            order.append(envelope.key)
    assert order == ["blocker", "premium-1", "free-1", "standard-1"]
    assert_idle(pool)


async def test_missing_task_is_a_clear_error_when_needed(autojump_clock: object) -> None:
    graph: DependencyGraph[str] = DependencyGraph()
    source: DependencySource[str, Any] = DependencySource(graph)  # built empty, filled later
    graph.add_node("a")
    source.set_task("a", ScheduledTask("a", Log().task("a")))
    graph.add_node("b", ["a"])  # "b" gets no task
    runner = ScheduledTaskPoolRunner(
        "missing", source, ResourceCapacitySource({"slots": 1}), default_cost={"slots": 1}
    )
    with pytest.raises(Exception, match="'b' is ready but has no task"):
        await collect(runner)


async def test_a_failing_priority_function_ends_the_source_with_its_error(
    autojump_clock: object,
) -> None:
    def priority(key: str, task: Any) -> float:
        if key == "bad":
            raise KeyError("no tier for bad")
        return 1.0

    source: PriorityDependencySource[str, Any] = PriorityDependencySource(
        DependencyGraph(), priority=priority
    )
    runner = ScheduledTaskPoolRunner(
        "prio-error", source, ResourceCapacitySource({"slots": 1}), default_cost={"slots": 1}
    )
    runner.add_task(ScheduledTask("good", Log().task("good")))
    runner.add_task(ScheduledTask("bad", Log().task("bad")))
    with pytest.raises(KeyError, match="no tier") as info:
        await collect(runner)
    assert "priority function for key 'bad'" in "".join(info.value.__notes__)


async def test_rate_limit_end_to_end(autojump_clock: object) -> None:
    """At most 5 in flight and 100 per minute: 250 tasks finish in the third window."""
    per_minute = QuotaCapacitySource({"requests": 100})
    pool = ResourceCapacitySource({"requests": 5}, per_minute)
    log = Log(pool)
    tasks = [ScheduledTask(i, log.task(i, seconds=0.5)) for i in range(250)]
    runner = ScheduledTaskPoolRunner("api", tasks, pool, default_cost={"requests": 1})
    async with per_minute.refilling(60):
        envelopes = await collect(runner)
    assert len(envelopes) == 250
    starts = sorted(t for t, kind, _ in log.events if kind == "start")
    assert [sum(1 for t in starts if w * 60 <= t < (w + 1) * 60) for w in range(3)] == [
        100,
        100,
        50,
    ]
    assert log.peak["requests"] <= 5
    assert_idle(pool)


async def test_token_bucket(autojump_clock: object) -> None:
    bucket = QuotaCapacitySource({"tokens": 10})
    source: PrioritySource[Any] = PrioritySource()
    log = Log()
    for i in range(30):
        source.enqueue(ScheduledTask(i, log.task(i, seconds=0)), priority=0)
    source.close_input()
    runner = ScheduledTaskPoolRunner("bucket", source, bucket, default_cost={"tokens": 1})
    async with bucket.refilling(1, amount={"tokens": 2}):
        await collect(runner)
    starts = sorted(t for t, kind, _ in log.events if kind == "start")
    assert starts[:10] == [0] * 10  # the initial burst
    assert starts[10:] == [t for t in range(1, 11) for _ in range(2)]  # then 2 per second


async def test_retries_waiting_when_a_lazy_run_becomes_impossible(autojump_clock: object) -> None:
    """A lazy run whose (fixed) cost can no longer ever fit gives up its source; a retry still
    waiting is reported with the same error rather than left behind (or waited for forever)."""
    pool = ResourceCapacitySource({"mem": 8})
    log = Log()

    async def tasks() -> AsyncIterator[Any]:
        yield ScheduledTask("flaky", log.task("flaky", fails=9), retry=RetryPolicy(backoff=5))
        yield ScheduledTask("slow", log.task("slow", seconds=10))
        yield ScheduledTask("third", log.task("third", seconds=20))
        yield ScheduledTask("never", log.task("never"))

    runner = HierarchicalTaskPoolRunner("lazy", tasks(), pool, cost={"mem": 4})
    seen: list[Envelope] = []
    with pytest.raises(ImpossibleCostError):
        async with runner.run_tasks() as envelopes:
            await trio.sleep(2)  # flaky failed at 1 (retry due at 6); third took its memory
            pool.set_limits({"mem": 2})
            async for envelope in envelopes:
                seen.append(envelope)
    results = finals(seen)
    assert isinstance(results["flaky"].error, ImpossibleCostError)
    assert (results["slow"].kind, results["third"].kind) == (EnvelopeKind.FINAL,) * 2
    assert log.started("flaky") == [0]
    assert log.started("never") == []
    assert pool.in_use == {}
