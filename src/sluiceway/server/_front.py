"""The server's one port: a WebSocket upgrade goes on to the protocol, any other request gets a
file of the web page.

The server owns each TCP connection, so it reads the request's head itself (with h11, under
the handshake's time limit). An upgrade request goes on to the WebSocket layer with the bytes
read so far replayed in front of the rest of the stream, so the protocol, its checks (Origin,
token) and its close codes are exactly those of a server with no page. Anything else is a plain
HTTP request: ``GET`` or ``HEAD`` of one of the page's files (a flat folder of package data,
looked up by exact name: no path ever reaches the file system), answered with headers that keep
the page to itself (a content security policy allowing its own scripts and its own server's
WebSocket only, no framing, no referrer), and the connection closed.
"""

from __future__ import annotations

import importlib.resources
import logging

import attrs
import h11
import trio

log = logging.getLogger("sluiceway.server")

#: The largest request head read before giving up (431).
MAX_HEAD_BYTES = 16 * 1024

#: The page's files: the path each is served at, its file and content type.
PAGE_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}

_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-cache"),
]


@attrs.define
class Head:
    """What the front read of a connection: the request (``None`` if there was none) and
    every byte received so far (the head, and perhaps more)."""

    request: h11.Request | None
    received: bytes
    problem: int | None = None  # an HTTP status to answer with instead (400, 431)

    @property
    def is_upgrade(self) -> bool:
        """Whether the request asks for a WebSocket."""
        if self.request is None:
            return False
        for name, value in self.request.headers:
            if name == b"upgrade" and value.strip().lower() == b"websocket":
                return True
        return False


async def read_head(stream: trio.abc.ReceiveStream) -> Head:
    """Read a request's head (and no more than what arrives with it)."""
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    received = bytearray()
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as error:
            status = error.error_status_hint
            return Head(None, bytes(received), problem=status if status >= 400 else 400)
        if isinstance(event, h11.Request):
            return Head(event, bytes(received))
        if event is not h11.NEED_DATA:  # a connection closed before a request
            return Head(None, bytes(received))
        chunk = await stream.receive_some(4096)
        if not chunk:
            parser.receive_data(b"")
            continue
        received += chunk
        parser.receive_data(bytes(chunk))


class ReplayStream(trio.abc.Stream):
    """A stream that first gives back bytes already read from it."""

    def __init__(self, stream: trio.abc.Stream, replay: bytes) -> None:
        self._stream = stream
        self._replay = replay

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._replay:
            await trio.lowlevel.checkpoint()
            size = len(self._replay) if max_bytes is None else max_bytes
            chunk, self._replay = self._replay[:size], self._replay[size:]
            return chunk
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def serve_page(stream: trio.abc.Stream, head: Head, peer: str) -> None:
    """Answer a request that is not a WebSocket upgrade, then close."""
    request = head.request
    if request is None:
        if head.problem is not None:
            log.warning(
                "refused the request of %s with HTTP %d: not a valid HTTP request",
                peer,
                head.problem,
            )
            await _answer(stream, head.problem, b"text/plain; charset=utf-8", b"bad request\n")
        return
    method = request.method.decode("ascii", "replace")
    path = request.target.decode("ascii", "replace").split("?", 1)[0].split("#", 1)[0]
    found = PAGE_FILES.get(path)
    if method not in ("GET", "HEAD"):
        await _answer(
            stream,
            405,
            b"text/plain; charset=utf-8",
            b"only GET and HEAD\n",
            extra=[(b"allow", b"GET, HEAD")],
        )
        return
    if found is None:
        await _answer(
            stream, 404, b"text/plain; charset=utf-8", b"not found\n", head_only=method == "HEAD"
        )
        return
    filename, content_type = found
    body = page_file(filename)
    log.debug("served %s to %s", path, peer)
    await _answer(stream, 200, content_type.encode(), body, head_only=method == "HEAD")


def page_file(filename: str) -> bytes:
    """A file of the page, from the package's data."""
    return importlib.resources.files("sluiceway.server").joinpath("static", filename).read_bytes()


async def _answer(
    stream: trio.abc.Stream,
    status: int,
    content_type: bytes,
    body: bytes,
    *,
    head_only: bool = False,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    writer = h11.Connection(h11.SERVER)
    # h11 answers only a request it saw: give it a minimal one (the real one was parsed already).
    writer.receive_data(b"HEAD" if head_only else b"GET")
    writer.receive_data(b" / HTTP/1.1\r\nhost: x\r\n\r\n")
    writer.next_event()
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *_SECURITY_HEADERS,
        *(extra or []),
    ]
    data = writer.send(h11.Response(status_code=status, headers=headers))
    if not head_only:
        data += writer.send(h11.Data(data=body)) or b""
    data += writer.send(h11.EndOfMessage()) or b""
    await stream.send_all(data or b"")
