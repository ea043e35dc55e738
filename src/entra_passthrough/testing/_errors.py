"""Entra's error answers, with the body shape Entra sends.

Shape (https://learn.microsoft.com/entra/identity-platform/reference-error-codes#sample-error-response):
``error``, ``error_description`` = "AADSTS<code>: <text>\\r\\nTrace ID: ...\\r\\nCorrelation ID:
...\\r\\nTimestamp: yyyy-mm-dd hh:mm:ssZ", ``error_codes`` [code], ``timestamp``, ``trace_id``,
``correlation_id``, ``error_uri`` (https://login.microsoftonline.com/error?code=N), plus
``suberror`` and ``claims`` where Entra sends them (https://learn.microsoft.com/entra/identity-platform/
v2-oauth2-on-behalf-of-flow#error-response-example). The correlation id echoes the client's
``client-request-id`` header as Entra does (MSAL sends one with every request).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any


class StsError(Exception):
    """An error answer of the emulated STS. Never carries a token or secret in its text."""

    def __init__(
        self,
        code: int,
        error: str,
        text: str,
        *,
        status: int = 400,
        suberror: str | None = None,
        claims: str | None = None,
    ) -> None:
        super().__init__(f"AADSTS{code}: {text}")
        self.code = code
        self.error = error
        self.text = text
        self.status = status
        self.suberror = suberror
        self.claims = claims

    def body(self, correlation_id: str | None = None) -> dict[str, Any]:
        trace_id = str(uuid.uuid4())
        correlation_id = correlation_id or str(uuid.uuid4())
        ts = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        body: dict[str, Any] = {
            "error": self.error,
            "error_description": (
                f"AADSTS{self.code}: {self.text}\r\nTrace ID: {trace_id}\r\n"
                f"Correlation ID: {correlation_id}\r\nTimestamp: {ts}"
            ),
            "error_codes": [self.code],
            "timestamp": ts,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"https://login.microsoftonline.com/error?code={self.code}",
        }
        if self.suberror:
            body["suberror"] = self.suberror
        if self.claims:
            body["claims"] = self.claims
        return body


# Messages follow the texts Entra returns (reference-error-codes and the flow pages). Each helper
# names the page that documents the condition.


def missing_param(name: str) -> StsError:
    # AADSTS900144 https://learn.microsoft.com/entra/identity-platform/reference-error-codes
    return StsError(
        900144,
        "invalid_request",
        f"The request body must contain the following parameter: '{name}'.",
    )


def duplicated_param(name: str) -> StsError:
    # AADSTS9000411 InvalidRequestFormatDuplicatedParameter: a parameter named twice, at the token
    # endpoint and at /authorize (quoted in MicrosoftDocs/azure-dev-docs#934 for `scope` in a
    # token request, AzureAD/microsoft-authentication-library-for-android#688 for `login_hint`).
    return StsError(
        9000411,
        "invalid_request",
        f"The request is not properly formatted. The parameter '{name[:80]}' is duplicated.",
    )


def check_no_duplicates(pairs: Iterable[tuple[str, Any]]) -> None:
    """AADSTS9000411 for the first name that occurs twice (whatever its values)."""
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise duplicated_param(name)
        seen.add(name)


def unsupported_grant(grant: str) -> StsError:
    # AADSTS70003 https://learn.microsoft.com/entra/identity-platform/reference-error-codes
    return StsError(
        70003,
        "unsupported_grant_type",
        f"The app requested an unsupported grant type '{grant[:80]}'.",
    )


def invalid_scope(scope: str) -> StsError:
    # AADSTS70011 https://learn.microsoft.com/entra/identity-platform/reference-error-codes
    return StsError(
        70011,
        "invalid_scope",
        f"The provided value for the input parameter 'scope' is not valid. The scope {scope[:200]}"
        " is not valid.",
    )


def unknown_client(client_id: str, tenant: str) -> StsError:
    # AADSTS700016 https://learn.microsoft.com/entra/identity-platform/reference-error-codes
    return StsError(
        700016,
        "unauthorized_client",
        f"Application with identifier '{client_id[:80]}' was not found in the directory "
        f"'{tenant}'. This can happen if the application has not been installed by the "
        "administrator of the tenant or consented to by any user in the tenant. You may have sent "
        "your authentication request to the wrong tenant.",
    )


def bad_secret(client_id: str) -> StsError:
    # AADSTS7000215 https://learn.microsoft.com/entra/identity-platform/reference-error-codes
    return StsError(
        7000215,
        "invalid_client",
        "Invalid client secret provided. Ensure the secret being sent in the request is the "
        f"client secret value, not the client secret ID, for a secret added to app '{client_id}'.",
        status=401,
    )


def public_client_credential() -> StsError:
    # AADSTS700025 InvalidClientPublicClientWithCredential: a public client (mobile and desktop,
    # "allow public client flows") presents no credential; one that sends a secret or an
    # assertion is refused before the credential is looked at
    # (https://learn.microsoft.com/entra/identity-platform/reference-error-codes).
    return StsError(
        700025,
        "invalid_client",
        "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
        status=401,
    )


def expired_secret(client_id: str) -> StsError:
    # AADSTS7000222 InvalidClientSecretExpiredKeysProvided
    # https://learn.microsoft.com/entra/identity-platform/reference-error-codes
    return StsError(
        7000222,
        "invalid_client",
        f"The provided client secret keys for app '{client_id}' are expired. Visit the Azure "
        "portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider "
        "using certificate credentials for added security: https://aka.ms/certCreds.",
        status=401,
    )


def no_tenant() -> StsError:
    # AADSTS50059 MissingTenantRealmAndNoUserInformationProvided: a request at common or
    # organizations that names no tenant (client credentials there)
    # https://learn.microsoft.com/entra/identity-platform/reference-error-codes
    return StsError(
        50059,
        "invalid_request",
        "No tenant-identifying information found in either the request or implied by any "
        "provided credentials.",
    )


def single_tenant_at_common(client_id: str, client_name: str) -> StsError:
    # AADSTS50194: a single-tenant app at common/organizations, where no tenant names the
    # directory its only service principal lives in. Text as Entra sends it, quoted in public
    # reports: at /authorize (MicrosoftDocs/azure-docs#19346, microsoftgraph/aspnetcore-connect-
    # sample#65, `invalid_request`), redeeming a code (microsoftgraph/msgraph-training-
    # aspnetmvcapp#54) and a refresh token (robocorp/rpaframework#736,
    # BingAds/BingAds-dotNet-SDK#142) at /common. The text names /common for both authorities.
    return StsError(
        50194,
        "invalid_request",
        f"Application '{client_id[:80]}'({client_name[:120]}) is not configured as a "
        "multi-tenant application. Usage of the /common endpoint is not supported for such "
        "applications created after '10/15/2018'. Use a tenant-specific endpoint or configure "
        "the application to be multi-tenant.",
    )


def client_credentials_scope(scope: str) -> StsError:
    # AADSTS1002012: client credentials need <resource>/.default (v2-oauth2-client-creds-grant-
    # flow; the text as quoted in MicrosoftDocs/azure-docs#99862 and
    # rakhesh.com/azure/specifying-the-oauth2-authentication-token-scope).
    return StsError(
        1002012,
        "invalid_scope",
        f"The provided value for scope {scope[:200]} is not valid. Client credential flows "
        "must have a scope value with /.default suffixed to the resource identifier "
        "(application ID URI).",
    )


def scope_format(raw: str) -> StsError:
    # AADSTS70011 for a scope that names a resource but no permission (`api://<guid>`,
    # `https://host`): Entra's format check, quoted for a URI without a permission path in
    # microsoft/TinyBlazorAdmin#73 (at sign-in) and for other malformed scopes in
    # microsoftgraph/msgraph-sample-android#11 and Azure/azure-powershell#22180.
    return StsError(
        70011,
        "invalid_scope",
        f"The provided value for the input parameter 'scope' is not valid. The scope "
        f"{raw[:200]} is not valid. The scope format is invalid. Scope must be in a valid URI "
        "form <https://example/scope> or a valid Guid <guid/scope>.",
    )


def missing_credential() -> StsError:
    # AADSTS7000218 https://learn.microsoft.com/entra/identity-platform/reference-error-codes
    return StsError(
        7000218,
        "invalid_client",
        "The request body must contain the following parameter: 'client_assertion' or "
        "'client_secret'.",
        status=401,
    )


def bad_client_assertion(text: str, code: int = 700027) -> StsError:
    # AADSTS700027 (signature/certificate), AADSTS700024 (time range)
    # https://learn.microsoft.com/entra/identity-platform/certificate-credentials
    return StsError(code, "invalid_client", text, status=401)


def no_matching_fic(
    issuer: str, subject: str, audience: str, *, field: str = "issuer", case_only: bool = False
) -> StsError:
    """No federated identity credential of the app matches the assertion. Entra names the first
    field that matches no credential, in this order: the issuer (AADSTS700211), then the subject
    among the credentials of that issuer (AADSTS700213; AADSTS7002138 when it matches only
    ignoring case, since matching became case-sensitive), then the audience (AADSTS700212).
    Texts as Entra sends them (quoted in Azure/login#482 and #515, Azure/azure-workload-identity
    troubleshooting); https://learn.microsoft.com/entra/workload-id/workload-identity-federation
    and https://learn.microsoft.com/entra/identity-platform/reference-breaking-changes
    (case-sensitive matching)."""
    check = (
        "Please check your federated identity credential Subject, Audience and Issuer against "
        "the presented assertion. https://learn.microsoft.com/entra/workload-id/"
        "workload-identity-federation"
    )
    if field == "subject" and case_only:
        return StsError(
            7002138,
            "invalid_client",
            f"No matching federated identity record found for presented assertion subject "
            f"'{subject[:200]}'. The subject matches with case-insensitive comparison, but not "
            f"with case-sensitive comparison. {check}",
            status=401,
        )
    code, value = {
        "issuer": (700211, issuer),
        "subject": (700213, subject),
        "audience": (700212, audience),
    }[field]
    return StsError(
        code,
        "invalid_client",
        f"No matching federated identity record found for presented assertion {field} "
        f"'{value[:200]}'. {check}",
        status=401,
    )


def federated_key_not_found(kid: str, issuer: str) -> StsError:
    """AADSTS7000272: a federated assertion whose issuer, subject and audience match a credential
    of the app, signed by a key (``kid``) its issuer does not publish. Entra's text as quoted in
    Azure/azure-workload-identity#1232 (``invalid_client``)."""
    return StsError(
        7000272,
        "invalid_client",
        f"The certificate with identifier {kid[:80]} used to sign the federated credential could "
        f"not be found in the metadata of identity provider {issuer[:200]}. Please validate that "
        "your Identity Provider's metadata exposes the key used to sign the incoming token.",
        status=401,
    )


