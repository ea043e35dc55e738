"""A stored grant whose user an administrator disabled (AADSTS50057) or locked (50053): the
refresh is refused for the account, not for the grant. The app gets Entra's decoded reason and
its fix (an administrator re-enables the account; the lockout ends), never a consent link (the
sign-in it leads to fails the same way), and the grant is kept: once the account works again the
user is served without consenting again. A password change (50055, 50133) still asks the user
to sign in again. Real MSAL against the emulator's account states; the broker's real consent."""

from __future__ import annotations

from typing import Any

import pytest

from _support.consent import ConsentEnv, consent_link, follow_link, platform_caller
from entra_passthrough import (
    ConsentRequired,
    EntraError,
    Policy,
    TokenAcquisitionError,
    TokenChain,
    TokenRequest,
    UserKey,
)
from entra_passthrough._store import Keyring, MemoryStore

BLOCKED = {"disabled": 50057, "locked": 50053}
SIGN_IN_AGAIN = {"password_expired": 50055, "session_revoked": 50133}


async def _consented(env: ConsentEnv, user: str, chat: str) -> tuple[Any, Any, Any]:
    source, broker = env.make(store=MemoryStore(), keyring=Keyring.generate())
    caller = platform_caller(chat, upn=env.idp.users[user].upn)
    page = await follow_link(env, await consent_link(source, env, caller))
    assert page.status_code == 200, page.text[:300]
    return source, broker, caller


async def _refresh_refused(
    env: ConsentEnv, state: str, chat: str, expected: type[TokenAcquisitionError]
) -> tuple[Any, Any, Any, TokenRequest, Any]:
    """rita consents, her account goes into ``state``, the source's refresh is refused with
    ``expected``; her account is enabled again after."""
    source, broker, caller = await _consented(env, "rita", chat)
    request = TokenRequest(scopes=(env.mcp_scope,), caller=caller)
    env.idp.set_account_state("rita", state)
    try:
        with pytest.raises(expected) as info:
            await source.get_token_async(request)
    finally:
        env.idp.set_account_state("rita", "enabled")
    return source, broker, caller, request, info.value


@pytest.mark.parametrize("state", sorted(BLOCKED))
async def test_a_blocked_account_keeps_the_grant_and_says_why(
    consent_env: ConsentEnv, state: str
) -> None:
    source, broker, caller, request, error = await _refresh_refused(
        consent_env, state, f"chat-blocked-{state}", EntraError
    )
    assert not isinstance(error, ConsentRequired)
    assert error.code is not None
    assert error.code.code == BLOCKED[state]
    assert "revoked or expired" not in str(error)
    assert error.fix
    assert "administrator" in error.fix
    key = UserKey.from_caller(caller)
    assert key is not None
    assert await broker.grants.get_grant(key.hashed) is not None
    # The account works again: served from the same grant, no new consent.
    again = await source.get_token_async(request)
    assert again is not None
    assert again.kind.value == "user"


@pytest.mark.parametrize("state", sorted(BLOCKED))
async def test_the_app_never_stands_in(consent_env: ConsentEnv, state: str) -> None:
    env = consent_env
    source, _broker, caller = await _consented(env, "pat", f"chat-standin-{state}")
    mi = env.idp  # the app's own identity beside the consent source, under user_or_app
    from azure.identity import ClientSecretCredential

    from entra_passthrough import AzureCredential, IdentityKind

    app = AzureCredential(
        ClientSecretCredential(
            mi.tenant_id,
            mi.agent.client_id,
            mi.agent.secret or "",
            authority=mi.url,
            connection_verify=mi.ca_file,
            disable_instance_discovery=True,
        ),
        kind=IdentityKind.APP,
    )
    chain = TokenChain([source, app], policy=Policy.USER_OR_APP)
    env.idp.set_account_state("pat", state)
    try:
        with pytest.raises(TokenAcquisitionError) as info:
            await chain.get_token_async([env.mcp_scope], caller=caller)
    finally:
        env.idp.set_account_state("pat", "enabled")
        chain.close()
    assert info.value.code is not None
    assert info.value.code.code == BLOCKED[state]


@pytest.mark.parametrize("state", sorted(SIGN_IN_AGAIN))
async def test_a_changed_password_still_asks_to_sign_in_again(
    consent_env: ConsentEnv, state: str
) -> None:
    *_, error = await _refresh_refused(
        consent_env, state, f"chat-password-{state}", ConsentRequired
    )
    assert error.link
