"""The HTTP plumbing the applications' services share (the notification service, the image
service): a hand-written ASGI layer with JSON requests and answers, a small path router, the
per-key lock that serialises requests for one idempotency key, and serving with hypercorn's trio
worker.

Every error is answered as ``{"error": {"code", "message", "details"}}``: raise
:class:`HTTPError` (or :class:`ValidationFailed`, answered 400 ``VALIDATION_ERROR``) from a
handler; anything else is logged and answered 500 ``INTERNAL_ERROR`` without a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import NoReturn

import attrs
import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, HTTPScope
from hypercorn.utils import wrap_app

__all__ = [
    "ClientGone",
    "HTTPError",
    "Handler",
    "KeyLocks",
    "Request",
    "Response",
    "Router",
    "ValidationFailed",
    "answer_http",
    "encode_json",
    "handle_lifespan",
    "listen",
    "serve_asgi",
    "validation_error",
]

_JSON_HEADERS = ((b"content-type", b"application/json"), (b"cache-control", b"no-store"))


@attrs.frozen
class Response:
    """An answer: a JSON document ``body``, or (with :meth:`of_bytes`) raw bytes with their own
    content type. ``headers`` are added to the content type and length."""

    status: int
    body: object = None
    headers: tuple[tuple[str, str], ...] = ()
    raw: bytes | None = attrs.field(default=None, kw_only=True)
    content_type: str | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if (self.raw is None) != (self.content_type is None):
            raise ValueError("raw bytes and their content_type go together")

    @classmethod
    def of_bytes(
        cls,
        status: int,
        data: bytes,
        content_type: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Response:
        """An answer carrying ``data`` as is, served as ``content_type``."""
        return cls(status, None, headers, raw=data, content_type=content_type)

    def encode(self) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """The body's bytes and the full header list (content type and length included)."""
        if self.raw is not None and self.content_type is not None:
            body = self.raw
            first: Sequence[tuple[bytes, bytes]] = (
                (b"content-type", self.content_type.encode("latin-1")),
            )
        else:
            body = encode_json(self.body)
            first = _JSON_HEADERS
        headers = [
            *first,
            (b"content-length", str(len(body)).encode()),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers),
        ]
        return body, headers