def federated_bad_signature() -> StsError:
    """A federated assertion whose issuer, subject and audience match a credential of the app,
    signed by a key its issuer publishes, whose signature does not verify (a token damaged or
    altered in transit). No Microsoft page or public report gives the code Entra returns for
    this case; AADSTS700027 is the documented code for a client assertion that fails signature
    validation, with the documented text ("Client assertion failed signature validation.",
    https://learn.microsoft.com/entra/identity-platform/reference-error-codes). (That page also
    lists "External ID token from issuer failed signature verification" under AADSTS50027, and
    a third-party diagnostic script reads AADSTS7000274 for this case; neither is confirmed for
    a federated credential's assertion.) Never AADSTS700211: the issuer matched."""
    return StsError(
        700027, "invalid_client", "Client assertion failed signature validation.", status=401
    )


#: Entra's text for each refused account state (``_world.ACCOUNT_STATES``): 50057 as quoted in
#: canonical/authd#814 and Azure/azure-cli#18945 (a refresh token of a disabled user), 50053 as
#: quoted in AzureAD/microsoft-authentication-library-for-python#211 (ROPC), 50055 and 50133 as
#: reference-error-codes words them.
_ACCOUNT_TEXTS = {
    50057: "The user account is disabled.",
    50053: "The account is locked, you've tried to sign in too many times with an incorrect user "
    "ID or password.",
    50055: "The password is expired.",
    50133: "Session is invalid due to expiration or recent password change.",
}


