"""The metrics events, the in-memory collector, safe_record and MultiCollector."""

from __future__ import annotations

import gc
import logging
import math
import warnings
from collections.abc import Mapping
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway._metrics import (
    CapacityEvent,
    DurationStats,
    InMemoryMetrics,
    MetricsCollector,
    MultiCollector,
    TaskEvent,
    safe_record,
)


def cap(
    kind: str,
    amounts: Mapping[str, float],
    *,
    node: str = "n",
    at: float = 0.0,
    limits: Mapping[str, float] | None = None,
    in_use: Mapping[str, float] | None = None,
    reason: str | None = None,
) -> CapacityEvent:
    return CapacityEvent(
        kind=kind,  # type: ignore[arg-type]
        node=node,
        at=at,
        amounts=amounts,
        limits={"slots": 10} if limits is None else limits,
        in_use={} if in_use is None else in_use,
        reason=reason,
    )


def task(kind: str, at: float, *, runner: str = "r", **kwargs: object) -> TaskEvent:
    return TaskEvent(kind=kind, runner=runner, at=at, **kwargs)  # type: ignore[arg-type]


class Broken:
    """A collector that always fails."""

    def __init__(self) -> None:
        self.calls = 0

    def record(self, event: CapacityEvent | TaskEvent) -> None:
        self.calls += 1
        raise KeyError("broken sink")


class Recorder:
    """A collector that keeps every event."""

    def __init__(self) -> None:
        self.events: list[CapacityEvent | TaskEvent] = []

    def record(self, event: CapacityEvent | TaskEvent) -> None:
        self.events.append(event)


def record_queued(collector: MetricsCollector, n: int, *, safe: bool = True) -> None:
    """Give ``collector`` ``n`` queued events, through safe_record or directly."""
    for i in range(n):
        event = task("started", float(i))
        if safe:
            safe_record(collector, event)
        else:
            collector.record(event)


# -- counts --------------------------------------------------------------------------------


def test_counts_per_node_and_per_runner() -> None:
    m = InMemoryMetrics()
    m.record(cap("accepted", {"slots": 1}, node="a"))
    m.record(cap("accepted", {"slots": 1}, node="a"))
    m.record(cap("rejected", {"slots": 5}, node="a", reason="insufficient_capacity"))
    m.record(cap("limits_changed", {"slots": 3}, node="b"))
    m.record(task("started", 0.0, runner="x"))
    m.record(task("started", 1.0, runner="x"))
    m.record(task("intermediate", 1.5, runner="x"))
    m.record(task("retried", 2.0, runner="x"))
    m.record(task("aborted", 2.0, runner="y", task_id=None, key="k"))
    snap = m.snapshot()
    assert snap.capacity_counts == {"a": {"accepted": 2, "rejected": 1}, "b": {"limits_changed": 1}}
    assert snap.task_counts == {
        "x": {"started": 2, "intermediate": 1, "retried": 1},
        "y": {"aborted": 1},
    }
    assert snap.rates is None


def test_an_empty_collector_has_an_empty_snapshot() -> None:
    snap = InMemoryMetrics().snapshot()
    assert snap.capacity_counts == snap.task_counts == snap.in_flight == snap.utilization == {}
    assert snap.queue_wait == snap.run_time == {}
    assert snap.rates is None
    assert InMemoryMetrics(window=1.0).snapshot().rates == {}


def test_record_rejects_anything_that_is_not_an_event() -> None:
    with pytest.raises(TypeError, match="CapacityEvent or a TaskEvent"):
        InMemoryMetrics().record("accepted")  # type: ignore[arg-type]


@pytest.mark.parametrize("window", [0, -1.0, math.inf, math.nan])
def test_the_window_must_be_positive_and_finite(window: float) -> None:
    with pytest.raises(ValueError, match="window"):
        InMemoryMetrics(window=window)


def test_max_samples_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_samples"):
        InMemoryMetrics(max_samples=0)


# -- in flight and utilisation -------------------------------------------------------------


def test_in_flight_is_accepted_minus_released_minus_refunded() -> None:
    m = InMemoryMetrics()
    m.record(cap("accepted", {"slots": 2, "tokens": 100}))
    m.record(cap("accepted", {"slots": 1, "tokens": 50}))
    assert m.snapshot().in_flight == {"n": {"slots": 3, "tokens": 150}}
    m.record(cap("released", {"slots": 2, "tokens": 100}))
    assert m.snapshot().in_flight == {"n": {"slots": 1, "tokens": 50}}
    m.record(cap("refunded", {"slots": 1, "tokens": 50}))
    assert m.snapshot().in_flight == {"n": {"slots": 0, "tokens": 0}}


