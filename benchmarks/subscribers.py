"""Scenario G: 200 WebSocket subscribers follow one run of 1,000 children.

Every subscriber must receive every envelope of the run's subtree, once, in ``seq`` order; the
metric is envelopes delivered per second: (subscribers x envelopes) / the time from the run's
start until the last subscriber has received the ``end`` event.

The run is scenario E's workload (``entities.py``) at 1,000 children: a parent entity fans out
its children through ``ctx.parallel_calls`` under ``CapacitySource(100)``, each child emits one
status envelope and returns a small dict, so the subtree's log holds 4 envelopes per child and 3
of the parent (4,003). The store file is in a fresh temporary directory per repetition.

**Two fresh processes per repetition, on both sides**, as a real deployment has them: the
server process (``python -m benchmarks.subscribers serve SIDE ...``: the run and the server,
on ``127.0.0.1``, port 0) and the subscribers' process (``python -m benchmarks.subscribers
subscribe SIDE ...``: the 200 clients), driven over their standard input and output. Once
every subscriber is subscribed the driver says ``go`` to the server: its **timed region**
starts just before it starts the run (in the process: what the ``start`` operation does; the
baseline creates the run's task), and ends when the driver says ``stop``, right after the
subscribers' process has reported that all of them had their end event. The server's CPU time
over it (``time.process_time``: every thread, SQLite's and the executor's too) is the
scenario's measure: **envelopes delivered per server CPU second**, and the sluiceway side's over
the asyncio side's **of the same repetition** (the harness runs the two one after the other,
alternating which goes first), whose median is the target. The subscribers' process reports its
own CPU time (from all subscribed until all have left) and when each subscriber had its end
(``time.perf_counter``, the system's monotonic clock, which both processes share): the wall
time runs from the server's start to the last end.

sluiceway side: a real :class:`~sluiceway.server.RuntimeServer` over ``open_runtime`` on a
``SqliteStore``, serving an :class:`~sluiceway.server.Application` with the two entity types
(default ``ServerLimits``). The root is created before the timer. Each of the 200 subscribers is
its own WebSocket connection, ``sluiceway.client.connect(url)`` then
``client.subscribe(root_id, raw=True)`` (the envelopes as plain dicts, as the baseline's
clients have them), taken with ``subscription.batches()`` (a list per event of the server, as
the baseline's clients go through a frame's list), all subscribed before the run starts. The
run runs in the server's nursery. The server sends a subscription's envelopes as
``envelopes`` events,
``{"v":1,"event":"envelopes","subscription":N,"envelopes":[...]}``, each carrying what the
subscription has ready (up to ``ServerLimits.batch_bytes``, at least one), each envelope's JSON
encoded once for all the subscribers.

asyncio side (the baseline): the `websockets <https://websockets.readthedocs.io>`_ library
(asyncio-native) serving the same protocol frames for the same work: E's asyncio baseline
(``AsyncioDb``: stdlib ``sqlite3`` on one connection in a single-thread executor, a task per
child under ``asyncio.Semaphore(100)``, one transaction per step, same schema, WAL,
``synchronous=NORMAL``), extended so that after each committed step the executor thread reads
the envelopes just stored (``seq >`` the last one published, in ``seq`` order), encodes each
envelope's JSON once and hands them to the event loop with ``loop.call_soon_threadsafe`` (FIFO
from one thread, so in ``seq`` order); a hub puts them on every connection's ``asyncio.Queue``
(bounded: a full queue closes the connection with 4008 and fails the repetition). Each
connection's handler awaits the next queued envelope, takes whatever else is queued
(``get_nowait``, up to about the server's ``batch_bytes``) and sends them as one ``envelopes``
frame joining their JSON, with ``await websocket.send(text)``. A subscription registers its
queue, replays what the store holds after ``after_seq`` in frames of the same size (nothing
here: everyone subscribes before the start), then sends the queued envelopes above the
replay's last ``seq``, then the end event. Subscribers are ``websockets.connect`` clients
(asyncio, in their own process) decoding every frame with ``json.loads``. Compression is off
on both ends (trio-websocket has none).

How many envelopes a frame carries depends on what is ready when a connection sends:
each subscriber counts the ``envelopes`` frames it receives (on sluiceway's side by wrapping
its client's handler of event frames), and the mean envelopes per frame and mean frame size
are reported (the size computed from the envelopes' JSON, which both sides encode alike).

Checks on every repetition of both sides (the subscribers' process checks what they received
against the store file, the driver the rest): every subscriber received a strictly increasing
sequence of ``seq`` (checked on arrival), the end event with status COMPLETED, and exactly the
``seq`` list the store holds for the subtree afterwards, with the same entity, type and status
for each (a digest of them, compared with the store's); all subscribers' lists are therefore
equal. Plus scenario E's checks: the run's results, the bodies within the limit, the capacity
node idle, and the store file (:func:`~benchmarks.entities.verify_store`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import trio
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.version import version as websockets_version

from sluiceway import SqliteStore, open_runtime
from sluiceway.client import Client, connect
from sluiceway.server import Application, RuntimeServer, ServerLimits

from .entities import (
    ENTITY_TYPES,
    PARENT,
    AsyncioDb,
    AsyncioRun,
    BenchParent,
    asyncio_create_root,
    asyncio_parent,
    check_pool_idle,
    check_semaphore_idle,
    new_asyncio_run,
    new_trio_run,
    parent_result,
    set_run,
    store_dir,
    verify_store,
)
from .harness import (
    ASYNCIO,
    SLUICEWAY,
    BenchmarkError,
    Metric,
    ModuleProcess,
    Params,
    Sample,
    Scenario,
    Summary,
    Target,
    ratio,
)

#: The protocol version both sides speak (the frames are sluiceway's, version 1).
PROTOCOL = 1
#: Envelopes one connection may have waiting in the baseline: as many as the server lets
#: frames wait by default (1,024; each of the server's frames may hold many envelopes).
QUEUE_ENVELOPES = ServerLimits().queue_frames
#: About how many bytes of envelope JSON one ``envelopes`` frame carries at most, at least one
#: envelope (the server's default, 256 KiB).
BATCH_BYTES = ServerLimits().batch_bytes
#: The end statuses of a run.
FINISHED = ("COMPLETED", "FAILED", "CANCELLED")
#: The bound on one repetition's delivery: this many seconds per million envelopes delivered
#: (about five times what the slower side needs on a 2-core machine), and at least a minute.
SECONDS_PER_MILLION = 1_000.0
#: File descriptors needed per subscriber in one process: its client end, the server's end,
#: and some slack.
FDS_PER_SUBSCRIBER = 3

APP = Application("bench-subscribers", types=ENTITY_TYPES)


def _dumps(frame: object) -> str:
    """How sluiceway encodes a frame (compact JSON, UTF-8 as is)."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def time_bound(params: Params) -> float:
    """How long one repetition may take to deliver everything before it fails."""
    delivered: int = params["subscribers"] * (4 * params["n"] + 3)
    return max(60.0, delivered / 1e6 * SECONDS_PER_MILLION)


