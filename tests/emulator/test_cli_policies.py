"""The ``az`` / ``azd`` stand-ins ask Entra's questions, seen by unmodified azure-identity, the
CLIs' own command lines and the library's ``AzureCli`` (docs/emulator.md, "Strict where Entra is
strict"):

- the resource's per-user policies hold for the CLI's tokens as for every grant: Conditional
  Access blocks ``erin`` from ``mcp`` (AADSTS53003) and ``mcp`` requires MFA of ``dave``
  (AADSTS50076) unless the CLI's sign-in performed it (``az_env(mfa=True)``: what
  ``az login --scope <resource>/.default`` does; Azure/azure-cli#17778, Azure/azure-dev#2168);
- the stand-ins print what az (azure-cli ``auth/util.py``) and azd (``pkg/auth/errors.go``)
  print after such an answer, and the library's error names the sign-in that meets the policy
  (not on-behalf-of's claims challenge), with the CLI's advice replaced, not cut in the middle;
- ``--scope`` as the CLIs pass it: several (two resources: AADSTS28000, scopes-oidc), and a
  named permission (``api://<mcp>/access_as_user``) is a scope of its resource, not a resource.
"""

from __future__ import annotations

import json
import os
import subprocess

import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import AzureCliCredential, AzureDeveloperCliCredential

from entra_passthrough import AzureCli, EntraError, TokenRequest
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._tokens import performed_mfa

CREDENTIALS = [AzureCliCredential, AzureDeveloperCliCredential]


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def _sign_in(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch, user: str, *, mfa: bool = False
) -> None:
    env = idp.az_env(user, mfa=True) if mfa else idp.az_env(user)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, env=os.environ)


# ---- the resource's policies ------------------------------------------------------------------


@pytest.mark.parametrize("credential_class", CREDENTIALS)
@pytest.mark.parametrize(("user", "code"), [("erin", 53003), ("dave", 50076)])
def test_cli_tokens_are_refused_as_on_behalf_of_refuses_them(
    idp: EntraEmulator,
    monkeypatch: pytest.MonkeyPatch,
    credential_class: type,
    user: str,
    code: int,
) -> None:
    scope = f"{idp.mcp.app_id_uri}/.default"
    _sign_in(idp, monkeypatch, user)
    with pytest.raises(ClientAuthenticationError) as info:
        credential_class().get_token(scope)
    assert f"AADSTS{code}" in str(info.value)
    # A user without a policy for mcp still gets the CLI's token.
    _sign_in(idp, monkeypatch, "alice")
    assert _claims(credential_class().get_token(scope).token)["oid"] == idp.users["alice"].oid


@pytest.mark.parametrize("credential_class", CREDENTIALS)
def test_an_mfa_sign_in_meets_the_mfa_policy_but_not_a_block(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch, credential_class: type
) -> None:
    scope = f"{idp.mcp.app_id_uri}/.default"
    _sign_in(idp, monkeypatch, "dave", mfa=True)  # az login --scope <mcp>/.default, with MFA
    claims = _claims(credential_class().get_token(scope).token)
    assert claims["oid"] == idp.users["dave"].oid
    assert performed_mfa(claims)
    _sign_in(idp, monkeypatch, "erin", mfa=True)  # no sign-in meets a block
    with pytest.raises(ClientAuthenticationError) as info:
        credential_class().get_token(scope)
    assert "AADSTS53003" in str(info.value)


