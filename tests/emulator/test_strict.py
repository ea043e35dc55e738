"""The emulator refuses what Entra refuses, seen by unmodified MSAL, azure-identity and the
library (docs/emulator.md, "Strict where Entra is strict"): pre-authorized clients for the Azure
CLI / azd, managed identity selection and every managed identity host."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import jwt
import msal
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import (
    AzureCliCredential,
    AzureDeveloperCliCredential,
    ManagedIdentityCredential,
)

from entra_passthrough import (
    AppCredential,
    AzureCli,
    ConfigurationError,
    EntraError,
    ManagedIdentity,
    OnBehalfOf,
    SourceUnavailable,
    TokenChain,
    TokenRequest,
    bind_caller,
)
from entra_passthrough.testing import EntraEmulator

CLI_CLIENT = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


# ---- Azure CLI / azd and pre-authorization --------------------------------------------------
# https://learn.microsoft.com/entra/identity-platform/permissions-consent-overview
# (pre-authorized client applications); Azure/azure-cli#15056 (AADSTS65001 naming the CLI).


@pytest.fixture
def signed_in(idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> EntraEmulator:
    for name, value in idp.az_env("alice").items():
        monkeypatch.setenv(name, value)
    return idp


@pytest.mark.parametrize("credential_class", [AzureCliCredential, AzureDeveloperCliCredential])
def test_cli_refused_an_api_that_does_not_preauthorize_it(
    signed_in: EntraEmulator, credential_class: type
) -> None:
    idp = signed_in
    # The agent's API exposes a scope but does not pre-authorize the CLI's client.
    with pytest.raises(ClientAuthenticationError) as info:
        credential_class().get_token(f"{idp.agent.app_id_uri}/.default")
    assert "AADSTS65001" in str(info.value)
    assert CLI_CLIENT in str(info.value)
    # The MCP API pre-authorizes it: the token is the user's, issued to the CLI's client.
    token = credential_class().get_token(f"{idp.mcp.app_id_uri}/.default")
    claims = _claims(token.token)
    assert claims["oid"] == idp.users["alice"].oid
    assert claims["azp" if "azp" in claims else "appid"] == CLI_CLIENT
    # First-party resources need no pre-authorization.
    credential_class().get_token("https://ai.azure.com/.default")


@pytest.mark.parametrize("tool", ["az", "azd"])
async def test_library_explains_the_cli_65001_with_the_fix(
    signed_in: EntraEmulator, tool: str
) -> None:
    idp = signed_in
    source = AzureCli(tool=tool)
    request = TokenRequest((f"{idp.agent.app_id_uri}/.default",))
    errors = []
    with pytest.raises(EntraError) as info:
        source.get_token(request)
    errors.append(info.value)
    with pytest.raises(EntraError) as info:
        await source.get_token_async(request)
    errors.append(info.value)
    for error in errors:
        text = str(error)
        assert error.code is not None
        assert error.code.code == 65001
        assert CLI_CLIENT in text
        assert "az ad app update" in text
        assert idp.agent.client_id in text  # the API to update, from the scope
        assert "preAuthorizedApplications" in text
    ok = await source.get_token_async(TokenRequest((f"{idp.mcp.app_id_uri}/.default",)))
    assert ok is not None
    assert _claims(ok.token)["oid"] == idp.users["alice"].oid
    source.close()


def test_azd_not_logged_in_keeps_azure_identity_text(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from entra_passthrough import SourceUnavailable

    for name, value in idp.az_env(None).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SourceUnavailable) as info:
        AzureCli(tool="azd").get_token(TokenRequest((f"{idp.mcp.app_id_uri}/.default",)))
    assert "azd auth login" in str(info.value)
    with pytest.raises(ConfigurationError):
        AzureCli(tool="pwsh")


# ---- managed identity: every host, selection as Entra's hosts do it --------------------------

HOSTS = ["app_service", "app_service_2017", "imds", "cloud_shell", "azure_arc", "service_fabric"]


def _arc_writable() -> bool:
    folder = Path("/var/opt/azcmagent/tokens")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


@pytest.fixture(params=HOSTS)
def host(
    request: pytest.FixtureRequest, idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> str:
    name = str(request.param)
    if name == "azure_arc" and not _arc_writable():
        pytest.skip("Azure Arc's challenge folder /var/opt/azcmagent/tokens is not writable here")
    for variable in EntraEmulator.MI_HOST_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in idp.mi_env(name).items():
        monkeypatch.setenv(variable, value)
    return name


def test_msal_azure_identity_and_the_library_on_each_host(idp: EntraEmulator, host: str) -> None:
    resource = idp.mcp.app_id_uri or ""
    system = idp.system_identity.client_id
    user_assigned = idp.managed_identity.client_id
    with requests.Session() as session:
        client = msal.ManagedIdentityClient(
            msal.SystemAssignedManagedIdentity(), http_client=session
        )
        if host == "cloud_shell":
            # MSAL's ManagedIdentityClient has no Cloud Shell protocol (msal/managed_identity.py
            # tells callers to use PublicClientApplication there): azure-identity and the
            # library (through azure-identity) serve it.
            pass
        else:
            result = client.acquire_token_for_client(resource=resource)
            assert _claims(result["access_token"])["azp"] == system, result
            # Arc serves the machine's system-assigned identity only; Service Fabric's identity is
            # configured in the cluster, not selected per request (MSAL ignores the selector).
            if host not in ("azure_arc", "service_fabric"):
                ua = msal.ManagedIdentityClient(
                    msal.UserAssignedManagedIdentity(client_id=user_assigned), http_client=session
                ).acquire_token_for_client(resource=resource)
                assert _claims(ua["access_token"])["azp"] == user_assigned, ua
    token = ManagedIdentityCredential().get_token(f"{resource}/.default")
    assert _claims(token.token)["azp"] == system
    source = ManagedIdentity()
    assert f"host={'machine_learning' if host == 'app_service_2017' else host}" in repr(source)
    result = source.get_token(TokenRequest((f"{resource}/.default",)))
    assert result is not None
    assert _claims(result.token)["azp"] == system
    source.close()
    if host not in ("cloud_shell", "azure_arc", "service_fabric"):
        selected = ManagedIdentity(client_id=user_assigned)
        token2 = selected.get_token(TokenRequest((f"{resource}/.default",)))
        assert token2 is not None
        assert _claims(token2.token)["azp"] == user_assigned
        selected.close()


def _on_host(idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    if name == "azure_arc" and not _arc_writable():
        pytest.skip("Azure Arc's challenge folder /var/opt/azcmagent/tokens is not writable here")
    for variable in EntraEmulator.MI_HOST_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in idp.mi_env(name).items():
        monkeypatch.setenv(variable, value)


@pytest.mark.parametrize(
    ("host_name", "selector"),
    [
        ("service_fabric", "client_id"),
        ("service_fabric", "object_id"),
        ("cloud_shell", "client_id"),
        ("cloud_shell", "resource_id"),
        ("app_service_2017", "object_id"),
        ("app_service_2017", "resource_id"),
    ],
)
def test_a_selector_the_host_cannot_carry_is_refused_before_any_request(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch, host_name: str, selector: str
) -> None:
    # Service Fabric and Machine Learning's 2017-09-01 API drop these selectors on the way (MSAL
    # sends no selector to Service Fabric and only `clientid` to 2017-09-01): the host answers
    # with its system-assigned identity. The library refuses instead, before any request, and
    # a managed identity used as an app's federated credential is refused at construction.
    _on_host(idp, monkeypatch, host_name)
    mi = idp.managed_identity
    value = {"client_id": mi.client_id, "object_id": mi.object_id, "resource_id": mi.resource_id}
    before = idp.stats()["endpoints"].get("msi", 0)
    if host_name != "cloud_shell":
        # Why: unmodified MSAL gets a token for the *system-assigned* identity here.
        ident = msal.UserAssignedManagedIdentity(**{selector: value[selector]})
        with requests.Session() as session:
            answer = msal.ManagedIdentityClient(
                ident, http_client=session
            ).acquire_token_for_client(resource=idp.mcp.app_id_uri or "")
        assert _claims(answer["access_token"])["azp"] == idp.system_identity.client_id
        before = idp.stats()["endpoints"].get("msi", 0)
    with pytest.raises(ConfigurationError) as info:
        ManagedIdentity(**{selector: value[selector]})
    assert selector in str(info.value)
    assert "another identity" in str(info.value) or "system-assigned" in str(info.value)
    with pytest.raises(ConfigurationError):
        OnBehalfOf(
            client_id=idp.agent.client_id,
            tenant_id=idp.tenant_id,
            managed_identity=ManagedIdentity(**{selector: value[selector]}),
            authority_host=idp.url,
        )
    assert idp.stats()["endpoints"].get("msi", 0) == before


@pytest.mark.parametrize("host_name", ["azure_arc"])
def test_arc_serves_its_system_assigned_identity_only(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch, host_name: str
) -> None:
    # The documented Arc agent ignores a selector and names no identity in its answer: MSAL and
    # azure-identity refuse the token for a user-assigned request, and so does the library,
    # with MSAL's reason and the fix (not "failed unexpectedly"), also as OBO's credential.
    _on_host(idp, monkeypatch, host_name)
    user_assigned = idp.managed_identity.client_id
    with requests.Session() as session, pytest.raises(ValueError, match="did not confirm"):
        msal.ManagedIdentityClient(
            msal.UserAssignedManagedIdentity(client_id=user_assigned), http_client=session
        ).acquire_token_for_client(resource=idp.mcp.app_id_uri or "")
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential(client_id=user_assigned).get_token(
            f"{idp.mcp.app_id_uri}/.default"
        )
    source = ManagedIdentity(client_id=user_assigned)
    with pytest.raises(SourceUnavailable) as info:
        source.get_token(TokenRequest((f"{idp.mcp.app_id_uri}/.default",)))
    source.close()
    assert "did not confirm" in str(info.value)
    assert "AZURE_CLIENT_ID" in str(info.value)
    obo = OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        managed_identity=ManagedIdentity(client_id=user_assigned),
        authority_host=idp.url,
        http_client=idp.msal_http_client(),
    )
    chain = TokenChain([obo])
    alice = idp.user_token("alice", audience=idp.agent.client_id)
    with bind_caller(token=alice), pytest.raises(SourceUnavailable) as chained:
        chain.get_token([f"{idp.mcp.app_id_uri}/.default"])
    chain.close()
    assert "did not confirm" in str(chained.value)
    # The challenge file's content is a secret of the host: leak scans look for it too.
    from pathlib import Path

    written = [p.read_text() for p in Path("/var/opt/azcmagent/tokens").glob("*.key")]
    assert written
    assert set(written) & idp.issued()


@pytest.mark.parametrize("host_name", ["app_service", "service_fabric", "cloud_shell"])
def test_no_system_assigned_identity_names_the_endpoint_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, host_name: str
) -> None:
    # A host without a system-assigned identity, asked with no selector: the managed identity
    # endpoint refuses (not Entra), and the error says so with what to enable or select.
    from dataclasses import replace

    from entra_passthrough.testing import World

    world = World.default()
    world = replace(
        world,
        managed_identities=tuple(m for m in world.managed_identities if not m.system_assigned),
    )
    with EntraEmulator(world=world) as idp:
        _on_host(idp, monkeypatch, host_name)
        source = ManagedIdentity()
        with pytest.raises(EntraError) as info:
            source.get_token(TokenRequest((f"{idp.mcp.app_id_uri}/.default",)))
        source.close()
    text = str(info.value)
    assert text.startswith(f"The managed identity endpoint ({host_name}) refused"), text
    assert "Entra" not in text.split("Fix:")[0]
    fix = str(info.value.fix)
    if host_name == "app_service":
        assert "system-assigned identity" in fix
        assert "AZURE_CLIENT_ID" in fix
    else:
        # These hosts refuse a selector (the source says so when it is built): the fix does
        # not suggest one.
        assert "AZURE_CLIENT_ID" not in fix
        assert ("in the cluster" if host_name == "service_fabric" else "Cloud Shell") in fix


def test_imds_with_several_user_assigned_identities_needs_a_selector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # how-to-use-vm-token: with no system-assigned identity, IMDS answers for the only
    # user-assigned one; with several it needs a selector (IMDS's own text), through MSAL.
    from dataclasses import replace

    from entra_passthrough.testing import World

    world = World.default()
    (ua,) = (m for m in world.managed_identities if not m.system_assigned)
    second = replace(
        ua,
        name="second-mi",
        client_id="11111111-1111-4111-8111-111111111111",
        object_id="22222222-2222-4222-8222-222222222222",
        resource_id=ua.resource_id.replace("agent-mi", "second-mi"),
    )
    one = replace(world, managed_identities=(ua,))
    two = replace(world, managed_identities=(ua, second))
    resource = ""
    for current, expected in ((one, ua.client_id), (two, None)):
        with EntraEmulator(world=current) as idp:
            _on_host(idp, monkeypatch, "imds")
            resource = idp.mcp.app_id_uri or ""
            with requests.Session() as session:
                answer = msal.ManagedIdentityClient(
                    msal.SystemAssignedManagedIdentity(), http_client=session
                ).acquire_token_for_client(resource=resource)
        if expected is not None:
            assert _claims(answer["access_token"])["azp"] == expected
        else:
            assert "access_token" not in answer
            assert "Multiple user assigned identities exist" in answer["error_description"]


def test_managed_identity_selectors_are_exclusive_and_must_exist(idp: EntraEmulator) -> None:
    env = idp.mi_env("app_service")
    params = {"api-version": "2019-08-01", "resource": idp.mcp.app_id_uri or ""}
    headers = {"X-IDENTITY-HEADER": env["IDENTITY_HEADER"]}
    mi = idp.managed_identity
    both = requests.get(
        env["IDENTITY_ENDPOINT"],
        params={**params, "client_id": mi.client_id, "object_id": mi.object_id},
        headers=headers,
        timeout=10,
    )
    assert both.status_code == 400
    unknown = requests.get(
        env["IDENTITY_ENDPOINT"],
        params={**params, "client_id": "00000000-0000-0000-0000-000000000000"},
        headers=headers,
        timeout=10,
    )
    assert unknown.status_code == 400
    # The system-assigned identity cannot be named as if it were user-assigned.
    system = requests.get(
        env["IDENTITY_ENDPOINT"],
        params={**params, "client_id": idp.system_identity.client_id},
        headers=headers,
        timeout=10,
    )
    assert system.status_code == 400
    base = env["IDENTITY_ENDPOINT"].rsplit("/msi/token", 1)[0]
    no_header = requests.get(
        f"{base}/metadata/identity/oauth2/token",
        params={"api-version": "2018-02-01", "resource": params["resource"]},
        timeout=10,
    )
    assert no_header.status_code == 400
    assert "metadata" in no_header.json()["error_description"].lower()


def test_system_assigned_identity_is_no_federated_credential(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The library refuses before any request...
    before = idp.stats().get("msi", {})
    with pytest.raises(ConfigurationError) as info:
        OnBehalfOf(
            client_id=idp.agent.client_id,
            tenant_id=idp.tenant_id,
            managed_identity=ManagedIdentity(),
            authority_host=idp.url,
        )
    assert "AZURE_CLIENT_ID" in str(info.value)
    assert idp.stats().get("msi", {}) == before
    # ...and Entra (here the emulator) refuses a system-assigned identity's token as the client
    # assertion of an app, whatever the client sends.
    for variable in EntraEmulator.MI_HOST_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in idp.mi_env("app_service").items():
        monkeypatch.setenv(variable, value)
    with requests.Session() as session:
        assertion = msal.ManagedIdentityClient(
            msal.SystemAssignedManagedIdentity(), http_client=session
        ).acquire_token_for_client(resource="api://AzureADTokenExchange")["access_token"]
    app = msal.ConfidentialClientApplication(
        idp.agent.client_id,
        client_credential={"client_assertion": lambda: assertion},
        authority=f"{idp.url}/{idp.tenant_id}",
        http_client=idp.msal_http_client(),
        instance_discovery=False,
    )
    answer = app.acquire_token_for_client([f"{idp.mcp.app_id_uri}/.default"])
    assert "access_token" not in answer
    assert answer.get("error") == "invalid_client"
    # Its issuer is the tenant's, as the credential's; its subject (the system-assigned
    # identity's object id) is named by no credential: Entra's AADSTS700213.
    assert answer.get("error_codes") == [700213], answer
    assert idp.system_identity.object_id in answer["error_description"]


def test_federated_credential_mismatch_names_the_field(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The user-assigned identity the agent trusts, but its token for another audience than
    # api://AzureADTokenExchange: AADSTS700212 (audience); no credential of the app trusts
    # that issuer at all (legacy_api has none): AADSTS700211.
    for variable in EntraEmulator.MI_HOST_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in idp.mi_env("imds").items():
        monkeypatch.setenv(variable, value)
    with requests.Session() as session:
        wrong_audience = msal.ManagedIdentityClient(
            msal.UserAssignedManagedIdentity(client_id=idp.managed_identity.client_id),
            http_client=session,
        ).acquire_token_for_client(resource=idp.mcp.app_id_uri or "")["access_token"]
        exchange = msal.ManagedIdentityClient(
            msal.UserAssignedManagedIdentity(client_id=idp.managed_identity.client_id),
            http_client=session,
        ).acquire_token_for_client(resource="api://AzureADTokenExchange")["access_token"]

    def answer(client_id: str, assertion: str) -> dict:
        return msal.ConfidentialClientApplication(
            client_id,
            client_credential={"client_assertion": lambda: assertion},
            authority=f"{idp.url}/{idp.tenant_id}",
            http_client=idp.msal_http_client(),
            instance_discovery=False,
        ).acquire_token_for_client([f"{idp.mcp.app_id_uri}/.default"])

    assert answer(idp.agent.client_id, wrong_audience).get("error_codes") == [700212]
    assert answer(idp.legacy_api.client_id, exchange).get("error_codes") == [700211]
    assert "access_token" in answer(idp.agent.client_id, exchange)


def test_federated_credential_subject_is_case_sensitive() -> None:
    # reference-breaking-changes: federated credentials match case-sensitively; a subject that
    # matches only ignoring case is AADSTS7002138.
    from dataclasses import replace

    from entra_passthrough.testing import World

    world = World.default()
    agent = world.app("agent")
    mi = world.identity("agent-mi")
    assert agent is not None
    assert mi is not None
    upper = replace(agent.federated_credentials[0], subject=mi.object_id.upper())
    world = world.with_app(replace(agent, federated_credentials=(upper,)))
    with EntraEmulator(world=world) as idp:
        assertion = idp.app_token(
            client_id=idp.managed_identity.client_id, audience="api://AzureADTokenExchange"
        )
        answer = msal.ConfidentialClientApplication(
            idp.agent.client_id,
            client_credential={"client_assertion": lambda: assertion},
            authority=f"{idp.url}/{idp.tenant_id}",
            http_client=idp.msal_http_client(),
            instance_discovery=False,
        ).acquire_token_for_client([f"{idp.mcp.app_id_uri}/.default"])
    assert answer.get("error_codes") == [7002138], answer


def _emulator_codes() -> set[int]:
    """Every AADSTS code the emulator's source can answer with: each integer of 5 to 8 digits
    passed to a callable of its ``_errors`` module (``StsError(code, ...)``,
    ``e.bad_client_assertion(text, code)``, ``e.invalid_grant(code, ...)``, ...) and each
    ``AADSTS<code>`` in a string, in every module of ``entra_passthrough.testing``."""
    import ast
    import re

    import entra_passthrough.testing as testing
    from entra_passthrough.testing import _errors

    folder = Path(testing.__file__).parent
    helpers = {name for name, value in vars(_errors).items() if callable(value)}
    codes: set[int] = set()
    for path in folder.glob("*.py"):
        text = path.read_text()
        codes |= {int(c) for c in re.findall(r"AADSTS(\d{5,8})", text)}
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name not in helpers:
                continue
            values = [*node.args, *(k.value for k in node.keywords)]
            for value in values:
                for inner in ast.walk(value):
                    if (
                        isinstance(inner, ast.Constant)
                        and type(inner.value) is int
                        and 10_000 <= inner.value < 100_000_000
                    ):
                        codes.add(inner.value)
    return codes


def test_every_code_the_emulator_returns_is_decoded() -> None:
    # The library explains (with a fix) every AADSTS code the emulator can answer with.
    from entra_passthrough._aadsts import AADSTS

    codes = _emulator_codes()
    # The enumeration finds codes passed as a helper's argument, not only StsError's first one.
    assert {700023, 7000274, 700024, 50027, 700213, 700212, 7002138} <= codes
    missing = sorted(codes - set(AADSTS))
    assert not missing, (
        f"AADSTS codes the emulator returns but _aadsts.py does not decode: {missing}"
    )
    for code in sorted(codes):
        entry = AADSTS[code]
        assert entry.meaning, code
        assert entry.fix, code
    for code in (
        500131,
        90009,
        90094,
        650057,
        65004,
        7000222,
        50105,
        50020,
        700211,
        70021,
        9002313,
    ):
        assert code in AADSTS, code


# ---- consent and scope rules, key rollover ---------------------------------------------------


def test_app_token_for_itself_needs_the_guid_form(idp: EntraEmulator, cca) -> None:
    # AADSTS90009 (reference-error-codes): an app asking for itself by App ID URI is refused;
    # the GUID form works.
    app = cca()
    refused = app.acquire_token_for_client([f"{idp.agent.app_id_uri}/.default"])
    assert refused.get("error_codes") == [90009], refused
    ok = app.acquire_token_for_client([f"{idp.agent.client_id}/.default"])
    assert _claims(ok["access_token"])["aud"] == idp.agent.client_id


def test_default_cannot_be_mixed_with_named_scopes(idp: EntraEmulator, cca) -> None:
    # scopes-oidc, "The .default scope": it cannot be combined with the resource's own scopes.
    assertion = idp.user_token("alice", audience=idp.agent.client_id)
    answer = cca().acquire_token_on_behalf_of(
        assertion, [f"{idp.mcp.app_id_uri}/.default", f"{idp.mcp.app_id_uri}/access_as_user"]
    )
    assert answer.get("error_codes") == [70011], answer


def test_next_signing_key_is_published_before_it_signs(entra_emulator_fresh: EntraEmulator) -> None:
    # signing-key-rollover: a verifier that fetched the key set before a rollover verifies the
    # tokens signed after it without fetching again.
    idp = entra_emulator_fresh
    client = jwt.PyJWKClient(idp.jwks_uri(), ssl_context=idp.ssl_context(), cache_jwk_set=True)
    client.get_signing_key_from_jwt(idp.user_token("alice", audience=idp.mcp.client_id))
    fetched = idp.stats()["endpoints"]["jwks"]
    idp.rotate_keys()
    token = idp.user_token("alice", audience=idp.mcp.client_id)
    key = client.get_signing_key_from_jwt(token)
    assert key.key_id == idp.signing_kid
    assert idp.stats()["endpoints"]["jwks"] == fetched


# ---- device code grant and userinfo ----------------------------------------------------------
# https://learn.microsoft.com/entra/identity-platform/v2-oauth2-device-code
# https://learn.microsoft.com/entra/identity-platform/userinfo


def test_msal_device_code_flow(idp: EntraEmulator) -> None:
    app = msal.PublicClientApplication(
        idp.frontend.client_id,
        authority=f"{idp.url}/{idp.tenant_id}",
        http_client=idp.msal_http_client(),
        instance_discovery=False,
    )
    scope = f"{idp.agent.app_id_uri}/access_as_user"
    flow = app.initiate_device_flow(scopes=[scope])
    assert flow["verification_uri"].endswith("/devicelogin"), flow
    assert flow["user_code"] in flow["message"]
    idp.approve_device_code(flow["user_code"], "alice")  # the user signs in before the first poll
    result = app.acquire_token_by_device_flow(flow)
    assert _claims(result["access_token"])["oid"] == idp.users["alice"].oid, result
    # userinfo, advertised in discovery, answers for a Graph token of the same user.
    with idp.msal_http_client() as http:
        doc = http.get(f"{idp.url}/{idp.tenant_id}/v2.0/.well-known/openid-configuration").json()
        assert doc["device_authorization_endpoint"].endswith("/oauth2/v2.0/devicecode")
        token = idp.user_token(
            "alice", audience="https://graph.microsoft.com", scopes=["openid", "profile", "email"]
        )
        info = http.get(doc["userinfo_endpoint"], headers={"Authorization": f"Bearer {token}"})
        assert info.status_code == 200, info.text
        assert info.json()["name"] == idp.users["alice"].display_name
        refused = http.get(
            doc["userinfo_endpoint"],
            headers={
                "Authorization": f"Bearer {idp.user_token('alice', audience=idp.mcp.client_id)}"
            },
        )
        assert refused.status_code == 401


def test_userinfo_over_a_real_sign_in_with_the_email_scope(idp: EntraEmulator) -> None:
    # userinfo: "the information returned is dictated by the scopes in the access token"; a
    # Graph token of a sign-in that asked for openid/profile/email carries them in scp (they
    # are Graph's delegated permissions), so userinfo answers the email (not only a minted one).
    app = msal.PublicClientApplication(
        idp.frontend.client_id,
        authority=f"{idp.url}/{idp.tenant_id}",
        http_client=idp.msal_http_client(),
        instance_discovery=False,
    )
    flow = app.initiate_device_flow(scopes=["User.Read", "email"])
    idp.approve_device_code(flow["user_code"], "alice")
    result = app.acquire_token_by_device_flow(flow)
    scp = _claims(result["access_token"])["scp"].split()
    assert {"User.Read", "email", "openid", "profile"} <= set(scp), scp
    with idp.msal_http_client() as http:
        doc = http.get(f"{idp.url}/{idp.tenant_id}/v2.0/.well-known/openid-configuration").json()
        info = http.get(
            doc["userinfo_endpoint"],
            headers={"Authorization": f"Bearer {result['access_token']}"},
        ).json()
    assert info["email"] == idp.users["alice"].upn


def test_device_code_pending_declined_and_azure_identity(idp: EntraEmulator) -> None:
    from azure.identity import DeviceCodeCredential

    with idp.msal_http_client() as http:
        start = http.post(
            f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/devicecode",
            data={
                "client_id": idp.frontend.client_id,
                "scope": f"{idp.agent.app_id_uri}/access_as_user",
            },
        ).json()
        poll = {
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "client_id": idp.frontend.client_id,
            "device_code": start["device_code"],
        }
        pending = http.post(f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/token", data=poll).json()
        assert pending["error"] == "authorization_pending"
        idp.approve_device_code(start["user_code"], "alice", decline=True)
        declined = http.post(f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/token", data=poll).json()
        assert declined["error"] == "authorization_declined"

    def prompt(uri: str, user_code: str, expires_on: object) -> None:
        idp.approve_device_code(user_code, "bob")

    cred = DeviceCodeCredential(
        client_id=idp.frontend.client_id,
        tenant_id=idp.tenant_id,
        authority=idp.url,
        disable_instance_discovery=True,
        connection_verify=idp.ca_file,
        prompt_callback=prompt,
    )
    token = cred.get_token(f"{idp.agent.app_id_uri}/access_as_user")
    assert _claims(token.token)["oid"] == idp.users["bob"].oid


# ---- the consent model -------------------------------------------------------------------------
# https://learn.microsoft.com/entra/identity-platform/scopes-oidc#the-default-scope (".default"
# consents the configured permissions; a resource not configured is 650057),
# https://learn.microsoft.com/entra/identity/enterprise-apps/configure-user-consent (90094).

CONSENT_WORLD = {
    "tenants": [{"name": "locked", "user_consent": False}],
    "apps": [
        {
            "name": "strict_api",
            "api": True,
            "multi_tenant": True,
            "scope": "read",
            "scopes": ["admin.write"],
            "admin_scopes": ["admin.write"],
        },
        {"name": "other_api", "api": True, "scope": "read"},
        {
            "name": "strict_client",
            "secret": True,
            "multi_tenant": True,
            "redirect_uris": ["http://localhost/callback"],
            "required": ["strict_api/read"],
        },
        {
            # Configures no permission at all: ".default" has nothing to consent to.
            "name": "bare_client",
            "secret": True,
            "redirect_uris": ["http://localhost/callback"],
        },
        {
            "name": "assigned_only",
            "public_client": True,
            "assignment_required": True,
            "assigned": ["alice"],
        },
    ],
    "users": [{"name": "sam", "tenant": "locked"}],
    "grants": [
        {"client": "assigned_only", "resource": "graph", "scopes": ["User.Read"]},
        # Admin consent given earlier (dynamically) to bare_client for other_api's read.
        {"client": "bare_client", "resource": "other_api", "scopes": ["read"]},
    ],
}


@pytest.fixture(scope="module")
def consent_idp() -> Iterator[EntraEmulator]:
    from entra_passthrough.testing import World

    with EntraEmulator(world=World.from_dict(CONSENT_WORLD)) as idp:
        yield idp


def _authorize(
    idp: EntraEmulator,
    scopes: list[str],
    user: str,
    tenant: str | None = None,
    client_name: str = "strict_client",
) -> tuple[msal.ConfidentialClientApplication, dict, dict]:
    import urllib.parse

    client = idp.app(client_name)
    app = msal.ConfidentialClientApplication(
        client.client_id,
        client_credential=client.secret,
        authority=f"{idp.url}/{tenant or idp.tenant_id}",
        http_client=idp.msal_http_client(),
        instance_discovery=False,
    )
    flow = app.initiate_auth_code_flow(
        scopes, redirect_uri="http://localhost/callback", login_hint=user
    )
    with idp.msal_http_client() as http:
        resp = http.get(flow["auth_uri"] + "&emulator_consent=accept", allow_redirects=False)
    location = resp.headers.get("location", "")
    return app, flow, dict(urllib.parse.parse_qsl(urllib.parse.urlparse(location).query))


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")
def test_consent_model(consent_idp: EntraEmulator) -> None:
    idp = consent_idp
    api = idp.app("strict_api")
    other = idp.app("other_api")
    # An admin-only scope: a user cannot consent to it (AADSTS90094).
    _, _, answer = _authorize(idp, [f"{api.app_id_uri}/admin.write"], "alice")
    assert answer.get("error_description", "").startswith("AADSTS90094"), answer
    # .default for a resource the client does not configure (AADSTS650057).
    _, _, answer = _authorize(idp, [f"{other.app_id_uri}/.default"], "alice")
    assert answer.get("error_description", "").startswith("AADSTS650057"), answer
    # A tenant whose users may not consent: even a plain scope needs an administrator.
    locked = idp.world.tenant("locked")
    assert locked is not None
    _, _, answer = _authorize(idp, [f"{api.app_id_uri}/read"], "sam", tenant=locked.id)
    assert answer.get("error_description", "").startswith("AADSTS90094"), answer
    # .default consents exactly the configured permissions: read, not the admin-only scope.
    app, flow, answer = _authorize(idp, [f"{api.app_id_uri}/.default"], "alice")
    assert "code" in answer, answer
    result = app.acquire_token_by_auth_code_flow(flow, answer)
    scp = _claims(result["access_token"])["scp"].split()
    assert scp == ["read"], result


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")
def test_default_with_no_configured_permission_is_650057(consent_idp: EntraEmulator) -> None:
    # scopes-oidc, "The .default scope" (static consent): a client that configures no
    # permission has nothing for .default to consent to (AADSTS650057), unless a grant for that
    # resource already exists; its named scopes still work (dynamic consent).
    idp = consent_idp
    api = idp.app("strict_api")
    other = idp.app("other_api")
    _, _, answer = _authorize(
        idp, [f"{api.app_id_uri}/.default"], "alice", client_name="bare_client"
    )
    assert answer.get("error_description", "").startswith("AADSTS650057"), answer
    app, flow, answer = _authorize(
        idp, [f"{other.app_id_uri}/.default"], "alice", client_name="bare_client"
    )
    assert "code" in answer, answer
    result = app.acquire_token_by_auth_code_flow(flow, answer)
    assert _claims(result["access_token"])["scp"] == "read"
    app, flow, answer = _authorize(
        idp, [f"{api.app_id_uri}/read"], "alice", client_name="bare_client"
    )
    assert "code" in answer, answer


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")
def test_mfa_step_up_completes_over_the_wire(idp: EntraEmulator) -> None:
    # v2-oauth2-on-behalf-of-flow, "Error response example": OBO answers AADSTS50076 with a
    # claims challenge; the client signs the user in again with those claims (MFA performed);
    # OBO with the new v2 assertion succeeds. v2 access tokens carry no amr: the session's MFA
    # travels in an opaque claim, as in Entra. Unmodified MSAL on both sides.
    frontend = msal.PublicClientApplication(
        idp.frontend.client_id,
        authority=f"{idp.url}/{idp.tenant_id}",
        http_client=idp.msal_http_client(),
        instance_discovery=False,
    )
    agent = msal.ConfidentialClientApplication(
        idp.agent.client_id,
        client_credential=idp.agent.secret,
        authority=f"{idp.url}/{idp.tenant_id}",
        http_client=idp.msal_http_client(),
        instance_discovery=False,
    )
    scope = [f"{idp.agent.app_id_uri}/access_as_user"]
    downstream = [f"{idp.mcp.app_id_uri}/.default"]

    def sign_in(claims: str | None = None) -> str:
        flow = frontend.initiate_auth_code_flow(
            scope,
            redirect_uri="http://localhost/callback",
            login_hint="dave",
            claims_challenge=claims,
        )
        with idp.msal_http_client() as http:
            resp = http.get(flow["auth_uri"], allow_redirects=False)
        import urllib.parse

        answer = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(resp.headers["location"]).query))
        result = frontend.acquire_token_by_auth_code_flow(flow, answer)
        assert "access_token" in result, result
        return result["access_token"]

    first = sign_in()
    assert "amr" not in _claims(first)  # a v2 access token
    challenge = agent.acquire_token_on_behalf_of(first, downstream)
    assert challenge.get("error_codes") == [50076], challenge
    stepped_up = sign_in(challenge["claims"])
    assert "amr" not in _claims(stepped_up)
    answer = agent.acquire_token_on_behalf_of(stepped_up, downstream)
    assert "access_token" in answer, answer
    assert _claims(answer["access_token"])["oid"] == idp.users["dave"].oid


def test_xms_cc_is_cp1_only_and_only_when_the_resource_asks(idp: EntraEmulator) -> None:
    # claims-challenge: the claims request parameter is evaluated; xms_cc carries cp1 only.
    with idp.msal_http_client() as http:

        def ask(resource: str, values: list[str]) -> dict:
            body = {
                "grant_type": "client_credentials",
                "client_id": idp.agent.client_id,
                "client_secret": idp.agent.secret,
                "scope": f"{resource}/.default",
                "claims": json.dumps({"access_token": {"xms_cc": {"values": values}}}),
            }
            answer = http.post(f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/token", data=body).json()
            return _claims(answer["access_token"])

        assert ask(idp.mcp.app_id_uri or "", ["CP1", "cp2"])["xms_cc"] == ["cp1"]
        assert "xms_cc" not in ask(idp.mcp.app_id_uri or "", ["cp2"])
        assert "xms_cc" not in ask(idp.legacy_api.app_id_uri or "", ["cp1"])


# ---- certificates as MSAL recommends them ------------------------------------------------------
# https://learn.microsoft.com/entra/identity-platform/certificate-credentials (PS256, x5t#S256)


@pytest.mark.parametrize("form", ["encrypted_pem", "pfx"])
async def test_certificate_credential_ps256_with_password(
    idp: EntraEmulator, tmp_path: Path, form: str
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    from entra_passthrough import TokenChain, bind_caller

    pem = idp.agent.certificate_pem or b""
    key = serialization.load_pem_private_key(pem, password=None)
    cert = x509.load_pem_x509_certificate(pem)
    password = "cert-password-1"
    if form == "pfx":
        data = pkcs12.serialize_key_and_certificates(
            b"agent", key, cert, None, serialization.BestAvailableEncryption(password.encode())
        )
    else:
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password.encode()),
        ) + cert.public_bytes(serialization.Encoding.PEM)
    path = tmp_path / f"agent.{'pfx' if form == 'pfx' else 'pem'}"
    path.write_bytes(data)
    app = {"client_id": idp.agent.client_id, "tenant_id": idp.tenant_id}
    with pytest.raises(ConfigurationError):
        OnBehalfOf(credential=AppCredential(**app, client_certificate=str(path)))
    obo = OnBehalfOf(
        credential=AppCredential(
            **app,
            client_certificate=str(path),
            certificate_password=password,
            authority_host=idp.url,
        ),
        http_client=idp.msal_http_client(),
    )
    chain = TokenChain([obo])
    with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
        result = await chain.get_token_async([f"{idp.mcp.app_id_uri}/.default"])
    assert _claims(result.token)["oid"] == idp.users["alice"].oid
    # The client assertion MSAL signed (the emulator remembers every credential it was sent).
    headers = []
    for value in idp.issued():
        try:
            header = jwt.get_unverified_header(value)
            claims = jwt.decode(value, options={"verify_signature": False})
        except jwt.PyJWTError:
            continue
        if claims.get("iss") == idp.agent.client_id and claims.get("sub") == idp.agent.client_id:
            headers.append(header)
    assert headers, "no certificate assertion was sent"
    assert any(h["alg"] == "PS256" and "x5t#S256" in h for h in headers), headers
    chain.close()


async def test_managed_identity_in_a_chain_uses_the_worker_pool_and_the_library_cache(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from entra_passthrough import Policy, TokenChain

    for variable in EntraEmulator.MI_HOST_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in idp.mi_env("imds").items():
        monkeypatch.setenv(variable, value)
    source = ManagedIdentity(client_id=idp.managed_identity.client_id)
    chain = TokenChain([source], policy=Policy.APP_ONLY)
    before = idp.stats()["endpoints"].get("msi", 0)
    scope = f"{idp.mcp.app_id_uri}/.default"
    first, second = await chain.get_token_async([scope]), await chain.get_token_async([scope])
    assert first.token == second.token
    assert _claims(first.token)["azp"] == idp.managed_identity.client_id
    assert idp.stats()["endpoints"].get("msi", 0) == before + 1  # the chain's cache served the 2nd
    chain.close()


async def test_foundry_hosted_agent_id_from_env_with_a_user_assigned_identity(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What Foundry injects (FOUNDRY_AGENT_*) plus the user-assigned identity as the blueprint's
    # federated credential: Agent ID OBO works end to end; without AZURE_CLIENT_ID it refuses
    # to start (the host would answer with its system-assigned identity).
    from entra_passthrough import AgentIdentityOnBehalfOf, TokenChain, bind_caller

    for variable in EntraEmulator.MI_HOST_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    env = {
        **idp.mi_env("app_service"),
        "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID": idp.blueprint.client_id,
        "FOUNDRY_AGENT_INSTANCE_CLIENT_ID": idp.agent_identity.client_id,
        "FOUNDRY_AGENT_TENANT_ID": idp.tenant_id,
        "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL": "managed_identity",
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
    }
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    before = idp.stats()["endpoints"].get("msi", 0)
    with pytest.raises(ConfigurationError, match="AZURE_CLIENT_ID"):
        TokenChain.from_env()
    assert idp.stats()["endpoints"].get("msi", 0) == before  # refused before any request
    monkeypatch.setenv("AZURE_CLIENT_ID", idp.managed_identity.client_id)
    chain = TokenChain.from_env()
    assert isinstance(chain.sources[0], AgentIdentityOnBehalfOf)
    with bind_caller(token=idp.user_token("alice", audience=idp.blueprint.client_id)):
        result = await chain.get_token_async([f"{idp.mcp.app_id_uri}/.default"])
    claims = _claims(result.token)
    assert claims["oid"] == idp.users["alice"].oid
    assert claims["azp"] == idp.agent_identity.client_id
    chain.close()


def test_assignment_required_is_50105(consent_idp: EntraEmulator) -> None:
    # An enterprise app with "Assignment required": only assigned users may sign in.
    idp = consent_idp
    app = msal.PublicClientApplication(
        idp.app("assigned_only").client_id,
        authority=f"{idp.url}/{idp.tenant_id}",
        http_client=idp.msal_http_client(),
        instance_discovery=False,
    )
    # ROPC names users by UPN, as Entra does (a short name is AADSTS50034).
    bob, alice = idp.users["bob"], idp.users["alice"]
    refused = app.acquire_token_by_username_password(bob.upn, bob.password, scopes=["User.Read"])
    assert refused.get("error_codes") == [50105], refused
    ok = app.acquire_token_by_username_password(alice.upn, alice.password, scopes=["User.Read"])
    assert "access_token" in ok, ok


def test_device_code_sign_in_consents_as_the_authorize_page_does(
    consent_idp: EntraEmulator,
) -> None:
    # v2-oauth2-device-code: at the verification page the user signs in and consents. A
    # permission the user may consent to is granted there; an admin-only one is AADSTS90094 and
    # '.default' of a resource the client does not configure AADSTS650057, at the poll.
    idp = consent_idp
    api = idp.app("strict_api")
    app = msal.PublicClientApplication(
        idp.app("assigned_only").client_id,
        authority=f"{idp.url}/{idp.tenant_id}",
        http_client=idp.msal_http_client(),
        instance_discovery=False,
    )

    def device(scope: str) -> dict:
        flow = app.initiate_device_flow(scopes=[scope])
        idp.approve_device_code(flow["user_code"], "alice")
        return app.acquire_token_by_device_flow(flow)

    assert device(f"{api.app_id_uri}/.default").get("error_codes") == [650057]
    try:
        granted = device(f"{api.app_id_uri}/read")
        assert _claims(granted["access_token"])["scp"] == "read", granted
        assert device(f"{api.app_id_uri}/admin.write").get("error_codes") == [90094]
        # Once a grant exists, '.default' is that grant (nothing left to consent to).
        assert _claims(device(f"{api.app_id_uri}/.default")["access_token"])["scp"] == "read"
    finally:  # the module's emulator is shared: leave no grant behind for the next test
        idp.revoke_consent("alice", idp.app("assigned_only").client_id)
    assert device(f"{api.app_id_uri}/.default").get("error_codes") == [650057]


def test_arc_challenge_file_unreadable_says_which_group(monkeypatch: pytest.MonkeyPatch) -> None:
    # managed-identity-authentication: the key file the Arc agent writes is readable by the
    # himds group only; a process outside it cannot answer the challenge. The library says so
    # (it said "failed: FileNotFoundError").
    import http.server
    import sys
    import threading

    if sys.platform != "linux":
        pytest.skip("MSAL reads Arc's challenge file from the Linux folder here")

    class Challenge(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401)
            self.send_header(
                "WWW-Authenticate", "Basic realm=/var/opt/azcmagent/tokens/absent-0000.key"
            )
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.HTTPServer(("127.0.0.1", 0), Challenge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for variable in EntraEmulator.MI_HOST_VARIABLES:
            monkeypatch.delenv(variable, raising=False)
        base = f"http://127.0.0.1:{server.server_port}"
        monkeypatch.setenv("IDENTITY_ENDPOINT", f"{base}/metadata/identity/oauth2/token")
        monkeypatch.setenv("IMDS_ENDPOINT", base)
        source = ManagedIdentity()
        with pytest.raises(SourceUnavailable) as info:
            source.get_token(TokenRequest(("https://management.azure.com/.default",)))
        source.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert "challenge file" in str(info.value)
    assert "himds" in (info.value.fix or "")


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")
def test_a_scope_the_api_does_not_expose(idp: EntraEmulator, cca) -> None:
    # A sign-in asking for a scope the API does not expose: AADSTS650053 naming the client, to
    # the redirect URI (as Entra answers, quoted in MicrosoftDocs/azure-docs#37280); the token
    # endpoint answers AADSTS70011 ("The scope ... isn't valid", reference-error-codes).
    import urllib.parse

    app = msal.PublicClientApplication(
        idp.frontend.client_id,
        authority=f"{idp.url}/{idp.tenant_id}",
        http_client=idp.msal_http_client(),
        instance_discovery=False,
    )
    flow = app.initiate_auth_code_flow(
        [f"{idp.mcp.app_id_uri}/Tools.Write"],
        redirect_uri="http://localhost/callback",
        login_hint="alice",
    )
    with idp.msal_http_client() as http:
        resp = http.get(flow["auth_uri"], allow_redirects=False)
    answer = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(resp.headers["location"]).query))
    assert answer["error"] == "invalid_client", answer
    assert answer["error_description"].startswith("AADSTS650053"), answer
    assert "'frontend'" in answer["error_description"]
    assertion = idp.user_token("alice", audience=idp.agent.client_id)
    refused = cca().acquire_token_on_behalf_of(assertion, [f"{idp.mcp.app_id_uri}/Tools.Write"])
    assert refused.get("error_codes") == [70011], refused
