"""Fixtures for the server tests: a real runtime on a SQLite file in ``tmp_path``, a real
:class:`RuntimeServer` on 127.0.0.1 (an ephemeral port), and helpers to talk to it over raw
WebSockets."""

from __future__ import annotations

import collections
import contextlib
import json
import weakref
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest
import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

from sluiceway import DataEntity, RunContext, RunnableEntity, Runtime, open_runtime
from sluiceway._util import open_owned_nursery
from sluiceway.server import (
    PROTOCOL_VERSION,
    Application,
    EndpointContext,
    EndpointError,
    RuntimeServer,
    ServerLimits,
)
from tests.entities import workflows
from tests.entities.conftest import _reset_workflows  # noqa: F401 (an autouse fixture)
from tests.entities.workflows import ALL_TYPES, FanOut

#: A safety net for every test that talks to a real socket (never an assertion on time).
TIMEOUT = 30


class Chatter(RunnableEntity):
    """Emits ``data["count"]`` INTERNAL_UPDATE envelopes of about ``data["pad"]`` characters
    each; waits for ``workflows.GATES[name]`` after ``data["pause_after"]`` of them, if set.
    With ``data["until_gate"]``, emits at least ``count`` and goes on until that gate is set
    (for a test that needs "as much as it takes", whatever the kernel's socket buffers hold)."""

    async def run_impl(self, ctx: RunContext) -> Any:
        workflows.executed(self.name)
        pad = "x" * self.data.get("pad", 0)
        pause_after = self.data.get("pause_after")
        count = self.data["count"]
        if self.data.get("until_gate"):
            gate = workflows.GATES.setdefault(self.name, trio.Event())
            emitted = 0
            while emitted < count or not gate.is_set():
                emitted += 1
                await ctx.emit("INTERNAL_UPDATE", message=f"{emitted}", metadata={"pad": pad})
            return {"count": emitted}
        for i in range(count):
            if i == pause_after:
                await workflows.GATES.setdefault(self.name, trio.Event()).wait()
            await ctx.emit("INTERNAL_UPDATE", message=f"{i + 1}/{count}", metadata={"pad": pad})
        return {"count": count}


class Note(DataEntity):
    """Data only: never runs."""


TYPES: list[type[RunnableEntity]] = [*ALL_TYPES, Chatter, Note]


def make_app() -> Application:
    """The application the tests serve: the workflow types and a few endpoints."""
    app = Application("server-tests", types=TYPES)

    @app.endpoint("fanout/create")
    async def create_fanout(ctx: EndpointContext, body: dict[str, Any]) -> Any:
        if "count" not in body:
            raise EndpointError("missing_count", "count is required", {"field": "count"})
        record = await ctx.runtime.create(
            FanOut, {"count": body["count"], "per_parent": 3}, name=body.get("name")
        )
        await ctx.start(record.id)
        return {"entity_id": record.id}

    @app.endpoint("echo")
    async def echo(ctx: EndpointContext, body: dict[str, Any]) -> Any:
        await trio.lowlevel.checkpoint()
        return {"body": body, "state": ctx.state}

    @app.endpoint("gate")
    async def gate(ctx: EndpointContext, body: dict[str, Any]) -> Any:
        """Waits until the test sets ``workflows.GATES[body["gate"]]``."""
        await workflows.GATES.setdefault(body["gate"], trio.Event()).wait()
        return {"passed": body["gate"]}

    @app.endpoint("refuse")
    async def refuse(ctx: EndpointContext, body: dict[str, Any]) -> Any:
        await trio.lowlevel.checkpoint()
        raise EndpointError("template_not_approved", "approve the template first", {"id": 7})

    @app.endpoint("boom")
    async def boom(ctx: EndpointContext, body: dict[str, Any]) -> Any:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("an endpoint bug with a secret inside")

    return app


@attrs.define
class Served:
    """A running server: its runtime, the server object and its URL."""

    runtime: Runtime
    server: RuntimeServer
    url: str
    path: Path


