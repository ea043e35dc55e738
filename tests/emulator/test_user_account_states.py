"""A user whose account is disabled (AADSTS50057), locked (50053), whose password expired (50055)
or whose session a password change revoked (50133): Entra issues no more tokens for that user
(https://learn.microsoft.com/entra/identity-platform/reference-error-codes), also when an
assertion issued before is still valid. The emulator models the state (``User.account_state``,
``account_state`` in a world file, ``idp.set_account_state`` while running) and refuses every
grant acting for the user: OBO, ROPC, authorization code redemption, refresh, sign-in. The
library decodes each code with a fix for the user or administrator, and never falls back to the
app identity under ``user_or_app``. Real MSAL (through the library's ``OnBehalfOf`` and directly)
against the HTTPS emulator."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import httpx
import msal
import pytest

from entra_passthrough import (
    EntraError,
    ManagedIdentity,
    OnBehalfOf,
    Policy,
    TokenChain,
    bind_caller,
)
from entra_passthrough._aadsts import describe
from entra_passthrough.testing import EntraEmulator, World

from .emu_helpers import aadsts, msal_app, no_http_cache

STATES = {
    "disabled": 50057,
    "locked": 50053,
    "password_expired": 50055,
    "session_revoked": 50133,
}
CALLBACK = "http://localhost:8765/callback"


@pytest.fixture(scope="module")
def emu() -> Iterator[EntraEmulator]:
    """An emulator of its own: account states set here must not reach other tests."""
    with EntraEmulator() as idp:
        yield idp


@pytest.fixture
def idp(emu: EntraEmulator) -> Iterator[EntraEmulator]:
    yield emu
    for name in emu.users:
        emu.set_account_state(name, "enabled")


def _public(idp: EntraEmulator) -> msal.PublicClientApplication:
    return msal.PublicClientApplication(
        idp.frontend.client_id,
        authority=idp.authority,
        instance_discovery=False,
        http_client=idp.msal_http_client(),
        http_cache=no_http_cache(),
    )


def _sign_in(idp: EntraEmulator, app: msal.ClientApplication) -> tuple[dict, dict[str, str]]:
    """alice signs in (login_hint, headless) with response_mode=form_post: (flow, the fields
    Entra posts back to the redirect URI)."""
    flow = app.initiate_auth_code_flow(
        [f"{idp.mcp.app_id_uri}/access_as_user"],
        redirect_uri=CALLBACK,
        login_hint="alice",
        response_mode="form_post",
    )
    with httpx.Client(verify=idp.ssl_context()) as http:
        page = http.get(flow["auth_uri"]).text
    fields = dict(re.findall(r"name='([^']+)' value='([^']*)'", page))
    return flow, {k: html.unescape(v) for k, v in fields.items()}


def _ropc(idp: EntraEmulator, user: str = "alice", password: str | None = None) -> dict:
    u = idp.users[user]
    return _public(idp).acquire_token_by_username_password(
        u.upn, password or u.password, scopes=[f"{idp.mcp.app_id_uri}/access_as_user"]
    )


@pytest.mark.parametrize(("state", "code"), STATES.items())
def test_obo_for_the_user_is_refused_with_the_decoded_code_and_never_falls_back(
    idp: EntraEmulator, state: str, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice's assertion was issued while her account was usable; then an administrator acts.
    Under user_or_app with a real managed identity behind OBO, the chain raises the decoded
    error: no app token, and the managed identity is never asked."""
    assertion = idp.user_token("alice", audience=idp.agent.client_id)
    idp.set_account_state("alice", state)
    env = idp.mi_env("app_service")
    mi = ManagedIdentity(
        client_id=idp.managed_identity.client_id,
        endpoint=env["IDENTITY_ENDPOINT"],
        header=env["IDENTITY_HEADER"],
    )
    obo = OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.agent.secret,
        authority_host=idp.url,
        http_client=idp.msal_http_client(),
    )
    chain = TokenChain([obo, mi], policy=Policy.USER_OR_APP)
    idp.reset_stats()
    try:
        with bind_caller(token=assertion), pytest.raises(EntraError) as info:
            chain.get_token([f"{idp.mcp.app_id_uri}/.default"])
    finally:
        chain.close()
    err = info.value
    assert err.code is not None
    assert err.code.code == code
    assert err.code.name != "Unknown"
    assert err.fix
    assert "look up AADSTS" not in err.fix
    assert err.code.fix in err.fix
    assert assertion not in str(err)
    assert assertion not in err.fix
    stats = idp.stats()
    assert stats["endpoints"]["msi"] == 0, stats  # no fallback to the app identity
    assert stats["grants"]["on_behalf_of"] == 1, stats  # one refused request, no retry


