"""Managed identity endpoints, in each host's shape, on the emulator's plain-HTTP loopback port.

Each host is selected by the variables the host itself sets (``EntraEmulator.mi_env(host)``), so
MSAL's ``ManagedIdentityClient`` and azure-identity's ``ManagedIdentityCredential`` run
unmodified:

* ``app_service`` - App Service / Functions / Container Apps, api-version 2019-08-01:
  ``GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=R[&client_id|principal_id|object_id|
  mi_res_id]`` with ``X-IDENTITY-HEADER: {IDENTITY_HEADER}``; ``expires_on`` is a string of epoch
  seconds. https://learn.microsoft.com/azure/app-service/overview-managed-identity#rest-endpoint-reference
* ``app_service_2017`` - the older api-version 2017-09-01 (``MSI_ENDPOINT`` + ``MSI_SECRET``,
  header ``secret``, selector ``clientid``); MSAL and azure-identity take this pair for Azure
  Machine Learning, which speaks the same version.
* ``imds`` - VMs, scale sets, AKS nodes: ``GET /metadata/identity/oauth2/token?api-version=
  2018-02-01&resource=R[&client_id|object_id|msi_res_id]`` with ``Metadata: true`` (required),
  at ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` instead of 169.254.169.254.
  https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-use-vm-token
* ``azure_arc`` - ``IDENTITY_ENDPOINT`` + ``IMDS_ENDPOINT``: the first request gets 401 with
  ``WWW-Authenticate: Basic realm=<path of a .key file>``; the client reads the file and retries
  with ``Authorization: Basic <content>``. The file lives where the Arc agent puts it
  (``/var/opt/azcmagent/tokens`` on Linux), so this host works only where that folder is
  writable. It serves the machine's system-assigned identity only (a selector is ignored and
  the answer names no identity, so MSAL refuses it for a user-assigned request).
  https://learn.microsoft.com/azure/azure-arc/servers/managed-identity-authentication
* ``cloud_shell`` - ``MSI_ENDPOINT`` alone: ``POST`` form ``resource=R`` with ``Metadata: true``.

Selection, as Entra's hosts do it: no selector means the host's **system-assigned** identity
(IMDS: or the only user-assigned one when there is no system-assigned identity, the documented
VM behaviour); a selector names a user-assigned identity by the one identifier its parameter
carries (``_SELECTOR_FIELDS``); two selectors are an error.
"""

from __future__ import annotations

import hmac
import os
import secrets
import sys
import time
import uuid
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import _errors as e
from ._issue import app_roles, check_app_assignment, mint_access, v1_audience
from ._state import Runtime
from ._tokens import Subject
from ._world import ManagedIdentityPrincipal

#: Where the Azure Arc agent writes its challenge files (msal/managed_identity.py and
#: azure-identity's azure_arc.py read only from there).
ARC_TOKEN_DIRS = {"linux": "/var/opt/azcmagent/tokens"}

#: Every variable a managed identity host sets (tests clear them before choosing a host).
HOST_VARIABLES = (
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "AZUREPS_HOST_ENVIRONMENT",
)


def _fail(status: int, message: str) -> JSONResponse:
    # App Service's error shape.
    return JSONResponse(
        {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())},
        status_code=status,
    )


def _imds_fail(status: int, error: str, description: str) -> JSONResponse:
    # IMDS / Arc / Cloud Shell error shape (how-to-use-vm-token, "Error handling").
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


class _NoIdentity(Exception):
    """No identity for the request; ``str()`` is the host's message. ``verbatim``: the host's
    own complete text (IMDS answers it as it is, without its "Identity not found." prefix)."""

    def __init__(self, text: str, *, verbatim: bool = False) -> None:
        super().__init__(text)
        self.verbatim = verbatim


#: The identifier each selector parameter is compared with. Azure's hosts read each parameter as
#: one kind of id: ``client_id`` (2017-09-01: ``clientid``) the client (application) id,
#: ``object_id`` / ``principal_id`` the object (principal) id, ``mi_res_id`` (IMDS:
#: ``msi_res_id``) the ARM resource id
#: (https://learn.microsoft.com/azure/app-service/overview-managed-identity#rest-endpoint-reference,
#: https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-use-vm-token).
#: An id of another kind, or the identity's name, matches nothing: a misconfigured
#: ``AZURE_CLIENT_ID`` holding an object id must fail here as it fails in Azure.
_SELECTOR_FIELDS = {
    "client_id": "client_id",
    "clientid": "client_id",
    "object_id": "object_id",
    "principal_id": "object_id",
    "mi_res_id": "resource_id",
    "msi_res_id": "resource_id",
}


