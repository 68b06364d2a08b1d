"""The notification service: a hand-written ASGI app over :class:`~._store.Store`, served by
hypercorn's trio worker."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from types import TracebackType
from typing import Any, NoReturn, Self

import attrs
import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope
from hypercorn.utils import wrap_app

from ._faults import Faults, faults_changes
from ._store import EVENTS, Store
from ._validation import (
    EmailRequest,
    ValidationFailed,
    parse_email_request,
    parse_engagement_event,
    parse_engagement_query,
)

__all__ = ["DEFAULT_MAX_BODY_BYTES", "NotificationService", "serve_notifications"]

log = logging.getLogger("sluiceway.apps.notification")

#: Requests with a larger body are answered 413 ``PAYLOAD_TOO_LARGE``.
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024

_JSON_HEADERS = ((b"content-type", b"application/json"), (b"cache-control", b"no-store"))


@attrs.frozen
class _Response:
    status: int
    body: object
    headers: tuple[tuple[str, str], ...] = ()


class _HTTPError(Exception):
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
        self.response = _Response(
            status,
            {"error": {"code": code, "message": message, "details": [dict(d) for d in details]}},
            headers,
        )


class _ClientGone(Exception):
    """The client disconnected before its request body arrived: nobody to answer."""


@attrs.define
class _Request:
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
        too_large = _HTTPError(
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
                raise _ClientGone
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
                raise _HTTPError(
                    415,
                    "UNSUPPORTED_MEDIA_TYPE",
                    f"the request body must be application/json, not {media_type or '(empty)'}",
                )
        if not body.strip():
            raise _HTTPError(400, "INVALID_JSON", "the request body is empty")
        try:
            return json.loads(body.decode("utf-8"), parse_constant=_no_constant)
        except UnicodeDecodeError:
            raise _HTTPError(400, "INVALID_JSON", "the request body is not UTF-8") from None
        except (ValueError, RecursionError) as error:
            message = f"the request body is not valid JSON ({error})"
            raise _HTTPError(400, "INVALID_JSON", message) from None


def _encode(body: object) -> bytes:
    """A response body as UTF-8 JSON; text UTF-8 cannot carry (a lone surrogate) is escaped."""
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":")).encode()


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def _validation_error(error: ValidationFailed) -> _HTTPError:
    fields = ", ".join(dict.fromkeys(d["field"] for d in error.details))
    return _HTTPError(400, "VALIDATION_ERROR", f"invalid {fields}", details=error.details)


class _KeyLocks:
    """One :class:`trio.Lock` per idempotency key in use, dropped when nobody holds or waits."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (trio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]


_Handler = Callable[["NotificationService", _Request], Awaitable[_Response]]