def test_rejections_and_limit_changes_hold_nothing() -> None:
    m = InMemoryMetrics()
    m.record(cap("rejected", {"slots": 1}, reason="impossible"))
    m.record(cap("limits_changed", {"slots": 1}))
    m.record(cap("reset", {"slots": 4}))
    m.record(cap("increment", {"slots": 1}))
    assert m.snapshot().in_flight == {}
    m.record(cap("accepted", {"slots": 1}))
    m.record(cap("reset", {"slots": 4}))  # a reset never forgets work in flight
    assert m.snapshot().in_flight == {"n": {"slots": 1}}


def test_in_flight_is_exact_with_fractional_amounts() -> None:
    m = InMemoryMetrics()
    for value in (0.1, 0.2, 0.7):
        m.record(cap("accepted", {"gpu": value}))
    exact = Fraction(0.1) + Fraction(0.2) + Fraction(0.7)
    assert m.snapshot().in_flight["n"]["gpu"] == float(exact)
    for value in (0.2, 0.7, 0.1):
        m.record(cap("released", {"gpu": value}))
    held = m.snapshot().in_flight["n"]["gpu"]
    assert held == 0
    assert type(held) is int


def test_in_flight_never_goes_negative() -> None:
    m = InMemoryMetrics()
    m.record(cap("released", {"slots": 2}))  # e.g. a collector attached mid-run
    assert m.snapshot().in_flight == {"n": {"slots": 0}}
    m.record(cap("accepted", {"slots": 1}))
    assert m.snapshot().in_flight == {"n": {"slots": 1}}


def test_in_flight_is_kept_per_node() -> None:
    m = InMemoryMetrics()
    m.record(cap("accepted", {"slots": 1}, node="root"))
    m.record(cap("accepted", {"slots": 1}, node="child"))
    m.record(cap("released", {"slots": 1}, node="child"))
    assert m.snapshot().in_flight == {"root": {"slots": 1}, "child": {"slots": 0}}


def test_a_non_finite_amount_is_an_error() -> None:
    with pytest.raises(ValueError, match="finite"):
        InMemoryMetrics().record(cap("accepted", {"slots": math.inf}))


def test_utilization_comes_from_the_latest_event_of_each_node() -> None:
    m = InMemoryMetrics()
    m.record(cap("accepted", {"a": 1}, node="x", limits={"a": 4, "b": 10}, in_use={"a": 1}))
    m.record(cap("accepted", {"a": 2}, node="x", limits={"a": 4, "b": 10}, in_use={"a": 3}))
    m.record(cap("accepted", {"a": 1}, node="y", limits={"a": 2}, in_use={"a": 1}))
    snap = m.snapshot()
    assert snap.utilization == {"x": {"a": 0.75, "b": 0.0}, "y": {"a": 0.5}}
    # a lowered limit below what is held shows as more than 1
    m.record(cap("limits_changed", {"a": 2}, node="x", limits={"a": 2, "b": 10}, in_use={"a": 3}))
    assert m.snapshot().utilization["x"] == {"a": 1.5, "b": 0.0}


def test_utilization_is_zero_for_zero_and_unlimited_limits() -> None:
    m = InMemoryMetrics()
    m.record(
        cap(
            "accepted",
            {"a": 1},
            limits={"a": math.inf, "b": 0, "c": 2.5},
            in_use={"a": 7, "b": 0, "c": 1.25},
        )
    )
    assert m.snapshot().utilization == {"n": {"a": 0.0, "b": 0.0, "c": 0.5}}


# -- durations -----------------------------------------------------------------------------


def test_queue_wait_statistics() -> None:
    m = InMemoryMetrics()
    for queued, started in [(0.0, 1.0), (0.0, 3.0), (1.0, 3.0), (2.0, 10.0)]:
        m.record(task("started", started, queued_at=queued))
    m.record(task("started", 11.0))  # no queued_at: counted, but not a queue wait
    snap = m.snapshot()
    assert snap.task_counts["r"]["started"] == 5
    assert snap.queue_wait == {
        "r": DurationStats(count=4, total=14.0, mean=3.5, min=1.0, max=8.0, p50=2.0, p95=8.0)
    }
    assert snap.run_time == {}


