"""Send times and wait durations of the campaign execution engine (``_timing``).

Expected instants are written in UTC and commented with the local time they stand for, so they
do not depend on the code under test; the daylight-saving dates used are

- America/New_York 2024: 10 March 02:00 EST → 03:00 EDT; 3 November 02:00 EDT → 01:00 EST.
- Europe/Berlin 2024: 31 March 02:00 CET → 03:00 CEST; 27 October 03:00 CEST → 02:00 CET.
- Australia/Lord_Howe 2024: 6 October 02:00 → 02:30 (a half-hour change).
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sluiceway.apps.engine._timing import (
    DEFAULT_SEND_HOUR,
    MAX_WAIT_SECONDS,
    SendStrategy,
    WaitDuration,
    most_common_hour,
    next_send_time,
    wait_until,
)

NY = "America/New_York"
BERLIN = "Europe/Berlin"
HOUR = 3_600
DAY = 86_400


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """Epoch seconds of a UTC wall time."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def optimized(now: float, timezone: str, open_times: list[float]) -> float:
    return next_send_time(
        SendStrategy.OPTIMIZED, now=now, timezone=timezone, start_at=None, open_times=open_times
    )


# --- WaitDuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "plural", "seconds"),
    [
        ("seconds", "seconds", 1),
        ("second", "seconds", 1),
        ("minutes", "minutes", 60),
        ("minute", "minutes", 60),
        ("hours", "hours", 3_600),
        ("hour", "hours", 3_600),
        ("days", "days", 86_400),
        ("day", "days", 86_400),
        ("weeks", "weeks", 604_800),
        ("week", "weeks", 604_800),
    ],
)
def test_units_are_normalised_to_plural(unit: str, plural: str, seconds: int) -> None:
    duration = WaitDuration(3, unit)
    assert duration.unit == plural
    assert duration.seconds == 3 * seconds
    assert duration == WaitDuration(3, plural)


def test_parse_reads_value_and_unit() -> None:
    assert WaitDuration.parse({"value": 3, "unit": "days"}, step="s") == WaitDuration(3, "days")
    assert WaitDuration.parse({"value": 1.5, "unit": "hour"}, step="s").seconds == 5_400.0
    assert WaitDuration.parse({"value": 0, "unit": "minutes"}, step="s").seconds == 0.0


def test_seconds_is_a_float() -> None:
    assert isinstance(WaitDuration(2, "days").seconds, float)


def test_wait_duration_is_frozen() -> None:
    duration = WaitDuration(1, "day")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        duration.value = 2  # type: ignore[misc]


BAD_WAITS: list[tuple[str, Any, str]] = [
    ("a list", [3, "days"], "must be an object"),
    ("None", None, "must be an object"),
    ("a string", "3 days", "must be an object"),
    ("no value", {"unit": "days"}, "missing 'value'"),
    ("no unit", {"value": 3}, "missing 'unit'"),
    ("empty", {}, "missing 'value' and 'unit'"),
    ("an extra key", {"value": 3, "unit": "days", "jitter": 1}, "unexpected key(s) 'jitter'"),
    ("negative", {"value": -1, "unit": "days"}, "must not be negative"),
    ("negative float", {"value": -0.5, "unit": "hours"}, "must not be negative"),
    ("NaN", {"value": math.nan, "unit": "days"}, "must be finite"),
    ("infinity", {"value": math.inf, "unit": "days"}, "must be finite"),
    ("minus infinity", {"value": -math.inf, "unit": "days"}, "must be finite"),
    ("True", {"value": True, "unit": "days"}, "must be a number"),
    ("False", {"value": False, "unit": "days"}, "must be a number"),
    ("a numeric string", {"value": "3", "unit": "days"}, "must be a number"),
    ("a None value", {"value": None, "unit": "days"}, "must be a number"),
    ("an unknown unit", {"value": 3, "unit": "fortnights"}, "unknown wait unit 'fortnights'"),
    ("a capitalised unit", {"value": 3, "unit": "Days"}, "unknown wait unit 'Days'"),
    ("a month", {"value": 1, "unit": "month"}, "unknown wait unit 'month'"),
    ("an empty unit", {"value": 1, "unit": ""}, "unknown wait unit ''"),
    ("a numeric unit", {"value": 3, "unit": 86_400}, "must be a string"),
    ("a None unit", {"value": 3, "unit": None}, "must be a string"),
    ("over a century", {"value": 101 * 53, "unit": "weeks"}, "maximum of 100 years"),
    ("a huge int", {"value": 10**400, "unit": "seconds"}, "maximum of 100 years"),
]