def select_identity(
    rt: Runtime, selectors: dict[str, str], *, host: str
) -> ManagedIdentityPrincipal:
    """The identity a request selects, or ``_NoIdentity`` with the host's message."""
    given = {k: v for k, v in selectors.items() if v}
    if len(given) > 1:
        raise _NoIdentity(
            f"Only one of {', '.join(sorted(given))} may be specified to select a user-assigned "
            "identity."
        )
    world = rt.world
    if given:
        kind, value = next(iter(given.items()))
        field = _SELECTOR_FIELDS[kind]
        mi = next((m for m in world.managed_identities if getattr(m, field) == value), None)
        if mi is None or mi.system_assigned:
            raise _NoIdentity(f"No user-assigned managed identity matches the {kind}.")
        return mi
    system = [m for m in world.managed_identities if m.system_assigned]
    if system:
        return system[0]
    user_assigned = [m for m in world.managed_identities if not m.system_assigned]
    if host == "imds" and len(user_assigned) == 1:
        return user_assigned[0]
    if host == "imds" and user_assigned:
        # IMDS's own text (a VM or node with several user-assigned identities and no
        # system-assigned one, quoted in client issue reports).
        raise _NoIdentity(
            "Multiple user assigned identities exist, please specify the clientId / resourceId "
            "of the identity in the token request",
            verbatim=True,
        )
    raise _NoIdentity(
        "No system-assigned managed identity is enabled on this host, and the request names no "
        "user-assigned identity."
    )


def _mint(rt: Runtime, mi: ManagedIdentityPrincipal, resource_name: str) -> tuple[str, int] | None:
    """The identity's token for ``resource_name``; ``None`` for an unknown resource, and
    ``StsError`` for what Entra refuses (AADSTS501051: the resource requires assignment and the
    identity holds no app role on it)."""
    app = rt.world.resource(resource_name)
    if app is None:
        return None
    lifetime = rt.world.lifetimes.access_token
    roles = app_roles(rt, mi.client_id, app, mi.tenant_id)
    check_app_assignment(mi.client_id, mi.name, app, roles)
    token = mint_access(
        rt,
        resource=app,
        client_id=mi.client_id,
        client_acr="2",
        subject=Subject(oid=mi.object_id, tid=mi.tenant_id),
        roles=roles,
        app_only=True,
        # A v1 aud is the identifier the request named, as at the token endpoint.
        audience=v1_audience(app, resource_name),
    )
    return token, lifetime


def _refused(err: e.StsError) -> str:
    return f"AADSTS{err.code}: {err.text}"


def _not_found(resource: str) -> str:
    return (
        f"AADSTS500011: The resource principal named {resource[:200]} was not found in the tenant."
    )


async def msi_token(rt: Runtime, request: Request) -> Response:
    """App Service (2019-08-01 with ``X-IDENTITY-HEADER``, 2017-09-01 with ``secret``)."""
    rt.count("msi")
    q = request.query_params
    version = q.get("api-version")
    if version == "2017-09-01":
        secret = request.headers.get("secret", "")
        selectors = {"clientid": q.get("clientid") or q.get("client_id") or ""}
    elif version == "2019-08-01":
        secret = request.headers.get("x-identity-header", "")
        selectors = {
            "client_id": q.get("client_id") or "",
            "principal_id": q.get("principal_id") or "",
            "object_id": q.get("object_id") or "",
            "mi_res_id": q.get("mi_res_id") or "",
        }
    else:
        return _fail(400, "Unsupported api-version; use 2019-08-01 (or 2017-09-01).")
    if not hmac.compare_digest(secret.encode(), rt.mi_header.encode()):
        return _fail(401, "The identity header (X-IDENTITY-HEADER / secret) is missing or wrong.")
    resource = q.get("resource")
    if not resource:
        return _fail(400, "The 'resource' query parameter is required.")
    try:
        mi = select_identity(rt, selectors, host="app_service")
    except _NoIdentity as exc:
        return _fail(400, str(exc))
    try:
        minted = _mint(rt, mi, resource)
    except e.StsError as err:
        return _fail(400, _refused(err))
    if minted is None:
        # MSAL notes an unknown resource "empirically ends up with a vague statusCode=500".
        return _fail(500, _not_found(resource))
    token, lifetime = minted
    body = {
        "access_token": token,
        "expires_on": str(int(time.time()) + lifetime),
        "resource": resource,
        "token_type": "Bearer",
    }
    if version == "2019-08-01":
        body["client_id"] = mi.client_id
    return JSONResponse(body)


