"""Metrics: lifecycle events of capacity nodes and runner tasks, and an in-memory collector.

The original library observes capacity only through ``tryAcquire`` (the runners' own
``canAcquire`` + ``acquireImmediate`` protocol is silent) and has no runner-level metrics at all:
queue wait, run time, retries and in-flight work had to be rebuilt by hand from envelopes. Here
both layers report to one :class:`MetricsCollector`:

* capacity nodes emit a :class:`CapacityEvent` for every grant, rejection, release, refund and
  change of limits, whichever API caused it;
* runners emit a :class:`TaskEvent` for every step of a task's life (queued, started,
  intermediate, finished, failed, retried, aborted, cancelled, timed out), carrying the times
  needed to derive queue wait and run time.

A collector is a plain object with a synchronous ``record(event)`` method. The library calls it
through :func:`safe_record`, so a failing collector can never break scheduling.
:class:`InMemoryMetrics` is the default collector: counters, what is held per node, utilisation,
queue-wait and run-time statistics, and optional rolling-window rates, all readable at any time
with :meth:`InMemoryMetrics.snapshot`. :class:`MultiCollector` fans events out to several
collectors (for example an :class:`InMemoryMetrics` and an exporter of your own).

This module sits below the capacity and runner layers and imports neither. Every timestamp comes
from the events themselves (trio clock times), so a collector works the same under
``trio.testing.MockClock`` and can be read outside a trio run.
"""

from __future__ import annotations

import logging
import math
import random
import warnings
import weakref
from collections import deque
from collections.abc import Hashable, Mapping
from fractions import Fraction
from typing import Literal, Protocol, TypeAlias, runtime_checkable

import attrs

#: What happened to a capacity node.
CapacityEventKind: TypeAlias = Literal[
    "accepted", "rejected", "released", "refunded", "limits_changed", "reset", "increment"
]
#: What happened to a runner's task.
TaskEventKind: TypeAlias = Literal[
    "queued",
    "started",
    "intermediate",
    "finished",
    "failed",
    "retried",
    "aborted",
    "cancelled",
    "timed_out",
    "parked",
]

#: Kinds of task event that end one attempt of a task and contribute to ``run_time``.
_ATTEMPT_ENDS: frozenset[str] = frozenset(
    {"finished", "failed", "cancelled", "timed_out", "retried", "aborted", "parked"}
)
#: Default bound on the number of duration samples kept per runner for percentiles.
_DEFAULT_MAX_SAMPLES = 10_000
#: A rolling window is counted in this many time buckets (the resolution of rate eviction).
_RATE_BUCKETS = 1_000

_logger = logging.getLogger("sluiceway.metrics")


def _count(table: dict[str, dict[str, int]], label: str, kind: str) -> None:
    """Add one to ``table[label][kind]``."""
    counts = table.get(label)
    if counts is None:
        counts = table[label] = {}
    counts[kind] = counts.get(kind, 0) + 1


@attrs.frozen
class CapacityEvent:
    """Something that happened at one node of a capacity tree.

    Events are per node: an acquisition granted at a leaf is reported by that leaf (whether its
    ancestors report too is up to the emitter; :class:`InMemoryMetrics` keeps every node apart).
    The mappings are owned by the event: emitters pass fresh dicts and nobody mutates them
    afterwards, so a collector may keep a reference instead of copying.

    Attributes:
        kind: ``"accepted"`` (a cost was granted), ``"rejected"`` (a cost was refused),
            ``"released"`` (a granted cost was returned after use), ``"refunded"`` (a granted cost
            was returned unused, e.g. a task that never started), ``"limits_changed"``,
            ``"reset"`` or ``"increment"`` (a quota refill).
        node: The node's label: its name, or a generated id.
        at: Trio clock time (``trio.current_time()``) of the event.
        amounts: For accepted, rejected, released and refunded: the cost concerned. For
            limits_changed and reset: the limits applied. For increment: the increments applied.
        limits: The node's limits after the event.
        in_use: What the node's subtree holds after the event.
        reason: For ``"rejected"`` only: ``"insufficient_capacity"`` (a try that did not fit
            right now) or ``"impossible"`` (a cost that can never fit).
    """

    kind: CapacityEventKind
    node: str
    at: float
    amounts: Mapping[str, float]
    limits: Mapping[str, float]
    in_use: Mapping[str, float]
    reason: str | None = None


