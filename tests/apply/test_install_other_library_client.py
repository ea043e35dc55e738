"""``EntraAuth.install()`` on the other library's client (``entra_passthrough.EntraAuth`` is for
httpx2, ``entra_passthrough.httpx.EntraAuth`` for classic httpx) is a ``ConfigurationError``
naming both classes and the front to use, raised before the client is changed.

It was httpx's own ``TypeError: Invalid "auth" argument``, raised after ``install`` had already
replaced the client's cookie jar and added its request hook.
"""

from __future__ import annotations

from typing import Any

import httpx
import httpx2
import pytest

import entra_passthrough
import entra_passthrough.httpx
from entra_passthrough import ConfigurationError

from ._fakes import FakeChain

ORIGINS = ["https://api.contoso.com"]
SCOPES = ["api://api/.default"]


def state(client: Any) -> tuple[Any, ...]:
    hooks = {name: list(hooks) for name, hooks in client.event_hooks.items()}
    return (client.cookies.jar, hooks, client.auth)


HTTPX = "entra_passthrough.httpx.EntraAuth"
DEFAULT = "entra_passthrough.EntraAuth (the default)"
CASES = [
    (entra_passthrough.EntraAuth, httpx.Client, "httpx.Client", HTTPX),
    (entra_passthrough.EntraAuth, httpx.AsyncClient, "httpx.AsyncClient", HTTPX),
    (entra_passthrough.httpx.EntraAuth, httpx2.Client, "httpx2.Client", DEFAULT),
    (entra_passthrough.httpx.EntraAuth, httpx2.AsyncClient, "httpx2.AsyncClient", DEFAULT),
]


@pytest.mark.parametrize(("front", "client_class", "given", "use"), CASES)
async def test_refused_typed_and_client_untouched(
    front: type[Any], client_class: type[Any], given: str, use: str
) -> None:
    auth = front(FakeChain(), scopes=SCOPES, origins=ORIGINS)
    client = client_class(cookies={"session": "kept"})
    try:
        before = state(client)
        with pytest.raises(ConfigurationError) as caught:
            auth.install(client)
        assert not isinstance(caught.value, TypeError)
        message = str(caught.value)
        assert f"was given {given};" in message
        assert f"Fix: use {use} for" in message
        assert state(client) == before  # nothing changed: no hook without its auth
        # The right front installs on the same client.
        right = (
            entra_passthrough.httpx.EntraAuth
            if client_class.__module__.partition(".")[0] == "httpx"
            else entra_passthrough.EntraAuth
        )(FakeChain(), scopes=SCOPES, origins=ORIGINS)
        right.install(client)
        assert client.auth is right
        assert client.cookies.get("session") == "kept"
    finally:
        if isinstance(client, httpx.AsyncClient | httpx2.AsyncClient):
            await client.aclose()
        else:
            client.close()


def test_not_a_client_at_all() -> None:
    auth = entra_passthrough.EntraAuth(FakeChain(), scopes=SCOPES, origins=ORIGINS)
    with pytest.raises(ConfigurationError, match=r"was given builtins\.str") as caught:
        auth.install("https://api.contoso.com")
    assert caught.value.fix == "pass an httpx2.Client or httpx2.AsyncClient."


class _SubclassOfHttpx(httpx.AsyncClient):  # the shape of a library's own client (openai's)
    pass


class _SubclassOfHttpx2(httpx2.Client):
    pass


@pytest.mark.parametrize(
    ("front", "client_class", "fix"),
    [
        (entra_passthrough.EntraAuth, _SubclassOfHttpx, HTTPX),
        (entra_passthrough.httpx.EntraAuth, _SubclassOfHttpx2, DEFAULT),
    ],
)
def test_a_subclass_of_the_other_librarys_client_gets_the_same_fix(
    front: Any, client_class: Any, fix: str
) -> None:
    auth = front(FakeChain(), scopes=SCOPES, origins=ORIGINS)
    client = client_class()
    with pytest.raises(ConfigurationError) as info:
        auth.install(client)
    assert fix in (info.value.fix or "")