def test_run_time_counts_every_attempt_end() -> None:
    m = InMemoryMetrics()
    m.record(task("retried", 2.0, started_at=1.0, retry_at=5.0))
    m.record(task("failed", 9.0, started_at=5.0, attempt=2))
    m.record(task("finished", 3.0, started_at=0.0))
    m.record(task("cancelled", 5.0, started_at=3.0))
    m.record(task("timed_out", 10.0, started_at=0.0))
    m.record(task("aborted", 11.0, started_at=7.0))  # aborted while running
    # not attempt ends, or never started
    m.record(task("intermediate", 11.0, started_at=0.0))
    m.record(task("finished", 12.0))
    m.record(task("aborted", 12.0))
    stats = m.snapshot().run_time["r"]
    assert stats == DurationStats(
        count=6, total=24.0, mean=4.0, min=1.0, max=10.0, p50=3.0, p95=10.0
    )


def test_percentiles_use_the_nearest_rank() -> None:
    m = InMemoryMetrics()
    for i in range(1, 101):
        m.record(task("started", float(i), queued_at=0.0))
    stats = m.snapshot().queue_wait["r"]
    assert (stats.p50, stats.p95, stats.min, stats.max) == (50.0, 95.0, 1.0, 100.0)
    assert stats.total == 5050.0
    assert stats.mean == 50.5
    m.record(task("started", 5.0, queued_at=0.0))
    stats = m.snapshot().queue_wait["r"]
    assert (stats.count, stats.p50, stats.p95) == (101, 50.0, 95.0)


def test_a_single_duration() -> None:
    m = InMemoryMetrics()
    m.record(task("finished", 2.5, started_at=1.0))
    assert m.snapshot().run_time["r"] == DurationStats(
        count=1, total=1.5, mean=1.5, min=1.5, max=1.5, p50=1.5, p95=1.5
    )


def test_durations_beyond_the_sample_keep_exact_totals_and_estimate_percentiles() -> None:
    m = InMemoryMetrics(max_samples=50)
    values = [float(i % 100) for i in range(1_000)]
    for value in values:
        m.record(task("finished", value, started_at=0.0))
    stats = m.snapshot().run_time["r"]
    assert stats.count == 1_000
    assert stats.total == sum(values)
    assert stats.mean == sum(values) / 1_000
    assert (stats.min, stats.max) == (0.0, 99.0)
    assert stats.p50 is not None
    assert stats.p95 is not None
    assert 0.0 <= stats.p50 <= stats.p95 <= 99.0
    assert stats.p50 in values
    assert stats.p95 in values


def test_duration_stats_are_kept_per_runner() -> None:
    m = InMemoryMetrics()
    m.record(task("finished", 1.0, runner="a", started_at=0.0))
    m.record(task("finished", 3.0, runner="b", started_at=0.0))
    run_time = m.snapshot().run_time
    assert set(run_time) == {"a", "b"}
    assert run_time["a"].total == 1.0
    assert run_time["b"].total == 3.0


# -- rates ---------------------------------------------------------------------------------


def test_rates_count_events_in_the_window() -> None:
    m = InMemoryMetrics(window=10.0)
    for t in range(13):  # t = 0 .. 12
        m.record(task("finished", float(t)))
    m.record(task("failed", 12.0))
    rates = m.snapshot().rates
    # the window is (2, 12]: the events at 3 .. 12 count
    assert rates == {"r": {"finished": 1.0, "failed": 0.1}}


def test_rates_are_evicted_lazily_by_event_time() -> None:
    m = InMemoryMetrics(window=5.0)
    for _ in range(10):
        m.record(task("started", 1.0, runner="a"))
    assert m.snapshot().rates == {"a": {"started": 2.0}}
    # nothing newer recorded: the window still ends at the latest event
    assert m.snapshot().rates == {"a": {"started": 2.0}}
    # an event of another runner moves the window for everybody
    m.record(task("started", 6.0, runner="b"))
    assert m.snapshot().rates == {"a": {"started": 0.0}, "b": {"started": 0.2}}


def test_rates_decay_when_snapshot_is_given_the_current_time() -> None:
    m = InMemoryMetrics(window=4.0)
    m.record(task("finished", 0.0))
    m.record(task("finished", 2.0))
    assert m.snapshot(now=3.0).rates == {"r": {"finished": 0.5}}
    assert m.snapshot(now=5.0).rates == {"r": {"finished": 0.25}}
    assert m.snapshot(now=6.0).rates == {"r": {"finished": 0.0}}


