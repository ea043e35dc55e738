"""A local Entra ID emulator and a pytest plugin, so that you can test code that uses Entra.

    from entra_passthrough.testing import EntraEmulator

    with EntraEmulator() as idp:
        token = idp.user_token("alice", audience=idp.agent.client_id)

See docs/emulator.md.
"""

from .._errors import require_extra

try:  # the emulator serves HTTPS with starlette and uvicorn
    import starlette as _starlette  # noqa: F401
    import uvicorn as _uvicorn  # noqa: F401
except ImportError as _exc:
    raise require_extra("testing", "testing", _exc) from _exc

from ._emulator import EntraEmulator
from ._errors import StsError
from ._toolbox import ToolboxRequest, ToolboxStandIn
from ._world import (
    AZURE_CLI_CLIENT_ID,
    FOUNDRY_AUDIENCE,
    TOKEN_EXCHANGE_AUDIENCE,
    App,
    FederatedCredential,
    Grant,
    Lifetimes,
    ManagedIdentityPrincipal,
    RoleAssignment,
    Tenant,
    User,
    World,
    stable_id,
)

__all__ = [
    "AZURE_CLI_CLIENT_ID",
    "FOUNDRY_AUDIENCE",
    "TOKEN_EXCHANGE_AUDIENCE",
    "App",
    "EntraEmulator",
    "FederatedCredential",
    "Grant",
    "Lifetimes",
    "ManagedIdentityPrincipal",
    "RoleAssignment",
    "StsError",
    "Tenant",
    "ToolboxRequest",
    "ToolboxStandIn",
    "User",
    "World",
    "stable_id",
]
