"""Frames that break the WebSocket protocol itself (RFC 6455), sent by a hand-written client
over a real TCP connection: the server closes that connection with the close code the RFC
asks for (1007 for text that is not UTF-8, 1002 for the rest), logs a warning naming the peer
and the fault, and goes on serving its other clients."""

from __future__ import annotations

import logging
import struct

import pytest
import trio
import trio.testing

from tests.server.conftest import TIMEOUT, Served, call, hello, open_raw
from tests.server.raw import client_frame, handshake, read_to_end, server_frames, text_frame

#: (what is wrong, the bytes of the bad frame, the close code, a word of the logged reason)
VIOLATIONS = [
    ("invalid UTF-8", client_frame(0x1, b'{"v": 1, "id": "\xff\xfe"}'), 1007, "utf-8"),
    ("UTF-8 cut at the end", client_frame(0x1, b"caf\xc3"), 1007, "utf-8"),
    (
        "invalid UTF-8 in a continuation",
        client_frame(0x1, b"ok ", fin=False) + client_frame(0x0, b"\xed\xa0\x80"),
        1007,
        "utf-8",
    ),
    ("reserved data opcode", client_frame(0x3, b"x"), 1002, "opcode"),
    ("reserved control opcode", client_frame(0xB, b""), 1002, "opcode"),
    ("unmasked frame", client_frame(0x1, b'{"v":1}', masked=False), 1002, "unmasked"),
    ("RSV1 set", client_frame(0x1, b"{}", rsv=0b100), 1002, "reserved bit"),
    ("RSV3 set", client_frame(0x9, b"", rsv=0b001), 1002, "reserved bit"),
    ("fragmented ping", client_frame(0x9, b"", fin=False), 1002, "fragment"),
    ("continuation first", client_frame(0x0, b"x"), 1002, "continuation"),
    ("close with code 999", client_frame(0x8, struct.pack("!H", 999)), 1002, "close"),
]


async def _violate(served: Served, bad: bytes) -> tuple[list[int | None], list[object]]:
    """Connect by hand, ping, send ``bad``; return the close codes and the JSON frames the
    server sent before closing the TCP connection."""
    host, _, port = served.url.removeprefix("ws://").rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        answer = await handshake(stream, f"{host}:{port}")
        assert answer.status == 101
        await stream.send_all(text_frame('{"v": 1, "id": 1, "op": "ping"}'))
        received = answer.rest
        # The ping's answer first: the connection worked until the bad frame.
        while b'"pong"' not in received:
            received += await stream.receive_some()
        await stream.send_all(bad)
        received = await read_to_end(stream, received)
    frames = server_frames(received)
    codes = [f.close_code for f in frames if f.opcode == 0x8]
    texts = [f.json() for f in frames if f.opcode == 0x1]
    return codes, texts


