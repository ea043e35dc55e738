"""The built-in token sources. Each implements ``TokenSource`` (``_types``) and ``from_env()``.

``delegated.py`` (``DelegatedConsent``) belongs to the consent broker.
"""

from __future__ import annotations

from .agent_id import AgentIdentityOnBehalfOf
from .azure_cli import AzureCli
from .azure_credential import AzureCredential
from .foundry import FoundryToolboxRoute
from .managed_identity import ManagedIdentity
from .obo import OnBehalfOf

__all__ = [
    "AgentIdentityOnBehalfOf",
    "AzureCli",
    "AzureCredential",
    "FoundryToolboxRoute",
    "ManagedIdentity",
    "OnBehalfOf",
]