def _imds_body(
    mi: ManagedIdentityPrincipal, token: str, lifetime: int, resource: str
) -> dict[str, str]:
    now = int(time.time())
    return {
        "access_token": token,
        "client_id": mi.client_id,
        "expires_in": str(lifetime),
        "expires_on": str(now + lifetime),
        "ext_expires_in": str(lifetime),
        "not_before": str(now),
        "resource": resource,
        "token_type": "Bearer",
    }


async def imds_token(rt: Runtime, request: Request) -> Response:
    """IMDS (VMs, AKS nodes), and Azure Arc (challenge file first)."""
    rt.count("msi")
    q = request.query_params
    arc = q.get("api-version") == "2020-06-01"
    metadata = request.headers.get("metadata", "")
    if not arc and metadata != "true":
        # IMDS: 'Metadata' "must be set to "true", in all lower case"; missing or formatted
        # otherwise (True, TRUE) it answers 400 bad_request_102 "Required metadata header not
        # specified" (how-to-use-vm-token, "Request parameters" and "Error handling").
        return _imds_fail(400, "bad_request_102", "Required metadata header not specified")
    if arc and metadata.lower() != "true":
        # Azure Arc's agent is not IMDS: Microsoft's own example sends 'Metadata: True'
        # (https://learn.microsoft.com/azure/azure-arc/servers/managed-identity-authentication).
        return _imds_fail(400, "invalid_request", "Required metadata header not specified")
    if not arc and "x-forwarded-for" in request.headers:
        # IMDS rejects a request that carries X-Forwarded-For (it went through a proxy): "Must
        # not contain an X-Forwarded-For header. Any request that doesn't meet both of these
        # requirements are rejected by the service."
        # https://learn.microsoft.com/azure/virtual-machines/instance-metadata-service#security-and-authentication
        # The page gives no status or body for it; 400 is its "Errors and debugging" status for
        # a request whose headers IMDS refuses (a missing Metadata: true), in IMDS's shape.
        return _imds_fail(
            400,
            "invalid_request",
            "Requests containing an X-Forwarded-For header are rejected: IMDS is not "
            "reachable through a proxy",
        )
    if q.get("api-version") not in ("2018-02-01", "2019-08-01", "2020-06-01"):
        return _imds_fail(400, "invalid_request", "Unsupported api-version")
    if arc:
        challenge = _arc_challenge(rt, request)
        if challenge is not None:
            return challenge
    resource = q.get("resource")
    if not resource:
        return _imds_fail(400, "invalid_request", "Required audience parameter not specified")
    selectors = {
        "client_id": q.get("client_id") or "",
        "object_id": q.get("object_id") or "",
        "msi_res_id": q.get("msi_res_id") or q.get("mi_res_id") or "",
    }
    try:
        # Azure Arc: "every Azure Arc-enabled server has a system-assigned managed identity"
        # (https://learn.microsoft.com/azure/azure-arc/servers/security-identity-authorization),
        # and the documented agent serves that one only: it ignores a selector and does not say
        # which identity answered, so MSAL refuses the token when a user-assigned identity was
        # asked (msal/managed_identity.py, _raise_if_arc_did_not_honor_user_assigned_identity).
        mi = select_identity(rt, {} if arc else selectors, host="azure_arc" if arc else "imds")
    except _NoIdentity as exc:
        text = str(exc) if exc.verbatim else f"Identity not found. {exc}"
        return _imds_fail(400, "invalid_request", text)
    try:
        minted = _mint(rt, mi, resource)
    except e.StsError as err:
        return _imds_fail(400, err.error, _refused(err))
    if minted is None:
        return _imds_fail(400, "invalid_resource", _not_found(resource))
    token, lifetime = minted
    body = _imds_body(mi, token, lifetime, resource)
    if arc:
        # The Arc answer of managed-identity-authentication names no identity.
        del body["client_id"]
    return JSONResponse(body)