class NotificationService:
    """Seed 000's notification service: ``POST /send/email`` de-duplicated by idempotency key,
    with its state in the SQLite file ``db_path`` and a fault switch (:class:`Faults`).

    The instance is an ASGI application (``await service(scope, receive, send)``); serve it
    with :meth:`serve` (or :func:`serve_notifications`). Open the store first, with ``async with
    service:`` or :meth:`open`. (An ASGI server's lifespan startup opens it too if needed, and
    its lifespan shutdown then closes it, but hypercorn skips the lifespan shutdown when its
    ``serve()`` is cancelled rather than triggered: prefer ``async with``.)

    A key is sent at most once: requests for one key are serialised within the process, and the
    ``sends`` table's primary key settles a race between processes sharing the file. A failed
    attempt (422, 502...) is *not* stored: a retry with the same key may succeed. A repeat of a
    stored key is answered 200 from the store whatever the faults and whatever else the body says.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        *,
        faults: Faults | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        threads: bool = True,
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        self._store = Store(db_path, threads=threads)
        self._faults = faults if faults is not None else Faults()
        self._rng = random.Random(self._faults.seed)
        self._key_locks = _KeyLocks()
        self._in_flight = 0
        self.max_body_bytes = max_body_bytes

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open (creating if needed) the SQLite file; safe to call again."""
        await self._store.open()

    async def aclose(self) -> None:
        """Close the SQLite file (completes even when cancelled)."""
        await self._store.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve over HTTP with hypercorn's trio worker until cancelled; reports the base URL
        (``"http://127.0.0.1:41234"``) through ``task_status`` once the socket listens."""
        config = Config()
        config.accesslog = None
        # A logger object (not "-"), so hypercorn leaves the logging configuration alone: its
        # INFO lines ("Running on ...") stay quiet unless the application enables them.
        config.errorlog = logging.getLogger("sluiceway.apps.notification.server")
        # The listening socket is made here, not by hypercorn.trio.serve from config.bind:
        # hypercorn leaks its socket when bind() fails (a ResourceWarning), and owning it lets
        # this function close it whichever way serving ends.
        sock = await _listen(host, port, config.backlog)
        try:
            app = wrap_app(self, config.wsgi_max_body_size, "asgi")
            sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
            async with trio.open_nursery() as nursery:
                binds: list[str] = await nursery.start(
                    partial(worker_serve, app, config, sockets=sockets)
                )
                task_status.started(binds[0])
        finally:
            sock.close()

    # -- state -----------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """The current fault settings."""
        return self._faults

    def configure_faults(self, **changes: Any) -> Faults:
        """Change some fault settings (as ``POST /admin/faults`` does); re-seeds the RNG when
        ``seed`` is among the changes. Returns the new settings."""
        faults = self._faults.evolve(**changes)
        if "seed" in changes:
            self._rng.seed(faults.seed)
        self._faults = faults
        log.info("faults: %s", faults)
        return faults

    async def stats(self) -> dict[str, int]:
        """``{"sends", "requests", "repeats", "failures", "inFlight"}``: stored sends;
        ``POST /send/email`` requests answered (all of them, the 200 repeats, the errors); new
        sends in progress now (in the simulated provider call or being recorded).
        ``requests == sends + repeats + failures`` on a file used by one service at a time (the
        counts persist in the file; ``inFlight`` is this process's)."""
        stats = await self._store.stats()
        stats["inFlight"] = self._in_flight
        return stats

    async def notification(self, notification_id: str) -> dict[str, Any] | None:
        """The stored SendResult with this id, or ``None``."""
        return await self._store.by_id(notification_id)

    async def record_engagement(
        self, email_id: str, event: str, *, at: float | None = None
    ) -> dict[str, Any] | None:
        """Record ``event`` (``"opened"``, ``"clicked"`` or ``"replied"``) for the sent email
        ``email_id`` at ``at`` (seconds since the epoch; default now), as ``POST
        /v1/emails/{id}/{event}`` does. Returns the email's engagement record, or ``None`` for
        an unknown email."""
        return await self._store.engage(email_id, event, time.time() if at is None else at)

    async def engagement(
        self, *, campaign: str | None = None, contact: str | None = None, step: str | None = None
    ) -> list[dict[str, Any]]:
        """The engagement records of the emails sent with these ``metadata`` references, as
        ``GET /v1/engagement`` lists them (``None``: any)."""
        return await self._store.engagement(campaign=campaign, contact=contact, step=step)

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """The ASGI application (http and lifespan; websockets are refused)."""
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await send({"type": "websocket.close", "code": 1003, "reason": "not supported"})

    async def _lifespan(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        opened_here = False
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                if not self._store.is_open:
                    try:
                        await self.open()
                    except Exception as error:
                        message = f"cannot open {self._store.path}: {error}"
                        await send({"type": "lifespan.startup.failed", "message": message})
                        return
                    opened_here = True
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                if opened_here:
                    await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        request = _Request(
            scope["method"],
            scope["path"],
            headers,
            receive,
            self.max_body_bytes,
            query=scope["query_string"].decode("latin-1"),
        )
        try:
            response = await self._dispatch(request)
        except _ClientGone:
            return
        except _HTTPError as error:
            response = error.response
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            response = _HTTPError(500, "INTERNAL_ERROR", "unexpected error (see the log)").response
        body = _encode(response.body)
        header_list = [
            *_JSON_HEADERS,
            (b"content-length", str(len(body)).encode()),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers),
        ]
        await send(
            {"type": "http.response.start", "status": response.status, "headers": header_list}
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _dispatch(self, request: _Request) -> _Response:
        path = request.path.rstrip("/") or "/"
        methods = _ROUTES.get(path)
        if methods is None:
            head, _, tail = path.rpartition("/")
            if head == "/notifications" and tail:
                methods = _ROUTES["/notifications/{id}"]
                request.params["id"] = tail
            prefix, _, email_id = head.rpartition("/")
            if prefix == "/v1/emails" and email_id and tail in EVENTS:
                methods = _ROUTES["/v1/emails/{id}/{event}"]
                request.params.update(id=email_id, event=tail)
        if methods is None:
            raise _HTTPError(404, "NOT_FOUND", f"no route {request.path}")
        method = "GET" if request.method == "HEAD" else request.method
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(sorted({*methods, "HEAD"} if "GET" in methods else methods))
            raise _HTTPError(
                405,
                "METHOD_NOT_ALLOWED",
                f"{request.method} is not allowed on {request.path} (allowed: {allowed})",
                headers=(("allow", allowed),),
            )
        return await handler(self, request)

    # -- handlers --------------------------------------------------------------------------

    async def _health(self, request: _Request) -> _Response:
        return _Response(200, {"status": "ok"})

    async def _stats(self, request: _Request) -> _Response:
        return _Response(200, await self.stats())

    async def _get_notification(self, request: _Request) -> _Response:
        notification_id = request.params["id"]
        result = await self.notification(notification_id)
        if result is None:
            raise _HTTPError(404, "NOT_FOUND", f"no notification {notification_id}")
        return _Response(200, result)

    async def _get_faults(self, request: _Request) -> _Response:
        return _Response(200, self._faults.to_json())

    async def _post_faults(self, request: _Request) -> _Response:
        try:
            changes = faults_changes(await request.json())
        except ValidationFailed as error:
            raise _validation_error(error) from None
        return _Response(200, self.configure_faults(**changes).to_json())

    async def _post_send_email(self, request: _Request) -> _Response:
        try:
            return await self._send_email(request)
        except _ClientGone:
            raise
        except Exception:
            try:
                await self._store.count_failure()
            except Exception:
                log.exception("cannot count a failed request")
            raise

    async def _send_email(self, request: _Request) -> _Response:
        body = await request.json()
        try:
            message = parse_email_request(body)
        except ValidationFailed as error:
            raise _validation_error(error) from None
        key = message.idempotency_key
        summary = message.summary()
        try:  # what could not be stored is refused before the provider sends anything
            json.dumps(summary, ensure_ascii=False, allow_nan=False).encode()
        except ValueError as error:  # UnicodeEncodeError among them
            raise _HTTPError(
                400, "VALIDATION_ERROR", f"the message cannot be stored: {error}"
            ) from None
        async with self._key_locks.hold(key):
            stored = await self._store.repeat(key)
            if stored is not None:
                return _Response(200, stored)
            self._in_flight += 1
            try:
                await self._provider_call(message)  # reads the faults before any checkpoint
                result = _send_result(message)
                inserted, stored = await self._store.record(key, result, summary)
            finally:
                self._in_flight -= 1
        if not inserted:  # another process sharing the file sent it first
            return _Response(200, stored)
        log.info("sent %s to %s (key %s)", result["id"], ", ".join(message.to), key)
        return _Response(202, result, (("location", f"/notifications/{result['id']}"),))

    async def _post_engagement_event(self, request: _Request) -> _Response:
        email_id, event = request.params["id"], request.params["event"]
        body = await request.body()
        at = time.time()
        if body.strip():
            try:
                at = parse_engagement_event(await request.json(), default=at)
            except ValidationFailed as error:
                raise _validation_error(error) from None
        record = await self._store.engage(email_id, event, at)
        if record is None:
            raise _HTTPError(404, "NOT_FOUND", f"no email {email_id}")
        return _Response(200, record)

    async def _get_engagement(self, request: _Request) -> _Response:
        try:
            filters = parse_engagement_query(request.query)
        except ValidationFailed as error:
            raise _validation_error(error) from None
        return _Response(200, await self._store.engagement(**filters))

    async def _get_engagement_summary(self, request: _Request) -> _Response:
        try:
            filters = parse_engagement_query(request.query)
        except ValidationFailed as error:
            raise _validation_error(error) from None
        if set(filters) != {"campaign"}:
            raise _HTTPError(400, "VALIDATION_ERROR", "the summary takes one filter: campaign=<id>")
        return _Response(200, await self._store.engagement_summary(filters["campaign"]))

    async def _provider_call(self, message: EmailRequest) -> None:
        """The simulated provider: the faults decide latency and failures (nothing is stored)."""
        faults = self._faults
        if not faults.channel_enabled:
            raise _HTTPError(422, "CHANNEL_DISABLED", "the email channel is disabled")
        delay = faults.latency
        if faults.jitter > 0:
            delay += self._rng.uniform(0.0, faults.jitter)
        if delay > 0:
            await trio.sleep(delay)
        rejected = [
            (f"{field}[{index}]", address)
            for field, addresses in (("to", message.to), ("cc", message.cc), ("bcc", message.bcc))
            for index, address in enumerate(addresses)
            if faults.rejects(address)
        ]
        if rejected:
            raise _HTTPError(
                502,
                "INVALID_RECIPIENT",
                "the provider rejected " + ", ".join(address for _, address in rejected),
                details=[{"field": f, "message": f"{a} was rejected"} for f, a in rejected],
            )
        if faults.fail_rate > 0 and self._rng.random() < faults.fail_rate:
            retry_after = (("retry-after", "1"),) if faults.fail_code == "RATE_LIMITED" else ()
            raise _HTTPError(
                faults.fail_status,
                faults.fail_code,
                f"injected provider failure ({faults.fail_code})",
                headers=retry_after,
            )


_ROUTES: dict[str, dict[str, _Handler]] = {
    "/health": {"GET": NotificationService._health},
    "/stats": {"GET": NotificationService._stats},
    "/send/email": {"POST": NotificationService._post_send_email},
    "/notifications/{id}": {"GET": NotificationService._get_notification},
    "/v1/emails/{id}/{event}": {"POST": NotificationService._post_engagement_event},
    "/v1/engagement": {"GET": NotificationService._get_engagement},
    "/v1/engagement/summary": {"GET": NotificationService._get_engagement_summary},
    "/admin/faults": {
        "GET": NotificationService._get_faults,
        "POST": NotificationService._post_faults,
    },
}


def _send_result(message: EmailRequest) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "id": str(uuid.uuid4()),
        "providerMessageId": f"<{uuid.uuid4().hex}@local>",
        "status": "accepted",
        "channel": "email",
        "provider": "local",
        "timestamp": now,
        "idempotencyKey": message.idempotency_key,
        "to": list(message.to),
    }


async def _listen(host: str, port: int, backlog: int) -> socket.socket:
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


async def serve_notifications(
    db_path: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Faults | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a :class:`NotificationService` on ``db_path`` over HTTP until cancelled.

    For ``url = await nursery.start(serve_notifications, path)``: reports the base URL
    (``"http://127.0.0.1:41234"``; ``port=0`` picks a free port) once the socket listens.
    Cancelling stops the server (requests in progress are cancelled; a send is recorded
    entirely or not at all) and closes the file.
    """
    service = NotificationService(db_path, faults=faults, max_body_bytes=max_body_bytes)
    async with service:
        await service.serve(host=host, port=port, task_status=task_status)
