"""``ManagedIdentity``: the agent's own Azure identity (kind ``app``), on MSAL's
``ManagedIdentityClient`` so that every host it supports works.

Which host MSAL talks to is decided by the variables the host sets in the process environment
(msal/managed_identity.py ``get_managed_identity_source``; the same order as azure-identity's
``ManagedIdentityCredential``):

* Service Fabric: ``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER`` + ``IDENTITY_SERVER_THUMBPRINT``
* App Service / Functions / Container Apps: ``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``
* Azure Machine Learning: ``MSI_ENDPOINT`` + ``MSI_SECRET``
* Azure Arc: ``IDENTITY_ENDPOINT`` + ``IMDS_ENDPOINT`` (or the himds agent installed)
* Cloud Shell: ``MSI_ENDPOINT`` without ``MSI_SECRET``. MSAL's ``ManagedIdentityClient`` has no
  Cloud Shell protocol (it would fall through to IMDS), so this host goes through
  azure-identity's ``ManagedIdentityCredential``, which speaks it.
* AKS workload identity: ``AZURE_FEDERATED_TOKEN_FILE`` + ``AZURE_TENANT_ID`` +
  ``AZURE_AUTHORITY_HOST`` (azure-identity's ``ManagedIdentityCredential`` takes its
  ``WorkloadIdentityCredential`` there; MSAL's client has no such branch). The pod's identity is
  the one ``AZURE_CLIENT_ID`` names, not one the node's IMDS has: a client-credentials request
  to Entra with the token file as the client assertion, as ``AppCredential(federated_token_file=
  ...)`` does for an app.
* otherwise IMDS (VMs, VM scale sets, AKS nodes): ``http://169.254.169.254`` or
  ``AZURE_POD_IDENTITY_AUTHORITY_HOST``.

Only a *user-assigned* identity can be a federated credential of an app registration
(https://learn.microsoft.com/entra/workload-id/workload-identity-federation-config-app-trust-managed-identity);
with no selector every host answers with the *system-assigned* identity, so ``OnBehalfOf`` and
``AgentIdentityOnBehalfOf`` refuse a managed identity without one (``require_user_assigned``).
"""

from __future__ import annotations

import calendar
import json
import logging
import os
import random
import re
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .. import _env
from .._checks import seconds
from .._errors import (
    GUID,
    ConfigurationError,
    EntraPassthroughError,
    SourceUnavailable,
    TokenAcquisitionError,
    code_in_body,
    first_code,
    safe_text,
)
from .._http import (
    DEFAULT_TIMEOUTS,
    MAX_SECONDS,
    SHARED_THROTTLE,
    TIMEOUT_VARIABLES,
    GuardedHttpClient,
    OAuthAnswer,
    Timeouts,
    TransportFailure,
    backoff_pause,
    check_timeouts,
    current_deadline,
    deadline,
    following,
    size_pool,
    trust_error,
)
from .._msal import MissingExpiry, NullTokenCache, UnreadableExpiry, WorkerPool
from .._types import IdentityKind, TokenRequest, TokenResult
from ._base import raised_in, result_from_msal, unreachable

logger = logging.getLogger("entra_passthrough.managed_identity")

#: Who a transport failure names: the host's endpoint, not Entra, answers (or stalls) here.
_PEER = "the managed identity endpoint"

_TIMEOUT = 10.0
_MAX_WORKERS = 4
#: Managed identity tokens live ~24 h; the assertion copy is never used this close to expiry.
_MARGIN = 300.0
#: A token living at least this long is renewed at half its life (MSAL's and azure-identity's
#: ``refresh_in`` for managed identity tokens); a shorter one ``_REFRESH_AHEAD`` before the
#: margin. Renewing ahead, by one caller while the others keep the valid token, means a burst
#: that arrives later finds a fresh token instead of all waiting on the endpoint.
_HALF_LIFE_FROM = 7200.0
_REFRESH_AHEAD = 300.0
#: The most resources ``token_for_resource`` keeps a token and a flight lock for (one per
#: cloud's federation audience in practice).
_MAX_RESOURCES = 16


def _usable(result: TokenResult, now: float) -> bool:
    return result.expires_on - _MARGIN > now


def _refresh_at(result: TokenResult, now: float) -> float:
    """When a cached assertion token is renewed ahead of need (see ``_HALF_LIFE_FROM``)."""
    lifetime = result.expires_on - now
    if lifetime >= _HALF_LIFE_FROM:
        return now + lifetime / 2
    return max(now, result.expires_on - _MARGIN - _REFRESH_AHEAD)


#: The host names ``detect_host`` returns (what ``repr`` and errors show).
HOSTS = (
    "service_fabric",
    "app_service",
    "machine_learning",
    "azure_arc",
    "cloud_shell",
    "workload_identity",
    "imds",
)

#: The variables the AKS workload identity webhook injects that make a pod a workload identity
#: host (azure-identity's ``WORKLOAD_IDENTITY_VARS``; ``AZURE_CLIENT_ID`` names the identity).
WORKLOAD_IDENTITY_VARIABLES = (
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
)


#: Which user-assigned selectors each host's protocol carries. A selector a host does not carry
#: is dropped on the way (MSAL sends Machine Learning's 2017-09-01 API only ``clientid``, and
#: Service Fabric nothing), and the host answers with *another* identity (its system-assigned
#: one); azure-identity refuses selectors on Service Fabric and Cloud Shell for that reason
#: (azure/identity/_credentials/service_fabric.py, cloud_shell.py). The library refuses them
#: all before any request. Azure Arc carries all three; MSAL refuses a token whose identity the
#: Arc agent did not confirm (an agent that serves only the machine's system-assigned identity).
SELECTORS_BY_HOST: dict[str, tuple[str, ...]] = {
    "app_service": ("client_id", "object_id", "resource_id"),
    "imds": ("client_id", "object_id", "resource_id"),
    "azure_arc": ("client_id", "object_id", "resource_id"),
    "machine_learning": ("client_id",),
    # The identity is an app (or user-assigned identity) Entra knows by its client id alone.
    "workload_identity": ("client_id",),
    "service_fabric": (),
    "cloud_shell": (),
}

HOST_NAMES = {
    "app_service": "App Service / Functions / Container Apps",
    "imds": "IMDS (VMs, scale sets, AKS nodes)",
    "azure_arc": "Azure Arc",
    "machine_learning": "Azure Machine Learning (MSI_ENDPOINT + MSI_SECRET)",
    "workload_identity": "AKS workload identity (AZURE_FEDERATED_TOKEN_FILE)",
    "service_fabric": "Service Fabric",
    "cloud_shell": "Cloud Shell",
}


#: The variables each host sets for its managed identity endpoint (what a refusal may be about).
_HOST_VARIABLES = {
    "app_service": "IDENTITY_ENDPOINT and IDENTITY_HEADER",
    "machine_learning": "MSI_ENDPOINT and MSI_SECRET",
    "service_fabric": "IDENTITY_ENDPOINT, IDENTITY_HEADER and IDENTITY_SERVER_THUMBPRINT",
    "azure_arc": "IDENTITY_ENDPOINT and IMDS_ENDPOINT",
    "cloud_shell": "MSI_ENDPOINT",
    "workload_identity": "AZURE_FEDERATED_TOKEN_FILE, AZURE_TENANT_ID and AZURE_AUTHORITY_HOST",
    "imds": "",
}


#: The variables whose presence names a host (``detect_host``): any of them set while the
#: host is still IMDS is half a host's set.
_HOST_MARKERS = (
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "AZURE_FEDERATED_TOKEN_FILE",
)

#: The transport failures of a request that nothing answered (refused, timed out, cut).
_NO_ANSWER = frozenset({"connection", "timeout", "deadline"})


def _imds_address() -> str:
    """Where MSAL sends an IMDS request: ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` if set, else
    169.254.169.254 (msal/managed_identity.py). Only its scheme, host and port are shown."""
    raw = os.environ.get("AZURE_POD_IDENTITY_AUTHORITY_HOST")
    if raw is None:
        return "http://169.254.169.254"
    try:
        parts = urlsplit(raw.strip())
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or not parts.scheme or not parts.hostname:
        return "the address in AZURE_POD_IDENTITY_AUTHORITY_HOST"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    shown = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    return f"{safe_text(shown, 120)} (AZURE_POD_IDENTITY_AUTHORITY_HOST)"


