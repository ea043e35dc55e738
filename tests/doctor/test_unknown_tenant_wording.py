"""doctor against a tenant no directory has: the discovery check says Entra refused the OpenID
configuration request (it said "the token request": none was sent), and the client-credential
check says MSAL could not use the authority, with the fix, not MSAL's own ValueError text cut
mid-word. Real emulator and MSAL."""

from __future__ import annotations

from entra_passthrough._doctor import run
from entra_passthrough.testing import EntraEmulator

UNKNOWN = "11111111-2222-3333-4444-555555555555"


def test_an_unknown_tenant_is_said_as_what_happened() -> None:
    with EntraEmulator() as idp:
        checks = {
            c.name: c
            for c in run(
                {
                    "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
                    "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.agent.secret or "",
                    "AZURE_TENANT_ID": UNKNOWN,
                    "AZURE_AUTHORITY_HOST": idp.url,
                    "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
                },
                scopes=[f"{idp.mcp.app_id_uri}/.default"],
            )
        }
    discovery = checks["discovery"].detail
    assert "refused the OpenID configuration request" in discovery
    assert "token request" not in discovery
    assert "AADSTS90002" in discovery
    credential = checks["client credential"]
    assert "MSAL could not use the authority" in credential.detail
    assert not credential.detail.startswith("ValueError: Unable")
    assert credential.fix
