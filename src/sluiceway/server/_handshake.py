"""The WebSocket handshake of the server's connections: the connection class that answers
protocol violations with a close frame, the wait for an upgrade request that cannot hang, and
the token checks (an ``Authorization`` header, or a browser's subprotocol)."""

from __future__ import annotations

import contextlib
import hmac
import logging

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Event, RejectConnection

from .._util import open_owned_nursery

log = logging.getLogger("sluiceway.server")


class ServerWebSocket(WebSocketConnection):
    """trio-websocket's server connection, answering protocol violations with a close frame.

    wsproto reports a client frame that breaks RFC 6455 (text that is not UTF-8, a reserved
    opcode or reserved bit, an unmasked frame, a fragmented control frame, a close frame with
    an invalid code...) as a ``CloseConnection`` event carrying the close code the RFC asks for
    (1007 for bad UTF-8, 1002 otherwise), while the connection is still open. trio-websocket
    (0.12) handles that event as if the client had closed: it closes the TCP connection without
    sending a close frame, and logs nothing. Here the close frame wsproto chose is sent first
    (when the connection is open; after the server's own close frame there is nothing more to
    send), and the violation is logged as a warning. A genuine close frame from the client puts
    wsproto in ``REMOTE_CLOSING`` (or ``CLOSED``) before its event, so it never comes here.

    An upgrade request wsproto cannot accept (not HTTP, no key, another WebSocket version)
    raises its ``RemoteProtocolError`` in the handshake; trio-websocket then sends the HTTP
    refusal wsproto suggests (400, or 426 for the version) and closes the connection, but no
    request ever comes out of it. ``refused_status`` records that refusal (a rejection sent
    before the server took the request), so that :func:`wrap_server_stream` can log it and
    stop waiting.
    """

    peer = "?"
    #: The HTTP status of the refusal wsproto sent for an invalid upgrade request.
    refused_status: int | None = None

    async def _send(self, event: Event) -> None:
        if isinstance(event, RejectConnection) and self._connection_proposal is not None:
            self.refused_status = event.status_code
        await super()._send(event)

    async def _handle_close_connection_event(self, event: CloseConnection) -> None:
        state = self._wsproto.state
        if state in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING):
            log.warning(
                "closing the connection of %s with %d: it broke the WebSocket protocol (%s)",
                self.peer,
                event.code,
                event.reason,
            )
            if state is ConnectionState.OPEN:
                with contextlib.suppress(ConnectionClosed):  # the client is gone already
                    await self._send(CloseConnection(code=event.code, reason=event.reason))
        await super()._handle_close_connection_event(event)


async def wrap_server_stream(
    nursery: trio.Nursery, stream: trio.abc.Stream, peer: str, *, max_message_size: int
) -> WebSocketRequest | None:
    """``trio_websocket.wrap_server_stream`` with a :class:`_ServerWebSocket`; ``None`` when
    the client's reader ends without a request (a refused handshake, logged, or a client that
    left) instead of waiting for a request that cannot come."""
    connection = ServerWebSocket(
        stream, WSConnection(ConnectionType.SERVER), max_message_size=max_message_size
    )
    connection.peer = peer
    settled = trio.Event()
    requests: list[WebSocketRequest] = []

    async def read() -> None:
        try:
            await connection._reader_task()
        finally:
            settled.set()

    async def take() -> None:
        requests.append(await connection._get_request())
        settled.set()

    nursery.start_soon(read, name=f"websocket reader {peer}")
    async with open_owned_nursery() as waiting:
        waiting.start_soon(take, name=f"websocket handshake {peer}")
        await settled.wait()
        waiting.cancel_scope.cancel()
    if requests:
        return requests[0]
    if connection.refused_status is not None:
        log.warning(
            "refused the WebSocket handshake of %s with HTTP %d: not a valid upgrade request",
            peer,
            connection.refused_status,
        )
    return None


def peer_of(stream: trio.SocketStream) -> str:
    """The client's ``host:port`` (``[host]:port`` for IPv6), for the log."""
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "?"
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


SHUTTING_DOWN = b'{"error":{"code":"shutting_down","message":"the server is shutting down"}}'
UNAUTHORIZED = b'{"error":{"code":"unauthorized","message":"a valid bearer token is required"}}'
FORBIDDEN_ORIGIN = (
    b'{"error":{"code":"forbidden_origin","message":"pages of this origin may not connect '
    b'to this server (see its allow_origins, --allow-origin)"}}'
)


def authorized(request: WebSocketRequest, token: str) -> bool:
    """Whether the request carries the token: in its ``Authorization`` header (``Bearer
    <token>``), or, from a browser (which cannot set that header on a WebSocket), as the
    subprotocol ``bearer.<token>`` next to :data:`SUBPROTOCOL`."""
    expected = f"Bearer {token}".encode()
    for name, value in request.headers:
        if name.lower() == b"authorization":
            return hmac.compare_digest(value.strip(), expected)
    wanted = f"{_BEARER_PREFIX}{token}".encode()
    return any(
        hmac.compare_digest(offered.encode("utf-8", "replace"), wanted)
        for offered in request.proposed_subprotocols
        if offered.startswith(_BEARER_PREFIX)
    )


def subprotocol_of(request: WebSocketRequest) -> str | None:
    """The subprotocol to accept: :data:`SUBPROTOCOL` if the client offered it (a browser
    that offers subprotocols needs one of them back), else none."""
    return SUBPROTOCOL if SUBPROTOCOL in request.proposed_subprotocols else None


#: The subprotocol a browser offers (with its token as ``bearer.<token>``), echoed back.
SUBPROTOCOL = "sluiceway.v1"
_BEARER_PREFIX = "bearer."
