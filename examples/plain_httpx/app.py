"""A Starlette app that calls a protected API *as its caller*, with plain httpx2.

    CallerMiddleware -> TokenChain([OnBehalfOf]) -> EntraAuth -> protected API (verifies, echoes)

Run it with no tenant, against the local Entra emulator:

    python examples/plain_httpx/app.py

It starts the emulator, the protected API and this app on loopback, then calls the app as
alice and bob (concurrently), with a Foundry-audience token, and as carol (no consent), and
prints what the API saw. Exit code 0 when everything behaved. No token is ever printed.

To use it for real, build the same objects from the environment:

    chain = TokenChain([OnBehalfOf.from_env()])
    auth = EntraAuth(chain, scopes=["api://<api>/.default"], origins=["https://api.contoso.com"])
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from entra_passthrough import (
    CallerMiddleware,
    EntraAuth,
    JwtVerifier,
    OnBehalfOf,
    TokenAcquisitionError,
    TokenChain,
)
from entra_passthrough.testing import FOUNDRY_AUDIENCE, EntraEmulator


def protected_api(*, client_id: str, app_id_uri: str, tenant_id: str, authority: str, ca: str):
    """The downstream API: only verified tokens for its own audience get in."""

    async def whoami(request: Request) -> JSONResponse:
        claims = request.state.entra_caller.verified  # set by the verifier
        return JSONResponse({"oid": claims["oid"], "aud": claims["aud"], "scp": claims["scp"]})

    verifier = JwtVerifier(
        audiences=[client_id, app_id_uri], tenants=[tenant_id], authority_host=authority, verify=ca
    )
    app = Starlette(routes=[Route("/whoami", whoami)])
    return CallerMiddleware(app, require_caller=True, verifier=verifier)


def agent(*, chain: TokenChain, api_url: str, api_scope: str) -> CallerMiddleware:
    """The app users call. It never touches a token: the middleware captures the caller and
    EntraAuth attaches the caller's token for the API's audience to each request."""
    auth = EntraAuth(chain, scopes=[api_scope], origins=[api_url])

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with httpx2.AsyncClient(timeout=30) as client:  # one client for every user
            auth.install(client)  # auth + the hook that strips the token on foreign redirects
            yield {"client": client}

    async def ask(request: Request) -> JSONResponse:
        client: httpx2.AsyncClient = request.state.client
        try:
            response = await client.get(f"{api_url}/whoami")
        except TokenAcquisitionError as exc:
            return JSONResponse({"refused": type(exc).__name__, "why": str(exc)}, 502)
        return JSONResponse({"api_status": response.status_code, "api_saw": response.json()})

    return CallerMiddleware(Starlette(routes=[Route("/ask", ask)], lifespan=lifespan))


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """uvicorn on 127.0.0.1, a free port, in a thread; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    ready = threading.Event()
    for _ in range(2000):
        if server.started or not thread.is_alive():
            break
        ready.wait(0.005)
    if not server.started:
        raise RuntimeError("server did not start")
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def play(idp: EntraEmulator, agent_url: str) -> bool:
    tokens = {
        "alice": idp.user_token("alice", audience=idp.agent.client_id),
        "bob": idp.user_token("bob", audience=idp.agent.client_id),
        "alice (Foundry token)": idp.user_token("alice", audience=FOUNDRY_AUDIENCE),
        "carol (no consent)": idp.user_token("carol", audience=idp.agent.client_id),
    }
    expected_oid = {"alice": idp.users["alice"].oid, "bob": idp.users["bob"].oid}
    async with httpx2.AsyncClient(timeout=30) as client:
        names = [n for n in tokens for _ in range(3)]
        answers = await asyncio.gather(
            *(
                client.get(f"{agent_url}/ask", headers={"authorization": f"Bearer {tokens[n]}"})
                for n in names
            )
        )
    ok = True
    seen: set[str] = set()
    for name, answer in zip(names, answers, strict=True):
        if name in seen:
            continue
        seen.add(name)
        body = answer.json()
        if "api_saw" in body:
            saw = body["api_saw"]
            good = saw["oid"] == expected_oid.get(name) and saw["aud"] == idp.mcp.client_id
            mark = "ok" if good else "WRONG"
            print(f"{name:24} -> API saw oid={saw['oid']} aud={saw['aud']}  {mark}")
        else:
            good = name not in expected_oid  # the refusals are expected for these two
            print(f"{name:24} -> refused: {body['refused']}: {body['why'][:110]}...")
        ok = ok and good
    grants = idp.stats()["grants"]
    print(f"on-behalf-of round trips to Entra: {grants['on_behalf_of']} (12 requests)")
    return ok


def main() -> int:
    with EntraEmulator() as idp:
        api = protected_api(
            client_id=idp.mcp.client_id,
            app_id_uri=idp.mcp.app_id_uri,
            tenant_id=idp.tenant_id,
            authority=idp.url,
            ca=idp.ca_file,
        )
        chain = TokenChain(
            [
                OnBehalfOf(
                    client_id=idp.agent.client_id,
                    tenant_id=idp.tenant_id,
                    client_secret=idp.agent.secret,
                    authority_host=idp.url,
                    http_client=idp.msal_http_client(),  # trusts the emulator's CA
                )
            ]
        )
        with serve(api) as api_url:
            app = agent(chain=chain, api_url=api_url, api_scope=f"{idp.mcp.app_id_uri}/.default")
            with serve(app) as agent_url:
                ok = asyncio.run(play(idp, agent_url))
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
