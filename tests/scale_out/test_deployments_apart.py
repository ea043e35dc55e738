"""Two deployments sharing one Redis (no namespace) and one consent keyring never use each
other's records: a system-assigned managed identity's token is not shared beyond its own
source (each host's "own identity" is another identity), and a consent grant belongs to the
consent app it was issued to (another agent neither reads, redeems nor deletes it)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from _support.consent import ConsentEnv, consent_link, follow_link
from entra_passthrough import (
    Caller,
    ConsentRequired,
    ManagedIdentity,
    Policy,
    TokenCache,
    TokenChain,
    TokenRequest,
)
from entra_passthrough._l2 import SharedTokenCache
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._sources.foundry import FoundryToolboxRoute
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore

from ._broker import StandaloneBroker
from ._server import RedisServer

VAULT = "https://vault.azure.net/.default"


class IdentityEndpoint:
    """An App Service-shaped managed identity endpoint on loopback that answers with the token
    of one identity (``who``), and counts the requests it got."""

    def __init__(self, who: str) -> None:
        self.requests = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name
                endpoint.requests += 1
                body = json.dumps(
                    {
                        "access_token": f"token-of-{who}",
                        "expires_on": str(int(time.time()) + 3600),
                        "resource": "https://vault.azure.net",
                        "token_type": "Bearer",
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/msi/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def endpoints() -> Iterator[tuple[IdentityEndpoint, IdentityEndpoint]]:
    made = (IdentityEndpoint("A"), IdentityEndpoint("B"))
    yield made
    for endpoint in made:
        endpoint.close()


@pytest.mark.parametrize("assigned", ["system", "user"])
async def test_a_system_assigned_identity_token_is_not_shared_with_another_deployment(
    redis_server: RedisServer,
    endpoints: tuple[IdentityEndpoint, IdentityEndpoint],
    assigned: str,
) -> None:
    """Deployments A and B, each with its own identity endpoint, share one Redis (L2 shares
    app tokens by default) and one keyring. With system-assigned identities B gets its own
    token from its own endpoint; with the same user-assigned identity selected (the selector
    names the identity) B is served A's token from L2, as intended."""
    keyring = Keyring.generate()
    stores: list[RedisStore] = []
    sources: list[ManagedIdentity] = []
    chains = []
    for endpoint in endpoints:
        store = RedisStore.from_url(redis_server.url)
        stores.append(store)
        selector = (
            {"client_id": "11111111-2222-3333-4444-555555555555"} if assigned == "user" else {}
        )
        mi = ManagedIdentity(endpoint=endpoint.url, header="secret", **selector)
        sources.append(mi)
        cache = TokenCache(shared=SharedTokenCache(store, keyring))
        chains.append(TokenChain([mi], policy=Policy.APP_ONLY, cache=cache))
    try:
        a = await chains[0].get_token_async([VAULT])
        b = await chains[1].get_token_async([VAULT])
        assert a.token == "token-of-A"
        assert endpoints[0].requests == 1
        if assigned == "system":
            assert b.token == "token-of-B"
            assert endpoints[1].requests == 1
        else:
            assert b.token == "token-of-A"  # one identity: shared through L2
            assert endpoints[1].requests == 0
    finally:
        for mi in sources:
            mi.close()
        for store in stores:
            await store.aclose()


def test_the_foundry_agent_token_is_partitioned_per_instance() -> None:
    """The agent's own token (no caller) of two routes, even over the same inner source, is
    never one cache entry: nothing shared beyond this source names it."""
    inner = ManagedIdentity(endpoint="http://127.0.0.1:9/msi/token", header="secret")
    try:
        routes = [FoundryToolboxRoute(inner, features="") for _ in range(2)]
        request = TokenRequest(scopes=("https://ai.azure.com/.default",), caller=None)
        first, second = (route.cache_partition(request) for route in routes)
        assert first is not None
        assert second is not None
        assert first != second
        assert first == routes[0].cache_partition(request)  # stable for one instance
    finally:
        inner.close()


async def test_another_agent_neither_reads_nor_deletes_a_grant_of_another_consent_app(
    consent_env: ConsentEnv, redis_server: RedisServer
) -> None:
    """Agent A (the consent app) and agent B (another app registration) share one Redis and
    keyring without a namespace. A user consents to A. B, asked for the same user, finds no
    grant of its own: ``ConsentRequired``, no redemption of A's refresh token at Entra, and A's
    grant is untouched (A still serves the user)."""
    env = consent_env
    keyring = Keyring.generate()
    store_a, store_b, store_broker = (RedisStore.from_url(redis_server.url) for _ in range(3))
    broker: StandaloneBroker | None = None
    b: DelegatedConsent | None = None
    try:
        a = env.make(store=store_a, keyring=keyring)[0]  # type: ignore[arg-type]
        broker = StandaloneBroker(env, store_broker, keyring)
        b = DelegatedConsent(
            client_id=env.idp.agent.client_id,
            tenant_id=env.idp.tenant_id,
            client_secret=env.idp.agent.secret,
            store=store_b,
            keyring=keyring,
            broker_url="https://agent-b.example/consent",
            authority_host=env.idp.url,
            http_client=env.idp.msal_http_client(),
        )
        user = env.idp.users["rita"]
        caller = Caller(verified={"tid": env.idp.tenant_id, "oid": user.oid, "upn": user.upn})
        request = TokenRequest(scopes=(env.mcp_scope,), caller=caller)
        assert (await follow_link(env, await consent_link(a, env, caller))).status_code == 200
        assert await a.get_token_async(request) is not None
        before = env.idp.stats()["grants"].get("refresh_token", 0)
        with pytest.raises(ConsentRequired) as info:
            await b.get_token_async(request)
        assert info.value.link is not None
        assert info.value.link.startswith("https://agent-b.example/consent/")
        assert env.idp.stats()["grants"].get("refresh_token", 0) == before  # B redeemed nothing
        served = await a.get_token_async(request)  # A's grant survived
        assert served is not None
        assert served.kind.value == "user"
    finally:
        if b is not None:
            b.close()
        for store in (store_a, store_b):
            await store.aclose()
        if broker is not None:
            await broker.aclose()
