"""The notification service: a hand-written ASGI app over :class:`~._store.Store`, served by
hypercorn's trio worker (plumbing in :mod:`sluiceway.apps._http` and
:mod:`sluiceway.apps._service_base`)."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import trio

from .._http import HTTPError, Request, Response
from .._service_base import HttpService
from ._faults import Faults, faults_changes
from ._store import EVENTS, Store
from ._validation import (
    EmailRequest,
    parse_email_request,
    parse_engagement_event,
    parse_engagement_query,
)

__all__ = ["DEFAULT_MAX_BODY_BYTES", "NotificationService", "serve_notifications"]

log = logging.getLogger("sluiceway.apps.notification")

#: Requests with a larger body are answered 413 ``PAYLOAD_TOO_LARGE``.
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024


class NotificationService(HttpService[Store, Faults]):
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

    _log = log

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        *,
        faults: Faults | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        threads: bool = True,
    ) -> None:
        super().__init__(
            Store(db_path, threads=threads),
            faults=faults if faults is not None else Faults(),
            parse_faults=faults_changes,
            max_body_bytes=max_body_bytes,
            routes={
                "/send/email": {"POST": self._post_send_email},
                "/notifications/{id}": {"GET": self._get_notification},
                f"/v1/emails/{{id}}/{{event:{'|'.join(EVENTS)}}}": {
                    "POST": self._post_engagement_event
                },
                "/v1/engagement": {"GET": self._get_engagement},
                "/v1/engagement/summary": {"GET": self._get_engagement_summary},
            },
        )

    # -- state -----------------------------------------------------------------------------

    async def stats(self) -> dict[str, int]:
        """``{"sends", "requests", "repeats", "failures", "inFlight"}``: stored sends;
        ``POST /send/email`` requests answered (all of them, the 200 repeats, the errors); new
        sends in progress now (in the simulated provider call or being recorded).
        ``requests == sends + repeats + failures`` on a file used by one service at a time (the
        counts persist in the file; ``inFlight`` is this process's)."""
        return await super().stats()

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

    # -- handlers --------------------------------------------------------------------------

    async def _get_notification(self, request: Request) -> Response:
        notification_id = request.params["id"]
        result = await self.notification(notification_id)
        if result is None:
            raise HTTPError(404, "NOT_FOUND", f"no notification {notification_id}")
        return Response(200, result)

    async def _post_send_email(self, request: Request) -> Response:
        async with self._failures_counted(self._store.count_failure):
            return await self._send_email(request)

    async def _send_email(self, request: Request) -> Response:
        body = await request.json()
        message = parse_email_request(body)
        key = message.idempotency_key
        summary = message.summary()
        try:  # what could not be stored is refused before the provider sends anything
            json.dumps(summary, ensure_ascii=False, allow_nan=False).encode()
        except ValueError as error:  # UnicodeEncodeError among them
            raise HTTPError(
                400, "VALIDATION_ERROR", f"the message cannot be stored: {error}"
            ) from None
        async with self._key_locks.hold(key):
            stored = await self._store.repeat(key)
            if stored is not None:
                return Response(200, stored)
            self._in_flight += 1
            try:
                await self._provider_call(message)  # reads the faults before any checkpoint
                result = _send_result(message)
                inserted, stored = await self._store.record(key, result, summary)
            finally:
                self._in_flight -= 1
        if not inserted:  # another process sharing the file sent it first
            return Response(200, stored)
        log.info("sent %s to %s (key %s)", result["id"], ", ".join(message.to), key)
        return Response(202, result, (("location", f"/notifications/{result['id']}"),))

    async def _post_engagement_event(self, request: Request) -> Response:
        email_id, event = request.params["id"], request.params["event"]
        body = await request.body()
        at = time.time()
        if body.strip():
            at = parse_engagement_event(await request.json(), default=at)
        record = await self._store.engage(email_id, event, at)
        if record is None:
            raise HTTPError(404, "NOT_FOUND", f"no email {email_id}")
        return Response(200, record)

    async def _get_engagement(self, request: Request) -> Response:
        filters = parse_engagement_query(request.query)
        return Response(200, await self._store.engagement(**filters))

    async def _get_engagement_summary(self, request: Request) -> Response:
        filters = parse_engagement_query(request.query)
        if set(filters) != {"campaign"}:
            raise HTTPError(400, "VALIDATION_ERROR", "the summary takes one filter: campaign=<id>")
        return Response(200, await self._store.engagement_summary(filters["campaign"]))

    async def _provider_call(self, message: EmailRequest) -> None:
        """The simulated provider: the faults decide latency and failures (nothing is stored)."""
        faults = self._faults
        if not faults.channel_enabled:
            raise HTTPError(422, "CHANNEL_DISABLED", "the email channel is disabled")
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
            raise HTTPError(
                502,
                "INVALID_RECIPIENT",
                "the provider rejected " + ", ".join(address for _, address in rejected),
                details=[{"field": f, "message": f"{a} was rejected"} for f, a in rejected],
            )
        if faults.fail_rate > 0 and self._rng.random() < faults.fail_rate:
            retry_after = (("retry-after", "1"),) if faults.fail_code == "RATE_LIMITED" else ()
            raise HTTPError(
                faults.fail_status,
                faults.fail_code,
                f"injected provider failure ({faults.fail_code})",
                headers=retry_after,
            )


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