def account_state(code: int, *, error: str = "invalid_grant") -> StsError:
    """The refusal of a token request for a user whose account is disabled (50057), locked
    (50053), whose password expired (50055) or whose session was revoked by a password change
    (50133): ``invalid_grant`` at the token endpoint, ``access_denied`` at sign-in."""
    return StsError(code, error, _ACCOUNT_TEXTS[code])


def assertion_audience(aud: str, client_id: str) -> StsError:
    # AADSTS500131 AssertionAudienceDoesNotMatch: what Entra answers to an OBO assertion issued
    # for another audience (https://login.microsoftonline.com/error?code=500131,
    # https://learn.microsoft.com/entra/identity-platform/reference-error-codes); 50013 stays
    # the answer to a bad signature or issuer.
    return StsError(
        500131,
        "invalid_grant",
        f"Assertion audience does not match the Client app presenting the assertion. The "
        f"audience in the assertion was '{aud[:200]}' and the expected audience is "
        f"'{client_id}' or one of the Application Id URIs of this client app.",
    )


def assertion_invalid(reason: str) -> StsError:
    # AADSTS50013 is also the answer to a bad signature or issuer.
    return StsError(50013, "invalid_grant", f"Assertion failed signature validation. [{reason}]")


def assertion_expired(now: int, exp: int) -> StsError:
    # AADSTS500133 https://learn.microsoft.com/entra/identity-platform/reference-error-codes
    def fmt(t: int) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%m/%d/%Y %H:%M:%S")

    return StsError(
        500133,
        "invalid_grant",
        "Assertion is not within its valid time range. Ensure that the access token is not "
        "expired before using it for user assertion, or request a new token. Current time: "
        f"{fmt(now)}, expiry time of assertion {fmt(exp)}.",
    )


