"""entra-passthrough: carry an end user's identity from an agent to Entra-protected MCP servers.

Three stages: *capture* the caller per request (``CallerMiddleware``, ``bind_caller``),
*resolve* a token for the target audience under a policy (``TokenChain`` of ``TokenSource``s),
*apply* it on every HTTP request (``EntraAuth``).
"""

from __future__ import annotations

from ._caller import Caller, active_caller, bind_caller, current_caller
from ._errors import (
    AppOnlyAssertion,
    AssertionAudienceMismatch,
    AssertionExpired,
    AssertionMalformed,
    AssertionNotUsable,
    ConfigurationError,
    ConsentRequired,
    EntraError,
    EntraPassthroughError,
    InsufficientScope,
    InteractionRequired,
    MissingExtraError,
    NoCallerError,
    PolicyViolation,
    SourceUnavailable,
    TenantNotAllowed,
    TokenAcquisitionError,
    TokenVerificationError,
)
from ._jwt import UnverifiedClaims
from ._types import IdentityKind, TokenRequest, TokenResult, TokenSource

# Exports added by each stage's module are appended below, one block per module.
# --- capture/apply (_middleware, _auth, _verify) ---
from ._auth import EntraAuth, use_token
from ._middleware import CallerMiddleware
from ._verify import JwtVerifier, VerifiedToken
# --- resolve (_chain, _cache, _sources) ---
from ._cache import TokenCache
from ._chain import Policy, TokenChain
from ._sources import (
    AgentIdentityOnBehalfOf,
    AzureCli,
    AzureCredential,
    FoundryToolboxRoute,
    ManagedIdentity,
    OnBehalfOf,
)
# --- consent (_store, _sources.delegated) ---
from ._grants import UserKey
from ._sources.delegated import DelegatedConsent
from ._store import Keyring, MemoryStore, TokenStore

__version__ = "0.1.0"

__all__ = [
    "AgentIdentityOnBehalfOf",
    "AppOnlyAssertion",
    "AssertionAudienceMismatch",
    "AssertionExpired",
    "AssertionMalformed",
    "AssertionNotUsable",
    "AzureCli",
    "AzureCredential",
    "Caller",
    "CallerMiddleware",
    "ConfigurationError",
    "ConsentRequired",
    "DelegatedConsent",
    "EntraAuth",
    "EntraError",
    "EntraPassthroughError",
    "FoundryToolboxRoute",
    "IdentityKind",
    "InsufficientScope",
    "InteractionRequired",
    "JwtVerifier",
    "Keyring",
    "ManagedIdentity",
    "MemoryStore",
    "MissingExtraError",
    "NoCallerError",
    "OnBehalfOf",
    "Policy",
    "PolicyViolation",
    "SourceUnavailable",
    "TenantNotAllowed",
    "TokenAcquisitionError",
    "TokenCache",
    "TokenChain",
    "TokenRequest",
    "TokenResult",
    "TokenSource",
    "TokenStore",
    "TokenVerificationError",
    "UnverifiedClaims",
    "UserKey",
    "VerifiedToken",
    "__version__",
    "active_caller",
    "bind_caller",
    "current_caller",
    "use_token",
]
