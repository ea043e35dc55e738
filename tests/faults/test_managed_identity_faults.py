"""The managed identity endpoint's faults go through the guarded HTTP layer: timeouts, a
deadline, retries with backoff, ``Retry-After`` per endpoint for the whole process, typed
errors (``Throttled`` / ``SourceUnavailable``), never an undecoded ``EntraError``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from entra_passthrough import (
    ManagedIdentity,
    Policy,
    SourceUnavailable,
    Throttled,
    Timeouts,
    TokenChain,
)
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope

FAST = Timeouts(connect=1.0, read=0.5, deadline=2.0, retries=2, backoff=0.01, max_backoff=0.02)


def msi_requests(idp: EntraEmulator) -> int:
    return int(idp.stats()["endpoints"]["msi"])


@pytest.fixture(params=["app_service", "imds", "service_fabric"])
def make_mi(
    request: pytest.FixtureRequest, idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[object]:
    """ManagedIdentity objects for one host: an explicit App Service endpoint (MSAL's App
    Service function), IMDS detected by MSAL's ``ManagedIdentityClient`` itself, or Service
    Fabric (HTTPS pinned by the endpoint certificate's thumbprint; the identity is the one the
    cluster assigns, no selector)."""
    host = request.param
    env = idp.mi_env(host)
    if host != "app_service":
        for name in idp.MI_HOST_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
    chains: list[TokenChain] = []

    def make(timeouts: Timeouts = FAST) -> TokenChain:
        if host == "app_service":
            mi = ManagedIdentity(
                client_id=idp.managed_identity.client_id,
                endpoint=env["IDENTITY_ENDPOINT"],
                header=env["IDENTITY_HEADER"],
                timeouts=timeouts,
            )
        elif host == "service_fabric":
            mi = ManagedIdentity(timeouts=timeouts)
        else:
            mi = ManagedIdentity(client_id=idp.managed_identity.client_id, timeouts=timeouts)
        chain = TokenChain([mi], policy=Policy.APP_ONLY)
        chains.append(chain)
        return chain

    yield make
    for chain in chains:
        chain.close()


def test_mi_429_is_throttled_and_honoured_across_sources(
    idp: EntraEmulator, make_mi: object
) -> None:
    first, second = make_mi(), make_mi()  # type: ignore[operator]
    idp.inject_fault("msi", status=429, retry_after=30, count=100)
    before = msi_requests(idp)
    with pytest.raises(Throttled) as info:
        first.get_token(mcp_scope(idp))
    assert info.value.retry_after is not None
    assert 25 < info.value.retry_after <= 30
    assert info.value.status == 429
    for chain in (first, second, second):
        with pytest.raises(Throttled):
            chain.get_token(mcp_scope(idp))
    assert msi_requests(idp) - before == 1


def test_mi_503_is_retried_then_source_unavailable(idp: EntraEmulator, make_mi: object) -> None:
    chain = make_mi()  # type: ignore[operator]
    idp.inject_fault("msi", status=503, count=100)
    before = msi_requests(idp)
    with pytest.raises(SourceUnavailable) as info:
        chain.get_token(mcp_scope(idp))
    assert "HTTP 503" in str(info.value)
    assert msi_requests(idp) - before == 1 + FAST.retries  # bounded retries, then a typed error
    # the negative cache: the same request right after fails fast, no request sent
    with pytest.raises(SourceUnavailable) as again:
        chain.get_token(mcp_scope(idp))
    assert "no request was sent" in str(again.value)
    assert msi_requests(idp) - before == 1 + FAST.retries


def test_mi_transient_503_is_retried_and_served(idp: EntraEmulator, make_mi: object) -> None:
    chain = make_mi()  # type: ignore[operator]
    idp.inject_fault("msi", status=503, count=1)
    before = msi_requests(idp)
    assert chain.get_token(mcp_scope(idp)).token
    assert msi_requests(idp) - before == 2


def test_mi_endpoint_that_hangs_hits_the_timeout(idp: EntraEmulator, make_mi: object) -> None:
    chain = make_mi(Timeouts(connect=1.0, read=0.3, deadline=1.0, retries=0))  # type: ignore[operator]
    idp.inject_fault("msi", status=None, delay=3.0, count=1)
    with pytest.raises(SourceUnavailable) as info:
        chain.get_token(mcp_scope(idp))
    assert "did not answer in time" in str(info.value) or "deadline" in str(info.value)
    # The host's endpoint stalled, not Entra: the error says which one to look at.
    assert "managed identity endpoint" in str(info.value)
    assert "Entra did not answer" not in str(info.value)


def test_mi_429_closes_that_endpoint_only(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A managed identity endpoint is throttled as a whole (whichever identity asks it), and
    only that endpoint: IMDS answering 429 with ``Retry-After: 30`` does not hold back a source
    that talks to an App Service endpoint, and IMDS gets no second request meanwhile."""
    for name in idp.MI_HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in idp.mi_env("imds").items():
        monkeypatch.setenv(name, value)
    app_service = idp.mi_env("app_service")
    imds_user = ManagedIdentity(client_id=idp.managed_identity.client_id, timeouts=FAST)
    imds_system = ManagedIdentity(timeouts=FAST)
    explicit = ManagedIdentity(
        client_id=idp.managed_identity.client_id,
        endpoint=app_service["IDENTITY_ENDPOINT"],
        header=app_service["IDENTITY_HEADER"],
        timeouts=FAST,
    )
    chains = [TokenChain([mi], policy=Policy.APP_ONLY) for mi in (imds_user, imds_system)]
    other = TokenChain([explicit], policy=Policy.APP_ONLY)
    try:
        idp.inject_fault("msi", status=429, retry_after=30, count=1)  # the next MI request
        before = msi_requests(idp)
        with pytest.raises(Throttled):
            chains[0].get_token(mcp_scope(idp))
        for chain in (*chains, *chains):
            with pytest.raises(Throttled):
                chain.get_token(mcp_scope(idp))
        assert msi_requests(idp) - before == 1  # IMDS: the 429, then nothing
        assert other.get_token(mcp_scope(idp)).token  # App Service's endpoint: served
        assert msi_requests(idp) - before == 2
    finally:
        for chain in (*chains, other):
            chain.close()


