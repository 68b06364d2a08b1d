"""A WebSocket client written by hand over a raw TCP stream, for what a real client library
would never send: bad frames, odd handshake headers. It reads the server's bytes exactly as
they come (frames, close frames, an HTTP refusal and its body)."""

from __future__ import annotations

import base64
import json
import os
import struct
from typing import Any

import attrs
import trio


@attrs.define
class RawResponse:
    """The server's answer to a handshake: status, headers (names lowercased) and what came
    after the head (the refusal's body, or the first bytes of the WebSocket)."""

    status: int
    headers: list[tuple[str, str]]
    rest: bytes

    def header(self, name: str) -> str | None:
        """The first header of that name."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


async def handshake(
    stream: trio.SocketStream, host: str, headers: list[tuple[str, str]] | None = None
) -> RawResponse:
    """Send an upgrade request (with ``headers`` added) and read the response's head."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET / HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers or []),
    ]
    await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = await stream.receive_some()
        if not chunk:
            raise AssertionError(f"the server closed during the handshake: {received!r}")
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = []
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed.append((name.strip().lower(), value.strip()))
    return RawResponse(int(status_line.split()[1]), parsed, rest)


async def read_to_end(stream: trio.SocketStream, already: bytes = b"") -> bytes:
    """Everything the server sends until it closes the TCP connection."""
    received = already
    while True:
        try:
            chunk = await stream.receive_some()
        except trio.BrokenResourceError:  # a reset after the server's last bytes
            return received
        if not chunk:
            return received
        received += chunk


def client_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
) -> bytes:
    """One frame as a client sends it (masked unless told otherwise); ``rsv`` is the three
    reserved bits (0 to 7)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    length = len(payload)
    if length < 126:
        head = bytes([first, mask_bit | length])
    elif length < 2**16:
        head = bytes([first, mask_bit | 126]) + struct.pack("!H", length)
    else:
        head = bytes([first, mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text_frame(text: str) -> bytes:
    """A masked text frame carrying ``text``."""
    return client_frame(0x1, text.encode())


@attrs.frozen
class ServerFrame:
    """A frame the server sent (servers never mask)."""

    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        """The code of a close frame (``None`` for other frames and a close without one)."""
        if self.opcode != 0x8 or len(self.payload) < 2:
            return None
        code: int = struct.unpack("!H", self.payload[:2])[0]
        return code

    @property
    def close_reason(self) -> str:
        """The reason of a close frame."""
        return self.payload[2:].decode("utf-8")

    def json(self) -> Any:
        """A text frame's JSON."""
        return json.loads(self.payload.decode("utf-8"))


def server_frames(data: bytes) -> list[ServerFrame]:
    """Cut the bytes a server sent into frames (an incomplete last frame is an error)."""
    frames = []
    at = 0
    while at < len(data):
        first, second = data[at], data[at + 1]
        assert not second & 0x80, "a server frame is never masked"
        length = second & 0x7F
        at += 2
        if length == 126:
            (length,) = struct.unpack("!H", data[at : at + 2])
            at += 2
        elif length == 127:
            (length,) = struct.unpack("!Q", data[at : at + 8])
            at += 8
        payload = data[at : at + length]
        assert len(payload) == length, "the server's last frame is cut short"
        at += length
        frames.append(ServerFrame(bool(first & 0x80), first & 0x0F, payload))
    return frames
