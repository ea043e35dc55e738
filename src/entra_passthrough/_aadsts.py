"""The Entra (AADSTS) error codes we decode, with what they mean and how to fix them.

Sources: https://learn.microsoft.com/entra/identity-platform/reference-error-codes and the
on-behalf-of, consent, managed identity and Agent ID pages. The table is used to build error
messages; it never contains anything from a request.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Aadsts:
    code: int
    name: str
    meaning: str
    fix: str

    def __str__(self) -> str:
        return f"AADSTS{self.code} ({self.name})"


_TABLE: tuple[Aadsts, ...] = (
    Aadsts(
        50013,
        "InvalidAssertion",
        "the user assertion is not valid: its signature, issuer or tenant does not match (a "
        "token of another tenant or cloud, or an altered one); a token for another audience is "
        "AADSTS500131",
        "send OBO the user's token unchanged, issued by this tenant's Entra for the OBO app "
        "itself (its client id or App ID URI); a token for another audience (e.g. "
        "https://ai.azure.com) cannot be exchanged",
    ),
    Aadsts(
        500011,
        "InvalidResourceServicePrincipalNotFound",
        "the resource (scope) named in the request does not exist in the tenant",
        "check the scope's App ID URI (api://<app-id>/.default) and that the API's service "
        "principal exists in the tenant: the user's (admin consent creates it), or for an app "
        "or managed identity token its own; retrying does not help",
    ),
    Aadsts(
        65001,
        "DelegationDoesNotExist",
        "the user or an administrator has not consented to the app using the requested scope",
        "have the user consent (the error carries a consent link) or grant admin consent for "
        "the scope; list the API under the client app's knownClientApplications for combined "
        "consent",
    ),
    Aadsts(
        7000114,
        "AppOnlyTokenNotAllowedForOBO",
        "the assertion is an app-only token; on-behalf-of needs a delegated user token",
        "call OBO only with a user's token (it has 'scp'); for service calls use the app_only "
        "policy with a managed identity or client credentials",
    ),
    Aadsts(
        240002,
        "IdTokenNotAllowedAsOBOAssertion",  # our label; Entra's internal name is not published
        'the on-behalf-of assertion is an ID token (Entra: "Input id_token cannot be used as '
        "'urn:ietf:params:oauth:grant-type:jwt-bearer' grant\"); OBO exchanges an access token",
        "the client sent its ID token; send the access token it got for this app's scope "
        "(api://<app>/<scope>), not the id_token",
    ),
    Aadsts(
        70011,
        "InvalidScope",
        "the scope is malformed or not valid for this grant",
        "use '<resource>/.default' for client credentials and managed identity, and exposed "
        "delegated scopes (api://<app>/<scope>) for user flows; '.default' stands alone (never "
        "with the same resource's named scopes)",
    ),
    Aadsts(
        700016,
        "UnauthorizedClient_DoesNotMatchRequest",
        "the application was not found in the tenant",
        "check the client id and the tenant; a single-tenant app cannot sign in users of "
        "another tenant",
    ),
    Aadsts(
        7000215,
        "InvalidClientSecret",
        "the client secret is wrong",
        "send the secret's value (not its id), and check it has not expired or been rotated",
    ),
    Aadsts(
        500133,
        "TokenExpired",
        "the user assertion is not within its valid time range: it has expired, or it is not "
        "valid yet (its nbf is ahead of Entra's clock beyond the allowed skew)",
        "obtain a fresh user token (an OBO token can never outlive the assertion it came "
        "from); a token that is not valid yet means a clock is wrong: check the clocks of "
        "the machine that issued or forwarded it; one that by this host's clock had not "
        "expired yet means this host's clock is behind Entra's: synchronise it (NTP)",
    ),
    Aadsts(
        50076,
        "UserStrongAuthClientAuthNRequiredInterrupt",
        "conditional access requires multi-factor authentication",
        "send the 'claims' challenge back to the client so the user signs in again with MFA",
    ),
    Aadsts(
        50079,
        "UserStrongAuthEnrollmentRequired",
        "the user must enrol in multi-factor authentication",
        "the user signs in interactively once to register MFA",
    ),
    Aadsts(
        53003,
        "BlockedByConditionalAccess",
        "a conditional access policy blocked the request",
        "ask a tenant administrator which policy applies; the user cannot fix this by retrying",
    ),
    Aadsts(
        9010010,
        "InvalidResourceParameter",
        "an RFC 8707 'resource' parameter was sent on a v2 request and does not match the scopes",
        "do not send 'resource' to the v2 endpoint; name the resource in the scope "
        "(api://<app>/.default) instead",
    ),
    Aadsts(
        82001,
        "AgentIdentityNotFound",
        "the agent identity named by fmi_path or client_id does not exist or is disabled",
        "check the agent identity's id and that it was created from this blueprint",
    ),
    Aadsts(
        82008,
        "AgenticFmiPathRequired",
        "an agent identity blueprint asked for a token exchange token (api://AzureADTokenExchange) "
        "without fmi_path",
        "send fmi_path=<agent identity client id> with the blueprint's client_credentials "
        "request (MSAL: acquire_token_for_client(..., fmi_path=...)); AgentIdentityOnBehalfOf "
        "does",
    ),
    Aadsts(
        82014,
        "AgentIdentityInteractiveConsentNotAllowed",
        "child agent identities cannot be consented interactively",
        "grant the agent identity's permissions with admin consent (oauth2PermissionGrants)",
    ),
    Aadsts(
        700211,
        "NoMatchingFederatedIdentityRecordIssuer",
        "no federated identity credential of the app names the client assertion's issuer",
        "add a federated credential to the app whose issuer is the assertion's (a managed "
        "identity's: https://login.microsoftonline.com/<tenant id>/v2.0), with its subject and "
        "the audience api://AzureADTokenExchange",
    ),
    Aadsts(
        700212,
        "NoMatchingFederatedIdentityRecordAudience",
        "the app's federated credentials for the assertion's issuer and subject do not list the "
        "assertion's audience",
        "list api://AzureADTokenExchange (the cloud's token exchange audience) in the federated "
        "credential's audiences, and request the managed identity token for that resource",
    ),
    Aadsts(
        700213,
        "NoMatchingFederatedIdentityRecordSubject",
        "no federated identity credential of the app names the client assertion's subject: with "
        "a managed identity, the token came from another identity than the one the credential "
        "names (a system-assigned identity can never be one)",
        "select the user-assigned managed identity the credential names (AZURE_CLIENT_ID = its "
        "client id; the credential's subject is its object id), or add a credential for this "
        "subject",
    ),
    Aadsts(
        7002138,
        "NoMatchingFederatedIdentityRecordSubjectCase",
        "the assertion's subject matches a federated credential only when case is ignored; "
        "Entra compares subjects case-sensitively",
        "write the federated credential's subject exactly as the assertion spells it",
    ),
    Aadsts(
        700024,
        "ClientAssertionNotWithinValidTimeRange",
        "the client assertion has expired or is not yet valid",
        "refresh the federated token (it must be fresh when MSAL sends it); for a certificate's "
        "assertion, set the machine's clock right (Entra allows 5 minutes of skew)",
    ),
    Aadsts(
        7000112,
        "UnauthorizedClientApplicationDisabled",
        "the application is disabled",
        "enable the app's service principal in the tenant",
    ),
    Aadsts(
        700082,
        "ExpiredOrRevokedGrant",
        "the refresh token has expired or was revoked",
        "the user must consent or sign in again",
    ),
    Aadsts(
        70008,
        "ExpiredOrRevokedGrant",
        "the authorization code or refresh token has expired or was revoked",
        "start the sign-in again",
    ),
    Aadsts(
        54005,
        "OAuth2AuthorizationCodeAlreadyRedeemed",
        "the authorization code was already redeemed",
        "start the sign-in again; a code can be redeemed only once",
    ),
    Aadsts(
        501481,
        "InvalidCodeChallenge",
        "the PKCE code verifier does not match the code challenge",
        "send the verifier generated with the challenge of this sign-in",
    ),
    Aadsts(
        50126,
        "InvalidUserNameOrPassword",
        "the user name or password is wrong",
        "check the credentials (ROPC is for test users only)",
    ),
    # ---- the user's account (reference-error-codes): Entra refuses every token for the user,
    # in every flow (OBO included), while a token issued before stays valid until it expires ----
    Aadsts(
        50057,
        "UserDisabled",
        "the user's account is disabled in the tenant, so Entra issues no token for this user "
        "(a token issued before stays valid until it expires)",
        "nothing in the app's configuration fixes this: if the user should have access, a "
        "tenant administrator re-enables the account (Entra admin center > Users > the user > "
        "Account enabled, or az ad user update --id <upn> --account-enabled true)",
    ),
    Aadsts(
        50053,
        "IdsLocked",
        "the user's account is locked after too many sign-ins with a wrong password, or the "
        "sign-in came from an IP address with malicious activity",
        "the user waits for the lockout to end, then signs in with the right password, or an "
        "administrator unblocks the user (the tenant's sign-in log for error 50053 gives the "
        "cause); retrying now does not help",
    ),
    Aadsts(
        50055,
        "InvalidPasswordExpiredPassword",
        "the user's password has expired, so Entra ended the user's session",
        "the user signs in interactively and changes the password (or an administrator resets "
        "it), then signs in to the app again for a new token",
    ),
    Aadsts(
        50133,
        "SsoArtifactRevoked",
        "the user's session is no longer valid: the password expired or was changed recently",
        "the user signs in again (interactively) for a new session and token; the app's "
        "configuration is not at fault",
    ),
    Aadsts(
        50034,
        "UserAccountNotFound",
        "the user does not exist in the tenant",
        "check the user principal name and the tenant",
    ),
    Aadsts(
        90002,
        "InvalidTenantName",
        "the tenant was not found",
        "check the tenant id or domain in the authority",
    ),
    Aadsts(
        900144,
        "MissingRequiredField",
        "a required request parameter is missing",
        "send the parameter named in the message",
    ),
    Aadsts(
        90023,
        "InvalidRequest",
        "the sign-in request's prompt parameter is not one Entra supports (one of login, none, "
        "consent, select_account, create; a single value, not a space-separated list)",
        "send one supported prompt value, or none (MSAL: prompt=msal.Prompt.SELECT_ACCOUNT, ...)",
    ),
    Aadsts(
        900023,
        "InvalidTenantIdentifier",
        "the tenant identifier is not a GUID or a domain",
        "use the tenant's GUID or a verified domain in the authority",
    ),
    Aadsts(
        50027,
        "InvalidJwtToken",
        "a JWT in the request is malformed or its signature is not valid",
        "check the assertion is a complete, unmodified JWT",
    ),
    Aadsts(
        7000218,
        "InvalidClient",
        "the request has no client credential",
        "send client_secret or client_assertion (confidential clients must authenticate)",
    ),
    Aadsts(
        700025,
        "InvalidClientPublicClientWithCredential",
        "the app is registered as a public client (a Mobile and desktop or SPA redirect URI, or "
        "'Allow public client flows'), and a public client presents no secret or certificate",
        "a confidential client (OnBehalfOf, a secret or certificate) needs a Web registration: "
        "App registrations > the app > Authentication: a Web redirect URI and 'Allow public "
        "client flows' = No; a public client (device code, az login) sends no credential",
    ),
    Aadsts(
        700027,
        "InvalidClientAssertionSignature",
        "the client assertion failed signature validation: its header names no certificate "
        "registered on the app ('The key was not found': an unknown thumbprint, or no x5t at "
        "all, only a kid) or one that expired ('The key used is expired'), or a federated token "
        "(managed identity, AZURE_FEDERATED_TOKEN_FILE) damaged, altered or signed by another key",
        "certificate: the assertion's header must carry x5t or x5t#S256 (the thumbprint) of a "
        "certificate registered on the app - a kid alone names none (MSAL adds x5t; a hand-made "
        "signer, Keycloak or Key Vault sign, must too) - and its public key must be uploaded to "
        "the app registration (expired: create a new certificate, upload its public key and "
        "point the certificate path at it); federated token: pass it exactly as its issuer wrote "
        "it (the file neither edited, truncated nor re-encoded): the federated credential "
        "matched, add none",
    ),
    Aadsts(
        7000272,
        "FederatedCredentialSigningKeyNotFound",  # our label; Entra's name is not published
        "the federated token (managed identity, AZURE_FEDERATED_TOKEN_FILE) matches a federated "
        "credential, but the key that signed it is not among the keys its issuer publishes",
        "use a token its issuer wrote, unchanged (not one signed by another key); a "
        "self-hosted issuer must publish its current signing key in the jwks_uri of its "
        "openid-configuration",
    ),
    Aadsts(
        50011,
        "InvalidReplyTo",
        "the redirect URI does not match a registered reply URL",
        "register the exact redirect URI on the app (scheme, host, port and path)",
    ),
    Aadsts(
        50148,
        "PKCECodeVerifierMissing",
        "the code was issued with PKCE but no verifier was sent",
        "send code_verifier when redeeming",
    ),
    Aadsts(
        50173,
        "FreshTokenNeeded",
        "the grant was revoked (password change or sign-out)",
        "the user must sign in again",
    ),
    Aadsts(
        500113,
        "NoReplyAddress",
        "no reply address is registered for the application",
        "register a redirect URI",
    ),
    # ---- consent model, OBO audience, self-tokens, federated credentials, tenants ----------
    Aadsts(
        500131,
        "AssertionAudienceDoesNotMatch",
        "the on-behalf-of assertion was issued for another audience than the app exchanging it",
        "exchange only tokens whose aud is the OBO app (its client id or App ID URI): the client "
        "must ask for api://<OBO app>/<scope>, not for the downstream API or https://ai.azure.com",
    ),
    Aadsts(
        90009,
        "TokenForItselfMissingIdenticalAppIdentifier",
        "the app asked for a token for itself by its App ID URI (api://<own id>)",
        "ask for the app itself by its client id GUID ('<client id>/.default'), or ask for the "
        "downstream API instead",
    ),
    Aadsts(
        90094,
        "AdminConsentRequired",
        "the permission needs an administrator's consent (admin-only scope, or the tenant does "
        "not let users consent)",
        "have a tenant administrator grant consent: az ad app permission admin-consent --id "
        "<client app id>, or the admin consent URL "
        "https://login.microsoftonline.com/<tenant>/adminconsent?client_id=<client app id>",
    ),
    Aadsts(
        650057,
        "InvalidResourceServicePrincipalNotFound/NotConfigured",
        "the client app does not list the requested permission among its required permissions "
        "(API permissions), so '.default' or consent cannot cover it",
        "add the API's scope to the client's API permissions (az ad app permission add --id "
        "<client app id> --api <API app id> --api-permissions <scope id>=Scope), then consent",
    ),
    Aadsts(
        650053,
        "ScopeDoesNotExistOnResource",
        "a sign-in asked for a scope the resource (API) does not expose",
        "ask for a scope the API exposes (Expose an API > Scopes: api://<api>/<scope>), or "
        "add the scope to the API; check its spelling and case",
    ),
    Aadsts(
        65004,
        "UserDeclinedConsent",
        "the user declined to consent to the app",
        "the user must accept the consent prompt, or an administrator grants consent for them",
    ),
    Aadsts(
        7000222,
        "InvalidClientSecretExpiredKeysProvided",
        "the client secret has expired",
        "create a new secret (az ad app credential reset --id <app id> --append) and deploy it; "
        "prefer a certificate or a managed identity as federated credential",
    ),
    Aadsts(
        50105,
        "EntitlementGrantsNotFound",
        "the user is not assigned to the app, and the app requires user assignment",
        "assign the user (or a group) to the enterprise application, or turn off 'Assignment "
        "required'",
    ),
    Aadsts(
        50020,
        "UserUnauthorized",
        "the user's account does not exist in the tenant of the authority (a guest not invited, "
        "or a single-tenant app used from another tenant)",
        "invite the user as a guest, sign in through the user's home tenant, or make the app "
        "multi-tenant and list that tenant in ENTRA_PASSTHROUGH_ALLOWED_TENANTS",
    ),
    Aadsts(
        70021,
        "NoMatchingFederatedIdentityRecordFound",
        "no federated identity credential of the app matches the assertion's issuer, subject "
        "and audience (the older, undivided form of AADSTS700211/700212/700213)",
        "add a federated credential to the app for exactly that issuer/subject; a managed "
        "identity must be user-assigned (select it with AZURE_CLIENT_ID), its object id is the "
        "subject, audience api://AzureADTokenExchange",
    ),
    Aadsts(
        501051,
        "AppNotAssignedToRole",
        "the resource requires assignment ('Assignment required' on its enterprise app) and the "
        "calling app or managed identity holds no app role on it, so no app-only token is "
        "issued for it",
        "assign the caller an app role of the resource (Enterprise applications > the "
        "resource > Users and groups, or an appRoleAssignment for the caller's service "
        "principal), or turn off 'Assignment required' on the resource",
    ),
    Aadsts(
        700005,
        "InvalidGrantRedeemAgainstWrongTenant",
        "an authorization code was redeemed at another tenant's token endpoint than the one "
        "it was issued for (e.g. a sign-in at /organizations, the user's home tenant, redeemed "
        "at the app's own tenant)",
        "redeem the code at the authority that issued it (the same tenant, or common/"
        "organizations); to get tokens of another tenant, sign in at that tenant's authority",
    ),
    Aadsts(
        9000411,
        "InvalidRequestFormatDuplicatedParameter",
        "the request names the same parameter twice (e.g. 'scope' in the body twice, or "
        "'prompt' appended to an authorize URL that already has one)",
        "send each parameter once: do not append parameters that the library (MSAL) already "
        "sets; pass them through its own options instead",
    ),
    Aadsts(
        9002313,
        "InvalidRequest",
        "the request is malformed (often a mangled or truncated token or parameter)",
        "send the assertion unchanged; check for proxies or copies that cut or re-encode it",
    ),
    Aadsts(
        1002012,
        "InvalidScopeForClientCredentials",
        "a client-credentials request named a scope other than '<resource>/.default'",
        "ask for '<resource>/.default' with client credentials and managed identity",
    ),
    Aadsts(
        28000,
        "InvalidScopeMultipleResources",
        "the scopes name more than one resource; a token is for one resource",
        "ask for one resource's scopes per request",
    ),
    Aadsts(
        70000,
        "InvalidGrant",
        "the grant (authorization code or refresh token) is invalid, expired or already used",
        "start the sign-in again; an authorization code is good for one redemption",
    ),
    Aadsts(
        70003,
        "UnsupportedGrantType",
        "the grant type is not supported for this app or request",
        "check grant_type; public clients cannot use client credentials",
    ),
    Aadsts(
        700021,
        "InvalidClientAssertionIssuer",
        "the client assertion's iss/sub is not the client id of the request",
        "sign the assertion with iss = sub = the app's client id (MSAL does, from the "
        "client_id it was given)",
    ),
    Aadsts(
        700023,
        "InvalidClientAssertionAudience",
        "the client assertion's aud is not the token endpoint the request was sent to",
        "sign the assertion with aud = the token endpoint of the tenant and authority host the "
        "request goes to (https://<authority host>/<tenant>/oauth2/v2.0/token; MSAL does, "
        "from its authority)",
    ),
    Aadsts(
        7000274,
        "InvalidClientAssertionSignature",
        "the client assertion's signature does not verify with the certificate it names",
        "sign with the private key of the certificate whose thumbprint the assertion names; "
        "check that the PEM/PFX key and certificate belong together",
    ),
    Aadsts(
        7000216,
        "MissingClientCredential",
        "a confidential client request carried no client_secret, client_assertion or certificate",
        "configure one client credential (ENTRA_PASSTHROUGH_CLIENT_SECRET, a certificate, "
        "a federated token file or a user-assigned managed identity)",
    ),
    Aadsts(
        50058,
        "UserInformationNotProvided",
        "a silent sign-in (prompt=none) found no signed-in user",
        "sign in interactively",
    ),
    Aadsts(
        50149,
        "InvalidCodeChallengeMethod",
        "code_challenge_method is not S256 or plain",
        "use PKCE with S256 (MSAL does)",
    ),
    Aadsts(
        501491,
        "InvalidCodeChallengeSize",
        "the PKCE code_challenge has an invalid length",
        "use a 43-128 character verifier (MSAL does)",
    ),
    Aadsts(
        70005,
        "UnsupportedResponseType",
        "the response_type is not enabled for the application (implicit grant off)",
        "use the authorization code flow with PKCE (MSAL does), not response_type=token",
    ),
    Aadsts(
        700054,
        "ResponseTypeIdTokenNotEnabled",
        "the authorization request asked for an ID token (response_type id_token) and the app "
        "does not enable ID tokens for the implicit or hybrid flow",
        "use the authorization code flow with PKCE (MSAL does), or enable ID tokens (Implicit "
        "grant and hybrid flows) on the app registration's Authentication page",
    ),
    Aadsts(
        50194,
        "NonMultiTenantAppAtCommon",  # our label; Entra's internal name is not published
        "a single-tenant app (Accounts in this organizational directory only) used the common or "
        "organizations authority: Entra signs no user in there and redeems no code or refresh "
        "token of it",
        "use the app's tenant authority (https://login.microsoftonline.com/<tenant id>), e.g. "
        "AZURE_TENANT_ID=<tenant id>, or make the registration multi-tenant",
    ),
    Aadsts(
        50059,
        "MissingTenantRealmAndNoUserInformationProvided",
        "the request names no tenant (the authority is common or organizations) and nothing in "
        "it implies one; client credentials need the tenant the app operates in",
        "use the tenant's authority (https://login.microsoftonline.com/<tenant id>) for client "
        "credentials, e.g. AZURE_TENANT_ID=<tenant id>, not common or organizations",
    ),
    Aadsts(
        50049,
        "NoSuchInstanceForDiscovery",
        "MSAL's instance discovery does not know the authority's host (invalid_instance): a "
        "mistyped or foreign authority, or a B2C/CIAM authority validated as an Entra one",
        "use the tenant's authority on login.microsoftonline.com (or your national cloud's "
        "host); for a host you own (B2C, CIAM, a test emulator), turn instance discovery off "
        "(instance_discovery=False, disable_instance_discovery=True)",
    ),
    Aadsts(
        70016,
        "AuthorizationPending",
        "device code flow: the user has not finished signing in yet",
        "keep polling at the interval the device code answer gave (MSAL does)",
    ),
    Aadsts(
        70019,
        "CodeExpired",
        "device code flow: the verification code expired before the user signed in",
        "start the device code flow again",
    ),
    Aadsts(
        70020,
        "AuthorizationDeclined",
        "device code flow: the user declined to sign in",
        "start again if the user wants to sign in",
    ),
    Aadsts(
        50196,
        "LoopDetected",
        "Entra is throttling this app: it sent the same token request for a user too often in a "
        "short time (a client request loop)",
        "stop re-requesting: cache tokens until they expire (the chain's TokenCache does) and "
        "do not retry a refused request in a loop; wait before the user's next attempt",
    ),
    Aadsts(
        90033,
        "MsodsServiceUnavailable",
        "a transient error in Entra",
        "retry after a short wait (the library retries 429/5xx with backoff)",
    ),
    Aadsts(
        90100,
        "InvalidRequestParameter",
        "a request parameter is empty or not valid",
        "check the request's parameters",
    ),
)

AADSTS: dict[int, Aadsts] = {entry.code: entry for entry in _TABLE}


def describe(code: int) -> Aadsts:
    """The known meaning of an AADSTS code, or a generic entry pointing to the reference."""
    known = AADSTS.get(code)
    if known is not None:
        return known
    return Aadsts(
        code,
        "Unknown",
        "Entra returned an error this library does not decode",
        f"look up AADSTS{code} at https://login.microsoftonline.com/error?code={code}",
    )


#: Codes of a transient failure in Entra's service, answered with HTTP 5xx: the request is worth
#: sending again (reference-error-codes: AADSTS90033 "a transient error has occurred",
#: 90006 ExternalServerRetryableError, 90055 TenantThrottlingError, 50000 TokenIssuanceError
#: "an issue with the sign-in service").
TRANSIENT = frozenset({50000, 90006, 90033, 90055})


def is_answer(code: int) -> bool:
    """Whether an AADSTS code is a definite answer about the request (a resource that does not
    exist, a scope that is not valid, consent...) rather than an outage: a code this library
    decodes and that is not ``TRANSIENT``. Such an answer is the same on every retry, also
    when an endpoint sends it with HTTP 500 (App Service's managed identity endpoint answers
    an unknown resource so, as MSAL notes); an unknown code is not assumed to be one."""
    return code in AADSTS and code not in TRANSIENT
