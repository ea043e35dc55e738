"""What an on-behalf-of POST asks Entra for: the scopes it uses, not a refresh token."""

from __future__ import annotations

from typing import Any

from entra_passthrough import OnBehalfOf, TokenChain, bind_caller
from entra_passthrough.testing import EntraEmulator


def test_obo_post_asks_for_no_refresh_token(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    session = idp.msal_http_client()
    sent: list[set[str]] = []
    post = session.post

    def recording_post(url: str, *args: Any, **kwargs: Any) -> Any:
        data = kwargs.get("data")
        if isinstance(data, dict) and data.get("grant_type", "").endswith("jwt-bearer"):
            sent.append(set(str(data.get("scope", "")).split()))
        return post(url, *args, **kwargs)

    session.post = recording_post  # type: ignore[method-assign]
    source = OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        authority_host=idp.url,
        client_secret=idp.agent.secret,
        http_client=session,
    )
    chain = TokenChain([source])
    scope = f"{idp.mcp.app_id_uri}/.default"
    try:
        with bind_caller(token=idp.user_token("alice")):
            result = chain.get_token([scope])
        assert result.token
        # MSAL's raw answer for the same request: no refresh token comes back to be discarded
        raw = source.msal_apps()[0].acquire_token_on_behalf_of(idp.user_token("bob"), [scope])
    finally:
        chain.close()
        session.close()
    assert "access_token" in raw
    assert "refresh_token" not in raw
    assert len(sent) == 2
    for scopes in sent:
        assert scope in scopes
        assert "offline_access" not in scopes
        assert "profile" not in scopes
        assert scopes <= {scope, "openid"}  # openid: MSAL allows no opting out of it
