"""One client connection of the WebSocket server: its reader of requests, its writer of
frames, its subscriptions, and the answer to each operation."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from .. import __version__
from .._errors import (
    DataConflictError,
    DuplicateEntityError,
    EntityBusyError,
    EntityCancelledError,
    EntityError,
    EntityNotFoundError,
    EntityNotRunnableError,
    EntityNotWaitingError,
    UnknownEntityTypeError,
)
from .._util import open_owned_nursery
from ..entities import Runtime
from ..store import EntityRecord
from ._app import EndpointContext, EndpointError
from ._ops import capacity, list_runs, retry
from ._protocol import (
    CLOSE_SLOW_CONSUMER,
    MAX_INTERVAL,
    MAX_KEEP,
    PROTOCOL_VERSION,
    CallRequest,
    CancelRequest,
    CreateRequest,
    EncodedResult,
    ErrorCode,
    GetRequest,
    PingRequest,
    ProtocolError,
    Request,
    SendMessageRequest,
    StartRequest,
    SubscribeRequest,
    TreeRequest,
    UnsubscribeRequest,
    dumps,
    encoded,
    encoded_result_frame,
    envelopes_frame,
    error_frame,
    event_frame,
    parse_request,
    record_to_json,
    result_frame,
)
from ._relay import SubscriptionRelay

if TYPE_CHECKING:
    from ._server import RuntimeServer

log = logging.getLogger("sluiceway.server")

#: What a connection's writer sends: a frame, or envelopes (JSON) of a subscription with
#: the count of those it leaves out.
_Outgoing = str | tuple[int, list[str], int]


class Connection:
    """One client: a reader of requests, a writer of frames, its subscriptions.

    Frames go out through a bounded queue and one writer task. Closing (the server stopping,
    a slow consumer) stops the reader, the requests and the subscriptions, lets the writer
    finish the frame it is sending (a frame cut in the middle would corrupt the stream), and
    then sends the close frame: the client always sees the close code.
    """

    def __init__(self, server: RuntimeServer, socket: WebSocketConnection) -> None:
        self.server = server
        self.socket = socket
        self.limits = server.limits
        send, receive = trio.open_memory_channel[_Outgoing](self.limits.outgoing_frames)
        self.outgoing, self._queued = send, receive
        self._room: trio.Event | None = None  # set when the writer takes a frame
        self.nursery: trio.Nursery | None = None
        self.pending = 0
        self.subscriptions: dict[int, trio.CancelScope] = {}
        self.next_subscription = 1
        self.close_code: int | None = None
        self.close_reason = ""

    async def serve(self) -> None:
        async with open_owned_nursery() as writing:
            written = trio.Event()
            writing.start_soon(self._writer, written, name="websocket writer")
            try:
                async with open_owned_nursery() as nursery:
                    self.nursery = nursery
                    self.emit(
                        event_frame(
                            "hello",
                            protocol=PROTOCOL_VERSION,
                            server="sluiceway",
                            version=__version__,
                            app=self.server.app.name,
                            max_frame_bytes=self.limits.max_frame_bytes,
                        )
                    )
                    while self.close_code is None:
                        try:
                            message = await self.socket.get_message()
                        except ConnectionClosed:
                            break
                        self._on_frame(message)
                    nursery.cancel_scope.cancel()  # the client left: stop its work
            finally:
                self.nursery = None
                # Nothing more is queued: the writer sends what is (unless the client is a
                # slow consumer), then the close frame follows; a client that reads nothing
                # more for CLOSE_SECONDS has the rest of its connection cut.
                self.outgoing.close()
                try:
                    with trio.move_on_after(CLOSE_SECONDS):
                        await written.wait()
                        if self.close_code is not None:
                            await self.socket.aclose(self.close_code, self.close_reason)
                finally:
                    writing.cancel_scope.cancel()

    def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code`` (after the frames already queued, unless it is
        a slow consumer's)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    def emit(self, frame: dict[str, Any]) -> None:
        """Queue a frame for the client; a full queue closes the connection (slow consumer)."""
        if self.close_code is not None:
            return
        try:
            text = dumps(frame)
        except BaseException as exc:  # a result that is not JSON (an endpoint's bug)
            if _is_fatal(exc):
                raise
            ident = frame.get("id")
            log.error("a frame for the client is not JSON (%s: %s)", type(exc).__name__, exc)
            if "event" in frame:  # never dropped silently: the client reconnects and resumes
                self.close(1011, "the server could not encode a frame")
                return
            text = dumps(
                error_frame(
                    ident,
                    ProtocolError(
                        ErrorCode.INTERNAL_ERROR,
                        f"the server could not encode its response: {type(exc).__name__}",
                    ),
                )
            )
        self.emit_text(text)

    def emit_text(self, text: str) -> None:
        """Queue a frame already encoded; a full queue closes the connection."""
        if self.close_code is not None:
            return
        try:
            self.outgoing.send_nowait(text)
        except trio.WouldBlock:
            self._slow_consumer()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # closing, or the writer found the connection closed: nobody reads more

    def _slow_consumer(self) -> None:
        self.close(
            CLOSE_SLOW_CONSUMER,
            f"slow consumer: {self.limits.queue_frames} frames waited for more than "
            f"{self.limits.slow_consumer_seconds:g} s; reconnect and subscribe again from the "
            "last seq you received",
        )

    async def emit_envelopes(self, number: int, parts: list[str], skipped: int = 0) -> None:
        """Queue envelopes (their JSON) of subscription ``number`` (and the count of those
        since its previous ones that it leaves out), waiting while
        ``queue_frames`` frames wait; a subscription that waits longer than
        ``slow_consumer_seconds`` closes the connection with 4008. The writer sends what waits
        of one subscription in as few ``envelopes`` events as ``batch_bytes`` allows."""
        limit = self.limits.queue_frames
        if self.outgoing.statistics().current_buffer_used >= limit:
            with trio.move_on_after(self.limits.slow_consumer_seconds) as waiting:
                while self.outgoing.statistics().current_buffer_used >= limit:
                    if self._room is None:
                        self._room = trio.Event()
                    await self._room.wait()
            if waiting.cancelled_caught:
                self._slow_consumer()
                return
        if self.close_code is not None:
            return
        try:
            self.outgoing.send_nowait((number, parts, skipped))
        except trio.WouldBlock:
            self._slow_consumer()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _writer(self, written: trio.Event) -> None:
        """Send the queued frames in order. Envelopes of one subscription queued one after
        the other go out together, in one ``envelopes`` event per ``batch_bytes``: a client
        that falls behind gets fewer, larger frames, and catches up."""
        queued = self._queued
        carry: _Outgoing | None = None
        try:
            with queued:
                while True:
                    if carry is not None:
                        item, carry = carry, None
                    else:
                        try:
                            item = await queued.receive()
                        except trio.EndOfChannel:
                            break
                        self._took()
                    if self.close_code == CLOSE_SLOW_CONSUMER:
                        break  # drop the backlog: the client resumes from its last seq
                    if isinstance(item, str):
                        await self.socket.send_message(item)
                        continue
                    number, parts, skipped = item
                    size = sum(map(len, parts))
                    while size < self.limits.batch_bytes:
                        try:
                            following = queued.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        self._took()
                        if isinstance(following, str) or following[0] != number:
                            carry = following
                            break
                        parts.extend(following[1])
                        skipped += following[2]
                        size += sum(map(len, following[1]))
                    await self.socket.send_message(envelopes_frame(number, parts, skipped))
        except ConnectionClosed:
            pass
        written.set()

    def _took(self) -> None:
        """The writer took a frame from the queue: wake a subscription waiting for room."""
        if self._room is not None:
            self._room.set()
            self._room = None

    def _on_frame(self, message: str | bytes) -> None:
        try:
            request = parse_request(message, self.limits.max_frame_bytes)
        except ProtocolError as error:
            ident = error.details.get("id") if isinstance(error.details, dict) else None
            self.emit(error_frame(ident, error))
            return
        if self.pending >= self.limits.max_pending:
            self.emit(
                error_frame(
                    request.id,
                    ProtocolError(
                        ErrorCode.TOO_MANY_REQUESTS,
                        f"at most {self.limits.max_pending} requests may be in progress at once",
                    ),
                )
            )
            return
        assert self.nursery is not None
        self.pending += 1
        self.nursery.start_soon(self._answer, request, name=f"{request.op} {request.id}")

    async def _answer(self, request: Request) -> None:
        try:
            handler = self._handlers[request.op]
            result = await handler(self, request)
        except ProtocolError as error:
            self.emit(error_frame(request.id, error))
        except Exception as exc:
            self.emit(error_frame(request.id, _as_protocol_error(exc)))
        except BaseException as exc:  # SystemExit, KeyboardInterrupt... from an endpoint
            fatal, crash = _split_fatal(exc)
            if crash is not None:
                log.error(
                    "the %s request %r raised %s; answered internal_error",
                    request.op if request.op != "call" else f"call of {request.body.endpoint!r}",
                    request.id,
                    type(crash).__name__,
                    exc_info=crash,
                )
                if fatal is None:
                    self.emit(
                        error_frame(
                            request.id,
                            ProtocolError(
                                ErrorCode.INTERNAL_ERROR,
                                f"the server failed to answer: {type(crash).__name__}",
                            ),
                        )
                    )
            if fatal is exc:
                raise
            if fatal is not None:
                raise fatal from None
        else:
            if isinstance(result, EncodedResult):  # a shared answer, encoded once
                self.emit_text(encoded_result_frame(request.id, result))
            else:
                self.emit(result_frame(request.id, result))
        finally:
            self.pending -= 1
            if request.op in _WRITES:
                self.server.reads.clear()  # a page that acted sees the effect at once

    # -- operations ----------------------------------------------------------------------------

    async def _create(self, request: Request) -> Any:
        body: CreateRequest = request.body
        try:
            record = await self.server.runtime.create(
                body.type, body.data, name=body.name, exist_ok=body.exist_ok
            )
        except EntityError as exc:
            if type(exc) is not EntityError:
                raise
            # exist_ok, but the entity of that name has another type
            raise ProtocolError(ErrorCode.CONFLICT, str(exc)) from None
        return record_to_json(record)

    async def _start(self, request: Request) -> Any:
        body: StartRequest = request.body
        return await self.server.start(body.entity_id, generic=True)

    async def _subscribe(self, request: Request) -> Any:
        body: SubscribeRequest = request.body
        if body.after_seq < 0:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "after_seq must be >= 0")
        if body.after_seq > _MAX_SEQ:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, f"after_seq must be <= {_MAX_SEQ}")
        if not 0 <= body.interval <= MAX_INTERVAL:  # (also false for NaN)
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST,
                f"interval must be from 0 to {MAX_INTERVAL:g} seconds, got {body.interval!r}",
            )
        if body.keep is not None and not 1 <= body.keep <= MAX_KEEP:
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST, f"keep must be from 1 to {MAX_KEEP}, got {body.keep}"
            )
        # not_found before anything is promised; a root's name stands for its id
        record = await self.server.resolve(body.entity_id)
        body = attrs.evolve(body, entity_id=record.id)
        if len(self.subscriptions) >= self.limits.max_subscriptions:
            raise ProtocolError(
                ErrorCode.TOO_MANY_REQUESTS,
                f"at most {self.limits.max_subscriptions} subscriptions per connection",
            )
        number = self.next_subscription
        self.next_subscription += 1
        scope = self.subscriptions[number] = trio.CancelScope()
        assert self.nursery is not None
        # The stream starts after this answer is queued (no checkpoint in between): the
        # client learns the subscription's number before its first envelope.
        self.nursery.start_soon(self._follow, number, body, scope, name=f"subscription {number}")
        return {"subscription": number}

    async def _follow(self, number: int, body: SubscribeRequest, scope: trio.CancelScope) -> None:
        """Stream a subscription's envelopes, then its ``end`` event (a subscription counts
        as no request in progress: it was answered)."""
        runtime = self.server.runtime
        relay = SubscriptionRelay(
            partial(self.emit_envelopes, number),
            self.server.encoded,  # each envelope encoded once for every subscriber
            after_seq=body.after_seq,
            interval=body.interval,
            keep=body.keep,
        )
        try:
            with scope:
                # Woken no more often than it sends; with keep, the runtime samples (what
                # the subscription skips is never even looked at).
                if body.keep is None:
                    stream = runtime.stream_batches(
                        body.entity_id,
                        after_seq=body.after_seq,
                        subtree=body.subtree,
                        pace=body.interval,
                    )
                    async with stream as batches:
                        await relay.relay(batches)
                else:
                    samples = runtime.stream_samples(
                        body.entity_id,
                        keep=body.keep,
                        after_seq=body.after_seq,
                        subtree=body.subtree,
                        pace=body.interval,
                    )
                    async with samples as sampled:
                        await relay.relay(sampled)
                final = await runtime.get(body.entity_id)
                self.emit(
                    event_frame(
                        "end", subscription=number, status=final.status.value, seq=relay.last
                    )
                )
        except Exception as exc:  # the request was answered: the failure ends the stream
            error = _as_protocol_error(exc)
            self.emit(
                event_frame(
                    "end",
                    subscription=number,
                    status="error",
                    seq=relay.last,
                    error=error.to_dict(),
                )
            )
        finally:
            self.subscriptions.pop(number, None)
        if scope.cancelled_caught:
            self.emit(
                event_frame("end", subscription=number, status="unsubscribed", seq=relay.last)
            )

    async def _unsubscribe(self, request: Request) -> Any:
        body: UnsubscribeRequest = request.body
        scope = self.subscriptions.pop(body.subscription, None)
        if scope is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_SUBSCRIPTION,
                f"this connection has no subscription {body.subscription}",
            )
        scope.cancel()
        await trio.lowlevel.checkpoint()
        return {}

    async def _send_message(self, request: Request) -> Any:
        body: SendMessageRequest = request.body
        entity = await self.server.resolve(body.entity_id)
        record = await self.server.runtime.send_message(entity.id, body.message, body.data)
        return {"message_id": record.id}

    async def _cancel(self, request: Request) -> Any:
        body: CancelRequest = request.body
        entity = await self.server.resolve(body.entity_id)
        return {"cancelled": await self.server.runtime.cancel(entity.id)}

    async def _get(self, request: Request) -> Any:
        body: GetRequest = request.body

        async def read() -> EncodedResult:
            return encoded(record_to_json(await self.server.resolve(body.entity_id)))

        answer: EncodedResult = await self.server.reads.get(("get", body.entity_id), read)
        return answer

    async def _tree(self, request: Request) -> Any:
        body: TreeRequest = request.body
        if body.depth is not None and body.depth < 0:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "depth must be >= 0")
        if body.max_children < 0:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "max_children must be >= 0")
        runtime = self.server.runtime

        async def read() -> EncodedResult:
            root = await self.server.resolve(body.entity_id)
            return encoded(await _tree(runtime, root, body.depth, body.max_children))

        # Keyed by the reference as given: a shared answer costs no lookup of the entity.
        answer: EncodedResult = await self.server.reads.get(
            ("tree", body.entity_id, body.depth, body.max_children), read
        )
        return answer

    async def _call(self, request: Request) -> Any:
        body: CallRequest = request.body
        endpoint = self.server.app.endpoints.get(body.endpoint)
        if endpoint is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_ENDPOINT,
                f"{self.server.app.name} has no endpoint {body.endpoint!r}; it has "
                f"{sorted(self.server.app.endpoints)}",
            )
        context = EndpointContext(self.server.runtime, self.server.state, self.server)
        return await endpoint(context, body.body)

    async def _ping(self, request: Request) -> Any:
        assert isinstance(request.body, PingRequest)
        await trio.lowlevel.checkpoint()
        return {"pong": True}

    _handlers: ClassVar[dict[str, Callable[[Connection, Request], Awaitable[Any]]]] = {
        "create": _create,
        "start": _start,
        "subscribe": _subscribe,
        "unsubscribe": _unsubscribe,
        "send_message": _send_message,
        "cancel": _cancel,
        "get": _get,
        "tree": _tree,
        "call": _call,
        "list": lambda self, request: list_runs(self.server, request.body),
        "capacity": lambda self, request: capacity(self.server, request.body),
        "retry": lambda self, request: retry(self.server, request.body),
        "ping": _ping,
    }


#: Operations that write: each clears the shared answers of the read operations.
_WRITES = frozenset({"create", "start", "send_message", "cancel", "call", "retry"})

#: How long a closing connection may take to send its last frames and its close frame.
CLOSE_SECONDS = 5.0
#: The largest ``seq`` a store can hold (a signed 64-bit integer).
_MAX_SEQ = 2**63 - 1


async def _tree(
    runtime: Runtime, record: EntityRecord, depth: int | None, max_children: int
) -> dict[str, Any]:
    store = runtime.store
    counts = await store.count_children(record.id)
    node: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "type": record.type,
        "status": record.status.value,
        "children_by_status": {status.value: count for status, count in counts.items()},
        "children": [],
    }
    total = sum(counts.values())
    if total and (depth is None or depth > 0) and max_children:
        children = await store.children(record.id, limit=max_children)
        below = None if depth is None else depth - 1
        for child in children:
            node["children"].append(await _tree(runtime, child, below, max_children))
        node["more"] = max(total - max_children, 0)
    elif total:
        node["more"] = total
    return node


#: The error code of each exception a request may raise (the first match wins).
_ERROR_CODES: tuple[tuple[type[Exception], ErrorCode], ...] = (
    (EntityNotFoundError, ErrorCode.NOT_FOUND),
    (DuplicateEntityError, ErrorCode.CONFLICT),
    (DataConflictError, ErrorCode.CONFLICT),
    (EntityBusyError, ErrorCode.BUSY),
    (EntityNotWaitingError, ErrorCode.NOT_WAITING),
    (EntityCancelledError, ErrorCode.CANCELLED),
    (EntityNotRunnableError, ErrorCode.NOT_RUNNABLE),
    (UnknownEntityTypeError, ErrorCode.UNKNOWN_TYPE),
)


def _is_fatal(exc: BaseException) -> bool:
    """Whether a ``BaseException`` must go on up rather than become an error response:
    trio's ``Cancelled``, and a ``KeyboardInterrupt`` that trio raised for a real SIGINT
    (which lands in whatever code runs when it arrives, an endpoint's too). A
    ``KeyboardInterrupt`` an endpoint raises itself is its own bug, like ``SystemExit``."""
    if isinstance(exc, trio.Cancelled):
        return True
    if not isinstance(exc, KeyboardInterrupt):
        return False
    innermost = exc.__traceback__
    while innermost is not None and innermost.tb_next is not None:
        innermost = innermost.tb_next
    module = "" if innermost is None else innermost.tb_frame.f_globals.get("__name__", "")
    return isinstance(module, str) and module.startswith("trio.")


def _split_fatal(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """``exc`` cut into what must propagate (cancellation, a real Ctrl-C) and what a request
    crashed with; a group is split leaf by leaf."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(_is_fatal)
    return (exc, None) if _is_fatal(exc) else (None, exc)


def _as_protocol_error(exc: Exception) -> ProtocolError:
    """The error response for an exception a request raised."""
    for kind, code in _ERROR_CODES:
        if isinstance(exc, kind):
            return ProtocolError(code, str(exc))
    if isinstance(exc, EndpointError):
        return ProtocolError(
            ErrorCode.ENDPOINT_ERROR,
            exc.message,
            {"code": exc.code, **({"details": exc.details} if exc.details is not None else {})},
        )
    if isinstance(exc, TypeError | ValueError):
        return ProtocolError(ErrorCode.INVALID_REQUEST, str(exc))
    log.exception("a request failed inside the server", exc_info=exc)
    return ProtocolError(
        ErrorCode.INTERNAL_ERROR, f"the server failed to answer: {type(exc).__name__}"
    )
