"""Send times and wait durations of the campaign execution engine (pure: no I/O, no trio).

What the seed does (``calculateNextSendTime`` / ``calculateOptimalSendTime``): ``immediate``
sends now; ``scheduled`` sends at the campaign's start date, even one in the past; ``optimized``
takes the contact's most common open hour (``getMostCommonHour``, its tie rule unspecified) and
returns "tomorrow at that hour", computed with ``Date.setDate``/``setHours`` in the *server's*
time zone, not the campaign's; with no history it returns today at 09:00, even when that is already
in the past. Wait durations (``{value, unit}``) are taken as given: a negative value, an unknown
unit or a missing key goes unnoticed until the step runs.

What this module fixes:

- Every local time is computed in the campaign's own time zone with :mod:`zoneinfo` (an unknown
  zone is a :class:`ValueError` naming it), and open hours are each converted with the offset in
  force at that open, so an 08:00 open in January and one in July count as the same hour.
- Ties between open hours are broken by the earliest hour (0-23), so the result is deterministic.
- "Tomorrow" means the local calendar date after ``now``'s local date (see
  :func:`next_send_time`); with no history the send is the next 09:00 local that is not in the
  past (today's if it is still ahead, else tomorrow's).
- A ``scheduled`` start in the past sends now rather than at a time already gone.
- Daylight saving: a local time that does not exist (the spring-forward gap) is moved forward by
  the length of the gap, and an ambiguous one (the fall-back overlap) takes its first occurrence.
  This is ``fold=0`` in :pep:`495`, RFC 5545's rule for DATE-TIME values and ECMAScript Temporal's
  ``"compatible"`` disambiguation, used for the wall-clock times of calendar-day waits. An
  ``optimized`` send time in a gap becomes the first valid instant after it (the end of the gap),
  which is the same for gaps that start on the hour (02:00 on a 02:00 → 03:00 day is 03:00) and
  closer to the contact's hour for the others (03:00 on Chatham's 02:45 → 03:45 day is 03:45).
- Wait durations are validated when the step graph is built (:meth:`WaitDuration.parse`), with an
  error naming the step; day and week waits can count calendar days in the campaign's time zone
  (:func:`wait_until`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

__all__ = [
    "DEFAULT_SEND_HOUR",
    "MAX_WAIT_SECONDS",
    "UNIT_SECONDS",
    "SendStrategy",
    "WaitDuration",
    "most_common_hour",
    "next_send_time",
    "wait_until",
]

#: Seconds in one of each wait unit (plural names, as :class:`WaitDuration` stores them).
UNIT_SECONDS: Final[Mapping[str, int]] = {
    "seconds": 1,
    "minutes": 60,
    "hours": 3_600,
    "days": 86_400,
    "weeks": 604_800,
}

#: Singular unit names accepted by :class:`WaitDuration` and the plural each becomes.
_SINGULAR: Final[Mapping[str, str]] = {unit[:-1]: unit for unit in UNIT_SECONDS}

#: Units that :func:`wait_until` counts in calendar days when given a time zone.
_CALENDAR_UNITS: Final[Mapping[str, int]] = {"days": 1, "weeks": 7}

#: The longest wait accepted: a century. Longer is a typo, and soon beyond what ``datetime``
#: can represent.
MAX_WAIT_SECONDS: Final[int] = 100 * 366 * 86_400

#: Local hour of an ``optimized`` send for a contact with no open history.
DEFAULT_SEND_HOUR: Final[int] = 9


def _normalise_unit(unit: object) -> str:
    """Return the plural name of ``unit`` ("day" → "days"), or raise :class:`ValueError`."""
    if not isinstance(unit, str):
        raise ValueError(f"wait unit must be a string, got {unit!r}")
    if unit in UNIT_SECONDS:
        return unit
    if unit in _SINGULAR:
        return _SINGULAR[unit]
    raise ValueError(f"unknown wait unit {unit!r}; expected one of {', '.join(UNIT_SECONDS)}")


def _check_value(value: object) -> int | float:
    """Return ``value`` if it is a finite, non-negative int or float (not a bool), else raise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"wait value must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"wait value must be finite, got {value!r}")
    if value < 0:
        raise ValueError(f"wait value must not be negative, got {value!r}")
    return value


