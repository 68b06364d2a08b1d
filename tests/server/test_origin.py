"""The Origin check of the handshake (cross-site WebSocket hijacking): a page of another site
cannot connect to a server, with or without a token; programs (no Origin), the server's own
origin and the allowed origins can. Real handshakes over raw TCP, so that every header and
every byte of the refusal is seen."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionRejected

from sluiceway.server import RuntimeServer
from sluiceway.server._origin import OriginPolicy, check_origin
from tests.server.conftest import TIMEOUT, Served, call, hello, open_raw, serving
from tests.server.raw import RawResponse, handshake, read_to_end, server_frames

FORBIDDEN = {
    "error": {
        "code": "forbidden_origin",
        "message": "pages of this origin may not connect to this server "
        "(see its allow_origins, --allow-origin)",
    }
}
TOKEN = "s3cret"


def port_of(served: Served) -> int:
    return int(served.url.rpartition(":")[2])


async def shake(
    served: Served,
    origins: list[str],
    host: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> tuple[RawResponse, bytes]:
    """A handshake with these Origin headers (``{port}`` is the server's port) and Host
    (default ``127.0.0.1:{port}``). Returns the response's head and what followed: for a
    refusal everything up to the end of the connection, for an acceptance its first frame."""
    port = port_of(served)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        sent = [("Origin", origin.format(port=port)) for origin in origins]
        answer = await handshake(
            stream, (host or "127.0.0.1:{port}").format(port=port), sent + (headers or [])
        )
        if answer.status != 101:
            return answer, await read_to_end(stream, answer.rest)
        received = answer.rest
        while True:
            try:
                frames = server_frames(received)
            except (AssertionError, IndexError, struct.error):  # not a whole frame yet
                frames = []
            if frames:
                return answer, frames[0].payload
            received += await stream.receive_some()


def assert_forbidden(answer: RawResponse, rest: bytes) -> None:
    assert answer.status == 403, answer
    assert answer.header("content-type") == "application/json"
    assert json.loads(rest) == FORBIDDEN  # the body, and nothing after it
    assert b"hello" not in rest
    assert answer.header("www-authenticate") is None  # nothing about the token either


def assert_accepted(answer: RawResponse, first: bytes) -> None:
    assert answer.status == 101, answer
    assert json.loads(first)["event"] == "hello"


#: (Origin headers, Host header) of handshakes every server accepts.
SAME_ORIGIN = [
    ([], None),
    (["http://127.0.0.1:{port}"], None),
    (["https://127.0.0.1:{port}"], None),
    (["HTTP://127.0.0.1:{port}"], None),
    ([" http://127.0.0.1:{port} "], None),
    # The loopback names are one host: a page of http://localhost:PORT may connect to
    # ws://127.0.0.1:PORT.
    (["http://localhost:{port}"], None),
    (["http://127.0.0.1:{port}"], "localhost:{port}"),
    (["http://LocalHost:{port}"], "LOCALHOST:{port}"),
    (["http://[::1]:{port}"], None),
    (["http://127.0.0.2:{port}"], None),
    # An IP address the client used (through a port mapping, say) is the server's own.
    (["http://10.1.2.3:{port}"], "10.1.2.3:{port}"),
    # A Host without a port has the default port of the Origin's scheme.
    (["http://localhost"], "localhost"),
    (["https://localhost"], "localhost"),
    (["http://localhost:80"], "localhost"),
]

#: (Origin headers, Host header) of handshakes refused with 403 unless allowed by name.
FOREIGN = [
    (["https://evil.example"], None),
    (["http://127.0.0.1:1"], None),
    (["http://127.0.0.1"], None),
    (["null"], None),
    # DNS rebinding: a hostile name pointed at 127.0.0.1 is not the server's own.
    (["http://evil.example:{port}"], "evil.example:{port}"),
    (["http://localhost.evil.example:{port}"], "localhost.evil.example:{port}"),
    (["http://app.localhost:{port}"], "app.localhost:{port}"),
    # The Host's port is the page's port, not the server's.
    (["http://127.0.0.1:{port}"], "127.0.0.1:1"),
    (["https://localhost"], "localhost:80"),
    (["ws://127.0.0.1:{port}"], None),
    (["ftp://127.0.0.1:{port}"], None),
    (["http://127.0.0.1:{port}/"], None),
    (["http://user@127.0.0.1:{port}"], None),
    (["http://127.0.0.1:{port}, https://evil.example"], None),
    (["http://127.0.0.1:{port}", "https://evil.example"], None),
    (["http://127.0.0.1:{port}", "http://127.0.0.1:{port}"], None),
    ([""], None),
    (["127.0.0.1:{port}"], None),
    (["http://127.0.0.1:99999"], None),
]


@pytest.mark.parametrize(("origins", "host"), SAME_ORIGIN)
async def test_programs_and_the_servers_own_origin_connect(
    served: Served, origins: list[str], host: str | None
) -> None:
    with trio.fail_after(TIMEOUT):
        assert_accepted(*await shake(served, origins, host))


@pytest.mark.parametrize(("origins", "host"), FOREIGN)
async def test_a_foreign_origin_is_refused_with_403(
    served: Served, caplog: pytest.LogCaptureFixture, origins: list[str], host: str | None
) -> None:
    caplog.set_level(logging.WARNING, logger="sluiceway.server")
    with trio.fail_after(TIMEOUT):
        assert_forbidden(*await shake(served, origins, host))
        # The server goes on.
        async with open_raw(served.url) as ws:
            await hello(ws)
            assert await call(ws, "ping", 1) == {"pong": True}
    (warning,) = [r for r in caplog.records if r.name == "sluiceway.server"]
    assert "127.0.0.1:" in warning.getMessage()
    assert "Origin" in warning.getMessage()


async def test_the_origin_is_checked_before_the_token(db: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(db, token=TOKEN) as served:
            bearer = [("Authorization", f"Bearer {TOKEN}")]
            # A foreign page gets 403 with the right token, without it, with a wrong one.
            for headers in (bearer, [], [("Authorization", "Bearer nope")]):
                assert_forbidden(*await shake(served, ["https://evil.example"], None, headers))
            # The server's own page still needs the token.
            answer, rest = await shake(served, ["http://127.0.0.1:{port}"])
            assert answer.status == 401
            assert json.loads(rest)["error"]["code"] == "unauthorized"
            assert_accepted(*await shake(served, ["http://127.0.0.1:{port}"], None, bearer))


async def test_the_origin_is_checked_before_the_shutdown(db: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(db) as served:
            served.server._accepting = False  # as during a shutdown, before the listener stops
            try:
                assert_forbidden(*await shake(served, ["https://evil.example"]))
                answer, rest = await shake(served, ["http://127.0.0.1:{port}"])
                assert answer.status == 503
                assert json.loads(rest)["error"]["code"] == "shutting_down"
            finally:
                served.server._accepting = True


ALLOWED = ["https://app.example.com", "http://LOCALHOST:3000", "https://admin.example.com:8443"]


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        ("https://app.example.com", True),
        ("https://APP.example.com:443", True),
        ("http://localhost:3000", True),
        ("https://admin.example.com:8443", True),
        ("https://app.example.com:8443", False),
        ("http://app.example.com", False),
        ("https://www.app.example.com", False),
        ("http://localhost:3001", False),
        ("https://admin.example.com", False),
        ("null", False),
        ("http://127.0.0.1:{port}", True),  # the server's own origin still is
    ],
)
async def test_allowed_origins(db: Path, origin: str, accepted: bool) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(db, allow_origins=ALLOWED) as served:
            assert served.server.allow_origins == (
                "http://localhost:3000",
                "https://admin.example.com:8443",
                "https://app.example.com",
            )
            answer, rest = await shake(served, [origin])
            if accepted:
                assert_accepted(answer, rest)
            else:
                assert_forbidden(answer, rest)


@pytest.mark.parametrize(
    "origins",
    [["null"], ["https://evil.example"], ["garbage"], ["https://a.example", "https://b.example"]],
)
async def test_star_allows_every_origin(db: Path, origins: list[str]) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(db, allow_origins=["https://app.example.com", "*"]) as served:
            assert served.server.allow_origins == ("*", "https://app.example.com")
            assert_accepted(*await shake(served, origins))


async def test_a_refused_browser_client_sees_only_the_403(served: Served) -> None:
    """Through trio-websocket, as a client library sees it."""
    with trio.fail_after(TIMEOUT):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_raw(
                served.url, extra_headers=[(b"origin", b"https://evil.example")]
            ) as ws:
                await ws.get_message()  # never reached
        assert rejected.value.status_code == 403
        assert rejected.value.body is not None
        assert json.loads(rejected.value.body) == FORBIDDEN
        async with open_raw(
            served.url, extra_headers=[(b"origin", served.url.replace("ws://", "http://").encode())]
        ) as ws:
            await hello(ws)


@pytest.mark.parametrize(
    ("origins", "error"),
    [
        ("https://app.example.com", TypeError),  # one string, not a list
        (["https://app.example.com/"], ValueError),
        (["https://app.example.com/path"], ValueError),
        (["app.example.com"], ValueError),
        (["null"], ValueError),
        ([""], ValueError),
        (["https://"], ValueError),
        (["https://app.example.com:0"], ValueError),
        (["https://app.example.com:65536"], ValueError),
        (["https://user@app.example.com"], ValueError),
        (["https://bücher.example"], ValueError),
        ([5], TypeError),
        ([None], TypeError),
    ],
)
async def test_allow_origins_are_checked(served: Served, origins: object, error: type) -> None:
    with pytest.raises(error) as raised:
        RuntimeServer(served.runtime, served.server.app, allow_origins=origins)  # type: ignore[arg-type]
    assert "origin" in str(raised.value)


def test_allowed_origins_are_normalised() -> None:
    assert check_origin("HTTPS://App.Example.COM:443") == "https://app.example.com"
    assert check_origin(" http://localhost:80 ") == "http://localhost"
    assert check_origin("http://[::1]:8765") == "http://[::1]:8765"
    assert check_origin("chrome-extension://abcdef") == "chrome-extension://abcdef"
    assert check_origin("*") == "*"
    assert OriginPolicy.of([]).origins == ()
    assert OriginPolicy.of(None).origins == ()


def test_a_name_the_server_listens_on_is_its_own() -> None:
    """Beyond IP addresses and localhost, the one name trusted from the Host header is the
    host the server was told to listen on (its operator chose it)."""
    policy = OriginPolicy.of(None)
    own = ["http://box.lan:8765"]
    assert policy.allows(own, "box.lan:8765", "box.lan")
    assert policy.allows(own, "BOX.lan:8765", "box.LAN")
    assert not policy.allows(own, "box.lan:8765", "127.0.0.1")
    assert not policy.allows(own, "box.lan:8765", "0.0.0.0")
    assert policy.allows(["http://[::1]:8765"], "[::1]:8765", "::1")
    assert policy.allows(["http://192.168.1.5:8765"], "192.168.1.5:8765", "0.0.0.0")
    assert not policy.allows(["http://192.168.1.5:8765"], "192.168.1.6:8765", "0.0.0.0")
    assert not policy.allows(own, None, "box.lan")
