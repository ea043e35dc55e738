"""The managed identity endpoint, in App Service's shape, on its own plain-HTTP loopback port.

https://learn.microsoft.com/azure/app-service/overview-managed-identity#rest-endpoint-reference:
``GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<R>[&client_id|principal_id|mi_res_id]``
with header ``X-IDENTITY-HEADER: {IDENTITY_HEADER}``; the answer carries ``expires_on`` as a string
of epoch seconds. azure-identity 1.27 delegates to MSAL's ManagedIdentityClient, which sends
exactly this (msal/managed_identity.py ``_obtain_token_on_app_service``, plus a harmless
``Metadata`` header).
"""

from __future__ import annotations

import hmac
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ._issue import app_roles, mint_access
from ._state import Runtime
from ._tokens import Subject


def _fail(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())},
        status_code=status,
    )


async def msi_token(rt: Runtime, request: Request) -> Response:
    rt.count("msi")
    secret = request.headers.get("x-identity-header", "")
    if not hmac.compare_digest(secret.encode(), rt.mi_header.encode()):
        return _fail(401, "The X-IDENTITY-HEADER header is missing or wrong.")
    q = request.query_params
    if q.get("api-version") != "2019-08-01":
        return _fail(400, "Unsupported api-version; this endpoint speaks 2019-08-01.")
    resource = q.get("resource")
    if not resource:
        return _fail(400, "The 'resource' query parameter is required.")
    selector = (
        q.get("client_id") or q.get("principal_id") or q.get("object_id") or q.get("mi_res_id")
    )
    world = rt.world
    mi = world.identity(selector) if selector else (world.managed_identities or (None,))[0]
    if mi is None:
        return _fail(400, "No managed identity matches the requested identity.")
    app = world.resource(resource)
    if app is None:
        # MSAL notes an unknown resource "empirically ends up with a vague statusCode=500".
        return _fail(
            500,
            f"AADSTS500011: The resource principal named {resource[:200]} was not "
            "found in the tenant.",
        )
    token = mint_access(
        rt,
        resource=app,
        client_id=mi.client_id,
        client_acr="2",
        subject=Subject(oid=mi.object_id, tid=mi.tenant_id),
        roles=app_roles(rt, mi.client_id, app),
        app_only=True,
    )
    return JSONResponse(
        {
            "access_token": token,
            "expires_on": str(int(time.time()) + world.lifetimes.access_token),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": mi.client_id,
        }
    )
