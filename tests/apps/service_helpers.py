"""What the tests of the HTTP services (the notification service, the image service) share:
reading their error answers and counters, changing their faults, posting many requests at
once, the checks every such service passes (routes, bodies that are not JSON, quiet logs), and
running one as ``python -m`` until SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import httpx
import pytest
import trio

from sluiceway.apps._service_base import HttpService

__all__ = [
    "check_common_routes",
    "checked_stats",
    "client_of",
    "error_of",
    "expect_quiet_logs",
    "hidden_and_logged",
    "post_at_once",
    "post_bodies_that_are_not_json",
    "refused_settings",
    "seeded_statuses",
    "served",
    "serving_module",
    "set_faults",
    "totals",
    "validation_error",
]


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The ``error`` object of an error answer, checked: its status and code, a message, a
    list of details, and no traceback anywhere."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert isinstance(error["details"], list)
    assert "Traceback" not in response.text
    return error


def validation_error(response: httpx.Response, field: str) -> dict[str, Any]:
    """The ``error`` of a 400 ``VALIDATION_ERROR`` that names ``field`` among its details and
    in its message (every detail with a message)."""
    error = error_of(response, 400, "VALIDATION_ERROR")
    assert field in [detail["field"] for detail in error["details"]], error
    assert all(detail["message"] for detail in error["details"])
    assert field in error["message"]
    return error


async def checked_stats(client: httpx.AsyncClient, stored: str) -> dict[str, int]:
    """``GET /stats``, checked: every counted request is counted once, by its outcome (a new
    ``stored`` one, a repeat or a failure)."""
    response = await client.get("/stats")
    assert response.status_code == 200
    result: dict[str, int] = response.json()
    assert result["requests"] == result[stored] + result["repeats"] + result["failures"]
    return result


def totals(**counts: int) -> dict[str, int]:
    """A ``GET /stats`` answer with these ``counts`` (the service's stored count among them:
    ``sends=1``) and 0 for the rest of ``requests``, ``repeats``, ``failures`` and
    ``inFlight``."""
    return {"requests": 0, "repeats": 0, "failures": 0, "inFlight": 0, **counts}


async def set_faults(client: httpx.AsyncClient, **settings: Any) -> dict[str, Any]:
    """``POST /admin/faults`` with ``settings``; the settings now in force."""
    response = await client.post("/admin/faults", json=settings)
    assert response.status_code == 200, response.text
    current: dict[str, Any] = response.json()
    return current


async def refused_settings(client: httpx.AsyncClient, settings: dict[str, Any]) -> list[str]:
    """``POST /admin/faults`` with bad ``settings``: the fields its 400 names, in order, once
    checked that none of the settings was applied."""
    before = (await client.get("/admin/faults")).json()
    response = await client.post("/admin/faults", json=settings)
    fields = [detail["field"] for detail in error_of(response, 400, "VALIDATION_ERROR")["details"]]
    assert (await client.get("/admin/faults")).json() == before  # nothing applied
    return fields


async def post_at_once(
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    *,
    times: int,
    urls: Sequence[str] = ("",),
) -> list[httpx.Response]:
    """POST ``body`` to ``path`` ``times`` times at each of ``urls`` (``""``: the client's
    base URL), all at once; the answers in the order they came."""
    responses: list[httpx.Response] = []

    async def post(base: str) -> None:
        responses.append(await client.post(f"{base}{path}", json=body))

    async with trio.open_nursery() as nursery:
        for _ in range(times):
            for base in urls:
                nursery.start_soon(post, base)
    return responses


async def seeded_statuses(
    client: httpx.AsyncClient, path: str, bodies: Iterable[dict[str, Any]]
) -> list[int]:
    """The statuses of POSTing each of ``bodies`` to ``path`` in turn, with half the requests
    failing at random from the seed 7 (set afresh first)."""
    await set_faults(client, fail_rate=0.5, seed=7)
    return [(await client.post(path, json=body)).status_code for body in bodies]


async def check_common_routes(client: httpx.AsyncClient, *, post: str, item: str) -> None:
    """The routing every service shares: 404 for an unknown path and for an unknown or
    malformed ``item`` (``/v1/images``), 405 with ``Allow: POST`` for a GET of the ``post``
    path, 405 for a method a path does not take, HEAD for GET without a body, and a trailing
    slash ignored."""
    error_of(await client.get("/nope"), 404, "NOT_FOUND")
    error_of(await client.get(f"{item}/unknown-id"), 404, "NOT_FOUND")
    error_of(await client.get(f"{item}/a/b"), 404, "NOT_FOUND")
    wrong = await client.get(post)
    error_of(wrong, 405, "METHOD_NOT_ALLOWED")
    assert wrong.headers["allow"] == "POST"
    error_of(await client.delete("/admin/faults"), 405, "METHOD_NOT_ALLOWED")
    error_of(await client.post("/health", json={}), 405, "METHOD_NOT_ALLOWED")
    head = await client.head("/health")
    assert (head.status_code, head.content) == (200, b"")
    assert (await client.get("/health/")).status_code == 200


async def post_bodies_that_are_not_json(client: httpx.AsyncClient, path: str) -> int:
    """POST to ``path`` bodies that are not JSON, checking each answer (415 for another
    content type, 400 ``INVALID_JSON`` for broken, empty, NaN, Latin-1 or untyped text);
    returns how many requests it made."""
    as_json = {"content-type": "application/json"}
    answers = [
        (await client.post(path, content=b"hi", headers={"content-type": "text/plain"}), 415),
        (await client.post(path, data={"field": "x"}), 415),  # a form
        *[
            (await client.post(path, content=content, headers=as_json), 400)
            for content in (b'{"field": ', b"", b'{"x": NaN}', b'{"x": "\xe9"}')
        ],
        (await client.post(path, content=b"not json"), 400),  # no content type
    ]
    for response, status in answers:
        error_of(response, status, "UNSUPPORTED_MEDIA_TYPE" if status == 415 else "INVALID_JSON")
    return len(answers)


async def expect_quiet_logs(
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    path: str,
    body: dict[str, Any],
    status: int,
) -> None:
    """A successful POST of ``body`` to ``path`` (answered ``status``) and a 404 log nothing
    at WARNING or above."""
    with caplog.at_level(logging.WARNING):
        assert (await client.post(path, json=body)).status_code == status
        await client.get("/nope")
    assert caplog.records == []


def hidden_and_logged(
    response: httpx.Response, caplog: pytest.LogCaptureFixture, secret: str
) -> None:
    """An unexpected error's answer: 500 ``INTERNAL_ERROR`` without ``secret`` (the
    exception's text), which the log has."""
    error = error_of(response, 500, "INTERNAL_ERROR")
    assert secret not in str(error)
    assert secret in caplog.text  # logged, not lost


