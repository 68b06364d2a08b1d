"""Validation of ``POST /send/email`` bodies into :class:`EmailRequest`."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from .._checks import CONTROL_CHARACTERS, LONE_SURROGATE, json_object, query_pairs
from .._http import ValidationFailed

MAX_KEY_LENGTH = 256
MAX_RECIPIENTS = 50  # per list: to, cc, bcc
MAX_ATTACHMENTS = 10
MAX_SUBJECT_LENGTH = 998  # RFC 5322's line limit
MAX_SHORT_STRING = 320  # from, replyTo, attachment names, content types

_EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}"
    r"@(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w!#$&^.+-]*/[A-Za-z0-9][\w!#$&^.+-]*(?:\s*;.*)?")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: At most this many problems are reported for ``metadata``.
MAX_METADATA_PROBLEMS = 20

SURROGATE_MESSAGE = (
    "must not contain a lone surrogate (U+D800 to U+DFFF): such text cannot be encoded as UTF-8"
)


def is_email(value: str) -> bool:
    """Whether ``value`` is a plain ``local@domain.tld`` address (no display name)."""
    return _EMAIL.fullmatch(value) is not None


@attrs.frozen
class Attachment:
    """One validated attachment (its content stays base64)."""

    name: str
    content_type: str
    content_base64: str
    size: int


@attrs.frozen
class EmailRequest:
    """A validated ``POST /send/email`` body."""

    idempotency_key: str
    to: tuple[str, ...]
    subject: str
    html: str | None = None
    text: str | None = None
    sender: str | None = None
    reply_to: str | None = None
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    correlation_id: str | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def recipients(self) -> tuple[str, ...]:
        """Every address the email goes to: ``to``, then ``cc``, then ``bcc``."""
        return self.to + self.cc + self.bcc

    def summary(self) -> dict[str, Any]:
        """What the store records of the message (attachments by name and size only)."""
        return {
            "to": list(self.to),
            "cc": list(self.cc),
            "bcc": list(self.bcc),
            "from": self.sender,
            "replyTo": self.reply_to,
            "subject": self.subject,
            "html": self.html,
            "text": self.text,
            "attachments": [
                {"name": a.name, "contentType": a.content_type, "size": a.size}
                for a in self.attachments
            ],
            "correlationId": self.correlation_id,
            "metadata": dict(self.metadata),
        }


def text_problem(value: str, *, header: bool) -> str | None:
    """What is wrong with a string the service stores (``None``: nothing): a lone surrogate
    anywhere; in a ``header`` field (one that ends up in an email header: subject, addresses,
    names, keys), a line break or another control character, which would let the text start
    a header of its own (header injection)."""
    if LONE_SURROGATE.search(value):
        return SURROGATE_MESSAGE
    if header:
        found = CONTROL_CHARACTERS.search(value)
        if found is not None:
            return (
                "must not contain line breaks or other control characters "
                f"(U+{ord(found.group()):04X} at character {found.start()})"
            )
    return None


def _member(where: str, key: str) -> str:
    if _IDENTIFIER.fullmatch(key):
        return f"{where}.{key}"
    return f"{where}[{json.dumps(key)}]"  # ASCII: a key's own surrogates stay escaped


def json_problems(value: object, where: str) -> list[dict[str, str]]:
    """The lone surrogates (in strings and in keys) and the numbers that are not finite (a
    literal beyond a double's range, such as ``1e999``, decodes as infinity) in a decoded
    JSON value, each with its path (``metadata.tags[1]``); iterative, so that any nesting the
    decoder accepted is walked."""
    problems: list[dict[str, str]] = []
    stack: list[tuple[str, object]] = [(where, value)]
    while stack and len(problems) < MAX_METADATA_PROBLEMS:
        path, item = stack.pop()
        if isinstance(item, str):
            if LONE_SURROGATE.search(item):
                problems.append({"field": path, "message": SURROGATE_MESSAGE})
        elif isinstance(item, float):
            if not math.isfinite(item):
                problems.append(
                    {
                        "field": path,
                        "message": "must be a finite number (this one is beyond the range of a "
                        "double, and JSON has no Infinity)",
                    }
                )
        elif isinstance(item, Mapping):
            members = []
            for key, member in item.items():
                name = _member(path, str(key))
                if LONE_SURROGATE.search(str(key)):
                    problems.append({"field": name, "message": "its name " + SURROGATE_MESSAGE})
                members.append((name, member))
            stack.extend(reversed(members))
        elif isinstance(item, list):
            stack.extend(reversed([(f"{path}[{i}]", member) for i, member in enumerate(item)]))
    return problems


class _Checker:
    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body
        self.details: list[dict[str, str]] = []

    def bad(self, field: str, message: str) -> None:
        self.details.append({"field": field, "message": message})

    def string(
        self,
        field: str,
        *,
        required: bool = False,
        min_length: int = 0,
        max_length: int,
        header: bool = False,
    ) -> str | None:
        value = self.body.get(field)
        if value is None:
            if required:
                self.bad(field, "is required")
            return None
        if not isinstance(value, str):
            self.bad(field, "must be a string")
            return None
        problem = text_problem(value, header=header)
        if problem is not None:
            self.bad(field, problem)
            return None
        if not min_length <= len(value) <= max_length:
            if min_length:
                self.bad(field, f"must be {min_length} to {max_length} characters long")
            else:
                self.bad(field, f"must be at most {max_length} characters long")
            return None
        return value

    def addresses(self, field: str, *, required: bool = False) -> tuple[str, ...]:
        value = self.body.get(field)
        if value is None:
            if required:
                self.bad(field, "is required")
            return ()
        if not isinstance(value, list):
            self.bad(field, "must be a list of email addresses")
            return ()
        if required and not value:
            self.bad(field, "must hold at least one email address")
            return ()
        if len(value) > MAX_RECIPIENTS:
            self.bad(field, f"must hold at most {MAX_RECIPIENTS} email addresses")
            return ()
        good = True
        for index, item in enumerate(value):
            problem = text_problem(item, header=True) if isinstance(item, str) else None
            if problem is not None:
                self.bad(f"{field}[{index}]", problem)
                good = False
            elif not isinstance(item, str) or not is_email(item):
                self.bad(f"{field}[{index}]", "must be an email address")
                good = False
        return tuple(value) if good else ()

    def attachments(self) -> tuple[Attachment, ...]:
        value = self.body.get("attachments")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.bad("attachments", "must be a list")
            return ()
        if len(value) > MAX_ATTACHMENTS:
            self.bad("attachments", f"must hold at most {MAX_ATTACHMENTS} attachments")
            return ()
        result = []
        for index, item in enumerate(value):
            where = f"attachments[{index}]"
            if not isinstance(item, Mapping):
                self.bad(where, "must be an object {name, contentType, contentBase64}")
                continue
            name = item.get("name")
            content_type = item.get("contentType")
            content = item.get("contentBase64")
            size = -1
            name_problem = text_problem(name, header=True) if isinstance(name, str) else None
            type_problem = (
                text_problem(content_type, header=True) if isinstance(content_type, str) else None
            )
            if name_problem is not None:
                self.bad(f"{where}.name", name_problem)
            elif not isinstance(name, str) or not 1 <= len(name) <= MAX_SHORT_STRING:
                self.bad(f"{where}.name", "must be a non-empty string")
            if type_problem is not None:
                self.bad(f"{where}.contentType", type_problem)
            elif not isinstance(content_type, str) or not _MEDIA_TYPE.fullmatch(content_type):
                self.bad(f"{where}.contentType", "must be a media type such as text/plain")
            if not isinstance(content, str):
                self.bad(f"{where}.contentBase64", "must be a base64 string")
            else:
                try:
                    size = len(base64.b64decode(content, validate=True))
                except (binascii.Error, ValueError):
                    self.bad(f"{where}.contentBase64", "is not valid base64")
            if (
                name_problem is None
                and type_problem is None
                and isinstance(name, str)
                and isinstance(content_type, str)
                and isinstance(content, str)
                and size >= 0
            ):
                result.append(Attachment(name, content_type, content, size))
        return tuple(result)


def parse_email_request(body: object) -> EmailRequest:
    """Validate a decoded JSON body; raises :class:`ValidationFailed` naming every bad field.

    Unknown fields are ignored. ``from`` is any non-empty string (seed 000 sends the actor id
    there), ``replyTo`` an email address, ``to`` 1 to 50 addresses, ``cc``/``bcc`` up to 50.
    No string may hold a lone surrogate, and none that ends up in a header (the key,
    ``subject``, ``from``, ``replyTo``, the addresses, ``correlationId``, attachment names and
    types) a line break or other control character; ``metadata`` may hold any JSON but lone
    surrogates (in keys too) and numbers beyond a double's range.
    """
    check = _Checker(json_object(body))
    key = check.string(
        "idempotencyKey", required=True, min_length=1, max_length=MAX_KEY_LENGTH, header=True
    )
    to = check.addresses("to", required=True)
    subject = check.string(
        "subject", required=True, min_length=1, max_length=MAX_SUBJECT_LENGTH, header=True
    )
    html = check.string("html", max_length=2**31)
    text = check.string("text", max_length=2**31)
    raw = (check.body.get("html"), check.body.get("text"))
    if raw == (None, None):
        check.bad("html|text", "at least one of html or text is required")
    elif not html and not text and all(v is None or isinstance(v, str) for v in raw):
        check.bad("html|text", "at least one of html or text must be non-empty")
    sender = check.string("from", min_length=1, max_length=MAX_SHORT_STRING, header=True)
    reply_to = check.string("replyTo", min_length=1, max_length=MAX_SHORT_STRING, header=True)
    if reply_to is not None and not is_email(reply_to):
        check.bad("replyTo", "must be an email address")
    cc = check.addresses("cc")
    bcc = check.addresses("bcc")
    attachments = check.attachments()
    correlation_id = check.string(
        "correlationId", min_length=1, max_length=MAX_KEY_LENGTH, header=True
    )
    metadata = check.body.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        check.bad("metadata", "must be an object")
    elif metadata is not None:
        check.details.extend(json_problems(metadata, "metadata"))
    if check.details:
        raise ValidationFailed(check.details)
    assert key is not None
    assert subject is not None
    return EmailRequest(
        idempotency_key=key,
        to=to,
        subject=subject,
        html=html,
        text=text,
        sender=sender,
        reply_to=reply_to,
        cc=cc,
        bcc=bcc,
        attachments=attachments,
        correlation_id=correlation_id,
        metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
    )


def parse_engagement_event(body: object, *, default: float) -> float:
    """The time of a ``POST /v1/emails/{id}/{event}`` body ``{"at"?: seconds since the epoch}``
    (``default`` when ``at`` is absent or null); raises :class:`ValidationFailed`. ``at`` must
    be a finite, non-negative number (not a boolean); other fields are ignored."""
    at = json_object(body).get("at")
    if at is None:
        return default
    if isinstance(at, bool) or not isinstance(at, int | float):
        raise ValidationFailed([{"field": "at", "message": "must be a number of seconds"}])
    try:
        value = float(at)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value) or value < 0:
        raise ValidationFailed(
            [{"field": "at", "message": "must be a finite, non-negative number of seconds"}]
        )
    return value


#: The filters of ``GET /v1/engagement`` and the keyword of :meth:`Store.engagement` each sets.
ENGAGEMENT_FILTERS = {"campaign": "campaign", "contact": "contact", "step": "step"}


def parse_engagement_query(query: str) -> dict[str, str]:
    """The filters of a ``GET /v1/engagement`` query string (``campaign``, ``contact``,
    ``step``; at least one of ``campaign`` and ``contact``, each at most once and non-empty);
    raises :class:`ValidationFailed`. Other parameters are refused."""
    details: list[dict[str, str]] = []
    filters: dict[str, str] = {}
    for name, value in query_pairs(query):
        if name not in ENGAGEMENT_FILTERS:
            details.append({"field": name, "message": "is not a filter (campaign, contact, step)"})
        elif name in filters:
            details.append({"field": name, "message": "must be given at most once"})
        elif not value:
            details.append({"field": name, "message": "must not be empty"})
        elif LONE_SURROGATE.search(value):
            details.append({"field": name, "message": SURROGATE_MESSAGE})
        else:
            filters[name] = value
    if not details and "campaign" not in filters and "contact" not in filters:
        details.append(
            {
                "field": "campaign|contact",
                "message": "at least one of campaign or contact is required",
            }
        )
    if details:
        raise ValidationFailed(details)
    return {ENGAGEMENT_FILTERS[name]: value for name, value in filters.items()}
