"""Scenario N: the load that open web pages put on a server.

The issue's load: 50 pages open on a run of 10,000 children; the server's store reads per
second stay bounded (reported); the run's throughput drops by less than 10 % compared with no
page open (the target, reported, not enforced).

**The run.** One root entity (:class:`PageRun`) fans out 10,000 trivial children
(:class:`PageChild`, each returns its index) through ``ctx.parallel_calls`` and a
``HierarchicalTaskPoolRunner`` under ``CapacitySource(16)`` (shown as a gauge while the run
uses it), and stores a status envelope per finished child (``RUNNING "k/n done"``), as the
test workflows' ``FanOut`` does. The store then holds 3 envelopes per child (STARTED, VALUE,
COMPLETED) and 10,003 of the root (STARTED, a RUNNING per child, VALUE, COMPLETED).

**The server process**, fresh for every run (``python -m benchmarks.pages serve OPTIONS``, one
JSON line out per step): ``open_runtime(SqliteStore(path), types)`` with the runtime's defaults
on a fresh file, a :class:`~sluiceway.server.RuntimeServer` (default limits, no token) on
``127.0.0.1``, port 0; the root is created (PENDING) and the address printed. When the driver
says ``go``, the run is started in the process (``server.start``, what the ``start`` operation
does) and the **timed region** runs from just before that until ``runtime.wait`` returns its
result: its wall time (``time.perf_counter``), the process's CPU time (``time.process_time``:
every thread, SQLite's too), the trio thread's own (``time.thread_time``), and children per
second. The store's reads are counted in the process by wrapping the ``read`` of the store's
database object (:class:`ReadCounter`: every read of a ``SqliteStore`` goes through it), by
the trio task that made it (the server names a request's task after its operation, ``tree
12``; a subscription's ``subscription 3``; the shared reader of a followed subtree ``stream
<id>``; anything else is the runtime's) and by store method; the count is checked against the
store's own ``statistics().reads``. The reads of the pages' tasks are the reads the pages
caused (the same difference as the two sides' totals, read directly).

**The pages**, in a process of their own (``python -m benchmarks.pages pages OPTIONS``),
started once the server listens: each of the 50 is a WebSocket client (trio-websocket,
offering the ``sluiceway.v1`` subprotocol with the ``Origin`` of the server's own page, as a
browser does) doing what ``src/sluiceway/server/static/app.js`` does, on its timers
(:class:`Page`). They open one after another over 2 s (their timers then tick out of step, as
those of pages opened by different people do). On ``hello`` a page loads the runs (``list``,
25 a page) and the gauges (``capacity``), then every 5 s and every 2 s. It selects the run as
soon as a runs list shows it, as a person clicking it at once would: a ``subscribe`` from
seq 0 follows its whole subtree, sampled (``"interval": 1, "keep": 25``: at most one
``envelopes`` event a second, the newest 25 envelopes of what came and the older
errors, prompts and answers, the others counted in ``skipped``), then a ``tree`` (depth 1, 30
children) and a ``get`` of the run; every ``envelopes`` or ``end`` event of its subscription
schedules, unless one is
scheduled, a ``tree`` and a ``get`` two seconds later. A lost connection is opened again after
0.5 s, doubling up to 10 s, and the subscription resumed from the last seq (a reconnection
is reported as a warning). Once every page has subscribed, the driver says ``go`` to both processes;
when the server reports the run's end it says ``stop`` to the pages (what they received and
asked in between is the run's window), which wait for their ``end`` events and report.

Why emulated pages rather than 50 browser tabs: the point is the server's cost, and 50
Chromium tabs on a 2-core machine would mostly measure Chromium's CPU (and starve the server
of it). The emulation sends the same requests at the same moments and reads every frame (one
``json.loads`` each, as the page's ``JSON.parse``); the page itself is tested functionally in
a real Chromium by ``tests/browser``. The pages' process's CPU over the run is reported (it
shares the machine with the server).

**Two runs with the pages per repetition.** Run one has every page follow the **whole
subtree** (40,003 envelopes, sampled), "as app.js". Run two has the pages follow **the run's
own envelopes** (``subtree`` false, 10,003, sampled the same way); everything else is the
same. The side without pages runs once per
repetition, and its figures stand for both comparisons (in the table, its ``*_own`` rows
repeat them). Each run is a fresh server process, and a fresh pages' process; the sides
alternate (the harness's interleaving).

Checks on every run: the run's result (every child's result consumed once, their count and
sum), every child body ran once holding capacity, at most 16 at once
(:class:`~benchmarks.harness.Tracker`), the capacity node idle at the end; the store file
after the server exited (:func:`verify_store`): the root COMPLETED at attempt 1 with its
result and exactly its envelopes in order, each child once under it with its edge, COMPLETED
at attempt 1 with exactly STARTED, VALUE, COMPLETED, no lease held, distinct seqs,
``PRAGMA integrity_check`` ok; every page (:func:`verify_pages`): its events account for
exactly ``runtime.envelopes(root, subtree=...)`` for what it followed, read by the server
after the run (:func:`sampled_problem`: each event holds, in order, some of the next ``kept +
skipped`` envelopes, ending with the newest of them), no envelope twice or of another entity
when it followed the run's own (checked on arrival), its ``end`` event COMPLETED, and no
request of it refused; the read counter
agrees with the store's statistics.

In the results table the ``sluiceway`` column is the side with the pages open and the
``asyncio`` column the side with none (the harness's two sides): ratios are pages / none.

``python -m benchmarks.pages one PAGES [N] [--own] [--poll | --subscribe]`` runs and checks
one run and prints its figures: the diagnostics of docs/benchmarks.rst (``--poll``: pages that
only poll the runs and the gauges, never selecting the run; ``--subscribe``: pages that select
and follow the run but never ask for its tree or details).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

from sluiceway import (
    CapacitySource,
    EnvelopeKind,
    HierarchicalTaskPoolRunner,
    RunContext,
    RunnableEntity,
    SqliteStore,
    open_runtime,
)
from sluiceway.server import Application, RuntimeServer

from .fanout import capacity_probe
from .harness import (
    ASYNCIO,
    SLUICEWAY,
    BenchmarkError,
    Metric,
    ModuleProcess,
    Params,
    Results,
    Sample,
    Scenario,
    Summary,
    Target,
    Tracker,
    ratio,
    task_failed,
)

ROOT = Path(__file__).resolve().parents[1]

#: The issue's sizes: a run of 10,000 children, 50 pages open on it (``--quick``: 1,000, 10).
CHILDREN, PAGES, QUICK_CHILDREN, QUICK_PAGES = 10_000, 50, 1_000, 10
#: Child bodies at once (the run's ``CapacitySource``).
CONCURRENCY = 16
#: The target: the run's throughput with the pages open is at least this share of its
#: throughput with none (a drop of less than 10 %).
TARGET_RATIO = 0.90
#: The run's root entity's name.
RUN_NAME = "pages-run"
#: Over how many seconds the pages open, one after another (their timers then tick out of
#: step, as those of pages opened by different people do).
OPEN_OVER = 2.0

# What app.js does (src/sluiceway/server/static/app.js), its constants in seconds.
#: A selected run's tree and details are refreshed at most this often while envelopes come.
TREE_EVERY = 2.0
#: The runs list is refreshed this often.
RUNS_EVERY = 5.0
#: The capacity gauges are refreshed this often.
GAUGES_EVERY = 2.0
#: The runs list's page size.
PAGE_SIZE = 25
#: A page's subscription is sampled: at most one ``envelopes`` event per interval (seconds),
#: holding the newest ``keep`` envelopes (the others counted in its ``skipped``).
SAMPLE_INTERVAL, SAMPLE_KEEP = 1.0, 25
#: Children listed under the selected run in its tree.
TREE_CHILDREN = 30
#: The reconnection back-off: first delay, doubling, at most.
RECONNECT_FIRST, RECONNECT_MAX = 0.5, 10.0
#: What the pages follow: the run's whole subtree, as app.js does, or the run's own envelopes
#: only (``subtree`` false); sampled either way.
FOLLOW_APP, FOLLOW_OWN = "app.js", "own"
#: What the pages do: everything app.js does; only poll the runs and the gauges (never select
#: the run); select and follow the run but never ask for its tree or details (the last two
#: only for the diagnostics of ``python -m benchmarks.pages one``).
ACTIVITY_ALL, ACTIVITY_POLL, ACTIVITY_SUBSCRIBE = "all", "poll", "subscribe"
#: The subprotocol a browser page offers.
SUBPROTOCOL = "sluiceway.v1"
#: The statuses a run ends with.
FINISHED = ("COMPLETED", "FAILED", "CANCELLED")
#: The server tasks whose store reads the pages cause: the handlers of their requests
#: (named after the operation), their subscriptions and the shared readers of the streams.
PAGE_SOURCES = frozenset(
    {"tree", "get", "list", "capacity", "subscribe", "unsubscribe", "subscription", "stream"}
)


def _say(message: dict[str, Any]) -> None:
    """One JSON line to the driver."""
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _expect(word: str) -> None:
    """Wait for the driver's line ``word`` on standard input."""
    line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    if line.strip() != word:
        raise BenchmarkError(f"expected {word!r} from the driver, got {line!r}")