def test_mi_failures_say_what_happened_at_the_identity_endpoint(idp: EntraEmulator) -> None:
    """A wrong identity header is a 401 from the host's endpoint (MSAL words every App Service
    failure as ``invalid_scope``); an endpoint that keeps failing is the host's, not Entra's."""
    from entra_passthrough import EntraError

    env = idp.mi_env()
    wrong = ManagedIdentity(
        client_id=idp.managed_identity.client_id,
        endpoint=env["IDENTITY_ENDPOINT"],
        header="not-the-header",
        timeouts=FAST,
    )
    chain = TokenChain([wrong], policy=Policy.APP_ONLY)
    try:
        with pytest.raises(EntraError) as refused:
            chain.get_token(mcp_scope(idp))
    finally:
        chain.close()
    assert "HTTP 401" in str(refused.value)
    assert "invalid_scope" not in str(refused.value)
    assert "IDENTITY_HEADER" in (refused.value.fix or "")

    right = ManagedIdentity(
        client_id=idp.managed_identity.client_id,
        endpoint=env["IDENTITY_ENDPOINT"],
        header=env["IDENTITY_HEADER"],
        timeouts=FAST,
    )
    chain = TokenChain([right], policy=Policy.APP_ONLY)
    idp.inject_fault("msi", status=500, count=100)
    try:
        with pytest.raises(SourceUnavailable) as failing:
            chain.get_token(mcp_scope(idp))
    finally:
        idp.clear_faults()
        chain.close()
    fix = failing.value.fix or ""
    assert "identity endpoint" in fix
    assert "Entra is slow" not in fix
