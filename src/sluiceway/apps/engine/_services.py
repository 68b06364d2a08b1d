"""The campaign engine's configuration and the services its entities share: those of the
seed 000 application (the notification client, the personalizer, the address book), plus a
send capacity per campaign under the global one, the engine's entity books, and the parsed
step graphs."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import attrs

from ...capacity import CapacitySource
from ..campaigns import CampaignConfig, CampaignServices
from ._steps import StepGraph


def _time_scale(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= 1
    ):
        raise ValueError(f"time_scale must be a number in (0, 1], got {value!r}")


@attrs.frozen(kw_only=True)
class EngineConfig(CampaignConfig):
    """How the engine runs: :class:`~sluiceway.apps.campaigns.CampaignConfig` (the
    notification service, sends per campaign and across campaigns, retries), and:

    Attributes:
        time_scale: what every wait and scheduled send of a campaign is multiplied by, for a
            demo or a trial run (``0.0001``: a day lasts 8.64 seconds). 1 in production.
    """

    time_scale: float = attrs.field(default=1.0, validator=_time_scale)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EngineConfig:
        """:meth:`CampaignConfig.from_env`, and ``SLUICEWAY_ENGINE_TIME_SCALE``.

        Raises:
            ValueError: a variable is set to something invalid (naming it).
        """
        env = os.environ if environ is None else environ
        base = CampaignConfig.from_env(env)
        fields = attrs.asdict(base)
        text = env.get("SLUICEWAY_ENGINE_TIME_SCALE")
        if text:
            try:
                fields["time_scale"] = float(text)
            except ValueError:
                raise ValueError(
                    f"SLUICEWAY_ENGINE_TIME_SCALE must be a number, got {text!r}"
                ) from None
        return cls(**fields)


@attrs.define(eq=False)
class EngineServices(CampaignServices):
    """What the engine application's lifespan yields (``ctx.state``): the seed 000 services,
    the engine's configuration, the ids of its books (segments, campaigns), a send capacity
    per campaign, and step graphs parsed once per campaign."""

    engine: EngineConfig = attrs.field(factory=EngineConfig)
    segment_book_id: str = ""
    campaign_book_id: str = ""
    _send_limits: dict[str, CapacitySource] = attrs.field(factory=dict)
    _graphs: dict[str, StepGraph] = attrs.field(factory=dict)

    def send_capacity(self, campaign_id: str) -> CapacitySource:
        """The capacity that sends of ``campaign_id`` take: ``per_campaign`` at once, under
        the process-wide ``global_limit``."""
        source = self._send_limits.get(campaign_id)
        if source is None:
            source = CapacitySource(self.config.per_campaign, self.global_capacity)
            self._send_limits[campaign_id] = source
        return source

    def graph(self, campaign_id: str, steps: Any) -> StepGraph:
        """The step graph of ``campaign_id`` (whose steps never change once it is created),
        parsed the first time only."""
        graph = self._graphs.get(campaign_id)
        if graph is None:
            graph = self._graphs[campaign_id] = StepGraph.parse(steps)
        return graph


def engine_services(ctx: Any) -> EngineServices:
    """The engine's services from a run's or an endpoint's ``ctx.state``.

    Raises:
        RuntimeError: it runs outside the engine application.
    """
    state = ctx.state
    if not isinstance(state, EngineServices):
        raise RuntimeError(
            "campaign engine entities run inside the engine application (ctx.state holds its "
            "services): serve it with `sluiceway serve --app sluiceway.apps.engine:app`"
        )
    return state