def timed_out(params: Params) -> BenchmarkError:
    return BenchmarkError(
        f"not every subscriber received its end event within {time_bound(params):g} s"
    )


def envelopes_head(subscription: int) -> str:
    """How an ``envelopes`` event starts, up to its first envelope's JSON; the frame is this,
    the envelopes' JSON joined by commas, and ``]}``."""
    return f'{{"v":{PROTOCOL},"event":"envelopes","subscription":{subscription},"envelopes":['


def raise_fd_limit(subscribers: int) -> dict[str, Any]:
    """Raise the soft limit of open files if the subscribers need more (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = FDS_PER_SUBSCRIBER * subscribers + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise BenchmarkError(
                f"{subscribers} subscribers need about {needed} open files; the hard limit is "
                f"{hard} (raise it with `ulimit -Hn`)"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        soft = needed
    return {"open_files_limit": soft}


# -- what a subscriber received (both sides) -------------------------------------------------------


class Received:
    """One subscriber's tally: the ``seq`` of every envelope in arrival order (strictly
    increasing, checked on arrival), a digest of (seq, entity, type, status), the
    ``envelopes`` frames that brought them, and the end."""

    __slots__ = (
        "digest",
        "end_seq",
        "end_status",
        "ended_at",
        "frames",
        "index",
        "last",
        "seqs",
        "subscription",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.subscription = 1  # the subscription's number on its connection
        self.frames = 0
        self.seqs: list[int] = []
        self.last = 0
        self.digest = 0
        self.end_status: str | None = None
        self.end_seq: int | None = None
        self.ended_at: float | None = None

    def add(self, seq: int, entity_id: str, kind: str, status: str | None) -> None:
        if seq <= self.last:
            raise BenchmarkError(
                f"subscriber {self.index} received seq {seq} after {self.last} (not strictly "
                "increasing)"
            )
        self.last = seq
        self.seqs.append(seq)
        self.digest = hash((self.digest, seq, entity_id, kind, status))

    def end(self, status: str | None, seq: int | None) -> None:
        self.ended_at = time.perf_counter()
        self.end_status = status
        self.end_seq = seq


def expected_log(path: str, root_id: str) -> tuple[list[int], int]:
    """The ``seq`` list of the root's subtree as stored, and its digest (see :class:`Received`).
    Two levels (the root and its children), as the workload has."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT v.seq, v.entity_id, v.body FROM envelopes AS v JOIN entities AS e"
            " ON e.id = v.entity_id WHERE e.id = ? OR e.parent_id = ? ORDER BY v.seq",
            (root_id, root_id),
        ).fetchall()
    finally:
        conn.close()
    digest = 0
    for seq, entity_id, body in rows:
        envelope = json.loads(body)
        digest = hash((digest, seq, entity_id, envelope["type"], envelope.get("status")))
    return [row[0] for row in rows], digest