def test_rates_ignore_capacity_events() -> None:
    m = InMemoryMetrics(window=1.0)
    m.record(cap("accepted", {"slots": 1}, at=0.5))
    assert m.snapshot().rates == {}


def test_an_out_of_order_event_counts_at_the_latest_time() -> None:
    m = InMemoryMetrics(window=2.0)
    m.record(task("finished", 10.0))
    m.record(task("finished", 1.0))  # older than the window, but counted as at t=10
    assert m.snapshot().rates == {"r": {"finished": 1.0}}


def test_rate_buckets_stay_bounded() -> None:
    m = InMemoryMetrics(window=1.0)
    for i in range(100_000):
        m.record(task("finished", i * 1e-4))
    rate = m._rates["r"]["finished"]
    assert len(rate.slots) <= 1_001
    # the window (8.9999, 9.9999] holds about 10,000 events, give or take one bucket of 10
    rates = m.snapshot().rates
    assert rates is not None
    assert 9_990 <= rates["r"]["finished"] <= 10_010


# -- reset and snapshots ------------------------------------------------------------------


def test_reset_forgets_everything() -> None:
    m = InMemoryMetrics(window=10.0)
    m.record(cap("accepted", {"slots": 1}, in_use={"slots": 1}))
    m.record(task("started", 5.0, queued_at=1.0))
    m.record(task("finished", 6.0, started_at=5.0))
    m.reset()
    snap = m.snapshot()
    assert snap.capacity_counts == snap.task_counts == snap.in_flight == snap.utilization == {}
    assert snap.queue_wait == snap.run_time == {}
    assert snap.rates == {}
    # the rate window starts over too: an earlier time than before the reset is fine
    m.record(task("finished", 1.0))
    assert m.snapshot().rates == {"r": {"finished": 0.1}}


def test_snapshots_are_copies() -> None:
    m = InMemoryMetrics(window=1.0)
    m.record(cap("accepted", {"slots": 1}, in_use={"slots": 1}))
    m.record(task("finished", 1.0, started_at=0.0))
    snap = m.snapshot()
    snap.capacity_counts["n"]["accepted"] = 99
    snap.task_counts["r"]["finished"] = 99
    snap.in_flight["n"]["slots"] = 99
    snap.utilization["n"]["slots"] = 99.0
    snap.run_time.clear()
    assert snap.rates is not None
    snap.rates["r"]["finished"] = 99.0
    again = m.snapshot()
    assert again.capacity_counts == {"n": {"accepted": 1}}
    assert again.task_counts == {"r": {"finished": 1}}
    assert again.in_flight == {"n": {"slots": 1}}
    assert again.utilization == {"n": {"slots": 0.1}}
    assert again.run_time["r"].count == 1
    assert again.rates == {"r": {"finished": 1.0}}


def test_in_memory_metrics_is_a_collector() -> None:
    assert isinstance(InMemoryMetrics(), MetricsCollector)
    assert isinstance(MultiCollector(), MetricsCollector)
    assert isinstance(Recorder(), MetricsCollector)
    assert not isinstance(object(), MetricsCollector)


# -- safe_record and MultiCollector ---------------------------------------------------------


def test_safe_record_passes_events_on() -> None:
    recorder = Recorder()
    event = task("started", 0.0)
    safe_record(recorder, event)
    assert recorder.events == [event]