def assertion_not_yet_valid(now: int, nbf: int) -> StsError:
    """AADSTS500133 for an assertion whose ``nbf`` is still ahead (beyond the clock skew): the
    same code and text opening as an expired one."""

    def fmt(t: int) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%m/%d/%Y %H:%M:%S")

    return StsError(
        500133,
        "invalid_grant",
        "Assertion is not within its valid time range. Ensure that the access token is valid "
        f"before using it for user assertion. Current time: {fmt(now)}, not-before time of "
        f"assertion {fmt(nbf)}.",
    )


def unsupported_response_type(response_type: str) -> StsError:
    """``/authorize`` with a response type the app does not enable (implicit and hybrid flows
    are not emulated): AADSTS70005 for an access token ("response_type 'token' is not enabled
    for the application."), AADSTS700054 for an ID token (the same text naming 'id_token'; both
    as quoted in public issue reports, e.g. microsoft/azure-devops-auth-samples#14,
    microsoftgraph/msgraph-sample-reactspa#39), AADSTS70005 naming any other value."""
    types = response_type.split()
    if "token" in types:
        code, named = 70005, "token"
    elif "id_token" in types:
        code, named = 700054, "id_token"
    else:
        code, named = 70005, response_type[:80]
    return StsError(
        code,
        "unsupported_response_type",
        f"response_type '{named}' is not enabled for the application.",
    )