# -- the application: a root fanning out trivial children -------------------------------------


def child_name(i: int) -> str:
    return f"child-{i}"


def child_result(i: int) -> dict[str, Any]:
    return {"i": i}


def run_result(n: int) -> dict[str, Any]:
    """What the root of ``n`` children returns: their count and the sum of their indexes."""
    return {"ok": n, "total": n * (n - 1) // 2}


def progress_message(done: int, n: int) -> str:
    """The root's status message after ``done`` children (as the test workflows' FanOut)."""
    return f"{done}/{n} done"


@dataclass
class RunState:
    """What the entities of this process's run report to (the runtime makes the instances)."""

    n: int
    pool: CapacitySource
    tracker: Tracker
    results: Results
    ran: bytearray
    total: int = 0


class _Current:
    state: RunState | None = None


def current_state() -> RunState:
    if _Current.state is None:
        raise BenchmarkError("no benchmark run is set up in this process")
    return _Current.state


class PageChild(RunnableEntity):
    """A trivial child: returns its index."""

    async def run_impl(self, ctx: RunContext) -> Any:
        state = current_state()
        i: int = self.data["i"]
        if state.ran[i]:
            raise BenchmarkError(f"{child_name(i)} ran twice")
        state.ran[i] = 1
        state.tracker.enter()
        state.tracker.exit()
        return child_result(i)


class PageRun(RunnableEntity, allowed_connections={"Calls": [PageChild]}):
    """Fans out ``data["n"]`` children through ``ctx.parallel_calls`` and a task pool under
    the run's capacity node (shown as a gauge while it runs), and stores a status envelope
    per finished child, as the test workflows' ``FanOut`` does."""

    async def run_impl(self, ctx: RunContext) -> Any:
        state = current_state()
        n: int = self.data["n"]
        items = [(child_name(i), {"i": i}) for i in range(n)]
        done = 0
        with ctx.runtime.gauges.watching(state.pool, name="children"):
            runner = HierarchicalTaskPoolRunner(
                "children", ctx.parallel_calls(PageChild, items), state.pool
            )
            async with runner.run_tasks() as envelopes:
                async for envelope in envelopes:
                    if envelope.kind is EnvelopeKind.FINAL:
                        value = envelope.value
                        i = value.get("i") if isinstance(value, dict) else None
                        if not isinstance(i, int) or envelope.key != child_name(i):
                            raise BenchmarkError(f"child {envelope.key!r} returned {value!r}")
                        state.results.add(i)
                        state.total += i
                        done += 1
                        await ctx.status("RUNNING", progress_message(done, n))
                    elif envelope.kind is EnvelopeKind.ERROR:
                        raise task_failed(f"child {envelope.key!r}", envelope.error)
        return {"ok": done, "total": state.total}


TYPES: list[type[RunnableEntity]] = [PageRun, PageChild]
APP = Application("bench-pages", types=TYPES)


# -- the server process ------------------------------------------------------------------------


def _method(fn: Callable[..., Any]) -> str:
    """The store method a read function belongs to (``get_entity`` for the lambda of
    ``StoreOperations.get_entity``)."""
    name: str = getattr(fn, "__qualname__", type(fn).__name__)
    owner, sep, _ = name.partition(".<locals>")
    return owner.rsplit(".", 1)[-1] if sep else name


def _source() -> str:
    """Which part of the server reads: the first word of the trio task's name (the server
    names a request's task after its operation, ``tree 12``; a subscription's ``subscription
    3``; a stream's shared reader ``stream <id>``), else ``runtime``."""
    name = trio.lowlevel.current_task().name
    first = name.split(" ", 1)[0]
    return first if first in PAGE_SOURCES else "runtime"


class ReadCounter:
    """Counts the store's reads, and the CPU time each took in its reader thread
    (``time.thread_time``: the query and the decoding of its rows), by the server task that
    made it and the store method, by wrapping the ``read`` of the store's database object
    (every read of a :class:`~sluiceway.SqliteStore` goes through it; its own
    ``statistics().reads`` counts them too, and the two are compared)."""

    def __init__(self, store: SqliteStore) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.cpu: dict[tuple[str, str], float] = {}
        database = store._db
        original = database.read

        async def read(fn: Callable[[Any], Any]) -> Any:
            key = (_source(), _method(fn))
            spent: list[float] = []

            def timed(tx: Any) -> Any:
                began = time.thread_time()
                try:
                    return fn(tx)
                finally:
                    spent.append(time.thread_time() - began)

            result = await original(timed)
            self.counts[key] += 1
            self.cpu[key] = self.cpu.get(key, 0.0) + sum(spent)
            return result

        database.read = read  # type: ignore[method-assign]

    def since(
        self, counts: Counter[tuple[str, str]], cpu: dict[tuple[str, str], float]
    ) -> tuple[Counter[tuple[str, str]], dict[tuple[str, str], float]]:
        """The reads and their CPU since a :meth:`snapshot`."""
        return self.counts - counts, {
            key: value - cpu.get(key, 0.0)
            for key, value in self.cpu.items()
            if self.counts[key] > counts[key]
        }

    def snapshot(self) -> tuple[Counter[tuple[str, str]], dict[tuple[str, str], float]]:
        return Counter(self.counts), dict(self.cpu)


def _breakdown(
    counts: Counter[tuple[str, str]], cpu: dict[tuple[str, str], float]
) -> dict[str, dict[str, float]]:
    """``{"source:method": {"reads": n, "cpu_seconds": s}}``, the most frequent first."""
    return {
        f"{source}:{method}": {"reads": count, "cpu_seconds": cpu.get((source, method), 0.0)}
        for (source, method), count in counts.most_common()
    }


async def _serve(options: dict[str, Any]) -> None:
    n, limit, path = options["n"], options["concurrency"], options["path"]
    pool = CapacitySource(limit, name="children")
    state = RunState(
        n, pool, Tracker("children", limit, capacity_probe(pool)), Results(n), bytearray(n)
    )
    _Current.state = state
    store = SqliteStore(path)
    counter = ReadCounter(store)
    async with open_runtime(store, TYPES) as runtime:
        root = await runtime.create(PageRun, {"n": n}, name=RUN_NAME)
        server = RuntimeServer(runtime, APP)
        async with trio.open_nursery() as nursery:
            address = await nursery.start(server.run)
            _say({"url": address.url, "root_id": root.id, "pid": os.getpid()})
            await _expect("go")
            before, stats_before = counter.snapshot(), store.statistics()
            cpu_before, thread_before = time.process_time(), time.thread_time()
            start_wall = time.time()
            start = time.perf_counter()
            answer = await server.start(root.id)
            result = await runtime.wait(root.id)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu_before
            trio_cpu = time.thread_time() - thread_before
            end_wall = time.time()
            (reads, read_cpu), stats_after = counter.since(*before), store.statistics()
            _say({"done": True, "start_wall": start_wall, "end_wall": end_wall})
            await _expect("exit")
            own = [envelope.seq for envelope in await runtime.envelopes(root.id, subtree=False)]
            subtree = [envelope.seq for envelope in await runtime.envelopes(root.id)]
            server.shutdown()
    if answer.get("state") != "started":
        raise BenchmarkError(f"the start answered {answer!r}")
    if result != run_result(n):
        raise BenchmarkError(f"the run returned {result!r}, expected {run_result(n)!r}")
    counted = sum(reads.values())
    if counted != stats_after.reads - stats_before.reads:
        raise BenchmarkError(
            f"the read counter saw {counted} reads, the store's statistics "
            f"{stats_after.reads - stats_before.reads}"
        )
    stats = pool.statistics()
    if stats.borrowed_tokens or stats.tasks_waiting or stats.granted != stats.released:
        raise BenchmarkError(f"the capacity node is not idle after the run: {stats!r}")
    _say(
        {
            "seconds": elapsed,
            "cpu_seconds": cpu,
            "trio_thread_cpu_seconds": trio_cpu,
            "start_wall": start_wall,
            "end_wall": end_wall,
            "reads": counted,
            "page_reads": sum(c for (source, _), c in reads.items() if source in PAGE_SOURCES),
            "read_cpu_seconds": sum(read_cpu.values()),
            "page_read_cpu_seconds": sum(
                c for (source, _), c in read_cpu.items() if source in PAGE_SOURCES
            ),
            "reads_by_source": _breakdown(reads, read_cpu),
            "store_writes": stats_after.writes - stats_before.writes,
            "store_batches": stats_after.batches - stats_before.batches,
            "own_seqs": own,
            "subtree_seqs": subtree,
            **state.results.verify(),
            **state.tracker.verify(n),
        }
    )


# -- a page, as app.js behaves ------------------------------------------------------------------


class RequestFailed(Exception):
    """A request was answered with an error, or its connection was not open or was lost."""

    def __init__(self, code: str | None) -> None:
        super().__init__(code)
        self.code = code


class _Waiter:
    __slots__ = ("done", "error", "on_result", "result")

    def __init__(self, on_result: Callable[[Any], None] | None) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: str | None = None
        self.on_result = on_result


class _Connection:
    """One WebSocket of a page: its requests waiting for their answers, and the nursery of
    the work it does (a closed connection stops it, as its promises are rejected)."""

    def __init__(self, ws: WebSocketConnection, nursery: trio.Nursery) -> None:
        self.ws = ws
        self.nursery = nursery
        self.hello = False
        self.pending: dict[int, _Waiter] = {}

    def lost(self) -> None:
        for waiter in self.pending.values():
            waiter.error = "lost"
            waiter.done.set()
        self.pending.clear()


class Page:
    """One open page: what app.js does, on its timers, with what it keeps of a run (the
    ``seq`` of every envelope, duplicates counted and dropped, as ``view.received``).

    The page opens its WebSocket (offering the ``sluiceway.v1`` subprotocol, with the
    ``Origin`` of the server's own page); on ``hello`` it loads the runs (``list``, 25) and
    the gauges (``capacity``), and then every 5 s and every 2 s. When a runs list shows the
    run named ``run_name``, it selects it, as a person clicking it at once would: it
    subscribes to the run from seq 0 with ``subtree`` true (false when it follows the run's
    own), sampled (``SAMPLE_INTERVAL``, ``SAMPLE_KEEP``); then a ``tree`` (depth 1, 30
    children) and a ``get`` of the run. Each ``envelopes`` or ``end`` event of its
    subscription schedules, unless one is scheduled, a ``tree`` and a ``get`` two seconds
    later. A lost connection is opened again after 0.5 s, doubling up to 10 s; on its
    ``hello`` the page loads the runs and the gauges and subscribes again from the last seq
    it received.
    """

    def __init__(
        self, index: int, url: str, origin: str, run_name: str, follow: str, activity: str
    ) -> None:
        self.index = index
        self.follow = follow
        self.activity = activity
        self.url = url
        self.origin = origin.encode()
        self.run_name = run_name
        self.conn: _Connection | None = None
        self.nursery: trio.Nursery | None = None
        self.next_id = 1
        self.delay = RECONNECT_FIRST
        # view
        self.selected: str | None = None
        self.detail: str | None = None
        self.subscription: int | None = None
        self.subtree = True
        self.last_seq = 0
        self.received: list[int] = []
        # per envelopes event: how many of its envelopes were kept, how many it skipped
        self.events: list[tuple[int, int]] = []
        self.duplicates = 0
        self.foreign = 0
        self.tree_scheduled = False
        self.end_status: str | None = None
        # what was received and asked
        self.frames: Counter[str] = Counter()
        self.envelopes = 0
        self.chars = 0
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latencies: dict[str, list[float]] = {}
        self.reconnections = 0
        self.closes: list[str] = []
        self.subscribed = trio.Event()
        self.ended = trio.Event()

    # -- the connection ------------------------------------------------------------------------

    async def live(self, stop: trio.Event) -> None:
        """The page, from its opening until ``stop``."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._every, RUNS_EVERY, self.load_runs)
            nursery.start_soon(self._every, GAUGES_EVERY, self.load_gauges)
            await self._connections(stop)
            nursery.cancel_scope.cancel()

    async def _connections(self, stop: trio.Event) -> None:
        while not stop.is_set():
            try:
                async with open_websocket_url(
                    self.url,
                    subprotocols=[SUBPROTOCOL],
                    extra_headers=[(b"origin", self.origin)],
                    max_message_size=64 * 1024 * 1024,
                    receive_buffer_size=65536,
                    connect_timeout=30,
                    disconnect_timeout=5,
                ) as ws:
                    try:
                        async with trio.open_nursery() as nursery:
                            conn = self.conn = _Connection(ws, nursery)
                            nursery.start_soon(self._read, conn)
                            nursery.start_soon(_cancel_when, stop, nursery.cancel_scope)
                    finally:
                        self._lost()
            except (ConnectionClosed, HandshakeError, OSError) as exc:
                self.closes.append(f"{type(exc).__name__}: {exc}")
            finally:
                self._lost()
            if stop.is_set():
                return
            self.reconnections += 1
            with trio.move_on_after(self.delay):
                await stop.wait()
            self.delay = min(self.delay * 2, RECONNECT_MAX)

    def _lost(self) -> None:
        """The connection is closing: its requests fail, nothing more starts on it."""
        if self.conn is not None:
            self.conn.lost()
        self.conn = None

    async def _read(self, conn: _Connection) -> None:
        try:
            while True:
                text = await conn.ws.get_message()
                self.chars += len(text)
                frame = json.loads(text)
                event = frame.get("event")
                if event is None:
                    self.frames["response"] += 1
                    waiter = conn.pending.pop(frame.get("id"), None)
                    if waiter is not None:
                        if frame.get("ok"):
                            waiter.result = frame.get("result")
                            if waiter.on_result is not None:
                                # before the next frame, as the promise's continuation does
                                waiter.on_result(waiter.result)
                        else:
                            waiter.error = str(frame.get("error", {}).get("code"))
                        waiter.done.set()
                    continue
                self.frames[event] += 1
                if event == "hello":
                    conn.hello = True
                    self.delay = RECONNECT_FIRST
                    self._refresh_all(conn)
                else:
                    self._on_event(frame)
        except ConnectionClosed as exc:
            reason = exc.reason
            self.closes.append(
                f"closed {getattr(reason, 'code', '?')} {getattr(reason, 'reason', '')}"
            )
        conn.nursery.cancel_scope.cancel()

    async def request(
        self, op: str, on_result: Callable[[Any], None] | None = None, **fields: Any
    ) -> Any:
        conn = self.conn
        if conn is None or not conn.hello:
            raise RequestFailed(None)
        ident = self.next_id
        self.next_id += 1
        waiter = conn.pending[ident] = _Waiter(on_result)
        self.requests[op] += 1
        began = trio.current_time()
        text = json.dumps({"v": 1, "id": ident, "op": op, **fields}, separators=(",", ":"))
        try:
            await conn.ws.send_message(text)
        except ConnectionClosed:
            raise RequestFailed(None) from None
        await waiter.done.wait()
        if waiter.error is not None:
            if waiter.error != "lost":
                self.errors[f"{op}: {waiter.error}"] += 1
            raise RequestFailed(waiter.error)
        self.latencies.setdefault(op, []).append(trio.current_time() - began)
        return waiter.result

    def _spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Start ``fn`` on the open connection (without one, its requests fail at once)."""
        conn = self.conn
        if conn is not None and conn.hello and not conn.nursery.cancel_scope.cancel_called:
            conn.nursery.start_soon(fn)

    async def _every(self, seconds: float, fn: Callable[[], Awaitable[None]]) -> None:
        """``setInterval(() => { if (conn.hello) fn(); }, seconds)``."""
        deadline = trio.current_time()
        while True:
            deadline += seconds
            await trio.sleep_until(deadline)
            self._spawn(fn)

    # -- what the page does ------------------------------------------------------------------

    def _refresh_all(self, conn: _Connection) -> None:
        conn.nursery.start_soon(self.load_runs)
        conn.nursery.start_soon(self.load_gauges)
        if self.selected is not None:
            conn.nursery.start_soon(self._resume)

    async def _resume(self) -> None:
        await self.subscribe()
        self._spawn(self.load_tree)
        self._spawn(self.load_detail)

    def _on_event(self, frame: dict[str, Any]) -> None:
        if frame.get("subscription") != self.subscription:
            return
        if frame["event"] == "envelopes":
            kept = len(self.received)
            for envelope in frame["envelopes"]:
                self._add(envelope)
            self.events.append((len(self.received) - kept, frame.get("skipped", 0)))
            self._schedule_tree()
        elif frame["event"] == "end":
            self.subscription = None
            self.end_status = frame.get("status")
            if self.end_status in FINISHED:
                self.ended.set()
            self._schedule_tree()

    def _add(self, envelope: dict[str, Any]) -> None:
        seq = envelope["seq"]
        if seq <= self.last_seq:
            self.duplicates += 1
            return
        self.last_seq = seq
        self.received.append(seq)
        self.envelopes += 1
        if not self.subtree and envelope.get("entity_id") != self.selected:
            self.foreign += 1

    def _schedule_tree(self) -> None:
        if self.tree_scheduled or self.nursery is None:
            return
        self.tree_scheduled = True
        self.nursery.start_soon(self._tree_later)

    async def _tree_later(self) -> None:
        await trio.sleep(TREE_EVERY)
        self.tree_scheduled = False
        self._spawn(self.load_tree)
        if self.detail is not None:
            self._spawn(self.load_detail)

    async def load_runs(self) -> None:
        try:
            result = await self.request("list", limit=PAGE_SIZE)
        except RequestFailed:
            return
        if self.selected is None and self.activity != ACTIVITY_POLL:
            for run in result["runs"]:
                if run["name"] == self.run_name:
                    self._spawn(functools.partial(self.select, run["id"]))
                    break

    async def load_gauges(self) -> None:
        try:
            await self.request("capacity")
        except RequestFailed:
            return

    async def select(self, run_id: str) -> None:
        if self.selected is not None:
            return  # one run, selected once
        self.selected = self.detail = run_id
        self.subscription, self.last_seq, self.received, self.duplicates = None, 0, [], 0
        self.events = []
        self.subtree = self.follow == FOLLOW_APP
        await self.subscribe()
        self._spawn(self.load_tree)
        self._spawn(self.load_detail)

    async def subscribe(self) -> None:
        if self.selected is None:
            return

        def subscribed(result: Any) -> None:
            self.subscription = result["subscription"]
            self.subscribed.set()

        try:
            await self.request(
                "subscribe",
                subscribed,
                entity_id=self.selected,
                after_seq=self.last_seq,
                subtree=self.subtree,
                interval=SAMPLE_INTERVAL,
                keep=SAMPLE_KEEP,
            )
        except RequestFailed:
            return

    async def load_tree(self) -> None:
        if self.selected is None or self.activity == ACTIVITY_SUBSCRIBE:
            return
        try:
            await self.request("tree", entity_id=self.selected, depth=1, max_children=TREE_CHILDREN)
        except RequestFailed:
            return

    async def load_detail(self) -> None:
        if self.detail is None or self.activity == ACTIVITY_SUBSCRIBE:
            return
        try:
            await self.request("get", entity_id=self.detail)
        except RequestFailed:
            return

    # -- the report --------------------------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        return {
            "frames": dict(self.frames),
            "envelopes": self.envelopes,
            "chars": self.chars,
            "requests": dict(self.requests),
        }

    def report(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "subtree": self.subtree,
            "seqs": self.received,
            "events": self.events,
            "duplicates": self.duplicates,
            "foreign": self.foreign,
            "end_status": self.end_status,
            "errors": dict(self.errors),
            "reconnections": self.reconnections,
            "closes": self.closes,
            "latencies": {op: sorted(values) for op, values in self.latencies.items()},
            **self.counts(),
        }


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _pages(options: dict[str, Any]) -> None:
    url, pages = options["url"], options["pages"]
    origin = "http://" + url.removeprefix("ws://")
    book = [
        Page(i, url, origin, options["run_name"], options["follow"], options["activity"])
        for i in range(pages)
    ]
    selecting = options["activity"] != ACTIVITY_POLL
    stop = trio.Event()
    marks: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        for page in book:
            nursery.start_soon(page.live, stop)
            await trio.sleep(options["open_over"] / pages)
        with trio.fail_after(options["ready_seconds"]):
            for page in book:
                if selecting:
                    await page.subscribed.wait()
        _say({"ready": True, "pid": os.getpid()})
        await _expect("go")
        marks["go"] = [page.counts() for page in book]
        cpu = _cpu()
        await _expect("stop")
        marks["cpu_seconds"] = _cpu() - cpu
        marks["stop"] = [page.counts() for page in book]
        with trio.move_on_after(options["end_seconds"]):
            for page in book:
                if selecting:
                    await page.ended.wait()
        stop.set()
    _say({"pages": [page.report() for page in book], "marks": marks})