@attrs.frozen
class TaskEvent:
    """Something that happened to one task of a runner.

    Each attempt of a task ends with exactly one of ``finished``, ``failed``, ``cancelled``,
    ``timed_out``, ``aborted`` or ``retried`` (the latter when the failure will be retried after
    back-off). A task that never started (aborted, shut out by a shutdown, or rejected for its
    cost) gets only its ending event, with ``started_at=None``. A graph node aborted before any
    run took it emits nothing: no runner ever saw it.

    ``queued`` marks when an attempt became ready to run, waiting only for capacity. With a
    dependency source it is recorded the moment the node becomes ready (for nodes ready before
    the run, when the run starts), so ``queued`` minus ``started`` events is the live queue
    depth. Other sources do not timestamp their items: their ``queued`` event is recorded when
    the task is admitted, just before ``started``, with ``at`` set to when the task reached the
    head of the run. Either way ``at`` of ``queued`` equals ``queued_at`` of the ``started``
    that follows.

    Attributes:
        kind: The lifecycle step: ``"queued"``, ``"started"``, ``"intermediate"``,
            ``"finished"``, ``"failed"``, ``"retried"``, ``"aborted"``, ``"cancelled"``,
            ``"timed_out"`` or ``"parked"`` (the task raised :class:`~sluiceway.RunParked`: its
            work goes on later, it has no envelope).
        runner: The runner's label.
        at: Trio clock time (``trio.current_time()``) of the event.
        task_id: The task's id (kept across the attempts of a retried task); ``None`` on the
            first ``queued`` of a graph node, whose task gets its id when it is taken.
        key: The task's key, if it has one.
        attempt: Which attempt this is, starting at 1.
        cost: The capacity cost of the task, when known.
        error: The exception, for failed, retried, aborted, cancelled and timed_out events.
        queued_at: On ``"started"``: when the task became ready to run. The queue wait is
            ``at - queued_at``.
        started_at: On the events that end an attempt: when this attempt started (``None`` if
            the task never started). The run time is ``at - started_at``.
        retry_at: On ``"retried"``: when the next attempt may start.
    """

    kind: TaskEventKind
    runner: str
    at: float
    task_id: int | None = None
    key: Hashable | None = None
    attempt: int = 1
    cost: Mapping[str, float] | None = None
    error: BaseException | None = None
    queued_at: float | None = None
    started_at: float | None = None
    retry_at: float | None = None


#: Any event a :class:`MetricsCollector` receives.
MetricsEvent: TypeAlias = CapacityEvent | TaskEvent


@runtime_checkable
class MetricsCollector(Protocol):
    """Receives capacity and task events.

    ``record`` is called synchronously, in the middle of scheduling decisions, so it must be
    quick and must not block or await: hand the event to a buffer or a memory channel if you need
    to do I/O. The library calls it through :func:`safe_record`, so an exception it raises is
    reported once as a :class:`RuntimeWarning` and never disturbs scheduling.
    """

    def record(self, event: CapacityEvent | TaskEvent) -> None:
        """Take note of one event.

        Args:
            event: The event; treat it and its mappings as read-only.
        """
        ...


# -- safe_record ---------------------------------------------------------------------------

#: Collectors that have already been reported as failing, by identity. A weak reference when
#: the collector allows one (the entry goes away with the collector), else the collector itself.
_warned: dict[int, weakref.ref[object] | object] = {}


def _mark_warned(collector: object) -> bool:
    """Remember ``collector`` as reported; False if it already was."""
    key = id(collector)
    entry = _warned.get(key)
    if entry is not None:
        target = entry() if isinstance(entry, weakref.ref) else entry
        if target is collector:
            return False
    try:
        _warned[key] = weakref.ref(collector, lambda _: _warned.pop(key, None))
    except TypeError:  # not weak-referenceable: keep it (a failing collector is rare)
        _warned[key] = collector
    return True


def safe_record(collector: MetricsCollector, event: CapacityEvent | TaskEvent) -> None:
    """Give ``event`` to ``collector``; an error it raises never reaches the caller.

    A metrics sink must never disturb the library: ``record`` is called in the middle of
    admission and task bookkeeping, where an exception would leave a decision half made. The
    error is not swallowed silently either: the first one from each collector instance is
    reported with :func:`warnings.warn` as a :class:`RuntimeWarning` naming the collector and the
    exception; later ones from the same collector are ignored, so a broken collector cannot
    flood the warnings. If a warnings filter turns that warning into an error, the error is
    logged on the ``sluiceway.metrics`` logger instead of being raised.

    Only :class:`Exception` is caught: ``KeyboardInterrupt``, ``SystemExit`` and other
    :class:`BaseException` subclasses propagate.

    Args:
        collector: The collector to call.
        event: The event to record.
    """
    try:
        collector.record(event)
    except Exception as exc:
        if not _mark_warned(collector):
            return
        message = (
            f"metrics collector {collector!r} raised {exc!r} while recording a "
            f"{event.kind!r} event; the event was dropped and further errors from this "
            f"collector will be ignored"
        )
        try:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        except Exception:
            _logger.exception("%s (the warning itself was turned into an error)", message)


