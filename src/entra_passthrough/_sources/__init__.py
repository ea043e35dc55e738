"""The built-in token sources. Each implements ``TokenSource`` (``_types``) and ``from_env()``.

``delegated.py`` (``DelegatedConsent``) belongs to the consent broker.
"""

from __future__ import annotations

from .azure_cli import AzureCli
from .azure_credential import AzureCredential
from .managed_identity import ManagedIdentity
from .obo import OnBehalfOf

__all__ = ["AzureCli", "AzureCredential", "ManagedIdentity", "OnBehalfOf"]