@contextlib.asynccontextmanager
async def client_of(
    nursery: trio.Nursery, serve: Callable[..., Awaitable[object]]
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the server that ``serve`` (``serve_notifications`` with its arguments, say)
    starts in ``nursery``."""
    url = await nursery.start(serve)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client


@contextlib.asynccontextmanager
async def served(service: HttpService[Any, Any]) -> AsyncIterator[httpx.AsyncClient]:
    """``service`` open and served over HTTP for the block, and a client of it."""
    async with service, trio.open_nursery() as nursery:
        url = await nursery.start(service.serve)
        async with httpx.AsyncClient(base_url=url) as client:
            yield client
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def serving_module(module: str, *arguments: str) -> AsyncIterator[tuple[str, str]]:
    """``python -m module arguments`` for the block: yields the base URL and the first line
    it prints (``... listening on <url> (...)``); after the block, SIGTERM, and the process
    must say ``SIGTERM: stopping`` and exit with 0. Killed if the block fails."""
    command = [sys.executable, "-m", module, *arguments]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        output = b""
        with trio.fail_after(20):
            while b"\n" not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, "the service exited before printing its URL"
                output += chunk
        line = output.decode().splitlines()[0]
        yield line.split(" listening on ", 1)[1].split()[0], line
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await process.wait() == 0
            rest = b""
            while chunk := await process.stdout.receive_some():
                rest += chunk
        assert b"SIGTERM: stopping" in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()