def verify_received(
    received: Sequence[Received], path: str, root_id: str, subscribers: int
) -> dict[str, Any]:
    """Every subscriber got exactly the stored log of the subtree, in order, then its end."""
    seqs, digest = expected_log(path, root_id)
    if len(received) != subscribers:
        raise BenchmarkError(f"{len(received)} subscribers ran, expected {subscribers}")
    for rec in received:
        where = f"subscriber {rec.index}"
        if rec.end_status != "COMPLETED" or rec.ended_at is None:
            raise BenchmarkError(f"{where} ended with status {rec.end_status!r}")
        if rec.seqs != seqs:
            missing = sorted(set(seqs) - set(rec.seqs))[:5]
            extra = sorted(set(rec.seqs) - set(seqs))[:5]
            raise BenchmarkError(
                f"{where} received {len(rec.seqs)} envelopes, the store holds {len(seqs)} for "
                f"the subtree (missing {missing}, not in the store {extra})"
            )
        if rec.digest != digest:
            raise BenchmarkError(
                f"{where} received the right seqs but other envelopes (entity/type/status) "
                "than the store holds"
            )
        if rec.end_seq is not None and rec.end_seq != seqs[-1]:
            raise BenchmarkError(f"{where}: the end event says seq {rec.end_seq}, not {seqs[-1]}")
    return {"envelopes": len(seqs), "subscribers_verified": len(received)}


def frame_counts(received: Sequence[Received]) -> list[tuple[int, int, int]]:
    """What :func:`frame_stats` needs of each subscriber: its ``envelopes`` frames, its
    subscription's number and how many envelopes it received."""
    return [(rec.frames, rec.subscription, len(rec.seqs)) for rec in received]


def frame_stats(counts: Sequence[Sequence[int]], json_bytes: int) -> dict[str, float]:
    """The mean number of envelopes and the mean size in bytes (UTF-8) of the ``envelopes``
    frames the subscribers received, from the frames each counted on arrival
    (:func:`frame_counts`) and the size of the subtree's envelopes' JSON as both sides encode
    it (compact, the fields in the same order): a frame of k envelopes is its head, their
    JSON, k - 1 commas and ``]}``."""
    frames = sum(count[0] for count in counts)
    if not frames:
        return {"envelopes_per_frame": float("nan"), "frame_bytes": float("nan")}
    total = sum(
        frames_of * (len(envelopes_head(subscription).encode()) + 1) + json_bytes + envelopes
        for frames_of, subscription, envelopes in counts
    )
    return {
        "envelopes_per_frame": sum(count[2] for count in counts) / frames,
        "frame_bytes": total / frames,
    }


# -- the processes' side of the driver's conversation ----------------------------------------------


def _say(message: dict[str, Any]) -> None:
    """One JSON line to the driver."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _heard(word: str, line: str) -> None:
    if line.strip() != word:
        raise BenchmarkError(f"expected {word!r} from the driver, got {line!r}")


async def _trio_expect(word: str) -> None:
    """Wait (in a thread) for the driver's next line, which must be ``word``."""
    _heard(word, await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True))


async def _asyncio_expect(word: str) -> None:
    _heard(word, await asyncio.to_thread(sys.stdin.readline))


