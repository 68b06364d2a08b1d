"""The WebSocket server: serves a runtime and its application to progress clients."""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest

from .._errors import (
    EntityCancelledError,
    EntityNotFoundError,
)
from .._util import open_owned_nursery
from ..entities import EntityEnvelope, Runtime
from ..store import EntityRecord, EntityStatus
from ._app import Application
from ._cache import ReadCache
from ._connection import CLOSE_SECONDS, Connection
from ._front import ReplayStream, read_head, serve_page
from ._handshake import (
    FORBIDDEN_ORIGIN,
    SHUTTING_DOWN,
    UNAUTHORIZED,
    authorized,
    peer_of,
    subprotocol_of,
    wrap_server_stream,
)
from ._origin import OriginPolicy
from ._protocol import (
    CLOSE_GOING_AWAY,
    ErrorCode,
    ProtocolError,
    dumps,
)

log = logging.getLogger("sluiceway.server")

#: How many encoded envelopes the server keeps for its subscriptions.
_ENCODED_KEPT = 65536


@attrs.frozen
class ServerLimits:
    """Per-connection limits.

    Attributes:
        max_frame_bytes: the largest frame a client may send (in UTF-8 bytes); a larger one
            gets a ``frame_too_large`` error. A message over ``4 * max_frame_bytes + 1024``
            characters closes the connection with 1009 (the transport's own limit). The
            ``hello`` event tells clients this limit.
        queue_frames: how many frames may wait to be sent to a client before its
            subscriptions wait for it to read (the runs and the other clients go on: each
            subscription reads the store at its own pace). Responses and ``end`` events are
            queued even beyond it (``outgoing_frames`` in all).
        slow_consumer_seconds: a subscription that waits for room in the queue longer than
            this (the client reads too slowly to keep up, or not at all) makes the client a
            slow consumer: its connection is closed with code 4008, and it may reconnect and
            subscribe again from its last ``seq``.
        max_pending: requests of one connection in progress at once (``too_many_requests``
            beyond).
        max_subscriptions: subscriptions of one connection at once.
        batch_bytes: an ``envelopes`` event carries the envelopes a subscription has ready,
            until their JSON reaches this many characters (at least one envelope).
    """

    max_frame_bytes: int = 1024 * 1024
    queue_frames: int = 1024
    slow_consumer_seconds: float = 10.0
    max_pending: int = 64
    max_subscriptions: int = 256
    batch_bytes: int = 256 * 1024

    def __attrs_post_init__(self) -> None:
        for name in (
            "max_frame_bytes",
            "queue_frames",
            "max_pending",
            "max_subscriptions",
            "batch_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        seconds = self.slow_consumer_seconds
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 < seconds < float("inf")
        ):
            raise ValueError(f"slow_consumer_seconds must be a number > 0, got {seconds!r}")

    @property
    def outgoing_frames(self) -> int:
        """The capacity of a connection's outgoing queue: subscription frames, plus room for a
        response to every request in progress, an ``end`` per subscription and the rest."""
        return self.queue_frames + self.max_pending + 2 * self.max_subscriptions + 16


@attrs.frozen
class ServerAddress:
    """Where a server listens: its host, port and ``ws://`` URL."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """``ws://host:port``."""
        return f"ws://{self.host}:{self.port}"


