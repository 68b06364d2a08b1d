"""Seed 000's notification service, for real: ``POST /send/email`` de-duplicated by idempotency
key, its state in SQLite, served on 127.0.0.1 by hypercorn's trio worker, with a fault switch.

HTTP contract (JSON in and out; every error is ``{"error": {"code", "message", "details"}}``):

``POST /send/email``
    ``{idempotencyKey (1-256 chars), to [1-50 addresses], subject, html and/or text, from?,
    replyTo?, cc? and bcc? (<= 50 addresses each), attachments? (<= 10 of {name, contentType,
    contentBase64}), correlationId?, metadata? (object)}``; unknown fields are ignored.

    * **202** a SendResult ``{id, providerMessageId, status: "accepted", channel: "email",
      provider: "local", timestamp, idempotencyKey, to}`` (and ``Location``) for a new key;
    * **200** the *stored* SendResult for a key already sent, whatever else the body says
      and whatever the faults (concurrent requests with one key make exactly one send);
    * **400** ``VALIDATION_ERROR`` (``details``: ``[{field, message}]``, e.g. ``to[2]``,
      ``attachments``, ``html|text``, ``metadata.tags[1]``) or ``INVALID_JSON``; **415**
      ``UNSUPPORTED_MEDIA_TYPE`` (a content type other than JSON); **413**
      ``PAYLOAD_TOO_LARGE``. Besides each field's own rule, ``VALIDATION_ERROR`` answers a
      lone surrogate (``"\\ud800"``, which UTF-8 cannot carry) in any string, ``metadata``'s
      keys included; a line break or other control character (tab aside; NEL, U+2028 and
      U+2029 included) in a field that ends up in a header (``idempotencyKey``, ``subject``,
      ``from``, ``replyTo``, the addresses, ``correlationId``, attachment names and types);
      and a number in ``metadata`` beyond a double's range (``1e999``). All are checked before
      the provider is called: nothing is sent and nothing is stored;
    * **422** ``CHANNEL_DISABLED``; **502** ``INVALID_RECIPIENT`` (``fail_recipients``) or
      the injected ``fail_status``/``fail_code`` (502 ``PROVIDER_ERROR`` by default;
      ``RATE_LIMITED`` adds ``Retry-After``). **A failed attempt is not stored**: a retry with
      the same key sends once the fault is gone;
    * **500** ``INTERNAL_ERROR`` for anything unexpected (logged; no traceback in the body).

``POST /v1/emails/{id}/opened``, ``/clicked``, ``/replied``
    Engagement with the sent email ``id`` (the SendResult's ``id``), as a recipient's mail
    client, a test, the demo or a provider's webhook reports it; an optional body ``{"at":
    seconds since the epoch}`` says when (for virtual or shifted clocks; default: now). **200**
    with the email's engagement record (below) every time: a repeat is idempotent, counted
    (``opens``, ``clicks``, ``replies``) and keeps the earliest time reported. **404**
    ``NOT_FOUND`` for an unknown email (nothing recorded); **400** ``VALIDATION_ERROR`` for an
    ``at`` that is not a finite, non-negative number, or a body that is not an object; **400**
    ``INVALID_JSON``/**415** as for sends.

``GET /v1/engagement?campaign=C&contact=K[&step=S]``
    The emails sent with ``metadata`` ``{"campaign_id": C, "contact_id": K, "step_id": S}``
    (string values; at least one of ``campaign`` and ``contact``), oldest first, each
    ``{email_id, campaign, contact, step, sent_at, opened_at, clicked_at, replied_at, opens,
    clicks, replies}``: times in seconds since the epoch, ``null`` until the event happens.
    **400** ``VALIDATION_ERROR`` for a missing, empty, repeated or unknown parameter.

``GET /notifications/{id}``: the SendResult, or 404 ``NOT_FOUND``. ``GET /health``:
``{"status": "ok"}``. ``GET /stats``: ``{"sends", "requests", "repeats", "failures",
"inFlight"}``. ``GET``/``POST /admin/faults``: the :class:`Faults` settings (partial updates,
400 ``VALIDATION_ERROR`` for a bad or unknown setting). Unknown paths: 404 ``NOT_FOUND``; a
wrong method: 405 ``METHOD_NOT_ALLOWED`` with ``Allow``.

The SQLite file carries its schema version (``PRAGMA user_version``); opening an older file
migrates it in place (a file from before engagement keeps its sends, their references read
from their stored ``metadata``), and a file from a newer version is refused.

Command line: ``python -m sluiceway.apps.notification --db PATH --port N [--fail-rate ...]``.
"""

from ._cli import main
from ._faults import Faults
from ._service import DEFAULT_MAX_BODY_BYTES, NotificationService, serve_notifications

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "Faults",
    "NotificationService",
    "main",
    "serve_notifications",
]
