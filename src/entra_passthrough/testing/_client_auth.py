"""Client authentication at the token endpoint: secret, certificate assertion, federated assertion.

Rules:
- Unknown client -> AADSTS700016; no credential on a confidential client -> AADSTS7000218;
  a secret or an assertion from a public client -> AADSTS700025, before either is checked;
  wrong secret -> AADSTS7000215, even beside a client assertion; a secret past its end
  (``App.secret_expires``) -> AADSTS7000222
  (https://learn.microsoft.com/entra/identity-platform/reference-error-codes). At ``consumers``
  every client is unknown (AADSTS700016 in 'Microsoft Accounts').
- Certificate assertions: header ``x5t`` (or ``x5t#S256``) names a certificate registered on the
  app, signature RS256/PS256, ``aud`` the token endpoint, ``iss`` = ``sub`` = client id, ``exp``
  in the future and ``nbf``/``iat`` at most 5 minutes ahead (Entra's clock skew), else
  AADSTS700021 (iss/sub), AADSTS700023 (aud) or AADSTS700024 (time)
  (https://learn.microsoft.com/entra/identity-platform/certificate-credentials).
  A certificate past its end date (the registered one, or the leaf presented in ``x5c``) is
  AADSTS700027 with Entra's "[Reason - The key used is expired., ...]", before the signature.
  An assertion whose ``iss`` is the client id is the app's own: a header that names no
  registered certificate (an unknown ``x5t``, or only a ``kid``) is AADSTS700027 "[Reason - The
  key was not found., ...]", never a federated credential's AADSTS700211.
- Federated assertions: a token whose issuer, subject and audience match a federated identity
  credential of the app, else AADSTS700211 (issuer), 700213 (subject; 7002138 when only the case
  differs) or 700212 (audience) (https://learn.microsoft.com/entra/workload-id/
  workload-identity-federation-config-app-trust-managed-identity). A managed identity's token for
  api://AzureADTokenExchange carries the MI's object id as ``sub`` and the v2 issuer. One that
  matches but is signed by a key its issuer does not publish is AADSTS7000272; one whose
  signature fails with a published key, AADSTS700027 (``e.federated_bad_signature`` says why
  that code).
- Entra Agent ID: an agent identity authenticates with T1, the token its blueprint obtained with
  ``fmi_path`` = the agent identity (https://learn.microsoft.com/entra/agent-id/identity-platform/
  agent-on-behalf-of-oauth-flow).
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509

from . import _ca
from . import _errors as e
from ._state import Runtime
from ._tokens import NOT_A_TIME, numeric_claim, verify
from ._world import MSA_DIRECTORY, TOKEN_EXCHANGE_APP_ID, TOKEN_EXCHANGE_AUDIENCE, App

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_CERTIFICATE_CREDENTIALS = (
    "https://learn.microsoft.com/entra/identity-platform/certificate-credentials"
)


@dataclass(frozen=True)
class ClientAuth:
    app: App
    acr: str  # "0" public client, "1" secret, "2" certificate or assertion


def _basic(headers: Mapping[str, str]) -> tuple[str, str] | None:
    raw = headers.get("authorization", "")
    if not raw.lower().startswith("basic "):
        return None
    try:
        user, _, pw = base64.b64decode(raw[6:]).decode().partition(":")
    except ValueError:
        return None
    return user, pw


def authenticate(
    rt: Runtime,
    form: Mapping[str, str],
    headers: Mapping[str, str],
    *,
    tenant_id: str | None,
    token_endpoints: tuple[str, ...],
    confidential_only: bool,
    personal_accounts: bool = False,
) -> ClientAuth:
    """The client of a token request. ``tenant_id``: the tenant the request runs in (the
    path's, or for OBO at common/organizations the assertion's; ``None``: none known), where a
    single-tenant app of another tenant is not found (AADSTS700016). ``personal_accounts``: the
    ``consumers`` authority, whose directory holds no app of the world (AADSTS700016 in
    'Microsoft Accounts')."""
    basic = _basic(headers)
    client_id = form.get("client_id") or (basic[0] if basic else "")
    assertion = form.get("client_assertion")
    unverified: dict[str, Any] = {}
    if assertion:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise e.StsError(
                7000216,
                "invalid_client",
                "The client_assertion_type must be "
                "'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'.",
                status=401,
            )
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise e.bad_client_assertion("Client assertion is not a valid JWT.", 50027) from None
        rt.remember(assertion)  # a credential the client built: leak scans look for it too
        client_id = client_id or str(unverified.get("sub") or "")
    if not client_id:
        raise e.missing_param("client_id")
    if personal_accounts:
        # consumers serves personal Microsoft accounts only; the world's apps are organisational.
        raise e.unknown_client(client_id, MSA_DIRECTORY)
    app = rt.world.app(client_id)
    if app is None or app.client_id != client_id:
        raise e.unknown_client(client_id, tenant_id or "common")
    if tenant_id is not None and not app.multi_tenant and app.tenant_id != tenant_id:
        # A single-tenant app has no service principal in another tenant: AADSTS700016.
        raise e.unknown_client(client_id, tenant_id)
    secret = form.get("client_secret") or (basic[1] if basic else None)
    if app.public_client and (secret or assertion):
        # AADSTS700025, before the credential is checked: a right or wrong secret alike.
        raise e.public_client_credential()
    if secret:
        # Checked even beside an assertion: a wrong secret is never ignored (RFC 6749 2.3.1 allows
        # one method a request; what Entra answers to two valid ones is not documented).
        _check_secret(app, secret)
    if assertion:
        return ClientAuth(app, _check_assertion(rt, app, assertion, unverified, token_endpoints))
    if secret:
        return ClientAuth(app, "1")
    if app.public_client and not confidential_only:
        return ClientAuth(app, "0")
    raise e.missing_credential()


def _check_secret(app: App, secret: str) -> None:
    """AADSTS7000215 for a secret the app does not hold; AADSTS7000222 for its secret past the
    credential's end (``App.secret_expires``)."""
    if not app.secret or not hmac.compare_digest(secret.encode(), app.secret.encode()):
        raise e.bad_secret(app.client_id)
    if app.secret_expires is not None and app.secret_expires.timestamp() <= time.time():
        raise e.expired_secret(app.client_id)


