"""``AzureCredential`` keeps why azure-identity said its credential is unavailable.

azure-identity raises ``CredentialUnavailableError`` for a missing environment and for an
endpoint that answered something it could not use alike; the chain reported both as
"azure_credential: not applicable", so an operator could not tell them apart. The reason is
now the exception's first line, bounded and redacted (azure-identity's text may quote the
endpoint's answer, a token included), in the chain's attempts and in the error.

Real azure-identity (and the MSAL under it) against the emulator's managed identity endpoint,
with a fault it injects, and against a stand-in endpoint on 127.0.0.1 that answers an
emulator-issued token without ``expires_on``."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator

import pytest
from azure.identity import EnvironmentCredential, ManagedIdentityCredential
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from _support.servers import serve_in_thread
from entra_passthrough import AzureCredential, Policy, PolicyViolation, TokenChain
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope

#: Variables azure-identity reads that would make another credential (or host) apply.
_VARIABLES = (
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_USERNAME",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "IMDS_ENDPOINT",
)


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*EntraEmulator.MI_HOST_VARIABLES, *_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def no_expiry(entra_emulator: EntraEmulator) -> Iterator[tuple[str, list[str]]]:
    """A Machine Learning-shaped endpoint (``MSI_ENDPOINT`` + ``MSI_SECRET``) answering 200
    with a real token and no ``expires_on``; (its URL, the tokens it handed out)."""
    issued: list[str] = []
    idp = entra_emulator

    async def answer(request: Request) -> Response:
        token = idp.app_token(client_id=idp.system_identity.client_id, audience=idp.mcp.client_id)
        issued.append(token)
        body = {"access_token": token, "resource": request.query_params.get("resource")}
        return Response(json.dumps(body), media_type="application/json")

    app = Starlette(routes=[Route("/msi/token", answer, methods=["GET"])])
    with serve_in_thread(app, name="ml-no-expiry") as base:
        yield f"{base}/msi/token", issued


def _refusal(chain: TokenChain, idp: EntraEmulator) -> PolicyViolation:
    try:
        with pytest.raises(PolicyViolation) as info:
            chain.get_token(mcp_scope(idp))
    finally:
        chain.close()
    return info.value


def _line(error: PolicyViolation, name: str) -> str:
    (line,) = [a for a in error.attempts if a.startswith(f"{name}: ")]
    return line


def test_a_missing_environment_and_a_refusing_endpoint_are_told_apart(
    idp: EntraEmulator, bare: pytest.MonkeyPatch
) -> None:
    missing = _refusal(
        TokenChain([AzureCredential(EnvironmentCredential(), name="env")], policy=Policy.APP_ONLY),
        idp,
    )
    line = _line(missing, "env")
    assert line.startswith("env: not applicable (CredentialUnavailableError: ")
    assert "Environment variables are not fully configured" in line
    assert line in str(missing)  # the only reason: in the error's own text
    assert "troubleshoot" not in line  # the first line only

    for name, value in idp.mi_env("app_service").items():
        bare.setenv(name, value)
    idp.inject_fault("msi", status=400, count=10)
    try:
        refused = _refusal(
            TokenChain(
                [AzureCredential(ManagedIdentityCredential(), name="mi")], policy=Policy.APP_ONLY
            ),
            idp,
        )
    finally:
        idp.clear_faults()
    line = _line(refused, "mi")
    assert line.startswith("mi: not applicable (CredentialUnavailableError: App Service")
    assert "Token request error" in line
    assert "Environment variables" not in line
    assert line in str(refused)


def test_an_answer_it_could_not_use_is_named_and_its_token_is_not(
    idp: EntraEmulator,
    bare: pytest.MonkeyPatch,
    no_expiry: tuple[str, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """MSAL words a Machine Learning answer without ``expires_on`` as the body's repr, token
    included, and azure-identity quotes it: the reason keeps the words, not the token."""
    url, issued = no_expiry
    bare.setenv("MSI_ENDPOINT", url)
    bare.setenv("MSI_SECRET", "ml-secret-value-0123456789")
    caplog.set_level(logging.DEBUG, logger="entra_passthrough")
    source = AzureCredential(ManagedIdentityCredential(), name="mi")
    before = len(issued)
    error = _refusal(TokenChain([source], policy=Policy.APP_ONLY), idp)
    assert len(issued) > before  # the endpoint answered a token
    line = _line(error, "mi")
    assert line.startswith("mi: not applicable (CredentialUnavailableError: Azure ML managed")
    assert "Token request error: (invalid_scope)" in line
    assert len(line) < 300
    seen = "\n".join(
        [
            str(error),
            repr(error),
            "".join(traceback.format_exception(error)),
            repr(vars(error)),
            *(r.getMessage() for r in caplog.records),
            source.explain(None),  # type: ignore[arg-type]
        ]
    )
    for token in issued:
        assert not [
            token[i : i + 16] for i in range(0, len(token) - 15, 8) if token[i : i + 16] in seen
        ]
    assert "ml-secret-value" not in seen


async def test_the_async_driver_keeps_the_reason_and_a_token_clears_it(
    idp: EntraEmulator, bare: pytest.MonkeyPatch
) -> None:
    from azure.identity.aio import EnvironmentCredential as AioEnvironmentCredential

    aio = AioEnvironmentCredential()
    chain = TokenChain([AzureCredential(aio, name="env")], policy=Policy.APP_ONLY)
    with pytest.raises(PolicyViolation) as info:
        await chain.get_token_async(mcp_scope(idp))
    await aio.close()
    assert "Environment variables are not fully configured" in _line(info.value, "env")

    for name, value in idp.mi_env("app_service").items():
        bare.setenv(name, value)
    # A sync credential: the async driver runs it in the source's worker pool.
    source = AzureCredential(ManagedIdentityCredential(), name="mi")
    chain = TokenChain([source], policy=Policy.APP_ONLY)
    idp.inject_fault("msi", status=400, count=10)
    try:
        with pytest.raises(PolicyViolation) as info:
            await chain.get_token_async(mcp_scope(idp))
    finally:
        idp.clear_faults()
    assert "Token request error" in _line(info.value, "mi")
    assert source.unavailable_reason() is not None
    assert (await chain.get_token_async(mcp_scope(idp))).token
    assert source.unavailable_reason() is None  # a token: no reason left over
    chain.close()