def _msal_goes_to_imds() -> bool:
    """MSAL's own detection ends at IMDS too (it also finds Azure Arc by the agent's files)."""
    from msal.managed_identity import DEFAULT_TO_VM, get_managed_identity_source

    return bool(get_managed_identity_source() is DEFAULT_TO_VM)


#: The variable holding each host's identity endpoint URL.
_ENDPOINT_VARIABLES = {"machine_learning": "MSI_ENDPOINT", "cloud_shell": "MSI_ENDPOINT"}


def _unsupported_selector(host: str, kind: str) -> tuple[str, str]:
    """(message, fix) for a selector the host cannot carry."""
    carried = SELECTORS_BY_HOST[host]
    if not carried:
        why = (
            "the application's identity is configured in the cluster, not selected per request"
            if host == "service_fabric"
            else "it has only the signed-in user's identity"
        )
        return (
            f"ManagedIdentity got {kind}, but {HOST_NAMES[host]} cannot select a user-assigned "
            f"identity ({why}): the request would be answered with another identity.",
            "unset AZURE_CLIENT_ID and pass no client_id/object_id/resource_id on this host; "
            "where a federated credential needs a user-assigned identity, use a host that "
            "selects one (App Service, Container Apps, a VM, AKS) or a certificate.",
        )
    if host == "workload_identity":
        return (
            f"ManagedIdentity got {kind}, but {HOST_NAMES[host]} authenticates as an identity "
            "named by its client id (a client-credentials request to Entra): it cannot select "
            f"one by {kind}.",
            "select the identity by client_id (AZURE_CLIENT_ID for from_env(); the AKS webhook "
            "sets it from the service account's azure.workload.identity/client-id annotation).",
        )
    return (
        f"ManagedIdentity got {kind}, but {HOST_NAMES[host]} selects a user-assigned identity "
        f"only by {' or '.join(carried)}: the {kind} would be dropped and the request answered "
        "with the host's system-assigned identity.",
        f"select the identity by {' or '.join(carried)} (AZURE_CLIENT_ID for from_env()).",
    )


def scope_to_resource(scopes: tuple[str, ...]) -> str:
    if len(scopes) != 1:
        # Nothing was sent: a configuration mistake, not an answer from Entra.
        raise TokenAcquisitionError(
            f"A managed identity (or developer CLI) token is for one resource, and {len(scopes)} "
            "scopes were asked for; nothing was sent.",
            scopes=scopes,
            fix="pass exactly one '<resource>/.default' scope (a managed identity has no "
            "per-scope consent: its token carries every role granted to it on that resource)",
        )
    scope = scopes[0]
    if scope.strip().lower().endswith("/.default"):
        # "/.DEFAULT", or a space pasted after it, too: the resource's every-role scope all the
        # same (Entra reads scope names without regard to case); its resource, not a
        # "permission named .default".
        return scope.strip()[: -len("/.default")]
    named = _named_permission(scope)
    if named is not None:
        # Sent as the resource, it is answered AADSTS500011 "resource not found": the wrong
        # cause (the API exists). Nothing was sent.
        resource, permission = named
        shown = safe_text(scope, 200)
        raise ConfigurationError(
            f"A managed identity (or developer CLI) token is for a whole resource, and the "
            f"scope '{shown}' names one permission ('{safe_text(permission, 100)}') of the "
            "resource; nothing was sent.",
            fix=f"pass the one scope '{safe_text(resource, 200)}/.default' ('<resource>/.default': "
            "a managed identity has no delegated permissions, its token carries every app role "
            "granted to it on that resource; a developer CLI's carries what the user consented "
            f"to). If '{shown}' is itself the resource's App ID URI, pass '{shown}/.default'.",
        )
    return scope


#: Microsoft Graph's hosts (each cloud's): its resource is the host alone, so a path after it
#: is one of its permissions (``https://graph.microsoft.com/User.Read``).
_GRAPH_HOSTS = frozenset(
    {
        "graph.microsoft.com",
        "canary.graph.microsoft.com",
        "graph.microsoft.us",
        "dod-graph.microsoft.us",
        "microsoftgraph.chinacloudapi.cn",
    }
)


def _named_permission(scope: str) -> tuple[str, str] | None:
    """``(resource, permission)`` when ``scope`` (not ending in ``/.default``) is a resource's
    named permission, which no managed identity endpoint serves; ``None`` when it can be a
    resource, as azure-identity's ``ManagedIdentityCredential`` sends it (only ``/.default`` is
    stripped): ``https://vault.azure.net``, ``https://management.azure.com/``, a client id,
    ``api://<app>``, and an App ID URI with a path (``https://contoso.com/api``,
    ``https://analysis.windows.net/powerbi/api``), which cannot be told from a permission.

    Named permissions: ``<client id GUID>/<name>`` (a GUID has no path);
    ``api://<x>/<name>`` whose last segment is not a GUID (the App ID URI forms Entra accepts
    have at most one segment after ``api://<x>``, and then it is an app's GUID or follows the
    tenant's GUID: ``api://<tenant id>/<name>`` reads as a permission here, and its fix says to
    add ``/.default`` to it); a path after Microsoft Graph's host."""
    scheme, separator, rest = scope.partition("://")
    if not separator:
        head, slash, name = scope.partition("/")
        if slash and name.strip("/") and GUID.fullmatch(head):
            return head, name
        return None
    host, _, path = rest.partition("/")
    segments = [part for part in path.split("/") if part]
    if not host or not segments:
        return None
    resource = scope.rstrip("/").rpartition("/")[0]
    if scheme.lower() == "api":
        if len(segments) == 1 and GUID.fullmatch(segments[0]):
            return None
        return resource, segments[-1]
    if scheme.lower() in ("https", "http") and host.lower() in _GRAPH_HOSTS:
        return resource, segments[-1]
    return None


def detect_host(environ: Mapping[str, str] | None = None) -> str:
    """The managed identity host the environment describes, in MSAL's order of detection."""
    env = os.environ if environ is None else environ
    if "IDENTITY_ENDPOINT" in env and "IDENTITY_HEADER" in env:
        return "service_fabric" if "IDENTITY_SERVER_THUMBPRINT" in env else "app_service"
    if "MSI_ENDPOINT" in env:
        return "machine_learning" if "MSI_SECRET" in env else "cloud_shell"
    if "IDENTITY_ENDPOINT" in env and "IMDS_ENDPOINT" in env:
        return "azure_arc"
    # azure-identity's order: after every host that sets an endpoint, before IMDS. On an AKS
    # workload identity pod the node's IMDS does not know the pod's identity ("Identity not
    # found").
    if all(env.get(name) for name in WORKLOAD_IDENTITY_VARIABLES):
        return "workload_identity"
    return "imds"


def _workload_settings(env: Mapping[str, str]) -> tuple[str | None, str, str, str]:
    """(``AZURE_CLIENT_ID``, token file, tenant, authority host) of a workload identity host."""
    client_id = env.get("AZURE_CLIENT_ID") or None
    token_file, tenant, authority = (env.get(name, "") for name in WORKLOAD_IDENTITY_VARIABLES)
    return client_id, token_file, tenant, authority


def _msal_refused(
    exc: ValueError, *, host: str, user_assigned: bool, source: str, scopes: tuple[str, ...]
) -> SourceUnavailable:
    text = safe_text(str(exc), 300)
    if host == "azure_arc" and user_assigned:
        fix = (
            "this Azure Arc agent serves only the machine's system-assigned identity: update "
            "the Connected Machine agent to a version that serves user-assigned identities; or, "
            "where the system-assigned identity will do, unset AZURE_CLIENT_ID (pass no "
            "selector). An app's federated credential must be user-assigned: with this agent, "
            "give the app a client secret or certificate instead "
            "(ENTRA_PASSTHROUGH_CLIENT_SECRET or ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH)."
        )
    else:
        fix = f"check the variables {HOST_NAMES[host]} sets (docs/sources-and-policy.md)."
    return SourceUnavailable(
        f"MSAL refused the managed identity request on {HOST_NAMES[host]}: {text}",
        source=source,
        scopes=scopes,
        fix=fix,
    )


