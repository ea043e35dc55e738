"""entra-passthrough: carry an end user's identity from an agent to Entra-protected MCP servers.

Three stages: *capture* the caller per request (``CallerMiddleware``, ``bind_caller``),
*resolve* a token for the target audience under a policy (``TokenChain`` of ``TokenSource``s),
*apply* it on every HTTP request (``EntraAuth``).
"""

from __future__ import annotations

# One sorted import block (ruff I001). Which stage each module belongs to: capture (_caller,
# _middleware, _verify), resolve (_cache, _chain, _sources), apply (_auth), consent (_grants,
# _sources.delegated, _store); _errors, _jwt and _types are shared. Add a name here *and* to
# __all__ (sorted); tests/test_exported_members.py checks both against the docs.
from ._auth import EntraAuth, use_token
from ._cache import TokenCache
from ._caller import Caller, bind_caller, current_caller
from ._chain import Policy, TokenChain
from ._credential import AppCredential
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
    IdTokenAssertion,
    InsufficientScope,
    InteractionRequired,
    MissingExtraError,
    NoCallerError,
    PolicyViolation,
    SigningKeysUnavailable,
    SourceUnavailable,
    TenantNotAllowed,
    Throttled,
    TokenAcquisitionError,
    TokenVerificationError,
)
from ._http import Timeouts
from ._jwt import UnverifiedClaims
from ._middleware import CallerMiddleware
from ._sources import (
    AgentIdentityOnBehalfOf,
    AzureCli,
    AzureCredential,
    FoundryToolboxRoute,
    ManagedIdentity,
    OnBehalfOf,
)
from ._sources.delegated import DelegatedConsent
from ._store import Keyring, KeyringError, MemoryStore, TokenStore
from ._types import IdentityKind, TokenRequest, TokenResult, TokenSource
from ._user_key import UserKey
from ._verify import JwtVerifier, VerifiedToken
from ._www_auth import step_up_challenge

__version__ = "0.2.0.dev0"

__all__ = [
    "AgentIdentityOnBehalfOf",
    "AppCredential",
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
    "IdTokenAssertion",
    "IdentityKind",
    "InsufficientScope",
    "InteractionRequired",
    "JwtVerifier",
    "Keyring",
    "KeyringError",
    "ManagedIdentity",
    "MemoryStore",
    "MissingExtraError",
    "NoCallerError",
    "OnBehalfOf",
    "Policy",
    "PolicyViolation",
    "SigningKeysUnavailable",
    "SourceUnavailable",
    "TenantNotAllowed",
    "Throttled",
    "Timeouts",
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
    "bind_caller",
    "current_caller",
    "step_up_challenge",
    "use_token",
]