def _validate_value(_instance: object, _attribute: object, value: int | float) -> None:
    _check_value(value)


@attrs.frozen
class WaitDuration:
    """How long a wait step parks an enrollment: ``value`` of ``unit``.

    ``value`` is a finite int or float ``>= 0`` (a bool is refused, though Python counts it as an
    int); ``unit`` is one of ``seconds``, ``minutes``, ``hours``, ``days`` or ``weeks``, or its
    singular, and is stored plural. The whole duration may not exceed a century
    (:data:`MAX_WAIT_SECONDS`). Invalid values raise :class:`ValueError`.
    """

    value: int | float = attrs.field(validator=_validate_value)
    unit: str = attrs.field(converter=_normalise_unit)

    def __attrs_post_init__(self) -> None:
        if self.value * UNIT_SECONDS[self.unit] > MAX_WAIT_SECONDS:
            raise ValueError(
                f"wait of {self.value} {self.unit} is longer than the maximum of 100 years"
            )

    @property
    def seconds(self) -> float:
        """The duration in seconds, each day counted as 86,400 (see :func:`wait_until`)."""
        return float(self.value * UNIT_SECONDS[self.unit])

    @classmethod
    def parse(cls, obj: object, *, step: str) -> WaitDuration:
        """Build a duration from a step's ``{"value": 3, "unit": "days"}``.

        Raises :class:`ValueError` whose message names ``step`` when ``obj`` is not a mapping,
        lacks ``value`` or ``unit``, has any other key, or holds a value or unit the constructor
        refuses.
        """
        where = f"wait duration of step {step!r}"
        if not isinstance(obj, Mapping):
            raise ValueError(f"{where} must be an object with 'value' and 'unit', got {obj!r}")
        fields: Mapping[Any, Any] = obj
        missing = [key for key in ("value", "unit") if key not in fields]
        if missing:
            raise ValueError(f"{where} is missing {' and '.join(map(repr, missing))}")
        extra = sorted(repr(key) for key in fields if key not in ("value", "unit"))
        if extra:
            raise ValueError(f"{where} has unexpected key(s) {', '.join(extra)}")
        try:
            return cls(fields["value"], fields["unit"])
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None


class SendStrategy(enum.Enum):
    """When a campaign's emails go out (the seed's ``Campaign.sendStrategy``)."""

    #: As soon as the enrollment reaches the step.
    IMMEDIATE = "immediate"
    #: At the campaign's start time, or now if that has passed.
    SCHEDULED = "scheduled"
    #: Tomorrow at the contact's most common open hour in the campaign's time zone.
    OPTIMIZED = "optimized"


def _zone(timezone: object) -> ZoneInfo:
    """The :class:`ZoneInfo` named ``timezone``, or :class:`ValueError` naming it."""
    if not isinstance(timezone, str):
        raise ValueError(f"time zone must be a string, got {timezone!r}")
    return _named_zone(timezone)


@lru_cache(maxsize=256)
def _named_zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {timezone!r}") from None