#: The fields of an identity endpoint's JSON error body kept for a message: the hosts' own
#: (App Service ``statusCode``/``message``, IMDS and Container Apps ``error``/
#: ``error_description``). Never a token field.
_ERROR_FIELDS = ("error", "code", "error_description", "message", "Message", "detail")


class _Answers:
    """The identity endpoint's HTTP client (the guarded one) as MSAL is given it, remembering
    per thread the status of the last answer and the text fields of an error answer's JSON body.

    MSAL rewords the answers it parses: App Service's error as "<statusCode>, <message>"
    ("None, None" for an ``{"error", "error_description"}`` body), and an IMDS body with neither
    a token nor ``error`` comes back with no status at all. What the host said is read here
    instead. The guarded client has already dropped any token field from an error answer."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._local = threading.local()

    def forget(self) -> None:
        self._local.answer = None
        self._local.token = False

    def last(self) -> tuple[int, dict[str, str]] | None:
        """(HTTP status, the error body's text fields) of this thread's last answer."""
        answer: tuple[int, dict[str, str]] | None = getattr(self._local, "answer", None)
        return answer

    def carried_token(self) -> bool:
        """Whether this thread's last answer was a 2xx whose JSON body had an access token
        (MSAL's error for such an answer is its own: an expiry it could not read)."""
        return bool(getattr(self._local, "token", False))

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._remember(self.client.get(*args, **kwargs))

    def post(self, *args: Any, **kwargs: Any) -> Any:
        return self._remember(self.client.post(*args, **kwargs))

    def close(self) -> None:
        self.client.close()

    def _remember(self, response: Any) -> Any:
        status = int(getattr(response, "status_code", 0) or 0)
        token = False
        if 200 <= status < 300:
            body = _json_object(response)
            token = body is not None and _has_token(body)
            if token and body is not None and _boolean_expiry(body):
                raise UnreadableExpiry
            response = _with_epoch_expiry(response, body)
        fields: dict[str, str] = {}
        if status >= 300:
            try:
                body = json.loads(getattr(response, "text", "") or "")
            except (TypeError, ValueError):
                body = None
            if isinstance(body, dict):
                fields = {
                    k: body[k][:2000]
                    for k in _ERROR_FIELDS
                    if isinstance(body.get(k), str) and body[k].strip()
                }
        self._local.answer = (status, fields)
        self._local.token = token
        return response


#: The date formats of ``expires_on`` in App Service's 2017-09-01 API (``MSI_ENDPOINT`` +
#: ``MSI_SECRET``), always UTC (" +00:00"): Linux "06/20/2019 02:57:58", Windows
#: "1/16/2020 5:24:12 AM".
_DATE_FORMATS = ("%m/%d/%Y %H:%M:%S", "%m/%d/%Y %I:%M:%S %p")
_UTC_SUFFIX = " +00:00"


def epoch_from_date(value: object) -> int | None:
    """Epoch seconds of an ``expires_on`` that is the 2017-09-01 API's date string, else
    ``None``. Parsed as azure-identity parses it (``azure/identity/_credentials/azure_ml.py``,
    ``_parse_expires_on``: "App Service MSI version 2017-09-01 ... returns expires_on as a UTC
    datetime string rather than epoch seconds"): the same two formats, the same UTC suffix."""
    if not isinstance(value, str) or len(value) > 64 or not value.endswith(_UTC_SUFFIX):
        return None
    date = value[: -len(_UTC_SUFFIX)]
    for layout in _DATE_FORMATS:
        try:
            return calendar.timegm(time.strptime(date, layout))
        except ValueError:
            continue
    return None


def _json_object(response: Any) -> dict[str, Any] | None:
    """The JSON object a 2xx answer's body holds (at most 64 KiB), else ``None``."""
    text = getattr(response, "text", None)
    if not isinstance(text, str) or len(text) > 65_536:
        return None
    try:
        body = json.loads(text)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _has_token(body: Mapping[str, Any]) -> bool:
    token = body.get("access_token")
    return isinstance(token, str) and bool(token)


#: The fields of a token answer MSAL reads as seconds with ``int()``.
_EXPIRY_FIELDS = ("expires_in", "expires_on", "refresh_in")


def _boolean_expiry(body: Mapping[str, Any]) -> bool:
    """Whether a token answer gives an expiry as a JSON boolean, which MSAL's ``int()`` reads
    as 1 (``expires_in: true``: a token good for one second, asked for again on every call;
    ``expires_on: true``: a token that expired in 1970). No host sends it: a broken endpoint
    or proxy does, and its answer is malformed."""
    return any(isinstance(body.get(name), bool) for name in _EXPIRY_FIELDS)


def _with_epoch_expiry(response: Any, body: Mapping[str, Any] | None) -> Any:
    """``response`` (a 2xx of an identity endpoint, ``body`` its JSON object), or the same
    answer with a date-string ``expires_on`` (``epoch_from_date``) in epoch seconds: MSAL
    takes ``int(expires_on)``, which refuses the date, and no token would ever be had on such a
    host."""
    if body is None:
        return response
    epoch = epoch_from_date(body.get("expires_on"))
    if epoch is None:
        return response
    return OAuthAnswer(response, json.dumps({**body, "expires_on": epoch}))


def _host_said(status: int, fields: Mapping[str, str]) -> str:
    """An identity endpoint's error as MSAL words App Service's ("<status>, <text>", which
    ``error_from_entra`` shows as "HTTP <status>. It said: ..."), from the body's own fields."""
    text = next(
        (fields[k] for k in ("error_description", "message", "Message", "detail") if k in fields),
        "",
    )
    said = ": ".join(part for part in (fields.get("error") or fields.get("code"), text) if part)
    # A body with none of those fields ({}, {"detail": ...}, a token alone, dropped): MSAL
    # would show "None, None"; the status is what the host said.
    return f"{status}, {said or 'no error message'}"


#: What a 200 with a token but no expiry MSAL can read lacks (the hosts send ``expires_on``;
#: IMDS and Azure Arc ``expires_in``).
_NO_EXPIRY = "but no usable expiry (expires_on / expires_in missing, 0 or empty)"

#: IMDS's answers while it is being updated (retried up to the deadline: ``_imds_request``).
_IMDS_UPDATING = frozenset({404, 410})
#: The longest pause between two of them: IMDS is local, and back within 70 s.
_IMDS_MAX_BACKOFF = 5.0
_JITTER = random.Random()  # noqa: S311 - backoff jitter, not a secret


class _ImdsUpdating(Exception):
    """IMDS still answered 404/410 when the deadline left no time for another request."""

    def __init__(self, status: int, attempts: int, waited: float) -> None:
        super().__init__(status)
        self.status = status
        self.attempts = attempts
        self.waited = waited


class _NoHttpCache(dict[str, Any]):
    """MSAL's throttling cache, kept empty: a retry after a fix is always a real request."""

    def __setitem__(self, key: str, value: Any) -> None:
        return None


def _endpoint_problem(endpoint: object, header: object) -> str | None:
    """What makes an explicit endpoint and header unusable, before any request is made."""
    if not isinstance(endpoint, str):
        return "is not a string"
    if not isinstance(header, str):
        return "has a header value that is not a string"
    parts = urlsplit(endpoint.strip())
    if parts.scheme.lower() not in ("http", "https"):
        return "is not an http:// or https:// URL"
    try:
        host, _ = parts.hostname, parts.port
    except ValueError:
        return "has a port that is not a number"
    if not host:
        return "names no host"
    if not header.strip():
        return "has an empty header value"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in header):
        return "has a header value with control characters (a line break?)"
    return None


def _selector_value(value: Any) -> Any:
    """A selector as it is checked and sent: a ``uuid.UUID`` as its text, a string without
    surrounding spaces (``None`` when nothing is left); anything else as given (refused)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        return value.strip() or None
    return value


#: A user-assigned identity's Azure resource id, as ARM writes it (any case).
_RESOURCE_ID = re.compile(
    r"/subscriptions/[0-9a-fA-F-]{36}/resourcegroups/[^/\s]{1,90}/providers/"
    r"microsoft\.managedidentity/userassignedidentities/[^/\s]{1,128}",
    re.IGNORECASE,
)


class ManagedIdentity:
    """The managed identity of the host, ``kind=app``, through MSAL's ``ManagedIdentityClient``.

    Works on every host MSAL (and, for Cloud Shell, azure-identity) supports: App Service,
    Functions, Container Apps, VMs and AKS (IMDS), Azure Arc, Service Fabric, Azure Machine
    Learning, Cloud Shell; the host is detected from the variables it sets. No selector means
    the host's *system-assigned* identity; ``client_id``, ``object_id`` or ``resource_id``
    (exactly one) select a *user-assigned* identity. Calls run in a bounded worker pool; MSAL's
    own token cache is off (the chain's ``TokenCache`` caches the results).

    ``endpoint``/``header`` name an App Service-shaped endpoint explicitly instead of
    ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` in the process environment (a sidecar, tests); the
    request is still MSAL's.

    >>> mi = ManagedIdentity(client_id="<user-assigned-mi-client-id>")
    >>> chain = TokenChain([mi], policy=Policy.APP_ONLY)
    """

    kind = IdentityKind.APP

    def __init__(
        self,
        *,
        client_id: str | None = None,
        object_id: str | None = None,
        resource_id: str | None = None,
        endpoint: str | None = None,
        header: str | None = None,
        http_client: Any = None,
        max_workers: int = _MAX_WORKERS,
        timeout: float = _TIMEOUT,
        timeouts: Timeouts | None = None,
        name: str = "managed_identity",
    ) -> None:
        # "10" ended in a TypeError inside Timeouts, NaN in an error naming Timeouts.read, and
        # timeouts=5 failed at every request.
        timeout = seconds(timeout, what="timeout", low=0, high=MAX_SECONDS, above_low=True)
        timeouts = check_timeouts(timeouts)
        # As sent: a uuid.UUID as its text, a pasted id without its spaces or newline.
        client_id, object_id, resource_id = map(
            _selector_value, (client_id, object_id, resource_id)
        )
        selectors = {
            "client_id": client_id,
            "object_id": object_id,
            "resource_id": resource_id,
        }
        given = [key for key, value in selectors.items() if value]
        if len(given) > 1:
            raise ConfigurationError(
                f"ManagedIdentity got {' and '.join(given)}; a user-assigned identity is "
                "selected by exactly one of client_id, object_id or resource_id.",
                fix="pass only one selector (AZURE_CLIENT_ID for from_env()).",
            )
        for key in ("client_id", "object_id"):
            value = selectors[key]
            if value and (not isinstance(value, str) or GUID.fullmatch(value) is None):
                # Not shown: a secret pasted into AZURE_CLIENT_ID (swapped with
                # AZURE_CLIENT_SECRET) was echoed in repr, errors and the request's URL.
                raise ConfigurationError(
                    f"ManagedIdentity's {key} is not a GUID (the value is not shown): a "
                    f"user-assigned identity's {key.replace('_', ' ')} is one.",
                    fix=f"pass the identity's {key.replace('_', ' ')} (a GUID: Azure portal > "
                    "Managed Identities > the identity > Overview)"
                    + (
                        "; for from_env(), AZURE_CLIENT_ID is the identity's client id"
                        if key == "client_id"
                        else ""
                    )
                    + ".",
                )
        if resource_id and (
            not isinstance(resource_id, str) or _RESOURCE_ID.fullmatch(resource_id) is None
        ):
            raise ConfigurationError(
                "ManagedIdentity's resource_id is not an Azure resource id (the value is not "
                "shown).",
                fix="pass the identity's resource id: /subscriptions/<subscription>/"
                "resourceGroups/<group>/providers/Microsoft.ManagedIdentity/"
                "userAssignedIdentities/<name>.",
            )
        if (endpoint is None) != (header is None):
            raise ConfigurationError(
                "ManagedIdentity needs both endpoint and header (IDENTITY_ENDPOINT and "
                "IDENTITY_HEADER), or neither.",
                fix="set both variables (App Service and Container Apps set them for you), or "
                "neither to let MSAL detect the host.",
            )
        if endpoint is not None and header is not None:
            problem = _endpoint_problem(endpoint, header)
            if problem is not None:
                # Neither value is shown: the header is a secret, and either may be one pasted
                # into the wrong variable.
                raise ConfigurationError(
                    f"the managed identity endpoint (IDENTITY_ENDPOINT / IDENTITY_HEADER) "
                    f"{problem}: every token request would fail as if the endpoint were down.",
                    fix="leave IDENTITY_ENDPOINT and IDENTITY_HEADER as the host sets them (App "
                    "Service and Container Apps: http://localhost:<port>/msi/token or similar, "
                    "and a header value), or unset both to let MSAL detect the host.",
                )
        self.name = name
        self.client_id = client_id or None
        self.object_id = object_id or None
        self.resource_id = resource_id or None
        self.endpoint = endpoint
        self._header = header
        self.timeout = timeout
        # Every request MSAL sends goes through the guarded layer (docs/reliability.md):
        # connect/read timeouts, a deadline per acquisition, retries with backoff for 429/5xx
        # and resets, Retry-After honoured per endpoint for the whole process (a 429 or 503 is
        # ``Throttled`` / ``SourceUnavailable``, not an undecoded error).
        self.timeouts = timeouts or Timeouts(
            connect=min(DEFAULT_TIMEOUTS.connect, timeout), read=timeout
        )
        self._throttle = SHARED_THROTTLE
        self._http_client = http_client
        self._owns_http = http_client is None
        self._guarded: GuardedHttpClient | None = None
        self._answers: _Answers | None = None
        # Service Fabric: (endpoint, thumbprint) and the guarded certificate-pinning session.
        self._fabric: tuple[tuple[str, str], GuardedHttpClient] | None = None
        self._pool = WorkerPool(max_workers=max_workers, name=f"entra-{name}", default=_MAX_WORKERS)
        self._lock = threading.Lock()
        # token_for_resource: resource -> (token, when to renew it ahead), and one flight lock
        # per resource so that one request per resource is on the wire at a time.
        self._tokens: dict[str, tuple[TokenResult, float]] = {}
        self._flights: dict[str, threading.Lock] = {}
        self._msal_client: Any = None
        self._cloud_shell: Any = None
        # Workload identity: the settings from_env() read (else os.environ's, per request) and
        # the confidential client built for them (key, app); its own lock, as its build fetches
        # the tenant's discovery document.
        self._workload: tuple[str | None, str, str, str] | None = None
        self._workload_app: tuple[tuple[str, ...], Any] | None = None
        self._workload_lock = threading.Lock()
        self._instance = secrets.token_hex(8)
        self.check_host()

    @property
    def selector(self) -> tuple[str, str] | None:
        """``(kind, value)`` of the user-assigned selector, ``None`` for system-assigned."""
        for key in ("client_id", "object_id", "resource_id"):
            value = getattr(self, key)
            if value:
                return key, value
        return None

    @property
    def user_assigned(self) -> bool:
        return self.selector is not None

    @property
    def host(self) -> str:
        """The host this identity's requests go to (``app_service`` when an endpoint is given,
        ``workload_identity`` when ``from_env`` read a workload identity's variables)."""
        if self.endpoint is not None:
            return "app_service"
        if self._workload is not None:
            return "workload_identity"
        return detect_host()

    def check_host(self, scopes: tuple[str, ...] | None = None) -> None:
        """Refuse a selector the host the environment describes cannot carry (see
        ``SELECTORS_BY_HOST``), so that a selector is never dropped and another identity
        answered: ``ConfigurationError`` at construction, ``SourceUnavailable`` before a
        request (``scopes`` given) if the environment changed since."""
        selector = self.selector
        host = self.host
        named = self._workload_settings()[0] if host == "workload_identity" else None
        if selector is None and named and GUID.fullmatch(named.strip()) is None:
            # Read from os.environ for each request: a secret pasted there would be sent as
            # the client id. Not shown.
            message = (
                "This host is an AKS workload identity pod, and AZURE_CLIENT_ID is not a GUID "
                "(the value is not shown): it names the identity by its client id."
            )
            fix = (
                "set AZURE_CLIENT_ID to the identity's client id (the webhook sets it from the "
                "service account's azure.workload.identity/client-id annotation), or pass "
                "ManagedIdentity(client_id=...)."
            )
            if scopes is None:
                raise ConfigurationError(message, fix=fix)
            raise SourceUnavailable(message, source=self.name, scopes=scopes, fix=fix)
        if host == "workload_identity" and selector is None and not self._workload_settings()[0]:
            # azure-identity's ManagedIdentityCredential refuses this too (ValueError).
            message = (
                "This host is an AKS workload identity pod (AZURE_FEDERATED_TOKEN_FILE, "
                "AZURE_TENANT_ID and AZURE_AUTHORITY_HOST are set), but no identity is named: "
                "AZURE_CLIENT_ID is not set and no client_id was passed."
            )
            fix = (
                "annotate the pod's service account with azure.workload.identity/client-id "
                "(the webhook then sets AZURE_CLIENT_ID), or pass ManagedIdentity(client_id=...)."
            )
            if scopes is None:
                raise ConfigurationError(message, fix=fix)
            raise SourceUnavailable(message, source=self.name, scopes=scopes, fix=fix)
        if selector is None:
            return
        if selector[0] not in SELECTORS_BY_HOST[host]:
            message, fix = _unsupported_selector(host, selector[0])
            if scopes is None:
                raise ConfigurationError(message, fix=fix)
            raise SourceUnavailable(message, source=self.name, scopes=scopes, fix=fix)

    def require_user_assigned(
        self, owner: str, *, instead: str = "client_secret= or client_certificate="
    ) -> None:
        """Raise ``ConfigurationError`` (before any request) unless a user-assigned identity is
        selected: only user-assigned identities can be federated credentials of an app.
        ``instead`` names the other credentials, for a host that cannot select one."""
        if self.user_assigned:
            return
        host = self.host
        if not SELECTORS_BY_HOST[host]:
            # "Set AZURE_CLIENT_ID" would be refused next (check_host): the way out is another
            # credential, not a selector.
            raise ConfigurationError(
                f"{owner} uses a managed identity as its federated credential, but "
                f"{HOST_NAMES[host]} cannot select a user-assigned identity, and only a "
                "user-assigned identity can be a federated credential of an app registration.",
                fix=f"give the app a client secret or certificate instead ({instead}), or run "
                "it on a host that selects a user-assigned identity (App Service, Container "
                "Apps, a VM, AKS).",
            )
        raise ConfigurationError(
            f"{owner} uses a managed identity as its federated credential, but no user-assigned "
            "identity is selected: with no selector the host answers with its system-assigned "
            "identity, which cannot be a federated credential of an app registration (Entra "
            "answers AADSTS700213: no federated credential names its subject).",
            fix="set AZURE_CLIENT_ID to the client id of the user-assigned managed identity "
            "configured as the app's federated credential (or pass "
            "ManagedIdentity(client_id=...)); scripts/tenant-setup.sh creates both."
            + (
                # An Arc agent that serves only the system-assigned identity refuses the
                # selector next: say where that leads instead of sending the user back here.
                " On Azure Arc this needs a Connected Machine agent that serves user-assigned "
                f"identities; with one that does not, give the app a client secret or "
                f"certificate instead ({instead})."
                if host == "azure_arc"
                else ""
            ),
        )

    def __repr__(self) -> str:
        selector = self.selector
        who = f"{selector[0]}={selector[1]!r}" if selector else "system-assigned"
        return f"ManagedIdentity(name={self.name!r}, {who}, host={self.host})"

    def close(self) -> None:
        """Stop the worker threads and close the HTTP session this source created."""
        self._pool.close()
        with self._lock:
            fabric, self._fabric = self._fabric, None
        if fabric is not None:
            fabric[1].close()  # the pinned session is always this source's own
        if self._cloud_shell is not None:
            self._cloud_shell.close()
            self._cloud_shell = None
        with self._workload_lock:
            workload, self._workload_app = self._workload_app, None
        if workload is not None and self._owns_http:
            workload[1].http_client.close()  # a given http_client is its owner's to close
        if self._owns_http:
            if self._guarded is not None:
                self._guarded.close()  # closes the session it created
                self._guarded = None
                self._answers = None
            if self._http_client is not None:
                self._http_client.close()
                self._http_client = None

    # -- TokenSource ----------------------------------------

    def explain(self, request: TokenRequest) -> str:
        return "not applicable"

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        selector = self.selector
        if selector is not None:
            return (selector[1],)  # names the identity: every replica may share its tokens
        # "The host's own identity" is a different identity on every host: a constant would let
        # a shared token cache (L2) serve one deployment's token to another sharing its Redis.
        # A per-instance tag keeps them apart (replicas then do not share it either: a token
        # from the local identity endpoint costs little).
        return ("system-assigned", self._instance)

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        with self._pool.exchanges():  # in the caller's thread: close() cuts it too
            return self._fetch(request.scopes)

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None:
        await self._pool.pace()
        # The caller's deadline, taken now: a job that waited in the pool's queue has only what
        # is left of it (it used to start a fresh one, and send after its caller had gone).
        end = time.monotonic() + self.timeouts.deadline
        try:
            # The worker ends each request at the deadline; this bounds the wait even so (as
            # OnBehalfOf does): an async caller never waits longer than the deadline.
            return await self._pool.run(
                self._fetch_queued,
                request.scopes,
                end,
                wait_at_most=self.timeouts.deadline + 1.0,
                paced=True,
            )
        except TimeoutError:
            raise unreachable(
                TransportFailure("deadline", peer=_PEER),
                what=f"managed identity token request ({self.host})",
                source=self.name,
                scopes=request.scopes,
            ) from None
        except TransportFailure as exc:  # "closed": close() dropped the call before it ran
            raise unreachable(
                exc,
                what=f"managed identity token request ({self.host})",
                source=self.name,
                scopes=request.scopes,
            ) from None

    #: A job that waited this long for a worker waited for other requests to this endpoint
    #: (every job of the pool asks the same one): it follows their answer (``_http.following``).
    _QUEUED = 0.1

    def _fetch_queued(self, scopes: tuple[str, ...], end: float) -> TokenResult:
        """``_fetch`` in a worker for an async caller whose deadline is ``end``."""
        now = time.monotonic()
        left = end - now
        if left <= 0:
            # Its caller stopped waiting before a worker took the job: nothing is sent.
            raise unreachable(
                TransportFailure("deadline", peer=_PEER),
                what=f"managed identity token request ({self.host})",
                source=self.name,
                scopes=scopes,
            )
        with deadline(left):
            if now - (end - self.timeouts.deadline) < self._QUEUED:
                return self._fetch(scopes)
            # Queued behind busy workers: a 429 they got (the endpoint closed for 2 s) is this
            # job's answer too, not another round to wait out (20 callers, 4 workers: the last
            # waited 18 s, told "retry in 1.9 s").
            with following():
                return self._fetch(scopes)

    def token_for_resource(self, resource: str) -> str:
        """A token for ``resource`` (sync, cached here): the client assertion when this managed
        identity is a federated credential of an app (``OnBehalfOf(managed_identity=...)``).

        Single flight per resource: a cold burst of users (each OBO exchange asks for the
        assertion) sends one request to the identity endpoint, the others wait for its token
        (within their deadline) instead of each sending their own; a throttling endpoint (IMDS
        answers a burst with 429) then costs one caller, not many. A cached token is renewed
        ahead of need by one caller while the others keep using it (``_refresh_at``)."""
        scopes = (f"{resource}/.default",)
        with self._lock:
            entry = self._tokens.get(resource)
            flight = self._flights.get(resource)
            if flight is None:
                if len(self._flights) >= _MAX_RESOURCES:
                    for key in [k for k, lock in self._flights.items() if not lock.locked()]:
                        del self._flights[key]
                flight = self._flights[resource] = threading.Lock()
        now = time.time()
        if entry is not None and _usable(entry[0], now):
            if now < entry[1] or not flight.acquire(blocking=False):
                return entry[0].token  # fresh, or another caller is renewing it
            try:
                with self._lock:
                    current = self._tokens.get(resource)
                if current is not None and time.time() < current[1]:
                    return current[0].token  # renewed while this caller looked
                try:
                    return self._store(resource, self._fetch(scopes)).token
                except EntraPassthroughError as exc:
                    # The token in hand is still valid for a while: use it, and let a later
                    # caller try again (the failure is logged, not raised to this user).
                    logger.warning(
                        "renewing the managed identity token ahead of expiry failed (%s); the "
                        "cached one stays in use until %.0f s before it expires",
                        type(exc).__name__,
                        _MARGIN,
                    )
                    return entry[0].token
            finally:
                flight.release()
        # No usable token: wait for the request in flight, if any, within this call's deadline
        # (an OBO exchange's, else the source's own), then look again before sending one.
        wait = current_deadline(self.timeouts.deadline) - time.monotonic()
        waited = not flight.acquire(blocking=False)
        if waited and (wait <= 0 or not flight.acquire(timeout=wait)):
            raise unreachable(
                TransportFailure("deadline", peer=_PEER),
                what=f"managed identity token request ({self.host})",
                source=self.name,
                scopes=scopes,
            )
        try:
            with self._lock:
                entry = self._tokens.get(resource)
            if entry is not None and _usable(entry[0], time.time()):
                return entry[0].token  # fetched by the caller this one waited for
            if not waited:
                return self._store(resource, self._fetch(scopes)).token
            # The request this caller waited for failed: its answer is this caller's too. An
            # endpoint it closed (a 429, an outage) fails this request at once with the time
            # left; a second round of waiting per queued caller held the last of 20 callers
            # 28 s, one request every 2 s (a 429 without Retry-After).
            with following():
                return self._store(resource, self._fetch(scopes)).token
        finally:
            flight.release()

    def _store(self, resource: str, result: TokenResult) -> TokenResult:
        with self._lock:
            if len(self._tokens) >= _MAX_RESOURCES and resource not in self._tokens:
                self._tokens.clear()
            self._tokens[resource] = (result, _refresh_at(result, time.time()))
        return result

    def _fetch(self, scopes: tuple[str, ...]) -> TokenResult:
        resource = scope_to_resource(scopes)
        self.check_host(scopes)  # the environment may have changed since construction
        host = self.host
        answers = self._answers
        if answers is not None:
            answers.forget()  # this thread's previous request answered something else
        try:
            started = time.time()  # expires_in counts from issuance: _base.result_from_msal
            with deadline(self.timeouts.deadline) as end:
                if host == "imds" and self.endpoint is None:
                    response = self._imds_request(resource, end)
                else:
                    response = self._request(host, resource)
        except _ImdsUpdating as exc:
            raise SourceUnavailable(
                f"The IMDS endpoint is updating / not ready (HTTP {exc.status}): it answered so "
                f"for {exc.waited:.1f} s ({exc.attempts} requests), until the deadline left no "
                "time for another.",
                source=self.name,
                scopes=scopes,
                failure=f"HTTP {exc.status}",
                fix="nothing to configure: IMDS answers 404 or 410 while it is being updated "
                "(Microsoft: available again within 70 s); retry in a minute, or raise "
                "Timeouts(deadline=) to wait it out inside the call. If it persists, "
                + self._not_the_endpoint_fix(host),
            ) from None
        except ConfigurationError:
            raise
        except Exception as exc:
            if isinstance(exc, ValueError) and type(exc).__module__.startswith("msal"):
                # msal.ManagedIdentityError: MSAL refused what the host answered or what it was
                # asked (Azure Arc not confirming a user-assigned identity, a Service Fabric
                # endpoint that is not HTTPS, a malformed thumbprint). Its text is MSAL's own,
                # about the configuration, never a token.
                raise _msal_refused(
                    exc,
                    host=host,
                    user_assigned=self.user_assigned,
                    source=self.name,
                    scopes=scopes,
                ) from None
            if host == "azure_arc" and isinstance(exc, (FileNotFoundError, PermissionError)):
                # Azure Arc's challenge: the key file the agent wrote is readable only by members
                # of the himds group (Linux) or of "Hybrid agent extension applications" / the
                # administrators (Windows) (https://learn.microsoft.com/azure/azure-arc/servers/
                # managed-identity-authentication).
                raise SourceUnavailable(
                    f"Azure Arc's challenge file could not be read ({type(exc).__name__}): this "
                    "process may not read the agent's token folder (/var/opt/azcmagent/tokens).",
                    source=self.name,
                    scopes=scopes,
                    fix="run the process as a member of the himds group on Linux (sudo usermod "
                    "-aG himds <user>), or of the 'Hybrid agent extension applications' group or "
                    "the administrators on Windows.",
                ) from None
            if (
                isinstance(exc, (ValueError, TypeError, OverflowError))
                and raised_in(exc, "msal.managed_identity")
            ) or isinstance(exc, UnreadableExpiry):
                # MSAL's int() of the answer's expires_on / expires_in (the library's own for
                # Service Fabric): a 200 with a token whose expiry is neither a number nor the
                # 2017-09-01 API's date string (``epoch_from_date``, read before MSAL sees it);
                # OverflowError: a number JSON reads as infinity (1e400).
                raise self._malformed(
                    host,
                    scopes,
                    "whose expiry (expires_on / expires_in) is neither a number nor a UTC date "
                    'as the 2017-09-01 API sends it ("1/16/2027 5:24:12 AM +00:00")',
                ) from None
            if isinstance(exc, MissingExpiry):
                raise self._malformed(host, scopes, _NO_EXPIRY) from None
            what = f"managed identity token request ({host})"
            if (
                host == "imds"
                and isinstance(exc, TransportFailure)
                and exc.kind in _NO_ANSWER
                and _msal_goes_to_imds()
            ):
                raise self._no_host(exc, scopes) from None
            raise trust_error(exc, what=what, source=self.name, scopes=scopes) or unreachable(
                exc, what=what, source=self.name, scopes=scopes
            ) from None
        answer = self._answers.last() if self._answers is not None else None
        if not isinstance(response, dict) or (
            "access_token" not in response and not response.get("error")
        ):
            # IMDS's body is handed back as it came: one with neither a token nor "error" (a
            # 404 while IMDS updates, another server at its address) said nothing MSAL reads.
            status, fields = answer if answer is not None else (0, {})
            said = fields.get("error_description") or fields.get("message")
            raise SourceUnavailable(
                f"The managed identity endpoint ({host}) answered"
                + (f" HTTP {status}" if status else "")
                + " without a token or an error code."
                + (f" It said: {safe_text(said, 300)}" if said else ""),
                source=self.name,
                scopes=scopes,
                failure=f"HTTP {status}" if status else "no token",
                fix=(
                    "IMDS answers 404 while it is being updated: nothing to configure if a "
                    "retry in a minute works; if it persists, "
                    if host == "imds" and status == 404
                    else ""
                )
                + self._not_the_endpoint_fix(host),
            )
        if (
            response.get("error")
            and "access_token" not in response
            and answer is not None
            and 200 <= answer[0] < 300
            and self._answers is not None
            and self._answers.carried_token()
        ):
            # A 200 with a token: MSAL's error is its own (App Service and Machine Learning:
            # "invalid_scope" for an expires_on missing, 0 or empty; Azure Arc: "invalid_request"
            # for such an expires_in). Nothing was refused: the answer is malformed.
            raise self._malformed(host, scopes, _NO_EXPIRY)
        if (
            host in ("app_service", "machine_learning")
            and response.get("error")
            and answer is not None
            and answer[0] >= 400
        ):
            # MSAL words these hosts' errors itself: App Service's as "<statusCode>,
            # <message>" ("None, None" for an {"error", "error_description"} body), Machine
            # Learning's as the body's repr. The host's own words, with the HTTP status.
            response = {**response, "error_description": _host_said(*answer)}
        if response.get("error") and first_code(response) is None:
            # MSAL rewords the hosts' error bodies ("500, AADSTS500011: ..." for App Service,
            # the body's text for Machine Learning and Service Fabric) and azure-identity's
            # Cloud Shell text quotes it: the AADSTS code they carry is decoded as Entra's own.
            code = code_in_body(response)
            if code is not None:
                response = {**response, "error_codes": [code]}
        if host == "workload_identity":
            # Entra answered, not a host endpoint: an AADSTS code carries its own fix
            # (700213: no federated credential names this service account).
            return result_from_msal(
                response,
                kind=IdentityKind.APP,
                source=self.name,
                scopes=scopes,
                started=started,
                fix="check that the identity AZURE_CLIENT_ID names has a federated identity "
                "credential for this pod's service account (the cluster's OIDC issuer, subject "
                "system:serviceaccount:<namespace>:<name>), and that the resource exists",
            )
        selector = self.selector
        variables = _HOST_VARIABLES[host]  # ``self.host``: app_service when an endpoint is given
        if selector:
            identity = (
                f"that the user-assigned identity ({selector[0]} {selector[1]}) is assigned to "
                "this host (Identity > User assigned)"
            )
        elif host == "cloud_shell":
            # Cloud Shell's identity is the signed-in user's; a selector is refused there.
            identity = "that you are signed in to Cloud Shell (its token is the signed-in user's)"
        elif not SELECTORS_BY_HOST[host]:
            identity = "that the application has a managed identity in the cluster"
        else:
            identity = (
                "that the host's system-assigned identity is enabled (Identity > System "
                "assigned), or select a user-assigned identity assigned to it (AZURE_CLIENT_ID)"
            )
        return result_from_msal(
            response,
            kind=IdentityKind.APP,
            source=self.name,
            scopes=scopes,
            who=f"The managed identity endpoint ({host})",
            started=started,
            fix=(
                f"check {variables} (the host sets {'them' if ' and ' in variables else 'it'}), "
                if variables
                else "check "
            )
            + f"{identity}, and that the resource exists"
            + (
                # IMDS refuses a request that carries X-Forwarded-For (one a proxy sent on):
                # https://learn.microsoft.com/azure/virtual-machines/instance-metadata-service
                "; and that no HTTP proxy takes these requests (IMDS refuses them: NO_PROXY "
                "must name 169.254.169.254)"
                if host == "imds"
                and answer is not None
                and answer[0] == 400
                # IMDS's "Identity not found" (the identity is not assigned to the VM) is no
                # proxy's doing: the hint would send the reader after the wrong thing.
                and "identity not found" not in str(answer[1]).lower()
                else ""
            ),
        )

    def _imds_request(self, resource: str, end: float) -> dict[str, Any]:
        """IMDS's request, sent again with bounded backoff while IMDS answers 404 or 410, up to
        the deadline ``end``. Microsoft, "How to use managed identities for Azure resources on
        an Azure VM to acquire an access token", Error handling: 404 "IMDS endpoint is
        updating" (retry with exponential backoff), 410 "IMDS is going through updates" (it
        is available within 70 seconds); azure-identity retries a 410 for at least 70 s. One
        such answer failed the call, its message blaming a proxy or the identity's setup."""
        started = time.monotonic()
        t = self.timeouts
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._request("imds", resource)
            except TransportFailure as exc:
                if exc.kind != "page" or exc.status not in _IMDS_UPDATING:
                    raise
                status = exc.status
            else:
                answer = self._answers.last() if self._answers is not None else None
                if (
                    answer is None
                    or answer[0] not in _IMDS_UPDATING
                    or (isinstance(response, dict) and "access_token" in response)
                ):
                    return response
                status = answer[0]
            pause = backoff_pause(max(t.backoff, 0.1), attempt, _IMDS_MAX_BACKOFF, _JITTER)
            if pause >= end - time.monotonic():
                raise _ImdsUpdating(status, attempt, time.monotonic() - started)
            logger.info(
                "IMDS answered HTTP %d (updating); request %d sent again in %.1f s",
                status,
                attempt,
                pause,
            )
            time.sleep(pause)

    def _no_host(self, exc: TransportFailure, scopes: tuple[str, ...]) -> SourceUnavailable:
        """IMDS did not answer, and IMDS was asked only because the environment names no other
        host: on a laptop or a CI runner this is the first error a user sees. It says which
        variables were looked at and the address asked (never a variable's value but the
        address's scheme, host and port)."""
        partial = [name for name in _HOST_MARKERS if os.environ.get(name)]
        looked = (
            "IDENTITY_ENDPOINT (+ IDENTITY_HEADER, IDENTITY_SERVER_THUMBPRINT or IMDS_ENDPOINT), "
            "MSI_ENDPOINT, AZURE_FEDERATED_TOKEN_FILE (+ AZURE_TENANT_ID, AZURE_AUTHORITY_HOST)"
        )
        found = (
            f"of {looked}, only {', '.join(partial)} {'is' if len(partial) == 1 else 'are'} set"
            if partial
            else f"none of {looked} is set"
        )
        return SourceUnavailable(
            f"No managed identity host was detected ({found}), so IMDS at {_imds_address()} "
            f"was asked: {exc.describe()}.",
            source=self.name,
            scopes=scopes,
            failure=exc.summary(),
            fix="off Azure (a laptop, CI) use another source (AzureCli, or the app's secret or "
            "certificate); on Azure, enable the host's managed identity, and let no firewall or "
            "HTTP proxy take requests to IMDS (NO_PROXY must name 169.254.169.254); on an Azure "
            "VM, where IMDS is the host and no such variable is set, a timeout may be "
            "transient: try again.",
        )

    def _malformed(self, host: str, scopes: tuple[str, ...], what: str) -> SourceUnavailable:
        """A 200 with a token that cannot be used as it came (never shown)."""
        return SourceUnavailable(
            f"The managed identity endpoint ({host}) answered with a token {what}. The token "
            "was not used.",
            source=self.name,
            scopes=scopes,
            failure="malformed token answer",
            fix=self._not_the_endpoint_fix(host),
        )

    def _not_the_endpoint_fix(self, host: str) -> str:
        """The fix for an answer the platform's identity endpoint does not give: something else
        answers at its address, or rewrote the answer on the way."""
        if self.endpoint is not None:
            where = "the endpoint (IDENTITY_ENDPOINT, or endpoint=)"
        elif host == "imds":
            where = (
                "the IMDS address (AZURE_POD_IDENTITY_AUTHORITY_HOST if set, else 169.254.169.254)"
            )
        else:
            where = f"the endpoint in {_ENDPOINT_VARIABLES.get(host, 'IDENTITY_ENDPOINT')}"
        return (
            f"check that {where} is the platform's own identity endpoint as the host sets it, "
            "with no other server or sidecar answering at that address, and that no HTTP proxy "
            "takes these requests (NO_PROXY must name 169.254.169.254 and the endpoint's host)."
        )

    def _request(self, host: str, resource: str) -> dict[str, Any]:
        if self.endpoint is not None:
            return self._app_service(resource)
        if host == "cloud_shell":
            return self._via_cloud_shell(resource)
        if host == "service_fabric":
            return self._service_fabric(resource)
        if host == "workload_identity":
            return self._workload_identity(resource)
        return self._msal(resource)

    def _workload_settings(self) -> tuple[str | None, str, str, str]:
        """What ``from_env`` read, else the process environment's (as MSAL reads the others)."""
        return self._workload or _workload_settings(os.environ)

    def _workload_identity(self, resource: str) -> dict[str, Any]:
        """AKS workload identity: client credentials as the identity ``AZURE_CLIENT_ID`` (or
        ``client_id``) names, with the projected token file as the client assertion: the same
        credential an app gets from ``AppCredential(federated_token_file=...)``."""
        from .._credential import AppCredential
        from .._msal import client_credential, confidential_app

        env_client_id, token_file, tenant, authority = self._workload_settings()
        client_id = self.client_id or env_client_id
        assert client_id is not None  # check_host refused the request otherwise
        key = (client_id, token_file, tenant, authority)
        with self._workload_lock:
            built = self._workload_app
            if built is None or built[0] != key:
                credential = AppCredential(
                    client_id=client_id,
                    tenant_id=tenant,
                    authority_host=authority,
                    federated_token_file=token_file,
                )
                app = confidential_app(
                    client_id,
                    credential=client_credential(credential),
                    authority=f"{credential.authority_host}/{tenant}",
                    http_client=self._http_client,
                    timeouts=self.timeouts,
                    throttle=self._throttle,
                )
                if built is not None and self._owns_http:
                    built[1].http_client.close()
                built = self._workload_app = (key, app)
        result: dict[str, Any] = built[1].acquire_token_for_client([f"{resource}/.default"])
        return result

    def _session(self) -> Any:
        """The guarded client every MSAL request of this source goes through (wrapped to read
        what the endpoint answered: ``_Answers``)."""
        with self._lock:  # one of each: _fetch reads the answers MSAL's requests went through
            if self._guarded is None:
                self._guarded = GuardedHttpClient(
                    self._http_client, timeouts=self.timeouts, throttle=self._throttle, peer=_PEER
                )
            if self._answers is None or self._answers.client is not self._guarded:
                self._answers = _Answers(self._guarded)
            return self._answers

    def _service_fabric(self, resource: str) -> dict[str, Any]:
        """Service Fabric through the guarded layer too (timeouts, deadline, retries,
        ``Retry-After`` per endpoint), on MSAL's certificate-pinning session: see
        ``_msal.service_fabric_session`` for why MSAL's client does not send this request.
        The variables are read per request from the process environment, as MSAL does."""
        from .._msal import service_fabric_session, service_fabric_token

        endpoint = os.environ.get("IDENTITY_ENDPOINT", "")
        secret = os.environ.get("IDENTITY_HEADER", "")
        thumbprint = os.environ.get("IDENTITY_SERVER_THUMBPRINT", "")
        key = (endpoint, thumbprint)
        with self._lock:
            fabric = self._fabric
            if fabric is None or fabric[0] != key:
                base = self._http_client
                if base is None:
                    import requests

                    base = requests.Session()  # trust_env kept (proxies), as MSAL's default
                    size_pool(base)  # MSAL copies the adapter's pool size to the pinned one
                try:
                    pinned = service_fabric_session(base, endpoint, thumbprint)
                finally:
                    if base is not self._http_client:
                        base.close()
                # A previous session (the variables changed) is left to the garbage collector:
                # another worker may still be reading from it.
                fabric = (
                    key,
                    GuardedHttpClient(
                        pinned, timeouts=self.timeouts, throttle=self._throttle, peer=_PEER
                    ),
                )
                self._fabric = fabric
        result: dict[str, Any] = service_fabric_token(fabric[1], endpoint, secret, resource)
        return result

    def _identity(self) -> Any:
        import msal

        selector = self.selector
        if selector is None:
            return msal.SystemAssignedManagedIdentity()
        return msal.UserAssignedManagedIdentity(**{selector[0]: selector[1]})

    def _msal(self, resource: str) -> dict[str, Any]:
        import msal

        if self._msal_client is None:
            self._msal_client = msal.ManagedIdentityClient(
                self._identity(),
                http_client=self._session(),
                token_cache=NullTokenCache(),
                http_cache=_NoHttpCache(),
            )
        result: dict[str, Any] = self._msal_client.acquire_token_for_client(resource=resource)
        return result

    def _app_service(self, resource: str) -> dict[str, Any]:
        # MSAL's public client reads the endpoint from os.environ only; an endpoint given
        # explicitly goes through the same MSAL function (the _msal adapter holds the seam).
        from .._msal import app_service_token

        assert self.endpoint is not None
        assert self._header is not None
        return app_service_token(
            self._session(), self.endpoint, self._header, self._identity(), resource
        )

    def _via_cloud_shell(self, resource: str) -> dict[str, Any]:
        from azure.core.exceptions import ClientAuthenticationError
        from azure.identity import CredentialUnavailableError, ManagedIdentityCredential

        if self.user_assigned:
            raise ConfigurationError(
                "Cloud Shell has only the signed-in user's identity; a user-assigned managed "
                "identity cannot be selected there.",
                fix="unset AZURE_CLIENT_ID (and do not pass client_id) in Cloud Shell.",
            )
        if self._cloud_shell is None:
            self._cloud_shell = ManagedIdentityCredential()
        try:
            info = self._cloud_shell.get_token_info(f"{resource}/.default")
        except (CredentialUnavailableError, ClientAuthenticationError) as exc:
            # azure-identity's text: what failed, never a token.
            text = str(getattr(exc, "message", "") or exc)[:300]
            return {"error": "managed_identity_error", "error_description": text}
        return {"access_token": info.token, "expires_in": int(info.expires_on - time.time())}

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        http_client: Any = None,
        name: str = "managed_identity",
    ) -> ManagedIdentity:
        """``AZURE_CLIENT_ID`` selects a user-assigned identity (none: system-assigned).

        ``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER`` in ``environ`` (App Service, Container
        Apps) are used as given, and so are an AKS workload identity's variables
        (``AZURE_FEDERATED_TOKEN_FILE``, ``AZURE_TENANT_ID``, ``AZURE_AUTHORITY_HOST``; the
        identity is ``AZURE_CLIENT_ID``'s; ``ENTRA_PASSTHROUGH_CA_FILE`` for its HTTPS requests
        to Entra); every other host is detected by MSAL from the process environment, where the
        host sets its variables.
        """
        env = _env.environ_or(environ)
        endpoint = _env.get(env, "IDENTITY_ENDPOINT")
        header = _env.get(env, "IDENTITY_HEADER")
        explicit = endpoint is not None and header is not None and detect_host(env) == "app_service"
        if endpoint is not None and header is None and "IMDS_ENDPOINT" not in env:
            raise ConfigurationError(
                "IDENTITY_ENDPOINT is set without IDENTITY_HEADER (App Service / Container Apps "
                "set both) or IMDS_ENDPOINT (Azure Arc sets both).",
                fix="set IDENTITY_HEADER as well, or unset IDENTITY_ENDPOINT.",
            )
        if header is not None and endpoint is None:
            # MSAL would go to IMDS (169.254.169.254), which App Service and Container Apps do
            # not have: every request would fail as an unreachable endpoint, with no word of
            # the missing variable. The header's value is a secret: never shown.
            raise ConfigurationError(
                "IDENTITY_HEADER is set without IDENTITY_ENDPOINT (App Service, Functions and "
                "Container Apps set both): the request would go to IMDS instead, which this "
                "host may not have.",
                fix="set IDENTITY_ENDPOINT as well (the host's identity endpoint URL), or unset "
                "IDENTITY_HEADER on a host that has none (a VM or AKS node: IMDS).",
            )
        # The reliability variables, as every Entra source reads them; without any, the
        # managed identity's own defaults (a 10 s read, 4 workers: a local endpoint).
        tuned = any(_env.get(env, var) is not None for var in TIMEOUT_VARIABLES.values())
        workload = not explicit and detect_host(env) == "workload_identity"
        if workload:
            from .._msal import normalize_authority_host

            # At start-up, not as every request's failure.
            normalize_authority_host(_workload_settings(env)[3], what="AZURE_AUTHORITY_HOST")
        ca_file = _env.get_ca_file(env, "ENTRA_PASSTHROUGH_CA_FILE") if workload else None
        created = http_client is None and ca_file is not None
        if created:
            from .._msal import http_session

            http_client = http_session(ca_file)  # Entra over HTTPS, as OnBehalfOf.from_env
        try:
            source = cls(
                client_id=_env.get(env, "AZURE_CLIENT_ID"),
                endpoint=endpoint if explicit else None,
                header=header if explicit else None,
                http_client=http_client,
                max_workers=_env.get_int(env, "ENTRA_PASSTHROUGH_MAX_WORKERS", _MAX_WORKERS),
                timeouts=Timeouts.from_env(env) if tuned else None,
                name=name,
            )
        except BaseException:
            if created:
                http_client.close()
            raise
        if workload:
            source._workload = _workload_settings(env)
            source._owns_http = source._owns_http or created
            try:
                source.check_host()  # the pod's own variables, not the process environment's
            except ConfigurationError:
                source.close()
                raise
        return source
