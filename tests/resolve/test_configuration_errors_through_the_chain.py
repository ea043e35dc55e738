"""A ``ConfigurationError`` a source meets only when it runs (here: ``ManagedIdentity`` on Service
Fabric with a malformed ``IDENTITY_SERVER_THUMBPRINT``, an ``http://`` ``IDENTITY_ENDPOINT``, an
``http_client`` that is not a ``requests.Session``) reaches the chain's caller with what it says:
what is wrong and the fix, not only its type ("source failed unexpectedly:
ConfigurationError"). It stays a ``SourceUnavailable`` (a ``TokenAcquisitionError``: code that
handles those is unchanged), with the ``ConfigurationError`` as its cause. Real MSAL against the
emulator's Service Fabric endpoint; nothing is sent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from entra_passthrough import (
    ConfigurationError,
    ManagedIdentity,
    Policy,
    SourceUnavailable,
    Timeouts,
    TokenChain,
)
from entra_passthrough._http import SHARED_THROTTLE
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope

ONCE = Timeouts(connect=2.0, read=2.0, deadline=5.0, retries=0, negative_ttl=0.0)


class _NotASession:
    def get(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("never called")

    def close(self) -> None:
        return None


@pytest.fixture
def fabric(idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    for name in idp.MI_HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = idp.mi_env("service_fabric")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    SHARED_THROTTLE.clear()
    yield env
    SHARED_THROTTLE.clear()


CASES = [
    (
        "thumbprint",
        {"IDENTITY_SERVER_THUMBPRINT": "not-a-thumbprint"},
        {},
        "IDENTITY_SERVER_THUMBPRINT",
    ),
    (
        "http-endpoint",
        {"IDENTITY_ENDPOINT": "http://127.0.0.1:9/servicefabric/token"},
        {},
        "https://",
    ),
    ("not-a-session", {}, {"http_client": _NotASession()}, "requests.Session"),
]


@pytest.mark.parametrize(
    ("env", "kwargs", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
@pytest.mark.parametrize("driver", ["sync", "async"])
async def test_the_configuration_error_is_kept_through_the_chain(
    idp: EntraEmulator,
    fabric: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    kwargs: dict[str, Any],
    named: str,
    driver: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    chain = TokenChain([ManagedIdentity(timeouts=ONCE, **kwargs)], policy=Policy.APP_ONLY)
    before = int(idp.stats()["endpoints"].get("msi", 0))
    try:
        if driver == "sync":
            with pytest.raises(SourceUnavailable) as info:
                chain.get_token(mcp_scope(idp))
        else:
            with pytest.raises(SourceUnavailable) as info:
                await chain.get_token_async(mcp_scope(idp))
    finally:
        chain.close()
    error = info.value
    text = str(error)
    assert named in text
    assert "unexpectedly" not in text
    assert isinstance(error.__cause__, ConfigurationError)
    assert error.fix
    assert error.fix == error.__cause__.fix
    assert text.count("Fix:") == 1
    assert error.source == "managed_identity"
    assert fabric["IDENTITY_HEADER"] not in text
    assert int(idp.stats()["endpoints"].get("msi", 0)) == before
