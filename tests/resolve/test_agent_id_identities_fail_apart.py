"""Two agent identities of one blueprint: their T1 requests differ only by ``fmi_path``. The
negative cache (a failed request answered locally for a short while, so one failure is not
repeated for every user) keyed "the same request" without it, so one stalled T1 request of
identity A made identity B's users fail for that while, with nothing sent for B. Real MSAL
against the emulator; the stall is the emulator holding A's request past the read timeout."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from entra_passthrough import AgentIdentityOnBehalfOf, SourceUnavailable, TokenChain, bind_caller
from entra_passthrough._http import SHARED_THROTTLE, Timeouts
from entra_passthrough.testing import EntraEmulator, World
from entra_passthrough.testing._world import App, stable_id


@pytest.fixture
def idp() -> Iterator[EntraEmulator]:
    world = World.default()
    blueprint = world.app("blueprint")
    assert blueprint is not None
    world = world.with_app(
        App(
            name="agent_identity_b",
            client_id=stable_id("app", "agent-identity-b"),
            tenant_id=blueprint.tenant_id,
            object_id=stable_id("sp", "agent-identity-b"),
            kind="agent_identity",
            blueprint_id=blueprint.client_id,
        )
    )
    SHARED_THROTTLE.clear()
    with EntraEmulator(world=world) as emulator:
        yield emulator
    SHARED_THROTTLE.clear()


def _chain(idp: EntraEmulator, agent_identity_id: str, name: str) -> TokenChain:
    return TokenChain(
        [
            AgentIdentityOnBehalfOf(
                blueprint_client_id=idp.blueprint.client_id,
                agent_identity_id=agent_identity_id,
                tenant_id=idp.tenant_id,
                client_secret=idp.blueprint.secret,
                authority_host=idp.url,
                http_client=idp.msal_http_client(),
                name=name,
                timeouts=Timeouts(read=1.0, retries=0),
            )
        ]
    )


def test_one_identitys_failed_t1_request_is_not_anothers(idp: EntraEmulator) -> None:
    other = idp.world.app("agent_identity_b")
    assert other is not None
    a = _chain(idp, idp.agent_identity.client_id, "agent_a")
    b = _chain(idp, other.client_id, "agent_b")
    scopes = [f"{idp.mcp.app_id_uri}/.default"]
    try:
        idp.inject_fault("token", status=None, delay=3.0, count=1)  # A's T1 request stalls
        with (
            bind_caller(token=idp.user_token("alice", audience=idp.blueprint.client_id)),
            pytest.raises(SourceUnavailable, match="T1 request failed"),
        ):
            a.get_token(scopes)
        with bind_caller(token=idp.user_token("bob", audience=idp.blueprint.client_id)):
            result = b.get_token(scopes)  # B's own T1 request goes out and is answered
        assert result.token
    finally:
        idp.wait_idle(5)
        a.close()
        b.close()