@pytest.mark.parametrize(
    ("obj", "message"), [case[1:] for case in BAD_WAITS], ids=[case[0] for case in BAD_WAITS]
)
def test_parse_refuses_bad_waits_naming_the_step(obj: Any, message: str) -> None:
    with pytest.raises(ValueError, match="wait duration of step 'reminder-2'") as caught:
        WaitDuration.parse(obj, step="reminder-2")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "unit"), [(-1, "days"), (math.nan, "days"), (True, "days"), (1, "fortnight")]
)
def test_the_constructor_validates_too(value: Any, unit: Any) -> None:
    with pytest.raises(ValueError, match="wait"):
        WaitDuration(value, unit)


def test_a_century_is_the_limit() -> None:
    assert WaitDuration(MAX_WAIT_SECONDS, "seconds").seconds == MAX_WAIT_SECONDS
    with pytest.raises(ValueError, match="100 years"):
        WaitDuration(MAX_WAIT_SECONDS + 1, "seconds")


# --- next_send_time: immediate and scheduled -------------------------------------------------

NOW = utc(2024, 6, 1, 12, 0)


def test_strategy_values() -> None:
    assert [strategy.value for strategy in SendStrategy] == ["immediate", "scheduled", "optimized"]


def test_immediate_is_now() -> None:
    assert (
        next_send_time("immediate", now=NOW, timezone=NY, start_at=NOW + DAY, open_times=[NOW])
        == NOW
    )


@pytest.mark.parametrize(
    ("start_at", "expected"),
    [(NOW + HOUR, NOW + HOUR), (NOW - HOUR, NOW), (NOW, NOW), (None, NOW)],
    ids=["future", "past", "now", "none"],
)
def test_scheduled_is_the_start_unless_it_has_passed(
    start_at: float | None, expected: float
) -> None:
    sent = next_send_time(
        SendStrategy.SCHEDULED, now=NOW, timezone=NY, start_at=start_at, open_times=[]
    )
    assert sent == expected


def test_strategy_may_be_given_by_value() -> None:
    by_value = next_send_time("optimized", now=NOW, timezone=NY, start_at=None, open_times=[])
    assert by_value == optimized(NOW, NY, [])


@pytest.mark.parametrize("strategy", ["later", "Immediate", "", None])
def test_unknown_strategy(strategy: Any) -> None:
    with pytest.raises(ValueError, match="unknown send strategy"):
        next_send_time(strategy, now=NOW, timezone=NY, start_at=None, open_times=[])


@pytest.mark.parametrize("strategy", list(SendStrategy))
@pytest.mark.parametrize(
    "timezone",
    ["Mars/Olympus", "", "America", "america/new_york", "../etc/passwd", "/etc/localtime"],
)
def test_unknown_time_zone_is_named(strategy: SendStrategy, timezone: str) -> None:
    with pytest.raises(ValueError, match="time zone") as caught:
        next_send_time(strategy, now=NOW, timezone=timezone, start_at=None, open_times=[])
    assert repr(timezone) in str(caught.value)


def test_non_string_time_zone() -> None:
    with pytest.raises(ValueError, match="time zone must be a string"):
        next_send_time("immediate", now=NOW, timezone=5, start_at=None, open_times=[])  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, True, "0", None, 10**400])
def test_now_must_be_a_finite_number(bad: Any) -> None:
    for strategy in SendStrategy:
        with pytest.raises(ValueError, match="now must be a finite number"):
            next_send_time(strategy, now=bad, timezone=NY, start_at=None, open_times=[])


@pytest.mark.parametrize("bad", [math.nan, math.inf, True, "0"])
def test_start_at_must_be_a_finite_number(bad: Any) -> None:
    with pytest.raises(ValueError, match="start_at must be a finite number"):
        next_send_time("scheduled", now=NOW, timezone=NY, start_at=bad, open_times=[])


@pytest.mark.parametrize("bad", [math.nan, math.inf, True, "0", None])
def test_open_times_must_be_finite_numbers(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"open_times\[1\] must be a finite number"):
        optimized(NOW, NY, [NOW, bad])


def test_out_of_range_now() -> None:
    with pytest.raises(ValueError, match="out of the representable range"):
        optimized(1e300, NY, [])


# --- next_send_time: optimized --------------------------------------------------------------


