"""A blueprint's token exchange token needs ``fmi_path``: Entra answers AADSTS82008 ("All agentic
applications requesting a token exchange token must include the fmipath parameter on the token
request", microsoft/Agent365-Samples#230, #116) without it or with an empty one. The emulator
issued the token, so code that sends no ``fmi_path`` (azure-identity's
``ClientAssertionCredential``, msal-node) passed against it and failed against Entra."""

from __future__ import annotations

from collections.abc import Callable

import msal

from entra_passthrough.testing import EntraEmulator

from .emu_helpers import aadsts, post_token

EXCHANGE = "api://AzureADTokenExchange/.default"


def _blueprint_form(idp: EntraEmulator, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": idp.blueprint.client_id,
        "client_secret": idp.blueprint.secret,
        "scope": EXCHANGE,
        **extra,
    }


def test_82008_blueprint_exchange_token_without_fmi_path(
    idp: EntraEmulator, cca: Callable[..., msal.ConfidentialClientApplication]
) -> None:
    app = cca(client_id=idp.blueprint.client_id, credential=idp.blueprint.secret)
    result = app.acquire_token_for_client([EXCHANGE])
    assert "access_token" not in result
    assert aadsts(result) == 82008
    assert "must include the fmipath parameter" in result["error_description"]
    # With the agent identity named, the same request gets T1.
    t1 = app.acquire_token_for_client([EXCHANGE], fmi_path=idp.agent_identity.client_id)
    assert "access_token" in t1, t1.get("error_description")


def test_82008_with_an_empty_fmi_path(idp: EntraEmulator) -> None:
    resp = post_token(idp, _blueprint_form(idp, fmi_path=""))
    assert resp.status_code == 400
    body = resp.json()
    assert body["error_codes"] == [82008]
    assert body["error"] == "invalid_request"


def test_no_82008_for_other_requests(idp: EntraEmulator) -> None:
    # A blueprint's app token for a resource, and another app's exchange token, are not
    # refused for a missing fmi_path.
    resp = post_token(idp, _blueprint_form(idp, scope=f"{idp.mcp.app_id_uri}/.default"))
    assert resp.json().get("error_codes") != [82008]
    other = {
        "grant_type": "client_credentials",
        "client_id": idp.agent.client_id,
        "client_secret": idp.agent.secret,
        "scope": EXCHANGE,
    }
    assert post_token(idp, other).json().get("error_codes") != [82008]


def test_the_library_explains_82008() -> None:
    from entra_passthrough import EntraError

    err = EntraError("refused", aadsts=82008)
    assert err.code is not None
    assert "fmi_path" in err.code.fix
    assert "aadsts82008" in str(err)