@pytest.mark.parametrize(
    ("bad", "code", "word"),
    [v[1:] for v in VIOLATIONS],
    ids=[v[0] for v in VIOLATIONS],
)
async def test_a_protocol_violation_closes_with_its_code_and_a_warning(
    served: Served, caplog: pytest.LogCaptureFixture, bad: bytes, code: int, word: str
) -> None:
    caplog.set_level(logging.WARNING, logger="sluiceway.server")
    with trio.fail_after(TIMEOUT):
        async with open_raw(served.url) as bystander:
            await hello(bystander)
            codes, texts = await _violate(served, bad)
            assert codes == [code]
            assert texts[0]["event"] == "hello"
            assert texts[1] == {"v": 1, "id": 1, "ok": True, "result": {"pong": True}}
            # The other client never noticed.
            assert await call(bystander, "ping", 2) == {"pong": True}
        # ...and new clients are served.
        async with open_raw(served.url) as later:
            await hello(later)
            assert await call(later, "ping", 3) == {"pong": True}
    warnings = [
        r for r in caplog.records if r.name == "sluiceway.server" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    line = warnings[0].getMessage()
    assert "127.0.0.1:" in line
    assert str(code) in line
    assert word in line.lower()


async def test_every_violation_is_logged(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    """One warning per offending connection, however many there are."""
    caplog.set_level(logging.WARNING, logger="sluiceway.server")
    with trio.fail_after(TIMEOUT):
        for _ in range(3):
            codes, _texts = await _violate(served, client_frame(0x1, b"\xc0"))
            assert codes == [1007]
    warnings = [r for r in caplog.records if r.name == "sluiceway.server"]
    assert len(warnings) == 3


async def test_the_close_reason_says_what_was_wrong(served: Served) -> None:
    host, _, port = served.url.removeprefix("ws://").rpartition(":")
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            answer = await handshake(stream, f"{host}:{port}")
            await stream.send_all(client_frame(0x3, b""))
            received = await read_to_end(stream, answer.rest)
    (close,) = [f for f in server_frames(received) if f.opcode == 0x8]
    assert close.close_code == 1002
    assert "opcode" in close.close_reason.lower()
    assert len(close.payload) <= 125  # a control frame's limit


async def test_a_client_closing_with_1002_itself_is_no_violation(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """A close frame that is valid is the client's close, whatever its code: answered with
    the same code (the close handshake), and not logged as a violation."""
    caplog.set_level(logging.WARNING, logger="sluiceway.server")
    host, _, port = served.url.removeprefix("ws://").rpartition(":")
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            answer = await handshake(stream, f"{host}:{port}")
            await stream.send_all(client_frame(0x8, struct.pack("!H", 1002) + b"mine"))
            received = await read_to_end(stream, answer.rest)
    closes = [f for f in server_frames(received) if f.opcode == 0x8]
    assert [(f.close_code, f.close_reason) for f in closes] == [(1002, "mine")]
    assert not [r for r in caplog.records if r.name == "sluiceway.server"]


#: Upgrade requests wsproto refuses (it answers them with an HTTP error itself).
BAD_HANDSHAKES = [
    (
        "no key",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",
        400,
    ),
    (
        "old version",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        426,
    ),
    ("not HTTP", b"HELLO THERE\r\n\r\n", 400),
]


@pytest.mark.parametrize(
    ("request_bytes", "status"), [b[1:] for b in BAD_HANDSHAKES], ids=[b[0] for b in BAD_HANDSHAKES]
)
async def test_a_bad_handshake_is_refused_logged_and_let_go(
    served: Served, caplog: pytest.LogCaptureFixture, request_bytes: bytes, status: int
) -> None:
    """wsproto answers an invalid upgrade request with an HTTP error; the server logs it and
    ends that connection's task at once (it used to wait for the handshake timeout)."""
    caplog.set_level(logging.WARNING, logger="sluiceway.server")
    host, _, port = served.url.removeprefix("ws://").rpartition(":")
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(request_bytes)
            received = await read_to_end(stream)
        assert received.startswith(f"HTTP/1.1 {status}".encode()), received
        # Nothing of the server is left waiting for this client: every task is idle and the
        # warning is there.
        await trio.testing.wait_all_tasks_blocked()
        warnings = [r.getMessage() for r in caplog.records if r.name == "sluiceway.server"]
        assert len(warnings) == 1, warnings
        assert "127.0.0.1:" in warnings[0]
        assert str(status) in warnings[0]
        async with open_raw(served.url) as ws:
            await hello(ws)
            assert await call(ws, "ping", 1) == {"pong": True}


async def test_a_client_that_connects_and_leaves_is_not_logged(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """A TCP connection closed before any request (a port probe, a health check) is no
    violation."""
    caplog.set_level(logging.WARNING, logger="sluiceway.server")
    host, _, port = served.url.removeprefix("ws://").rpartition(":")
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
    assert not [r for r in caplog.records if r.name == "sluiceway.server"]