# -- the driver --------------------------------------------------------------------------------


def _process(what: str, args: Sequence[str]) -> ModuleProcess:
    """A process of this module (see :class:`~benchmarks.harness.ModuleProcess`)."""
    return ModuleProcess("benchmarks.pages", what, args)


def run_bound(n: int) -> float:
    """How long one run may take before the repetition fails: 20 children a second, and at
    least two minutes."""
    return max(120.0, n / 20)


def run_once(
    pages: int,
    params: Params,
    follow: str = FOLLOW_APP,
    activity: str = ACTIVITY_ALL,
) -> dict[str, Any]:
    """One run: a fresh server process (and, with pages, a fresh process of pages), the run,
    what they report, and the checks of the store and of every page."""
    n = params["n"]
    with tempfile.TemporaryDirectory(prefix="sluiceway-bench-N-") as tmp:
        path = str(Path(tmp) / "pages.db")
        options = {"n": n, "concurrency": params["concurrency"], "path": path}
        load = os.getloadavg()[0]
        server = _process("the server process", ["serve", json.dumps(options)])
        browser: ModuleProcess | None = None
        try:
            hello = server.read_line(60)
            if pages:
                page_options = {
                    "url": hello["url"],
                    "run_name": RUN_NAME,
                    "pages": pages,
                    "follow": follow,
                    "activity": activity,
                    "open_over": params["open_over"],
                    "ready_seconds": 60 + params["open_over"],
                    "end_seconds": 60,
                }
                browser = _process("the pages' process", ["pages", json.dumps(page_options)])
                browser.read_line(90 + params["open_over"])
                browser.say("go")
            server.say("go")
            server.read_line(run_bound(n))
            report: dict[str, Any] = {}
            if browser is not None:
                browser.say("stop")
                report = browser.read_line(120)
                browser.finish(30)
            server.say("exit")
            measured = server.read_line(120)
            server.finish(60)
        finally:
            server.close()
            if browser is not None:
                browser.close()
        stored = verify_store(path, n)
    page_list = report.get("pages", [])
    checked = verify_pages(page_list, measured, pages, selecting=activity != ACTIVITY_POLL)
    return summarize_run(n, pages, measured, report, {**stored, **checked}, load)


