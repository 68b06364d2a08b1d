"""An async client (trio) for a sluiceway server: requests, and subscriptions that resume
after a reconnection."""

from ._client import (
    Client,
    ConnectionLostError,
    ConnectionRefusedByServerError,
    ServerError,
    Subscription,
    connect,
)

__all__ = [
    "Client",
    "ConnectionLostError",
    "ConnectionRefusedByServerError",
    "ServerError",
    "Subscription",
    "connect",
]
