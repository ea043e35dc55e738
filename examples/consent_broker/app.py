"""An agent app whose users consent once through the consent broker, then are served silently.

    Foundry-style request (x-agent-user-id, token for https://ai.azure.com)
      -> CallerMiddleware -> TokenChain([DelegatedConsent]) -> EntraAuth -> protected API
                              | no grant yet: ConsentRequired(link) -> the chat shows the link
      the user opens the link -> /consent (ConsentBroker, mounted) -> Entra -> grant stored

Run it with no tenant, against the local Entra emulator:

    python examples/consent_broker/app.py

It starts the emulator and one HTTPS server on loopback (the agent app, the broker mounted at
/consent and a protected API at /api/whoami), calls the agent as a Foundry user would, follows
the consent link like the user's browser, calls again and prints who the API saw. Exit code 0
when everything behaved. No token is ever printed.
"""

from __future__ import annotations

import asyncio
import html
import re
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from entra_passthrough import (
    CallerMiddleware,
    ConsentRequired,
    DelegatedConsent,
    EntraAuth,
    JwtVerifier,
    Keyring,
    MemoryStore,
    TokenChain,
    TokenVerificationError,
)
from entra_passthrough.consent import ConsentBroker
from entra_passthrough.testing import App, EntraEmulator, Grant, World, stable_id
from entra_passthrough.testing._ca import make_tls_material


class Slot:
    """The ASGI app is built once the port is known (it is in the redirect URI)."""

    app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)


def serve(app: Any, cert: str, key: str) -> tuple[uvicorn.Server, int]:
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            ssl_certfile=cert,
            ssl_keyfile=key,
            log_level="warning",
            lifespan="off",
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(1000):  # readiness poll, bounded
        if server.started:
            return server, server.servers[0].sockets[0].getsockname()[1]
        time.sleep(0.01)
    raise RuntimeError("server did not start")


def build_app(idp: EntraEmulator, consent_app: App, base: str, ca: str) -> Starlette:
    keys = Keyring.generate()  # production: Keyring.from_env(), shared with the broker
    source = DelegatedConsent(
        client_id=consent_app.client_id,
        tenant_id=idp.tenant_id,
        client_secret=consent_app.secret,
        store=MemoryStore(),
        keyring=keys,
        broker_url=f"{base}/consent",
        authority_host=idp.url,
        http_client=idp.msal_http_client(),
        server_label="contoso-mcp",
    )
    broker = ConsentBroker.for_source(source, redirect_uris=[f"{base}/consent/callback"])
    scope = f"{idp.mcp.app_id_uri}/access_as_user"
    auth = EntraAuth(TokenChain([source]), scopes=[scope], origins=[base])
    client = httpx2.AsyncClient(verify=ssl.create_default_context(cafile=ca))
    auth.install(client)
    verifier = JwtVerifier(
        audiences=[idp.mcp.client_id],
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        verify=idp.ca_file,
    )

    async def ask(request: Request) -> JSONResponse:
        try:
            answer = await client.get(f"{base}/api/whoami")
        except ConsentRequired as exc:
            # An Agent Framework host turns this into an oauth_consent_request item.
            return JSONResponse({"consent_link": exc.link, "server": exc.server_label}, 401)
        return JSONResponse(answer.json(), answer.status_code)

    async def whoami(request: Request) -> JSONResponse:  # the protected API
        try:
            vt = await verifier.verify_async(
                request.headers.get("authorization", "").removeprefix("Bearer ")
            )
        except TokenVerificationError as exc:
            return JSONResponse({"error": exc.reason}, 401)
        return JSONResponse({"oid": vt.oid, "upn": vt.upn, "aud": vt.audience})

    return Starlette(
        routes=[
            Route("/ask", ask, methods=["POST"]),
            Route("/api/whoami", whoami),
            Mount("/consent", broker.app),
        ]
    )


async def play(idp: EntraEmulator, base: str, ca: str) -> bool:
    alice = idp.users["alice"]
    foundry_token = idp.user_token("alice", audience="https://ai.azure.com")
    headers = {"x-agent-user-id": "foundry-user-1", "Authorization": f"Bearer {foundry_token}"}
    tls = ssl.create_default_context(cafile=ca)
    async with httpx2.AsyncClient(verify=tls) as chat:
        first = (await chat.post(f"{base}/ask", headers=headers)).json()
        print("1. agent asks for consent:", "consent_link" in first)
    async with httpx2.AsyncClient(verify=tls, follow_redirects=True) as browser:
        page = await browser.get(first["consent_link"])
        # the identity provider answers with a form_post page; a browser's script submits it
        action = html.unescape(re.search(r"action='([^']+)'", page.text).group(1))  # type: ignore[union-attr]
        fields = dict(re.findall(r"name='([^']*)' value='([^']*)'", page.text))
        done = await browser.post(action, data={k: html.unescape(v) for k, v in fields.items()})
        print("2. user signed in at the broker:", "You are signed in" in done.text)
    async with httpx2.AsyncClient(verify=tls) as chat:
        second = (await chat.post(f"{base}/ask", headers=headers)).json()
    print("3. the API saw:", second.get("upn"), "aud", second.get("aud"))
    return second.get("oid") == alice.oid and second.get("aud") == idp.mcp.client_id


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="consent-example-"))
    tls = make_tls_material()  # a CA and a loopback server certificate for the agent app
    (tmp / "cert.pem").write_bytes(tls.server_cert_pem)
    (tmp / "key.pem").write_bytes(tls.server_key_pem)
    slot = Slot()
    server, port = serve(slot, str(tmp / "cert.pem"), str(tmp / "key.pem"))
    base = f"https://127.0.0.1:{port}"
    world = World.default()
    mcp = next(a for a in world.apps if a.name == "mcp")
    consent_app = App(
        name="consent-broker",
        client_id=stable_id("app", "consent-example"),
        tenant_id=world.tenants[0].id,
        object_id=stable_id("sp", "consent-example"),
        secret="example-secret-" + stable_id("s", str(port)),
        redirect_uris=(f"{base}/consent/callback",),
    )
    world = world.with_app(consent_app).with_grant(
        Grant(consent_app.client_id, mcp.client_id, ("access_as_user",), user="alice")
    )
    try:
        with EntraEmulator(world=world) as idp:
            ca = tmp / "bundle.pem"
            ca.write_bytes(Path(idp.ca_file).read_bytes() + tls.ca_cert_pem)
            slot.app = CallerMiddleware(build_app(idp, consent_app, base, str(ca)))
            ok = asyncio.run(play(idp, base, str(ca)))
    finally:
        server.should_exit = True
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
