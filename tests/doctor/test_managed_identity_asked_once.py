"""``doctor`` asks a managed identity endpoint that gives no token once: the ``client
credential`` (and ``consent app``) checks whose credential is that managed identity are not
run again against it. Before, a silent endpoint (connections accepted, never answered) made
doctor wait out the token deadline twice, printing nothing meanwhile. A real HTTP endpoint on
127.0.0.1 standing in for IMDS, MSAL's requests, the emulator as the authority."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from _support.servers import serve_in_thread
from entra_passthrough._doctor import run
from entra_passthrough.testing import EntraEmulator


@pytest.fixture(scope="module")
def refusing_imds() -> Iterator[tuple[str, list[str]]]:
    asked: list[str] = []

    async def token(request: Request) -> Response:
        asked.append(request.url.path)
        body = {"error": "invalid_request", "error_description": "Identity not found"}
        return Response(json.dumps(body), status_code=400, media_type="application/json")

    app = Starlette(routes=[Route("/metadata/identity/oauth2/token", token, methods=["GET"])])
    with serve_in_thread(app, name="imds-stand-in") as base:
        yield base, asked


@pytest.mark.parametrize("consent", [False, True], ids=["obo", "obo-and-consent"])
def test_a_failing_managed_identity_is_asked_once(
    refusing_imds: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch, consent: bool
) -> None:
    base, asked = refusing_imds
    for name in (*EntraEmulator.MI_HOST_VARIABLES, "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    with EntraEmulator() as idp:
        env = {
            "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
            "AZURE_TENANT_ID": idp.tenant_id,
            "AZURE_AUTHORITY_HOST": idp.url,
            "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
            "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL": "managed_identity",
            "AZURE_CLIENT_ID": "0d8e0000-0000-0000-0000-000000000001",
            "AZURE_POD_IDENTITY_AUTHORITY_HOST": base,
        }
        if consent:
            env |= {
                "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": idp.agent.client_id,
                "ENTRA_PASSTHROUGH_CONSENT_CLIENT_CREDENTIAL": "managed_identity",
                "ENTRA_PASSTHROUGH_CONSENT_KEYS": "k1:" + "A" * 43,
                "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "https://broker.example.com/consent",
            }
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", base)
        before = len(asked)
        checks = {check.name: check for check in run(env, scopes=[])}
    assert checks["managed identity"].status == "fail"
    assert checks["client credential"].status == "skip"
    assert "managed identity above" in checks["client credential"].detail
    if consent:
        assert checks["consent app"].status == "skip"
    assert len(asked) - before == 1
