"""Scenario G: 200 WebSocket subscribers follow one run of 1,000 children.

Every subscriber must receive every envelope of the run's subtree, once, in ``seq`` order; the
metric is envelopes delivered per second: (subscribers x envelopes) / the time from the run's
start until the last subscriber has received the ``end`` event.

The run is scenario E's workload (``entities.py``) at 1,000 children: a parent entity fans out
its children through ``ctx.parallel_calls`` under ``CapacitySource(100)``, each child emits one
status envelope and returns a small dict, so the subtree's log holds 4 envelopes per child and 3
of the parent (4,003). Everything runs in one process on loopback (``127.0.0.1``, port 0), the
store file in a fresh temporary directory per repetition.

sluiceway side: a real :class:`~sluiceway.server.RuntimeServer` over ``open_runtime`` on a
``SqliteStore``, serving an :class:`~sluiceway.server.Application` with the two entity types
(default ``ServerLimits``). The root is created before the timer. Each of the 200 subscribers is
its own WebSocket connection, ``sluiceway.client.connect(url)`` then
``client.subscribe(root_id)``, all subscribed before the run starts. The timer starts just
before a 201st connection (the control client) sends the ``start`` request; the run then runs
in the server's nursery. The server sends a subscription's envelopes as ``envelopes`` events,
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
decoding every frame with ``json.loads``. Compression is off on both ends (trio-websocket has
none).

How many envelopes a frame carries depends on what is ready when a connection sends:
each subscriber counts the ``envelopes`` frames it receives (on sluiceway's side by wrapping
its client's handler of event frames), and the mean envelopes per frame and mean frame size
are reported (the size computed from the envelopes' JSON, which both sides encode alike).

Checks on every repetition of both sides: every subscriber received a strictly increasing
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
    Params,
    Sample,
    Scenario,
    Summary,
    Target,
    ratio,
    run_asyncio,
    run_trio,
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


def frame_stats(received: Sequence[Received], envelope_json: Sequence[str]) -> dict[str, float]:
    """The mean number of envelopes and the mean size in bytes (UTF-8) of the ``envelopes``
    frames the subscribers received, from the frames each counted on arrival and the JSON of
    the subtree's envelopes as both sides encode it (compact, the fields in the same order):
    a frame of k envelopes is its head, their JSON, k - 1 commas and ``]}``."""
    frames = sum(rec.frames for rec in received)
    if not frames:
        return {"envelopes_per_frame": float("nan"), "frame_bytes": float("nan")}
    json_bytes = sum(len(text.encode()) for text in envelope_json)
    total = sum(
        rec.frames * (len(envelopes_head(rec.subscription).encode()) + 1)
        + json_bytes
        + len(rec.seqs)
        for rec in received
    )
    return {
        "envelopes_per_frame": sum(len(rec.seqs) for rec in received) / frames,
        "frame_bytes": total / frames,
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
        async with client.subscribe(root_id) as subscription:
            assert subscription.number is not None
            rec.subscription = subscription.number
            task_status.started()
            async for envelope in subscription:
                rec.add(envelope.seq, envelope.entity_id, envelope.type, envelope.status)
            rec.end(subscription.status, None)
        stats["reconnections"] += client.reconnections


def _sluiceway(params: Params) -> Sample:
    n, limit, subscribers = params["n"], params["concurrency"], params["subscribers"]
    out: dict[str, Any] = {}
    with store_dir("G") as tmp:
        path = str(Path(tmp) / "entities.db")

        async def main() -> float:
            run = new_trio_run(n, limit)
            received = [Received(i) for i in range(subscribers)]
            stats = {"reconnections": 0}
            store = SqliteStore(path)
            try:
                async with open_runtime(store, ENTITY_TYPES) as runtime:
                    root = await runtime.create(BenchParent, {"n": n}, name=PARENT)
                    server = RuntimeServer(runtime, APP)
                    async with trio.open_nursery() as nursery:
                        address = await nursery.start(server.run)
                        with trio.move_on_after(time_bound(params)) as bound:
                            async with trio.open_nursery() as clients:
                                for rec in received:
                                    await clients.start(
                                        _trio_subscriber, address.url, root.id, rec, stats
                                    )
                                async with connect(address.url) as control:
                                    start = time.perf_counter()
                                    start_wall = time.time()
                                    reply = await control.start(root.id)
                        server.shutdown()
                    if bound.cancelled_caught:
                        raise timed_out(params)
                    record = await runtime.get(root.id)
                    envelope_json = [
                        _dumps(envelope.to_dict()) for envelope in await runtime.envelopes(root.id)
                    ]
            finally:
                set_run(None)
            if reply.get("state") != "started":
                raise BenchmarkError(f"the start request answered {reply!r}")
            if record.result != parent_result(n):
                raise BenchmarkError(f"the parent returned {record.result!r}")
            out["root_id"] = root.id
            out["received"] = received
            out["start_wall"] = start_wall
            out["info"] = {
                **run.results.verify(),
                **run.log.verify(range(n)),
                **check_pool_idle(run.pool),
                "reconnections": stats["reconnections"],
                **frame_stats(received, envelope_json),
            }
            return max(rec.ended_at or float("inf") for rec in received) - start

        elapsed, wall = run_trio(main)
        info = _verify(path, out, n, subscribers, wall)
        if info["reconnections"]:
            info["warnings"] = [
                f"{info['reconnections']} subscriber connections were dropped and resumed "
                "(slow consumer)"
            ]
        return _sample(elapsed, info, subscribers)


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


def _asyncio(params: Params) -> Sample:
    n, limit, subscribers = params["n"], params["concurrency"], params["subscribers"]
    out: dict[str, Any] = {}
    with store_dir("G") as tmp:
        path = str(Path(tmp) / "entities.db")

        async def main() -> float:
            run = new_asyncio_run(n, limit)
            received = [Received(i) for i in range(subscribers)]
            db = BroadcastDb(path, asyncio.get_running_loop())
            hub = db.hub = Hub(db, run)
            await db.open()
            try:
                root_id = db.root_id = hub.root_id = await asyncio_create_root(db, n)
                try:
                    async with (
                        asyncio.timeout(time_bound(params)),
                        serve(hub.handle, "127.0.0.1", 0, compression=None) as server,
                        asyncio.TaskGroup() as clients,
                    ):
                        port = server.sockets[0].getsockname()[1]
                        url = f"ws://127.0.0.1:{port}"
                        for rec in received:
                            subscribed = asyncio.Event()
                            clients.create_task(_asyncio_subscriber(url, root_id, rec, subscribed))
                            await subscribed.wait()
                        async with ws_connect(url, compression=None) as control:
                            start = time.perf_counter()
                            start_wall = time.time()
                            request = {"v": PROTOCOL, "id": 1, "op": "start", "entity_id": root_id}
                            await control.send(_dumps(request))
                            reply = json.loads(await control.recv())
                except TimeoutError:
                    raise timed_out(params) from None
                if hub.task is None:
                    raise BenchmarkError("the run never started")
                result = await hub.task
                stored, _ = await db.call(db.read_envelopes, 0)
            finally:
                if hub.task is not None and not hub.task.done():  # a failed repetition
                    hub.task.cancel()
                    await asyncio.gather(hub.task, return_exceptions=True)
                await db.close()
            if reply.get("result", {}).get("state") != "started":
                raise BenchmarkError(f"the start request answered {reply!r}")
            if result != parent_result(n):
                raise BenchmarkError(f"the parent returned {result!r}")
            if hub.dropped:
                raise BenchmarkError(f"{hub.dropped} subscribers were dropped (slow consumer)")
            out["root_id"] = root_id
            out["received"] = received
            out["start_wall"] = start_wall
            out["info"] = {
                **run.results.verify(),
                **run.log.verify(range(n)),
                **check_semaphore_idle(run.semaphore, limit),
                "reconnections": 0,
                **frame_stats(received, [text for _, text in stored]),
            }
            return max(rec.ended_at or float("inf") for rec in received) - start

        elapsed, wall = run_asyncio(main)
        info = _verify(path, out, n, subscribers, wall)
        return _sample(elapsed, info, subscribers)


# -- both ------------------------------------------------------------------------------------------


def _verify(
    path: str, out: dict[str, Any], n: int, subscribers: int, wall: float
) -> dict[str, Any]:
    info = {
        **out["info"],
        **verify_store(path, n),
        **verify_received(out["received"], path, out["root_id"], subscribers),
        "wall_seconds": wall,
    }
    conn = sqlite3.connect(path)
    try:
        (completed_at,) = conn.execute(
            "SELECT max(ts) FROM envelopes WHERE entity_id = ?", (out["root_id"],)
        ).fetchone()
    finally:
        conn.close()
    info["run_seconds"] = completed_at - out["start_wall"]
    return info


def _sample(elapsed: float, info: dict[str, Any], subscribers: int) -> Sample:
    delivered = subscribers * info["envelopes"]
    return Sample(
        {
            "seconds": elapsed,
            "delivered_per_s": delivered / elapsed,
            "us_per_delivery": elapsed / delivered * 1e6,
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
        "queued as one envelopes frame; websockets clients"
    )
    metrics = (
        Metric("seconds", "time to the last end", "s"),
        Metric("delivered_per_s", "envelopes delivered/s (higher is better)", "1/s", 0),
        Metric("us_per_delivery", "per delivered envelope", "us", 2),
        Metric("run_seconds", "run (start to root COMPLETED)", "s"),
        Metric("tail_seconds", "delivery after the run", "s"),
        Metric("envelopes_per_frame", "envelopes frame (mean)", "envelopes", 1),
        Metric("frame_bytes", "envelopes frame (mean)", "bytes", 0),
    )
    #: Repetitions of each side in a full run unless ``--repeat`` says otherwise: one
    #: repetition of the sluiceway side delivers 800,600 envelopes in 1.5 to 2 minutes on a
    #: 2-core machine (see docs/benchmarks.rst).
    full_repeat = 3

    def params(self, quick: bool) -> dict[str, Any]:
        if quick:
            return {"n": 100, "subscribers": 20, "concurrency": 100}
        return {"n": 1_000, "subscribers": 200, "concurrency": 100}

    def warm_up_params(self) -> dict[str, Any]:
        return {"n": 20, "subscribers": 5, "concurrency": 100}

    def describe(self, params: Params) -> str:
        return (
            f"{params['subscribers']} WebSocket subscribers (one connection each) on one run of "
            f"{params['n']:,} children (E's workload, concurrency {params['concurrency']}, "
            f"{4 * params['n'] + 3:,} envelopes), every subscriber gets every envelope in order"
        )

    def run(self, side: str, params: Params) -> Sample:
        limits = raise_fd_limit(params["subscribers"])
        sample = _sluiceway(params) if side == SLUICEWAY else _asyncio(params)
        sample.info.update(limits)
        return sample

    def target(self, summary: Summary, params: Params) -> Target:
        ours = summary["delivered_per_s"][SLUICEWAY].median
        theirs = summary["delivered_per_s"][ASYNCIO].median
        value = ratio(summary, "delivered_per_s")
        return Target(
            "sluiceway delivers >= 1.00x asyncio's envelopes/s",
            f"{ours:,.0f}/s, {value:.2f}x asyncio's {theirs:,.0f}/s",
            value >= 1.0,
        )
