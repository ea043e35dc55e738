"""A stored grant whose user an administrator disabled (AADSTS50057) or locked (50053): the
refresh is refused for the account, not for the grant. The app gets Entra's decoded reason and
its fix (an administrator re-enables the account; the lockout ends), never a consent link (the
sign-in it leads to fails the same way), and the grant is kept: once the account works again the
user is served without consenting again. A password change (50055, 50133) still asks the user
to sign in again. Real MSAL against the emulator's account states; the broker's real consent."""

from __future__ import annotations

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


async def _consented(env: ConsentEnv, user: str, chat: str) -> tuple[object, object, object]:
    source, broker = env.make(store=MemoryStore(), keyring=Keyring.generate())
    caller = platform_caller(chat, upn=env.idp.users[user].upn)
    page = await follow_link(env, await consent_link(source, env, caller))
    assert page.status_code == 200, page.text[:300]
    return source, broker, caller


@pytest.mark.parametrize("state", sorted(BLOCKED))
async def test_a_blocked_account_keeps_the_grant_and_says_why(
    consent_env: ConsentEnv, state: str
) -> None:
    env = consent_env
    source, broker, caller = await _consented(env, "rita", f"chat-blocked-{state}")
    request = TokenRequest(scopes=(env.mcp_scope,), caller=caller)  # type: ignore[arg-type]
    env.idp.set_account_state("rita", state)
    try:
        with pytest.raises(EntraError) as info:
            await source.get_token_async(request)  # type: ignore[attr-defined]
    finally:
        env.idp.set_account_state("rita", "enabled")
    error = info.value
    assert not isinstance(error, ConsentRequired)
    assert error.code is not None
    assert error.code.code == BLOCKED[state]
    assert "revoked or expired" not in str(error)
    assert error.fix
    assert "administrator" in error.fix
    key = UserKey.from_caller(caller)  # type: ignore[arg-type]
    assert key is not None
    assert await broker.grants.get_grant(key.hashed) is not None  # type: ignore[attr-defined]
    # The account works again: served from the same grant, no new consent.
    again = await source.get_token_async(request)  # type: ignore[attr-defined]
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
    chain = TokenChain([source, app], policy=Policy.USER_OR_APP)  # type: ignore[list-item]
    env.idp.set_account_state("pat", state)
    try:
        with pytest.raises(TokenAcquisitionError) as info:
            await chain.get_token_async([env.mcp_scope], caller=caller)  # type: ignore[arg-type]
    finally:
        env.idp.set_account_state("pat", "enabled")
        chain.close()
    assert info.value.code is not None
    assert info.value.code.code == BLOCKED[state]


@pytest.mark.parametrize("state", sorted(SIGN_IN_AGAIN))
async def test_a_changed_password_still_asks_to_sign_in_again(
    consent_env: ConsentEnv, state: str
) -> None:
    env = consent_env
    source, _broker, caller = await _consented(env, "rita", f"chat-password-{state}")
    request = TokenRequest(scopes=(env.mcp_scope,), caller=caller)  # type: ignore[arg-type]
    env.idp.set_account_state("rita", state)
    try:
        with pytest.raises(ConsentRequired) as info:
            await source.get_token_async(request)  # type: ignore[attr-defined]
    finally:
        env.idp.set_account_state("rita", "enabled")
    assert info.value.link