def test_optimized_is_tomorrow_at_the_most_common_hour() -> None:
    opens = [utc(2024, 5, day, 10, minute) for day, minute in [(1, 5), (2, 40), (3, 59)]]
    opens.append(utc(2024, 5, 4, 17, 0))
    assert optimized(utc(2024, 6, 1, 15, 0), "UTC", opens) == utc(2024, 6, 2, 10, 0)


def test_optimized_is_tomorrow_even_when_the_hour_is_still_ahead_today() -> None:
    # 06:00 EDT on 1 June; the contact opens at 08:00 local: not today, tomorrow.
    assert optimized(utc(2024, 6, 1, 10, 0), NY, [utc(2024, 5, 1, 12, 15)]) == utc(2024, 6, 2, 12)


def test_open_hours_are_converted_with_the_offset_of_their_own_date() -> None:
    opens = [
        utc(2024, 1, 15, 13, 5),  # 08:05 EST
        utc(2024, 7, 15, 12, 10),  # 08:10 EDT
        utc(2024, 1, 16, 12, 30),  # 07:30 EST (the same UTC hour as the July open)
    ]
    # In UTC the most common hour would be 12; in New York it is 08.
    assert most_common_hour(opens, ZoneInfo(NY)) == 8
    assert most_common_hour(opens, ZoneInfo("UTC")) == 12
    # 12:00 EDT on 1 June → 08:00 EDT on 2 June.
    assert optimized(utc(2024, 6, 1, 16, 0), NY, opens) == utc(2024, 6, 2, 12, 0)


def test_opens_in_the_repeated_hour_count_as_that_local_hour() -> None:
    opens = [utc(2024, 11, 3, 5, 30), utc(2024, 11, 3, 6, 30)]  # 01:30 EDT, then 01:30 EST
    assert most_common_hour(opens, ZoneInfo(NY)) == 1


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # 23:30 EDT on 1 June: tomorrow is 2 June, 8.5 hours away.
        (utc(2024, 6, 2, 3, 30), utc(2024, 6, 2, 12, 0)),
        # 00:30 EDT on 2 June (already 2 June locally): tomorrow is 3 June.
        (utc(2024, 6, 2, 4, 30), utc(2024, 6, 3, 12, 0)),
        # 08:00 EDT on 2 June exactly: tomorrow, not now.
        (utc(2024, 6, 2, 12, 0), utc(2024, 6, 3, 12, 0)),
    ],
    ids=["late-evening", "just-after-midnight", "at-the-hour"],
)
def test_tomorrow_is_the_local_date_after_nows_local_date(now: float, expected: float) -> None:
    assert optimized(now, NY, [utc(2024, 5, 1, 12, 0)]) == expected  # 08:00 EDT opens


@pytest.mark.parametrize(
    ("hours", "expected"),
    [
        ([14, 14, 9, 9], 9),
        ([9, 9, 14, 14], 9),
        ([23, 23, 0], 23),
        ([23, 0, 5], 0),
        (list(range(24)), 0),
        (list(reversed(range(24))), 0),
        ([17], 17),
    ],
)
def test_ties_go_to_the_earliest_hour(hours: list[int], expected: int) -> None:
    opens = [utc(2024, 5, 1 + index % 28, hour, 7) for index, hour in enumerate(hours)]
    assert most_common_hour(opens, ZoneInfo("UTC")) == expected
    assert optimized(utc(2024, 6, 1, 12), "UTC", opens) == utc(2024, 6, 2, expected)


def test_no_history_has_no_most_common_hour() -> None:
    assert most_common_hour([], ZoneInfo(NY)) is None


def opens_at(local_hour: int, timezone: str) -> list[float]:
    """Three opens at ``local_hour``:20 on quiet January days in ``timezone``."""
    zone = ZoneInfo(timezone)
    return [datetime(2024, 1, day, local_hour, 20, tzinfo=zone).timestamp() for day in (8, 9, 10)]


