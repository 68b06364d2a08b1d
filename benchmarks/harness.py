"""What every scenario shares: correctness checks, samples, summaries, targets, machine info.

A benchmark that silently does less work is worthless, so every repetition of every side is
verified (:class:`Tracker`, :class:`Results`) and a violation raises :class:`BenchmarkError`,
which stops the suite with a non-zero exit status.
"""

from __future__ import annotations

import abc
import asyncio
import datetime
import gc
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import trio

import sluiceway

SLUICEWAY = "sluiceway"
ASYNCIO = "asyncio"
SIDES = (SLUICEWAY, ASYNCIO)

Params = Mapping[str, Any]


class BenchmarkError(AssertionError):
    """A correctness check failed: the run did not do exactly the work it was asked to do."""


# -- correctness -------------------------------------------------------------------------------


class Tracker:
    """Counts task bodies in flight, identically on both sides.

    Every task body calls :meth:`enter` first and :meth:`exit` last. ``probe`` (optional) returns
    how many units of the limiter are held right now; inside a body it must be between 1 (the
    body holds one) and ``limit``, which proves no task runs without capacity and no limiter ever
    hands out more than its limit even when bodies never overlap (no-op tasks). ``parent`` is
    entered and exited too (a job's tracker feeds the global one).
    """

    __slots__ = (
        "active",
        "entered",
        "exited",
        "limit",
        "max_held",
        "min_held",
        "name",
        "parent",
        "peak",
        "probe",
    )

    def __init__(
        self,
        name: str,
        limit: int,
        probe: Callable[[], float] | None = None,
        parent: Tracker | None = None,
    ) -> None:
        self.name = name
        self.limit = limit
        self.probe = probe
        self.parent = parent
        self.active = 0
        self.peak = 0
        self.entered = 0
        self.exited = 0
        self.min_held: float = float("inf")
        self.max_held: float = 0

    def enter(self) -> None:
        self.entered += 1
        active = self.active = self.active + 1
        if active > self.peak:
            self.peak = active
        probe = self.probe
        if probe is not None:
            held = probe()
            if held < self.min_held:
                self.min_held = held
            if held > self.max_held:
                self.max_held = held
        if self.parent is not None:
            self.parent.enter()

    def exit(self) -> None:
        self.exited += 1
        self.active -= 1
        if self.parent is not None:
            self.parent.exit()

    def verify(self, expected: int) -> dict[str, Any]:
        """Raise :class:`BenchmarkError` unless exactly ``expected`` bodies ran within the limit;
        return the figures for the raw results."""
        where = f"tracker {self.name!r}"
        if self.entered != expected or self.exited != expected:
            raise BenchmarkError(
                f"{where}: {self.entered} bodies entered and {self.exited} exited, "
                f"expected {expected}"
            )
        if self.active != 0:
            raise BenchmarkError(f"{where}: {self.active} bodies still in flight at the end")
        if self.peak > self.limit:
            raise BenchmarkError(
                f"{where}: peak concurrency {self.peak} is above the limit {self.limit}"
            )
        if self.probe is not None and expected:
            if self.min_held < 1:
                raise BenchmarkError(
                    f"{where}: a body ran while its limiter showed {self.min_held} units held "
                    "(a task ran without capacity)"
                )
            if self.max_held > self.limit:
                raise BenchmarkError(
                    f"{where}: the limiter showed {self.max_held} units held, above the limit "
                    f"{self.limit}"
                )
        return {
            "bodies": self.entered,
            "peak_concurrency": self.peak,
            "limit": self.limit,
            "held_min": None if self.probe is None or not expected else self.min_held,
            "held_max": None if self.probe is None or not expected else self.max_held,
        }


class Results:
    """The consumer's tally: task ``i`` returns ``i``; each of ``0 .. n-1`` must arrive once."""

    __slots__ = ("count", "n", "seen")

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.seen = bytearray(n)

    def add(self, value: object) -> None:
        if not isinstance(value, int) or not 0 <= value < self.n:
            raise BenchmarkError(f"unexpected result {value!r}")
        if self.seen[value]:
            raise BenchmarkError(f"result of task {value} delivered twice")
        self.seen[value] = 1
        self.count += 1

    def verify(self) -> dict[str, Any]:
        if self.count != self.n:
            missing = self.seen.count(0)
            raise BenchmarkError(
                f"{self.count} results delivered, expected {self.n} ({missing} tasks missing)"
            )
        return {"results": self.count}


def task_failed(where: str, error: object) -> BenchmarkError:
    """The error to raise when a benchmark task reports a failure."""
    return BenchmarkError(f"{where}: a task failed: {error!r}")


# -- running one side -------------------------------------------------------------------------


def run_trio(
    main: Callable[[], Awaitable[float]], *, clock: trio.abc.Clock | None = None
) -> tuple[float, float]:
    """``gc.collect()``, then ``trio.run(main)`` on a fresh loop (with ``clock``, else trio's).

    ``main`` returns the seconds it measured inside the loop; returned with the wall time of the
    whole ``trio.run`` (loop start-up and shutdown included)."""
    gc.collect()
    start = time.perf_counter()
    inner = trio.run(main, clock=clock)
    return inner, time.perf_counter() - start