@contextlib.asynccontextmanager
async def serving(
    path: Path,
    *,
    limits: ServerLimits | None = None,
    token: str | None = None,
    app: Application | None = None,
    state: Any = "state",
    port: int = 0,
    grace: float = 5.0,
    poll_interval: float = 0.05,
    allow_origins: list[str] | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[Served]:
    """A runtime on ``path`` and a server for it listening on ``host`` (127.0.0.1) and
    ``port`` (by default an ephemeral one); shut down on exit."""
    async with open_runtime(path, TYPES, poll_interval=poll_interval, work=False) as runtime:
        server = RuntimeServer(
            runtime,
            make_app() if app is None else app,
            state=state,
            token=token,
            limits=limits,
            allow_origins=allow_origins,
        )
        async with trio.open_nursery() as nursery:
            address = await nursery.start(partial(server.run, host, port, grace=grace))
            try:
                yield Served(runtime, server, address.url, path)
            finally:
                server.shutdown()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """The path of a new SQLite store file."""
    return tmp_path / "server.db"


@pytest.fixture
async def served(db: Path) -> AsyncIterator[Served]:
    """A server with default limits and no token."""
    with trio.fail_after(TIMEOUT):
        async with serving(db) as running:
            yield running


# -- raw protocol helpers --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_raw(
    url: str,
    *,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    message_queue_size: int = 1,
    subprotocols: list[str] | None = None,
) -> AsyncIterator[WebSocketConnection]:
    """A raw trio-websocket client connection, like ``open_websocket_url``, whose TCP stream is
    closed however the connection ends: trio-websocket leaves a client's socket to the garbage
    collector when the server closes first or refuses the handshake (and the ResourceWarning
    fails the tests). A refused handshake raises ``ConnectionRejected``."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    try:
        async with open_owned_nursery() as nursery:  # a refusal escapes bare
            ws = await wrap_client_stream(
                nursery,
                stream,
                parts.netloc,
                "/",
                extra_headers=extra_headers,
                message_queue_size=message_queue_size,
                subprotocols=subprotocols,
            )
            try:
                yield ws
            finally:
                try:
                    with trio.move_on_after(5):
                        await ws.aclose()
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()


def frame(op: str, ident: int | str, **fields: Any) -> str:
    """A request frame as text."""
    return json.dumps({"v": PROTOCOL_VERSION, "id": ident, "op": op, **fields})


async def receive_frame(ws: WebSocketConnection) -> dict[str, Any]:
    """The next frame from the server, decoded (it must be a JSON object)."""
    message = await ws.get_message()
    assert isinstance(message, str), f"the server sent a binary frame: {message!r}"
    decoded = json.loads(message)
    assert isinstance(decoded, dict)
    return decoded


#: Envelopes of a batch not yet taken by receive(), per connection.
_unbatched: weakref.WeakKeyDictionary[WebSocketConnection, collections.deque[dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    """The next frame, with an ``envelopes`` event taken apart: each of its envelopes comes as
    ``{"event": "envelope", "subscription": n, "envelope": {...}}`` in turn (the batching is
    checked on its own; most tests look at envelopes one by one)."""
    waiting = _unbatched.setdefault(ws, collections.deque())
    if waiting:
        return waiting.popleft()
    got = await receive_frame(ws)
    if got.get("event") != "envelopes":
        return got
    assert set(got) == {"v", "event", "subscription", "envelopes"}, got
    assert got["envelopes"], "an envelopes event carries at least one envelope"
    for envelope in got["envelopes"]:
        waiting.append(
            {"v": got["v"], "event": "envelope", "subscription": got["subscription"]}
            | {"envelope": envelope}
        )
    return waiting.popleft()


async def response(ws: WebSocketConnection, ident: int | str | None) -> dict[str, Any]:
    """The response with ``id == ident``; fails on any other response (events are skipped)."""
    while True:
        got = await receive(ws)
        if "event" in got:
            continue
        assert got["id"] == ident, got
        return got


async def call(ws: WebSocketConnection, op: str, ident: int | str, **fields: Any) -> Any:
    """Send a request and return its result (the response must be ``ok``)."""
    await ws.send_message(frame(op, ident, **fields))
    got = await response(ws, ident)
    assert got["ok"] is True, got
    return got["result"]


async def error(ws: WebSocketConnection, text: str | bytes, ident: Any = None) -> dict[str, Any]:
    """Send a raw frame and return the error body of its response (checking the echoed id)."""
    await ws.send_message(text)
    got = await response(ws, ident)
    assert got["ok"] is False, got
    assert set(got) == {"v", "id", "ok", "error"}, got
    assert isinstance(got["error"]["code"], str)
    assert isinstance(got["error"]["message"], str)
    body: dict[str, Any] = got["error"]
    return body


async def hello(ws: WebSocketConnection) -> dict[str, Any]:
    """The hello event the server sends first."""
    got = await receive(ws)
    assert got.get("event") == "hello", got
    return got


async def events_until_end(ws: WebSocketConnection, subscription: int) -> list[dict[str, Any]]:
    """The ``envelope`` events of a subscription up to its ``end`` (included, last)."""
    out: list[dict[str, Any]] = []
    while True:
        got = await receive(ws)
        if got.get("subscription") != subscription:
            continue
        out.append(got)
        if got["event"] == "end":
            return out
