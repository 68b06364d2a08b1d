"""The WebSocket protocol, version 1: frames, requests, results, events and error codes.

Every frame is one JSON object in a text message. A client sends requests::

    {"v": 1, "id": 7, "op": "subscribe", "entity_id": "...", "after_seq": 0}

and gets exactly one response per request, carrying the same ``id``::

    {"v": 1, "id": 7, "ok": true, "result": {"subscription": 1}}
    {"v": 1, "id": 7, "ok": false, "error": {"code": "not_found", "message": "..."}}

The server also sends events, which have an ``event`` key instead of an ``id``: ``hello`` once
on connecting, then ``envelopes`` (a batch of envelopes, in ``seq`` order) and ``end`` for
subscriptions. A subscription's ``end`` says
the entity's ``status`` when its run ended, or ``"unsubscribed"``, or ``"error"`` (with an
``error`` object like a response's) if the server could not go on streaming; its ``seq`` is
where to subscribe again from. See ``docs/protocol.rst`` for every message and error code.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs

from .._errors import SluicewayError
from ..store import EntityRecord

#: The protocol version this server and client speak.
PROTOCOL_VERSION = 1
#: The longest ``interval`` of a subscription, in seconds.
MAX_INTERVAL = 60.0
#: The largest ``keep`` of a subscription.
MAX_KEEP = 1_000

#: Close code: a slow consumer, whose subscriptions waited for room in its queue for longer
#: than ``ServerLimits.slow_consumer_seconds``. Reconnect and subscribe again from the last
#: ``seq`` received.
CLOSE_SLOW_CONSUMER = 4008
#: Close code: the server is shutting down.
CLOSE_GOING_AWAY = 1001


class ErrorCode(enum.Enum):
    """The ``code`` of an error response."""

    #: The frame is not a JSON object in a text message.
    BAD_FRAME = "bad_frame"
    #: ``v`` is missing or not a version this server speaks.
    UNSUPPORTED_VERSION = "unsupported_version"
    #: ``op`` names no operation.
    UNKNOWN_OP = "unknown_op"
    #: The request's fields are missing, unknown or of the wrong type (``details`` lists them).
    INVALID_REQUEST = "invalid_request"
    #: The frame is larger than the server accepts.
    FRAME_TOO_LARGE = "frame_too_large"
    #: Too many requests of this connection are in progress at once.
    TOO_MANY_REQUESTS = "too_many_requests"
    #: No entity has this id (or name).
    NOT_FOUND = "not_found"
    #: The entity exists already (a root with that name).
    CONFLICT = "conflict"
    #: Another runtime holds the entity's lease.
    BUSY = "busy"
    #: The entity will not run again, so it takes no message.
    NOT_WAITING = "not_waiting"
    #: The entity was cancelled.
    CANCELLED = "cancelled"
    #: ``retry`` of an entity that is not FAILED.
    NOT_FAILED = "not_failed"
    #: The entity holds data only (a ``DataEntity``): it does not run.
    NOT_RUNNABLE = "not_runnable"
    #: The entity type is not registered with the application.
    UNKNOWN_TYPE = "unknown_type"
    #: The application has no endpoint of that name.
    UNKNOWN_ENDPOINT = "unknown_endpoint"
    #: The application's endpoint refused the call (its own ``code`` is in ``details``).
    ENDPOINT_ERROR = "endpoint_error"
    #: No subscription of this connection has that number.
    UNKNOWN_SUBSCRIPTION = "unknown_subscription"
    #: The server is shutting down and takes no new work.
    SHUTTING_DOWN = "shutting_down"
    #: Something failed inside the server; the message says what, without internals.
    INTERNAL_ERROR = "internal_error"


class ProtocolError(SluicewayError):
    """A request that gets an error response: its code, message and optional details."""

    def __init__(self, code: ErrorCode, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """``{"code", "message"}`` plus ``details`` when there are some."""
        out: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.details is not None:
            out["details"] = self.details
        return out


# -- requests ------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class CreateRequest:
    """``create``: a root entity (result: the entity)."""

    type: str
    data: dict[str, Any] = attrs.field(factory=dict)
    name: str | None = None
    exist_ok: bool = False


@attrs.frozen(kw_only=True)
class StartRequest:
    """``start``: run an entity in the server (result: ``{"entity_id", "state"}``; follow it
    with ``subscribe``)."""

    entity_id: str


@attrs.frozen(kw_only=True)
class SubscribeRequest:
    """``subscribe``: the envelopes of an entity's subtree (or of the entity alone) after
    ``after_seq`` (result: ``{"subscription"}``, then ``envelopes`` events and one ``end``).

    ``interval`` (seconds) spaces the subscription's ``envelopes`` events: at most one per
    interval, holding what came meanwhile. ``keep`` bounds an event to the newest ``keep``
    envelopes; the ones passed over are counted in its ``skipped``. A page showing a run of
    thousands of children takes them both: every envelope of it would cost the server more
    than the run."""

    entity_id: str
    after_seq: int = 0
    subtree: bool = True
    interval: float = 0.0
    keep: int | None = None


@attrs.frozen(kw_only=True)
class UnsubscribeRequest:
    """``unsubscribe``: stop a subscription of this connection (result: ``{}``)."""

    subscription: int


@attrs.frozen(kw_only=True)
class SendMessageRequest:
    """``send_message``: a message for an entity's wait (result: ``{"message_id"}``)."""

    entity_id: str
    message: str
    data: Any = None


