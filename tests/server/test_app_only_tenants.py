"""App-only callers of a multi-tenant API. ``required_roles`` is the gate for app-only tokens
because only your tenant's administrators assign your API's app roles to apps in your tenant;
with ``any_tenant=True`` every tenant's administrators can assign them to apps of their own, so
``allow_app_only`` with ``any_tenant`` needs ``app_only_tenants`` (the tenants whose apps may
call), and app-only tokens of other tenants get 403 while their users' delegated tokens are
still accepted. Real tokens signed by the emulator; the verifier fetches its keys over HTTPS."""

from __future__ import annotations

from typing import Any

import pytest

from entra_passthrough import ConfigurationError, InsufficientScope, JwtVerifier
from entra_passthrough.testing import EntraEmulator

OTHER = "0b1f3d5e-7a9c-4e2f-8d6b-1c3e5a7f9b2d"


def _verifier(idp: EntraEmulator, **options: Any) -> JwtVerifier:
    return JwtVerifier(
        audiences=[idp.mcp.client_id, idp.mcp.app_id_uri],
        authority_host=idp.url,
        verify=idp.ca_file,
        required_roles=["Tools.Call"],
        **options,
    )


def _app_token(idp: EntraEmulator, tenant: str) -> str:
    # An app of that tenant holding the role: its admin assigned it there.
    return idp.app_token(
        client_id=idp.frontend.client_id,
        audience=idp.mcp.client_id,
        roles=["Tools.Call"],
        tenant_id=tenant,
    )


def test_any_tenant_with_app_only_callers_must_name_their_tenants(
    entra_emulator: EntraEmulator,
) -> None:
    with pytest.raises(ConfigurationError) as info:
        _verifier(entra_emulator, any_tenant=True, allow_app_only=True)
    assert "any tenant" in str(info.value)
    assert "app_only_tenants" in (info.value.fix or "")


async def test_another_tenants_app_is_refused_and_its_users_are_not(
    entra_emulator: EntraEmulator,
) -> None:
    idp = entra_emulator
    verifier = _verifier(
        idp, any_tenant=True, allow_app_only=True, app_only_tenants=[idp.tenant_id.upper()]
    )
    own = await verifier.verify_async(_app_token(idp, idp.tenant_id))
    assert own.app_only
    assert own.tid == idp.tenant_id
    foreign = _app_token(idp, idp.second_tenant_id)
    with pytest.raises(InsufficientScope, match="app_only_tenants") as info:
        await verifier.verify_async(foreign)
    assert info.value.required == ("Tools.Call",)
    with pytest.raises(InsufficientScope, match="app_only_tenants"):
        verifier.verify(foreign)  # the blocking driver decides the same
    # Delegated tokens (a user assigned the role) from the other tenant: still any tenant.
    user = idp.user_token(
        user="alice",
        audience=idp.mcp.client_id,
        tenant_id=idp.second_tenant_id,
        extra_claims={"roles": ["Tools.Call"]},
    )
    assert (await verifier.verify_async(user)).tid == idp.second_tenant_id


async def test_a_tenant_list_narrowed_for_apps(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    both = [idp.tenant_id, idp.second_tenant_id]
    unlisted = _verifier(idp, tenants=both, allow_app_only=True)
    assert (await unlisted.verify_async(_app_token(idp, idp.second_tenant_id))).app_only
    narrowed = _verifier(idp, tenants=both, allow_app_only=True, app_only_tenants=[idp.tenant_id])
    with pytest.raises(InsufficientScope):
        await narrowed.verify_async(_app_token(idp, idp.second_tenant_id))
    assert (await narrowed.verify_async(_app_token(idp, idp.tenant_id))).app_only


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"any_tenant": True, "app_only_tenants": [OTHER]}, "allow_app_only is not"),
        ({"any_tenant": True, "allow_app_only": True, "app_only_tenants": []}, "accepts no"),
        ({"any_tenant": True, "allow_app_only": True, "app_only_tenants": OTHER}, "one string"),
        (
            {"any_tenant": True, "allow_app_only": True, "app_only_tenants": ["contoso.com"]},
            "not a tenant GUID",
        ),
        (
            {"tenants": [OTHER], "allow_app_only": True, "app_only_tenants": [OTHER[:-1] + "0"]},
            "not in tenants",
        ),
    ],
)
def test_app_only_tenants_that_could_not_work_are_refused(
    entra_emulator: EntraEmulator, options: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigurationError, match=says) as info:
        _verifier(entra_emulator, **options)
    assert info.value.fix
    assert "contoso.com" not in str(info.value)  # an entry is never echoed