class MultiCollector:
    """A collector that hands every event to several collectors, in order.

    Each collector is called through :func:`safe_record`, so one that fails is reported once on
    its own and the others still receive every event; ``record`` itself never raises.

    Args:
        *collectors: The collectors to fan out to.

    Attributes:
        collectors: The collectors, in the order they are called.
    """

    __slots__ = ("__weakref__", "collectors")

    def __init__(self, *collectors: MetricsCollector) -> None:
        self.collectors: tuple[MetricsCollector, ...] = collectors

    def __repr__(self) -> str:
        inner = ", ".join(repr(c) for c in self.collectors)
        return f"MultiCollector({inner})"

    def record(self, event: CapacityEvent | TaskEvent) -> None:
        """Give ``event`` to every collector.

        Args:
            event: The event to record.
        """
        for collector in self.collectors:
            safe_record(collector, event)


# -- statistics ------------------------------------------------------------------------------


@attrs.frozen
class DurationStats:
    """Statistics of a set of durations, in seconds of the trio clock.

    ``count``, ``total``, ``mean``, ``min`` and ``max`` are exact over every duration recorded.
    ``p50`` and ``p95`` use the nearest-rank method (the smallest recorded value with at least
    that share of values at or below it). They are exact while at most ``max_samples`` durations
    (10,000 by default, see :class:`InMemoryMetrics`) have been recorded; beyond that they are
    computed from a uniform random sample of that size (reservoir sampling), an estimate whose
    error shrinks with the sample size.

    Attributes:
        count: How many durations were recorded.
        total: Their sum.
        mean: ``total / count``, or ``0.0`` when empty.
        min: The shortest, or ``None`` when empty.
        max: The longest, or ``None`` when empty.
        p50: The median, or ``None`` when empty.
        p95: The 95th percentile, or ``None`` when empty.
    """

    count: int
    total: float
    mean: float
    min: float | None
    max: float | None
    p50: float | None
    p95: float | None


_EMPTY_STATS = DurationStats(count=0, total=0.0, mean=0.0, min=None, max=None, p50=None, p95=None)


def _nearest_rank(ordered: list[float], percent: int) -> float:
    """The nearest-rank percentile of a non-empty sorted list."""
    rank = -(-percent * len(ordered) // 100)  # ceil(percent / 100 * n), in integers
    return ordered[max(rank, 1) - 1]


class _Durations:
    """Exact count/total/min/max plus a bounded reservoir sample for percentiles."""

    __slots__ = (
        "_cached",
        "_max_samples",
        "_rng",
        "count",
        "maximum",
        "minimum",
        "sample",
        "total",
    )

    def __init__(self, max_samples: int, rng: random.Random) -> None:
        self._max_samples = max_samples
        self._rng = rng
        self._cached: DurationStats | None = _EMPTY_STATS
        self.count = 0
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.sample: list[float] = []

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)
        sample = self.sample
        if len(sample) < self._max_samples:
            sample.append(value)
        else:  # Algorithm R: keep each of the `count` values with probability max/count
            slot = self._rng.randrange(self.count)
            if slot < self._max_samples:
                sample[slot] = value
        self._cached = None

    def stats(self) -> DurationStats:
        cached = self._cached
        if cached is None:
            ordered = sorted(self.sample)
            cached = self._cached = DurationStats(
                count=self.count,
                total=self.total,
                mean=self.total / self.count,
                min=self.minimum,
                max=self.maximum,
                p50=_nearest_rank(ordered, 50),
                p95=_nearest_rank(ordered, 95),
            )
        return cached


class _Rate:
    """Events of one kind in a rolling window, counted in at most about ``_RATE_BUCKETS`` slots.

    Each slot is ``[bucket index, time of its latest event, count]``. A slot leaves the window
    when its latest event does, so an event is counted at most one bucket width too long.
    """

    __slots__ = ("count", "slots")

    def __init__(self) -> None:
        self.slots: deque[list[float]] = deque()
        self.count = 0

    def add(self, at: float, bucket: float) -> None:
        slots = self.slots
        if slots and slots[-1][0] == bucket:
            last = slots[-1]
            last[1] = at
            last[2] += 1
        else:
            slots.append([bucket, at, 1])
        self.count += 1

    def evict(self, cutoff: float) -> None:
        slots = self.slots
        while slots and slots[0][1] <= cutoff:
            self.count -= int(slots.popleft()[2])


