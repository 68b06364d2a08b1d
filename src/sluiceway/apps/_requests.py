"""Requests to the applications' HTTP services (the notification service, the image service,
webhooks) with retries: the one place that decides which failures deserve another try with the
same idempotency key."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import trio

from .._errors import SluicewayError

log = logging.getLogger("sluiceway.apps")


class SendError(SluicewayError):
    """A service (the notification service, the image service, a webhook) did not accept a
    request, after the retries it deserved."""


#: HTTP answers worth another try with the same idempotency key.
TRANSIENT = frozenset({429, 500, 502, 503, 504})

#: Error codes the service answers with a 5xx that another try would not change.
PERMANENT_CODES = frozenset({"INVALID_RECIPIENT"})


async def post_with_retries(
    http: httpx.AsyncClient,
    url: str,
    body: Mapping[str, Any],
    *,
    attempts: int,
    retry_delay: float,
    what: str,
    headers: Mapping[str, str] | None = None,
    on_retry: Callable[[str], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """POST ``body`` as JSON to ``url`` and return the answer's JSON object (``{}`` for an
    empty or non-object answer), trying up to ``attempts`` times while the failure is
    transient (see :func:`request_with_retries`). Safe only with a request the service
    de-duplicates (an idempotency key).

    Raises:
        SendError: a permanent answer, or the last attempt failed (naming ``what``).
    """
    answer = await request_with_retries(
        http,
        "POST",
        url,
        json=dict(body),
        attempts=attempts,
        retry_delay=retry_delay,
        what=what,
        headers=headers,
        on_retry=on_retry,
    )
    return answer if isinstance(answer, dict) else {}


async def request_with_retries(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    attempts: int,
    retry_delay: float,
    what: str,
    json: Any = None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    on_retry: Callable[[str], Awaitable[None]] | None = None,
) -> Any:
    """Make the request and return the answer's JSON (``None`` for an empty or non-JSON
    answer), trying up to ``attempts`` times while the failure is transient: a transport
    error, 429 or a 5xx (not one with a permanent error code). ``Retry-After`` (seconds, at
    most 30) lengthens the pause; pauses start at ``retry_delay`` and double.
    ``on_retry(problem)`` is awaited before each pause.

    Raises:
        SendError: a permanent answer, or the last attempt failed (naming ``what``).
    """
    delay = retry_delay
    problem = ""
    for attempt in range(1, attempts + 1):
        try:
            response = await http.request(
                method, url, json=json, params=params, headers=dict(headers or {})
            )
        except httpx.TransportError as exc:
            problem = f"{what} is unreachable: {type(exc).__name__}: {exc}"
        else:
            if 200 <= response.status_code < 300:
                return _json(response)
            code, reason = _reason(response)
            problem = f"{what} answered {response.status_code}: {reason}"
            if response.status_code not in TRANSIENT or code in PERMANENT_CODES:
                raise SendError(problem)
            retry_after = response.headers.get("retry-after", "")
            if retry_after.isdigit():
                delay = max(delay, min(float(retry_after), 30.0))
        if attempt < attempts:
            log.info("%s failed (%s); retrying", what, problem)
            if on_retry is not None:
                await on_retry(problem)
            await trio.sleep(delay)
            delay *= 2
    raise SendError(f"{problem} (after {attempts} attempts)")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _reason(response: httpx.Response) -> tuple[str | None, str]:
    """The service's error code (if it sent one) and a line about the error."""
    try:
        error = response.json().get("error") or {}
        return error.get("code"), f"{error.get('code')}: {error.get('message')}"
    except (ValueError, AttributeError):
        return None, response.text[:200]