class RuntimeServer:
    """Serves a :class:`~sluiceway.Runtime` and its :class:`Application` over WebSockets.

    ``await server.run(host, port)`` (usually through ``nursery.start``) listens until
    :meth:`shutdown` is called or the task is cancelled. A ``start`` is a durable submission:
    it is committed before the client is told ``started``, and the runtime's claim loop runs
    it (this server's, or any runtime's on the store, after a crash), so a client that
    disconnects does not stop it and a server restarted after a crash resumes its work by
    itself. Runs happen in the runtime's claim loop (:meth:`Runtime.working`); if it is not
    running, :meth:`run` runs it for as long as it serves.

    A browser page may connect only from the server's own origin or from one of
    ``allow_origins`` (full origins such as ``"https://app.example.com"``, or ``"*"`` for
    every origin); clients that send no ``Origin`` header (programs) are not concerned. See
    ``docs/protocol.rst`` for the exact rule.
    """

    def __init__(
        self,
        runtime: Runtime,
        app: Application,
        *,
        state: Any = None,
        token: str | None = None,
        limits: ServerLimits | None = None,
        allow_origins: Iterable[str] | None = None,
    ) -> None:
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string (or None for no authentication)")
        self._origins = OriginPolicy.of(allow_origins)
        #: The answers of ``get``, ``tree`` and ``list`` shared by every connection for half a
        #: second (many pages polling one run cost the store what one does), cleared by any
        #: write.
        self.reads = ReadCache(ttl=READ_CACHE_SECONDS)
        #: The origins whose pages may connect besides the server's own, normalised
        #: (``"*"``: every origin).
        self.allow_origins = self._origins.origins
        self.runtime = runtime
        self.app = app
        self.state = state
        self.token = token
        self.limits = ServerLimits() if limits is None else limits
        self.address: ServerAddress | None = None
        self._serving = False
        self._connections: set[Connection] = set()
        self._no_connections = trio.Event()
        self._no_connections.set()
        self._stopping = trio.Event()
        # The JSON of recent envelopes by seq: encoded once for all the subscribers.
        self._encoded: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._accepting = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        grace: float = 5.0,
        task_status: trio.TaskStatus[ServerAddress] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until :meth:`shutdown` (then return) or cancellation.

        On shutdown the server stops accepting connections, closes the open ones with code
        1001, stops claiming work, and lets the runs under way finish for up to ``grace``
        seconds. If it ran the runtime's claim loop itself, it then stops the runs still
        going (their leases are given back, nothing is half written: they are due again, and
        the next runtime on the store resumes them). Reports the listening address through
        ``task_status``.
        """
        async with contextlib.AsyncExitStack() as stack:
            work = self.runtime.claims
            if work is None:
                work = await stack.enter_async_context(self.runtime.working())
            self._serving = True
            try:
                async with open_owned_nursery() as listening:
                    listeners = await listening.start(
                        partial(trio.serve_tcp, self._handle_stream, port, host=host)
                    )
                    self.address = ServerAddress(host, listeners[0].socket.getsockname()[1])
                    self._accepting = True
                    log.info("serving %s on %s", self.app.name, self.address.url)
                    task_status.started(self.address)
                    await self._stopping.wait()
                    self._accepting = False
                    for connection in list(self._connections):
                        connection.close(CLOSE_GOING_AWAY, "the server is shutting down")
                    with trio.move_on_after(CLOSE_SECONDS):  # each closes within it
                        await self._no_connections.wait()
                    listening.cancel_scope.cancel()
            finally:
                self._serving = False
            await work.wind_down(grace)

    def encoded(self, envelope: EntityEnvelope) -> str:
        """The envelope's JSON, encoded once for every subscription that sends it."""
        text = self._encoded.get(envelope.seq)
        if text is None:
            text = dumps(envelope.to_dict())
            self._encoded[envelope.seq] = text
            if len(self._encoded) > _ENCODED_KEPT:
                self._encoded.popitem(last=False)
        return text

    def shutdown(self) -> None:
        """Ask :meth:`run` to stop (see there); idempotent."""
        self._stopping.set()

    async def start(
        self,
        ref: str,
        *,
        data: Mapping[str, Any] | None = None,
        expect: Mapping[str, Any] | None = None,
        generic: bool = False,
    ) -> dict[str, Any]:
        """What the ``start`` operation does: submit the entity (an id, or a root's name)
        durably unless it is running or finished, and answer once the submission is
        committed. Returns ``{"entity_id", "state"}``: state ``started`` (submitted: a claim
        loop runs it), ``running`` (in this runtime or another) or ``completed`` (with its
        ``result``). With ``data`` and ``expect`` (an endpoint starting a run), see
        :meth:`Runtime.start`: the data is merged in the same transaction as the submission,
        and only if ``expect`` holds.

        ``generic`` (the protocol's ``start`` operation, not an endpoint's ``ctx.start``)
        applies the application's ``startable``: an entity it leaves out is never submitted;
        the answer is ``completed`` or ``running`` if it completed or its run has begun (or
        was submitted by an endpoint), else a ``not_runnable`` error whose details say
        ``startable: false``.

        Raises:
            EntityNotFoundError, EntityCancelledError, EntityNotRunnableError.
            UnknownEntityTypeError: its type is not the application's.
            DataConflictError: ``expect`` did not hold.
            ProtocolError: ``shutting_down``; ``not_runnable`` (not startable).
        """
        if not self._serving or self._stopping.is_set():
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
        record = await self.resolve(ref)
        if record.status is EntityStatus.COMPLETED and expect is None:
            return {"entity_id": record.id, "state": "completed", "result": record.result}
        if record.status is EntityStatus.CANCELLED:
            raise EntityCancelledError(record.id, record.type, record.name)
        running = self.runtime.is_running(record.id) or self.runtime.held_elsewhere(record)
        if generic and not self.app.may_start(record):
            begun = running or record.runnable_at is not None or record.status.is_active
            if begun:  # submitted by an endpoint, running, or parked: follow it
                return {"entity_id": record.id, "state": "running"}
            if record.type in self.runtime.registry.runnable_names():  # else: as below
                raise ProtocolError(
                    ErrorCode.NOT_RUNNABLE,
                    f"{self.app.name} does not let start begin a run of {record.type} "
                    f"{record.name!r} ({record.status.value}): the application's endpoints "
                    "start it",
                    {"startable": False},
                )
        if running and data is None and expect is None:
            return {"entity_id": record.id, "state": "running"}
        submitted = await self.runtime.start(record.id, data=data, expect=expect)
        if submitted.status is EntityStatus.COMPLETED:
            return {"entity_id": record.id, "state": "completed", "result": submitted.result}
        return {"entity_id": record.id, "state": "running" if running else "started"}

    async def resolve(self, ref: str) -> EntityRecord:
        """The entity whose id is ``ref``, else the root entity named ``ref``.

        Raises:
            EntityNotFoundError: neither exists.
        """
        try:
            return await self.runtime.get(ref)
        except EntityNotFoundError:
            found = await self.runtime.store.find_entity(None, ref)
            if found is None:
                raise EntityNotFoundError(f"no entity has the id or root name {ref!r}") from None
            return found

    # -- connections -------------------------------------------------------------------------

    async def _handle_stream(self, stream: trio.SocketStream) -> None:
        """One TCP connection: the WebSocket handshake, then the client. The TCP stream is
        closed however it ends: after a refused handshake too, and at once when a closing
        client does not read its last frames in time."""
        peer = peer_of(stream)
        try:
            async with open_owned_nursery() as nursery:
                request: WebSocketRequest | None = None
                with trio.move_on_after(_HANDSHAKE_SECONDS):
                    head = await read_head(stream)
                    if not head.is_upgrade:
                        # Not a WebSocket: a file of the page (or an HTTP error), then close.
                        await serve_page(stream, head, peer)
                        return
                    request = await wrap_server_stream(
                        nursery,
                        ReplayStream(stream, head.received),
                        peer,
                        max_message_size=self.limits.max_frame_bytes * 4 + 1024,
                    )
                try:
                    if request is not None:
                        await self._handle(request, peer)
                finally:
                    nursery.cancel_scope.cancel()  # the connection's reader
        except Exception:  # one connection's failure never stops the server
            log.exception("a connection failed inside the server")
        finally:
            await stream.aclose()

    async def _handle(self, request: WebSocketRequest, peer: str) -> None:
        with contextlib.suppress(ConnectionClosed):  # the client left during the handshake
            await self._serve_connection(request, peer)

    async def _serve_connection(self, request: WebSocketRequest, peer: str) -> None:
        # The Origin first: a page of another site learns nothing, not even whether the server
        # is stopping or wants a token.
        origins = [v.decode("latin-1") for k, v in request.headers if k.lower() == b"origin"]
        # trio-websocket keeps the Host header only in wsproto's Request event, which
        # WebSocketRequest holds as _event (wsproto takes Host out of the headers).
        host: str | None = getattr(getattr(request, "_event", None), "host", None)
        listening = None if self.address is None else self.address.host
        if not self._origins.allows(origins, host, listening):
            log.warning(
                "refused a connection from %s: its Origin %s is not allowed (Host %s)",
                peer,
                ", ".join(repr(origin[:200]) for origin in origins),
                repr(host),
            )
            await request.reject(
                403,
                extra_headers=[(b"content-type", b"application/json")],
                body=FORBIDDEN_ORIGIN,
            )
            return
        if not self._accepting:
            await request.reject(
                503,
                extra_headers=[(b"content-type", b"application/json")],
                body=SHUTTING_DOWN,
            )
            return
        if self.token is not None and not authorized(request, self.token):
            await request.reject(
                401,
                extra_headers=[
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b'Bearer realm="sluiceway"'),
                ],
                body=UNAUTHORIZED,
            )
            return
        socket = await request.accept(subprotocol=subprotocol_of(request))
        connection = Connection(self, socket)
        if not self._connections:
            self._no_connections = trio.Event()
        self._connections.add(connection)
        try:
            if self._stopping.is_set():  # the server began to stop during the handshake
                connection.close(CLOSE_GOING_AWAY, "the server is shutting down")
            await connection.serve()
        finally:
            self._connections.discard(connection)
            if not self._connections:
                self._no_connections.set()


#: How long the answers of ``get``, ``tree`` and ``list`` are shared.
READ_CACHE_SECONDS = 0.5

#: How long a new connection may take to send its WebSocket handshake.
_HANDSHAKE_SECONDS = 30.0