@attrs.frozen(kw_only=True)
class CancelRequest:
    """``cancel``: cancel an entity and its unfinished descendants (result:
    ``{"cancelled": [ids]}``)."""

    entity_id: str


@attrs.frozen(kw_only=True)
class GetRequest:
    """``get``: an entity as stored (result: the entity)."""

    entity_id: str


@attrs.frozen(kw_only=True)
class TreeRequest:
    """``tree``: an entity and its descendants, with counts of children by status (result:
    the tree)."""

    entity_id: str
    depth: int | None = None
    max_children: int = 20


@attrs.frozen(kw_only=True)
class CallRequest:
    """``call``: one of the application's endpoints (result: what it returns)."""

    endpoint: str
    body: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class ListRequest:
    """``list``: the root entities (runs), newest first, filtered, a page at a time (result:
    ``{"runs": [...], "cursor"}``; pass ``cursor`` back for the next page, ``null`` at the
    end)."""

    status: str | None = None
    type: str | None = None
    name: str | None = None
    limit: int = 50
    cursor: str | None = None


@attrs.frozen(kw_only=True)
class CapacityRequest:
    """``capacity``: the capacity nodes the runtime shows, with what they hold and who waits
    (result: ``{"nodes": [...]}``)."""


@attrs.frozen(kw_only=True)
class RetryRequest:
    """``retry``: run a FAILED entity again, from the top (result: as ``start``'s)."""

    entity_id: str


@attrs.frozen(kw_only=True)
class PingRequest:
    """``ping`` (result: ``{"pong": true}``)."""


#: Every operation and the class of its request.
REQUESTS: dict[str, type[Any]] = {
    "create": CreateRequest,
    "start": StartRequest,
    "subscribe": SubscribeRequest,
    "unsubscribe": UnsubscribeRequest,
    "send_message": SendMessageRequest,
    "cancel": CancelRequest,
    "get": GetRequest,
    "tree": TreeRequest,
    "call": CallRequest,
    "list": ListRequest,
    "capacity": CapacityRequest,
    "retry": RetryRequest,
    "ping": PingRequest,
}