def resource_not_found(resource: str, tenant: str) -> StsError:
    # AADSTS500011 https://learn.microsoft.com/entra/identity-platform/reference-error-codes
    return StsError(
        500011,
        "invalid_resource",
        f"The resource principal named {resource[:200]} was not found in the tenant named "
        f"{tenant}. This can happen if the application has not been installed by the "
        "administrator of the tenant or consented to by any user in the tenant. You might have "
        "sent your authentication request to the wrong tenant.",
    )


def consent_required(client_id: str, client_name: str) -> StsError:
    # AADSTS65001, suberror consent_required:
    # https://learn.microsoft.com/entra/identity-platform/v2-oauth2-on-behalf-of-flow
    return StsError(
        65001,
        "invalid_grant",
        f"The user or administrator has not consented to use the application with ID "
        f"'{client_id}' named '{client_name}'. Send an interactive authorization request for this "
        "user and resource.",
        suberror="consent_required",
    )


def app_only_assertion(client_id: str) -> StsError:
    # AADSTS7000114 (unauthorized_client): an app-only token cannot be exchanged by OBO
    # https://learn.microsoft.com/entra/identity-platform/reference-error-codes
    return StsError(
        7000114,
        "unauthorized_client",
        f"Application '{client_id}' is not allowed to make application on-behalf-of calls.",
    )


def mfa_required(resource: str, claims: str) -> StsError:
    # AADSTS50076 + claims challenge
    # https://learn.microsoft.com/entra/identity-platform/v2-oauth2-on-behalf-of-flow#error-response-example
    return StsError(
        50076,
        "interaction_required",
        "Due to a configuration change made by your administrator, or because you moved to a new "
        f"location, you must use multi-factor authentication to access '{resource}'.",
        claims=claims,
    )


def blocked_by_ca() -> StsError:
    # AADSTS53003 https://learn.microsoft.com/entra/identity-platform/reference-error-codes;
    # Entra answers error "interaction_required" with suberror "message_only" (a body quoted in
    # public issue reports, e.g. MartinIngesen/MSOLSpray#5): no interaction can fix it.
    return StsError(
        53003,
        "interaction_required",
        "Access has been blocked by Conditional Access policies. The access policy does not "
        "allow token issuance.",
        suberror="message_only",
    )


def resource_mismatch() -> StsError:
    # AADSTS9010010 https://learn.microsoft.com/entra/identity-platform/reference-error-codes
    return StsError(
        9010010,
        "invalid_request",
        "The resource parameter provided in the request doesn't match with the requested scopes.",
    )


def agent_identity_not_found(ident: str) -> StsError:
    # AADSTS82001 (Entra Agent ID): the agent identity does not exist / is not a child of the
    # blueprint. https://learn.microsoft.com/entra/agent-id/identity-platform/agent-token-claims
    return StsError(
        82001,
        "unauthorized_client",
        f"The agent identity '{ident[:80]}' was not found or is not a child of the calling "
        "agent identity blueprint.",
    )


def agentic_fmi_path_required() -> StsError:
    # AADSTS82008: a blueprint's client_credentials for api://AzureADTokenExchange without
    # fmi_path (or an empty one), Entra's text as reported verbatim (microsoft/Agent365-Samples
    # #230, #116). The error field is not documented: invalid_request, as for a missing parameter.
    return StsError(
        82008,
        "invalid_request",
        "All agentic applications requesting a token exchange token must include the fmipath "
        "parameter on the token request.",
    )


def agent_interactive_consent() -> StsError:
    # AADSTS82014: child agent identities cannot be consented interactively (Entra Agent ID docs)
    return StsError(
        82014,
        "invalid_request",
        "Agent identities cannot be consented to interactively. An administrator must grant "
        "the permissions.",
    )


def invalid_grant(code: int, text: str, *, suberror: str | None = None) -> StsError:
    return StsError(code, "invalid_grant", text, suberror=suberror)
