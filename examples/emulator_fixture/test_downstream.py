"""Testing `downstream.py` against the local Entra emulator (fixture: ``entra_emulator``)."""

from __future__ import annotations

import sys
from pathlib import Path

import jwt
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from downstream import ExchangeFailed, Settings, downstream_token

from entra_passthrough.testing import EntraEmulator


@pytest.fixture
def settings(entra_emulator: EntraEmulator) -> Settings:
    idp = entra_emulator
    assert idp.agent.secret is not None
    return Settings(
        client_id=idp.agent.client_id,
        client_secret=idp.agent.secret,
        authority=idp.authority,
        downstream_scope=f"{idp.mcp.app_id_uri}/.default",
        http_client=idp.msal_http_client(),
    )


def test_alice_reaches_the_downstream_api_as_herself(
    entra_emulator: EntraEmulator, settings: Settings
) -> None:
    caller = entra_emulator.user_token("alice", audience=entra_emulator.agent.client_id)
    token = downstream_token(settings, caller)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == entra_emulator.mcp.client_id
    assert claims["preferred_username"] == entra_emulator.users["alice"].upn


def test_carol_has_not_consented(entra_emulator: EntraEmulator, settings: Settings) -> None:
    caller = entra_emulator.user_token("carol", audience=entra_emulator.agent.client_id)
    with pytest.raises(ExchangeFailed) as info:
        downstream_token(settings, caller)
    assert info.value.code == 65001


def test_a_foundry_token_cannot_be_exchanged(
    entra_emulator: EntraEmulator, settings: Settings
) -> None:
    caller = entra_emulator.user_token("alice", audience="https://ai.azure.com")
    with pytest.raises(ExchangeFailed) as info:
        downstream_token(settings, caller)
    assert info.value.code == 500131  # AssertionAudienceDoesNotMatch