class HTTPError(Exception):
    """Answer the request with ``{"error": {"code", "message", "details"}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Sequence[Mapping[str, str]] = (),
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = [dict(d) for d in details]
        self.headers = headers
        self.response = Response(
            status,
            {"error": {"code": code, "message": message, "details": self.details}},
            headers,
        )


class ValidationFailed(Exception):
    """A request body failed validation; ``details`` names each bad field."""

    def __init__(self, details: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{d['field']}: {d['message']}" for d in details))
        self.details = details


def validation_error(error: ValidationFailed) -> HTTPError:
    """The 400 ``VALIDATION_ERROR`` answer for ``error`` (its message names the fields)."""
    fields = ", ".join(dict.fromkeys(d["field"] for d in error.details))
    return HTTPError(400, "VALIDATION_ERROR", f"invalid {fields}", details=error.details)


class ClientGone(Exception):
    """The client disconnected before its request body arrived: nobody to answer."""


@attrs.define
class Request:
    """One HTTP request: its method, path, headers (lower-case names), query string, the path
    parameters the router found, and its body, read on demand."""

    method: str
    path: str
    headers: dict[str, str]
    receive: ASGIReceiveCallable
    max_body_bytes: int
    params: dict[str, str] = attrs.field(factory=dict)
    query: str = ""
    _read: bytes | None = None

    async def body(self) -> bytes:
        """The whole body (read once; later calls answer from memory)."""
        if self._read is None:
            self._read = await self._receive_body()
        return self._read

    async def _receive_body(self) -> bytes:
        """The whole body; 413 past ``max_body_bytes``. A too-large body is still read (and
        dropped) up to 4 times the limit so that the client gets to read the 413."""
        drain_limit = 4 * self.max_body_bytes
        too_large = HTTPError(
            413,
            "PAYLOAD_TOO_LARGE",
            f"the request body is larger than {self.max_body_bytes} bytes",
            headers=(("connection", "close"),),
        )
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > drain_limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self.receive()
            if event["type"] == "http.disconnect":
                raise ClientGone
            if event["type"] != "http.request":  # pragma: no cover - not sent for http scopes
                continue
            size += len(event["body"])
            if size > drain_limit:
                raise too_large
            if size <= self.max_body_bytes:
                chunks.append(event["body"])
            if not event["more_body"]:
                break
        if size > self.max_body_bytes:
            raise too_large
        return b"".join(chunks)

    async def json(self) -> object:
        """The body decoded as JSON: 413, 415 for a non-JSON content type, 400 ``INVALID_JSON``."""
        body = await self.body()
        content_type = self.headers.get("content-type")
        if content_type is not None:
            media_type = content_type.partition(";")[0].strip().lower()
            if media_type != "application/json" and not media_type.endswith("+json"):
                raise HTTPError(
                    415,
                    "UNSUPPORTED_MEDIA_TYPE",
                    f"the request body must be application/json, not {media_type or '(empty)'}",
                )
        if not body.strip():
            raise HTTPError(400, "INVALID_JSON", "the request body is empty")
        try:
            return json.loads(body.decode("utf-8"), parse_constant=_no_constant)
        except UnicodeDecodeError:
            raise HTTPError(400, "INVALID_JSON", "the request body is not UTF-8") from None
        except (ValueError, RecursionError) as error:
            message = f"the request body is not valid JSON ({error})"
            raise HTTPError(400, "INVALID_JSON", message) from None


def encode_json(body: object) -> bytes:
    """A response body as UTF-8 JSON; text UTF-8 cannot carry (a lone surrogate) is escaped."""
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":")).encode()


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


#: A request handler: the router has put the path parameters in ``request.params``.
Handler = Callable[[Request], Awaitable[Response]]


@attrs.frozen
class _Pattern:
    """A path with ``{name}`` segments; ``{name:a|b}`` takes only the values listed."""

    segments: tuple[str, ...]
    methods: Mapping[str, Handler]

    def match(self, segments: Sequence[str]) -> dict[str, str] | None:
        if len(segments) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for pattern, segment in zip(self.segments, segments, strict=True):
            if pattern.startswith("{") and pattern.endswith("}"):
                name, _, choices = pattern[1:-1].partition(":")
                if not segment or (choices and segment not in choices.split("|")):
                    return None
                params[name] = segment
            elif pattern != segment:
                return None
        return params


class Router:
    """Routes a request to its handler by path and method.

    ``routes`` maps a path to ``{method: handler}``. A path is exact (``"/health"``) or has
    parameter segments (``"/v1/images/{id}"``; ``"{event:opened|clicked}"`` takes only those
    values); exact paths win, then patterns in the order given. A trailing slash is ignored.
    An unknown path is 404 ``NOT_FOUND``; a method the path does not take is 405
    ``METHOD_NOT_ALLOWED`` with ``Allow``. ``HEAD`` is served by the ``GET`` handler (the
    server drops the body).
    """

    def __init__(self, routes: Mapping[str, Mapping[str, Handler]]) -> None:
        self._exact: dict[str, Mapping[str, Handler]] = {}
        self._patterns: list[_Pattern] = []
        for path, methods in routes.items():
            if "{" in path:
                self._patterns.append(_Pattern(tuple(path.split("/")), dict(methods)))
            else:
                self._exact[path] = dict(methods)

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler for ``method`` on ``path`` and the path parameters; raises
        :class:`HTTPError` 404 or 405."""
        stripped = path.rstrip("/") or "/"
        params: dict[str, str] = {}
        methods = self._exact.get(stripped)
        if methods is None:
            segments = stripped.split("/")
            for pattern in self._patterns:
                found = pattern.match(segments)
                if found is not None:
                    methods, params = pattern.methods, found
                    break
        if methods is None:
            raise HTTPError(404, "NOT_FOUND", f"no route {path}")
        handler = methods.get("GET" if method == "HEAD" else method)
        if handler is None:
            allowed = ", ".join(sorted({*methods, "HEAD"} if "GET" in methods else methods))
            raise HTTPError(
                405,
                "METHOD_NOT_ALLOWED",
                f"{method} is not allowed on {path} (allowed: {allowed})",
                headers=(("allow", allowed),),
            )
        return handler, params

    async def dispatch(self, request: Request) -> Response:
        """Answer ``request`` with its handler (its path parameters in ``request.params``)."""
        handler, params = self.resolve(request.method, request.path)
        request.params.update(params)
        return await handler(request)