def _check_assertion(
    rt: Runtime, app: App, assertion: str, claims: Mapping[str, Any], endpoints: tuple[str, ...]
) -> str:
    header = jwt.get_unverified_header(assertion)
    now = time.time()
    ours = rt.keys.find(str(header.get("kid", ""))) is not None
    # iss = the client id: the app's own (certificate) assertion, whatever its header carries
    # (certificate-credentials). A federated credential's issuer is a URL, never a client id,
    # so one with only a ``kid`` (Keycloak, Key Vault ``sign`` callers) is refused for its
    # certificate (AADSTS700027, keycloak/keycloak#19425, #25439), not for a federated
    # credential the app never needed (AADSTS700211).
    own = str(claims.get("iss", "")) == app.client_id
    if own or (not ours and (header.get("x5t") or header.get("x5t#S256"))):
        return _check_certificate(app, assertion, header, endpoints, now)
    # Federated credential (or an agent identity's T1): a token this emulator issued.
    try:
        verified = verify(rt.keys, assertion)
    except jwt.PyJWTError:
        verified = None
    iss = str(claims.get("iss", ""))
    sub = str(claims.get("sub", ""))
    aud = claims.get("aud", "")
    aud_s = " ".join(map(str, aud)) if isinstance(aud, list) else str(aud)
    if verified is None:
        # The signature is checked with the keys of the issuer a matching credential names, so
        # an assertion that matches none is refused for the field that matches nothing
        # (700211/700213/700212) and one that matches is refused for its signature: never
        # "no credential names the issuer" for a credential that exists.
        if app.kind == "agent_identity":
            if not _is_t1(app, claims, sub, aud):
                raise e.no_matching_fic(iss, sub, aud_s)
        else:
            _match_federated_credential(rt, app, iss, sub, aud_s)
        kid = str(header.get("kid", ""))
        if rt.keys.find(kid) is None:
            raise e.federated_key_not_found(kid, iss)
        raise e.federated_bad_signature()
    _check_time_range(verified, now)
    if app.kind == "agent_identity":
        if _is_t1(app, verified, sub, aud):
            return "2"
        raise e.no_matching_fic(iss, sub, aud_s)
    return _match_federated_credential(rt, app, iss, sub, aud_s)