def test_safe_record_warns_once_per_collector_and_never_raises() -> None:
    broken = Broken()
    with pytest.warns(RuntimeWarning) as caught:
        record_queued(broken, 5)
    assert broken.calls == 5
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "Broken" in message
    assert "KeyError('broken sink')" in message
    assert "'started'" in message
    assert caught[0].filename == __file__  # attributed to the caller of safe_record

    other = Broken()
    with pytest.warns(RuntimeWarning, match="broken sink"):
        safe_record(other, cap("accepted", {"slots": 1}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        safe_record(broken, task("started", 9.0))  # already reported: nothing more


def test_safe_record_warns_again_for_a_new_collector_at_a_reused_address() -> None:
    for _ in range(3):
        with pytest.warns(RuntimeWarning, match="broken sink"):
            safe_record(Broken(), task("started", 0.0))
        gc.collect()


def test_safe_record_handles_collectors_that_cannot_be_weakly_referenced() -> None:
    class Slotted:
        __slots__ = ()

        def record(self, event: CapacityEvent | TaskEvent) -> None:
            raise ValueError("slotted sink")

    sink = Slotted()
    with pytest.warns(RuntimeWarning, match="slotted sink") as caught:
        record_queued(sink, 2)
    assert len(caught) == 1


def test_safe_record_logs_when_the_warning_is_turned_into_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with warnings.catch_warnings(), caplog.at_level(logging.ERROR, logger="sluiceway.metrics"):
        warnings.simplefilter("error")
        safe_record(Broken(), task("started", 0.0))  # does not raise
    assert len(caplog.records) == 1
    assert "broken sink" in caplog.records[0].getMessage()


def test_safe_record_lets_base_exceptions_through() -> None:
    class Interrupting:
        def record(self, event: CapacityEvent | TaskEvent) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        safe_record(Interrupting(), task("started", 0.0))


def test_multi_collector_fans_out_in_order() -> None:
    first, second = Recorder(), InMemoryMetrics()
    multi = MultiCollector(first, second)
    assert multi.collectors == (first, second)
    events: list[CapacityEvent | TaskEvent] = [task("started", 0.0), cap("accepted", {"slots": 1})]
    for event in events:
        multi.record(event)
    assert first.events == events
    assert second.snapshot().task_counts == {"r": {"started": 1}}
    assert "Recorder" in repr(multi)


def test_multi_collector_isolates_a_failing_collector() -> None:
    before, broken, after = Recorder(), Broken(), Recorder()
    multi = MultiCollector(before, broken, after)
    with pytest.warns(RuntimeWarning, match="Broken") as caught:
        record_queued(multi, 3, safe=False)  # MultiCollector.record never raises
    assert len(caught) == 1
    assert len(before.events) == len(after.events) == 3
    assert broken.calls == 3


# -- properties ----------------------------------------------------------------------------

_AMOUNTS = st.one_of(
    st.integers(min_value=0, max_value=20),
    st.sampled_from([0.1, 0.2, 0.25, 0.3, 1.5, 2.0]),
)
_RESOURCES = st.sampled_from(["slots", "tokens"])


@st.composite
def _valid_sequences(draw: st.DrawFn) -> list[tuple[str, str, dict[str, float]]]:
    """Events (kind, node, amounts) that never give back more than is held at a node."""
    held: list[tuple[str, dict[str, float]]] = []  # grants not yet returned
    events: list[tuple[str, str, dict[str, float]]] = []
    for _ in range(draw(st.integers(min_value=0, max_value=40))):
        give_back: bool = draw(st.booleans())
        if held and give_back:
            index = draw(st.integers(min_value=0, max_value=len(held) - 1))
            node, amounts = held.pop(index)
            events.append((draw(st.sampled_from(["released", "refunded"])), node, amounts))
        else:
            node = draw(st.sampled_from(["root", "child"]))
            amounts = draw(st.dictionaries(_RESOURCES, _AMOUNTS, min_size=1))
            kind = draw(st.sampled_from(["accepted", "accepted", "rejected", "reset"]))
            if kind == "accepted":
                held.append((node, amounts))
            events.append((kind, node, amounts))
    return events


@given(_valid_sequences())
def test_in_flight_equals_accepted_minus_released_minus_refunded(
    events: list[tuple[str, str, dict[str, float]]],
) -> None:
    m = InMemoryMetrics()
    expected: dict[str, dict[str, Fraction]] = {}
    for kind, node, amounts in events:
        m.record(cap(kind, amounts, node=node))
        sign = {"accepted": 1, "released": -1, "refunded": -1}.get(kind, 0)
        if sign:
            row = expected.setdefault(node, {})
            for resource, value in amounts.items():
                row[resource] = row.get(resource, Fraction(0)) + sign * Fraction(value)
        in_flight = m.snapshot().in_flight
        assert set(in_flight) == set(expected)
        for name, row in expected.items():
            assert in_flight[name] == {r: float(v) for r, v in row.items()}
            assert all(v >= 0 for v in in_flight[name].values())


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["accepted", "released", "refunded", "rejected"]),
            st.dictionaries(_RESOURCES, _AMOUNTS, min_size=1),
        ),
        max_size=40,
    )
)
def test_in_flight_never_goes_negative_whatever_the_events(
    events: list[tuple[str, dict[str, float]]],
) -> None:
    m = InMemoryMetrics()
    for kind, amounts in events:
        m.record(cap(kind, amounts))
        for row in m.snapshot().in_flight.values():
            assert all(value >= 0 for value in row.values())
