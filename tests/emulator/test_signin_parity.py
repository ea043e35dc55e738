"""The device code verification page and ``/authorize`` are the same sign-in: for every rule
Entra applies when a user signs in (tenant membership, app assignment, Conditional Access, the
MFA a policy requires, consent), the device code flow answers what the authorization code flow
answers. https://learn.microsoft.com/entra/identity-platform/v2-oauth2-device-code (the user
"signs in" and consents at the verification page), v2-oauth2-auth-code-flow,
consent-types-developer.

Each case runs unmodified MSAL through three flows: the authorization code flow with the
emulator's headless consent, the same flow through the HTML consent page (Accept), and the
device code flow (``approve_device_code``); all three must give the same answer.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import msal
import pytest

from entra_passthrough.testing import EntraEmulator, World

from .emu_helpers import no_http_cache

WORLD: dict[str, Any] = {
    "tenants": [{"name": "other"}, {"name": "locked", "user_consent": False}],
    "apps": [
        {
            "name": "api",
            "api": True,
            "multi_tenant": True,
            "scope": "read",
            "scopes": ["admin.write"],
            "admin_scopes": ["admin.write"],
        },
        {
            "name": "client",
            "public_client": True,
            "multi_tenant": True,
            "redirect_uris": ["http://localhost/callback"],
            "required": ["api/read"],
        },
        {
            # Configures no permission: '.default' has nothing to consent to (650057).
            "name": "bare",
            "public_client": True,
            "redirect_uris": ["http://localhost/callback"],
        },
        {
            "name": "assigned",
            "public_client": True,
            "redirect_uris": ["http://localhost/callback"],
            "required": ["api/read"],
            "assignment_required": True,
            "assigned": ["alice"],
        },
        {
            # An administrator consented the admin-only scope for everyone (tenant-wide grant).
            "name": "admin_granted",
            "public_client": True,
            "redirect_uris": ["http://localhost/callback"],
            "required": ["api/read", "api/admin.write"],
        },
    ],
    "users": [
        {"name": "outsider", "tenant": "other"},
        {"name": "visitor", "tenant": "other", "guest": True},
        {"name": "sam", "tenant": "locked"},
        {"name": "blocked", "blocked_for": ["api"]},
        {"name": "strong", "mfa_required_for": ["api"]},
    ],
    "grants": [{"client": "admin_granted", "resource": "api", "scopes": ["admin.write"]}],
}

FLOWS = ("authorize", "consent_page", "device_code")


@pytest.fixture(scope="module")
def world_idp() -> Iterator[EntraEmulator]:
    with EntraEmulator(world=World.from_dict(WORLD)) as idp:
        yield idp


@pytest.fixture
def idp(world_idp: EntraEmulator) -> Iterator[EntraEmulator]:
    """The module's emulator; consent recorded by a case is withdrawn after it, so that every
    flow of a case starts from the same grants."""
    yield world_idp
    for user in world_idp.users:
        for client in ("client", "bare", "assigned", "admin_granted"):
            world_idp.revoke_consent(user, world_idp.app(client).client_id)


@dataclass
class Outcome:
    app: msal.PublicClientApplication
    result: dict[str, Any]

    @property
    def code(self) -> int | None:
        codes = self.result.get("error_codes") or [None]
        return codes[0]  # type: ignore[no-any-return]

    @property
    def claims(self) -> dict[str, Any]:
        assert "access_token" in self.result, self.result
        return jwt.decode(self.result["access_token"], options={"verify_signature": False})


def _public(idp: EntraEmulator, client: str, tenant: str) -> msal.PublicClientApplication:
    return msal.PublicClientApplication(
        idp.app(client).client_id,
        authority=f"{idp.url}/{tenant}",
        http_client=idp.msal_http_client(),
        instance_discovery=False,
        http_cache=no_http_cache(),
    )


def _form(page: str) -> dict[str, str]:
    return {k: html.unescape(v) for k, v in re.findall(r"name='([^']+)' value='([^']*)'", page)}


def _authorize_answer(fields: dict[str, str]) -> dict[str, Any] | None:
    """An error redirected to the client, in MSAL's error shape (AADSTS code first)."""
    if "error" not in fields:
        return None
    found = re.match(r"AADSTS(\d+)", fields.get("error_description", ""))
    return {**fields, "error_codes": [int(found.group(1))] if found else []}