def _is_t1(app: App, claims: Mapping[str, Any], sub: str, aud: object) -> bool:
    """Whether ``claims`` are those of the T1 of agent identity ``app``: its blueprint's token
    exchange token with ``fmi_path`` = the agent identity (agent-on-behalf-of-oauth-flow)."""
    return (
        claims.get("azp") == app.blueprint_id
        and sub == app.client_id
        and aud == TOKEN_EXCHANGE_APP_ID
    )


def _match_federated_credential(rt: Runtime, app: App, iss: str, sub: str, aud: str) -> str:
    """ "2" when a federated credential of ``app`` names the assertion's issuer, subject and
    audience (exact, case-sensitive), else Entra's error for the first field that matches none
    (``e.no_matching_fic``). A system-assigned managed identity's token has the right issuer but
    a subject (its object id) no credential names: AADSTS700213."""
    by_issuer = [
        fic
        for fic in app.federated_credentials
        if (fic.issuer or rt.issuer(app.tenant_id, 2)) == iss
    ]
    if not by_issuer:
        raise e.no_matching_fic(iss, sub, aud, field="issuer")
    by_subject = [fic for fic in by_issuer if fic.subject == sub]
    if not by_subject:
        case_only = any(fic.subject.lower() == sub.lower() for fic in by_issuer)
        raise e.no_matching_fic(iss, sub, aud, field="subject", case_only=case_only)
    for fic in by_subject:
        audiences = set(fic.audiences)
        if TOKEN_EXCHANGE_AUDIENCE in audiences:
            audiences.add(TOKEN_EXCHANGE_APP_ID)
        if aud in audiences:
            return "2"
    raise e.no_matching_fic(iss, sub, aud, field="audience")


