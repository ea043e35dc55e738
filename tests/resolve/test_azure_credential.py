"""AzureCredential: one fixed identity, so never the user kind, and two of them sharing a
TokenCache never read each other's entries (from the resolve stage's security review)."""

from __future__ import annotations

import pytest
from azure.core.credentials import AccessToken

from entra_passthrough import AzureCredential, ConfigurationError, IdentityKind


class _FixedCredential:
    """An azure-identity-shaped credential that always answers one identity's token."""

    def __init__(self) -> None:
        self.calls = 0

    def get_token(self, *scopes: str, claims: str | None = None, **_: object) -> AccessToken:
        self.calls += 1
        return AccessToken("eyJ.fixed-user-a.sig", 4_102_444_800)


@pytest.mark.parametrize("kind", [IdentityKind.USER, "user"])
def test_azure_credential_cannot_declare_the_user_kind(kind: IdentityKind | str) -> None:
    # An azure-identity credential is one fixed identity and its results are cached per source,
    # not per caller: declared as "user" it would hand user A's token to every caller (and to
    # caller-less, stale contexts) under user_only.
    with pytest.raises(ConfigurationError, match="user"):
        AzureCredential(_FixedCredential(), kind=kind)


def test_azure_credential_kinds_app_and_developer_still_work() -> None:
    for kind in (IdentityKind.APP, IdentityKind.DEVELOPER):
        source = AzureCredential(_FixedCredential(), kind=kind, name=f"c_{kind.value}")
        assert source.kind is kind
        source.close()


class _NamedCredential:
    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, claims: str | None = None, **_: object) -> AccessToken:
        return AccessToken(self.token, 4_102_444_800)


def test_two_azure_credentials_sharing_a_cache_never_swap_identities() -> None:
    # TokenCache is documented as shareable between chains; two AzureCredential sources with
    # the default name and the same credential class must not read each other's entries.
    from entra_passthrough import Policy, TokenCache, TokenChain

    cache = TokenCache()
    one = TokenChain(
        [AzureCredential(_NamedCredential("eyJ.app-one.sig"))], policy=Policy.APP_ONLY, cache=cache
    )
    two = TokenChain(
        [AzureCredential(_NamedCredential("eyJ.app-two.sig"))], policy=Policy.APP_ONLY, cache=cache
    )
    try:
        assert one.get_token(["api://x/.default"]).token == "eyJ.app-one.sig"
        assert two.get_token(["api://x/.default"]).token == "eyJ.app-two.sig"
    finally:
        one.close()
        two.close()