# -- exact amounts ---------------------------------------------------------------------------

_Exact: TypeAlias = int | Fraction


def _exact(value: float) -> _Exact:
    """``value`` as an exact number, so sums and differences return to exactly zero."""
    if type(value) is int:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"an accepted, released or refunded amount must be finite: {value}")
        if value.is_integer():
            return int(value)
    return Fraction(value)


def _public(value: _Exact) -> float:
    """An exact amount as a plain ``int`` (when whole) or ``float``."""
    if isinstance(value, Fraction):
        return value.numerator if value.denominator == 1 else float(value)
    return value


# -- the in-memory collector -----------------------------------------------------------------


@attrs.frozen
class MetricsSnapshot:
    """What an :class:`InMemoryMetrics` knows at one moment. Every dict is a fresh copy.

    Attributes:
        capacity_counts: Node label -> event kind -> how many events of that kind.
        task_counts: Runner label -> event kind -> how many events of that kind. The number of
            retries of a runner is ``task_counts[runner].get("retried", 0)``.
        in_flight: Node label -> resource -> what is held right now according to the events:
            accepted minus released minus refunded, never negative (a release of more than was
            accepted, e.g. by a collector attached mid-run, stops at zero).
        utilization: Node label -> resource -> ``in_use / limit`` from the latest event of that
            node, for each resource the node limits (``0.0`` for a limit of 0 or infinity). It
            exceeds 1 while a lowered limit is below what is held.
        queue_wait: Runner label -> statistics of ``at - queued_at`` over ``"started"`` events.
        run_time: Runner label -> statistics of ``at - started_at`` over the events that end an
            attempt (finished, failed, cancelled, timed_out, retried).
        rates: With a window: runner label -> task event kind -> events per second over the
            last ``window`` seconds (the count in the window divided by the window). ``None``
            without a window.
    """

    capacity_counts: dict[str, dict[str, int]]
    task_counts: dict[str, dict[str, int]]
    in_flight: dict[str, dict[str, float]]
    utilization: dict[str, dict[str, float]]
    queue_wait: dict[str, DurationStats]
    run_time: dict[str, DurationStats]
    rates: dict[str, dict[str, float]] | None