DST_CASES = [
    # (zone, now, local hour, expected, what)
    (NY, utc(2024, 3, 9, 17), 1, utc(2024, 3, 10, 6), "NY spring, 01:00 EST"),
    (NY, utc(2024, 3, 9, 17), 2, utc(2024, 3, 10, 7), "NY spring, 02:00 missing → 03:00 EDT"),
    (NY, utc(2024, 3, 9, 17), 3, utc(2024, 3, 10, 7), "NY spring, 03:00 EDT"),
    (NY, utc(2024, 3, 9, 17), 9, utc(2024, 3, 10, 13), "NY spring, 09:00 EDT"),
    (NY, utc(2024, 11, 2, 16), 0, utc(2024, 11, 3, 4), "NY fall, 00:00 EDT"),
    (NY, utc(2024, 11, 2, 16), 1, utc(2024, 11, 3, 5), "NY fall, 01:00 twice → 01:00 EDT"),
    (NY, utc(2024, 11, 2, 16), 2, utc(2024, 11, 3, 7), "NY fall, 02:00 EST"),
    (BERLIN, utc(2024, 3, 30, 11), 1, utc(2024, 3, 31, 0), "Berlin spring, 01:00 CET"),
    (BERLIN, utc(2024, 3, 30, 11), 2, utc(2024, 3, 31, 1), "Berlin spring, 02:00 missing → 03:00"),
    (BERLIN, utc(2024, 3, 30, 11), 3, utc(2024, 3, 31, 1), "Berlin spring, 03:00 CEST"),
    (BERLIN, utc(2024, 10, 26, 10), 1, utc(2024, 10, 26, 23), "Berlin fall, 01:00 CEST"),
    (BERLIN, utc(2024, 10, 26, 10), 2, utc(2024, 10, 27, 0), "Berlin fall, 02:00 twice → CEST"),
    (BERLIN, utc(2024, 10, 26, 10), 3, utc(2024, 10, 27, 2), "Berlin fall, 03:00 CET"),
    (
        "Australia/Lord_Howe",
        utc(2024, 10, 5, 1),
        2,
        utc(2024, 10, 5, 15, 30),
        "Lord Howe, 02:00 missing → 02:30 +11",
    ),
    (
        "Pacific/Chatham",
        utc(2024, 9, 27, 23),
        3,
        utc(2024, 9, 28, 14),
        "Chatham, 03:00 missing (02:45 → 03:45) → 03:45 +13:45",
    ),
]


@pytest.mark.parametrize(
    ("timezone", "now", "hour", "expected"),
    [case[:4] for case in DST_CASES],
    ids=[case[4] for case in DST_CASES],
)
def test_optimized_across_daylight_saving_changes(
    timezone: str, now: float, hour: int, expected: float
) -> None:
    assert optimized(now, timezone, opens_at(hour, timezone)) == expected


@pytest.mark.parametrize(
    ("timezone", "now", "expected"),
    [
        (NY, utc(2024, 6, 1, 12, 0), utc(2024, 6, 1, 13, 0)),  # 08:00 EDT → 09:00 today
        (NY, utc(2024, 6, 1, 13, 0), utc(2024, 6, 1, 13, 0)),  # 09:00 EDT exactly → now
        (NY, utc(2024, 6, 1, 13, 0, 1), utc(2024, 6, 2, 13, 0)),  # 09:00:01 → tomorrow
        (NY, utc(2024, 6, 2, 3, 30), utc(2024, 6, 2, 13, 0)),  # 23:30 EDT → next morning
        (NY, utc(2024, 3, 9, 15, 0), utc(2024, 3, 10, 13, 0)),  # 10:00 EST → 09:00 EDT
        (NY, utc(2024, 11, 2, 14, 0), utc(2024, 11, 3, 14, 0)),  # 10:00 EDT → 09:00 EST
        (BERLIN, utc(2024, 3, 30, 9, 0), utc(2024, 3, 31, 7, 0)),  # 10:00 CET → 09:00 CEST
        (BERLIN, utc(2024, 10, 26, 8, 0), utc(2024, 10, 27, 8, 0)),  # 10:00 CEST → 09:00 CET
        (BERLIN, utc(2024, 10, 27, 6, 0), utc(2024, 10, 27, 8, 0)),  # 07:00 CET → today
    ],
)
def test_no_history_is_the_next_nine_oclock_not_in_the_past(
    timezone: str, now: float, expected: float
) -> None:
    assert DEFAULT_SEND_HOUR == 9
    assert optimized(now, timezone, []) == expected