def _strict(kind: type[Any] | tuple[type[Any], ...], name: str) -> Any:
    def structure(value: Any, _: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {name}, got a boolean")
        if not isinstance(value, kind):
            raise TypeError(f"expected {name}, got {type(value).__name__}")
        return value

    return structure


#: Structures requests strictly: no type coercion, no unknown fields.
request_converter = cattrs.Converter(forbid_extra_keys=True)
request_converter.register_structure_hook(str, _strict(str, "a string"))
request_converter.register_structure_hook(int, _strict(int, "an integer"))
request_converter.register_structure_hook(bool, _strict(bool, "a boolean"))
request_converter.register_structure_hook(
    float, lambda value, kind: float(_strict((int, float), "a number")(value, kind))
)
request_converter.register_structure_hook_func(
    lambda kind: kind == dict[str, Any],  # keys of JSON objects are strings already
    _strict(dict, "an object"),
)


@attrs.frozen
class Request:
    """A parsed request frame: its ``id``, ``op`` and structured fields."""

    id: int | str
    op: str
    body: Any


def parse_request(text: str | bytes, max_bytes: int) -> Request:
    """Parse one client frame.

    Raises:
        ProtocolError: with the request's ``id`` in ``details["id"]`` when it could be read.
    """
    if isinstance(text, bytes):
        raise ProtocolError(ErrorCode.BAD_FRAME, "binary frames are not supported; send JSON text")
    if len(text) > max_bytes or len(text.encode("utf-8")) > max_bytes:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"frames are limited to {max_bytes} bytes")
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"the frame is not JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise ProtocolError(
            ErrorCode.BAD_FRAME, f"a frame is a JSON object, got {type(frame).__name__}"
        )
    ident = frame.get("id")
    if (
        isinstance(ident, bool)
        or not isinstance(ident, int | str)
        or (isinstance(ident, str) and not 0 < len(ident) <= 64)
    ):
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST,
            "a request needs an 'id': an integer or a string of 1 to 64 characters",
        )
    version = frame.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"this server speaks protocol version {PROTOCOL_VERSION}; the frame says v={version!r}",
            {"id": ident, "supported": [PROTOCOL_VERSION]},
        )
    op = frame.get("op")
    cls = REQUESTS.get(op) if isinstance(op, str) else None
    if cls is None or not isinstance(op, str):
        raise ProtocolError(
            ErrorCode.UNKNOWN_OP,
            f"unknown op {op!r}; known: {sorted(REQUESTS)}",
            {"id": ident},
        )
    fields = {key: value for key, value in frame.items() if key not in ("v", "id", "op")}
    try:
        body = request_converter.structure(fields, cls)
    except Exception as exc:
        problems = (
            cattrs.transform_error(exc)
            if isinstance(exc, cattrs.BaseValidationError)
            else [str(exc)]
        )
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST,
            f"invalid {op} request: " + "; ".join(problems),
            {"id": ident, "problems": problems},
        ) from None
    return Request(ident, op, body)


def error_frame(ident: int | str | None, error: ProtocolError) -> dict[str, Any]:
    """The response frame for a failed request (``id`` is ``null`` if it was unreadable)."""
    body = error.to_dict()
    if isinstance(error.details, Mapping) and "id" in error.details:
        details = {k: v for k, v in error.details.items() if k != "id"}
        body.pop("details", None)
        if details:
            body["details"] = details
    return {"v": PROTOCOL_VERSION, "id": ident, "ok": False, "error": body}


def result_frame(ident: int | str, result: Any) -> dict[str, Any]:
    """The response frame for a successful request."""
    return {"v": PROTOCOL_VERSION, "id": ident, "ok": True, "result": result}


class EncodedResult(str):
    """A result already encoded as JSON: an answer shared by many connections (``get``,
    ``tree``, ``list``) is encoded once for all of them."""

    __slots__ = ()


def encoded(result: Mapping[str, Any]) -> EncodedResult:
    """``result`` encoded once (see :func:`dumps`)."""
    return EncodedResult(dumps(result))


def encoded_result_frame(ident: int | str, result: EncodedResult) -> str:
    """The response frame, as text, for a result already encoded."""
    return f'{{"v":{PROTOCOL_VERSION},"id":{json.dumps(ident)},"ok":true,"result":{result}}}'


def event_frame(event: str, **fields: Any) -> dict[str, Any]:
    """A server event frame."""
    return {"v": PROTOCOL_VERSION, "event": event, **fields}


def envelopes_frame(subscription: int, encoded: list[str], skipped: int = 0) -> str:
    """The ``envelopes`` event of a subscription, from its envelopes' JSON (encoded once);
    ``skipped`` counts the envelopes since the previous event that it leaves out."""
    counted = f',"skipped":{skipped}' if skipped else ""
    return (
        f'{{"v":{PROTOCOL_VERSION},"event":"envelopes","subscription":{subscription},'
        f'"envelopes":[{",".join(encoded)}]{counted}}}'
    )


def dumps(frame: Mapping[str, Any]) -> str:
    """Encode a frame (compact JSON; non-ASCII text as is, unless a string holds a lone
    surrogate, which UTF-8 cannot carry: then everything non-ASCII is escaped)."""
    text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(frame, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text


#: Converts records (and anything attrs) to JSON-safe values for results.
_out = cattrs.Converter()


def record_to_json(record: EntityRecord) -> dict[str, Any]:
    """An entity record as a JSON object (the status as its name)."""
    out: dict[str, Any] = _out.unstructure(record)
    out["status"] = record.status.value
    return out