def sign_in(
    idp: EntraEmulator,
    flow: str,
    *,
    client: str,
    user: str,
    scopes: list[str],
    tenant: str | None = None,
    claims: str | None = None,
) -> Outcome:
    app = _public(idp, client, tenant or idp.tenant_id)
    if flow == "device_code":
        started = app.initiate_device_flow(scopes=scopes, claims_challenge=claims)
        assert "user_code" in started, started
        idp.approve_device_code(started["user_code"], user)
        return Outcome(app, app.acquire_token_by_device_flow(started))
    auth = app.initiate_auth_code_flow(
        scopes,
        redirect_uri="http://localhost/callback",
        login_hint=user,
        response_mode="form_post",
        claims_challenge=claims,
    )
    url = auth["auth_uri"] + ("&emulator_consent=accept" if flow == "authorize" else "")
    with httpx.Client(verify=idp.ssl_context()) as browser:
        page = browser.get(url)
        if "Permissions requested" in page.text:
            assert flow == "consent_page", page.text
            page = browser.post(
                auth["auth_uri"].split("?")[0], data=_form(page.text) | {"decision": "accept"}
            )
    fields = _form(page.text)
    refused = _authorize_answer(fields)
    if refused is not None:
        return Outcome(app, refused)
    assert "code" in fields, page.text
    return Outcome(app, app.acquire_token_by_auth_code_flow(auth, fields))


def _api(idp: EntraEmulator, name: str) -> str:
    return f"{idp.app('api').app_id_uri}/{name}"


def _tenant(idp: EntraEmulator, name: str) -> str:
    tenant = idp.world.tenant(name)
    assert tenant is not None
    return tenant.id


def _refreshes(idp: EntraEmulator, out: Outcome, scopes: list[str]) -> None:
    # The sign-in performed the MFA the policy requires for the API: a refresh of its token
    # keeps that (no AADSTS50076). v2 access tokens carry no amr (as in Entra).
    accounts = out.app.get_accounts()
    assert accounts, out.result
    again = out.app.acquire_token_silent_with_error(scopes, accounts[0], force_refresh=True)
    assert again is not None
    assert "access_token" in again, again


@dataclass(frozen=True)
class Case:
    client: str
    user: str
    scope: Callable[[EntraEmulator], str]
    tenant: Callable[[EntraEmulator], str] | None = None
    #: The AADSTS code of the refusal, or a check of the token.
    expect: int | Callable[[EntraEmulator, Outcome], None] = 0


def _token_in(tenant: str | None) -> Callable[[EntraEmulator, Outcome], None]:
    def check(idp: EntraEmulator, out: Outcome) -> None:
        assert out.claims["tid"] == (_tenant(idp, tenant) if tenant else idp.tenant_id)

    return check


def _scp(expected: str) -> Callable[[EntraEmulator, Outcome], None]:
    def check(idp: EntraEmulator, out: Outcome) -> None:
        assert out.claims["scp"] == expected

    return check