# --- wait_until ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timezone", "now", "duration", "expected", "elapsed_hours"),
    [
        # 09:00 EST on 9 March → 09:00 EDT on 10 March.
        (NY, utc(2024, 3, 9, 14), WaitDuration(1, "day"), utc(2024, 3, 10, 13), 23),
        # 09:00 EDT on 2 November → 09:00 EST on 3 November.
        (NY, utc(2024, 11, 2, 13), WaitDuration(1, "day"), utc(2024, 11, 3, 14), 25),
        # 09:00 CET on 30 March → 09:00 CEST on 31 March.
        (BERLIN, utc(2024, 3, 30, 8), WaitDuration(1, "day"), utc(2024, 3, 31, 7), 23),
        # 09:00 CEST on Monday 21 October → 09:00 CET on Monday 28 October.
        (BERLIN, utc(2024, 10, 21, 7), WaitDuration(1, "week"), utc(2024, 10, 28, 8), 7 * 24 + 1),
        # 09:00 CET on 25 March → 09:00 CEST on 1 April.
        (BERLIN, utc(2024, 3, 25, 8), WaitDuration(7, "days"), utc(2024, 4, 1, 7), 7 * 24 - 1),
        # 02:30 EST on 9 March → 02:30 on 10 March does not exist → 03:30 EDT.
        (NY, utc(2024, 3, 9, 7, 30), WaitDuration(1, "day"), utc(2024, 3, 10, 7, 30), 24),
        # 01:30 EDT on 2 November → 01:30 twice on 3 November → the first, EDT.
        (NY, utc(2024, 11, 2, 5, 30), WaitDuration(1, "day"), utc(2024, 11, 3, 5, 30), 24),
        # 01:30 EST (second pass) on 3 November → 01:30 EST on 4 November.
        (NY, utc(2024, 11, 3, 6, 30), WaitDuration(1, "day"), utc(2024, 11, 4, 6, 30), 24),
        # 1.5 days: 09:00 EST 9 March → 09:00 EDT 10 March, then 12 hours.
        (NY, utc(2024, 3, 9, 14), WaitDuration(1.5, "days"), utc(2024, 3, 11, 1), 35),
        # Half a week: three calendar days, then 12 hours.
        (NY, utc(2024, 3, 8, 14), WaitDuration(0.5, "weeks"), utc(2024, 3, 11, 13) + 12 * HOUR, 83),
        # Less than a day is elapsed time.
        (NY, utc(2024, 3, 9, 14), WaitDuration(0.5, "days"), utc(2024, 3, 10, 2), 12),
        # Hours are always elapsed time.
        (NY, utc(2024, 3, 9, 14), WaitDuration(24, "hours"), utc(2024, 3, 10, 14), 24),
        (BERLIN, utc(2024, 10, 26, 7), WaitDuration(1440, "minutes"), utc(2024, 10, 27, 7), 24),
        # Without a time zone, a day is 86,400 seconds.
        (None, utc(2024, 3, 9, 14), WaitDuration(1, "day"), utc(2024, 3, 10, 14), 24),
        (None, utc(2024, 10, 21, 7), WaitDuration(1, "week"), utc(2024, 10, 28, 7), 7 * 24),
    ],
)
def test_wait_until(
    timezone: str | None, now: float, duration: WaitDuration, expected: float, elapsed_hours: int
) -> None:
    end = wait_until(now, duration, timezone=timezone)
    assert end == expected
    assert end - now == elapsed_hours * HOUR


def test_zero_wait_ends_now_even_in_a_repeated_hour() -> None:
    second_pass = utc(2024, 11, 3, 6, 30)  # 01:30 EST, after 01:30 EDT
    assert wait_until(second_pass, WaitDuration(0, "days"), timezone=NY) == second_pass
    assert (
        wait_until(second_pass, WaitDuration(0.25, "days"), timezone=NY) == second_pass + 6 * HOUR
    )


def test_wait_until_keeps_fractions_of_a_second() -> None:
    now = utc(2024, 3, 9, 14) + 0.123456789
    assert wait_until(now, WaitDuration(1, "day"), timezone=NY) == pytest.approx(
        utc(2024, 3, 10, 13) + 0.123456789, abs=1e-6
    )
    assert math.isclose(
        wait_until(now, WaitDuration(1, "day"), timezone=NY) % 1, 0.123456789, abs_tol=1e-6
    )


@pytest.mark.parametrize("timezone", ["Mars/Olympus", "", "../etc/passwd"])
@pytest.mark.parametrize("unit", ["days", "hours"])
def test_wait_until_names_an_unknown_time_zone(timezone: str, unit: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone") as caught:
        wait_until(NOW, WaitDuration(1, unit), timezone=timezone)
    assert repr(timezone) in str(caught.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, True, "0"])