class InMemoryMetrics:
    """The default collector: counters, holdings, utilisation, durations and rates in memory.

    Every ``record`` is O(1) amortised and memory is bounded by the number of nodes, runners and
    event kinds: duration percentiles use a bounded reservoir sample (see :class:`DurationStats`)
    and rates a bounded number of time buckets per runner and kind.

    Rates use lazy eviction by event time: the window ends at the latest event time recorded
    (or at the ``now`` given to :meth:`snapshot`), and an event at time ``t`` counts while
    ``t > end - window``. The window is counted in 1,000 buckets, so an event may be counted up
    to ``window / 1000`` seconds longer than that. Events are expected in time order, as one trio
    run produces them; an event older than the latest one is counted as if at the latest time.

    Args:
        window: Length in seconds of the rolling window for :attr:`MetricsSnapshot.rates`, or
            ``None`` to keep no rates.
        max_samples: How many durations to keep per runner (for queue wait and for run time) to
            compute percentiles; exact up to that many, estimated beyond.

    Raises:
        ValueError: If ``window`` is not a positive finite number or ``max_samples`` is below 1.
    """

    def __init__(
        self, *, window: float | None = None, max_samples: int = _DEFAULT_MAX_SAMPLES
    ) -> None:
        if window is not None and not (0 < window < math.inf):
            raise ValueError(f"window must be a positive finite number of seconds, got {window}")
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {max_samples}")
        self._window = window
        self._bucket_width = window / _RATE_BUCKETS if window is not None else 1.0
        self._max_samples = max_samples
        self._rng = random.Random(0x51_1CE)
        self.reset()

    def __repr__(self) -> str:
        return f"InMemoryMetrics(window={self._window!r}, max_samples={self._max_samples})"

    @property
    def window(self) -> float | None:
        """The rolling window for rates, in seconds, or ``None``."""
        return self._window

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self._capacity_counts: dict[str, dict[str, int]] = {}
        self._task_counts: dict[str, dict[str, int]] = {}
        self._held: dict[str, dict[str, _Exact]] = {}
        self._latest: dict[str, CapacityEvent] = {}
        self._queue_wait: dict[str, _Durations] = {}
        self._run_time: dict[str, _Durations] = {}
        self._rates: dict[str, dict[str, _Rate]] = {}
        self._now = -math.inf

    def record(self, event: CapacityEvent | TaskEvent) -> None:
        """Take note of one event.

        Args:
            event: A :class:`CapacityEvent` or :class:`TaskEvent`.

        Raises:
            TypeError: If ``event`` is neither.
            ValueError: If an accepted, released or refunded amount is not finite.
        """
        if isinstance(event, TaskEvent):
            self._record_task(event)
        elif isinstance(event, CapacityEvent):
            self._record_capacity(event)
        else:
            raise TypeError(f"expected a CapacityEvent or a TaskEvent, got {event!r}")

    def _record_capacity(self, event: CapacityEvent) -> None:
        node = event.node
        kind = event.kind
        _count(self._capacity_counts, node, kind)
        self._latest[node] = event
        if kind == "accepted":
            held = self._held.get(node)
            if held is None:
                held = self._held[node] = {}
            for resource, value in event.amounts.items():
                held[resource] = held.get(resource, 0) + _exact(value)
        elif kind in ("released", "refunded"):
            held = self._held.get(node)
            if held is None:
                held = self._held[node] = {}
            for resource, value in event.amounts.items():
                left = held.get(resource, 0) - _exact(value)
                held[resource] = left if left > 0 else 0

    def _record_task(self, event: TaskEvent) -> None:
        runner = event.runner
        kind = event.kind
        _count(self._task_counts, runner, kind)
        if kind == "started":
            if event.queued_at is not None:
                self._durations(self._queue_wait, runner).add(event.at - event.queued_at)
        elif kind in _ATTEMPT_ENDS and event.started_at is not None:
            self._durations(self._run_time, runner).add(event.at - event.started_at)
        if self._window is not None:
            at = event.at
            if at > self._now:
                self._now = at
            else:
                at = self._now
            by_kind = self._rates.get(runner)
            if by_kind is None:
                by_kind = self._rates[runner] = {}
            rate = by_kind.get(kind)
            if rate is None:
                rate = by_kind[kind] = _Rate()
            rate.add(at, math.floor(at / self._bucket_width))
            rate.evict(at - self._window)

    def _durations(self, table: dict[str, _Durations], runner: str) -> _Durations:
        durations = table.get(runner)
        if durations is None:
            durations = table[runner] = _Durations(self._max_samples, self._rng)
        return durations

    def snapshot(self, *, now: float | None = None) -> MetricsSnapshot:
        """What is known right now, as fresh dicts the caller may keep or change.

        Cost is proportional to the number of nodes, runners and kinds (plus sorting a runner's
        duration sample when it changed since the last snapshot).

        Args:
            now: The end of the rate window, normally ``trio.current_time()``. Defaults to the
                latest event time recorded, so rates do not decay while nothing happens unless
                you pass the current time.

        Returns:
            A :class:`MetricsSnapshot`.
        """
        utilization: dict[str, dict[str, float]] = {}
        for node, event in self._latest.items():
            in_use = event.in_use
            row: dict[str, float] = {}
            for resource, limit in event.limits.items():
                if limit in (0, math.inf):
                    row[resource] = 0.0
                else:
                    row[resource] = float(in_use.get(resource, 0)) / float(limit)
            utilization[node] = row
        rates: dict[str, dict[str, float]] | None = None
        window = self._window
        if window is not None:
            cutoff = (self._now if now is None else now) - window
            rates = {}
            for runner, by_kind in self._rates.items():
                rates_row: dict[str, float] = {}
                for kind, rate in by_kind.items():
                    rate.evict(cutoff)
                    rates_row[kind] = rate.count / window
                rates[runner] = rates_row
        return MetricsSnapshot(
            capacity_counts={node: dict(c) for node, c in self._capacity_counts.items()},
            task_counts={runner: dict(c) for runner, c in self._task_counts.items()},
            in_flight={
                node: {resource: _public(value) for resource, value in held.items()}
                for node, held in self._held.items()
            },
            utilization=utilization,
            queue_wait={runner: d.stats() for runner, d in self._queue_wait.items()},
            run_time={runner: d.stats() for runner, d in self._run_time.items()},
            rates=rates,
        )