# -- checks ------------------------------------------------------------------------------------


def _kind(body: str) -> str:
    envelope = json.loads(body)
    if envelope.get("type") == "STATUS":
        status = str(envelope.get("status"))
        if status == "STARTED":
            return f"STARTED#{envelope.get('metadata', {}).get('attempt')}"
        if status == "RUNNING":
            return f"RUNNING {envelope.get('message')}"
        return status
    if envelope.get("type") == "VALUE" and envelope.get("sub_type") == "return":
        return "VALUE"
    return str(envelope.get("type"))


def verify_store(path: str, n: int) -> dict[str, Any]:
    """The store after the run: the root COMPLETED once with its result and exactly its
    envelopes (STARTED, a RUNNING per child in order, VALUE, COMPLETED); ``n`` children,
    each once under it with its ``Calls`` edge, COMPLETED at attempt 1 with its result and
    exactly STARTED, VALUE, COMPLETED; no lease held; distinct seqs; integrity ok."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        entities = conn.execute(
            "SELECT id, parent_id, name, status, result, attempt, lease_owner FROM entities"
        ).fetchall()
        envelopes = conn.execute(
            "SELECT entity_id, body FROM envelopes ORDER BY entity_id, entity_seq"
        ).fetchall()
        count, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT seq) FROM envelopes"
        ).fetchone()
        edges = conn.execute("SELECT from_id, to_id, type FROM edges").fetchall()
    finally:
        conn.close()
    if integrity != [("ok",)]:
        raise BenchmarkError(f"PRAGMA integrity_check: {integrity[:5]}")
    roots = [row for row in entities if row[1] is None]
    if len(roots) != 1 or roots[0][2] != RUN_NAME:
        raise BenchmarkError(f"expected one root {RUN_NAME!r}, found {roots!r}")
    root_id, _, _, status, result, attempt, _ = roots[0]
    if status != "COMPLETED" or json.loads(result) != run_result(n) or attempt != 1:
        raise BenchmarkError(f"the root is {status} at attempt {attempt} with result {result}")
    held = [row[2] for row in entities if row[6] is not None]
    if held:
        raise BenchmarkError(f"{len(held)} leases still held after the run: {held[:5]}")
    by_entity: dict[str, list[str]] = {}
    for entity_id, body in envelopes:
        by_entity.setdefault(entity_id, []).append(_kind(body))
    expected_root = [
        "STARTED#1",
        *(f"RUNNING {progress_message(k, n)}" for k in range(1, n + 1)),
        "VALUE",
        "COMPLETED",
    ]
    kinds = by_entity.get(root_id, [])
    if kinds != expected_root:
        raise BenchmarkError(
            f"the root has {len(kinds)} envelopes, expected {len(expected_root)}: "
            f"{kinds[:3]} ... {kinds[-3:]}"
        )
    children = [row for row in entities if row[1] is not None]
    names = Counter(row[2] for row in children)
    if len(children) != n or set(names) != {child_name(i) for i in range(n)}:
        raise BenchmarkError(f"{len(children)} children stored for {n} ({len(names)} names)")
    for entity_id, parent_id, name, status, result, attempt, _ in children:
        i = int(name.removeprefix("child-"))
        if parent_id != root_id or status != "COMPLETED" or attempt != 1:
            raise BenchmarkError(f"{name} is {status} at attempt {attempt} under {parent_id}")
        if json.loads(result) != child_result(i):
            raise BenchmarkError(f"{name} returned {result}")
        if by_entity.get(entity_id) != ["STARTED#1", "VALUE", "COMPLETED"]:
            raise BenchmarkError(f"{name} has the envelopes {by_entity.get(entity_id)}")
    if count != distinct or count != 3 * n + len(expected_root):
        raise BenchmarkError(f"{count} envelopes stored ({distinct} seqs)")
    calls = {(from_id, kind) for from_id, _, kind in edges}
    if (
        len(edges) != n
        or calls != {(root_id, "Calls")}
        or {to_id for _, to_id, _ in edges} != {row[0] for row in children}
    ):
        raise BenchmarkError(f"{len(edges)} edges stored for {n} children: {calls}")
    return {"stored_children": len(children), "stored_envelopes": count, "integrity_check": "ok"}


def verify_pages(
    pages: Sequence[dict[str, Any]],
    measured: dict[str, Any],
    expected_pages: int,
    *,
    selecting: bool = True,
) -> dict[str, Any]:
    """Every page received exactly the envelopes the store holds for what it followed (the
    run's own with ``subtree`` false, else its subtree's: ``runtime.envelopes(root,
    subtree=...)``), in ``seq`` order, none twice and nothing else (checked as they came:
    ``duplicates``, ``foreign``), then the end event COMPLETED; no request of a page was
    refused."""
    if len(pages) != expected_pages:
        raise BenchmarkError(f"{len(pages)} pages reported, expected {expected_pages}")
    own, subtree = measured["own_seqs"], measured["subtree_seqs"]
    followed: Counter[str] = Counter()
    for page in pages:
        where = f"page {page['index']}"
        if page["errors"]:
            raise BenchmarkError(f"{where} had requests refused: {page['errors']}")
        if not selecting:
            continue
        followed["subtree" if page["subtree"] else "own"] += 1
        expected = subtree if page["subtree"] else own
        if page["duplicates"]:
            raise BenchmarkError(f"{where} received {page['duplicates']} envelopes twice")
        if page["foreign"]:
            raise BenchmarkError(f"{where} received {page['foreign']} envelopes of other entities")
        problem = sampled_problem(page["seqs"], page["events"], expected)
        if problem:
            raise BenchmarkError(f"{where}: {problem}")
        if page["end_status"] != "COMPLETED":
            raise BenchmarkError(f"{where} ended with {page['end_status']!r}")
    return {
        "pages_verified": len(pages),
        "pages_following_own": followed["own"],
        "pages_following_subtree": followed["subtree"],
    }


def sampled_problem(
    seqs: Sequence[int], events: Sequence[tuple[int, int] | list[int]], expected: Sequence[int]
) -> str | None:
    """What is wrong with what a sampled subscription delivered (``None``: nothing).

    ``seqs`` are the seqs received, ``events`` each ``envelopes`` event's ``(kept,
    skipped)``, ``expected`` the seqs the store holds for what was followed. Each event must
    account for the next ``kept + skipped`` envelopes of ``expected``: it holds ``kept`` of
    them in order, the newest among them, so that together the events cover ``expected``
    exactly, nothing twice and nothing left out unannounced."""
    if sum(kept for kept, _ in events) != len(seqs):
        return f"{len(seqs)} envelopes kept, but its events count {sum(k for k, _ in events)}"
    position = taken = 0
    for number, (kept, skipped) in enumerate(events):
        got = list(seqs[taken : taken + kept])
        span = list(expected[position : position + kept + skipped])
        if not got:
            return f"event {number} holds no envelope"
        if got[-1] != (span[-1] if span else None):
            return f"event {number} ends at seq {got[-1]}, not at the newest of its span"
        inside = iter(span)
        if not all(seq in inside for seq in got):  # a subsequence of its span, in order
            return f"event {number} holds seqs {got[:5]}... not all in its span, in order"
        position += kept + skipped
        taken += kept
    if position != len(expected):
        return (
            f"its events account for {position} envelopes (kept or skipped), the store holds "
            f"{len(expected)}"
        )
    return None


# -- what one run measured ---------------------------------------------------------------------


def _window(marks: dict[str, Any]) -> dict[str, Any]:
    """What the pages received and asked between the run's start and its end, all pages
    together (their counts when the driver said ``go`` and ``stop``)."""
    frames: Counter[str] = Counter()
    requests: Counter[str] = Counter()
    envelopes = chars = 0
    for before, after in zip(marks["go"], marks["stop"], strict=True):
        frames.update(Counter(after["frames"]) - Counter(before["frames"]))
        requests.update(Counter(after["requests"]) - Counter(before["requests"]))
        envelopes += after["envelopes"] - before["envelopes"]
        chars += after["chars"] - before["chars"]
    return {
        "frames": dict(frames),
        "requests": dict(requests),
        "envelopes": envelopes,
        "megabytes": chars / 1e6,
        "pages_process_cpu_seconds": marks["cpu_seconds"],
    }


def _latencies(pages: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The pages' requests' round trips by operation (milliseconds)."""
    by_op: dict[str, list[float]] = {}
    for page in pages:
        for op, values in page["latencies"].items():
            by_op.setdefault(op, []).extend(values)
    out = {}
    for op, values in sorted(by_op.items()):
        values.sort()
        out[op] = {
            "count": len(values),
            "p50_ms": 1000 * statistics.median(values),
            "p90_ms": 1000 * values[int(0.9 * (len(values) - 1))],
            "max_ms": 1000 * values[-1],
        }
    return out


