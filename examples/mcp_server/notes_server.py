"""A protected MCP server: Entra ID tokens verified by entra_passthrough.server.

Tools: ``whoami`` (who the server sees) and ``notes`` (per-user data: each user sees only their
own notes, keyed by tenant + object id from the *verified* token).

Run it against the local emulator (no tenant, no network):

    python examples/mcp_server/notes_server.py --emulator

or against your tenant:

    ENTRA_TENANT_ID=<tenant> MCP_CLIENT_ID=<app id> MCP_RESOURCE_URL=https://mcp.contoso.com/mcp \\
        python examples/mcp_server/notes_server.py --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import ssl
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer

from entra_passthrough import JwtVerifier, UserKey
from entra_passthrough.server import (
    EntraChallengeMiddleware,
    EntraTokenVerifier,
    auth_settings,
    current_user,
)

SCOPE = "access_as_user"
MAX_USERS = 10_000
MAX_NOTES = 100


@dataclass(frozen=True)
class Config:
    tenant_id: str
    client_id: str
    resource_url: str  # this server's MCP endpoint URL (RFC 9728 resource)
    authority_host: str = "https://login.microsoftonline.com"
    app_id_uri: str | None = None  # default api://<client_id>
    verify: ssl.SSLContext | str | bool = True  # CA for the JWKS fetch (the emulator's CA)
    host: str = "127.0.0.1"

    @classmethod
    def from_env(cls, *, resource_url: str | None = None) -> Config:
        return cls(
            tenant_id=os.environ.get("ENTRA_TENANT_ID") or os.environ["AZURE_TENANT_ID"],
            client_id=os.environ["MCP_CLIENT_ID"],
            resource_url=resource_url or os.environ["MCP_RESOURCE_URL"],
            authority_host=os.environ.get(
                "AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com"
            ),
            app_id_uri=os.environ.get("MCP_APP_ID_URI"),
        )


class NotesStore:
    """Per-user notes, bounded (oldest users evicted). Keys come from verified tokens only."""

    def __init__(self) -> None:
        self._notes: OrderedDict[UserKey, list[str]] = OrderedDict()

    def add(self, user_key: UserKey, text: str) -> None:
        notes = self._notes.setdefault(user_key, [])
        self._notes.move_to_end(user_key)
        notes.append(text[:500])
        del notes[:-MAX_NOTES]
        while len(self._notes) > MAX_USERS:
            self._notes.popitem(last=False)

    def list(self, user_key: UserKey) -> list[str]:
        return list(self._notes.get(user_key, ()))


def create_server(config: Config) -> tuple[MCPServer, Any]:
    """The MCPServer and its AuthSettings."""
    app_id_uri = config.app_id_uri or f"api://{config.client_id}"
    verifier = JwtVerifier(
        audiences=[config.client_id, app_id_uri],
        tenants=[config.tenant_id],
        authority_host=config.authority_host,
        required_scopes=[SCOPE],
        verify=config.verify,
    )
    auth = auth_settings(
        resource_server_url=config.resource_url,
        tenant_id=config.tenant_id,
        authority_host=config.authority_host,
        scopes=[SCOPE],
        app_id_uri=app_id_uri,
    )
    server = MCPServer(
        "notes",
        token_verifier=EntraTokenVerifier(verifier, app_id_uri=app_id_uri),
        auth=auth,
    )
    store = NotesStore()

    @server.tool()
    async def whoami() -> dict[str, Any]:
        """Who is calling, as this server verified it."""
        user = current_user()
        return {
            "oid": user.oid,
            "tid": user.tid,
            "upn": user.upn,
            "name": user.name,
            "scopes": list(user.scopes),
            "client_id": user.client_id,
        }

    @server.tool()
    async def notes(add: str | None = None) -> list[str]:
        """Your notes (only yours). Pass ``add`` to append one."""
        user = current_user()
        if add:
            store.add(user.user_key, add)
        return store.list(user.user_key)

    return server, auth


def create_app(config: Config) -> Any:
    """The ASGI app to serve (uvicorn, hypercorn, App Service...)."""
    server, auth = create_server(config)
    return EntraChallengeMiddleware(
        server.streamable_http_app(stateless_http=True, host=config.host), settings=auth
    )


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the app is built: with ``--port 0`` the system picks
    the port, and the server's resource URL (and what it prints) must name the real one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/mcp"


async def _serve(config: Config, sock: socket.socket) -> None:
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="info"))
    await server.serve(sockets=[sock])


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # uvicorn stops gracefully on SIGTERM (docker stop, systemd), then raises it again; without
    # a handler of ours that killed the process before the `finally` and the emulator's exit
    # ran, leaving alice's token file and the emulator's TLS key behind. Ctrl-C already exits
    # through them (KeyboardInterrupt); SIGTERM now does too.
    del signum, frame
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--emulator", action="store_true", help="start the local Entra emulator and use it"
    )
    args = parser.parse_args(argv)
    sock = _bind(args.host, args.port)
    url = _url(sock)  # the bound port, also for --port 0
    if not args.emulator:
        config = replace(
            Config.from_env(resource_url=os.environ.get("MCP_RESOURCE_URL", url)), host=args.host
        )
        with sock:
            asyncio.run(_serve(config, sock))
        return 0
    from entra_passthrough.testing import EntraEmulator

    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # clean up as on Ctrl-C (below)
    with sock, EntraEmulator() as idp:
        config = Config(
            tenant_id=idp.tenant_id,
            client_id=idp.mcp.client_id,
            resource_url=url,
            authority_host=idp.url,
            verify=idp.ca_file,
            host=args.host,
        )
        # Never print a token: write one for alice to a private file instead (removed on exit).
        fd, token_file = tempfile.mkstemp(prefix="alice-token-", suffix=".jwt")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(idp.user_token(user="alice", audience=idp.mcp.client_id, scopes=(SCOPE,)))
            print(f"emulator: {idp.url} (CA {idp.ca_file})")
            print(f"MCP server: {url}", flush=True)
            print(f"a token for alice (1 h) is in {token_file} (mode 0600)", flush=True)
            asyncio.run(_serve(config, sock))
        finally:
            os.unlink(token_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
