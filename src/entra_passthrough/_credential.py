"""``AppCredential``: an app registration and how it proves itself to Entra, in one value.

``OnBehalfOf``, ``AgentIdentityOnBehalfOf`` (the blueprint), ``DelegatedConsent`` and the
consent broker all need the same thing: a tenant, a client id, exactly one client credential and
the cloud's authority. They take it as ``credential=AppCredential(...)``; the simple path
(``client_id=``, ``tenant_id=``, ``client_secret=`` or ``managed_identity=``, ``authority_host=``)
builds one for you. MSAL's ``client_credential`` is built from it in one place
(``_msal.client_credential``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ._errors import ConfigurationError
from ._msal import PUBLIC_AUTHORITY_HOST, normalize_authority_host

if TYPE_CHECKING:
    from ._sources.managed_identity import ManagedIdentity

__all__ = ["AppCredential", "CredentialKind", "app_credential"]

CredentialKind = Literal[
    "secret", "certificate", "client_assertion", "managed_identity", "federated_token_file"
]

_ONE_OF = (
    "client_secret, client_certificate, client_assertion, managed_identity or federated_token_file"
)


@dataclass(frozen=True, slots=True)
class AppCredential:
    """An app registration's client credential: ``tenant_id``, ``client_id`` and exactly one of
    ``client_secret``; ``client_certificate`` (a path to, or the bytes of, a PEM with the key
    and the certificate, or a PFX; ``certificate_password``; ``send_certificate_chain`` for
    subject name/issuer authentication); ``client_assertion`` (a callable returning a signed
    assertion); ``managed_identity`` (a *user-assigned* ``ManagedIdentity`` configured as the
    app's federated credential: no secret anywhere); ``federated_token_file`` (workload identity).
    ``authority_host`` picks the cloud. Nothing is read or sent until a source uses it; ``repr``
    shows which kind of credential, never a secret.

    >>> credential = AppCredential(client_id=APP_ID, tenant_id=TENANT,
    ...                            managed_identity=ManagedIdentity(client_id=UAMI_CLIENT_ID))
    >>> OnBehalfOf(credential=credential)
    """

    client_id: str
    tenant_id: str
    client_secret: str | None = field(default=None, repr=False)
    client_certificate: bytes | str | None = field(default=None, repr=False)
    certificate_password: str | None = field(default=None, repr=False)
    send_certificate_chain: bool = field(default=False, repr=False)
    client_assertion: Callable[[], str] | None = field(default=None, repr=False)
    managed_identity: ManagedIdentity | None = field(default=None, repr=False)
    federated_token_file: str | None = field(default=None, repr=False)
    authority_host: str = PUBLIC_AUTHORITY_HOST

    def __post_init__(self) -> None:
        _check(
            "AppCredential",
            client_id=self.client_id,
            tenant_id=self.tenant_id,
            credentials=(
                self.client_secret,
                self.client_certificate,
                self.client_assertion,
                self.managed_identity,
                self.federated_token_file,
            ),
            certificate_options=self.certificate_password is not None
            or self.send_certificate_chain,
            certificate=self.client_certificate is not None,
            managed_identity=self.managed_identity,
        )
        if self.client_assertion is not None and not callable(self.client_assertion):
            # A signed assertion given as a value (bytes, a str) was taken and failed every
            # request as "TypeError": it expires, so the credential takes what makes a new one.
            raise ConfigurationError(
                f"AppCredential(client_assertion=) must be a callable that returns a signed "
                f"assertion, not {type(self.client_assertion).__name__}.",
                fix="pass a function (e.g. lambda: read_token()) that returns a fresh JWT each "
                "time it is called; a token file is federated_token_file=.",
            )
        object.__setattr__(self, "authority_host", normalize_authority_host(self.authority_host))

    @property
    def kind(self) -> CredentialKind:
        """Which credential this is (what ``repr`` and the doctor show)."""
        if self.client_secret is not None:
            return "secret"
        if self.client_certificate is not None:
            return "certificate"
        if self.client_assertion is not None:
            return "client_assertion"
        if self.managed_identity is not None:
            return "managed_identity"
        return "federated_token_file"

    def __repr__(self) -> str:
        return (
            f"AppCredential(client_id={self.client_id!r}, tenant_id={self.tenant_id!r}, "
            f"kind={self.kind}, authority_host={self.authority_host!r})"
        )


def _check(
    owner: str,
    *,
    client_id: str | None,
    tenant_id: str | None,
    credentials: tuple[object, ...],
    certificate_options: bool = False,
    certificate: bool = False,
    managed_identity: ManagedIdentity | None = None,
) -> None:
    if not client_id or not tenant_id:
        raise ConfigurationError(
            f"{owner} needs client_id and tenant_id.",
            fix="pass the app registration's client id and its tenant id.",
        )
    given = sum(value is not None for value in credentials)
    if given != 1:
        raise ConfigurationError(
            f"{owner} needs exactly one client credential, got {given}.",
            fix=f"pass one of {_ONE_OF}.",
        )
    if certificate_options and not certificate:
        raise ConfigurationError(
            f"{owner}: certificate_password and send_certificate_chain apply to a "
            "client_certificate, and none was given.",
            fix="pass client_certificate=, or drop the certificate options.",
        )
    if managed_identity is not None:
        managed_identity.require_user_assigned(owner)


def app_credential(
    owner: str,
    credential: AppCredential | None,
    *,
    client_id: str | None,
    tenant_id: str | None,
    client_secret: str | None = None,
    managed_identity: ManagedIdentity | None = None,
    authority_host: str | None = None,
) -> AppCredential:
    """``credential``, or one built from the simple path's keywords (not both): what a source's
    constructor calls, so that every error names the source the user configured."""
    if credential is None:
        _check(
            owner,
            client_id=client_id,
            tenant_id=tenant_id,
            credentials=(client_secret, managed_identity),
            managed_identity=managed_identity,
        )
        return AppCredential(
            client_id=client_id or "",
            tenant_id=tenant_id or "",
            client_secret=client_secret,
            managed_identity=managed_identity,
            # "" (or None) is the public cloud; any other value is checked (5 was an
            # AttributeError, False the public cloud without a word).
            authority_host=PUBLIC_AUTHORITY_HOST
            if authority_host is None or authority_host == ""
            else authority_host,
        )
    simple = {
        "client_id": client_id,
        "tenant_id": tenant_id,
        "client_secret": client_secret,
        "managed_identity": managed_identity,
        "authority_host": authority_host,
    }
    given = sorted(name for name, value in simple.items() if value is not None)
    if given:
        raise ConfigurationError(
            f"{owner} got credential= and {', '.join(given)}: the credential already names "
            "the app, its tenant, its client credential and its authority.",
            fix="pass either credential=AppCredential(...) or these keywords, not both.",
        )
    if not isinstance(credential, AppCredential):
        raise ConfigurationError(
            f"{owner}: credential must be an AppCredential, not {type(credential).__name__}."
        )
    if credential.managed_identity is not None:
        credential.managed_identity.require_user_assigned(owner)
    return credential
