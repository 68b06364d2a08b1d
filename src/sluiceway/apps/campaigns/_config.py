"""The campaign application's configuration and the services its runs share."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs
import httpx

from ...capacity import CapacitySource
from .._validators import fields_from_env, positive_float, positive_int
from ._personalize import Personalizer, TemplatePersonalizer

#: Where the notification service listens unless configured (seed 000's default).
DEFAULT_NOTIFY_URL = "http://127.0.0.1:8085"


@attrs.frozen(kw_only=True)
class CampaignConfig:
    """How campaigns run.

    Attributes:
        notify_url: the notification service's base URL (``POST {notify_url}/send/email``).
        per_campaign: sends of one campaign at once (seed 000: 3).
        global_limit: sends of every campaign of the process at once (seed 000: 5); two
            campaigns running together share it.
        send_attempts: tries per email when the service fails transiently (a transport error,
            429 or 5xx); the idempotency key makes a retry safe. 4xx answers are not retried.
        retry_delay: seconds before the first retry (doubling after each).
        send_timeout: seconds for one HTTP request.
    """

    notify_url: str = DEFAULT_NOTIFY_URL
    per_campaign: int = attrs.field(default=3, validator=positive_int("per_campaign"))
    global_limit: int = attrs.field(default=5, validator=positive_int("global_limit"))
    send_attempts: int = attrs.field(default=3, validator=positive_int("send_attempts"))
    retry_delay: float = attrs.field(default=0.2, validator=positive_float("retry_delay"))
    send_timeout: float = attrs.field(default=10.0, validator=positive_float("send_timeout"))

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.notify_url, str) or not self.notify_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(f"notify_url must be an http(s) URL, got {self.notify_url!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CampaignConfig:
        """The configuration from ``SLUICEWAY_NOTIFY_URL``, ``SLUICEWAY_CAMPAIGN_CONCURRENCY``,
        ``SLUICEWAY_GLOBAL_SEND_CONCURRENCY`` and ``SLUICEWAY_SEND_ATTEMPTS`` (defaults for
        those unset).

        Raises:
            ValueError: a variable is set to something invalid (naming it).
        """
        env = os.environ if environ is None else environ
        fields = fields_from_env(
            env,
            urls={"SLUICEWAY_NOTIFY_URL": "notify_url"},
            integers={
                "SLUICEWAY_CAMPAIGN_CONCURRENCY": "per_campaign",
                "SLUICEWAY_GLOBAL_SEND_CONCURRENCY": "global_limit",
                "SLUICEWAY_SEND_ATTEMPTS": "send_attempts",
            },
        )
        return cls(**fields)


def services_of(ctx: Any) -> CampaignServices:
    """The application's services from a run's or an endpoint's ``ctx.state``.

    Raises:
        RuntimeError: it runs outside the campaigns application.
    """
    state = ctx.state
    if not isinstance(state, CampaignServices):
        raise RuntimeError(
            "campaign entities run inside the campaigns application (ctx.state holds its "
            "services): serve it with `sluiceway serve --app sluiceway.apps.campaigns:app`, or "
            "enter `app.running(runtime)` around the runs"
        )
    return state


@attrs.define(eq=False)
class CampaignServices:
    """What the application's lifespan yields (``ctx.state`` in runs, ``ctx.state`` in
    endpoints): the configuration, the HTTP client of the notification service, the global
    send capacity, the personalizer and the address book's id."""

    config: CampaignConfig
    http: httpx.AsyncClient
    global_capacity: CapacitySource
    personalizer: Personalizer = attrs.field(factory=TemplatePersonalizer)
    contact_list_id: str = ""