def test_wait_until_refuses_a_bad_now(bad: Any) -> None:
    with pytest.raises(ValueError, match="now must be a finite number"):
        wait_until(bad, WaitDuration(1, "day"), timezone=NY)


def test_wait_until_out_of_range() -> None:
    near_the_end = datetime(9999, 6, 1, tzinfo=UTC).timestamp()
    with pytest.raises(ValueError, match="out of range"):
        wait_until(near_the_end, WaitDuration(52 * 100, "weeks"), timezone=NY)


# --- invariants ------------------------------------------------------------------------------

ZONES = [
    NY,
    BERLIN,
    "UTC",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Santiago",
    "America/Sao_Paulo",
    "Pacific/Auckland",
    "Pacific/Chatham",
    "America/St_Johns",
]
instants = st.integers(min_value=int(utc(2000, 1, 1)), max_value=int(utc(2037, 12, 31))).map(
    float
) | st.floats(min_value=utc(2000, 1, 1), max_value=utc(2037, 12, 31))


def wall(instant: float, timezone: str) -> datetime:
    return datetime.fromtimestamp(instant, ZoneInfo(timezone)).replace(tzinfo=None)


def exists(local: datetime, timezone: str) -> bool:
    """Whether the naive local time ``local`` occurs in ``timezone``."""
    zone = ZoneInfo(timezone)
    return wall(local.replace(tzinfo=zone).timestamp(), timezone) == local


@given(
    timezone=st.sampled_from(ZONES),
    now=instants,
    open_times=st.lists(instants, min_size=1, max_size=20),
)
def test_optimized_is_later_than_now_at_the_most_common_hour_tomorrow(
    timezone: str, now: float, open_times: list[float]
) -> None:
    sent = optimized(now, timezone, open_times)
    assert sent > now

    counts = Counter(wall(opened, timezone).hour for opened in open_times)
    best = max(counts.values())
    hour = min(h for h, count in counts.items() if count == best)
    tomorrow: date = wall(now, timezone).date() + timedelta(days=1)
    target = datetime.combine(tomorrow, datetime.min.time()).replace(hour=hour)
    if exists(target, timezone):
        assert wall(sent, timezone) == target
    else:
        # In a spring-forward gap: the first instant whose local time is after the target.
        assert wall(sent, timezone) > target
        assert wall(sent - 1, timezone) < target


@given(timezone=st.sampled_from(ZONES), now=instants)
def test_no_history_is_the_next_nine_oclock(timezone: str, now: float) -> None:
    sent = optimized(now, timezone, [])
    assert now <= sent < now + 2 * DAY
    assert wall(sent, timezone).time() == datetime.min.time().replace(hour=9)
    # No 09:00 between now and the send.
    before = wall(now, timezone)
    if before.hour < 9:
        assert wall(sent, timezone).date() == before.date()


units = st.sampled_from(["seconds", "minutes", "hours", "days", "weeks"])


@given(
    timezone=st.none() | st.sampled_from(ZONES),
    now=instants,
    unit=units,
    values=st.lists(st.integers(min_value=0, max_value=400), min_size=2, max_size=5),
)
def test_wait_until_is_not_before_now_and_grows_with_the_duration(
    timezone: str | None, now: float, unit: str, values: list[int]
) -> None:
    ends = [
        wait_until(now, WaitDuration(value, unit), timezone=timezone) for value in sorted(values)
    ]
    assert all(end >= now for end in ends)
    assert ends == sorted(ends)


@given(
    timezone=st.sampled_from(ZONES),
    now=st.integers(min_value=int(utc(2000, 1, 1)), max_value=int(utc(2037, 12, 31))),
    days=st.integers(min_value=1, max_value=60),
)
def test_calendar_days_keep_the_local_wall_clock_time(timezone: str, now: int, days: int) -> None:
    end = wait_until(float(now), WaitDuration(days, "days"), timezone=timezone)
    target = wall(now, timezone) + timedelta(days=days)
    assume(exists(target, timezone))
    assert wall(end, timezone) == target
    # Never more than the biggest daylight-saving shift away from plain seconds.
    assert abs(end - (now + days * DAY)) <= 2 * HOUR


@given(
    now=instants,
    value=st.floats(min_value=0, max_value=5_000, allow_nan=False),
    unit=units,
)
def test_without_a_time_zone_every_unit_is_elapsed_time(
    now: float, value: float, unit: str
) -> None:
    duration = WaitDuration(value, unit)
    assert wait_until(now, duration) == now + duration.seconds
