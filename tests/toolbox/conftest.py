"""One emulator per module, a toolbox stand-in per test (real MCP server on uvicorn)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from _support.mcp_world import legacy_ping_is_expected  # noqa: F401 (autouse here)
from entra_passthrough import Caller, FoundryToolboxRoute, ManagedIdentity, Policy, TokenChain
from entra_passthrough.testing import FOUNDRY_AUDIENCE, EntraEmulator, ToolboxStandIn


@pytest.fixture(scope="module")
def idp() -> Iterator[EntraEmulator]:
    with EntraEmulator() as emulator:
        yield emulator


@pytest.fixture
def toolbox(idp: EntraEmulator) -> Iterator[ToolboxStandIn]:
    with ToolboxStandIn(idp) as standin:
        yield standin


def agent_mi(idp: EntraEmulator) -> ManagedIdentity:
    env = idp.mi_env()
    return ManagedIdentity(
        client_id=idp.managed_identity.client_id,
        endpoint=env["IDENTITY_ENDPOINT"],
        header=env["IDENTITY_HEADER"],
    )


def toolbox_chain(idp: EntraEmulator, **kw: object) -> TokenChain:
    return TokenChain([FoundryToolboxRoute(agent_mi(idp), **kw)], policy=Policy.APP_ONLY)  # type: ignore[arg-type]


def foundry_caller(idp: EntraEmulator, toolbox: ToolboxStandIn, user: str) -> Caller:
    """What a hosted agent's CallerMiddleware (with a verifier) builds for a Foundry request:
    the user's Foundry token, verified, the platform's user id and a fresh call id."""
    person = idp.users[user]
    token = idp.user_token(user, audience=FOUNDRY_AUDIENCE)
    caller = Caller.from_token(token, user_id=person.oid, call_id=toolbox.call_id(user))
    caller.verified = {"tid": person.tenant_id, "oid": person.oid}
    return caller
