"""Serve a runtime over WebSockets: a versioned JSON protocol for progress clients.

See :class:`RuntimeServer` and :class:`Application`, and ``docs/protocol.rst`` for the protocol.
"""

from ._app import Application, Endpoint, EndpointContext, EndpointError, load_app
from ._protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_SLOW_CONSUMER,
    PROTOCOL_VERSION,
    ErrorCode,
    ProtocolError,
    record_to_json,
)
from ._server import RuntimeServer, ServerAddress, ServerLimits

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_SLOW_CONSUMER",
    "PROTOCOL_VERSION",
    "Application",
    "Endpoint",
    "EndpointContext",
    "EndpointError",
    "ErrorCode",
    "ProtocolError",
    "RuntimeServer",
    "ServerAddress",
    "ServerLimits",
    "load_app",
    "record_to_json",
]
