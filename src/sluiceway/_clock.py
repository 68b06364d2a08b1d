"""A trio clock whose timers fire when they are due, not up to a millisecond later.

trio waits for I/O and for its next deadline in one system call. On Linux that is
``epoll_wait``, whose timeout is a whole number of milliseconds, and Python rounds the wait up
to the next one: a task that sleeps 10 ms wakes after 10 to 11 ms, half a millisecond late on
average (Windows waits in milliseconds too). A fan-out of short sleeps pays that on every one:
a hundred tasks sleeping 10 ms in turn take about 1.11 times the ideal on bare trio.

:class:`PreciseClock` tells trio to wait only the whole milliseconds before the next deadline,
and not to wait at all (to poll) through the last, partial one. The deadline's task then runs
within microseconds of it. I/O is still seen at once: polling is a wait of zero, not a sleep.
"""

from __future__ import annotations

import math
import random
import sys
from time import perf_counter

import trio

#: How finely the event loop's wait can be timed, where trio's wait takes whole milliseconds.
MILLISECOND_WAIT_PLATFORMS = ("linux", "win32")
#: Below this much time to the deadline the wait is trimmed; above it, precision is moot (the
#: loop is asked again when the long wait ends).
_LONGEST_TRIMMED_WAIT = 3600.0
#: How far below a whole number of granules a trimmed wait is, so that the conversion to the
#: system call's unit, which rounds up, cannot carry it to the next granule.
_BELOW_BOUNDARY = 1e-6
#: The largest granularity accepted: the loop polls through up to this much before each
#: deadline it waits for.
MAX_GRANULARITY = 0.1


def default_granularity(platform: str = sys.platform) -> float:
    """The granularity :class:`PreciseClock` uses on ``platform`` (a ``sys.platform`` value):
    a millisecond where trio waits in whole milliseconds (Linux's epoll, Windows' I/O
    completion ports), 0 where it waits to the nanosecond (kqueue on macOS and the BSDs)."""
    return 0.001 if platform.startswith(MILLISECOND_WAIT_PLATFORMS) else 0.0


class PreciseClock(trio.abc.Clock):
    """A clock for ``trio.run(main, clock=PreciseClock())`` under which timers fire when due.

    Time is trio's usual: :func:`time.perf_counter` plus a large random offset, so that code
    comparing it with another clock fails at once. What differs is how long the run loop waits
    for the next deadline: the whole multiples of ``granularity`` before it (so the system call
    cannot overshoot), then no wait at all until the deadline has passed. A ``trio.sleep(0.01)``
    then wakes 10 ms later, give or take the microseconds the loop takes to get round, where
    trio's own clock wakes it anywhere up to 11 ms later.

    The price is CPU time: the loop polls through the last granule before each deadline it
    waits for (half a millisecond on average, at most ``granularity``), where it would have
    slept. A program whose tasks sleep briefly and often gains the most; one that mostly waits
    for I/O gains little and should keep trio's clock.

    Args:
        granularity: the unit of the event loop's wait, in seconds (0 to
            :data:`MAX_GRANULARITY`); by default a millisecond on Linux and Windows, 0 (no
            trimming, no polling) on macOS and the BSDs, whose waits are exact.

    Raises:
        TypeError: ``granularity`` is not a number.
        ValueError: ``granularity`` is negative, not finite, or above :data:`MAX_GRANULARITY`.
    """

    def __init__(self, granularity: float | None = None) -> None:
        if granularity is None:
            granularity = default_granularity()
        elif isinstance(granularity, bool) or not isinstance(granularity, int | float):
            raise TypeError(f"granularity must be a number of seconds, got {granularity!r}")
        if not math.isfinite(granularity) or not 0 <= granularity <= MAX_GRANULARITY:
            raise ValueError(
                f"granularity must be between 0 and {MAX_GRANULARITY} seconds, got {granularity!r}"
            )
        self._granularity = float(granularity)
        self._offset = random.uniform(10_000, 200_000)  # not a secret: any offset will do

    @property
    def granularity(self) -> float:
        """The unit of the event loop's wait this clock trims to (0: no trimming)."""
        return self._granularity

    def start_clock(self) -> None:
        """Nothing to start: the time is the performance counter's."""

    def current_time(self) -> float:
        """The current time in seconds (the performance counter plus this clock's offset)."""
        return self._offset + perf_counter()

    def deadline_to_sleep_time(self, deadline: float) -> float:
        """How long the run loop may wait for I/O before ``deadline``: the whole granules
        before it, or 0 in its last one (see the class docstring)."""
        remaining = deadline - (self._offset + perf_counter())
        granularity = self._granularity
        if not granularity or remaining > _LONGEST_TRIMMED_WAIT:
            return remaining
        if remaining < granularity:
            return 0.0  # the last granule: poll until the deadline has passed
        return int(remaining / granularity) * granularity - _BELOW_BOUNDARY