@pytest.mark.parametrize(("state", "code"), STATES.items())
def test_ropc_refresh_and_code_redemption_are_refused(
    idp: EntraEmulator, state: str, code: int
) -> None:
    # A refresh token and an authorization code, both obtained while the account was usable.
    signed_in = _ropc(idp)
    assert "refresh_token" in signed_in, signed_in
    app = msal_app(idp)
    flow, params = _sign_in(idp, app)
    assert "code" in params, params

    idp.set_account_state("alice", state)
    refused = _ropc(idp)
    assert refused.get("error") == "invalid_grant", refused
    assert aadsts(refused) == code, refused
    refreshed = _public(idp).acquire_token_by_refresh_token(
        signed_in["refresh_token"], scopes=[f"{idp.mcp.app_id_uri}/access_as_user"]
    )
    assert refreshed.get("error") == "invalid_grant", refreshed
    assert aadsts(refreshed) == code, refreshed
    redeemed = app.acquire_token_by_auth_code_flow(flow, params)
    assert redeemed.get("error") == "invalid_grant", redeemed
    assert aadsts(redeemed) == code, redeemed
    # Other users are not affected.
    assert "access_token" in _ropc(idp, "bob")


@pytest.mark.parametrize(("state", "code"), STATES.items())
def test_sign_in_is_refused(idp: EntraEmulator, state: str, code: int) -> None:
    idp.set_account_state("alice", state)
    _, params = _sign_in(idp, msal_app(idp))
    assert "code" not in params
    assert params["error"] == "access_denied"
    assert params["error_description"].startswith(f"AADSTS{code}:")


def test_a_locked_account_is_refused_whatever_the_password(idp: EntraEmulator) -> None:
    idp.set_account_state("alice", "locked")
    assert aadsts(_ropc(idp, password="wrong-password")) == 50053
    # A disabled account with a wrong password is a wrong password.
    idp.set_account_state("alice", "disabled")
    assert aadsts(_ropc(idp, password="wrong-password")) == 50126


def test_the_sign_in_form_refuses_a_locked_account_whatever_the_password(
    idp: EntraEmulator,
) -> None:
    """The emulator's sign-in page (no login_hint): a locked account is refused on the page,
    with the right password or a wrong one."""
    idp.set_account_state("alice", "locked")
    alice = idp.users["alice"]
    flow = msal_app(idp).initiate_auth_code_flow(
        [f"{idp.mcp.app_id_uri}/access_as_user"], redirect_uri=CALLBACK, response_mode="form_post"
    )
    with httpx.Client(verify=idp.ssl_context()) as browser:
        page = browser.get(flow["auth_uri"]).text
        hidden = dict(re.findall(r"name='([^']+)' value='([^']*)'", page))
        for password in (alice.password, "wrong-password"):
            fields = {k: html.unescape(v) for k, v in hidden.items()}
            fields |= {"username": alice.upn, "password": password}
            answer = browser.post(flow["auth_uri"].split("?")[0], data=fields)
            assert "AADSTS50053" in html.unescape(answer.text), password
            assert "code" not in dict(re.findall(r"name='([^']+)' value='([^']*)'", answer.text))


def test_enabled_again_the_user_gets_tokens(idp: EntraEmulator) -> None:
    idp.set_account_state("alice", "disabled")
    assert aadsts(_ropc(idp)) == 50057
    idp.set_account_state("alice", "enabled")
    assert "access_token" in _ropc(idp)


def test_the_state_in_a_world_file_and_its_checks() -> None:
    world = World.from_dict(
        {"users": [{"name": "zoe", "account_state": "disabled"}, {"name": "yan"}]}
    )
    assert world.user("zoe").account_state == "disabled"  # type: ignore[union-attr]
    assert world.user("yan").account_state == "enabled"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="account_state"):
        World.from_dict({"users": [{"name": "zoe", "account_state": "frozen"}]})
    with EntraEmulator(world=world) as idp, pytest.raises(ValueError, match="one of"):
        idp.set_account_state("zoe", "frozen")


def test_a_world_with_a_disabled_user_refuses_obo_with_msal() -> None:
    base = World.default()
    alice = base.user("alice")
    assert alice is not None
    from dataclasses import replace

    world = base.with_user(replace(alice, account_state="disabled"))
    with EntraEmulator(world=world) as idp:
        result = msal_app(idp).acquire_token_on_behalf_of(
            idp.user_token("alice", audience=idp.agent.client_id),
            [f"{idp.mcp.app_id_uri}/.default"],
        )
    assert result.get("error") == "invalid_grant", result
    assert aadsts(result) == 50057, result
    assert result["error_description"].startswith("AADSTS50057: The user account is disabled.")


@pytest.mark.parametrize("code", STATES.values())
def test_each_code_is_decoded_with_a_fix(code: int) -> None:
    entry = describe(code)
    assert entry.name != "Unknown"
    assert entry.meaning
    assert "user" in entry.meaning
    assert entry.fix
    assert "look up" not in entry.fix