def test_the_stand_ins_print_what_az_and_azd_print(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    scope = f"{idp.mcp.app_id_uri}/.default"
    _sign_in(idp, monkeypatch, "dave")
    az = _run(
        "az", "account", "get-access-token", "--output", "json", "--resource", idp.mcp.app_id_uri
    )
    assert az.returncode == 1
    assert az.stderr.startswith("ERROR: AADSTS50076: ")
    # azure-cli's aad_error_handler: every Entra error ends with the sign-in to run.
    assert az.stderr.endswith(
        "Run the command below to authenticate interactively; additional arguments may be "
        f'added as needed:\naz logout\naz login --tenant "{idp.tenant_id}" --scope "{scope}"\n'
    )
    azd = _run("azd", "auth", "token", "--output", "json", "--no-prompt", "--scope", scope)
    assert azd.returncode == 1
    assert azd.stderr.startswith("ERROR: AADSTS50076: ")
    # azd's ReLoginRequiredError for interaction_required / invalid_grant.
    assert azd.stderr.endswith(
        f"\nSuggestion: reauthentication required, run `azd auth login --scope {scope}` to "
        "acquire a new token.\n"
    )


# ---- the library's AzureCli -------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["az", "azd"])
async def test_the_library_names_the_cli_sign_in_that_meets_the_mfa_policy(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch, tool: str
) -> None:
    scope = f"{idp.mcp.app_id_uri}/.default"
    _sign_in(idp, monkeypatch, "dave")
    source = AzureCli(tool=tool)
    try:
        with pytest.raises(EntraError) as info:
            await source.get_token_async(TokenRequest((scope,)))
    finally:
        source.close()
    err = info.value
    assert err.code is not None
    assert err.code.code == 50076
    login = "az login" if tool == "az" else "azd auth login"
    assert err.fix is not None
    assert f"'{login} --scope {scope}'" in err.fix
    assert "claims" not in err.fix  # on-behalf-of's fix: a CLI user cannot hand a challenge back
    text = str(err)
    # The CLI's own advice is replaced by the fix, never cut in the middle.
    assert "Run the command below" not in text
    assert "Suggestion:" not in text
    assert "AADSTS50076" in text
    assert "..." not in text.split(" [source ")[0]
    # With an MFA sign-in (what the fix says to run), the same call gets dave's token.
    _sign_in(idp, monkeypatch, "dave", mfa=True)
    source = AzureCli(tool=tool)
    try:
        result = await source.get_token_async(TokenRequest((scope,)))
    finally:
        source.close()
    assert result is not None
    assert _claims(result.token)["oid"] == idp.users["dave"].oid


@pytest.mark.parametrize("tool", ["az", "azd"])
def test_the_library_says_a_conditional_access_block_needs_the_tenant_admin(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch, tool: str
) -> None:
    scope = f"{idp.mcp.app_id_uri}/.default"
    _sign_in(idp, monkeypatch, "erin")
    source = AzureCli(tool=tool, tenant_id=idp.tenant_id)
    try:
        with pytest.raises(EntraError) as info:
            source.get_token(TokenRequest((scope,)))
    finally:
        source.close()
    err = info.value
    assert err.code is not None
    assert err.code.code == 53003
    assert err.fix is not None
    assert "Conditional Access" in err.fix
    assert "tenant administrator" in err.fix
    assert idp.mcp.app_id_uri in err.fix  # the resource named
    text = str(err)
    assert "Run the command below" not in text
    assert "Suggestion:" not in text
    issued = idp.issued()
    assert not any(value in text for value in issued)  # never a token


def test_the_mfa_fix_names_the_tenant_of_the_source(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    scope = f"{idp.mcp.app_id_uri}/.default"
    _sign_in(idp, monkeypatch, "dave")
    for tool, login in (
        ("az", f"az login --tenant {idp.tenant_id} --scope {scope}"),
        ("azd", f"azd auth login --tenant-id {idp.tenant_id} --scope {scope}"),
    ):
        source = AzureCli(tool=tool, tenant_id=idp.tenant_id)
        try:
            with pytest.raises(EntraError) as info:
                source.get_token(TokenRequest((scope,)))
        finally:
            source.close()
        assert info.value.fix is not None
        assert login in info.value.fix


# ---- --scope as the CLIs pass it --------------------------------------------------------------


def test_a_named_permission_is_a_scope_of_its_resource(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = f"{idp.mcp.app_id_uri}/access_as_user"
    _sign_in(idp, monkeypatch, "alice")
    # azure-identity passes azd the caller's scope as given.
    claims = _claims(AzureDeveloperCliCredential().get_token(named).token)
    assert claims["aud"] == idp.mcp.client_id
    assert claims["scp"] == "access_as_user"
    out = _run("az", "account", "get-access-token", "--output", "json", "--scope", named)
    assert out.returncode == 0, out.stderr
    assert _claims(json.loads(out.stdout)["accessToken"])["scp"] == "access_as_user"
    # A permission the API does not expose: AADSTS70011, as at the token endpoint.
    out = _run("azd", "auth", "token", "--output", "json", "--scope", f"{idp.mcp.app_id_uri}/nope")
    assert out.returncode == 1
    assert "AADSTS70011" in out.stderr


def test_scopes_of_two_resources_are_refused(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    mcp, graph = f"{idp.mcp.app_id_uri}/.default", "https://graph.microsoft.com/.default"
    _sign_in(idp, monkeypatch, "alice")
    for argv in (
        ("azd", "auth", "token", "--output", "json", "--scope", mcp, "--scope", graph),
        ("az", "account", "get-access-token", "--output", "json", "--scope", mcp, graph),
    ):
        out = _run(*argv)
        assert out.returncode == 1, argv
        assert "AADSTS28000" in out.stderr, argv
    with pytest.raises(ClientAuthenticationError) as info:
        AzureDeveloperCliCredential().get_token(mcp, graph)
    assert "AADSTS28000" in str(info.value)
