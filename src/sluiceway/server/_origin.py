"""Which web pages may open a WebSocket to the server: the ``Origin`` check of the handshake.

A browser lets any page open a WebSocket to any address, ``ws://127.0.0.1:8765`` included, and
says which page did in the ``Origin`` header (which the page cannot change). Without a check,
any site a user visits could drive a ``sluiceway serve`` running on their machine without a
token (cross-site WebSocket hijacking). Programs that are not browsers send no ``Origin``.

The rule (:meth:`OriginPolicy.allows`), in this order:

1. no ``Origin`` header: allowed (not a browser);
2. the server allows every origin (``"*"`` among its ``allow_origins``): allowed;
3. the origin is one of ``allow_origins`` (compared after normalising both: scheme and host
   lowercased, the default port of ``http``/``ws`` (80) and ``https``/``wss`` (443) made
   explicit): allowed;
4. same origin: the origin is ``http://`` or ``https://``, its host and port are the ``Host``
   header's (the address the page's browser connected to; a ``Host`` without a port has the
   default port of the origin's scheme), and that host is an IP address, ``localhost``, or the
   host the server listens on; the loopback names ``localhost``, ``127.x.x.x`` and ``[::1]``
   count as one host. A page the server's own address serves (its ``Host``) is the server's.
   A domain name other than ``localhost`` is not trusted from the ``Host`` header alone: with
   DNS rebinding, a hostile site's name can be made to point to ``127.0.0.1``, and its pages
   then send ``Origin: http://evil.example:8765`` with ``Host: evil.example:8765``. List such
   names in ``allow_origins``;
5. anything else, ``null`` (sandboxed frames, ``file://`` pages), several ``Origin`` headers, a
   malformed one: refused with HTTP 403 ``forbidden_origin``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

import attrs

#: ``scheme://host[:port]``: an origin as RFC 6454 serialises it (no path, no user).
_ORIGIN = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s/:?#\[\]@\\]+)"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
#: ``host[:port]``: a Host header.
_HOST = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s/:?#\[\]@\\]+)(?::(?P<port>[0-9]{1,5}))?")
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}

#: An origin: (scheme, host, port), lowercased, the port made explicit where the scheme has a
#: default one (``None`` otherwise, for an origin without a port).
Origin = tuple[str, str, int | None]


def parse_origin(text: str) -> Origin | None:
    """The normalised origin ``text`` serialises, or ``None`` if it is not one."""
    match = _ORIGIN.fullmatch(text)
    if match is None or not text.isascii():
        return None
    scheme = match["scheme"].lower()
    port = _port(match["port"], _DEFAULT_PORTS.get(scheme))
    if port == 0:
        return None
    return scheme, match["host"].lower(), port


def _port(text: str | None, default: int | None) -> int | None:
    if text is None:
        return default
    port = int(text)
    return port if 0 < port < 65536 else 0


def check_origin(text: object) -> str:
    """An origin for ``allow_origins``, normalised (``"https://app.example.com"``), or ``"*"``.

    Raises:
        TypeError: not a string.
        ValueError: not an origin, with what is wrong.
    """
    if not isinstance(text, str):
        raise TypeError(f"an allowed origin is a string, got {type(text).__name__}")
    text = text.strip()
    if text == "*":
        return text
    if text.lower() == "null":
        raise ValueError(
            "the origin 'null' (sandboxed frames, file:// pages) cannot be allowed by name: "
            "any page can send it; use '*' to allow every origin"
        )
    parsed = parse_origin(text)
    if parsed is None:
        hint = ""
        if "://" not in text:
            hint = " (the scheme is missing: https://app.example.com)"
        elif re.search(r"://[^/]*[/?#]", text):
            hint = " (an origin has no path, not even '/')"
        elif not text.isascii():
            hint = " (write the host in ASCII, its punycode form)"
        raise ValueError(f"{text!r} is not an origin: scheme://host[:port]{hint}")
    return _format(parsed)


def _format(origin: Origin) -> str:
    scheme, host, port = origin
    if port is None or _DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@attrs.frozen
class OriginPolicy:
    """The origins a server accepts besides its own (see the module's rule)."""

    allowed: frozenset[Origin] = frozenset()
    allow_all: bool = False

    @classmethod
    def of(cls, origins: Iterable[str] | None) -> OriginPolicy:
        """The policy for ``allow_origins`` (``None``: same origin only).

        Raises:
            TypeError: ``origins`` is a string, or holds something that is not.
            ValueError: an entry is not an origin (nor ``"*"``).
        """
        if origins is None:
            return cls()
        if isinstance(origins, str | bytes):
            raise TypeError(
                "allow_origins is a list of origins (['https://app.example.com']), not a string"
            )
        allowed = set()
        allow_all = False
        for entry in origins:
            checked = check_origin(entry)
            if checked == "*":
                allow_all = True
            else:
                parsed = parse_origin(checked)
                assert parsed is not None
                allowed.add(parsed)
        return cls(frozenset(allowed), allow_all)

    @property
    def origins(self) -> tuple[str, ...]:
        """The allowed origins, normalised and sorted (``"*"`` first when every one is)."""
        listed = sorted(_format(origin) for origin in self.allowed)
        return ("*", *listed) if self.allow_all else tuple(listed)

    def allows(
        self, origin_headers: Sequence[str], host_header: str | None, server_host: str | None
    ) -> bool:
        """Whether a handshake with these ``Origin`` headers (all of them, in order) and this
        ``Host`` may go on, for a server listening on ``server_host``."""
        if not origin_headers:
            return True
        if self.allow_all:
            return True
        if len(origin_headers) != 1:
            return False
        origin = parse_origin(origin_headers[0].strip())
        if origin is None:
            return False
        if origin in self.allowed:
            return True
        scheme, host, port = origin
        if scheme not in ("http", "https") or host_header is None:
            return False
        match = _HOST.fullmatch(host_header.strip())
        if match is None:
            return False
        own_host = match["host"].lower()
        own_port = _port(match["port"], _DEFAULT_PORTS[scheme])
        if own_port != port:
            return False
        if not (own_host == host or (_loopback(own_host) and _loopback(host))):
            return False
        listening = (server_host or "").lower()
        return (
            _is_ip(own_host) or own_host == "localhost" or own_host in (listening, f"[{listening}]")
        )
