"""IMDS answering 404 or 410 while it is being updated is waited out within the deadline.

Microsoft, "How to use managed identities for Azure resources on an Azure VM to acquire an
access token", Error handling: 404 "IMDS endpoint is updating" (retry with exponential backoff),
410 "IMDS is going through updates" (available within 70 seconds). One such answer used to fail
the call after one request, as an ``EntraError`` blaming the identity's setup (a JSON body) or a
``SourceUnavailable`` blaming a proxy (any other body).

Real MSAL (its IMDS detection) against the emulator's IMDS endpoint and its fault injection.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from entra_passthrough import ManagedIdentity, Policy, SourceUnavailable, Timeouts, TokenChain
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope

TIMEOUTS = Timeouts(connect=1.0, read=1.0, deadline=3.0, backoff=0.05, max_backoff=0.1)


def msi_requests(idp: EntraEmulator) -> int:
    return int(idp.stats()["endpoints"]["msi"])


@pytest.fixture
def imds_chain(idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenChain]:
    for name in idp.MI_HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in idp.mi_env("imds").items():
        monkeypatch.setenv(name, value)
    mi = ManagedIdentity(client_id=idp.managed_identity.client_id, timeouts=TIMEOUTS)
    assert mi.host == "imds"
    chain = TokenChain([mi], policy=Policy.APP_ONLY)
    yield chain
    chain.close()


@pytest.mark.parametrize("status", [410, 404])
def test_imds_updating_is_retried_until_it_answers(
    idp: EntraEmulator, imds_chain: TokenChain, status: int
) -> None:
    idp.inject_fault("msi", status=status, count=3)
    before = msi_requests(idp)
    assert imds_chain.get_token(mcp_scope(idp)).token
    assert msi_requests(idp) - before == 4


def test_imds_still_updating_at_the_deadline_says_so(
    idp: EntraEmulator, imds_chain: TokenChain
) -> None:
    idp.inject_fault("msi", status=410, count=1000)
    before = msi_requests(idp)
    with pytest.raises(SourceUnavailable) as info:
        imds_chain.get_token(mcp_scope(idp))
    text = str(info.value)
    assert "IMDS endpoint is updating / not ready (HTTP 410)" in text
    assert info.value.fix is not None
    assert "70 s" in info.value.fix
    assert "proxy" not in text.split("Fix:")[0]
    sent = msi_requests(idp) - before
    assert 3 <= sent <= 40  # retried with backoff, bounded by the 3 s deadline