class _Timed:
    """The timed region of a process: wall time, the process's CPU time (every thread:
    SQLite's, the executor's) and the main thread's own."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.start_wall = time.time()
        self._cpu = time.process_time()
        self._thread = time.thread_time()

    def stop(self) -> dict[str, float]:
        return {
            "cpu_seconds": time.process_time() - self._cpu,
            "thread_seconds": time.thread_time() - self._thread,
            "wall_seconds": time.perf_counter() - self.start,
        }


# -- sluiceway -------------------------------------------------------------------------------------


def count_frames(client: Client, rec: Received) -> None:
    """Count the ``envelopes`` frames the client receives: its handler of event frames,
    wrapped (the benchmark's only look inside the client; one call more per frame)."""
    on_event = client._on_event

    async def counted(frame: dict[str, Any]) -> None:
        if frame.get("event") == "envelopes":
            rec.frames += 1
        await on_event(frame)

    client._on_event = counted  # type: ignore[method-assign]


async def _trio_subscriber(
    url: str,
    root_id: str,
    rec: Received,
    stats: dict[str, int],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with connect(url) as client:
        count_frames(client, rec)
        async with client.subscribe(root_id, raw=True) as subscription:
            assert subscription.number is not None
            rec.subscription = subscription.number
            task_status.started()
            async for batch in subscription.batches(max_size=BATCH_BYTES):
                for envelope in batch:  # as the baseline's clients go through a frame
                    rec.add(
                        envelope["seq"],
                        envelope["entity_id"],
                        envelope["type"],
                        envelope.get("status"),
                    )
            rec.end(subscription.status, None)
        stats["reconnections"] += client.reconnections


async def serve_sluiceway(path: str, n: int, limit: int) -> None:
    """The sluiceway server process: the run and the server (see the module's docstring)."""
    run = new_trio_run(n, limit)
    store = SqliteStore(path)
    try:
        async with open_runtime(store, ENTITY_TYPES) as runtime:
            root = await runtime.create(BenchParent, {"n": n}, name=PARENT)
            server = RuntimeServer(runtime, APP)
            async with trio.open_nursery() as nursery:
                address = await nursery.start(server.run)
                _say({"url": address.url, "root_id": root.id})
                await _trio_expect("go")
                timed = _Timed()
                reply = await server.start(root.id)  # what the start operation does
                _say({"start": timed.start, "start_wall": timed.start_wall})
                await _trio_expect("stop")
                _say(timed.stop())
                await _trio_expect("exit")
                server.shutdown()
            record = await runtime.get(root.id)
            json_bytes = sum(
                len(_dumps(envelope.to_dict()).encode())
                for envelope in await runtime.envelopes(root.id)
            )
    finally:
        set_run(None)
    if reply.get("state") != "started":
        raise BenchmarkError(f"the start answered {reply!r}")
    if record.result != parent_result(n):
        raise BenchmarkError(f"the parent returned {record.result!r}")
    info = {**run.results.verify(), **run.log.verify(range(n)), **check_pool_idle(run.pool)}
    _say({"info": info, "json_bytes": json_bytes})


async def subscribe_sluiceway(
    url: str, root_id: str, received: list[Received], bound_seconds: float
) -> dict[str, Any]:
    """The sluiceway subscribers' process: :func:`sluiceway.client.connect` and
    ``client.subscribe(root_id, raw=True)`` each; its timed region runs from all subscribed
    until all have left."""
    stats = {"reconnections": 0}
    timed: _Timed | None = None
    with trio.move_on_after(bound_seconds) as bound:
        async with trio.open_nursery() as clients:
            for rec in received:
                await clients.start(_trio_subscriber, url, root_id, rec, stats)
            _say({"subscribed": len(received)})
            timed = _Timed()
    if bound.cancelled_caught or timed is None:
        raise BenchmarkError("not every subscriber received its end event in time")
    return {**timed.stop(), "reconnections": stats["reconnections"]}


# -- asyncio: websockets, sqlite3 in a single-thread executor -------------------------------------


class Hub:
    """The baseline server's state: the run's database, the connections of its subscribers
    and the run's task."""

    def __init__(self, db: BroadcastDb, run: AsyncioRun) -> None:
        self.db = db
        self.run = run
        self.root_id = ""
        self.queues: set[asyncio.Queue[tuple[int, str]]] = set()
        self.task: asyncio.Task[Any] | None = None
        self.dropped = 0

    def publish(self, items: list[tuple[int, str]]) -> None:
        """Put envelopes, ``(seq, JSON)`` in ``seq`` order, on every subscriber's queue; a
        full queue drops its connection (its handler sees the marker, closes with 4008)."""
        for queue in list(self.queues):
            try:
                for item in items:
                    queue.put_nowait(item)
            except asyncio.QueueFull:
                self.queues.discard(queue)
                self.dropped += 1
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait((-1, SLOW_CONSUMER))

    async def handle(self, websocket: ServerConnection) -> None:
        """One connection: requests until a ``subscribe``, which it then serves to the end."""
        with contextlib.suppress(ConnectionClosed):
            await self._serve(websocket)

    async def _serve(self, websocket: ServerConnection) -> None:
        async for text in websocket:
            request = json.loads(text)
            op, ident = request.get("op"), request.get("id")
            if op == "start":
                if self.task is None:
                    self.task = asyncio.create_task(
                        asyncio_parent(self.db, self.run, request["entity_id"], resume=False)
                    )
                    state = "started"
                else:
                    state = "running"
                result = {"entity_id": request["entity_id"], "state": state}
                await websocket.send(_dumps(_result(ident, result)))
            elif op == "subscribe":
                await self.subscribe(websocket, ident, request["entity_id"], request["after_seq"])
                return
            else:
                error = {"code": "unknown_op", "message": f"unknown op {op!r}"}
                await websocket.send(
                    _dumps({"v": PROTOCOL, "id": ident, "ok": False, "error": error})
                )

    async def subscribe(
        self, websocket: ServerConnection, ident: object, entity_id: str, after_seq: int
    ) -> None:
        """Replay what the store holds after ``after_seq``, then send what is queued above
        it: whatever is ready in one frame (up to :data:`BATCH_BYTES`), then the end."""
        if entity_id != self.root_id:
            raise BenchmarkError(f"a subscription to {entity_id!r}, not the run's root")
        queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue(QUEUE_ENVELOPES)
        self.queues.add(queue)
        try:
            replay, status = await self.db.call(self.db.replay, after_seq)
            await websocket.send(_dumps(_result(ident, {"subscription": 1})))
            position = replay[-1][0] if replay else after_seq
            for parts in batches(text for _, text in replay):
                await websocket.send(envelopes_frame(1, parts))
            while status not in FINISHED:
                parts = []
                size = 0
                seq, text = await queue.get()
                while True:  # this item, then whatever else is queued
                    if seq < 0:
                        if text == SLOW_CONSUMER:
                            await websocket.close(4008, "slow consumer")
                            return
                        status = text
                    elif seq > position:
                        parts.append(text)
                        size += len(text)
                        position = seq
                    if size >= BATCH_BYTES or queue.empty():
                        break
                    seq, text = queue.get_nowait()
                if parts:
                    await websocket.send(envelopes_frame(1, parts))
            end = {"v": PROTOCOL, "event": "end", "subscription": 1, "status": status}
            await websocket.send(_dumps({**end, "seq": position}))
        finally:
            self.queues.discard(queue)


#: The marker a dropped connection's handler finds on its queue.
SLOW_CONSUMER = "slow consumer"


def envelopes_frame(subscription: int, parts: Sequence[str]) -> str:
    """An ``envelopes`` event from its envelopes' JSON (each encoded once)."""
    return envelopes_head(subscription) + ",".join(parts) + "]}"


def batches(parts: Iterable[str]) -> Iterator[list[str]]:
    """Envelope JSONs in frames of up to about :data:`BATCH_BYTES` (at least one each)."""
    batch: list[str] = []
    size = 0
    for text in parts:
        batch.append(text)
        size += len(text)
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _result(ident: object, result: object) -> dict[str, Any]:
    return {"v": PROTOCOL, "id": ident, "ok": True, "result": result}


class BroadcastDb(AsyncioDb):
    """E's baseline storage, publishing what every step stored: after the step's commit, the
    executor thread reads the envelopes stored since the last ones published (one indexed
    query), encodes each one's JSON once and hands them to the loop in ``seq`` order."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(path)
        self.loop = loop
        self.hub: Hub | None = None
        self.root_id = ""
        self.published = 0

    def read_envelopes(self, after_seq: int) -> tuple[list[tuple[int, str]], int]:
        """The subtree's envelopes after ``after_seq`` as ``(seq, JSON)``, in ``seq`` order,
        and the last ``seq`` read."""
        rows = self.conn.execute(
            "SELECT v.seq, v.entity_id, v.entity_seq, v.ts, v.body, e.type, e.name"
            " FROM envelopes AS v JOIN entities AS e ON e.id = v.entity_id"
            " WHERE v.seq > ? AND (e.id = ? OR e.parent_id = ?) ORDER BY v.seq",
            (after_seq, self.root_id, self.root_id),
        ).fetchall()
        items = []
        for seq, entity_id, entity_seq, ts, body, type_name, name in rows:
            fields = json.loads(body)
            envelope = {
                "type": fields.pop("type"),
                "entity_id": entity_id,
                "entity_type": type_name,
                "entity_name": name,
                "seq": seq,
                "entity_seq": entity_seq,
                "ts": ts,
                **fields,
            }
            items.append((seq, _dumps(envelope)))
        return items, (rows[-1][0] if rows else after_seq)

    def _publish(self) -> None:
        items, self.published = self.read_envelopes(self.published)
        if items:
            assert self.hub is not None
            self.loop.call_soon_threadsafe(self.hub.publish, items)

    def _publish_end(self, entity_id: str) -> None:
        if entity_id == self.root_id:
            assert self.hub is not None
            self.loop.call_soon_threadsafe(self.hub.publish, [(-1, "COMPLETED")])

    def replay(self, after_seq: int) -> tuple[list[tuple[int, str]], str]:
        """What a new subscription replays: the stored envelopes after ``after_seq`` and the
        root's status when they were read."""
        items, _ = self.read_envelopes(after_seq)
        (status,) = self.conn.execute(
            "SELECT status FROM entities WHERE id = ?", (self.root_id,)
        ).fetchone()
        return items, status

    def _claim(self, entity_id: str) -> int:
        attempt = super()._claim(entity_id)
        self._publish()
        return attempt

    def _append(self, entity_id: str, body: str) -> None:
        super()._append(entity_id, body)
        self._publish()

    def _finish(self, entity_id: str, result: str, bodies: Sequence[str]) -> None:
        super()._finish(entity_id, result, bodies)
        self._publish()
        self._publish_end(entity_id)


async def _asyncio_subscriber(
    url: str, root_id: str, rec: Received, subscribed: asyncio.Event
) -> None:
    async with ws_connect(url, compression=None) as websocket:
        request = {"v": PROTOCOL, "id": 1, "op": "subscribe", "entity_id": root_id, "after_seq": 0}
        await websocket.send(_dumps(request))
        reply = json.loads(await websocket.recv())
        if not reply.get("ok"):
            raise BenchmarkError(f"subscriber {rec.index}: the subscription failed: {reply!r}")
        rec.subscription = reply["result"]["subscription"]
        subscribed.set()
        async for text in websocket:
            frame = json.loads(text)
            event = frame.get("event")
            if event == "envelopes":
                rec.frames += 1
                for envelope in frame["envelopes"]:
                    rec.add(
                        envelope["seq"],
                        envelope["entity_id"],
                        envelope["type"],
                        envelope.get("status"),
                    )
            elif event == "end":
                rec.end(frame["status"], frame["seq"])
                return
    raise BenchmarkError(f"subscriber {rec.index}: the connection closed before the end event")


async def serve_asyncio(path: str, n: int, limit: int) -> None:
    """The baseline server process: the run and the websockets server."""
    run = new_asyncio_run(n, limit)
    db = BroadcastDb(path, asyncio.get_running_loop())
    hub = db.hub = Hub(db, run)
    await db.open()
    try:
        root_id = db.root_id = hub.root_id = await asyncio_create_root(db, n)
        async with serve(hub.handle, "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            _say({"url": f"ws://127.0.0.1:{port}", "root_id": root_id})
            await _asyncio_expect("go")
            timed = _Timed()
            hub.task = asyncio.create_task(asyncio_parent(db, run, root_id, resume=False))
            _say({"start": timed.start, "start_wall": timed.start_wall})
            await _asyncio_expect("stop")
            _say(timed.stop())
            await _asyncio_expect("exit")
        result = await hub.task
        stored, _ = await db.call(db.read_envelopes, 0)
    finally:
        if hub.task is not None and not hub.task.done():  # a failed repetition
            hub.task.cancel()
            await asyncio.gather(hub.task, return_exceptions=True)
        await db.close()
    if result != parent_result(n):
        raise BenchmarkError(f"the parent returned {result!r}")
    if hub.dropped:
        raise BenchmarkError(f"{hub.dropped} subscribers were dropped (slow consumer)")
    info = {
        **run.results.verify(),
        **run.log.verify(range(n)),
        **check_semaphore_idle(run.semaphore, limit),
    }
    _say({"info": info, "json_bytes": sum(len(text.encode()) for _, text in stored)})


async def subscribe_asyncio(
    url: str, root_id: str, received: list[Received], bound_seconds: float
) -> dict[str, Any]:
    """The baseline subscribers' process: ``websockets.connect`` clients."""
    timed: _Timed | None = None
    try:
        async with asyncio.timeout(bound_seconds), asyncio.TaskGroup() as clients:
            for rec in received:
                subscribed = asyncio.Event()
                clients.create_task(_asyncio_subscriber(url, root_id, rec, subscribed))
                await subscribed.wait()
            _say({"subscribed": len(received)})
            timed = _Timed()
    except TimeoutError:
        raise BenchmarkError("not every subscriber received its end event in time") from None
    assert timed is not None
    return {**timed.stop(), "reconnections": 0}


# -- the processes ---------------------------------------------------------------------------------


def serve_main(side: str, path: str, n: int, limit: int) -> None:
    """``python -m benchmarks.subscribers serve SIDE PATH N CONCURRENCY``: a server process.
    It says its URL and the root's id, starts the run on ``go`` (the timed region starts),
    says its CPU time on ``stop``, and on ``exit`` shuts down, checks the run and reports."""
    raise_fd_limit(0)
    if side == SLUICEWAY:
        trio.run(serve_sluiceway, path, n, limit)
    else:
        asyncio.run(serve_asyncio(path, n, limit))


def subscribe_main(
    side: str, url: str, root_id: str, subscribers: int, path: str, bound_seconds: float
) -> None:
    """``python -m benchmarks.subscribers subscribe SIDE URL ROOT_ID SUBSCRIBERS PATH
    SECONDS``: the subscribers' process. It says when all are subscribed, then, once all
    have their end event and have left, what they received, checked against the store."""
    raise_fd_limit(subscribers)
    received = [Received(i) for i in range(subscribers)]
    if side == SLUICEWAY:
        report = trio.run(subscribe_sluiceway, url, root_id, received, bound_seconds)
    else:
        report = asyncio.run(subscribe_asyncio(url, root_id, received, bound_seconds))
    report["ended"] = max(rec.ended_at or float("inf") for rec in received)
    report["frames"] = frame_counts(received)
    report["info"] = verify_received(received, path, root_id, subscribers)
    _say(report)


def _process(what: str, args: Sequence[str]) -> ModuleProcess:
    """A process of this module (see :class:`~benchmarks.harness.ModuleProcess`)."""
    return ModuleProcess("benchmarks.subscribers", what, args)


#: How long a process may take to start, to say it is ready, or to finish once told.
STEP_SECONDS = 120.0


def run_side(side: str, params: Params) -> Sample:
    """One repetition of ``side``: a fresh server process and a fresh subscribers' process,
    the run, their reports, and the checks."""
    n, limit, subscribers = params["n"], params["concurrency"], params["subscribers"]
    bound = time_bound(params)
    with store_dir("G") as tmp:
        path = str(Path(tmp) / "entities.db")
        server = _process(f"the {side} server", ["serve", side, path, str(n), str(limit)])
        try:
            address = server.read_line(STEP_SECONDS)
            clients = _process(
                f"the {side} subscribers",
                [
                    "subscribe",
                    side,
                    address["url"],
                    address["root_id"],
                    str(subscribers),
                    path,
                    str(bound),
                ],
            )
            try:
                clients.read_line(STEP_SECONDS)  # all subscribed
                server.say("go")
                started = server.read_line(STEP_SECONDS)
                received = clients.read_line(bound + STEP_SECONDS)
                server.say("stop")
                timed = server.read_line(STEP_SECONDS)
                clients.finish(STEP_SECONDS)
            finally:
                clients.close()
            server.say("exit")
            report = server.read_line(STEP_SECONDS)
            server.finish(STEP_SECONDS)
        finally:
            server.close()
        info = {
            **report["info"],
            **verify_store(path, n),
            **received["info"],
            **frame_stats(received["frames"], report["json_bytes"]),
            "reconnections": received["reconnections"],
            "server_cpu_seconds": timed["cpu_seconds"],
            "server_thread_seconds": timed["thread_seconds"],
            "clients_cpu_seconds": received["cpu_seconds"],
            "run_seconds": _completed_at(path, address["root_id"]) - started["start_wall"],
        }
    if info["reconnections"]:
        info["warnings"] = [
            f"{info['reconnections']} subscriber connections were dropped and resumed "
            "(slow consumer)"
        ]
    return _sample(received["ended"] - started["start"], info, subscribers)


def _completed_at(path: str, root_id: str) -> float:
    """When the root's last envelope (COMPLETED) was stored, by its timestamp."""
    conn = sqlite3.connect(path)
    try:
        (completed_at,) = conn.execute(
            "SELECT max(ts) FROM envelopes WHERE entity_id = ?", (root_id,)
        ).fetchone()
    finally:
        conn.close()
    return float(completed_at)


def _sample(elapsed: float, info: dict[str, Any], subscribers: int) -> Sample:
    delivered = subscribers * info["envelopes"]
    server_cpu = info["server_cpu_seconds"]
    return Sample(
        {
            "delivered_per_cpu_s": delivered / server_cpu,
            "x_asyncio": float("nan"),  # paired with the other side's (SubscriberFanout.run)
            "server_cpu_us": server_cpu / delivered * 1e6,
            "clients_cpu_us": info["clients_cpu_seconds"] / delivered * 1e6,
            "seconds": elapsed,
            "delivered_per_s": delivered / elapsed,
            "run_seconds": info["run_seconds"],
            "tail_seconds": elapsed - info["run_seconds"],
            "envelopes_per_frame": info["envelopes_per_frame"],
            "frame_bytes": info["frame_bytes"],
        },
        {**info, "delivered": delivered},
    )


class SubscriberFanout(Scenario):
    key = "G"
    title = "WebSocket subscribers following one entity run"
    baseline = (
        f"websockets {websockets_version} server (asyncio), E's sqlite3 baseline "
        "(one connection in a single-thread executor, a transaction per step, WAL, "
        "synchronous=NORMAL) publishing each committed step's envelopes (each one's JSON "
        "encoded once) to a bounded asyncio.Queue per connection, whose handler sends what is "
        "queued as one envelopes frame; websockets clients in a process of their own"
    )
    metrics = (
        Metric(
            "delivered_per_cpu_s",
            "envelopes delivered per server CPU s (higher is better)",
            "1/s",
            0,
        ),
        Metric("x_asyncio", "that, x asyncio's, paired (higher is better)", "x", 2),
        Metric("server_cpu_us", "server CPU per delivered envelope", "us", 2),
        Metric("clients_cpu_us", "subscribers' CPU per delivered envelope", "us", 2),
        Metric("seconds", "time to the last end", "s"),
        Metric("delivered_per_s", "envelopes delivered/s (higher is better)", "1/s", 0),
        Metric("run_seconds", "run (start to root COMPLETED)", "s"),
        Metric("tail_seconds", "delivery after the run", "s"),
        Metric("envelopes_per_frame", "envelopes frame (mean)", "envelopes", 1),
        Metric("frame_bytes", "envelopes frame (mean)", "bytes", 0),
    )
    #: Repetitions of each side in a full run unless ``--repeat`` says otherwise (see
    #: docs/benchmarks.rst for how long they take).
    full_repeat = 3

    def __init__(self) -> None:
        self._unpaired: dict[str, Sample] = {}

    def params(self, quick: bool) -> dict[str, Any]:
        if quick:
            return {"n": 100, "subscribers": 20, "concurrency": 100}
        return {"n": 1_000, "subscribers": 200, "concurrency": 100}

    def warm_up_params(self) -> dict[str, Any]:
        return {"n": 20, "subscribers": 5, "concurrency": 100}

    def describe(self, params: Params) -> str:
        return (
            f"{params['subscribers']} WebSocket subscribers (one connection each, in a process "
            f"of their own) on one run of {params['n']:,} children (E's workload, concurrency "
            f"{params['concurrency']}, {4 * params['n'] + 3:,} envelopes), every subscriber "
            "gets every envelope in order"
        )

    def run(self, side: str, params: Params) -> Sample:
        sample = run_side(side, params)
        if params != self.warm_up_params():
            self._pair(side, sample)
        return sample

    def _pair(self, side: str, sample: Sample) -> None:
        """Pair this repetition's two sides (the harness runs them one after the other): the
        sluiceway side's ``x_asyncio`` is its deliveries per server CPU second over the
        asyncio side's of the same repetition; the asyncio side's is 1."""
        other = ASYNCIO if side == SLUICEWAY else SLUICEWAY
        partner = self._unpaired.pop(other, None)
        if partner is None:
            self._unpaired[side] = sample
            return
        ours, theirs = (sample, partner) if side == SLUICEWAY else (partner, sample)
        key = "delivered_per_cpu_s"
        ours.metrics["x_asyncio"] = ours.metrics[key] / theirs.metrics[key]
        theirs.metrics["x_asyncio"] = 1.0

    def target(self, summary: Summary, params: Params) -> Target:
        paired = summary["x_asyncio"][SLUICEWAY]
        ours = summary["delivered_per_cpu_s"][SLUICEWAY].median
        theirs = summary["delivered_per_cpu_s"][ASYNCIO].median
        wall = ratio(summary, "delivered_per_s")
        return Target(
            "sluiceway delivers >= 1.00x asyncio's envelopes per server CPU second (paired median)",
            f"{paired.median:.2f}x ({paired.low:.2f}-{paired.high:.2f}): {ours:,.0f} against "
            f"{theirs:,.0f} per CPU s; wall clock {wall:.2f}x",
            paired.median >= 1.0,
        )


def main(argv: Sequence[str]) -> None:
    if len(argv) == 5 and argv[0] == "serve" and argv[1] in (SLUICEWAY, ASYNCIO):
        serve_main(argv[1], argv[2], int(argv[3]), int(argv[4]))
    elif len(argv) == 7 and argv[0] == "subscribe" and argv[1] in (SLUICEWAY, ASYNCIO):
        subscribe_main(argv[1], argv[2], argv[3], int(argv[4]), argv[5], float(argv[6]))
    else:
        sys.exit(
            "usage: python -m benchmarks.subscribers serve SIDE PATH N CONCURRENCY\n"
            "       python -m benchmarks.subscribers subscribe SIDE URL ROOT_ID SUBSCRIBERS "
            "PATH SECONDS\n(SIDE: sluiceway or asyncio)"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
