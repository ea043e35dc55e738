"""Discovery: OpenID configuration (v2 and v1), JWKS, MSAL's instance and user-realm discovery.

https://learn.microsoft.com/entra/identity-platform/v2-protocols-oidc#find-your-apps-openid-configuration-document-uri
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .._msal import MSA_TENANT_ID
from . import _errors as e
from ._state import Runtime
from ._token_endpoint import personal_accounts, resolve_tenant
from ._world import Tenant

_NO_STORE = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}


def _issuer_tenant(tenant: Tenant | None, segment: str) -> str:
    """The tenant part of the issuer an authority publishes: its tenant's id; at ``consumers``
    the fixed tenant of personal Microsoft accounts (its tokens' issuer); at
    common/organizations the ``{tenantid}`` template (v2-protocols-oidc)."""
    if tenant is not None:
        return tenant.id
    return MSA_TENANT_ID if personal_accounts(segment) else "{tenantid}"


def _json(data: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=_NO_STORE)


async def discovery_v2(rt: Runtime, request: Request) -> Response:
    rt.count("discovery")
    seg = request.path_params["tenant"]
    try:
        tenant = resolve_tenant(rt, seg)
    except e.StsError as err:
        return _json(err.body(), 400)
    tid = tenant.id if tenant else seg
    base = f"{rt.url}/{tid}"
    issuer = rt.issuer(_issuer_tenant(tenant, seg), 2)
    return _json(
        {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": issuer,
            "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "userinfo_endpoint": f"{rt.url}/oidc/userinfo",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "nonce",
                "preferred_username",
                "name",
                "tid",
                "ver",
                "at_hash",
                "c_hash",
                "email",
            ],
            "tenant_region_scope": None,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
        }
    )


async def discovery_v1(rt: Runtime, request: Request) -> Response:
    rt.count("discovery")
    seg = request.path_params["tenant"]
    try:
        tenant = resolve_tenant(rt, seg)
    except e.StsError as err:
        return _json(err.body(), 400)
    tid = tenant.id if tenant else seg
    base = f"{rt.url}/{tid}"
    return _json(
        {
            "token_endpoint": f"{base}/oauth2/token",
            "jwks_uri": f"{base}/discovery/keys",
            "issuer": rt.issuer(_issuer_tenant(tenant, seg), 1),
            "authorization_endpoint": f"{base}/oauth2/authorize",
            "end_session_endpoint": f"{base}/oauth2/logout",
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token"],
            "subject_types_supported": ["pairwise"],
        }
    )


async def jwks(rt: Runtime, request: Request) -> Response:
    rt.count("jwks")
    seg = request.path_params["tenant"]
    v2 = "/v2.0/" in request.url.path
    tenant = rt.world.tenant(seg)
    issuer = rt.issuer(_issuer_tenant(tenant, seg), 2) if v2 else None
    return _json({"keys": [k.jwk(issuer) for k in rt.keys.published]})


def _own_instance(rt: Runtime, endpoint: str) -> bool:
    """Whether an ``authorization_endpoint`` is on a host this emulator serves: HTTPS on its own
    host (or ``localhost``, which its certificate names), on its port or none (MSAL drops the
    port of the authority when it asks: msal ``authority.py``, ``_initialize_entra_authority``)."""
    own = urllib.parse.urlsplit(rt.url)
    try:
        parts = urllib.parse.urlsplit(endpoint)
        port = parts.port
    except ValueError:  # a port that is no number, a bad IPv6 literal
        return False
    return (
        parts.scheme.lower() == "https"
        and (parts.hostname or "") in {own.hostname, "localhost"}
        and port in (None, own.port)
    )


async def instance(rt: Runtime, request: Request) -> Response:
    # https://login.microsoftonline.com/common/discovery/instance (MSAL instance discovery)
    rt.count("instance")
    ep = request.query_params.get("authorization_endpoint", "")
    if ep and not _own_instance(rt, ep):
        # Entra validates the authority's host here: one it does not serve is HTTP 400
        # invalid_instance, AADSTS50049 "Unknown or invalid instance."
        # (https://learn.microsoft.com/entra/msal/dotnet/advanced/custom-authority-aliases,
        # "Instance validation"), which is how MSAL's validate_authority refuses a mistyped or
        # foreign authority. The emulator serves only itself.
        err = e.StsError(50049, "invalid_instance", "Unknown or invalid instance.")
        return _json(err.body(request.headers.get("client-request-id")), err.status)
    path = urllib.parse.urlsplit(ep).path.strip("/").split("/")
    tenant = path[0] if path and path[0] else "common"
    host = urllib.parse.urlsplit(rt.url).netloc
    return _json(
        {
            "tenant_discovery_endpoint": (
                f"{rt.url}/{tenant}/v2.0/.well-known/openid-configuration"
            ),
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }
    )


async def userrealm(rt: Runtime, request: Request) -> Response:
    # MSAL's ROPC first asks /common/userrealm/{user}; "Managed" means no federation (ADFS).
    rt.count("userrealm")
    name = request.path_params["user"]
    user = rt.world.user(name)
    domain = name.rpartition("@")[2]
    return _json(
        {
            "ver": "1.0",
            "account_type": "Managed" if user else "Unknown",
            "domain_name": domain,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_audience_urn": "urn:federation:MicrosoftOnline",
        }
    )
