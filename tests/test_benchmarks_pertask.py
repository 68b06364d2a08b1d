"""The per-task scenarios (A, D), B's baselines and H's floor ratios, on tiny workloads.

Each run is verified by the suite itself (every result once, the limit, the capacity): these
tests check that every side and variant runs and reports, that the ratios are paired within a
repetition, and the targets' arithmetic. They make no performance claim.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from benchmarks import fanout
from benchmarks.dag import LayeredDag
from benchmarks.fanout import (
    AIOMETER,
    AIOMETER_TRIO,
    ANYIO,
    BATCHES,
    DIRECT,
    ENVELOPES,
    FLOOR,
    LIST,
    POOL,
    SPAWN,
    STREAM,
    TRIO_POOL,
    NoopFanout,
    SleepFanout,
    run_child,
)
from benchmarks.harness import ASYNCIO, SLUICEWAY, BenchmarkError, Sample, summarize
from benchmarks.hierarchical import HierarchicalJobs
from benchmarks.memory import LazyMemory

TINY = {"n": 300, "concurrency": 10}


@pytest.mark.parametrize(
    ("variant", "source"),
    [
        (ENVELOPES, LIST),
        (BATCHES, LIST),
        (POOL, LIST),
        (DIRECT, LIST),
        (SPAWN, LIST),
        (FLOOR, LIST),
        (TRIO_POOL, LIST),
        (ANYIO, LIST),
        (AIOMETER_TRIO, LIST),
        (AIOMETER, LIST),
        (ENVELOPES, STREAM),
        (BATCHES, STREAM),
        (POOL, STREAM),
        (DIRECT, STREAM),
        (FLOOR, STREAM),
    ],
)
def test_every_variant_runs_verified_in_a_fresh_process(variant: str, source: str) -> None:
    if variant == BATCHES and not fanout.batches_available():
        pytest.skip("EnvelopeChannel.batches() is not available")
    report = run_child(variant, source, TINY)
    assert (report["variant"], report["source"]) == (variant, source)
    assert report["results"] == report["bodies"] == 300
    assert 1 <= report["held_min"] <= report["held_max"] <= 10
    assert report["peak_concurrency"] <= 10
    assert report["cpu_seconds"] > 0
    assert 0 < report["seconds"] <= report["wall_seconds"]
    assert report["growth_mb"] >= 0


def test_a_failing_run_is_a_benchmark_error() -> None:
    with pytest.raises(BenchmarkError, match="exit status 1"):
        run_child(SPAWN, STREAM, TINY)  # spawn-all takes a list source only
    with pytest.raises(BenchmarkError, match="exit status 1"):
        run_child(TRIO_POOL, STREAM, TINY)  # so does the trio worker pool
    with pytest.raises(BenchmarkError, match="exit status 1"):
        run_child(AIOMETER, STREAM, TINY)  # and the anyio-based peers


def _fake_runs(monkeypatch: pytest.MonkeyPatch, cpu: dict[str, float]) -> list[str]:
    """Replace the fresh processes by reports with the given CPU seconds per variant."""
    calls: list[str] = []

    def run(variant: str, source: str, params: dict[str, Any]) -> dict[str, Any]:
        calls.append(variant)
        return {"cpu_seconds": cpu[variant], "seconds": 2 * cpu[variant], "growth_mb": 0.5}

    monkeypatch.setattr(fanout, "run_child", run)
    return calls


def test_the_ratios_are_paired_with_the_pool_run_beside_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fanout, "batches_available", lambda: True)
    calls = _fake_runs(
        monkeypatch,
        {
            ENVELOPES: 3.0,
            BATCHES: 1.5,
            FLOOR: 2.5,
            TRIO_POOL: 4.0,
            ANYIO: 7.0,
            AIOMETER_TRIO: 7.5,
            AIOMETER: 8.0,
            POOL: 1.0,
            DIRECT: 0.5,
            SPAWN: 2.0,
        },
    )
    scenario = NoopFanout()
    params = {"n": 1_000_000, "concurrency": 100}
    samples: dict[str, list[Sample]] = {SLUICEWAY: [], ASYNCIO: []}
    for _ in range(2):
        for side in (SLUICEWAY, ASYNCIO):
            samples[side].append(scenario.run(side, params))
    # The pool run sits between the two sluiceway runs (the trio floor and the peers come last
    # or first); the orders alternate.
    peers = (TRIO_POOL, ANYIO, AIOMETER_TRIO, AIOMETER)
    assert calls == [
        *(ENVELOPES, POOL, BATCHES, FLOOR, *peers),
        *(POOL, DIRECT, SPAWN),
        *(*peers[::-1], FLOOR, BATCHES, POOL, ENVELOPES),
        *(SPAWN, DIRECT, POOL),
    ]
    ours = samples[SLUICEWAY][0].metrics
    assert ours["cpu_us"] == pytest.approx(3.0)
    assert ours["x_pool"] == pytest.approx(3.0)
    assert ours["x_pool_batches"] == pytest.approx(1.5)
    assert ours["x_pool_floor"] == pytest.approx(2.5)
    assert ours["x_pool_triopool"] == pytest.approx(4.0)
    assert ours["x_pool_anyio"] == pytest.approx(7.0)
    assert ours["x_pool_aiometer-trio"] == pytest.approx(7.5)
    assert ours["x_pool_aiometer"] == pytest.approx(8.0)
    assert ours["cpu_us_spawn"] == ours["cpu_us_direct"] == ours["cpu_us"]
    assert ours["wall_us"] == pytest.approx(6.0)
    theirs = samples[ASYNCIO][0].metrics
    assert (theirs["cpu_us"], theirs["x_pool"], theirs["x_pool_batches"]) == (1.0, 1.0, 1.0)
    assert theirs["cpu_us_direct"] == pytest.approx(0.5)
    assert theirs["cpu_us_spawn"] == pytest.approx(2.0)
    target = scenario.target(summarize(samples, scenario.metrics), params)
    assert not target.met
    assert "per envelope 3.00x" in target.measured
    assert "anyio gated spawn 7.00x, aiometer on trio 7.50x, aiometer on asyncio 8.00x" in (
        target.measured
    )
    assert "batches 1.50x" in target.measured
    assert "the trio floor per envelope 2.50x" in target.measured
    assert "against the pool: trio worker pool 4.00x" in target.measured


def test_the_targets_are_met_within_2x_and_1_2x(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "batches_available", lambda: True)
    _fake_runs(monkeypatch, {ENVELOPES: 2.0, BATCHES: 1.2, FLOOR: 1.9, POOL: 1.0, DIRECT: 0.5})
    scenario = LazyMemory()
    params = {"n": 1000, "concurrency": 100}
    samples = {side: [scenario.run(side, params)] for side in (SLUICEWAY, ASYNCIO)}
    assert samples[SLUICEWAY][0].metrics["growth_mb"] == 0.5
    assert "cpu_us_spawn" not in samples[ASYNCIO][0].metrics  # D has no spawn-all run
    assert scenario.target(summarize(samples, scenario.metrics), params).met


def test_without_batches_the_batch_rows_are_nan_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fanout, "batches_available", lambda: False)
    calls = _fake_runs(monkeypatch, {ENVELOPES: 1.0, POOL: 1.0})
    sample = NoopFanout().run(SLUICEWAY, {"n": 10, "concurrency": 2})
    assert calls == [ENVELOPES, POOL]
    assert math.isnan(sample.metrics["cpu_us_batches"])
    assert math.isnan(sample.metrics["x_pool_batches"])
    assert math.isnan(sample.metrics["x_pool_floor"])
    assert "batches() is not available" in sample.info["warnings"][0]


def test_b_runs_every_asyncio_baseline() -> None:
    scenario = SleepFanout()
    params = {"n": 40, "concurrency": 10, "latency": 0.001}
    ours = scenario.run(SLUICEWAY, params)
    theirs = scenario.run(ASYNCIO, params)
    assert ours.metrics["x_ideal"] == ours.metrics["x_ideal_pool"] > 0
    assert set(theirs.info["runs"]) == {name for name, _, _ in fanout.B_BASELINES}
    assert theirs.metrics["x_ideal_pool"] > 0
    if "uvloop_pool" not in theirs.info["runs"]:  # uvloop is not installed
        assert math.isnan(theirs.metrics["x_ideal_uvloop"])
    for run in theirs.info["runs"].values():
        assert run["results"] == 40
        assert run["peak_concurrency"] <= 10
    # sluiceway runs on both clocks, and the target's run on PreciseClock: every result
    # delivered in each, and no sleep (so no makespan) under the ideal on any clock.
    assert ours.info["results"] == ours.info["trio_clock_run"]["results"] == 40
    for key in ("x_ideal", "x_ideal_trio_clock", "x_ideal_floor", "x_ideal_floor_precise"):
        assert ours.metrics[key] >= 1.0, key
    assert ours.metrics["cpu_seconds"] > 0
    assert ours.metrics["cpu_seconds_trio_clock"] > 0
    assert theirs.metrics["x_ideal_floor"] >= 1.0
    assert theirs.metrics["cpu_seconds"] == theirs.info["runs"]["pool"]["cpu_seconds"]
    target = scenario.target(
        summarize({SLUICEWAY: [ours], ASYNCIO: [theirs]}, scenario.metrics), params
    )
    assert "on PreciseClock" in target.measured
    assert "on trio's own clock" in target.measured
    assert "worker pool" in target.measured
    assert "the bare runtime's floor: trio" in target.measured


def test_b_alternates_which_clock_runs_first(monkeypatch: pytest.MonkeyPatch) -> None:
    clocks: list[str] = []

    def fake_run(params: object, make_body: object, clock: object = None) -> Sample:
        clocks.append("trio" if clock is None else type(clock).__name__)
        return Sample({"seconds": 1.0}, {"cpu_seconds": 0.1, "peak_concurrency": 10})

    monkeypatch.setattr(fanout, "_fanout_sluiceway", fake_run)
    monkeypatch.setattr(fanout, "trio_sleep_floor", lambda *args: 1.0)
    scenario = SleepFanout()
    params = {"n": 40, "concurrency": 10, "latency": 0.001}
    for _ in range(2):
        scenario.run(SLUICEWAY, params)
    assert clocks == ["PreciseClock", "trio", "trio", "PreciseClock"]


def test_h_reports_cpu_and_makespan_against_each_floor() -> None:
    scenario = LayeredDag()
    params = {**scenario.params(quick=True), "layers": 3, "width": 10}
    samples = {side: [scenario.run(side, params)] for side in (SLUICEWAY, ASYNCIO)}
    for side, (sample,) in samples.items():
        metrics = sample.metrics
        assert metrics["x_floor_cpu"] == pytest.approx(
            metrics["cpu_seconds"] / metrics["floor_cpu_seconds"]
        )
        assert sample.info["floor"]["runtime"] == ("trio" if side == SLUICEWAY else "asyncio")
    target = scenario.target(summarize(samples, scenario.metrics), params)
    assert "the trio floor" in target.goal


def test_c_runs_sluiceway_on_both_clocks() -> None:
    scenario = HierarchicalJobs()
    params = {**scenario.params(quick=True), "a_tasks": 6, "b_tasks": 6, "latency": 0.002}
    ours = [scenario.run(SLUICEWAY, params) for _ in range(2)]
    theirs = scenario.run(ASYNCIO, params)
    for sample in ours:
        # Each run verified itself (every result once, no limit exceeded); never under the bound.
        assert sample.metrics["x_bound"] >= 1.0
        assert sample.metrics["x_bound_trio_clock"] >= 1.0
        assert sample.info["trio_clock_run"]["x_bound"] == sample.metrics["x_bound_trio_clock"]
        assert sample.metrics["floor"] > 0
        assert sample.metrics["floor_precise"] > 0
    assert theirs.metrics["floor_precise"] == theirs.metrics["floor"]
    target = scenario.target(
        summarize({SLUICEWAY: ours, ASYNCIO: [theirs]}, scenario.metrics), params
    )
    assert "on PreciseClock" in target.measured
    assert "on trio's own clock" in target.measured
