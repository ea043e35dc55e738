"""A platform user's binding written before bindings were per consent app (``ep:v1:bind:``),
sealed under a key since dropped, still refuses a sign-in as another account
(``binding_unreadable``), as a per-app binding does: never a new binding to that account.
Real MSAL, the emulator over HTTPS, the broker mounted over HTTPS."""

from __future__ import annotations

import json

import pytest

from _support.consent import ConsentEnv, follow_link, platform_caller
from entra_passthrough import ConsentRequired, TokenRequest
from entra_passthrough._grants import _BINDING, _LEGACY_BINDING, BINDING_TTL, GrantStore, _app_id
from entra_passthrough._store import Keyring, MemoryStore
from entra_passthrough._user_key import UserKey


@pytest.mark.parametrize("legacy", [False, True], ids=["per-app", "legacy"])
async def test_an_unreadable_binding_refuses_another_account(
    consent_env: ConsentEnv, legacy: bool
) -> None:
    env = consent_env
    chat_user = f"chat-user-{'legacy' if legacy else 'v2'}"
    old, new = Keyring.generate("old"), Keyring.generate("new")
    store = MemoryStore()
    pat, quinn = env.idp.users["pat"], env.idp.users["quinn"]
    hashed = UserKey.for_platform_user(chat_user).hashed
    name = _LEGACY_BINDING + hashed if legacy else _BINDING + _app_id(env.app.client_id, hashed)
    binding = json.dumps({"tid": pat.tenant_id, "oid": pat.oid}).encode()
    writer = GrantStore(store, old, client_id=env.app.client_id)
    assert await writer._put(name, binding, ttl=BINDING_TTL, expect=None)
    # The old key is dropped (a rotation done, or a leaked key); quinn follows chat_user's link.
    source, _ = env.make(store=store, keyring=new)
    request = TokenRequest(
        scopes=(env.mcp_scope,), caller=platform_caller(chat_user, upn=quinn.upn)
    )
    with pytest.raises(ConsentRequired) as info:
        await source.get_token_async(request)
    assert info.value.link is not None
    page = await follow_link(env, info.value.link)
    assert page.status_code == 400, page.text
    assert "binding_unreadable" in page.text
    with pytest.raises(ConsentRequired):  # no grant for quinn under chat_user
        await source.get_token_async(request)
