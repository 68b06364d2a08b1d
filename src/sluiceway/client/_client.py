"""An async client (trio) for the sluiceway WebSocket server, reconnecting with resume."""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import math
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, Literal, TypeVar, overload

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from .._errors import SluicewayError
from .._util import open_owned_nursery
from ..entities import EntityEnvelope
from ..server._protocol import MAX_INTERVAL, MAX_KEEP, PROTOCOL_VERSION, dumps

log = logging.getLogger("sluiceway.client")

#: What a subscription yields: :class:`~sluiceway.EntityEnvelope` objects, or with
#: ``raw=True`` the envelopes as the server sent them (plain dicts).
Item = TypeVar("Item", EntityEnvelope, dict[str, Any])


class ServerError(SluicewayError):
    """The server answered a request with an error: its ``code`` (see the protocol's error
    codes), ``message`` and ``details``."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details


class ConnectionLostError(SluicewayError):
    """The connection to the server was lost (and could not be restored in time, or a request
    was in flight when it dropped: it may or may not have been carried out)."""


class ConnectionRefusedByServerError(ConnectionLostError):
    """The server answered the WebSocket handshake with an HTTP error instead: ``status``
    (401 without the right bearer token, 403 for a browser page of another origin, 503 while
    it shuts down), and the ``code`` and ``message`` of its JSON body when it has one."""

    def __init__(self, url: str, status: int, code: str | None, message: str | None) -> None:
        reason = _REASONS.get(status, "refused")
        detail = ": ".join(part for part in (code, message) if part)
        super().__init__(
            f"the server at {url} refused the connection: HTTP {status} {reason}"
            + (f" ({detail})" if detail else "")
        )
        self.url = url
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def of(cls, url: str, rejected: ConnectionRejected) -> ConnectionRefusedByServerError:
        code = message = None
        try:
            error = json.loads(rejected.body or b"")["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, TypeError, KeyError):
            text = (rejected.body or b"").decode("utf-8", "replace").strip()
            message = text[:200] or None
        return cls(url, rejected.status_code, code, message)


_REASONS = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    426: "upgrade required",
    503: "service unavailable",
}


#: How long opening a connection (TCP and the WebSocket handshake) may take.
_CONNECT_SECONDS = 30.0
#: How long closing a connection may take.
_CLOSE_SECONDS = 5.0
#: The most the client reads from its connection at once.
_RECEIVE_BYTES = 64 * 1024


@attrs.define(eq=False)
class _Pending:
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None
    #: Called by the reader with the result as it arrives, before it reads the next frame.
    on_result: Callable[[Any], None] | None = None


class Subscription(Generic[Item]):
    """The envelopes of one subscription: ``async for envelope in subscription``.

    Iteration gives :class:`~sluiceway.EntityEnvelope` objects, or with
    ``client.subscribe(..., raw=True)`` each envelope as the server sent it: a plain dict with
    the protocol's fields (``type``, ``entity_id``, ``seq``...; see ``docs/protocol.rst``),
    decoded from JSON and nothing more.

    Iteration ends after the run's end (``status`` then says how it ended), or raises
    :class:`ConnectionLostError` if the connection could not be restored (or
    :class:`ServerError` if the server could not go on streaming). After a reconnection the
    subscription resumes from ``last_seq``: nothing is missed, nothing is seen twice.

    A sampled subscription (``interval``, ``keep``) gets only some of the envelopes: the
    server counts the others, and ``skipped`` adds them up. The envelopes it gave and
    ``skipped`` account for every envelope up to the last one it gave; a reconnection asks for
    the same ``interval`` and ``keep`` again.
    """

    def __init__(
        self,
        entity_id: str,
        after_seq: int,
        subtree: bool,
        buffer: int,
        *,
        raw: bool = False,
        interval: float | None = None,
        keep: int | None = None,
    ) -> None:
        self.entity_id = entity_id
        self.subtree = subtree
        self.raw = raw
        #: At most one ``envelopes`` event per this many seconds (``None``: the server's
        #: default, as they come).
        self.interval = interval
        #: The most recent envelopes an event keeps (``None``: every envelope).
        self.keep = keep
        self.last_seq = after_seq
        #: How many envelopes the server left out before the envelopes taken so far (by
        #: iteration or by batches); 0 unless ``keep`` is set.
        self.skipped = 0
        self.status: str | None = None  # the entity's status when the subscription ended
        self.number: int | None = None  # the server's number for it on the current connection
        # Frames of envelopes (lists) with the count the server left out before each, taken
        # apart by __anext__.
        self._send: trio.MemorySendChannel[tuple[int, list[Item]]]
        self._receive: trio.MemoryReceiveChannel[tuple[int, list[Item]]]
        self._send, self._receive = trio.open_memory_channel(buffer)
        self._taken: collections.deque[Item] = collections.deque()
        self.closed = False
        self.error: BaseException | None = None  # why it ended, if it did not end normally

    def __aiter__(self) -> Subscription[Item]:
        return self

    async def __anext__(self) -> Item:
        # Not an async generator: leaving an ``async for`` early leaves nothing to finalize.
        if self._taken:
            await trio.lowlevel.checkpoint()
            return self._taken.popleft()
        self._taken.extend(await self._next_frame())
        return self._taken.popleft()

    def batches(self, max_size: int = 256) -> AsyncIterator[list[Item]]:
        """Iterate over the envelopes in batches: ``async for batch in subscription.batches():``.

        Each batch is a non-empty list of envelopes in ``seq`` order, at most ``max_size`` of
        them, from one ``envelopes`` event of the server (what remains of the one being taken
        apart, else the next one; the iteration waits for it). It takes one schedule point per
        batch where ``async for`` over the subscription takes one per envelope, so a client
        that handles envelopes in groups (a dashboard redrawing, a forwarder) does far fewer
        task switches.

        Everything else is as for per-envelope iteration, which it may be mixed with (both
        take from the same buffer, in order): the iteration ends after the run's end, and
        raises the subscription's ``error`` after the last batch.

        For a sampled subscription (``keep``), ``skipped`` grows as a batch is given by how
        many envelopes the server left out just before that batch: its value before the batch
        subtracted from its value after is that count (0 for the later batches of an event cut
        by ``max_size``).

        Raises:
            ValueError: ``max_size`` is not an int of at least 1.
        """
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be an int >= 1, got {max_size!r}")
        return _Batches(self, max_size)

    async def _next_frame(self) -> list[Item]:
        """The envelopes of the next ``envelopes`` event, counting in ``skipped`` those the
        server left out before them; ``StopAsyncIteration`` (or the subscription's error) after
        the end."""
        try:
            skipped, frame = await self._receive.receive()
        except trio.EndOfChannel:
            if self.error is not None:
                raise self.error from None
            raise StopAsyncIteration from None
        self.skipped += skipped
        return frame

    async def _deliver(self, envelopes: list[dict[str, Any]], skipped: int = 0) -> None:
        """Hand over the envelopes of an ``envelopes`` event (in ``seq`` order), those above
        ``last_seq`` only (a reconnection may bring some again), and the count the server left
        out before them (``skipped``)."""
        if not envelopes:
            return
        last = self.last_seq
        if envelopes[0]["seq"] <= last:  # rare: only the first frames after a reconnection
            envelopes = [e for e in envelopes if e["seq"] > last]
            if not envelopes:
                return  # all seen already, and what it left out came before them
            # (Its skipped envelopes may lie on either side of last_seq: counted all.)
        fresh: list[Any] = (
            envelopes if self.raw else [EntityEnvelope.from_dict(e) for e in envelopes]
        )
        self.last_seq = envelopes[-1]["seq"]
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._send.send((skipped, fresh))

    def _end(self, status: str | None = None, error: BaseException | None = None) -> None:
        """End the subscription: its reader gets what was delivered, then ``error`` (raised
        even if the buffer was full)."""
        if self.closed:
            return
        self.closed = True
        self.status = status
        self.error = error
        self._send.close()


class _Batches(Generic[Item]):
    """What :meth:`Subscription.batches` iterates (not an async generator: leaving the
    ``async for`` early leaves nothing to finalize)."""

    def __init__(self, subscription: Subscription[Item], max_size: int) -> None:
        self._subscription: Subscription[Item] = subscription
        self._max_size = max_size

    def __aiter__(self) -> _Batches[Item]:
        return self

    async def __anext__(self) -> list[Item]:
        subscription, max_size = self._subscription, self._max_size
        taken = subscription._taken
        if taken:
            await trio.lowlevel.checkpoint()
        else:
            frame = await subscription._next_frame()
            if len(frame) <= max_size:
                return frame  # the event's own list: nobody else holds it
            taken.extend(frame)
        return [taken.popleft() for _ in range(min(max_size, len(taken)))]


class Client:
    """A connection to a sluiceway server; made by :func:`connect`.

    Requests (:meth:`request` and the helpers named after the operations) wait for their
    response. :meth:`subscribe` follows a run. If the connection drops, the client reconnects
    (for up to ``reconnect_timeout`` seconds) and resumes every subscription from its last
    ``seq``; a request in flight at that moment fails with :class:`ConnectionLostError`.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        reconnect_timeout: float,
        buffer: int,
        max_frame_bytes: int,
    ) -> None:
        self.url = url
        self.token = token
        self.reconnect_timeout = reconnect_timeout
        self.buffer = buffer
        self.max_frame_bytes = max_frame_bytes
        self.hello: dict[str, Any] = {}
        self._socket: WebSocketConnection | None = None
        self._connected = trio.Event()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._subscriptions: dict[int, Subscription[Any]] = {}  # by the server's number
        self._active: set[Subscription[Any]] = set()
        self._failure: BaseException | None = None
        self.reconnections = 0

    # -- requests ------------------------------------------------------------------------------

    async def request(self, op: str, **fields: Any) -> Any:
        """Send one request and return its result.

        Raises:
            ServerError: the server refused it.
            ConnectionLostError: the connection dropped before the response came.
        """
        return await self._request(op, fields)

    async def _request(
        self, op: str, fields: dict[str, Any], on_result: Callable[[Any], None] | None = None
    ) -> Any:
        socket = await self._ready()
        ident = next(self._ids)
        text = dumps({"v": PROTOCOL_VERSION, "id": ident, "op": op, **fields})
        limit = self.hello.get("max_frame_bytes")
        if isinstance(limit, int) and len(text.encode("utf-8")) > limit:
            # The server would answer frame_too_large without an id to match: say it here.
            raise ServerError(
                "frame_too_large",
                f"the {op} request is {len(text.encode('utf-8'))} bytes; the server accepts "
                f"frames of up to {limit} bytes",
            )
        pending = self._pending[ident] = _Pending(on_result=on_result)
        try:
            await socket.send_message(text)
            await pending.done.wait()
        except ConnectionClosed as exc:
            raise ConnectionLostError(
                f"the connection closed before the response to {op} came: {exc.reason}"
            ) from None
        finally:
            self._pending.pop(ident, None)
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def create(
        self,
        entity_type: str,
        data: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        exist_ok: bool = False,
    ) -> dict[str, Any]:
        """Create a root entity; returns it."""
        fields: dict[str, Any] = {"type": entity_type, "data": data or {}, "exist_ok": exist_ok}
        if name is not None:
            fields["name"] = name
        result: dict[str, Any] = await self.request("create", **fields)
        return result

    async def start(self, entity_id: str) -> dict[str, Any]:
        """Submit an entity for a run (durably: committed before the answer); returns
        ``{"entity_id", "state"}``."""
        result: dict[str, Any] = await self.request("start", entity_id=entity_id)
        return result

    async def get(self, entity_id: str) -> dict[str, Any]:
        """The entity as stored."""
        result: dict[str, Any] = await self.request("get", entity_id=entity_id)
        return result

    async def tree(
        self, entity_id: str, *, depth: int | None = None, max_children: int = 20
    ) -> dict[str, Any]:
        """The entity's call tree (see the ``tree`` operation)."""
        result: dict[str, Any] = await self.request(
            "tree", entity_id=entity_id, depth=depth, max_children=max_children
        )
        return result

    async def send_message(self, entity_id: str, message: str, data: Any = None) -> int:
        """Send a message to an entity; returns its id."""
        result = await self.request("send_message", entity_id=entity_id, message=message, data=data)
        return int(result["message_id"])

    async def cancel(self, entity_id: str) -> list[str]:
        """Cancel an entity and its unfinished descendants; returns the ids cancelled."""
        result = await self.request("cancel", entity_id=entity_id)
        return list(result["cancelled"])

    async def call(self, endpoint: str, body: dict[str, Any] | None = None) -> Any:
        """Call one of the application's endpoints."""
        return await self.request("call", endpoint=endpoint, body=body or {})

    async def list_runs(
        self,
        *,
        status: str | None = None,
        type: str | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """A page of the runs (root entities), newest first: ``{"runs", "cursor"}`` (see
        the ``list`` operation; pass ``cursor`` back for the next page)."""
        fields = {"status": status, "type": type, "name": name, "cursor": cursor}
        result: dict[str, Any] = await self.request(
            "list", limit=limit, **{k: v for k, v in fields.items() if v is not None}
        )
        return result

    async def capacity(self) -> list[dict[str, Any]]:
        """The capacity nodes the runtime shows (see the ``capacity`` operation)."""
        result = await self.request("capacity")
        return list(result["nodes"])

    async def retry(self, entity_id: str) -> dict[str, Any]:
        """Run a FAILED entity again (see the ``retry`` operation); returns as :meth:`start`."""
        result: dict[str, Any] = await self.request("retry", entity_id=entity_id)
        return result

    @overload
    def subscribe(
        self,
        entity_id: str,
        *,
        after_seq: int = 0,
        subtree: bool = True,
        raw: Literal[False] = False,
        interval: float | None = None,
        keep: int | None = None,
    ) -> contextlib.AbstractAsyncContextManager[Subscription[EntityEnvelope]]: ...

    @overload
    def subscribe(
        self,
        entity_id: str,
        *,
        after_seq: int = 0,
        subtree: bool = True,
        raw: Literal[True],
        interval: float | None = None,
        keep: int | None = None,
    ) -> contextlib.AbstractAsyncContextManager[Subscription[dict[str, Any]]]: ...

    def subscribe(
        self,
        entity_id: str,
        *,
        after_seq: int = 0,
        subtree: bool = True,
        raw: bool = False,
        interval: float | None = None,
        keep: int | None = None,
    ) -> contextlib.AbstractAsyncContextManager[Subscription[Any]]:
        """Follow an entity (its subtree by default) from ``after_seq``::

            async with client.subscribe(entity_id) as envelopes:
                async for envelope in envelopes:
                    ...

        The envelopes come as :class:`~sluiceway.EntityEnvelope` objects; with ``raw=True``
        as plain dicts, the envelopes' JSON objects as the server sent them (cheaper: for a
        client that forwards or filters them, or reads a few fields).

        ``interval`` and ``keep`` sample the run, for a client that shows it to people rather
        than processing every envelope (see the protocol's ``subscribe``): the server sends at
        most one ``envelopes`` event per ``interval`` seconds (0 to 60), and with ``keep``
        (1 to 1,000) each event holds the newest ``keep`` envelopes of what came since the
        previous one, plus the newest ``keep`` of the older ``ERROR``, ``WAITING`` and
        ``MESSAGE`` ones; :attr:`Subscription.skipped` counts the others. ``None`` (the
        default) leaves either out: every envelope, as it comes. A resumed subscription asks
        for the same again.

        Raises:
            ValueError: ``interval`` is not a number from 0 to 60 or ``keep`` not an int from 1
                to 1,000 (at once, before anything is sent).
            ServerError: on entering the block, e.g. ``not_found``.
        """
        _check_sampling(interval, keep)
        return self._following(
            Subscription(
                entity_id,
                after_seq,
                subtree,
                self.buffer,
                raw=raw,
                interval=None if interval is None else float(interval),
                keep=keep,
            )
        )

    @contextlib.asynccontextmanager
    async def _following(
        self, subscription: Subscription[Item]
    ) -> AsyncIterator[Subscription[Item]]:
        self._active.add(subscription)
        try:
            await self._subscribe(subscription)
            yield subscription
        finally:
            self._active.discard(subscription)
            number = subscription.number
            if number is not None and not subscription.closed:
                self._subscriptions.pop(number, None)
                subscription._end("unsubscribed")
                if self._socket is not None:
                    with trio.move_on_after(5), contextlib.suppress(Exception):
                        await self.request("unsubscribe", subscription=number)

    async def _subscribe(self, subscription: Subscription[Any]) -> None:
        def register(result: Any) -> None:
            # Called by the reader as the answer arrives: the subscription's first envelopes
            # may be the very next frames.
            subscription.number = int(result["subscription"])
            self._subscriptions[subscription.number] = subscription

        fields: dict[str, Any] = {
            "entity_id": subscription.entity_id,
            "after_seq": subscription.last_seq,
            "subtree": subscription.subtree,
        }
        # Sent only when asked for: a server that predates them refuses unknown fields.
        if subscription.interval is not None:
            fields["interval"] = subscription.interval
        if subscription.keep is not None:
            fields["keep"] = subscription.keep
        await self._request("subscribe", fields, register)

    # -- the connection ------------------------------------------------------------------------

    async def _ready(self) -> WebSocketConnection:
        await self._connected.wait()  # set at once when the client has given up
        if self._failure is not None:
            raise ConnectionLostError(str(self._failure)) from self._failure
        if self._socket is None:
            raise ConnectionLostError(f"not connected to {self.url}")
        return self._socket

    async def _connection(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Keep a connection open: read its frames; reconnect when it drops."""
        headers = (
            [] if self.token is None else [(b"authorization", f"Bearer {self.token}".encode())]
        )
        first = True
        deadline: float | None = None
        delay = 0.05
        while True:
            connected = False
            try:
                async with _open_websocket(self.url, headers, self.max_frame_bytes) as socket:
                    connected = True
                    await self._read_hello(socket)
                    self._socket = socket
                    self._connected.set()
                    deadline, delay = None, 0.05
                    async with open_owned_nursery() as nursery:
                        if first:
                            first = False
                            task_status.started()
                        else:
                            self.reconnections += 1
                            # The resumed subscriptions' answers come through _read: both at
                            # once.
                            for subscription in list(self._active):
                                if not subscription.closed:
                                    nursery.start_soon(self._resume, subscription)
                        await self._read(socket)
                        nursery.cancel_scope.cancel()
            except (OSError, HandshakeError, ConnectionClosed, trio.TooSlowError) as exc:
                if first and isinstance(exc, ConnectionRejected):
                    raise ConnectionRefusedByServerError.of(self.url, exc) from exc
                if first:
                    raise ConnectionLostError(f"cannot connect to {self.url}: {exc}") from exc
                if not connected:
                    log.debug("reconnecting to %s failed: %s", self.url, exc)
            self._lost("the connection closed")
            now = trio.current_time()
            if deadline is None:
                deadline = now + self.reconnect_timeout
            if now >= deadline:
                self._fail(
                    ConnectionLostError(
                        f"the connection to {self.url} was lost and could not be restored "
                        f"within {self.reconnect_timeout} s"
                    )
                )
                return
            await trio.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 2.0)

    async def _read_hello(self, socket: WebSocketConnection) -> None:
        try:
            frame = json.loads(await socket.get_message())
        except ValueError:
            frame = None
        if (
            not isinstance(frame, dict)
            or frame.get("event") != "hello"
            or frame.get("protocol") != PROTOCOL_VERSION
        ):
            raise ConnectionLostError(
                f"the server does not speak protocol {PROTOCOL_VERSION}: {frame}"
            )
        self.hello = frame

    async def _resume(self, subscription: Subscription[Any]) -> None:
        try:
            await self._subscribe(subscription)
        except ServerError as exc:
            subscription._end(error=exc)
        except ConnectionLostError:
            pass  # dropped again: the next connection resumes it

    async def _read(self, socket: WebSocketConnection) -> None:
        while True:
            try:
                text = await socket.get_message()
            except ConnectionClosed:
                return
            frame = json.loads(text)
            if "event" in frame:
                await self._on_event(frame)
                continue
            pending = self._pending.get(frame.get("id"))
            if pending is None:
                continue
            if frame.get("ok"):
                pending.result = frame.get("result")
                if pending.on_result is not None:
                    pending.on_result(pending.result)
            else:
                pending.error = _server_error(frame.get("error"))
            pending.done.set()

    async def _on_event(self, frame: dict[str, Any]) -> None:
        subscription = self._subscriptions.get(frame.get("subscription"))  # type: ignore[arg-type]
        if subscription is None:
            return
        if frame["event"] == "envelopes":
            await subscription._deliver(frame["envelopes"], frame.get("skipped", 0))
        elif frame["event"] == "end":
            self._subscriptions.pop(frame["subscription"], None)
            status = frame.get("status")
            if status == "error":
                subscription._end(status, _server_error(frame.get("error")))
            else:
                subscription._end(status)

    def _lost(self, reason: str) -> None:
        """The connection dropped: fail the requests in flight; subscriptions wait."""
        self._socket = None
        self._connected = trio.Event()
        self._subscriptions.clear()
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = ConnectionLostError(f"{reason} before the response came")
                pending.done.set()

    def _fail(self, error: BaseException) -> None:
        self._failure = error
        self._connected.set()
        for subscription in list(self._active):
            subscription._end(error=error)


def _check_sampling(interval: float | None, keep: int | None) -> None:
    """Raise ``ValueError`` for an ``interval`` or a ``keep`` the server would refuse."""
    if interval is not None and (
        isinstance(interval, bool)
        or not isinstance(interval, (int, float))
        or not 0 <= interval <= MAX_INTERVAL  # (also false for NaN)
    ):
        raise ValueError(
            f"interval must be a number of seconds from 0 to {MAX_INTERVAL:g}, or None, "
            f"got {interval!r}"
        )
    if keep is not None and (
        isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= MAX_KEEP
    ):
        raise ValueError(f"keep must be an int from 1 to {MAX_KEEP:,}, or None, got {keep!r}")


def _server_error(error: Any) -> ServerError:
    body = error if isinstance(error, dict) else {}
    return ServerError(str(body.get("code")), str(body.get("message")), body.get("details"))


def check_url(url: str) -> urllib.parse.SplitResult:
    """``url`` taken apart, if it is a server's ``ws://`` or ``wss://`` URL.

    Raises:
        ValueError: it is not; for an ``http://`` or ``https://`` URL the message says which
            ``ws://`` or ``wss://`` URL to use instead.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if parts is not None and parts.scheme in ("ws", "wss") and parts.hostname:
        return parts
    message = f"a server URL is ws://HOST:PORT or wss://HOST:PORT, got {url!r}"
    if parts is not None and parts.scheme in ("http", "https") and parts.hostname:
        fixed = urllib.parse.urlunsplit(parts._replace(scheme=parts.scheme.replace("http", "ws")))
        message += f": use {fixed}"
    raise ValueError(message)


@contextlib.asynccontextmanager
async def _open_websocket(
    url: str, headers: list[tuple[bytes, bytes]], max_frame_bytes: int
) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket connection to ``url`` whose TCP stream is closed however it ends (the
    server may close first)."""
    parts = check_url(url)
    hostname = parts.hostname or ""  # check_url made sure there is one
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.netloc.rpartition("@")[2]  # the Host header: the host and any port
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    with trio.fail_after(_CONNECT_SECONDS):
        if secure:
            stream = await trio.open_ssl_over_tcp_stream(
                hostname, port, ssl_context=ssl.create_default_context()
            )
        else:
            stream = await trio.open_tcp_stream(hostname, port)
    try:
        async with open_owned_nursery() as nursery:
            with trio.fail_after(_CONNECT_SECONDS):
                socket = await wrap_client_stream(
                    nursery,
                    stream,
                    host,
                    resource,
                    extra_headers=headers,
                    message_queue_size=64,
                    max_message_size=max_frame_bytes,
                    # Reads of up to 64 KiB, not trio-websocket's 4 KiB: a server's event
                    # frame may hold hundreds of envelopes (a fraction as many reads).
                    receive_buffer_size=_RECEIVE_BYTES,
                )
            try:
                yield socket
            finally:
                try:
                    with trio.move_on_after(_CLOSE_SECONDS):
                        await socket.aclose()
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()


@contextlib.asynccontextmanager
async def connect(
    url: str,
    *,
    token: str | None = None,
    reconnect_timeout: float = 30.0,
    buffer: int = 1024,
    max_frame_bytes: int = 16 * 1024 * 1024,
) -> AsyncIterator[Client]:
    """Connect to a sluiceway server: ``async with connect("ws://127.0.0.1:8765") as client``.

    Args:
        url: the server's ``ws://`` (or ``wss://``) URL.
        token: the bearer token, if the server requires one.
        reconnect_timeout: how long to keep trying to reconnect after the connection drops
            (``0`` to give up at once).
        buffer: how many of the server's ``envelopes`` events (each one or many envelopes)
            each subscription keeps for a slow reader (then the client stops reading; the
            server may drop it as a slow consumer, and the client resumes).
        max_frame_bytes: the largest frame accepted from the server.

    Raises:
        ValueError: ``url`` is not a ``ws://`` or ``wss://`` URL.
        ConnectionRefusedByServerError: the server refused the connection (a wrong token).
        ConnectionLostError: the server cannot be reached.
    """
    if reconnect_timeout < 0 or math.isnan(reconnect_timeout):
        raise ValueError("reconnect_timeout must be >= 0")
    check_url(url)
    client = Client(
        url,
        token=token,
        reconnect_timeout=reconnect_timeout,
        buffer=buffer,
        max_frame_bytes=max_frame_bytes,
    )
    async with open_owned_nursery() as nursery:
        await nursery.start(client._connection)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()