async def answer_http(
    scope: HTTPScope,
    receive: ASGIReceiveCallable,
    send: ASGISendCallable,
    dispatch: Handler,
    *,
    max_body_bytes: int,
    logger: logging.Logger,
) -> None:
    """Answer one ASGI http request with ``dispatch``: an :class:`HTTPError` or
    :class:`ValidationFailed` becomes its error answer, anything unexpected is logged and
    answered 500 ``INTERNAL_ERROR`` (no traceback in the body), and a client gone before its
    body arrived gets nothing."""
    headers = {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
    }
    request = Request(
        scope["method"],
        scope["path"],
        headers,
        receive,
        max_body_bytes,
        query=scope["query_string"].decode("latin-1"),
    )
    try:
        response = await dispatch(request)
    except ClientGone:
        return
    except HTTPError as error:
        response = error.response
    except ValidationFailed as error:
        response = validation_error(error).response
    except Exception:
        logger.exception("unexpected error answering %s %s", request.method, request.path)
        response = HTTPError(500, "INTERNAL_ERROR", "unexpected error (see the log)").response
    body, header_list = response.encode()
    await send({"type": "http.response.start", "status": response.status, "headers": header_list})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def handle_lifespan(
    receive: ASGIReceiveCallable,
    send: ASGISendCallable,
    *,
    is_open: Callable[[], bool],
    open: Callable[[], Awaitable[None]],
    close: Callable[[], Awaitable[None]],
    what: str,
) -> None:
    """The ASGI lifespan protocol for a service whose state (``what``, e.g. its file) is
    opened with ``open``: startup opens it unless already open, and shutdown closes it only
    if startup opened it."""
    opened_here = False
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            if not is_open():
                try:
                    await open()
                except Exception as error:
                    message = f"cannot open {what}: {error}"
                    await send({"type": "lifespan.startup.failed", "message": message})
                    return
                opened_here = True
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            if opened_here:
                await close()
            await send({"type": "lifespan.shutdown.complete"})
            return


class KeyLocks:
    """One :class:`trio.Lock` per idempotency key in use, dropped when nobody holds or waits."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        """How many keys are held or waited for now."""
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold ``key``'s lock for the block (waiting for whoever holds it)."""
        lock, users = self._locks.setdefault(key, (trio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]


async def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A non-blocking socket listening on ``host:port`` (resolved without blocking trio)."""
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name != "nt":  # on Windows SO_REUSEADDR would let another socket share the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_asgi(
    app: ASGIFramework,
    *,
    host: str,
    port: int,
    logger: logging.Logger,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI ``app`` over HTTP with hypercorn's trio worker until cancelled; reports
    the base URL (``"http://127.0.0.1:41234"``) through ``task_status`` once the socket
    listens. Hypercorn's own messages go to ``logger``."""
    config = Config()
    config.accesslog = None
    # A logger object (not "-"), so hypercorn leaves the logging configuration alone: its
    # INFO lines ("Running on ...") stay quiet unless the application enables them.
    config.errorlog = logger
    # The listening socket is made here, not by hypercorn.trio.serve from config.bind:
    # hypercorn leaks its socket when bind() fails (a ResourceWarning), and owning it lets
    # this function close it whichever way serving ends.
    sock = await listen(host, port, config.backlog)
    try:
        wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
        sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(worker_serve, wrapped, config, sockets=sockets)
            )
            task_status.started(binds[0])
    finally:
        sock.close()