def summarize_run(
    n: int,
    pages: int,
    measured: dict[str, Any],
    report: dict[str, Any],
    checked: dict[str, Any],
    load: float,
) -> dict[str, Any]:
    """The figures of one run (the seq lists left out)."""
    seconds = measured["seconds"]
    page_list = report.get("pages", [])
    window = _window(report["marks"]) if page_list else {}
    frames = window.get("frames", {})
    return {
        "pages": pages,
        "children_per_s": n / seconds,
        "seconds": seconds,
        "cpu_seconds": measured["cpu_seconds"],
        "trio_thread_cpu_seconds": measured["trio_thread_cpu_seconds"],
        "reads": measured["reads"],
        "reads_per_s": measured["reads"] / seconds,
        "page_reads": measured["page_reads"],
        "page_reads_per_s": measured["page_reads"] / seconds,
        "read_cpu_seconds": measured["read_cpu_seconds"],
        "page_read_cpu_seconds": measured["page_read_cpu_seconds"],
        "reads_by_source": measured["reads_by_source"],
        "store_writes": measured["store_writes"],
        "store_batches": measured["store_batches"],
        "frames_per_s": sum(frames.values()) / seconds,
        "envelope_frames_per_s": frames.get("envelopes", 0) / seconds,
        "envelopes_per_s": window.get("envelopes", 0) / seconds,
        "during_run": window,
        "run_envelopes": {
            "own": len(measured["own_seqs"]),
            "subtree": len(measured["subtree_seqs"]),
        },
        "skipped": sum(skipped for page in page_list for _, skipped in page["events"]),
        "reconnections": sum(page["reconnections"] for page in page_list),
        "closes": [close for page in page_list for close in page["closes"]][:10],
        "latencies": _latencies(page_list),
        "load_average_at_start": load,
        **{key: measured[key] for key in ("results", "bodies", "peak_concurrency", "held_max")},
        **checked,
    }


