"""What a client assertion is built from: a ``client_assertion`` callable that returns nothing is
refused before the OBO request (it was posted with no client credential at all, and Entra's
AADSTS7000218 fix talked about secrets); a managed identity's assertion is asked for the
audience of the authority host's cloud however the host is written (``:443``, a trailing dot
gave the public cloud's audience to a sovereign cloud)."""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from entra_passthrough import (
    AppCredential,
    SourceUnavailable,
    TokenAcquisitionError,
    TokenChain,
    bind_caller,
)
from entra_passthrough._msal import client_credential
from entra_passthrough.testing import EntraEmulator

from .conftest import make_mi, make_obo, mcp_scope, token_posts


@pytest.mark.parametrize("value", [None, "", "  ", b"", 0], ids=repr)
def test_a_client_assertion_callable_that_returns_nothing_is_refused_before_sending(
    idp: EntraEmulator, value: Any
) -> None:
    chain = TokenChain([make_obo(idp, client_assertion=lambda: value)])
    before = token_posts(idp)
    try:
        with bind_caller(token=idp.user_token("alice")), pytest.raises(SourceUnavailable) as info:
            chain.get_token(mcp_scope(idp))
    finally:
        chain.close()
    assert token_posts(idp) == before  # nothing was posted
    assert "client_assertion callable" in str(info.value)
    assert info.value.fix is not None
    assert "signed client assertion" in info.value.fix


def test_a_client_assertion_callable_that_returns_an_assertion_is_called_each_time(
    idp: EntraEmulator,
) -> None:
    mi = make_mi(idp)
    calls: list[str] = []

    def assertion() -> str:
        calls.append(mi.token_for_resource("api://AzureADTokenExchange"))
        return calls[-1]

    chain = TokenChain([make_obo(idp, client_assertion=assertion)])
    try:
        for user in ("alice", "bob"):
            with bind_caller(token=idp.user_token(user)):
                assert chain.get_token(mcp_scope(idp)).token
    finally:
        chain.close()
        mi.close()
    assert len(calls) == 2


class _Recording(requests.Session):
    """Records the URL of every request (what resource the managed identity was asked for)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def send(self, request: Any, **kwargs: Any) -> Any:
        self.urls.append(str(request.url))
        return super().send(request, **kwargs)


@pytest.mark.parametrize(
    ("authority_host", "audience"),
    [
        ("https://login.microsoftonline.us:443", "api://AzureADTokenExchangeUSGov"),
        ("https://login.microsoftonline.us.", "api://AzureADTokenExchangeUSGov"),
        ("https://LOGIN.CHINACLOUDAPI.CN.:443/", "api://AzureADTokenExchangeChina"),
        ("https://login.microsoftonline.com:443", "api://AzureADTokenExchange"),
    ],
)
def test_a_managed_identity_assertion_is_for_the_clouds_audience_however_the_host_is_written(
    idp: EntraEmulator, authority_host: str, audience: str
) -> None:
    http = _Recording()
    mi = make_mi(idp, http_client=http)
    try:
        credential = AppCredential(
            client_id=idp.agent.client_id,
            tenant_id=idp.tenant_id,
            managed_identity=mi,
            authority_host=authority_host,
        )
        # The emulator knows only the public audience: a sovereign one is refused there, and
        # what matters is what was asked for.
        with contextlib.suppress(TokenAcquisitionError):
            client_credential(credential)["client_assertion"]()
    finally:
        mi.close()
        http.close()
    assert http.urls
    asked = {parse_qs(urlsplit(url).query).get("resource", [""])[0] for url in http.urls}
    assert asked == {audience}


def test_the_checked_assertion_repr_names_no_argument_of_the_callable() -> None:
    import functools

    from entra_passthrough._msal import CheckedAssertion

    def sign(key: str) -> str:
        return "a.b.c"

    checked = CheckedAssertion(functools.partial(sign, "PRIVATE-KEY-MATERIAL"))
    assert "PRIVATE-KEY-MATERIAL" not in repr(checked)
    assert checked() == "a.b.c"
