"""Seed 001's campaign execution engine: broadcast, drip, triggered and A/B campaigns whose
enrollments walk step graphs durably, one entity per contact and campaign, parked while they
wait.

Serve it with ``sluiceway serve --app sluiceway.apps.engine:app --db engine.db`` (the
notification service's URL comes from ``SLUICEWAY_NOTIFY_URL``), or build one with
:func:`create_app`. It includes seed 000's contacts and templates (:mod:`sluiceway.apps.campaigns`)
and adds the endpoints in :data:`ENDPOINTS`.

Each part is its own module: the step graph and its validation (``_steps``), send times and
wait durations (``_timing``), conditions and A/B splits (``_conditions``), an enrollment's walk
(``_walk``), the entities (``_entities``) and the endpoints (``_app``).
"""

from ._app import ENDPOINTS, TRIGGER_EVENTS, create_app, fire
from ._conditions import Condition, Engagement, ab_variant, ab_winner
from ._entities import (
    TYPES,
    ABDecision,
    CampaignBook,
    Enrollment,
    Segment,
    SegmentBook,
    SegmentSnapshot,
    StepCampaign,
)
from ._services import EngineConfig, EngineServices
from ._steps import Action, ActionType, Step, StepGraph, StepType
from ._timing import SendStrategy, WaitDuration, next_send_time, wait_until

#: The application with its configuration from the environment (read when the server starts).
app = create_app()

__all__ = [
    "ENDPOINTS",
    "TRIGGER_EVENTS",
    "TYPES",
    "ABDecision",
    "Action",
    "ActionType",
    "CampaignBook",
    "Condition",
    "EngineConfig",
    "EngineServices",
    "Engagement",
    "Enrollment",
    "Segment",
    "SegmentBook",
    "SegmentSnapshot",
    "SendStrategy",
    "Step",
    "StepCampaign",
    "StepGraph",
    "StepType",
    "WaitDuration",
    "ab_variant",
    "ab_winner",
    "app",
    "create_app",
    "fire",
    "next_send_time",
    "wait_until",
]
