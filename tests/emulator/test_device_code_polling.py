"""Polling the token endpoint in the device code flow, as Entra documents it
(https://learn.microsoft.com/entra/identity-platform/v2-oauth2-device-code, "Authenticating the
user" and "Expected errors"): the poll's ``client_id`` must be the one of the initial request and
its tenant "the same tenant or tenant alias"; ``expired_token`` once ``expires_in`` has passed
(the user can no longer sign in with the code either); ``authorization_declined`` ends the flow;
a code is redeemed once. Raw protocol requests, as a client without MSAL sends them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from entra_passthrough.testing import EntraEmulator, World

DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture(scope="module")
def expired_idp() -> Iterator[EntraEmulator]:
    """Device codes that expire at once (``lifetimes.device_code = 0``)."""
    world = World.from_dict({"lifetimes": {"device_code": 0}})
    with EntraEmulator(world=world) as idp:
        yield idp


def _start(http: httpx.Client, idp: EntraEmulator, tenant: str, client_id: str) -> dict[str, Any]:
    answer = http.post(
        f"{idp.url}/{tenant}/oauth2/v2.0/devicecode",
        data={"client_id": client_id, "scope": f"{idp.agent.app_id_uri}/access_as_user"},
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _poll(
    http: httpx.Client,
    idp: EntraEmulator,
    tenant: str,
    client_id: str,
    device_code: str,
    secret: str | None = None,
) -> dict[str, Any]:
    data = {"grant_type": DEVICE_CODE, "client_id": client_id, "device_code": device_code}
    if secret is not None:
        data["client_secret"] = secret
    body: dict[str, Any] = http.post(f"{idp.url}/{tenant}/oauth2/v2.0/token", data=data).json()
    return body


def test_the_poll_must_be_at_the_tenant_of_the_request(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    client = idp.frontend.client_id
    domain = idp.world.tenants[0].domain
    with httpx.Client(verify=idp.ssl_context()) as http:
        start = _start(http, idp, idp.tenant_id, client)
        idp.approve_device_code(start["user_code"], "alice")
        # Another tenant's endpoint (or a tenant-independent alias) does not know the code...
        for other in ("organizations", "common"):
            refused = _poll(http, idp, other, client, start["device_code"])
            assert refused.get("error") == "bad_verification_code", refused
        # ...nor does another client; the same tenant by its domain alias redeems it.
        other_client = _poll(
            http, idp, idp.tenant_id, idp.agent.client_id, start["device_code"], idp.agent.secret
        )
        assert other_client.get("error") == "bad_verification_code", other_client
        token = _poll(http, idp, domain, client, start["device_code"])
        assert "access_token" in token, token
        # A code is redeemed once.
        again = _poll(http, idp, idp.tenant_id, client, start["device_code"])
        assert again.get("error") == "bad_verification_code", again
        # Started at "organizations": polled there.
        start = _start(http, idp, "organizations", client)
        idp.approve_device_code(start["user_code"], "alice")
        refused = _poll(http, idp, idp.tenant_id, client, start["device_code"])
        assert refused.get("error") == "bad_verification_code", refused
        assert "access_token" in _poll(http, idp, "organizations", client, start["device_code"])


def test_expired_code_is_expired_token_and_cannot_be_signed_in(
    expired_idp: EntraEmulator,
) -> None:
    idp = expired_idp
    client = idp.frontend.client_id
    with httpx.Client(verify=idp.ssl_context()) as http:
        start = _start(http, idp, idp.tenant_id, client)
        assert start["expires_in"] == 0
        with pytest.raises(KeyError):
            idp.approve_device_code(start["user_code"], "alice")  # the page no longer knows it
        for _ in range(2):  # every poll: stop polling
            answer = _poll(http, idp, idp.tenant_id, client, start["device_code"])
            assert answer.get("error") == "expired_token", answer
            assert answer.get("error_codes") == [70019], answer


def test_declined_ends_the_flow(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    client = idp.frontend.client_id
    with httpx.Client(verify=idp.ssl_context()) as http:
        start = _start(http, idp, idp.tenant_id, client)
        idp.approve_device_code(start["user_code"], "alice", decline=True)
        answer = _poll(http, idp, idp.tenant_id, client, start["device_code"])
        assert answer.get("error") == "authorization_declined", answer
        # The flow is over: the code is not recognised any more.
        after = _poll(http, idp, idp.tenant_id, client, start["device_code"])
        assert after.get("error") == "bad_verification_code", after


def test_an_agent_identity_cannot_start_a_device_code_flow(entra_emulator: EntraEmulator) -> None:
    # As at /authorize (AADSTS82014): an agent identity signs no user in interactively.
    idp = entra_emulator
    with httpx.Client(verify=idp.ssl_context()) as http:
        answer = http.post(
            f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/devicecode",
            data={
                "client_id": idp.agent_identity.client_id,
                "scope": f"{idp.mcp.app_id_uri}/access_as_user",
            },
        )
    assert answer.status_code == 400
    assert answer.json()["error_codes"] == [82014]