def _check_certificate(
    app: App,
    assertion: str,
    header: Mapping[str, Any],
    endpoints: tuple[str, ...],
    now: float,
) -> str:
    if not app.certificate_pem or not (header.get("x5t") or header.get("x5t#S256")):
        # No certificate registered, or none named: Entra finds a client's key by the header's
        # x5t / x5t#S256 only (a ``kid`` names none), "The key was not found".
        raise _key_not_found(app, header)
    cert = x509.load_pem_x509_certificate(app.certificate_pem)

    def thumb(name: str) -> str | None:
        # MSAL sends base64url *with* padding; RFC 7515 says without. Accept both.
        value = header.get(name)
        return str(value).rstrip("=") if value is not None else None

    if thumb("x5t") not in (None, _ca.x5t(cert)) or thumb("x5t#S256") not in (
        None,
        _ca.x5t_s256(cert),
    ):
        raise _key_not_found(app, header)
    expired = _expired_key(cert, header, now)
    if expired is not None:
        raise e.bad_client_assertion(expired, 700027)
    try:
        verified = jwt.decode(
            assertion,
            cert.public_key(),  # type: ignore[arg-type]
            algorithms=["RS256", "PS256"],
            # The signature only: the time claims are Entra's to judge, with its clock skew
            # and its own code (``_check_time_range``). PyJWT's iat check, left on, refused an
            # assertion from a client whose clock runs a few seconds fast as a bad signature.
            options={
                "verify_aud": False,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.PyJWTError:
        raise e.bad_client_assertion(
            "Client assertion failed signature validation.", 7000274
        ) from None
    # certificate-credentials: iss = sub = the client id, aud = the token endpoint. Entra's
    # codes and texts (the Azure SDK identity troubleshooting guides' ClientAssertionCredential
    # table): AADSTS700021 for iss/sub, AADSTS700023 for aud.
    if verified.get("iss") != app.client_id or verified.get("sub") != app.client_id:
        raise e.bad_client_assertion(
            "Client assertion application identifier doesn't match 'client_id' parameter. "
            f"Review the documentation at {_CERTIFICATE_CREDENTIALS}.",
            700021,
        )
    aud = verified.get("aud")
    # A number or an object names no endpoint (a bad audience, not a server error).
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(isinstance(a, str) and a in endpoints for a in auds):
        raise e.bad_client_assertion(
            "Client assertion audience claim does not match Realm issuer. "
            f"Review the documentation at {_CERTIFICATE_CREDENTIALS}.",
            700023,
        )
    _check_time_range(verified, now)
    return "2"


def _key_not_found(app: App, header: Mapping[str, Any]) -> e.StsError:
    """AADSTS700027 for a client assertion whose header names no certificate registered on the
    app (an unknown ``x5t``/``x5t#S256``, or neither: only a ``kid``). Entra's text as quoted in
    keycloak/keycloak#19425 and #25439 (no thumbprint: the header carried none) and
    AzureAD/microsoft-authentication-library-for-js#8339 (the thumbprint of the ``x5t``)."""
    used = ""
    x5t = header.get("x5t")
    if isinstance(x5t, str):
        with contextlib.suppress(ValueError):
            digest = jwt.utils.base64url_decode(x5t.rstrip("="))
            if len(digest) == 20:  # a SHA-1 thumbprint, as Entra prints it
                used = f"Thumbprint of key used by client: '{digest.hex().upper()}', "
    return e.bad_client_assertion(
        "The certificate with identifier used to sign the client assertion is not registered on "
        f"application. [Reason - The key was not found., {used}Please visit the Azure Portal, "
        "Graph Explorer or directly use MS Graph to see configured keys for app Id "
        f"'{app.client_id}'. Review the documentation at https://docs.microsoft.com/en-us/graph/"
        "deployments to determine the corresponding service endpoint and https://"
        "docs.microsoft.com/en-us/graph/api/application-get?view=graph-rest-1.0&tabs=http to "
        "build a query request URL, such as 'https://graph.microsoft.com/beta/applications/"
        f"{app.object_id}']",
        700027,
    )


def _check_time_range(claims: Mapping[str, Any], now: float) -> None:
    """AADSTS700024 for a client assertion that has expired, or whose ``nbf`` or ``iat`` lies
    ahead of the clock by more than Entra's skew (a client whose clock runs a little fast is
    accepted, as Entra accepts it; certificate-credentials: the assertion must be within its
    valid time range). Never a signature error: the signature was good."""
    from ._token_endpoint import CLOCK_SKEW  # (it imports this module)

    ahead = max(
        (numeric_claim(claims, name, bad=NOT_A_TIME) for name in ("nbf", "iat") if name in claims),
        default=0,
    )
    if numeric_claim(claims, "exp") < now or ahead > now + CLOCK_SKEW:
        # AADSTS700024: the assertion is not within its valid time range (certificate-credentials).
        raise e.bad_client_assertion("Client assertion is not within its valid time range.", 700024)


def _expired_key(cert: x509.Certificate, header: Mapping[str, Any], now: float) -> str | None:
    """Entra's AADSTS700027 text when the registered certificate (its key credential ends with
    the certificate), or the leaf the assertion presents in ``x5c``, is past its end date: the
    signature is never checked then. ``None`` while both are valid."""
    presented = [cert]
    x5c = header.get("x5c")
    if isinstance(x5c, list) and x5c and isinstance(x5c[0], str):
        # Not a certificate: the signature check answers for it.
        with contextlib.suppress(ValueError):
            presented.append(x509.load_der_x509_certificate(base64.b64decode(x5c[0])))
    for item in presented:
        start, end = item.not_valid_before_utc, item.not_valid_after_utc
        if end.timestamp() <= now:
            return (
                "Client assertion contains an invalid signature. [Reason - The key used is "
                f"expired., Thumbprint of key used by client: '{_ca.thumbprint_sha1(item)}', "
                f"Found key 'Start={start:%m/%d/%Y %H:%M:%S}, End={end:%m/%d/%Y %H:%M:%S}']"
            )
    return None