# -- the scenario -----------------------------------------------------------------------------

#: The runs of a repetition of the side with pages: (the key suffix of their metrics, how
#: the pages choose what to follow).
VARIANTS = (("", FOLLOW_APP), ("_own", FOLLOW_OWN))
#: The figures of each run that are metrics (the table's rows).
RUN_METRICS = ("children_per_s", "seconds", "cpu_seconds", "reads_per_s")


class OpenPages(Scenario):
    key = "N"
    title = "web pages open on a run: the server's load"
    baseline = (
        "the same server process and run with no page open (in this table the 'sluiceway' "
        "column is the side with the pages open, the 'asyncio' column the side with none)"
    )
    metrics = (
        Metric("children_per_s", "children/s, pages as app.js (higher is better)", "1/s", 0),
        Metric("seconds", "run, pages as app.js", "s"),
        Metric("cpu_seconds", "server CPU over the run, pages as app.js", "s", 2),
        Metric("reads_per_s", "store reads, pages as app.js", "1/s", 0),
        Metric(
            "children_per_s_own", "children/s, pages on the run's own (higher is better)", "1/s", 0
        ),
        Metric("seconds_own", "run, pages on the run's own", "s"),
        Metric("cpu_seconds_own", "server CPU over the run, pages on the run's own", "s", 2),
        Metric("reads_per_s_own", "store reads, pages on the run's own", "1/s", 0),
    )
    full_repeat = 3

    def __init__(self) -> None:
        self.repetitions = 0  # of the side with pages

    def params(self, quick: bool) -> dict[str, Any]:
        if quick:
            return {
                "n": QUICK_CHILDREN,
                "pages": QUICK_PAGES,
                "concurrency": CONCURRENCY,
                "open_over": 0.5,
            }
        return {"n": CHILDREN, "pages": PAGES, "concurrency": CONCURRENCY, "open_over": OPEN_OVER}

    def warm_up_params(self) -> dict[str, Any]:
        return {"n": 100, "pages": 2, "concurrency": CONCURRENCY, "open_over": 0.2}

    def describe(self, params: Params) -> str:
        return (
            f"one run of {params['n']:,} children (parallel_calls, concurrency "
            f"{params['concurrency']}, a status envelope of the root per finished child) in a "
            f"RuntimeServer process, {params['pages']} pages open on it (WebSocket clients "
            "doing what app.js does, in a process of their own) against none; twice: the pages "
            "as app.js (the whole subtree, sampled) and following "
            "the run's own envelopes"
        )

    def run(self, side: str, params: Params) -> Sample:
        metrics: dict[str, float] = {}
        if side == ASYNCIO:
            run = run_once(0, params)
            for suffix, _ in VARIANTS:
                metrics.update({f"{key}{suffix}": run[key] for key in RUN_METRICS})
            return Sample(metrics, {"none": run})
        info: dict[str, Any] = {}
        warnings: list[str] = []
        # The two runs with pages alternate which goes first, as the sides do.
        variants = VARIANTS if self.repetitions % 2 == 0 else VARIANTS[::-1]
        self.repetitions += 1
        for suffix, follow in variants:
            run = run_once(params["pages"], params, follow)
            metrics.update({f"{key}{suffix}": run[key] for key in RUN_METRICS})
            info[follow] = run
            if run["reconnections"]:
                warnings.append(
                    f"pages ({follow}) reconnected {run['reconnections']} times: {run['closes']}"
                )
        if warnings:
            info["warnings"] = warnings
        return Sample(metrics, info)

    def target(self, summary: Summary, params: Params) -> Target:
        app, own = ratio(summary, "children_per_s"), ratio(summary, "children_per_s_own")
        rates = [summary[key][SLUICEWAY].median for key in ("children_per_s", "children_per_s_own")]
        reads = [summary[key][SLUICEWAY].median for key in ("reads_per_s", "reads_per_s_own")]
        return Target(
            f"the run's throughput with {params['pages']} pages open >= {TARGET_RATIO:.2f}x "
            "its throughput with none (a drop under 10 %)",
            f"{rates[0]:,.0f} (pages as app.js) and {rates[1]:,.0f} (on the run's own) against "
            f"{summary['children_per_s'][ASYNCIO].median:,.0f} children/s: {app:.2f}x and "
            f"{own:.2f}x; store reads {reads[0]:,.0f} and {reads[1]:,.0f}/s against "
            f"{summary['reads_per_s'][ASYNCIO].median:,.0f}/s",
            app >= TARGET_RATIO and own >= TARGET_RATIO,
        )


