"""Bearer-token authentication: without the right token the handshake is refused with 401 and
nothing of the server can be read; with it everything works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionRejected

from sluiceway.client import ConnectionLostError, connect
from sluiceway.server import RuntimeServer
from tests.server.conftest import TIMEOUT, Served, call, hello, open_raw, serving

TOKEN = "s3cret-token"
UNAUTHORIZED = {"error": {"code": "unauthorized", "message": "a valid bearer token is required"}}


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"authorization", b"Bearer wrong")],
        [(b"authorization", f"Bearer {TOKEN}x".encode())],
        [(b"authorization", f"bearer{TOKEN}".encode())],
        [(b"authorization", TOKEN.encode())],
        [(b"authorization", f"Basic {TOKEN}".encode())],
        [(b"authorization", b"")],
        # Only the first authorization header counts.
        [(b"authorization", b"Bearer wrong"), (b"authorization", f"Bearer {TOKEN}".encode())],
    ],
)
async def test_refused_without_the_token(db: Path, headers: list[tuple[bytes, bytes]]) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(db, token=TOKEN) as served:
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_raw(served.url, extra_headers=headers) as ws:
                    await ws.get_message()  # never reached: there is no connection
            assert rejected.value.status_code == 401
            assert dict(rejected.value.headers)[b"www-authenticate"] == b'Bearer realm="sluiceway"'
            assert rejected.value.body is not None
            assert json.loads(rejected.value.body) == UNAUTHORIZED
            assert not served.server._connections


async def test_a_refused_handshake_shows_nothing_and_ends(db: Path) -> None:
    """At the TCP level: the refusal, its body, then the end of the connection (the server
    does not keep it open), and nothing of the server besides."""
    with trio.fail_after(TIMEOUT):
        async with serving(db, token=TOKEN) as served:
            port = int(served.url.rpartition(":")[2])
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(
                    f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\nAuthorization: Bearer nope\r\n\r\n".encode()
                )
                received = b""
                while chunk := await stream.receive_some():
                    received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 401")
            assert json.loads(body) == UNAUTHORIZED
            assert b"hello" not in received


_UNAUTHORIZED_BODY = (
    b'{"error":{"code":"unauthorized","message":"a valid bearer token is required"}}'
)


async def test_the_client_is_refused_without_the_token(db: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(db, token=TOKEN) as served:
            for token in [None, "wrong", TOKEN.upper()]:
                with pytest.raises(ConnectionLostError, match="401"):
                    async with connect(served.url, token=token, reconnect_timeout=0) as client:
                        await client.request("ping")  # never reached
            # The client does not retry a refused first connection: nothing was created.
            assert await served.runtime.store.active() == []


async def test_the_right_token_works(db: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(db, token=TOKEN) as served:
            headers = [(b"authorization", f"Bearer {TOKEN}".encode())]
            async with open_raw(served.url, extra_headers=headers) as ws:
                assert (await hello(ws))["app"] == "server-tests"
                assert await call(ws, "ping", 1) == {"pong": True}
            # Header names are case-insensitive.
            headers = [(b"Authorization", f"Bearer {TOKEN}".encode())]
            async with open_raw(served.url, extra_headers=headers) as ws:
                await hello(ws)
                assert await call(ws, "ping", 1) == {"pong": True}
            async with connect(served.url, token=TOKEN) as client:
                assert client.hello["app"] == "server-tests"
                created = await client.create("Leaf", {"value": 2})
                assert (await client.get(created["id"]))["data"] == {"value": 2}


async def test_a_token_is_a_non_empty_string(served: Served) -> None:
    for token in ["", 5]:
        with pytest.raises(ValueError, match="token"):
            RuntimeServer(served.runtime, served.server.app, token=token)  # type: ignore[arg-type]


async def test_a_browser_gives_the_token_as_a_subprotocol(db: Path) -> None:
    """A browser cannot set ``Authorization`` on a WebSocket: it offers the subprotocols
    ``sluiceway.v1`` and ``bearer.<token>``, and the server answers ``sluiceway.v1``."""
    with trio.fail_after(TIMEOUT):
        async with serving(db, token=TOKEN) as served:
            offered = ["sluiceway.v1", f"bearer.{TOKEN}"]
            async with open_raw(served.url, subprotocols=offered) as ws:
                assert ws.subprotocol == "sluiceway.v1"
                await hello(ws)
                assert await call(ws, "ping", 1) == {"pong": True}
            for wrong in (["sluiceway.v1", "bearer.wrong"], ["sluiceway.v1"], [f"{TOKEN}"]):
                with pytest.raises(ConnectionRejected) as refused:
                    async with open_raw(served.url, subprotocols=wrong):
                        pass
                assert refused.value.status_code == 401
        # No token: the subprotocol is still echoed.
        async with serving(db) as served, open_raw(served.url, subprotocols=["sluiceway.v1"]) as ws:
            assert ws.subprotocol == "sluiceway.v1"
            await hello(ws)