CASES: dict[str, Case] = {
    # AADSTS50020: a member of another tenant, not a guest here.
    "not_a_member_50020": Case("client", "outsider", lambda i: _api(i, "read"), expect=50020),
    "guest_signs_in": Case("client", "visitor", lambda i: _api(i, "read"), expect=_token_in(None)),
    # common/organizations: the user's home tenant issues the tokens.
    "organizations_home_tenant": Case(
        "client",
        "outsider",
        lambda i: _api(i, "read"),
        tenant=lambda i: "organizations",
        expect=_token_in("other"),
    ),
    "not_assigned_50105": Case("assigned", "bob", lambda i: _api(i, "read"), expect=50105),
    "assigned": Case("assigned", "alice", lambda i: _api(i, "read"), expect=_scp("read")),
    "conditional_access_block_53003": Case(
        "client", "blocked", lambda i: _api(i, "read"), expect=53003
    ),
    "mfa_required": Case(
        "client",
        "strong",
        lambda i: _api(i, "read"),
        expect=lambda i, out: _refreshes(i, out, [_api(i, "read")]),
    ),
    "admin_only_scope_90094": Case(
        "client", "alice", lambda i: _api(i, "admin.write"), expect=90094
    ),
    "tenant_without_user_consent_90094": Case(
        "client",
        "sam",
        lambda i: _api(i, "read"),
        tenant=lambda i: _tenant(i, "locked"),
        expect=90094,
    ),
    "default_not_configured_650057": Case(
        "bare", "alice", lambda i: _api(i, ".default"), expect=650057
    ),
    "default_is_the_configured_permissions": Case(
        "client", "alice", lambda i: _api(i, ".default"), expect=_scp("read")
    ),
    # The prompt lists what is not granted yet: the admin-only scope an administrator granted is
    # not the user's to consent to again (the consent page asked for it: AADSTS90094).
    "prompt_lists_only_what_is_missing": Case(
        "admin_granted",
        "alice",
        lambda i: f"{_api(i, 'read')} {_api(i, 'admin.write')}",
        expect=_scp("admin.write read"),
    ),
}


@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_device_code_answers_what_authorize_answers(
    idp: EntraEmulator, case: str, flow: str
) -> None:
    rule = CASES[case]
    out = sign_in(
        idp,
        flow,
        client=rule.client,
        user=rule.user,
        scopes=rule.scope(idp).split(),
        tenant=rule.tenant(idp) if rule.tenant else None,
    )
    if isinstance(rule.expect, int):
        assert out.code == rule.expect, out.result
    else:
        assert "access_token" in out.result, out.result
        rule.expect(idp, out)


@pytest.mark.parametrize("flow", FLOWS)
def test_claims_challenge_step_up_in_every_flow(idp: EntraEmulator, flow: str) -> None:
    # v2-oauth2-on-behalf-of-flow "Error response example": OBO answers AADSTS50076 with a
    # claims challenge; the client signs the user in again passing those claims
    # (claims_challenge: the device code request carries them too); that sign-in performs MFA
    # and OBO with the new token succeeds.
    agent = msal.ConfidentialClientApplication(
        idp.agent.client_id,
        client_credential=idp.agent.secret,
        authority=f"{idp.url}/{idp.tenant_id}",
        http_client=idp.msal_http_client(),
        instance_discovery=False,
        http_cache=no_http_cache(),
    )
    scopes = [f"{idp.agent.app_id_uri}/access_as_user"]
    downstream = [f"{idp.mcp.app_id_uri}/.default"]
    first = sign_in(idp, flow, client="frontend", user="dave", scopes=scopes)
    challenge = agent.acquire_token_on_behalf_of(first.result["access_token"], downstream)
    assert challenge.get("error_codes") == [50076], challenge
    again = sign_in(
        idp, flow, client="frontend", user="dave", scopes=scopes, claims=challenge["claims"]
    )
    answer = agent.acquire_token_on_behalf_of(again.result["access_token"], downstream)
    assert "access_token" in answer, answer


def test_the_verification_page_shows_what_refused_the_sign_in(idp: EntraEmulator) -> None:
    # The HTML form (a browser or Playwright drives it) says why, as Entra's page does; the
    # device's poll gets the same refusal.
    app = _public(idp, "client", idp.tenant_id)
    started = app.initiate_device_flow(scopes=[_api(idp, "read")])
    with httpx.Client(verify=idp.ssl_context()) as browser:
        page = browser.post(
            started["verification_uri"],
            data={"user_code": started["user_code"], "user": "outsider", "action": "continue"},
        )
    assert page.status_code == 400
    assert "AADSTS50020" in page.text
    assert app.acquire_token_by_device_flow(started).get("error_codes") == [50020]