def run_asyncio(
    main: Callable[[], Awaitable[float]],
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> tuple[float, float]:
    """``gc.collect()``, then ``asyncio.run(main())`` on a fresh loop; see :func:`run_trio`.

    ``loop_factory`` makes the loop instead of asyncio's default (``uvloop.new_event_loop``)."""
    gc.collect()

    async def wrapper() -> float:
        return await main()

    start = time.perf_counter()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        inner = runner.run(wrapper())
    return inner, time.perf_counter() - start


# -- samples, summaries, targets ---------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One reported number of a scenario."""

    key: str
    label: str
    unit: str
    digits: int = 3


@dataclass
class Sample:
    """One repetition of one side: its metrics and what was verified."""

    metrics: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


@dataclass(frozen=True)
class Target:
    """A scenario's goal and whether this run met it."""

    goal: str
    measured: str
    met: bool


Summary = dict[str, dict[str, Spread]]  # metric key -> side -> spread


def summarize(samples: Mapping[str, Sequence[Sample]], metrics: Sequence[Metric]) -> Summary:
    return {
        metric.key: {
            side: Spread.of([sample.metrics[metric.key] for sample in side_samples])
            for side, side_samples in samples.items()
        }
        for metric in metrics
    }


def ratio(summary: Summary, key: str) -> float:
    """sluiceway median / asyncio median for ``key`` (``inf`` if asyncio's is 0)."""
    ours = summary[key][SLUICEWAY].median
    theirs = summary[key][ASYNCIO].median
    return ours / theirs if theirs else float("inf")


class Scenario(abc.ABC):
    """A workload run on both sides; subclasses fill in the class attributes and methods."""

    key: str
    title: str
    baseline: str
    metrics: tuple[Metric, ...]
    #: Whether a tiny warm-up run of each side precedes the measured ones (imports, caches).
    warm_up = True

    @abc.abstractmethod
    def params(self, quick: bool) -> dict[str, Any]:
        """The sizes of the workload (much smaller with ``quick``)."""

    @abc.abstractmethod
    def warm_up_params(self) -> dict[str, Any]:
        """A tiny workload for the warm-up run."""

    @abc.abstractmethod
    def describe(self, params: Params) -> str:
        """One line describing the workload with its sizes."""

    @abc.abstractmethod
    def run(self, side: str, params: Params) -> Sample:
        """One verified repetition of ``side`` (raises :class:`BenchmarkError` on a violation)."""

    @abc.abstractmethod
    def target(self, summary: Summary, params: Params) -> Target:
        """The scenario's target, evaluated on this run's medians."""


# -- machine -----------------------------------------------------------------------------------


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("model name", "Hardware", "Processor", "cpu model"):
            return value.strip()
    return platform.processor() or None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> dict[str, Any] | None:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": head, "dirty": bool(dirty)}


def machine_info() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "trio": trio.__version__,
        "sluiceway": _version("sluiceway") or sluiceway.__version__,
        "load_average_at_start": load,
        "git": _git_commit(),
    }


#: The repository's root: worker processes run there, with it on their ``PYTHONPATH``.
REPOSITORY = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """The environment of a worker process: this one's, with the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")]))
    return env


def run_worker(module: str, args: Sequence[str], *, timeout: float, what: str) -> dict[str, Any]:
    """Run ``python -m <module> <args>`` in a fresh process and return the JSON object of the
    last line it printed (its report).

    Raises:
        BenchmarkError: it timed out, exited with another status than 0, or printed no
            report (naming ``what``, with the end of its stderr).
    """
    command = [sys.executable, "-m", module, *args]
    try:
        done = subprocess.run(
            command,
            cwd=REPOSITORY,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"{what} timed out after {exc.timeout:.0f} s") from exc
    if done.returncode != 0:
        raise BenchmarkError(
            f"{what} failed with exit status {done.returncode}:\n{done.stderr.strip()[-2000:]}"
        )
    try:
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise BenchmarkError(f"{what} printed no report: {done.stdout!r}") from exc
    return report


def read_json_line(
    process: subprocess.Popen[bytes],
    buffer: bytearray,
    timeout: float,
    what: str,
    errors: Callable[[], str],
) -> dict[str, Any]:
    """The next line ``process`` prints on its standard output, as a JSON object, within
    ``timeout`` seconds; ``buffer`` holds what was read past the last line (kept between
    calls).

    Raises:
        BenchmarkError: nothing came in time, the process exited (with ``errors()``, the end
            of its standard error), or the line is not JSON (naming ``what``).
    """
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchmarkError(f"{what} said nothing for {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                process.wait()
                raise BenchmarkError(f"{what} exited with status {process.returncode}:\n{errors()}")
            buffer += chunk
    end = buffer.index(b"\n")
    line = bytes(buffer[:end])
    del buffer[: end + 1]
    try:
        out: dict[str, Any] = json.loads(line)
    except ValueError as exc:
        raise BenchmarkError(f"{what} printed {line[:200]!r}") from exc
    return out


class ModuleProcess:
    """``python -m MODULE ARGS`` from the repository, driven by a benchmark: lines to its
    standard input, JSON lines read from its standard output with a timeout, its standard
    error in a temporary file (its end shown when it fails)."""

    def __init__(self, module: str, what: str, args: Sequence[str]) -> None:
        self.what = what
        self.stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPOSITORY,
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            bufsize=0,
        )
        self._buffer = bytearray()

    def error_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace").strip()[-3000:]

    def say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{word}\n".encode())
        self.proc.stdin.flush()

    def read_line(self, timeout: float) -> dict[str, Any]:
        return read_json_line(self.proc, self._buffer, timeout, self.what, self.error_text)

    def finish(self, timeout: float) -> None:
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"{self.what} did not exit within {timeout:.0f} s") from None
        if status != 0:
            raise BenchmarkError(f"{self.what} exited with status {status}:\n{self.error_text()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.stderr.close()
