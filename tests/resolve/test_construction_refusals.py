"""Values that can never work are refused when the object is built, with a
``ConfigurationError`` naming the argument (and the variable ``from_env()`` reads it from),
never a bare ``TypeError``/``AttributeError`` or a failure at every user's first request:

- a tenant no caller's ``tid`` can equal (``common``, ``organizations``, ``consumers``, a GUID
  in braces, a path, a URL, whitespace, NUL, unicode) for ``OnBehalfOf``, ``DelegatedConsent``
  and ``AgentIdentityOnBehalfOf``; a verified domain name stays accepted;
- a client id that is not a string or holds whitespace, an empty client secret;
- ``EntraAuth`` with a chain that is not one, scopes that are not a list of scope names;
- ``CallerMiddleware(verifier=)`` that is not a verifier, ``FoundryToolboxRoute(None)``,
  a ``Keyring`` whose key is text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from entra_passthrough import (
    AgentIdentityOnBehalfOf,
    AppCredential,
    AzureCli,
    CallerMiddleware,
    ConfigurationError,
    DelegatedConsent,
    EntraAuth,
    FoundryToolboxRoute,
    Keyring,
    MemoryStore,
    OnBehalfOf,
    TokenChain,
)

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "11111111-2222-3333-4444-555555555555"
AGENT = "21111111-2222-3333-4444-555555555555"
SECRET = "Qx8Q~not-a-real-secret-0123456789abcdefgh"

NEVER_A_TENANT = [
    "common",
    "Organizations",
    "consumers",
    "{" + TENANT + "}",
    "relative/path",
    TENANT + "/../" + TENANT,
    "http://example.com",
    "x?y#z",
    "two words",
    "a\x00b",
    "\u2603",
    " " + TENANT,
]


def obo(**over: Any) -> Any:
    return OnBehalfOf(**{"client_id": CLIENT, "tenant_id": TENANT, "client_secret": SECRET, **over})


def delegated(**over: Any) -> Any:
    return DelegatedConsent(
        **{
            "client_id": CLIENT,
            "tenant_id": TENANT,
            "client_secret": SECRET,
            "store": MemoryStore(),
            "keyring": Keyring.generate(),
            "broker_url": "https://broker.contoso.com/consent",
            **over,
        }
    )


def agent_id(**over: Any) -> Any:
    over.setdefault("blueprint_client_id", over.pop("client_id", CLIENT))
    return AgentIdentityOnBehalfOf(
        **{"agent_identity_id": AGENT, "tenant_id": TENANT, "client_secret": SECRET, **over}
    )


BUILDERS: dict[str, Callable[..., Any]] = {
    "OnBehalfOf": obo,
    "DelegatedConsent": delegated,
    "AgentIdentityOnBehalfOf": agent_id,
}


def _close(source: Any) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        close()


@pytest.mark.parametrize("owner", list(BUILDERS))
@pytest.mark.parametrize("tenant", NEVER_A_TENANT)
def test_a_tenant_no_caller_can_have_is_refused_at_construction(owner: str, tenant: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        _close(BUILDERS[owner](tenant_id=tenant))
    text = str(info.value)
    assert owner in text
    assert "tenant_id" in text
    assert "Fix:" in text
    if tenant.lower() not in ("common", "organizations", "consumers"):
        assert tenant not in text  # the value is not echoed (it may be a pasted secret)


@pytest.mark.parametrize("owner", list(BUILDERS))
@pytest.mark.parametrize("tenant", [TENANT, TENANT.upper(), "contoso.onmicrosoft.com"])
def test_a_guid_or_a_domain_is_still_accepted(owner: str, tenant: str) -> None:
    # A domain names the authority; where it would also be the allow-list compared with the
    # callers' tid claims (on-behalf-of, Agent ID), the allow-list is given as GUIDs
    # (test_startup_configuration_checks.py: the domain alone is refused at build).
    # An agent identity's tenant is compared with the callers' tid too, and is its only one.
    if "." in tenant and owner == "AgentIdentityOnBehalfOf":
        with pytest.raises(ConfigurationError, match="GUID"):
            _close(BUILDERS[owner](tenant_id=tenant))
        return
    extra = {"allowed_tenants": [TENANT]} if "." in tenant and owner == "OnBehalfOf" else {}
    _close(BUILDERS[owner](tenant_id=tenant, **extra))


@pytest.mark.parametrize("owner", ["OnBehalfOf", "DelegatedConsent"])
@pytest.mark.parametrize("tenant", ["organizations", "common"])
def test_a_multi_tenant_app_names_no_tenant_and_lists_the_allowed_ones(
    owner: str, tenant: str
) -> None:
    """A multi-tenant app: each caller's token is requested in the caller's own tenant, one of
    ``allowed_tenants``; its authority names none. Built before, and still."""
    _close(BUILDERS[owner](tenant_id=tenant, allowed_tenants=[TENANT]))


@pytest.mark.parametrize("owner", list(BUILDERS))
@pytest.mark.parametrize(
    ("over", "argument"),
    [
        ({"tenant_id": 5}, "tenant_id"),
        ({"client_id": 5}, "client_id"),
        ({"client_id": CLIENT + " "}, "client_id"),
        ({"client_id": "\n" + CLIENT}, "client_id"),
        ({"client_secret": ""}, "client_secret"),
        ({"client_secret": "   "}, "client_secret"),
        ({"client_secret": 5}, "client_secret"),
    ],
)
def test_a_wrong_id_or_secret_is_refused_at_construction(
    owner: str, over: dict[str, Any], argument: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        _close(BUILDERS[owner](**over))
    assert argument in str(info.value)
    assert "Fix:" in str(info.value)


def test_an_app_credential_given_whole_is_checked_too() -> None:
    credential = AppCredential(client_id=CLIENT, tenant_id="common", client_secret=SECRET)
    with pytest.raises(ConfigurationError, match="tenant_id"):
        OnBehalfOf(credential=credential)
    credential = AppCredential(client_id=CLIENT, tenant_id=TENANT, client_secret="")
    with pytest.raises(ConfigurationError, match="client_secret"):
        OnBehalfOf(credential=credential)


def test_an_agent_identity_id_with_a_space_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="agent_identity_id"):
        agent_id(agent_identity_id=AGENT + " ")


@pytest.fixture
def chain() -> Any:
    chain = TokenChain([AzureCli()], policy="developer")
    yield chain
    chain.close()


@pytest.mark.parametrize("scopes", [5, ["api://x/.default openid"], [" api://x/.default"], [5]])
def test_entra_auth_refuses_scopes_that_are_not_scope_names(chain: Any, scopes: Any) -> None:
    with pytest.raises(ConfigurationError, match="scopes"):
        EntraAuth(chain, scopes=scopes, origins=["https://mcp.contoso.com"])


def test_entra_auth_still_takes_one_scope_as_a_string(chain: Any) -> None:
    auth = EntraAuth(chain, scopes="api://x/.default", origins=["https://mcp.contoso.com"])
    assert auth.scopes == ("api://x/.default",)


@pytest.mark.parametrize("not_a_chain", [None, "chain", object()])
def test_entra_auth_refuses_what_is_not_a_chain(not_a_chain: Any) -> None:
    with pytest.raises(ConfigurationError, match="TokenChain"):
        EntraAuth(not_a_chain, scopes=["api://x/.default"], origins=["https://mcp.contoso.com"])


@pytest.mark.parametrize("verifier", ["x", 5, object()])
def test_caller_middleware_refuses_what_is_not_a_verifier(verifier: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not reached")

    with pytest.raises(ConfigurationError, match="verifier"):
        CallerMiddleware(app, verifier=verifier)


@pytest.mark.parametrize("inner", [None, "managed_identity"])
def test_foundry_route_refuses_what_is_not_a_source(inner: Any) -> None:
    with pytest.raises(ConfigurationError, match="token source"):
        FoundryToolboxRoute(inner)


def test_a_keyring_key_given_as_text_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="bytes"):
        Keyring({"k1": "x" * 32}, current="k1")  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError, match="mapping"):
        Keyring("k1:abc", current="k1")  # type: ignore[arg-type]
    Keyring({"k1": b"x" * 32}, current="k1").sign("state", b"payload")