def _check_instant(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite real number (not a bool), else raise."""
    if not isinstance(value, bool) and isinstance(value, int | float):
        try:
            instant = float(value)
        except OverflowError:
            pass
        else:
            if math.isfinite(instant):
                return instant
    raise ValueError(f"{name} must be a finite number of epoch seconds, got {value!r}")


def _local(instant: float, zone: tzinfo, name: str) -> datetime:
    """``instant`` (epoch seconds) as an aware datetime in ``zone``, or :class:`ValueError`."""
    try:
        return datetime.fromtimestamp(instant, zone)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"{name} {instant!r} is out of the representable range") from None


def _resolve(day: date, at: time, zone: tzinfo) -> float:
    """Epoch seconds of the local wall time ``day`` ``at`` in ``zone``.

    ``fold=0``: a time in a spring-forward gap is read with the offset before the gap, which moves
    it forward by the gap's length; a time in a fall-back overlap is its first occurrence.
    """
    return datetime.combine(day, at, tzinfo=zone).replace(fold=0).timestamp()


def _first_valid(day: date, at: time, zone: tzinfo) -> float:
    """Epoch seconds of ``day`` ``at`` in ``zone``, or the first instant after it if it is missing.

    An ambiguous time is its first occurrence. A time in a spring-forward gap becomes the end of
    the gap (the transition instant): 02:00 on a 02:00 → 03:00 day is 03:00, like :func:`_resolve`,
    but 03:00 on a 02:45 → 03:45 day (Pacific/Chatham) is 03:45 rather than 04:00.
    """
    wall = datetime.combine(day, at)
    later = _resolve(day, at, zone)  # past the transition when ``wall`` is missing
    if datetime.fromtimestamp(later, zone).replace(tzinfo=None) == wall:
        return later
    low = int(datetime.combine(day, at, tzinfo=zone).replace(fold=1).timestamp())  # before it
    high = math.ceil(later)
    while high - low > 1:  # the first instant whose local time is past ``wall``
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).replace(tzinfo=None) > wall:
            high = middle
        else:
            low = middle
    return float(high)


def most_common_hour(open_times: Sequence[float], zone: tzinfo) -> int | None:
    """The local hour (0-23) in ``zone`` at which most of ``open_times`` fall, or ``None``.

    Each open is converted with the UTC offset in force at that instant. Ties go to the earliest
    hour of the day. ``None`` when there are no opens.
    """
    counts = [0] * 24
    for index, opened in enumerate(open_times):
        instant = _check_instant(f"open_times[{index}]", opened)
        counts[_local(instant, zone, f"open_times[{index}]").hour] += 1
    best = max(counts)
    if best == 0:
        return None
    return counts.index(best)  # the first, hence earliest, hour with the highest count


def next_send_time(
    strategy: SendStrategy | str,
    *,
    now: float,
    timezone: str,
    start_at: float | None,
    open_times: Sequence[float],
    follow_up: bool = False,
) -> float:
    """When a contact's next email goes out, in epoch seconds (UTC), under ``strategy``.

    What follows is the first email of an enrollment (the seed's ``nextEmailScheduledAt``,
    computed at enrollment). For a ``follow_up`` (an email after the first, which the seed
    leaves unspecified): ``immediate`` and ``scheduled`` send now (the start has passed), and
    ``optimized`` sends at the next ``H``:00 local that is not before ``now`` (today's if it
    is still ahead), so that a drip's waits are not lengthened by a day at every email.

    - ``immediate``: ``now``.
    - ``scheduled``: ``start_at`` if it is later than ``now``, else ``now`` (also when
      ``start_at`` is ``None``).
    - ``optimized``: the contact's most common open hour ``H`` among ``open_times``, each
      converted to ``timezone`` (ties: the earliest hour, see :func:`most_common_hour`), at
      ``H``:00 *tomorrow*: on the local calendar date after ``now``'s local date in ``timezone``
      (so at 00:30 local the send is a day and some hours away, at 23:30 local less than a day).
      The result is always later than ``now``; should a fall-back transition around midnight
      make tomorrow's ``H``:00 not later than ``now``, the day after is taken. With no open
      history: 09:00 local today if that is not before ``now``, else 09:00 on the next day
      whose 09:00 is not before ``now``.

    A local send time in a spring-forward gap becomes the first valid instant after it, the end of
    the gap (02:00 on the day New York goes from 02:00 to 03:00 is 03:00 EDT; 03:00 on the day
    Pacific/Chatham goes from 02:45 to 03:45 is 03:45); one in a fall-back overlap (01:00 on the
    day New York repeats 01:00-02:00) is its first occurrence (01:00 EDT).

    ``strategy`` may be given by value (``"optimized"``). The time zone is checked for every
    strategy, so a misconfigured campaign fails whatever it sends. Raises :class:`ValueError` for
    an unknown strategy or time zone, or a ``now``, ``start_at`` or open time that is not a
    finite number.
    """
    try:
        strategy = SendStrategy(strategy)
    except ValueError:
        expected = ", ".join(member.value for member in SendStrategy)
        raise ValueError(
            f"unknown send strategy {strategy!r}; expected one of {expected}"
        ) from None
    zone = _zone(timezone)
    now = _check_instant("now", now)
    if strategy is SendStrategy.IMMEDIATE or (follow_up and strategy is SendStrategy.SCHEDULED):
        return now
    if strategy is SendStrategy.SCHEDULED:
        if start_at is None:
            return now
        return max(_check_instant("start_at", start_at), now)

    today = _local(now, zone, "now").date()
    hour = most_common_hour(open_times, zone)
    if follow_up:
        day = today
        at = time(DEFAULT_SEND_HOUR if hour is None else hour)
        while (send := _first_valid(day, at, zone)) < now:
            day += timedelta(days=1)
        return send
    if hour is None:
        day = today
        while (send := _first_valid(day, time(DEFAULT_SEND_HOUR), zone)) < now:
            day += timedelta(days=1)
        return send
    day = today + timedelta(days=1)
    while (send := _first_valid(day, time(hour), zone)) <= now:
        day += timedelta(days=1)
    return send


def wait_until(now: float, duration: WaitDuration, *, timezone: str | None = None) -> float:
    """When a wait of ``duration`` that starts at ``now`` ends, in epoch seconds (UTC).

    Seconds, minutes and hours are elapsed time: ``now + duration.seconds``. So are days and
    weeks when ``timezone`` is ``None``. With a ``timezone``, days and weeks are calendar days in
    that zone, as in RFC 5545 and ECMAScript Temporal: the whole number of days (a week is seven)
    is added to ``now``'s local date, keeping its local wall-clock time (``fold=0`` if that time
    does not exist or exists twice on the target date: moved forward by the gap, or the first
    occurrence), so a one-day
    wait across a daylight-saving change lasts 23 or 25 hours; a fractional remainder is then
    added as elapsed time (1.5 days is one calendar day and 12 hours).

    The result is never before ``now``, and for a given ``now`` it grows with the duration
    within a unit (and with whole days across units). Because days are calendar days, 0.99 days
    can end later than 1 day across a spring-forward change, and two starts in the repeated hour
    of a fall-back change can end in the opposite order a day later. Raises :class:`ValueError`
    for an unknown time zone, a ``now`` that is not a finite number, or a result out of range.
    """
    now = _check_instant("now", now)
    zone = None if timezone is None else _zone(timezone)  # checked whatever the unit
    calendar_days = _CALENDAR_UNITS.get(duration.unit)
    if zone is None or calendar_days is None:
        return now + duration.seconds
    whole, fraction = divmod(duration.value * calendar_days, 1)
    days = int(whole)
    end = now + float(fraction) * 86_400
    if days == 0:
        return end
    start = _local(now, zone, "now")
    try:
        target = (start.replace(tzinfo=None) + timedelta(days=days)).replace(tzinfo=zone, fold=0)
    except OverflowError:
        raise ValueError(f"a wait of {days} days from {now!r} is out of range") from None
    start_offset = start.utcoffset()
    target_offset = target.utcoffset()
    assert start_offset is not None
    assert target_offset is not None
    # Offsets rather than timestamp(): keeps the sub-microsecond part of ``now``.
    return end + days * 86_400 + (start_offset - target_offset).total_seconds()
