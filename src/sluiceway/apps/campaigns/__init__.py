"""Seed 000's campaign execution as an application: contacts, templates and campaigns whose
runs personalize and send one email per contact through the notification service, with
capacity per campaign and across campaigns, progress streamed live, and resumption after a
crash without sending anything twice.

Serve it with ``sluiceway serve --app sluiceway.apps.campaigns:app --db campaigns.db`` (the
notification service's URL comes from ``SLUICEWAY_NOTIFY_URL``), or build one with
:func:`create_app`. Its endpoints are listed in :data:`ENDPOINTS`.
"""

from .._requests import SendError
from ._app import ENDPOINTS, create_app
from ._config import DEFAULT_NOTIFY_URL, CampaignConfig, CampaignServices
from ._entities import (
    CONTACT_LIST,
    TYPES,
    Campaign,
    CampaignRecipient,
    Contact,
    ContactList,
    EmailDraft,
    EmailTemplate,
)
from ._personalize import (
    Personalization,
    PersonalizationRequest,
    Personalizer,
    TemplatePersonalizer,
)

#: The application with its configuration from the environment (read when the server starts).
app = create_app()

__all__ = [
    "CONTACT_LIST",
    "DEFAULT_NOTIFY_URL",
    "ENDPOINTS",
    "TYPES",
    "Campaign",
    "CampaignConfig",
    "CampaignRecipient",
    "CampaignServices",
    "Contact",
    "ContactList",
    "EmailDraft",
    "EmailTemplate",
    "Personalization",
    "PersonalizationRequest",
    "Personalizer",
    "SendError",
    "TemplatePersonalizer",
    "app",
    "create_app",
]