def _arc_challenge(rt: Runtime, request: Request) -> Response | None:
    """None when the request carries the current challenge secret, else the 401 challenge."""
    given = request.headers.get("authorization", "")
    with rt.lock:
        expected = rt.arc_secret
    if expected and hmac.compare_digest(given.encode(), f"Basic {expected}".encode()):
        return None
    folder = ARC_TOKEN_DIRS.get(sys.platform)
    if folder is None:
        return _imds_fail(500, "unsupported_platform", "Azure Arc runs on Linux here.")
    secret = secrets.token_urlsafe(24)
    path = Path(folder) / f"{secrets.token_hex(8)}.key"
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        path.write_text(secret, encoding="ascii")
        os.chmod(path, 0o600)
    except OSError:
        return _imds_fail(500, "unavailable", f"cannot write the Arc challenge file in {folder}")
    with rt.lock:
        rt.arc_secret = secret
        previous, rt.arc_file = rt.arc_file, str(path)
    if previous:
        Path(previous).unlink(missing_ok=True)
    return Response(
        status_code=401, headers={"WWW-Authenticate": f"Basic realm={path}"}, content=b""
    )


async def cloud_shell_token(rt: Runtime, request: Request) -> Response:
    """Cloud Shell: ``POST {MSI_ENDPOINT}`` with form ``resource`` and ``Metadata: true``."""
    rt.count("msi")
    if request.headers.get("metadata", "").lower() != "true":
        return _imds_fail(400, "invalid_request", "Required metadata header not specified")
    form = await request.form()
    resource = str(form.get("resource") or request.query_params.get("resource") or "")
    if not resource:
        return _imds_fail(400, "invalid_request", "Required resource parameter not specified")
    if form.get("client_id") or form.get("object_id") or form.get("msi_res_id"):
        return _imds_fail(
            400, "invalid_request", "Cloud Shell supports only the signed-in identity."
        )
    try:
        mi = select_identity(rt, {}, host="cloud_shell")
    except _NoIdentity as exc:
        return _imds_fail(400, "invalid_request", str(exc))
    try:
        minted = _mint(rt, mi, resource)
    except e.StsError as err:
        return _imds_fail(400, err.error, _refused(err))
    if minted is None:
        return _imds_fail(400, "invalid_resource", _not_found(resource))
    token, lifetime = minted
    return JSONResponse(_imds_body(mi, token, lifetime, resource))


async def service_fabric_token(rt: Runtime, request: Request) -> Response:
    """Service Fabric: ``GET {IDENTITY_ENDPOINT}?api-version=2019-07-01-preview&resource=R`` with
    header ``Secret: {IDENTITY_HEADER}``, over HTTPS pinned by ``IDENTITY_SERVER_THUMBPRINT``
    (https://learn.microsoft.com/azure/service-fabric/how-to-managed-identity-service-fabric-app-code).
    The application's identity is configured in the cluster, not selected per request."""
    rt.count("msi")

    def sf_error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse(
            {"error": {"correlationId": str(uuid.uuid4()), "code": code, "message": message}},
            status_code=status,
        )

    q = request.query_params
    if q.get("api-version") != "2019-07-01-preview":
        return sf_error(400, "InvalidApiVersion", "Use api-version 2019-07-01-preview.")
    secret = request.headers.get("secret", "")
    if not secret:
        return sf_error(401, "SecretHeaderNotFound", "Secret is not found in the request headers.")
    if not hmac.compare_digest(secret.encode(), rt.mi_header.encode()):
        return sf_error(401, "SecretHeaderNotFound", "The Secret header value is not valid.")
    resource = q.get("resource")
    if not resource:
        return sf_error(400, "ArgumentNullOrEmpty", "The resource parameter is required.")
    try:
        mi = select_identity(rt, {}, host="service_fabric")
    except _NoIdentity as exc:
        return sf_error(404, "ManagedIdentityNotFound", str(exc))
    try:
        minted = _mint(rt, mi, resource)
    except e.StsError as err:
        return sf_error(400, err.error, _refused(err))
    if minted is None:
        return sf_error(400, "ArgumentNullOrEmpty", _not_found(resource))
    token, lifetime = minted
    return JSONResponse(
        {
            "token_type": "Bearer",
            "access_token": token,
            "expires_on": int(time.time()) + lifetime,
            "resource": resource,
        }
    )
