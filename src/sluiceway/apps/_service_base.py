"""What the applications' HTTP services share (the notification service, the image service):
:class:`HttpService`, an ASGI application over a store (a :class:`~._sqlite_file.SqliteFile`)
with a fault switch: its lifecycle, serving with hypercorn's trio worker, the fault settings,
and the routes every such service has (``/health``, ``/stats``, ``/admin/faults``)."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

from ._http import (
    ClientGone,
    Handler,
    KeyLocks,
    Request,
    Response,
    Router,
    answer_http,
    handle_lifespan,
    serve_asgi,
)

__all__ = ["FaultSwitch", "HttpService", "ServiceStore"]


class FaultSwitch(Protocol):
    """What :class:`HttpService` needs of a service's fault settings (immutable; an ``attrs``
    class such as the notification service's ``Faults``)."""

    @property
    def seed(self) -> int | None:
        """The seed of the fault RNG (``None``: from the OS)."""

    def evolve(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (validated like the constructor)."""

    def to_json(self) -> dict[str, Any]:
        """The settings as the admin endpoint shows them."""


class ServiceStore(Protocol):
    """What :class:`HttpService` needs of a service's store (a
    :class:`~._sqlite_file.SqliteFile` subclass)."""

    @property
    def path(self) -> str:
        """The file, for messages."""

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` ran and :meth:`close` did not."""

    async def open(self) -> None:
        """Open (creating if needed) the file; safe to call again."""

    async def close(self) -> None:
        """Close the file (safe to call twice; completes even when cancelled)."""

    async def stats(self) -> dict[str, int]:
        """The request totals kept in the file."""


StoreT = TypeVar("StoreT", bound=ServiceStore)
FaultsT = TypeVar("FaultsT", bound=FaultSwitch)


class HttpService(Generic[StoreT, FaultsT]):
    """An ASGI application (``await service(scope, receive, send)``; http and lifespan,
    websockets refused) over the SQLite file ``store``, with the fault settings ``faults``
    (their random draws from ``self._rng``, seeded with ``faults.seed``) and a lock per
    idempotency key in use (``self._key_locks``).

    ``routes`` are the service's own (see :class:`~._http.Router`); every service also answers
    ``GET /health``, ``GET /stats`` (:meth:`stats`) and ``GET``/``POST /admin/faults``, whose
    body ``parse_faults`` turns into the changes for :meth:`configure_faults`. Requests with a
    body larger than ``max_body_bytes`` are answered 413 ``PAYLOAD_TOO_LARGE``.

    A subclass sets ``_log``, its logger; hypercorn's messages go to its ``.server`` child.
    """

    #: Where the service logs (unexpected errors, fault changes, and what the subclass logs).
    _log: ClassVar[logging.Logger]

    def __init__(
        self,
        store: StoreT,
        *,
        faults: FaultsT,
        parse_faults: Callable[[object], dict[str, Any]],
        max_body_bytes: int,
        routes: Mapping[str, Mapping[str, Handler]],
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        self._store = store
        self._faults = faults
        self._rng = random.Random(faults.seed)
        self._parse_faults = parse_faults
        self._key_locks = KeyLocks()
        self._in_flight = 0
        self.max_body_bytes = max_body_bytes
        self._router = Router(
            {
                "/health": {"GET": self._health},
                "/stats": {"GET": self._stats},
                **routes,
                "/admin/faults": {"GET": self._get_faults, "POST": self._post_faults},
            }
        )

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
        await serve_asgi(
            self,
            host=host,
            port=port,
            logger=logging.getLogger(f"{self._log.name}.server"),
            task_status=task_status,
        )

    # -- state -----------------------------------------------------------------------------

    @property
    def faults(self) -> FaultsT:
        """The current fault settings."""
        return self._faults

    def configure_faults(self, **changes: Any) -> FaultsT:
        """Change some fault settings (as ``POST /admin/faults`` does); re-seeds the RNG when
        ``seed`` is among the changes. Returns the new settings."""
        faults = self._faults.evolve(**changes)
        if "seed" in changes:
            self._rng.seed(faults.seed)
        self._faults = faults
        self._log.info("faults: %s", faults)
        return faults

    async def stats(self) -> dict[str, int]:
        """The store's request totals, and ``inFlight``: the requests in progress now in this
        process."""
        stats = await self._store.stats()
        stats["inFlight"] = self._in_flight
        return stats

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """The ASGI application (http and lifespan; websockets are refused)."""
        if scope["type"] == "http":
            await answer_http(
                scope,
                receive,
                send,
                self._router.dispatch,
                max_body_bytes=self.max_body_bytes,
                logger=self._log,
            )
        elif scope["type"] == "lifespan":
            await handle_lifespan(
                receive,
                send,
                is_open=lambda: self._store.is_open,
                open=self.open,
                close=self.aclose,
                what=self._store.path,
            )
        else:
            await send({"type": "websocket.close", "code": 1003, "reason": "not supported"})

    @asynccontextmanager
    async def _failures_counted(
        self, count_failure: Callable[[], Awaitable[None]]
    ) -> AsyncIterator[None]:
        """Count the request as a failure (``await count_failure()``) when the block raises,
        unless the client left before its body arrived (nobody is answered then). A failure
        to count is logged: the request's own error is the one answered."""
        try:
            yield
        except ClientGone:
            raise
        except Exception:
            try:
                await count_failure()
            except Exception:
                self._log.exception("cannot count a failed request")
            raise

    # -- the routes every service has -----------------------------------------------------

    async def _health(self, request: Request) -> Response:
        return Response(200, {"status": "ok"})

    async def _stats(self, request: Request) -> Response:
        return Response(200, await self.stats())

    async def _get_faults(self, request: Request) -> Response:
        return Response(200, self._faults.to_json())

    async def _post_faults(self, request: Request) -> Response:
        changes = self._parse_faults(await request.json())
        return Response(200, self.configure_faults(**changes).to_json())