# -- processes and diagnostics --------------------------------------------------------------------


def _one(argv: Sequence[str]) -> None:
    """``python -m benchmarks.pages one PAGES [N] [--own] [--poll | --subscribe]``: one
    verified run, its figures as JSON (the diagnostics of docs/benchmarks.rst)."""
    pages = int(argv[0])
    numbers = [arg for arg in argv[1:] if not arg.startswith("--")]
    params = {
        "n": int(numbers[0]) if numbers else CHILDREN,
        "concurrency": CONCURRENCY,
        "open_over": OPEN_OVER,
    }
    follow = FOLLOW_OWN if "--own" in argv else FOLLOW_APP
    activity = (
        ACTIVITY_POLL
        if "--poll" in argv
        else ACTIVITY_SUBSCRIBE
        if "--subscribe" in argv
        else ACTIVITY_ALL
    )
    print(json.dumps(run_once(pages, params, follow, activity), indent=1))


def main(argv: Sequence[str]) -> None:
    """``python -m benchmarks.pages serve|pages OPTIONS``: a process of one run (the driver
    starts them); ``python -m benchmarks.pages one ...``: see :func:`_one`."""
    what = argv[0] if argv else ""
    if what == "serve":
        trio.run(_serve, json.loads(argv[1]))
    elif what == "pages":
        trio.run(_pages, json.loads(argv[1]))
    elif what == "one":
        _one(argv[1:])
    else:
        raise SystemExit(
            "usage: python -m benchmarks.pages one PAGES [N] [--own] [--poll|--subscribe]"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
